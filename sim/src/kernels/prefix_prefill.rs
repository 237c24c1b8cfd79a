//! Prefix prefill: vLLM's `context_attention_fwd` (`prefix_prefill.py`,
//! adapted from LightLLM; vllm-backends.md §6), which ROCM_ATTN runs for
//! every request with query_len > 1 (`skip_decode=True`).
//!
//! Grid `(batch, Hq, cdiv(max_query_len, BLOCK_M))`: one program owns
//! BLOCK_M = 128 query rows of one request and one query head (GQA by
//! `kv_head = head / qpk`, no head packing). Each row keeps a [`RowState`]:
//! ```text
//! m_i = sink * LOG2E or -inf; l_i = 1 or 0; acc = 0
//! (A) cached context, no causal mask, tiles of CTX_TILE = 32 keys:
//!     for s in (0..ctx).step_by(32):
//!         gather K, V of keys s..min(s+32, ctx); fp8: (f32(x) * scale) -> q dtype
//!         s_ij = score(dot(q_i, k_j))            // base 2; -inf unless (ctx+i) - t < SW
//!         RowState::update                         // P -> q dtype before PV
//! (B) the request's new tokens, tiles of BLOCK_N = 64:
//!     upper = causal ? (start_m+1)*BLOCK_M : round_up(query_len, 64)
//!     for s in (0..upper).step_by(64), keys at positions ctx+s+n, n < query_len:
//!         s_ij = score(dot(q_i, k_j)); -inf unless (causal: n <= i) and i - n < SW
//!         RowState::update
//! out_i = (acc / (l_i + 1e-10)) -> q dtype
//! ```
//! With ALiBi vLLM launches `_fwd_kernel_alibi` instead (§6.3): the same two
//! phases with BLOCK = 128 key tiles in both (64 for fp32), a bias
//! `slope * (t - p)` that also masks keys where it is > 0, no sliding window
//! and no sinks (vLLM asserts), and `acc / l_i` without the epsilon.
//!
//! Deliberate differences: exp is the contract's `exp2c` on base-2 scores
//! (`scale * LOG2E` folded once; vLLM's kernel uses natural `exp` with
//! explicit `where(m == -inf)` guards, which RowState's all-masked guard
//! reproduces); `tl.dot` is an ascending fma chain per key. Phase (B) stops
//! at the request's last query row: vLLM's further tiles there are entirely
//! masked, which leaves the row state unchanged bit for bit. The new tokens'
//! K/V are read back from the cache (vLLM 0.33's `KV_FROM_CACHE`); the
//! seed-era call passes the step's key/value tensors instead, which hold the
//! same values unless the cache is fp8. Soft-capping applies when
//! `cfg.softcap` is set (vLLM's kernel has none; ROCM_ATTN passes none).

use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::paged_decode::PagedInputs;
use crate::kernels::softmax::{
    dequant_kv, visible, DimOffsets, KvTile, RowState, ScoreParams, TRITON_L_EPS,
};
use crate::numerics::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::metadata::AttentionMetadata;
use rayon::prelude::*;

/// Query rows per program (`BLOCK_M`).
pub const BLOCK_M: usize = 128;
/// New-token key tile of phase (B) (`BLOCK_N`).
pub const BLOCK_N: usize = 64;
/// Cached-context key tile of phase (A) (`BLOCK_SIZE` in `_fwd_kernel`).
pub const CTX_TILE: usize = 32;
/// `_fwd_kernel_alibi`'s BLOCK (rows and both key tiles) for fp16/bf16.
pub const ALIBI_BLOCK: usize = 128;
/// `_fwd_kernel_alibi`'s BLOCK for fp32.
pub const ALIBI_BLOCK_F32: usize = 64;

/// Which of the two Triton kernels a launch uses, and its tiling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixVariant {
    /// "_fwd_kernel" or "_fwd_kernel_alibi".
    pub kernel: &'static str,
    pub block_m: usize,
    pub ctx_tile: usize,
    pub block_n: usize,
    /// Added to l_i in the final division.
    pub l_eps: f32,
}

