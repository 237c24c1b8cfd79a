//! Launchers for `kernels/paged_decode.hip`, mirroring
//! `attnlab_sim::kernels::paged_decode::{paged_attention_2d, paged_attention_ll4mi}`.
//! Rows that are not decode rows keep the contents of `out` (uploaded first).
//! They launch the [`PagedInputs`] the emulator takes, validated once where
//! they were built: no shape or metadata check is repeated here, only the
//! device's own limits (grid sizes, shared memory, partition size).

use super::unified_attention::{to_u32, SHARED_MEMORY_LIMIT};
use crate::kernels::{qkv_defines, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i32};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::paged_decode::{
    max_num_partitions, paged_2d_tile_size, PagedInputs, PartitionSize, LL4MI_TOKENS_PER_WARP,
};
use attnlab_sim::numerics::softmax_scale_log2;

const MAX_PARTITION_SIZE: usize = 16 * LL4MI_TOKENS_PER_WARP;

/// Threads of every decode block (`DECODE_THREADS`: a multiple of the 64-lane wave).
const THREADS: u32 = 256;
/// Query heads one pass of a block computes (`DECODE_HG`: register dot chains per thread).
const MAX_HEAD_GROUP: usize = 8;
/// (head, d) PV chains per thread (`DECODE_HPT`); score rows are allocated in multiples of it.
const HEADS_PER_THREAD: usize = 4;

param_block! {
    /// `PagedArgs` of `kernels/paged_decode.hip` (both kernels' scalars).
    pub struct PagedParams as "PagedArgs" {
        num_reqs: i64,
        num_heads: i64,
        num_kv_heads: i64,
        head_size: i64,
        block_size: i64,
        max_blocks: i64,
        num_kv_blocks: i64,
        tile: i64,
        window: i64,
        partition_size: i64,
        max_partitions: i64,
        layout_kind: i32,
        has_sinks: i32,
        has_alibi: i32,
        /// Query heads of the group one pass computes.
        head_group: i32,
        /// Whether a 2D block copies its V range into shared memory.
        stage_v: i32,
        scale: f32,
        scale_log2: f32,
        softcap: f32,
        k_scale: f32,
        v_scale: f32,
    }
}

impl PagedParams {
    /// The block of one launch; `tile` is the 2D kernel's, `partition_size`
    /// ll4mi's (0 for the other kernel).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        layout: &KvLayout,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        tile: usize,
        partition_size: usize,
        scale: f32,
        head_group: usize,
        stage_v: bool,
    ) -> Self {
        PagedParams {
            num_reqs: meta.num_reqs() as i64,
            num_heads: cfg.num_heads() as i64,
            num_kv_heads: cfg.num_kv_heads() as i64,
            head_size: cfg.head_size() as i64,
            block_size: meta.block_size() as i64,
            max_blocks: meta.block_table().max_blocks as i64,
            num_kv_blocks: layout.num_blocks as i64,
            tile: tile as i64,
            window: cfg.sliding_window().unwrap_or(0) as i64,
            partition_size: partition_size as i64,
            max_partitions: max_num_partitions(meta.max_seq_len(), partition_size.max(1)) as i64,
            layout_kind: super::reshape_and_cache::layout_code(layout.kind),
            has_sinks: cfg.sinks().is_some() as i32,
            has_alibi: cfg.alibi_slopes().is_some() as i32,
            head_group: head_group as i32,
            stage_v: stage_v as i32,
            scale,
            scale_log2: softmax_scale_log2(scale),
            softcap: cfg.softcap().unwrap_or(0.0),
            k_scale: cfg.k_scale(),
            v_scale: cfg.v_scale(),
        }
    }
}

/// Score rows of a block: the head group rounded up to whole PV chain sets.
fn score_rows(head_group: usize) -> usize {
    head_group.div_ceil(HEADS_PER_THREAD) * HEADS_PER_THREAD
}

/// Shared memory of one `paged_attention_2d` block (the kernel's layout):
/// Q and acc rows, the scores of a 256-key chunk, four per-tile statistics,
/// m and l, and each key's block, row and staged-V offset.
fn shared_2d(head_group: usize, tile: usize, head_size: usize) -> usize {
    let (c, hg) = (THREADS as usize, head_group);
    let tiles = c / tile;
    (2 * (hg * head_size).next_multiple_of(4)
        + score_rows(hg) * c
        + 4 * hg * tiles
        + 2 * hg
        + 3 * c)
        * 4
}

