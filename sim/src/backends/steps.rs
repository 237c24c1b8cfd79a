//! The step language every MHA backend routes a batch into, and its two
//! interpreters: [`run`] makes each step's kernel launch on a
//! [`KernelExecutor`] (the emulator or a GPU), [`render`] shows it as
//! `attnlab trace` prints it. A backend's `route` writes its sequence out
//! once, as [`Step`]s over sub-batches, so what `forward` runs and what
//! `plan` shows cannot drift apart.
//!
//! The cache write (the backend's [`CacheWriter`](crate::kernels::reshape_and_cache::CacheWriter))
//! precedes every route; [`super::AttentionBackend`] makes it, once for all.
//!
//! Partial results travel between steps in [`Slot`]s named after vLLM's
//! locals in `AiterFlashAttentionImpl.extend_forward`: `out, lse` (the new
//! tokens), `suf_out, suf_lse` (one context chunk), `chunked_output,
//! chunked_lse` (the context chunks merged so far) and `output` (the rows'
//! result).

use crate::backends::exec::KernelExecutor;
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::flash_varlen::{ck_block_n, VarlenArgs, VarlenParams, VarlenParamsBuilder};
use crate::kernels::flex_attention::{flex_block_n, FlexArgs, SPARSE_Q_BLOCK_SIZE};
use crate::kernels::gather_cache::{self, CacheFormat, GatherArgs, GatherChunk};
use crate::kernels::merge_attn_states::{MergeArgs, MergeKernel};
use crate::kernels::paged_decode::{
    max_num_partitions, PagedInputs, PartitionSize, PARTITION_SIZE_ROCM,
};
use crate::kernels::prefix_prefill::{PrefixArgs, PrefixVariant};
use crate::kernels::softmax::OutLse;
use crate::kernels::unified_attention::{UnifiedArgs, UnifiedLaunch, MI300X_CU_COUNT};
use crate::kernels::KernelCall;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::Fault;
use attnlab_shared::layout::KvLayout;
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor, RequestKind};

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
    /// `out, lse`: the new tokens' partial.
    Out,
    /// `chunked_output, chunked_lse`: the context chunks merged so far.
    ChunkedOutput,
    /// `suf_out, suf_lse`: one context chunk's partial.
    SufOut,
    /// `output`: the rows' result.
    Output,
}

/// A kernel over the paged cache that writes the rows' `output` (all of
/// them, or, for ROCM_ATTN's pair, the rows it owns: prefill rows, decode rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paged {
    /// vLLM's or AITER's unified attention with this launch (2D or 3D).
    Unified(UnifiedLaunch),
    /// AITER's Triton `unified_attention` as ROCM_AITER_FA's decode calls it
    /// (sinks; window with ALiBi), launched by AITER's rule for the rows.
    AiterUnifiedAttention,
    /// `torch.ops.aiter.paged_attention_v1`: ll4mi partitions + reduce over the NHD cache.
    PagedAttentionV1,
    /// `aiter.paged_attention_common` over the shuffled cache (asm or HIP; ll4mi structure here).
    PagedAttentionCommon,
    /// ROCM_ATTN's Triton prefix prefill of the rows with query_len > 1 (`skip_decode`).
    PrefixPrefill,
    /// ROCM_ATTN's HIP ll4mi decode (the query_len == 1 rows), CDNA launcher.
    Ll4mi,
    /// ROCM_ATTN's Triton `kernel_paged_attention_2d` decode (the query_len == 1 rows).
    Triton2d,
    /// PyTorch's compiled `flex_attention` with a block-sparse mask over the physical cache.
    Flex,
}

