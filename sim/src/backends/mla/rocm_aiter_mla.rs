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

use super::{MlaBackend, MlaConfig, MlaDecodeBatch};
use crate::backends::exec::KernelExecutor;
use crate::backends::KernelCall;
use crate::kernels::mla_cache::LatentCache;
use crate::kernels::mla_decode::{
    aiter_num_kv_splits, AiterPaging, MlaDecodeOutput, MlaDecodeParams,
};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::{Fault, FaultSet};
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

/// How `_forward_mqa` pads a head count the asm kernels lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadPadding {
    None,
    /// H divides 16: each head repeated 16/H times, every (16/H)-th kept.
    RepeatInterleave(usize),
    /// Other H <= 128: heads tiled up to the next multiple of 16, `[:H]` kept.
    Tile(usize),
}

impl RocmAiterMla {
    /// The per-rank head rule with the profile's message.
    pub fn head_padding(heads: usize, profile: Profile) -> Result<HeadPadding> {
        let hint = "\nTry adjusting tensor_parallel_size value.";
        match profile {
            Profile::Pr26980 if heads == 16 || heads == 128 => Ok(HeadPadding::None),
            Profile::Pr26980 => Err(Error::unsupported(format!("ROCM_AITER_MLA with {heads} heads per rank"), format!("Aiter MLA only supports 16 or 128 number of heads.\nProvided {heads} number of heads.{hint}"))),
            Profile::Latest if heads > 0 && heads % 16 == 0 => Ok(HeadPadding::None),
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
        let (meta, k, p) = (batch.meta, batch.meta.block_size, self.page_size);
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
                meta.block_table.block(r, j / per_block) as i32 * per_block as i32
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
        let qo_indptr = meta.query_start_loc[..=batch.num_decodes].to_vec();
        Ok(AiterPaging {
            qo_indptr,
            kv_indptr,
            kv_indices,
            kv_last_page_lens: last,
            page_size: p,
        })
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

impl MlaBackend for RocmAiterMla {
    fn name(&self) -> &'static str {
        "ROCM_AITER_MLA"
    }

    fn check(&self, cfg: &MlaConfig, block_size: usize) -> Result<()> {
        cfg.check_common(self.name(), &ROCM_AITER_MLA, "Aiter MLA does not support one of the following: alibi_slopes, sliding_window, logits_soft_cap")?;
        Self::head_padding(cfg.heads_per_rank(), cfg.profile)?;
        if !ROCM_AITER_MLA.supports_block_size(block_size) || block_size % self.page_size != 0 {
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

    fn forward_mqa_with(
        &self,
        ex: &dyn KernelExecutor,
        q: &[f32],
        heads: usize,
        cache: &LatentCache,
        batch: &MlaDecodeBatch,
        cfg: &MlaConfig,
    ) -> Result<MlaDecodeOutput> {
        let padding = Self::kernel_padding(heads, cfg)?;
        let paging = self.build_paging_with(batch, cfg.faults)?;
        crate::rules::aiter_mla_page_size(self.page_size)?;
        let (w, lkv) = (cfg.dims.latent_width(), cfg.dims.kv_lora_rank);
        let (q_pad, hp) = pad_heads(q, heads, w, padding);
        crate::rules::aiter_mla_heads(hp)?;
        let p = MlaDecodeParams {
            num_heads: hp,
            scale: cfg.scale,
            q_dtype: cfg.dtype,
            kv_scale: cfg.k_scale,
            out_dtype: cfg.dtype,
            lse_dtype: DType::F32,
            faults: cfg.faults,
        };
        let o = ex.mla_decode_fwd(
            &q_pad,
            cache,
            &paging,
            batch.meta.causal,
            cfg.num_kv_splits,
            cfg.num_cus,
            &p,
        )?;
        Ok(MlaDecodeOutput {
            out: unpad_heads(&o.out, heads, hp, lkv, padding),
            lse: unpad_heads(&o.lse, heads, hp, 1, padding),
        })
    }

    fn plan_mqa(
        &self,
        batch: &MlaDecodeBatch,
        heads: usize,
        cfg: &MlaConfig,
    ) -> Result<Vec<KernelCall>> {
        let hp = match Self::head_padding(heads, cfg.profile)? {
            HeadPadding::None => heads,
            HeadPadding::RepeatInterleave(r) => heads * r,
            HeadPadding::Tile(hp) => hp,
        };
        let paging = self.build_paging(batch)?;
        let (t, bs) = (batch.num_decode_tokens(), paging.batch_size());
        let total_kv: usize = (0..bs).map(|b| paging.kv_len(b)).sum();
        let s = cfg
            .num_kv_splits
            .unwrap_or_else(|| aiter_num_kv_splits(bs, total_kv, cfg.num_cus));
        let (lkv, w) = (cfg.dims.kv_lora_rank, cfg.dims.latent_width());
        Ok(vec![
            KernelCall::new(
                "mla_decode_stage1_asm_fwd",
                &[
                    ("q", vec![t, hp, w]),
                    (
                        "kv_buffer",
                        vec![
                            batch.meta.num_blocks * batch.meta.block_size / self.page_size,
                            self.page_size,
                            1,
                            w,
                        ],
                    ),
                    ("kv_indptr", vec![bs + 1]),
                    ("kv_indices", vec![paging.kv_indices.len()]),
                    ("logits", vec![t, s, hp, lkv]),
                ],
            ),
            KernelCall::new(
                "_fwd_kernel_stage2_asm",
                &[("grid", vec![bs, hp]), ("o", vec![t, hp, lkv])],
            ),
        ])
    }

    fn uniform_decode(&self) -> bool {
        false
    }
}