/// Shared memory of one ll4mi partition block (the kernel's layout): Q rows,
/// e/p of the partition, per-wave statistics, the butterfly exchange, each
/// token's block and row.
fn shared_ll4mi(head_group: usize, partition_size: usize, head_size: usize) -> usize {
    let (hg, p) = (head_group, partition_size);
    let waves = p / LL4MI_TOKENS_PER_WARP;
    ((hg * head_size).next_multiple_of(4)
        + score_rows(hg) * p
        + 3 * hg * waves
        + hg
        + MAX_HEAD_GROUP * THREADS as usize
        + 2 * p)
        * 4
}

/// Dynamic shared memory one block may use on `gpu`: the opt-in maximum of
/// an H100 / H200 (227 KiB; the CUDA runtime raises the limit per launch),
/// a CDNA workgroup's 64 KiB LDS elsewhere (AMD, the host emulation).
fn device_shared_limit(gpu: &Gpu) -> usize {
    match gpu.dev.info().target {
        crate::runtime::Target::Cuda { .. } => 227 * 1024,
        _ => 64 * 1024,
    }
}

/// Whether a 2D block can stage the V of `keys` consecutive tokens starting at
/// a multiple of `keys` (the kernels' `stage_v`): whole 16-byte vectors per
/// token row (NHD) or per (block, head) run (ROCm / AITER, whose ranges must
/// start on a block boundary: `keys` a multiple of the block size).
fn staged_v_ok(layout: &KvLayout, kv_dtype: DType, keys: usize) -> bool {
    let vec = 16 / kv_dtype.size_bytes();
    let (d, bs) = (layout.head_size, layout.block_size);
    match layout.kind {
        LayoutKind::Nhd => d.is_multiple_of(vec),
        _ => keys.is_multiple_of(bs) && (d * bs).is_multiple_of(vec),
    }
}

/// Shared-memory bytes of a staged V range (`keys` x head_size elements),
/// placed after the block's other arrays, 16-byte aligned.
fn staged_v_bytes(keys: usize, head_size: usize, kv_dtype: DType) -> usize {
    keys * head_size * kv_dtype.size_bytes() + 16
}

/// The block's shared memory with V staged where it fits `limit`, else
/// without: (stage_v, bytes).
fn with_staged_v(base: usize, staged: Option<usize>, limit: usize) -> (bool, usize) {
    match staged {
        Some(v) if base + v <= limit => (true, base + v),
        _ => (false, base),
    }
}

/// The largest head group (at most 8, halving) whose block fits the shared
/// memory limit, and that block's bytes.
fn head_group(qpk: usize, shared: impl Fn(usize) -> usize) -> Result<(usize, usize)> {
    let mut hg = qpk.clamp(1, MAX_HEAD_GROUP);
    loop {
        let bytes = shared(hg);
        if bytes <= SHARED_MEMORY_LIMIT {
            return Ok((hg, bytes));
        }
        if hg == 1 {
            return Err(Error::invalid(
                "shared memory of one decode block",
                bytes,
                format!("at most {SHARED_MEMORY_LIMIT} bytes even with one query head per pass (head_size / partition_size too large)"),
            )
            .into());
        }
        hg /= 2;
    }
}

/// Uploaded inputs shared by both kernels (and prefix prefill's, which
/// reads the same paged-cache arguments).
pub(crate) struct Inputs<'d> {
    pub q: Buffer<'d>,
    pub k: Buffer<'d>,
    pub v: Buffer<'d>,
    pub bt: Buffer<'d>,
    pub qsl: Buffer<'d>,
    pub sl: Buffer<'d>,
    pub sinks: Buffer<'d>,
    pub alibi: Buffer<'d>,
    pub out: Buffer<'d>,
}

impl Inputs<'_> {
    /// The argument list of `paged_attention_2d` and `context_attention_fwd`:
    /// `(q, k, v, block_table, qsl, seq_lens, sinks, alibi, out, params)`.
    pub(crate) fn with_sinks_and_out(&self, params: Arg) -> [Arg; 10] {
        [
            self.q.arg(),
            self.k.arg(),
            self.v.arg(),
            self.bt.arg(),
            self.qsl.arg(),
            self.sl.arg(),
            self.sinks.arg(),
            self.alibi.arg(),
            self.out.arg(),
            params,
        ]
    }
}

