//! Launchers for `kernels/paged_decode.hip`, mirroring
//! `attnlab_sim::kernels::paged_decode::{paged_attention_2d, paged_attention_ll4mi}`.
//! Rows that are not decode rows keep the contents of `out` (uploaded first).

use super::unified_attention::{to_u32, validate_metadata, SHARED_MEMORY_LIMIT};
use crate::diff::{bits_from_bytes, bytes_of, bytes_of_i32};
use crate::kernels::{qkv_defines, Gpu};
use crate::runtime::{Arg, ArgStruct, Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_shared::layout::KvLayout;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::paged_decode::{
    max_num_partitions, paged_2d_tile_size, validate_paged_inputs, LL4MI_TOKENS_PER_WARP,
};
use attnlab_sim::numerics::softmax_scale_log2;

const MAX_PARTITION_SIZE: usize = 16 * LL4MI_TOKENS_PER_WARP;

/// The kernels' `PagedArgs` struct (field order as in paged_decode.hip).
pub(crate) fn args(
    layout: &KvLayout,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    tile: usize,
    partition_size: usize,
    scale: f32,
    stage_kv: bool,
) -> Arg {
    ArgStruct::default()
        .i64(meta.num_reqs() as i64)
        .i64(cfg.num_heads as i64)
        .i64(cfg.num_kv_heads as i64)
        .i64(cfg.head_size as i64)
        .i64(meta.block_size as i64)
        .i64(meta.block_table.max_blocks as i64)
        .i64(layout.num_blocks as i64)
        .i64(tile as i64)
        .i64(cfg.sliding_window.unwrap_or(0) as i64)
        .i64(partition_size as i64)
        .i64(max_num_partitions(meta.max_seq_len, partition_size.max(1)) as i64)
        .i32(super::reshape_and_cache::layout_code(layout.kind))
        .i32(cfg.sinks.is_some() as i32)
        .i32(cfg.alibi_slopes.is_some() as i32)
        .i32(stage_kv as i32)
        .f32(scale)
        .f32(softmax_scale_log2(scale))
        .f32(cfg.softcap.unwrap_or(0.0))
        .f32(cfg.k_scale)
        .f32(cfg.v_scale)
        .arg()
}

/// Shared memory of one `paged_attention_2d` program and whether it stages
/// each K/V tile there: qpk x (TILE + head_size + 3) f32 of row state, plus
/// 2 x TILE x head_size f32 for the staged tile when that still fits.
pub(crate) fn shared_2d(qpk: usize, tile: usize, head_size: usize) -> (usize, bool) {
    let state = (qpk * tile + qpk * head_size + 3 * qpk) * 4;
    let staged = state + 2 * tile * head_size * 4;
    if staged <= SHARED_MEMORY_LIMIT {
        (staged, true)
    } else {
        (state, false)
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

pub(crate) fn upload<'d>(
    gpu: &'d Gpu,
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    out: &[f32],
) -> Result<Inputs<'d>> {
    validate_paged_inputs(query, cache, meta, cfg, out)?;
    validate_metadata(meta, cache)?;
    let dev = gpu.dev.as_ref();
    Ok(Inputs {
        q: Buffer::from_bytes(dev, &bytes_of(query, cfg.dtype))?,
        k: Buffer::from_bytes(dev, &bytes_of(&cache.k, cfg.kv_dtype))?,
        v: Buffer::from_bytes(dev, &bytes_of(&cache.v, cfg.kv_dtype))?,
        bt: Buffer::from_bytes(dev, &bytes_of_i32(&meta.block_table.data))?,
        qsl: Buffer::from_bytes(dev, &bytes_of_i32(&meta.query_start_loc))?,
        sl: Buffer::from_bytes(dev, &bytes_of_i32(&meta.seq_lens))?,
        sinks: Buffer::from_bytes(
            dev,
            &bytes_of(cfg.sinks.as_deref().unwrap_or(&[0.0]), DType::F32),
        )?,
        alibi: Buffer::from_bytes(
            dev,
            &bytes_of(cfg.alibi_slopes.as_deref().unwrap_or(&[0.0]), DType::F32),
        )?,
        out: Buffer::from_bytes(dev, &bytes_of(out, cfg.dtype))?,
    })
}

/// vLLM's Triton `kernel_paged_attention_2d` on the device; returns the whole
/// `[T, Hq, D]` output's bits in `cfg.dtype`.
pub fn paged_attention_2d(
    gpu: &Gpu,
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    out: &[f32],
) -> Result<Vec<u32>> {
    let inp = upload(gpu, query, cache, meta, cfg, out)?;
    let (qpk, d) = (cfg.queries_per_kv(), cfg.head_size);
    let tile = paged_2d_tile_size(meta.block_size);
    let (shared, stage_kv) = shared_2d(qpk, tile, d);
    if shared > SHARED_MEMORY_LIMIT {
        return Err(Error::invalid(
            "shared memory of one program",
            shared,
            format!("at most {SHARED_MEMORY_LIMIT} bytes: qpk x (TILE + head_size + 3) f32"),
        )
        .into());
    }
    if meta.num_reqs() > 0 {
        let defines = qkv_defines(cfg.dtype, cfg.kv_dtype);
        let f = gpu.function("paged_decode", &defines, "paged_attention_2d")?;
        let dims = LaunchDims {
            grid: [
                to_u32(meta.num_reqs(), "sequences")?,
                to_u32(cfg.num_kv_heads, "kv heads")?,
                1,
            ],
            block: [128, 1, 1],
            shared_bytes: shared as u32,
        };
        let i = &inp;
        let call = [
            i.q.arg(),
            i.k.arg(),
            i.v.arg(),
            i.bt.arg(),
            i.qsl.arg(),
            i.sl.arg(),
            i.sinks.arg(),
            i.alibi.arg(),
            i.out.arg(),
            args(&cache.layout, meta, cfg, tile, 0, cfg.scale, stage_kv),
        ];
        gpu.dev.launch(f, dims, &call)?;
    }
    Ok(bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype))
}

