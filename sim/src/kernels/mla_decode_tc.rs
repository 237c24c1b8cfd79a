//! Tensor-core absorbed MLA decode (`kernels/mla_decode_tc.hip`): vLLM's
//! Triton `decode_attention_fwd(..., is_mla=True)` (TRITON_MLA's decode,
//! `_fwd_grouped_kernel_stage1` + `_fwd_kernel_stage2`) with Q·Kᵀ and P·V
//! computed by the target's matrix instruction as [`crate::numerics::mma`]
//! models it (numerics.md §6; docs/src/matrix-cores.md, "mla_decode_tc"):
//! NVIDIA `mma.sync m16n8k16` at wave 32 (`sm_90`), CDNA3
//! `v_mfma_f32_16x16x16` at wave 64 (`gfx942`). Everything else (the split
//! bounds, the score, the online softmax, the stage-2 reduce) is the fma
//! family's ([`super::mla_decode`]).
//!
//! Each query row carries `q = [q_latent (Lkv) | q_pe (R)]` per head; a key
//! is the whole `W = Lkv + R` cache entry, its value the first Lkv channels
//! (V *is* the latent, vLLM's `v = tl.trans(k)`).
//!
//! ## Stage 1: one program per (row, head block of [`ROWS`], split)
//! ```text
//! heads    = hb*16 .. min(hb*16 + 16, H)        (the instruction's 16 rows; the rest zero)
//! (start, end) = KvSplits::bounds(split_len, split), end = min(end, kv_len); empty: nothing
//! for t0 in start .. end step 16 (keys k = 0..15 of the step, ascending):
//!   K[k][c]  = load(cache[slot(t0 + k)][c]) in the q dtype, 0 for t0 + k >= end
//!              (fp8: round_q(x * kv_scale); 16-bit: as stored)
//!   dot[h][k]= C chained over the W/16 chunks c = 0 .. W/16 ascending, from C = +0:
//!              C = MMA(q[h][16c .. 16c+16], K[k][16c .. 16c+16], C)   k-slot i = dim 16c + i
//!              (chunks 0 .. Lkv/16 are the latent, then R/16 rope chunks: vLLM's
//!              two tl.dots per tile, `qk = dot(q, k); qk += dot(qpe, kpe)`, the
//!              second taking the first's result as its accumulator)
//!   s[h][k]  = dot * (scale * log2e)   (score, no soft-cap); -inf for t0 + k >= end
//!   m_new    = max(m, max_k s);  m_ref = m_new > -inf ? m_new : 0;  alpha = exp2c(m - m_ref)
//!   p[k]     = exp2c(s[k] - m_ref);  tile_sum = 0 + p[0] + p[1] + ... + p[15]  (ascending)
//!   l        = fma(l, alpha, tile_sum)
//!   acc[h][d]= MMA(round_q(p[0..16]), K[0..16][d], acc[h][d] * alpha)   d < Lkv, keys as k in order
//!   m        = m_new
//! Att_Out[row, h, split, :Lkv] = acc / l (0 if l = 0);  Att_Out[.., Lkv] = m + log2c(l) (-inf if l = 0)
//! ```
//! P is rounded to the query dtype before P·V (vLLM's `p.to(v.dtype)`, V
//! being K converted to the query dtype) and acc is rescaled by alpha
//! before it enters the instruction as C (vLLM's `acc *= re_scale; acc +=
//! tl.dot(p, v)`). Padding keys (past the split) have K = V = 0 and p = 0,
//! as vLLM's masked loads give them.
//!
//! ## Stage 2: the fma family's reduce ([`super::mla_decode::stage2`])
//! vLLM's `_fwd_kernel_stage2` has no matrix product, so it is the same
//! arithmetic in both flavours: per (row, head), the non-empty splits in
//! ascending order, each one "key" with score `Att_Out[.., Lkv]` and value
//! `Att_Out[.., :Lkv]`: `m' = max(m, lse_s); alpha = exp2c(m - m');
//! w = exp2c(lse_s - m'); acc = fma(w, out_s, acc * alpha); l = fma(l,
//! alpha, w)`, then `o = round_out(acc / l)`, `lse = round_lse((m +
//! log2c(l)) * ln 2)`.
//!
//! ## MMA
//! On sm_90 one `mma.sync m16n8k16` is one fused block of 16 products (25
//! bits, C in the alignment, RZ): the order of a chunk's dims does not
//! matter. On gfx942 `v_mfma_f32_16x16x16{bf16_1k,f16}` is two blocks of 8
//! (k 0..7, then 8..15; C late, RNE): the k slots hold dims `16c + i` in
//! order, in both operands on both targets.

