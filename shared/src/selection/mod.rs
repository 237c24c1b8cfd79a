//! vLLM's ROCm attention-backend selector (`RocmPlatform.get_attn_backend_cls`),
//! in two profiles (selection.md is the rule book):
//!
//! * [`Profile::Pr26980`] (default): the if/else chain of PR #26980 with
//!   FLEX_ATTENTION restored by PR #29371 (vLLM e2a00c7b), §1-2. It reads
//!   only the explicit name, use_mla/use_sparse, block_size, the kv dtype
//!   (sparse only), `on_gfx9()` and the env flags; head size, dtype, sinks
//!   and attention type are ignored, as in vLLM.
//! * [`Profile::Latest`]: the priority list checked with
//!   `validate_configuration` (§3, vllm-backends §4.4-4.5), using the
//!   registry's capabilities.
//!
//! Both return the backend and the rule that fired, or vLLM's exception type
//! and exact message. [`select`] also says what single change (an env flag,
//! the GPU, the block size, ...) would change the outcome, by re-running the
//! selector on each variant: the hints can never disagree with the rules.

mod arch;
mod env;
mod latest;
mod pr26980;

pub use arch::GpuArch;
pub use env::{env_bool, EnvFlags, ENV_VARS};

use crate::dtype::{DType, KvCacheDtype};
use crate::error::{Error, Result};
use crate::registry::{AttnType, BackendName};
use serde::Serialize;

/// Which vLLM selector to emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// vLLM e2a00c7b: PR #26980 + PR #29371 (the seed documents' era).
    #[default]
    Pr26980,
    /// The priority-list selector (rocm.py 001eda31 / 0.33).
    Latest,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Pr26980 => "pr26980",
            Profile::Latest => "latest",
        }
    }

    pub fn parse(s: &str) -> Result<Profile> {
        match s {
            "pr26980" => Ok(Profile::Pr26980),
            "latest" => Ok(Profile::Latest),
            _ => Err(Error::invalid(
                "rules profile",
                format!("'{s}'"),
                "allowed: pr26980, latest",
            )),
        }
    }
}

/// `RocmPlatform.check_and_update_config` sets this when the user gives no
/// `--block-size` (PR era). The latest selector sees `None` instead.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// Everything either selector may look at.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectorInput {
    /// The environment (including the raw `VLLM_ATTENTION_BACKEND`).
    pub env: EnvFlags,
    /// `--attention-backend`; wins over the env var when both are given.
    pub attention_backend_flag: Option<String>,
    pub use_mla: bool,
    /// DeepSeek-V3.2-style sparse MLA: wins over everything (selection.md §5.11).
    pub use_sparse: bool,
    /// `--block-size` as the user gave it; `None` when not given.
    pub block_size: Option<usize>,
    pub kv_cache_dtype: KvCacheDtype,
    /// For MLA models the selector sees kv_lora_rank + rope (576).
    pub head_size: usize,
    pub dtype: DType,
    pub arch: GpuArch,
    /// Whether `import aiter` works (`--no-aiter-package` turns it off).
    pub aiter_installed: bool,
    pub has_sink: bool,
    pub attn_type: AttnType,
    pub use_non_causal: bool,
    pub use_kv_connector: bool,
    /// Decode context parallelism (`--decode-context-parallel-size > 1`).
    pub use_dcp: bool,
}

impl Default for SelectorInput {
    /// A Llama-style bf16 MHA model (head 128) on an MI300X with the aiter
    /// package installed and no env vars set.
    fn default() -> Self {
        SelectorInput {
            env: EnvFlags::default(),
            attention_backend_flag: None,
            use_mla: false,
            use_sparse: false,
            block_size: None,
            kv_cache_dtype: KvCacheDtype::Auto,
            head_size: 128,
            dtype: DType::Bf16,
            arch: GpuArch::default(),
            aiter_installed: true,
            has_sink: false,
            attn_type: AttnType::Decoder,
            use_non_causal: false,
            use_kv_connector: false,
            use_dcp: false,
        }
    }
}

impl SelectorInput {
    /// Rejects sizes vLLM's config would reject before any selector runs.
    pub fn validate(&self) -> Result<()> {
        if self.head_size == 0 {
            return Err(Error::invalid("head_size", 0, "must be a positive integer"));
        }
        if self.block_size == Some(0) {
            return Err(Error::invalid(
                "block_size",
                0,
                "must be a positive integer",
            ));
        }
        Ok(())
    }

