//! Paged decode: one query token per sequence against its whole paged KV.
//! Two kernels, as vLLM's `chunked_prefill_paged_decode` picks between them
//! (vllm-backends.md §5.5), both reading K/V through the cache's `KvLayout`
//! so the same code serves ROCM_ATTN's x-packed layout and ROCM_AITER_FA's
//! shuffled one (aiter.md §2.4: `paged_attention_v1` has this structure).
//!
//! ## `paged_attention_2d` — Triton `kernel_paged_attention_2d` (§5.6)
//! Grid `(num_seqs, Hkv)`; a program owns the `qpk` query heads of one kv
//! head for the sequence's single query row (rows with query_len != 1 are
//! skipped; vLLM skips only > 1 and races on 0-length rows, vllm-backends §19 #7).
//! ```text
//! TILE = min(block_size, 128) if block_size is a power of 2 else 32
//! for tile j ascending (keys j*TILE .. min((j+1)*TILE, seq_len)):
//!     gather K, V of the tile; fp8: (f32(x) * scale) -> query dtype
//!     per head: s_t = score(dot(q, k_t))                 // base 2
//!               window: ctx - t < SW else -10000 (natural, NOT -inf, vllm-backends §19 #6)
//!               alibi:  + slope * (t - ctx)
//!               RowState::update (P -> query dtype before PV)
//! out = (acc / (L + 1e-10)) -> query dtype
//! ```
//!
//! ## `paged_attention_ll4mi` — HIP "ll4mi" partitions + reduce (vllm-backends §7.3, vllm-backends §7.4)
//! Partition kernel, grid `(num_seqs, max_num_partitions, Hkv)`: partition p
//! covers tokens `[p*256, p*256+256)`, split over 4 waves of 64 tokens; lane l
//! of wave w holds token `p*256 + 64w + l`. Per query head of the group:
//! ```text
//! s_t   = score(dot(q, k_t)) with scale2 = scale * k_scale (fp8: K is NOT
//!         dequantized first; the scale multiplies the logit), alibi slope*(t - seq_len + 1)
//!         masked (t >= seq_len, outside window): -FLT_MAX, not -inf
//! wmax_w = butterfly max over the wave's 64 lanes; e_t = exp2c(s_t - wmax_w)
//! wsum_w = butterfly sum of e_t (lanes past seq_len add 0; a wave with no
//!          token below seq_len has wmax -FLT_MAX, wsum 0)
//! pmax  = max_w wmax_w;  psum = fma(wsum_w, exp2c(wmax_w - pmax), psum), w ascending
//! p_t   = round_q((e_t * (1 / (psum + 1e-6))) * exp2c(wmax_w - pmax))
//! tmp_out[d] = round_q(v_scale? * sum_t fma(p_t, v_t[d], .)), t ascending
//! max_logits = pmax, exp_sums = psum
//! ```
//! Reduce kernel, grid `(Hq, num_seqs)`, one thread per dim:
//! ```text
//! np = cdiv(seq_len, 256); gmax = max_{p<np} max_logits[p]
//! w_p = exp_sums[p] * exp2c(max_logits[p] - gmax)
//! gsum: lane l sums w_p for p = l, l+64, ... (ascending), then a 64-wide butterfly
//! out[d] = round_q(sum_p fma(tmp_out[p][d], w_p, .) * (1 / (gsum + 1e-6)))
//! ```
//! The partial outputs are normalized and rounded to the query dtype before
//! the merge, and both sums carry a 1e-6: the ll4mi error profile (vllm-backends §19 #12).
//!
//! Deliberate differences: every exp is the contract's `exp2c` on base-2
//! scores (`scale * LOG2E` folded once; vLLM uses natural `exp`, `__expf`
//! and `expf`); a wave's QK/PV inside an MFMA is an ascending fma chain;
//! the lane-to-token map above is ours (the HIP kernel spreads 16-token
//! MFMA groups over lanes). Soft-capping applies when `cfg.softcap` is set
//! (AITER's `paged_attention_v1` has it; vLLM's ROCm kernels do not, so the
//! ROCM_ATTN backend passes none).

use crate::addressing::{check_extent, AddressedKernel, CacheExtent};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::simd::{self, SimdPath};
use crate::kernels::softmax::{
    dequant_kv, visible, DimOffsets, KvTile, RowState, ScoreParams, PV_KEYS, ROW_BLOCK,
    TRITON_L_EPS,
};
use crate::numerics::{exp2c, wave_butterfly, LOG2E};
use attnlab_shared::error::{Error, Result};
use attnlab_shared::metadata::AttentionMetadata;
use rayon::prelude::*;

