//! vLLM's MLA common layer (`MLAAttention.forward_impl`,
//! `model_executor/layers/attention/mla_attention.py`, vllm-backends.md §13):
//! what every MLA backend does around its decode kernel. One step:
//! ```text
//! concat_and_cache_mla(kv_c, k_pe, slot_mapping)                  # latent cache write
//! nd = split_decodes_and_prefills(threshold)                      # decodes first
//! per TP rank (heads h0..h1):
//!   decode rows [:ndt]: mqa_q = [q_nope @ W_UK_T | q_pe]; (o, lse) = backend.forward_mqa(mqa_q)
//!                       out = o @ W_UV
//!   prefill rows [ndt:]: k_nope, v = kv_b_proj(kv_c); k = [k_nope | k_pe]
//!                        new = flash_attn_varlen(q, k, v, causal)                       (o, lse)
//!                        for chunk in plan_mla_context_chunks(ctx_lens, W):             if any context
//!                            rows = gather_and_maybe_dequant_cache(chunk); k, v = kv_b_proj(rows)
//!                            part = flash_attn_varlen(q[chunk reqs], k, v, non-causal)
//!                            running[req] = part, or merge(running, part) for a continuation
//!                        out = merge_attn_states(prefix = running, suffix = new)
//! ```
//! The merge kernel is the Triton one in the seed-era profile and the HIP one
//! in the 0.33 profile (vllm-backends.md §12 dispatch on CDNA3+).
//!
//! Every kernel launch goes through a [`KernelExecutor`] (`*_with`): the
//! plain entry points run the emulator ([`Cpu`]); attnlab-gpu's executor runs
//! the same composition on a device for the end-to-end backend diff. What
//! stays on the host is what vLLM does with tensor views (head slices,
//! `torch.cat`, token ranges of the running output).

use super::{MlaBackend, MlaConfig, MlaDecodeBatch};
use crate::backends::exec::{Cpu, KernelExecutor};
use crate::backends::KernelCall;
use crate::kernels::flash_varlen::{VarlenArgs, VarlenParams, VarlenParamsBuilder};
use crate::kernels::merge_attn_states::{MergeArgs, MergeKernel};
use crate::kernels::mla_cache::{LatentCache, LatentWrite};
use crate::kernels::mla_prefill::{
    plan_mla_context_chunks, workspace_rows, ContextChunk, LatentGather,
};
use crate::kernels::mla_proj::{MlaWeights, ProjArgs, Projection};
use crate::kernels::softmax::OutLse;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::Fault;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::selection::Profile;
use serde::Serialize;
use std::ops::Range;

/// One step's inputs to an MLA layer (all in `cfg.dtype`, `T = meta.num_actual_tokens`).
#[derive(Debug, Clone, Copy)]
pub struct MlaStep<'a> {
    /// `[T, N, P + R]`: q_nope then q_pe (RoPE applied), every model head.
    pub q: &'a [f32],
    /// `[T, Lkv]`: kv_c_normed.
    pub kv_c: &'a [f32],
    /// `[T, R]`: k_pe after RoPE.
    pub k_pe: &'a [f32],
    pub meta: &'a AttentionMetadata,
}

/// What one tensor-parallel rank computes: its heads' attention output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankOutput {
    pub rank: usize,
    pub heads: Range<usize>,
    /// `[T, heads.len(), V]`, exact in `cfg.dtype`.
    pub out: Vec<f32>,
}

/// Checks, writes the latent cache, then [`forward`]: one layer, one step.
pub fn run_mla_step(
    backend: &dyn MlaBackend,
    step: &MlaStep,
    cache: &mut LatentCache,
    weights: &MlaWeights,
    cfg: &MlaConfig,
) -> Result<Vec<RankOutput>> {
    run_mla_step_with(&Cpu::FMA, backend, step, cache, weights, cfg)
}

/// [`run_mla_step`] with every kernel launched through `ex`.
pub fn run_mla_step_with(
    ex: &dyn KernelExecutor,
    backend: &dyn MlaBackend,
    step: &MlaStep,
    cache: &mut LatentCache,
    weights: &MlaWeights,
    cfg: &MlaConfig,
) -> Result<Vec<RankOutput>> {
    write_kv_with(ex, backend, step, cache, weights, cfg)?;
    forward_with(ex, backend, step, cache, weights, cfg)
}