use super::mla_cache::load_latent;
use super::mla_decode::{stage2, KvRow, KvSplits, MlaDecodeArgs, MlaDecodeOutput};
use super::softmax::ScoreParams;
use crate::numerics::mma::{InFormat, MatrixTarget, Model};
use crate::numerics::{exp2c, log2c};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use rayon::prelude::*;

/// Keys per stage-1 step: vLLM's `BLOCK_N` on ROCm, the P·V instruction's k.
pub const STEP: usize = 16;
/// Heads per stage-1 program: vLLM's `BLOCK_H`, the instruction's 16 rows.
pub const ROWS: usize = 16;
/// Dims per Q·Kᵀ instruction (its k).
pub const CHUNK: usize = 16;

/// One tensor-core MLA decode launch, validated once: an [`MlaDecodeArgs`]
/// (shapes, splits, pages inside the cache: checked where it was built)
/// that the kernel is built for: a bf16 or f16 query, a latent cache in
/// the query's dtype or fp8, a latent and a rope width that are multiples
/// of [`CHUNK`], no zoo fault, and a target with a model (sm_90 or gfx942).
/// The emulator ([`decode_tc`]), both kernel executors and the GPU
/// launcher take it; everything is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct MlaDecodeTcArgs<'a> {
    args: MlaDecodeArgs<'a>,
    target: MatrixTarget,
    fmt: InFormat,
}

impl<'a> MlaDecodeTcArgs<'a> {
    /// Checks what the kernel takes beyond [`MlaDecodeArgs`]; the error
    /// names the refused value and what the kernel accepts.
    pub fn new(args: MlaDecodeArgs<'a>, target: MatrixTarget) -> Result<Self> {
        let (p, layout) = (args.params(), args.cache().layout);
        let fmt = match p.q_dtype {
            DType::Bf16 => InFormat::Bf16,
            DType::F16 => InFormat::F16,
            other => {
                return Err(Error::invalid(
                    "mla_decode_tc query dtype",
                    other.name(),
                    "bf16 or f16",
                ))
            }
        };
        if layout.dtype != p.q_dtype && !layout.dtype.is_fp8() {
            return Err(Error::invalid(
                "mla_decode_tc latent cache dtype",
                layout.dtype.name(),
                format!("the query dtype {} or fp8", p.q_dtype.name()),
            ));
        }
        for (what, v) in [
            ("kv_lora_rank", layout.kv_lora_rank),
            ("rope dim", layout.rope_dim),
        ] {
            if !v.is_multiple_of(CHUNK) {
                return Err(Error::invalid(
                    format!("mla_decode_tc {what}"),
                    v,
                    format!("a multiple of {CHUNK} (one instruction's k)"),
                ));
            }
        }
        if !matches!(target, MatrixTarget::Sm90 | MatrixTarget::Gfx942) {
            return Err(Error::invalid(
                "mla_decode_tc target",
                target.name(),
                "sm_90 or gfx942",
            ));
        }
        if !p.faults.is_empty() {
            return Err(Error::invalid(
                "mla_decode_tc faults",
                format!("{:?}", p.faults),
                "none (the zoo's faults are re-injected into the fma kernels only)",
            ));
        }
        Ok(MlaDecodeTcArgs { args, target, fmt })
    }
    /// The split-KV launch (queries, rows, cache, splits, parameters).
    pub fn args(&self) -> &MlaDecodeArgs<'a> {
        &self.args
    }
    /// The matrix-core model the kernel runs.
    pub fn target(&self) -> MatrixTarget {
        self.target
    }
    /// The instruction's input format (the query dtype).
    pub fn format(&self) -> InFormat {
        self.fmt
    }
}

/// The visible keys `[start, end)` of `split` for `row` (the fma family's
/// bounds, clipped to the row's visible keys).
pub fn split_range(row: &KvRow, splits: KvSplits, split: usize) -> (usize, usize) {
    let (start, end) = splits.bounds(row.split_len, split);
    (start, end.min(row.kv_len))
}

