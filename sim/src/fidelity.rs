//! How close a replayed output is to the kernel's, in units in the last
//! place (ULPs) of the output dtype.
//!
//! **ULP distance.** Every f16, bf16 or f32 bit pattern maps to an integer on
//! the *ordered line*: a non-negative pattern to its own value, a negative
//! one (sign bit set) to minus its magnitude bits. Consecutive representable
//! values (including the largest finite and infinity) are consecutive
//! integers there, and +0 and -0 are both 0. The distance of two values is
//! the absolute difference of their integers; NaN against NaN is 0 (any
//! payload), NaN against a number is [`UlpDistance::Unordered`] (the
//! histogram's "more" bucket).
//!
//! **Fidelity.** For each output the replay computes these statistics twice:
//! for the emulator's result and for the f64 reference rounded (once, from
//! f64) to the output dtype. The *fidelity ratio* is
//! `mean_ulp(reference) / mean_ulp(emulator)`, where each element's
//! distance is capped at [`ULP_CAP`] (an unordered pair counts as the cap):
//! 1 means the emulator is no closer to the kernel than exact math is, 10
//! means ten times closer; it is infinite (`inf` in tables, `null` in JSON)
//! when the emulator reproduces every element bit for bit and the reference
//! does not, and undefined (`-`, `null`) when both are bit-exact.

use attnlab_shared::dtype::DType;
use half::{bf16, f16};
use serde::Serialize;

/// Per-element cap of the mean ULP distance.
pub const ULP_CAP: u64 = 1024;
/// Histogram buckets: 0, 1, 2-4, 5-16, 17-256, more (and unordered).
pub const BUCKETS: [&str; 6] = ["0", "1", "2-4", "5-16", "17-256", "more"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UlpDistance {
    Ulps(u64),
    /// NaN against a number.
    Unordered,
}

impl UlpDistance {
    /// Index into [`BUCKETS`].
    pub fn bucket(self) -> usize {
        match self {
            UlpDistance::Ulps(0) => 0,
            UlpDistance::Ulps(1) => 1,
            UlpDistance::Ulps(2..=4) => 2,
            UlpDistance::Ulps(5..=16) => 3,
            UlpDistance::Ulps(17..=256) => 4,
            _ => 5,
        }
    }

    /// The distance with the mean's cap applied.
    pub fn capped(self) -> u64 {
        match self {
            UlpDistance::Ulps(n) => n.min(ULP_CAP),
            UlpDistance::Unordered => ULP_CAP,
        }
    }
}

/// A storage bit pattern of `dtype` (f16, bf16: low 16 bits) on the ordered line.
pub fn ordered(bits: u32, dtype: DType) -> i64 {
    let width = (dtype.size_bytes() * 8) as u32;
    let sign = 1i64 << (width - 1);
    let x = bits as i64 & ((sign << 1) - 1);
    if x & sign != 0 {
        -(x & (sign - 1))
    } else {
        x
    }
}

/// ULP distance of two values exactly representable in `dtype` (an f16,
/// bf16 or f32 output; other dtypes are measured as f32).
pub fn ulp_distance(a: f32, b: f32, dtype: DType) -> UlpDistance {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => return UlpDistance::Ulps(0),
        (true, false) | (false, true) => return UlpDistance::Unordered,
        _ => {}
    }
    let dt = if dtype.is_fp8() { DType::F32 } else { dtype };
    let (x, y) = (ordered(dt.to_bits(a), dt), ordered(dt.to_bits(b), dt));
    UlpDistance::Ulps(x.abs_diff(y))
}

/// An f64 rounded once to `dtype` (round to nearest even), widened to f32.
/// f16 and bf16 go through f32 rounded *to odd*, which makes the second
/// rounding exact (f32 keeps more than two extra bits); a plain `as f32`
/// first would round twice (and `half`'s `from_f64` may do just that).
pub fn round_f64(x: f64, dtype: DType) -> f32 {
    match dtype {
        DType::F16 => f16::from_f32(to_f32_odd(x)).to_f32(),
        DType::Bf16 => bf16::from_f32(to_f32_odd(x)).to_f32(),
        _ => x as f32,
    }
}

/// f64 -> f32 rounded to odd: truncated towards zero, lowest bit set when inexact.
fn to_f32_odd(x: f64) -> f32 {
    let t = x as f32;
    if !t.is_finite() || t as f64 == x {
        return t;
    }
    let mut bits = t.to_bits();
    if (t as f64).abs() > x.abs() {
        bits -= 1; // one step towards zero (same sign, smaller magnitude)
    }
    f32::from_bits(bits | 1)
}

