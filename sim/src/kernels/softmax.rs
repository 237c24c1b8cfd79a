//! The building blocks every attention kernel shares: the score of one
//! (query, key) pair with its masks, and the online-softmax row state.
//! One definition each, used by unified attention, prefix prefill, paged
//! decode, flash varlen and MLA alike, and mirrored by `kernels/portable.h`.
//!
//! Online softmax over KV tiles, per query row i (numerics.md §4), in the
//! notation of FlashAttention-2 (Algorithm 1) and vLLM's Triton kernels, base 2.
//! `RowState { m, l, acc }` holds `(m_i, l_i, O_i)`:
//! ```text
//! m_i = -inf (or the sink logit * LOG2E), l_i = 0 (or 1 with a sink), O_i = 0
//! for each KV tile j, ascending:
//!     S_ij  = score(q_i, k_j)                        // base-2 scaled, -inf if masked
//!     m_new = max(m_i, rowmax(S_ij))
//!     m_ref = m_new > -inf ? m_new : 0              // a row that has seen no key yet
//!     alpha = exp2c(m_i - m_ref)
//!     P_ij  = exp2c(S_ij - m_ref)
//!     l_i   = fma(l_i, alpha, rowsum(P_ij))          // rowsum: ((P_0 + P_1) + P_2) + ...,
//!                                                    // f32 from 0, ascending j, unrounded P
//!     O_i   = O_i * alpha + round(P_ij) V_j          // per d one fma chain, ascending j;
//!                                                    // P_ij == 0 skipped: a masked key
//!                                                    // never touches O_i
//!     m_i   = m_new
//! out_i = O_i / l_i (0 when l_i == 0), lse2_i = m_i + log2c(l_i) (-inf when l_i == 0)
//! ```
//! [`RowState::update`] is those seven lines for one row;
//! [`RowState::update_rows`] runs them for several rows against the same
//! tile (every row its own step; rows share each V load, as a GPU program's
//! rows share the tile in shared memory). How the CPU runs them fast
//! (lanes, register blocks, SIMD paths) lives in `simd.rs`, beside them.

use super::simd::{self, SimdPath};
use crate::numerics::{exp2c, log2c, softcap_with, DType, SoftcapFormula, LN2, LOG2E};
use attnlab_shared::error::{Error, Result};

/// Per-layer score parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreParams {
    /// Softmax scale (natural), e.g. 1/sqrt(head_size).
    pub scale: f32,
    /// `scale * LOG2E`, computed once.
    pub scale_log2: f32,
    pub softcap: Option<f32>,
    /// How the kernel spells the soft-cap's tanh (only read with `softcap`).
    pub softcap_formula: SoftcapFormula,
}

impl ScoreParams {
    /// With the contract's stable tanh ([`SoftcapFormula::Tanh`]).
    pub fn new(scale: f32, softcap: Option<f32>) -> Self {
        ScoreParams {
            scale,
            scale_log2: crate::numerics::softmax_scale_log2(scale),
            softcap,
            softcap_formula: SoftcapFormula::Tanh,
        }
    }

    /// The same parameters with the soft-cap spelled as `formula`.
    pub fn with_softcap_formula(self, formula: SoftcapFormula) -> Self {
        ScoreParams {
            softcap_formula: formula,
            ..self
        }
    }

    /// Base-2 score from a raw dot product. With soft-cap, the cap applies to
    /// the natural score `dot * scale` (`apply_softcap`, spelled as
    /// `softcap_formula`), then * LOG2E. `alibi_bias` is the natural-log
    /// ALiBi term `slope * (t - p)` (0 if none).
    #[inline]
    pub fn score(&self, dot: f32, alibi_bias: f32) -> f32 {
        let s = match self.softcap {
            None => return (dot * self.scale_log2) + alibi_bias * LOG2E,
            Some(c) => softcap_with(
                self.softcap_formula,
                dot * self.scale,
                dot * self.scale_log2,
                c,
            ),
        };
        (s + alibi_bias) * LOG2E
    }

    /// `xs[j] = self.score(xs[j], 0.0)` for every j (no ALiBi bias), with
    /// the soft-cap test out of the loop so the plain case vectorises.
    #[inline]
    pub fn score_slice(&self, xs: &mut [f32]) {
        match self.softcap {
            None => xs
                .iter_mut()
                .for_each(|x| *x = (*x * self.scale_log2) + 0.0 * LOG2E),
            Some(_) => xs.iter_mut().for_each(|x| *x = self.score(*x, 0.0)),
        }
    }
}

