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
//! Emulator notes. The trait hands `forward` the cache (holding the step's
//! new K/V, as fixtures capture it), not the step's key/value tensors, so the
//! new tokens' K/V that vLLM passes straight to flash_attn_varlen_func are read
//! back from the cache here as input preparation, not as a kernel launch (plan
//! shows no gather for them): identical values for 16-bit caches; with fp8
//! caches they are the quantized K/V.
//! As in vLLM, prefill/extend ignore `logits_soft_cap` (only decode applies
//! it, §19 #5). Sinks go to the prefill call, the new-token call of an
//! extend and the SWA extend call, never to a context-chunk call, so a
//! chunked extend counts each sink once (vLLM 0.34 `rocm_aiter_fa.py`
//! `AiterFlashAttentionImpl.extend_forward`: the chunk calls pass
//! `sink_ptr=None` "the causal call above already adds the sink"; the seed
//! era's impl, @002d0eb6, takes no sinks at all). This replaces the
//! unverified "sink per chunk" reading of §19 #14. The cache layout follows
//! `VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT` as vLLM reads it (unset: NHD; see
//! [`RocmAiterFa::from_env`]). The SWA-trimmed decode
//! tables only move partition boundaries and are not modelled. Requires
//! CDNA3+ (gfx942, gfx950, gfx1250: `get_cdna_version() > 2`).
//!
//! `route` writes the sequence above out once, in the [`steps`](super::steps)
//! language: `forward` runs it and `plan` renders it, so the two cannot drift.

use crate::backends::capability::{
    capabilities_of, dtype_names, first_unsupported, head_sizes, Capability,
};
use crate::backends::steps::{FaMask, Paged, Slot, Step, SubBatch};
use crate::backends::AttentionBackend;
use crate::config::AttnConfig;
use crate::kernels::gather_cache::GatherChunk;
use crate::kernels::reshape_and_cache::CacheWriter;
use attnlab_shared::block_table::select_kernel_block_size;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::{AttentionMetadata, RequestKind};
use attnlab_shared::registry::BackendName;
use attnlab_shared::scheduler::{self, CP_TOKENS_PER_ITER_ROCM};

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

/// The builder's chunking (§11.3, [`scheduler::context_chunks`]): `budget //
/// num_extends` context tokens per request per chunk, as gather launches.
pub fn context_chunks(ctx_lens: &[usize], cp_tokens_per_iter: usize) -> Result<Vec<GatherChunk>> {
    scheduler::context_chunks(ctx_lens, cp_tokens_per_iter)?
        .chunks
        .into_iter()
        .map(|c| GatherChunk::new(c.starts, &c.lens))
        .collect()
}

/// The extend steps (vLLM's `extend_forward`): `out, lse` of the new
/// tokens, each context chunk's `suf_out` folded into `chunked_output`,
/// then `chunked_output` merged with `out` into `output`.
fn chunked_extend(new_tokens: GatherChunk, chunks: Vec<GatherChunk>) -> Vec<Step> {
    use Slot::*;
    let chunked = !chunks.is_empty(); // always for extends (context > 0), vLLM §19 #15
    let mut steps = vec![Step::Attend {
        keys: new_tokens,
        gathered: false,
        mask: FaMask::Causal,
        into: if chunked { Out } else { Output },
    }];
    for (c, keys) in chunks.into_iter().enumerate() {
        steps.push(Step::Attend {
            keys,
            gathered: true,
            mask: FaMask::Full,
            into: if c == 0 { ChunkedOutput } else { SufOut },
        });
        if c > 0 {
            steps.push(Step::Merge {
                prefix: ChunkedOutput,
                suffix: SufOut,
                into: ChunkedOutput,
            });
        }
    }
    if chunked {
        steps.push(Step::Merge {
            prefix: ChunkedOutput,
            suffix: Out,
            into: Output,
        });
    }
    steps
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

    /// The decode rows' kernel: AITER's unified attention for sinks or a
    /// window with ALiBi, else `paged_attention_common` over the shuffled
    /// cache or `paged_attention_v1` over the NHD one.
    pub fn decode_kernel(&self, cfg: &AttnConfig) -> Paged {
        if cfg.sinks.is_some() || (cfg.sliding_window.is_some() && cfg.alibi_slopes.is_some()) {
            Paged::AiterUnifiedAttention
        } else if self.shuffle_kv_cache {
            Paged::PagedAttentionCommon
        } else {
            Paged::PagedAttentionV1
        }
    }
}