/// `_PARTITION_SIZE_ROCM`: tokens per ll4mi partition.
pub const PARTITION_SIZE_ROCM: usize = 256;
/// Tokens one 64-lane wave owns in a partition (`TOKENS_PER_WARP`).
pub const LL4MI_TOKENS_PER_WARP: usize = 64;
/// The ll4mi epsilon added to the partition and the global exp-sum.
pub const LL4MI_SUM_EPS: f32 = 1e-6;
/// The ll4mi mask value (`-FLT_MAX`), used as a base-2 score as is.
pub const LL4MI_MASKED_LOGIT: f32 = f32::MIN;
/// `kernel_paged_attention_2d`'s out-of-window score (natural log domain).
pub const WINDOW_MASKED_LOGIT: f32 = -10000.0;
/// `kernel_paged_attention_2d`'s TILE cap for power-of-two block sizes.
pub const PAGED_2D_MAX_TILE: usize = 128;
/// `kernel_paged_attention_2d`'s TILE for non-power-of-two block sizes (544 -> 32).
pub const PAGED_2D_NON_POW2_TILE: usize = 32;

/// The 2D decode kernel's TILE for a kernel block size (§5.6).
pub fn paged_2d_tile_size(block_size: usize) -> usize {
    if block_size.is_power_of_two() {
        block_size.min(PAGED_2D_MAX_TILE)
    } else {
        PAGED_2D_NON_POW2_TILE
    }
}

/// `cdiv(max_seq_len, partition_size)`: the partition axis of the ll4mi grid
/// and of its `exp_sums`/`max_logits`/`tmp_out` buffers.
pub fn max_num_partitions(max_seq_len: usize, partition_size: usize) -> usize {
    max_seq_len.div_ceil(partition_size.max(1))
}

/// Checks that query, cache, metadata, config and output agree, so no
/// kernel indexes out of bounds: [`KvCache::check_batch`] (heads, head size,
/// block size, enough blocks, dtype, query length) plus the output length.
pub fn validate_paged_inputs(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    out: &[f32],
) -> Result<()> {
    cache.check_batch(query, meta, cfg)?;
    check_out_len(meta, cfg, out)
}

fn check_out_len(meta: &AttentionMetadata, cfg: &AttnConfig, out: &[f32]) -> Result<()> {
    let n = meta.num_actual_tokens() * cfg.num_heads() * cfg.head_size();
    if out.len() != n {
        return Err(Error::invalid(
            "output length",
            out.len(),
            format!("must be num_tokens * num_heads * head_size = {n}"),
        ));
    }
    Ok(())
}

/// The inputs of one paged-attention launch over the cache (the decode
/// kernels here, prefix prefill), validated once: the metadata keeps its
/// own invariants ([`AttentionMetadata`]: block ids inside the cache,
/// lengths, slots) and query, cache, metadata and config describe the same
/// shapes ([`KvCache::check_batch`]). The emulated kernels, both
/// kernel executors and the GPU launchers take this type; everything is
/// borrowed, so nothing can change after the check.
#[derive(Debug, Clone, Copy)]
pub struct PagedInputs<'a> {
    query: &'a [f32],
    cache: &'a KvCache,
    meta: &'a AttentionMetadata,
    cfg: &'a AttnConfig,
}

impl<'a> PagedInputs<'a> {
    pub fn new(
        query: &'a [f32],
        cache: &'a KvCache,
        meta: &'a AttentionMetadata,
        cfg: &'a AttnConfig,
    ) -> Result<Self> {
        cache.check_batch(query, meta, cfg)?;
        Ok(PagedInputs {
            query,
            cache,
            meta,
            cfg,
        })
    }
    /// `[T, Hq, D]` in `cfg.dtype`.
    pub fn query(&self) -> &'a [f32] {
        self.query
    }
    pub fn cache(&self) -> &'a KvCache {
        self.cache
    }
    pub fn meta(&self) -> &'a AttentionMetadata {
        self.meta
    }
    pub fn cfg(&self) -> &'a AttnConfig {
        self.cfg
    }
    /// Checks the output a launch writes: `[T, Hq, D]` like the query.
    pub fn check_out(&self, out: &[f32]) -> Result<()> {
        check_out_len(self.meta, self.cfg, out)
    }
}

