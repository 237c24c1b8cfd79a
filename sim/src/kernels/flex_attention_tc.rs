//! FlexAttention on matrix cores: the tensor-core flavour of
//! [`super::flex_attention`] (PyTorch's compiled `flex_attention` as vLLM's
//! FLEX_ATTENTION backend drives it; Inductor's Triton template computes
//! Q·Kᵀ and P·V with `tl.dot`). The same call ([`FlexArgs`]: the whole NHD
//! cache as the KV axis, the batch as a `mask_mod`, the same block-sparse
//! [`BlockMask`] walked partial blocks first, then full ones, ascending
//! physical id each), with Q·Kᵀ and P·V computed by the target's matrix
//! instruction as [`crate::numerics::mma`] models it (`mma.sync m16n8k16`
//! on sm_90, MFMA 16x16x16 on CDNA). Each target's bits are those of
//! `kernels/flex_attention_tc.hip` run there (numerics.md §6).
//!
//! ## Work
//! A program is (sparse q block `qb` of [`SPARSE_Q_BLOCK_SIZE`] = 16 rows,
//! query head `h`): exactly one wave's 16 rows. Per row:
//! ```text
//! m = -inf; l = 0; acc[d] = 0
//! for kv block in kv_indices[qb] (partial), then full_kv_indices[qb] (full):
//!   for n0 = 0, BLOCK_N, .. < block_size: keys j < BLOCK_N at slot blk * B + n0 + j
//!     S[j] = c, where c = +0, then for dc = 0, 16, .., D - 16:
//!            c = MMA(q[dc..dc+16] . k_j[dc..dc+16] + c)             // chained along d
//!     s[j] = (full block or mask_mod(row, slot)) ? score(S[j]) : -inf
//!     m_new = max(m, max s); m_ref = m_new, or 0 if -inf; alpha = exp2c(m - m_ref)
//!     p[j] = exp2c(s[j] - m_ref)
//!     tile_sum: each of the row's 4 lane parts sums its keys ascending from 0,
//!               then (part0 + part2) + (part1 + part3)   (flash_varlen_tc::tile_sum)
//!     l = fma(l, alpha, tile_sum); m = m_new
//!     acc[d] = acc[d] * alpha
//!     for kc = 0, 16, .., BLOCK_N - 16:                                // chained along keys
//!       acc[d] = MMA(round_q(p[kc..kc+16]) . v[kc..kc+16][d] + acc[d])
//! out = l == 0 ? 0 : round_q(acc / l)   (a NaN the canonical one)
//! ```
//! Every slot of a tile enters P·V, masked ones with p = 0 and their cache
//! V. BLOCK_N is the fma family's ([`flex_block_n`]: 32 for bf16/f16 on
//! ROCm, lowered until it divides the block size), a multiple of 16.
//! Differences from the fma family: bf16 or f16 only (the cache is in the
//! query dtype, as [`FlexArgs`] requires), head sizes multiples of 16 up to
//! [`MAX_HEAD_SIZE`].

use super::flash_varlen_tc::{tile_sum, MMA_K};
use super::flex_attention::{flex_block_n, BlockMask, FlexArgs, FlexMask, SPARSE_Q_BLOCK_SIZE};
use super::softmax::ScoreParams;
use super::unified_attention::nan_fresh;
use crate::config::AttnConfig;
use crate::numerics::exp2c;
use crate::numerics::mma::{InFormat, MatrixTarget};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use rayon::prelude::*;

/// Largest head size.
pub const MAX_HEAD_SIZE: usize = 256;

/// What the matrix tiles take: bf16 or f16, head size a multiple of 16 up
/// to [`MAX_HEAD_SIZE`].
pub fn validate_config(cfg: &AttnConfig) -> Result<InFormat> {
    let fmt = match cfg.dtype() {
        DType::Bf16 => InFormat::Bf16,
        DType::F16 => InFormat::F16,
        other => {
            return Err(Error::invalid(
                "flex_attention_tc dtype",
                other.name(),
                "bf16 or f16",
            ))
        }
    };
    let d = cfg.head_size();
    if d == 0 || !d.is_multiple_of(MMA_K) || d > MAX_HEAD_SIZE {
        return Err(Error::invalid(
            "flex_attention_tc head_size",
            d,
            format!("a multiple of {MMA_K} from {MMA_K} to {MAX_HEAD_SIZE} (the matrix tiles)"),
        ));
    }
    Ok(fmt)
}