    /// The block size the PR-era selector sees.
    pub fn effective_block_size(&self) -> usize {
        self.block_size.unwrap_or(DEFAULT_BLOCK_SIZE)
    }

    /// `rocm_aiter_ops.is_mla_enabled()`: the `@if_aiter_supported` gate
    /// (aiter importable, and gfx9 in the PR era / CDNA3+ later) and the two
    /// flags. Unlike the auto MHA path, this one does check the package (§5.6).
    fn is_mla_enabled(&self, profile: Profile) -> bool {
        self.aiter_supported(profile) && self.env.use_aiter && self.env.use_aiter_mla
    }

    /// `@if_aiter_supported`.
    fn aiter_supported(&self, profile: Profile) -> bool {
        self.aiter_installed
            && match profile {
                Profile::Pr26980 => self.arch.on_gfx9(),
                Profile::Latest => self.arch.cdna_version() > 2,
            }
    }
}

/// The Python exception vLLM raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ErrorKind {
    ValueError,
    RuntimeError,
    AssertionError,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::ValueError => "ValueError",
            ErrorKind::RuntimeError => "RuntimeError",
            ErrorKind::AssertionError => "AssertionError",
        }
    }
}

/// vLLM's exception: its type and exact message text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SelectionError {
    #[serde(rename = "type")]
    pub kind: ErrorKind,
    pub message: String,
}