/// `q . k` as one fma chain in ascending dimension order, starting at 0.
#[inline]
pub fn dot(q: &[f32], k: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in q.iter().zip(k) {
        acc = a.mul_add(*b, acc);
    }
    acc
}

/// Whether key position `t` is visible from query position `p`:
/// causal `t <= p`, sliding window `p - t < window` (fixture-format.md).
#[inline]
pub fn visible(t: usize, p: usize, causal: bool, window: Option<usize>) -> bool {
    if causal && t > p {
        return false;
    }
    match window {
        Some(w) => p < t + w, // p - t < w without underflow (t may exceed p when non-causal)
        None => true,
    }
}

/// Keys whose P one pass of the step holds at a time (the size of its
/// stack buffers; a longer tile runs in passes of this many keys, ascending).
pub const PV_KEYS: usize = 128;
/// Accumulator lanes the one-row PV loop keeps in registers (4 AVX2 vectors).
pub const PV_LANES: usize = 32;
/// Rows [`RowState::update_rows`] steps together (they share each V load).
pub const ROW_BLOCK: usize = 4;
/// Rows the AVX-512 path steps together (8 rows x 32 lanes of PV
/// accumulators in 16 of its 32 registers; 8 interleaved row sums).
pub const ROW_BLOCK_WIDE: usize = 8;

/// Keys per register block of [`lane_dots`] (4 AVX2 vectors).
pub const QK_LANES: usize = 32;

/// The dot-product micro-kernel shared by the QK of every attention kernel
/// and the MLA projections: `acc[j] = sum_i x[i] * w[i * stride + col + j]`,
/// one f32 lane per output j, an fma chain from 0 over i ascending (the
/// chain of [`dot`]`(x, column j)`). Lanes are independent, so blocks of
/// [`QK_LANES`] (then 8) lanes keep their accumulators in registers over
/// the whole i loop; no lane's order changes.
#[inline]
pub fn lane_dots(x: &[f32], w: &[f32], stride: usize, col: usize, acc: &mut [f32]) {
    let n = acc.len();
    simd::dots_rows(SimdPath::active(), &[x], w, stride, col, n, acc, n);
}

/// What a kernel keeps as the running max after a KV tile that is fully
/// masked for a row that has seen no key yet (`m_new = -inf`). Every kernel
/// shifts the exponents by 0 there (`m_ref`, the NaN guard); they differ in
/// whether that 0 also becomes the row's max, which later tiles then take
/// as a floor: `max(0, tile max)`. With negative scores that floor
/// underflows P (an f16 P of a score below about -16.6 rounds to 0, and the
/// row's output becomes 0 instead of V; below about -103 even l becomes 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MaskedRowMax {
    /// `M` stays -inf (vLLM 0.34's `softmax_step` with `safe_m_j`; prefix
    /// prefill and paged_attention_2d's `where(m == -inf)` guards): exact.
    #[default]
    KeepNegInf,
    /// `M = where(m_new > -inf, m_new, 0)` (the seed era's `softmax_step`,
    /// `vllm/v1/attention/ops/triton_quant_kv/_helpers.py` @86a153bd;
    /// AITER's unified kernels): a NaN max also becomes 0, as `where` does.
    KeepZero,
}

impl MaskedRowMax {
    /// The running max a row keeps after a tile whose new max is `m_new`.
    #[inline]
    pub fn apply(self, m_new: f32) -> f32 {
        match self {
            // where(m_new > -inf, m_new, 0): NaN and -inf both fail the test.
            MaskedRowMax::KeepZero if m_new.is_nan() || m_new == f32::NEG_INFINITY => 0.0,
            _ => m_new,
        }
    }
}

/// Online-softmax state of one query row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowState {
    pub m: f32,
    pub l: f32,
    pub acc: Vec<f32>,
}

impl RowState {
    /// `sink` is the natural-log sink logit of this head, if any: it starts
    /// the row as if one extra key with score `sink` and value 0 came first.
    pub fn new(head_size: usize, sink: Option<f32>) -> Self {
        match sink {
            Some(s) => RowState {
                m: s * LOG2E,
                l: 1.0,
                acc: vec![0.0; head_size],
            },
            None => RowState {
                m: f32::NEG_INFINITY,
                l: 0.0,
                acc: vec![0.0; head_size],
            },
        }
    }

