//! `attnlab bench --gpu`: per-kernel GPU-event timings (warm-up, then the
//! median of repeats) and achieved bandwidth, next to a device-to-device copy
//! measured in the same run.
//!
//! Decode grid (issue 5, item 5): batch {1, 8, 64, 256} x context {1K, 8K, 32K} x
//! heads (32 q / 8 kv) and (8 / 1), block size 16, bf16, head size 128; the
//! caches are filled on the device (`kernels/fill.hip`). Bandwidth counts the
//! unique bytes a decode must move: K and V of every context token, plus Q
//! and O. The prefill rows report TFLOP/s of the register-tiled bit-exact
//! unified kernel (vLLM's launch) and flash_attn_varlen (causal and not)
//! against the device's f32 (non-tensor) peak, SMs x 128 lanes x 2 x clock.
//! Every row times exactly the launcher `attnlab diff` validates: these are
//! the bit-exact kernels (f32 arithmetic in the emulator's order; the
//! `paged_decode_tc` rows on the matrix cores, bit-exact against the
//! target's instruction model), so the numbers say how close bit-exactness
//! gets to the hardware's ceilings. The `paged_decode_tc` rows read the same
//! bytes as an NHD cache (the layout vLLM's Triton kernels read) and are
//! timed as 10 launches queued between two events. vLLM's own kernels are
//! timed by `python/scripts/vllm_decode_bench.py` and compared through
//! [`parse_external_rows`] / [`compare`] (`attnlab bench --gpu --vllm FILE`).

use crate::kernels::{dtype_define, Gpu};
use crate::ops::{paged_decode, paged_decode_tc};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::paged_decode::{PartitionSize, PARTITION_SIZE_ROCM};
use attnlab_sim::kernels::paged_decode_tc::num_splits;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub warmup: usize,
    pub repeats: usize,
    /// Decode cases whose K+V exceed this many bytes are skipped.
    pub max_kv_bytes: u64,
    /// Only rows whose label ([`row_label`]: kernel name and shape) contains
    /// this substring, or one of its comma-separated alternatives, are run
    /// (the copy yardstick always is).
    pub filter: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            warmup: 1,
            repeats: 5,
            max_kv_bytes: 24 << 30,
            filter: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub kernel: String,
    pub batch: usize,
    pub context: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub median_ms: f64,
    /// Unique bytes moved / time, GB/s.
    pub gbps: f64,
    /// `gbps` / the copy's GB/s.
    pub vs_copy: f64,
    pub tflops: Option<f64>,
    /// `tflops` / the device's f32 (non-tensor) peak.
    pub vs_f32_peak: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub device: crate::runtime::DeviceInfo,
    /// Device-to-device copy, bytes read + written / time, GB/s.
    pub copy_gbps: f64,
    pub f32_peak_tflops: f64,
    pub rows: Vec<BenchRow>,
    pub skipped: Vec<String>,
}

/// A row's label for `--filter`: `"<kernel> b<batch> ctx<context> <hq>/<hkv>"`,
/// e.g. `paged_attention_ll4mi b64 ctx8192 32/8`.
pub fn row_label(kernel: &str, batch: usize, context: usize, hq: usize, hkv: usize) -> String {
    format!("{kernel} b{batch} ctx{context} {hq}/{hkv}")
}

impl BenchOptions {
    fn wants(&self, kernel: &str, batch: usize, context: usize, hq: usize, hkv: usize) -> bool {
        self.filter.as_deref().is_none_or(|f| {
            let label = row_label(kernel, batch, context, hq, hkv);
            f.split(',').any(|alt| label.contains(alt))
        })
    }
}

/// Median of `repeats` timed runs of `f` after `warmup` untimed ones (ms).
fn time_ms(gpu: &Gpu, opts: &BenchOptions, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..opts.warmup {
        f()?;
    }
    gpu.dev.synchronize()?;
    let mut times = Vec::with_capacity(opts.repeats);
    for _ in 0..opts.repeats.max(1) {
        let a = gpu.dev.record()?;
        f()?;
        let b = gpu.dev.record()?;
        times.push(gpu.dev.elapsed_ms(a, b)? as f64);
    }
    times.sort_by(|x, y| x.total_cmp(y));
    Ok(times[times.len() / 2])
}

