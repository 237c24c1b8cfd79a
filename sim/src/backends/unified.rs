//! The unified backends' shape, TRITON_ATTN's and ROCM_AITER_UNIFIED_ATTN's
//! alike: the NHD cache, one writer call, one unified-attention launch over
//! the whole batch. [`UnifiedKernel`] is what differs: whose kernel, its
//! writer, dtypes and block-size message, and its launch rule.

use crate::backends::capability::Capability::*;
use crate::backends::capability::Words::*;
use crate::backends::capability::{capabilities_of, check_capabilities};
use crate::backends::steps::{Paged, Step, SubBatch};
use crate::backends::AttentionBackend;
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::CacheWriter;
use crate::kernels::unified_attention::UnifiedLaunch;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::registry::BackendName;

/// What differs between the two unified backends: the name (whose registry
/// entry holds the capabilities), the writer kernel, the block-size message,
/// and which kernel launches how.
pub trait UnifiedKernel: Send + Sync {
    const SHAPE: UnifiedShape;
    /// The launch `forward` makes for this batch (kernel flavour, 2D or 3D, tiles).
    fn launch(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<UnifiedLaunch>;
}

/// A unified backend: NHD cache, one writer call, one unified-attention
/// launch over the whole batch; `kernel` says whose kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnifiedBackend<K> {
    pub kernel: K,
}

impl<K: UnifiedKernel> UnifiedBackend<K> {
    pub fn new(kernel: K) -> Self {
        UnifiedBackend { kernel }
    }

    /// The launch `forward` makes for this batch.
    pub fn launch(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<UnifiedLaunch> {
        self.kernel.launch(meta, cfg)
    }
}

/// The constant part of a unified backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnifiedShape {
    pub name: BackendName,
    pub writer: CacheWriter,
    pub block_size_reason: &'static str,
}

impl<K: UnifiedKernel> AttentionBackend for UnifiedBackend<K> {
    fn name(&self) -> BackendName {
        K::SHAPE.name
    }

    /// vLLM's rejections: dtype, head size `>= 32` (padded to a power of
    /// two in registers), block size. (vLLM's sinks-shape rejection cannot
    /// arise: an [`AttnConfig`] holds one sink per query head.)
    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        let shape = K::SHAPE;
        let rules = [
            (
                Dtype,
                Invalid("dtype", "dtype not supported: {backend} supports {allowed}"),
            ),
            (
                HeadSize,
                Invalid("head_size", "head_size not supported: must be {allowed}"),
            ),
            (BlockSize, Invalid("block_size", shape.block_size_reason)),
        ];
        check_capabilities(shape.name, cfg, block_size, &rules)
    }

    /// Kernel block sizes: MultipleOf(16), so 544 runs as is and 1 is rejected.
    fn kernel_block_size(&self, block_size: usize) -> Result<usize> {
        if !capabilities_of(K::SHAPE.name)?.supports_block_size(block_size) {
            return Err(Error::invalid(
                "block_size",
                block_size,
                K::SHAPE.block_size_reason,
            ));
        }
        Ok(block_size)
    }

    /// The packed-content NHD views `[nb, N, Hkv, D]` of K and V.
    fn layout_kind(&self) -> LayoutKind {
        LayoutKind::Nhd
    }

    fn cache_writer(&self, _block_size: usize) -> CacheWriter {
        K::SHAPE.writer
    }

    /// One unified-attention launch over the whole batch.
    fn route(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<Vec<SubBatch>> {
        let launch = self.launch(meta, cfg)?;
        Ok(vec![SubBatch::all(vec![Step::Paged(Paged::Unified(
            launch,
        ))])])
    }
}
