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

use crate::backends::{AttentionBackend, KernelCall};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::{reshape_and_cache, CacheWriter};
use crate::kernels::unified_attention::{unified_attention, UnifiedLaunch, VllmLaunchOptions};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::AttentionMetadata;

/// The writer `do_kv_cache_update` calls.
pub const WRITER: CacheWriter = CacheWriter::TritonReshapeAndCacheFlash;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TritonAttn {
    /// Engine settings that size the 3D scratch (max_num_seqs, spec decode).
    pub launch_options: VllmLaunchOptions,
}

impl TritonAttn {
    /// The launch `forward` makes for this batch (2D or 3D, tiles).
    pub fn launch(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<UnifiedLaunch> {
        UnifiedLaunch::vllm(meta, cfg, self.launch_options)
    }
}

/// The sinks check of `TritonAttentionImpl.__init__`, with vLLM's message.
/// Shared with ROCM_AITER_UNIFIED_ATTN (whose impl asserts the same).
pub fn check_sinks(cfg: &AttnConfig) -> Result<()> {
    match &cfg.sinks {
        Some(s) if s.len() != cfg.num_heads => Err(Error::invalid(
            "sinks",
            format!("shape [{}]", s.len()),
            format!(
                "Sinks must have the same number of heads as the number of heads in the layer. Sinks shape: [{}], num_heads: {}.",
                s.len(),
                cfg.num_heads
            ),
        )),
        _ => Ok(()),
    }
}

/// Head sizes the unified kernels take: any `D >= 32` (padded to a power of
/// two in registers), shared by both unified backends.
pub fn check_head_size(cfg: &AttnConfig) -> Result<()> {
    if cfg.head_size < 32 {
        return Err(Error::invalid(
            "head_size",
            cfg.head_size,
            "head_size not supported: must be >= 32",
        ));
    }
    Ok(())
}

impl AttentionBackend for TritonAttn {
    fn name(&self) -> &'static str {
        "TRITON_ATTN"
    }

    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        check_sinks(cfg)?;
        cfg.validate()?;
        if !matches!(cfg.dtype, DType::F16 | DType::Bf16 | DType::F32) {
            return Err(Error::invalid(
                "dtype",
                cfg.dtype,
                "dtype not supported: TRITON_ATTN supports float16, bfloat16, float32",
            ));
        }
        check_head_size(cfg)?;
        self.kernel_block_size(block_size).map(|_| ())
    }

    fn kernel_block_size(&self, block_size: usize) -> Result<usize> {
        if block_size == 0 || block_size % 16 != 0 {
            return Err(Error::invalid(
                "block_size",
                block_size,
                "block_size not supported: TRITON_ATTN needs a multiple of 16",
            ));
        }
        Ok(block_size)
    }

    fn cache_layout(
        &self,
        cfg: &AttnConfig,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<KvLayout> {
        KvLayout::new(
            LayoutKind::Nhd,
            num_blocks,
            block_size,
            cfg.num_kv_heads,
            cfg.head_size,
            cfg.kv_dtype,
        )
    }

    fn write_kv(
        &self,
        cache: &mut KvCache,
        key: &[f32],
        value: &[f32],
        slot_mapping: &[i64],
        cfg: &AttnConfig,
    ) -> Result<()> {
        reshape_and_cache(WRITER, cache, key, value, slot_mapping, cfg)
    }

    fn forward(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        self.check(cfg, meta.block_size)?;
        unified_attention(query, cache, meta, cfg, &self.launch(meta, cfg)?)
    }

    fn plan(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Vec<KernelCall> {
        let (Ok(layout), Ok(launch)) = (
            self.cache_layout(cfg, meta.num_blocks, meta.block_size),
            self.launch(meta, cfg),
        ) else {
            return vec![];
        };
        let mut calls = vec![WRITER.kernel_call(&layout, meta.num_actual_tokens)];
        calls.extend(launch.kernel_calls(meta, cfg));
        calls
    }
}