impl PrefixVariant {
    /// The variant `context_attention_fwd` launches for this config.
    pub fn for_config(cfg: &AttnConfig) -> Self {
        if cfg.alibi_slopes().is_some() {
            let block = if cfg.dtype() == DType::F32 {
                ALIBI_BLOCK_F32
            } else {
                ALIBI_BLOCK
            };
            PrefixVariant {
                kernel: "_fwd_kernel_alibi",
                block_m: block,
                ctx_tile: block,
                block_n: block,
                l_eps: 0.0,
            }
        } else {
            PrefixVariant {
                kernel: "_fwd_kernel",
                block_m: BLOCK_M,
                ctx_tile: CTX_TILE,
                block_n: BLOCK_N,
                l_eps: TRITON_L_EPS,
            }
        }
    }
}

/// vLLM's `context_attention_fwd` over the paged cache: writes the output
/// rows of every request with query_len > 1 (and of query_len == 1 requests
/// too unless `skip_decode`) into `out` (`[T, Hq, D]`); other rows are left
/// untouched. `cfg.sliding_window` is the kernel's `SW`; `meta.causal`
/// selects the causal mask of phase (B).
pub fn context_attention_fwd(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    skip_decode: bool,
    out: &mut [f32],
) -> Result<()> {
    let inputs = PagedInputs::new(query, cache, meta, cfg)?;
    inputs.check_out(out)?; // before the ALiBi checks, as always
    context_attention(&PrefixArgs::new(inputs, skip_decode)?, out)
}

/// One `context_attention_fwd` launch, validated once: the paged inputs
/// ([`PagedInputs`]), whether decode rows are skipped, and the Triton
/// kernel variant the config selects, which `_fwd_kernel_alibi`'s asserts
/// admit. The emulator, both executors and the GPU launcher take it.
#[derive(Debug, Clone, Copy)]
pub struct PrefixArgs<'a> {
    inputs: PagedInputs<'a>,
    skip_decode: bool,
    variant: PrefixVariant,
}

impl<'a> PrefixArgs<'a> {
    /// Refuses what `_fwd_kernel_alibi` asserts against (with vLLM's
    /// messages): non-causal attention or sinks together with ALiBi.
    pub fn new(inputs: PagedInputs<'a>, skip_decode: bool) -> Result<Self> {
        let (cfg, meta) = (inputs.cfg(), inputs.meta());
        if cfg.alibi_slopes().is_some() {
            if !meta.causal() {
                return Err(Error::unsupported(
                    "non-causal prefix attention with ALiBi",
                    "Non-causal prefix attention is not supported with alibi",
                ));
            }
            if cfg.sinks().is_some() {
                return Err(Error::unsupported(
                    "sinks with ALiBi",
                    "Sinks arg is not supported with alibi",
                ));
            }
        }
        Ok(PrefixArgs {
            inputs,
            skip_decode,
            variant: PrefixVariant::for_config(cfg),
        })
    }
    pub fn inputs(&self) -> &PagedInputs<'a> {
        &self.inputs
    }
    /// Rows with query_len == 1 are left to the decode kernel.
    pub fn skip_decode(&self) -> bool {
        self.skip_decode
    }
    pub fn variant(&self) -> PrefixVariant {
        self.variant
    }
}

