//! `attnlab run [--model PRESET] [--backend NAME|all] [--workload KIND]
//! [--requests N] [--seed S] [--block-size B] [--tp N] [--scale-down|--full-size] [--json]`:
//! a whole scheduled workload through the emulated backends with seeded
//! random inputs, every step checked against the f64 reference and the
//! backends against each other. MHA presets run the MHA backends
//! (`attnlab_sim::workload`); MLA presets (deepseek-r1) run the MLA backends
//! (`attnlab_sim::mla_workload`), scaled down unless `--full-size`, with
//! `--tp` sharding the heads. Both end in
//! the same table, JSON and exit code (0 all matched, 1 a mismatch or bad input).

use super::common::{check_tp, reject_mla_flags, wrong_family};
use super::util::{backend_choice, bounded, emit, exit, progress};
use attnlab_shared::limits::{MAX_BLOCK_SIZE, MAX_REQUESTS};
use attnlab_shared::model::{preset, ModelPreset};
use attnlab_shared::registry::BackendName;
use attnlab_sim::backends::flavour::FlavourChoice;
use attnlab_sim::backends::{self, mla};
use attnlab_sim::mla_workload::run_mla_workload;
use attnlab_sim::numerics::mma::MatrixTarget;
use attnlab_sim::replay::Status;
use attnlab_sim::workload::{run_workload_in, WorkloadKind, WorkloadReport, WorkloadSpec};
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// One emulated backend (vLLM enum name, any case) or `all`: for an MHA model TRITON_ATTN, ROCM_ATTN,
    /// ROCM_AITER_FA, ...; for an MLA model TRITON_MLA, ROCM_AITER_MLA, ROCM_AITER_TRITON_MLA.
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// Model preset whose attention shape is used: llama-3.1-8b, qwen3-next, deepseek-r1 (MLA).
    #[arg(long, default_value = "llama-3.1-8b")]
    pub model: String,
    /// Request mix: decode, prefill, mixed (chunked prefill beside decodes) or long-extend.
    #[arg(long, default_value = "mixed")]
    pub workload: String,
    /// Number of requests (default: 8 for decode/mixed, 4 for prefill, 2 for long-extend).
    #[arg(long, allow_negative_numbers = true)]
    pub requests: Option<usize>,
    /// Seed of the request lengths and of the inputs (and of MLA's kv_b_proj).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,
    /// Manager block size (default: the preset's, else 16). TRITON_MLA rejects 1, as vLLM does.
    #[arg(long, allow_negative_numbers = true)]
    pub block_size: Option<usize>,
    /// Tensor-parallel ranks sharding the heads (MLA models; must divide the head count).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    pub tp: usize,
    /// MLA models: 16 heads per rank and a 4K max_model_len, same per-head shapes. The default
    /// for deepseek-r1, so a run finishes in seconds; --full-size runs all 128 heads instead.
    #[arg(long)]
    pub scale_down: bool,
    /// MLA models: the full head count (deepseek-r1: 128 / tp per rank); about 8x the work of
    /// the scaled-down default.
    #[arg(long, conflicts_with = "scale_down")]
    pub full_size: bool,
    /// Print the report as JSON (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Kernel flavour (MHA presets): `fma` (the CUDA-core kernels), `tc`
    /// (the matrix cores of --target) or `auto` (what vLLM's kernels use on
    /// --target: the matrix cores). A backend with a launch the flavour
    /// has no kernel for is skipped, saying which.
    #[arg(long, default_value = "fma", value_parser = FlavourChoice::NAMES, ignore_case = true)]
    pub flavour: String,
    /// The matrix-core target of --flavour tc/auto: sm_90, gfx942 or gfx90a.
    #[arg(long, value_name = "TARGET", default_value = "gfx942")]
    pub target: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let spec = spec(&args)?;
    let bar = progress(args.json, 0, "step");
    let on_step = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let start = Instant::now();
    // deepseek-r1 is the only MLA preset; its YaRN-scaled softmax scale lives in MlaConfig.
    let mla_cfg = spec.model.is_mla().then(|| {
        let cfg = mla::MlaConfig::deepseek_r1(args.tp);
        if args.full_size {
            cfg
        } else {
            cfg.scaled_down()
        }
    });
    let scaled_down = mla_cfg
        .as_ref()
        .is_some_and(|c| c.num_heads < spec.model.num_heads);
    let flavour = FlavourChoice::parse(&args.flavour)?;
    let target = MatrixTarget::parse(&args.target)?;
    if flavour != FlavourChoice::Fma && mla_cfg.is_some() {
        anyhow::bail!(
            "invalid --flavour {} for {}: the MLA workload runner compares the MLA backends in the fma kernels only (TRITON_MLA's tensor-core flavour runs in `attnlab diff --backend TRITON_MLA --flavour tc` and `attnlab trace --flavour tc`)",
            flavour.name(),
            spec.model.name,
        );
    }
    let report = match &mla_cfg {
        Some(cfg) => run_mla_workload(&spec, cfg, on_step),
        None => run_workload_in(&spec, flavour, target, on_step),
    };
    bar.finish_and_clear();
    let report = report?;
    // Nothing checked is not a pass: a configuration no (named) backend runs is bad input.
    if report.backends.iter().all(|b| b.status == Status::Skipped) {
        let why: Vec<String> = report
            .backends
            .iter()
            .map(|b| format!("{}: {}", b.backend, b.reason.as_deref().unwrap_or("")))
            .collect();
        let what = spec
            .backend
            .as_ref()
            .map_or("configuration (no backend runs it)".to_string(), |n| {
                format!("--backend {n}")
            });
        anyhow::bail!("invalid {what} for {}: {}", spec.model.name, why.join("; "));
    }
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(cfg) = &mla_cfg {
            v["mla"] = serde_json::json!({
                "num_heads": cfg.num_heads, "tp": cfg.tp, "heads_per_rank": cfg.heads_per_rank(), "scaled_down": scaled_down,
            });
        }
        emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        let mut text = format_report(&report, start.elapsed().as_secs_f64());
        if let Some(cfg) = &mla_cfg {
            let size = if scaled_down {
                format!(
                    "scaled down from {}; --full-size for all",
                    spec.model.num_heads
                )
            } else {
                "full size".to_string()
            };
            let line = format!(
                "MLA layer: {} heads ({size}), tp {}: each rank computes {} heads against the replicated latent cache\n",
                cfg.num_heads,
                cfg.tp,
                cfg.heads_per_rank()
            );
            text.insert_str(text.find('\n').map_or(0, |i| i + 1), &line);
        }
        emit(&text);
    }
    Ok(ExitCode::from(if report.passed() {
        exit::OK
    } else {
        exit::FAILED
    }))
}