    /// The online-softmax step of this row against one KV tile (the module
    /// doc's seven lines). `scores[j]` are `S_ij`, base 2, -inf where masked;
    /// `value(j)` is `V_j` (already dequantized, at least `acc.len()` long);
    /// P is rounded to `p_dtype` (the V dtype) before the PV product.
    #[inline]
    pub fn update<'a>(
        &mut self,
        scores: &[f32],
        value: impl Fn(usize) -> &'a [f32],
        p_dtype: DType,
    ) {
        online_softmax_step([self], [scores], &value, p_dtype, &mut PBuffers::new());
    }

    /// [`RowState::update`] for every row of `rows` against the same tile of
    /// `n` keys: row r's scores are `scores[r * stride..][..n]`. Bit for bit
    /// the rows' own `update`s: the rows only share the loads of V.
    pub fn update_rows<'a>(
        rows: &mut [RowState],
        scores: &[f32],
        stride: usize,
        n: usize,
        value: impl Fn(usize) -> &'a [f32],
        p_dtype: DType,
    ) {
        // The whole step compiled for the active path's registers (the
        // sums, the P rounding and the rescale too, not only the simd::
        // kernels); row blocks as wide as that path's PV kernel keeps in
        // registers. Rows are independent: every width gives the same bits.
        match SimdPath::active() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `supported()` checked the features the function enables.
            p @ SimdPath::Avx512 if p.supported() => unsafe {
                update_rows_avx512(rows, scores, stride, n, &value, p_dtype)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            p @ SimdPath::Avx2 if p.supported() => unsafe {
                update_rows_avx2(rows, scores, stride, n, &value, p_dtype)
            },
            _ => update_rows_body::<ROW_BLOCK>(rows, scores, stride, n, &value, p_dtype),
        }
    }

    /// Whether the step against a tile whose scores are all -inf leaves
    /// this row's bits unchanged, so a kernel may skip it: true unless the
    /// running max is +inf. With all -inf scores `m_new = m_i` and every
    /// `P = exp2c(-inf) = 0` (no PV fma, `rowsum = +0`); `alpha` is
    /// `exp2c(0) = 1` for a finite max (`acc * 1`, `fma(l, 1, +0)`: the same
    /// bits, NaN included) and `exp2c(-inf) = 0` for a -inf max, where acc
    /// is +0 or NaN and l is +0 or NaN (only a kept key, which makes the max
    /// finite, or a NaN score writes them), which `* 0` and `fma(l, 0, +0)`
    /// keep. A +inf max gives `alpha = exp2c(NaN)`: not an identity.
    /// `all_masked_step_is_an_identity_unless_the_max_is_inf` checks it.
    #[inline]
    pub fn all_masked_step_is_identity(&self) -> bool {
        self.m != f32::INFINITY
    }

    /// `acc / l` (0 for an empty row), not yet rounded to the output dtype.
    pub fn normalized(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.acc.len()];
        self.normalized_into(&mut out);
        out
    }

    /// [`RowState::normalized`] written into `out` (`acc.len()` long).
    pub fn normalized_into(&self, out: &mut [f32]) {
        if self.l == 0.0 {
            out.fill(0.0);
            return;
        }
        for (o, a) in out.iter_mut().zip(&self.acc) {
            *o = a / self.l;
        }
    }

    /// Base-2 log-sum-exp of the row: `m + log2c(l)`; -inf when empty.
    pub fn lse2(&self) -> f32 {
        if self.l == 0.0 {
            return f32::NEG_INFINITY;
        }
        self.m + log2c(self.l)
    }

    /// Natural-log LSE, as FA varlen and merge_attn_states exchange it:
    /// `lse2 * LN2`, one multiply (numerics.md §3); -inf when empty.
    pub fn lse(&self) -> f32 {
        self.lse2() * LN2
    }
}

