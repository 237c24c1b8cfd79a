//! `attnlab bench --cpu [--gpu] [--json]`: emulator throughput per backend on a
//! prefill-shaped and a decode-shaped batch, next to a plain f32 attention
//! (the reference's loops in f32: no tiling, no online softmax) measured in
//! the same run, so the ratio is independent of the machine.
//!
//! FLOPs are counted the same way for every implementation: 4 * head_size *
//! num_heads per visible (query, key) pair (2 for QK^T, 2 for PV). Each
//! measurement is one warm-up run, then the median of `--repeats` runs.
//! `--gpu` measures the HIP kernels instead ([`bench_gpu`]); both
//! flags run both, the CPU part first.

use super::util::{backend_choice, bounded, emit, progress, spinner, NoDevice, Usage};
use anyhow::Context;
use attnlab_gpu::bench::{self as gpu_bench, BenchOptions, BenchReport};
use attnlab_gpu::kernels::Gpu;
use attnlab_gpu::runtime::{DeviceKind, GpuError};
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::limits::{self, MAX_REPEATS, MAX_REQUESTS, MAX_SEQ_LEN};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_shared::model::preset;
use attnlab_sim::backends::{self, by_name, mha_backends, AttentionBackend};
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::reshape_and_cache::{reshape_and_cache, CacheWriter};
use attnlab_sim::reference::paged_attention_in;
use attnlab_sim::workload::seeded_values;
use serde::Serialize;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Benchmark the CPU emulator.
    #[arg(long)]
    pub cpu: bool,
    /// Benchmark the HIP kernels on the GPU (decode grid + prefill, vs a device copy).
    #[arg(long)]
    pub gpu: bool,
    /// With --gpu and no device: say so and exit 0 instead of 3.
    #[arg(long)]
    pub allow_no_device: bool,
    /// One emulated MHA backend (vLLM enum name, any case) or `all`.
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// Model preset giving heads, kv heads, head size and dtype.
    #[arg(long, default_value = "llama-3.1-8b")]
    pub model: String,
    /// Tokens of the prefill-shaped case (one sequence, causal).
    #[arg(long, allow_negative_numbers = true, default_value_t = 2048)]
    pub prefill_tokens: usize,
    /// Sequences of the decode-shaped case (one new token each).
    #[arg(long, allow_negative_numbers = true, default_value_t = 32)]
    pub decode_batch: usize,
    /// Context length of each decode sequence.
    #[arg(long, allow_negative_numbers = true, default_value_t = 4096)]
    pub decode_ctx: usize,
    /// Timed runs per measurement (after one warm-up); the median is reported.
    #[arg(long, allow_negative_numbers = true, default_value_t = 3)]
    pub repeats: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// With --gpu: `auto` (default: whichever GPU is present), `cuda`, `hip`,
    /// or `host` (the kernels on the CPU; its timings are the CPU's wall
    /// time, so it is used only when named, best with --filter).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cuda", "hip", "host"], ignore_case = true)]
    pub device: String,
    /// With --device host: lanes per wave (32 or 64).
    #[arg(long, value_parser = ["32", "64"])]
    pub wave: Option<String>,
    /// With --cpu: `auto` runs torch's `scaled_dot_product_attention` (its CPU
    /// flash kernel, f32, same shapes and thread count) in the same run where
    /// `python3 -c "import torch"` works; `off` skips it.
    #[arg(long, default_value = "auto", value_parser = ["auto", "off"], ignore_case = true)]
    pub torch: String,
    /// With --gpu: only rows whose `"<kernel> b<batch> ctx<context> <hq>/<hkv>"`
    /// label contains this substring or one of its comma-separated alternatives
    /// (e.g. `paged_attention_ll4mi`, `ll4mi b64 ctx8192,2d b64 ctx8192`).
    #[arg(long)]
    pub filter: Option<String>,
    /// With --gpu: a JSON file of rows timed elsewhere in the same call (e.g.
    /// vLLM's Triton kernels by python/scripts/vllm_decode_bench.py; fields
    /// kernel, batch, context, q_heads, kv_heads, median_ms, gbps, tflops),
    /// printed beside our rows of the same shape with the speedup ours/theirs.
    #[arg(long, value_name = "FILE.json")]
    pub vllm: Option<std::path::PathBuf>,
}

