//! Tensor-core absorbed MLA decode (`kernels/mla_decode_tc.hip`): vLLM's
//! Triton `decode_attention_fwd(..., is_mla=True)` (TRITON_MLA's decode,
//! `_fwd_grouped_kernel_stage1` + `_fwd_kernel_stage2`) with Q·Kᵀ and P·V
//! computed by the target's matrix instruction as [`crate::numerics::mma`]
//! models it (numerics.md §6; docs/src/matrix-cores.md, "mla_decode_tc"):
//! NVIDIA `mma.sync m16n8k16` at wave 32 (`sm_90`), CDNA3
//! `v_mfma_f32_16x16x16` at wave 64 (`gfx942`), over tiles of vLLM's
//! `BLOCK_N` keys on each ([`block_n`]: 32 on CUDA, 16 on ROCm) with the
//! tile's row sum in the compiled kernel's order ([`row_sum`]). The split
//! bounds, the score, the online softmax's formulas and the stage-2 reduce
//! are the fma family's ([`super::mla_decode`]).
//!
//! Against vLLM's own H100 captures (`tests/captured.rs`) the twin is bit
//! for bit except where the H100's `ex2.approx.f32` and the contract's
//! `exp2c` put a softmax weight on different sides of a 16-bit rounding
//! midpoint (docs/src/matrix-cores.md, "mla_decode_tc").
//!
//! Each query row carries `q = [q_latent (Lkv) | q_pe (R)]` per head; a key
//! is the whole `W = Lkv + R` cache entry, its value the first Lkv channels
//! (V *is* the latent, vLLM's `v = tl.trans(k)`).
//!
//! ## Stage 1: one program per (row, head block of [`ROWS`], split)
//! ```text
//! heads    = hb*16 .. min(hb*16 + 16, H)        (the instruction's 16 rows; the rest zero)
//! (start, end) = KvSplits::bounds(split_len, split), end = min(end, kv_len); empty: nothing
//! N = block_n(target): 32 on sm_90, 16 on gfx942 (vLLM's BLOCK_N on CUDA / ROCm)
//! for t0 in start .. end step N (keys k = 0..N-1 of the tile, ascending):
//!   K[k][c]  = load(cache[slot(t0 + k)][c]) in the q dtype, 0 for t0 + k >= end
//!              (fp8: round_q(x * kv_scale); 16-bit: as stored)
//!   dot[h][k]= C chained over the W/16 chunks c = 0 .. W/16 ascending, from C = +0:
//!              C = MMA(q[h][16c .. 16c+16], K[k][16c .. 16c+16], C)   k-slot i = dim 16c + i
//!              (chunks 0 .. Lkv/16 are the latent, then R/16 rope chunks: vLLM's
//!              two tl.dots per tile, `qk = dot(q, k); qk += dot(qpe, kpe)`, the
//!              second taking the first's result as its accumulator)
//!   s[h][k]  = dot * (scale * log2e)   (score, no soft-cap); -inf for t0 + k >= end
//!   m_new    = max(m, max_k s);  m_ref = m_new > -inf ? m_new : 0;  alpha = exp2c(m - m_ref)
//!   p[k]     = exp2c(s[k] - m_ref);  tile_sum = row_sum(target, p)   (see below)
//!   l        = fma(l, alpha, tile_sum)
//!   acc[h][d]= C = acc[h][d] * alpha, then for each 16 keys j = 0, 16, .. < N:
//!              C = MMA(round_q(p[j..j+16]), K[j..j+16][d], C)          d < Lkv, keys as k in order
//!   m        = m_new
//! Att_Out[row, h, split, :Lkv] = acc / l (0 if l = 0);  Att_Out[.., Lkv] = m + log2c(l) (-inf if l = 0)
//! ```
//! P is rounded to the query dtype before P·V (vLLM's `p.to(v.dtype)`, V
//! being K converted to the query dtype) and acc is rescaled by alpha
//! before it enters the instruction as C (vLLM's `acc *= re_scale; acc +=
//! tl.dot(p, v)`). Padding keys (past the split) have K = V = 0 and p = 0,
//! as vLLM's masked loads give them.
//!
//! `row_sum` is the order of `tl.sum(p, 1)` in the compiled kernel. On
//! sm_90 Triton 3.6 lays the 16 x 32 score tile out as `mma.m16n8k16`
//! accumulators over 4 warps (`warpsPerCTA [1, 4]`): warp w holds keys
//! 8w .. 8w+7, lane quad t of a row keys 8w+2t and 8w+2t+1. Each lane adds
//! its two, the quad adds across lanes by butterfly (xor 2, then xor 1),
//! and the four warp sums meet the same way through shared memory:
//! `x[w][t] = p[8w+2t] + p[8w+2t+1]`, `W[w] = (x[w][0] + x[w][2]) +
//! (x[w][1] + x[w][3])`, `sum = (W[0] + W[2]) + (W[1] + W[3])` (read from
//! the PTX of vLLM 0.34's `_fwd_grouped_kernel_stage1` compiled for sm_90).
//! On gfx942 (not yet read from an AMD build) the sum is ascending from
//! zero, `0 + p[0] + .. + p[15]`.
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
use crate::numerics::ex2_approx::ex2_approx_sm90;
use crate::numerics::mma::{InFormat, MatrixTarget, Model};
use crate::numerics::{exp2c, log2c, LOG2E};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use rayon::prelude::*;

