//! Varlen causal prefill on matrix cores: the tensor-core flavour of
//! [`super::flash_varlen`] (same inputs, masking, sinks, ALiBi and soft-cap,
//! same `(out, lse)`), with Q·Kᵀ and P·V computed by the target's matrix
//! instruction as [`crate::numerics::mma`] models it: `mma.sync m16n8k16` on
//! NVIDIA (sm_90, 32-lane warps), `v_mfma_f32_16x16x16{bf16_1k,f16}` on CDNA
//! (64-lane waves). What it computes is therefore *per target*
//! (numerics.md §6): the same inputs give different bits on an H100 and on
//! an MI300, and each is bit-exact with its own GPU run of
//! `kernels/flash_varlen_tc.hip`.
//!
//! The loop nest, per wave: a wave owns [`WAVE_ROWS`] = 16 consecutive query
//! rows of one sequence and one head (rows `16w .. 16w + 16` of the
//! sequence; the GPU's workgroup of several waves changes nothing, each wave
//! keeps its own tile range) and walks key tiles of `block_n` keys:
//! ```text
//! offset = sk - sq; p_i = i + offset          // FA's bottom-right alignment
//! m = -inf (sink * LOG2E), l = 0 (1), acc[dv] = 0
//! for n in n_min..n_max:                      // the tiles any of the 16 rows sees
//!   j0 = n * block_n; keys j0 + j, j < block_n; K, V rows past sk are 0
//!   S[i][j] = c, where c = 0, then for dc = 0, 16, .., D - 16:
//!             c = MMA(q_i[dc..dc+16] . k_j[dc..dc+16] + c)       // chained along d
//!   s = score(S, -slope |p_i - t|) if visible(t = j0 + j, p_i) and j0 + j < sk, else -inf
//!   tile_max = max_j s; m_new = max(m, tile_max); m_ref = m_new, or 0 if -inf
//!   alpha = exp2c(m - m_ref); p_j = exp2c(s_j - m_ref)
//!   tile_sum: lane part q (4 lanes per row) sums its own keys in ascending j
//!             from 0, then (part_0 + part_2) + (part_1 + part_3)
//!   l = fma(l, alpha, tile_sum); m = m_new
//!   acc[dv] = acc[dv] * alpha
//!   for kc = 0, 16, .., block_n - 16:                           // chained along keys
//!     acc[dv] = MMA(round(p[kc..kc+16]) . v[kc..kc+16][dv] + acc[dv])
//! out = round(acc / l) (0 if l == 0); lse = (m + log2c(l)) * LN2 (-inf if l == 0)
//! ```
//! `MMA(a . b + c)` is one element of one instruction: the target's
//! [`Model::dot`] over 16 products (one block on sm_90; two blocks of 8 in
//! k order on gfx942; pairwise groups on gfx90a). P is rounded to the input
//! dtype before P·V (vLLM's Triton kernels do `p.to(v.dtype)`), and every
//! key of the tile takes part (masked keys and keys past `sk` with p = 0).
//!
//! Which lane holds which key follows the instruction's accumulator layout,
//! and so does the order of the row sum: on sm_90 a row's keys of an 8-key
//! column tile sit in 4 lanes of a quad (`q = (j mod 8) / 2`, two keys
//! each); on CDNA the wave computes Sᵀ = K·Qᵀ so that P stays in registers
//! as Pᵀ, and a query's keys of a 16-key tile sit in 4 lanes 16 apart (`q =
//! (j mod 16) / 4`, four keys each). The lanes combine their parts by an
//! xor butterfly over those 4 lanes (numerics.md §4), which is the sum
//! written above on both targets.
//!
//! Tiles: the 16 rows of a wave see keys up to `p_{last row}` (causal) and
//! from `p_{first row} - W + 1` (window); `n_min`/`n_max` are those keys'
//! tiles, exactly as [`super::flash_varlen`] computes them for its block.

use super::flash_varlen::{seq_len, VarlenArgs, VarlenParams, VarlenParamsBuilder};
use super::softmax::{visible, OutLse};
use crate::numerics::mma::{InFormat, MatrixTarget, Model};
use crate::numerics::{exp2c, log2c, DType, LN2, LOG2E};
use attnlab_shared::error::{Error, Result};
use rayon::prelude::*;