/// Tokens per ll4mi partition, validated: a positive multiple of the
/// [`LL4MI_TOKENS_PER_WARP`] tokens a wave owns (vLLM and AITER use
/// [`PARTITION_SIZE_ROCM`], [`PartitionSize::ROCM`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSize(usize);

impl PartitionSize {
    /// `_PARTITION_SIZE_ROCM`.
    pub const ROCM: PartitionSize = PartitionSize(PARTITION_SIZE_ROCM);

    pub fn new(tokens: usize) -> Result<Self> {
        if tokens == 0 || !tokens.is_multiple_of(LL4MI_TOKENS_PER_WARP) {
            return Err(Error::invalid(
                "partition_size",
                tokens,
                format!("must be a positive multiple of {LL4MI_TOKENS_PER_WARP} (tokens per wave)"),
            ));
        }
        Ok(PartitionSize(tokens))
    }
    pub fn get(self) -> usize {
        self.0
    }
}

/// (physical block, row) of the keys `range` of sequence `seq`.
fn key_locations(
    meta: &AttentionMetadata,
    seq: usize,
    range: std::ops::Range<usize>,
    locs: &mut Vec<(usize, usize)>,
) {
    locs.clear();
    locs.extend(range.map(|t| meta.kv_location(seq, t)));
}

/// One program's result: `data` holds `heads.len()` rows of D values for query row `row`.
struct RowsOut {
    row: usize,
    heads: std::ops::Range<usize>,
    data: Vec<f32>,
}

fn scatter(out: &mut [f32], results: Vec<RowsOut>, num_heads: usize, d: usize) {
    for r in results {
        let base = (r.row * num_heads + r.heads.start) * d;
        out[base..base + r.data.len()].copy_from_slice(&r.data);
    }
}

/// Decode sequences (query_len == 1) and their query row.
fn decode_seqs(meta: &AttentionMetadata) -> Vec<usize> {
    (0..meta.num_reqs())
        .filter(|&i| meta.query_len(i) == 1)
        .collect()
}

/// vLLM's Triton `kernel_paged_attention_2d`: writes the output rows of the
/// batch's decode sequences (query_len == 1) into `out` (`[T, Hq, D]`),
/// leaving other rows untouched. `cfg.sliding_window` is the kernel's `SW`.
pub fn paged_attention_2d(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    out: &mut [f32],
) -> Result<()> {
    paged_2d(&PagedInputs::new(query, cache, meta, cfg)?, out)
}