/// Validates the flags against the preset's attention family before any work.
fn spec(a: &Args) -> anyhow::Result<WorkloadSpec> {
    let model = preset(&a.model)?;
    let kind = WorkloadKind::parse(&a.workload)?;
    if model.is_mla() {
        check_tp(model, a.tp)?;
    } else {
        reject_mla_flags(model, a.tp, a.scale_down)?;
        if a.full_size {
            anyhow::bail!(
                "invalid --full-size for the MHA preset {}: it shapes MLA layers",
                model.name
            );
        }
    }
    Ok(WorkloadSpec {
        model,
        kind,
        requests: bounded(
            "--requests",
            a.requests.unwrap_or(kind.default_requests()),
            1,
            &MAX_REQUESTS,
        )?,
        seed: a.seed,
        backend: backend(model, &a.backend)?,
        block_size: a
            .block_size
            .map(|b| bounded("--block-size", b, 1, &MAX_BLOCK_SIZE))
            .transpose()?,
    })
}

/// `all` -> `None`; otherwise a backend of `model`'s family (MHA or MLA), by
/// vLLM enum name in any case.
fn backend(model: &ModelPreset, name: &str) -> anyhow::Result<Option<BackendName>> {
    let Some(name) = backend_choice(name) else {
        return Ok(None);
    };
    let (this, other) = if model.is_mla() {
        (mla::parse(&name), backends::parse(&name))
    } else {
        (backends::parse(&name), mla::parse(&name))
    };
    match this {
        Ok(b) => Ok(Some(b)),
        Err(_) if other.is_ok() => Err(wrong_family(&name, model)),
        Err(e) => Err(e.into()),
    }
}

fn format_report(r: &WorkloadReport, seconds: f64) -> String {
    let mut s = format!(
        "{} x {} requests ({}), seed {}: {} steps, {} tokens, block size {}, tolerance atol {:.1e} rtol {:.1e}, {:.1}s\n",
        r.model,
        r.requests,
        r.workload.name(),
        r.seed,
        r.steps,
        r.tokens,
        r.block_size,
        r.tolerance.atol,
        r.tolerance.rtol,
        seconds
    );
    let w = r
        .backends
        .iter()
        .map(|b| b.backend.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let f = r
        .backends
        .iter()
        .map(|b| b.flavour.len())
        .max()
        .unwrap_or(7)
        .max(7);
    s += &format!(
        "{:<w$}  {:>5}  {:>6}  {:>14}  {:>14}  {:<7}  {:<f$}  reason\n",
        "backend", "steps", "tokens", "max_err_vs_ref", "max_diff_other", "status", "flavour"
    );
    for b in &r.backends {
        let ran = b.status != Status::Skipped;
        let num = |x: f64| if ran { format!("{x:.3e}") } else { "-".into() };
        s += &format!(
            "{:<w$}  {:>5}  {:>6}  {:>14}  {:>14}  {:<7}  {:<f$}  {}\n",
            b.backend,
            b.steps,
            b.tokens,
            num(b.max_abs_err_vs_ref),
            num(b.max_diff_vs_others),
            b.status.name(),
            b.flavour,
            b.reason.as_deref().unwrap_or("").replace('\n', " ")
        );
    }
    s
}