/// Query rows per wave (the M of the instruction tile).
pub const WAVE_ROWS: usize = 16;
/// Keys or head dimensions per instruction (the K of `m16n8k16` and of
/// MFMA 16x16x16).
pub const MMA_K: usize = 16;
/// Largest Q/K and V head size the kernel takes (its registers and staging).
pub const MAX_HEAD_SIZE: usize = 256;
/// Largest key tile.
pub const MAX_BLOCK_N: usize = 128;
/// The key tile of the bench and of the backends: 64 keys.
pub const DEFAULT_BLOCK_N: usize = 64;

/// The varlen parameters plus the matrix-core target whose instruction the
/// kernel runs.
#[derive(Debug, Clone, PartialEq)]
pub struct VarlenTcParams<'a> {
    pub varlen: VarlenParams<'a>,
    pub target: MatrixTarget,
}

impl<'a> VarlenTcParams<'a> {
    /// Causal, no window/ALiBi/sinks/soft-cap, [`DEFAULT_BLOCK_N`]-key tiles.
    pub fn new(
        num_heads: usize,
        num_kv_heads: usize,
        head_size: usize,
        dtype: DType,
        scale: f32,
        target: MatrixTarget,
    ) -> Result<Self> {
        let varlen = VarlenParamsBuilder {
            block_n: DEFAULT_BLOCK_N,
            ..VarlenParams::builder(num_heads, num_kv_heads, head_size, dtype, scale)
        }
        .build()?;
        Ok(VarlenTcParams { varlen, target })
    }

    /// The instruction's input format for the dtype (bf16 or f16 only).
    pub fn format(&self) -> Result<InFormat> {
        match self.varlen.dtype() {
            DType::Bf16 => Ok(InFormat::Bf16),
            DType::F16 => Ok(InFormat::F16),
            other => Err(Error::invalid(
                "dtype of the tensor-core varlen kernel",
                other,
                "bf16, f16",
            )),
        }
    }

    /// On top of what [`VarlenParams`] keeps, the shapes the matrix tiles
    /// take: head sizes multiples of 16 up to [`MAX_HEAD_SIZE`], `block_n`
    /// a multiple of 16 up to [`MAX_BLOCK_N`].
    pub fn validate(&self) -> Result<()> {
        self.format()?;
        for (what, v, max) in [
            ("head_size", self.varlen.head_size(), MAX_HEAD_SIZE),
            ("head_size_v", self.varlen.head_size_v(), MAX_HEAD_SIZE),
            ("block_n", self.varlen.block_n(), MAX_BLOCK_N),
        ] {
            if !v.is_multiple_of(MMA_K) || v > max {
                return Err(Error::invalid(
                    what,
                    v,
                    format!("a multiple of {MMA_K} from {MMA_K} to {max} (the matrix tiles)"),
                ));
            }
        }
        Ok(())
    }
}

/// One tensor-core varlen call, validated once: [`VarlenTcParams::validate`]
/// and the tensors and `cu_seqlens` ([`VarlenArgs`]). The emulator
/// ([`varlen_tc`]) and the GPU launcher take it; everything is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct VarlenTcArgs<'a> {
    inputs: VarlenArgs<'a>,
    p: &'a VarlenTcParams<'a>,
}

impl<'a> VarlenTcArgs<'a> {
    pub fn new(
        q: &'a [f32],
        k: &'a [f32],
        v: &'a [f32],
        cu_seqlens_q: &'a [i32],
        cu_seqlens_k: &'a [i32],
        p: &'a VarlenTcParams<'a>,
    ) -> Result<Self> {
        p.validate()?;
        let inputs = VarlenArgs::new(q, k, v, cu_seqlens_q, cu_seqlens_k, &p.varlen)?;
        Ok(VarlenTcArgs { inputs, p })
    }
    /// The tensors and `cu_seqlens`, with `p.varlen` as their parameters.
    pub fn inputs(&self) -> &VarlenArgs<'a> {
        &self.inputs
    }
    pub fn params(&self) -> &'a VarlenTcParams<'a> {
        self.p
    }
}

/// Keys per lane and column tile in the instruction's accumulator layout:
/// 2 for `mma.sync m16n8k16` (32-lane waves), 4 for MFMA 16x16x16.
pub fn keys_per_lane(target: MatrixTarget) -> usize {
    if target.wave_size() == 32 {
        2
    } else {
        4
    }
}