/// Uploads validated inputs and the output's current contents (`out`,
/// checked against them: the one buffer they do not hold).
pub(crate) fn upload<'d>(gpu: &'d Gpu, inputs: &PagedInputs, out: &[f32]) -> Result<Inputs<'d>> {
    inputs.check_out(out)?;
    let (query, cache, meta, cfg) = (inputs.query(), inputs.cache(), inputs.meta(), inputs.cfg());
    let dev = gpu.dev.as_ref();
    Ok(Inputs {
        q: Buffer::from_bytes(dev, &bytes_of(query, cfg.dtype()))?,
        k: Buffer::from_bytes(dev, &bytes_of(&cache.k, cfg.kv_dtype()))?,
        v: Buffer::from_bytes(dev, &bytes_of(&cache.v, cfg.kv_dtype()))?,
        bt: Buffer::from_bytes(dev, &bytes_of_i32(&meta.block_table().data))?,
        qsl: Buffer::from_bytes(dev, &bytes_of_i32(meta.query_start_loc()))?,
        sl: Buffer::from_bytes(dev, &bytes_of_i32(meta.seq_lens()))?,
        sinks: Buffer::from_bytes(dev, &bytes_of(cfg.sinks().unwrap_or(&[0.0]), DType::F32))?,
        alibi: Buffer::from_bytes(
            dev,
            &bytes_of(cfg.alibi_slopes().unwrap_or(&[0.0]), DType::F32),
        )?,
        out: Buffer::from_bytes(dev, &bytes_of(out, cfg.dtype()))?,
    })
}

/// vLLM's Triton `kernel_paged_attention_2d` on the device; returns the
/// whole `[T, Hq, D]` output's bits in `cfg.dtype`.
pub fn paged_attention_2d(gpu: &Gpu, inputs: &PagedInputs, out: &[f32]) -> Result<Vec<u32>> {
    let inp = upload(gpu, inputs, out)?;
    let (meta, cfg) = (inputs.meta(), inputs.cfg());
    launch_2d(gpu, &inp, &inputs.cache().layout, meta, cfg)?;
    Ok(bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype()))
}

/// Launches `paged_attention_2d` on uploaded inputs (what
/// [`paged_attention_2d`] and `attnlab bench --gpu` both run): grid
/// (num_reqs, Hkv), 256 threads. `inp` holds buffers of the shapes `layout`,
/// `meta` and `cfg` give, which agree: uploaded from [`PagedInputs`], or
/// built so by bench from metadata it made.
pub(crate) fn launch_2d(
    gpu: &Gpu,
    inp: &Inputs,
    layout: &KvLayout,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
) -> Result<()> {
    if meta.num_reqs() == 0 {
        return Ok(());
    }
    let (qpk, d) = (cfg.queries_per_kv(), cfg.head_size());
    let tile = paged_2d_tile_size(meta.block_size());
    let (hg, base) = head_group(qpk, |hg| shared_2d(hg, tile, d))?;
    let chunk = THREADS as usize;
    let staged = staged_v_ok(layout, cfg.kv_dtype(), chunk)
        .then(|| staged_v_bytes(chunk, d, cfg.kv_dtype()));
    let (stage_v, shared) = with_staged_v(base, staged, device_shared_limit(gpu));
    let defines = qkv_defines(cfg.dtype(), cfg.kv_dtype());
    let f = gpu.function("paged_decode", &defines, "paged_attention_2d")?;
    let dims = LaunchDims {
        grid: [
            to_u32(meta.num_reqs(), "sequences")?,
            to_u32(cfg.num_kv_heads(), "kv heads")?,
            1,
        ],
        block: [THREADS, 1, 1],
        shared_bytes: shared as u32,
    };
    let a = PagedParams::new(layout, meta, cfg, tile, 0, cfg.scale(), hg, stage_v);
    let call = inp.with_sinks_and_out(a.arg());
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe { gpu.dev.launch(f, dims, &call) }?;
    Ok(())
}

/// The ll4mi partials between the partition and the reduce kernel:
/// `[num_reqs, Hq, max_num_partitions]` maxima and exp-sums and
/// `[.., head_size]` partial outputs, f32.
pub(crate) struct Ll4miScratch<'d> {
    pub max_logits: Buffer<'d>,
    pub exp_sums: Buffer<'d>,
    pub tmp_out: Buffer<'d>,
}

impl<'d> Ll4miScratch<'d> {
    pub(crate) fn new(
        gpu: &'d Gpu,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        partition_size: usize,
    ) -> Result<Self> {
        let dev = gpu.dev.as_ref();
        let np = max_num_partitions(meta.max_seq_len(), partition_size.max(1));
        let rows = meta.num_reqs() * cfg.num_heads() * np;
        Ok(Ll4miScratch {
            max_logits: Buffer::zeroed(dev, rows * 4)?,
            exp_sums: Buffer::zeroed(dev, rows * 4)?,
            tmp_out: Buffer::zeroed(dev, rows * cfg.head_size() * 4)?,
        })
    }
}

/// The partition kernel's thread map holds at most 16 waves' tokens (a
/// device limit beyond [`PartitionSize`]'s rule).
fn partition_fits(partition_size: PartitionSize) -> Result<usize> {
    let p = partition_size.get();
    if p > MAX_PARTITION_SIZE {
        return Err(Error::invalid(
            "partition_size",
            p,
            format!("a multiple of {LL4MI_TOKENS_PER_WARP} up to {MAX_PARTITION_SIZE}"),
        )
        .into());
    }
    Ok(p)
}