/// ULP statistics of one result against the kernel's output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UlpStats {
    pub elements: usize,
    /// Elements whose bits equal the kernel's (NaN = NaN counts).
    pub bit_exact: usize,
    /// Counts per [`BUCKETS`] bucket.
    pub histogram: [usize; 6],
    /// Sum of the capped distances ([`UlpDistance::capped`]).
    pub capped_sum: u64,
    /// Largest distance; `null` when it is NaN against a number.
    pub max_ulp: Option<u64>,
    /// Where the largest distance is: the index into the output's shape
    /// (e.g. `[token, head, dim]`), first occurrence.
    pub max_at: Option<Vec<usize>>,
}

impl UlpStats {
    pub fn empty() -> Self {
        UlpStats {
            elements: 0,
            bit_exact: 0,
            histogram: [0; 6],
            capped_sum: 0,
            max_ulp: Some(0),
            max_at: None,
        }
    }

    /// `got` against the kernel's `kernel`, both in `dtype`, with `shape` for
    /// locating the maximum. `None` if the lengths differ.
    pub fn measure(got: &[f32], kernel: &[f32], dtype: DType, shape: &[usize]) -> Option<Self> {
        if got.len() != kernel.len() {
            return None;
        }
        let mut s = UlpStats::empty();
        let mut worst: Option<(UlpDistance, usize)> = None;
        for (i, (&a, &b)) in got.iter().zip(kernel).enumerate() {
            let d = ulp_distance(a, b, dtype);
            s.elements += 1;
            s.histogram[d.bucket()] += 1;
            s.capped_sum += d.capped();
            if d == UlpDistance::Ulps(0) {
                s.bit_exact += 1;
            }
            let worse = match (worst, d) {
                (None, _) => true,
                (Some((UlpDistance::Unordered, _)), _) => false,
                (Some(_), UlpDistance::Unordered) => true,
                (Some((UlpDistance::Ulps(w), _)), UlpDistance::Ulps(n)) => n > w,
            };
            if worse {
                worst = Some((d, i));
            }
        }
        if let Some((d, i)) = worst {
            s.max_ulp = match d {
                UlpDistance::Ulps(n) => Some(n),
                UlpDistance::Unordered => None,
            };
            s.max_at = Some(unflatten(i, shape));
        }
        Some(s)
    }

    /// Adds another result's counts (for per-backend summaries).
    pub fn add(&mut self, o: &UlpStats) {
        self.elements += o.elements;
        self.bit_exact += o.bit_exact;
        for (a, b) in self.histogram.iter_mut().zip(o.histogram) {
            *a += b;
        }
        self.capped_sum += o.capped_sum;
        self.max_ulp = match (self.max_ulp, o.max_ulp) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        self.max_at = None;
    }

    /// Fraction of bit-identical elements (1 for an empty output).
    pub fn bit_exact_fraction(&self) -> f64 {
        if self.elements == 0 {
            1.0
        } else {
            self.bit_exact as f64 / self.elements as f64
        }
    }

    /// Mean capped ULP distance.
    pub fn mean_ulp(&self) -> f64 {
        if self.elements == 0 {
            0.0
        } else {
            self.capped_sum as f64 / self.elements as f64
        }
    }
}

/// The fidelity ratio `mean_ulp(reference) / mean_ulp(emulator)`: `None`
/// when both are 0, `+inf` when only the emulator's is.
pub fn fidelity_ratio(emulator: &UlpStats, reference: &UlpStats) -> Option<f64> {
    match (emulator.capped_sum, reference.capped_sum) {
        (0, 0) => None,
        (0, _) => Some(f64::INFINITY),
        _ => Some(reference.mean_ulp() / emulator.mean_ulp()),
    }
}

