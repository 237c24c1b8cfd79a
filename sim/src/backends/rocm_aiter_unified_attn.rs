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

use crate::backends::unified::{UnifiedBackend, UnifiedKernel, UnifiedShape};
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::CacheWriter;
use crate::kernels::unified_attention::{UnifiedLaunch, VllmLaunchOptions, MI300X_CU_COUNT};
use attnlab_shared::error::Result;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::registry::BackendName;

/// ROCM_AITER_UNIFIED_ATTN: the unified shape with AITER's kernel.
pub type RocmAiterUnifiedAttn = UnifiedBackend<AiterKernel>;

/// `get_preferred_block_size`: the block size vLLM picks without `--block-size`.
pub const PREFERRED_BLOCK_SIZE: usize = 64;

/// AITER's `unified_attention`, whose grid sizing reads the GPU's compute units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AiterKernel {
    pub cu_count: usize,
}

impl Default for AiterKernel {
    fn default() -> Self {
        AiterKernel {
            cu_count: MI300X_CU_COUNT,
        }
    }
}

impl UnifiedKernel for AiterKernel {
    /// The HIP writer (no shuffle layout), fp16/bf16 only, customize_spec's message.
    const SHAPE: UnifiedShape = UnifiedShape {
        name: BackendName::RocmAiterUnifiedAttn,
        writer: CacheWriter::ReshapeAndCacheFlash,
        block_size_reason: "Block size must be a multiple of 16.",
    };

    /// AITER's kernel for causal batches; vLLM's Triton kernel (vLLM's default
    /// engine options) for non-causal ones, as the impl's fallback does.
    fn launch(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<UnifiedLaunch> {
        if meta.causal() {
            UnifiedLaunch::aiter(meta, cfg, self.cu_count)
        } else {
            UnifiedLaunch::vllm(meta, cfg, VllmLaunchOptions::default())
        }
    }
}