/// vLLM's HIP ll4mi partition + reduce kernels on the device; returns the
/// whole `[T, Hq, D]` output's bits in `cfg.dtype`.
pub fn paged_attention_ll4mi(
    gpu: &Gpu,
    inputs: &PagedInputs,
    partition_size: PartitionSize,
    out: &[f32],
) -> Result<Vec<u32>> {
    let p = partition_fits(partition_size)?;
    let inp = upload(gpu, inputs, out)?;
    let (meta, cfg) = (inputs.meta(), inputs.cfg());
    let scratch = Ll4miScratch::new(gpu, meta, cfg, p)?;
    launch_ll4mi(
        gpu,
        &inp,
        &scratch,
        &inputs.cache().layout,
        meta,
        cfg,
        partition_size,
    )?;
    Ok(bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype()))
}

/// Launches the ll4mi partition kernel (grid (num_reqs, max_num_partitions,
/// Hkv), 256 threads) then the reduce kernel (grid (Hq, num_reqs), 256
/// threads) on uploaded inputs: what [`paged_attention_ll4mi`] and
/// `attnlab bench --gpu` both run. `scratch` comes from
/// [`Ll4miScratch::new`] with the same metadata and partition size.
pub(crate) fn launch_ll4mi(
    gpu: &Gpu,
    inp: &Inputs,
    scratch: &Ll4miScratch,
    layout: &KvLayout,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    partition_size: PartitionSize,
) -> Result<()> {
    let partition_size = partition_fits(partition_size)?;
    let np = max_num_partitions(meta.max_seq_len(), partition_size);
    if meta.num_reqs() == 0 || np == 0 {
        return Ok(());
    }
    let (qpk, d) = (cfg.queries_per_kv(), cfg.head_size());
    let (hg, shared) = head_group(qpk, |hg| shared_ll4mi(hg, partition_size, d))?;
    // Reduce: butterfly exchange, per-wave maxima, gmax/inv, w_p per partition.
    let reduce_fixed = THREADS as usize + THREADS as usize / LL4MI_TOKENS_PER_WARP + 2;
    let reduce_shared = (reduce_fixed + np) * 4;
    if reduce_shared > SHARED_MEMORY_LIMIT {
        return Err(Error::invalid(
            "ll4mi partitions of the longest sequence",
            np,
            format!(
                "at most {} (the reduce kernel keeps one weight per partition in shared memory)",
                SHARED_MEMORY_LIMIT / 4 - reduce_fixed
            ),
        )
        .into());
    }
    let scale = if cfg.kv_dtype().is_fp8() {
        cfg.scale() * cfg.k_scale()
    } else {
        cfg.scale()
    };
    // ll4mi reads V from the cache (staging it measured slower on the H100).
    let a = PagedParams::new(layout, meta, cfg, 0, partition_size, scale, hg, false).arg();
    let defines = qkv_defines(cfg.dtype(), cfg.kv_dtype());
    let part = gpu.function("paged_decode", &defines, "paged_attention_ll4mi_partition")?;
    let dims = LaunchDims {
        grid: [
            to_u32(meta.num_reqs(), "sequences")?,
            to_u32(np, "partitions")?,
            to_u32(cfg.num_kv_heads(), "kv heads")?,
        ],
        block: [THREADS, 1, 1],
        shared_bytes: shared as u32,
    };
    let (i, s) = (inp, scratch);
    let call = [
        i.q.arg(),
        i.k.arg(),
        i.v.arg(),
        i.bt.arg(),
        i.qsl.arg(),
        i.sl.arg(),
        i.alibi.arg(),
        s.max_logits.arg(),
        s.exp_sums.arg(),
        s.tmp_out.arg(),
        a.clone(),
    ];
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe { gpu.dev.launch(part, dims, &call) }?;
    let reduce = gpu.function("paged_decode", &defines, "paged_attention_ll4mi_reduce")?;
    let dims = LaunchDims {
        grid: [
            to_u32(cfg.num_heads(), "heads")?,
            to_u32(meta.num_reqs(), "sequences")?,
            1,
        ],
        block: [THREADS, 1, 1],
        shared_bytes: reduce_shared as u32,
    };
    let call = [
        s.max_logits.arg(),
        s.exp_sums.arg(),
        s.tmp_out.arg(),
        i.qsl.arg(),
        i.sl.arg(),
        i.out.arg(),
        a,
    ];
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe { gpu.dev.launch(reduce, dims, &call) }?;
    Ok(())
}