/// Block size the bench batches are built with (each backend re-blocks to its kernel block size).
const BLOCK_SIZE: usize = 16;
/// Name of the plain f32 baseline's rows.
const NAIVE: &str = "naive f32";
/// Name of torch SDPA's rows.
const TORCH: &str = "torch sdpa";
/// Bytes the memory-copy yardstick copies: the decode case's K/V bytes,
/// within these bounds (the upper one well past every cache level).
const COPY_BYTES: std::ops::RangeInclusive<usize> = (16 << 20)..=(256 << 20);
/// The torch side of the bench (stdin: the shapes; stdout: one JSON line).
const SDPA_SCRIPT: &str = include_str!("../../python/scripts/bench_sdpa.py");

#[derive(Serialize)]
struct Measurement {
    case: &'static str,
    implementation: String,
    gflop: f64,
    median_s: f64,
    gflops: f64,
    /// gflops / the naive f32 baseline's gflops on the same case.
    vs_naive: f64,
    /// gflops / torch SDPA's gflops on the same case (when torch ran).
    vs_torch: Option<f64>,
    /// K and V bytes read per second (decode: every key of every sequence
    /// once, f32 as the emulator stores them).
    kv_gbps: Option<f64>,
}

/// The machine's memory bandwidth measured in the same run: one large
/// buffer copied by the same rayon threads (bytes copied per second).
#[derive(Serialize)]
struct CopyBandwidth {
    bytes: usize,
    median_s: f64,
    gbps: f64,
}

#[derive(Serialize)]
struct Report {
    model: &'static str,
    threads: usize,
    results: Vec<Measurement>,
    skipped: Vec<(String, String)>,
    copy: CopyBandwidth,
    /// torch's version when its SDPA ran.
    torch: Option<String>,
    /// Why torch did not run (`--torch off`, no python3 or torch, a failure).
    torch_skipped: Option<String>,
}

/// A batch of `num_seqs` sequences, each `q_len` new tokens on top of
/// `seq_len - q_len` cached ones, blocks contiguous.
struct Shape {
    name: &'static str,
    num_seqs: usize,
    q_len: usize,
    seq_len: usize,
}

impl Shape {
    fn metadata(&self, block_size: usize) -> anyhow::Result<AttentionMetadata> {
        let per_seq = self.seq_len.div_ceil(block_size);
        let rows: Vec<Vec<i32>> = (0..self.num_seqs)
            .map(|i| (0..per_seq).map(|j| (i * per_seq + j) as i32).collect())
            .collect();
        let qsl = (0..=self.num_seqs)
            .map(|i| (i * self.q_len) as i32)
            .collect();
        let slots = (0..self.num_seqs * self.q_len).map(|_| -1).collect();
        let m = AttentionMetadata::new(
            block_size,
            self.num_seqs * per_seq,
            qsl,
            vec![self.seq_len as i32; self.num_seqs],
            BlockTableTensor::from_rows(&rows),
            slots,
            true,
        )?;
        Ok(m)
    }

    /// Visible (query, key) pairs under the causal mask.
    fn pairs(&self) -> f64 {
        let ctx = self.seq_len - self.q_len;
        let per_seq: usize = (0..self.q_len).map(|j| ctx + j + 1).sum();
        (per_seq * self.num_seqs) as f64
    }
}

/// A cache in `layout` filled with seeded random K/V through `write`, one
/// sequence at a time (the whole batch's K/V at once would double the memory).
fn filled_cache(
    layout: KvLayout,
    shape: &Shape,
    cfg: &AttnConfig,
    write: impl Fn(&mut KvCache, &[f32], &[f32], &[i64]) -> attnlab_shared::Result<()>,
) -> anyhow::Result<KvCache> {
    let mut cache = KvCache::zeros(layout);
    let n = shape.seq_len * cfg.num_kv_heads() * cfg.head_size();
    let per_seq = shape.seq_len.div_ceil(layout.block_size) * layout.block_size;
    for i in 0..shape.num_seqs {
        let (k, v) = (
            seeded_values(2 * i as u64, n, cfg.dtype()),
            seeded_values(2 * i as u64 + 1, n, cfg.dtype()),
        );
        let slots: Vec<i64> = (0..shape.seq_len)
            .map(|t| (i * per_seq + t) as i64)
            .collect();
        write(&mut cache, &k, &v, &slots)?;
    }
    Ok(cache)
}

