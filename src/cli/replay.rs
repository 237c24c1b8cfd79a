//! `attnlab replay FILE... [--backend NAME|all] [--json] [--summary]`:
//! attn-fixture/1 and /2 files through the emulated backends (see
//! `attnlab_sim::replay`), with pass/fail, ULP fidelity numbers per row, and
//! with `--summary` one line per (backend, op, dtype). A file that does not
//! load (unreadable, malformed, over a limit) is that file's failed row; the
//! other files still replay.

use super::util::{backend_choice, emit, exit, progress};
use attnlab_sim::backends::flavour::FlavourChoice;
use attnlab_sim::replay::{
    format_summary, format_table, replay_paths_in, summarize, Status, MERGE_ROW,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Fixture files (.safetensors) or directories of them.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// One emulated backend (vLLM enum name in any case, e.g. triton_attn) or `all`.
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
    /// Kernel flavour of the MHA backends: `fma` (the CUDA-core kernels),
    /// `tc` or `auto` (the matrix cores of each file's capture target,
    /// `capture.arch`: what vLLM's kernels used there). A backend with a
    /// launch the flavour has no kernel for is a skipped row saying which.
    #[arg(long, default_value = "fma", value_parser = FlavourChoice::NAMES, ignore_case = true)]
    pub flavour: String,
}

/// Exit 0 when nothing failed (skips, divergences, capture errors and
/// uncaptured cases are reported, not failures), 1 otherwise.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Backend names in any case; the merge kernel's rows by their own name.
    let backend = backend_choice(&args.backend).map(|b| {
        if b.eq_ignore_ascii_case(MERGE_ROW) {
            MERGE_ROW.to_string()
        } else {
            b
        }
    });
    let bar = progress(args.json, args.files.len(), "replay");
    let flavour = FlavourChoice::parse(&args.flavour)?;
    let results = replay_paths_in(&args.files, backend.as_deref(), flavour, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let results = results?;
    match (args.json, args.summary) {
        (true, false) => emit(&format!("{}\n", serde_json::to_string_pretty(&results)?)),
        (true, true) => emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({
                "summary": summarize(&results),
                "results": results,
            }))?
        )),
        (false, false) => emit(&format_table(&results)),
        (false, true) => emit(&format_summary(&summarize(&results))),
    }
    let failed = results.iter().any(|r| r.status == Status::Fail);
    Ok(ExitCode::from(if failed { exit::FAILED } else { exit::OK }))
}
