//! Unified attention on matrix cores: the tensor-core flavour of
//! [`super::unified_attention`] (vLLM's Triton `kernel_unified_attention_2d`
//! / `_3d` + `reduce_segments`, which TRITON_ATTN and ROCM_AITER_UNIFIED_ATTN
//! run): the same launch ([`UnifiedLaunch`]: BLOCK_M, BLOCK_Q, TILE_SIZE, 2D
//! or 3D), the same paged NHD cache, masks, soft-cap formulas, sinks and
//! ALiBi, with Q·Kᵀ and P·V computed by the target's matrix instruction as
//! [`crate::numerics::mma`] models it: `mma.sync m16n8k16` on NVIDIA
//! (sm_90, 32-lane waves), `v_mfma_f32_16x16x16{bf16_1k,f16}` on CDNA
//! (64-lane waves). What it computes is per target (numerics.md §6): each
//! target's bits are those of `kernels/unified_attention_tc.hip` run there.
//!
//! ## Work (what fixes the numbers)
//! A program is vLLM's: q-block `qblk` of request `seq`, KV head `kvh`
//! (and segment `s` in 3D). Its BLOCK_M rows pack BLOCK_Q query tokens x
//! the `qpk` query heads of the KV head: row `m < BLOCK_Q * qpk` is token
//! `qblk * BLOCK_Q + m / qpk`, head `kvh * qpk + m % qpk` (rows past the
//! request's query and rows `>= BLOCK_Q * qpk` are padding, stored nowhere).
//! Its tiles are `compute_tile_loop_bounds`' ([`TileBounds`]), cut to the
//! segment's `[s * tps, (s + 1) * tps)` in 3D. Per row, with `ctx =
//! seq_len - q_len`, `qabs = ctx + q_local`:
//! ```text
//! m = sink * LOG2E (2D, or segment 0) else -inf; l = 1 with that sink else 0; acc[d] = 0
//! for j in tiles, ascending: keys t = j * TILE + jj, jj < TILE
//!   K, V rows of key t through block_table[seq][t / N], row t % N; zero for t >= seq_len;
//!     each element x as the flavour loads it (Flavor::kv_to_q): vLLM round_q(f32(x) * scale)
//!     for an fp8 cache (k_scale, v_scale), AITER round_q(x); a 16-bit cache as stored
//!   S[jj] = c, where c = +0, then for dc = 0, 16, .., D - 16:
//!           c = MMA(q[dc..dc+16] . k_t[dc..dc+16] + c)                // chained along d
//!   s[jj] = allowed(t, qabs) ? score(S[jj], slope * (t - ctx)) : -inf // the fma family's mask
//!           (scale: Flavor::score_scale, AITER's folds k_scale in over an fp8 cache)
//!   tile_max = max s; m_new = max(m, tile_max); m_ref = m_new, or 0 if -inf
//!   alpha = exp2c(m - m_ref); p[jj] = exp2c(s[jj] - m_ref)
//!   tile_sum: lane part q (4 lanes per row) sums its keys in ascending jj
//!             from 0, then (part_0 + part_2) + (part_1 + part_3)   (flash_varlen_tc::tile_sum)
//!   l = fma(l, alpha, tile_sum); m = masked_row_max(m_new)         (AITER / seed era: -inf -> 0)
//!   acc[d] = acc[d] * alpha
//!   for kc = 0, 16, .., TILE - 16:                                  // chained along keys
//!     acc[d] = MMA(round_q(p[kc..kc+16]) . v[kc..kc+16][d] + acc[d])
//! 2D: out = round_q(acc / l) (vLLM) or round_q(acc * (v_descale / l)) (AITER;
//!     v_descale = v_scale over an fp8 cache, else 1), unguarded (l == 0: the
//!     contract's NaN), as the fma family
//! 3D: (acc, m, l) f32 partials per segment (AITER over fp8: acc * v_scale),
//!     then the fma family's [`reduce_segments`] (its rule per flavour and profile)
//! ```
//! `MMA(a . b + c)` is one element of one instruction: the target's
//! [`Model::dot`] over 16 products (one block of 16 on sm_90; two blocks of
//! 8 in k order on gfx942; pairwise groups on gfx90a). Every key of the
//! tile takes part in P·V: masked keys with p = 0 and their cache V (a
//! zero product changes nothing for finite V), keys past the sequence with
//! p = 0 and V = 0. P is rounded to the input dtype before P·V (vLLM's
//! `p.to(v.dtype)`); acc is rescaled by alpha before it enters the
//! instruction as C. The lane parts follow the instruction's accumulator
//! layout (sm_90: `(jj mod 8) / 2`; CDNA, which computes Sᵀ = K·Qᵀ so that
//! P stays in registers as Pᵀ: `(jj mod 16) / 4`).
//!
//! Differences from the fma family: TILE_SIZE must be a multiple of 16 (the
//! instruction's k), up to [`MAX_TILE`]; BLOCK_M a multiple of 16 up to
//! [`MAX_BLOCK_M`]; head sizes multiples of 16 up to [`MAX_HEAD_SIZE`]; bf16
//! or f16 queries with the cache in the query dtype or fp8 (e4m3fnuz or
//! e4m3fn, per-tensor scales: vLLM 0.34's `KV_QUANT_MODE` 1; its
//! per-token-head modes are no more modelled here than in the fma family).
//! The fp8 load is the fma family's ([`Flavor::kv_to_q`], one definition):
//! vLLM's `_cast_kv_tile` widens each fp8 element, multiplies by the scale
//! in f32 and casts to the query dtype before `tl.dot`, so the instruction
//! sees query-dtype operands either way.

