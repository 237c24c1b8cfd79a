//! Launcher for `kernels/paged_decode_2d_tc.hip`, mirroring
//! `attnlab_sim::kernels::paged_decode_2d_tc::paged_decode_2d_tc`: vLLM's
//! Triton `kernel_paged_attention_2d` with Q·Kᵀ and P·V on the device's
//! matrix cores (`mma.sync m16n8k16` on NVIDIA, MFMA 16x16x16 on CDNA; on
//! the host device the model of the target its wave width stands for).
//! Rows that are not decode rows keep the contents of `out` (uploaded
//! first).

use super::flash_varlen_tc::{host_target_code, matrix_target};
use super::paged_decode::upload;
use super::reshape_and_cache::layout_code;
use super::unified_attention::to_u32;
pub use crate::kernels::decode_2d_tc_defines as defines;
use crate::kernels::Gpu;
use crate::runtime::bytes::bits_from_bytes;
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{LaunchDims, Result};
use attnlab_shared::error::Error;
use attnlab_sim::kernels::paged_decode_2d_tc::{head_groups, Decode2dTcArgs};
use attnlab_sim::kernels::prefix_prefill_tc::stage_bytes;
use attnlab_sim::kernels::softmax::TRITON_L_EPS;
use attnlab_sim::numerics::softmax_scale_log2;

param_block! {
    /// `Decode2dTcArgs` of `kernels/paged_decode_2d_tc.hip`.
    pub struct Decode2dTcParams as "Decode2dTcArgs" {
        num_heads: i64,
        num_kv_heads: i64,
        block_size: i64,
        max_blocks: i64,
        tile: i64,
        window: i64,
        layout_kind: i32,
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

/// `kernel_paged_attention_2d` on the device's matrix cores, launching the
/// [`Decode2dTcArgs`] the emulator takes (validated where they were built);
/// the arguments' target must be the device's. Returns the whole `[T, Hq,
/// D]` output's bits in `cfg.dtype`.
pub fn paged_decode_2d_tc(gpu: &Gpu, args: &Decode2dTcArgs, out: &[f32]) -> Result<Vec<u32>> {
    let inputs = args.inputs();
    let (cache, meta, cfg) = (inputs.cache(), inputs.meta(), inputs.cfg());
    let target = matrix_target(&gpu.dev.info().target)?;
    if target != args.target() {
        return Err(Error::invalid(
            "paged_decode_2d_tc target",
            args.target().name(),
            format!("the device's, {}", target.name()),
        )
        .into());
    }
    let inp = upload(gpu, inputs, out)?;
    let d = cfg.head_size();
    if meta.num_reqs() > 0 {
        let a = Decode2dTcParams {
            num_heads: cfg.num_heads() as i64,
            num_kv_heads: cfg.num_kv_heads() as i64,
            block_size: meta.block_size() as i64,
            max_blocks: meta.block_table().max_blocks as i64,
            tile: args.tile() as i64,
            window: cfg.sliding_window().unwrap_or(0) as i64,
            layout_kind: layout_code(cache.layout.kind),
            has_sinks: cfg.sinks().is_some() as i32,
            has_alibi: cfg.alibi_slopes().is_some() as i32,
            host_target: host_target_code(target),
            scale: cfg.scale(),
            scale_log2: softmax_scale_log2(cfg.scale()),
            softcap: cfg.softcap().unwrap_or(0.0),
            k_scale: cfg.k_scale(),
            v_scale: cfg.v_scale(),
            l_eps: TRITON_L_EPS,
        };
        let tp = args.padded_tile();
        let defines = defines(cfg.dtype(), cfg.kv_dtype(), d, tp);
        let f = gpu.function("paged_decode_2d_tc", &defines, "paged_decode_2d_tc")?;
        let wave = gpu.dev.info().target.wave_size() as usize;
        let dims = LaunchDims {
            grid: [
                to_u32(meta.num_reqs(), "sequences")?,
                to_u32(cfg.num_kv_heads(), "kv heads")?,
                to_u32(head_groups(cfg.queries_per_kv()), "head groups")?,
            ],
            block: [to_u32(wave, "threads")?, 1, 1],
            shared_bytes: stage_bytes(d, tp) as u32,
        };
        let call = inp.with_sinks_and_out(a.arg());
        // SAFETY: paged_decode_2d_tc's parameter list (`with_sinks_and_out`)
        // with its layout-checked block; the buffers were uploaded from the
        // validated PagedInputs (query in cfg.dtype, the cache in
        // cfg.kv_dtype), whose shapes these scalars describe, and the staged
        // tile Decode2dTcArgs checked fits the shared memory given.
        unsafe { gpu.dev.launch(f, dims, &call) }?;
    }
    Ok(bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype()))
}
