//! What several verbs check about a model preset and a backend family
//! (`trace`, `run`): the `--tp` / `--scale-down` rules and the error for a
//! backend of the other family.

use attnlab_shared::model::{self, ModelPreset};
use attnlab_sim::backends::{self, mla};

/// `--tp` must divide the preset's head count (every rank gets whole heads).
pub fn check_tp(preset: &ModelPreset, tp: usize) -> anyhow::Result<()> {
    if !preset.num_heads.is_multiple_of(tp) {
        let divisors: Vec<String> = (1..=preset.num_heads)
            .filter(|&d| preset.num_heads.is_multiple_of(d))
            .map(|d| d.to_string())
            .collect();
        anyhow::bail!(
            "invalid --tp {tp}: must divide the {} heads of {}; allowed: {}",
            preset.num_heads,
            preset.name,
            divisors.join(", ")
        );
    }
    Ok(())
}

/// `--tp` and `--scale-down` shape MLA layers only.
pub fn reject_mla_flags(preset: &ModelPreset, tp: usize, scale_down: bool) -> anyhow::Result<()> {
    if tp != 1 || scale_down {
        let flag = if tp != 1 {
            format!("--tp {tp}")
        } else {
            "--scale-down".to_string()
        };
        anyhow::bail!(
            "invalid {flag} for the MHA preset {}: --tp and --scale-down shape MLA layers; allowed with: {}",
            preset.name,
            mla_presets().join(", ")
        );
    }
    Ok(())
}

fn mla_presets() -> Vec<&'static str> {
    model::PRESETS
        .iter()
        .filter(|p| p.is_mla())
        .map(|p| p.name)
        .collect()
}

/// The error for a backend `name` of the other attention family (MHA or MLA)
/// than `preset`'s, naming the backends the preset allows.
pub fn wrong_family(name: &str, preset: &ModelPreset) -> anyhow::Error {
    let (this, that, allowed): (_, _, Vec<&str>) = if preset.is_mla() {
        (
            "MLA",
            "MHA",
            mla::mla_backends()
                .iter()
                .map(|b| b.name().name())
                .collect(),
        )
    } else {
        (
            "MHA",
            "MLA",
            backends::mha_backends()
                .iter()
                .map(|b| b.name().name())
                .collect(),
        )
    };
    anyhow::anyhow!(
        "invalid --backend '{name}': it is an {that} backend and model preset '{}' uses {this}; allowed: {}",
        preset.name,
        allowed.join(", ")
    )
}
