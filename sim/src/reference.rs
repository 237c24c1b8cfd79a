//! Plain attention, the oracle every backend and every fixture is checked
//! against: vllm-backends.md §20.1 written out with no tiling, no online
//! softmax and no intermediate rounding, in f64.
//!
//! For query row j of request i, head h (kv head g = h / (Hq / Hkv)):
//! ```text
//! ctx = seq_len_i - q_len_i;  p = ctx + j            // absolute position
//! allowed(t) = t < seq_len_i and visible(t, p, causal, window)
//! s_t = scale * (q . k_t)                           // k_t = stored * k_scale for fp8
//! s_t = c * tanh(s_t / c)                           // softcap c, if any
//! s_t = s_t + slope_h * (t - p)                     // ALiBi, if any
//! m   = max(max_t s_t, sink_h)
//! l   = sum_t exp(s_t - m) + exp(sink_h - m)        // sink term only with sinks
//! o   = sum_t exp(s_t - m) * v_t / l                // 0 when nothing is allowed
//! lse = m + ln(l)                                   // natural log; -inf when empty
//! ```
//! The cache is read through its layout's `k_offset`/`v_offset`, so the same
//! oracle serves every layout. The arithmetic is generic over [`RefFloat`]:
//! f64 is the oracle; the same loops in f32 are the "plain f32 attention"
//! baseline that `attnlab bench --cpu` measures the emulator against.
//!
//! [`compare`] is the one elementwise comparison the project uses
//! (`|a - e| <= atol + rtol * |e|`, the fixtures' rule).

use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::softmax::visible;
use crate::tensor::Flat;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use ndarray::{s, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis, LinalgScalar, Zip};
use serde::Serialize;

/// The float the reference computes in. Uses the platform's `exp`/`tanh`/`ln`
/// on purpose: the oracle must not share the contract's approximations.
pub trait RefFloat: LinalgScalar + Send + Sync + PartialOrd + From<f32> + Into<f64> {
    const ZERO: Self;
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn from_i64(x: i64) -> Self;
}

macro_rules! impl_ref_float {
    ($t:ty) => {
        impl RefFloat for $t {
            const ZERO: Self = 0.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn from_i64(x: i64) -> Self {
                x as $t
            }
        }
    };
}
impl_ref_float!(f64);
impl_ref_float!(f32);

/// Output of the reference (axes: [`crate::tensor`]): `out` is
/// `[token, head, d]`, `lse` is `[head, token]` (vLLM's LSE layout, natural
/// log, sink included).
#[derive(Debug, Clone, PartialEq)]
pub struct RefAttention<F> {
    pub out: Array3<F>,
    pub lse: Array2<F>,
}

/// f64 attention over a paged cache in any layout; `query` is
/// `[token, head, d]` flat. See the module doc.
pub fn paged_attention(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
) -> Result<RefAttention<f64>> {
    paged_attention_in::<f64>(query, cache, meta, cfg)
}

/// The reference in any [`RefFloat`] (f32: the naive baseline of `bench`).
pub fn paged_attention_in<F: RefFloat>(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
) -> Result<RefAttention<F>> {
    cache.check_batch(query, meta, cfg)?;
    let q = ArrayView3::from_shape(query_shape(meta, cfg), query).map_err(shape_error)?;
    paged_attention_shaped(q.mapv(F::from).view(), cache, meta, cfg)
}

/// A flat slice that does not fit the shape its lengths were checked for.
fn shape_error(e: ndarray::ShapeError) -> Error {
    Error::invalid(
        "tensor shape",
        e,
        "must hold exactly the checked number of elements",
    )
}

/// `[num_tokens, num_heads, head_size]`: the query's and the output's shape.
fn query_shape(meta: &AttentionMetadata, cfg: &AttnConfig) -> (usize, usize, usize) {
    (meta.num_actual_tokens(), cfg.num_heads(), cfg.head_size())
}

