//! The MLA decode step language: the decode kernel an MLA backend routes its
//! decode tokens to ([`MlaDecode`]) and its two interpreters, [`run`] (the
//! launch on a [`KernelExecutor`]) and [`render`] (as `attnlab trace` shows
//! it), shared by every MLA backend so that `forward_mqa` and `plan_mqa`
//! cannot drift apart. A backend's `route_mqa` picks the kernel and its
//! launch metadata; everything around it is [`super::common`].

use super::{MlaConfig, MlaDecodeBatch};
use crate::backends::exec::KernelExecutor;
use crate::kernels::mla_cache::LatentCache;
use crate::kernels::mla_decode::{
    aiter_num_kv_splits, AiterPaging, KvRow, KvSplits, MlaDecodeArgs, MlaDecodeOutput,
    MlaDecodeParams, BLOCK_H,
};
use crate::kernels::KernelCall;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};

/// The decode kernel of an MLA backend, with its launch metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MlaDecode {
    /// Triton's split-KV `decode_attention_fwd` (TRITON_MLA): one row per
    /// decode token ([`split_kv_rows`]), `num_kv_splits` even splits.
    SplitKv { num_kv_splits: usize },
    /// AITER's asm `mla_decode_fwd` over CSR `paging` (ROCM_AITER_MLA), the
    /// heads padded as vLLM's `_forward_mqa` pads them.
    AiterPaged {
        paging: AiterPaging,
        padding: HeadPadding,
        page_size: usize,
    },
}

/// How `_forward_mqa` pads a head count the asm kernels lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadPadding {
    None,
    /// H divides 16: each head repeated 16/H times, every (16/H)-th kept.
    RepeatInterleave(usize),
    /// Other H <= 128: heads tiled up to the next multiple of 16, `[:H]` kept.
    Tile(usize),
}

impl HeadPadding {
    /// The head count the kernel sees for `heads` real heads.
    pub fn padded_heads(self, heads: usize) -> usize {
        match self {
            HeadPadding::None => heads,
            HeadPadding::RepeatInterleave(r) => heads * r,
            HeadPadding::Tile(hp) => hp,
        }
    }
}

/// One [`KvRow`] per decode token: the block table repeated per query
/// token, causal rows shortened (`forward_mqa`'s multi-token path).
pub fn split_kv_rows<'a>(batch: &MlaDecodeBatch<'a>) -> Result<Vec<KvRow<'a>>> {
    let (meta, nd) = (batch.meta, batch.num_decodes);
    let b = batch.num_decode_tokens();
    if nd == 0 {
        return Ok(Vec::new());
    }
    if !b.is_multiple_of(nd) || (0..nd).any(|i| meta.query_len(i) != b / nd) {
        return Err(Error::invalid(
            "decode block",
            format!("non-uniform decode block: {b} query rows over {nd} requests"),
            "every decode request needs the same query length",
        ));
    }
    let q_len = b / nd;
    let mut rows = Vec::with_capacity(b);
    for r in 0..nd {
        let seq_len = meta.seq_len(r);
        for t in 0..q_len {
            let kv_len = if meta.causal() {
                seq_len.saturating_sub(q_len - 1 - t)
            } else {
                seq_len
            };
            rows.push(KvRow {
                pages: meta.block_table().row(r),
                page_size: meta.block_size(),
                kv_len,
                split_len: kv_len,
            });
        }
    }
    Ok(rows)
}

/// Runs `step` on `ex`: `q [num_decode_tokens, heads, Lkv + R]` -> latent
/// output `[num_decode_tokens, heads, Lkv]` + lse.
pub fn run(
    ex: &dyn KernelExecutor,
    step: &MlaDecode,
    q: &[f32],
    heads: usize,
    cache: &LatentCache,
    batch: &MlaDecodeBatch,
    cfg: &MlaConfig,
) -> Result<MlaDecodeOutput> {
    let params = |num_heads: usize, lse_dtype: DType| MlaDecodeParams {
        num_heads,
        scale: cfg.scale,
        q_dtype: cfg.dtype,
        kv_scale: cfg.k_scale,
        out_dtype: cfg.dtype,
        lse_dtype,
        faults: cfg.faults,
    };
    match step {
        MlaDecode::SplitKv { num_kv_splits } => {
            let rows = split_kv_rows(batch)?;
            let splits = KvSplits::Even {
                num_kv_splits: *num_kv_splits,
            };
            let p = params(heads, cfg.dtype);
            ex.decode_attention_fwd(&MlaDecodeArgs::new(q, &rows, cache, splits, &p)?)
        }
        MlaDecode::AiterPaged {
            paging, padding, ..
        } => {
            let (w, lkv) = (cfg.dims.latent_width(), cfg.dims.kv_lora_rank);
            let (q_pad, hp) = pad_heads(q, heads, w, *padding);
            let o = ex.mla_decode_fwd(
                &q_pad,
                cache,
                paging,
                batch.meta.causal(),
                cfg.num_kv_splits,
                cfg.num_cus,
                &params(hp, DType::F32),
            )?;
            Ok(MlaDecodeOutput {
                out: unpad_heads(&o.out, heads, hp, lkv, *padding),
                lse: unpad_heads(&o.lse, heads, hp, 1, *padding),
            })
        }
    }
}