/// Checks, then `concat_and_cache_mla` of the step's tokens through `ex`.
pub fn write_kv_with(
    ex: &dyn KernelExecutor,
    backend: &dyn MlaBackend,
    step: &MlaStep,
    cache: &mut LatentCache,
    weights: &MlaWeights,
    cfg: &MlaConfig,
) -> Result<()> {
    validate(backend, step, cache, weights, cfg)?;
    let t = step.meta.num_actual_tokens();
    ex.concat_and_cache_mla(LatentWrite::new(
        cache,
        step.kv_c,
        step.k_pe,
        &step.meta.slot_mapping()[..t],
        cfg.k_scale,
    )?)
}

/// Attention for every token, per TP rank (the cache already holds the step's tokens).
pub fn forward(
    backend: &dyn MlaBackend,
    step: &MlaStep,
    cache: &LatentCache,
    weights: &MlaWeights,
    cfg: &MlaConfig,
) -> Result<Vec<RankOutput>> {
    forward_with(&Cpu::FMA, backend, step, cache, weights, cfg)
}

/// [`forward`] with every kernel launched through `ex`.
pub fn forward_with(
    ex: &dyn KernelExecutor,
    backend: &dyn MlaBackend,
    step: &MlaStep,
    cache: &LatentCache,
    weights: &MlaWeights,
    cfg: &MlaConfig,
) -> Result<Vec<RankOutput>> {
    validate(backend, step, cache, weights, cfg)?;
    let nd = num_decodes(backend, step.meta, cfg)?;
    let (n, h, qw) = (
        cfg.num_heads,
        cfg.heads_per_rank(),
        cfg.dims.qk_nope_head_dim + cfg.dims.qk_rope_head_dim,
    );
    (0..cfg.tp)
        .map(|rank| {
            let heads = rank * h..(rank + 1) * h;
            let q: Vec<f32> = step
                .q
                .chunks_exact(n * qw)
                .flat_map(|row| row[heads.start * qw..heads.end * qw].iter().copied())
                .collect();
            let out = forward_rank(
                ex,
                backend,
                &q,
                step,
                nd,
                cache,
                &weights.shard(rank, cfg.tp)?,
                cfg,
            )?;
            Ok(RankOutput { rank, heads, out })
        })
        .collect()
}

fn validate(
    backend: &dyn MlaBackend,
    step: &MlaStep,
    cache: &LatentCache,
    weights: &MlaWeights,
    cfg: &MlaConfig,
) -> Result<()> {
    backend.check(cfg, step.meta.block_size())?;
    let (t, d, l) = (step.meta.num_actual_tokens(), cfg.dims, cache.layout);
    for (what, len, want) in [
        (
            "q",
            step.q.len(),
            t * cfg.num_heads * (d.qk_nope_head_dim + d.qk_rope_head_dim),
        ),
        ("kv_c", step.kv_c.len(), t * d.kv_lora_rank),
        ("k_pe", step.k_pe.len(), t * d.qk_rope_head_dim),
    ] {
        if len != want {
            return Err(Error::invalid(
                format!("{what} length"),
                len,
                format!(
                    "{t} tokens x {} heads with dims {d:?} need {want}",
                    cfg.num_heads
                ),
            ));
        }
    }
    if (l.kv_lora_rank, l.rope_dim, l.dtype) != (d.kv_lora_rank, d.qk_rope_head_dim, cfg.kv_dtype) {
        return Err(Error::invalid(
            "latent cache layout",
            format!("{:?} {}", l.shape(), l.dtype),
            format!(
                "config needs width {} in {}",
                d.latent_width(),
                cfg.kv_dtype
            ),
        ));
    }
    if (l.block_size, l.num_blocks) != (step.meta.block_size(), step.meta.num_blocks()) {
        return Err(Error::invalid(
            "latent cache blocks",
            format!("{} x {}", l.num_blocks, l.block_size),
            format!(
                "metadata says {} x {}",
                step.meta.num_blocks(),
                step.meta.block_size()
            ),
        ));
    }
    if (weights.num_heads(), weights.dims()) != (cfg.num_heads, d) {
        return Err(Error::invalid(
            "kv_b_proj heads",
            weights.num_heads(),
            format!("config has {} heads with dims {d:?}", cfg.num_heads),
        ));
    }
    Ok(())
}

