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

use crate::backends::capability::{capabilities_of, dtype_names, first_unsupported, Capability};
use crate::backends::steps::{Paged, Step, SubBatch};
use crate::backends::AttentionBackend;
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::CacheWriter;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::registry::BackendName;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlexAttention;

impl AttentionBackend for FlexAttention {
    fn name(&self) -> BackendName {
        BackendName::FlexAttention
    }

    /// The registry's dtypes and caches, `FlexAttentionImpl`'s rejections
    /// (ALiBi, soft-cap, the registry's no sinks), then kernel block sizes.
    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        use Capability::*;
        cfg.validate()?;
        let caps = capabilities_of(self.name())?;
        if let Some((c, caps)) =
            first_unsupported(self.name(), cfg, block_size, &[Dtype, KvCacheDtype])?
        {
            return Err(match c {
                Dtype => Error::unsupported(
                    format!("dtype {}", cfg.dtype),
                    format!("FLEX_ATTENTION supports {}", dtype_names(caps)),
                ),
                _ => Error::unsupported(
                    format!("kv cache dtype {}", cfg.kv_dtype),
                    "FlexAttention does not support quantized kv-cache. Yet",
                ),
            });
        }
        for (set, what) in [
            (cfg.alibi_slopes.is_some(), "alibi slopes"),
            (cfg.softcap.is_some(), "logits soft cap"),
            (!Sinks.accepts(caps, cfg, block_size), "sinks"),
        ] {
            if set {
                return Err(Error::unsupported(
                    what,
                    format!("FlexAttention does not support {what} yet."),
                ));
            }
        }
        if !BlockSize.accepts(caps, cfg, block_size) {
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
