//! Launcher for `kernels/merge_attn_states.hip`, mirroring
//! `attnlab_sim::kernels::merge_attn_states::merge`: it launches the
//! [`MergeArgs`] the emulator takes, validated once where they were built.

use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_sim::kernels::merge_attn_states::{MergeArgs, MergeKernel};

param_block! {
    /// `MergeParams` of `kernels/merge_attn_states.hip`.
    pub struct MergeParams as "MergeParams" {
        num_tokens: i64,
        num_heads: i64,
        head_size: i64,
        /// 1: the HIP kernel's infinity rules, 0: Triton's.
        hip_kernel: i32,
        pad: i32,
    }
}

impl MergeParams {
    pub fn new(args: &MergeArgs) -> Self {
        let (t, h, d) = args.shape();
        MergeParams {
            num_tokens: t as i64,
            num_heads: h as i64,
            head_size: d as i64,
            hip_kernel: matches!(args.kernel(), MergeKernel::Hip) as i32,
            pad: 0,
        }
    }
}

/// Raw device results: output bits in `out_dtype`, lse bits (f32).
pub struct MergeBits {
    pub out: Vec<u32>,
    pub lse: Vec<u32>,
}

/// Merges `args`' prefix and suffix on the device; their outputs must be
/// exact in `args.out_dtype()` (they are uploaded in that storage format).
pub fn merge_attn_states(gpu: &Gpu, args: &MergeArgs) -> Result<MergeBits> {
    let (t, h, d) = args.shape();
    let out_dtype = args.out_dtype();
    if t == 0 || h == 0 || d == 0 {
        return Ok(MergeBits {
            out: vec![],
            lse: vec![f32::NEG_INFINITY.to_bits(); t * h],
        });
    }
    let (gx, gy) = (u32::try_from(t), u32::try_from(h));
    let (Ok(gx), Ok(gy)) = (gx, gy) else {
        return Err(
            Error::invalid("tokens x heads", format!("{t} x {h}"), "each below 2^32").into(),
        );
    };
    let dev = gpu.dev.as_ref();
    let f = gpu.function(
        "merge_attn_states",
        &[dtype_define("OUT_DTYPE", out_dtype)],
        "merge_attn_states",
    )?;
    let (prefix, suffix) = (args.prefix(), args.suffix());
    let out = Buffer::zeroed(dev, t * h * d * out_dtype.size_bytes())?;
    let out_lse = Buffer::zeroed(dev, t * h * 4)?;
    let po = Buffer::from_bytes(dev, &bytes_of(prefix.out(), out_dtype))?;
    let pl = Buffer::from_bytes(dev, &bytes_of(prefix.lse(), DType::F32))?;
    let so = Buffer::from_bytes(dev, &bytes_of(suffix.out(), out_dtype))?;
    let sl = Buffer::from_bytes(dev, &bytes_of(suffix.lse(), DType::F32))?;
    let dims = LaunchDims {
        grid: [gx, gy, 1],
        block: [d.min(128) as u32, 1, 1],
        shared_bytes: 0,
    };
    let call = [
        out.arg(),
        out_lse.arg(),
        po.arg(),
        pl.arg(),
        so.arg(),
        sl.arg(),
        MergeParams::new(args).arg(),
    ];
    // SAFETY: the parameter list of `merge_attn_states` with its checked
    // `MergeParams` block; MergeArgs holds [T, H, D] outputs and [H, T] lse
    // of the shape passed, so every buffer is as long as the (T, H) grid
    // with threads striding over D indexes it.
    unsafe { dev.launch(f, dims, &call) }?;
    Ok(MergeBits {
        out: bits_from_bytes(&out.to_bytes()?, out_dtype),
        lse: bits_from_bytes(&out_lse.to_bytes()?, DType::F32),
    })
}