/// The reference for a query already in `F`, `[token, head, d]` (the MLA
/// reference's absorbed query, computed in f64, enters here unrounded).
///
/// Sum order: `q . k_t` is summed over `d` in order and `o` accumulates the
/// keys in position order, as the flat loops this replaced did, so every
/// result is bit-identical to theirs (f32 instance, `bench --cpu`'s
/// baseline, included). A `dot` here would change last bits: no test pins
/// them to a value, but `reference_is_bit_identical_across_kv_layouts`
/// needs one fixed order whatever the layout, which this keeps. Rows run in
/// parallel; each (token, head) is one task with its own output, so any
/// thread count gives the same bits.
pub fn paged_attention_shaped<F: RefFloat>(
    query: ArrayView3<'_, F>,
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
) -> Result<RefAttention<F>> {
    let shape = query_shape(meta, cfg);
    if query.dim() != shape {
        return Err(Error::invalid(
            "query shape",
            format!("{:?}", query.shape()),
            format!("must be [num_tokens, num_heads, head_size] = {shape:?}"),
        ));
    }
    cache.check_batch_len(query.len(), meta, cfg)?;
    let (t_total, hq, d) = shape;
    let (hkv, qpk) = (cfg.num_kv_heads(), cfg.queries_per_kv());
    let mut out = Array3::from_elem(shape, F::ZERO);
    let mut lse = Array2::from_elem((hq, t_total), F::NEG_INFINITY);
    let (k_scale, v_scale) = if cfg.kv_dtype().is_fp8() {
        (cfg.k_scale(), cfg.v_scale())
    } else {
        (1.0, 1.0)
    };
    let scale = F::from(cfg.scale());
    let softcap = cfg.softcap().map(F::from);

    for i in 0..meta.num_reqs() {
        let (rows, s_len, ctx) = (meta.query_range(i), meta.seq_len(i), meta.context_len(i));
        if rows.is_empty() {
            continue;
        }
        // Dequantized K and V of this request, `[kv_head, pos, d]`, gathered once.
        let mut k = Array3::from_elem((hkv, s_len, d), F::ZERO);
        let mut v = k.clone();
        for t in 0..s_len {
            let (block, row) = meta.kv_location(i, t);
            Zip::indexed(k.slice_mut(s![.., t, ..]))
                .and(v.slice_mut(s![.., t, ..]))
                .for_each(|(g, x), k, v| {
                    *k = F::from(cache.k_at(block, row, g, x) * k_scale);
                    *v = F::from(cache.v_at(block, row, g, x) * v_scale);
                });
        }
        // Indexed by (j, h): row j of this request, query head h.
        Zip::indexed(out.slice_mut(s![rows.clone(), .., ..]).lanes_mut(Axis(2)))
            .and(lse.slice_mut(s![.., rows.clone()]).reversed_axes())
            .and(query.slice(s![rows, .., ..]).lanes(Axis(2)))
            .par_for_each(|(j, h), mut o, lse, q| {
                let p = ctx + j;
                // The hot loop runs on rows of slices: a view per key would
                // cost a third more time. Every array here is row-major, so
                // `flat` borrows (no copy).
                let (kg, vg) = (
                    k.index_axis(Axis(0), h / qpk),
                    v.index_axis(Axis(0), h / qpk),
                );
                let (q, kg, vg) = (q.flat(), kg.flat(), vg.flat());
                let slope = cfg.alibi_slopes().as_ref().map(|s| F::from(s[h]));
                let sink = cfg.sinks().as_ref().map(|s| F::from(s[h]));
                let mut scores = Vec::new();
                let visible_keys = kg
                    .chunks_exact(d)
                    .zip(vg.chunks_exact(d))
                    .enumerate()
                    .filter(|&(t, _)| visible(t, p, meta.causal(), cfg.sliding_window()));
                for (t, (kt, vt)) in visible_keys {
                    let dot = q.iter().zip(kt).fold(F::ZERO, |a, (&x, &y)| a + x * y);
                    let mut s = dot * scale;
                    if let Some(c) = softcap {
                        s = c * (s / c).tanh();
                    }
                    if let Some(slope) = slope {
                        s = s + slope * F::from_i64(t as i64 - p as i64);
                    }
                    scores.push((vt, s));
                }
                let m = scores
                    .iter()
                    .map(|&(_, s)| s)
                    .chain(sink)
                    .fold(F::NEG_INFINITY, |a, b| if b > a { b } else { a });
                if m == F::NEG_INFINITY {
                    return; // nothing visible and no sink: o = 0, lse = -inf
                }
                let mut l = sink.map_or(F::ZERO, |s| (s - m).exp());
                let mut acc = vec![F::ZERO; d];
                for &(vt, s) in &scores {
                    let w = (s - m).exp();
                    l = l + w;
                    acc.iter_mut().zip(vt).for_each(|(a, &x)| *a = *a + w * x);
                }
                Zip::from(&mut o)
                    .and(&ArrayView1::from(&acc))
                    .for_each(|o, &a| *o = a / l);
                *lse = m + l.ln();
            });
    }
    Ok(RefAttention { out, lse })
}