/// Stage 1 + stage 2 on the matrix cores of `args.target()`: `o [rows, H,
/// Lkv]` (exact in `out_dtype`) and natural-log `lse [rows, H]`.
pub fn decode_tc(args: &MlaDecodeTcArgs) -> Result<MlaDecodeOutput> {
    let a = args.args();
    let att = stage1_tc(args);
    stage2(
        &att,
        a.rows(),
        a.cache().layout.kv_lora_rank,
        a.splits(),
        a.params(),
    )
}

/// Stage 1: `Att_Out [rows, H, num_kv_splits, Lkv + 1]` (f32, base-2 LSE in
/// the last channel; entries of empty splits stay 0 and are never read).
pub fn stage1_tc(args: &MlaDecodeTcArgs) -> Vec<f32> {
    let a = args.args();
    let (rows, p) = (a.rows(), a.params());
    let (lkv, h) = (a.cache().layout.kv_lora_rank, p.num_heads);
    let s = a.splits().num_kv_splits();
    let hblocks = h.div_ceil(ROWS);
    let programs: Vec<(usize, usize, usize)> = (0..rows.len())
        .flat_map(|b| (0..hblocks).flat_map(move |hb| (0..s).map(move |sp| (b, hb, sp))))
        .collect();
    let partials: Vec<Vec<f32>> = programs
        .par_iter()
        .map(|&(b, hb, sp)| program(args, b, hb, sp))
        .collect();
    let mut att = vec![0.0f32; rows.len() * h * s * (lkv + 1)];
    for (&(b, hb, sp), part) in programs.iter().zip(&partials) {
        for (i, chunk) in part.chunks_exact(lkv + 1).enumerate() {
            let at = ((b * h + hb * ROWS + i) * s + sp) * (lkv + 1);
            att[at..at + lkv + 1].copy_from_slice(chunk);
        }
    }
    att
}

