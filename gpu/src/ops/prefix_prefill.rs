//! Launcher for `kernels/prefix_prefill.hip`, mirroring
//! `attnlab_sim::kernels::prefix_prefill::context_attention_fwd`. Rows the
//! kernel does not own (decode rows under `skip_decode`) keep the contents
//! of `out` (uploaded first).

use super::paged_decode::upload;
use super::reshape_and_cache::layout_code;
use super::unified_attention::{to_u32, SHARED_MEMORY_LIMIT};
use crate::kernels::{qkv_defines, Gpu};
use crate::runtime::bytes::bits_from_bytes;
use crate::runtime::{ArgStruct, LaunchDims, Result};
use attnlab_shared::error::Error;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::prefix_prefill::PrefixVariant;
use attnlab_sim::numerics::softmax_scale_log2;

/// Query rows of one GPU program: a divisor of every `BLOCK_M` the sim uses
/// (128, and 64 for the fp32 ALiBi kernel), so a chunk never straddles two
/// of the sim's programs and keeps its loop bounds.
pub const ROWS_PER_PROGRAM: usize = 16;

/// vLLM's `context_attention_fwd` on the device; returns the whole
/// `[T, Hq, D]` output's bits in `cfg.dtype`.
pub fn context_attention_fwd(
    gpu: &Gpu,
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    skip_decode: bool,
    out: &[f32],
) -> Result<Vec<u32>> {
    let inp = upload(gpu, query, cache, meta, cfg, out)?;
    let v = PrefixVariant::for_config(cfg);
    if cfg.alibi_slopes.is_some() && (!meta.causal || cfg.sinks.is_some()) {
        return Err(Error::unsupported(
            "non-causal or sink attention with ALiBi",
            "_fwd_kernel_alibi supports neither",
        )
        .into());
    }
    if !v.block_m.is_multiple_of(ROWS_PER_PROGRAM) {
        return Err(Error::invalid(
            "BLOCK_M",
            v.block_m,
            format!("a multiple of {ROWS_PER_PROGRAM}"),
        )
        .into());
    }
    let (r, d) = (ROWS_PER_PROGRAM, cfg.head_size);
    let tile = v.ctx_tile.max(v.block_n);
    let shared = (r * tile + r * d + 3 * r) * 4;
    if shared > SHARED_MEMORY_LIMIT {
        return Err(Error::invalid(
            "shared memory of one program",
            shared,
            format!("at most {SHARED_MEMORY_LIMIT} bytes: {r} x (TILE + head_size + 3) f32"),
        )
        .into());
    }
    let max_q = (0..meta.num_reqs())
        .map(|b| meta.query_len(b))
        .max()
        .unwrap_or(0);
    if max_q > 0 {
        let a = ArgStruct::default()
            .i64(meta.num_reqs() as i64)
            .i64(cfg.num_heads as i64)
            .i64(cfg.num_kv_heads as i64)
            .i64(d as i64)
            .i64(meta.block_size as i64)
            .i64(meta.block_table.max_blocks as i64)
            .i64(v.block_m as i64)
            .i64(v.ctx_tile as i64)
            .i64(v.block_n as i64)
            .i64(r as i64)
            .i64(cfg.sliding_window.unwrap_or(0) as i64)
            .i32(layout_code(cache.layout.kind))
            .i32(meta.causal as i32)
            .i32(skip_decode as i32)
            .i32(cfg.sinks.is_some() as i32)
            .i32(cfg.alibi_slopes.is_some() as i32)
            .i32(0)
            .f32(cfg.scale)
            .f32(softmax_scale_log2(cfg.scale))
            .f32(cfg.softcap.unwrap_or(0.0))
            .f32(cfg.k_scale)
            .f32(cfg.v_scale)
            .f32(v.l_eps)
            .arg();
        let defines = qkv_defines(cfg.dtype, cfg.kv_dtype);
        let f = gpu.function("prefix_prefill", &defines, "context_attention_fwd")?;
        let dims = LaunchDims {
            grid: [
                to_u32(meta.num_reqs(), "sequences")?,
                to_u32(max_q.div_ceil(r), "row chunks")?,
                to_u32(cfg.num_heads, "heads")?,
            ],
            block: [128, 1, 1],
            shared_bytes: shared as u32,
        };
        let call = inp.with_sinks_and_out(a);
        gpu.dev.launch(f, dims, &call)?;
    }
    Ok(bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype))
}