/// Launches of `f` queued back to back between one pair of events (per
/// timed sample, after the warm-up): the median over `repeats` samples of
/// the time per launch. Like replaying a captured graph, this leaves out
/// the host's submission latency that one launch between two events pays
/// when the GPU outruns the host (the tensor-core rows, compared with
/// vLLM's launches replayed from a CUDA graph).
const QUEUED: usize = 10;
fn time_ms_queued(
    gpu: &Gpu,
    opts: &BenchOptions,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..opts.warmup.max(1) {
        f()?;
    }
    gpu.dev.synchronize()?;
    let mut times = Vec::with_capacity(opts.repeats);
    for _ in 0..opts.repeats.max(1) {
        let a = gpu.dev.record()?;
        for _ in 0..QUEUED {
            f()?;
        }
        let b = gpu.dev.record()?;
        times.push(gpu.dev.elapsed_ms(a, b)? as f64 / QUEUED as f64);
    }
    times.sort_by(|x, y| x.total_cmp(y));
    Ok(times[times.len() / 2])
}

fn fill(gpu: &Gpu, buf: &Buffer, n: usize, seed: u32) -> Result<()> {
    let f = gpu.function("fill", &[dtype_define("DTYPE", DType::Bf16)], "fill_hash")?;
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe {
        gpu.dev.launch(
            f,
            LaunchDims {
                grid: [4096, 1, 1],
                block: [256, 1, 1],
                shared_bytes: 0,
            },
            &[buf.arg(), Arg::I64(n as i64), Arg::I32(seed as i32)],
        )
    }
}

/// Runs the copy, the decode grid and the prefill case.
pub fn run(gpu: &Gpu, opts: BenchOptions) -> Result<BenchReport> {
    let dev = gpu.dev.as_ref();
    let info = dev.info().clone();
    // Copy yardstick: 2 GiB, well above any L2.
    let bytes = 2usize << 30;
    let (src, dst) = (Buffer::zeroed(dev, bytes)?, Buffer::zeroed(dev, bytes)?);
    let copy_ms = time_ms(gpu, &opts, &mut || dev.copy(dst.ptr, src.ptr, bytes))?;
    drop((src, dst));
    let copy_gbps = 2.0 * bytes as f64 / (copy_ms * 1e-3) / 1e9;
    let f32_peak_tflops =
        info.multiprocessors as f64 * 128.0 * 2.0 * info.clock_khz as f64 * 1e3 / 1e12;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let d = 128usize;
    for (hq, hkv) in [(32usize, 8usize), (8, 1)] {
        for batch in [1usize, 8, 64, 256] {
            for context in [1024usize, 8192, 32768] {
                let kv_bytes = (batch * context * hkv * d * 2 * 2) as u64;
                if kv_bytes > opts.max_kv_bytes {
                    skipped.push(format!(
                        "decode b{batch} ctx{context} {hq}/{hkv}: K+V {} GiB over the {} GiB cap",
                        kv_bytes >> 30,
                        opts.max_kv_bytes >> 30
                    ));
                    continue;
                }
                for (kernel, ms) in decode_case(gpu, &opts, batch, context, hq, hkv, d)? {
                    let moved = kv_bytes as f64 + (2 * batch * hq * d * 2) as f64;
                    let gbps = moved / (ms * 1e-3) / 1e9;
                    rows.push(BenchRow {
                        kernel,
                        batch,
                        context,
                        q_heads: hq,
                        kv_heads: hkv,
                        median_ms: ms,
                        gbps,
                        vs_copy: gbps / copy_gbps,
                        tflops: None,
                        vs_f32_peak: None,
                    });
                }
            }
        }
    }
    // Prefill rows filter as "unified_attention_2d (prefill)" and
    // "flash_attn_varlen (prefill)" (b1 ctx4096 32/8).
    if opts.wants("unified_attention_2d (prefill)", 1, 4096, 32, 8) {
        rows.push(prefill_case(gpu, &opts, 4096, copy_gbps, f32_peak_tflops)?);
    }
    let bn = attnlab_sim::kernels::flash_varlen::ck_block_n(d);
    let varlen_rows = if opts.wants("flash_attn_varlen (prefill)", 1, 4096, 32, 8) {
        vec![(true, bn), (false, bn), (true, 64)]
    } else {
        Vec::new()
    };
    for (causal, block_n) in varlen_rows {
        rows.push(varlen_prefill_case(
            gpu,
            &opts,
            4096,
            causal,
            block_n,
            copy_gbps,
            f32_peak_tflops,
        )?);
    }
    for tokens in UNIFIED_TC_TOKENS {
        for shape in UNIFIED_TC_SHAPES {
            if opts.wants(
                &unified_tc_prefill_label(shape.0, shape.1),
                1,
                tokens,
                32,
                8,
            ) {
                rows.push(unified_tc_prefill_case(
                    gpu,
                    &opts,
                    tokens,
                    shape,
                    copy_gbps,
                    f32_peak_tflops,
                )?);
            }
        }
    }
    for tokens in TC_PREFILL_TOKENS {
        for warps in [4usize, 8] {
            let kernel = tc_prefill_label(warps);
            if opts.wants(&kernel, 1, tokens, 32, 8) {
                rows.push(varlen_tc_prefill_case(
                    gpu,
                    &opts,
                    tokens,
                    warps,
                    copy_gbps,
                    f32_peak_tflops,
                )?);
            }
        }
    }
    Ok(BenchReport {
        device: info,
        copy_gbps,
        f32_peak_tflops,
        rows,
        skipped,
    })
}

