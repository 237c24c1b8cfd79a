//! Launcher for `kernels/prefix_prefill_tc.hip`, mirroring
//! `attnlab_sim::kernels::prefix_prefill_tc::context_attention_tc`: vLLM's
//! `context_attention_fwd` with Q·Kᵀ and P·V on the device's matrix cores
//! (`mma.sync m16n8k16` on NVIDIA, MFMA 16x16x16 on CDNA; on the host
//! device the model of the target its wave width stands for). Rows the
//! kernel does not own (decode rows under `skip_decode`) keep the contents
//! of `out` (uploaded first).

use super::flash_varlen_tc::{host_target_code, matrix_target};
use super::paged_decode::upload;
use super::reshape_and_cache::layout_code;
use super::unified_attention::to_u32;
pub use crate::kernels::prefix_tc_defines as defines;
use crate::kernels::Gpu;
use crate::runtime::bytes::bits_from_bytes;
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{LaunchDims, Result};
use attnlab_shared::error::Error;
use attnlab_sim::kernels::prefix_prefill::PrefixArgs;
use attnlab_sim::kernels::prefix_prefill_tc::{stage_bytes, validate_config, WAVE_ROWS};
use attnlab_sim::numerics::softmax_scale_log2;

param_block! {
    /// `PrefixTcArgs` of `kernels/prefix_prefill_tc.hip`.
    pub struct PrefixTcParams as "PrefixTcArgs" {
        num_heads: i64,
        num_kv_heads: i64,
        block_size: i64,
        max_blocks: i64,
        block_m: i64,
        window: i64,
        layout_kind: i32,
        causal: i32,
        skip_decode: i32,
        has_sinks: i32,
        has_alibi: i32,
        host_target: i32,
        scale: f32,
        scale_log2: f32,
        softcap: f32,
        k_scale: f32,
        v_scale: f32,
        l_eps: f32,
    }
}

/// Waves per workgroup: 64 consecutive rows of one request and head, a
/// divisor of every BLOCK_M the tensor-core flavour takes (128).
pub const WARPS: usize = 4;

/// vLLM's `context_attention_fwd` on the device's matrix cores, launching
/// the [`PrefixArgs`] the emulator takes (validated where they were built;
/// this launcher checks what the tensor-core kernel adds: the dtypes, the
/// head size, the staging and the workgroup's rows); returns the whole
/// `[T, Hq, D]` output's bits in `cfg.dtype`.
pub fn context_attention_tc(gpu: &Gpu, args: &PrefixArgs, out: &[f32]) -> Result<Vec<u32>> {
    let inputs = args.inputs();
    let (cache, meta, cfg) = (inputs.cache(), inputs.meta(), inputs.cfg());
    let v = args.variant();
    validate_config(cfg, &v)?;
    let rows = WAVE_ROWS * WARPS;
    if !v.block_m.is_multiple_of(rows) {
        return Err(Error::invalid(
            "prefix_prefill_tc BLOCK_M",
            v.block_m,
            format!("a multiple of {rows} (the rows of one workgroup)"),
        )
        .into());
    }
    let target = matrix_target(&gpu.dev.info().target)?;
    let inp = upload(gpu, inputs, out)?;
    let d = cfg.head_size();
    let shared = stage_bytes(d, v.ctx_tile.max(v.block_n));
    let max_q = (0..meta.num_reqs())
        .map(|b| meta.query_len(b))
        .max()
        .unwrap_or(0);
    if max_q > 0 {
        let a = PrefixTcParams {
            num_heads: cfg.num_heads() as i64,
            num_kv_heads: cfg.num_kv_heads() as i64,
            block_size: meta.block_size() as i64,
            max_blocks: meta.block_table().max_blocks as i64,
            block_m: v.block_m as i64,
            window: cfg.sliding_window().unwrap_or(0) as i64,
            layout_kind: layout_code(cache.layout.kind),
            causal: meta.causal() as i32,
            skip_decode: args.skip_decode() as i32,
            has_sinks: cfg.sinks().is_some() as i32,
            has_alibi: cfg.alibi_slopes().is_some() as i32,
            host_target: host_target_code(target),
            scale: cfg.scale(),
            scale_log2: softmax_scale_log2(cfg.scale()),
            softcap: cfg.softcap().unwrap_or(0.0),
            k_scale: cfg.k_scale(),
            v_scale: cfg.v_scale(),
            l_eps: v.l_eps,
        };
        let defines = defines(cfg.dtype(), cfg.kv_dtype(), d, v.ctx_tile, v.block_n, WARPS);
        let f = gpu.function("prefix_prefill_tc", &defines, "context_attention_fwd_tc")?;
        let wave = gpu.dev.info().target.wave_size() as usize;
        let dims = LaunchDims {
            grid: [
                to_u32(max_q.div_ceil(rows), "row chunks")?,
                to_u32(meta.num_reqs(), "sequences")?,
                to_u32(cfg.num_heads(), "heads")?,
            ],
            block: [to_u32(WARPS * wave, "threads")?, 1, 1],
            shared_bytes: shared as u32,
        };
        let call = inp.with_sinks_and_out(a.arg());
        // SAFETY: context_attention_fwd_tc's parameter list
        // (`with_sinks_and_out`) with its layout-checked block; the buffers
        // were uploaded from the validated PagedInputs (query in cfg.dtype,
        // the cache in cfg.kv_dtype), whose shapes these scalars describe.
        unsafe { gpu.dev.launch(f, dims, &call) }?;
    }
    Ok(bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype()))
}
