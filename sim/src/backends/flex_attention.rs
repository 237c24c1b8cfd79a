//! FLEX_ATTENTION (`vllm/v1/attention/backends/flex_attention.py`,
//! vllm-backends.md §16.1): explicit selection only on ROCm. New K/V go into
//! the NHD cache with `reshape_and_cache_flash`; then one compiled
//! `flex_attention` call covers the whole batch, the batch structure living
//! in a block-sparse mask over the physical cache (kernels/flex_attention.rs).
//!
//! Capabilities: f16/bf16/f32, no quantized cache, any head size, kernel
//! block sizes MultipleOf(16), causal (decoder) and non-causal (encoder-only),
//! sliding window. ALiBi, soft-cap and sinks are rejected as vLLM's
//! `FlexAttentionImpl` rejects them.

use crate::backends::exec::KernelExecutor;
use crate::backends::{AttentionBackend, KernelCall};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::flex_attention::{flex_block_n, SPARSE_Q_BLOCK_SIZE};
use crate::kernels::reshape_and_cache::CacheWriter;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlexAttention;

impl AttentionBackend for FlexAttention {
    fn name(&self) -> &'static str {
        "FLEX_ATTENTION"
    }

    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        cfg.validate()?;
        if !matches!(cfg.dtype, DType::F16 | DType::Bf16 | DType::F32) {
            return Err(Error::unsupported(
                format!("dtype {}", cfg.dtype),
                "FLEX_ATTENTION supports float16, bfloat16, float32",
            ));
        }
        if cfg.kv_dtype != cfg.dtype {
            return Err(Error::unsupported(
                format!("kv cache dtype {}", cfg.kv_dtype),
                "FlexAttention does not support quantized kv-cache. Yet",
            ));
        }
        for (set, what) in [
            (cfg.alibi_slopes.is_some(), "alibi slopes"),
            (cfg.softcap.is_some(), "logits soft cap"),
            (cfg.sinks.is_some(), "sinks"),
        ] {
            if set {
                return Err(Error::unsupported(
                    what,
                    format!("FlexAttention does not support {what} yet."),
                ));
            }
        }
        if block_size == 0 || !block_size.is_multiple_of(16) {
            return Err(Error::invalid(
                "block_size",
                block_size,
                "FLEX_ATTENTION supports block sizes that are a multiple of 16",
            ));
        }
        Ok(())
    }

    fn layout_kind(&self) -> LayoutKind {
        LayoutKind::Nhd
    }

    fn cache_writer(&self, _block_size: usize) -> CacheWriter {
        CacheWriter::ReshapeAndCacheFlash
    }

    fn forward_with(
        &self,
        ex: &dyn KernelExecutor,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        self.check(cfg, meta.block_size)?;
        ex.flex_attention(query, cache, meta, cfg)
    }

    fn plan(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Vec<KernelCall> {
        let Ok(layout) = self.cache_layout(cfg, meta.num_blocks, meta.block_size) else {
            return vec![];
        };
        let (t, hq, hkv, d) = (
            meta.num_actual_tokens,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_size,
        );
        let q_blocks = t.div_ceil(SPARSE_Q_BLOCK_SIZE);
        vec![
            CacheWriter::ReshapeAndCacheFlash.kernel_call(&layout, t),
            KernelCall::new(
                "flex_attention",
                &[
                    ("query", vec![1, hq, t, d]),
                    (
                        "key_cache",
                        vec![1, hkv, meta.num_blocks * meta.block_size, d],
                    ),
                    ("block_mask", vec![q_blocks, meta.num_blocks]),
                    ("block_n", vec![flex_block_n(cfg.dtype, meta.block_size)]),
                    ("output", vec![t, hq, d]),
                ],
            ),
        ]
    }
}
