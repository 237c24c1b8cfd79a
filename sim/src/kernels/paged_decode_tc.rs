//! Tensor-core paged decode (`kernels/paged_decode_tc.hip`): one query token
//! per sequence against its paged NHD KV cache, with Q·K^T and P·V computed
//! by the matrix instruction of the target (numerics.md §6;
//! docs/src/matrix-cores.md, "paged_decode_tc"): NVIDIA `mma.sync m16n8k16`
//! at wave 32 (`sm_90`), CDNA3 `v_mfma_f32_16x16x16` at wave 64 (`gfx942`).
//!
//! ## Work decomposition (what fixes the numbers)
//! The query heads of one KV head are packed into the instruction's 16
//! rows (GQA 32/8: 4 rows, MQA 8/1: 8 rows, the rest zero padding; more than
//! 16 heads per KV head: groups of 16). Each sequence's keys are cut into
//! *splits* of `split_size` keys (a multiple of [`STEP`]); one wave owns one
//! (sequence, KV head, head group, split) and walks its keys in steps of
//! [`STEP`] = 16 keys, ascending. Per step and query row h:
//! ```text
//! dot[k]   = C chained over dim chunks c = 0 .. D/16 ascending, from C = +0:
//!            C = MMA(q[h][dims(c)], key_k[dims(c)], C)           // one k=16 instruction
//!            dims(c)[slot] = 8*(part + 4*(c/2)) + 4*(c%2) + j     // part, j from the slot
//! s[k]     = score(dot[k])       (scale*log2e once, soft-cap as the contract); -inf past the split
//!            (keys past the split are read as the split's last key: K unused, V enters with p = 0)
//! m_new    = max(m, max_k s[k]);  m_ref = m_new > -inf ? m_new : 0;  alpha = exp2c(m - m_ref)
//! p[k]     = exp2c(s[k] - m_ref)
//! tile_sum = butterfly over the 4 key parts (offsets 2 then 1) of each part's
//!            sum 0 + p[k0] + p[k1] + p[k2] + p[k3] in its key order (see `part_keys`)
//! l        = fma(l, alpha, tile_sum)
//! acc[h][d]= MMA(round_q(p)[0..16], v[0..16][d], acc[h][d] * alpha)   // keys 0..16 in order
//! m        = m_new
//! ```
//! The slot -> (part, j) maps are the instructions' lane layouts: on
//! `m16n8k16` lane part t holds k slots {2t, 2t+1, 2t+8, 2t+9}; on the
//! MFMA lane part q holds slots {4q .. 4q+3}. A slot's dim is the element a
//! lane's 16-byte K load brings. The split then yields (m, l, acc), f32.
//!
//! ## Reduce (ascending split order, fixed formula; numerics.md §4)
//! ```text
//! M = max_s m_s;  l = 0; acc = 0
//! for s ascending: w = exp2c(m_s - M); l = fma(l_s, w, l); acc[d] = fma(acc_s[d], w, acc[d])
//! out[d] = round_q(acc[d] / l)            (no splits: out = 0)
//! ```
//! The reduce runs for every sequence, one split included.

use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::paged_decode::PagedInputs;
use crate::kernels::softmax::ScoreParams;
use crate::numerics::exp2c;
use crate::numerics::mma::{InFormat, MatrixTarget, Model};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;
use rayon::prelude::*;

/// Keys per step: the PV instruction's k.
pub const STEP: usize = 16;
/// Query rows of the instruction tile (heads of one KV head per group).
pub const ROWS: usize = 16;
/// The head sizes the kernel is built for.
pub const HEAD_SIZES: [usize; 2] = [64, 128];

/// Parts (groups of lanes) that share one query row's keys, and the keys
/// of a step each part holds, in the order it sums them.
pub fn part_keys(target: MatrixTarget, part: usize) -> [usize; 4] {
    match target {
        MatrixTarget::Sm90 => [2 * part, 2 * part + 1, 8 + 2 * part, 9 + 2 * part],
        _ => [4 * part, 4 * part + 1, 4 * part + 2, 4 * part + 3],
    }
}

/// The head dims of QK chunk `c` in the instruction's k-slot order.
pub fn chunk_dims(target: MatrixTarget, c: usize) -> [usize; 16] {
    std::array::from_fn(|slot| {
        let (part, j) = match target {
            MatrixTarget::Sm90 => ((slot & 7) >> 1, (slot & 1) + 2 * (slot >> 3)),
            _ => (slot >> 2, slot & 3),
        };
        8 * (part + 4 * (c >> 1)) + 4 * (c & 1) + j
    })
}

