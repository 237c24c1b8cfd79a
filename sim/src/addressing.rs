//! Index arithmetic in the integer width the real kernel computes it in
//! (issue 14). The emulator addresses its caches in `usize`; a GPU kernel
//! computes `page * stride` in whatever width its operands have, and four
//! bugs that reached users were a product taken in 32 (or 16) bits. Each
//! function here is one kernel's address formula, evaluated as that kernel
//! evaluates it: exact (64-bit) as the fixed kernels do, or wrapped when the
//! matching [`Fault`] is injected.
//!
//! Wrapping only shows on caches of 2^31 elements or more (or 65,536 blocks),
//! which the emulator never allocates: a launch calls [`check_extent`] with
//! its cache's shape and refuses one whose last element the kernel would
//! address wrongly, and the zoo's `kernel_index_arithmetic_is_exact`
//! property calls the same function on virtual shapes (a cache described by
//! its sizes only, up to 2^26 blocks), so the faults are found without a
//! byte of cache behind them.

use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::{Fault, FaultSet};

/// The kernels whose address arithmetic is modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressedKernel {
    /// vLLM's Triton MLA decode (`_fwd_grouped_kernel_stage1`): latent row
    /// offset `kv_page_number * stride_page + row * stride_token`.
    TritonMlaDecode,
    /// AITER's asm MLA decode: page address `page_id * page_stride`.
    AiterMlaDecode,
    /// FlexAttention's paged read: `((block * B + row) * H + head) * D + dim`.
    FlexPaged,
    /// AITER's paged decode reading a block id from the block table.
    AiterBlockTable,
}

impl AddressedKernel {
    pub const ALL: [AddressedKernel; 4] = [
        AddressedKernel::TritonMlaDecode,
        AddressedKernel::AiterMlaDecode,
        AddressedKernel::FlexPaged,
        AddressedKernel::AiterBlockTable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AddressedKernel::TritonMlaDecode => "triton MLA decode",
            AddressedKernel::AiterMlaDecode => "AITER mla_decode_fwd",
            AddressedKernel::FlexPaged => "FlexAttention paged",
            AddressedKernel::AiterBlockTable => "AITER paged attention",
        }
    }
}

/// A cache as an address formula sees it: `num_blocks` blocks (pages) of
/// `block_size` rows of `row_elems` elements (`heads * head_size`, or the
/// MLA latent width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheExtent {
    pub num_blocks: usize,
    pub block_size: usize,
    pub row_elems: usize,
}

/// `x` as an int32 register holds it (two's complement wrap).
#[inline]
fn i32_wrap(x: i128) -> i64 {
    x as i32 as i64
}

/// The element offset `kernel` computes for row `row` of block (page)
/// `block` of `extent`, element `elem` of the row. Exact unless the
/// kernel's fault is in `faults`; `None` when the exact offset exceeds
/// `i64` (no admitted cache is that large).
pub fn element_offset(
    kernel: AddressedKernel,
    extent: CacheExtent,
    block: usize,
    row: usize,
    elem: usize,
    faults: FaultSet,
) -> Option<i64> {
    let (b, bs, w) = (
        block as i128,
        extent.block_size as i128,
        extent.row_elems as i128,
    );
    let (r, e) = (row as i128, elem as i128);
    let exact = b * bs * w + r * w + e;
    i64::try_from(exact).ok()?;
    Some(match kernel {
        // page number (int32 load) * stride (int32 arg): int32 product.
        AddressedKernel::TritonMlaDecode if faults.has(Fault::TritonMlaPageStrideI32) => {
            i32_wrap(b * (bs * w)) + (r * w + e) as i64
        }
        AddressedKernel::AiterMlaDecode if faults.has(Fault::AiterPageAddressMul32) => {
            i32_wrap(b * (bs * w)) + (r * w + e) as i64
        }
        // Every term in int32: the whole offset wraps.
        AddressedKernel::FlexPaged if faults.has(Fault::FlexPagedOffsetI32) => i32_wrap(exact),
        // The block id is read as 16 bits, then addressed exactly.
        AddressedKernel::AiterBlockTable if faults.has(Fault::BlockIdU16) => {
            ((b as u16 as i128) * bs * w + r * w + e) as i64
        }
        _ => exact as i64,
    })
}

/// The check a launch makes: the kernel addresses the last element of the
/// last block of `extent` where it is. Names the kernel, the block and both
/// offsets when it does not (the GPU would read another block, or fault).
pub fn check_extent(kernel: AddressedKernel, extent: CacheExtent, faults: FaultSet) -> Result<()> {
    if extent.num_blocks == 0 || extent.block_size == 0 || extent.row_elems == 0 {
        return Ok(());
    }
    let (block, row, elem) = (
        extent.num_blocks - 1,
        extent.block_size - 1,
        extent.row_elems - 1,
    );
    let exact = (block as i128 * extent.block_size as i128 + row as i128)
        * extent.row_elems as i128
        + elem as i128;
    match element_offset(kernel, extent, block, row, elem, faults) {
        Some(got) if got as i128 == exact => Ok(()),
        got => Err(Error::unsupported(
            format!(
                "{} over {} blocks of {} x {} elements",
                kernel.name(),
                extent.num_blocks,
                extent.block_size,
                extent.row_elems
            ),
            format!(
                "block {block}'s last element is at offset {exact}, the kernel's index arithmetic gives {}",
                got.map_or("an overflow".to_string(), |g| g.to_string())
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: CacheExtent = CacheExtent {
        num_blocks: 1 << 20,
        block_size: 16,
        row_elems: 576,
    };

    #[test]
    fn without_faults_every_kernel_addresses_exactly() {
        for k in AddressedKernel::ALL {
            assert!(check_extent(k, BIG, FaultSet::NONE).is_ok(), "{k:?}");
        }
    }

    #[test]
    fn each_width_fault_breaks_only_its_kernel_past_its_boundary() {
        let cases = [
            (
                Fault::TritonMlaPageStrideI32,
                AddressedKernel::TritonMlaDecode,
            ),
            (
                Fault::AiterPageAddressMul32,
                AddressedKernel::AiterMlaDecode,
            ),
            (Fault::FlexPagedOffsetI32, AddressedKernel::FlexPaged),
            (Fault::BlockIdU16, AddressedKernel::AiterBlockTable),
        ];
        for (f, broken) in cases {
            for k in AddressedKernel::ALL {
                let r = check_extent(k, BIG, FaultSet::only(f));
                assert_eq!(r.is_err(), k == broken, "{f} on {k:?}: {r:?}");
            }
        }
        // 65,536 blocks: ids 0..=65535 fit in 16 bits; one more does not.
        let at = |n| CacheExtent {
            num_blocks: n,
            block_size: 1,
            row_elems: 1,
        };
        let f = FaultSet::only(Fault::BlockIdU16);
        assert!(check_extent(AddressedKernel::AiterBlockTable, at(65_536), f).is_ok());
        let e = check_extent(AddressedKernel::AiterBlockTable, at(65_537), f).unwrap_err();
        assert!(e.to_string().contains("block 65536"), "{e}");
    }
}
