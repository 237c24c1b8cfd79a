//! Kernel limits as rules the emulator enforces per target, so that it
//! refuses a launch the real kernel cannot run (or runs wrongly) instead of
//! computing a result no GPU would (issue 14). Each rule names the kernel,
//! the value and what the kernel accepts.
//!
//! | rule | where it comes from |
//! |---|---|
//! | [`arange`] | Triton's `tl.arange(0, N)` needs a power-of-two `N` (BLOCK_M, TILE_SIZE, HEAD_SIZE_PADDED) |
//! | [`lds`] | a workgroup's LDS: 64 KiB on CDNA3 (gfx942), 160 KiB on gfx950 |
//! | [`unified_launch`] | the two above for unified attention: the K and V tiles staged through LDS, `TILE * HEAD_SIZE_PADDED` elements each, one pipeline stage |
//! | [`ll4mi_head_size`] | the HIP ll4mi kernel writes `VHELOOP = head_size / 64` chunks of 64 dims: multiples of 64 only |
//! | [`aiter_pa_block_size`] | AITER's paged-attention decode (ROCM_AITER_FA) takes kernel blocks of 16 and 32 |
//! | [`aiter_mla_page_size`] | AITER's asm MLA stage 1 receives `log2(page_size)`: power-of-two pages |
//! | [`aiter_mla_heads`] | AITER's asm MLA decode runs heads in groups of 16 |
//!
//! The LDS estimate is attnlab's model of the staging (K and V tiles in the
//! cache's loaded dtype), not a compiler's allocation: it is a lower bound
//! a real launch must fit.

use crate::config::AttnConfig;
use crate::kernels::unified_attention::UnifiedLaunch;
use attnlab_shared::error::{Error, Result};

/// The GPU a launch is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Target {
    /// MI300X / MI325X (CDNA3): 64 KiB of LDS per workgroup.
    #[default]
    Gfx942,
    /// MI350 / MI355 (CDNA4): 160 KiB.
    Gfx950,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Gfx942 => "gfx942",
            Target::Gfx950 => "gfx950",
        }
    }

    /// LDS bytes one workgroup may allocate.
    pub fn lds_bytes(self) -> usize {
        match self {
            Target::Gfx942 => 64 * 1024,
            Target::Gfx950 => 160 * 1024,
        }
    }
}

/// `tl.arange(0, n)`: `n` must be a power of two.
pub fn arange(kernel: &str, what: &str, n: usize) -> Result<()> {
    if n.is_power_of_two() {
        return Ok(());
    }
    Err(Error::unsupported(
        format!("{kernel} with {what} = {n}"),
        format!(
            "tl.arange extents must be powers of two ({} or {} would be)",
            n.checked_next_power_of_two().map_or(0, |p| p / 2).max(1),
            n.checked_next_power_of_two().unwrap_or(usize::MAX)
        ),
    ))
}

/// A workgroup's LDS allocation of `bytes` on `target`.
pub fn lds(kernel: &str, bytes: usize, target: Target) -> Result<()> {
    if bytes <= target.lds_bytes() {
        return Ok(());
    }
    Err(Error::unsupported(
        format!("{kernel} using {bytes} bytes of LDS"),
        format!(
            "{} has {} bytes per workgroup",
            target.name(),
            target.lds_bytes()
        ),
    ))
}

/// Unified attention's launch: BLOCK_M, TILE_SIZE and HEAD_SIZE_PADDED are
/// `tl.arange` extents; the K and V tiles (`TILE x HEAD_SIZE_PADDED` each,
/// in the query dtype they are loaded as) must fit the target's LDS.
pub fn unified_launch(launch: &UnifiedLaunch, cfg: &AttnConfig, target: Target) -> Result<()> {
    let kernel = "kernel_unified_attention";
    arange(kernel, "BLOCK_M", launch.block_m)?;
    arange(kernel, "TILE_SIZE", launch.tile_size)?;
    let d_pad = cfg.head_size().next_power_of_two();
    arange(kernel, "HEAD_SIZE_PADDED", d_pad)?;
    let bytes = 2 * launch.tile_size * d_pad * cfg.dtype().size_bytes();
    lds(kernel, bytes, target)
}

/// The ll4mi kernel's `VHELOOP = head_size / 64` loops of 64 output dims
/// must cover the head exactly (0 loops write nothing).
pub fn ll4mi_head_size(head_size: usize) -> Result<()> {
    if head_size > 0 && head_size.is_multiple_of(64) {
        return Ok(());
    }
    Err(Error::unsupported(
        format!("paged_attention_ll4mi with head size {head_size}"),
        format!(
            "VHELOOP = head_size / 64 = {} output chunks of 64 must cover the head exactly",
            head_size / 64
        ),
    ))
}

/// AITER's paged-attention decode: kernel blocks of 16 or 32 tokens.
pub fn aiter_pa_block_size(block_size: usize) -> Result<()> {
    if matches!(block_size, 16 | 32) {
        return Ok(());
    }
    Err(Error::unsupported(
        format!("AITER paged attention with kernel block size {block_size}"),
        "the kernel takes blocks of 16 or 32 tokens",
    ))
}

/// AITER's asm MLA decode addresses pages through `log2(page_size)`.
pub fn aiter_mla_page_size(page_size: usize) -> Result<()> {
    if page_size.is_power_of_two() {
        return Ok(());
    }
    Err(Error::unsupported(
        format!("AITER mla_decode_fwd with page size {page_size}"),
        "stage 1 receives log2(page_size): page sizes must be powers of two",
    ))
}

/// AITER's asm MLA decode: query heads in whole groups of 16.
pub fn aiter_mla_heads(heads: usize) -> Result<()> {
    if heads > 0 && heads.is_multiple_of(16) {
        return Ok(());
    }
    Err(Error::unsupported(
        format!("AITER mla_decode_fwd with {heads} query heads"),
        "the asm kernels run heads in groups of 16 (the backend pads to a multiple of 16)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_accepts_powers_of_two_and_names_the_neighbours_otherwise() {
        for n in [1, 2, 16, 128] {
            assert!(arange("k", "BLOCK_M", n).is_ok(), "{n}");
        }
        let e = arange("k", "BLOCK_M", 15).unwrap_err().to_string();
        assert!(e.contains("BLOCK_M = 15") && e.contains("8 or 16"), "{e}");
        assert!(arange("k", "BLOCK_M", 0).is_err());
    }

    #[test]
    fn lds_budget_is_per_target() {
        assert!(lds("k", 64 * 1024, Target::Gfx942).is_ok());
        assert!(lds("k", 64 * 1024 + 1, Target::Gfx942).is_err());
        assert!(lds("k", 160 * 1024, Target::Gfx950).is_ok());
        assert!(lds("k", 160 * 1024 + 1, Target::Gfx950).is_err());
    }

    #[test]
    fn kernel_shape_rules_accept_what_the_kernels_are_built_for() {
        assert!(ll4mi_head_size(64).is_ok() && ll4mi_head_size(256).is_ok());
        assert!(ll4mi_head_size(32).is_err() && ll4mi_head_size(96).is_err());
        assert!(aiter_pa_block_size(16).is_ok() && aiter_pa_block_size(48).is_err());
        assert!(aiter_mla_page_size(64).is_ok() && aiter_mla_page_size(3).is_err());
        assert!(aiter_mla_heads(32).is_ok() && aiter_mla_heads(24).is_err());
    }
}
