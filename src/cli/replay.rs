//! `attnlab replay FILE... [--backend NAME|all] [--json]`: attn-fixture/1
//! cases through the emulated backends (see `attnlab_sim::replay`). A file
//! that does not load (unreadable, malformed, over a limit) is that file's
//! failed row; the other files still replay.

use super::util::{backend_choice, emit, exit, progress};
use attnlab_sim::replay::{format_table, replay_paths_with, Status};
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
    /// Print a JSON array of {file, op, backend, status, reason, max_abs_err, max_rel_err, mismatches}.
    #[arg(long)]
    pub json: bool,
}

/// Exit 0 when nothing failed (skips are fine), 1 otherwise.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let backend = backend_choice(&args.backend);
    let bar = progress(args.json, args.files.len(), "replay");
    let results = replay_paths_with(&args.files, backend.as_deref(), |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let results = results?;
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&results)?));
    } else {
        emit(&format_table(&results));
    }
    let failed = results.iter().any(|r| r.status == Status::Fail);
    Ok(ExitCode::from(if failed { exit::FAILED } else { exit::OK }))
}
