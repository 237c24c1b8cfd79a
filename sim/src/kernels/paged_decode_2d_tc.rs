//! The 2D paged decode on matrix cores: the tensor-core flavour of
//! [`super::paged_decode::paged_2d`] (vLLM's Triton
//! `kernel_paged_attention_2d` in `chunked_prefill_paged_decode.py`, what
//! ROCM_ATTN runs for its query_len-1 rows when the ll4mi kernel does not
//! take them), with `qk = scale * tl.dot(Q, K)` and `acc += tl.dot(p.to(V.dtype),
//! V)` computed by the target's matrix instruction as
//! [`crate::numerics::mma`] models it: `mma.sync m16n8k16` on NVIDIA (sm_90,
//! 32-lane waves), `v_mfma_f32_16x16x16{bf16_1k,f16}` on CDNA (64-lane
//! waves). The cache is read through its `KvLayout` (ROCM_ATTN's x-packed K
//! `[blocks, Hkv, D/x, bs, x]` and transposed V `[blocks, Hkv, D, bs]`,
//! NHD, AITER's shuffled V). Its bits are those of
//! `kernels/paged_decode_2d_tc.hip` run on that target (numerics.md §6).
//!
//! ## Work (what fixes the numbers)
//! vLLM's program is `(sequence, kv head)`: the kv head's `qpk` query heads
//! padded to `num_queries_per_kv_padded = max(next_pow2(qpk), 16)` rows, a
//! whole sequence, no split-KV. Rows are independent in every step below,
//! so the padded M is cut into instruction tiles of [`ROWS`] = 16 heads:
//! one wave per `(sequence, kv head, group of 16 heads)`. Only sequences
//! with query_len 1 run (`filter_by_query_len`: the others' rows are left
//! untouched). Per head h (query position `ctx = seq_len - 1`), with `TILE =
//! paged_2d_tile_size(block_size)` (the fma twin's: the block size up to
//! 128 for powers of two, else 32) and `TP` = TILE rounded up to 16:
//! ```text
//! m = sink * LOG2E or -inf; l = 1 or 0; acc[d] = 0
//! for t0 = 0, TILE, .. < seq_len (keys t = t0 + j, j < TP; n = min(TILE, seq_len - t0) exist):
//!   K, V rows of the n keys through the block table in the cache's layout (an fp8
//!   value: round_q(f32(x) * scale)); K = V = 0 for j >= n
//!   S[j] = c, c = +0, then for dc = 0, 16, .., D - 16:  c = MMA(q[dc..+16] . k_j[dc..+16] + c)
//!   s[j] = j >= n                  ? -inf
//!        : visible(t, ctx, window) ? score(S[j], bias)
//!        :                           -10000 * LOG2E + bias * LOG2E     (vLLM's -10000, not -inf)
//!          (bias = slope_h * (t - ctx) with ALiBi, else 0; the fma twin's score and mask)
//!   m_new = max(m, max s); m_ref = m_new, or 0 if -inf; alpha = exp2c(m - m_ref)
//!   p[j] = exp2c(s[j] - m_ref)
//!   tile_sum: each of the row's 4 lane parts sums its keys ascending from j = 0, then
//!             (part0 + part2) + (part1 + part3)   sm_90: part = (j mod 8) / 2; CDNA: (j mod 16) / 4
//!   l = fma(l, alpha, tile_sum); m = m_new
//!   acc[d] = acc[d] * alpha; for kc = 0, 16, .., TP - 16:  acc[d] = MMA(round_q(p[kc..+16]) . v[kc..+16][d] + acc[d])
//! out = round_q(acc / (l + 1e-10)), a NaN the canonical one
//! ```
//! `MMA(a . b + c)` is one element of one instruction: the target's
//! [`Model::dot`] over 16 products in k order (one block on sm_90; two
//! blocks of 8 on gfx942; pairwise groups on gfx90a). The k order is the
//! head dimension ascending for S and the tile's keys ascending for P·V;
//! each instruction takes the previous one's result as C, and acc enters
//! as C already rescaled by alpha. P is rounded to the query dtype before
//! P·V (`p.to(V.dtype)`); the row sum adds the unrounded p. Every key slot
//! of the padded tile enters P·V: window-masked keys with their (tiny) p
//! and their cache V, slots past the sequence or the tile with p = 0 and
//! V = 0. A padded row (a head past the kv head's `qpk`) has Q = 0 and is
//! never stored; a row of D depends on its own row of the instruction's
//! A only (Q on NVIDIA; on CDNA, which computes Sᵀ = K·Qᵀ and Oᵀ = Vᵀ·Pᵀ,
//! its own column of B), so padding changes no bit of a real head.
//!
//! Differences from the fma twin: bf16 or f16 queries only (the cache in
//! the query dtype or fp8); head sizes multiples of 16 up to
//! [`MAX_HEAD_SIZE`]; one padded tile of K or V staged (`TP x (D + 8)`
//! 16-bit elements) within [`STAGE_LIMIT`] bytes (block size 128 stops at
//! head size 240).