/// [`RowState::update_rows`] with the AVX-512 registers: blocks of
/// [`ROW_BLOCK_WIDE`] rows (8 rows x 32 lanes of PV accumulators).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn update_rows_avx512<'a>(
    rows: &mut [RowState],
    scores: &[f32],
    stride: usize,
    n: usize,
    value: &impl Fn(usize) -> &'a [f32],
    p_dtype: DType,
) {
    // Blocks of 16 rows on the lanes of one register (simd::softmax_step16),
    // the rest (or a tile it does not take) in blocks of ROW_BLOCK_WIDE.
    let path = SimdPath::Avx512;
    let mut r0 = 0;
    while r0 + 16 <= rows.len() {
        let block = &mut rows[r0..r0 + 16];
        let mut m: [f32; 16] = std::array::from_fn(|r| block[r].m);
        let mut l: [f32; 16] = std::array::from_fn(|r| block[r].l);
        let mut it = block.iter_mut();
        let mut acc: [&mut [f32]; 16] =
            std::array::from_fn(|_| it.next().expect("16 rows").acc.as_mut_slice());
        let s = &scores[r0 * stride..];
        if !simd::softmax_step16(path, s, stride, n, &mut m, &mut l, &mut acc, value, p_dtype) {
            break;
        }
        for (row, (m, l)) in block.iter_mut().zip(m.into_iter().zip(l)) {
            row.m = m;
            row.l = l;
        }
        r0 += 16;
    }
    update_rows_body::<ROW_BLOCK_WIDE>(
        &mut rows[r0..],
        &scores[(r0 * stride).min(scores.len())..],
        stride,
        n,
        value,
        p_dtype,
    )
}

/// [`RowState::update_rows`] with the AVX2 + FMA registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_rows_avx2<'a>(
    rows: &mut [RowState],
    scores: &[f32],
    stride: usize,
    n: usize,
    value: &impl Fn(usize) -> &'a [f32],
    p_dtype: DType,
) {
    update_rows_body::<ROW_BLOCK>(rows, scores, stride, n, value, p_dtype)
}

/// Blocks of `R` rows, then one row at a time: each row its own step.
#[inline(always)]
fn update_rows_body<'a, const R: usize>(
    rows: &mut [RowState],
    scores: &[f32],
    stride: usize,
    n: usize,
    value: &impl Fn(usize) -> &'a [f32],
    p_dtype: DType,
) {
    let s_row = |r: usize| &scores[r * stride..][..n];
    let mut blocks = rows.chunks_exact_mut(R);
    let mut r0 = 0;
    // One set of P buffers for every block (not zeroed per block).
    let mut p_block = PBuffers::<R>::new();
    for block in &mut blocks {
        let mut it = block.iter_mut();
        let states: [&mut RowState; R] = std::array::from_fn(|_| it.next().expect("R rows"));
        let s = std::array::from_fn(|r| s_row(r0 + r));
        online_softmax_step(states, s, value, p_dtype, &mut p_block);
        r0 += R;
    }
    let mut p_row = PBuffers::<1>::new();
    for state in blocks.into_remainder() {
        online_softmax_step([state], [s_row(r0)], value, p_dtype, &mut p_row);
        r0 += 1;
    }
}

/// The online-softmax step (module doc) of `R` rows against one KV tile,
/// line for line; every row runs its own step.
#[inline(always)]
fn online_softmax_step<'a, const R: usize>(
    mut rows: [&mut RowState; R],
    s: [&[f32]; R],
    value: &impl Fn(usize) -> &'a [f32],
    p_dtype: DType,
    buf: &mut PBuffers<R>,
) {
    let m_i: [f32; R] = std::array::from_fn(|r| rows[r].m);
    // m_new = max(m_i, rowmax(S_ij))
    let m_new: [f32; R] = std::array::from_fn(|r| m_i[r].max(simd::fold_max(s[r])));
    // m_ref = m_new > -inf ? m_new : 0
    let m_ref = m_new.map(|m| if m > f32::NEG_INFINITY { m } else { 0.0 });
    // alpha = exp2c(m_i - m_ref)
    let alpha: [f32; R] = std::array::from_fn(|r| exp2c(m_i[r] - m_ref[r]));
    let rowsum = {
        let mut o_i = rows.each_mut().map(|row| row.acc.as_mut_slice());
        // O_i = O_i * alpha (in the first PV pass, as it loads O_i);
        // P_ij = exp2c(S_ij - m_ref); O_i += round(P_ij) V_j; rowsum(P_ij)
        exp_pv_rowsum(&mut o_i, s, m_ref, alpha, value, p_dtype, buf)
    };
    for (r, row) in rows.iter_mut().enumerate() {
        // l_i = fma(l_i, alpha, rowsum(P_ij))
        row.l = row.l.mul_add(alpha[r], rowsum[r]);
        // m_i = m_new
        row.m = m_new[r];
    }
}

