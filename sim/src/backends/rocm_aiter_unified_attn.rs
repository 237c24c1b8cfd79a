//! ROCM_AITER_UNIFIED_ATTN (`vllm/v1/attention/backends/rocm_aiter_unified_attn.py`,
//! vllm-backends.md §10): TRITON_ATTN's shape with AITER's copy of the
//! unified kernel. A step:
//! ```text
//! reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping)   // HIP writer
//! causal:     aiter.unified_attention(...)   -> aiter 2D, or aiter 3D + reduce_segments
//! non-causal: vLLM's unified_attention(...)  (ENCODER_DECODER fallback, §10.2)
//! ```
//! AITER's kernel differs from vLLM's as [`Flavor::Aiter`](crate::kernels::unified_attention::Flavor::Aiter) models: its own
//! 2D/3D rule and tiles (from the CU count), the fully-masked-row guard that
//! keeps `M = 0`, fp8 scales folded into the score scale and the epilogue
//! (`acc * (v_descale / L)`). The HIP writer rounds fp16 through fp16 before
//! fp8 (§3.1).
//!
//! Capabilities (§4.6, §10.1): float16 and bfloat16; head size >= 32; kernel
//! block sizes MultipleOf(16) (preferred 64), so 16/32/48/64/544 run and
//! block size 1 is rejected with "Block size must be a multiple of 16.";
//! sinks, sliding window, soft-cap, ALiBi, fp8 KV. The gfx1250 shuffled-cache
//! path is stale in vLLM (§19.17) and not emulated.

use crate::backends::triton_attn::UnifiedShape;
use crate::backends::{AttentionBackend, KernelCall};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::CacheWriter;
use crate::kernels::unified_attention::{UnifiedLaunch, VllmLaunchOptions, MI300X_CU_COUNT};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Result;
use attnlab_shared::layout::KvLayout;
use attnlab_shared::metadata::AttentionMetadata;

/// The HIP writer (no shuffle layout), fp16/bf16 only, customize_spec's message.
pub const SHAPE: UnifiedShape = UnifiedShape {
    name: "ROCM_AITER_UNIFIED_ATTN",
    writer: CacheWriter::ReshapeAndCacheFlash,
    dtypes: &[DType::F16, DType::Bf16],
    block_size_reason: "Block size must be a multiple of 16.",
};
/// `get_preferred_block_size`: the block size vLLM picks without `--block-size`.
pub const PREFERRED_BLOCK_SIZE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocmAiterUnifiedAttn {
    /// Compute units of the GPU: AITER's grid sizing reads it.
    pub cu_count: usize,
}

impl Default for RocmAiterUnifiedAttn {
    fn default() -> Self {
        RocmAiterUnifiedAttn {
            cu_count: MI300X_CU_COUNT,
        }
    }
}

impl RocmAiterUnifiedAttn {
    /// The launch `forward` makes: AITER's kernel for causal batches, vLLM's
    /// Triton kernel (with vLLM's default engine options) for non-causal ones.
    pub fn launch(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<UnifiedLaunch> {
        if meta.causal {
            UnifiedLaunch::aiter(meta, cfg, self.cu_count)
        } else {
            UnifiedLaunch::vllm(meta, cfg, VllmLaunchOptions::default())
        }
    }
}

impl AttentionBackend for RocmAiterUnifiedAttn {
    fn name(&self) -> &'static str {
        SHAPE.name
    }

    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        SHAPE.check(cfg, block_size)
    }

    fn kernel_block_size(&self, block_size: usize) -> Result<usize> {
        SHAPE.kernel_block_size(block_size)
    }

    fn cache_layout(
        &self,
        cfg: &AttnConfig,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<KvLayout> {
        SHAPE.cache_layout(cfg, num_blocks, block_size)
    }

    fn write_kv(
        &self,
        cache: &mut KvCache,
        key: &[f32],
        value: &[f32],
        slot_mapping: &[i64],
        cfg: &AttnConfig,
    ) -> Result<()> {
        SHAPE.write_kv(cache, key, value, slot_mapping, cfg)
    }

    fn forward(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        SHAPE.forward(query, cache, meta, cfg, self.launch(meta, cfg))
    }

    fn plan(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Vec<KernelCall> {
        SHAPE.plan(meta, cfg, self.launch(meta, cfg))
    }
}
