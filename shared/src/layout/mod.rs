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
//!
//! Every block occupies exactly `bs * h * d` elements in every layout: the
//! shuffles are purely intra-block, so block ids, block tables and slot
//! mappings mean the same thing whatever the layout (aiter.md §1.1).
//!
//! A layout only rejects sizes its *formulas* cannot express (`d % x` for the
//! `[d/x, .., x]` split of K, `bs % x` for the `[bs/x, .., x]` split of the
//! shuffled V). Rules such as "ROCM_ATTN needs a block size multiple of 16"
//! are backend rules and live with the backends.

pub mod mla;

use crate::dtype::DType;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Names accepted by [`LayoutKind::parse`], in `ALL` order.
pub const LAYOUT_NAMES: [&str; 3] = ["nhd", "rocm-paged", "aiter-shuffled"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LayoutKind {
    Nhd,
    RocmPaged,
    AiterShuffled,
}

impl LayoutKind {
    pub const ALL: [LayoutKind; 3] = [
        LayoutKind::Nhd,
        LayoutKind::RocmPaged,
        LayoutKind::AiterShuffled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LayoutKind::Nhd => "nhd",
            LayoutKind::RocmPaged => "rocm-paged",
            LayoutKind::AiterShuffled => "aiter-shuffled",
        }
    }

    /// Parses a layout name (the names of [`LayoutKind::name`]), naming the
    /// allowed ones when it fails.
    pub fn parse(name: &str) -> Result<Self> {
        LayoutKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                Error::invalid(
                    "layout",
                    format!("'{name}'"),
                    format!("allowed: {}", LAYOUT_NAMES.join(", ")),
                )
            })
    }
}

impl std::fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which of the two cache tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvSide {
    K,
    V,
}