/// `split_decodes_and_prefills`: the leading requests with query_len <=
/// `decode_threshold` (and, for a UNIFORM backend, the first one's length).
pub fn num_decodes(
    backend: &dyn MlaBackend,
    meta: &AttentionMetadata,
    cfg: &MlaConfig,
) -> Result<usize> {
    let first = (meta.num_reqs() > 0).then(|| meta.query_len(0));
    let is_decode = |i: usize| {
        meta.query_len(i) <= cfg.decode_threshold
            && (!backend.uniform_decode() || Some(meta.query_len(i)) == first)
    };
    let nd = (0..meta.num_reqs()).take_while(|&i| is_decode(i)).count();
    if let Some(i) = (nd..meta.num_reqs()).find(|&i| is_decode(i)) {
        return Err(Error::invalid(
            format!("request {i}"),
            format!("a decode (query_len {}) after a prefill", meta.query_len(i)),
            "vLLM reorders the batch decodes first",
        ));
    }
    Ok(nd)
}

#[allow(clippy::too_many_arguments)]
fn forward_rank(
    ex: &dyn KernelExecutor,
    backend: &dyn MlaBackend,
    q: &[f32],
    step: &MlaStep,
    nd: usize,
    cache: &LatentCache,
    w: &MlaWeights,
    cfg: &MlaConfig,
) -> Result<Vec<f32>> {
    let (h, d) = (w.num_heads(), cfg.dims);
    let qw = d.qk_nope_head_dim + d.qk_rope_head_dim;
    let ndt = step.meta.query_start_loc()[nd] as usize;
    let mut out = Vec::with_capacity(step.meta.num_actual_tokens() * h * d.v_head_dim);
    if ndt > 0 {
        let q_decode = &q[..ndt * h * qw];
        let mqa_q = ex.absorb_query(&ProjArgs::new(
            Projection::AbsorbQuery,
            q_decode,
            w,
            cfg.dtype,
        )?)?;
        let o = backend.forward_mqa_with(
            ex,
            &mqa_q,
            h,
            cache,
            &MlaDecodeBatch {
                meta: step.meta,
                num_decodes: nd,
            },
            cfg,
        )?;
        out.extend(ex.project_output(&ProjArgs::new(Projection::Output, &o.out, w, cfg.dtype)?)?);
    }
    if ndt < step.meta.num_actual_tokens() {
        let kv_c = &step.kv_c[ndt * d.kv_lora_rank..];
        let k_pe = &step.k_pe
            [ndt * d.qk_rope_head_dim..step.meta.num_actual_tokens() * d.qk_rope_head_dim];
        out.extend(forward_mha(
            ex,
            &q[ndt * h * qw..],
            kv_c,
            k_pe,
            step.meta,
            nd,
            cache,
            w,
            cfg,
        )?);
    }
    Ok(out)
}

/// `k = cat(k_nope, k_pe broadcast over heads)`: `[T, h, P]` + `[T, R]` -> `[T, h, P + R]`.
fn concat_k(k_nope: &[f32], k_pe: &[f32], h: usize, p: usize, r: usize) -> Vec<f32> {
    k_nope
        .chunks_exact(h * p)
        .zip(k_pe.chunks_exact(r))
        .flat_map(|(kn, pe)| {
            kn.chunks_exact(p)
                .flat_map(move |head| head.iter().chain(pe).copied())
        })
        .collect()
}

