//! Paged KV memory, as vLLM's KV-cache manager and `BlockTable` see it
//! (vllm-backends.md §1.3-§1.4).
//!
//! ```text
//!  BlockPool (num_blocks physical blocks, ref-counted)
//!      |  allocate() as a sequence grows, free() when it finishes
//!      v
//!  BlockTable of request r:  logical block j  ->  physical block id
//!      |  slot = block_table[pos / block_size] * block_size + pos % block_size
//!      v
//!  slot_mapping: one flat slot per new token (-1 = padding, writers skip it)
//! ```
//!
//! The manager's block size can be larger than a kernel accepts (hybrid models:
//! 544 tokens per block). [`KernelBlockSplit`] cuts each manager block into
//! `r = manager / kernel` kernel blocks, `kernel id = manager id * r + j`.
//! A slot number is the same in both views: `(m*r + o/k)*k + o%k = m*M + o`.

use crate::error::{Error, Result};
use crate::fault::{Fault, FaultSet};
use crate::metadata::{BlockTableTensor, PAD_SLOT_ID};
use serde::Serialize;
use std::collections::VecDeque;

/// Physical KV blocks with reference counts (a block shared by two
/// sequences, e.g. a common prefix, is freed when its last user frees it).
#[derive(Debug, Clone)]
pub struct BlockPool {
    ref_counts: Vec<u32>,
    /// Free block ids, handed out from the front (vLLM's free-block queue).
    free: VecDeque<usize>,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Result<Self> {
        if num_blocks == 0 {
            return Err(Error::invalid("num_blocks", 0, "must be >= 1"));
        }
        // Block ids end up in int32 block tables.
        if num_blocks > i32::MAX as usize {
            return Err(Error::invalid(
                "num_blocks",
                num_blocks,
                format!("allowed range is [1, {}]", i32::MAX),
            ));
        }
        Ok(BlockPool {
            ref_counts: vec![0; num_blocks],
            free: (0..num_blocks).collect(),
        })
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Takes one free block (reference count 1).
    pub fn allocate(&mut self) -> Result<usize> {
        let id = self.free.pop_front().ok_or_else(|| {
            Error::unsupported(
                "allocating a KV block",
                format!(
                    "the pool is exhausted: all {} blocks are in use",
                    self.num_blocks()
                ),
            )
        })?;
        self.ref_counts[id] = 1;
        Ok(id)
    }

    /// Takes `n` blocks, all or none.
    pub fn allocate_n(&mut self, n: usize) -> Result<Vec<usize>> {
        if n > self.num_free() {
            return Err(Error::unsupported(
                format!("allocating {n} KV blocks"),
                format!(
                    "only {} of {} blocks are free",
                    self.num_free(),
                    self.num_blocks()
                ),
            ));
        }
        (0..n).map(|_| self.allocate()).collect()
    }

    /// Adds a user to an allocated block (prefix sharing).
    pub fn share(&mut self, id: usize) -> Result<()> {
        self.check_allocated(id)?;
        self.ref_counts[id] += 1;
        Ok(())
    }

    /// Drops one user; the block returns to the free queue when none is left.
    pub fn free(&mut self, id: usize) -> Result<()> {
        self.check_allocated(id)?;
        self.ref_counts[id] -= 1;
        if self.ref_counts[id] == 0 {
            self.free.push_back(id);
        }
        Ok(())
    }

    pub fn ref_count(&self, id: usize) -> Result<u32> {
        self.check_id(id)?;
        Ok(self.ref_counts[id])
    }

    fn check_id(&self, id: usize) -> Result<()> {
        if id >= self.num_blocks() {
            return Err(Error::invalid(
                "block id",
                id,
                format!("allowed range is [0, {})", self.num_blocks()),
            ));
        }
        Ok(())
    }

    fn check_allocated(&self, id: usize) -> Result<()> {
        self.check_id(id)?;
        if self.ref_counts[id] == 0 {
            return Err(Error::invalid(
                "block id",
                id,
                "the block is free (double free, or never allocated)",
            ));
        }
        Ok(())
    }
}

/// One sequence's logical -> physical block map, in manager blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTable {
    block_size: usize,
    blocks: Vec<usize>,
    num_tokens: usize,
}

