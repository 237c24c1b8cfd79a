//! `attnlab`: which attention backend vLLM picks on ROCm and why, what it
//! computes step by step, and whether a real GPU agrees bit for bit.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(
    name = "attnlab",
    version,
    about = "Simulation-first testbed for vLLM's ROCm attention backends",
    after_help = "Conventions (docs/src/cli.md): backend names are vLLM's enum names in any case, `all` for every one; \
every subcommand takes --json, errors included ({\"error\": {\"type\", \"message\"}} on stdout). \
Exit status: 0 ok; 1 a failed result or bad input; 2 usage; 3 no GPU device or compiler (--allow-no-device: 0). \
Sizes are bounded by named limits, raised with ATTNLAB_MAX_<NAME>=N; memory by ATTNLAB_MAX_MEMORY (default: half the machine's)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Which attention backend vLLM selects for this configuration, and why.
    Select(cli::select::Args),
    /// Scheduler steps and the kernel calls a backend makes for a workload.
    Trace(cli::trace::Args),
    /// Where a token's K and V elements live in a KV-cache layout.
    Layout(cli::layout::Args),
    /// Replay attn-fixture/1 and /2 files through the emulated backends, with ULP fidelity.
    Replay(cli::replay::Args),
    /// Write inputs-only attn-fixture/2 cases for vLLM kernel paths (a GPU capture adds outputs).
    Cases(cli::cases::Args),
    /// Run a scheduled workload through one or all backends against the f64 reference.
    Run(cli::run::Args),
    /// Run kernels on a GPU and diff them bit for bit against the emulator.
    Diff(cli::diff::Args),
    /// Benchmarks (emulator on the CPU, kernels on a GPU).
    Bench(cli::bench::Args),
    /// GPU utilities (compile every kernel for a target).
    Gpu(cli::gpu::Args),
    /// The real-bug zoo: bugs that reached vLLM/AITER users, re-injected; does the property suite catch them?
    Zoo(cli::zoo::Args),
}

/// Parses the command line, checks the `ATTNLAB_MAX_*` limits in the
/// environment, runs the subcommand, and turns every error into one line (or
/// `{"error": {"type", "message"}}` with `--json`) and an exit status
/// (`cli::util::exit`, docs/src/cli.md).
fn main() -> ExitCode {
    // Known before parsing, so that a usage error honours --json too.
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::util::clap_error(e, json),
    };
    if let Err(e) = attnlab_shared::limits::validate_env() {
        return cli::util::report(&e.into(), json);
    }
    let result = match cli.command {
        Command::Select(a) => cli::select::run(a),
        Command::Trace(a) => cli::trace::run(a),
        Command::Layout(a) => cli::layout::run(a),
        Command::Replay(a) => cli::replay::run(a),
        Command::Cases(a) => cli::cases::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::Diff(a) => cli::diff::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Gpu(a) => cli::gpu::run(a),
        Command::Zoo(a) => cli::zoo::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => cli::util::report(&e, json),
    }
}