/// [`context_attention_fwd`] over validated arguments.
pub fn context_attention(args: &PrefixArgs, out: &mut [f32]) -> Result<()> {
    args.inputs.check_out(out)?;
    let (query, cache, meta, cfg) = (
        args.inputs.query(),
        args.inputs.cache(),
        args.inputs.meta(),
        args.inputs.cfg(),
    );
    let (skip_decode, v) = (args.skip_decode, args.variant);
    let d = cfg.head_size();
    let (hk, qpk) = (cfg.num_kv_heads(), cfg.queries_per_kv());
    // The grid's programs (b, head, start_m), run as one task per (b,
    // start_m, kv head) that holds the kv head's qpk query heads: each
    // head's rows keep their own program's tiles, order and states; the
    // heads only share the gathered K/V tile (bit-neutral, as a GPU's
    // programs share the cache lines they read).
    let tasks: Vec<(usize, usize, usize)> = (0..meta.num_reqs())
        .filter(|&b| meta.query_len(b) > 0 && !(skip_decode && meta.query_len(b) == 1))
        .flat_map(|b| {
            (0..meta.query_len(b).div_ceil(v.block_m))
                .flat_map(move |m| (0..hk).map(move |g| (b, g, m)))
        })
        .collect();
    let dims = DimOffsets::new(&cache.layout);
    // Each task's output rows, handed to it as disjoint slices of `out`:
    // token t's heads of kv head g (`qpk * D` contiguous values) belong to
    // the task of (t's request, t's row block, g), which writes them in
    // place; tokens no task owns (skipped decodes) keep their values.
    let chunk = (qpk * d).max(1);
    let mut owner = vec![usize::MAX; out.len() / chunk];
    for (i, &(b, g, start_m)) in tasks.iter().enumerate() {
        let first = meta.query_range(b).start + start_m * v.block_m;
        let last = meta.query_range(b).start + ((start_m + 1) * v.block_m).min(meta.query_len(b));
        for t in first..last {
            owner[t * hk + g] = i;
        }
    }
    let mut outs: Vec<Vec<&mut [f32]>> = tasks.iter().map(|_| Vec::new()).collect();
    for (c, o) in out.chunks_exact_mut(chunk).enumerate() {
        if let Some(dst) = outs.get_mut(owner[c]) {
            dst.push(o);
        }
    }
    let shared = share_new_tokens(cache, meta, cfg, &v, &dims);
    tasks
        .par_iter()
        .zip(outs.into_par_iter())
        .for_each(|(&(b, g, start_m), mut rows_out)| {
            let sh = shared.get(b * hk + g).and_then(|x| x.as_ref());
            program(
                query,
                cache,
                meta,
                cfg,
                &v,
                &dims,
                b,
                g,
                start_m,
                sh,
                &mut rows_out,
            )
        });
    Ok(())
}