/// [`paged_attention_2d`] over validated inputs.
pub fn paged_2d(inputs: &PagedInputs, out: &mut [f32]) -> Result<()> {
    inputs.check_out(out)?;
    let PagedInputs {
        query,
        cache,
        meta,
        cfg,
    } = *inputs;
    let (hq, hkv, d, qpk) = (
        cfg.num_heads(),
        cfg.num_kv_heads(),
        cfg.head_size(),
        cfg.queries_per_kv(),
    );
    let tile_size = paged_2d_tile_size(meta.block_size());
    let params = ScoreParams::new(cfg.scale(), cfg.softcap());
    let dims = DimOffsets::new(&cache.layout);
    let window_masked2 = WINDOW_MASKED_LOGIT * LOG2E;
    let programs: Vec<(usize, usize)> = decode_seqs(meta)
        .into_iter()
        .flat_map(|s| (0..hkv).map(move |g| (s, g)))
        .collect();
    let results: Vec<RowsOut> = programs
        .par_iter()
        .map(|&(seq, kvh)| {
            let row = meta.query_range(seq).start;
            let seq_len = meta.seq_len(seq);
            let ctx = seq_len - 1; // the query's absolute position
            let heads = kvh * qpk..(kvh + 1) * qpk;
            let mut states: Vec<RowState> = heads
                .clone()
                .map(|h| RowState::new(d, cfg.sinks().as_ref().map(|s| s[h])))
                .collect();
            let mut tile = KvTile::new(tile_size, d);
            let (mut locs, mut dots) = (Vec::with_capacity(tile_size), vec![0f32; qpk * tile_size]);
            // The group's query heads share each K load (qk_rows).
            let qs: Vec<&[f32]> = heads
                .clone()
                .map(|h| &query[(row * hq + h) * d..(row * hq + h + 1) * d])
                .collect();
            for t0 in (0..seq_len).step_by(tile_size) {
                let keys = t0..(t0 + tile_size).min(seq_len);
                key_locations(meta, seq, keys.clone(), &mut locs);
                if cfg.kv_dtype().is_fp8() {
                    tile.gather_paged(
                        cache,
                        &dims,
                        kvh,
                        &locs,
                        |k| dequant_kv(k, cfg.k_scale(), cfg.kv_dtype(), cfg.dtype()),
                        |v| dequant_kv(v, cfg.v_scale(), cfg.kv_dtype(), cfg.dtype()),
                    );
                } else {
                    // dequant_kv is the identity for a non-fp8 cache.
                    tile.gather_paged_exact(cache, &dims, kvh, &locs);
                }
                tile.qk_rows(&qs, &mut dots, tile_size);
                // S_ij in place over the dot products, then every head's step.
                for (h, s) in heads.clone().zip(dots.chunks_exact_mut(tile_size)) {
                    let slope = cfg.alibi_slopes().as_ref().map(|s| s[h]);
                    for (j, t) in keys.clone().enumerate() {
                        let bias = slope.map_or(0.0, |sl| sl * (t as f32 - ctx as f32));
                        s[j] = if visible(t, ctx, true, cfg.sliding_window()) {
                            params.score(s[j], bias)
                        } else {
                            window_masked2 + bias * LOG2E
                        };
                    }
                }
                let n = keys.len();
                RowState::update_rows(
                    &mut states,
                    &dots,
                    tile_size,
                    n,
                    |j| tile.v_row(j),
                    cfg.dtype(),
                );
            }
            let mut data = Vec::with_capacity(qpk * d);
            for state in &states {
                data.extend(
                    state
                        .normalized_eps(TRITON_L_EPS)
                        .into_iter()
                        .map(|x| cfg.dtype().round(x)),
                );
            }
            RowsOut { row, heads, data }
        })
        .collect();
    scatter(out, results, hq, d);
    Ok(())
}

/// One ll4mi partition's outputs for one query head (what the partition
/// kernel stores at `[seq, h, part]`).
#[derive(Debug, Clone, PartialEq)]
struct Ll4miPartial {
    /// `max_logits`: the partition's base-2 max (`-FLT_MAX` when all masked).
    max_logit: f32,
    /// `exp_sums`: the partition's sum of `exp2c(s - max_logit)`.
    exp_sum: f32,
    /// `tmp_out`: the in-partition normalized output, in the query dtype.
    out: Vec<f32>,
}

/// One partition task's reusable buffers (one set per rayon worker split,
/// so no task allocates or zeroes its tile).
struct Ll4miScratch {
    tile: KvTile,
    locs: Vec<(usize, usize)>,
    /// `[head of the group][partition_size]`: the dots, then P.
    dots: Vec<f32>,
    p: Vec<f32>,
    s: Vec<f32>,
    e: Vec<f32>,
    lanes: Vec<f32>,
    wmax: Vec<f32>,
    wsum: Vec<f32>,
}

impl Ll4miScratch {
    fn new(partition_size: usize, d: usize, qpk: usize) -> Self {
        let warps = partition_size / LL4MI_TOKENS_PER_WARP;
        Ll4miScratch {
            tile: KvTile::new(partition_size, d),
            locs: Vec::with_capacity(partition_size),
            dots: vec![0.0; qpk * partition_size],
            p: vec![0.0; qpk * partition_size],
            s: vec![LL4MI_MASKED_LOGIT; partition_size],
            e: vec![0.0; partition_size],
            lanes: vec![0.0; LL4MI_TOKENS_PER_WARP],
            wmax: vec![LL4MI_MASKED_LOGIT; warps],
            wsum: vec![0.0; warps],
        }
    }
}