use super::flash_varlen_tc::{tile_sum, MMA_K};
use super::paged_decode::{paged_2d_tile_size, PagedInputs, WINDOW_MASKED_LOGIT};
use super::prefix_prefill_tc::{stage_bytes, STAGE_LIMIT};
use super::softmax::{dequant_kv, visible, ScoreParams, TRITON_L_EPS};
use super::unified_attention::nan_fresh;
use crate::numerics::mma::{InFormat, MatrixTarget, Model};
use crate::numerics::{exp2c, LOG2E};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use rayon::prelude::*;

/// Query heads of one instruction tile (a wave's rows).
pub const ROWS: usize = 16;
/// Largest head size.
pub const MAX_HEAD_SIZE: usize = 256;

/// The keys of one tile (`paged_2d_tile_size`) rounded up to whole
/// 16-key instruction chunks: the staged tile.
pub fn padded_tile(block_size: usize) -> usize {
    paged_2d_tile_size(block_size).next_multiple_of(MMA_K)
}

/// Instruction tiles of [`ROWS`] heads per kv head.
pub fn head_groups(queries_per_kv: usize) -> usize {
    queries_per_kv.div_ceil(ROWS).max(1)
}

/// One `kernel_paged_attention_2d` launch on matrix cores, validated once:
/// paged inputs ([`PagedInputs`]: consistent shapes) whose configuration
/// the matrix tiles take (bf16 or f16 queries, the cache in their dtype or
/// fp8, head size a multiple of 16 up to [`MAX_HEAD_SIZE`], one padded tile
/// staged within [`STAGE_LIMIT`] bytes), for one target. The emulator
/// ([`paged_decode_2d_tc`]), both kernel executors and the GPU launcher
/// take it; everything is borrowed, so nothing changes after the check.
#[derive(Debug, Clone, Copy)]
pub struct Decode2dTcArgs<'a> {
    inputs: PagedInputs<'a>,
    target: MatrixTarget,
    fmt: InFormat,
    tile: usize,
}

