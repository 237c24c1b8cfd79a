//! Launcher for `kernels/flash_varlen.hip`, mirroring
//! `attnlab_sim::kernels::flash_varlen::flash_attn_varlen`: the register-tiled
//! `flash_attn_varlen` (head sizes and block_n compiled in) where the shape
//! allows it, else the scalar port `flash_attn_varlen_scalar`.

use super::unified_attention::{to_u32, SHARED_MEMORY_LIMIT};
use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i32};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Arg, Buffer, FunctionId, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_sim::kernels::flash_varlen::{VarlenArgs, VarlenParams};

param_block! {
    /// `VarlenArgs` of `kernels/flash_varlen.hip`.
    pub struct VarlenBlock as "VarlenArgs" {
        num_heads: i64,
        num_kv_heads: i64,
        head_size: i64,
        head_size_v: i64,
        block_n: i64,
        window: i64,
        total_q: i64,
        causal: i32,
        has_sinks: i32,
        has_alibi: i32,
        pad: i32,
        scale: f32,
        scale_log2: f32,
        softcap: f32,
        pad2: f32,
    }
}

/// Query rows per program of the scalar kernel.
const SCALAR_ROWS: usize = 16;
/// Query rows / threads per program of the tiled kernel (`FV_BM`, `FV_THREADS`).
const TILED_ROWS: usize = 64;
const TILED_THREADS: u32 = 256;
/// Keys / Q-K dims per staged chunk of the tiled kernel (`FV_VK`, `FV_DK`).
const TILED_VK: usize = 8;
const TILED_DK: usize = 8;

/// Shared memory (bytes) of one tiled program, if the tiled kernel takes the
/// shape (`FV_D % 8`, `FV_DV % 16`, `FV_BN % 16` zero, `FV_BN <= 128`, and
/// the buffers within the launch limit). Mirrors the kernel's carve-up:
/// P_s, the Q/K or V staging union, and four per-row arrays.
pub fn tiled_shared_bytes(d: usize, dv: usize, block_n: usize) -> Option<usize> {
    let fits = d.is_multiple_of(8) && dv.is_multiple_of(16) && block_n.is_multiple_of(16);
    if !fits || block_n > 128 || dv > 256 {
        return None;
    }
    let qk_stage = 2 * TILED_DK * (TILED_ROWS + block_n);
    let v_stage = 2 * TILED_VK * dv;
    let floats = TILED_ROWS * (block_n + 4) + qk_stage.max(v_stage) + 4 * TILED_ROWS;
    (floats * 4 <= SHARED_MEMORY_LIMIT).then_some(floats * 4)
}

/// Output `[total_q, Hq, Dv]` bits in `p.dtype` and lse `[Hq, total_q]`
/// bits (f32), for the [`VarlenArgs`] the emulator takes (validated where
/// they were built; only the launch's device limits are checked here).
pub fn flash_attn_varlen(gpu: &Gpu, args: &VarlenArgs) -> Result<(Vec<u32>, Vec<u32>)> {
    run_on_device(gpu, args, |batch, max_sq, bufs| {
        VarlenLaunch::new(gpu, args.params(), batch, max_sq, args.total_q())?.launch(gpu, bufs)
    })
}

/// The device round trip of one varlen call, for both kernel flavours:
/// uploads q, k and v in the dtype (each at least one element: a
/// zero-length buffer has no address), `cu_seqlens`, sinks and ALiBi slopes,
/// runs `launch(batch, max_sq, buffers)` when some sequence has a query row
/// (buffers in the kernels' order: q, k, v, cu_seqlens_q, cu_seqlens_k,
/// sinks, alibi_slopes, out, lse), and downloads the output `[total_q, Hq,
/// Dv]` (bits in the dtype) and the lse `[Hq, total_q]` (f32 bits, -inf
/// where nothing ran).
pub(crate) fn run_on_device(
    gpu: &Gpu,
    args: &VarlenArgs,
    launch: impl FnOnce(usize, usize, [&Buffer; 9]) -> Result<()>,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let (q, k, v, p) = (args.q(), args.k(), args.v(), args.params());
    let (cu_q, cu_k) = (args.cu_seqlens_q(), args.cu_seqlens_k());
    let (tq, hq, dv) = (args.total_q(), p.num_heads(), p.head_size_v());
    let batch = cu_q.len().saturating_sub(1);
    let max_sq = cu_q
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .max()
        .unwrap_or(0);
    let dev = gpu.dev.as_ref();
    let dt = p.dtype();
    let out = Buffer::zeroed(dev, tq * hq * dv * dt.size_bytes())?;
    let lse = Buffer::from_bytes(
        dev,
        &bytes_of(&vec![f32::NEG_INFINITY; tq * hq], DType::F32),
    )?;
    if batch > 0 && max_sq > 0 {
        let upload = |x: &[f32]| match x.is_empty() {
            true => Buffer::from_bytes(dev, &bytes_of(&[0.0], dt)),
            false => Buffer::from_bytes(dev, &bytes_of(x, dt)),
        };
        let (qb, kb, vb) = (upload(q)?, upload(k)?, upload(v)?);
        let (cq, ck) = (
            Buffer::from_bytes(dev, &bytes_of_i32(cu_q))?,
            Buffer::from_bytes(dev, &bytes_of_i32(cu_k))?,
        );
        let sinks = Buffer::from_bytes(dev, &bytes_of(p.sinks().unwrap_or(&[0.0]), DType::F32))?;
        let alibi = Buffer::from_bytes(
            dev,
            &bytes_of(p.alibi_slopes().unwrap_or(&[0.0]), DType::F32),
        )?;
        launch(
            batch,
            max_sq,
            [&qb, &kb, &vb, &cq, &ck, &sinks, &alibi, &out, &lse],
        )?;
    }
    Ok((
        bits_from_bytes(&out.to_bytes()?, dt),
        bits_from_bytes(&lse.to_bytes()?, DType::F32),
    ))
}