/// Absorbed MLA decode (vllm-backends.md §20.1) as MQA: one latent "kv head"
/// of width `kv_lora_rank + rope` is both K and V, and the output keeps the
/// first `kv_lora_rank` dims (c_kv). `query` is `[seq, head, d]` with
/// `d` = `L + R`, `kv_cache` `[block, slot, d]`; one query token per
/// sequence. Returns `[seq, head, c]`, `c` < `L` (axes: [`crate::tensor`]).
/// The arguments mirror vLLM's `decode_attention_fwd`.
#[allow(clippy::too_many_arguments)]
pub fn mla_decode(
    query: &[f32],
    kv_cache: &[f32],
    block_table: &BlockTableTensor,
    seq_lens: &[i32],
    num_heads: usize,
    kv_lora_rank: usize,
    block_size: usize,
    scale: f32,
) -> Result<Array3<f64>> {
    let b = seq_lens.len();
    let width = query.len().checked_div(b * num_heads).unwrap_or(0);
    if width <= kv_lora_rank || query.len() != b * num_heads * width {
        return Err(Error::invalid(
            "MLA query length",
            query.len(),
            format!("must be num_seqs {b} x num_heads {num_heads} x (kv_lora_rank {kv_lora_rank} + rope dims > 0)"),
        ));
    }
    let num_blocks = kv_cache.len() / (block_size.max(1) * width);
    let layout = KvLayout::new(
        LayoutKind::Nhd,
        num_blocks.max(1),
        block_size,
        1,
        width,
        DType::F32,
    )?;
    if kv_cache.len() != num_blocks * layout.block_numel() || num_blocks == 0 {
        return Err(Error::invalid(
            "MLA kv_cache length",
            kv_cache.len(),
            format!("must be num_blocks x block_size {block_size} x {width}"),
        ));
    }
    let cache = KvCache {
        layout,
        k: kv_cache.to_vec(),
        v: kv_cache.to_vec(),
    };
    let qsl: Vec<i32> = (0..=b as i32).collect();
    let slots = vec![-1; b];
    let meta = AttentionMetadata::new(
        block_size,
        num_blocks,
        qsl,
        seq_lens.to_vec(),
        block_table.clone(),
        slots,
        true,
    )?;
    let cfg = crate::config::AttnConfigBuilder {
        scale,
        ..AttnConfig::builder(num_heads, 1, width, DType::F32)
    }
    .build()?;
    let full = paged_attention(query, &cache, &meta, &cfg)?;
    Ok(full.out.slice(s![.., .., ..kv_lora_rank]).to_owned())
}

