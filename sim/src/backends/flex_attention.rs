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

use crate::backends::steps::{Paged, Step, SubBatch};
use crate::backends::AttentionBackend;
use crate::config::AttnConfig;
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

    /// One compiled `flex_attention` call over the whole batch.
    fn route(&self, _meta: &AttentionMetadata, _cfg: &AttnConfig) -> Result<Vec<SubBatch>> {
        Ok(vec![SubBatch::all(vec![Step::Paged(Paged::Flex)])])
    }
}