/// The storage format of a query / KV dtype on the matrix cores.
fn in_format(dtype: DType) -> Result<InFormat> {
    match dtype {
        DType::Bf16 => Ok(InFormat::Bf16),
        DType::F16 => Ok(InFormat::F16),
        other => Err(Error::invalid(
            "paged_decode_tc dtype",
            other.name(),
            "bf16 or f16 (query and KV cache the same)",
        )),
    }
}

/// One tensor-core paged decode launch, validated once: paged inputs
/// ([`PagedInputs`]: consistent shapes) whose configuration the kernel is
/// built for (bf16 or f16 with the same KV dtype, an NHD cache, head size
/// 64 or 128, no sinks, ALiBi or sliding window), a split size that is a
/// positive multiple of [`STEP`] and a target with a model (sm_90 or
/// gfx942). The emulator ([`decode_tc`]), both kernel executors and the GPU
/// launcher take it; everything is borrowed, so nothing changes after the
/// check.
#[derive(Debug, Clone, Copy)]
pub struct DecodeTcArgs<'a> {
    inputs: PagedInputs<'a>,
    target: MatrixTarget,
    split_size: usize,
    fmt: InFormat,
}

impl<'a> DecodeTcArgs<'a> {
    /// Checks what the kernel takes beyond [`PagedInputs`]; the error names
    /// the refused value and what the kernel accepts.
    pub fn new(inputs: PagedInputs<'a>, target: MatrixTarget, split_size: usize) -> Result<Self> {
        let (cache, cfg) = (inputs.cache(), inputs.cfg());
        let fmt = in_format(cfg.dtype())?;
        if cfg.kv_dtype() != cfg.dtype() {
            return Err(Error::invalid(
                "paged_decode_tc KV dtype",
                cfg.kv_dtype().name(),
                format!("the query dtype {} (no fp8 KV)", cfg.dtype().name()),
            ));
        }
        if cache.layout.kind != LayoutKind::Nhd {
            return Err(Error::invalid(
                "paged_decode_tc KV layout",
                format!("{:?}", cache.layout.kind),
                "NHD",
            ));
        }
        if !HEAD_SIZES.contains(&cfg.head_size()) {
            return Err(Error::invalid(
                "paged_decode_tc head size",
                cfg.head_size(),
                "64 or 128",
            ));
        }
        if split_size == 0 || !split_size.is_multiple_of(STEP) {
            return Err(Error::invalid(
                "paged_decode_tc split size",
                split_size,
                format!("a positive multiple of {STEP}"),
            ));
        }
        if !matches!(target, MatrixTarget::Sm90 | MatrixTarget::Gfx942) {
            return Err(Error::invalid(
                "paged_decode_tc target",
                target.name(),
                "sm_90 or gfx942",
            ));
        }
        if cfg.sinks().is_some() || cfg.alibi_slopes().is_some() || cfg.sliding_window().is_some() {
            return Err(Error::invalid(
                "paged_decode_tc options",
                "sinks / ALiBi / sliding window",
                "none of them (plain causal decode, soft-cap allowed)",
            ));
        }
        Ok(DecodeTcArgs {
            inputs,
            target,
            split_size,
            fmt,
        })
    }
    pub fn inputs(&self) -> &PagedInputs<'a> {
        &self.inputs
    }
    /// The matrix-core model the kernel runs.
    pub fn target(&self) -> MatrixTarget {
        self.target
    }
    /// Keys per split, a positive multiple of [`STEP`].
    pub fn split_size(&self) -> usize {
        self.split_size
    }
    /// The instruction's input format (the query and KV dtype).
    pub fn format(&self) -> InFormat {
        self.fmt
    }
}

/// One split's state for the heads of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitState {
    pub m: Vec<f32>,
    pub l: Vec<f32>,
    /// `[head][d]`.
    pub acc: Vec<Vec<f32>>,
}

struct Ctx<'a> {
    query: &'a [f32],
    cache: &'a KvCache,
    meta: &'a AttentionMetadata,
    cfg: &'a AttnConfig,
    target: MatrixTarget,
    model: Model,
    fmt: InFormat,
    params: ScoreParams,
}