/// Launches `f` over `dims` with the buffers then the by-value parameter
/// block `params`, in the kernel's order (what the prepared varlen launches
/// of both flavours replay).
pub(crate) fn launch_prepared(
    gpu: &Gpu,
    (f, dims, params): (FunctionId, LaunchDims, &Arg),
    bufs: [&Buffer; 9],
) -> Result<()> {
    let mut args: Vec<Arg> = bufs.iter().map(|b| b.arg()).collect();
    args.push(params.clone());
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized for the shapes those scalars and this grid index (the prepared
    // launches' constructors check the shapes against the device).
    unsafe { gpu.dev.launch(f, dims, &args) }
}

/// The `-D` set of the tiled kernel for one dtype and shape (the module cache
/// keys on it, so each shape compiles once).
pub fn tiled_defines(dt: DType, d: usize, dv: usize, block_n: usize) -> Vec<(String, String)> {
    vec![
        dtype_define("DTYPE", dt),
        ("FV_D".to_string(), d.to_string()),
        ("FV_DV".to_string(), dv.to_string()),
        ("FV_BN".to_string(), block_n.to_string()),
    ]
}

/// One launch of the varlen kernel, prepared once (kernel choice, module,
/// grid, argument struct) and replayed on device buffers: what the bench times.
pub struct VarlenLaunch {
    f: FunctionId,
    dims: LaunchDims,
    args: Arg,
}

impl VarlenLaunch {
    /// For `batch` sequences of at most `max_sq` query rows, `total_q` in all.
    /// `p` must already be validated against the tensors (the callers do).
    pub fn new(
        gpu: &Gpu,
        p: &VarlenParams,
        batch: usize,
        max_sq: usize,
        total_q: usize,
    ) -> Result<VarlenLaunch> {
        let (d, dv, dt) = (p.head_size(), p.head_size_v(), p.dtype());
        let tiled = tiled_shared_bytes(d, dv, p.block_n());
        let (rows_per_program, threads, shared) = match tiled {
            Some(bytes) => (TILED_ROWS, TILED_THREADS, bytes),
            None => (
                SCALAR_ROWS,
                128,
                (SCALAR_ROWS * p.block_n() + SCALAR_ROWS * dv + 3 * SCALAR_ROWS) * 4,
            ),
        };
        if shared > SHARED_MEMORY_LIMIT {
            return Err(Error::invalid(
                "shared memory of one program",
                shared,
                format!("at most {SHARED_MEMORY_LIMIT} bytes"),
            )
            .into());
        }
        let f = match tiled {
            Some(_) => gpu.function(
                "flash_varlen",
                &tiled_defines(dt, d, dv, p.block_n()),
                "flash_attn_varlen",
            )?,
            None => gpu.function(
                "flash_varlen",
                &[dtype_define("DTYPE", dt)],
                "flash_attn_varlen_scalar",
            )?,
        };
        let dims = LaunchDims {
            grid: [
                to_u32(max_sq.div_ceil(rows_per_program), "row blocks")?,
                to_u32(batch, "batch")?,
                to_u32(p.num_heads(), "heads")?,
            ],
            block: [threads, 1, 1],
            shared_bytes: shared as u32,
        };
        let args = VarlenBlock {
            num_heads: p.num_heads() as i64,
            num_kv_heads: p.num_kv_heads() as i64,
            head_size: d as i64,
            head_size_v: dv as i64,
            block_n: p.block_n() as i64,
            window: p.window().unwrap_or(0) as i64,
            total_q: total_q as i64,
            causal: p.causal() as i32,
            has_sinks: p.sinks().is_some() as i32,
            has_alibi: p.alibi_slopes().is_some() as i32,
            pad: 0,
            scale: p.score().scale,
            scale_log2: p.score().scale_log2,
            softcap: p.score().softcap.unwrap_or(0.0),
            pad2: 0.0,
        }
        .arg();
        Ok(VarlenLaunch { f, dims, args })
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
    fn tiled_kernel_takes_the_bench_ck_and_mla_prefill_shapes() {
        for (d, dv, bn) in [
            (128, 128, 128),
            (128, 128, 64),
            (64, 64, 64),
            (192, 128, 128),
            (96, 96, 32),
        ] {
            let bytes = tiled_shared_bytes(d, dv, bn).expect("tiled shape");
            assert!(bytes <= SHARED_MEMORY_LIMIT, "{d}/{dv}/{bn}: {bytes} bytes");
        }
    }

    #[test]
    fn shapes_the_tiled_kernel_cannot_take_fall_back_to_the_scalar_port() {
        // Dv not a multiple of 16, D not a multiple of 8, block_n not a
        // multiple of 16 or above 128, and P_s + V staging over 48 KiB.
        for (d, dv, bn) in [
            (72, 72, 128),
            (68, 64, 64),
            (64, 64, 40),
            (64, 64, 256),
            (256, 256, 128),
        ] {
            assert_eq!(tiled_shared_bytes(d, dv, bn), None, "{d}/{dv}/{bn}");
        }
    }
}
