//! `attnlab gpu compile --target gfx90a|gfx940|sm_90 [--json]`: compiles every
//! kernel family (every representative dtype variant) for one target with no
//! device present, and reports per kernel. Exit 0 when all compile, 1 when
//! any fails, 2 for a bad target or a missing compiler.

use attnlab_gpu::compile::{compile_all, CompileReport};
use attnlab_gpu::runtime::Target;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: GpuCommand,
}

#[derive(clap::Subcommand)]
enum GpuCommand {
    /// Compile every kernel for a target (NVRTC for sm_XX, hipcc for gfx*).
    Compile {
        /// gfx90a, gfx940, gfx941, gfx942 or sm_XX (e.g. sm_90).
        #[arg(long, value_parser = parse_target)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        GpuCommand::Compile { target, json } => {
            let report = compile_all(&target)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            Ok(if report.all_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn print_report(r: &CompileReport) {
    println!("compile for {} with {}", r.target, r.compiler);
    for c in &r.results {
        let status = if c.ok {
            format!("ok   {:>8} bytes", c.bytes)
        } else {
            "FAIL".to_string()
        };
        println!("  {:<22} {:<28} {status} {:>6} ms", c.kernel, c.defines, c.millis);
        if let Some(log) = &c.log {
            for line in log.lines().take(30) {
                println!("      {line}");
            }
        }
    }
    let ok = r.results.iter().filter(|c| c.ok).count();
    println!("{ok} of {} compiled", r.results.len());
}
