//! `attnlab diff [--backend NAME|all] [--cases N] [--seed S] [--json] [--list]
//! [--device auto|cuda|hip|host] [--wave 32|64]`: runs each kernel on the
//! emulator and on the GPU (or, with `--device host`, on the CPU through the
//! host device, with 32- or 64-lane waves) over random cases and compares
//! bit patterns. `auto` (the default) takes whichever GPU is present and
//! falls back to the host device, saying why in one line. Per kernel: cases,
//! elements, bit-exact count and the first mismatch (indices, both values,
//! ulp distance). Exit 1 on any mismatch; without any device (a named GPU
//! that is absent), exit 3 (`--allow-no-device`: one line, exit 0).
//!
//! `--flavour fma|tc|auto` (backend diffs): the kernel flavour both sides
//! run, `tc` the device's matrix cores, `auto` what vLLM's kernels use
//! there (`attnlab_sim::backends::flavour`).
//!
//! `--backend mma --probe`: instead of the diff, runs each matrix
//! instruction and reports which parameter set of its model fits the
//! device (`attnlab_gpu::diff::mma::probe`). Exit 1 if the published
//! model mismatches.

use super::util::{bounded, exit, no_device, progress, Usage};
use attnlab_gpu::diff::{select, DiffOptions, KernelReport, KERNEL_DIFFS};
use attnlab_gpu::kernels::Gpu;
use attnlab_gpu::runtime::{DeviceKind, GpuError};
use attnlab_shared::limits::{MAX_CASES, MAX_SECONDS};
use attnlab_sim::backends::flavour::FlavourChoice;
use serde_json::json;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A kernel family (contract, reshape_and_cache, ...) or backend
    /// (TRITON_ATTN, ...), in any case, or `all`; `--list` names them.
    #[arg(long, default_value = "all", value_name = "NAME|all")]
    backend: String,
    /// Random cases per kernel.
    #[arg(long, allow_negative_numbers = true, default_value_t = 100)]
    cases: usize,
    /// Without a device: say so and exit 0 instead of 3.
    #[arg(long)]
    allow_no_device: bool,
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
    /// Print the kernel and backend names `--backend` takes, one per line (a JSON array with --json), and exit.
    #[arg(long)]
    list: bool,
    /// The device: `auto` (whichever GPU is present, else the host device),
    /// `cuda`, `hip`, or `host` (the kernels compiled by the system C++
    /// compiler and run on the CPU).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cuda", "hip", "host"], ignore_case = true)]
    device: String,
    /// Lanes per wave of the host device (`--device host`, or `auto` without
    /// a GPU): 32 is NVIDIA's warp, 64 AMD's wave. Default 32.
    #[arg(long, value_parser = ["32", "64"])]
    wave: Option<String>,
    /// Per kernel: stop drawing new cases after this many seconds and report
    /// the cases that ran (for device calls with a hard time limit).
    #[arg(long, allow_negative_numbers = true, value_name = "SECONDS", value_parser = parse_seconds)]
    max_seconds: Option<f64>,
    /// With `--backend mma`: test the model's parameters against the device
    /// (the published set, each parameter changed alone, and a search when
    /// the published set mismatches) instead of the plain diff.
    #[arg(long)]
    probe: bool,
    /// Backend diffs: the kernel flavour both the emulator and the device
    /// run: `fma` (the CUDA-core kernels), `tc` (the device's matrix
    /// cores: sm_90, or on the host device sm_90 at wave 32 and gfx942 at
    /// 64) or `auto` (what vLLM's kernels use there: the matrix cores).
    /// Kernel families are their own flavour and take only `fma`.
    #[arg(long, default_value = "fma", value_parser = FlavourChoice::NAMES, ignore_case = true)]
    flavour: String,
}

