//! `attnlab`: which attention backend vLLM picks on ROCm and why, what it
//! computes step by step, and whether a real GPU agrees bit for bit.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(
    name = "attnlab",
    version,
    about = "Simulation-first testbed for vLLM's ROCm attention backends"
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
