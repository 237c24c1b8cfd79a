//! ROCM_AITER_FA (`vllm/v1/attention/backends/rocm_aiter_fa.py`,
//! vllm-backends.md §11): requests are split decode : extend : prefill and
//! each kind runs its own kernels.
//!
//! ```text
//! write_kv:  reshape_and_cache_shuffle_triton (shuffle) | reshape_and_cache_flash (NHD)
//! prefill:   flash_attn_varlen_func(causal)                       // no context
//! extend:    (o_new, lse_new) = flash_attn_varlen_func(new tokens, causal)
//!            for chunk c of the context (32768 // num_extends tokens per request):
//!                cp_mha_gather_cache -> flash_attn_varlen_func(non-causal)
//!                ctx = c == 0 ? (o_c, lse_c) : merge_attn_states(ctx, (o_c, lse_c))
//!            out = merge_attn_states(ctx, (o_new, lse_new))
//!            sliding window instead: gather the last min(seq, q + W) keys, one causal FA
//! decode:    paged_attention_common (shuffle) | paged_attention_v1 (NHD): the ll4mi
//!            partitions + reduce; sinks, or a window with ALiBi: AITER unified_attention
//! ```
//! As in vLLM, prefill/extend ignore `logits_soft_cap` (only decode applies
//! it, §19 #5) and sinks reach no context-chunk call (see
//! [`Step::Attend`]). The cache layout follows
//! `VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT` as vLLM reads it (unset: NHD; see
//! [`RocmAiterFa::from_env`]). The SWA-trimmed decode tables only move
//! partition boundaries and are not modelled. Requires CDNA3+ (gfx942,
//! gfx950, gfx1250: `get_cdna_version() > 2`).
//!
//! `route` writes the sequence above out once, in the [`steps`]
//! language: `forward` runs it and `plan` renders it, so the two cannot drift.

use crate::backends::capability::check_capabilities;
use crate::backends::capability::Capability::{self, *};
use crate::backends::capability::Words::{self, *};
use crate::backends::context_chunks::{
    context_chunks, new_token_keys, window_keys, CP_TOKENS_PER_ITER_ROCM,
};
use crate::backends::steps::{self, FaMask, Paged, Slot, Step, SubBatch};
use crate::backends::AttentionBackend;
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::CacheWriter;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::{AttentionMetadata, RequestKind};
use attnlab_shared::registry::BackendName;

/// What `check` tests, in vLLM's order and words (the sets: the registry's).
#[rustfmt::skip]
const CHECKS: &[(Capability, Words)] = &[
    (
        HeadSize,
        Unsupported(
            "head size {value}",
            "ROCM_AITER_FA supports head sizes {allowed}",
        ),
    ),
    (
        Dtype,
        Unsupported("dtype {value}", "ROCM_AITER_FA supports {allowed}"),
    ),
    (
        KvCacheDtype,
        Unsupported(
            "kv cache dtype {value}",
            "ROCM_AITER_FA supports auto and fp8 (e4m3) caches",
        ),
    ),
    (
        BlockSize,
        Invalid("block_size", "Block size must be a multiple of 16."),
    ),
];

/// The assertion vLLM's decode path raises for shuffle + window / sinks.
pub const SHUFFLE_UNSUPPORTED: &str =
    "Shuffle KV cache layout is not supported with sliding window, sinks, or speculative decoding (multi-token decode).";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocmAiterFa {
    /// `VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1`: AITER's shuffled cache (the seed
    /// blog's design). vLLM's default, in the seed era and in 0.34, is off
    /// (`envs.py`: `os.getenv(..., "False")`): the NHD cache.
    pub shuffle_kv_cache: bool,
    /// Context-chunk budget; vLLM's constant unless a test shrinks it.
    pub cp_tokens_per_iter: usize,
}

/// The environment variable that selects AITER's shuffled KV cache layout.
pub const SHUFFLE_KV_CACHE_ENV: &str = "VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT";

/// vLLM's default: the NHD cache (`VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT` unset).
impl Default for RocmAiterFa {
    fn default() -> Self {
        RocmAiterFa {
            shuffle_kv_cache: false,
            cp_tokens_per_iter: CP_TOKENS_PER_ITER_ROCM,
        }
    }
}

