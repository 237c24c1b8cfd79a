//! Launcher for `kernels/flash_varlen_tc.hip`, mirroring
//! `attnlab_sim::kernels::flash_varlen_tc::flash_attn_varlen_tc`: varlen
//! prefill with Q·Kᵀ and P·V on the device's matrix cores (`mma.sync
//! m16n8k16` on NVIDIA, MFMA 16x16x16 on CDNA; on the host device the model
//! of the target its wave width stands for).

use super::flash_varlen::{launch_prepared, run_on_device};
use super::unified_attention::to_u32;
pub use crate::kernels::varlen_tc_defines as defines;
use crate::kernels::Gpu;
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Arg, Buffer, FunctionId, LaunchDims, Result, Target};
use attnlab_shared::error::Error;
use attnlab_sim::kernels::flash_varlen_tc::{VarlenTcArgs, VarlenTcParams, WAVE_ROWS};
use attnlab_sim::numerics::mma::MatrixTarget;

param_block! {
    /// `VarlenTcArgs` of `kernels/flash_varlen_tc.hip`.
    pub struct VarlenTcBlock as "VarlenTcArgs" {
        num_heads: i64,
        num_kv_heads: i64,
        window: i64,
        total_q: i64,
        causal: i32,
        has_sinks: i32,
        has_alibi: i32,
        host_target: i32,
        scale: f32,
        scale_log2: f32,
        softcap: f32,
        pad: f32,
    }
}

/// Waves per workgroup of the bench and the diff (64 query rows).
pub const DEFAULT_WARPS: usize = 4;
/// Largest workgroup: 16 waves.
pub const MAX_WARPS: usize = 16;
/// Dynamic shared memory an NVIDIA Hopper block may opt into (227 KiB).
const CUDA_SHARED_LIMIT: usize = 227 * 1024;
/// An AMD workgroup's LDS, and the host device's limit.
const LDS_LIMIT: usize = 64 * 1024;

/// The matrix-core target whose instruction a device runs, as the sim names
/// it: sm_90 on Hopper, the CDNA generation on AMD; the host device stands
/// for sm_90 with 32-lane waves and for CDNA3 (gfx942) with 64.
pub fn matrix_target(target: &Target) -> Result<MatrixTarget> {
    match target {
        Target::Cuda { sm: 90 } => Ok(MatrixTarget::Sm90),
        Target::Cuda { sm } => Err(Error::unsupported(
            format!("the tensor-core varlen kernel on sm_{sm}"),
            "only Hopper (sm_90) has a matrix-instruction model among the NVIDIA targets",
        )
        .into()),
        Target::Amd { gfx } => Ok(MatrixTarget::parse(gfx)?),
        Target::Host { wave: 32 } => Ok(MatrixTarget::Sm90),
        Target::Host { .. } => Ok(MatrixTarget::Gfx942),
    }
}

/// portable.h's `host_target` code of a matrix target.
pub fn host_target_code(t: MatrixTarget) -> i32 {
    match t {
        MatrixTarget::Sm90 => 0,
        MatrixTarget::Gfx90a => 1,
        MatrixTarget::Gfx942 => 2,
    }
}

/// Shared memory of one workgroup: `stages` K and V tiles of `block_n`
/// rows, each row padded by 8 elements (the kernel's `FT_STAGE_ELEMS`).
pub fn shared_bytes(d: usize, dv: usize, block_n: usize, stages: usize) -> usize {
    stages * block_n * (d + 8 + dv + 8) * 2
}

/// Output `[total_q, Hq, Dv]` bits in the dtype and lse `[Hq, total_q]`
/// bits (f32), for the [`VarlenTcArgs`] the emulator takes (validated where
/// they were built). `p.target` must be the device's ([`matrix_target`]).
pub fn flash_attn_varlen_tc(gpu: &Gpu, args: &VarlenTcArgs) -> Result<(Vec<u32>, Vec<u32>)> {
    let (x, p) = (args.inputs(), args.params());
    run_on_device(gpu, x, |batch, max_sq, bufs| {
        VarlenTcLaunch::new(gpu, p, DEFAULT_WARPS, batch, max_sq, x.total_q())?.launch(gpu, bufs)
    })
}

/// One launch, prepared once (module, grid, argument struct) and replayed
/// on device buffers: what the bench times.
pub struct VarlenTcLaunch {
    f: FunctionId,
    dims: LaunchDims,
    args: Arg,
}