/// `merge_attn_states` in f64 (vllm-backends.md §12, arXiv 2501.01005 §2.2):
/// outputs `[token, head, d]`, LSEs `[head, token]` natural log (flat
/// slices, their lengths checked here). An LSE of +inf means
/// "empty" (FA2's convention) and counts as -inf. Both sides empty gives
/// output 0 and LSE -inf, the mathematical merge of two empty sets (vLLM's
/// Triton kernel returns NaN there; no fixture contains that case).
pub fn merge_attn_states(
    prefix: &[f32],
    prefix_lse: &[f32],
    suffix: &[f32],
    suffix_lse: &[f32],
    num_heads: usize,
    head_size: usize,
) -> Result<RefAttention<f64>> {
    let t = prefix_lse.len().checked_div(num_heads).unwrap_or(0);
    let n = t * num_heads * head_size;
    for (what, len, want) in [
        ("prefix_output length", prefix.len(), n),
        ("suffix_output length", suffix.len(), n),
        ("prefix_lse length", prefix_lse.len(), t * num_heads),
        ("suffix_lse length", suffix_lse.len(), t * num_heads),
    ] {
        if len != want || num_heads == 0 || head_size == 0 {
            return Err(Error::invalid(
                what,
                len,
                format!(
                    "must be {want} for {t} tokens x {num_heads} heads x head size {head_size}"
                ),
            ));
        }
    }
    let (out_shape, lse_shape) = ((t, num_heads, head_size), (num_heads, t));
    // The lengths were checked above, so these views cannot fail.
    let (prefix, suffix) = (
        ArrayView3::from_shape(out_shape, prefix).map_err(shape_error)?,
        ArrayView3::from_shape(out_shape, suffix).map_err(shape_error)?,
    );
    let (prefix_lse, suffix_lse) = (
        ArrayView2::from_shape(lse_shape, prefix_lse).map_err(shape_error)?,
        ArrayView2::from_shape(lse_shape, suffix_lse).map_err(shape_error)?,
    );
    let empty_if_inf = |x: f32| {
        if x == f32::INFINITY {
            f64::NEG_INFINITY
        } else {
            x as f64
        }
    };
    let mut out = Array3::zeros(out_shape);
    let mut lse = Array2::from_elem(lse_shape, f64::NEG_INFINITY);
    // Over (token, head): the LSEs are read through their transposes.
    Zip::from(out.lanes_mut(Axis(2)))
        .and(lse.view_mut().reversed_axes())
        .and(prefix.lanes(Axis(2)))
        .and(prefix_lse.t())
        .and(suffix.lanes(Axis(2)))
        .and(suffix_lse.t())
        .for_each(|mut o, lse, po, &pl, so, &sl| {
            let (p, s) = (empty_if_inf(pl), empty_if_inf(sl));
            let m = p.max(s);
            if m == f64::NEG_INFINITY {
                return;
            }
            let (pw, sw) = ((p - m).exp(), (s - m).exp());
            let sum = pw + sw;
            Zip::from(&mut o)
                .and(&po)
                .and(&so)
                .for_each(|o, &x, &y| *o = (x as f64 * pw + y as f64 * sw) / sum);
            *lse = m + sum.ln();
        });
    Ok(RefAttention { out, lse })
}

/// An elementwise tolerance: `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    pub fn new(atol: f64, rtol: f64) -> Self {
        Tolerance { atol, rtol }
    }

    /// Emulator vs the f64 reference on O(1) outputs, from the output
    /// dtype's precision (a few ulp at 1.0 plus P rounded to the V dtype):
    /// bf16 1.6e-2, f16 2e-3, f32 1e-5, fp8 1.25e-1.
    pub fn for_dtype(dtype: DType) -> Self {
        let t = match dtype {
            DType::Bf16 => 1.6e-2,
            DType::F16 => 2e-3,
            DType::F32 => 1e-5,
            DType::Fp8E4m3Fnuz | DType::Fp8E4m3Fn => 1.25e-1,
        };
        Tolerance { atol: t, rtol: t }
    }
}

/// The result of [`compare`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub len: usize,
    /// Largest `|a - e|` (NaN mismatches count as +inf).
    pub max_abs_err: f64,
    /// Largest `|a - e| / |e|` over elements with `e != 0`.
    pub max_rel_err: f64,
    /// Elements outside the tolerance.
    pub mismatches: usize,
    /// Flat index of the first mismatch.
    pub first_mismatch: Option<usize>,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.mismatches == 0
    }
}

