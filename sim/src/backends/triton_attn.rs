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
//! [`UnifiedBackend`] is that shape once;
//! [`TritonAttn`] instantiates it with vLLM's kernel, ROCM_AITER_UNIFIED_ATTN
//! with AITER's ([`UnifiedKernel`]).

use crate::backends::unified::{UnifiedBackend, UnifiedKernel, UnifiedShape};
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::CacheWriter;
use crate::kernels::unified_attention::{UnifiedLaunch, VllmLaunchOptions};
use attnlab_shared::error::Result;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::registry::BackendName;

/// TRITON_ATTN: the unified shape with vLLM's own kernel and launch rule.
pub type TritonAttn = UnifiedBackend<VllmLaunchOptions>;

/// vLLM's kernel: launched by vLLM's 2D/3D rule with these engine settings
/// (`max_num_seqs`, speculative decoding) sizing the 3D scratch.
impl UnifiedKernel for VllmLaunchOptions {
    const SHAPE: UnifiedShape = UnifiedShape {
        name: BackendName::TritonAttn,
        writer: CacheWriter::TritonReshapeAndCacheFlash,
        block_size_reason: "block_size not supported: TRITON_ATTN needs a multiple of 16",
    };

    fn launch(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<UnifiedLaunch> {
        UnifiedLaunch::vllm(meta, cfg, *self)
    }
}
