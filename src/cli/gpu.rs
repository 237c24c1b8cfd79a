//! `attnlab gpu compile --target gfx90a|gfx940|gfx942|gfx950|sm_90 [--json]`: compiles every
//! kernel family (every representative dtype variant) for one target with no
//! device present, and reports per kernel. Exit 0 when all compile, 1 when
//! any fails or for a bad target, 3 without the target's compiler (0 with
//! `--allow-no-device`).

use super::util::{emit, exit, no_device, progress};
use attnlab_gpu::compile::{compile_families_with, CompileReport};
use attnlab_gpu::runtime::GpuError;
use attnlab_gpu::runtime::Target;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: GpuCommand,
}

#[derive(clap::Subcommand)]
enum GpuCommand {
    /// Compile every kernel for a target (NVRTC for sm_XX; hipcc for gfx90a/gfx940, clang >= 20 for
    /// gfx941/gfx942/gfx950; the system C++ compiler for host32/host64).
    Compile {
        /// gfx90a, gfx940, gfx941, gfx942, gfx950, sm_70 .. sm_120 (e.g. sm_90), or
        /// host32 / host64 (the host device's C++ build, 32- or 64-lane waves).
        #[arg(long, value_parser = parse_target)]
        target: Target,
        #[arg(long)]
        json: bool,
        /// Only this kernel family (e.g. paged_decode).
        #[arg(long, value_name = "FAMILY")]
        family: Option<String>,
        /// Print each kernel's registers, spills and shared memory
        /// (ptxas -v on NVIDIA, clang's resource remarks on AMD).
        #[arg(long)]
        resources: bool,
        /// Also write each compiled variant into this folder (created if
        /// missing), named family.DEFINE-value...: a cubin on NVIDIA
        /// (`cuobjdump -sass`, `nvdisasm`), a code object on AMD
        /// (`llvm-objdump -d`), the shared library for host32/host64.
        #[arg(long, value_name = "DIR")]
        dump: Option<std::path::PathBuf>,
        /// Without the target's compiler (NVRTC, hipcc, a C++ compiler):
        /// say so and exit 0 instead of 3.
        #[arg(long)]
        allow_no_device: bool,
    },
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        GpuCommand::Compile {
            target,
            json,
            family,
            resources,
            dump,
            allow_no_device,
        } => {
            let bar = progress(json, 0, "gpu compile");
            let report = compile_families_with(
                &target,
                family.as_deref(),
                resources,
                dump.as_deref(),
                |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            );
            bar.finish_and_clear();
            let report = match report {
                Ok(r) => r,
                // Compiling needs no device, only the target's compiler.
                Err(GpuError::NoDevice(why)) => {
                    let why = format!("no compiler for {}: {why}", target.name());
                    return no_device(why, allow_no_device, json, |w| {
                        format!("{w}; nothing compiled")
                    });
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                emit(&format!("{}\n", serde_json::to_string_pretty(&report)?));
            } else {
                print_report(&report);
            }
            Ok(ExitCode::from(if report.all_ok() {
                exit::OK
            } else {
                exit::FAILED
            }))
        }
    }
}

fn print_report(r: &CompileReport) {
    outln!("compile for {} with {}", r.target, r.compiler);
    for c in &r.results {
        let status = if c.ok {
            format!("ok   {:>8} bytes", c.bytes)
        } else {
            "FAIL".to_string()
        };
        outln!(
            "  {:<22} {:<28} {status} {:>6} ms",
            c.kernel,
            c.defines,
            c.millis
        );
        if let Some(log) = &c.log {
            for line in log.lines().take(30) {
                outln!("      {line}");
            }
        }
        for line in &c.resources {
            outln!("      {line}");
        }
    }
    let ok = r.results.iter().filter(|c| c.ok).count();
    outln!("{ok} of {} compiled", r.results.len());
}
