//! Launcher for `kernels/flex_attention_tc.hip`, mirroring
//! `attnlab_sim::kernels::flex_attention_tc::flex_tc`: FlexAttention with
//! Q·Kᵀ and P·V on the device's matrix cores (`mma.sync m16n8k16` on
//! NVIDIA, MFMA 16x16x16 on CDNA; on the host device the model of the target
//! its wave width stands for), over the same flattened BlockMask as the fma
//! kernel.

use super::flash_varlen_tc::{host_target_code, matrix_target};
use super::flex_attention::MaskBuffers;
use super::unified_attention::to_u32;
pub use crate::kernels::flex_tc_defines as defines;
use crate::kernels::Gpu;
use crate::runtime::bytes::{bits_from_bytes, bytes_of};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Buffer, LaunchDims, Result};
use attnlab_sim::kernels::flex_attention::{flex_block_n, FlexArgs};
use attnlab_sim::kernels::flex_attention_tc::validate_config;
use attnlab_sim::numerics::softmax_scale_log2;

param_block! {
    /// `FlexTcArgs` of `kernels/flex_attention_tc.hip`.
    pub struct FlexTcParams as "FlexTcArgs" {
        num_tokens: i64,
        num_heads: i64,
        num_kv_heads: i64,
        block_size: i64,
        host_target: i32,
        pad: i32,
        scale: f32,
        scale_log2: f32,
    }
}

/// Shared memory of one program: a K and a V tile of `block_n` keys, rows
/// of `d` 16-bit elements padded by 8.
pub fn shared_bytes(d: usize, block_n: usize) -> usize {
    2 * block_n * (d + 8) * 2
}

/// FlexAttention's output `[T, Hq, D]` on the device's matrix cores, as bits
/// in `cfg.dtype`, for the [`FlexArgs`] the emulator takes (validated where
/// they were built; this launcher checks what the matrix tiles add: bf16 or
/// f16, head size a multiple of 16 up to 256).
pub fn flex_attention_tc(gpu: &Gpu, args: &FlexArgs) -> Result<Vec<u32>> {
    let (query, cache, meta, cfg) = (args.query(), args.cache(), args.meta(), args.cfg());
    validate_config(cfg)?;
    let target = matrix_target(&gpu.dev.info().target)?;
    let (hq, d, bs) = (cfg.num_heads(), cfg.head_size(), meta.block_size());
    let bn = flex_block_n(cfg.dtype(), bs);
    let t = meta.num_actual_tokens();
    if t == 0 {
        return Ok(Vec::new());
    }
    let dev = gpu.dev.as_ref();
    let out = Buffer::zeroed(dev, t * hq * d * cfg.dtype().size_bytes())?;
    let mask = MaskBuffers::upload(gpu, args)?;
    let q = Buffer::from_bytes(dev, &bytes_of(query, cfg.dtype()))?;
    let k = Buffer::from_bytes(dev, &bytes_of(&cache.k, cfg.dtype()))?;
    let v = Buffer::from_bytes(dev, &bytes_of(&cache.v, cfg.dtype()))?;
    let a = FlexTcParams {
        num_tokens: t as i64,
        num_heads: hq as i64,
        num_kv_heads: cfg.num_kv_heads() as i64,
        block_size: bs as i64,
        host_target: host_target_code(target),
        pad: 0,
        scale: cfg.scale(),
        scale_log2: softmax_scale_log2(cfg.scale()),
    }
    .arg();
    let f = gpu.function(
        "flex_attention_tc",
        &defines(cfg.dtype(), d, bn),
        "flex_attention_tc",
    )?;
    let dims = LaunchDims {
        grid: [
            to_u32(mask.num_q_blocks, "q blocks")?,
            to_u32(hq, "heads")?,
            1,
        ],
        block: [gpu.dev.info().target.wave_size(), 1, 1],
        shared_bytes: shared_bytes(d, bn) as u32,
    };
    let call = [
        q.arg(),
        k.arg(),
        v.arg(),
        mask.blocks.arg(),
        mask.start.arg(),
        mask.partial.arg(),
        mask.keep.arg(),
        out.arg(),
        a,
    ];
    // SAFETY: the kernel's parameter list in order (the by-value block
    // layout-checked by gpu/tests/param_layout.rs); every buffer was sized
    // from the validated FlexArgs whose shapes these scalars and this grid
    // index (one wave per 16-row q block and head).
    unsafe { dev.launch(f, dims, &call) }?;
    Ok(bits_from_bytes(&out.to_bytes()?, cfg.dtype()))
}