/// Flat index -> row-major multi-index.
fn unflatten(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &n) in shape.iter().enumerate().rev() {
        if n > 0 {
            idx[k] = i % n;
            i /= n;
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next_up(x: f32, dtype: DType) -> f32 {
        // One storage step towards +inf on the ordered line.
        let o = ordered(dtype.to_bits(x), dtype) + 1;
        let width = dtype.size_bytes() * 8;
        let bits = if o >= 0 {
            o as u32
        } else {
            (1u32 << (width - 1)) | (-o) as u32
        };
        dtype.from_bits(bits)
    }

    #[test]
    fn adjacent_values_are_one_ulp_apart_in_every_output_dtype() {
        for dtype in [DType::F16, DType::Bf16, DType::F32] {
            for x in [
                1.0f32,
                -1.0,
                0.0,
                3.5e-3,
                -65504.0f32.min(dtype.max_finite()),
            ] {
                let x = dtype.round(x);
                let y = next_up(x, dtype);
                assert_ne!(x, y, "{dtype} {x}");
                assert_eq!(
                    ulp_distance(x, y, dtype),
                    UlpDistance::Ulps(1),
                    "{dtype} {x} {y}"
                );
                assert_eq!(ulp_distance(y, x, dtype), UlpDistance::Ulps(1));
            }
        }
    }

    #[test]
    fn plus_and_minus_zero_are_zero_ulps_apart_and_straddle_zero_symmetrically() {
        for dtype in [DType::F16, DType::Bf16, DType::F32] {
            assert_eq!(ulp_distance(0.0, -0.0, dtype), UlpDistance::Ulps(0));
            let tiny = next_up(0.0, dtype);
            assert_eq!(ulp_distance(tiny, -tiny, dtype), UlpDistance::Ulps(2));
        }
    }

    #[test]
    fn nan_against_nan_is_zero_and_nan_against_a_number_is_unordered() {
        assert_eq!(
            ulp_distance(f32::NAN, -f32::NAN, DType::F16),
            UlpDistance::Ulps(0)
        );
        assert_eq!(
            ulp_distance(f32::NAN, 1.0, DType::Bf16),
            UlpDistance::Unordered
        );
        assert_eq!(UlpDistance::Unordered.bucket(), 5);
        assert_eq!(UlpDistance::Unordered.capped(), ULP_CAP);
    }

    #[test]
    fn infinity_is_one_ulp_above_the_largest_finite_value() {
        for dtype in [DType::F16, DType::Bf16, DType::F32] {
            assert_eq!(
                ulp_distance(dtype.max_finite(), f32::INFINITY, dtype),
                UlpDistance::Ulps(1)
            );
        }
    }

    #[test]
    fn buckets_split_at_1_4_16_256() {
        let b = |n| UlpDistance::Ulps(n).bucket();
        assert_eq!(
            [b(0), b(1), b(2), b(4), b(5), b(16), b(17), b(256), b(257)],
            [0, 1, 2, 2, 3, 3, 4, 4, 5]
        );
    }

    #[test]
    fn measure_counts_exact_elements_and_locates_the_worst_one() {
        let kernel = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut got = kernel;
        got[4] = next_up(next_up(5.0, DType::F16), DType::F16);
        got[1] = next_up(2.0, DType::F16);
        let s = UlpStats::measure(&got, &kernel, DType::F16, &[2, 1, 3]).unwrap();
        assert_eq!((s.elements, s.bit_exact), (6, 4));
        assert_eq!(s.histogram, [4, 1, 1, 0, 0, 0]);
        assert_eq!(
            (s.max_ulp, s.max_at.clone()),
            (Some(2), Some(vec![1, 0, 1]))
        );
        assert!((s.mean_ulp() - 0.5).abs() < 1e-12);
        assert!(UlpStats::measure(&got[..2], &kernel, DType::F16, &[6]).is_none());
    }

    #[test]
    fn fidelity_ratio_is_reference_over_emulator_mean_ulp() {
        let k = [1.0f32, 1.0];
        let one = [next_up(1.0, DType::Bf16), 1.0];
        let two = [next_up(1.0, DType::Bf16), next_up(1.0, DType::Bf16)];
        let m = |g: &[f32]| UlpStats::measure(g, &k, DType::Bf16, &[2]).unwrap();
        assert_eq!(fidelity_ratio(&m(&one), &m(&two)), Some(2.0));
        assert_eq!(fidelity_ratio(&m(&k), &m(&two)), Some(f64::INFINITY));
        assert_eq!(fidelity_ratio(&m(&k), &m(&k)), None);
    }

    #[test]
    fn rounding_from_f64_is_single_rounding() {
        assert_eq!(
            round_f64(-(1.0 + 2f64.powi(-11) + 2f64.powi(-40)), DType::F16),
            -(1.0 + 2f32.powi(-10))
        );
        assert_eq!(
            round_f64(1.0 + 2f64.powi(-11), DType::F16),
            1.0,
            "a true tie rounds to even"
        );
        assert_eq!(
            round_f64(1.0 + 2f64.powi(-8) + 2f64.powi(-40), DType::Bf16),
            1.0 + 2f32.powi(-7)
        );
        // 1 + 2^-11 + 2^-40 rounds up in f16 from f64; via f32 it would tie to even (down).
        let x = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(round_f64(x, DType::F16), 1.0 + 2f32.powi(-10));
    }
}
