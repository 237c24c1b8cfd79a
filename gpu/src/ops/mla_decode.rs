//! Launchers for `kernels/mla_decode.hip`, mirroring
//! `attnlab_sim::kernels::mla_decode::decode_attention_fwd` (stage 1 +
//! stage 2) for any `KvSplits` (Triton's even splits, AITER's granules).

use super::unified_attention::{to_u32, SHARED_MEMORY_LIMIT};
use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i32, bytes_of_i64};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Buffer, LaunchDims, Result};
use attnlab_shared::error::Error;
use attnlab_sim::kernels::mla_decode::{KvRow, KvSplits, MlaDecodeArgs, BLOCK_H, BLOCK_N};
use attnlab_sim::numerics::softmax_scale_log2;

param_block! {
    /// `MlaArgs` of `kernels/mla_decode.hip` (both stages).
    pub struct MlaParams as "MlaArgs" {
        num_rows: i64,
        num_heads: i64,
        kv_lora_rank: i64,
        width: i64,
        num_kv_splits: i64,
        granularity: i64,
        granular: i32,
        pad: i32,
        scale: f32,
        scale_log2: f32,
        kv_scale: f32,
    }
}

/// Output and LSE bits: `o [rows, H, Lkv]` in `out_dtype`, `lse [rows, H]` in `lse_dtype`.
pub struct MlaDecodeBits {
    pub out: Vec<u32>,
    pub lse: Vec<u32>,
}

/// Stage 1 + stage 2 on the device for absorbed queries `q [rows, H, W]`.
/// The [`MlaDecodeArgs`] the emulator takes, validated where they were
/// built; only the device's shared memory and index widths are checked here.
pub fn decode_attention_fwd(gpu: &Gpu, args: &MlaDecodeArgs) -> Result<MlaDecodeBits> {
    let (q, rows, cache, splits, p) = (
        args.q(),
        args.rows(),
        args.cache(),
        args.splits(),
        args.params(),
    );
    let (h, lkv, w) = (p.num_heads, cache.layout.kv_lora_rank, cache.layout.width());
    let s = splits.num_kv_splits();
    let shared = (BLOCK_H * BLOCK_N + BLOCK_H * lkv + 3 * BLOCK_H) * 4;
    if shared > SHARED_MEMORY_LIMIT {
        return Err(Error::invalid(
            "kv_lora_rank",
            lkv,
            format!(
                "BLOCK_H x kv_lora_rank f32 must fit {SHARED_MEMORY_LIMIT} bytes of shared memory"
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
    let (granular, granularity) = match splits {
        KvSplits::Even { .. } => (0, 1),
        KvSplits::Granular { granularity, .. } => (1, granularity),
    };
    // Rows flattened: each row's pages (the ones it can address), and its lengths.
    let (mut pages, mut page_start) = (Vec::new(), Vec::new());
    for row in rows {
        page_start.push(pages.len() as i64);
        pages.extend_from_slice(&row.pages[..row.kv_len.div_ceil(row.page_size)]);
    }
    let ints = |f: &dyn Fn(&KvRow) -> usize| -> Result<Vec<i32>> {
        rows.iter()
            .map(|r| {
                i32::try_from(f(r))
                    .map_err(|_| Error::invalid("row length", f(r), "at most 2^31 - 1").into())
            })
            .collect()
    };
    let dev = gpu.dev.as_ref();
    let up32 =
        |v: &[i32]| Buffer::from_bytes(dev, &bytes_of_i32(if v.is_empty() { &[0] } else { v }));
    let pages_b = up32(&pages)?;
    let start_b = Buffer::from_bytes(dev, &bytes_of_i64(&page_start))?;
    let ps_b = up32(&ints(&|r| r.page_size)?)?;
    let kv_b = up32(&ints(&|r| r.kv_len)?)?;
    let sl_b = up32(&ints(&|r| r.split_len)?)?;
    let q_b = Buffer::from_bytes(dev, &bytes_of(q, p.q_dtype))?;
    let cache_b = Buffer::from_bytes(dev, &bytes_of(&cache.data, cache.layout.dtype))?;
    let att = Buffer::zeroed(dev, rows.len() * h * s * (lkv + 1) * 4)?;
    let out = Buffer::zeroed(dev, rows.len() * h * lkv * p.out_dtype.size_bytes())?;
    let lse = Buffer::zeroed(dev, rows.len() * h * p.lse_dtype.size_bytes())?;
    let a = MlaParams {
        num_rows: rows.len() as i64,
        num_heads: h as i64,
        kv_lora_rank: lkv as i64,
        width: w as i64,
        num_kv_splits: s as i64,
        granularity: granularity as i64,
        granular,
        pad: 0,
        scale: p.scale,
        scale_log2: softmax_scale_log2(p.scale),
        kv_scale: p.kv_scale,
    }
    .arg();
    let defines = [
        dtype_define("Q_DTYPE", p.q_dtype),
        dtype_define("KV_DTYPE", cache.layout.dtype),
        dtype_define("OUT_DTYPE", p.out_dtype),
        dtype_define("LSE_DTYPE", p.lse_dtype),
    ];
    let nrows = to_u32(rows.len(), "query rows")?;
    let stage1 = gpu.function("mla_decode", &defines, "mla_decode_stage1")?;
    let dims = LaunchDims {
        grid: [
            nrows,
            to_u32(h.div_ceil(BLOCK_H), "head blocks")?,
            to_u32(s, "kv splits")?,
        ],
        block: [128, 1, 1],
        shared_bytes: shared as u32,
    };
    let row_args = [
        pages_b.arg(),
        start_b.arg(),
        ps_b.arg(),
        kv_b.arg(),
        sl_b.arg(),
    ];
    let mut call = vec![q_b.arg(), cache_b.arg()];
    call.extend(row_args.iter().cloned());
    call.extend([att.arg(), a.clone()]);
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe { dev.launch(stage1, dims, &call) }?;
    let stage2 = gpu.function("mla_decode", &defines, "mla_decode_stage2")?;
    let dims = LaunchDims {
        grid: [nrows, to_u32(h, "heads")?, 1],
        block: [128, 1, 1],
        shared_bytes: 0,
    };
    let mut call = vec![att.arg()];
    call.extend(row_args.iter().cloned());
    call.extend([out.arg(), lse.arg(), a]);
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe { dev.launch(stage2, dims, &call) }?;
    Ok(MlaDecodeBits {
        out: bits_from_bytes(&out.to_bytes()?, p.out_dtype),
        lse: bits_from_bytes(&lse.to_bytes()?, p.lse_dtype),
    })
}