impl BlockTable {
    pub fn new(block_size: usize) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::invalid("block_size", 0, "must be >= 1"));
        }
        Ok(BlockTable {
            block_size,
            blocks: Vec::new(),
            num_tokens: 0,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Tokens the table has room reserved for.
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Physical block ids, logical order.
    pub fn blocks(&self) -> &[usize] {
        &self.blocks
    }

    /// Blocks `n` more tokens would need on top of those already reserved.
    pub fn blocks_needed(&self, n: usize) -> usize {
        (self.num_tokens + n)
            .div_ceil(self.block_size)
            .saturating_sub(self.blocks.len())
    }

    /// Reserves `n` more tokens, allocating blocks as needed (all or none).
    pub fn append_tokens(&mut self, n: usize, pool: &mut BlockPool) -> Result<()> {
        let new = pool.allocate_n(self.blocks_needed(n))?;
        self.blocks.extend(new);
        self.num_tokens += n;
        Ok(())
    }

    /// Returns every block to the pool and empties the table.
    pub fn free_all(&mut self, pool: &mut BlockPool) -> Result<()> {
        for &b in &self.blocks {
            pool.free(b)?;
        }
        self.blocks.clear();
        self.num_tokens = 0;
        Ok(())
    }

    /// The flat slot of token position `pos`.
    pub fn slot(&self, pos: usize) -> Result<i64> {
        if pos >= self.num_tokens {
            return Err(Error::invalid(
                "token position",
                pos,
                format!(
                    "allowed range is [0, {}) (tokens reserved)",
                    self.num_tokens
                ),
            ));
        }
        Ok((self.blocks[pos / self.block_size] * self.block_size + pos % self.block_size) as i64)
    }

    /// Slots of the positions `range` (the step's new tokens).
    pub fn slot_mapping(&self, range: std::ops::Range<usize>) -> Result<Vec<i64>> {
        range.map(|pos| self.slot(pos)).collect()
    }
}

/// Pads a slot mapping to `len` entries with `-1` (CUDA-graph padding).
pub fn pad_slot_mapping(slots: &mut Vec<i64>, len: usize) -> Result<()> {
    if len < slots.len() {
        return Err(Error::invalid(
            "padded slot_mapping length",
            len,
            format!("must be >= the {} real tokens", slots.len()),
        ));
    }
    slots.resize(len, PAD_SLOT_ID);
    Ok(())
}

/// One entry of a backend's `get_supported_kernel_block_sizes()`: an exact
/// kernel block size (int) or `MultipleOf(base)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KernelBlockSize {
    /// Exactly this size (e.g. ROCM_AITER_FA's 16 and 32).
    Exact(usize),
    /// Any multiple of this size (`MultipleOf(16)`).
    MultipleOf(usize),
}

impl std::fmt::Display for KernelBlockSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelBlockSize::Exact(n) => write!(f, "{n}"),
            KernelBlockSize::MultipleOf(n) => write!(f, "MultipleOf({n})"),
        }
    }
}

/// vLLM's `select_common_block_size` for one backend (§1.4): the manager size
/// itself if the backend accepts it, else the largest explicit size dividing
/// it (ROCM_AITER_FA `[16, 32]`: 544 -> 32, 64 -> 32); `None` when no size fits.
pub fn common_block_size(
    manager_block_size: usize,
    supported: &[KernelBlockSize],
) -> Option<usize> {
    common_block_size_with(manager_block_size, supported, FaultSet::NONE)
}

/// [`common_block_size`] with `faults` injected
/// ([`Fault::HybridBlockSizeValidation`]: the manager size is validated as
/// if it were the kernel block size, so a hybrid size such as 544 that
/// only splits into 32s is refused).
pub fn common_block_size_with(
    manager_block_size: usize,
    supported: &[KernelBlockSize],
    faults: FaultSet,
) -> Option<usize> {
    if manager_block_size == 0 {
        return None;
    }
    let accepts = |s: &KernelBlockSize| match *s {
        KernelBlockSize::Exact(n) => n == manager_block_size,
        KernelBlockSize::MultipleOf(n) => n > 0 && manager_block_size.is_multiple_of(n),
    };
    if supported.iter().any(accepts) {
        return Some(manager_block_size);
    }
    if faults.has(Fault::HybridBlockSizeValidation) {
        return None;
    }
    supported
        .iter()
        .filter_map(|s| match *s {
            KernelBlockSize::Exact(n) if n > 0 && manager_block_size.is_multiple_of(n) => Some(n),
            _ => None,
        })
        .max()
}