/// The ll4mi partition kernel for workgroup `(seq, part, kvh)`: one
/// [`Ll4miPartial`] per query head of the group, in head order. The
/// group's heads share the partition's K loads (QK) and V loads (PV, in
/// blocks of [`ROW_BLOCK`] heads); every head keeps its own chains.
#[allow(clippy::too_many_arguments)]
fn ll4mi_partition(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    dims: &DimOffsets,
    partition_size: usize,
    seq: usize,
    part: usize,
    kvh: usize,
    scr: &mut Ll4miScratch,
) -> Vec<Ll4miPartial> {
    let (hq, d, qpk) = (cfg.num_heads(), cfg.head_size(), cfg.queries_per_kv());
    let path = SimdPath::active();
    let row = meta.query_range(seq).start;
    let seq_len = meta.seq_len(seq);
    let start = part * partition_size;
    let valid = start..(start + partition_size).min(seq_len);
    let fp8 = cfg.kv_dtype().is_fp8();
    // scale2: an fp8 K enters the MFMA as stored; k_scale multiplies the logit.
    let params = ScoreParams::new(
        if fp8 {
            cfg.scale() * cfg.k_scale()
        } else {
            cfg.scale()
        },
        cfg.softcap(),
    );
    key_locations(meta, seq, valid.clone(), &mut scr.locs);
    scr.tile.gather_paged_exact(cache, dims, kvh, &scr.locs);
    let n = valid.len();
    let warps = partition_size / LL4MI_TOKENS_PER_WARP;
    // Every head of the group against the partition's keys at once.
    let heads = kvh * qpk..(kvh + 1) * qpk;
    let qs: Vec<&[f32]> = heads
        .clone()
        .map(|h| &query[(row * hq + h) * d..(row * hq + h + 1) * d])
        .collect();
    scr.tile.qk_rows(&qs, &mut scr.dots, partition_size);
    let Ll4miScratch {
        tile,
        dots,
        p: p_all,
        s,
        e,
        lanes,
        wmax,
        wsum,
        ..
    } = scr;
    let mut stats = Vec::with_capacity(qpk);
    for ((h, dots), p) in heads
        .clone()
        .zip(dots.chunks_exact(partition_size))
        .zip(p_all.chunks_exact_mut(partition_size))
    {
        let slope = cfg.alibi_slopes().as_ref().map(|sl| sl[h]);
        for (j, t) in valid.clone().enumerate() {
            s[j] = if visible(t, seq_len - 1, true, cfg.sliding_window()) {
                let bias = slope.map_or(0.0, |sl| sl * (t as f32 - (seq_len - 1) as f32));
                params.score(dots[j], bias)
            } else {
                LL4MI_MASKED_LOGIT
            };
        }
        // Per wave: max and exp-sum over its 64 lanes.
        wmax.fill(LL4MI_MASKED_LOGIT);
        wsum.fill(0.0);
        for w in 0..warps {
            let lane_tokens = w * LL4MI_TOKENS_PER_WARP..(w + 1) * LL4MI_TOKENS_PER_WARP;
            if lane_tokens.start >= n {
                continue; // wave past seq_len: -FLT_MAX / 0
            }
            let live = lane_tokens.start..lane_tokens.end.min(n);
            lanes.fill(LL4MI_MASKED_LOGIT);
            lanes[..live.len()].copy_from_slice(&s[live.clone()]);
            wmax[w] = simd::butterfly_lane0(lanes, f32::max);
            simd::exp2c_shifted(path, &s[live.clone()], wmax[w], &mut e[live.clone()]);
            lanes.fill(0.0);
            lanes[..live.len()].copy_from_slice(&e[live]);
            wsum[w] = simd::butterfly_lane0(lanes, |a, b| a + b);
        }
        // Across the 4 waves through LDS, ascending.
        let pmax = wmax.iter().fold(LL4MI_MASKED_LOGIT, |a, &b| a.max(b));
        let mut psum = 0f32;
        for w in 0..warps {
            psum = wsum[w].mul_add(exp2c(wmax[w] - pmax), psum);
        }
        let inv = 1.0 / (psum + LL4MI_SUM_EPS);
        // p_t = round((e_t * inv) * exp2c(wmax_w - pmax)); keys with p == 0 skip the PV.
        for (w, (pw, ew)) in p[..n]
            .chunks_mut(LL4MI_TOKENS_PER_WARP)
            .zip(e[..n].chunks(LL4MI_TOKENS_PER_WARP))
            .enumerate()
        {
            let wscale = exp2c(wmax[w] - pmax);
            for (pj, &ej) in pw.iter_mut().zip(ew) {
                *pj = (ej * inv) * wscale;
            }
            simd::round_slice(cfg.dtype(), pw);
        }
        stats.push((pmax, psum));
    }
    // PV: every head's fmas in ascending t per dim, over its keys with p != 0.
    let mut accs = vec![vec![0f32; d]; qpk];
    let v = |j: usize| tile.v_row(j);
    let mut r0 = 0;
    while r0 + ROW_BLOCK <= qpk {
        pv_heads::<ROW_BLOCK>(
            path,
            &mut accs[r0..r0 + ROW_BLOCK],
            &p_all[r0 * partition_size..],
            partition_size,
            n,
            &v,
        );
        r0 += ROW_BLOCK;
    }
    while r0 < qpk {
        pv_heads::<1>(
            path,
            &mut accs[r0..r0 + 1],
            &p_all[r0 * partition_size..],
            partition_size,
            n,
            &v,
        );
        r0 += 1;
    }
    accs.into_iter()
        .zip(stats)
        .map(|(acc, (pmax, psum))| Ll4miPartial {
            max_logit: pmax,
            exp_sum: psum,
            out: acc
                .into_iter()
                .map(|a| cfg.dtype().round(if fp8 { a * cfg.v_scale() } else { a }))
                .collect(),
        })
        .collect()
}