/// One step of a sub-batch, in launch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `flash_attn_varlen_func` of the queries over `keys`: the step's new
    /// tokens (`gathered: false`, vLLM passes its key/value tensors), or a
    /// context chunk / the SWA tail fetched by `cp_mha_gather_cache` first.
    ///
    /// The trait hands `forward` the cache (holding the step's new K/V, as
    /// fixtures capture it), not the step's key/value tensors, so the new
    /// tokens' K/V that vLLM passes straight to flash_attn_varlen_func are
    /// read back from the cache here as input preparation, not as a kernel
    /// launch (`render` shows no gather for them): identical values for
    /// 16-bit caches; with fp8 caches they are the quantized K/V. No
    /// soft-cap reaches this call. Sinks go to every call but a context
    /// chunk's ([`FaMask::Full`]), so a chunked extend counts each sink once
    /// (vLLM 0.34 `rocm_aiter_fa.py` `AiterFlashAttentionImpl.extend_forward`:
    /// the chunk calls pass `sink_ptr=None` "the causal call above already
    /// adds the sink"; the seed era's impl, @002d0eb6, takes no sinks at
    /// all). This replaces the unverified "sink per chunk" reading of
    /// vllm-backends.md §19 #14.
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
    /// A kernel over the paged cache.
    Paged(Paged),
}

/// An extend over its new tokens and its context in chunks (vLLM's
/// `extend_forward`): `out, lse` of the new tokens, each context chunk's
/// `suf_out` folded into `chunked_output`, then `chunked_output` merged with
/// `out` into `output`.
pub fn chunked_extend(new_tokens: GatherChunk, chunks: Vec<GatherChunk>) -> Vec<Step> {
    use Slot::*;
    let chunked = !chunks.is_empty(); // always for extends (context > 0), vllm-backends.md §19 #15
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

/// Which rows of the batch a sub-batch computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rows {
    /// The whole batch, as it is.
    All,
    /// The requests of one kind (batch order), copied out into their own batch.
    Of(RequestKind, Vec<usize>),
}

/// The requests of one kind (batch order) and the steps computing their rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubBatch {
    pub rows: Rows,
    pub steps: Vec<Step>,
}

impl SubBatch {
    /// The whole batch through `steps`.
    pub fn all(steps: Vec<Step>) -> Self {
        SubBatch {
            rows: Rows::All,
            steps,
        }
    }

    /// The requests `reqs` (all of `kind`) through `steps`.
    pub fn of(kind: RequestKind, reqs: Vec<usize>, steps: Vec<Step>) -> Self {
        SubBatch {
            rows: Rows::Of(kind, reqs),
            steps,
        }
    }
}

/// A route's sub-batches read query rows and cache blocks themselves (to
/// copy a kind's rows out), so they are checked first: the cache must be
/// `want` and cover the metadata's blocks, the query `[T, Hq, D]`.
pub fn check_split_inputs(
    backend: &str,
    want: &KvLayout,
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
) -> Result<()> {
    if cache.layout != *want
        || cache.k.len() != want.numel()
        || cache.v.len() != want.numel()
        || want.num_blocks < meta.num_blocks()
    {
        return Err(Error::invalid(
            "cache layout",
            format!("{:?}", cache.layout),
            format!(
                "{backend} needs {want:?} covering {} blocks",
                meta.num_blocks()
            ),
        ));
    }
    let (hq, d) = (cfg.num_heads(), cfg.head_size());
    if query.len() != meta.num_actual_tokens() * hq * d {
        return Err(Error::invalid(
            "query length",
            query.len(),
            format!(
                "must be num_tokens * num_heads * head_size = {}",
                meta.num_actual_tokens() * hq * d
            ),
        ));
    }
    Ok(())
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
            .map(|&i| meta.block_table().row(i).to_vec())
            .collect::<Vec<_>>(),
    );
    let seq_lens = reqs.iter().map(|&i| meta.seq_lens()[i]).collect();
    let slots = rows.iter().map(|&t| meta.slot_mapping()[t]).collect();
    let sub = AttentionMetadata::new(
        meta.block_size(),
        meta.num_blocks(),
        qsl,
        seq_lens,
        table,
        slots,
        meta.causal(),
    )?;
    Ok((q, sub, rows))
}

