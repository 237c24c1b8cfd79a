//! `attnlab run --backend NAME|all [--model PRESET] [--workload KIND]
//! [--requests N] [--seed S] [--json]`: a whole scheduled workload through the
//! emulated backends with seeded random Q/K/V, every step checked against the
//! f64 reference and the backends against each other
//! (`attnlab_sim::workload`).

use attnlab_shared::model::preset;
use attnlab_sim::replay::Status;
use attnlab_sim::workload::{run_workload, WorkloadKind, WorkloadReport, WorkloadSpec};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// One emulated MHA backend (vLLM enum name, e.g. ROCM_AITER_FA) or `all`.
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// Model preset whose attention shape (heads, kv heads, head size, dtype, block size) is used.
    #[arg(long, default_value = "llama-3.1-8b")]
    pub model: String,
    /// Request mix: decode, prefill, mixed (chunked prefill beside decodes) or long-extend.
    #[arg(long, default_value = "mixed")]
    pub workload: String,
    /// Number of requests (default: 8 for decode/mixed, 4 for prefill, 2 for long-extend).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Seed of the request lengths and of Q/K/V.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON (no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// Exit 0 when every backend that ran matched, 1 on any mismatch.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let kind = WorkloadKind::parse(&args.workload)?;
    let spec = WorkloadSpec {
        model: preset(&args.model)?,
        kind,
        requests: args.requests.unwrap_or(kind.default_requests()),
        seed: args.seed,
        backend: (args.backend != "all").then(|| args.backend.clone()),
    };
    let bar = if args.json || !std::io::stderr().is_terminal() { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(ProgressStyle::with_template("{spinner} step {pos}/{len} {wide_bar} {elapsed}")?);
    let start = Instant::now();
    let report = run_workload(&spec, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format_report(&report, start.elapsed().as_secs_f64()));
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
    let w = r.backends.iter().map(|b| b.backend.len()).max().unwrap_or(7).max(7);
    s +=
        &format!("{:<w$}  {:>5}  {:>6}  {:>14}  {:>14}  {:<7}  reason\n", "backend", "steps", "tokens", "max_err_vs_ref", "max_diff_other", "status");
    for b in &r.backends {
        let ran = b.status != Status::Skipped;
        let num = |x: f64| if ran { format!("{x:.3e}") } else { "-".into() };
        s += &format!(
            "{:<w$}  {:>5}  {:>6}  {:>14}  {:>14}  {:<7}  {}\n",
            b.backend,
            b.steps,
            b.tokens,
            num(b.max_abs_err_vs_ref),
            num(b.max_diff_vs_others),
            b.status.name(),
            b.reason.as_deref().unwrap_or("")
        );
    }
    s
}