/// The programs `(b, head, start_m)` of kv head `kv_head`'s query heads:
/// writes row i's `[qpk, D]` outputs (rounded) into `out[i]`.
#[allow(clippy::too_many_arguments)]
fn program(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    v: &PrefixVariant,
    dims: &DimOffsets,
    b: usize,
    kv_head: usize,
    start_m: usize,
    shared: Option<&NewTokens>,
    out: &mut [&mut [f32]],
) {
    let (hq, d, qpk) = (cfg.num_heads(), cfg.head_size(), cfg.queries_per_kv());
    let (ql, ctx) = (meta.query_len(b), meta.context_len(b));
    let heads = kv_head * qpk..(kv_head + 1) * qpk;
    let rows = start_m * v.block_m..((start_m + 1) * v.block_m).min(ql);
    let nrows = rows.len();
    let first_row = meta.query_range(b).start + rows.start;
    let params = ScoreParams::new(cfg.scale(), cfg.softcap());
    let slopes: Vec<Option<f32>> = heads
        .clone()
        .map(|h| cfg.alibi_slopes().as_ref().map(|s| s[h]))
        .collect();
    // The alibi kernel applies no sliding window.
    let window = if cfg.alibi_slopes().is_some() {
        None
    } else {
        cfg.sliding_window()
    };
    // states[hh * nrows + i]: each head's rows consecutive.
    let mut states: Vec<RowState> = heads
        .clone()
        .flat_map(|h| rows.clone().map(move |_| h))
        .map(|h| RowState::new(d, cfg.sinks().as_ref().map(|s| s[h])))
        .collect();
    let q_row = |h: usize, i: usize| {
        let t = first_row - rows.start + i;
        &query[(t * hq + h) * d..(t * hq + h + 1) * d]
    };
    let tile_cap = v.ctx_tile.max(v.block_n);
    let mut tile = KvTile::new(tile_cap, d);
    let (mut locs, mut dots) = (
        Vec::with_capacity(tile_cap),
        vec![0f32; qpk * nrows * tile_cap],
    );
    // Every row of every head against each K tile at once (qk_rows).
    let qs: Vec<&[f32]> = heads
        .clone()
        .flat_map(|h| rows.clone().map(move |i| q_row(h, i)))
        .collect();
    let k_load = |k: f32| dequant_kv(k, cfg.k_scale(), cfg.kv_dtype(), cfg.dtype());
    let v_load = |x: f32| dequant_kv(x, cfg.v_scale(), cfg.kv_dtype(), cfg.dtype());
    let mut run_tile =
        |keys: std::ops::Range<usize>, causal: bool, tile: &mut KvTile, states: &mut [RowState]| {
            // Phase (B)'s tiles of a request whose new tokens' K^T and V
            // were laid out once for all its programs; else gathered here.
            let laid_out = shared
                .filter(|_| keys.start >= ctx && (keys.start - ctx).is_multiple_of(v.block_n))
                .map(|sh| sh.tile((keys.start - ctx) / v.block_n));
            let n = keys.len();
            let (kt, ld, vs, ld_v) = match laid_out {
                Some(t) => t,
                None => {
                    locs.clear();
                    locs.extend(keys.clone().map(|t| meta.kv_location(b, t)));
                    if cfg.kv_dtype().is_fp8() {
                        tile.gather_paged(cache, dims, kv_head, &locs, k_load, v_load);
                    } else {
                        // dequant_kv is the identity for a non-fp8 cache.
                        tile.gather_paged_exact(cache, dims, kv_head, &locs);
                    }
                    let (kt, vs) = tile.parts();
                    (kt, tile.tile_size, vs, d)
                }
            };
            crate::kernels::simd::dots_rows(
                crate::kernels::simd::SimdPath::active(),
                &qs,
                &kt[..d * ld],
                ld,
                0,
                n,
                &mut dots,
                tile_cap,
            );
            // S_ij in place over the dot products, then every row's step.
            for (hh, slope) in slopes.iter().enumerate() {
                let block = &mut dots[hh * nrows * tile_cap..(hh + 1) * nrows * tile_cap];
                for (i, s) in rows.clone().zip(block.chunks_exact_mut(tile_cap)) {
                    score_row(
                        &mut s[..n],
                        keys.start,
                        ctx + i,
                        causal,
                        window,
                        &params,
                        *slope,
                    );
                }
                RowState::update_rows(
                    &mut states[hh * nrows..(hh + 1) * nrows],
                    block,
                    tile_cap,
                    n,
                    |j| &vs[j * ld_v..j * ld_v + d],
                    cfg.dtype(),
                );
            }
        };
    // (A) the cached context: no causal mask (every context key precedes every query).
    for s in (0..ctx).step_by(v.ctx_tile) {
        run_tile(s..(s + v.ctx_tile).min(ctx), false, &mut tile, &mut states);
    }
    // (B) the new tokens, causal by default.
    let upper = if meta.causal() {
        (start_m + 1) * v.block_m
    } else {
        ql.next_multiple_of(v.block_n)
    };
    for s in (0..upper.min(ql)).step_by(v.block_n) {
        run_tile(
            ctx + s..ctx + (s + v.block_n).min(ql),
            meta.causal(),
            &mut tile,
            &mut states,
        );
    }
    // states[hh * nrows + i] is row i of head hh.
    for (k, state) in states.iter().enumerate() {
        let (hh, i) = (k / nrows, k % nrows);
        let o = &mut out[i][hh * d..(hh + 1) * d];
        state.normalized_eps_into(v.l_eps, o);
        // cfg.dtype.round of every element (simd::round_slice: the same bits).
        crate::kernels::simd::round_slice(cfg.dtype(), o);
    }
}

/// The new tokens' K^T and V of one (request, kv head), laid out once per
/// launch in phase (B)'s tiles for the request's programs (a long prefill's
/// programs read the same tiles again and again): tile i's K^T at
/// `kt[i * d * ld..]` (key j's dim dd at `dd * ld + j`), new token t's V row
/// at `v[t * ld_v..][..d]`; leading dimensions padded as flash_varlen's.
/// The same values the gather copies: only where they are read changes.
struct NewTokens {
    kt: Vec<f32>,
    ld: usize,
    v: Vec<f32>,
    ld_v: usize,
    d: usize,
    block_n: usize,
}