impl AttentionBackend for RocmAiterFa {
    fn name(&self) -> BackendName {
        BackendName::RocmAiterFa
    }

    /// The registry's head sizes, dtypes, caches and kernel block sizes
    /// ([16, 32]: a multiple of 16), then the shuffled layout's limits.
    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        use Capability::*;
        cfg.validate()?;
        let order = [HeadSize, Dtype, KvCacheDtype, BlockSize];
        if let Some((c, caps)) = first_unsupported(self.name(), cfg, block_size, &order)? {
            return Err(match c {
                HeadSize => Error::unsupported(
                    format!("head size {}", cfg.head_size),
                    format!("ROCM_AITER_FA supports head sizes {}", head_sizes(caps)),
                ),
                Dtype => Error::unsupported(
                    format!("dtype {}", cfg.dtype),
                    format!("ROCM_AITER_FA supports {}", dtype_names(caps)),
                ),
                KvCacheDtype => Error::unsupported(
                    format!("kv cache dtype {}", cfg.kv_dtype),
                    "ROCM_AITER_FA supports auto and fp8 (e4m3) caches",
                ),
                _ => Error::invalid(
                    "block_size",
                    block_size,
                    "Block size must be a multiple of 16.",
                ),
            });
        }
        if self.shuffle_kv_cache && (cfg.sliding_window.is_some() || cfg.sinks.is_some()) {
            return Err(Error::unsupported(
                "VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1",
                SHUFFLE_UNSUPPORTED,
            ));
        }
        Ok(())
    }

    /// `select_common_block_size` over [16, 32] (544 -> 32, 48 -> 16).
    fn kernel_block_size(&self, block_size: usize) -> Result<usize> {
        let caps = capabilities_of(self.name())?;
        select_kernel_block_size(block_size, self.name().name(), caps.kernel_block_sizes)
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
        let new_tokens = |reqs: &[usize]| {
            GatherChunk::new(
                reqs.iter().map(|&i| meta.context_len(i)).collect(),
                &reqs.iter().map(|&i| meta.query_len(i)).collect::<Vec<_>>(),
            )
        };
        let mut batches = vec![];
        for kind in [
            RequestKind::Prefill,
            RequestKind::Extend,
            RequestKind::Decode,
        ] {
            let reqs: Vec<usize> = (0..meta.num_reqs())
                .filter(|&i| meta.kind(i, 1) == kind)
                .collect();
            if reqs.is_empty() {
                continue;
            }
            let steps = match (kind, cfg.sliding_window) {
                (RequestKind::Prefill, _) => vec![Step::Attend {
                    keys: new_tokens(&reqs)?,
                    gathered: false,
                    mask: FaMask::Layer,
                    into: Slot::Output,
                }],
                // The `min(seq_len, q + W)` keys each extend attends, in one causal call.
                (RequestKind::Extend, Some(w)) => {
                    let lens: Vec<usize> = reqs
                        .iter()
                        .map(|&i| meta.seq_len(i).min(meta.query_len(i) + w))
                        .collect();
                    let starts = reqs
                        .iter()
                        .zip(&lens)
                        .map(|(&i, l)| meta.seq_len(i) - l)
                        .collect();
                    vec![Step::Attend {
                        keys: GatherChunk::new(starts, &lens)?,
                        gathered: true,
                        mask: FaMask::Causal,
                        into: Slot::Output,
                    }]
                }
                (RequestKind::Extend, None) => {
                    let ctx: Vec<usize> = reqs.iter().map(|&i| meta.context_len(i)).collect();
                    chunked_extend(
                        new_tokens(&reqs)?,
                        context_chunks(&ctx, self.cp_tokens_per_iter)?,
                    )
                }
                (RequestKind::Decode, _) => vec![Step::Paged(self.decode_kernel(cfg))],
            };
            batches.push(SubBatch::of(kind, reqs, steps));
        }
        Ok(batches)
    }
}