/// The lane part (0..4) of a row that holds key `j` of a tile.
#[inline]
pub fn lane_part(target: MatrixTarget, j: usize) -> usize {
    let g = keys_per_lane(target);
    (j % (4 * g)) / g
}

/// The tile sum of a row as the kernel forms it: per lane part, ascending
/// keys from 0, then the butterfly `(part_0 + part_2) + (part_1 + part_3)`.
pub fn tile_sum(target: MatrixTarget, p: &[f32]) -> f32 {
    let mut part = [0.0f32; 4];
    for (j, &x) in p.iter().enumerate() {
        let q = lane_part(target, j);
        part[q] += x;
    }
    (part[0] + part[2]) + (part[1] + part[3])
}

/// `flash_attn_varlen_func` on matrix cores: q `[total_q, Hq, D]`, k
/// `[total_k, Hkv, D]`, v `[total_k, Hkv, Dv]` (values exact in the dtype);
/// returns out `[total_q, Hq, Dv]` and lse `[Hq, total_q]` (natural log).
pub fn flash_attn_varlen_tc(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu_seqlens_q: &[i32],
    cu_seqlens_k: &[i32],
    p: &VarlenTcParams,
) -> Result<OutLse> {
    varlen_tc(&VarlenTcArgs::new(q, k, v, cu_seqlens_q, cu_seqlens_k, p)?)
}

/// [`flash_attn_varlen_tc`] over validated arguments.
pub fn varlen_tc(args: &VarlenTcArgs) -> Result<OutLse> {
    let (x, p) = (args.inputs(), args.params());
    let (q, k, v) = (x.q(), x.k(), x.v());
    let (cu_seqlens_q, cu_seqlens_k) = (x.cu_seqlens_q(), x.cu_seqlens_k());
    let vp = &p.varlen;
    let total_q = x.total_q();
    let (hq, dv) = (vp.num_heads(), vp.head_size_v());
    let format = p.format()?;
    let bits = |x: &[f32]| -> Vec<u16> { x.iter().map(|&e| format.from_f32(e)).collect() };
    let (qb, kb, vb) = (bits(q), bits(k), bits(v));
    let inputs = Inputs {
        q: &qb,
        k: &kb,
        v: &vb,
        cu_q: cu_seqlens_q,
        cu_k: cu_seqlens_k,
        format,
        model: p.target.model(format),
    };

    let batch = cu_seqlens_q.len().saturating_sub(1);
    let programs: Vec<(usize, usize, usize)> = (0..batch)
        .flat_map(|b| {
            (0..seq_len(cu_seqlens_q, b).div_ceil(WAVE_ROWS))
                .flat_map(move |w| (0..hq).map(move |h| (b, w, h)))
        })
        .collect();
    let waves: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = programs
        .par_iter()
        .map(|&(b, w, h)| {
            let (out, lse) = wave(&inputs, b, w, h, p);
            (cu_seqlens_q[b] as usize + w * WAVE_ROWS, h, out, lse)
        })
        .collect();

    let mut res = OutLse::empty(total_q, hq, dv);
    for (t0, h, out, lse) in waves {
        for (r, l) in lse.iter().enumerate() {
            res.out_mut()[((t0 + r) * hq + h) * dv..][..dv].copy_from_slice(&out[r * dv..][..dv]);
            res.lse_mut()[h * total_q + t0 + r] = *l;
        }
    }
    Ok(res)
}

/// The inputs as the instruction reads them: storage bits of the format.
struct Inputs<'x> {
    q: &'x [u16],
    k: &'x [u16],
    v: &'x [u16],
    cu_q: &'x [i32],
    cu_k: &'x [i32],
    format: InFormat,
    model: Model,
}

