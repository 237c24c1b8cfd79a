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
//! [`RocmAiterFa::route`] writes the sequence above out once, as [`Step`]s:
//! `forward` runs them and `plan` renders them, so the two cannot drift.

use crate::backends::exec::KernelExecutor;
use crate::backends::{AttentionBackend, KernelCall};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::flash_varlen::{ck_block_n, VarlenParams};
use crate::kernels::gather_cache::{self, CacheFormat, GatherChunk};
use crate::kernels::merge_attn_states::MergeKernel;
use crate::kernels::paged_decode::PARTITION_SIZE_ROCM;
use crate::kernels::reshape_and_cache::CacheWriter;
use crate::kernels::softmax::OutLse;
use crate::kernels::unified_attention::{UnifiedLaunch, MI300X_CU_COUNT};
use attnlab_shared::block_table::{select_kernel_block_size, KernelBlockSize};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::Fault;
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor, RequestKind};
use attnlab_shared::registry::ROCM_AITER_FA;
use attnlab_shared::scheduler::{self, CP_TOKENS_PER_ITER_ROCM};

/// `get_supported_kernel_block_sizes()`: the registry's `[16, 32]`.
pub const KERNEL_BLOCK_SIZES: &[KernelBlockSize] = ROCM_AITER_FA.kernel_block_sizes;
/// `get_supported_head_sizes()`.
pub const HEAD_SIZES: [usize; 3] = [64, 128, 256];
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

/// Which kernel the decode rows run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AiterDecode {
    /// ll4mi partitions + reduce over the NHD cache (`torch.ops.aiter.paged_attention_v1`).
    PagedAttentionV1,
    /// `aiter.paged_attention_common` over the shuffled cache (asm or HIP; ll4mi structure here).
    PagedAttentionCommon,
    /// AITER's Triton `unified_attention` (sinks; window with ALiBi).
    UnifiedAttention,
}

/// The mask of one `flash_attn_varlen_func` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaMask {
    /// Prefill: causal as the metadata says, the layer's window.
    Layer,
    /// New extend tokens (or the SWA tail): causal, the layer's window.
    Causal,
    /// A context chunk: every key precedes every query, so no mask at all.
    Full,
}

/// Where a step leaves its result: vLLM's locals in the extend path, or the rows' output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    New,
    Ctx,
    Chunk,
    Out,
}

/// One step of a sub-batch, in launch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `flash_attn_varlen_func` of the queries over `keys`: the step's new
    /// tokens (`gathered: false`, vLLM passes its key/value tensors), or a
    /// context chunk / the SWA tail fetched by `cp_mha_gather_cache` first.
    Attend {
        keys: GatherChunk,
        gathered: bool,
        mask: FaMask,
        into: Slot,
    },
    /// `merge_attn_states(prefix, suffix)`.
    Merge {
        prefix: Slot,
        suffix: Slot,
        into: Slot,
    },
    /// The decode kernel over the paged cache.
    Decode(AiterDecode),
}

/// The requests of one kind (batch order) and the steps computing their rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubBatch {
    pub kind: RequestKind,
    pub reqs: Vec<usize>,
    pub steps: Vec<Step>,
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