use super::flash_varlen_tc::{tile_sum, MMA_K};
use super::softmax::{visible, ScoreParams};
use super::unified_attention::{
    nan_fresh, reduce_segments, Flavor, Grid, SegmentPartials, TileBounds, UnifiedLaunch,
};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::numerics::mma::{InFormat, MatrixTarget, Model};
use crate::numerics::{exp2c, LOG2E};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;
use rayon::prelude::*;

/// Rows of one instruction tile (a wave's share of a program's BLOCK_M).
pub const WAVE_ROWS: usize = 16;
/// Largest TILE_SIZE (keys per tile; a multiple of 16).
pub const MAX_TILE: usize = 128;
/// Largest BLOCK_M (16 waves of 16 rows).
pub const MAX_BLOCK_M: usize = 256;
/// Largest head size.
pub const MAX_HEAD_SIZE: usize = 256;

/// The instruction's input format: the query dtype, bf16 or f16, with the
/// cache in the same dtype or fp8 (either e4m3 variant, per-tensor
/// `k_scale` / `v_scale`: each tile element becomes a query-dtype operand
/// at the load, [`Flavor::kv_to_q`]).
pub fn tc_format(cfg: &AttnConfig) -> Result<InFormat> {
    let f = match cfg.dtype() {
        DType::Bf16 => InFormat::Bf16,
        DType::F16 => InFormat::F16,
        other => {
            return Err(Error::invalid(
                "unified_attention_tc dtype",
                other.name(),
                "bf16 or f16",
            ))
        }
    };
    let kv = cfg.kv_dtype();
    if kv != cfg.dtype() && !kv.is_fp8() {
        return Err(Error::invalid(
            "unified_attention_tc KV cache dtype",
            kv.name(),
            format!(
                "the query dtype {} or an fp8 cache ({} or {})",
                cfg.dtype().name(),
                DType::Fp8E4m3Fnuz.name(),
                DType::Fp8E4m3Fn.name()
            ),
        ));
    }
    Ok(f)
}

/// Checks the launch shapes the matrix tiles take (beyond the fma family's
/// BLOCK_Q / BLOCK_M / segment rules, which it repeats).
pub fn validate_launch(cfg: &AttnConfig, launch: &UnifiedLaunch) -> Result<()> {
    let qpk = cfg.queries_per_kv();
    if launch.block_q == 0 || launch.block_q * qpk > launch.block_m {
        return Err(Error::invalid(
            "BLOCK_Q",
            launch.block_q,
            format!(
                "must be >= 1 with BLOCK_Q * qpk <= BLOCK_M = {} (qpk = {qpk})",
                launch.block_m
            ),
        ));
    }
    for (what, v, max) in [
        ("BLOCK_M", launch.block_m, MAX_BLOCK_M),
        ("TILE_SIZE", launch.tile_size, MAX_TILE),
        ("head_size", cfg.head_size(), MAX_HEAD_SIZE),
    ] {
        if v == 0 || !v.is_multiple_of(MMA_K) || v > max {
            return Err(Error::invalid(
                format!("unified_attention_tc {what}"),
                v,
                format!("a multiple of {MMA_K} from {MMA_K} to {max} (the matrix tiles)"),
            ));
        }
    }
    if launch.grid == (Grid::ThreeD { num_segments: 0 }) {
        return Err(Error::invalid("num_segments", 0, "must be >= 1"));
    }
    Ok(())
}

