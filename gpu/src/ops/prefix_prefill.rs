//! Launcher for `kernels/prefix_prefill.hip`, mirroring
//! `attnlab_sim::kernels::prefix_prefill::context_attention_fwd`. Rows the
//! kernel does not own (decode rows under `skip_decode`) keep the contents
//! of `out` (uploaded first).

use super::paged_decode::upload;
use super::reshape_and_cache::layout_code;
use super::unified_attention::{to_u32, SHARED_MEMORY_LIMIT};
use crate::kernels::{qkv_defines, Gpu};
use crate::runtime::bytes::bits_from_bytes;
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{LaunchDims, Result};
use attnlab_shared::error::Error;
use attnlab_sim::kernels::prefix_prefill::PrefixArgs;
use attnlab_sim::numerics::softmax_scale_log2;

/// Query rows of one GPU program: a divisor of every `BLOCK_M` the sim uses
/// (128, and 64 for the fp32 ALiBi kernel), so a chunk never straddles two
/// of the sim's programs and keeps its loop bounds.
pub const ROWS_PER_PROGRAM: usize = 16;

param_block! {
    /// `PrefixArgs` of `kernels/prefix_prefill.hip`.
    pub struct PrefixParams as "PrefixArgs" {
        num_reqs: i64,
        num_heads: i64,
        num_kv_heads: i64,
        head_size: i64,
        block_size: i64,
        max_blocks: i64,
        block_m: i64,
        ctx_tile: i64,
        block_n: i64,
        rows_per_program: i64,
        window: i64,
        layout_kind: i32,
        causal: i32,
        skip_decode: i32,
        has_sinks: i32,
        has_alibi: i32,
        pad: i32,
        scale: f32,
        scale_log2: f32,
        softcap: f32,
        k_scale: f32,
        v_scale: f32,
        l_eps: f32,
    }
}

/// vLLM's `context_attention_fwd` on the device, launching the
/// [`PrefixArgs`] the emulator takes (validated where they were built;
/// only the device's limits are checked here); returns the whole
/// `[T, Hq, D]` output's bits in `cfg.dtype`.
pub fn context_attention_fwd(gpu: &Gpu, args: &PrefixArgs, out: &[f32]) -> Result<Vec<u32>> {
    let inputs = args.inputs();
    let (cache, meta, cfg) = (inputs.cache(), inputs.meta(), inputs.cfg());
    let inp = upload(gpu, inputs, out)?;
    let v = args.variant();
    if !v.block_m.is_multiple_of(ROWS_PER_PROGRAM) {
        return Err(Error::invalid(
            "BLOCK_M",
            v.block_m,
            format!("a multiple of {ROWS_PER_PROGRAM}"),
        )
        .into());
    }
    let (r, d) = (ROWS_PER_PROGRAM, cfg.head_size());
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
        let a = PrefixParams {
            num_reqs: meta.num_reqs() as i64,
            num_heads: cfg.num_heads() as i64,
            num_kv_heads: cfg.num_kv_heads() as i64,
            head_size: d as i64,
            block_size: meta.block_size() as i64,
            max_blocks: meta.block_table().max_blocks as i64,
            block_m: v.block_m as i64,
            ctx_tile: v.ctx_tile as i64,
            block_n: v.block_n as i64,
            rows_per_program: r as i64,
            window: cfg.sliding_window().unwrap_or(0) as i64,
            layout_kind: layout_code(cache.layout.kind),
            causal: meta.causal() as i32,
            skip_decode: args.skip_decode() as i32,
            has_sinks: cfg.sinks().is_some() as i32,
            has_alibi: cfg.alibi_slopes().is_some() as i32,
            pad: 0,
            scale: cfg.scale(),
            scale_log2: softmax_scale_log2(cfg.scale()),
            softcap: cfg.softcap().unwrap_or(0.0),
            k_scale: cfg.k_scale(),
            v_scale: cfg.v_scale(),
            l_eps: v.l_eps,
        };
        let defines = qkv_defines(cfg.dtype(), cfg.kv_dtype());
        let f = gpu.function("prefix_prefill", &defines, "context_attention_fwd")?;
        let dims = LaunchDims {
            grid: [
                to_u32(meta.num_reqs(), "sequences")?,
                to_u32(max_q.div_ceil(r), "row chunks")?,
                to_u32(cfg.num_heads(), "heads")?,
            ],
            block: [128, 1, 1],
            shared_bytes: shared as u32,
        };
        let call = inp.with_sinks_and_out(a.arg());
        // SAFETY: context_attention_fwd's parameter list (`with_sinks_and_out`)
        // with its layout-checked block; the buffers were uploaded from the
        // validated PagedInputs, whose shapes these scalars describe.
        unsafe { gpu.dev.launch(f, dims, &call) }?;
    }
    Ok(bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype()))
}