impl NewTokens {
    /// `(K^T, its leading dimension, V rows, their leading dimension)` of
    /// phase (B)'s tile i.
    fn tile(&self, i: usize) -> (&[f32], usize, &[f32], usize) {
        let kt = &self.kt[i * self.d * self.ld..(i + 1) * self.d * self.ld];
        (
            kt,
            self.ld,
            &self.v[i * self.block_n * self.ld_v..],
            self.ld_v,
        )
    }
}

/// Query tokens of a request from which its new tokens' K^T and V are laid
/// out once per launch ([`NewTokens`]).
const SHARED_MIN_TOKENS: usize = 256;

/// [`NewTokens`] of every (request, kv head) with at least
/// [`SHARED_MIN_TOKENS`] query tokens, indexed `b * Hkv + g`, for a cache
/// whose values load unchanged (not fp8).
fn share_new_tokens(
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    v: &PrefixVariant,
    dims: &DimOffsets,
) -> Vec<Option<NewTokens>> {
    let (hk, d, bn) = (cfg.num_kv_heads(), cfg.head_size(), v.block_n);
    let pairs: Vec<(usize, usize)> = (0..meta.num_reqs())
        .flat_map(|b| (0..hk).map(move |g| (b, g)))
        .collect();
    pairs
        .par_iter()
        .map(|&(b, g)| {
            let ql = meta.query_len(b);
            if ql < SHARED_MIN_TOKENS || cfg.kv_dtype().is_fp8() || bn == 0 {
                return None;
            }
            let ctx = meta.context_len(b);
            let (ld, ld_v) = (
                crate::kernels::flash_varlen::padded(bn),
                crate::kernels::flash_varlen::padded(d),
            );
            let tiles = ql.div_ceil(bn);
            let mut kt = vec![0.0f32; tiles * d * ld];
            let mut vs = vec![0.0f32; tiles * bn * ld_v];
            let mut tile = KvTile::new(bn, d);
            let mut locs = Vec::with_capacity(bn);
            for i in 0..tiles {
                let keys = ctx + i * bn..ctx + ((i + 1) * bn).min(ql);
                locs.clear();
                locs.extend(keys.clone().map(|t| meta.kv_location(b, t)));
                tile.gather_paged_exact(cache, dims, g, &locs);
                let (tk, tv) = tile.parts();
                let dst = &mut kt[i * d * ld..(i + 1) * d * ld];
                for dd in 0..d {
                    dst[dd * ld..dd * ld + keys.len()]
                        .copy_from_slice(&tk[dd * bn..dd * bn + keys.len()]);
                }
                for j in 0..keys.len() {
                    vs[(i * bn + j) * ld_v..][..d].copy_from_slice(&tv[j * d..(j + 1) * d]);
                }
            }
            Some(NewTokens {
                kt,
                ld,
                v: vs,
                ld_v,
                d,
                block_n: bn,
            })
        })
        .collect()
}

