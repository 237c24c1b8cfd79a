//! The arithmetic contract shared with `kernels/portable.h` (numerics.md).
//!
//! Every sim kernel and every HIP kernel computes with these functions only,
//! in the same order, so outputs agree bit for bit. Nothing here may call the
//! platform's `exp`, `exp2` or `tanh`: those differ between vendors and libms.
//! `f32::mul_add` is a single-rounding fma on every target Rust supports.

pub use attnlab_shared::dtype::DType;

pub mod ex2_approx;
pub mod mma;

/// log2(e) rounded to f32. Softmax runs in base 2: scores are multiplied once
/// by `scale * LOG2E` (see [`softmax_scale_log2`]).
pub const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln(2) rounded to f32: converts a base-2 LSE to the natural log that
/// `merge_attn_states` and vLLM's LSE outputs use (one multiply).
pub const LN2: f32 = std::f32::consts::LN_2;

/// Taylor coefficients of 2^f = e^(f ln 2) on |f| <= 0.5, `ln2^k / k!`
/// rounded to f32, highest degree first (Horner order). Degree 7 leaves a
/// truncation error below 6e-9 relative, so the result is within 2 ulp of
/// the true 2^x (a test sweeps this). `portable.h` holds the same numbers;
/// `gpu`'s tests check they are equal.
// The digits are portable.h's, written alike on both sides (more than an f32
// holds; both round them to the same f32, which gpu's tests check).
#[allow(clippy::excessive_precision)]
pub const EXP2C_COEFFS: [f32; 8] = [
    1.525_273_365e-5, // ln2^7/7!
    1.540_352_969e-4, // ln2^6/6!
    1.333_355_787e-3, // ln2^5/5!
    9.618_128_650e-3, // ln2^4/4!
    5.550_410_971e-2, // ln2^3/3!
    2.402_265_072e-1, // ln2^2/2!
    6.931_471_825e-1, // ln2
    1.0,
];

/// Below this, `exp2c` returns 0 (the result would be far below the smallest
/// f32 subnormal's half). Also catches -inf.
pub const EXP2C_MIN_X: f32 = -150.0;

/// 2^x under the contract: split x = n + f (n = rint(x), |f| <= 0.5),
/// p = Horner(f) with fma, result = p * 2^n built from exponent bits.
///
/// - NaN in, NaN out; x < -150 (incl. -inf) gives +0; x >= 128 gives +inf.
/// - For n < -126 the scaling is done in two exact power-of-two multiplies so
///   subnormal results round once, identically on both sides (no FTZ).
#[inline]
pub fn exp2c(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP2C_MIN_X {
        return 0.0;
    }
    if x >= 128.0 {
        return f32::INFINITY;
    }
    let n = x.round_ties_even();
    let f = x - n; // exact: |x| < 2^8, n is x's nearest integer
    let mut p = EXP2C_COEFFS[0];
    for &c in &EXP2C_COEFFS[1..] {
        p = p.mul_add(f, c);
    }
    let n = n as i32;
    if n > 127 {
        // x in [127.5, 128): p * 2^127 * 2 may overflow to inf, as it should.
        p * pow2i(127) * 2.0
    } else if n < -126 {
        // Scale by 2^-126 first (exact, p >= 0.7 stays normal), then by
        // 2^(n+126) which rounds once into the subnormal range.
        p * pow2i(-126) * pow2i(n + 126)
    } else {
        p * pow2i(n)
    }
}

/// 2^n for n in [-126, 127] from its exponent bits.
#[inline]
pub fn pow2i(n: i32) -> f32 {
    debug_assert!((-126..=127).contains(&n));
    f32::from_bits(((n + 127) as u32) << 23)
}

/// tanh(y) under the contract, for logit soft-capping:
/// e = exp2c(-2|y| * LOG2E); t = (1 - e) / (1 + e); result = copysign(t, y).
/// Division is IEEE correctly rounded on both sides. NaN propagates.
#[inline]
pub fn tanhc(y: f32) -> f32 {
    if y.is_nan() {
        return y;
    }
    let a = y.abs();
    let e = exp2c((-2.0 * a) * LOG2E);
    let t = (1.0 - e) / (1.0 + e);
    t.copysign(y)
}

/// Coefficients of log2(m) = (2/ln2) * atanh(t), t = (m-1)/(m+1), as a
/// polynomial in t^2 (highest first): 2/((2k+1) ln 2) for k = 4..0.
pub const LOG2C_COEFFS: [f32; 5] = [
    (2.0f64 / (9.0 * std::f64::consts::LN_2)) as f32,
    (2.0f64 / (7.0 * std::f64::consts::LN_2)) as f32,
    (2.0f64 / (5.0 * std::f64::consts::LN_2)) as f32,
    (2.0f64 / (3.0 * std::f64::consts::LN_2)) as f32,
    (2.0f64 / std::f64::consts::LN_2) as f32,
];

