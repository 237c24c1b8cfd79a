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
//! Emulator notes. The trait hands `forward` the cache, not the step's new
//! K/V, so prefill and extend read the new tokens back with
//! `cp_mha_gather_cache` (vLLM's KV-sharing path, §11.4 (0)): identical
//! values for 16-bit caches; with fp8 caches they see their quantized K/V.
//! As in vLLM, prefill/extend ignore `logits_soft_cap` (only decode applies
//! it, §19 #5) and every partial FA call gets the sinks, so a chunked extend
//! counts each sink `num_chunks + 1` times (§19 #14). The SWA-trimmed decode
//! tables only move partition boundaries and are not modelled. Requires
//! CDNA3+ (gfx942, gfx950, gfx1250: `get_cdna_version() > 2`).

use crate::backends::exec::KernelExecutor;
use crate::backends::{AttentionBackend, KernelCall};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::flash_varlen::{ck_block_n, VarlenParams};
use crate::kernels::gather_cache::{CacheFormat, GatherChunk};
use crate::kernels::merge_attn_states::MergeKernel;
use crate::kernels::paged_decode::PARTITION_SIZE_ROCM;
use crate::kernels::reshape_and_cache::CacheWriter;
use crate::kernels::softmax::OutLse;
use crate::kernels::unified_attention::UnifiedLaunch;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor, RequestKind};

/// `_CP_TOKENS_PER_ITER_ROCM`: context tokens gathered per chunk, all extends together.
pub const CP_TOKENS_PER_ITER_ROCM: usize = 32 * 1024;
/// `get_supported_kernel_block_sizes()`.
pub const KERNEL_BLOCK_SIZES: [usize; 2] = [16, 32];
/// `get_supported_head_sizes()`.
pub const HEAD_SIZES: [usize; 3] = [64, 128, 256];
/// Compute units of the MI300X the seed blog measures: sizes AITER's unified launch.
pub const MI300X_CU_COUNT: usize = 304;
/// The assertion vLLM's decode path raises for shuffle + window / sinks.
pub const SHUFFLE_UNSUPPORTED: &str =
    "Shuffle KV cache layout is not supported with sliding window, sinks, or speculative decoding (multi-token decode).";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocmAiterFa {
    /// `VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1`: AITER's shuffled cache (the seed blog's design).
    pub shuffle_kv_cache: bool,
    /// Context-chunk budget; vLLM's constant unless a test shrinks it.
    pub cp_tokens_per_iter: usize,
}

impl Default for RocmAiterFa {
    fn default() -> Self {
        RocmAiterFa { shuffle_kv_cache: true, cp_tokens_per_iter: CP_TOKENS_PER_ITER_ROCM }
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

/// How `forward` splits a batch: the builder's output (§11.3), request ids in
/// decode : extend : prefill order (each kind keeps batch order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiterFaRoute {
    pub decodes: Vec<usize>,
    pub extends: Vec<usize>,
    pub prefills: Vec<usize>,
    pub decode_kernel: AiterDecode,
    /// The extends' context chunks (none with a sliding window).
    pub context_chunks: Vec<GatherChunk>,
    /// Sliding window: the `min(seq_len, q + W)` keys each extend attends.
    pub swa_tail: Option<GatherChunk>,
    /// The extends' and prefills' new tokens, read back from the cache.
    pub new_extend: GatherChunk,
    pub new_prefill: GatherChunk,
}

/// The builder's chunking (§11.3): `max_chunk = budget // num_extends`
/// context tokens per request per chunk.
pub fn context_chunks(ctx_lens: &[usize], cp_tokens_per_iter: usize) -> Result<Vec<GatherChunk>> {
    if ctx_lens.is_empty() {
        return Ok(vec![]);
    }
    let max_chunk = cp_tokens_per_iter / ctx_lens.len();
    if max_chunk == 0 {
        return Err(Error::invalid(
            "cp_tokens_per_iter",
            cp_tokens_per_iter,
            format!("must be >= the number of extends {}", ctx_lens.len()),
        ));
    }
    GatherChunk::split_contexts(ctx_lens, max_chunk)
}

impl RocmAiterFa {
    pub fn new(shuffle_kv_cache: bool) -> Self {
        RocmAiterFa { shuffle_kv_cache, ..Default::default() }
    }

    fn writer(&self) -> CacheWriter {
        if self.shuffle_kv_cache {
            CacheWriter::ReshapeAndCacheShuffleTriton
        } else {
            CacheWriter::ReshapeAndCacheFlash
        }
    }