/// Contiguous block tables for `batch` decode rows of `context` tokens each.
fn decode_meta(batch: usize, context: usize, block_size: usize) -> Result<AttentionMetadata> {
    let per = context.div_ceil(block_size);
    let rows: Vec<Vec<i32>> = (0..batch)
        .map(|b| ((b * per) as i32..((b + 1) * per) as i32).collect())
        .collect();
    let qsl: Vec<i32> = (0..=batch as i32).collect();
    let slots: Vec<i64> = (0..batch)
        .map(|b| ((b * per) * block_size + context - 1) as i64)
        .collect();
    Ok(AttentionMetadata::new(
        block_size,
        batch * per,
        qsl,
        vec![context as i32; batch],
        BlockTableTensor::from_rows(&rows),
        slots,
        true,
    )?)
}

fn decode_case(
    gpu: &Gpu,
    opts: &BenchOptions,
    batch: usize,
    context: usize,
    hq: usize,
    hkv: usize,
    d: usize,
) -> Result<Vec<(String, f64)>> {
    const LL4MI: &str = "paged_attention_ll4mi";
    const TWO_D: &str = "paged_attention_2d";
    const TC: [(&str, paged_decode_tc::TcVariant); 4] = [
        ("paged_decode_tc", paged_decode_tc::TcVariant::Default),
        (
            "paged_decode_tc (prefetch)",
            paged_decode_tc::TcVariant::Prefetch,
        ),
        (
            "paged_decode_tc (3 blocks/SM)",
            paged_decode_tc::TcVariant::ThreeBlocks,
        ),
        (
            "paged_decode_tc (L2 hints)",
            paged_decode_tc::TcVariant::L2Hints,
        ),
    ];
    let (want_ll4mi, want_2d) = (
        opts.wants(LL4MI, batch, context, hq, hkv),
        opts.wants(TWO_D, batch, context, hq, hkv),
    );
    let want_tc: Vec<_> = TC
        .iter()
        .filter(|(name, _)| opts.wants(name, batch, context, hq, hkv))
        .collect();
    if !want_ll4mi && !want_2d && want_tc.is_empty() {
        return Ok(Vec::new());
    }
    let dev = gpu.dev.as_ref();
    let bs = 16;
    let meta = decode_meta(batch, context, bs)?;
    let cfg = AttnConfig::new(hq, hkv, d, DType::Bf16)?;
    let layout = KvLayout::new(
        LayoutKind::RocmPaged,
        meta.num_blocks(),
        bs,
        hkv,
        d,
        DType::Bf16,
    )?;
    let n_kv = layout.numel();
    let i32s = |v: &[i32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    // The launchers' own inputs, filled on the device: the timed launches
    // are exactly the ones `attnlab diff --backend paged_decode` validates.
    let inp = paged_decode::Inputs {
        q: Buffer::zeroed(dev, batch * hq * d * 2)?,
        k: Buffer::zeroed(dev, n_kv * 2)?,
        v: Buffer::zeroed(dev, n_kv * 2)?,
        bt: Buffer::from_bytes(dev, &i32s(&meta.block_table().data))?,
        qsl: Buffer::from_bytes(dev, &i32s(meta.query_start_loc()))?,
        sl: Buffer::from_bytes(dev, &i32s(meta.seq_lens()))?,
        sinks: Buffer::zeroed(dev, 4)?,
        alibi: Buffer::zeroed(dev, 4)?,
        out: Buffer::zeroed(dev, batch * hq * d * 2)?,
    };
    fill(gpu, &inp.k, n_kv, 1)?;
    fill(gpu, &inp.v, n_kv, 2)?;
    fill(gpu, &inp.q, batch * hq * d, 3)?;
    let mut results = Vec::new();

    // ll4mi: partitions of 256 (split-KV) + reduce.
    if want_ll4mi {
        let scratch = paged_decode::Ll4miScratch::new(gpu, &meta, &cfg, PARTITION_SIZE_ROCM)?;
        let ms = time_ms(gpu, opts, &mut || {
            paged_decode::launch_ll4mi(
                gpu,
                &inp,
                &scratch,
                &layout,
                &meta,
                &cfg,
                PartitionSize::ROCM,
            )
        })?;
        results.push((LL4MI.to_string(), ms));
    }

    // Triton 2D paged decode: one program per (sequence, kv head), no split.
    if want_2d {
        let ms = time_ms(gpu, opts, &mut || {
            paged_decode::launch_2d(gpu, &inp, &layout, &meta, &cfg)
        })?;
        results.push((TWO_D.to_string(), ms));
    }

    // Tensor-core decode on the same bytes read as an NHD cache (the layout
    // vLLM's Triton kernels read), split size chosen by the launcher.
    for &&(name, variant) in &want_tc {
        let split = paged_decode_tc::auto_split_size(gpu, &meta, &cfg, variant);
        let scratch = paged_decode_tc::TcScratch::new(gpu, &meta, &cfg, split)?;
        let reduce = paged_decode_tc::TcReduce::auto(num_splits(meta.max_seq_len(), split));
        let ms = time_ms_queued(gpu, opts, &mut || {
            paged_decode_tc::launch(gpu, &inp, &scratch, &meta, &cfg, split, variant, reduce)
        })?;
        results.push((name.to_string(), ms));
    }
    Ok(results)
}

/// One causal prefill of `tokens` tokens (32 q / 8 kv heads, d 128, bf16,
/// block size 16) through the bit-exact unified 2D kernel, with vLLM's own
/// launch (`UnifiedLaunch::vllm`: BLOCK_M 16, TILE 32), replayed through the
/// launcher the diff validates (`UnifiedPlan`: the register-tiled
/// `unified_attention_tiled` for this shape).
fn prefill_case(
    gpu: &Gpu,
    opts: &BenchOptions,
    tokens: usize,
    copy_gbps: f64,
    peak: f64,
) -> Result<BenchRow> {
    use crate::ops::unified_attention::UnifiedPlan;
    use attnlab_sim::kernels::unified_attention::{UnifiedLaunch, VllmLaunchOptions};
    let (hq, hkv, d) = PREFILL_HEADS;
    let meta = prefill_meta(tokens)?;
    let cfg = AttnConfig::new(hq, hkv, d, DType::Bf16)?;
    let launch = UnifiedLaunch::vllm(&meta, &cfg, VllmLaunchOptions::default())?;
    let plan = UnifiedPlan::new(gpu, &meta, &cfg, &launch)?;
    let run = |bufs: [&Buffer; 12]| plan.launch(gpu, bufs);
    let kernel = "unified_attention_2d (prefill)".to_string();
    paged_prefill_row(gpu, opts, kernel, &meta, (copy_gbps, peak), &run)
}

/// Times `launch` (buffers in the unified kernels' order: query, K and V
/// caches, block table, query_start_loc, seq_lens, sinks, alibi, out and
/// the three 3D partials, unused here) over the one causal bf16 sequence of
/// `meta` (32 q / 8 kv heads, d 128, contiguous blocks) and makes its row:
/// FLOPs = 4 * d * Hq per visible (query, key) pair, bytes of Q, K, V read
/// and O written, `yardsticks` = (copy GB/s, f32 peak TFLOP/s).
fn paged_prefill_row(
    gpu: &Gpu,
    opts: &BenchOptions,
    kernel: String,
    meta: &AttentionMetadata,
    (copy_gbps, peak): (f64, f64),
    launch: &dyn Fn([&Buffer; 12]) -> Result<()>,
) -> Result<BenchRow> {
    let dev = gpu.dev.as_ref();
    let (hq, hkv, d) = PREFILL_HEADS;
    let (tokens, bs) = (meta.num_actual_tokens(), meta.block_size());
    let n_kv = meta.num_blocks() * bs * hkv * d;
    let (k, v) = (
        Buffer::zeroed(dev, n_kv * 2)?,
        Buffer::zeroed(dev, n_kv * 2)?,
    );
    fill(gpu, &k, n_kv, 4)?;
    fill(gpu, &v, n_kv, 5)?;
    let q = Buffer::zeroed(dev, tokens * hq * d * 2)?;
    fill(gpu, &q, tokens * hq * d, 6)?;
    let out = Buffer::zeroed(dev, tokens * hq * d * 2)?;
    let i32s = |v: &[i32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let bt = Buffer::from_bytes(dev, &i32s(&meta.block_table().data))?;
    let qsl = Buffer::from_bytes(dev, &i32s(meta.query_start_loc()))?;
    let sl = Buffer::from_bytes(dev, &i32s(meta.seq_lens()))?;
    let none = Buffer::zeroed(dev, 4)?;
    let ms = time_ms(gpu, opts, &mut || {
        launch([
            &q, &k, &v, &bt, &qsl, &sl, &none, &none, &out, &none, &none, &none,
        ])
    })?;
    // Causal: visible (query, key) pairs = T (T + 1) / 2; 4 flops per pair per dim per head.
    let flops = 4.0 * d as f64 * hq as f64 * (tokens as f64 * (tokens as f64 + 1.0) / 2.0);
    let tflops = flops / (ms * 1e-3) / 1e12;
    let moved = (2 * n_kv * 2 + 2 * tokens * hq * d * 2) as f64;
    let gbps = moved / (ms * 1e-3) / 1e9;
    Ok(BenchRow {
        kernel,
        batch: 1,
        context: tokens,
        q_heads: hq,
        kv_heads: hkv,
        median_ms: ms,
        gbps,
        vs_copy: gbps / copy_gbps,
        tflops: Some(tflops),
        vs_f32_peak: (peak > 0.0).then(|| tflops / peak),
    })
}

/// The row name of the tensor-core unified attention at TILE_SIZE `tile`
/// with `warps` waves per workgroup (vLLM's launch otherwise: BLOCK_M 16 =
/// 4 tokens x 4 heads, one program per wave).
pub fn unified_tc_prefill_label(tile: usize, warps: usize) -> String {
    format!(
        "unified_attention_tc (prefill, causal, BLOCK_M 16, TILE {tile}, {} rows)",
        16 * warps
    )
}

/// (TILE_SIZE, waves per workgroup) of the tensor-core unified rows: vLLM's
/// 2D tile at 4 and 8 waves, AITER's prefill tile at 4.
pub const UNIFIED_TC_SHAPES: [(usize, usize); 3] = [(32, 4), (32, 8), (64, 4)];

/// Prompt lengths of the tensor-core unified rows.
pub const UNIFIED_TC_TOKENS: [usize; 2] = [4096, 16384];

/// One causal prefill of `tokens` tokens (32 q / 8 kv heads, d 128, bf16,
/// paged cache of block size 16) through the tensor-core
/// `unified_attention_tc` (the launcher `attnlab diff --backend
/// unified_attention_tc` validates) with vLLM's 2D launch, TILE_SIZE
/// `tile` and `warps` waves per workgroup. FLOPs and bytes as in
/// [`prefill_case`].
fn unified_tc_prefill_case(
    gpu: &Gpu,
    opts: &BenchOptions,
    tokens: usize,
    (tile, warps): (usize, usize),
    copy_gbps: f64,
    peak: f64,
) -> Result<BenchRow> {
    use crate::ops::unified_attention_tc::UnifiedTcPlan;
    use attnlab_sim::kernels::unified_attention::{Grid, UnifiedLaunch, VllmLaunchOptions};
    let meta = prefill_meta(tokens)?;
    let (hq, hkv, d) = PREFILL_HEADS;
    let cfg = AttnConfig::new(hq, hkv, d, DType::Bf16)?;
    let launch = UnifiedLaunch {
        tile_size: tile,
        ..UnifiedLaunch::vllm(&meta, &cfg, VllmLaunchOptions::default())?.with_grid(Grid::TwoD)
    };
    let plan = UnifiedTcPlan::new(gpu, &meta, &cfg, &launch, warps)?;
    let run = |bufs: [&Buffer; 12]| plan.launch(gpu, bufs);
    let kernel = unified_tc_prefill_label(tile, warps);
    paged_prefill_row(gpu, opts, kernel, &meta, (copy_gbps, peak), &run)
}

/// One causal sequence of `tokens` tokens in contiguous blocks of 16.
fn prefill_meta(tokens: usize) -> Result<AttentionMetadata> {
    let bs = 16usize;
    let per = tokens.div_ceil(bs);
    Ok(AttentionMetadata::new(
        bs,
        per,
        vec![0, tokens as i32],
        vec![tokens as i32],
        BlockTableTensor::from_rows(&[(0..per as i32).collect()]),
        (0..tokens as i64).collect(),
        true,
    )?)
}

/// One prefill of `tokens` tokens (32 q / 8 kv heads, d 128, bf16) through
/// the register-tiled bit-exact `flash_attn_varlen` (the launcher `attnlab
/// diff --backend flash_varlen` validates), causal or not, at `block_n`.
/// FLOPs as in [`prefill_case`]: 4 * d per visible (query, key) pair per head
/// (QK^T and PV, a multiply and an add each), masked pairs and the softmax
/// not counted.
fn varlen_prefill_case(
    gpu: &Gpu,
    opts: &BenchOptions,
    tokens: usize,
    causal: bool,
    block_n: usize,
    copy_gbps: f64,
    peak: f64,
) -> Result<BenchRow> {
    use crate::ops::flash_varlen::VarlenLaunch;
    use attnlab_sim::kernels::flash_varlen::{VarlenParams, VarlenParamsBuilder};
    let (hq, hkv, d) = PREFILL_HEADS;
    let p = VarlenParamsBuilder {
        causal,
        block_n,
        ..VarlenParams::builder(hq, hkv, d, DType::Bf16, 1.0 / (d as f32).sqrt())
    }
    .build()?;
    let plan = VarlenLaunch::new(gpu, &p, 1, tokens, tokens)?;
    let kernel = format!(
        "flash_attn_varlen (prefill, {}, block_n {block_n})",
        if causal { "causal" } else { "non-causal" }
    );
    let run = |bufs: [&Buffer; 9]| plan.launch(gpu, bufs);
    varlen_prefill_row(gpu, opts, kernel, tokens, causal, (copy_gbps, peak), &run)
}

/// Heads and head size of the varlen prefill rows: (q heads, kv heads, d).
const PREFILL_HEADS: (usize, usize, usize) = (32, 8, 128);

/// Times `launch` over one bf16 sequence of `tokens` tokens (Q, K, V filled
/// with the bench's seeds; buffers in the `flash_attn_varlen` kernels'
/// order) and makes its row: FLOPs over the visible pairs, bytes of Q, K, V
/// read and O written, `yardsticks` = (copy GB/s, f32 peak TFLOP/s).
fn varlen_prefill_row(
    gpu: &Gpu,
    opts: &BenchOptions,
    kernel: String,
    tokens: usize,
    causal: bool,
    (copy_gbps, peak): (f64, f64),
    launch: &dyn Fn([&Buffer; 9]) -> Result<()>,
) -> Result<BenchRow> {
    let dev = gpu.dev.as_ref();
    let (hq, hkv, d) = PREFILL_HEADS;
    let (nq, nkv) = (tokens * hq * d, tokens * hkv * d);
    let (q, k, v) = (
        Buffer::zeroed(dev, nq * 2)?,
        Buffer::zeroed(dev, nkv * 2)?,
        Buffer::zeroed(dev, nkv * 2)?,
    );
    fill(gpu, &q, nq, 7)?;
    fill(gpu, &k, nkv, 8)?;
    fill(gpu, &v, nkv, 9)?;
    let out = Buffer::zeroed(dev, nq * 2)?;
    let lse = Buffer::zeroed(dev, tokens * hq * 4)?;
    let cu: Vec<u8> = [0i32, tokens as i32]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let (cu_q, cu_k) = (Buffer::from_bytes(dev, &cu)?, Buffer::from_bytes(dev, &cu)?);
    let none = Buffer::zeroed(dev, 4)?;
    let ms = time_ms(gpu, opts, &mut || {
        launch([&q, &k, &v, &cu_q, &cu_k, &none, &none, &out, &lse])
    })?;
    let t = tokens as f64;
    let pairs = if causal { t * (t + 1.0) / 2.0 } else { t * t };
    let tflops = 4.0 * d as f64 * hq as f64 * pairs / (ms * 1e-3) / 1e12;
    let moved = (2 * nkv * 2 + 2 * nq * 2) as f64;
    let gbps = moved / (ms * 1e-3) / 1e9;
    Ok(BenchRow {
        kernel,
        batch: 1,
        context: tokens,
        q_heads: hq,
        kv_heads: hkv,
        median_ms: ms,
        gbps,
        vs_copy: gbps / copy_gbps,
        tflops: Some(tflops),
        vs_f32_peak: (peak > 0.0).then(|| tflops / peak),
    })
}

/// Prompt lengths of the tensor-core prefill rows (issue 13's 4K-32K).
pub const TC_PREFILL_TOKENS: [usize; 4] = [4096, 8192, 16384, 32768];

/// The row name of the tensor-core prefill at `warps` waves per workgroup.
pub fn tc_prefill_label(warps: usize) -> String {
    format!(
        "flash_attn_varlen_tc (prefill, causal, block_n 64, {} rows)",
        16 * warps
    )
}

/// One causal prefill of `tokens` tokens (32 q / 8 kv heads, d 128, bf16)
/// through the tensor-core `flash_attn_varlen_tc` (the launcher `attnlab
/// diff --backend flash_varlen_tc` validates), 64-key tiles, `warps` waves
/// of 16 rows per workgroup. FLOPs and bytes as in [`varlen_prefill_case`].
fn varlen_tc_prefill_case(
    gpu: &Gpu,
    opts: &BenchOptions,
    tokens: usize,
    warps: usize,
    copy_gbps: f64,
    peak: f64,
) -> Result<BenchRow> {
    use crate::ops::flash_varlen_tc::{matrix_target, VarlenTcLaunch};
    use attnlab_sim::kernels::flash_varlen_tc::VarlenTcParams;
    let (hq, hkv, d) = PREFILL_HEADS;
    let target = matrix_target(&gpu.dev.info().target)?;
    let p = VarlenTcParams::new(hq, hkv, d, DType::Bf16, 1.0 / (d as f32).sqrt(), target)?;
    let plan = VarlenTcLaunch::new(gpu, &p, warps, 1, tokens, tokens)?;
    let run = |bufs: [&Buffer; 9]| plan.launch(gpu, bufs);
    let kernel = tc_prefill_label(warps);
    varlen_prefill_row(gpu, opts, kernel, tokens, true, (copy_gbps, peak), &run)
}

/// A row of an external timing file (`attnlab bench --gpu --vllm FILE.json`):
/// the same fields and meanings as [`BenchRow`] (`gbps` over the same byte
/// count, `tflops` where the row is a prefill), e.g. vLLM's own Triton
/// kernels timed by `python/scripts/vllm_decode_bench.py` in the same call.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ExternalRow {
    pub kernel: String,
    pub batch: usize,
    pub context: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub median_ms: f64,
    pub gbps: f64,
    #[serde(default)]
    pub tflops: Option<f64>,
}

/// The rows of a timing file: a JSON array of rows, or an object whose
/// `rows` field is one.
pub fn parse_external_rows(text: &str) -> std::result::Result<Vec<ExternalRow>, String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum File {
        Rows(Vec<ExternalRow>),
        Object { rows: Vec<ExternalRow> },
    }
    match serde_json::from_str::<File>(text) {
        Ok(File::Rows(r)) | Ok(File::Object { rows: r }) => Ok(r),
        Err(e) => Err(format!(
            "a JSON array of rows or {{\"rows\": [...]}}, each with kernel, batch, context, q_heads, kv_heads, median_ms, gbps ({e})"
        )),
    }
}

