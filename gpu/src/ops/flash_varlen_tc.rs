//! Launcher for `kernels/flash_varlen_tc.hip`, mirroring
//! `attnlab_sim::kernels::flash_varlen_tc::flash_attn_varlen_tc`: varlen
//! prefill with Q·Kᵀ and P·V on the device's matrix cores (`mma.sync
//! m16n8k16` on NVIDIA, MFMA 16x16x16 on CDNA; on the host device the model
//! of the target its wave width stands for).

use super::unified_attention::to_u32;
pub use crate::kernels::varlen_tc_defines as defines;
use crate::kernels::Gpu;
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i32};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Arg, Buffer, FunctionId, LaunchDims, Result, Target};
use attnlab_shared::dtype::DType;
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
    let (q, k, v) = (x.q(), x.k(), x.v());
    let (cu_q, cu_k) = (x.cu_seqlens_q(), x.cu_seqlens_k());
    let vp = &p.varlen;
    let (tq, hq, dv) = (x.total_q(), vp.num_heads(), vp.head_size_v());
    let batch = cu_q.len().saturating_sub(1);
    let max_sq = cu_q
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .max()
        .unwrap_or(0);
    let dev = gpu.dev.as_ref();
    let dt = vp.dtype();
    let out = Buffer::zeroed(dev, tq * hq * dv * dt.size_bytes())?;
    let lse = Buffer::from_bytes(
        dev,
        &bytes_of(&vec![f32::NEG_INFINITY; tq * hq], DType::F32),
    )?;
    if batch > 0 && max_sq > 0 {
        // A zero-length buffer has no address: keep each at least 1 element.
        let nonempty = |x: &[f32]| -> Vec<f32> {
            if x.is_empty() {
                vec![0.0]
            } else {
                x.to_vec()
            }
        };
        let (qb, kb, vb) = (
            Buffer::from_bytes(dev, &bytes_of(&nonempty(q), dt))?,
            Buffer::from_bytes(dev, &bytes_of(&nonempty(k), dt))?,
            Buffer::from_bytes(dev, &bytes_of(&nonempty(v), dt))?,
        );
        let (cq, ck) = (
            Buffer::from_bytes(dev, &bytes_of_i32(cu_q))?,
            Buffer::from_bytes(dev, &bytes_of_i32(cu_k))?,
        );
        let sinks = Buffer::from_bytes(dev, &bytes_of(vp.sinks().unwrap_or(&[0.0]), DType::F32))?;
        let alibi = Buffer::from_bytes(
            dev,
            &bytes_of(vp.alibi_slopes().unwrap_or(&[0.0]), DType::F32),
        )?;
        let plan = VarlenTcLaunch::new(gpu, p, DEFAULT_WARPS, batch, max_sq, tq)?;
        plan.launch(gpu, [&qb, &kb, &vb, &cq, &ck, &sinks, &alibi, &out, &lse])?;
    }
    Ok((
        bits_from_bytes(&out.to_bytes()?, dt),
        bits_from_bytes(&lse.to_bytes()?, DType::F32),
    ))
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
        let mut args: Vec<Arg> = bufs.iter().map(|b| b.arg()).collect();
        args.push(self.args.clone());
        // SAFETY: the arguments are the kernel's parameter list in order (by-value
        // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
        // sized above for the shapes those scalars and this grid index.
        unsafe { gpu.dev.launch(self.f, self.dims, &args) }
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