/// The launches of `step` as `attnlab trace` shows them.
pub fn render(
    step: &MlaDecode,
    batch: &MlaDecodeBatch,
    heads: usize,
    cfg: &MlaConfig,
) -> Vec<KernelCall> {
    let (lkv, w) = (cfg.dims.kv_lora_rank, cfg.dims.latent_width());
    match step {
        MlaDecode::SplitKv { num_kv_splits: s } => {
            let (b, s) = (batch.num_decode_tokens(), *s);
            vec![
                KernelCall::new(
                    "_fwd_grouped_kernel_stage1",
                    &[
                        ("grid", vec![b, heads.div_ceil(BLOCK_H), s]),
                        ("q", vec![b, heads, w]),
                        ("attn_logits", vec![b, heads, s, lkv + 1]),
                    ],
                ),
                KernelCall::new(
                    "_fwd_kernel_stage2",
                    &[
                        ("grid", vec![b, heads]),
                        ("o", vec![b, heads, lkv]),
                        ("lse", vec![b, heads]),
                    ],
                ),
            ]
        }
        MlaDecode::AiterPaged {
            paging,
            padding,
            page_size,
        } => {
            let hp = padding.padded_heads(heads);
            let (t, bs) = (batch.num_decode_tokens(), paging.batch_size());
            let total_kv: usize = (0..bs).map(|b| paging.kv_len(b)).sum();
            let s = cfg
                .num_kv_splits
                .unwrap_or_else(|| aiter_num_kv_splits(bs, total_kv, cfg.num_cus));
            let pages = batch.meta.num_blocks() * batch.meta.block_size() / page_size;
            vec![
                KernelCall::new(
                    "mla_decode_stage1_asm_fwd",
                    &[
                        ("q", vec![t, hp, w]),
                        ("kv_buffer", vec![pages, *page_size, 1, w]),
                        ("kv_indptr", vec![bs + 1]),
                        ("kv_indices", vec![paging.kv_indices.len()]),
                        ("logits", vec![t, s, hp, lkv]),
                    ],
                ),
                KernelCall::new(
                    "_fwd_kernel_stage2_asm",
                    &[("grid", vec![bs, hp]), ("o", vec![t, hp, lkv])],
                ),
            ]
        }
    }
}

/// `q [T, H, W]` with heads rearranged as `padding` says; `None` returns a copy.
fn pad_heads(q: &[f32], heads: usize, w: usize, padding: HeadPadding) -> (Vec<f32>, usize) {
    let (hp, src): (usize, Box<dyn Fn(usize) -> usize>) = match padding {
        HeadPadding::None => (heads, Box::new(|i| i)),
        HeadPadding::RepeatInterleave(r) => (heads * r, Box::new(move |i| i / r)),
        HeadPadding::Tile(hp) => (hp, Box::new(move |i| i % heads)),
    };
    let out = q
        .chunks_exact(heads * w)
        .flat_map(|row| {
            (0..hp)
                .flat_map(|i| row[src(i) * w..(src(i) + 1) * w].iter().copied())
                .collect::<Vec<_>>()
        })
        .collect();
    (out, hp)
}

/// The real heads' outputs (`[T, hp, d]` -> `[T, heads, d]`).
fn unpad_heads(x: &[f32], heads: usize, hp: usize, d: usize, padding: HeadPadding) -> Vec<f32> {
    let pos = |h: usize| {
        if let HeadPadding::RepeatInterleave(r) = padding {
            h * r
        } else {
            h
        }
    };
    x.chunks_exact(hp * d)
        .flat_map(|row| {
            (0..heads).flat_map(move |h| row[pos(h) * d..(pos(h) + 1) * d].iter().copied())
        })
        .collect()
}