/// One wave: 16 rows (fewer at a sequence's end) of sequence `b`, head `h`.
/// Returns out `[rows, Dv]` (rounded to the dtype) and lse `[rows]`.
fn wave(x: &Inputs, b: usize, w: usize, h: usize, p: &VarlenTcParams) -> (Vec<f32>, Vec<f32>) {
    let vp = &p.varlen;
    let (hq, hk, d, dv, bn) = (
        vp.num_heads(),
        vp.num_kv_heads(),
        vp.head_size(),
        vp.head_size_v(),
        vp.block_n(),
    );
    let g = h / (hq / hk);
    let (sq, sk) = (seq_len(x.cu_q, b), seq_len(x.cu_k, b));
    let (q0, k0) = (x.cu_q[b] as usize, x.cu_k[b] as usize);
    let (r0, r1) = (w * WAVE_ROWS, ((w + 1) * WAVE_ROWS).min(sq));
    let rows = r1 - r0;
    let offset = sk as i64 - sq as i64;
    let pos = |i: usize| i as i64 + offset;
    let causal = vp.causal() || vp.window().is_some();
    let last_key = if causal {
        (pos(r1 - 1) + 1).clamp(0, sk as i64) as usize
    } else {
        sk
    };
    let first_key = match vp.window() {
        Some(win) => (pos(r0) - win as i64 + 1).clamp(0, sk as i64) as usize,
        None => 0,
    };
    let (n_min, n_max) = (first_key / bn, last_key.div_ceil(bn));
    let slope = vp.alibi_slopes().map_or(0.0, |a| a[h]);

    let (mut m, mut l) = match vp.sinks() {
        Some(s) => (vec![s[h] * LOG2E; rows], vec![1.0f32; rows]),
        None => (vec![f32::NEG_INFINITY; rows], vec![0.0f32; rows]),
    };
    let mut acc = vec![0.0f32; rows * dv];
    // V tile transposed, [dv][bn] bits, zero past sk: the B (sm_90) or A
    // (CDNA) operand of P·V, one contiguous 16-key run per instruction.
    let mut vt = vec![0u16; dv * bn];
    let mut s = vec![0.0f32; bn];
    let mut pr = vec![0u16; bn];
    for n in n_min..n_max {
        let j0 = n * bn;
        let len = bn.min(sk - j0);
        vt.fill(0);
        for j in 0..len {
            let vr = &x.v[((k0 + j0 + j) * hk + g) * dv..][..dv];
            for (c, &e) in vr.iter().enumerate() {
                vt[c * bn + j] = e;
            }
        }
        for r in 0..rows {
            let i = r0 + r;
            let pi = pos(i);
            let qr = &x.q[((q0 + i) * hq + h) * d..][..d];
            for (j, sj) in s.iter_mut().enumerate() {
                let t = j0 + j;
                let vis = j < len
                    && if pi < 0 {
                        !causal
                    } else {
                        visible(t, pi as usize, causal, vp.window())
                    };
                // A masked key's S is computed by the GPU and then replaced:
                // only visible keys need the chain here.
                *sj = if vis {
                    let kr = &x.k[((k0 + t) * hk + g) * d..][..d];
                    let mut c = 0.0f32;
                    for dc in (0..d).step_by(MMA_K) {
                        c = x
                            .model
                            .dot(x.format, &qr[dc..dc + MMA_K], &kr[dc..dc + MMA_K], c);
                    }
                    let bias = if vp.alibi_slopes().is_some() {
                        -(slope * (pi - t as i64).abs() as f32)
                    } else {
                        0.0
                    };
                    vp.score().score(c, bias)
                } else {
                    f32::NEG_INFINITY
                };
            }
            let tile_max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let m_new = m[r].max(tile_max);
            let m_ref = if m_new > f32::NEG_INFINITY {
                m_new
            } else {
                0.0
            };
            let alpha = exp2c(m[r] - m_ref);
            for sj in s.iter_mut() {
                *sj = exp2c(*sj - m_ref);
            }
            let sum = tile_sum(p.target, &s);
            l[r] = l[r].mul_add(alpha, sum);
            m[r] = m_new;
            for (b, &e) in pr.iter_mut().zip(&s) {
                *b = x.format.from_f32(e);
            }
            for (c, a) in acc[r * dv..(r + 1) * dv].iter_mut().enumerate() {
                let mut z = *a * alpha;
                for kc in (0..bn).step_by(MMA_K) {
                    z = x.model.dot(
                        x.format,
                        &pr[kc..kc + MMA_K],
                        &vt[c * bn + kc..c * bn + kc + MMA_K],
                        z,
                    );
                }
                *a = z;
            }
        }
    }

    let mut out = vec![0.0f32; rows * dv];
    let mut lse = vec![0.0f32; rows];
    for r in 0..rows {
        for (o, &a) in out[r * dv..(r + 1) * dv]
            .iter_mut()
            .zip(&acc[r * dv..(r + 1) * dv])
        {
            *o = if l[r] == 0.0 { 0.0 } else { a / l[r] };
        }
        vp.dtype().round_slice(&mut out[r * dv..(r + 1) * dv]);
        lse[r] = if l[r] == 0.0 {
            f32::NEG_INFINITY
        } else {
            (m[r] + log2c(l[r])) * LN2
        };
    }
    (out, lse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flash_varlen::flash_attn_varlen;
    use proptest::prelude::*;

    /// Deterministic values exact in bf16 and f16: multiples of 1/64 in [-2, 2).
    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + seed * 101) % 256) as f32 - 128.0) / 64.0)
            .collect()
    }

    fn params(
        hq: usize,
        hk: usize,
        d: usize,
        dtype: DType,
        t: MatrixTarget,
    ) -> VarlenTcParams<'static> {
        VarlenTcParams::new(hq, hk, d, dtype, 1.0 / (d as f32).sqrt(), t).unwrap()
    }

    #[test]
    fn lane_parts_follow_each_instruction_layout() {
        // sm_90: keys 0,1 -> part 0, 2,3 -> 1, .., 6,7 -> 3, then again.
        let sm90: Vec<usize> = (0..10).map(|j| lane_part(MatrixTarget::Sm90, j)).collect();
        assert_eq!(sm90, [0, 0, 1, 1, 2, 2, 3, 3, 0, 0]);
        // CDNA: 4 consecutive keys per part, 16-key tiles.
        let cdna: Vec<usize> = (0..18)
            .map(|j| lane_part(MatrixTarget::Gfx942, j))
            .collect();
        assert_eq!(cdna, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 0, 0]);
    }

    #[test]
    fn tile_sum_adds_the_lane_parts_as_the_butterfly_does() {
        // Keys 0..8 with distinct values: on sm_90 parts {0,1}, {2,3}, {4,5},
        // {6,7}; on CDNA {0..3}, {4..7} (parts 2 and 3 empty).
        let p: Vec<f32> = (0..8).map(|j| 1.0 + j as f32 * 2f32.powi(-20)).collect();
        let part = |a: usize, b: usize| p[a..b].iter().fold(0.0f32, |s, &x| s + x);
        assert_eq!(
            tile_sum(MatrixTarget::Sm90, &p),
            (part(0, 2) + part(4, 6)) + (part(2, 4) + part(6, 8))
        );
        assert_eq!(
            tile_sum(MatrixTarget::Gfx942, &p),
            (part(0, 4) + 0.0) + (part(4, 8) + 0.0)
        );
    }

    #[test]
    fn single_key_returns_its_value_on_every_target() {
        let (q, k) = (vals(16, 1), vals(16, 2));
        let v: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 2.0).collect();
        for t in MatrixTarget::ALL {
            let p = params(1, 1, 16, DType::Bf16, t);
            let r = flash_attn_varlen_tc(&q, &k, &v, &[0, 1], &[0, 1], &p).unwrap();
            assert_eq!(r.out(), v, "{}", t.name());
            assert!(r.lse()[0].is_finite());
        }
    }

    #[test]
    fn rows_before_the_first_key_give_zero_and_minus_inf() {
        // sq = 3 > sk = 1, causal: rows 0 and 1 see no key.
        let (q, k, v) = (vals(3 * 16, 3), vals(16, 4), vals(16, 5));
        let p = params(1, 1, 16, DType::F16, MatrixTarget::Sm90);
        let r = flash_attn_varlen_tc(&q, &k, &v, &[0, 3], &[0, 1], &p).unwrap();
        assert_eq!(&r.out()[..32], &[0.0; 32]);
        assert_eq!(&r.lse()[..2], &[f32::NEG_INFINITY; 2]);
        assert_eq!(&r.out()[32..], &v[..]);
    }

    #[test]
    fn agrees_with_the_fma_kernel_within_rounding() {
        // 2 sequences, GQA 4/2, d 32, causal and bottom-right aligned.
        let (cu_q, cu_k) = ([0, 20, 57], [0, 30, 67]);
        let (hq, hk, d) = (4, 2, 32);
        let (q, k, v) = (
            vals(57 * hq * d, 6),
            vals(67 * hk * d, 7),
            vals(67 * hk * d, 8),
        );
        for t in MatrixTarget::ALL {
            let p = params(hq, hk, d, DType::Bf16, t);
            let tc = flash_attn_varlen_tc(&q, &k, &v, &cu_q, &cu_k, &p).unwrap();
            let fma = flash_attn_varlen(&q, &k, &v, &cu_q, &cu_k, &p.varlen).unwrap();
            crate::kernels::test_batch::assert_within_rounding(tc.out(), fma.out(), t.name());
            for (a, b) in tc.lse().iter().zip(fma.lse()) {
                assert!(
                    (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                    "{}: {a} vs {b}",
                    t.name()
                );
            }
        }
    }

    #[test]
    fn the_targets_differ_in_bits_but_each_is_deterministic() {
        let (hq, d, n) = (2, 64, 40);
        let (q, k, v) = (vals(n * hq * d, 9), vals(n * d, 10), vals(n * d, 11));
        let cu = [0, n as i32];
        let run = |t| {
            flash_attn_varlen_tc(&q, &k, &v, &cu, &cu, &params(hq, 1, d, DType::Bf16, t)).unwrap()
        };
        let (a, b) = (run(MatrixTarget::Sm90), run(MatrixTarget::Gfx942));
        assert_eq!(a, run(MatrixTarget::Sm90));
        assert_ne!(
            a.lse(),
            b.lse(),
            "sm_90 truncates, gfx942 rounds to nearest"
        );
    }

    #[test]
    fn rejects_shapes_the_matrix_tiles_cannot_take() {
        let x = vals(24, 1);
        let mut p = params(1, 1, 24, DType::Bf16, MatrixTarget::Sm90);
        let e = flash_attn_varlen_tc(&x, &x, &x, &[0, 1], &[0, 1], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("head_size") && e.contains("24"), "{e}");
        p.varlen = super::VarlenParamsBuilder {
            head_size: 16,
            head_size_v: 16,
            dtype: DType::F32,
            ..p.varlen.to_builder()
        }
        .build()
        .unwrap();
        let e = flash_attn_varlen_tc(&x[..16], &x[..16], &x[..16], &[0, 1], &[0, 1], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bf16, f16"), "{e}");
        p.varlen = super::VarlenParamsBuilder {
            dtype: DType::F16,
            block_n: 40,
            ..p.varlen.to_builder()
        }
        .build()
        .unwrap();
        let e = flash_attn_varlen_tc(&x[..16], &x[..16], &x[..16], &[0, 1], &[0, 1], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("block_n") && e.contains("40"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Splitting a batch into its sequences changes no bit: every wave
        /// reads only its own sequence.
        #[test]
        fn each_sequence_is_independent_of_the_batch(sq0 in 1usize..40, extra in 0usize..20, sq1 in 1usize..40) {
            let (hq, d) = (2usize, 16usize);
            let (sk0, sk1) = (sq0 + extra, sq1);
            let q = vals((sq0 + sq1) * hq * d, 12);
            let kv = vals((sk0 + sk1) * d, 13);
            let p = params(hq, 1, d, DType::Bf16, MatrixTarget::Sm90);
            let cu_q = [0, sq0 as i32, (sq0 + sq1) as i32];
            let cu_k = [0, sk0 as i32, (sk0 + sk1) as i32];
            let both = flash_attn_varlen_tc(&q, &kv, &kv, &cu_q, &cu_k, &p).unwrap();
            let second = flash_attn_varlen_tc(
                &q[sq0 * hq * d..], &kv[sk0 * d..], &kv[sk0 * d..],
                &[0, sq1 as i32], &[0, sk1 as i32], &p).unwrap();
            prop_assert_eq!(&both.out()[sq0 * hq * d..], second.out());
            for h in 0..hq {
                prop_assert_eq!(
                    &both.lse()[h * (sq0 + sq1) + sq0..(h + 1) * (sq0 + sq1)],
                    &second.lse()[h * sq1..(h + 1) * sq1]);
            }
        }
    }
}