/// Median wall time of `repeats` runs after one warm-up.
fn median_seconds(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.cpu && !args.gpu {
        return Err(Usage(
            "choose what to benchmark: --cpu (the emulator), --gpu (the kernels on a device), or both".into(),
        )
        .into());
    }
    let repeats = bounded("--repeats", args.repeats, 1, &MAX_REPEATS)?;
    // The device first: without one (and no --allow-no-device) nothing runs.
    let gpu = match args.gpu {
        true => {
            let device = args.device.to_ascii_lowercase();
            if let (Some(w), "cuda" | "hip" | "auto") = (args.wave.as_deref(), device.as_str()) {
                return Err(Usage(format!("--wave {w} applies to --device host only")).into());
            }
            let wave = args
                .wave
                .as_deref()
                .map(|w| if w == "64" { 64 } else { 32 });
            Some(open_for_bench(&device, wave, args.allow_no_device)?)
        }
        false => None,
    };
    let mut json = serde_json::Map::new();
    if args.cpu {
        let (report, text) = bench_cpu(&args, repeats)?;
        match args.json {
            true => _ = json.insert("cpu".into(), serde_json::to_value(&report)?),
            false => emit(&text),
        }
    }
    if let Some(gpu) = gpu {
        let value = bench_gpu(gpu, &args, repeats)?;
        json.insert("gpu".into(), value);
    }
    if args.json {
        let value = match (args.cpu, args.gpu) {
            (true, true) => serde_json::Value::Object(json),
            _ => json
                .into_iter()
                .next()
                .map_or(serde_json::Value::Null, |(_, v)| v),
        };
        emit(&format!("{}\n", serde_json::to_string_pretty(&value)?));
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes a shape needs at once: the query and output, and two K/V caches
/// (the one being measured and the one being filled), in f32, plus as much
/// again for the kernels' working copies.
fn shape_bytes(shape: &Shape, cfg: &AttnConfig) -> u128 {
    let q = (shape.num_seqs * shape.q_len * cfg.num_heads() * cfg.head_size()) as u128;
    let kv = (shape.num_seqs * shape.seq_len.div_ceil(BLOCK_SIZE) * BLOCK_SIZE) as u128
        * (cfg.num_kv_heads() * cfg.head_size()) as u128;
    (2 * q + 4 * kv) * 4 * 2
}

/// The CPU report and its table.
fn bench_cpu(args: &Args, repeats: usize) -> anyhow::Result<(Report, String)> {
    let prefill_tokens = bounded("--prefill-tokens", args.prefill_tokens, 1, &MAX_SEQ_LEN)?;
    let decode_batch = bounded("--decode-batch", args.decode_batch, 1, &MAX_REQUESTS)?;
    let decode_ctx = bounded("--decode-ctx", args.decode_ctx, 1, &MAX_SEQ_LEN)?;
    let model = preset(&args.model)?;
    let cfg = attnlab_sim::workload::model_config(model)?;
    let backends: Vec<Box<dyn AttentionBackend>> = match backend_choice(&args.backend) {
        None => mha_backends(),
        Some(name) => vec![by_name(backends::parse(&name)?)?],
    };
    let shapes = [
        Shape {
            name: "prefill",
            num_seqs: 1,
            q_len: prefill_tokens,
            seq_len: prefill_tokens,
        },
        Shape {
            name: "decode",
            num_seqs: decode_batch,
            q_len: 1,
            seq_len: decode_ctx,
        },
    ];
    for shape in &shapes {
        limits::check_memory(
            &format!(
                "bench's {} case ({} seq x {} new tokens, kv length {})",
                shape.name, shape.num_seqs, shape.q_len, shape.seq_len
            ),
            shape_bytes(shape, &cfg),
        )?;
    }
    let threads = rayon::current_num_threads();
    let bar = progress(
        args.json,
        shapes.len() * (backends.len() + 1) + 2,
        "bench --cpu",
    );
    bar.set_message("memory copy");
    let decode_kv = [
        2,
        decode_batch,
        decode_ctx,
        cfg.num_kv_heads(),
        cfg.head_size(),
        4,
    ]
    .into_iter()
    .fold(1usize, usize::saturating_mul);
    let copy = copy_bandwidth(
        decode_kv.clamp(*COPY_BYTES.start(), *COPY_BYTES.end()),
        repeats,
    )?;
    bar.inc(1);
    bar.set_message("torch sdpa");
    let torch = match args.torch.to_ascii_lowercase().as_str() {
        "off" => Err("--torch off".to_string()),
        _ => torch_sdpa(&shapes, &cfg, threads, repeats),
    };
    bar.inc(1);
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for shape in &shapes {
        let gflop = 4.0 * (cfg.head_size() * cfg.num_heads()) as f64 * shape.pairs() / 1e9;
        // Decode streams every key of every sequence once: K and V, f32.
        let kv_bytes = (shape.q_len == 1).then(|| {
            (2 * shape.num_seqs * shape.seq_len * cfg.num_kv_heads() * cfg.head_size() * 4) as f64
        });
        let torch_gflops = torch
            .as_ref()
            .ok()
            .and_then(|t| t.1.iter().find(|(c, _)| c == shape.name))
            .map(|(_, s)| gflop / s);
        let measured = |implementation: String, s: f64, naive_gflops: f64| Measurement {
            case: shape.name,
            implementation,
            gflop,
            median_s: s,
            gflops: gflop / s,
            vs_naive: (gflop / s) / naive_gflops,
            vs_torch: torch_gflops.map(|t| (gflop / s) / t),
            kv_gbps: kv_bytes.map(|b| b / s / 1e9),
        };
        let query = seeded_values(
            u64::MAX,
            shape.num_seqs * shape.q_len * cfg.num_heads() * cfg.head_size(),
            cfg.dtype(),
        );

        let meta = shape.metadata(BLOCK_SIZE)?;
        let nhd = KvLayout::new(
            LayoutKind::Nhd,
            meta.num_blocks(),
            BLOCK_SIZE,
            cfg.num_kv_heads(),
            cfg.head_size(),
            cfg.kv_dtype(),
        )?;
        let cache = filled_cache(nhd, shape, &cfg, |c, k, v, s| {
            reshape_and_cache(CacheWriter::ReshapeAndCacheFlash, c, k, v, s, &cfg)
        })?;
        bar.set_message(format!("{} {NAIVE}", shape.name));
        let naive_s = median_seconds(repeats, || {
            Ok(paged_attention_in::<f32>(&query, &cache, &meta, &cfg).map(drop)?)
        })?;
        bar.inc(1);
        drop(cache);
        let naive_gflops = gflop / naive_s;
        if let Some(t) = torch_gflops {
            results.push(measured(TORCH.into(), gflop / t, naive_gflops));
        }
        results.push(measured(NAIVE.into(), naive_s, naive_gflops));

        for b in &backends {
            bar.set_message(format!("{} {}", shape.name, b.name()));
            bar.inc(1);
            let setup = b
                .check(&cfg, BLOCK_SIZE)
                .and_then(|()| b.kernel_block_size(BLOCK_SIZE));
            let kb = match setup {
                Ok(kb) => kb,
                Err(e) => {
                    skipped.push((b.name().to_string(), e.to_string()));
                    continue;
                }
            };
            let meta = shape.metadata(kb)?;
            let layout = b.cache_layout(&cfg, meta.num_blocks(), kb)?;
            let cache = filled_cache(layout, shape, &cfg, |c, k, v, s| {
                b.write_kv(c, k, v, s, &cfg)
            })?;
            let s = median_seconds(repeats, || {
                Ok(b.forward(&query, &cache, &meta, &cfg).map(drop)?)
            })
            .with_context(|| format!("{} on the {} case", b.name(), shape.name))?;
            results.push(measured(b.name().to_string(), s, naive_gflops));
        }
    }
    bar.finish_and_clear();
    skipped.dedup();
    let report = Report {
        model: model.name,
        threads,
        results,
        skipped,
        copy,
        torch_skipped: torch.as_ref().err().cloned(),
        torch: torch.ok().map(|t| t.0),
    };
    let text = format_report(&report, &shapes);
    Ok((report, text))
}

/// Copies a `bytes` buffer with the rayon pool (chunks spread over the
/// threads, as a streaming kernel reads its KV): the machine's memory-copy
/// GB/s in this run, the yardstick for decode's KV GB/s.
fn copy_bandwidth(bytes: usize, repeats: usize) -> anyhow::Result<CopyBandwidth> {
    use rayon::prelude::*;
    limits::check_memory("bench's memory-copy yardstick", 2 * bytes as u128)?;
    let n = bytes / 4;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; n];
    let chunk = n.div_ceil(rayon::current_num_threads().max(1) * 16);
    let s = median_seconds(repeats, || {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        Ok(())
    })?;
    std::hint::black_box(&dst);
    Ok(CopyBandwidth {
        bytes,
        median_s: s,
        gbps: bytes as f64 / s / 1e9,
    })
}

/// Runs [`SDPA_SCRIPT`] with `python3` on the bench's shapes and thread
/// count: torch's version and each case's median seconds, or why it did
/// not run (no python3, no torch, a failure: the bench goes on without it).
fn torch_sdpa(
    shapes: &[Shape],
    cfg: &AttnConfig,
    threads: usize,
    repeats: usize,
) -> Result<(String, Vec<(String, f64)>), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let request = serde_json::json!({
        "threads": threads,
        "repeats": repeats,
        "hq": cfg.num_heads(),
        "hkv": cfg.num_kv_heads(),
        "d": cfg.head_size(),
        "shapes": shapes.iter().map(|s| serde_json::json!({
            "name": s.name, "num_seqs": s.num_seqs, "q_len": s.q_len, "seq_len": s.seq_len,
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .args(["-c", SDPA_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3 did not start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(request.to_string().as_bytes())
            .map_err(|e| format!("writing to python3: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("no message").to_string();
        return Err(format!("python3 exited {}: {last}", out.status));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("python3's answer is not JSON: {e}"))?;
    let version = v["torch"].as_str().unwrap_or("unknown").to_string();
    let results = v["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|m| Some((m["case"].as_str()?.to_string(), m["median_s"].as_f64()?)))
                .filter(|(_, s)| *s > 0.0)
                .collect()
        })
        .unwrap_or_default();
    Ok((version, results))
}

fn format_report(r: &Report, shapes: &[Shape]) -> String {
    let mut s = format!(
        "attnlab bench --cpu: {} shapes, {} rayon threads\n",
        r.model, r.threads
    );
    for sh in shapes {
        s += &format!(
            "  {}: {} seq x {} new tokens, kv length {}\n",
            sh.name, sh.num_seqs, sh.q_len, sh.seq_len
        );
    }
    match (&r.torch, &r.torch_skipped) {
        (Some(v), _) => {
            s += &format!(
                "  torch {v}: scaled_dot_product_attention, f32, {} threads\n",
                r.threads
            )
        }
        (None, why) => s += &format!("  torch: not run ({})\n", why.as_deref().unwrap_or("-")),
    }
    s += &format!(
        "  memory copy: {:.2} GB/s ({} MiB, {} threads)\n",
        r.copy.gbps,
        r.copy.bytes >> 20,
        r.threads
    );
    let w = r
        .results
        .iter()
        .map(|m| m.implementation.len())
        .max()
        .unwrap_or(9)
        .max(14);
    s += &format!(
        "{:<8}  {:<w$}  {:>8}  {:>10}  {:>8}  {:>8}  {:>8}  {:>8}  {:>7}\n",
        "case",
        "implementation",
        "GFLOP",
        "median_s",
        "GFLOP/s",
        "vs_naive",
        "vs_torch",
        "KV GB/s",
        "vs_copy"
    );
    let opt =
        |x: Option<f64>, suffix: &str| x.map_or("-".to_string(), |x| format!("{x:.2}{suffix}"));
    for m in &r.results {
        s += &format!(
            "{:<8}  {:<w$}  {:>8.2}  {:>10.4}  {:>8.2}  {:>7.2}x  {:>8}  {:>8}  {:>7}\n",
            m.case,
            m.implementation,
            m.gflop,
            m.median_s,
            m.gflops,
            m.vs_naive,
            opt(m.vs_torch, "x"),
            opt(m.kv_gbps, ""),
            opt(m.kv_gbps.map(|g| 100.0 * g / r.copy.gbps), "%"),
        );
    }
    for (b, why) in &r.skipped {
        s += &format!("skipped {b}: {why}\n");
    }
    s
}

/// The device for `bench --gpu [--device auto|cuda|hip|host]`: `Err(why)`
/// when there is none and `allow` (`--allow-no-device`), else no device is
/// an exit-3 error. `auto` takes whichever GPU is present and, unlike
/// `diff`, does not fall back to the host device: the bench grid's caches
/// (up to 24 GiB) and the CPU's wall time would take hours and measure no
/// GPU; the host device runs when named.
fn open_for_bench(
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
fn bench_gpu(
    gpu: Result<Gpu, String>,
    args: &Args,
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
            Some(gpu_bench::parse_external_rows(&text).map_err(|e| {
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
    let report = gpu_bench::run(&gpu, opts);
    bar.finish_and_clear();
    let report = report?;
    let dir = std::path::PathBuf::from(
        std::env::var_os("ATTNLAB_BENCH_DIR").unwrap_or_else(|| ".".into()),
    );
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(dir.join("bench-gpu.json"), &text)?;
    std::fs::write(dir.join("bench-gpu.svg"), gpu_bench::svg(&report))?;
    let comparisons = external.as_deref().map(|e| gpu_bench::compare(&report, e));
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

fn print_comparisons(c: &[gpu_bench::Comparison]) {
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
