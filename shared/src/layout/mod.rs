//! KV-cache layouts: each maps (block, row-in-block, kv head, dim) to an
//! element offset for K and for V, and reports its tensor shapes.
//! Formulas: vllm-backends.md §2.2 and aiter.md §1.2. Offsets are `usize`
//! (64-bit): a cache can exceed 2^31 elements.
//!
//! | layout | K | V |
//! |---|---|---|
//! | `Nhd` (flash / canonical) | `[nb, bs, h, d]` | `[nb, bs, h, d]` |
//! | `RocmPaged` (vLLM x-packed, ROCM_ATTN) | `[nb, h, d/x, bs, x]` | `[nb, h, d, bs]` |
//! | `AiterShuffled` (ROCM_AITER_FA shuffle) | `[nb, h, d/x, bs, x]` | `[nb, h, bs/x, d, x]` |
//!
//! with `x = 16 bytes / element size` (8 for f16/bf16, 16 for fp8, 4 for f32).
//! The MLA latent cache has a single tensor and lives in [`mla`].

use crate::dtype::DType;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LayoutKind {
    Nhd,
    RocmPaged,
    AiterShuffled,
}

impl LayoutKind {
    pub const ALL: [LayoutKind; 3] = [LayoutKind::Nhd, LayoutKind::RocmPaged, LayoutKind::AiterShuffled];

    pub fn name(self) -> &'static str {
        match self {
            LayoutKind::Nhd => "nhd",
            LayoutKind::RocmPaged => "rocm-paged",
            LayoutKind::AiterShuffled => "aiter-shuffled",
        }
    }
}

/// A concrete KV layout: kind plus the sizes its formulas need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvLayout {
    pub kind: LayoutKind,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    /// Cache storage dtype: fixes `x`.
    pub dtype: DType,
}

impl KvLayout {
    /// Validates the sizes against what the layout accepts and says why not.
    pub fn new(kind: LayoutKind, num_blocks: usize, block_size: usize, num_kv_heads: usize, head_size: usize, dtype: DType) -> Result<Self> {
        for (what, v) in [("num_blocks", num_blocks), ("block_size", block_size), ("num_kv_heads", num_kv_heads), ("head_size", head_size)] {
            if v == 0 {
                return Err(Error::invalid(what, 0, "must be >= 1"));
            }
        }
        let l = KvLayout { kind, num_blocks, block_size, num_kv_heads, head_size, dtype };
        let x = l.x();
        match kind {
            LayoutKind::Nhd => {}
            LayoutKind::RocmPaged | LayoutKind::AiterShuffled => {
                if head_size % x != 0 {
                    return Err(Error::invalid(
                        "head_size",
                        head_size,
                        format!("the {} layout packs K as [.., d/x, bs, x] with x = {x} for {}: head_size must be a multiple of {x}", kind.name(), dtype),
                    ));
                }
                if kind == LayoutKind::AiterShuffled && block_size % x != 0 {
                    return Err(Error::invalid(
                        "block_size",
                        block_size,
                        format!("the aiter-shuffled layout packs V as [.., bs/x, d, x] with x = {x} for {}: block_size must be a multiple of {x}", dtype),
                    ));
                }
            }
        }
        Ok(l)
    }

    /// Elements per 16-byte vector.
    pub fn x(&self) -> usize {
        self.dtype.x_pack()
    }

    /// Elements of one block of K (or V) for all kv heads: the same in every layout.
    pub fn block_numel(&self) -> usize {
        self.block_size * self.num_kv_heads * self.head_size
    }

    /// Elements of the whole K (or V) tensor.
    pub fn numel(&self) -> usize {
        self.num_blocks * self.block_numel()
    }

    #[inline]
    pub fn k_offset(&self, block: usize, row: usize, head: usize, dim: usize) -> usize {
        let (bs, h, d) = (self.block_size, self.num_kv_heads, self.head_size);
        match self.kind {
            LayoutKind::Nhd => ((block * bs + row) * h + head) * d + dim,
            LayoutKind::RocmPaged | LayoutKind::AiterShuffled => {
                let x = self.x();
                block * (h * d * bs) + head * (d * bs) + (dim / x) * (bs * x) + row * x + dim % x
            }
        }
    }

    #[inline]
    pub fn v_offset(&self, block: usize, row: usize, head: usize, dim: usize) -> usize {
        let (bs, h, d) = (self.block_size, self.num_kv_heads, self.head_size);
        match self.kind {
            LayoutKind::Nhd => ((block * bs + row) * h + head) * d + dim,
            LayoutKind::RocmPaged => block * (h * d * bs) + head * (d * bs) + dim * bs + row,
            LayoutKind::AiterShuffled => {
                let x = self.x();
                block * (h * d * bs) + head * (d * bs) + (row / x) * (d * x) + dim * x + row % x
            }
        }
    }

    pub fn k_shape(&self) -> Vec<usize> {
        let (nb, bs, h, d, x) = (self.num_blocks, self.block_size, self.num_kv_heads, self.head_size, self.x());
        match self.kind {
            LayoutKind::Nhd => vec![nb, bs, h, d],
            LayoutKind::RocmPaged | LayoutKind::AiterShuffled => vec![nb, h, d / x, bs, x],
        }
    }

    pub fn v_shape(&self) -> Vec<usize> {
        let (nb, bs, h, d, x) = (self.num_blocks, self.block_size, self.num_kv_heads, self.head_size, self.x());
        match self.kind {
            LayoutKind::Nhd => vec![nb, bs, h, d],
            LayoutKind::RocmPaged => vec![nb, h, d, bs],
            LayoutKind::AiterShuffled => vec![nb, h, bs / x, d, x],
        }
    }
}