/// One of our rows beside an external row of the same shape (batch,
/// context, heads; both decode or both prefill).
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub kernel: String,
    pub external: String,
    pub batch: usize,
    pub context: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub median_ms: f64,
    pub external_ms: f64,
    /// external time / our time: above 1, ours is faster (same work, so
    /// also our GB/s / theirs).
    pub speedup: f64,
    pub vs_copy: f64,
    pub external_vs_copy: f64,
}

/// Every (our row, external row) pair of the same shape, in our row order.
pub fn compare(report: &BenchReport, external: &[ExternalRow]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for r in &report.rows {
        for e in external.iter().filter(|e| {
            (e.batch, e.context, e.q_heads, e.kv_heads)
                == (r.batch, r.context, r.q_heads, r.kv_heads)
                && e.tflops.is_some() == r.tflops.is_some()
        }) {
            out.push(Comparison {
                kernel: r.kernel.clone(),
                external: e.kernel.clone(),
                batch: r.batch,
                context: r.context,
                q_heads: r.q_heads,
                kv_heads: r.kv_heads,
                median_ms: r.median_ms,
                external_ms: e.median_ms,
                speedup: e.median_ms / r.median_ms,
                vs_copy: r.vs_copy,
                external_vs_copy: e.gbps / report.copy_gbps,
            });
        }
    }
    out
}

