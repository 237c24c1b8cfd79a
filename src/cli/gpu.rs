//! `attnlab gpu compile --target gfx90a|gfx940|gfx942|gfx950|sm_90 [--json]`: compiles every
//! kernel family (every representative dtype variant) for one target with no
//! device present, and reports per kernel. Exit 0 when all compile, 1 when
//! any fails or for a bad target, 3 without the target's compiler (0 with
//! `--allow-no-device`).

use anyhow::Context;
use super::util::{emit, exit, no_device, progress, spinner, NoDevice};
use attnlab_gpu::bench::{self, BenchOptions, BenchReport};
use attnlab_gpu::compile::{compile_families_with, CompileReport};
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
            allow_no_device,
        } => {
            let bar = progress(json, 0, "gpu compile");
            let report =
                compile_families_with(&target, family.as_deref(), resources, |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                });
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

/// The device for `bench --gpu [--device auto|cuda|hip|host]`: `Err(why)`
/// when there is none and `allow` (`--allow-no-device`), else no device is
/// an exit-3 error. `auto` takes whichever GPU is present and, unlike
/// `diff`, does not fall back to the host device: the bench grid's caches
/// (up to 24 GiB) and the CPU's wall time would take hours and measure no
/// GPU; the host device runs when named.
pub fn open_for_bench(
    device: &str,
    wave: Option<u32>,
    allow: bool,
) -> anyhow::Result<Result<Gpu, String>> {
    let opened = match DeviceKind::parse(device, wave)? {
        DeviceKind::Auto { .. } => Gpu::open(),
        kind => Gpu::open_kind(kind),
    };
    match opened {
        Ok(g) => Ok(Ok(g)),
        Err(GpuError::NoDevice(why)) if allow => Ok(Err(why)),
        Err(GpuError::NoDevice(why)) => {
            Err(NoDevice(format!("no device, nothing measured: {why}")).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// `attnlab bench --gpu`: the table on stdout (text mode), and
/// `bench-gpu.json` + `bench-gpu.svg` written to `$ATTNLAB_BENCH_DIR`
/// (default: the current folder); returns the report as JSON (for
/// `--json`). `--filter`: only the rows whose label contains it
/// (`attnlab_gpu::bench::row_label`). Without a device (allowed): one line,
/// and `{"device": null, "skipped": why}`.
pub fn bench(
    gpu: Result<Gpu, String>,
    args: &super::bench::Args,
    repeats: usize,
) -> anyhow::Result<serde_json::Value> {
    let gpu = match gpu {
        Ok(g) => g,
        Err(why) => {
            if !args.json {
                emit(&format!("no device, nothing measured on a GPU: {why}\n"));
            }
            return Ok(serde_json::json!({"device": null, "skipped": why}));
        }
    };
    let opts = BenchOptions {
        repeats,
        filter: args.filter.clone(),
        ..BenchOptions::default()
    };
    // Read the comparison file first: a bad file fails before the GPU work.
    let external = match &args.vllm {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--vllm {}: cannot read it", path.display()))?;
            Some(bench::parse_external_rows(&text).map_err(|e| {
                anyhow::Error::new(attnlab_shared::error::Error::invalid(
                    "--vllm",
                    path.display(),
                    e,
                ))
            })?)
        }
        None => None,
    };
    let bar = spinner(args.json, "bench --gpu");
    let report = bench::run(&gpu, opts);
    bar.finish_and_clear();
    let report = report?;
    let dir = std::path::PathBuf::from(
        std::env::var_os("ATTNLAB_BENCH_DIR").unwrap_or_else(|| ".".into()),
    );
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(dir.join("bench-gpu.json"), &text)?;
    std::fs::write(dir.join("bench-gpu.svg"), bench::svg(&report))?;
    let comparisons = external.as_deref().map(|e| bench::compare(&report, e));
    if !args.json {
        print_bench(&report);
        if let Some(c) = &comparisons {
            print_comparisons(c);
        }
        emit(&format!(
            "wrote {} and {}\n",
            dir.join("bench-gpu.json").display(),
            dir.join("bench-gpu.svg").display()
        ));
    }
    let mut value = serde_json::to_value(&report)?;
    if let (Some(c), Some(obj)) = (comparisons, value.as_object_mut()) {
        obj.insert("vs_external".into(), serde_json::to_value(c)?);
    }
    Ok(value)
}

fn print_comparisons(c: &[bench::Comparison]) {
    outln!(
        "  {:<30} {:<24} {:>5} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "ours",
        "theirs",
        "batch",
        "context",
        "heads",
        "ours ms",
        "their ms",
        "speedup",
        "ours/cp",
        "their/cp"
    );
    for x in c {
        outln!(
            "  {:<30} {:<24} {:>5} {:>7} {:>6} {:>9.4} {:>9.4} {:>7.2}x {:>7.1}% {:>7.1}%",
            x.kernel,
            x.external,
            x.batch,
            x.context,
            format!("{}/{}", x.q_heads, x.kv_heads),
            x.median_ms,
            x.external_ms,
            x.speedup,
            100.0 * x.vs_copy,
            100.0 * x.external_vs_copy
        );
    }
}

fn print_bench(r: &BenchReport) {
    outln!(
        "device: {} ({} SMs), device-to-device copy {:.0} GB/s, f32 peak {:.1} TFLOP/s",
        r.device.name,
        r.device.multiprocessors,
        r.copy_gbps,
        r.f32_peak_tflops
    );
    outln!(
        "  {:<32} {:>5} {:>7} {:>7} {:>10} {:>9} {:>8} {:>9}",
        "kernel",
        "batch",
        "context",
        "heads",
        "median ms",
        "GB/s",
        "vs copy",
        "TFLOP/s"
    );
    for row in &r.rows {
        let tf = row.tflops.map_or(String::new(), |t| {
            format!(
                "{t:.2} ({:.0}% of f32 peak)",
                100.0 * row.vs_f32_peak.unwrap_or(0.0)
            )
        });
        outln!(
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
        outln!("  skipped: {s}");
    }
}