/// Compares `actual` with `expected` elementwise. Equal values (including
/// equal infinities) match; NaN matches only NaN (vLLM's kernels return NaN
/// for some inputs and an emulator that mirrors them must too).
/// Either side is a flat slice or a shaped array (compared in row-major
/// order).
pub fn compare<'a, 'e, A, E>(
    actual: impl IntoIterator<Item = &'a A, IntoIter: ExactSizeIterator>,
    expected: impl IntoIterator<Item = &'e E, IntoIter: ExactSizeIterator>,
    tol: Tolerance,
) -> Result<Comparison>
where
    A: Copy + Into<f64> + 'a,
    E: Copy + Into<f64> + 'e,
{
    let (actual, expected) = (actual.into_iter(), expected.into_iter());
    if actual.len() != expected.len() {
        return Err(Error::invalid(
            "compared length",
            actual.len(),
            format!("must equal the expected length {}", expected.len()),
        ));
    }
    let mut c = Comparison {
        len: actual.len(),
        max_abs_err: 0.0,
        max_rel_err: 0.0,
        mismatches: 0,
        first_mismatch: None,
    };
    for (idx, (&a, &e)) in actual.zip(expected).enumerate() {
        let (a, e): (f64, f64) = (a.into(), e.into());
        let (abs, ok) = if a == e || (a.is_nan() && e.is_nan()) {
            (0.0, true)
        } else {
            let abs = (a - e).abs();
            let abs = if abs.is_nan() { f64::INFINITY } else { abs };
            (abs, abs <= tol.atol + tol.rtol * e.abs())
        };
        c.max_abs_err = c.max_abs_err.max(abs);
        if e != 0.0 && e.is_finite() {
            c.max_rel_err = c.max_rel_err.max(abs / e.abs());
        }
        if !ok {
            c.mismatches += 1;
            c.first_mismatch.get_or_insert(idx);
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    /// One request, one kv head, NHD cache of `s` tokens in one block.
    fn single(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d: usize,
        q_len: usize,
        cfg: &AttnConfig,
    ) -> RefAttention<f64> {
        let s = k.len() / (d * cfg.num_kv_heads());
        let layout =
            KvLayout::new(LayoutKind::Nhd, 1, s, cfg.num_kv_heads(), d, cfg.kv_dtype()).unwrap();
        let cache = KvCache {
            layout,
            k: k.to_vec(),
            v: v.to_vec(),
        };
        let table = BlockTableTensor::from_rows(&[vec![0]]);
        let meta = AttentionMetadata::new(
            s,
            1,
            vec![0, q_len as i32],
            vec![s as i32],
            table,
            vec![-1; q_len],
            true,
        )
        .unwrap();
        paged_attention(q, &cache, &meta, cfg).unwrap()
    }

    #[test]
    fn decode_row_is_the_softmax_weighted_mean_of_values() {
        let cfg = crate::config::AttnConfigBuilder {
            scale: 1.0,
            ..AttnConfig::builder(1, 1, 1, DType::F32)
        }
        .build()
        .unwrap();
        let r = single(&[1.0], &[0.0, 1.0], &[10.0, 20.0], 1, 1, &cfg);
        let (w0, w1) = (1.0f64, 1.0f64.exp());
        assert_relative_eq!(
            r.out[[0, 0, 0]],
            (10.0 * w0 + 20.0 * w1) / (w0 + w1),
            max_relative = 1e-15
        );
        assert_relative_eq!(r.lse[[0, 0]], (w0 + w1).ln(), max_relative = 1e-15);
    }

    #[test]
    fn causal_first_row_sees_only_the_first_key() {
        let cfg = AttnConfig::new(1, 1, 1, DType::F32).unwrap();
        let r = single(&[1.0, 1.0], &[0.5, 3.0], &[7.0, -7.0], 1, 2, &cfg);
        assert_eq!(r.out[[0, 0, 0]], 7.0);
        assert!(r.out[[1, 0, 0]] < 0.0);
    }

    #[test]
    fn sliding_window_of_one_sees_only_the_diagonal() {
        let cfg = crate::config::AttnConfigBuilder {
            sliding_window: Some(1),
            ..AttnConfig::builder(1, 1, 1, DType::F32)
        }
        .build()
        .unwrap();
        let r = single(
            &[1.0, 1.0, 1.0],
            &[1.0, 2.0, 3.0],
            &[4.0, 5.0, 6.0],
            1,
            3,
            &cfg,
        );
        assert_eq!(*r.out.flat(), [4.0, 5.0, 6.0]);
    }

    #[test]
    fn sink_adds_exp_sink_to_the_denominator() {
        let cfg = crate::config::AttnConfigBuilder {
            scale: 1.0,
            sinks: Some(vec![0.0]),
            ..AttnConfig::builder(1, 1, 1, DType::F32)
        }
        .build()
        .unwrap();
        let r = single(&[0.0], &[1.0], &[3.0], 1, 1, &cfg);
        assert_relative_eq!(r.out[[0, 0, 0]], 1.5, max_relative = 1e-15); // weights 1 (key) and 1 (sink)
        assert_relative_eq!(r.lse[[0, 0]], 2f64.ln(), max_relative = 1e-15);
    }

    #[test]
    fn softcap_bounds_scores_and_alibi_penalises_distance() {
        let base = crate::config::AttnConfigBuilder {
            scale: 1.0,
            ..AttnConfig::builder(1, 1, 1, DType::F32)
        }
        .build()
        .unwrap();
        let capped = crate::config::AttnConfigBuilder {
            softcap: Some(1.0),
            ..base.to_builder()
        }
        .build()
        .unwrap();
        // Scores 0 and 100: with cap 1 they become 0 and ~tanh(100) = 1.
        let r = single(&[1.0], &[0.0, 100.0], &[0.0, 1.0], 1, 1, &capped);
        assert_relative_eq!(
            r.out[[0, 0, 0]],
            1f64.exp() / (1.0 + 1f64.exp()),
            max_relative = 1e-12
        );
        let alibi = crate::config::AttnConfigBuilder {
            alibi_slopes: Some(vec![2.0]),
            ..base.to_builder()
        }
        .build()
        .unwrap();
        let r = single(&[0.0], &[0.0, 0.0], &[1.0, 0.0], 1, 1, &alibi);
        // Key 0 is one position back: bias -2.
        let w = (-2f64).exp();
        assert_relative_eq!(r.out[[0, 0, 0]], w / (w + 1.0), max_relative = 1e-15);
    }

    #[test]
    fn gqa_heads_read_their_own_kv_head() {
        let cfg = AttnConfig::new(4, 2, 1, DType::F32).unwrap();
        // kv head 0 values 1, kv head 1 values 2 (NHD: [token][head][dim]).
        let r = single(&[1.0; 4], &[0.0, 0.0], &[1.0, 2.0], 1, 1, &cfg);
        assert_eq!(*r.out.flat(), [1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn fp8_cache_is_dequantized_with_its_scale() {
        let cfg = crate::config::AttnConfigBuilder {
            kv_dtype: DType::Fp8E4m3Fn,
            v_scale: 0.5,
            ..AttnConfig::builder(1, 1, 1, DType::F32)
        }
        .build()
        .unwrap();
        let r = single(&[1.0], &[1.0], &[4.0], 1, 1, &cfg);
        assert_eq!(r.out[[0, 0, 0]], 2.0);
    }

    #[test]
    fn merge_with_empty_prefix_is_identity_and_both_empty_is_zero() {
        let r = merge_attn_states(
            &[5.0, 6.0],
            &[f32::NEG_INFINITY, f32::INFINITY],
            &[1.0, 2.0],
            &[0.3, f32::NEG_INFINITY],
            1,
            1,
        )
        .unwrap();
        assert_eq!(*r.out.flat(), [1.0, 0.0]);
        assert_relative_eq!(r.lse[[0, 0]], 0.3f32 as f64);
        assert_eq!(r.lse[[0, 1]], f64::NEG_INFINITY);
    }

    #[test]
    fn compare_counts_mismatches_and_first_index() {
        let c = compare(
            &[1.0f32, 2.0, f32::NAN, f32::INFINITY],
            &[1.0f64, 2.5, 3.0, f64::INFINITY],
            Tolerance::new(0.1, 0.0),
        )
        .unwrap();
        assert_eq!((c.mismatches, c.first_mismatch), (2, Some(1)));
        assert_eq!(c.max_abs_err, f64::INFINITY);
        assert!(compare(&[1.0f32], &[1.0f32, 2.0], Tolerance::new(0.0, 0.0)).is_err());
    }

    #[test]
    fn rejects_query_of_the_wrong_length_naming_it() {
        let cfg = AttnConfig::new(1, 1, 2, DType::F32).unwrap();
        let layout = KvLayout::new(LayoutKind::Nhd, 1, 1, 1, 2, DType::F32).unwrap();
        let cache = KvCache::zeros(layout);
        let meta = AttentionMetadata::new(
            1,
            1,
            vec![0, 1],
            vec![1],
            BlockTableTensor::from_rows(&[vec![0]]),
            vec![0],
            true,
        )
        .unwrap();
        let e = paged_attention(&[0.0; 3], &cache, &meta, &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("query length 3") && e.contains("= 2"), "{e}");
    }
}