/// The non-absorbed prefill of requests `nd..` (`forward_mha`): `[Tp, h, V]`.
#[allow(clippy::too_many_arguments)]
pub fn forward_mha(
    ex: &dyn KernelExecutor,
    q: &[f32],
    kv_c: &[f32],
    k_pe: &[f32],
    meta: &AttentionMetadata,
    nd: usize,
    cache: &LatentCache,
    w: &MlaWeights,
    cfg: &MlaConfig,
) -> Result<Vec<f32>> {
    let (h, d) = (w.num_heads(), cfg.dims);
    let (pn, r, lkv, wd) = (
        d.qk_nope_head_dim,
        d.qk_rope_head_dim,
        d.kv_lora_rank,
        d.latent_width(),
    );
    let base = meta.query_start_loc()[nd];
    let qsl: Vec<i32> = meta.query_start_loc()[nd..]
        .iter()
        .map(|&x| x - base)
        .collect();
    let params = prefill_params(cfg, h)?;
    let (k_nope, v) = ex.up_project(&ProjArgs::new(Projection::KvUp, kv_c, w, cfg.dtype)?)?;
    let k = concat_k(&k_nope, k_pe, h, pn, r);
    let new = ex.flash_attn_varlen(&VarlenArgs::new(q, &k, &v, &qsl, &qsl, &params)?)?;
    let ctx_lens: Vec<usize> = (nd..meta.num_reqs()).map(|i| meta.context_len(i)).collect();
    let chunks = plan_mla_context_chunks(
        &ctx_lens,
        workspace_rows(cfg.max_model_len, cfg.max_num_seqs, meta.block_size())?,
        meta.block_size(),
    )?;
    if chunks.is_empty() {
        return Ok(new.into_out());
    }
    let kernel = match cfg.profile {
        Profile::Pr26980 => MergeKernel::Triton,
        Profile::Latest => MergeKernel::Hip,
    };
    let tables: Vec<&[i32]> = (nd..meta.num_reqs())
        .map(|i| meta.block_table().row(i))
        .collect();
    let tp = qsl[qsl.len() - 1] as usize;
    let mut running = OutLse::empty(tp, h, d.v_head_dim);
    let params = VarlenParamsBuilder {
        causal: false,
        ..params.to_builder()
    }
    .build()?;
    for chunk in &chunks {
        let rows = ex.gather_and_maybe_dequant_cache(&LatentGather::new(
            cache,
            &tables,
            chunk,
            cfg.k_scale,
            cfg.dtype,
        )?)?;
        let c_kv: Vec<f32> = rows
            .chunks_exact(wd)
            .flat_map(|e| e[..lkv].iter().copied())
            .collect();
        let c_pe: Vec<f32> = rows
            .chunks_exact(wd)
            .flat_map(|e| e[lkv..].iter().copied())
            .collect();
        let (kn, vc) = ex.up_project(&ProjArgs::new(Projection::KvUp, &c_kv, w, cfg.dtype)?)?;
        let (q_chunk, cu_q) = chunk_queries(q, &qsl, chunk, h * (pn + r));
        let (kc, cu_k) = (concat_k(&kn, &c_pe, h, pn, r), chunk.cu_seq_lens());
        let part =
            ex.flash_attn_varlen(&VarlenArgs::new(&q_chunk, &kc, &vc, &cu_q, &cu_k, &params)?)?;
        for (i, p) in chunk.parts.iter().enumerate() {
            let (dst, src) = (
                qsl[p.req] as usize..qsl[p.req + 1] as usize,
                cu_q[i] as usize..cu_q[i + 1] as usize,
            );
            let piece = take_tokens(&part, src);
            let merged = if p.start > 0 {
                let prefix = take_tokens(&running, dst.clone());
                ex.merge_attn_states(&MergeArgs::new(&prefix, &piece, cfg.dtype, kernel)?)?
            } else {
                piece
            };
            // Fault::ChunkedMlaPrefillLse: the running LSE stays the first chunk's.
            let mut merged = merged;
            if cfg.faults.has(Fault::ChunkedMlaPrefillLse) && p.start > 0 {
                merged
                    .lse_mut()
                    .copy_from_slice(take_tokens(&running, dst.clone()).lse());
            }
            put_tokens(&mut running, dst.start, &merged);
        }
    }
    Ok(ex
        .merge_attn_states(&MergeArgs::new(&running, &new, cfg.dtype, kernel)?)?
        .into_out())
}

/// The `flash_attn_varlen_func` parameters of the prefill over `heads`
/// heads (causal; the context chunks run them non-causal): `q_nope | q_pe`
/// against `k_nope | k_pe` (`P + R` wide), values `V` wide.
pub fn prefill_params(cfg: &MlaConfig, heads: usize) -> Result<VarlenParams<'static>> {
    let d = cfg.dims;
    VarlenParamsBuilder {
        head_size_v: d.v_head_dim,
        ..VarlenParams::builder(
            heads,
            heads,
            d.qk_nope_head_dim + d.qk_rope_head_dim,
            cfg.dtype,
            cfg.scale,
        )
    }
    .build()
}

/// The queries of the chunk's requests (in part order) and their `cu_seqlens_q`.
fn chunk_queries(q: &[f32], qsl: &[i32], chunk: &ContextChunk, row: usize) -> (Vec<f32>, Vec<i32>) {
    let mut cu = vec![0i32];
    let mut out = Vec::new();
    for p in &chunk.parts {
        let (a, b) = (qsl[p.req] as usize, qsl[p.req + 1] as usize);
        out.extend_from_slice(&q[a * row..b * row]);
        cu.push(cu[cu.len() - 1] + (b - a) as i32);
    }
    (out, cu)
}

/// Tokens `range` of an [`OutLse`] (its lse is head-major `[H, T]`).
fn take_tokens(o: &OutLse, range: Range<usize>) -> OutLse {
    let (h, d, n, t) = (o.num_heads(), o.head_size(), range.len(), o.num_tokens());
    let mut taken = OutLse::empty(n, h, d);
    taken
        .out_mut()
        .copy_from_slice(&o.out()[range.start * h * d..range.end * h * d]);
    for hh in 0..h {
        taken.lse_mut()[hh * n..(hh + 1) * n]
            .copy_from_slice(&o.lse()[hh * t + range.start..hh * t + range.end]);
    }
    taken
}

