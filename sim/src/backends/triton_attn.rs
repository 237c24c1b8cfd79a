//! TRITON_ATTN (`vllm/v1/attention/backends/triton_attn.py`, vllm-backends.md
//! §8): the seed-era MHA default and the blog's "unified attention". A step
//! is two launches whatever the batch mixes (decode, extend, prefill):
//! ```text
//! triton_reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping)
//! unified_attention(query[:T], key_cache, value_cache, ..., seq_threshold_3D = 128 / Hkv)
//!     -> kernel_unified_attention_2d,  or  kernel_unified_attention_3d + reduce_segments
//! ```
//! The cache is the packed-content NHD layout (K and V views `[nb, N, Hkv, D]`).
//! The writer is the Triton one (fp8: `x / scale` in f32, one rounding).
//!
//! Capabilities (§4.6): float16, bfloat16, float32; head size >= 32; kernel
//! block sizes MultipleOf(16), so 16, 32, 48, 64 and the hybrid 544 run and
//! block size 1 is rejected ("block_size not supported"); sinks, sliding
//! window, soft-cap, ALiBi, non-causal (encoder) and fp8 KV caches.
//!
//! [`UnifiedBackend`] is that shape once; [`TritonAttn`] instantiates it with
//! vLLM's kernel, ROCM_AITER_UNIFIED_ATTN with AITER's ([`UnifiedKernel`]).

use crate::backends::exec::KernelExecutor;
use crate::backends::{AttentionBackend, KernelCall};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::CacheWriter;
use crate::kernels::unified_attention::{UnifiedLaunch, VllmLaunchOptions};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;

/// TRITON_ATTN: the unified shape with vLLM's own kernel and launch rule.
pub type TritonAttn = UnifiedBackend<VllmLaunchOptions>;

/// vLLM's kernel: launched by vLLM's 2D/3D rule with these engine settings
/// (`max_num_seqs`, speculative decoding) sizing the 3D scratch.
impl UnifiedKernel for VllmLaunchOptions {
    const SHAPE: UnifiedShape = UnifiedShape {
        name: "TRITON_ATTN",
        writer: CacheWriter::TritonReshapeAndCacheFlash,
        dtypes: &[DType::F16, DType::Bf16, DType::F32],
        block_size_reason: "block_size not supported: TRITON_ATTN needs a multiple of 16",
    };

    fn launch(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<UnifiedLaunch> {
        UnifiedLaunch::vllm(meta, cfg, *self)
    }
}

/// What differs between the two unified backends: the writer kernel, the
/// dtypes, the block-size message, and which kernel launches how.
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
    pub name: &'static str,
    pub writer: CacheWriter,
    pub dtypes: &'static [DType],
    pub block_size_reason: &'static str,
}

impl<K: UnifiedKernel> AttentionBackend for UnifiedBackend<K> {
    fn name(&self) -> &'static str {
        K::SHAPE.name
    }

    /// vLLM's rejections: sinks shape (vLLM's message), dtype, head size
    /// `>= 32` (padded to a power of two in registers), block size.
    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        let shape = K::SHAPE;
        if let Some(s) = cfg.sinks.as_ref().filter(|s| s.len() != cfg.num_heads) {
            return Err(Error::invalid(
                "sinks",
                format!("shape [{}]", s.len()),
                format!(
                    "Sinks must have the same number of heads as the number of heads in the layer. Sinks shape: [{}], num_heads: {}.",
                    s.len(),
                    cfg.num_heads
                ),
            ));
        }
        cfg.validate()?;
        if !shape.dtypes.contains(&cfg.dtype) {
            let names: Vec<&str> = shape.dtypes.iter().map(|d| d.name()).collect();
            return Err(Error::invalid(
                "dtype",
                cfg.dtype,
                format!(
                    "dtype not supported: {} supports {}",
                    shape.name,
                    names.join(", ")
                ),
            ));
        }
        if cfg.head_size < 32 {
            return Err(Error::invalid(
                "head_size",
                cfg.head_size,
                "head_size not supported: must be >= 32",
            ));
        }
        self.kernel_block_size(block_size).map(|_| ())
    }

    /// Kernel block sizes: MultipleOf(16), so 544 runs as is and 1 is rejected.
    fn kernel_block_size(&self, block_size: usize) -> Result<usize> {
        if block_size == 0 || block_size % 16 != 0 {
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
    fn forward_with(
        &self,
        ex: &dyn KernelExecutor,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        self.check(cfg, meta.block_size)?;
        ex.unified_attention(query, cache, meta, cfg, &self.launch(meta, cfg)?)
    }

    /// The writer call, then the launch's kernel calls (empty if the batch is invalid).
    fn plan(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Vec<KernelCall> {
        let (Ok(layout), Ok(launch)) = (
            self.cache_layout(cfg, meta.num_blocks, meta.block_size),
            self.launch(meta, cfg),
        ) else {
            return vec![];
        };
        let mut calls = vec![self
            .cache_writer(meta.block_size)
            .kernel_call(&layout, meta.num_actual_tokens)];
        calls.extend(launch.kernel_calls(meta, cfg));
        calls
    }
}
