//! `attnlab replay FILE... [--backend NAME|all] [--json]`: attn-fixture/1
//! cases through the emulated backends (see `attnlab_sim::replay`).

use attnlab_sim::replay::{format_table, replay_paths, Status};
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
    /// Print a JSON array of {file, op, backend, status, reason, max_abs_err, max_rel_err, mismatches}.
    #[arg(long)]
    pub json: bool,
}

/// Exit 0 when nothing failed (skips are fine), 1 otherwise.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let backend = (args.backend != "all").then_some(args.backend.as_str());
    let results = replay_paths(&args.files, backend)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", format_table(&results));
    }
    let failed = results.iter().any(|r| r.status == Status::Fail);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