impl Ctx<'_> {
    /// The split `[start, end)` of sequence `seq` for query heads `heads` of KV head `kvh`.
    fn split(
        &self,
        seq: usize,
        kvh: usize,
        heads: std::ops::Range<usize>,
        start: usize,
        end: usize,
    ) -> SplitState {
        let (d, hq, fmt) = (self.cfg.head_size(), self.cfg.num_heads(), self.fmt);
        let row = self.meta.query_range(seq).start;
        let layout = &self.cache.layout;
        let nh = heads.len();
        let q: Vec<Vec<u16>> = heads
            .clone()
            .map(|h| {
                let base = (row * hq + h) * d;
                self.query[base..base + d]
                    .iter()
                    .map(|&x| fmt.from_f32(x))
                    .collect()
            })
            .collect();
        let chunks: Vec<[usize; 16]> = (0..d / 16).map(|c| chunk_dims(self.target, c)).collect();
        let mut st = SplitState {
            m: vec![f32::NEG_INFINITY; nh],
            l: vec![0.0; nh],
            acc: vec![vec![0.0; d]; nh],
        };
        let (mut kb, mut vb) = (vec![vec![0u16; d]; STEP], vec![vec![0u16; STEP]; d]);
        let mut s = [0f32; STEP];
        let mut pb = [0u16; STEP];
        for t0 in (start..end).step_by(STEP) {
            for k in 0..STEP {
                // keys past the split read the split's last key (score -inf, p = 0)
                let (blk, r) = self.meta.kv_location(seq, (t0 + k).min(end - 1));
                for dd in 0..d {
                    kb[k][dd] = fmt.from_f32(self.cache.k[layout.k_offset(blk, r, kvh, dd)]);
                    vb[dd][k] = fmt.from_f32(self.cache.v[layout.v_offset(blk, r, kvh, dd)]);
                }
            }
            for (h, qh) in q.iter().enumerate() {
                for (k, sk) in s.iter_mut().enumerate() {
                    *sk = if t0 + k < end {
                        let mut dot = 0.0f32;
                        for dims in &chunks {
                            let qa: [u16; 16] = std::array::from_fn(|i| qh[dims[i]]);
                            let ka: [u16; 16] = std::array::from_fn(|i| kb[k][dims[i]]);
                            dot = match self.target {
                                MatrixTarget::Sm90 => self.model.dot(fmt, &qa, &ka, dot),
                                _ => self.model.dot(fmt, &ka, &qa, dot),
                            };
                        }
                        self.params.score(dot, 0.0)
                    } else {
                        f32::NEG_INFINITY
                    };
                }
                let tile_max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let m_new = st.m[h].max(tile_max);
                let m_ref = if m_new > f32::NEG_INFINITY {
                    m_new
                } else {
                    0.0
                };
                let alpha = exp2c(st.m[h] - m_ref);
                let p: [f32; STEP] = std::array::from_fn(|k| exp2c(s[k] - m_ref));
                let mut parts: [f32; 4] = std::array::from_fn(|part| {
                    part_keys(self.target, part)
                        .iter()
                        .fold(0.0f32, |a, &k| a + p[k])
                });
                for off in [2, 1] {
                    parts = std::array::from_fn(|i| parts[i] + parts[i ^ off]);
                }
                st.l[h] = st.l[h].mul_add(alpha, parts[0]);
                for (k, b) in pb.iter_mut().enumerate() {
                    *b = fmt.from_f32(self.cfg.dtype().round(p[k]));
                }
                for (dd, a) in st.acc[h].iter_mut().enumerate() {
                    let c = *a * alpha;
                    *a = match self.target {
                        MatrixTarget::Sm90 => self.model.dot(fmt, &pb, &vb[dd], c),
                        _ => self.model.dot(fmt, &vb[dd], &pb, c),
                    };
                }
                st.m[h] = m_new;
            }
        }
        st
    }
}

/// The reduce of one head's splits (ascending), before rounding.
pub fn reduce_splits(parts: &[(f32, f32, &[f32])], d: usize) -> Vec<f32> {
    if parts.is_empty() {
        return vec![0.0; d];
    }
    let mx = parts
        .iter()
        .fold(f32::NEG_INFINITY, |a, &(m, _, _)| a.max(m));
    let mut l = 0.0f32;
    let mut acc = vec![0.0f32; d];
    for &(m, ls, a) in parts {
        let w = exp2c(m - mx);
        l = ls.mul_add(w, l);
        for (x, &y) in acc.iter_mut().zip(a) {
            *x = y.mul_add(w, *x);
        }
    }
    acc.iter().map(|x| x / l).collect()
}

/// Splits of a sequence of `seq_len` keys at `split_size`.
pub fn num_splits(seq_len: usize, split_size: usize) -> usize {
    seq_len.div_ceil(split_size.max(1))
}