/// Everything the tensor-core kernel takes: the batch, the dtypes, the NHD
/// layout, the launch shapes, AITER causal only.
pub fn validate(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    launch: &UnifiedLaunch,
) -> Result<InFormat> {
    cache.check_batch(query, meta, cfg)?;
    let fmt = tc_format(cfg)?;
    validate_launch(cfg, launch)?;
    if cache.layout.kind != LayoutKind::Nhd {
        return Err(Error::invalid(
            "unified_attention_tc cache layout",
            cache.layout.kind.name(),
            "NHD (the flash layout)",
        ));
    }
    if launch.flavor == Flavor::Aiter && !meta.causal() {
        return Err(Error::unsupported(
            "non-causal AITER unified_attention",
            "Only causal attention is supported",
        ));
    }
    Ok(fmt)
}

/// The fma family's mask for key `t` and query position `qabs`: `t <
/// seq_len`, causal (or, non-causal, a two-sided window).
#[inline]
pub fn allowed(t: usize, qabs: usize, seq_len: usize, causal: bool, window: Option<usize>) -> bool {
    t < seq_len
        && visible(t, qabs, causal, window)
        && (causal || window.is_none_or(|w| t < qabs + w))
}

/// One stored row of a program: (token, head) and its (m, l, acc).
struct RowOut {
    token: usize,
    head: usize,
    m: f32,
    l: f32,
    acc: Vec<f32>,
}

struct Kernel<'a> {
    query: &'a [f32],
    cache: &'a KvCache,
    meta: &'a AttentionMetadata,
    cfg: &'a AttnConfig,
    launch: &'a UnifiedLaunch,
    fmt: InFormat,
    model: Model,
    target: MatrixTarget,
    params: ScoreParams,
}

