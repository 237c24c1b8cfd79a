//! `attnlab replay FILE... [--backend NAME|all] [--json] [--summary]`:
//! attn-fixture/1 and /2 files through the emulated backends (see
//! `attnlab_sim::replay`), with pass/fail, ULP fidelity numbers per row, and
//! with `--summary` one line per (backend, op, dtype).

use attnlab_sim::replay::{format_summary, format_table, replay_paths, summarize, Status};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Fixture files (.safetensors) or directories of them.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// One emulated MHA backend (vLLM enum name, e.g. TRITON_ATTN) or `all`.
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// Print a JSON array of rows {file, op, backend, status, reason, max_abs_err, max_rel_err,
    /// mismatches, dtype, kv_cache_dtype, ulp, reference_ulp, fidelity, fidelity_exact, lse_ulp,
    /// launch};
    /// with --summary an object {summary, results}.
    #[arg(long)]
    pub json: bool,
    /// Aggregate per backend, op and dtype: cases, pass/fail/skipped/divergence, bit-exact %,
    /// ULP histogram, max ULP, fidelity ratio (the table only, not every row).
    #[arg(long)]
    pub summary: bool,
}

/// Exit 0 when nothing failed (skips, divergences, capture errors and
/// uncaptured cases are reported, not failures), 1 otherwise.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let backend = (args.backend != "all").then_some(args.backend.as_str());
    let results = replay_paths(&args.files, backend)?;
    match (args.json, args.summary) {
        (true, false) => println!("{}", serde_json::to_string_pretty(&results)?),
        (true, true) => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "summary": summarize(&results),
                "results": results,
            }))?
        ),
        (false, false) => print!("{}", format_table(&results)),
        (false, true) => print!("{}", format_summary(&summarize(&results))),
    }
    let failed = results.iter().any(|r| r.status == Status::Fail);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
