//! The MLA latent cache (vllm-backends.md §2.2(c), §13.2): one tensor per
//! layer, `[num_blocks, block_size, kv_lora_rank + rope_dim]`, no K/V split
//! and no head axis (MLA caches one latent "head" shared by all query heads).
//!
//! ```text
//! entry(b, n, c) = b*(N*W) + n*W + c        W = kv_lora_rank + rope_dim (576)
//!                  c <  kv_lora_rank : c_kv (the compressed latent, also "V")
//!                  c >= kv_lora_rank : k_pe (the RoPE'd key part)
//! ```
//!
//! The layout accepts every block size: its formula needs no packing.
//! TRITON_MLA rejecting block size 1 is a backend rule (selection.md).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::MlaDims;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlaLayout {
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_lora_rank: usize,
    pub rope_dim: usize,
    pub dtype: DType,
}

impl MlaLayout {
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        kv_lora_rank: usize,
        rope_dim: usize,
        dtype: DType,
    ) -> Result<Self> {
        for (what, v) in [
            ("num_blocks", num_blocks),
            ("block_size", block_size),
            ("kv_lora_rank", kv_lora_rank),
        ] {
            if v == 0 {
                return Err(Error::invalid(what, 0, "must be >= 1"));
            }
        }
        let numel = kv_lora_rank
            .checked_add(rope_dim)
            .and_then(|w| w.checked_mul(block_size))
            .and_then(|n| n.checked_mul(num_blocks));
        if numel.is_none() {
            return Err(Error::invalid(
                "cache size",
                format!("{num_blocks} blocks x {block_size} x ({kv_lora_rank} + {rope_dim})"),
                format!("the element count must fit in {} bits", usize::BITS),
            ));
        }
        Ok(MlaLayout {
            num_blocks,
            block_size,
            kv_lora_rank,
            rope_dim,
            dtype,
        })
    }

    /// The layout for a model's MLA dimensions (DeepSeek: 512 + 64 = 576).
    pub fn for_dims(
        dims: &MlaDims,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
    ) -> Result<Self> {
        Self::new(
            num_blocks,
            block_size,
            dims.kv_lora_rank,
            dims.qk_rope_head_dim,
            dtype,
        )
    }

    /// Elements per cached token: `kv_lora_rank + rope_dim`.
    pub fn width(&self) -> usize {
        self.kv_lora_rank + self.rope_dim
    }

    pub fn block_numel(&self) -> usize {
        self.block_size * self.width()
    }

    pub fn numel(&self) -> usize {
        self.num_blocks * self.block_numel()
    }

    pub fn shape(&self) -> Vec<usize> {
        vec![self.num_blocks, self.block_size, self.width()]
    }

    /// Channels holding the latent `c_kv`.
    pub fn c_kv_range(&self) -> std::ops::Range<usize> {
        0..self.kv_lora_rank
    }

    /// Channels holding the rotary key part `k_pe`.
    pub fn k_pe_range(&self) -> std::ops::Range<usize> {
        self.kv_lora_rank..self.width()
    }

    #[inline]
    pub fn offset(&self, block: usize, row: usize, c: usize) -> usize {
        (block * self.block_size + row) * self.width() + c
    }

    /// [`MlaLayout::offset`] for user-given coordinates.
    pub fn checked_offset(&self, block: usize, row: usize, c: usize) -> Result<usize> {
        for (what, v, n) in [
            ("block", block, self.num_blocks),
            ("row", row, self.block_size),
            ("channel", c, self.width()),
        ] {
            if v >= n {
                return Err(Error::invalid(
                    what,
                    v,
                    format!("allowed range is [0, {n})"),
                ));
            }
        }
        Ok(self.offset(block, row, c))
    }

    /// The inverse map: (block, row, channel) of element `offset`.
    pub fn index_of(&self, offset: usize) -> Result<(usize, usize, usize)> {
        if offset >= self.numel() {
            return Err(Error::invalid(
                "offset",
                offset,
                format!("allowed range is [0, {})", self.numel()),
            ));
        }
        let w = self.width();
        Ok((
            offset / self.block_numel(),
            offset / w % self.block_size,
            offset % w,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepseek_entry_is_576_wide_with_k_pe_last() {
        let dims = crate::model::preset("deepseek-r1").unwrap().mla.unwrap();
        let l = MlaLayout::for_dims(&dims, 4, 16, DType::Bf16).unwrap();
        assert_eq!(l.shape(), vec![4, 16, 576]);
        assert_eq!(l.k_pe_range(), 512..576);
        assert_eq!(l.offset(1, 2, 512), 16 * 576 + 2 * 576 + 512);
        assert_eq!(l.index_of(l.offset(3, 15, 575)).unwrap(), (3, 15, 575));
    }

    #[test]
    fn accepts_block_size_one_and_rejects_zero() {
        assert!(MlaLayout::new(1, 1, 512, 64, DType::Bf16).is_ok());
        let e = MlaLayout::new(1, 0, 512, 64, DType::Bf16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("block_size 0"), "{e}");
    }

    #[test]
    fn checked_offset_names_the_coordinate_out_of_range() {
        let l = MlaLayout::new(2, 16, 512, 64, DType::Bf16).unwrap();
        let e = l.checked_offset(0, 0, 576).unwrap_err().to_string();
        assert!(e.contains("channel 576") && e.contains("[0, 576)"), "{e}");
    }
}