/// Writes `src` over tokens `at..at + src.num_tokens` of `dst`.
fn put_tokens(dst: &mut OutLse, at: usize, src: &OutLse) {
    let (h, d, n, dst_n) = (
        dst.num_heads(),
        dst.head_size(),
        src.num_tokens(),
        dst.num_tokens(),
    );
    dst.out_mut()[at * h * d..(at + n) * h * d].copy_from_slice(src.out());
    for hh in 0..h {
        let row = hh * dst_n + at;
        dst.lse_mut()[row..row + n].copy_from_slice(&src.lse()[hh * n..(hh + 1) * n]);
    }
}

/// The kernel launches of one step on one rank (every rank makes the same
/// launches over its `N / tp` heads).
pub fn plan(
    backend: &dyn MlaBackend,
    meta: &AttentionMetadata,
    cfg: &MlaConfig,
) -> Result<Vec<KernelCall>> {
    backend.check(cfg, meta.block_size())?;
    let (t, h, d) = (meta.num_actual_tokens(), cfg.heads_per_rank(), cfg.dims);
    let nd = num_decodes(backend, meta, cfg)?;
    let ndt = meta.query_start_loc()[nd] as usize;
    let (pn, r, lkv, vd) = (
        d.qk_nope_head_dim,
        d.qk_rope_head_dim,
        d.kv_lora_rank,
        d.v_head_dim,
    );
    let mut calls = vec![KernelCall::new(
        "concat_and_cache_mla",
        &[
            ("kv_c", vec![t, lkv]),
            ("k_pe", vec![t, r]),
            (
                "kv_cache",
                vec![meta.num_blocks(), meta.block_size(), lkv + r],
            ),
        ],
    )];
    if ndt > 0 {
        calls.push(KernelCall::new(
            "bmm(q_nope, W_UK_T)",
            &[("q_nope", vec![h, ndt, pn]), ("W_UK_T", vec![h, pn, lkv])],
        ));
        calls.extend(backend.plan_mqa(
            &MlaDecodeBatch {
                meta,
                num_decodes: nd,
            },
            h,
            cfg,
        )?);
        calls.push(KernelCall::new(
            "bmm(o, W_UV)",
            &[("o", vec![h, ndt, lkv]), ("W_UV", vec![h, lkv, vd])],
        ));
    }
    if ndt < t {
        let tp = t - ndt;
        calls.push(KernelCall::new(
            "kv_b_proj",
            &[
                ("kv_c", vec![tp, lkv]),
                ("weight", vec![h * (pn + vd), lkv]),
            ],
        ));
        calls.push(KernelCall::new(
            "flash_attn_varlen_func(causal)",
            &[
                ("q", vec![tp, h, pn + r]),
                ("k", vec![tp, h, pn + r]),
                ("v", vec![tp, h, vd]),
            ],
        ));
        let ctx_lens: Vec<usize> = (nd..meta.num_reqs()).map(|i| meta.context_len(i)).collect();
        let chunks = plan_mla_context_chunks(
            &ctx_lens,
            workspace_rows(cfg.max_model_len, cfg.max_num_seqs, meta.block_size())?,
            meta.block_size(),
        )?;
        for c in &chunks {
            let toks = c.total_tokens();
            calls.push(KernelCall::new(
                "gather_and_maybe_dequant_cache",
                &[("workspace", vec![toks, lkv + r])],
            ));
            calls.push(KernelCall::new(
                "kv_b_proj",
                &[
                    ("kv_c", vec![toks, lkv]),
                    ("weight", vec![h * (pn + vd), lkv]),
                ],
            ));
            calls.push(KernelCall::new(
                "flash_attn_varlen_func",
                &[("k", vec![toks, h, pn + r]), ("v", vec![toks, h, vd])],
            ));
            if c.parts.first().is_some_and(|p| p.start > 0) {
                calls.push(KernelCall::new(
                    "merge_attn_states(continuation)",
                    &[("output", vec![meta.query_len(nd + c.parts[0].req), h, vd])],
                ));
            }
        }
        if !chunks.is_empty() {
            calls.push(KernelCall::new(
                "merge_attn_states",
                &[("output", vec![tp, h, vd])],
            ));
        }
    }
    Ok(calls)
}