/// `acc[r][d] = fma(p_r[t], v_t[d], acc[r][d])` over t ascending for the
/// `R` heads whose P rows are `p[r * stride..][..n]`, skipping each head's
/// own keys with `p == 0`, in passes of [`PV_KEYS`] keys (the heads share
/// each V load: [`simd::pv_rows`]).
fn pv_heads<'a, const R: usize>(
    path: SimdPath,
    accs: &mut [Vec<f32>],
    p: &[f32],
    stride: usize,
    n: usize,
    v: &impl Fn(usize) -> &'a [f32],
) {
    let mut buf = [[0f32; PV_KEYS]; R];
    let mut it = accs.iter_mut();
    let mut acc: [&mut [f32]; R] =
        std::array::from_fn(|_| it.next().expect("R heads").as_mut_slice());
    for j0 in (0..n).step_by(PV_KEYS) {
        let len = PV_KEYS.min(n - j0);
        for (r, b) in buf.iter_mut().enumerate() {
            b[..len].copy_from_slice(&p[r * stride + j0..][..len]);
        }
        simd::pv_rows(path, &mut acc, &buf, &buf, len, |k| v(j0 + k));
    }
}

/// The ll4mi reduce kernel for one (sequence, head): merges the sequence's
/// `cdiv(seq_len, partition_size)` partials in ascending partition order.
fn ll4mi_reduce(partials: &[Ll4miPartial], dtype: attnlab_shared::dtype::DType) -> Vec<f32> {
    let gmax = partials
        .iter()
        .fold(LL4MI_MASKED_LOGIT, |a, p| a.max(p.max_logit));
    let w: Vec<f32> = partials
        .iter()
        .map(|p| p.exp_sum * exp2c(p.max_logit - gmax))
        .collect();
    let mut lanes = vec![0f32; LL4MI_TOKENS_PER_WARP];
    for (p, &wp) in w.iter().enumerate() {
        lanes[p % LL4MI_TOKENS_PER_WARP] += wp;
    }
    let gsum = wave_butterfly(&mut lanes, |a, b| a + b);
    let inv = 1.0 / (gsum + LL4MI_SUM_EPS);
    let d = partials.first().map_or(0, |p| p.out.len());
    (0..d)
        .map(|dd| {
            let mut acc = 0f32;
            for (p, &wp) in partials.iter().zip(&w) {
                acc = p.out[dd].mul_add(wp, acc);
            }
            dtype.round(acc * inv)
        })
        .collect()
}

/// vLLM's ROCm custom paged attention (HIP ll4mi, `paged_attention_rocm`):
/// the partition kernel then the reduce kernel, for the batch's decode
/// sequences (query_len == 1); other rows of `out` are left untouched.
/// `partition_size` is 256 in vLLM and AITER ([`PARTITION_SIZE_ROCM`]);
/// it must be a positive multiple of the 64 tokens a wave owns.
pub fn paged_attention_ll4mi(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    partition_size: usize,
    out: &mut [f32],
) -> Result<()> {
    let inputs = PagedInputs::new(query, cache, meta, cfg)?;
    inputs.check_out(out)?; // before the partition size, as always
    paged_ll4mi(&inputs, PartitionSize::new(partition_size)?, out)
}