/// The extend steps: `(o_new, lse_new)`, the context chunks folded into
/// `ctx`, then `ctx` merged with the new tokens' partial.
fn chunked_extend(new_tokens: GatherChunk, chunks: Vec<GatherChunk>) -> Vec<Step> {
    use Slot::*;
    let chunked = !chunks.is_empty(); // always for extends (context > 0), vLLM §19 #15
    let mut steps = vec![Step::Attend {
        keys: new_tokens,
        gathered: false,
        mask: FaMask::Causal,
        into: if chunked { New } else { Out },
    }];
    for (c, keys) in chunks.into_iter().enumerate() {
        steps.push(Step::Attend {
            keys,
            gathered: true,
            mask: FaMask::Full,
            into: if c == 0 { Ctx } else { Chunk },
        });
        if c > 0 {
            steps.push(Step::Merge {
                prefix: Ctx,
                suffix: Chunk,
                into: Ctx,
            });
        }
    }
    if chunked {
        steps.push(Step::Merge {
            prefix: Ctx,
            suffix: New,
            into: Out,
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

    /// Splits the batch as `split_decodes_prefills_and_extends` does after the
    /// reorder: the non-empty sub-batches in launch order (prefill, extend, decode).
    pub fn route(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<Vec<SubBatch>> {
        let of = |k: RequestKind| -> Vec<usize> {
            (0..meta.num_reqs())
                .filter(|&i| meta.kind(i, 1) == k)
                .collect()
        };
        let new_tokens = |reqs: &[usize]| {
            GatherChunk::new(
                reqs.iter().map(|&i| meta.context_len(i)).collect(),
                &reqs.iter().map(|&i| meta.query_len(i)).collect::<Vec<_>>(),
            )
        };
        let mut batches = vec![];
        let reqs = of(RequestKind::Prefill);
        if !reqs.is_empty() {
            let steps = vec![Step::Attend {
                keys: new_tokens(&reqs)?,
                gathered: false,
                mask: FaMask::Layer,
                into: Slot::Out,
            }];
            batches.push(SubBatch {
                kind: RequestKind::Prefill,
                reqs,
                steps,
            });
        }
        let reqs = of(RequestKind::Extend);
        if !reqs.is_empty() {
            let steps = match cfg.sliding_window {
                // The `min(seq_len, q + W)` keys each extend attends, in one causal call.
                Some(w) => {
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
                        into: Slot::Out,
                    }]
                }
                None => {
                    let ctx: Vec<usize> = reqs.iter().map(|&i| meta.context_len(i)).collect();
                    chunked_extend(
                        new_tokens(&reqs)?,
                        context_chunks(&ctx, self.cp_tokens_per_iter)?,
                    )
                }
            };
            batches.push(SubBatch {
                kind: RequestKind::Extend,
                reqs,
                steps,
            });
        }
        let reqs = of(RequestKind::Decode);
        if !reqs.is_empty() {
            let kernel = if cfg.sinks.is_some()
                || (cfg.sliding_window.is_some() && cfg.alibi_slopes.is_some())
            {
                AiterDecode::UnifiedAttention
            } else if self.shuffle_kv_cache {
                AiterDecode::PagedAttentionCommon
            } else {
                AiterDecode::PagedAttentionV1
            };
            batches.push(SubBatch {
                kind: RequestKind::Decode,
                reqs,
                steps: vec![Step::Decode(kernel)],
            });
        }
        Ok(batches)
    }
}

/// The sub-batch of requests `reqs` (their query rows, KV and block-table rows).
fn sub_batch(
    query: &[f32],
    meta: &AttentionMetadata,
    reqs: &[usize],
    row: usize,
) -> Result<(Vec<f32>, AttentionMetadata, Vec<usize>)> {
    let rows: Vec<usize> = reqs.iter().flat_map(|&i| meta.query_range(i)).collect();
    let q = rows
        .iter()
        .flat_map(|&t| &query[t * row..(t + 1) * row])
        .copied()
        .collect();
    let mut qsl = vec![0i32];
    reqs.iter()
        .for_each(|&i| qsl.push(qsl.last().unwrap() + meta.query_len(i) as i32));
    let table = BlockTableTensor::from_rows(
        &reqs
            .iter()
            .map(|&i| meta.block_table.row(i).to_vec())
            .collect::<Vec<_>>(),
    );
    let seq_lens = reqs.iter().map(|&i| meta.seq_lens[i]).collect();
    let slots = rows.iter().map(|&t| meta.slot_mapping[t]).collect();
    let sub = AttentionMetadata::new(
        meta.block_size,
        meta.num_blocks,
        qsl,
        seq_lens,
        table,
        slots,
        meta.causal,
    )?;
    Ok((q, sub, rows))
}

/// What a sub-batch's steps hand each other: the partials and the rows' output.
#[derive(Default)]
struct Slots {
    partials: [Option<OutLse>; 3],
    out: Option<Vec<f32>>,
}

impl Slots {
    fn store(&mut self, into: Slot, r: OutLse) {
        match into {
            Slot::Out => self.out = Some(r.out),
            s => self.partials[s as usize] = Some(r),
        }
    }

    fn take(&mut self, s: Slot) -> Result<OutLse> {
        let missing = || {
            Error::invalid(
                "merge input",
                format!("{s:?}"),
                "must be computed before it is merged",
            )
        };
        self.partials
            .get_mut(s as usize)
            .and_then(Option::take)
            .ok_or_else(missing)
    }
}

impl AttentionBackend for RocmAiterFa {
    fn name(&self) -> &'static str {
        "ROCM_AITER_FA"
    }

    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        cfg.validate()?;
        if !HEAD_SIZES.contains(&cfg.head_size) {
            return Err(Error::unsupported(
                format!("head size {}", cfg.head_size),
                format!("ROCM_AITER_FA supports head sizes {HEAD_SIZES:?}"),
            ));
        }
        if !matches!(cfg.dtype, DType::F16 | DType::Bf16) {
            return Err(Error::unsupported(
                format!("dtype {}", cfg.dtype),
                "ROCM_AITER_FA supports float16, bfloat16",
            ));
        }
        if cfg.kv_dtype != cfg.dtype && !cfg.kv_dtype.is_fp8() {
            return Err(Error::unsupported(
                format!("kv cache dtype {}", cfg.kv_dtype),
                "ROCM_AITER_FA supports auto and fp8 (e4m3) caches",
            ));
        }
        if !block_size.is_multiple_of(16) || block_size == 0 {
            return Err(Error::invalid(
                "block_size",
                block_size,
                "Block size must be a multiple of 16.",
            ));
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
        select_kernel_block_size(block_size, self.name(), KERNEL_BLOCK_SIZES)
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

    fn forward_with(
        &self,
        ex: &dyn KernelExecutor,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        self.check(cfg, meta.block_size)?;
        let want = self.cache_layout(cfg, cache.layout.num_blocks, meta.block_size)?;
        if cache.layout != want
            || cache.k.len() != want.numel()
            || cache.v.len() != want.numel()
            || want.num_blocks < meta.num_blocks
        {
            return Err(Error::invalid(
                "cache layout",
                format!("{:?}", cache.layout),
                format!(
                    "ROCM_AITER_FA needs {want:?} covering {} blocks",
                    meta.num_blocks
                ),
            ));
        }
        let (hq, d) = (cfg.num_heads, cfg.head_size);
        if query.len() != meta.num_actual_tokens * hq * d {
            return Err(Error::invalid(
                "query length",
                query.len(),
                format!(
                    "must be num_tokens * num_heads * head_size = {}",
                    meta.num_actual_tokens * hq * d
                ),
            ));
        }
        let fa = VarlenParams {
            // Fault::WindowConventionMixed: W handed over as the left bound (W, 0).
            window: cfg
                .sliding_window
                .map(|w| w + usize::from(cfg.faults.has(Fault::WindowConventionMixed))),
            alibi_slopes: cfg.alibi_slopes.as_deref(),
            sinks: cfg.sinks.as_deref(),
            ..VarlenParams::new(hq, cfg.num_kv_heads, d, cfg.dtype, cfg.scale)
        };
        let format = CacheFormat::of(cache.layout.kind)?;
        let mut out = vec![0.0f32; query.len()];
        for batch in self.route(meta, cfg)? {
            let (q, sub, rows) = sub_batch(query, meta, &batch.reqs, hq * d)?;
            let table: Vec<&[i32]> = batch
                .reqs
                .iter()
                .map(|&i| meta.block_table.row(i))
                .collect();
            let mut slots = Slots::default();
            for step in &batch.steps {
                match step {
                    Step::Attend {
                        keys,
                        gathered,
                        mask,
                        into,
                    } => {
                        let scales = (cfg.k_scale, cfg.v_scale);
                        let (k, v) = if *gathered {
                            ex.cp_mha_gather_cache(cache, &table, keys, format, scales, cfg.dtype)?
                        } else {
                            // The step's key/value tensors, read back from the cache (no launch).
                            gather_cache::cp_mha_gather_cache(
                                cache, &table, keys, format, scales, cfg.dtype,
                            )?
                        };
                        let p = match mask {
                            FaMask::Layer => VarlenParams {
                                causal: meta.causal,
                                ..fa.clone()
                            },
                            FaMask::Causal => fa.clone(),
                            // A context chunk: no sink (vLLM passes sink_ptr=None).
                            FaMask::Full => VarlenParams {
                                causal: false,
                                window: None,
                                sinks: None,
                                ..fa.clone()
                            },
                        };
                        slots.store(
                            *into,
                            ex.flash_attn_varlen(
                                &q,
                                &k,
                                &v,
                                &sub.query_start_loc,
                                &keys.cu_seqlens,
                                &p,
                            )?,
                        );
                    }
                    Step::Merge {
                        prefix,
                        suffix,
                        into,
                    } => {
                        let (prefix, suffix) = (slots.take(*prefix)?, slots.take(*suffix)?);
                        slots.store(
                            *into,
                            ex.merge_attn_states(&prefix, &suffix, cfg.dtype, MergeKernel::Triton)?,
                        );
                    }
                    Step::Decode(AiterDecode::UnifiedAttention) => {
                        let launch = UnifiedLaunch::aiter(&sub, cfg, MI300X_CU_COUNT)?;
                        slots.out = Some(ex.unified_attention(&q, cache, &sub, cfg, &launch)?);
                    }
                    Step::Decode(
                        AiterDecode::PagedAttentionV1 | AiterDecode::PagedAttentionCommon,
                    ) => {
                        let mut o = vec![0.0f32; q.len()];
                        ex.paged_attention_ll4mi(
                            &q,
                            cache,
                            &sub,
                            cfg,
                            PARTITION_SIZE_ROCM,
                            &mut o,
                        )?;
                        slots.out = Some(o);
                    }
                }
            }
            let o = slots.out.ok_or_else(|| {
                Error::invalid(
                    "ROCM_AITER_FA route",
                    format!("{:?}", batch.kind),
                    "must end in the output",
                )
            })?;
            let row = hq * d;
            rows.iter().enumerate().for_each(|(k, &t)| {
                out[t * row..(t + 1) * row].copy_from_slice(&o[k * row..(k + 1) * row])
            });
        }
        Ok(out)
    }

    /// The writer, then each [`Step`] of [`RocmAiterFa::route`] as its launches.
    fn plan(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Vec<KernelCall> {
        let (Ok(route), Ok(layout)) = (
            self.route(meta, cfg),
            self.cache_layout(cfg, meta.num_blocks, meta.block_size),
        ) else {
            return vec![];
        };
        let (hq, hkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_size);
        let (kc, vc) = (
            ("key_cache", layout.k_shape()),
            ("value_cache", layout.v_shape()),
        );
        let mut calls = vec![self
            .cache_writer(layout.block_size)
            .kernel_call(&layout, meta.num_actual_tokens)];
        for batch in route {
            let (tq, b) = (
                batch.reqs.iter().map(|&i| meta.query_len(i)).sum::<usize>(),
                batch.reqs.len(),
            );
            let (query, output) = (("query", vec![tq, hq, d]), ("output", vec![tq, hq, d]));
            for step in &batch.steps {
                match step {
                    Step::Attend {
                        keys,
                        gathered,
                        into,
                        ..
                    } => {
                        let (k, v) = (
                            ("key", vec![keys.total_tokens(), hkv, d]),
                            ("value", vec![keys.total_tokens(), hkv, d]),
                        );
                        if *gathered {
                            calls.push(KernelCall::new(
                                "cp_mha_gather_cache",
                                &[kc.clone(), vc.clone(), k.clone(), v.clone()],
                            ));
                        }
                        let mut s = vec![
                            query.clone(),
                            k,
                            v,
                            output.clone(),
                            ("cu_seqlens_q", vec![b + 1]),
                        ];
                        if *into != Slot::Out {
                            s.push(("softmax_lse", vec![hq, tq])); // merged later
                        }
                        s.push(("block_n", vec![ck_block_n(d)]));
                        calls.push(KernelCall::new("flash_attn_varlen_func", &s));
                    }
                    Step::Merge { .. } => calls.push(KernelCall::new(
                        "merge_attn_states",
                        &[
                            output.clone(),
                            ("prefix_lse", vec![hq, tq]),
                            ("suffix_lse", vec![hq, tq]),
                        ],
                    )),
                    Step::Decode(kernel) => {
                        let mut s = vec![query.clone(), kc.clone(), vc.clone(), output.clone()];
                        let name = match kernel {
                            AiterDecode::UnifiedAttention => "unified_attention",
                            AiterDecode::PagedAttentionV1 => "paged_attention_v1",
                            AiterDecode::PagedAttentionCommon => "paged_attention_common",
                        };
                        if *kernel != AiterDecode::UnifiedAttention {
                            s.push((
                                "tmp_out",
                                vec![b, hq, meta.max_seq_len.div_ceil(PARTITION_SIZE_ROCM), d],
                            ));
                        }
                        calls.push(KernelCall::new(name, &s));
                    }
                }
            }
        }
        calls
    }
}