impl<'a> Decode2dTcArgs<'a> {
    /// Checks what the matrix tiles add to [`PagedInputs`]; the error names
    /// the refused value and what the kernel accepts.
    pub fn new(inputs: PagedInputs<'a>, target: MatrixTarget) -> Result<Self> {
        let cfg = inputs.cfg();
        let fmt = match cfg.dtype() {
            DType::Bf16 => InFormat::Bf16,
            DType::F16 => InFormat::F16,
            other => {
                return Err(Error::invalid(
                    "paged_decode_2d_tc dtype",
                    other.name(),
                    "bf16 or f16",
                ))
            }
        };
        if cfg.kv_dtype() != cfg.dtype() && !cfg.kv_dtype().is_fp8() {
            return Err(Error::invalid(
                "paged_decode_2d_tc KV cache dtype",
                cfg.kv_dtype().name(),
                format!("the query dtype {} or an fp8 cache", cfg.dtype().name()),
            ));
        }
        let d = cfg.head_size();
        if d == 0 || !d.is_multiple_of(MMA_K) || d > MAX_HEAD_SIZE {
            return Err(Error::invalid(
                "paged_decode_2d_tc head_size",
                d,
                format!("a multiple of {MMA_K} from {MMA_K} to {MAX_HEAD_SIZE} (the matrix tiles)"),
            ));
        }
        let block_size = inputs.meta().block_size();
        let tile = padded_tile(block_size);
        let bytes = stage_bytes(d, tile);
        if bytes > STAGE_LIMIT {
            return Err(Error::invalid(
                format!(
                    "paged_decode_2d_tc staging of one {tile}-key tile (block size {block_size}, head size {d})"
                ),
                bytes,
                format!("at most {STAGE_LIMIT} bytes: TILE x (head_size + 8) x 2"),
            ));
        }
        Ok(Decode2dTcArgs {
            inputs,
            target,
            fmt,
            tile,
        })
    }
    pub fn inputs(&self) -> &PagedInputs<'a> {
        &self.inputs
    }
    /// The matrix-core model the kernel runs.
    pub fn target(&self) -> MatrixTarget {
        self.target
    }
    /// The instruction's input format (the query dtype).
    pub fn format(&self) -> InFormat {
        self.fmt
    }
    /// Keys of one staged tile ([`padded_tile`] of the block size).
    pub fn padded_tile(&self) -> usize {
        self.tile
    }
    /// Keys of one tile of the loop (`paged_2d_tile_size`).
    pub fn tile(&self) -> usize {
        paged_2d_tile_size(self.inputs.meta().block_size())
    }
}

