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

use crate::backends::capability::check_capabilities;
use crate::backends::capability::Capability::*;
use crate::backends::capability::Words::*;
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
        let kv = "FlexAttention does not support quantized kv-cache. Yet";
        let rules = [
            (
                Dtype,
                Unsupported("dtype {value}", "FLEX_ATTENTION supports {allowed}"),
            ),
            (KvCacheDtype, Unsupported("kv cache dtype {value}", kv)),
        ];
        check_capabilities(self.name(), cfg, block_size, &rules)?;
        for (set, what) in [
            (cfg.alibi_slopes().is_some(), "alibi slopes"),
            (cfg.softcap().is_some(), "logits soft cap"),
        ] {
            if set {
                return Err(Error::unsupported(
                    what,
                    format!("FlexAttention does not support {what} yet."),
                ));
            }
        }
        let block = "FLEX_ATTENTION supports block sizes that are a multiple of 16";
        let rules = [
            (
                Sinks,
                Unsupported("sinks", "FlexAttention does not support sinks yet."),
            ),
            (BlockSize, Invalid("block_size", block)),
        ];
        check_capabilities(self.name(), cfg, block_size, &rules)
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