/// The tensor-core paged decode on `target`'s matrix cores: writes the
/// output rows of the batch's decode sequences (query_len == 1) into `out`
/// (`[T, Hq, D]`), leaving other rows untouched.
pub fn paged_decode_tc(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    target: MatrixTarget,
    split_size: usize,
    out: &mut [f32],
) -> Result<()> {
    let inputs = PagedInputs::new(query, cache, meta, cfg)?;
    inputs.check_out(out)?;
    decode_tc(&DecodeTcArgs::new(inputs, target, split_size)?, out)
}

/// [`paged_decode_tc`] over validated arguments; only `out`'s length
/// (`[T, Hq, D]`) is checked here.
pub fn decode_tc(args: &DecodeTcArgs, out: &mut [f32]) -> Result<()> {
    let i = args.inputs();
    i.check_out(out)?;
    let (query, cache, meta, cfg) = (i.query(), i.cache(), i.meta(), i.cfg());
    let (target, split_size, fmt) = (args.target, args.split_size, args.fmt);
    let ctx = Ctx {
        query,
        cache,
        meta,
        cfg,
        target,
        model: target.model(fmt),
        fmt,
        params: ScoreParams::new(cfg.scale(), cfg.softcap()),
    };
    let (hq, hkv, d, qpk) = (
        cfg.num_heads(),
        cfg.num_kv_heads(),
        cfg.head_size(),
        cfg.queries_per_kv(),
    );
    let seqs: Vec<usize> = (0..meta.num_reqs())
        .filter(|&i| meta.query_len(i) == 1)
        .collect();
    // (seq, kv head, head group start, split)
    let mut programs = Vec::new();
    for &s in &seqs {
        for g in 0..hkv {
            for h0 in (0..qpk).step_by(ROWS) {
                for sp in 0..num_splits(meta.seq_len(s), split_size) {
                    programs.push((s, g, h0, sp));
                }
            }
        }
    }
    let states: Vec<SplitState> = programs
        .par_iter()
        .map(|&(s, g, h0, sp)| {
            let heads = g * qpk + h0..g * qpk + (h0 + ROWS).min(qpk);
            let len = meta.seq_len(s);
            let start = sp * split_size;
            ctx.split(s, g, heads, start, (start + split_size).min(len))
        })
        .collect();
    for &s in &seqs {
        let row = meta.query_range(s).start;
        for h in 0..hq {
            let (g, hh) = (h / qpk, h % qpk);
            let (h0, i) = (hh / ROWS * ROWS, hh % ROWS);
            let parts: Vec<(f32, f32, &[f32])> = programs
                .iter()
                .zip(&states)
                .filter(|((ps, pg, ph0, _), _)| (*ps, *pg, *ph0) == (s, g, h0))
                .map(|(_, st)| (st.m[i], st.l[i], st.acc[i].as_slice()))
                .collect();
            let o = reduce_splits(&parts, d);
            let base = (row * hq + h) * d;
            for (dst, x) in out[base..base + d].iter_mut().zip(o) {
                *dst = cfg.dtype().round(x);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_dims_cover_every_dim_once_on_each_target() {
        for target in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
            for d in HEAD_SIZES {
                let mut seen = vec![0; d];
                for c in 0..d / 16 {
                    for x in chunk_dims(target, c) {
                        seen[x] += 1;
                    }
                }
                assert!(seen.iter().all(|&n| n == 1), "{target:?} d{d}");
            }
        }
    }

    #[test]
    fn both_targets_put_the_same_dims_in_each_chunk() {
        for c in 0..8 {
            let (mut a, mut b) = (
                chunk_dims(MatrixTarget::Sm90, c),
                chunk_dims(MatrixTarget::Gfx942, c),
            );
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn part_keys_cover_the_step_once() {
        for target in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
            let mut seen = [0; STEP];
            for p in 0..4 {
                for k in part_keys(target, p) {
                    seen[k] += 1;
                }
            }
            assert_eq!(seen, [1; STEP], "{target:?}");
        }
    }

    #[test]
    fn reduce_of_one_split_divides_by_its_sum() {
        let acc = [2.0f32, -3.0];
        let out = reduce_splits(&[(1.5, 4.0, &acc)], 2);
        assert_eq!(out, vec![0.5, -0.75]);
    }

    #[test]
    fn reduce_weights_splits_by_their_max() {
        // two splits of equal mass, maxima 1 apart (base 2): weights 1/2 and 1.
        let (a, b) = ([1.0f32], [4.0f32]);
        let out = reduce_splits(&[(0.0, 1.0, &a), (1.0, 1.0, &b)], 1);
        assert_eq!(out, vec![(0.5f32 * 1.0 + 4.0) / 1.5]);
    }
}