/// Whether a diff name is a backend's (vLLM enum names are upper case).
fn is_backend(kernel: &str) -> bool {
    kernel.chars().all(|c| c.is_ascii_uppercase() || c == '_')
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

/// `--backend` in any case: `all`, or the listed name it matches.
fn diff_name(name: &str) -> &str {
    if name.eq_ignore_ascii_case("all") {
        return "all";
    }
    // An exact name first: FLEX_ATTENTION (the backend) and flex_attention
    // (its kernel family) differ only in case.
    let names = || KERNEL_DIFFS.iter().map(|d| d.kernel);
    names()
        .find(|&k| k == name)
        .or_else(|| names().find(|k| k.eq_ignore_ascii_case(name)))
        .unwrap_or(name)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.list {
        let names: Vec<&str> = KERNEL_DIFFS.iter().map(|d| d.kernel).collect();
        match args.json {
            true => outln!("{}", json!(names)),
            false => outln!("{}", names.join("\n")),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.probe && !args.backend.eq_ignore_ascii_case("mma") {
        anyhow::bail!(
            "--probe applies to --backend mma only (got --backend {})",
            args.backend
        );
    }
    let diffs = select(diff_name(&args.backend))?;
    let flavour = FlavourChoice::parse(&args.flavour)?;
    // A single kernel family with a flavour is a mistake; `all` runs the
    // families as they are and the backends in the flavour.
    if let (true, [d]) = (flavour != FlavourChoice::Fma, diffs.as_slice()) {
        if !is_backend(d.kernel) {
            anyhow::bail!(
                "invalid --flavour {} for --backend {}: the flavour applies to backends (a kernel family is its own flavour, e.g. flash_varlen_tc)",
                flavour.name(),
                d.kernel
            );
        }
    }
    bounded("--cases", args.cases, 1, &MAX_CASES)?;
    if let Some(s) = args.max_seconds {
        MAX_SECONDS.check_f64("--max-seconds", s)?;
    }
    let device = args.device.to_ascii_lowercase();
    if let (Some(w), "cuda" | "hip") = (args.wave.as_deref(), device.as_str()) {
        return Err(Usage(format!(
            "--wave {w} applies to the host device only (--device host or auto), not --device {device}"
        ))
        .into());
    }
    let wave = args
        .wave
        .as_deref()
        .map(|w| if w == "64" { 64 } else { 32 });
    let kind = DeviceKind::parse(&device, wave)?;
    let opened = Gpu::open_kind_noting(kind);
    let (gpu, fallback) = match opened {
        Ok(g) => g,
        Err(GpuError::NoDevice(why)) => {
            return no_device(
                format!("no device: {why}"),
                args.allow_no_device,
                args.json,
                |w| format!("{w}; nothing compared"),
            )
        }
        Err(e) => return Err(e.into()),
    };
    let opts = DiffOptions {
        flavour,
        ..DiffOptions::new(args.cases, args.seed)
    };
    let info = gpu.dev.info().clone();
    if args.probe {
        return probe(&gpu, &args, opts);
    }
    if !args.json {
        if let Some(why) = &fallback {
            outln!("no GPU ({why}); using the host device");
        }
        outln!(
            "device: {} ({}, {} SMs), {} cases per kernel, seed {}, backend flavour {}",
            info.name,
            info.target.name(),
            info.multiprocessors,
            opts.cases,
            opts.seed,
            flavour.name()
        );
    }
    let mut reports: Vec<KernelReport> = Vec::new();
    // A diff that errors (a launch failure, an input its kernel rejects) is
    // reported and fails the run, but does not hide the others' results.
    let mut errors: Vec<(String, String)> = Vec::new();
    let bar = progress(args.json, diffs.len(), "diff");
    for d in diffs {
        bar.set_message(d.kernel);
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
                    bar.suspend(|| print_report(&r, start.elapsed().as_secs_f64()));
                }
                reports.push(r);
            }
            Err(e) => {
                if !args.json {
                    bar.suspend(|| outln!("  {:<24} ERROR: {e}", d.kernel));
                }
                errors.push((d.kernel.to_string(), e.to_string()));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let all_exact = errors.is_empty() && reports.iter().all(|r| r.passed());
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "device": info, "gpu_fallback": fallback, "cases": opts.cases, "seed": opts.seed, "flavour": flavour.name(), "bit_exact": all_exact, "kernels": reports, "errors": errors })
            )?
        );
    } else {
        let elements: u64 = reports.iter().map(|r| r.elements).sum();
        outln!(
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
    Ok(ExitCode::from(if all_exact {
        exit::OK
    } else {
        exit::FAILED
    }))
}

fn probe(gpu: &Gpu, args: &Args, opts: DiffOptions) -> anyhow::Result<ExitCode> {
    let start = std::time::Instant::now();
    let opts = DiffOptions {
        deadline: args
            .max_seconds
            .map(|s| start + std::time::Duration::from_secs_f64(s)),
        ..opts
    };
    let results = attnlab_gpu::diff::mma::probe(gpu, opts)?;
    let info = gpu.dev.info();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "device": info, "seed": opts.seed, "probe": results })
            )?
        );
    } else {
        println!("device: {} ({})", info.name, info.target.name());
        for r in &results {
            println!(
                "{}: {} instructions, {} elements",
                r.instruction, r.cases, r.elements
            );
            println!(
                "  published: {} -> {} mismatches",
                r.published.params, r.published.mismatches
            );
            if let Some(f) = &r.published.first {
                println!("    first: {f}");
            }
            for a in &r.one_at_a_time {
                println!(
                    "    {:<17} {:<11} {:>10} mismatches",
                    a.parameter, a.value, a.mismatches
                );
            }
            if r.published.mismatches > 0 {
                println!(
                    "  best: {} -> {} mismatches",
                    r.best.params, r.best.mismatches
                );
                if let Some(f) = &r.best.first {
                    println!("    first: {f}");
                }
            }
            println!("  verdict: {}", r.verdict);
        }
        println!("({:.1} s)", start.elapsed().as_secs_f64());
    }
    Ok(
        if results
            .iter()
            .all(|r| r.cases > 0 && r.published.mismatches == 0)
        {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

fn print_report(r: &KernelReport, secs: f64) {
    let verdict = if r.passed() { "bit-exact" } else { "MISMATCH" };
    outln!(
        "  {:<24} {:>6} cases {:>12} elements {:>12} exact  {verdict}  ({secs:.1} s)",
        r.kernel,
        r.cases,
        r.elements,
        r.bit_exact
    );
    if let Some(m) = &r.first_mismatch {
        outln!("    first mismatch, case {}: {}", m.case, m.case_desc);
        outln!(
            "    {}{:?}: sim {} ({}) gpu {} ({}), {} ulp",
            m.tensor,
            m.index,
            m.sim_bits,
            m.sim_value,
            m.gpu_bits,
            m.gpu_value,
            m.ulp
        );
    }
    for p in &r.parts {
        println!(
            "    {:<32} {:>8} instructions {:>12} elements {:>12} exact  {}",
            p.kernel,
            p.cases,
            p.elements,
            p.bit_exact,
            if p.passed() { "bit-exact" } else { "MISMATCH" }
        );
    }
}
