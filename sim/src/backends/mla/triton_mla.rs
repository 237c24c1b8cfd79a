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

use super::decode_steps::MlaDecode;
use super::{MlaBackend, MlaConfig, MlaDecodeBatch};
use attnlab_shared::error::{Error, Result};
use attnlab_shared::registry::BackendName;
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
}

impl MlaBackend for TritonMla {
    fn name(&self) -> BackendName {
        BackendName::TritonMla
    }

    fn check(&self, cfg: &MlaConfig, block_size: usize) -> Result<()> {
        cfg.check_common(self.name().name(), &TRITON_MLA, "TritonMLAImpl does not support one of the following: alibi_slopes, sliding_window, logits_soft_cap")?;
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

    /// `forward_mqa`: Triton's split-KV decode with vLLM's split count.
    fn route_mqa(
        &self,
        batch: &MlaDecodeBatch,
        _heads: usize,
        cfg: &MlaConfig,
    ) -> Result<MlaDecode> {
        Ok(MlaDecode::SplitKv {
            num_kv_splits: Self::num_kv_splits(batch, cfg),
        })
    }
}