/// One program `(seq, kv head)` (all its head groups: rows are
/// independent): the `qpk` heads' output rows, `[qpk][D]`.
fn program(args: &Decode2dTcArgs, model: &Model, seq: usize, kvh: usize) -> Vec<f32> {
    let inputs = args.inputs();
    let (query, cache, meta, cfg) = (inputs.query(), inputs.cache(), inputs.meta(), inputs.cfg());
    let (fmt, target) = (args.fmt, args.target);
    let (hq, d, qpk) = (cfg.num_heads(), cfg.head_size(), cfg.queries_per_kv());
    let (tile, tp) = (args.tile(), args.padded_tile());
    let params = ScoreParams::new(cfg.scale(), cfg.softcap());
    let window_masked2 = WINDOW_MASKED_LOGIT * LOG2E;
    let row = meta.query_range(seq).start;
    let seq_len = meta.seq_len(seq);
    let ctx = seq_len - 1;
    let heads = kvh * qpk..(kvh + 1) * qpk;
    let q: Vec<Vec<u16>> = heads
        .clone()
        .map(|h| {
            query[(row * hq + h) * d..][..d]
                .iter()
                .map(|&x| fmt.from_f32(x))
                .collect()
        })
        .collect();
    struct Row {
        m: f32,
        l: f32,
        acc: Vec<f32>,
    }
    let mut states: Vec<Row> = heads
        .clone()
        .map(|h| match cfg.sinks().as_ref().map(|s| s[h]) {
            Some(s) => Row {
                m: s * LOG2E,
                l: 1.0,
                acc: vec![0.0; d],
            },
            None => Row {
                m: f32::NEG_INFINITY,
                l: 0.0,
                acc: vec![0.0; d],
            },
        })
        .collect();
    let layout = &cache.layout;
    // K tile [key][d] and V tile transposed [d][key], storage bits.
    let mut kt = vec![0u16; tp * d];
    let mut vt = vec![0u16; d * tp];
    let mut s = vec![0.0f32; tp];
    let mut pr = vec![0u16; tp];
    for t0 in (0..seq_len).step_by(tile) {
        let n = tile.min(seq_len - t0);
        kt.fill(0);
        vt.fill(0);
        for j in 0..n {
            let (blk, r) = meta.kv_location(seq, t0 + j);
            for dd in 0..d {
                let k = cache.k[layout.k_offset(blk, r, kvh, dd)];
                let x = cache.v[layout.v_offset(blk, r, kvh, dd)];
                kt[j * d + dd] =
                    fmt.from_f32(dequant_kv(k, cfg.k_scale(), cfg.kv_dtype(), cfg.dtype()));
                vt[dd * tp + j] =
                    fmt.from_f32(dequant_kv(x, cfg.v_scale(), cfg.kv_dtype(), cfg.dtype()));
            }
        }
        for ((h, qr), st) in heads.clone().zip(&q).zip(states.iter_mut()) {
            let slope = cfg.alibi_slopes().as_ref().map(|s| s[h]);
            for (j, sj) in s.iter_mut().enumerate() {
                let t = t0 + j;
                let bias = slope.map_or(0.0, |sl| sl * (t as f32 - ctx as f32));
                *sj = if j >= n {
                    f32::NEG_INFINITY
                } else if visible(t, ctx, true, cfg.sliding_window()) {
                    let kr = &kt[j * d..(j + 1) * d];
                    let mut c = 0.0f32;
                    for dc in (0..d).step_by(MMA_K) {
                        c = model.dot(fmt, &qr[dc..dc + MMA_K], &kr[dc..dc + MMA_K], c);
                    }
                    params.score(c, bias)
                } else {
                    window_masked2 + bias * LOG2E
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
            let sum = tile_sum(target, &s);
            st.l = st.l.mul_add(alpha, sum);
            st.m = m_new;
            for (b, &x) in pr.iter_mut().zip(s.iter()) {
                *b = fmt.from_f32(x);
            }
            for (c, a) in st.acc.iter_mut().enumerate() {
                let mut z = *a * alpha;
                for kc in (0..tp).step_by(MMA_K) {
                    z = model.dot(
                        fmt,
                        &pr[kc..kc + MMA_K],
                        &vt[c * tp + kc..c * tp + kc + MMA_K],
                        z,
                    );
                }
                *a = z;
            }
        }
    }
    let mut data = Vec::with_capacity(qpk * d);
    for st in &states {
        let denom = st.l + TRITON_L_EPS;
        data.extend(
            st.acc
                .iter()
                .map(|a| cfg.dtype().round(nan_fresh(a / denom))),
        );
    }
    data
}

/// `kernel_paged_attention_2d` on `target`'s matrix cores over validated
/// arguments: writes the output rows of the batch's decode sequences
/// (query_len 1) into `out` (`[T, Hq, D]`, values exact in the query
/// dtype); other rows are left untouched.
pub fn paged_decode_2d_tc(args: &Decode2dTcArgs, out: &mut [f32]) -> Result<()> {
    let inputs = args.inputs();
    inputs.check_out(out)?;
    let (meta, cfg) = (inputs.meta(), inputs.cfg());
    let (hq, hkv, d, qpk) = (
        cfg.num_heads(),
        cfg.num_kv_heads(),
        cfg.head_size(),
        cfg.queries_per_kv(),
    );
    let model = args.target.model(args.fmt);
    let programs: Vec<(usize, usize)> = (0..meta.num_reqs())
        .filter(|&b| meta.query_len(b) == 1)
        .flat_map(|b| (0..hkv).map(move |g| (b, g)))
        .collect();
    let results: Vec<((usize, usize), Vec<f32>)> = programs
        .par_iter()
        .map(|&(b, g)| ((b, g), program(args, &model, b, g)))
        .collect();
    for ((b, g), data) in results {
        let row = meta.query_range(b).start;
        let base = (row * hq + g * qpk) * d;
        out[base..base + data.len()].copy_from_slice(&data);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::KvCache;
    use crate::config::{AttnConfig, AttnConfigBuilder};
    use crate::kernels::paged_decode::paged_2d;
    use crate::kernels::test_batch::{assert_within_rounding, reversed_blocks};
    use attnlab_shared::layout::LayoutKind;
    use attnlab_shared::metadata::AttentionMetadata;
    use proptest::prelude::*;

    fn batch(
        cfg: &AttnConfig,
        kind: LayoutKind,
        block_size: usize,
        reqs: &[(usize, usize)],
    ) -> (Vec<f32>, KvCache, AttentionMetadata) {
        reversed_blocks(cfg, kind, block_size, reqs, false, cfg.kv_dtype())
    }

    fn run(
        q: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        target: Option<MatrixTarget>,
        init: f32,
    ) -> Result<Vec<f32>> {
        let inputs = PagedInputs::new(q, cache, meta, cfg)?;
        let mut out = vec![init; q.len()];
        match target {
            Some(t) => paged_decode_2d_tc(&Decode2dTcArgs::new(inputs, t)?, &mut out)?,
            None => paged_2d(&inputs, &mut out)?,
        }
        Ok(out)
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn agrees_with_the_fma_twin_within_rounding_with_every_option_and_layout() {
        let base = AttnConfig::new(4, 2, 64, DType::Bf16).unwrap();
        let configs = [
            AttnConfigBuilder {
                sinks: Some(vec![0.5, -1.0, 0.25, 2.0]),
                sliding_window: Some(40),
                ..base.to_builder()
            }
            .build()
            .unwrap(),
            AttnConfigBuilder {
                alibi_slopes: Some(vec![0.5, 0.25, 0.125, 0.0625]),
                ..base.to_builder()
            }
            .build()
            .unwrap(),
            AttnConfigBuilder {
                softcap: Some(10.0),
                kv_dtype: DType::Fp8E4m3Fnuz,
                k_scale: 0.5,
                v_scale: 0.25,
                ..AttnConfig::builder(4, 2, 64, DType::F16)
            }
            .build()
            .unwrap(),
        ];
        for cfg in &configs {
            for kind in [
                LayoutKind::RocmPaged,
                LayoutKind::Nhd,
                LayoutKind::AiterShuffled,
            ] {
                for bs in [16, 8, 544] {
                    let shape = (kind, 1, bs, 2, 64, cfg.kv_dtype());
                    if attnlab_shared::layout::KvLayout::new(
                        shape.0, shape.1, shape.2, shape.3, shape.4, shape.5,
                    )
                    .is_err()
                    {
                        continue; // the shuffled layout packs whole 16-byte vectors of a block's rows
                    }
                    // decode rows over several tiles beside a prefill row
                    let (q, cache, meta) = batch(cfg, kind, bs, &[(70, 1), (0, 9), (200, 1)]);
                    let fma = run(&q, &cache, &meta, cfg, None, 0.0).unwrap();
                    for t in MatrixTarget::ALL {
                        let tc = run(&q, &cache, &meta, cfg, Some(t), 0.0).unwrap();
                        assert_within_rounding(
                            &tc,
                            &fma,
                            &format!("{} {kind:?} bs {bs}", t.name()),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_single_key_returns_its_value_for_every_head_of_a_padded_group() {
        // One cached key: p = 1, l = 1 + 1e-10 rounds to 1, out = V[0]; 20
        // heads per kv head fill one 16-row group and pad a second.
        let cfg = AttnConfig::new(20, 1, 32, DType::Bf16).unwrap();
        let (q, cache, meta) = batch(&cfg, LayoutKind::RocmPaged, 16, &[(0, 1)]);
        let v0: Vec<f32> = (0..32)
            .map(|dd| cache.v[cache.layout.v_offset(meta.kv_location(0, 0).0, 0, 0, dd)])
            .collect();
        for t in MatrixTarget::ALL {
            let out = run(&q, &cache, &meta, &cfg, Some(t), 0.0).unwrap();
            for h in 0..20 {
                assert_eq!(&out[h * 32..(h + 1) * 32], &v0[..], "{} head {h}", t.name());
            }
        }
    }

    #[test]
    fn rows_that_are_not_decode_rows_are_untouched_and_the_layout_changes_no_bit() {
        let cfg = AttnConfig::new(2, 1, 32, DType::F16).unwrap();
        let reqs = [(20, 1), (45, 17), (90, 1)];
        let (q, paged, meta) = batch(&cfg, LayoutKind::RocmPaged, 16, &reqs);
        let (_, mut nhd, _) = batch(&cfg, LayoutKind::Nhd, 16, &reqs);
        for blk in 0..paged.layout.num_blocks {
            for r in 0..16 {
                for dd in 0..32 {
                    nhd.k[nhd.layout.k_offset(blk, r, 0, dd)] =
                        paged.k[paged.layout.k_offset(blk, r, 0, dd)];
                    nhd.v[nhd.layout.v_offset(blk, r, 0, dd)] =
                        paged.v[paged.layout.v_offset(blk, r, 0, dd)];
                }
            }
        }
        let prefill = meta.query_range(1);
        for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
            let a = run(&q, &paged, &meta, &cfg, Some(t), -7.0).unwrap();
            for (i, row) in a.chunks_exact(64).enumerate() {
                let untouched = row.iter().all(|&x| x == -7.0);
                assert_eq!(untouched, prefill.contains(&i), "{} row {i}", t.name());
            }
            let b = run(&q, &nhd, &meta, &cfg, Some(t), -7.0).unwrap();
            assert_eq!(bits(&a), bits(&b), "{}", t.name());
        }
    }

    #[test]
    fn the_targets_differ_in_bits_but_each_is_deterministic() {
        let cfg = AttnConfig::new(8, 1, 128, DType::F16).unwrap();
        let (q, cache, meta) = batch(&cfg, LayoutKind::RocmPaged, 32, &[(1000, 1), (777, 1)]);
        let go = |t| bits(&run(&q, &cache, &meta, &cfg, Some(t), 0.0).unwrap());
        let a = go(MatrixTarget::Sm90);
        assert!(a == go(MatrixTarget::Sm90), "sm_90 is deterministic");
        let b = go(MatrixTarget::Gfx942);
        assert!(b == go(MatrixTarget::Gfx942), "gfx942 is deterministic");
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(
            differ > 0,
            "sm_90 truncates, gfx942 rounds to nearest: no element differs"
        );
    }

    #[test]
    fn rejects_what_the_matrix_tiles_cannot_take_naming_the_value() {
        let err = |cfg: &AttnConfig, bs: usize| {
            let (q, cache, meta) = batch(cfg, LayoutKind::RocmPaged, bs, &[(4, 1)]);
            run(&q, &cache, &meta, cfg, Some(MatrixTarget::Sm90), 0.0)
                .unwrap_err()
                .to_string()
        };
        let e = err(&AttnConfig::new(2, 1, 24, DType::Bf16).unwrap(), 16);
        assert!(e.contains("head_size") && e.contains("24"), "{e}");
        let e = err(&AttnConfig::new(2, 1, 32, DType::F32).unwrap(), 16);
        assert!(e.contains("float32") && e.contains("bf16 or f16"), "{e}");
        let e = err(
            &AttnConfigBuilder {
                kv_dtype: DType::F16,
                ..AttnConfig::builder(2, 1, 32, DType::Bf16)
            }
            .build()
            .unwrap(),
            16,
        );
        assert!(
            e.contains("KV cache dtype") && e.contains(DType::F16.name()),
            "{e}"
        );
        // 128-key tiles at head size 256: 128 x 264 x 2 bytes.
        let e = err(&AttnConfig::new(2, 1, 256, DType::Bf16).unwrap(), 128);
        assert!(e.contains("67584") && e.contains("block size 128"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]
        /// Heads are independent rows: a kv head's output does not depend on
        /// how many query heads share it (the padding of its tile), so the
        /// first kv head's heads equal the same heads of a wider group whose
        /// extra heads see other queries.
        #[test]
        fn a_heads_row_does_not_depend_on_the_other_heads_of_its_tile(ctx in 0usize..120, extra in 1usize..20, bs_i in 0usize..3) {
            let bs = [16usize, 8, 32][bs_i];
            let narrow = AttnConfig::new(2, 1, 32, DType::Bf16).unwrap();
            let wide = AttnConfig::new(2 + extra, 1, 32, DType::Bf16).unwrap();
            let (q1, c1, m1) = batch(&narrow, LayoutKind::RocmPaged, bs, &[(ctx, 1)]);
            let (q2, c2, m2) = batch(&wide, LayoutKind::RocmPaged, bs, &[(ctx, 1)]);
            // Same cache (one kv head, same generator); the narrow query's heads first.
            prop_assert_eq!(&c1.k, &c2.k);
            let mut q2 = q2;
            q2[..q1.len()].copy_from_slice(&q1);
            for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
                let a = run(&q1, &c1, &m1, &narrow, Some(t), 0.0).unwrap();
                let b = run(&q2, &c2, &m2, &wide, Some(t), 0.0).unwrap();
                prop_assert_eq!(bits(&a), bits(&b[..a.len()]));
            }
        }
    }
}
