//! `attnlab cases --backend NAME|all --count N --seed S --out DIR [--edge] [--json]`:
//! writes inputs-only `attn-fixture/2` cases (no `output` yet) for the
//! kernel path of one vLLM backend, or of every backend and the
//! `merge_attn_states` kernel, drawn by `attnlab_sim::cases`. A capture run
//! on a GPU adds the kernels' outputs; `attnlab replay DIR` then measures
//! the emulator against them. Exit 0 when every file was written, 1 on a
//! bad value (docs/src/cli.md).

use super::util::{emit, report};
use attnlab_sim::cases::{generate, Target, MAX_COUNT};
use attnlab_sim::fixture;
use rayon::prelude::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// TRITON_ATTN, ROCM_ATTN, ROCM_AITER_FA, ROCM_AITER_UNIFIED_ATTN, FLEX_ATTENTION,
    /// merge_attn_states, TRITON_MLA, ROCM_AITER_MLA, ROCM_AITER_TRITON_MLA, or `all`.
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// Cases per backend (1..=10000).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Seed: the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Draw every odd case in a boundary regime (window 1, window at a block edge, fully
    /// masked first tile, extreme logits, |s|/softcap > 88, +-inf LSEs, last block full).
    #[arg(long)]
    pub edge: bool,
    /// Print {"out", "files": [{file, backend, path, op, dtype, bytes, tags}]} as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match write_cases(&args) {
        Ok(files) => {
            if args.json {
                emit(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&json!({"out": args.out, "files": files}))?
                ));
            } else {
                let bytes: u64 = files.iter().filter_map(|f| f["bytes"].as_u64()).sum();
                emit(&format!(
                    "wrote {} cases ({:.1} MB) to {}\n",
                    files.len(),
                    bytes as f64 / 1e6,
                    args.out.display()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report(&e, args.json)),
    }
}

fn write_cases(args: &Args) -> anyhow::Result<Vec<serde_json::Value>> {
    let targets = Target::parse(&args.backend)?;
    if args.count == 0 || args.count > MAX_COUNT {
        anyhow::bail!(
            "invalid --count {}: allowed: 1..={MAX_COUNT} cases per backend",
            args.count
        );
    }
    std::fs::create_dir_all(&args.out).map_err(|e| {
        anyhow::anyhow!(
            "invalid --out '{}': cannot create the directory: {e}",
            args.out.display()
        )
    })?;
    let per_target: Vec<anyhow::Result<Vec<serde_json::Value>>> = targets
        .par_iter()
        .map(|&t| {
            let cases = generate(t, args.count, args.seed, args.edge)?;
            let mut files = Vec::with_capacity(cases.len());
            for (name, f) in cases {
                let bytes = fixture::write(&f)?;
                let path = args.out.join(&name);
                std::fs::write(&path, &bytes)
                    .map_err(|e| anyhow::anyhow!("cannot write '{}': {e}", path.display()))?;
                files.push(json!({
                    "file": name,
                    "backend": f.header.backend,
                    "path": f.header.path,
                    "op": f.header.op.name(),
                    "dtype": f.header.dtype.name(),
                    "bytes": bytes.len(),
                    "tags": f.header.tags,
                }));
            }
            Ok(files)
        })
        .collect();
    let mut all = Vec::new();
    for r in per_target {
        all.extend(r?);
    }
    Ok(all)
}