/// log2(x) under the contract, for LSE outputs (`lse2 = m + log2c(l)`).
/// x = 2^e * m with m in [sqrt(1/2), sqrt(2)) (exponent bits, exact);
/// t = (m - 1) / (m + 1); result = fma(t, P(t^2), e), P by Horner with fma.
/// NaN or x < 0 gives NaN, 0 gives -inf, +inf gives +inf; subnormals are
/// rescaled by 2^23 first (exact).
#[inline]
pub fn log2c(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x == f32::INFINITY {
        return x;
    }
    let (x, bias) = if x < f32::MIN_POSITIVE {
        (x * pow2i(23), 23)
    } else {
        (x, 0)
    };
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127 - bias;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000); // [1, 2)
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5; // exact
        e += 1;
    }
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let mut p = LOG2C_COEFFS[0];
    for &c in &LOG2C_COEFFS[1..] {
        p = p.mul_add(t2, c);
    }
    t.mul_add(p, e as f32)
}

/// e^x under the contract, for sites whose interface is natural-log
/// (merge_attn_states): `exp2c(x * LOG2E)`, one multiply then exp2c.
#[inline]
pub fn expc(x: f32) -> f32 {
    exp2c(x * LOG2E)
}

/// The one softmax-scale constant: `scale * log2(e)`, computed as one f32
/// multiply on both sides. Scores are `dot * softmax_scale_log2(scale)`.
#[inline]
pub fn softmax_scale_log2(scale: f32) -> f32 {
    scale * LOG2E
}

/// The logit soft-cap `c * tanh(s / c)` with the contract's [`tanhc`],
/// applied to the *natural* score `s = dot * scale` (before the base-2
/// conversion). The kernels whose source computes a stable tanh use it;
/// vLLM's and AITER's Triton `apply_softcap` spell tanh out with
/// exponentials, see [`SoftcapFormula`].
#[inline]
pub fn softcap(s: f32, cap: f32) -> f32 {
    cap * tanhc(s / cap)
}

/// How a kernel spells `c * tanh(s / c)`: the formulas differ in where they
/// overflow, and that is a behaviour the emulator models (vLLM issue 10,
/// "faithful where vLLM is wrong"). Every variant takes the natural score
/// and returns the natural soft-capped score; a NaN result is the contract's
/// fresh NaN (`f32::NAN`, portable.h `f32_nan()`), whatever the platform's
/// `inf / inf` would give, so both sides produce the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SoftcapFormula {
    /// `c * tanhc(s / c)`: stable, saturates at +-c.
    #[default]
    Tanh,
    /// vLLM's `apply_softcap` before the fix (the fixtures' commit:
    /// `vllm/v1/attention/ops/triton_quant_kv/_helpers.py` @86a153bd, also
    /// `vllm/attention/ops/triton_unified_attention.py` of that era):
    /// `y = s / c; p1 = exp(y); p2 = exp(-y); c * (p1 - p2) / (p1 + p2)`.
    /// `exp(|y|)` overflows to inf for `|y| * log2(e) >= 128` (|y| >= 88.73),
    /// and then `inf / inf` is NaN; `c * (p1 - p2)` overflows first when
    /// `c > 1` (+inf or -inf scores for |y| in (88.73 - ln c, 88.73)).
    VllmTwoExp,
    /// vLLM 0.34's `apply_softcap` (`vllm/v1/attention/ops/
    /// triton_attention_helpers.py`): `c * (1 - 2 / (exp(2 y) + 1))`,
    /// which saturates cleanly at +-c.
    VllmOneExp,
    /// AITER's Triton `apply_softcap` (`aiter/ops/triton/_triton_kernels/
    /// attention/unified_attention.py`): the same two-exponential form on the
    /// base-2 score `s2 = s * log2(e)` with `exp2`:
    /// `p1 = exp2(s2 / c); p2 = exp2(-s2 / c); c * (p1 - p2) / (p1 + p2)`
    /// (= c tanh(s / c), natural units); overflows like [`Self::VllmTwoExp`].
    AiterTwoExp2,
}

/// `c * (p1 - p2) / (p1 + p2)` as Python evaluates it (left to right), NaN
/// made the contract's fresh NaN.
#[inline]
fn two_exp_ratio(cap: f32, p1: f32, p2: f32) -> f32 {
    let t = (cap * (p1 - p2)) / (p1 + p2);
    if t.is_nan() {
        f32::NAN
    } else {
        t
    }
}