impl Kernel<'_> {
    /// Program (seq, qblk, kvh) in segment `seg` of `num_segments`; `None`
    /// when it exits without a store.
    fn program(
        &self,
        seq: usize,
        qblk: usize,
        kvh: usize,
        seg: usize,
        num_segments: usize,
    ) -> Option<Vec<RowOut>> {
        let (meta, cfg, launch, fmt) = (self.meta, self.cfg, self.launch, self.fmt);
        let (hq, d, qpk) = (cfg.num_heads(), cfg.head_size(), cfg.queries_per_kv());
        let (bq, tile) = (launch.block_q, launch.tile_size);
        let q_start = meta.query_start_loc()[seq] as usize;
        let (q_len, seq_len) = (meta.query_len(seq), meta.seq_len(seq));
        let ctx = seq_len - q_len;
        let tps = seq_len.div_ceil(num_segments * tile);
        if seg * tps * tile >= seq_len {
            return None;
        }
        let window = cfg.sliding_window().unwrap_or(0);
        let b = TileBounds::new(launch, qpk, qblk, q_len, seq_len, meta.causal(), window);
        let lo = (seg * tps).max(b.tile_start);
        let hi = ((seg + 1) * tps).min(b.tile_end);
        let masked = launch.masked_row_max();
        // (token, head, qabs, q bits)
        let rows: Vec<(usize, usize, usize, Vec<u16>)> = (0..bq * qpk)
            .filter_map(|m| {
                let q_local = qblk * bq + m / qpk;
                (q_local < q_len).then(|| {
                    let (token, head) = (q_start + q_local, kvh * qpk + m % qpk);
                    let q = self.query[(token * hq + head) * d..][..d]
                        .iter()
                        .map(|&x| fmt.from_f32(x))
                        .collect();
                    (token, head, ctx + q_local, q)
                })
            })
            .collect();
        let sink = |head: usize| {
            if seg == 0 {
                cfg.sinks().as_ref().map(|s| s[head])
            } else {
                None
            }
        };
        let mut out: Vec<RowOut> = rows
            .iter()
            .map(|&(token, head, _, _)| {
                let (m, l) = match sink(head) {
                    Some(s) => (s * LOG2E, 1.0),
                    None => (f32::NEG_INFINITY, 0.0),
                };
                RowOut {
                    token,
                    head,
                    m,
                    l,
                    acc: vec![0.0; d],
                }
            })
            .collect();
        let layout = &self.cache.layout;
        // K tile [tile][d] and V tile transposed [d][tile], storage bits.
        let mut kt = vec![0u16; tile * d];
        let mut vt = vec![0u16; d * tile];
        let mut s = vec![0.0f32; tile];
        let mut pr = vec![0u16; tile];
        for j in lo..hi {
            let t0 = j * tile;
            kt.fill(0);
            vt.fill(0);
            let (flavor, ks, vs) = (launch.flavor, cfg.k_scale(), cfg.v_scale());
            for jj in 0..tile.min(seq_len.saturating_sub(t0)) {
                let (blk, r) = meta.kv_location(seq, t0 + jj);
                for dd in 0..d {
                    let k = self.cache.k[layout.k_offset(blk, r, kvh, dd)];
                    let v = self.cache.v[layout.v_offset(blk, r, kvh, dd)];
                    kt[jj * d + dd] = fmt.from_f32(flavor.kv_to_q(k, ks, cfg));
                    vt[dd * tile + jj] = fmt.from_f32(flavor.kv_to_q(v, vs, cfg));
                }
            }
            for ((_, head, qabs, q), st) in rows.iter().zip(out.iter_mut()) {
                let slope = cfg.alibi_slopes().as_ref().map(|a| a[*head]);
                for (jj, sj) in s.iter_mut().enumerate() {
                    let t = t0 + jj;
                    // A masked key's S is computed by the GPU and then
                    // replaced: only allowed keys need the chain here.
                    *sj = if allowed(t, *qabs, seq_len, meta.causal(), cfg.sliding_window()) {
                        let kr = &kt[jj * d..(jj + 1) * d];
                        let mut c = 0.0f32;
                        for dc in (0..d).step_by(MMA_K) {
                            c = self
                                .model
                                .dot(fmt, &q[dc..dc + MMA_K], &kr[dc..dc + MMA_K], c);
                        }
                        let bias = slope.map_or(0.0, |sl| sl * (t as i64 - ctx as i64) as f32);
                        self.params.score(c, bias)
                    } else {
                        f32::NEG_INFINITY
                    };
                }
                let tile_max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let m_new = st.m.max(tile_max);
                let m_ref = if m_new > f32::NEG_INFINITY {
                    m_new
                } else {
                    0.0
                };
                let alpha = exp2c(st.m - m_ref);
                for sj in s.iter_mut() {
                    *sj = exp2c(*sj - m_ref);
                }
                let sum = tile_sum(self.target, &s);
                st.l = st.l.mul_add(alpha, sum);
                st.m = masked.apply(m_new);
                for (b, &p) in pr.iter_mut().zip(&s) {
                    *b = fmt.from_f32(p);
                }
                for (c, a) in st.acc.iter_mut().enumerate() {
                    let mut z = *a * alpha;
                    for kc in (0..tile).step_by(MMA_K) {
                        z = self.model.dot(
                            fmt,
                            &pr[kc..kc + MMA_K],
                            &vt[c * tile + kc..c * tile + kc + MMA_K],
                            z,
                        );
                    }
                    *a = z;
                }
            }
        }
        Some(out)
    }

    /// Every program of the grid that stores, run in parallel.
    fn run(&self, num_segments: usize) -> Vec<(usize, RowOut)> {
        let meta = self.meta;
        let bq = self.launch.block_q;
        let mut programs = vec![];
        for seq in 0..meta.num_reqs() {
            for qblk in 0..meta.query_len(seq).div_ceil(bq) {
                for kvh in 0..self.cfg.num_kv_heads() {
                    for seg in 0..num_segments {
                        programs.push((seq, qblk, kvh, seg));
                    }
                }
            }
        }
        programs
            .par_iter()
            .filter_map(|&(seq, qblk, kvh, seg)| {
                self.program(seq, qblk, kvh, seg, num_segments)
                    .map(|rows| rows.into_iter().map(move |r| (seg, r)).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    }
}

fn kernel<'a>(
    query: &'a [f32],
    cache: &'a KvCache,
    meta: &'a AttentionMetadata,
    cfg: &'a AttnConfig,
    launch: &'a UnifiedLaunch,
    target: MatrixTarget,
) -> Result<Kernel<'a>> {
    let fmt = validate(query, cache, meta, cfg, launch)?;
    Ok(Kernel {
        query,
        cache,
        meta,
        cfg,
        launch,
        fmt,
        model: target.model(fmt),
        target,
        params: ScoreParams::new(launch.flavor.score_scale(cfg), cfg.softcap())
            .with_softcap_formula(launch.softcap_formula()),
    })
}

