//! `attnlab diff [--backend NAME|all] [--cases N] [--seed S] [--json] [--list]
//! [--device auto|cuda|hip|host] [--wave 32|64]`: runs each kernel on the
//! emulator and on the GPU (or, with `--device host`, on the CPU through the
//! host device, with 32- or 64-lane waves) over random cases and compares
//! bit patterns. `auto` (the default) takes whichever GPU is present and
//! falls back to the host device, saying why in one line. Per kernel: cases,
//! elements, bit-exact count and the first mismatch (indices, both values,
//! ulp distance). Exit 1 on any mismatch; without any device it says so in
//! one line and exits 0 with nothing compared.

use attnlab_gpu::diff::{select, DiffOptions, KernelReport};
use attnlab_gpu::kernels::Gpu;
use attnlab_gpu::runtime::{open_kind_noting, DeviceKind, GpuError};
use serde_json::json;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A kernel (contract, reshape_and_cache, ...) or `all`.
    #[arg(long, default_value = "all", value_name = "NAME|all")]
    backend: String,
    /// Random cases per kernel.
    #[arg(long, default_value_t = 100)]
    cases: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
    /// Print the kernel and backend names `--backend` takes, one per line, and exit.
    #[arg(long)]
    list: bool,
    /// The device: `auto` (whichever GPU is present, else the host device),
    /// `cuda`, `hip`, or `host` (the kernels compiled by the system C++
    /// compiler and run on the CPU).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cuda", "hip", "host"])]
    device: String,
    /// Lanes per wave of the host device (`--device host`, or `auto` without
    /// a GPU): 32 is NVIDIA's warp, 64 AMD's wave. Default 32.
    #[arg(long, value_parser = ["32", "64"])]
    wave: Option<String>,
    /// Per kernel: stop drawing new cases after this many seconds and report
    /// the cases that ran (for device calls with a hard time limit).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    max_seconds: Option<f64>,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.list {
        for d in attnlab_gpu::diff::KERNEL_DIFFS {
            println!("{}", d.kernel);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let diffs = select(&args.backend)?;
    let wave = args
        .wave
        .as_deref()
        .map(|w| if w == "64" { 64 } else { 32 });
    let kind = DeviceKind::parse(&args.device, wave)?;
    let opened = open_kind_noting(kind).map(|(dev, note)| (Gpu::new(dev), note));
    let (gpu, fallback) = match opened {
        Ok(g) => g,
        Err(GpuError::NoDevice(why)) => {
            if args.json {
                println!(
                    "{}",
                    json!({ "device": null, "skipped": why, "kernels": [] })
                );
            } else {
                println!("no device, nothing compared: {why}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    let opts = DiffOptions::new(args.cases, args.seed);
    let info = gpu.dev.info().clone();
    if !args.json {
        if let Some(why) = &fallback {
            println!("no GPU ({why}); using the host device");
        }
        println!(
            "device: {} ({}, {} SMs), {} cases per kernel, seed {}",
            info.name,
            info.target.name(),
            info.multiprocessors,
            opts.cases,
            opts.seed
        );
    }
    let mut reports: Vec<KernelReport> = Vec::new();
    // A diff that errors (a launch failure, an input its kernel rejects) is
    // reported and fails the run, but does not hide the others' results.
    let mut errors: Vec<(String, String)> = Vec::new();
    for d in diffs {
        let start = std::time::Instant::now();
        let opts = DiffOptions {
            deadline: args
                .max_seconds
                .map(|s| start + std::time::Duration::from_secs_f64(s)),
            ..opts
        };
        match (d.run)(&gpu, opts) {
            Ok(r) => {
                if !args.json {
                    print_report(&r, start.elapsed().as_secs_f64());
                }
                reports.push(r);
            }
            Err(e) => {
                if !args.json {
                    println!("  {:<24} ERROR: {e}", d.kernel);
                }
                errors.push((d.kernel.to_string(), e.to_string()));
            }
        }
    }
    let all_exact = errors.is_empty() && reports.iter().all(|r| r.passed());
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "device": info, "gpu_fallback": fallback, "cases": opts.cases, "seed": opts.seed, "bit_exact": all_exact, "kernels": reports, "errors": errors })
            )?
        );
    } else {
        let elements: u64 = reports.iter().map(|r| r.elements).sum();
        println!(
            "{} kernels/backends, {elements} elements: {}",
            reports.len(),
            if all_exact {
                "all bit-exact"
            } else if errors.is_empty() {
                "MISMATCH"
            } else {
                "ERRORS"
            }
        );
    }
    Ok(if all_exact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_report(r: &KernelReport, secs: f64) {
    let verdict = if r.passed() { "bit-exact" } else { "MISMATCH" };
    println!(
        "  {:<24} {:>6} cases {:>12} elements {:>12} exact  {verdict}  ({secs:.1} s)",
        r.kernel, r.cases, r.elements, r.bit_exact
    );
    if let Some(m) = &r.first_mismatch {
        println!("    first mismatch, case {}: {}", m.case, m.case_desc);
        println!(
            "    {}{:?}: sim {} ({}) gpu {} ({}), {} ulp",
            m.tensor, m.index, m.sim_bits, m.sim_value, m.gpu_bits, m.gpu_value, m.ulp
        );
    }
}
