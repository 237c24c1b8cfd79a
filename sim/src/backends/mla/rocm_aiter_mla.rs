//! ROCM_AITER_MLA (`v1/attention/backends/mla/rocm_aiter_mla.py`,
//! vllm-backends.md §15, aiter.md §6): decode through AITER's
//! `mla_decode_fwd` ([`crate::kernels::mla_decode::mla_decode_fwd`]), which
//! addresses the cache through CSR paging instead of a block table:
//! ```text
//! _build_decode: kv_indptr = [0, cumsum(pages_b)], kv_indices = the block-table
//!     entries expanded to pages (vLLM: page size 1, blk*K + 0..K-1 truncated to
//!     seq_len), kv_last_page_lens (1 for page size 1), qo_indptr = query_start_loc
//! _forward_mqa: pad heads to a multiple of 16 (0.33) -> mla_decode_fwd(q, kv_buffer
//!     viewed [-1, page, 1, 576], o, scale, qo_indptr, max_qo_len, kv_indptr, kv_indices,
//!     kv_last_page_lens, causal) -> unpad
//! ```
//! Any block size (MultipleOf(1)): the kernel sees pages, not blocks.
//! `page_size > 1` models AITER's own tests (`-blk`), which vLLM never uses.
//! fp8 caches are read like TRITON_MLA (dequantized to the query dtype);
//! AITER's fp8-query asm variant (q quantized with q_scale) is not modelled.

pub use super::decode_steps::HeadPadding;
use super::decode_steps::MlaDecode;
use super::{MlaBackend, MlaConfig, MlaDecodeBatch};
use crate::kernels::mla_decode::AiterPaging;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::{Fault, FaultSet};
use attnlab_shared::registry::BackendName;
use attnlab_shared::registry::ROCM_AITER_MLA;
use attnlab_shared::selection::Profile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocmAiterMla {
    /// Tokens per kernel page (vLLM: 1).
    pub page_size: usize,
}

impl Default for RocmAiterMla {
    fn default() -> Self {
        RocmAiterMla { page_size: 1 }
    }
}

impl RocmAiterMla {
    /// The per-rank head rule with the profile's message.
    pub fn head_padding(heads: usize, profile: Profile) -> Result<HeadPadding> {
        let hint = "\nTry adjusting tensor_parallel_size value.";
        match profile {
            Profile::Pr26980 if heads == 16 || heads == 128 => Ok(HeadPadding::None),
            Profile::Pr26980 => Err(Error::unsupported(format!("ROCM_AITER_MLA with {heads} heads per rank"), format!("Aiter MLA only supports 16 or 128 number of heads.\nProvided {heads} number of heads.{hint}"))),
            Profile::Latest if heads > 0 && heads.is_multiple_of(16) => Ok(HeadPadding::None),
            Profile::Latest if heads > 0 && 16 % heads == 0 => Ok(HeadPadding::RepeatInterleave(16 / heads)),
            Profile::Latest if heads > 0 && heads <= 128 => Ok(HeadPadding::Tile(heads.div_ceil(16) * 16)),
            Profile::Latest => Err(Error::unsupported(format!("ROCM_AITER_MLA with {heads} heads per rank"), format!("ROCM AITER MLA requires a positive multiple of 16 heads, or an unaligned head count up to 128 (padded to the next multiple of 16), but got {heads}.{hint}"))),
        }
    }

    /// [`RocmAiterMla::head_padding`] as `_forward_mqa` applies it
    /// ([`Fault::AiterMlaFp8Heads`]: no padding with an fp8 cache).
    pub fn kernel_padding(heads: usize, cfg: &MlaConfig) -> Result<HeadPadding> {
        let padding = Self::head_padding(heads, cfg.profile)?;
        if cfg.faults.has(Fault::AiterMlaFp8Heads) && cfg.kv_dtype.is_fp8() {
            return Ok(HeadPadding::None);
        }
        Ok(padding)
    }

    /// `_build_decode`: the decode requests' block-table rows as AITER pages.
    pub fn build_paging(&self, batch: &MlaDecodeBatch) -> Result<AiterPaging> {
        self.build_paging_with(batch, FaultSet::NONE)
    }

    /// [`RocmAiterMla::build_paging`] with `faults`
    /// ([`Fault::KvIndicesPerBlock`]: `kv_indices` sized one entry per block).
    pub fn build_paging_with(
        &self,
        batch: &MlaDecodeBatch,
        faults: FaultSet,
    ) -> Result<AiterPaging> {
        let (meta, k, p) = (batch.meta, batch.meta.block_size(), self.page_size);
        if p == 0 || k % p != 0 {
            return Err(Error::invalid(
                "AITER page size",
                p,
                format!("must divide the kernel block size {k}"),
            ));
        }
        let per_block = k / p;
        let (mut kv_indptr, mut kv_indices, mut last) = (vec![0i32], Vec::new(), Vec::new());
        for r in 0..batch.num_decodes {
            let len = meta.seq_len(r);
            let pages = len.div_ceil(p);
            kv_indices.extend((0..pages).map(|j| {
                meta.block_table().block(r, j / per_block) as i32 * per_block as i32
                    + (j % per_block) as i32
            }));
            kv_indptr.push(kv_indices.len() as i32);
            last.push(if pages == 0 {
                1
            } else {
                (len - (pages - 1) * p) as i32
            });
        }
        if faults.has(Fault::KvIndicesPerBlock) {
            let blocks = (0..batch.num_decodes)
                .map(|r| meta.seq_len(r).div_ceil(k))
                .sum();
            kv_indices.truncate(blocks);
        }
        let qo_indptr = meta.query_start_loc()[..=batch.num_decodes].to_vec();
        Ok(AiterPaging {
            qo_indptr,
            kv_indptr,
            kv_indices,
            kv_last_page_lens: last,
            page_size: p,
        })
    }
}

impl MlaBackend for RocmAiterMla {
    fn name(&self) -> BackendName {
        BackendName::RocmAiterMla
    }

    fn check(&self, cfg: &MlaConfig, block_size: usize) -> Result<()> {
        cfg.check_common(self.name().name(), &ROCM_AITER_MLA, "Aiter MLA does not support one of the following: alibi_slopes, sliding_window, logits_soft_cap")?;
        Self::head_padding(cfg.heads_per_rank(), cfg.profile)?;
        if !ROCM_AITER_MLA.supports_block_size(block_size)
            || !block_size.is_multiple_of(self.page_size)
        {
            return Err(Error::invalid(
                "block_size",
                block_size,
                format!(
                    "must be a positive multiple of the AITER page size {}",
                    self.page_size
                ),
            ));
        }
        Ok(())
    }

    /// `_forward_mqa`: the heads padded as the profile says, then AITER's
    /// `mla_decode_fwd` over the decode requests' pages (`_build_decode`).
    fn route_mqa(
        &self,
        batch: &MlaDecodeBatch,
        heads: usize,
        cfg: &MlaConfig,
    ) -> Result<MlaDecode> {
        let padding = Self::kernel_padding(heads, cfg)?;
        let paging = self.build_paging_with(batch, cfg.faults)?;
        crate::rules::aiter_mla_page_size(self.page_size)?;
        crate::rules::aiter_mla_heads(padding.padded_heads(heads))?;
        Ok(MlaDecode::AiterPaged {
            paging,
            padding,
            page_size: self.page_size,
        })
    }

    fn uniform_decode(&self) -> bool {
        false
    }
}