/// The step's middle lines for `R` rows: `P_ij = exp2c(S_ij - m_ref)`,
/// `O_i += round(P_ij) V_j` (keys with `P_ij == 0` skipped) and
/// `rowsum(P_ij)` (one f32 chain per row from 0, ascending j, unrounded P),
/// in passes of [`PV_KEYS`] keys so P lives in stack buffers; `O_i *
/// alpha` happens as the first pass loads O_i. The rows'
/// independent chains run side by side: the sums interleaved
/// ([`simd::row_sums`]), the PV fmas sharing each V load ([`simd::pv_rows`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn exp_pv_rowsum<'a, const R: usize>(
    o_i: &mut [&mut [f32]; R],
    s: [&[f32]; R],
    m_ref: [f32; R],
    alpha: [f32; R],
    value: &impl Fn(usize) -> &'a [f32],
    p_dtype: DType,
    buf: &mut PBuffers<R>,
) -> [f32; R] {
    let path = SimdPath::active();
    let n = s[0].len();
    let mut rowsum = [0.0f32; R];
    let PBuffers { p, p_rounded } = buf;
    if n == 0 {
        // No PV pass to fold the rescale into.
        for (o, a) in o_i.iter_mut().zip(alpha) {
            simd::scale(o, a);
        }
    }
    for j0 in (0..n).step_by(PV_KEYS) {
        let len = PV_KEYS.min(n - j0);
        // P and round(P) in one pass, and whether a key is skipped.
        let skips = simd::exp2c_round_rows(
            path,
            s.map(|s| &s[j0..j0 + len]),
            m_ref,
            len,
            p_dtype,
            p,
            p_rounded,
        );
        rowsum = simd::row_sums(rowsum, p, len);
        let rescale = (j0 == 0).then_some(alpha);
        simd::pv_rows_skipping(
            path,
            o_i,
            rescale,
            p_rounded,
            p,
            len,
            |k| value(j0 + k),
            skips,
        );
    }
    rowsum
}

/// A row block's P for one pass of [`PV_KEYS`] keys: unrounded (the row
/// sums, the skips) and rounded to the P dtype (the PV product). Only the
/// pass's first `len` keys are read, each after it was written.
struct PBuffers<const R: usize> {
    p: [[f32; PV_KEYS]; R],
    p_rounded: [[f32; PV_KEYS]; R],
}

impl<const R: usize> PBuffers<R> {
    fn new() -> Self {
        PBuffers {
            p: [[0.0; PV_KEYS]; R],
            p_rounded: [[0.0; PV_KEYS]; R],
        }
    }
}

/// An attention result with its log-sum-exp: what `flash_attn_varlen_func(...,
/// return_lse=True)` returns and `merge_attn_states` consumes and produces.
/// Shared by every kernel family that merges partial attentions (AITER FA
/// extend, MLA chunked prefill, split-KV combines).
///
/// # Invariants
///
/// The fields are private and [`OutLse::new`] checks them, so a merge or a
/// GPU upload reads both buffers by the shape without checking again: `out`
/// holds exactly `num_tokens * num_heads * head_size` values and `lse`
/// exactly `num_heads * num_tokens`. The `_mut` accessors hand out slices,
/// which keep those lengths.
#[derive(Debug, Clone, PartialEq)]
pub struct OutLse {
    num_tokens: usize,
    num_heads: usize,
    head_size: usize,
    /// `[num_tokens, num_heads, head_size]`, values exact in the output dtype.
    out: Vec<f32>,
    /// `[num_heads, num_tokens]` (FA's head-major convention), f32, natural
    /// log; -inf for a row that saw no key.
    lse: Vec<f32>,
}

impl OutLse {
    /// Wraps `out` and `lse`, checking both lengths against the shape.
    pub fn new(
        num_tokens: usize,
        num_heads: usize,
        head_size: usize,
        out: Vec<f32>,
        lse: Vec<f32>,
    ) -> Result<Self> {
        let (n_out, n_lse) = (num_tokens * num_heads * head_size, num_heads * num_tokens);
        if out.len() != n_out {
            return Err(Error::invalid(
                "output length",
                out.len(),
                format!(
                    "[tokens {num_tokens}, heads {num_heads}, head_size {head_size}] needs {n_out}"
                ),
            ));
        }
        if lse.len() != n_lse {
            return Err(Error::invalid(
                "lse length",
                lse.len(),
                format!("[heads {num_heads}, tokens {num_tokens}] needs {n_lse}"),
            ));
        }
        Ok(OutLse {
            num_tokens,
            num_heads,
            head_size,
            out,
            lse,
        })
    }