/// vLLM's HIP ll4mi partition + reduce kernels on the device; returns the
/// whole `[T, Hq, D]` output's bits in `cfg.dtype`.
pub fn paged_attention_ll4mi(
    gpu: &Gpu,
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    partition_size: usize,
    out: &[f32],
) -> Result<Vec<u32>> {
    if partition_size == 0
        || partition_size % LL4MI_TOKENS_PER_WARP != 0
        || partition_size > MAX_PARTITION_SIZE
    {
        return Err(Error::invalid(
            "partition_size",
            partition_size,
            format!("a multiple of {LL4MI_TOKENS_PER_WARP} up to {MAX_PARTITION_SIZE}"),
        )
        .into());
    }
    let inp = upload(gpu, query, cache, meta, cfg, out)?;
    let np = max_num_partitions(meta.max_seq_len, partition_size);
    if meta.num_reqs() == 0 || np == 0 {
        return Ok(bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype));
    }
    let dev = gpu.dev.as_ref();
    let (hq, d) = (cfg.num_heads, cfg.head_size);
    let rows = meta.num_reqs() * hq * np;
    let max_logits = Buffer::zeroed(dev, rows * 4)?;
    let exp_sums = Buffer::zeroed(dev, rows * 4)?;
    let tmp_out = Buffer::zeroed(dev, rows * d * 4)?;
    let scale = if cfg.kv_dtype.is_fp8() {
        cfg.scale * cfg.k_scale
    } else {
        cfg.scale
    };
    let a = args(&cache.layout, meta, cfg, 0, partition_size, scale, false);
    let defines = qkv_defines(cfg.dtype, cfg.kv_dtype);
    let part = gpu.function("paged_decode", &defines, "paged_attention_ll4mi_partition")?;
    let warps = partition_size / LL4MI_TOKENS_PER_WARP;
    let shared = (2 * partition_size + 2 * warps + LL4MI_TOKENS_PER_WARP + 2) * 4;
    let dims = LaunchDims {
        grid: [
            to_u32(meta.num_reqs(), "sequences")?,
            to_u32(np, "partitions")?,
            to_u32(cfg.num_kv_heads, "kv heads")?,
        ],
        block: [128, 1, 1],
        shared_bytes: shared as u32,
    };
    let i = &inp;
    let call = [
        i.q.arg(),
        i.k.arg(),
        i.v.arg(),
        i.bt.arg(),
        i.qsl.arg(),
        i.sl.arg(),
        i.alibi.arg(),
        max_logits.arg(),
        exp_sums.arg(),
        tmp_out.arg(),
        a.clone(),
    ];
    dev.launch(part, dims, &call)?;
    let reduce = gpu.function("paged_decode", &defines, "paged_attention_ll4mi_reduce")?;
    let dims = LaunchDims {
        grid: [
            to_u32(hq, "heads")?,
            to_u32(meta.num_reqs(), "sequences")?,
            1,
        ],
        block: [d.min(128) as u32, 1, 1],
        shared_bytes: 0,
    };
    dev.launch(
        reduce,
        dims,
        &[
            max_logits.arg(),
            exp_sums.arg(),
            tmp_out.arg(),
            i.qsl.arg(),
            i.sl.arg(),
            i.out.arg(),
            a,
        ],
    )?;
    Ok(bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype))
}