/// One stage-1 program: `[heads of the block, Lkv + 1]`, or nothing for an
/// empty split.
fn program(args: &MlaDecodeTcArgs, b: usize, hb: usize, sp: usize) -> Vec<f32> {
    let a = args.args();
    let (row, cache, p) = (&a.rows()[b], a.cache(), a.params());
    let (start, end) = split_range(row, a.splits(), sp);
    if end <= start {
        return Vec::new();
    }
    let (fmt, model): (InFormat, Model) = (args.fmt, args.target.model(args.fmt));
    let (lkv, w) = (cache.layout.kv_lora_rank, cache.layout.width());
    let heads = hb * ROWS..((hb + 1) * ROWS).min(p.num_heads);
    let score = ScoreParams::new(p.scale, None);
    let q: Vec<Vec<u16>> = heads
        .clone()
        .map(|h| {
            let base = (b * p.num_heads + h) * w;
            a.q()[base..base + w]
                .iter()
                .map(|&x| fmt.from_f32(x))
                .collect()
        })
        .collect();
    let nh = q.len();
    let (mut m, mut l) = (vec![f32::NEG_INFINITY; nh], vec![0.0f32; nh]);
    let mut acc = vec![vec![0.0f32; lkv]; nh];
    // K[k][c] (the step's keys) and its latent columns V[d][k].
    let mut kb = vec![vec![0u16; w]; STEP];
    let mut vb = vec![[0u16; STEP]; lkv];
    let mut s = [0.0f32; STEP];
    let mut pb = [0u16; STEP];
    for t0 in (start..end).step_by(STEP) {
        for (k, key) in kb.iter_mut().enumerate() {
            if t0 + k < end {
                let t = t0 + k;
                let slot =
                    row.pages[t / row.page_size] as usize * row.page_size + t % row.page_size;
                for (dst, &x) in key.iter_mut().zip(cache.entry(slot)) {
                    *dst = fmt.from_f32(load_latent(x, cache.layout.dtype, p.kv_scale, p.q_dtype));
                }
            } else {
                key.fill(0);
            }
            for (d, col) in vb.iter_mut().enumerate() {
                col[k] = key[d];
            }
        }
        for (i, qh) in q.iter().enumerate() {
            for (k, sk) in s.iter_mut().enumerate() {
                *sk = if t0 + k < end {
                    let dot = qh
                        .chunks_exact(CHUNK)
                        .zip(kb[k].chunks_exact(CHUNK))
                        .fold(0.0f32, |c, (qa, ka)| model.dot(fmt, qa, ka, c));
                    score.score(dot, 0.0)
                } else {
                    f32::NEG_INFINITY
                };
            }
            let tile_max = s.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
            let m_new = m[i].max(tile_max);
            let m_ref = if m_new > f32::NEG_INFINITY {
                m_new
            } else {
                0.0
            };
            let alpha = exp2c(m[i] - m_ref);
            let mut tile_sum = 0.0f32;
            for (k, b) in pb.iter_mut().enumerate() {
                let pk = exp2c(s[k] - m_ref);
                tile_sum += pk;
                *b = fmt.from_f32(p.q_dtype.round(pk));
            }
            l[i] = l[i].mul_add(alpha, tile_sum);
            for (x, col) in acc[i].iter_mut().zip(&vb) {
                *x = model.dot(fmt, &pb, col, *x * alpha);
            }
            m[i] = m_new;
        }
    }
    let mut out = Vec::with_capacity(nh * (lkv + 1));
    for i in 0..nh {
        if l[i] == 0.0 {
            out.extend(std::iter::repeat_n(0.0, lkv));
            out.push(f32::NEG_INFINITY);
        } else {
            out.extend(acc[i].iter().map(|x| x / l[i]));
            out.push(m[i] + log2c(l[i]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::mla_cache::LatentCache;
    use crate::kernels::mla_decode::{decode, MlaDecodeParams};
    use attnlab_shared::fault::FaultSet;
    use attnlab_shared::layout::mla::MlaLayout;

    fn params(h: usize, dt: DType) -> MlaDecodeParams {
        MlaDecodeParams {
            num_heads: h,
            scale: 0.125,
            q_dtype: dt,
            kv_scale: 1.0,
            out_dtype: dt,
            lse_dtype: DType::F32,
            faults: FaultSet::NONE,
        }
    }

    /// A cache of `blocks` x 16 slots (latent 32 + rope 16) with values
    /// derived from the element index, exact in `dt`.
    fn cache(blocks: usize, dt: DType) -> LatentCache {
        let l = MlaLayout::new(blocks, 16, 32, 16, dt).unwrap();
        let data = (0..l.numel())
            .map(|i| dt.round(((i * 37 % 23) as f32 - 11.0) / 16.0))
            .collect();
        LatentCache::from_tensor(l, data).unwrap()
    }

    fn query(rows: usize, h: usize, w: usize, dt: DType) -> Vec<f32> {
        (0..rows * h * w)
            .map(|i| dt.round(((i * 13 % 17) as f32 - 8.0) / 8.0))
            .collect()
    }

    #[test]
    fn refuses_what_the_kernel_is_not_built_for_naming_the_value() {
        let c = cache(2, DType::Bf16);
        let pages = [1, 0];
        let rows = [KvRow {
            pages: &pages,
            page_size: 16,
            kv_len: 20,
            split_len: 20,
        }];
        let q = query(1, 2, 48, DType::F32);
        let p = params(2, DType::F32);
        let s = KvSplits::Even { num_kv_splits: 2 };
        let a = MlaDecodeArgs::new(&q, &rows, &c, s, &p).unwrap();
        let e = MlaDecodeTcArgs::new(a, MatrixTarget::Sm90)
            .unwrap_err()
            .to_string();
        assert!(e.contains("float32") && e.contains("bf16 or f16"), "{e}");
        let p = params(2, DType::F16);
        let a = MlaDecodeArgs::new(&q, &rows, &c, s, &p).unwrap();
        let e = MlaDecodeTcArgs::new(a, MatrixTarget::Sm90)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("latent cache dtype bfloat16") && e.contains("float16 or fp8"),
            "{e}"
        );
        let p = params(2, DType::Bf16);
        let a = MlaDecodeArgs::new(&q, &rows, &c, s, &p).unwrap();
        let e = MlaDecodeTcArgs::new(a, MatrixTarget::Gfx90a)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gfx90a") && e.contains("sm_90 or gfx942"), "{e}");
        let odd = LatentCache::from_tensor(
            MlaLayout::new(2, 16, 24, 8, DType::Bf16).unwrap(),
            vec![0.0; 2 * 16 * 32],
        )
        .unwrap();
        let q = query(1, 2, 32, DType::Bf16);
        let a = MlaDecodeArgs::new(&q, &rows, &odd, s, &p).unwrap();
        let e = MlaDecodeTcArgs::new(a, MatrixTarget::Sm90)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kv_lora_rank 24") && e.contains("multiple of 16"),
            "{e}"
        );
    }

    /// Within a few ulps of the fma family: the same softmax and reduce,
    /// only the dot products' rounding differs.
    #[test]
    fn agrees_with_the_fma_family_within_rounding_on_both_targets() {
        let dt = DType::Bf16;
        let c = cache(4, dt);
        let (t1, t2) = ([3, 1, 0, 2], [2, 0]);
        let rows = [
            KvRow {
                pages: &t1,
                page_size: 16,
                kv_len: 57,
                split_len: 57,
            },
            KvRow {
                pages: &t2,
                page_size: 16,
                kv_len: 17,
                split_len: 17,
            },
        ];
        let h = 20;
        let q = query(2, h, 48, dt);
        let p = MlaDecodeParams {
            out_dtype: DType::F32,
            ..params(h, dt)
        };
        let s = KvSplits::Even { num_kv_splits: 3 };
        let a = MlaDecodeArgs::new(&q, &rows, &c, s, &p).unwrap();
        let fma = decode(&a).unwrap();
        for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
            let tc = decode_tc(&MlaDecodeTcArgs::new(a, t).unwrap()).unwrap();
            for (i, (x, y)) in tc.out.iter().zip(&fma.out).enumerate() {
                assert!(
                    (x - y).abs() <= 0.02 + 0.02 * y.abs(),
                    "{t:?} out {i}: {x} vs {y}"
                );
            }
            for (x, y) in tc.lse.iter().zip(&fma.lse) {
                assert!(
                    (x - y).abs() <= 1e-3 * (1.0 + y.abs()),
                    "{t:?} lse {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn a_single_key_returns_its_latent_exactly_and_its_score_as_lse() {
        let dt = DType::F16;
        let c = cache(2, dt);
        let pages = [1];
        let rows = [KvRow {
            pages: &pages,
            page_size: 16,
            kv_len: 1,
            split_len: 1,
        }];
        let q = query(1, 1, 48, dt);
        let p = MlaDecodeParams {
            lse_dtype: DType::F32,
            ..params(1, dt)
        };
        let s = KvSplits::Even { num_kv_splits: 4 };
        let a = MlaDecodeArgs::new(&q, &rows, &c, s, &p).unwrap();
        for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
            let o = decode_tc(&MlaDecodeTcArgs::new(a, t).unwrap()).unwrap();
            // p = 1 for the one key, so P·V is 1 * V exactly.
            assert_eq!(&o.out[..], &c.entry(16)[..32], "{t:?}");
            let exact: f64 = q
                .iter()
                .zip(c.entry(16))
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            approx::assert_abs_diff_eq!(o.lse[0] as f64, exact * 0.125, epsilon = 1e-4);
        }
    }

    #[test]
    fn a_row_with_no_key_is_zero_with_minus_inf_lse() {
        let dt = DType::Bf16;
        let c = cache(1, dt);
        let rows = [KvRow {
            pages: &[],
            page_size: 16,
            kv_len: 0,
            split_len: 0,
        }];
        let q = query(1, 3, 48, dt);
        let p = params(3, dt);
        let a = MlaDecodeArgs::new(&q, &rows, &c, KvSplits::Even { num_kv_splits: 2 }, &p).unwrap();
        let o = decode_tc(&MlaDecodeTcArgs::new(a, MatrixTarget::Gfx942).unwrap()).unwrap();
        assert!(o.out.iter().all(|&x| x == 0.0));
        assert!(o.lse.iter().all(|&x| x == f32::NEG_INFINITY));
    }

    /// Splits past a row's keys are empty: neither stage 1 nor the reduce
    /// sees them, so one split and four (three of them empty) give the
    /// same bits.
    #[test]
    fn empty_trailing_splits_change_no_bit() {
        let dt = DType::Bf16;
        let c = cache(2, dt);
        let pages = [0, 1];
        let rows = [KvRow {
            pages: &pages,
            page_size: 16,
            kv_len: 5,
            split_len: 5,
        }];
        let q = query(1, 2, 48, dt);
        let p = params(2, dt);
        let run = |n: usize| {
            let s = KvSplits::Granular {
                num_kv_splits: n,
                granularity: 16,
            };
            let a = MlaDecodeArgs::new(&q, &rows, &c, s, &p).unwrap();
            decode_tc(&MlaDecodeTcArgs::new(a, MatrixTarget::Sm90).unwrap()).unwrap()
        };
        assert_eq!(run(1), run(4));
    }
}