/// [`paged_attention_ll4mi`] over validated inputs.
pub fn paged_ll4mi(
    inputs: &PagedInputs,
    partition_size: PartitionSize,
    out: &mut [f32],
) -> Result<()> {
    inputs.check_out(out)?;
    let PagedInputs {
        query,
        cache,
        meta,
        cfg,
    } = *inputs;
    let partition_size = partition_size.get();
    let (hq, hkv, d, qpk) = (
        cfg.num_heads(),
        cfg.num_kv_heads(),
        cfg.head_size(),
        cfg.queries_per_kv(),
    );
    let dims = DimOffsets::new(&cache.layout);
    let seqs = decode_seqs(meta);
    // The block ids the kernel reads, in the width it reads them.
    let l = cache.layout;
    let extent = CacheExtent {
        num_blocks: l.num_blocks,
        block_size: l.block_size,
        row_elems: l.num_kv_heads * l.head_size,
    };
    check_extent(AddressedKernel::AiterBlockTable, extent, cfg.faults())?;
    // Partition kernel: grid (seq, partition, kv head); empty partitions return at once.
    let grid: Vec<(usize, usize, usize)> = seqs
        .iter()
        .flat_map(|&s| {
            let np = max_num_partitions(meta.seq_len(s), partition_size);
            (0..np).flat_map(move |p| (0..hkv).map(move |g| (s, p, g)))
        })
        .collect();
    let partials: Vec<Vec<Ll4miPartial>> = grid
        .par_iter()
        .map_init(
            || Ll4miScratch::new(partition_size, d, qpk),
            |scr, &(s, p, g)| {
                ll4mi_partition(query, cache, meta, cfg, &dims, partition_size, s, p, g, scr)
            },
        )
        .collect();
    // Regroup as [seq][head][partition] (grid order is seq, partition, kv head).
    let mut by_head: Vec<Vec<Vec<Ll4miPartial>>> = Vec::with_capacity(seqs.len());
    let mut it = grid.iter().zip(partials);
    for &s in &seqs {
        let mut heads: Vec<Vec<Ll4miPartial>> = vec![Vec::new(); hq];
        for _ in 0..max_num_partitions(meta.seq_len(s), partition_size) * hkv {
            let (&(_, _, g), group) = it
                .next()
                .expect("grid covers every (seq, partition, kv head)");
            for (i, part) in group.into_iter().enumerate() {
                heads[g * qpk + i].push(part);
            }
        }
        by_head.push(heads);
    }
    // Reduce kernel: grid (head, seq).
    let results: Vec<RowsOut> = seqs
        .par_iter()
        .zip(by_head.par_iter())
        .flat_map_iter(|(&s, heads)| {
            let row = meta.query_range(s).start;
            heads.iter().enumerate().map(move |(h, parts)| RowsOut {
                row,
                heads: h..h + 1,
                data: ll4mi_reduce(parts, cfg.dtype()),
            })
        })
        .collect();
    scatter(out, results, hq, d);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnlab_shared::dtype::DType;
    use attnlab_shared::layout::{KvLayout, LayoutKind};
    use attnlab_shared::metadata::BlockTableTensor;

    /// One decode sequence of `seq_len` keys in blocks 0.., K = 0 (uniform
    /// softmax), V[t][d] = t.
    fn uniform_decode(
        seq_len: usize,
        d: usize,
    ) -> (Vec<f32>, KvCache, AttentionMetadata, AttnConfig) {
        let (bs, nb) = (16, seq_len.div_ceil(16));
        let cfg = AttnConfig::new(1, 1, d, DType::F32).unwrap();
        let layout = KvLayout::new(LayoutKind::RocmPaged, nb, bs, 1, d, DType::F32).unwrap();
        let mut cache = KvCache::zeros(layout);
        for t in 0..seq_len {
            for dd in 0..d {
                cache.v[layout.v_offset(t / bs, t % bs, 0, dd)] = t as f32;
            }
        }
        let table = BlockTableTensor::from_rows(&[(0..nb as i32).collect()]);
        let meta = AttentionMetadata::new(
            bs,
            nb,
            vec![0, 1],
            vec![seq_len as i32],
            table,
            vec![-1],
            true,
        )
        .unwrap();
        (vec![0.5; d], cache, meta, cfg)
    }

    #[test]
    fn tile_size_follows_kernel_paged_attention_2d() {
        let got: Vec<usize> = [16, 32, 48, 64, 256, 544]
            .iter()
            .map(|&b| paged_2d_tile_size(b))
            .collect();
        assert_eq!(got, [16, 32, 32, 64, 128, 32]);
    }

    #[test]
    fn uniform_scores_give_the_mean_value_in_both_kernels() {
        // 700 keys: three partitions (the last partial), several 2D tiles.
        let (q, cache, meta, cfg) = uniform_decode(700, 8);
        let mean = 699.0 / 2.0;
        let (mut a, mut b) = (vec![0f32; 8], vec![0f32; 8]);
        paged_attention_2d(&q, &cache, &meta, &cfg, &mut a).unwrap();
        paged_attention_ll4mi(&q, &cache, &meta, &cfg, PARTITION_SIZE_ROCM, &mut b).unwrap();
        for x in a.iter().chain(&b) {
            approx::assert_relative_eq!(*x, mean, max_relative = 1e-5);
        }
    }

    #[test]
    fn ll4mi_reduce_of_one_partition_only_applies_the_epsilons() {
        let p = Ll4miPartial {
            max_logit: 3.0,
            exp_sum: 5.0,
            out: vec![0.25, -1.0],
        };
        let out = ll4mi_reduce(std::slice::from_ref(&p), DType::F32);
        let inv = 1.0 / (5.0f32 + LL4MI_SUM_EPS);
        assert_eq!(out, vec![(0.25f32 * 5.0) * inv, -5.0 * inv]);
    }

    #[test]
    fn ll4mi_reduce_gives_an_all_masked_partition_no_weight() {
        let live = Ll4miPartial {
            max_logit: 0.0,
            exp_sum: 2.0,
            out: vec![1.0],
        };
        let masked = Ll4miPartial {
            max_logit: LL4MI_MASKED_LOGIT,
            exp_sum: 64.0,
            out: vec![7.0],
        };
        assert_eq!(
            ll4mi_reduce(&[live.clone(), masked], DType::F32),
            ll4mi_reduce(&[live], DType::F32)
        );
    }

    #[test]
    fn ll4mi_rejects_a_partition_size_that_is_not_whole_waves() {
        let (q, cache, meta, cfg) = uniform_decode(20, 8);
        let e = paged_attention_ll4mi(&q, &cache, &meta, &cfg, 100, &mut [0f32; 8])
            .unwrap_err()
            .to_string();
        assert!(e.contains("partition_size 100") && e.contains("64"), "{e}");
    }

    #[test]
    fn out_of_window_keys_get_the_minus_10000_logit_not_minus_inf() {
        // Scores far below -10000 inside the window: the masked keys win the max.
        let (mut q, mut cache, meta, cfg) = uniform_decode(40, 8);
        let cfg = crate::config::AttnConfigBuilder {
            sliding_window: Some(4),
            ..cfg.to_builder()
        }
        .build()
        .unwrap();
        q.iter_mut().for_each(|x| *x = 1.0);
        let layout = cache.layout;
        for t in 36..40 {
            for d in 0..8 {
                cache.k[layout.k_offset(t / 16, t % 16, 0, d)] = -1e5;
            }
        }
        let mut out = vec![0f32; 8];
        paged_attention_2d(&q, &cache, &meta, &cfg, &mut out).unwrap();
        approx::assert_relative_eq!(out[0], 35.0 / 2.0, max_relative = 1e-5); // mean of the 36 masked keys' V
    }

    #[test]
    fn dim_offsets_are_separable_in_every_layout() {
        for kind in LayoutKind::ALL {
            let l = KvLayout::new(kind, 3, 16, 2, 32, DType::Bf16).unwrap();
            let dims = DimOffsets::new(&l);
            for (b, r, h) in [(0, 0, 0), (2, 15, 1), (1, 7, 0)] {
                for d in 0..32 {
                    assert_eq!(
                        l.k_offset(b, r, h, d),
                        l.k_offset(b, r, h, 0) + dims.k[d],
                        "{kind:?}"
                    );
                    assert_eq!(
                        l.v_offset(b, r, h, d),
                        l.v_offset(b, r, h, 0) + dims.v[d],
                        "{kind:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn mismatched_cache_is_rejected_naming_the_field() {
        let (q, cache, meta, cfg) = uniform_decode(20, 8);
        let cfg = crate::config::AttnConfigBuilder {
            head_size: 16,
            ..cfg.to_builder()
        }
        .build()
        .unwrap();
        let e = paged_attention_2d(&q, &cache, &meta, &cfg, &mut [0f32; 8])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cache layout") && e.contains("head size 16"),
            "{e}"
        );
    }
}