/// The decode rows as an SVG chart: achieved GB/s per case for each kernel,
/// with the copy bandwidth as a line. Written by hand (no font or system
/// library needed, so it renders on a headless GPU box).
pub fn svg(report: &BenchReport) -> String {
    let decode: Vec<&BenchRow> = report.rows.iter().filter(|r| r.tflops.is_none()).collect();
    let kernels: Vec<String> = {
        let mut k: Vec<String> = decode.iter().map(|r| r.kernel.clone()).collect();
        k.dedup();
        k.sort();
        k.dedup();
        k
    };
    let cases: Vec<String> = {
        let mut c: Vec<String> = Vec::new();
        for r in &decode {
            let name = format!(
                "b{} {}K {}/{}",
                r.batch,
                r.context / 1024,
                r.q_heads,
                r.kv_heads
            );
            if !c.contains(&name) {
                c.push(name);
            }
        }
        c
    };
    let (w, h, left, bottom, top) = (1100.0f64, 520.0f64, 70.0f64, 130.0f64, 40.0f64);
    let ymax = decode
        .iter()
        .map(|r| r.gbps)
        .fold(report.copy_gbps, f64::max)
        * 1.1;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / ymax);
    let slot = (w - left - 20.0) / cases.len().max(1) as f64;
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    s += &format!("<text x=\"{left}\" y=\"20\" font-size=\"14\">attnlab bench --gpu: decode bandwidth on {} (bf16, block 16, d 128)</text>\n", report.device.name);
    s += &format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        top,
        h - bottom
    );
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        s += &format!(
            "<text x=\"5\" y=\"{:.1}\">{:.0} GB/s</text>\n",
            y(v) + 4.0,
            v
        );
    }
    s += &format!(
        "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"gray\" stroke-dasharray=\"6 3\"/><text x=\"{2}\" y=\"{3:.1}\">copy {4:.0} GB/s</text>\n",
        y(report.copy_gbps),
        w - 20.0,
        w - 140.0,
        y(report.copy_gbps) - 4.0,
        report.copy_gbps
    );
    let bw = slot / (kernels.len() as f64 + 1.0);
    for (ci, case) in cases.iter().enumerate() {
        let x0 = left + ci as f64 * slot;
        for (ki, k) in kernels.iter().enumerate() {
            if let Some(r) = decode.iter().find(|r| {
                &r.kernel == k
                    && &format!(
                        "b{} {}K {}/{}",
                        r.batch,
                        r.context / 1024,
                        r.q_heads,
                        r.kv_heads
                    ) == case
            }) {
                let x = x0 + (ki as f64 + 0.5) * bw;
                s += &format!("<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n", y(r.gbps), bw * 0.9, (h - bottom) - y(r.gbps), colors[ki % colors.len()]);
            }
        }
        s += &format!(
            "<text transform=\"translate({:.1},{:.1}) rotate(60)\">{case}</text>\n",
            x0 + slot / 2.0,
            h - bottom + 10.0
        );
    }
    for (ki, k) in kernels.iter().enumerate() {
        s += &format!("<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{k}</text>\n", left + 10.0 + ki as f64 * 230.0, top - 12.0, colors[ki % colors.len()], left + 24.0 + ki as f64 * 230.0, top - 3.0);
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    fn report_with(rows: Vec<BenchRow>) -> BenchReport {
        BenchReport {
            device: crate::runtime::DeviceInfo {
                name: "test".into(),
                target: crate::runtime::Target::Host { wave: 32 },
                multiprocessors: 1,
                memory_bytes: 0,
                l2_bytes: 0,
                clock_khz: 0,
            },
            copy_gbps: 100.0,
            f32_peak_tflops: 0.0,
            rows,
            skipped: Vec::new(),
        }
    }

    fn decode_row(kernel: &str, batch: usize, ms: f64) -> BenchRow {
        BenchRow {
            kernel: kernel.into(),
            batch,
            context: 1024,
            q_heads: 32,
            kv_heads: 8,
            median_ms: ms,
            gbps: 50.0,
            vs_copy: 0.5,
            tflops: None,
            vs_f32_peak: None,
        }
    }

    #[test]
    fn external_rows_pair_with_our_rows_of_the_same_shape() {
        let text = r#"{"rows": [{"kernel": "vllm:unified_attention", "batch": 8, "context": 1024,
            "q_heads": 32, "kv_heads": 8, "median_ms": 0.5, "gbps": 25.0, "tflops": null}]}"#;
        let ext = parse_external_rows(text).unwrap();
        let report = report_with(vec![decode_row("a", 8, 0.25), decode_row("b", 1, 0.1)]);
        let c = compare(&report, &ext);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].kernel.as_str(), c[0].speedup), ("a", 2.0));
        assert_eq!(c[0].external_vs_copy, 0.25);
    }

    #[test]
    fn a_bare_array_of_rows_is_accepted_and_garbage_is_explained() {
        let text = r#"[{"kernel": "k", "batch": 1, "context": 1, "q_heads": 1, "kv_heads": 1,
            "median_ms": 1.0, "gbps": 1.0}]"#;
        assert_eq!(parse_external_rows(text).unwrap()[0].tflops, None);
        let e = parse_external_rows("{\"rows\": 3}").unwrap_err();
        assert!(e.contains("median_ms"), "{e}");
    }

    #[test]
    fn filter_takes_comma_separated_alternatives() {
        let opts = |f: &str| BenchOptions {
            filter: Some(f.to_string()),
            ..BenchOptions::default()
        };
        let both = opts("ll4mi b64 ctx8192 32/8,2d b1 ctx1024");
        assert!(both.wants("paged_attention_ll4mi", 64, 8192, 32, 8));
        assert!(both.wants("paged_attention_2d", 1, 1024, 32, 8));
        assert!(!both.wants("paged_attention_ll4mi", 1, 1024, 32, 8));
        assert!(BenchOptions::default().wants("anything", 1, 1, 1, 1));
    }
}