impl SelectionError {
    fn value(message: impl Into<String>) -> Self {
        SelectionError {
            kind: ErrorKind::ValueError,
            message: message.into(),
        }
    }
    fn runtime(message: impl Into<String>) -> Self {
        SelectionError {
            kind: ErrorKind::RuntimeError,
            message: message.into(),
        }
    }
    fn assertion(message: impl Into<String>) -> Self {
        SelectionError {
            kind: ErrorKind::AssertionError,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for SelectionError {
    /// As Python prints an uncaught exception's last line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for SelectionError {}

/// One change that would change the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hint {
    /// E.g. "VLLM_ROCM_USE_AITER=1" or "--arch gfx1100".
    pub change: String,
    /// The backend it would give, or the error line.
    pub outcome: String,
}

/// The selector's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub backend: BackendName,
    /// Human text naming the rule that fired.
    pub rule: String,
    /// The KV-cache block size vLLM then uses: the user's, else 16, except
    /// that the latest era gives ROCM_AITER_UNIFIED_ATTN its preferred 64
    /// (vllm-backends §4.9; the selector itself saw `None`).
    pub block_size: usize,
    /// What single change would change the choice.
    pub hints: Vec<Hint>,
}

/// Runs the selector of `profile` on `input`.
pub fn select(
    input: &SelectorInput,
    profile: Profile,
) -> std::result::Result<Selection, SelectionError> {
    let (backend, rule) = decide(input, profile)?;
    let block_size = match (input.block_size, profile, backend) {
        (Some(b), _, _) => b,
        (None, Profile::Latest, BackendName::RocmAiterUnifiedAttn) => 64,
        (None, _, _) => DEFAULT_BLOCK_SIZE,
    };
    Ok(Selection {
        backend,
        rule,
        block_size,
        hints: what_would_change(input, profile),
    })
}

/// The backend and rule, without hints.
fn decide(
    input: &SelectorInput,
    profile: Profile,
) -> std::result::Result<(BackendName, String), SelectionError> {
    let explicit = explicit_backend(input, profile)?;
    match profile {
        Profile::Pr26980 => pr26980::select(input, explicit),
        Profile::Latest => latest::select(input, explicit),
    }
}

/// Step 0: envs.py validates `VLLM_ATTENTION_BACKEND` on first access,
/// case-sensitively, in both eras (the deprecated variable still goes through
/// envs.py). `--attention-backend` is checked like the env var in the PR era
/// and upper-cased, with "auto", in the AttentionConfig era.
fn explicit_backend(
    input: &SelectorInput,
    profile: Profile,
) -> std::result::Result<Option<BackendName>, SelectionError> {
    let from_env = match &input.env.attention_backend {
        Some(v) => Some(BackendName::parse_env(v).map_err(SelectionError::value)?),
        None => None,
    };
    match (&input.attention_backend_flag, profile) {
        (None, _) => Ok(from_env),
        (Some(v), Profile::Pr26980) => BackendName::parse_env(v)
            .map(Some)
            .map_err(SelectionError::value),
        (Some(v), Profile::Latest) => BackendName::parse_config(v).map_err(SelectionError::value),
    }
}

/// Re-runs the selector with one knob changed at a time and keeps the
/// changes whose outcome differs from the current one.
pub fn what_would_change(input: &SelectorInput, profile: Profile) -> Vec<Hint> {
    let outcome = |i: &SelectorInput| match decide(i, profile) {
        Ok((b, _)) => b.name().to_string(),
        Err(e) => e.to_string(),
    };
    let current = outcome(input);
    let mut variants: Vec<(String, SelectorInput)> = Vec::new();
    let mut vary = |change: String, edit: &dyn Fn(&mut SelectorInput)| {
        let mut v = input.clone();
        edit(&mut v);
        variants.push((change, v));
    };
    if input.env.attention_backend.is_some() {
        vary("unset VLLM_ATTENTION_BACKEND".into(), &|v| {
            v.env.attention_backend = None
        });
    }
    if input.attention_backend_flag.is_some() {
        vary("without --attention-backend".into(), &|v| {
            v.attention_backend_flag = None
        });
    }
    let flag = |name: &str, now: bool| format!("{name}={}", if now { 0 } else { 1 });
    vary(flag(env::VLLM_ROCM_USE_AITER, input.env.use_aiter), &|v| {
        v.env.use_aiter = !v.env.use_aiter
    });
    vary(
        flag(env::VLLM_ROCM_USE_AITER_MHA, input.env.use_aiter_mha),
        &|v| v.env.use_aiter_mha = !v.env.use_aiter_mha,
    );
    vary(
        flag(env::VLLM_ROCM_USE_AITER_MLA, input.env.use_aiter_mla),
        &|v| v.env.use_aiter_mla = !v.env.use_aiter_mla,
    );
    vary(
        flag(
            env::VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION,
            input.env.use_aiter_unified_attention,
        ),
        &|v| v.env.use_aiter_unified_attention = !v.env.use_aiter_unified_attention,
    );
    vary(
        flag(
            env::VLLM_V1_USE_PREFILL_DECODE_ATTENTION,
            input.env.use_prefill_decode_attention,
        ),
        &|v| v.env.use_prefill_decode_attention = !v.env.use_prefill_decode_attention,
    );
    let package = if input.aiter_installed {
        "--no-aiter-package"
    } else {
        "with the aiter package installed"
    };
    vary(package.into(), &|v| v.aiter_installed = !v.aiter_installed);
    for gpu in ["gfx942", "gfx90a", "gfx1100"] {
        if input.arch.name() != gpu {
            vary(format!("--arch {gpu}"), &|v| {
                v.arch = GpuArch::parse(gpu).unwrap_or_default()
            });
        }
    }
    let other_block = if input.effective_block_size() == 1 {
        16
    } else {
        1
    };
    vary(format!("--block-size {other_block}"), &|v| {
        v.block_size = Some(other_block)
    });
    vary(
        if input.has_sink {
            "without attention sinks"
        } else {
            "a model with attention sinks"
        }
        .into(),
        &|v| v.has_sink = !v.has_sink,
    );
    vary(
        if input.use_kv_connector {
            "without a KV connector"
        } else {
            "with a KV connector"
        }
        .into(),
        &|v| v.use_kv_connector = !v.use_kv_connector,
    );

    let mut hints: Vec<Hint> = Vec::new();
    for (change, v) in variants {
        let o = outcome(&v);
        if o != current {
            hints.push(Hint { change, outcome: o });
        }
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_only_list_changes_that_change_the_outcome() {
        let s = select(&SelectorInput::default(), Profile::Pr26980).unwrap();
        assert_eq!(s.backend, BackendName::TritonAttn);
        assert!(s
            .hints
            .iter()
            .any(|h| h.change == "VLLM_ROCM_USE_AITER=1" && h.outcome == "ROCM_AITER_FA"));
        assert!(s.hints.iter().all(|h| h.outcome != "TRITON_ATTN"));
        // The PR-era selector ignores sinks, so no hint mentions them.
        assert!(!s.hints.iter().any(|h| h.change.contains("sinks")));
    }

    #[test]
    fn validate_rejects_zero_sizes() {
        let mut i = SelectorInput {
            head_size: 0,
            ..Default::default()
        };
        assert!(i
            .validate()
            .unwrap_err()
            .to_string()
            .contains("head_size 0"));
        i.head_size = 128;
        i.block_size = Some(0);
        assert!(i
            .validate()
            .unwrap_err()
            .to_string()
            .contains("block_size 0"));
    }
}
