//! TRITON_MLA (`v1/attention/backends/mla/triton_mla.py`, vllm-backends.md
//! §14): the ROCm MLA default without AITER. Decode is vLLM's Triton split-KV
//! kernel ([`crate::kernels::mla_decode`], Triton split rule) over the paged
//! latent cache, addressed through the block table directly:
//! ```text
//! q = cat(ql_nope, q_pe)                                   # [B, H, 576]
//! num_kv_splits = min(next_pow2(max(1, max_seq_len // 512)), 2 * num_CUs)
//! multi-token decode (B = nd * q_len): block_table.repeat_interleave(q_len),
//!     causal row (r, t) sees seq_len_r - (q_len - 1 - t) keys
//! _fwd_grouped_kernel_stage1  grid (B, cdiv(H, 16), num_kv_splits)
//! _fwd_kernel_stage2          grid (B, H)            -> o [B, H, 512], lse in q dtype
//! ```
//! Capabilities: fp16/bf16, kv auto/fp16/bf16/fp8(e4m3); block sizes
//! MultipleOf(16) (0.33) — the seed-era selector only rejects block size 1.

use super::{MlaBackend, MlaConfig, MlaDecodeBatch};
use crate::backends::exec::KernelExecutor;
use crate::backends::KernelCall;
use crate::kernels::mla_cache::LatentCache;
use crate::kernels::mla_decode::{KvRow, KvSplits, MlaDecodeOutput, MlaDecodeParams, BLOCK_H};
use attnlab_shared::error::{Error, Result};
use attnlab_shared::registry::TRITON_MLA;
use attnlab_shared::selection::Profile;

/// `_MIN_WORK_PER_SPLIT`: tokens per split before another split pays off.
pub const MIN_WORK_PER_SPLIT: usize = 512;
/// `_SPLIT_OCCUPANCY_MULTIPLIER`: at most this many splits per CU.
pub const SPLIT_OCCUPANCY_MULTIPLIER: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TritonMla;

impl TritonMla {
    /// The split count `forward_mqa` launches with.
    pub fn num_kv_splits(batch: &MlaDecodeBatch, cfg: &MlaConfig) -> usize {
        cfg.num_kv_splits.unwrap_or_else(|| {
            let by_work = (batch.max_seq_len() / MIN_WORK_PER_SPLIT)
                .max(1)
                .next_power_of_two();
            by_work.min(SPLIT_OCCUPANCY_MULTIPLIER * cfg.num_cus.max(1))
        })
    }

    /// One [`KvRow`] per decode token: the block table repeated per query
    /// token, causal rows shortened (`forward_mqa`'s multi-token path).
    pub fn rows<'a>(batch: &MlaDecodeBatch<'a>) -> Result<Vec<KvRow<'a>>> {
        let (meta, nd) = (batch.meta, batch.num_decodes);
        let b = batch.num_decode_tokens();
        if nd == 0 {
            return Ok(Vec::new());
        }
        if b % nd != 0 || (0..nd).any(|i| meta.query_len(i) != b / nd) {
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
                let kv_len = if meta.causal {
                    seq_len.saturating_sub(q_len - 1 - t)
                } else {
                    seq_len
                };
                rows.push(KvRow {
                    pages: meta.block_table.row(r),
                    page_size: meta.block_size,
                    kv_len,
                    split_len: kv_len,
                });
            }
        }
        Ok(rows)
    }
}

impl MlaBackend for TritonMla {
    fn name(&self) -> &'static str {
        "TRITON_MLA"
    }

    fn check(&self, cfg: &MlaConfig, block_size: usize) -> Result<()> {
        cfg.check_common(self.name(), &TRITON_MLA, "TritonMLAImpl does not support one of the following: alibi_slopes, sliding_window, logits_soft_cap")?;
        match cfg.profile {
            Profile::Pr26980 if block_size == 1 => Err(Error::unsupported(
                "TRITON_MLA with block size 1",
                " The selected backend, TRITON_MLA,does not support block size 1.",
            )),
            Profile::Latest if !TRITON_MLA.supports_block_size(block_size) => {
                Err(Error::unsupported(
                    format!("TRITON_MLA with block size {block_size}"),
                    "block_size not supported (kernel block sizes: MultipleOf(16))",
                ))
            }
            _ if block_size == 0 => Err(Error::invalid("block_size", 0, "must be >= 1")),
            _ => Ok(()),
        }
    }

    fn forward_mqa_with(
        &self,
        ex: &dyn KernelExecutor,
        q: &[f32],
        heads: usize,
        cache: &LatentCache,
        batch: &MlaDecodeBatch,
        cfg: &MlaConfig,
    ) -> Result<MlaDecodeOutput> {
        let rows = Self::rows(batch)?;
        let splits = KvSplits::Even {
            num_kv_splits: Self::num_kv_splits(batch, cfg),
        };
        let p = MlaDecodeParams {
            num_heads: heads,
            scale: cfg.scale,
            q_dtype: cfg.dtype,
            kv_scale: cfg.k_scale,
            out_dtype: cfg.dtype,
            lse_dtype: cfg.dtype,
            faults: cfg.faults,
        };
        ex.decode_attention_fwd(q, &rows, cache, splits, &p)
    }

    fn plan_mqa(
        &self,
        batch: &MlaDecodeBatch,
        heads: usize,
        cfg: &MlaConfig,
    ) -> Result<Vec<KernelCall>> {
        let (b, s) = (batch.num_decode_tokens(), Self::num_kv_splits(batch, cfg));
        let (lkv, w) = (cfg.dims.kv_lora_rank, cfg.dims.latent_width());
        Ok(vec![
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
        ])
    }
}