/// One row's base-2 scores of keys `t0..t0 + s.len()` for the query at
/// position `p`, in place over its dot products: -inf where the key is
/// not [`visible`] (one interval: causal `t <= p`, window `p - t < SW`);
/// else `score(dot, 0)`, or with ALiBi `score(dot, slope * (t - p))` where
/// that bias is <= 0 and -inf where it is > 0 (`_fwd_kernel_alibi`).
fn score_row(
    s: &mut [f32],
    t0: usize,
    p: usize,
    causal: bool,
    window: Option<usize>,
    params: &ScoreParams,
    slope: Option<f32>,
) {
    let n = s.len();
    let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
    let hi = if causal { p + 1 } else { t0 + n };
    let va = lo.clamp(t0, t0 + n) - t0;
    let vb = hi.clamp(t0 + va, t0 + n) - t0;
    debug_assert!((0..n).all(|j| visible(t0 + j, p, causal, window) == (va..vb).contains(&j)));
    s[..va].fill(f32::NEG_INFINITY);
    s[vb..].fill(f32::NEG_INFINITY);
    match slope {
        None => s[va..vb]
            .iter_mut()
            .for_each(|x| *x = params.score(*x, 0.0)),
        Some(sl) => {
            for (j, x) in s.iter_mut().enumerate().take(vb).skip(va) {
                let bias = sl * ((t0 + j) as f32 - p as f32);
                *x = if bias <= 0.0 {
                    params.score(*x, bias)
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnlab_shared::layout::{KvLayout, LayoutKind};
    use attnlab_shared::metadata::BlockTableTensor;

    /// Requests `(context, query)` over a zero-K cache (uniform softmax) with
    /// V[t][d] = t, so each row's output is the mean visible key position.
    fn uniform(
        reqs: &[(usize, usize)],
        cfg: &AttnConfig,
    ) -> (Vec<f32>, KvCache, AttentionMetadata) {
        let bs = 16;
        let blocks: Vec<usize> = reqs.iter().map(|&(c, q)| (c + q).div_ceil(bs)).collect();
        let nb: usize = blocks.iter().sum();
        let layout = KvLayout::new(
            LayoutKind::RocmPaged,
            nb,
            bs,
            cfg.num_kv_heads(),
            cfg.head_size(),
            cfg.kv_dtype(),
        )
        .unwrap();
        let mut cache = KvCache::zeros(layout);
        let (mut rows, mut next) = (vec![], 0i32);
        for (&(c, q), &n) in reqs.iter().zip(&blocks) {
            let row: Vec<i32> = (next..next + n as i32).collect();
            for t in 0..c + q {
                let b = row[t / bs] as usize;
                for h in 0..cfg.num_kv_heads() {
                    for d in 0..cfg.head_size() {
                        cache.v[layout.v_offset(b, t % bs, h, d)] = t as f32;
                    }
                }
            }
            next += n as i32;
            rows.push(row);
        }
        let mut qsl = vec![0i32];
        reqs.iter()
            .for_each(|&(_, q)| qsl.push(qsl.last().unwrap() + q as i32));
        let t = *qsl.last().unwrap() as usize;
        let seq_lens = reqs.iter().map(|&(c, q)| (c + q) as i32).collect();
        let meta = AttentionMetadata::new(
            bs,
            nb,
            qsl,
            seq_lens,
            BlockTableTensor::from_rows(&rows),
            vec![-1; t],
            true,
        )
        .unwrap();
        (
            vec![0.5; t * cfg.num_heads() * cfg.head_size()],
            cache,
            meta,
        )
    }

    #[test]
    fn reading_a_long_requests_laid_out_new_tokens_is_bit_neutral() {
        // A request over the sharing threshold with cached context, in the
        // x-packed layout, random K/V/Q: every program with the shared
        // tiles gives the bits of the same program gathering its own.
        let cfg = AttnConfig::new(4, 2, 32, DType::Bf16).unwrap();
        let (mut q, mut cache, meta) = uniform(&[(40, SHARED_MIN_TOKENS + 37)], &cfg);
        let val = |i: usize, salt: f32| cfg.dtype().round(((i as f32) * 0.618 + salt).sin() * 2.0);
        for (i, x) in cache.k.iter_mut().enumerate() {
            *x = val(i, 0.3);
        }
        for (i, x) in cache.v.iter_mut().enumerate() {
            *x = val(i, 1.7);
        }
        for (i, x) in q.iter_mut().enumerate() {
            *x = val(i, 2.9);
        }
        let v = PrefixVariant::for_config(&cfg);
        let dims = DimOffsets::new(&cache.layout);
        let shared = share_new_tokens(&cache, &meta, &cfg, &v, &dims);
        let d = cfg.head_size();
        let qpk = cfg.queries_per_kv();
        for (g, sh) in shared.iter().enumerate() {
            let sh = sh.as_ref();
            assert!(sh.is_some(), "kv head {g} is laid out");
            for start_m in 0..meta.query_len(0).div_ceil(v.block_m) {
                let rows = v.block_m.min(meta.query_len(0) - start_m * v.block_m);
                let run = |sh: Option<&NewTokens>| -> Vec<u32> {
                    let mut buf = vec![0.0f32; rows * qpk * d];
                    let mut out: Vec<&mut [f32]> = buf.chunks_exact_mut(qpk * d).collect();
                    program(
                        &q, &cache, &meta, &cfg, &v, &dims, 0, g, start_m, sh, &mut out,
                    );
                    buf.iter().map(|x| x.to_bits()).collect()
                };
                assert_eq!(run(sh), run(None), "kv head {g}, block {start_m}");
            }
        }
    }

    #[test]
    fn alibi_launches_the_alibi_kernel_with_square_tiles_and_no_epsilon() {
        let mut cfg = AttnConfig::builder(2, 1, 32, DType::F16);
        assert_eq!(
            PrefixVariant::for_config(&cfg.clone().build().unwrap()).ctx_tile,
            CTX_TILE
        );
        cfg.alibi_slopes = Some(vec![0.5, 0.25]);
        let alibi = cfg.clone().build().unwrap();
        let v = PrefixVariant::for_config(&alibi);
        assert_eq!(
            (v.kernel, v.block_m, v.ctx_tile, v.block_n, v.l_eps),
            ("_fwd_kernel_alibi", 128, 128, 128, 0.0)
        );
        cfg.dtype = DType::F32;
        assert_eq!(
            PrefixVariant::for_config(&cfg.build().unwrap()).block_n,
            ALIBI_BLOCK_F32
        );
    }

    #[test]
    fn each_row_averages_exactly_the_keys_it_sees() {
        // Context 70 (three 32-key tiles), 150 new tokens (two BLOCK_M programs).
        let cfg = crate::config::AttnConfigBuilder {
            sliding_window: Some(50),
            ..AttnConfig::builder(2, 1, 8, DType::F32)
        }
        .build()
        .unwrap();
        let (q, cache, meta) = uniform(&[(70, 150)], &cfg);
        let mut out = vec![0f32; q.len()];
        context_attention_fwd(&q, &cache, &meta, &cfg, true, &mut out).unwrap();
        for i in 0..150 {
            let p: usize = 70 + i;
            let first = (p + 1).saturating_sub(50);
            let mean = (first + p) as f32 / 2.0;
            approx::assert_relative_eq!(out[i * 16], mean, max_relative = 1e-5);
        }
    }

    #[test]
    fn skip_decode_leaves_decode_rows_untouched() {
        let cfg = AttnConfig::new(1, 1, 8, DType::F32).unwrap();
        let (q, cache, meta) = uniform(&[(10, 1), (5, 4)], &cfg);
        let mut out = vec![-7f32; q.len()];
        context_attention_fwd(&q, &cache, &meta, &cfg, true, &mut out).unwrap();
        assert!(out[..8].iter().all(|&x| x == -7.0));
        assert!(out[8..].iter().all(|&x| x != -7.0));
        context_attention_fwd(&q, &cache, &meta, &cfg, false, &mut out).unwrap();
        approx::assert_relative_eq!(out[0], 5.0, max_relative = 1e-6); // mean of 0..=10
    }

    #[test]
    fn non_causal_rows_see_every_new_token() {
        let cfg = AttnConfig::new(1, 1, 8, DType::F32).unwrap();
        let (q, cache, meta) = uniform(&[(6, 20)], &cfg);
        let meta = meta.with_causal(false);
        let mut out = vec![0f32; q.len()];
        context_attention_fwd(&q, &cache, &meta, &cfg, true, &mut out).unwrap();
        assert!(
            out.chunks(8).all(|r| (r[0] - 12.5).abs() < 1e-5),
            "mean of 0..26 for every row"
        );
    }

    #[test]
    fn alibi_rejects_what_vllms_alibi_kernel_asserts() {
        let cfg = crate::config::AttnConfigBuilder {
            alibi_slopes: Some(vec![0.5]),
            sinks: Some(vec![1.0]),
            ..AttnConfig::builder(1, 1, 8, DType::F32)
        }
        .build()
        .unwrap();
        let (q, cache, meta) = uniform(&[(3, 4)], &cfg);
        let e = context_attention_fwd(&q, &cache, &meta, &cfg, true, &mut vec![0f32; q.len()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Sinks arg is not supported with alibi"), "{e}");
    }
}