    /// Splits the batch as `split_decodes_prefills_and_extends` does after the reorder.
    pub fn route(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<AiterFaRoute> {
        let of = |k: RequestKind| -> Vec<usize> { (0..meta.num_reqs()).filter(|&i| meta.kind(i, 1) == k).collect() };
        let (decodes, extends, prefills) = (of(RequestKind::Decode), of(RequestKind::Extend), of(RequestKind::Prefill));
        let decode_kernel = if cfg.sinks.is_some() || (cfg.sliding_window.is_some() && cfg.alibi_slopes.is_some()) {
            AiterDecode::UnifiedAttention
        } else if self.shuffle_kv_cache {
            AiterDecode::PagedAttentionCommon
        } else {
            AiterDecode::PagedAttentionV1
        };
        let new_tokens = |reqs: &[usize]| {
            GatherChunk::new(
                reqs.iter().map(|&i| meta.context_len(i)).collect(),
                &reqs.iter().map(|&i| meta.query_len(i)).collect::<Vec<_>>(),
            )
        };
        let (context_chunks, swa_tail) = match cfg.sliding_window {
            Some(w) => {
                let lens: Vec<usize> = extends.iter().map(|&i| meta.seq_len(i).min(meta.query_len(i) + w)).collect();
                let starts = extends.iter().zip(&lens).map(|(&i, l)| meta.seq_len(i) - l).collect();
                (vec![], Some(GatherChunk::new(starts, &lens)?))
            }
            None => (context_chunks(&extends.iter().map(|&i| meta.context_len(i)).collect::<Vec<_>>(), self.cp_tokens_per_iter)?, None),
        };
        Ok(AiterFaRoute {
            new_extend: new_tokens(&extends)?,
            new_prefill: new_tokens(&prefills)?,
            decodes,
            extends,
            prefills,
            decode_kernel,
            context_chunks,
            swa_tail,
        })
    }
}

/// The sub-batch of requests `reqs` (their query rows, KV and block-table rows).
fn sub_batch(query: &[f32], meta: &AttentionMetadata, reqs: &[usize], row: usize) -> Result<(Vec<f32>, AttentionMetadata, Vec<usize>)> {
    let rows: Vec<usize> = reqs.iter().flat_map(|&i| meta.query_range(i)).collect();
    let q = rows.iter().flat_map(|&t| &query[t * row..(t + 1) * row]).copied().collect();
    let mut qsl = vec![0i32];
    reqs.iter().for_each(|&i| qsl.push(qsl.last().unwrap() + meta.query_len(i) as i32));
    let table = BlockTableTensor::from_rows(&reqs.iter().map(|&i| meta.block_table.row(i).to_vec()).collect::<Vec<_>>());
    let seq_lens = reqs.iter().map(|&i| meta.seq_lens[i]).collect();
    let slots = rows.iter().map(|&t| meta.slot_mapping[t]).collect();
    let sub = AttentionMetadata::new(meta.block_size, meta.num_blocks, qsl, seq_lens, table, slots, meta.causal)?;
    Ok((q, sub, rows))
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
            return Err(Error::unsupported(format!("dtype {}", cfg.dtype), "ROCM_AITER_FA supports float16, bfloat16"));
        }
        if cfg.kv_dtype != cfg.dtype && !cfg.kv_dtype.is_fp8() {
            return Err(Error::unsupported(
                format!("kv cache dtype {}", cfg.kv_dtype),
                "ROCM_AITER_FA supports auto and fp8 (e4m3) caches",
            ));
        }
        if !block_size.is_multiple_of(16) || block_size == 0 {
            return Err(Error::invalid("block_size", block_size, "Block size must be a multiple of 16."));
        }
        if self.shuffle_kv_cache && (cfg.sliding_window.is_some() || cfg.sinks.is_some()) {
            return Err(Error::unsupported("VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1", SHUFFLE_UNSUPPORTED));
        }
        Ok(())
    }

    /// `select_common_block_size`: the manager size if supported, else the
    /// largest of [16, 32] dividing it (544 -> 32, 48 -> 16).
    fn kernel_block_size(&self, block_size: usize) -> Result<usize> {
        KERNEL_BLOCK_SIZES.iter().rev().find(|&&k| block_size == k || (block_size > 0 && block_size.is_multiple_of(k))).copied().ok_or_else(
            || {
                Error::invalid(
                    "block_size",
                    block_size,
                    format!("No common block size for {block_size} (ROCM_AITER_FA: {KERNEL_BLOCK_SIZES:?})"),
                )
            },
        )
    }