/// [`common_block_size`] as a backend's setup calls it: vLLM's "No common
/// block size" error naming the backend and its sizes when none fits.
pub fn select_kernel_block_size(
    manager_block_size: usize,
    backend: &str,
    supported: &[KernelBlockSize],
) -> Result<usize> {
    if manager_block_size == 0 {
        return Err(Error::invalid("block_size", 0, "must be >= 1"));
    }
    common_block_size(manager_block_size, supported).ok_or_else(|| {
        let sizes: Vec<String> = supported.iter().map(|s| s.to_string()).collect();
        Error::unsupported(
            format!("block size {manager_block_size}"),
            format!(
                "No common block size for {manager_block_size} ({backend}: [{}])",
                sizes.join(", ")
            ),
        )
    })
}

/// Manager block -> kernel blocks: `kernel id = manager id * r + j`, `j < r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelBlockSplit {
    pub manager_block_size: usize,
    pub kernel_block_size: usize,
}

impl KernelBlockSplit {
    pub fn new(manager_block_size: usize, kernel_block_size: usize) -> Result<Self> {
        if manager_block_size == 0 || kernel_block_size == 0 {
            return Err(Error::invalid(
                "block sizes",
                format!("manager {manager_block_size}, kernel {kernel_block_size}"),
                "both must be >= 1",
            ));
        }
        if !manager_block_size.is_multiple_of(kernel_block_size) {
            return Err(Error::invalid(
                "kernel block size",
                kernel_block_size,
                format!("must divide the manager block size {manager_block_size}"),
            ));
        }
        Ok(KernelBlockSplit {
            manager_block_size,
            kernel_block_size,
        })
    }

    /// Kernel blocks per manager block.
    pub fn ratio(&self) -> usize {
        self.manager_block_size / self.kernel_block_size
    }

    /// The kernel block ids of a table of manager blocks.
    pub fn kernel_blocks(&self, manager_blocks: &[usize]) -> Vec<usize> {
        let r = self.ratio();
        manager_blocks
            .iter()
            .flat_map(|&m| (0..r).map(move |j| m * r + j))
            .collect()
    }

    /// Kernel blocks in a cache of `num_manager_blocks` manager blocks.
    pub fn num_kernel_blocks(&self, num_manager_blocks: usize) -> usize {
        num_manager_blocks * self.ratio()
    }
}