/// What a sub-batch's steps hand each other: the partials and the rows' output.
#[derive(Default)]
struct Slots {
    partials: [Option<OutLse>; 3],
    output: Option<Vec<f32>>,
}

impl Slots {
    fn store(&mut self, into: Slot, r: OutLse) {
        match into {
            Slot::Output => self.output = Some(r.into_out()),
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

/// Runs `route` on `ex`: each sub-batch's steps, their rows scattered into
/// the batch's `[T, Hq, D]` output.
pub fn run(
    ex: &dyn KernelExecutor,
    route: &[SubBatch],
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
) -> Result<Vec<f32>> {
    let row = cfg.num_heads() * cfg.head_size();
    let mut out: Option<Vec<f32>> = None;
    for batch in route {
        let (owned, reqs) = match &batch.rows {
            Rows::All => (None, None),
            Rows::Of(_, reqs) => (Some(sub_batch(query, meta, reqs, row)?), Some(reqs)),
        };
        let (q, sub) = match &owned {
            Some((q, sub, _)) => (q.as_slice(), sub),
            None => (query, meta),
        };
        let table: Vec<&[i32]> = match reqs {
            Some(reqs) => reqs.iter().map(|&i| meta.block_table().row(i)).collect(),
            None => (0..meta.num_reqs())
                .map(|i| meta.block_table().row(i))
                .collect(),
        };
        let mut slots = Slots::default();
        for step in &batch.steps {
            run_step(ex, step, q, cache, sub, &table, cfg, &mut slots)?;
        }
        let o = slots.output.ok_or_else(|| {
            Error::invalid(
                "route",
                format!("{:?}", batch.rows),
                "must end in the output",
            )
        })?;
        match &owned {
            None => out = Some(o),
            Some((_, _, rows)) => {
                let out = out.get_or_insert_with(|| vec![0.0f32; query.len()]);
                rows.iter().enumerate().for_each(|(k, &t)| {
                    out[t * row..(t + 1) * row].copy_from_slice(&o[k * row..(k + 1) * row])
                })
            }
        }
    }
    Ok(out.unwrap_or_else(|| vec![0.0f32; query.len()]))
}

/// The parameters of an [`Step::Attend`]'s `flash_attn_varlen_func` call
/// with `mask`, for a batch that is causal or not (`causal`): the layer's
/// heads, dtype, scale, window, ALiBi and sinks, no soft-cap (none reaches
/// this call).
pub fn attend_params(cfg: &AttnConfig, causal: bool, mask: FaMask) -> Result<VarlenParams<'_>> {
    let fa = VarlenParamsBuilder {
        // Fault::WindowConventionMixed: W handed over as the left bound (W, 0).
        window: cfg
            .sliding_window()
            .map(|w| w + usize::from(cfg.faults().has(Fault::WindowConventionMixed))),
        alibi_slopes: cfg.alibi_slopes(),
        sinks: cfg.sinks(),
        ..VarlenParams::builder(
            cfg.num_heads(),
            cfg.num_kv_heads(),
            cfg.head_size(),
            cfg.dtype(),
            cfg.scale(),
        )
    }
    .build()?;
    match mask {
        FaMask::Layer => VarlenParamsBuilder {
            causal,
            ..fa.to_builder()
        }
        .build(),
        FaMask::Causal => Ok(fa),
        // A context chunk: no sink (vLLM passes sink_ptr=None).
        FaMask::Full => VarlenParamsBuilder {
            causal: false,
            window: None,
            sinks: None,
            ..fa.to_builder()
        }
        .build(),
    }
}

/// One step's launch over the (sub-)batch `meta` with queries `q`.
#[allow(clippy::too_many_arguments)]
fn run_step(
    ex: &dyn KernelExecutor,
    step: &Step,
    q: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    table: &[&[i32]],
    cfg: &AttnConfig,
    slots: &mut Slots,
) -> Result<()> {
    match step {
        Step::Attend {
            keys,
            gathered,
            mask,
            into,
        } => {
            let format = CacheFormat::of(cache.layout.kind)?;
            let scales = (cfg.k_scale(), cfg.v_scale());
            let args = GatherArgs::new(cache, table, keys, format, scales, cfg.dtype())?;
            let (k, v) = if *gathered {
                ex.cp_mha_gather_cache(&args)?
            } else {
                // The step's key/value tensors, read back from the cache (no launch).
                gather_cache::gather(&args)
            };
            let p = attend_params(cfg, meta.causal(), *mask)?;
            let (cu_q, cu_k) = (&meta.query_start_loc(), &keys.cu_seqlens);
            let r = ex.flash_attn_varlen(&VarlenArgs::new(q, &k, &v, cu_q, cu_k, &p)?)?;
            slots.store(*into, r);
        }
        Step::Merge {
            prefix,
            suffix,
            into,
        } => {
            let (prefix, suffix) = (slots.take(*prefix)?, slots.take(*suffix)?);
            let args = MergeArgs::new(&prefix, &suffix, cfg.dtype(), MergeKernel::Triton)?;
            let r = ex.merge_attn_states(&args)?;
            slots.store(*into, r);
        }
        Step::Paged(Paged::Unified(launch)) => {
            let args = UnifiedArgs::new(q, cache, meta, cfg, launch)?;
            slots.output = Some(ex.unified_attention(&args)?);
        }
        Step::Paged(Paged::AiterUnifiedAttention) => {
            let launch = UnifiedLaunch::aiter(meta, cfg, MI300X_CU_COUNT)?;
            let args = UnifiedArgs::new(q, cache, meta, cfg, &launch)?;
            slots.output = Some(ex.unified_attention(&args)?);
        }
        Step::Paged(Paged::Flex) => {
            slots.output = Some(ex.flex_attention(&FlexArgs::new(q, cache, meta, cfg)?)?)
        }
        Step::Paged(kernel) => {
            let rows = meta.num_actual_tokens() * cfg.num_heads() * cfg.head_size();
            let output = slots.output.get_or_insert_with(|| vec![0.0f32; rows]);
            match kernel {
                Paged::PrefixPrefill => {
                    let inputs = PagedInputs::new(q, cache, meta, cfg)?;
                    inputs.check_out(output)?;
                    ex.context_attention_fwd(&PrefixArgs::new(inputs, true)?, output)?
                }
                Paged::Triton2d => {
                    ex.paged_attention_2d(&PagedInputs::new(q, cache, meta, cfg)?, output)?
                }
                _ => {
                    // ll4mi's VHELOOP must cover the head (vllm #34570).
                    crate::rules::ll4mi_head_size(cfg.head_size())?;
                    let inputs = PagedInputs::new(q, cache, meta, cfg)?;
                    ex.paged_attention_ll4mi(&inputs, PartitionSize::ROCM, output)?
                }
            }
        }
    }
    Ok(())
}

/// The launches of `route` as `attnlab trace` shows them (after the
/// writer's), for a cache of `layout`.
pub fn render(
    route: &[SubBatch],
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    layout: &KvLayout,
) -> Vec<KernelCall> {
    let mut calls = vec![];
    for batch in route {
        let (tq, b) = match &batch.rows {
            Rows::All => (meta.num_actual_tokens(), meta.num_reqs()),
            Rows::Of(_, reqs) => (
                reqs.iter().map(|&i| meta.query_len(i)).sum::<usize>(),
                reqs.len(),
            ),
        };
        for step in &batch.steps {
            render_step(step, tq, b, meta, cfg, layout, &mut calls);
        }
    }
    calls
}

/// One step's launches for `tq` query tokens of `b` requests.
fn render_step(
    step: &Step,
    tq: usize,
    b: usize,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    layout: &KvLayout,
    calls: &mut Vec<KernelCall>,
) {
    let (hq, hkv, d) = (cfg.num_heads(), cfg.num_kv_heads(), cfg.head_size());
    let (kc, vc) = (
        ("key_cache", layout.k_shape()),
        ("value_cache", layout.v_shape()),
    );
    let (query, output) = (("query", vec![tq, hq, d]), ("output", vec![tq, hq, d]));
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
                    &[kc, vc, k.clone(), v.clone()],
                ));
            }
            let mut s = vec![query, k, v, output, ("cu_seqlens_q", vec![b + 1])];
            if *into != Slot::Output {
                s.push(("softmax_lse", vec![hq, tq])); // merged later
            }
            s.push(("block_n", vec![ck_block_n(d)]));
            calls.push(KernelCall::new("flash_attn_varlen_func", &s));
        }
        Step::Merge { .. } => calls.push(KernelCall::new(
            "merge_attn_states",
            &[
                output,
                ("prefix_lse", vec![hq, tq]),
                ("suffix_lse", vec![hq, tq]),
            ],
        )),
        Step::Paged(Paged::Unified(launch)) => calls.extend(launch.kernel_calls(meta, cfg)),
        Step::Paged(
            kernel @ (Paged::AiterUnifiedAttention
            | Paged::PagedAttentionV1
            | Paged::PagedAttentionCommon),
        ) => {
            let mut s = vec![query, kc, vc, output];
            let name = match kernel {
                Paged::AiterUnifiedAttention => "unified_attention",
                Paged::PagedAttentionV1 => "paged_attention_v1",
                _ => "paged_attention_common",
            };
            if *kernel != Paged::AiterUnifiedAttention {
                s.push((
                    "tmp_out",
                    vec![b, hq, meta.max_seq_len().div_ceil(PARTITION_SIZE_ROCM), d],
                ));
            }
            calls.push(KernelCall::new(name, &s));
        }
        Step::Paged(Paged::Flex) => {
            let q_blocks = tq.div_ceil(SPARSE_Q_BLOCK_SIZE);
            calls.push(KernelCall::new(
                "flex_attention",
                &[
                    ("query", vec![1, hq, tq, d]),
                    (
                        "key_cache",
                        vec![1, hkv, meta.num_blocks() * meta.block_size(), d],
                    ),
                    ("block_mask", vec![q_blocks, meta.num_blocks()]),
                    (
                        "block_n",
                        vec![flex_block_n(cfg.dtype(), meta.block_size())],
                    ),
                    ("output", vec![tq, hq, d]),
                ],
            ));
        }
        // ROCM_ATTN's chunked_prefill_paged_decode: the whole batch's tensors.
        Step::Paged(kernel) => {
            let qo = [query, output.clone(), kc, vc];
            let mut shapes = qo.to_vec();
            match kernel {
                Paged::PrefixPrefill => {
                    let v = PrefixVariant::for_config(cfg);
                    shapes.push((
                        "grid",
                        vec![b, hq, meta.max_query_len().div_ceil(v.block_m)],
                    ));
                    calls.push(KernelCall::new(v.kernel, &shapes));
                }
                Paged::Ll4mi => {
                    let p = max_num_partitions(meta.max_seq_len(), PARTITION_SIZE_ROCM);
                    let name = if cfg.queries_per_kv() <= 4 {
                        "paged_attention_ll4mi_QKV_mfma4_kernel"
                    } else {
                        "paged_attention_ll4mi_QKV_mfma16_kernel"
                    };
                    shapes.extend([
                        ("grid", vec![b, p, hkv]),
                        ("exp_sums", vec![b, hq, p]),
                        ("max_logits", vec![b, hq, p]),
                        ("tmp_out", vec![b, hq, p, d]),
                    ]);
                    calls.push(KernelCall::new(name, &shapes));
                    calls.push(KernelCall::new(
                        "paged_attention_ll4mi_reduce_kernel",
                        &[
                            ("grid", vec![hq, b]),
                            ("tmp_out", vec![b, hq, p, d]),
                            output,
                        ],
                    ));
                }
                _ => {
                    shapes.push(("grid", vec![b, hkv]));
                    calls.push(KernelCall::new("kernel_paged_attention_2d", &shapes));
                }
            }
        }
    }
}