impl RocmAiterFa {
    pub fn new(shuffle_kv_cache: bool) -> Self {
        RocmAiterFa {
            shuffle_kv_cache,
            ..Default::default()
        }
    }

    /// The backend as `vllm serve` configures it from the value of
    /// `VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT`: shuffled when it is `true` or `1`
    /// (any case), NHD when unset or anything else, as vLLM's `envs.py`.
    pub fn from_env_value(value: Option<&str>) -> Self {
        let on = value.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1"));
        RocmAiterFa::new(on)
    }

    /// [`Self::from_env_value`] of this process's environment.
    pub fn from_env() -> Self {
        RocmAiterFa::from_env_value(std::env::var(SHUFFLE_KV_CACHE_ENV).ok().as_deref())
    }
}

impl AttentionBackend for RocmAiterFa {
    fn name(&self) -> BackendName {
        BackendName::RocmAiterFa
    }

    /// The registry's head sizes, dtypes, caches and kernel block sizes
    /// ([16, 32]: a multiple of 16), then the shuffled layout's limits.
    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        check_capabilities(self.name(), cfg, block_size, CHECKS)?;
        if self.shuffle_kv_cache && (cfg.sliding_window().is_some() || cfg.sinks().is_some()) {
            return Err(Error::unsupported(
                "VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1",
                SHUFFLE_UNSUPPORTED,
            ));
        }
        Ok(())
    }

    fn layout_kind(&self) -> LayoutKind {
        if self.shuffle_kv_cache {
            LayoutKind::AiterShuffled
        } else {
            LayoutKind::Nhd
        }
    }

    fn cache_writer(&self, _block_size: usize) -> CacheWriter {
        if self.shuffle_kv_cache {
            CacheWriter::ReshapeAndCacheShuffleTriton
        } else {
            CacheWriter::ReshapeAndCacheFlash
        }
    }

    /// Splits the batch as `split_decodes_prefills_and_extends` does after the
    /// reorder: the non-empty sub-batches in launch order (prefill, extend, decode).
    fn route(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<Vec<SubBatch>> {
        use RequestKind::{Decode, Extend, Prefill};
        // AITER's unified attention decodes when there are sinks or a window with ALiBi.
        let unified =
            cfg.sinks().is_some() || cfg.sliding_window().is_some() && cfg.alibi_slopes().is_some();
        let mut batches = vec![];
        for kind in [Prefill, Extend, Decode] {
            let reqs: Vec<usize> = (0..meta.num_reqs())
                .filter(|&i| meta.kind(i, 1) == kind)
                .collect();
            if reqs.is_empty() {
                continue;
            }
            let steps = match (kind, cfg.sliding_window()) {
                (Prefill, _) => vec![Step::Attend {
                    keys: new_token_keys(meta, &reqs)?,
                    gathered: false,
                    mask: FaMask::Layer,
                    into: Slot::Output,
                }],
                // The `min(seq_len, q + W)` keys each extend attends, in one causal call.
                (Extend, Some(w)) => vec![Step::Attend {
                    keys: window_keys(meta, &reqs, w)?,
                    gathered: true,
                    mask: FaMask::Causal,
                    into: Slot::Output,
                }],
                (Extend, None) => {
                    let ctx: Vec<usize> = reqs.iter().map(|&i| meta.context_len(i)).collect();
                    steps::chunked_extend(
                        new_token_keys(meta, &reqs)?,
                        context_chunks(&ctx, self.cp_tokens_per_iter)?.chunks,
                    )
                }
                (Decode, _) if unified => vec![Step::Paged(Paged::AiterUnifiedAttention)],
                (Decode, _) if self.shuffle_kv_cache => {
                    vec![Step::Paged(Paged::PagedAttentionCommon)]
                }
                (Decode, _) => vec![Step::Paged(Paged::PagedAttentionV1)],
            };
            batches.push(SubBatch::of(kind, reqs, steps));
        }
        Ok(batches)
    }
}