/// A logical cache coordinate: physical block, row (token) in the block,
/// kv head, channel. The same for every layout; only its offset differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KvIndex {
    pub block: usize,
    pub row: usize,
    pub head: usize,
    pub dim: usize,
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
    pub fn new(
        kind: LayoutKind,
        num_blocks: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_size: usize,
        dtype: DType,
    ) -> Result<Self> {
        for (what, v) in [
            ("num_blocks", num_blocks),
            ("block_size", block_size),
            ("num_kv_heads", num_kv_heads),
            ("head_size", head_size),
        ] {
            if v == 0 {
                return Err(Error::invalid(what, 0, "must be >= 1"));
            }
        }
        let l = KvLayout {
            kind,
            num_blocks,
            block_size,
            num_kv_heads,
            head_size,
            dtype,
        };
        // Offsets are usize: the whole tensor must be addressable.
        if num_blocks
            .checked_mul(block_size)
            .and_then(|n| n.checked_mul(num_kv_heads))
            .and_then(|n| n.checked_mul(head_size))
            .is_none()
        {
            return Err(Error::invalid(
                "cache size",
                format!("{num_blocks} blocks x {block_size} x {num_kv_heads} x {head_size}"),
                format!("the element count must fit in {} bits", usize::BITS),
            ));
        }
        let x = l.x();
        match kind {
            LayoutKind::Nhd => {}
            LayoutKind::RocmPaged | LayoutKind::AiterShuffled => {
                if !head_size.is_multiple_of(x) {
                    return Err(Error::invalid(
                        "head_size",
                        head_size,
                        format!("the {} layout packs K as [.., d/x, bs, x] with x = {x} for {}: head_size must be a multiple of {x}", kind.name(), dtype),
                    ));
                }
                if kind == LayoutKind::AiterShuffled && !block_size.is_multiple_of(x) {
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
        let (nb, bs, h, d, x) = (
            self.num_blocks,
            self.block_size,
            self.num_kv_heads,
            self.head_size,
            self.x(),
        );
        match self.kind {
            LayoutKind::Nhd => vec![nb, bs, h, d],
            LayoutKind::RocmPaged | LayoutKind::AiterShuffled => vec![nb, h, d / x, bs, x],
        }
    }

    pub fn v_shape(&self) -> Vec<usize> {
        let (nb, bs, h, d, x) = (
            self.num_blocks,
            self.block_size,
            self.num_kv_heads,
            self.head_size,
            self.x(),
        );
        match self.kind {
            LayoutKind::Nhd => vec![nb, bs, h, d],
            LayoutKind::RocmPaged => vec![nb, h, d, bs],
            LayoutKind::AiterShuffled => vec![nb, h, bs / x, d, x],
        }
    }

    /// The offset of `side` at `at`.
    #[inline]
    pub fn offset(&self, side: KvSide, at: KvIndex) -> usize {
        match side {
            KvSide::K => self.k_offset(at.block, at.row, at.head, at.dim),
            KvSide::V => self.v_offset(at.block, at.row, at.head, at.dim),
        }
    }

    /// [`KvLayout::offset`] for user-given coordinates: each must lie in its range.
    pub fn checked_offset(&self, side: KvSide, at: KvIndex) -> Result<usize> {
        self.check_index(at)?;
        Ok(self.offset(side, at))
    }

    /// Rejects a coordinate outside the cache, naming the coordinate and its range.
    pub fn check_index(&self, at: KvIndex) -> Result<()> {
        for (what, v, n) in [
            ("block", at.block, self.num_blocks),
            ("row", at.row, self.block_size),
            ("kv head", at.head, self.num_kv_heads),
            ("dim", at.dim, self.head_size),
        ] {
            if v >= n {
                return Err(Error::invalid(
                    what,
                    v,
                    format!("allowed range is [0, {n})"),
                ));
            }
        }
        Ok(())
    }

    /// The inverse map: which (block, row, head, dim) lives at element `offset`
    /// of the `side` tensor (aiter.md §1.2 gives the shuffled inverses).
    pub fn index_of(&self, side: KvSide, offset: usize) -> Result<KvIndex> {
        if offset >= self.numel() {
            return Err(Error::invalid(
                "offset",
                offset,
                format!("allowed range is [0, {})", self.numel()),
            ));
        }
        let (bs, h, d) = (self.block_size, self.num_kv_heads, self.head_size);
        let (block, in_block) = (offset / self.block_numel(), offset % self.block_numel());
        let at = match (self.kind, side) {
            (LayoutKind::Nhd, _) => KvIndex {
                block,
                row: in_block / (h * d),
                head: in_block / d % h,
                dim: in_block % d,
            },
            (LayoutKind::RocmPaged, KvSide::V) => {
                let (head, o) = (in_block / (d * bs), in_block % (d * bs));
                KvIndex {
                    block,
                    row: o % bs,
                    head,
                    dim: o / bs,
                }
            }
            (LayoutKind::RocmPaged | LayoutKind::AiterShuffled, KvSide::K) => {
                let (x, head, o) = (self.x(), in_block / (d * bs), in_block % (d * bs));
                KvIndex {
                    block,
                    row: o % (bs * x) / x,
                    head,
                    dim: o / (bs * x) * x + o % x,
                }
            }
            (LayoutKind::AiterShuffled, KvSide::V) => {
                let (x, head, o) = (self.x(), in_block / (d * bs), in_block % (d * bs));
                KvIndex {
                    block,
                    row: o / (d * x) * x + o % x,
                    head,
                    dim: o % (d * x) / x,
                }
            }
        };
        Ok(at)
    }

    /// The tensor shape of `side`.
    pub fn shape(&self, side: KvSide) -> Vec<usize> {
        match side {
            KvSide::K => self.k_shape(),
            KvSide::V => self.v_shape(),
        }
    }

    /// The multi-dimensional index of `at` in [`KvLayout::shape`]`(side)`
    /// (what a kernel author writes as `k_cache[b, h, d // x, row, d % x]`).
    pub fn nd_index(&self, side: KvSide, at: KvIndex) -> Vec<usize> {
        let x = self.x();
        let KvIndex {
            block,
            row,
            head,
            dim,
        } = at;
        match (self.kind, side) {
            (LayoutKind::Nhd, _) => vec![block, row, head, dim],
            (LayoutKind::RocmPaged | LayoutKind::AiterShuffled, KvSide::K) => {
                vec![block, head, dim / x, row, dim % x]
            }
            (LayoutKind::RocmPaged, KvSide::V) => vec![block, head, dim, row],
            (LayoutKind::AiterShuffled, KvSide::V) => vec![block, head, row / x, dim, row % x],
        }
    }

    /// Scatters a canonical NHD tensor `[nb, bs, h, d]` into this layout.
    /// For the NHD layout this is a copy; for the others it is the pure
    /// permutation a writer kernel performs, so it is exact for any `T`.
    pub fn from_nhd<T: Copy + Default>(&self, side: KvSide, nhd: &[T]) -> Result<Vec<T>> {
        self.check_len("NHD tensor length", nhd.len())?;
        let mut out = vec![T::default(); nhd.len()];
        for (i, &v) in nhd.iter().enumerate() {
            out[self.offset(side, self.nhd_index(i))] = v;
        }
        Ok(out)
    }

    /// Gathers this layout back into canonical NHD `[nb, bs, h, d]`.
    pub fn to_nhd<T: Copy + Default>(&self, side: KvSide, data: &[T]) -> Result<Vec<T>> {
        self.check_len("cache tensor length", data.len())?;
        Ok((0..data.len())
            .map(|i| data[self.offset(side, self.nhd_index(i))])
            .collect())
    }

    /// The coordinate of element `i` of a canonical NHD tensor (i < numel).
    fn nhd_index(&self, i: usize) -> KvIndex {
        let (bs, h, d) = (self.block_size, self.num_kv_heads, self.head_size);
        KvIndex {
            block: i / (bs * h * d),
            row: i / (h * d) % bs,
            head: i / d % h,
            dim: i % d,
        }
    }

    fn check_len(&self, what: &str, len: usize) -> Result<()> {
        if len != self.numel() {
            return Err(Error::invalid(
                what,
                len,
                format!(
                    "must be num_blocks*block_size*num_kv_heads*head_size = {}",
                    self.numel()
                ),
            ));
        }
        Ok(())
    }
}