    /// The result of attending to no key at all: output 0, lse -inf.
    pub fn empty(num_tokens: usize, num_heads: usize, head_size: usize) -> Self {
        OutLse {
            num_tokens,
            num_heads,
            head_size,
            out: vec![0.0; num_tokens * num_heads * head_size],
            lse: vec![f32::NEG_INFINITY; num_heads * num_tokens],
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }
    pub fn head_size(&self) -> usize {
        self.head_size
    }
    /// `[num_tokens, num_heads, head_size]`, values exact in the output dtype.
    pub fn out(&self) -> &[f32] {
        &self.out
    }
    /// `[num_heads, num_tokens]` (head-major), natural log; -inf for a row
    /// that saw no key.
    pub fn lse(&self) -> &[f32] {
        &self.lse
    }
    /// The output, to write in place (its length cannot change).
    pub fn out_mut(&mut self) -> &mut [f32] {
        &mut self.out
    }
    /// The lse, to write in place (its length cannot change).
    pub fn lse_mut(&mut self) -> &mut [f32] {
        &mut self.lse
    }
    /// The output buffer, giving up the lse.
    pub fn into_out(self) -> Vec<f32> {
        self.out
    }
    /// `(out, lse)`, giving up the shape.
    pub fn into_parts(self) -> (Vec<f32>, Vec<f32>) {
        (self.out, self.lse)
    }
}

/// vLLM's Triton kernels' `+ 1e-10` in the final `acc / (L + 1e-10)`
/// (prefix prefill `_fwd_kernel`, `kernel_paged_attention_2d`).
pub const TRITON_L_EPS: f32 = 1e-10;

impl RowState {
    /// `acc / (l + eps)` as the Triton epilogues divide (0 for an empty row:
    /// acc is 0 there), not yet rounded to the output dtype.
    pub fn normalized_eps(&self, eps: f32) -> Vec<f32> {
        let mut out = vec![0.0; self.acc.len()];
        self.normalized_eps_into(eps, &mut out);
        out
    }

    /// [`RowState::normalized_eps`] written into `out` (`acc.len()` long).
    pub fn normalized_eps_into(&self, eps: f32, out: &mut [f32]) {
        let denom = self.l + eps;
        for (o, a) in out.iter_mut().zip(&self.acc) {
            *o = a / denom;
        }
    }
}

/// A K or V element as vLLM's Triton kernels load it: an fp8 cache value is
/// widened, multiplied by its per-tensor scale in f32 and cast to the query
/// dtype (`(k.to(f32) * k_scale).to(Q.dtype)`); any other cache already
/// holds values of the query dtype and loads unchanged.
#[inline]
pub fn dequant_kv(x: f32, scale: f32, kv_dtype: DType, q_dtype: DType) -> f32 {
    if kv_dtype.is_fp8() {
        q_dtype.round(x * scale)
    } else {
        x
    }
}

/// One KV tile gathered into contiguous buffers, so the QK and PV loops of a
/// kernel run over plain slices (no layout math in the innermost loop).
/// K is stored transposed (`k_t[d * tile_size + j]`) so that [`KvTile::qk`]
/// vectorises across keys while every key's dot stays one fma chain in
/// ascending d (bit-identical to [`dot`]); V is row-major (`v[j * D + d]`),
/// the shape `RowState::update` reads.
///
/// Paged gathers read through the cache's `KvLayout`, so one kernel serves
/// the NHD, x-packed (ROCM_ATTN) and shuffled (AITER) layouts. Every layout
/// is separable: `offset(b, r, h, d) = offset(b, r, h, 0) + dim_off[d]`, with
/// `dim_off` computed once from the layout's own formula.
#[derive(Debug, Clone)]
pub struct KvTile {
    pub tile_size: usize,
    pub head_size: usize,
    /// Keys gathered (<= tile_size); the tail of the buffers is stale.
    pub len: usize,
    k_t: Vec<f32>,
    v: Vec<f32>,
}

impl KvTile {
    pub fn new(tile_size: usize, head_size: usize) -> Self {
        KvTile {
            tile_size,
            head_size,
            len: 0,
            k_t: vec![0.0; tile_size * head_size],
            v: vec![0.0; tile_size * head_size],
        }
    }