/// Keys per P·V instruction (its k); a stage-1 tile is [`block_n`] keys,
/// one or two instructions chained through C.
pub const STEP: usize = 16;
/// The most keys a stage-1 tile has on any target ([`block_n`]).
pub const MAX_BLOCK_N: usize = 32;
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
    softmax: MlaSoftmax,
}

/// Which arithmetic stage 1's softmax runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MlaSoftmax {
    /// The contract (numerics.md): base-2 scores `dot * (scale * log2 e)`
    /// and `exp2c`, what attnlab's kernels compute on every device.
    #[default]
    Contract,
    /// vLLM's Triton kernel as it runs on sm_90: natural-log scores
    /// `s = dot * sm_scale`, weights `ex2.approx(((s - m) * log2 e))` with
    /// each operation rounded to f32 (`tl.exp` lowers to a multiply by
    /// log2 e and `ex2.approx.f32`), the measured unit of
    /// [`ex2_approx_sm90`]. The LSE channel stays base 2 for this
    /// twin's stage 2 (`m * log2 e + log2c(l)`): `__nv_logf` and
    /// `div.full.f32` are not modelled. The emulator only.
    VllmSm90,
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
        Ok(MlaDecodeTcArgs {
            args,
            target,
            fmt,
            softmax: MlaSoftmax::Contract,
        })
    }
    /// The same launch with stage 1's softmax in `softmax`'s arithmetic
    /// ([`MlaSoftmax::VllmSm90`]: what vLLM's kernel computes on an H100;
    /// the GPU kernels keep the contract). Only sm_90 has that model: on
    /// another target the value is refused, naming it.
    pub fn with_softmax(self, softmax: MlaSoftmax) -> Result<Self> {
        if softmax == MlaSoftmax::VllmSm90 && self.target != MatrixTarget::Sm90 {
            return Err(Error::invalid(
                "mla_decode_tc softmax",
                format!("vLLM's sm_90 arithmetic on {}", self.target.name()),
                "the contract, or vLLM's sm_90 arithmetic on sm_90",
            ));
        }
        Ok(MlaDecodeTcArgs { softmax, ..self })
    }
    /// Stage 1's softmax arithmetic.
    pub fn softmax(&self) -> MlaSoftmax {
        self.softmax
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

/// Keys per stage-1 tile on `target`: vLLM's `BLOCK_N` for the grouped
/// kernel, `BLOCK = 32` on CUDA and 16 on ROCm (`_decode_grouped_att_m_fwd`).
/// The one place the twin, the HIP kernel's launcher and its shared memory
/// take it from (the kernel's `MTC_STEP` follows the wave width the same
/// way: 32 lanes model sm_90, 64 gfx942).
pub const fn block_n(target: MatrixTarget) -> usize {
    match target {
        MatrixTarget::Sm90 => 32,
        MatrixTarget::Gfx90a | MatrixTarget::Gfx942 => 16,
    }
}

/// `tl.sum(p, 1)` over one tile's `p` (`block_n(target)` values) in the
/// order the compiled kernel adds them (module docs, "row_sum").
pub fn row_sum(target: MatrixTarget, p: &[f32]) -> f32 {
    match target {
        MatrixTarget::Sm90 if p.len() == 32 => {
            let warp = |w: usize| {
                let x = |t: usize| p[8 * w + 2 * t] + p[8 * w + 2 * t + 1];
                (x(0) + x(2)) + (x(1) + x(3))
            };
            (warp(0) + warp(2)) + (warp(1) + warp(3))
        }
        _ => p.iter().fold(0.0f32, |acc, &x| acc + x),
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
    // K[k][c] (the tile's keys) and its latent columns V[d][k].
    let bn = block_n(args.target);
    let mut kb = vec![vec![0u16; w]; bn];
    let mut vb = vec![[0u16; MAX_BLOCK_N]; lkv];
    let mut s = [0.0f32; MAX_BLOCK_N];
    let mut pf = [0.0f32; MAX_BLOCK_N];
    let mut pb = [0u16; MAX_BLOCK_N];
    let (s, pf, pb) = (&mut s[..bn], &mut pf[..bn], &mut pb[..bn]);
    for t0 in (start..end).step_by(bn) {
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
                    match args.softmax {
                        MlaSoftmax::Contract => score.score(dot, 0.0),
                        MlaSoftmax::VllmSm90 => dot * p.scale,
                    }
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
            let alpha = weight(args.softmax, m[i] - m_ref);
            for ((b, pk), &sk) in pb.iter_mut().zip(pf.iter_mut()).zip(s.iter()) {
                *pk = weight(args.softmax, sk - m_ref);
                *b = fmt.from_f32(p.q_dtype.round(*pk));
            }
            l[i] = l[i].mul_add(alpha, row_sum(args.target, pf));
            // One instruction per 16 keys, chained through C (Model::dot
            // runs the target's blocks in k order).
            for (x, col) in acc[i].iter_mut().zip(&vb) {
                *x = model.dot(fmt, pb, &col[..bn], *x * alpha);
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
            let m2 = match args.softmax {
                MlaSoftmax::Contract => m[i],
                MlaSoftmax::VllmSm90 => m[i] * LOG2E,
            };
            out.push(m2 + log2c(l[i]));
        }
    }
    out
}

/// A softmax weight from the difference `x = s - m` (or `m_old - m_new`)
/// in `softmax`'s domain.
#[inline]
fn weight(softmax: MlaSoftmax, x: f32) -> f32 {
    match softmax {
        MlaSoftmax::Contract => exp2c(x),
        MlaSoftmax::VllmSm90 => ex2_approx_sm90(x * LOG2E),
    }
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
        let e = MlaDecodeTcArgs::new(a, MatrixTarget::Gfx942)
            .unwrap()
            .with_softmax(MlaSoftmax::VllmSm90)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sm_90 arithmetic on gfx942"), "{e}");
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

    /// Triton's `tl.sum` on sm_90 adds a 32-key tile as pairs, quads and
    /// warps (module docs), not left to right: with 1 then 31 halves of an
    /// ulp of 1, the ascending sum stays 1 (every add a tie to even) while
    /// the tree adds the small terms among themselves first.
    #[test]
    fn sm90_row_sum_is_tritons_tree_and_gfx942_sums_ascending() {
        let tiny = 2f32.powi(-24);
        let mut p = [tiny; 32];
        p[0] = 1.0;
        // x[0][0] = 1 + 2^-24 = 1 (tie), x[0][1..] = 2^-23: W0 = 1 + 3 * 2^-23;
        // W1..W3 = 2^-21: (W0 + W2) + (W1 + W3) = 1 + 15 * 2^-23, exact.
        assert_eq!(row_sum(MatrixTarget::Sm90, &p), 1.0 + 15.0 * 2f32.powi(-23));
        assert_eq!(p.iter().fold(0.0f32, |a, &x| a + x), 1.0);
        assert_eq!(row_sum(MatrixTarget::Gfx942, &p[..16]), 1.0);
        assert_eq!(block_n(MatrixTarget::Sm90), 32);
        assert_eq!(block_n(MatrixTarget::Gfx942), 16);
    }

    /// On sm_90 a split of 20 keys is one tile of 32 (vLLM's CUDA
    /// `BLOCK_N`): one max over all 20 scores, no rescale, P·V as two
    /// instructions chained through C (keys 0..15, then 16..31 of which
    /// 20..31 are zero), the tree row sum. Recomputed here from the
    /// instruction model, bit for bit.
    #[test]
    fn sm90_takes_a_20_key_split_as_one_32_key_tile() {
        let dt = DType::Bf16;
        let c = cache(2, dt);
        let pages = [1, 0];
        let rows = [KvRow {
            pages: &pages,
            page_size: 16,
            kv_len: 20,
            split_len: 20,
        }];
        let (h, w, lkv) = (3, 48, 32);
        let q = query(1, h, w, dt);
        let p = params(h, dt);
        let a = MlaDecodeArgs::new(&q, &rows, &c, KvSplits::Even { num_kv_splits: 1 }, &p).unwrap();
        let att = stage1_tc(&MlaDecodeTcArgs::new(a, MatrixTarget::Sm90).unwrap());
        let (fmt, model) = (InFormat::Bf16, MatrixTarget::Sm90.model(InFormat::Bf16));
        let key = |t: usize| -> Vec<u16> {
            let slot = pages[t / 16] as usize * 16 + t % 16;
            c.entry(slot).iter().map(|&x| fmt.from_f32(x)).collect()
        };
        let keys: Vec<Vec<u16>> = (0..32)
            .map(|t| if t < 20 { key(t) } else { vec![0; w] })
            .collect();
        let score = ScoreParams::new(p.scale, None);
        for head in 0..h {
            let qh: Vec<u16> = q[head * w..(head + 1) * w]
                .iter()
                .map(|&x| fmt.from_f32(x))
                .collect();
            let s: Vec<f32> = (0..32)
                .map(|t| {
                    if t >= 20 {
                        return f32::NEG_INFINITY;
                    }
                    let dot = qh
                        .chunks(16)
                        .zip(keys[t].chunks(16))
                        .fold(0.0, |acc, (x, y)| model.dot(fmt, x, y, acc));
                    score.score(dot, 0.0)
                })
                .collect();
            let m = s.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
            let pf: Vec<f32> = s.iter().map(|&x| exp2c(x - m)).collect();
            let pb: Vec<u16> = pf.iter().map(|&x| fmt.from_f32(dt.round(x))).collect();
            let l = 0.0f32.mul_add(
                exp2c(f32::NEG_INFINITY - m),
                row_sum(MatrixTarget::Sm90, &pf),
            );
            let at = head * (lkv + 1);
            for d in 0..lkv {
                let col: Vec<u16> = keys.iter().map(|k| k[d]).collect();
                let lo = model.dot(fmt, &pb[..16], &col[..16], 0.0);
                let acc = model.dot(fmt, &pb[16..], &col[16..], lo);
                assert_eq!(
                    att[at + d].to_bits(),
                    (acc / l).to_bits(),
                    "head {head} dim {d}"
                );
            }
            assert_eq!(
                att[at + lkv].to_bits(),
                (m + log2c(l)).to_bits(),
                "head {head} lse"
            );
        }
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
