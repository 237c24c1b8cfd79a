//! Launcher for `kernels/flash_varlen.hip`, mirroring
//! `attnlab_sim::kernels::flash_varlen::flash_attn_varlen`.

use super::unified_attention::{to_u32, SHARED_MEMORY_LIMIT};
use crate::diff::{bits_from_bytes, bytes_of, bytes_of_i32};
use crate::kernels::{dtype_define, Gpu};
use crate::runtime::{ArgStruct, Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_sim::kernels::flash_varlen::VarlenParams;

/// Query rows per GPU program (see the kernel's header).
const ROWS: usize = 16;

/// Output `[total_q, Hq, Dv]` bits in `p.dtype` and lse `[Hq, total_q]` bits (f32).
pub fn flash_attn_varlen(
    gpu: &Gpu,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu_q: &[i32],
    cu_k: &[i32],
    p: &VarlenParams,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let check_cu = |what: &str, cu: &[i32]| -> Result<usize> {
        if cu.first() != Some(&0) || cu.windows(2).any(|w| w[1] < w[0]) {
            return Err(
                Error::invalid(what, format!("{cu:?}"), "starts at 0, non-decreasing").into(),
            );
        }
        Ok(*cu.last().unwrap_or(&0) as usize)
    };
    if cu_q.len() != cu_k.len() {
        return Err(Error::invalid(
            "cu_seqlens_k length",
            cu_k.len(),
            format!("cu_seqlens_q length {}", cu_q.len()),
        )
        .into());
    }
    let (tq, tk) = (
        check_cu("cu_seqlens_q", cu_q)?,
        check_cu("cu_seqlens_k", cu_k)?,
    );
    let (hq, hk, d, dv) = (p.num_heads, p.num_kv_heads, p.head_size, p.head_size_v);
    if hq == 0 || hk == 0 || hq % hk != 0 || d == 0 || dv == 0 || p.block_n == 0 {
        return Err(Error::invalid(
            "heads / head sizes / block_n",
            format!("{hq}/{hk}, {d}/{dv}, {}", p.block_n),
            "non-zero, num_kv_heads dividing num_heads",
        )
        .into());
    }
    for (what, len, want) in [
        ("q", q.len(), tq * hq * d),
        ("k", k.len(), tk * hk * d),
        ("v", v.len(), tk * hk * dv),
    ] {
        if len != want {
            return Err(Error::invalid(
                format!("{what} length"),
                len,
                format!("{want} from cu_seqlens and head sizes"),
            )
            .into());
        }
    }
    for (what, x) in [("alibi_slopes", p.alibi_slopes), ("sinks", p.sinks)] {
        if x.is_some_and(|x| x.len() != hq) {
            return Err(Error::invalid(
                format!("{what} length"),
                x.map_or(0, |x| x.len()),
                format!("num_heads = {hq}"),
            )
            .into());
        }
    }
    let shared = (ROWS * p.block_n + ROWS * dv + 3 * ROWS) * 4;
    if shared > SHARED_MEMORY_LIMIT {
        return Err(Error::invalid(
            "shared memory of one program",
            shared,
            format!("at most {SHARED_MEMORY_LIMIT} bytes"),
        )
        .into());
    }
    let batch = cu_q.len().saturating_sub(1);
    let max_sq = cu_q
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .max()
        .unwrap_or(0);
    let dev = gpu.dev.as_ref();
    let dt = p.dtype;
    let out = Buffer::zeroed(dev, tq * hq * dv * dt.size_bytes())?;
    let lse = Buffer::from_bytes(
        dev,
        &bytes_of(&vec![f32::NEG_INFINITY; tq * hq], DType::F32),
    )?;
    if batch > 0 && max_sq > 0 {
        let (qb, kb, vb) = (
            Buffer::from_bytes(dev, &bytes_of(q, dt))?,
            Buffer::from_bytes(dev, &bytes_of(k, dt))?,
            Buffer::from_bytes(dev, &bytes_of(v, dt))?,
        );
        let (cq, ck) = (
            Buffer::from_bytes(dev, &bytes_of_i32(cu_q))?,
            Buffer::from_bytes(dev, &bytes_of_i32(cu_k))?,
        );
        let sinks = Buffer::from_bytes(dev, &bytes_of(p.sinks.unwrap_or(&[0.0]), DType::F32))?;
        let alibi =
            Buffer::from_bytes(dev, &bytes_of(p.alibi_slopes.unwrap_or(&[0.0]), DType::F32))?;
        let args = ArgStruct::default()
            .i64(hq as i64)
            .i64(hk as i64)
            .i64(d as i64)
            .i64(dv as i64)
            .i64(p.block_n as i64)
            .i64(p.window.unwrap_or(0) as i64)
            .i64(tq as i64)
            .i32(p.causal as i32)
            .i32(p.sinks.is_some() as i32)
            .i32(p.alibi_slopes.is_some() as i32)
            .i32(0)
            .f32(p.score.scale)
            .f32(p.score.scale_log2)
            .f32(p.score.softcap.unwrap_or(0.0))
            .f32(0.0)
            .arg();
        let f = gpu.function(
            "flash_varlen",
            &[dtype_define("DTYPE", dt)],
            "flash_attn_varlen",
        )?;
        let dims = LaunchDims {
            grid: [
                to_u32(max_sq.div_ceil(ROWS), "row blocks")?,
                to_u32(batch, "batch")?,
                to_u32(hq, "heads")?,
            ],
            block: [128, 1, 1],
            shared_bytes: shared as u32,
        };
        dev.launch(
            f,
            dims,
            &[
                qb.arg(),
                kb.arg(),
                vb.arg(),
                cq.arg(),
                ck.arg(),
                sinks.arg(),
                alibi.arg(),
                out.arg(),
                lse.arg(),
                args,
            ],
        )?;
    }
    Ok((
        bits_from_bytes(&out.to_bytes()?, dt),
        bits_from_bytes(&lse.to_bytes()?, DType::F32),
    ))
}