impl VarlenTcLaunch {
    /// For `batch` sequences of at most `max_sq` query rows, `total_q` in
    /// all, with `warps` waves (16 rows each) per workgroup.
    pub fn new(
        gpu: &Gpu,
        p: &VarlenTcParams,
        warps: usize,
        batch: usize,
        max_sq: usize,
        total_q: usize,
    ) -> Result<VarlenTcLaunch> {
        p.validate()?;
        let info = gpu.dev.info();
        let device_target = matrix_target(&info.target)?;
        if device_target != p.target {
            return Err(Error::invalid(
                "matrix-core target",
                p.target.name(),
                format!("this device runs {}'s instruction", device_target.name()),
            )
            .into());
        }
        if warps == 0 || warps > MAX_WARPS {
            return Err(
                Error::invalid("waves per workgroup", warps, format!("1 to {MAX_WARPS}")).into(),
            );
        }
        let vp = &p.varlen;
        let (d, dv, bn) = (vp.head_size(), vp.head_size_v(), vp.block_n());
        let (stages, limit) = match info.target {
            Target::Cuda { .. } => (2, CUDA_SHARED_LIMIT),
            _ => (1, LDS_LIMIT),
        };
        let shared = shared_bytes(d, dv, bn, stages);
        if shared > limit {
            return Err(Error::invalid(
                "shared memory of one workgroup (head sizes and block_n)",
                shared,
                format!("at most {limit} bytes on this device"),
            )
            .into());
        }
        let f = gpu.function(
            "flash_varlen_tc",
            &defines(vp.dtype(), d, dv, bn, warps),
            "flash_attn_varlen_tc",
        )?;
        let wave = info.target.wave_size() as usize;
        let dims = LaunchDims {
            grid: [
                to_u32(max_sq.div_ceil(WAVE_ROWS * warps), "row blocks")?,
                to_u32(batch, "batch")?,
                to_u32(vp.num_heads(), "heads")?,
            ],
            block: [to_u32(warps * wave, "threads")?, 1, 1],
            shared_bytes: shared as u32,
        };
        let args = VarlenTcBlock {
            num_heads: vp.num_heads() as i64,
            num_kv_heads: vp.num_kv_heads() as i64,
            window: vp.window().unwrap_or(0) as i64,
            total_q: total_q as i64,
            causal: vp.causal() as i32,
            has_sinks: vp.sinks().is_some() as i32,
            has_alibi: vp.alibi_slopes().is_some() as i32,
            host_target: host_target_code(p.target),
            scale: vp.score().scale,
            scale_log2: vp.score().scale_log2,
            softcap: vp.score().softcap.unwrap_or(0.0),
            pad: 0.0,
        }
        .arg();
        Ok(VarlenTcLaunch { f, dims, args })
    }

    /// Buffers in the kernel's order: q, k, v, cu_seqlens_q, cu_seqlens_k,
    /// sinks, alibi_slopes, out, lse.
    pub fn launch(&self, gpu: &Gpu, bufs: [&Buffer; 9]) -> Result<()> {
        launch_prepared(gpu, (self.f, self.dims, &self.args), bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_each_device_for_the_diffed_shapes() {
        // host / AMD: one stage in 64 KiB up to block_n 64 for d 192/128.
        for (d, dv, bn) in [(64, 64, 64), (128, 128, 64), (192, 128, 64), (128, 128, 32)] {
            assert!(shared_bytes(d, dv, bn, 1) <= LDS_LIMIT, "{d}/{dv}/{bn}");
        }
        // NVIDIA: two stages of block_n 128 for d 192/128, of 64 for d 256;
        // d 256 with block_n 128 does not fit.
        assert!(shared_bytes(192, 128, 128, 2) <= CUDA_SHARED_LIMIT);
        assert!(shared_bytes(256, 256, 64, 2) <= CUDA_SHARED_LIMIT);
        assert!(shared_bytes(256, 256, 128, 2) > CUDA_SHARED_LIMIT);
        assert_eq!(shared_bytes(128, 128, 64, 2), 69632);
    }

    #[test]
    fn host_waves_stand_for_hopper_and_cdna3() {
        assert_eq!(
            matrix_target(&Target::Host { wave: 32 }).unwrap(),
            MatrixTarget::Sm90
        );
        assert_eq!(
            matrix_target(&Target::Host { wave: 64 }).unwrap(),
            MatrixTarget::Gfx942
        );
        assert_eq!(
            matrix_target(&Target::Amd {
                gfx: "gfx90a".into()
            })
            .unwrap(),
            MatrixTarget::Gfx90a
        );
        let e = matrix_target(&Target::Cuda { sm: 80 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("sm_80"), "{e}");
    }
}