    fn cache_layout(&self, cfg: &AttnConfig, num_blocks: usize, block_size: usize) -> Result<KvLayout> {
        let kind = if self.shuffle_kv_cache { LayoutKind::AiterShuffled } else { LayoutKind::Nhd };
        KvLayout::new(kind, num_blocks, block_size, cfg.num_kv_heads, cfg.head_size, cfg.kv_dtype)
    }

    fn write_kv_with(&self, ex: &dyn KernelExecutor, cache: &mut KvCache, key: &[f32], value: &[f32], slot_mapping: &[i64], cfg: &AttnConfig) -> Result<()> {
        ex.reshape_and_cache(self.writer(), cache, key, value, slot_mapping, cfg)
    }

    fn forward_with(&self, ex: &dyn KernelExecutor, query: &[f32], cache: &KvCache, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<Vec<f32>> {
        self.check(cfg, meta.block_size)?;
        let want = self.cache_layout(cfg, cache.layout.num_blocks, meta.block_size)?;
        if cache.layout != want || cache.k.len() != want.numel() || cache.v.len() != want.numel() || want.num_blocks < meta.num_blocks {
            return Err(Error::invalid(
                "cache layout",
                format!("{:?}", cache.layout),
                format!("ROCM_AITER_FA needs {want:?} covering {} blocks", meta.num_blocks),
            ));
        }
        let (hq, d) = (cfg.num_heads, cfg.head_size);
        if query.len() != meta.num_actual_tokens * hq * d {
            return Err(Error::invalid(
                "query length",
                query.len(),
                format!("must be num_tokens * num_heads * head_size = {}", meta.num_actual_tokens * hq * d),
            ));
        }
        let route = self.route(meta, cfg)?;
        let mut out = vec![0.0f32; query.len()];
        let mut scatter = |rows: &[usize], o: &[f32]| {
            rows.iter().enumerate().for_each(|(k, &t)| out[t * hq * d..(t + 1) * hq * d].copy_from_slice(&o[k * hq * d..(k + 1) * hq * d]))
        };

        let fa = VarlenParams {
            window: cfg.sliding_window,
            alibi_slopes: cfg.alibi_slopes.as_deref(),
            sinks: cfg.sinks.as_deref(),
            ..VarlenParams::new(hq, cfg.num_kv_heads, d, cfg.dtype, cfg.scale)
        };
        let format = CacheFormat::of(cache.layout.kind)?;
        let gather = |reqs: &[usize], chunk: &GatherChunk| {
            let rows: Vec<&[i32]> = reqs.iter().map(|&i| meta.block_table.row(i)).collect();
            ex.cp_mha_gather_cache(cache, &rows, chunk, format, (cfg.k_scale, cfg.v_scale), cfg.dtype)
        };

        if !route.prefills.is_empty() {
            let (q, sub, rows) = sub_batch(query, meta, &route.prefills, hq * d)?;
            let (k, v) = gather(&route.prefills, &route.new_prefill)?;
            let qsl = &sub.query_start_loc;
            scatter(&rows, &ex.flash_attn_varlen(&q, &k, &v, qsl, qsl, &VarlenParams { causal: meta.causal, ..fa.clone() })?.out);
        }
        if !route.extends.is_empty() {
            let (q, sub, rows) = sub_batch(query, meta, &route.extends, hq * d)?;
            let qsl = &sub.query_start_loc;
            if let Some(tail) = &route.swa_tail {
                let (k, v) = gather(&route.extends, tail)?;
                scatter(&rows, &ex.flash_attn_varlen(&q, &k, &v, qsl, &tail.cu_seqlens, &fa)?.out);
            } else {
                let (k, v) = gather(&route.extends, &route.new_extend)?;
                let new = ex.flash_attn_varlen(&q, &k, &v, qsl, qsl, &fa)?;
                let mut ctx: Option<OutLse> = None;
                for chunk in &route.context_chunks {
                    let (k, v) = gather(&route.extends, chunk)?;
                    let part =
                        ex.flash_attn_varlen(&q, &k, &v, qsl, &chunk.cu_seqlens, &VarlenParams { causal: false, window: None, ..fa.clone() })?;
                    ctx = Some(match ctx {
                        None => part,
                        Some(prev) => ex.merge_attn_states(&prev, &part, cfg.dtype, MergeKernel::Triton)?,
                    });
                }
                let merged = match ctx {
                    Some(ctx) => ex.merge_attn_states(&ctx, &new, cfg.dtype, MergeKernel::Triton)?,
                    None => new, // unreachable for extends (context > 0), vLLM §19 #15
                };
                scatter(&rows, &merged.out);
            }
        }
        if !route.decodes.is_empty() {
            let (q, sub, rows) = sub_batch(query, meta, &route.decodes, hq * d)?;
            let o = match route.decode_kernel {
                AiterDecode::UnifiedAttention => {
                    ex.unified_attention(&q, cache, &sub, cfg, &UnifiedLaunch::aiter(&sub, cfg, MI300X_CU_COUNT)?)?
                }
                AiterDecode::PagedAttentionV1 | AiterDecode::PagedAttentionCommon => {
                    let mut o = vec![0.0f32; q.len()];
                    ex.paged_attention_ll4mi(&q, cache, &sub, cfg, PARTITION_SIZE_ROCM, &mut o)?;
                    o
                }
            };
            scatter(&rows, &o);
        }
        Ok(out)
    }

    fn plan(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Vec<KernelCall> {
        let (Ok(route), Ok(layout)) = (self.route(meta, cfg), self.cache_layout(cfg, meta.num_blocks, meta.block_size)) else {
            return vec![];
        };
        let (t, hq, hkv, d) = (meta.num_actual_tokens, cfg.num_heads, cfg.num_kv_heads, cfg.head_size);
        let (kc, vc) = (layout.k_shape(), layout.v_shape());
        let tokens = |reqs: &[usize]| reqs.iter().map(|&i| meta.query_len(i)).sum::<usize>();
        let gather = |n: usize| {
            KernelCall::new(
                "cp_mha_gather_cache",
                &[("key_cache", kc.clone()), ("value_cache", vc.clone()), ("key", vec![n, hkv, d]), ("value", vec![n, hkv, d])],
            )
        };
        let fa = |tq: usize, tk: usize, b: usize, lse: bool| {
            let mut s = vec![
                ("query", vec![tq, hq, d]),
                ("key", vec![tk, hkv, d]),
                ("value", vec![tk, hkv, d]),
                ("output", vec![tq, hq, d]),
                ("cu_seqlens_q", vec![b + 1]),
            ];
            if lse {
                s.push(("softmax_lse", vec![hq, tq]));
            }
            s.push(("block_n", vec![ck_block_n(d)]));
            KernelCall::new("flash_attn_varlen_func", &s)
        };
        let merge = |tq: usize| {
            KernelCall::new("merge_attn_states", &[("output", vec![tq, hq, d]), ("prefix_lse", vec![hq, tq]), ("suffix_lse", vec![hq, tq])])
        };
        let mut calls = vec![KernelCall::new(
            self.writer().kernel_name(),
            &[
                ("key", vec![t, hkv, d]),
                ("value", vec![t, hkv, d]),
                ("key_cache", kc.clone()),
                ("value_cache", vc.clone()),
                ("slot_mapping", vec![t]),
            ],
        )];
        let (tp, np) = (tokens(&route.prefills), route.prefills.len());
        if np > 0 {
            calls.extend([gather(tp), fa(tp, tp, np, false)]);
        }
        let (te, ne) = (tokens(&route.extends), route.extends.len());
        if let Some(tail) = route.swa_tail.as_ref().filter(|_| ne > 0) {
            calls.extend([gather(tail.total_tokens()), fa(te, tail.total_tokens(), ne, false)]);
        } else if ne > 0 {
            calls.extend([gather(te), fa(te, te, ne, true)]);
            for (c, chunk) in route.context_chunks.iter().enumerate() {
                calls.extend([gather(chunk.total_tokens()), fa(te, chunk.total_tokens(), ne, true)]);
                if c > 0 {
                    calls.push(merge(te));
                }
            }
            calls.push(merge(te));
        }
        let (td, nd) = (tokens(&route.decodes), route.decodes.len());
        if nd > 0 {
            let name = match route.decode_kernel {
                AiterDecode::PagedAttentionV1 => "paged_attention_v1",
                AiterDecode::PagedAttentionCommon => "paged_attention_common",
                AiterDecode::UnifiedAttention => "unified_attention",
            };
            let mut s = vec![("query", vec![td, hq, d]), ("key_cache", kc), ("value_cache", vc), ("output", vec![td, hq, d])];
            if route.decode_kernel != AiterDecode::UnifiedAttention {
                s.push(("tmp_out", vec![nd, hq, meta.max_seq_len.div_ceil(PARTITION_SIZE_ROCM), d]));
            }
            calls.push(KernelCall::new(name, &s));
        }
        calls
    }
}