/// Unified attention on `target`'s matrix cores: the 2D kernel, or the 3D
/// kernel and `reduce_segments`, as `launch.grid` says. Returns `[T, Hq, D]`
/// in `cfg.dtype` (values exact in it).
pub fn unified_attention_tc(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    launch: &UnifiedLaunch,
    target: MatrixTarget,
) -> Result<Vec<f32>> {
    match launch.grid {
        Grid::TwoD => unified_attention_tc_2d(query, cache, meta, cfg, launch, target),
        Grid::ThreeD { .. } => {
            let parts = unified_attention_tc_3d(query, cache, meta, cfg, launch, target)?;
            reduce_segments(&parts, meta, cfg, launch)
        }
    }
}

/// The 2D kernel (`launch.grid` is ignored): `[T, Hq, D]` in `cfg.dtype`.
pub fn unified_attention_tc_2d(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    launch: &UnifiedLaunch,
    target: MatrixTarget,
) -> Result<Vec<f32>> {
    let k = kernel(query, cache, meta, cfg, launch, target)?;
    let (hq, d) = (cfg.num_heads(), cfg.head_size());
    let mut out = vec![0.0f32; meta.num_actual_tokens() * hq * d];
    for (_, r) in k.run(1) {
        let dst = &mut out[(r.token * hq + r.head) * d..][..d];
        match launch.flavor {
            Flavor::Vllm => {
                for (o, a) in dst.iter_mut().zip(&r.acc) {
                    *o = cfg.dtype().round(nan_fresh(a / r.l));
                }
            }
            Flavor::Aiter => {
                let f = launch.flavor.v_descale(cfg).unwrap_or(1.0) / r.l;
                for (o, a) in dst.iter_mut().zip(&r.acc) {
                    *o = cfg.dtype().round(nan_fresh(a * f));
                }
            }
        }
    }
    Ok(out)
}