/// FlexAttention on `target`'s matrix cores over validated arguments:
/// `[T, Hq, D]` in `cfg.dtype`.
pub fn flex_tc(args: &FlexArgs, target: MatrixTarget) -> Result<Vec<f32>> {
    let (query, cache, meta, cfg) = (args.query(), args.cache(), args.meta(), args.cfg());
    let fmt = validate_config(cfg)?;
    let model = target.model(fmt);
    let (hq, d, qpk) = (cfg.num_heads(), cfg.head_size(), cfg.queries_per_kv());
    let (bs, bn) = (
        meta.block_size(),
        flex_block_n(cfg.dtype(), meta.block_size()),
    );
    let mask = FlexMask::new(meta, cfg.sliding_window());
    let bm = BlockMask::build(&mask);
    let score = ScoreParams::new(cfg.scale(), None);
    let layout = &cache.layout;
    let t_n = meta.num_actual_tokens();
    let programs: Vec<(usize, usize)> = (0..bm.kv_indices.len())
        .flat_map(|qb| (0..hq).map(move |h| (qb, h)))
        .collect();
    let results: Vec<(usize, usize, Vec<f32>)> = programs
        .par_iter()
        .map(|&(qb, h)| {
            let kvh = h / qpk;
            let rows = qb * SPARSE_Q_BLOCK_SIZE..((qb + 1) * SPARSE_Q_BLOCK_SIZE).min(t_n);
            let q: Vec<Vec<u16>> = rows
                .clone()
                .map(|r| {
                    query[(r * hq + h) * d..][..d]
                        .iter()
                        .map(|&x| fmt.from_f32(x))
                        .collect()
                })
                .collect();
            let mut st: Vec<(f32, f32, Vec<f32>)> = rows
                .clone()
                .map(|_| (f32::NEG_INFINITY, 0.0, vec![0.0; d]))
                .collect();
            let (mut kt, mut vt) = (vec![0u16; bn * d], vec![0u16; d * bn]);
            let (mut s, mut pr) = (vec![0.0f32; bn], vec![0u16; bn]);
            let lists = [(&bm.kv_indices[qb], true), (&bm.full_kv_indices[qb], false)];
            for (list, partial) in lists {
                for &blk in list {
                    for n0 in (0..bs).step_by(bn) {
                        for j in 0..bn {
                            for dd in 0..d {
                                kt[j * d + dd] =
                                    fmt.from_f32(cache.k[layout.k_offset(blk, n0 + j, kvh, dd)]);
                                vt[dd * bn + j] =
                                    fmt.from_f32(cache.v[layout.v_offset(blk, n0 + j, kvh, dd)]);
                            }
                        }
                        for (r, (qr, (m, l, acc))) in rows.clone().zip(q.iter().zip(st.iter_mut()))
                        {
                            for (j, sj) in s.iter_mut().enumerate() {
                                *sj = if !partial || mask.keep(r, blk * bs + n0 + j) {
                                    let kr = &kt[j * d..(j + 1) * d];
                                    let mut c = 0.0f32;
                                    for dc in (0..d).step_by(MMA_K) {
                                        c = model.dot(
                                            fmt,
                                            &qr[dc..dc + MMA_K],
                                            &kr[dc..dc + MMA_K],
                                            c,
                                        );
                                    }
                                    score.score(c, 0.0)
                                } else {
                                    f32::NEG_INFINITY
                                };
                            }
                            let tile_max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                            let m_new = m.max(tile_max);
                            let m_ref = if m_new > f32::NEG_INFINITY {
                                m_new
                            } else {
                                0.0
                            };
                            let alpha = exp2c(*m - m_ref);
                            for sj in s.iter_mut() {
                                *sj = exp2c(*sj - m_ref);
                            }
                            *l = l.mul_add(alpha, tile_sum(target, &s));
                            *m = m_new;
                            for (b, &x) in pr.iter_mut().zip(&s) {
                                *b = fmt.from_f32(x);
                            }
                            for (c, a) in acc.iter_mut().enumerate() {
                                let mut z = *a * alpha;
                                for kc in (0..bn).step_by(MMA_K) {
                                    z = model.dot(
                                        fmt,
                                        &pr[kc..kc + MMA_K],
                                        &vt[c * bn + kc..c * bn + kc + MMA_K],
                                        z,
                                    );
                                }
                                *a = z;
                            }
                        }
                    }
                }
            }
            let mut data = Vec::with_capacity(rows.len() * d);
            for (_, l, acc) in &st {
                data.extend(acc.iter().map(|&a| {
                    if *l == 0.0 {
                        0.0
                    } else {
                        cfg.dtype().round(nan_fresh(a / l))
                    }
                }));
            }
            (rows.start, h, data)
        })
        .collect();
    let mut out = vec![0.0f32; t_n * hq * d];
    for (first, h, data) in results {
        for (i, row) in data.chunks_exact(d).enumerate() {
            out[((first + i) * hq + h) * d..][..d].copy_from_slice(row);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::KvCache;
    use crate::kernels::flex_attention::flex;
    use attnlab_shared::layout::LayoutKind;
    use attnlab_shared::metadata::AttentionMetadata;

    /// Requests `(ctx, q)` in reversed blocks of an NHD cache.
    fn batch(
        cfg: &AttnConfig,
        bs: usize,
        reqs: &[(usize, usize)],
    ) -> (Vec<f32>, KvCache, AttentionMetadata) {
        crate::kernels::test_batch::reversed_blocks(
            cfg,
            LayoutKind::Nhd,
            bs,
            reqs,
            true,
            cfg.dtype(),
        )
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn agrees_with_the_fma_kernel_within_rounding_and_each_target_is_deterministic() {
        let cfg = crate::config::AttnConfigBuilder {
            sliding_window: Some(30),
            ..AttnConfig::builder(4, 2, 64, DType::Bf16)
        }
        .build()
        .unwrap();
        let (q, cache, meta) = batch(&cfg, 16, &[(40, 1), (20, 25), (0, 18)]);
        let args = FlexArgs::new(&q, &cache, &meta, &cfg).unwrap();
        let fma = flex(&args).unwrap();
        for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
            let tc = flex_tc(&args, t).unwrap();
            crate::kernels::test_batch::assert_within_rounding(&tc, &fma, t.name());
            assert_eq!(bits(&tc), bits(&flex_tc(&args, t).unwrap()), "{}", t.name());
        }
    }

    #[test]
    fn a_single_visible_key_returns_its_value_on_every_target() {
        let cfg = AttnConfig::new(2, 1, 16, DType::F16).unwrap();
        let (q, cache, meta) = batch(&cfg, 16, &[(0, 1)]);
        let args = FlexArgs::new(&q, &cache, &meta, &cfg).unwrap();
        let v0: Vec<f32> = (0..16)
            .map(|dd| cache.v[cache.layout.v_offset(meta.kv_location(0, 0).0, 0, 0, dd)])
            .collect();
        for t in MatrixTarget::ALL {
            let out = flex_tc(&args, t).unwrap();
            assert_eq!(&out[..16], &v0[..], "{}", t.name());
            assert_eq!(&out[16..], &v0[..], "{}", t.name());
        }
    }

    #[test]
    fn rejects_what_the_matrix_tiles_cannot_take_naming_the_value() {
        let e = validate_config(&AttnConfig::new(2, 1, 24, DType::Bf16).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("head_size") && e.contains("24"), "{e}");
        let e = validate_config(&AttnConfig::new(2, 1, 32, DType::F32).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("float32") && e.contains("bf16 or f16"), "{e}");
    }
}