    /// Gathers keys `locs[j] = (physical block, row in block)` of kv head
    /// `kv_head`, mapping every stored K element through `k_load` and V
    /// through `v_load` (e.g. [`dequant_kv`]). `locs.len() <= tile_size`;
    /// the caller validated blocks and heads against the cache.
    pub fn gather_paged(
        &mut self,
        cache: &crate::cache::KvCache,
        dims: &DimOffsets,
        kv_head: usize,
        locs: &[(usize, usize)],
        k_load: impl Fn(f32) -> f32,
        v_load: impl Fn(f32) -> f32,
    ) {
        self.gather(cache, dims, kv_head, locs, k_load, v_load, false);
    }

    /// [`KvTile::gather_paged`] with K and V loaded as stored (what the
    /// identity maps give, bit for bit), through 8x8 register transposes
    /// where the layout keeps 8 dims together and whole-row copies where
    /// it keeps V rows contiguous.
    pub fn gather_paged_exact(
        &mut self,
        cache: &crate::cache::KvCache,
        dims: &DimOffsets,
        kv_head: usize,
        locs: &[(usize, usize)],
    ) {
        self.gather(cache, dims, kv_head, locs, |x| x, |x| x, true);
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn gather(
        &mut self,
        cache: &crate::cache::KvCache,
        dims: &DimOffsets,
        kv_head: usize,
        locs: &[(usize, usize)],
        k_load: impl Fn(f32) -> f32,
        v_load: impl Fn(f32) -> f32,
        exact: bool,
    ) {
        let (tile, d) = (self.tile_size, self.head_size);
        debug_assert!(locs.len() <= tile);
        self.len = locs.len();
        let path = SimdPath::active();
        // K^T eight keys at a time: each dim's row of the tile gets eight
        // contiguous values per pass (one cache line touched, not eight).
        const G: usize = 8;
        let mut j0 = 0;
        while j0 + G <= locs.len() {
            let kb: [usize; G] = std::array::from_fn(|i| {
                let (block, row) = locs[j0 + i];
                cache.layout.k_offset(block, row, kv_head, 0)
            });
            let done = if exact {
                simd::gather_kt8(path, &cache.k, &kb, &dims.k, &mut self.k_t, tile, j0)
            } else {
                0
            };
            for (dd, &ko) in dims.k.iter().enumerate().skip(done) {
                let dst: &mut [f32; G] = (&mut self.k_t[dd * tile + j0..dd * tile + j0 + G])
                    .try_into()
                    .expect("G keys");
                for (o, &b) in dst.iter_mut().zip(&kb) {
                    *o = k_load(cache.k[b + ko]);
                }
            }
            j0 += G;
        }
        for (j, &(block, row)) in locs.iter().enumerate().skip(j0) {
            let kb = cache.layout.k_offset(block, row, kv_head, 0);
            for (dd, &ko) in dims.k.iter().enumerate() {
                self.k_t[dd * tile + j] = k_load(cache.k[kb + ko]);
            }
        }
        let v_rows = exact && dims.v.iter().enumerate().all(|(i, &o)| o == i);
        // A layout that keeps a dim's values of consecutive keys together
        // (x-packed, shuffled V): eight keys at a time through transposes.
        let mut j0 = 0;
        if exact && !v_rows {
            while j0 + G <= locs.len() {
                let vb: [usize; G] = std::array::from_fn(|i| {
                    let (block, row) = locs[j0 + i];
                    cache.layout.v_offset(block, row, kv_head, 0)
                });
                let done = match vb.iter().enumerate().all(|(i, &b)| b == vb[0] + i) {
                    true => simd::gather_v8(path, &cache.v, vb[0], &dims.v, &mut self.v, d, j0),
                    false => 0, // the keys straddle blocks: one by one
                };
                for (i, &b) in vb.iter().enumerate() {
                    let vrow = &mut self.v[(j0 + i) * d..(j0 + i + 1) * d];
                    for (out, &vo) in vrow.iter_mut().zip(&dims.v).skip(done) {
                        *out = cache.v[b + vo];
                    }
                }
                j0 += G;
            }
        }
        for (j, &(block, row)) in locs.iter().enumerate().skip(j0) {
            let vb = cache.layout.v_offset(block, row, kv_head, 0);
            let vrow = &mut self.v[j * d..(j + 1) * d];
            if v_rows {
                vrow.copy_from_slice(&cache.v[vb..vb + d]);
            } else {
                for (out, &vo) in vrow.iter_mut().zip(&dims.v) {
                    *out = v_load(cache.v[vb + vo]);
                }
            }
        }
    }

    /// Hints the CPU to fetch the K and V of keys `locs` of kv head
    /// `kv_head` (e.g. the next tile's, while this one is computed) where
    /// the layout keeps a key's row contiguous (NHD: one run of D values,
    /// on its own 4 KiB page per key, which the hardware prefetchers do
    /// not run ahead into). Changes nothing; a no-op for other layouts.
    pub fn prefetch_paged(
        cache: &crate::cache::KvCache,
        dims: &DimOffsets,
        kv_head: usize,
        locs: &[(usize, usize)],
    ) {
        let d = dims.k.len();
        let rows = |o: &[usize]| o.iter().enumerate().all(|(i, &x)| x == i);
        let (k_rows, v_rows) = (rows(&dims.k), rows(&dims.v));
        for &(block, row) in locs {
            if k_rows {
                simd::prefetch(&cache.k, cache.layout.k_offset(block, row, kv_head, 0), d);
            }
            if v_rows {
                simd::prefetch(&cache.v, cache.layout.v_offset(block, row, kv_head, 0), d);
            }
        }
    }

    /// Gathers keys from contiguous `[tokens, Hkv, D]` K/V tensors (a step's
    /// new tokens as vLLM passes them): token rows `tokens`, kv head `kv_head`.
    pub fn gather_dense(
        &mut self,
        key: &[f32],
        value: &[f32],
        num_kv_heads: usize,
        kv_head: usize,
        tokens: std::ops::Range<usize>,
    ) {
        let (tile, d) = (self.tile_size, self.head_size);
        debug_assert!(tokens.len() <= tile);
        self.len = tokens.len();
        for (j, t) in tokens.enumerate() {
            let base = (t * num_kv_heads + kv_head) * d;
            for dd in 0..d {
                self.k_t[dd * tile + j] = key[base + dd];
            }
            self.v[j * d..(j + 1) * d].copy_from_slice(&value[base..base + d]);
        }
    }

    /// `out[j] = dot(q, k_j)` for the `len` gathered keys, each one fma
    /// chain from 0 in ascending d, computed across keys at once ([`lane_dots`]).
    #[inline]
    pub fn qk(&self, q: &[f32], out: &mut [f32]) {
        let d = self.head_size;
        lane_dots(
            &q[..d.min(q.len())],
            &self.k_t[..d * self.tile_size],
            self.tile_size,
            0,
            &mut out[..self.len],
        );
    }

    /// `out[r * out_stride + j] = dot(qs[r], k_j)` for the `len` gathered
    /// keys and several query rows at once (one K load serves them all);
    /// every chain is [`KvTile::qk`]'s. Each `qs[r]` is `head_size` long.
    #[inline]
    pub fn qk_rows(&self, qs: &[&[f32]], out: &mut [f32], out_stride: usize) {
        simd::dots_rows(
            SimdPath::active(),
            qs,
            &self.k_t[..self.head_size * self.tile_size],
            self.tile_size,
            0,
            self.len,
            out,
            out_stride,
        );
    }

    /// The tile's K^T (`[head_size][tile_size]`: key j's dim dd at `dd *
    /// tile_size + j`) and V rows (`[tile_size][head_size]`).
    pub fn parts(&self) -> (&[f32], &[f32]) {
        (&self.k_t, &self.v)
    }

    /// V row j of the tile.
    #[inline]
    pub fn v_row(&self, j: usize) -> &[f32] {
        &self.v[j * self.head_size..(j + 1) * self.head_size]
    }
}

/// Per-dimension element offsets of a layout, relative to dim 0 of the same
/// (block, row, head): the same for every (block, row, head) in all
/// `KvLayout` kinds, so a tile gather does one offset computation per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimOffsets {
    pub k: Vec<usize>,
    pub v: Vec<usize>,
}

impl DimOffsets {
    pub fn new(layout: &attnlab_shared::layout::KvLayout) -> Self {
        let (k0, v0) = (layout.k_offset(0, 0, 0, 0), layout.v_offset(0, 0, 0, 0));
        DimOffsets {
            k: (0..layout.head_size)
                .map(|d| layout.k_offset(0, 0, 0, d) - k0)
                .collect(),
            v: (0..layout.head_size)
                .map(|d| layout.v_offset(0, 0, 0, d) - v0)
                .collect(),
        }
    }
}