/// The 3D kernel's f32 partials (`[T, Hq, S, D]` acc, `[T, Hq, S]` m and l;
/// segments a program skipped keep m = -inf, l = 0). Errors unless
/// `launch.grid` is 3D.
pub fn unified_attention_tc_3d(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    launch: &UnifiedLaunch,
    target: MatrixTarget,
) -> Result<SegmentPartials> {
    let Grid::ThreeD { num_segments } = launch.grid else {
        return Err(Error::invalid(
            "grid",
            "2D",
            "unified_attention_tc_3d needs Grid::ThreeD { num_segments }",
        ));
    };
    let k = kernel(query, cache, meta, cfg, launch, target)?;
    let (hq, d, s_n) = (cfg.num_heads(), cfg.head_size(), num_segments);
    let rows = meta.num_actual_tokens() * hq * s_n;
    let mut parts = SegmentPartials {
        num_segments: s_n,
        head_size: d,
        acc: vec![0.0; rows * d],
        m: vec![f32::NEG_INFINITY; rows],
        l: vec![0.0; rows],
    };
    let v_fold = launch.flavor.v_descale(cfg);
    for (seg, r) in k.run(s_n) {
        let i = (r.token * hq + r.head) * s_n + seg;
        parts.m[i] = r.m;
        parts.l[i] = r.l;
        let dst = &mut parts.acc[i * d..(i + 1) * d];
        match v_fold {
            Some(vs) => dst.iter_mut().zip(&r.acc).for_each(|(o, a)| *o = a * vs),
            None => dst.copy_from_slice(&r.acc),
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::unified_attention::{unified_attention, VllmLaunchOptions};
    use crate::profile::VllmProfile;
    use proptest::prelude::*;

    /// Requests `(ctx, q)` in reversed (non-contiguous) blocks, deterministic data.
    fn batch(
        cfg: &AttnConfig,
        block_size: usize,
        reqs: &[(usize, usize)],
    ) -> (Vec<f32>, KvCache, AttentionMetadata) {
        crate::kernels::test_batch::reversed_blocks(
            cfg,
            LayoutKind::Nhd,
            block_size,
            reqs,
            false,
            cfg.kv_dtype(),
        )
    }

    fn vllm_launch(meta: &AttentionMetadata, cfg: &AttnConfig) -> UnifiedLaunch {
        let opts = VllmLaunchOptions {
            profile: VllmProfile::V0_34,
            ..VllmLaunchOptions::default()
        };
        UnifiedLaunch::vllm(meta, cfg, opts).unwrap()
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn agrees_with_the_fma_kernel_within_rounding_on_a_mixed_batch() {
        let cfg = crate::config::AttnConfigBuilder {
            sinks: Some(vec![0.5, -1.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.75]),
            ..AttnConfig::builder(8, 2, 64, DType::Bf16)
        }
        .build()
        .unwrap();
        // decode, extend, prefill
        let (q, cache, meta) = batch(&cfg, 16, &[(40, 1), (30, 9), (0, 37)]);
        for grid in [Grid::TwoD, Grid::ThreeD { num_segments: 4 }] {
            let launch = vllm_launch(&meta, &cfg).with_grid(grid);
            let fma = unified_attention(&q, &cache, &meta, &cfg, &launch).unwrap();
            for t in MatrixTarget::ALL {
                let tc = unified_attention_tc(&q, &cache, &meta, &cfg, &launch, t).unwrap();
                crate::kernels::test_batch::assert_within_rounding(
                    &tc,
                    &fma,
                    &format!("{} {grid:?}", t.name()),
                );
            }
        }
    }

    #[test]
    fn one_segment_3d_is_bit_identical_to_2d() {
        let cfg = crate::config::AttnConfigBuilder {
            softcap: Some(20.0),
            ..AttnConfig::builder(4, 1, 32, DType::F16)
        }
        .build()
        .unwrap();
        let (q, cache, meta) = batch(&cfg, 16, &[(70, 3), (5, 20)]);
        let launch = vllm_launch(&meta, &cfg);
        for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
            let two =
                unified_attention_tc(&q, &cache, &meta, &cfg, &launch.with_grid(Grid::TwoD), t)
                    .unwrap();
            let three = unified_attention_tc(
                &q,
                &cache,
                &meta,
                &cfg,
                &launch.with_grid(Grid::ThreeD { num_segments: 1 }),
                t,
            )
            .unwrap();
            assert_eq!(bits(&two), bits(&three), "{}", t.name());
        }
    }

    #[test]
    fn a_single_visible_key_returns_its_value_on_every_target() {
        // One prefill token: it sees only key 0, so out = V[0] exactly.
        let cfg = AttnConfig::new(2, 1, 16, DType::Bf16).unwrap();
        let (q, cache, meta) = batch(&cfg, 16, &[(0, 1)]);
        let launch = vllm_launch(&meta, &cfg).with_grid(Grid::TwoD);
        let v0: Vec<f32> = (0..16)
            .map(|dd| cache.v[cache.layout.v_offset(meta.kv_location(0, 0).0, 0, 0, dd)])
            .collect();
        for t in MatrixTarget::ALL {
            let out = unified_attention_tc(&q, &cache, &meta, &cfg, &launch, t).unwrap();
            assert_eq!(&out[..16], &v0[..], "{}", t.name());
            assert_eq!(&out[16..], &v0[..], "{}", t.name());
        }
    }

    #[test]
    fn the_targets_differ_in_bits_but_each_is_deterministic() {
        let cfg = AttnConfig::new(4, 1, 64, DType::Bf16).unwrap();
        let (q, cache, meta) = batch(&cfg, 16, &[(50, 30)]);
        let launch = vllm_launch(&meta, &cfg).with_grid(Grid::ThreeD { num_segments: 2 });
        // The f32 partials, before the output's rounding to bf16.
        let run = |t| {
            unified_attention_tc_3d(&q, &cache, &meta, &cfg, &launch, t)
                .unwrap()
                .acc
        };
        let (a, b) = (run(MatrixTarget::Sm90), run(MatrixTarget::Gfx942));
        assert_eq!(bits(&a), bits(&run(MatrixTarget::Sm90)));
        assert_ne!(
            bits(&a),
            bits(&b),
            "sm_90 truncates, gfx942 rounds to nearest"
        );
    }

    #[test]
    fn rejects_what_the_matrix_tiles_cannot_take_naming_the_value() {
        let cfg = AttnConfig::new(2, 1, 32, DType::Bf16).unwrap();
        let (q, cache, meta) = batch(&cfg, 16, &[(4, 4)]);
        let launch = vllm_launch(&meta, &cfg);
        let err = |cfg: &AttnConfig, l: &UnifiedLaunch| {
            unified_attention_tc(&q, &cache, &meta, cfg, l, MatrixTarget::Sm90)
                .unwrap_err()
                .to_string()
        };
        let e = err(
            &cfg,
            &UnifiedLaunch {
                tile_size: 24,
                ..launch
            },
        );
        assert!(e.contains("TILE_SIZE") && e.contains("24"), "{e}");
        let e = err(
            &cfg,
            &UnifiedLaunch {
                block_m: 8,
                block_q: 4,
                ..launch
            },
        );
        assert!(e.contains("BLOCK_M") && e.contains('8'), "{e}");
        let f16_cache = crate::config::AttnConfigBuilder {
            kv_dtype: DType::F16,
            ..cfg.to_builder()
        }
        .build()
        .unwrap();
        let e = tc_format(&f16_cache).unwrap_err().to_string();
        assert!(
            e.contains("KV cache dtype") && e.contains(DType::F16.name()) && e.contains("fp8"),
            "{e}"
        );
        for kv in [DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn] {
            let fp8 = crate::config::AttnConfigBuilder {
                kv_dtype: kv,
                ..cfg.to_builder()
            }
            .build()
            .unwrap();
            assert_eq!(tc_format(&fp8).unwrap(), InFormat::Bf16, "{}", kv.name());
        }
        let f32_cfg = AttnConfig::new(2, 1, 32, DType::F32).unwrap();
        let e = tc_format(&f32_cfg).unwrap_err().to_string();
        assert!(e.contains("float32") && e.contains("bf16 or f16"), "{e}");
    }

    /// `cfg` with an fp8 cache of `kv` and the given per-tensor scales.
    fn with_fp8(cfg: &AttnConfig, kv: DType, k_scale: f32, v_scale: f32) -> AttnConfig {
        crate::config::AttnConfigBuilder {
            kv_dtype: kv,
            k_scale,
            v_scale,
            ..cfg.to_builder()
        }
        .build()
        .unwrap()
    }

    /// Both flavours' launches of `cfg` over `meta`: vLLM 0.34's and AITER's.
    fn both_launches(meta: &AttentionMetadata, cfg: &AttnConfig) -> [UnifiedLaunch; 2] {
        let v = vllm_launch(meta, cfg);
        let a = UnifiedLaunch::aiter(
            meta,
            cfg,
            crate::kernels::unified_attention::MI300X_CU_COUNT,
        )
        .unwrap();
        // The matrix tiles take multiples of 16 only.
        let a = UnifiedLaunch {
            tile_size: a.tile_size.next_multiple_of(MMA_K),
            ..a
        };
        [v, a]
    }

    #[test]
    fn an_fp8_cache_agrees_with_the_fma_kernel_within_rounding_in_both_flavours() {
        let base = crate::config::AttnConfigBuilder {
            sinks: Some(vec![0.5, -1.0, 0.25, 2.0]),
            ..AttnConfig::builder(4, 2, 64, DType::Bf16)
        }
        .build()
        .unwrap();
        for (kv, q) in [
            (DType::Fp8E4m3Fnuz, DType::Bf16),
            (DType::Fp8E4m3Fn, DType::F16),
        ] {
            let cfg = with_fp8(
                &crate::config::AttnConfigBuilder {
                    dtype: q,
                    ..base.to_builder()
                }
                .build()
                .unwrap(),
                kv,
                0.75,
                1.5,
            );
            let (q, cache, meta) = batch(&cfg, 16, &[(40, 1), (30, 9), (0, 37)]);
            for launch in both_launches(&meta, &cfg) {
                for grid in [Grid::TwoD, Grid::ThreeD { num_segments: 4 }] {
                    let launch = launch.with_grid(grid);
                    let fma = unified_attention(&q, &cache, &meta, &cfg, &launch).unwrap();
                    for t in MatrixTarget::ALL {
                        let tc = unified_attention_tc(&q, &cache, &meta, &cfg, &launch, t).unwrap();
                        crate::kernels::test_batch::assert_within_rounding(
                            &tc,
                            &fma,
                            &format!("{} {:?} {} {grid:?}", kv.name(), launch.flavor, t.name()),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn vllm_over_an_fp8_cache_computes_a_query_dtype_cache_of_its_dequantised_tiles() {
        // vLLM's _cast_kv_tile: round_q(f32(x) * scale) at the load, then
        // tl.dot in the query dtype; nothing else sees the fp8 cache.
        let base = AttnConfig::new(4, 1, 32, DType::Bf16).unwrap();
        for kv in [DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn] {
            let cfg = with_fp8(&base, kv, 0.0371, 0.0213);
            let (q, cache, meta) = batch(&cfg, 16, &[(50, 1), (20, 13)]);
            let deq = KvCache {
                layout: attnlab_shared::layout::KvLayout {
                    dtype: DType::Bf16,
                    ..cache.layout
                },
                k: cache
                    .k
                    .iter()
                    .map(|&x| DType::Bf16.round(x * cfg.k_scale()))
                    .collect(),
                v: cache
                    .v
                    .iter()
                    .map(|&x| DType::Bf16.round(x * cfg.v_scale()))
                    .collect(),
            };
            for grid in [Grid::TwoD, Grid::ThreeD { num_segments: 2 }] {
                let launch = vllm_launch(&meta, &cfg).with_grid(grid);
                for t in MatrixTarget::ALL {
                    let a = unified_attention_tc(&q, &cache, &meta, &cfg, &launch, t).unwrap();
                    let b = unified_attention_tc(&q, &deq, &meta, &base, &launch, t).unwrap();
                    assert_eq!(bits(&a), bits(&b), "{} {} {grid:?}", kv.name(), t.name());
                }
            }
        }
    }

    #[test]
    fn aiter_folds_the_fp8_scales_into_the_score_and_the_epilogue() {
        // AITER loads the fp8 values as they are, multiplies the score scale
        // by k_scale and the output by v_scale: with power-of-two scales
        // that is exactly 4x the same cache read as bf16 values under
        // scale * k_scale (every step commutes with a power of two).
        let base = AttnConfig::new(4, 1, 32, DType::Bf16).unwrap();
        let cfg = with_fp8(&base, DType::Fp8E4m3Fn, 0.5, 4.0);
        let (q, cache, meta) = batch(&cfg, 16, &[(45, 1), (10, 21)]);
        let raw = KvCache {
            layout: attnlab_shared::layout::KvLayout {
                dtype: DType::Bf16,
                ..cache.layout
            },
            ..cache.clone()
        };
        let folded = crate::config::AttnConfigBuilder {
            scale: base.scale() * 0.5,
            ..base.to_builder()
        }
        .build()
        .unwrap();
        let [_, aiter] = both_launches(&meta, &cfg);
        for grid in [Grid::TwoD, Grid::ThreeD { num_segments: 3 }] {
            let launch = aiter.with_grid(grid);
            for t in MatrixTarget::ALL {
                let a = unified_attention_tc(&q, &cache, &meta, &cfg, &launch, t).unwrap();
                let b = unified_attention_tc(&q, &raw, &meta, &folded, &launch, t).unwrap();
                let b4: Vec<f32> = b.iter().map(|x| x * 4.0).collect();
                assert_eq!(bits(&a), bits(&b4), "{} {grid:?}", t.name());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        /// A program's BLOCK_Q only moves tiles fully masked for a row in
        /// or out of its loop, and such a tile changes no bit (its P is 0,
        /// a zero product is left out of the instruction and C passes
        /// exactly), so any BLOCK_Q gives the same bits (finite inputs,
        /// vLLM 0.34's -inf-keeping max).
        #[test]
        fn the_q_blocking_changes_no_bit(ctx in 0usize..40, ql in 1usize..30, block_q in 1usize..5, window in 0usize..12) {
            let cfg = crate::config::AttnConfigBuilder {
                sliding_window: (window > 0).then_some(window),
                ..AttnConfig::builder(4, 1, 32, DType::Bf16)
            }.build().unwrap();
            let (q, cache, meta) = batch(&cfg, 16, &[(ctx, ql)]);
            let launch = vllm_launch(&meta, &cfg).with_grid(Grid::TwoD);
            let other = UnifiedLaunch { block_q, ..launch };
            for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
                let a = unified_attention_tc(&q, &cache, &meta, &cfg, &launch, t).unwrap();
                let b = unified_attention_tc(&q, &cache, &meta, &cfg, &other, t).unwrap();
                prop_assert_eq!(bits(&a), bits(&b));
            }
        }
    }
}