/// Builds `block_table_tensor` (int32 `[num_reqs, max_blocks]`, kernel block
/// ids, zero-padded) from per-request manager block lists.
pub fn block_table_tensor(rows: &[&[usize]], split: KernelBlockSplit) -> Result<BlockTableTensor> {
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let ids = split.kernel_blocks(row);
        let row32: Result<Vec<i32>> = ids
            .iter()
            .map(|&b| {
                i32::try_from(b).map_err(|_| {
                    Error::invalid(
                        format!("block_table[{i}] kernel block id"),
                        b,
                        format!("must be <= {}", i32::MAX),
                    )
                })
            })
            .collect();
        out.push(row32?);
    }
    Ok(BlockTableTensor::from_rows(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hybrid_validation_fault_drops_only_the_divisor_fallback() {
        let fa = [KernelBlockSize::Exact(16), KernelBlockSize::Exact(32)];
        let bad = FaultSet::only(Fault::HybridBlockSizeValidation);
        for (m, want) in [
            (16, Some(16)),
            (32, Some(32)),
            (544, Some(32)),
            (48, Some(16)),
        ] {
            assert_eq!(common_block_size_with(m, &fa, FaultSet::NONE), want, "{m}");
            let exact = matches!(m, 16 | 32);
            assert_eq!(common_block_size_with(m, &fa, bad).is_some(), exact, "{m}");
        }
        let any16 = [KernelBlockSize::MultipleOf(16)];
        assert_eq!(common_block_size_with(1056, &any16, bad), Some(1056));
    }

    #[test]
    fn double_free_is_an_error_naming_the_block() {
        let mut pool = BlockPool::new(2).unwrap();
        let b = pool.allocate().unwrap();
        pool.free(b).unwrap();
        let e = pool.free(b).unwrap_err().to_string();
        assert!(
            e.contains(&format!("block id {b}")) && e.contains("double free"),
            "{e}"
        );
    }

    #[test]
    fn unknown_block_id_names_the_range() {
        let mut pool = BlockPool::new(4).unwrap();
        let e = pool.free(9).unwrap_err().to_string();
        assert!(e.contains("block id 9") && e.contains("[0, 4)"), "{e}");
    }

    #[test]
    fn shared_block_survives_until_last_free() {
        let mut pool = BlockPool::new(1).unwrap();
        let b = pool.allocate().unwrap();
        pool.share(b).unwrap();
        pool.free(b).unwrap();
        assert_eq!((pool.ref_count(b).unwrap(), pool.num_free()), (1, 0));
        pool.free(b).unwrap();
        assert_eq!((pool.ref_count(b).unwrap(), pool.num_free()), (0, 1));
    }

    #[test]
    fn exhausted_pool_allocates_nothing() {
        let mut pool = BlockPool::new(3).unwrap();
        let mut t = BlockTable::new(16).unwrap();
        t.append_tokens(33, &mut pool).unwrap();
        let e = t.append_tokens(16, &mut pool).unwrap_err().to_string();
        assert!(e.contains("only 0 of 3 blocks are free"), "{e}");
        assert_eq!((t.num_tokens(), t.blocks().len()), (33, 3));
    }

    #[test]
    fn slot_is_block_times_size_plus_offset() {
        let mut pool = BlockPool::new(8).unwrap();
        let mut other = BlockTable::new(4).unwrap();
        other.append_tokens(4, &mut pool).unwrap(); // takes block 0
        let mut t = BlockTable::new(4).unwrap();
        t.append_tokens(6, &mut pool).unwrap(); // blocks 1, 2
        assert_eq!(t.slot_mapping(3..6).unwrap(), vec![7, 8, 9]);
        let e = t.slot(6).unwrap_err().to_string();
        assert!(
            e.contains("token position 6") && e.contains("[0, 6)"),
            "{e}"
        );
    }

    #[test]
    fn aiter_fa_splits_544_into_17_blocks_of_32() {
        let fa = [KernelBlockSize::Exact(16), KernelBlockSize::Exact(32)];
        assert_eq!(
            select_kernel_block_size(544, "ROCM_AITER_FA", &fa).unwrap(),
            32
        );
        assert_eq!(
            select_kernel_block_size(64, "ROCM_AITER_FA", &fa).unwrap(),
            32
        );
        assert_eq!(
            select_kernel_block_size(16, "ROCM_AITER_FA", &fa).unwrap(),
            16
        );
        let split = KernelBlockSplit::new(544, 32).unwrap();
        assert_eq!(split.ratio(), 17);
        assert_eq!(split.kernel_blocks(&[2])[..2], [34, 35]);
    }

    #[test]
    fn no_common_block_size_is_vllms_error() {
        let e = select_kernel_block_size(
            8,
            "ROCM_AITER_FA",
            &[KernelBlockSize::Exact(16), KernelBlockSize::Exact(32)],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("No common block size for 8 (ROCM_AITER_FA: [16, 32])"),
            "{e}"
        );
    }

    #[test]
    fn slots_are_the_same_in_manager_and_kernel_blocks() {
        let split = KernelBlockSplit::new(544, 32).unwrap();
        let manager = [5usize, 1];
        let kernel = split.kernel_blocks(&manager);
        for pos in [0usize, 31, 32, 543, 544, 1000] {
            let m = manager[pos / 544] * 544 + pos % 544;
            let k = kernel[pos / 32] * 32 + pos % 32;
            assert_eq!(m, k, "pos {pos}");
        }
    }

    #[test]
    fn block_table_tensor_pads_rows_with_zero() {
        let t =
            block_table_tensor(&[&[3], &[1, 2]], KernelBlockSplit::new(16, 16).unwrap()).unwrap();
        assert_eq!(
            (t.num_rows, t.max_blocks, t.data.clone()),
            (2, 2, vec![3, 0, 1, 2])
        );
    }
}
