//! Launcher for `kernels/merge_attn_states.hip`, mirroring
//! `attnlab_sim::kernels::merge_attn_states::merge_attn_states`.

use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_sim::kernels::merge_attn_states::MergeKernel;
use attnlab_sim::kernels::softmax::OutLse;

/// Raw device results: output bits in `out_dtype`, lse bits (f32).
pub struct MergeBits {
    pub out: Vec<u32>,
    pub lse: Vec<u32>,
}

/// Merges `prefix` and `suffix` on the device; their outputs must be exact
/// in `out_dtype` (they are uploaded in that storage format).
pub fn merge_attn_states(
    gpu: &Gpu,
    prefix: &OutLse,
    suffix: &OutLse,
    out_dtype: DType,
    kernel: MergeKernel,
) -> Result<MergeBits> {
    let shape = |o: &OutLse| (o.num_tokens, o.num_heads, o.head_size);
    if shape(prefix) != shape(suffix) {
        return Err(Error::invalid(
            "suffix shape",
            format!("{:?}", shape(suffix)),
            format!("the prefix shape {:?}", shape(prefix)),
        )
        .into());
    }
    let (t, h, d) = shape(prefix);
    for (what, o) in [("prefix", prefix), ("suffix", suffix)] {
        if o.out.len() != t * h * d || o.lse.len() != t * h {
            return Err(Error::invalid(
                format!("{what} output/lse lengths"),
                format!("{}/{}", o.out.len(), o.lse.len()),
                format!("{} / {}", t * h * d, t * h),
            )
            .into());
        }
    }
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
    let out = Buffer::zeroed(dev, t * h * d * out_dtype.size_bytes())?;
    let out_lse = Buffer::zeroed(dev, t * h * 4)?;
    let po = Buffer::from_bytes(dev, &bytes_of(&prefix.out, out_dtype))?;
    let pl = Buffer::from_bytes(dev, &bytes_of(&prefix.lse, DType::F32))?;
    let so = Buffer::from_bytes(dev, &bytes_of(&suffix.out, out_dtype))?;
    let sl = Buffer::from_bytes(dev, &bytes_of(&suffix.lse, DType::F32))?;
    let dims = LaunchDims {
        grid: [gx, gy, 1],
        block: [d.min(128) as u32, 1, 1],
        shared_bytes: 0,
    };
    let hip = matches!(kernel, MergeKernel::Hip) as i32;
    dev.launch(
        f,
        dims,
        &[
            out.arg(),
            out_lse.arg(),
            po.arg(),
            pl.arg(),
            so.arg(),
            sl.arg(),
            Arg::I64(t as i64),
            Arg::I64(h as i64),
            Arg::I64(d as i64),
            Arg::I32(hip),
        ],
    )?;
    Ok(MergeBits {
        out: bits_from_bytes(&out.to_bytes()?, out_dtype),
        lse: bits_from_bytes(&out_lse.to_bytes()?, DType::F32),
    })
}