/// The soft-capped natural score of `formula`: `s` is the natural score
/// `dot * scale`, `s2` the base-2 one `dot * scale_log2` (only
/// [`SoftcapFormula::AiterTwoExp2`] reads it).
#[inline]
pub fn softcap_with(formula: SoftcapFormula, s: f32, s2: f32, cap: f32) -> f32 {
    match formula {
        SoftcapFormula::Tanh => softcap(s, cap),
        SoftcapFormula::VllmTwoExp => {
            let y = s / cap;
            two_exp_ratio(cap, expc(y), expc(-y))
        }
        SoftcapFormula::VllmOneExp => {
            let y = s / cap;
            let t = cap * (1.0 - 2.0 / (expc(2.0 * y) + 1.0));
            if t.is_nan() {
                f32::NAN
            } else {
                t
            }
        }
        SoftcapFormula::AiterTwoExp2 => {
            let y2 = s2 / cap;
            two_exp_ratio(cap, exp2c(y2), exp2c(-y2))
        }
    }
}

/// Wave (warp) widths the emulator models: 32 on NVIDIA, 64 on CDNA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum WaveWidth {
    W32 = 32,
    W64 = 64,
}

impl WaveWidth {
    pub fn lanes(self) -> usize {
        self as usize
    }
}

/// The xor-butterfly reduction a wave performs with `__shfl_xor`: offsets
/// W/2, W/4, ..., 1; after it every lane holds the same value. `lanes` must
/// have exactly W entries (inactive lanes hold the identity).
pub fn wave_butterfly(lanes: &mut [f32], op: impl Fn(f32, f32) -> f32) -> f32 {
    let w = lanes.len();
    debug_assert!(w.is_power_of_two());
    let mut offset = w / 2;
    let mut tmp = vec![0f32; w];
    while offset >= 1 {
        for l in 0..w {
            tmp[l] = op(lanes[l], lanes[l ^ offset]);
        }
        lanes.copy_from_slice(&tmp);
        offset /= 2;
    }
    lanes[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_diff(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        ((a as f64) - b).abs() / ulp
    }

    #[test]
    fn exp2c_is_within_2_ulp_over_the_normal_range() {
        let mut worst = 0f64;
        let mut x = -126.0f32;
        while x < 127.9 {
            let d = ulp_diff(exp2c(x), (x as f64).exp2());
            worst = worst.max(d);
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
    }

    #[test]
    fn exp2c_edges() {
        assert_eq!(exp2c(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp2c(-200.0), 0.0);
        assert_eq!(exp2c(128.0), f32::INFINITY);
        assert_eq!(exp2c(f32::INFINITY), f32::INFINITY);
        assert!(exp2c(f32::NAN).is_nan());
        assert_eq!(exp2c(0.0), 1.0);
        assert_eq!(exp2c(1.0), 2.0);
        assert_eq!(exp2c(-1.0), 0.5);
        // Subnormal results are produced, not flushed.
        let s = exp2c(-140.0);
        assert!(s > 0.0 && s < f32::MIN_POSITIVE, "{s}");
    }

    #[test]
    fn exp2c_coefficients_are_ln2_powers_over_factorials() {
        let ln2 = std::f64::consts::LN_2;
        let mut fact = 1f64;
        for k in 0..8 {
            if k > 0 {
                fact *= k as f64;
            }
            assert_eq!(
                EXP2C_COEFFS[7 - k],
                (ln2.powi(k as i32) / fact) as f32,
                "k={k}"
            );
        }
    }

    #[test]
    fn tanhc_is_close_to_tanh() {
        let mut y = -20.0f32;
        while y < 20.0 {
            let err = (tanhc(y) as f64 - (y as f64).tanh()).abs();
            assert!(err < 3e-7, "y={y} err={err}");
            y += 0.013;
        }
        assert_eq!(tanhc(0.0), 0.0);
        assert_eq!(tanhc(1e30), 1.0);
    }

    #[test]
    fn butterfly_gives_every_lane_the_sum() {
        for w in [32usize, 64] {
            let mut lanes: Vec<f32> = (0..w).map(|i| i as f32 * 0.5).collect();
            let total = wave_butterfly(&mut lanes, |a, b| a + b);
            assert_eq!(total, (0..w).map(|i| i as f32 * 0.5).sum::<f32>());
            assert!(lanes.iter().all(|&l| l == total));
        }
    }

    #[test]
    fn log2c_is_accurate() {
        let mut worst = 0f64;
        let mut x = 1e-30f32;
        while x < 1e30 {
            let want = (x as f64).log2();
            let err = (log2c(x) as f64 - want).abs();
            let tol = if want.abs() < 1.0 {
                3e-7
            } else {
                want.abs() * 2.4e-7
            };
            worst = worst.max(err / tol);
            x *= 1.0137;
        }
        assert!(worst <= 1.0, "worst {worst}");
        assert_eq!(log2c(1.0), 0.0);
        assert_eq!(log2c(8.0), 3.0);
        assert_eq!(log2c(0.0), f32::NEG_INFINITY);
        assert!(log2c(-1.0).is_nan());
        assert!((log2c(1e-40) as f64 - (1e-40f64).log2()).abs() < 1e-4);
    }
}
