//! `attnlab gpu compile --target gfx90a|gfx940|gfx942|gfx950|sm_90 [--json]`: compiles every
//! kernel family (every representative dtype variant) for one target with no
//! device present, and reports per kernel. Exit 0 when all compile, 1 when
//! any fails, 2 for a bad target or a missing compiler.

use attnlab_gpu::bench::{self, BenchOptions, BenchReport};
use attnlab_gpu::compile::{compile_families, CompileReport};
use attnlab_gpu::kernels::Gpu;
use attnlab_gpu::runtime::Target;
use attnlab_gpu::runtime::{DeviceKind, GpuError};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: GpuCommand,
}

#[derive(clap::Subcommand)]
enum GpuCommand {
    /// Compile every kernel for a target (NVRTC for sm_XX; hipcc for gfx90a/gfx940, clang >= 20 for gfx941/gfx942/gfx950).
    Compile {
        /// gfx90a, gfx940, gfx941, gfx942, gfx950, sm_XX (e.g. sm_90), host32 or host64.
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
        } => {
            let report = compile_families(&target, family.as_deref(), resources)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            Ok(if report.all_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
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
        println!(
            "  {:<22} {:<28} {status} {:>6} ms",
            c.kernel, c.defines, c.millis
        );
        if let Some(log) = &c.log {
            for line in log.lines().take(30) {
                println!("      {line}");
            }
        }
        for line in &c.resources {
            println!("      {line}");
        }
    }
    let ok = r.results.iter().filter(|c| c.ok).count();
    println!("{ok} of {} compiled", r.results.len());
}

/// `attnlab bench --gpu [--device auto|cuda|hip|host] [--json]`: the table on
/// stdout (or JSON), and `bench-gpu.json` + `bench-gpu.svg` written to
/// `$ATTNLAB_BENCH_DIR` (default: the current folder). Without a device: one
/// line, exit 0. `auto` takes whichever GPU is present and, unlike `diff`,
/// does not fall back to the host device: the bench grid's caches (up to
/// 24 GiB) and the CPU's wall time would take hours and measure no GPU; the
/// host device runs when named. `filter`: only the rows whose label contains
/// it (`attnlab_gpu::bench::row_label`).
pub fn bench(
    device: &str,
    wave: Option<u32>,
    json: bool,
    repeats: usize,
    filter: Option<String>,
) -> anyhow::Result<ExitCode> {
    let opened = match DeviceKind::parse(device, wave)? {
        DeviceKind::Auto { .. } => Gpu::open(),
        kind => Gpu::open_kind(kind),
    };
    let gpu = match opened {
        Ok(g) => g,
        Err(GpuError::NoDevice(why)) => {
            println!("no device, nothing measured: {why}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    let opts = BenchOptions {
        repeats: repeats.max(1),
        filter,
        ..BenchOptions::default()
    };
    let report = bench::run(&gpu, opts)?;
    let dir = std::path::PathBuf::from(
        std::env::var_os("ATTNLAB_BENCH_DIR").unwrap_or_else(|| ".".into()),
    );
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(dir.join("bench-gpu.json"), &text)?;
    std::fs::write(dir.join("bench-gpu.svg"), bench::svg(&report))?;
    if json {
        println!("{text}");
    } else {
        print_bench(&report);
        println!(
            "wrote {} and {}",
            dir.join("bench-gpu.json").display(),
            dir.join("bench-gpu.svg").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_bench(r: &BenchReport) {
    println!(
        "device: {} ({} SMs), device-to-device copy {:.0} GB/s, f32 peak {:.1} TFLOP/s",
        r.device.name, r.device.multiprocessors, r.copy_gbps, r.f32_peak_tflops
    );
    println!(
        "  {:<32} {:>5} {:>7} {:>7} {:>10} {:>9} {:>8} {:>9}",
        "kernel", "batch", "context", "heads", "median ms", "GB/s", "vs copy", "TFLOP/s"
    );
    for row in &r.rows {
        let tf = row.tflops.map_or(String::new(), |t| {
            format!(
                "{t:.2} ({:.0}% of f32 peak)",
                100.0 * row.vs_f32_peak.unwrap_or(0.0)
            )
        });
        println!(
            "  {:<32} {:>5} {:>7} {:>7} {:>10.3} {:>9.0} {:>7.1}% {tf}",
            row.kernel,
            row.batch,
            row.context,
            format!("{}/{}", row.q_heads, row.kv_heads),
            row.median_ms,
            row.gbps,
            100.0 * row.vs_copy
        );
    }
    for s in &r.skipped {
        println!("  skipped: {s}");
    }
}
