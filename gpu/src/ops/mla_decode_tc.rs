//! Launcher for `kernels/mla_decode_tc.hip`, mirroring
//! `attnlab_sim::kernels::mla_decode_tc::decode_tc`: the tensor-core stage 1
//! (one workgroup of 4 waves per (row, head block, split)) then
//! `mla_decode.hip`'s stage 2, the reduce both flavours share.

use super::flash_varlen_tc::host_target_code;
use super::mla_decode::{mla_params, stage2, MlaDecodeBits, Stage1Inputs};
use super::unified_attention::to_u32;
use crate::kernels::{mla_tc_defines, Gpu};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{LaunchDims, Result, Target};
use attnlab_shared::error::Error;
use attnlab_sim::kernels::mla_decode_tc::{block_n, MlaDecodeTcArgs, ROWS};
use attnlab_sim::numerics::mma::MatrixTarget;

param_block! {
    /// `MlaTcArgs` of `kernels/mla_decode_tc.hip`: `MlaArgs` with its
    /// padding word carrying the host device's model.
    pub struct MlaTcParams as "MlaTcArgs" {
        num_rows: i64,
        num_heads: i64,
        kv_lora_rank: i64,
        width: i64,
        num_kv_splits: i64,
        granularity: i64,
        granular: i32,
        host_target: i32,
        scale: f32,
        scale_log2: f32,
        kv_scale: f32,
    }
}

/// Waves per stage-1 workgroup (`MTC_WAVES`).
const WAVES: usize = 4;

/// Bytes of stage 1's shared memory for a latent entry of `width`
/// elements on `target` (its tile of `n = block_n(target)` keys): the
/// 16 x n dots, alpha / m / l of 16 heads (f32), then Q (16 x width), the
/// tile's K (n x width) and P (16 x n) as 16-bit storage.
pub fn shared_bytes(width: usize, target: MatrixTarget) -> usize {
    let n = block_n(target);
    (ROWS * n + 3 * ROWS) * 4 + (ROWS * width + n * width + ROWS * n) * 2
}

/// The most shared memory one stage-1 workgroup may ask for on `target`:
/// 227 KB on sm_90 (the launcher opts in past 48 KB), the 64 KB LDS of a
/// CDNA workgroup.
fn shared_limit(target: MatrixTarget) -> usize {
    match target {
        MatrixTarget::Sm90 => CUDA_SHARED_LIMIT,
        MatrixTarget::Gfx90a | MatrixTarget::Gfx942 => LDS_LIMIT,
    }
}

const CUDA_SHARED_LIMIT: usize = 227 * 1024;
const LDS_LIMIT: usize = 64 * 1024;

/// The matrix-core model a device's instruction follows (the host
/// device's: sm_90 at wave 32, gfx942 at wave 64), or None where there is
/// no model (NVIDIA before Hopper).
fn device_target(target: &Target) -> Result<Option<MatrixTarget>> {
    Ok(match target {
        Target::Cuda { sm: 90 } => Some(MatrixTarget::Sm90),
        Target::Cuda { .. } => None,
        Target::Amd { gfx } => Some(MatrixTarget::parse(gfx)?),
        Target::Host { wave: 32 } => Some(MatrixTarget::Sm90),
        Target::Host { .. } => Some(MatrixTarget::Gfx942),
    })
}

/// Stage 1 on the matrix cores, then stage 2, for validated arguments
/// whose target is the device's (sm_90 on NVIDIA and at host wave 32,
/// gfx942 on CDNA3 and at host wave 64). Only the device's shared memory,
/// its target and the index widths are checked here.
pub fn decode_attention_fwd_tc(gpu: &Gpu, args: &MlaDecodeTcArgs) -> Result<MlaDecodeBits> {
    let info = gpu.dev.info();
    if device_target(&info.target)? != Some(args.target()) {
        return Err(Error::invalid(
            "mla_decode_tc target",
            args.target().name(),
            format!("the model of this device ({:?})", info.target),
        )
        .into());
    }
    let a = args.args();
    let (rows, cache, p) = (a.rows(), a.cache(), a.params());
    let (h, lkv, w) = (p.num_heads, cache.layout.kv_lora_rank, cache.layout.width());
    let s = a.splits().num_kv_splits();
    let (shared, limit) = (shared_bytes(w, args.target()), shared_limit(args.target()));
    if shared > limit {
        return Err(Error::invalid(
            "mla_decode_tc latent width",
            w,
            format!(
                "Q (16 x width) and K ({} x width) tiles of 16-bit elements must fit {limit} bytes of {}'s shared memory",
                block_n(args.target()),
                args.target().name()
            ),
        )
        .into());
    }
    if rows.is_empty() {
        return Ok(MlaDecodeBits {
            out: Vec::new(),
            lse: Vec::new(),
        });
    }
    let dev = gpu.dev.as_ref();
    let inputs = Stage1Inputs::upload(gpu, a)?;
    let m = mla_params(a);
    let params = MlaTcParams {
        num_rows: m.num_rows,
        num_heads: m.num_heads,
        kv_lora_rank: m.kv_lora_rank,
        width: m.width,
        num_kv_splits: m.num_kv_splits,
        granularity: m.granularity,
        granular: m.granular,
        host_target: host_target_code(args.target()),
        scale: m.scale,
        scale_log2: m.scale_log2,
        kv_scale: m.kv_scale,
    }
    .arg();
    let defines = mla_tc_defines(p.q_dtype, cache.layout.dtype, lkv, cache.layout.rope_dim);
    let f = gpu.function("mla_decode_tc", &defines, "mla_decode_tc_stage1")?;
    let wave = info.target.wave_size() as usize;
    let dims = LaunchDims {
        grid: [
            to_u32(rows.len(), "query rows")?,
            to_u32(h.div_ceil(ROWS), "head blocks")?,
            to_u32(s, "kv splits")?,
        ],
        block: [to_u32(WAVES * wave, "threads")?, 1, 1],
        shared_bytes: shared as u32,
    };
    let call = inputs.args(params);
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // block layout-checked by gpu/tests/param_layout.rs); q holds [rows, H, W]
    // and the cache the layout's entries of W (the defines' Lkv + rope), every
    // row's pages were checked inside the cache when `args` was built, and
    // att holds [rows, H, S, Lkv + 1] f32 for this grid.
    unsafe { dev.launch(f, dims, &call) }?;
    stage2(gpu, a, &inputs.att, &inputs.rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepseek_latents_fit_the_shared_memory_of_both_targets_and_wider_ones_do_not() {
        // sm_90: tiles of 32 keys (Q 16 + K 32 rows of the entry).
        assert_eq!(block_n(MatrixTarget::Sm90), 32);
        assert_eq!(shared_bytes(576, MatrixTarget::Sm90), 58_560);
        assert!(shared_bytes(576, MatrixTarget::Sm90) <= shared_limit(MatrixTarget::Sm90));
        assert!(shared_bytes(2384, MatrixTarget::Sm90) <= CUDA_SHARED_LIMIT);
        assert!(shared_bytes(2400, MatrixTarget::Sm90) > CUDA_SHARED_LIMIT);
        // gfx942: tiles of 16 keys in the 64 KB LDS.
        assert_eq!(block_n(MatrixTarget::Gfx942), 16);
        assert!(shared_bytes(576, MatrixTarget::Gfx942) <= LDS_LIMIT);
        assert!(shared_bytes(992, MatrixTarget::Gfx942) <= LDS_LIMIT);
        assert!(shared_bytes(1008, MatrixTarget::Gfx942) > LDS_LIMIT);
    }
}
