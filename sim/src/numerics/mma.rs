//! Bit-exact models of the matrix-core instructions (numerics.md §6).
//!
//! A matrix instruction computes D = A·B + C over a fixed tile, but each
//! element of D is not a chain of IEEE fmas: the hardware sums a *block* of
//! products at once, aligned to the largest exponent, truncated to a fixed
//! number of bits, and rounds once. How exactly differs between vendors and
//! generations, so every step that a published characterisation names is a
//! field of [`Model`], and each target's defaults are data
//! ([`MatrixTarget::model`]). `attnlab diff --backend mma --probe` runs the
//! real instruction and tells which parameter set fits it.
//!
//! Sources (facts learnt from them; the code is ours):
//! - Khattak & Mikaitis, "Accurate Models of NVIDIA Tensor Cores" (arXiv
//!   2512.07004) and Part I (arXiv 2510.15884): H100: 16-term block FMA,
//!   2 extra alignment bits (25 fractional), no sticky bit, C aligned with
//!   the products, round toward zero, zero products left out, alignment
//!   exponent at least -133; CDNA3: 8-term blocks, 1 extra bit (24),
//!   C added after the product sum with round-down alignment, RNE; CDNA3
//!   fp8: 16-term blocks as interleaved odd/even halves.
//! - Xie et al., "MMA-Sim" (arXiv 2511.10909): the same Hopper and CDNA3
//!   parameters from independent probing, CDNA2's pairwise summation with
//!   flushed subnormals, and CDNA3's rule that a product beyond f32's range
//!   is an infinity.
//! - Fasi, Higham, Mikaitis, Pranesh (PeerJ CS 2021): the test-vector method.
//!
//! Everything here is exact integer arithmetic on significands (u64 / i128):
//! a product of two 16-bit floats has at most 22 significant bits, every
//! term is aligned by shifts, and the only rounding is the one each model
//! names, written out.

use attnlab_shared::error::Error;

/// The input element formats of the modelled instructions. Storage bits
/// travel as u16 (the fp8 formats in the low byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InFormat {
    Bf16,
    F16,
    /// CDNA3's `fp8`: e4m3, bias 8, no inf, 0x80 the only NaN, no -0.
    Fp8E4m3Fnuz,
    /// CDNA3's `bf8`: e5m2, bias 16, the same special rules.
    Bf8E5m2Fnuz,
}

impl InFormat {
    pub const ALL: [InFormat; 4] = [
        InFormat::Bf16,
        InFormat::F16,
        InFormat::Fp8E4m3Fnuz,
        InFormat::Bf8E5m2Fnuz,
    ];

    /// Stored fraction bits.
    pub const fn mant_bits(self) -> u32 {
        match self {
            InFormat::Bf16 => 7,
            InFormat::F16 => 10,
            InFormat::Fp8E4m3Fnuz => 3,
            InFormat::Bf8E5m2Fnuz => 2,
        }
    }

    const fn exp_bits(self) -> u32 {
        match self {
            InFormat::Bf16 => 8,
            InFormat::F16 => 5,
            InFormat::Fp8E4m3Fnuz => 4,
            InFormat::Bf8E5m2Fnuz => 5,
        }
    }

    /// fnuz: the all-ones exponent is finite, 0x80 is NaN, no inf and no -0.
    pub const fn fnuz(self) -> bool {
        matches!(self, InFormat::Fp8E4m3Fnuz | InFormat::Bf8E5m2Fnuz)
    }

    /// Storage width in bits.
    pub const fn bits(self) -> u32 {
        1 + self.exp_bits() + self.mant_bits()
    }

    const fn bias(self) -> i32 {
        let b = (1 << (self.exp_bits() - 1)) - 1;
        if self.fnuz() {
            b + 1
        } else {
            b
        }
    }

    /// Exponent of the smallest normal number (subnormals share it).
    pub const fn emin(self) -> i32 {
        1 - self.bias()
    }

    /// Exponent of the largest finite number.
    pub const fn emax(self) -> i32 {
        let top = (1 << self.exp_bits()) - 1;
        if self.fnuz() {
            top - self.bias()
        } else {
            top - 1 - self.bias()
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            InFormat::Bf16 => "bf16",
            InFormat::F16 => "f16",
            InFormat::Fp8E4m3Fnuz => "fp8",
            InFormat::Bf8E5m2Fnuz => "bf8",
        }
    }

    /// The element's value as f32 (exact: every format widens exactly).
    pub fn to_f32(self, bits: u16) -> f32 {
        match self.decode(bits) {
            Class::Zero(neg) => {
                if neg {
                    -0.0
                } else {
                    0.0
                }
            }
            Class::Inf(neg) => {
                if neg {
                    f32::NEG_INFINITY
                } else {
                    f32::INFINITY
                }
            }
            Class::Nan => f32::NAN,
            Class::Finite(t) => {
                let v = t.sig as f64 * ((t.exp - t.frac as i32) as f64).exp2();
                (if t.neg { -v } else { v }) as f32
            }
        }
    }

    /// The format's bits nearest `x` (ties to the even code; fp8 saturates
    /// to its largest finite value, as HIP's conversions do).
    pub fn from_f32(self, x: f32) -> u16 {
        match self {
            InFormat::Bf16 => half::bf16::from_f32(x).to_bits(),
            InFormat::F16 => half::f16::from_f32(x).to_bits(),
            InFormat::Fp8E4m3Fnuz | InFormat::Bf8E5m2Fnuz => {
                if x.is_nan() {
                    return 0x80;
                }
                // codes of one sign are monotone: the nearest magnitude
                let a = x.abs().min(self.to_f32(0x7f)) as f64;
                let mut best = 0u16;
                for code in 1..=0x7fu16 {
                    let (d, db) = (
                        (self.to_f32(code) as f64 - a).abs(),
                        (self.to_f32(best) as f64 - a).abs(),
                    );
                    if d < db || (d == db && code % 2 == 0) {
                        best = code;
                    }
                }
                if best != 0 && x < 0.0 {
                    best | 0x80
                } else {
                    best
                }
            }
        }
    }

    fn decode(self, bits: u16) -> Class {
        let m = self.mant_bits();
        let eb = self.exp_bits();
        let bits = bits & ((1u32 << self.bits()) - 1) as u16;
        let neg = bits >> (m + eb) & 1 == 1;
        let e_field = (bits >> m) as u32 & ((1 << eb) - 1);
        let frac = (bits as u64) & ((1 << m) - 1);
        if self.fnuz() {
            if neg && e_field == 0 && frac == 0 {
                return Class::Nan; // 0x80
            }
        } else if e_field == (1 << eb) - 1 {
            return if frac == 0 {
                Class::Inf(neg)
            } else {
                Class::Nan
            };
        }
        if e_field == 0 && frac == 0 {
            return Class::Zero(neg);
        }
        let (exp, sig) = if e_field == 0 {
            (self.emin(), frac)
        } else {
            (e_field as i32 - self.bias(), frac | 1 << m)
        };
        Class::Finite(Term {
            neg,
            exp,
            sig,
            frac: m,
        })
    }
}

/// An element type the typed [`dot`] takes.
pub trait MmaElem: Copy {
    const FORMAT: InFormat;
    fn to_bits(self) -> u16;
}

impl MmaElem for half::bf16 {
    const FORMAT: InFormat = InFormat::Bf16;
    fn to_bits(self) -> u16 {
        half::bf16::to_bits(self)
    }
}

impl MmaElem for half::f16 {
    const FORMAT: InFormat = InFormat::F16;
    fn to_bits(self) -> u16 {
        half::f16::to_bits(self)
    }
}

/// A finite nonzero-or-zero magnitude: `(-1)^neg * sig * 2^(exp - frac)`.
/// The significand's leading bit sits at or below `frac` (inputs) or
/// `frac + 1` (products, whose significands lie in [1, 4)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Term {
    neg: bool,
    exp: i32,
    sig: u64,
    frac: u32,
}

impl Term {
    const ZERO: Term = Term {
        neg: false,
        exp: 0,
        sig: 0,
        frac: 0,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Zero(bool),
    Finite(Term),
    Inf(bool),
    Nan,
}

fn decode_f32(x: f32) -> Class {
    let bits = x.to_bits();
    let neg = bits >> 31 == 1;
    let e_field = (bits >> 23) & 0xff;
    let frac = (bits & 0x7f_ffff) as u64;
    match (e_field, frac) {
        (0xff, 0) => Class::Inf(neg),
        (0xff, _) => Class::Nan,
        (0, 0) => Class::Zero(neg),
        (0, f) => Class::Finite(Term {
            neg,
            exp: -126,
            sig: f,
            frac: 23,
        }),
        (e, f) => Class::Finite(Term {
            neg,
            exp: e as i32 - 127,
            sig: f | 1 << 23,
            frac: 23,
        }),
    }
}

/// Final rounding of a block's exact (truncated) sum to f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rounding {
    TowardZero,
    NearestEven,
}

/// Where the accumulator C enters a fused block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CAdd {
    /// C is one more term of the block: aligned to the largest exponent of
    /// products and C together and truncated like them (Hopper).
    Joint,
    /// The products are summed first; then C and that sum are aligned to
    /// the larger of their exponents, each rounded down (toward -inf): the
    /// product sum keeps `sum_extra_bits` more fractional bits than the
    /// block, C keeps the block's (CDNA3's "late partial sum").
    Late { sum_extra_bits: u32 },
}

/// How a product with a zero factor takes part in the alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZeroTerm {
    /// Left out: it cannot move the alignment exponent (Khattak & Mikaitis).
    Skip,
    /// A zero factor counts with this exponent, so `0 * 2^100` aligns the
    /// block at 2^(e+100) (MMA-Sim: e = -126 for every input format).
    Exponent(i32),
}

/// What a finite result beyond f32's range becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Infinity whatever the rounding (both characterisations' H100 model).
    Inf,
    /// As IEEE 754 says: RNE overflows to infinity, RZ to the largest finite.
    Ieee,
}

/// The block-FMA model of Hopper and CDNA3 (and the alternatives the probe
/// tries). All fields are data so that each can be confirmed or refuted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fused {
    /// Products summed in one block (blocks run sequentially along k; each
    /// block's rounded f32 result is the next block's C).
    pub block: usize,
    /// Fractional bits kept below the alignment exponent; bits below are
    /// truncated (toward zero, no sticky bit).
    pub frac_bits: u32,
    pub c_add: CAdd,
    pub rounding: Rounding,
    pub zero_products: ZeroTerm,
    /// How a zero C takes part in the alignment (`Joint` and `Late` both).
    pub zero_c: ZeroTerm,
    /// The alignment exponent is at least this (H100: -133).
    pub min_align_exp: Option<i32>,
    /// A finite product of magnitude >= 2^128 makes the result ±inf (NaN
    /// with both signs), as an f32 product would (CDNA3).
    pub product_overflow: bool,
    pub overflow: Overflow,
    /// The block's products are two interleaved halves (even and odd k),
    /// each aligned and truncated on its own, then both floored onto the
    /// larger half's grid and added (CDNA3's fp8). Only with a late C.
    pub odd_even: bool,
    /// A late C more than this many binades below the product sum's
    /// exponent is dropped (truncated to 0) instead of floored (CDNA3 fp8).
    pub late_c_cutoff: Option<u32>,
    /// A zero result is -0 only when every addend is a -0, or when a
    /// negative sum rounds to zero (IEEE); false: always +0 (both
    /// characterisations; confirmed on the H100 for sums rounding to 0).
    pub ieee_zero_sign: bool,
    /// The f32 bit pattern of a NaN result.
    pub nan_bits: u32,
}

/// CDNA1/CDNA2's summation: each product rounded to f32, `group` products
/// summed as a pairwise tree of f32 additions, the group sum added to C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pairwise {
    pub group: usize,
    /// Subnormal inputs, C, products and partial sums become zero (CDNA2).
    pub flush_subnormals: bool,
    pub nan_bits: u32,
}

/// One instruction's dot-product arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    Fused(Fused),
    Pairwise(Pairwise),
}

/// NVIDIA's canonical NaN (what tensor cores write for any NaN result).
pub const NV_NAN: u32 = 0x7fff_ffff;
/// The default quiet NaN (AMD's, unconfirmed on a matrix core).
pub const QUIET_NAN: u32 = 0x7fc0_0000;

/// The GPU whose matrix cores a kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatrixTarget {
    /// Hopper (H100/H200): `mma.sync` / `wgmma`.
    Sm90,
    /// CDNA2 (MI200): `v_mfma_*` with pairwise summation.
    Gfx90a,
    /// CDNA3 (MI300): `v_mfma_*` with 8-product blocks.
    Gfx942,
}

impl MatrixTarget {
    pub const ALL: [MatrixTarget; 3] = [
        MatrixTarget::Sm90,
        MatrixTarget::Gfx90a,
        MatrixTarget::Gfx942,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MatrixTarget::Sm90 => "sm_90",
            MatrixTarget::Gfx90a => "gfx90a",
            MatrixTarget::Gfx942 => "gfx942",
        }
    }

    /// `sm_90`, `gfx90a`, or a CDNA3 name (`gfx940`, `gfx941`, `gfx942`).
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "sm_90" | "sm_90a" => Ok(MatrixTarget::Sm90),
            "gfx90a" => Ok(MatrixTarget::Gfx90a),
            "gfx940" | "gfx941" | "gfx942" => Ok(MatrixTarget::Gfx942),
            _ => Err(Error::invalid(
                "matrix-core target",
                format!("'{s}'"),
                "sm_90, gfx90a, gfx940, gfx941, gfx942",
            )),
        }
    }

    /// Lanes that execute one instruction together.
    pub fn wave_size(self) -> u32 {
        match self {
            MatrixTarget::Sm90 => 32,
            MatrixTarget::Gfx90a | MatrixTarget::Gfx942 => 64,
        }
    }

    /// The published model of this target's `format` -> f32 instructions
    /// (bf16 and f16 share one; CDNA3's fp8/bf8 have their own grouping).
    pub fn model(self, format: InFormat) -> Model {
        match self {
            MatrixTarget::Sm90 => Model::Fused(Fused {
                block: 16,
                frac_bits: 25,
                c_add: CAdd::Joint,
                rounding: Rounding::TowardZero,
                zero_products: ZeroTerm::Skip,
                zero_c: ZeroTerm::Skip,
                min_align_exp: Some(-133),
                product_overflow: false,
                overflow: Overflow::Inf,
                odd_even: false,
                late_c_cutoff: None,
                ieee_zero_sign: false,
                nan_bits: NV_NAN,
            }),
            MatrixTarget::Gfx942 => {
                let fp8 = format.fnuz();
                Model::Fused(Fused {
                    // fp8: 16 products as two interleaved halves of 8
                    block: if fp8 { 16 } else { 8 },
                    frac_bits: 24,
                    c_add: CAdd::Late { sum_extra_bits: 7 },
                    rounding: Rounding::NearestEven,
                    zero_products: ZeroTerm::Skip,
                    zero_c: ZeroTerm::Exponent(-126),
                    min_align_exp: None,
                    product_overflow: true,
                    overflow: Overflow::Inf,
                    odd_even: fp8,
                    late_c_cutoff: if fp8 { Some(25) } else { None },
                    ieee_zero_sign: false,
                    nan_bits: QUIET_NAN,
                })
            }
            MatrixTarget::Gfx90a => Model::Pairwise(Pairwise {
                group: 4,
                flush_subnormals: true,
                nan_bits: QUIET_NAN,
            }),
        }
    }

    /// The modelled instruction shapes of this target for `format` -> f32
    /// (none: not modelled, or no such instruction).
    pub fn shapes(self, format: InFormat) -> &'static [Shape] {
        match (self, format.fnuz()) {
            (MatrixTarget::Sm90, false) => &[Shape::M16N8K16, Shape::M64N8K16],
            (MatrixTarget::Gfx90a | MatrixTarget::Gfx942, false) => {
                &[Shape::M16N16K16, Shape::M32N32K8]
            }
            (MatrixTarget::Gfx942, true) => &[Shape::M16N16K32, Shape::M32N32K16],
            _ => &[],
        }
    }
}

impl Model {
    /// Products per block (fused) or per pairwise group.
    pub fn group(&self) -> usize {
        match self {
            Model::Fused(f) => f.block,
            Model::Pairwise(p) => p.group,
        }
    }

    /// One dot product with accumulator: `a·b + c` over `a.len()` products
    /// (a multiple of the block, or shorter than one block), as the model's
    /// hardware computes it. `a` and `b` are storage bits of `format`.
    pub fn dot(&self, format: InFormat, a: &[u16], b: &[u16], c: f32) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        let g = self.group().max(1);
        let mut acc = c;
        for (ab, bb) in a.chunks(g).zip(b.chunks(g)) {
            acc = match self {
                Model::Fused(f) => f.block_fma(format, ab, bb, acc),
                Model::Pairwise(p) => p.group_add(format, ab, bb, acc),
            };
        }
        acc
    }
}

/// `a·b + c` on `target`'s matrix cores, for the typed caller.
pub fn dot<T: MmaElem, const K: usize>(
    target: MatrixTarget,
    a: &[T; K],
    b: &[T; K],
    c: f32,
) -> f32 {
    let ab: Vec<u16> = a.iter().map(|x| x.to_bits()).collect();
    let bb: Vec<u16> = b.iter().map(|x| x.to_bits()).collect();
    target.model(T::FORMAT).dot(T::FORMAT, &ab, &bb, c)
}

/// Product of two decoded factors, or the special it makes.
enum Prod {
    Term(Term),
    /// A zero factor: (sign, exponent the other factor contributes).
    Zero(bool, i32),
    Inf(bool),
    Nan,
}

fn product(x: Class, y: Class) -> Prod {
    use Class::*;
    match (x, y) {
        (Nan, _) | (_, Nan) => Prod::Nan,
        (Inf(_), Zero(_)) | (Zero(_), Inf(_)) => Prod::Nan,
        (Inf(s), Inf(t)) => Prod::Inf(s ^ t),
        (Inf(s), Finite(t)) | (Finite(t), Inf(s)) => Prod::Inf(s ^ t.neg),
        (Zero(s), Zero(t)) => Prod::Zero(s ^ t, i32::MIN),
        (Zero(s), Finite(t)) | (Finite(t), Zero(s)) => Prod::Zero(s ^ t.neg, t.exp),
        (Finite(p), Finite(q)) => Prod::Term(Term {
            neg: p.neg ^ q.neg,
            exp: p.exp + q.exp,
            sig: p.sig * q.sig,
            frac: p.frac + q.frac,
        }),
    }
}

/// Magnitude of `t` as an integer count of 2^(e - frac_bits), truncated.
fn align(t: &Term, e: i32, frac_bits: u32) -> i128 {
    let right = (e - t.exp) as i64 + t.frac as i64 - frac_bits as i64;
    let m = if right >= 0 {
        if right >= 64 {
            0
        } else {
            t.sig >> right
        }
    } else {
        // left shifts are small: frac_bits - frac <= 32 by construction
        t.sig << (-right)
    } as i128;
    if t.neg {
        -m
    } else {
        m
    }
}

/// `v` divided by 2^shift, rounded toward -inf.
fn floor_shift(v: i128, shift: i64) -> i128 {
    if shift <= 0 {
        v << (-shift).min(100)
    } else if shift >= 127 {
        if v < 0 {
            -1
        } else {
            0
        }
    } else {
        v >> shift
    }
}

/// The f32 nearest `(-1)^neg * mag * 2^exp2` under `rounding`, with the
/// overflow rule `overflow`. `mag` > 0.
fn round_to_f32(neg: bool, mag: u128, exp2: i64, rounding: Rounding, overflow: Overflow) -> f32 {
    let len = 128 - mag.leading_zeros() as i64;
    let e = exp2 + len - 1; // exponent of the leading bit
    let qe = (e - 23).max(-149); // exponent of the last kept bit
    let shift = qe - exp2;
    let mut m: u128;
    if shift <= 0 {
        m = mag << (-shift);
    } else {
        let (kept, rem, half) = if shift >= 128 {
            (
                0u128,
                mag,
                if shift == 128 {
                    Some(1u128 << 127)
                } else {
                    None
                },
            )
        } else {
            (
                mag >> shift,
                mag & ((1u128 << shift) - 1),
                Some(1u128 << (shift - 1)),
            )
        };
        m = kept;
        if rounding == Rounding::NearestEven {
            if let Some(h) = half {
                if rem > h || (rem == h && m & 1 == 1) {
                    m += 1;
                }
            }
        }
    }
    let mut qe = qe;
    if m == 1 << 24 {
        m >>= 1;
        qe += 1;
    }
    let sign = if neg { 0x8000_0000u32 } else { 0 };
    if m == 0 {
        return f32::from_bits(sign);
    }
    // m < 2^24 now; the value's exponent is qe + 23 when m is normal.
    if m >= 1 << 23 && qe + 23 > 127 {
        let sat = rounding == Rounding::TowardZero && overflow == Overflow::Ieee;
        return f32::from_bits(sign | if sat { 0x7f7f_ffff } else { 0x7f80_0000 });
    }
    let bits = if m < 1 << 23 {
        m as u32 // subnormal: qe == -149
    } else {
        (((qe + 23 + 127) as u32) << 23) | (m as u32 & 0x7f_ffff)
    };
    f32::from_bits(sign | bits)
}

impl Fused {
    /// One block: `sum(a[i] * b[i]) + c` for `a.len() <= block` products.
    ///
    /// Blocks of finite inputs (nearly all of them) take
    /// `block_fma_finite`, which computes the same bits with
    /// fixed-width integers; every other block, and every model the fast
    /// path does not cover, takes [`Self::block_fma_general`].
    #[inline]
    pub fn block_fma(&self, format: InFormat, a: &[u16], b: &[u16], c: f32) -> f32 {
        self.block_fma_finite(format, a, b, c)
            .unwrap_or_else(|| self.block_fma_general(format, a, b, c))
    }

    /// [`Self::block_fma`] for a block whose inputs and C are all finite,
    /// for the 16-bit formats, without interleaved halves, zero-sign
    /// tracking or zero-product exponents; `None` where it does not apply
    /// (the general path then decides). The arithmetic is the general
    /// path's, term for term: products as signed integer significands with
    /// their exponents, C as one more term (`Joint`) or added after the
    /// product sum (`Late`), the same alignment, truncation and rounding.
    /// `fast_path_equals_the_general_block_fma` checks it bit for bit.
    fn block_fma_finite(&self, format: InFormat, a: &[u16], b: &[u16], c: f32) -> Option<f32> {
        if self.odd_even
            || self.ieee_zero_sign
            || self.zero_products != ZeroTerm::Skip
            || format.fnuz()
            || a.len() > 32
            || self.frac_bits > 36
        {
            return None;
        }
        let (m, eb) = (format.mant_bits(), format.exp_bits());
        let (field_max, frac_mask) = ((1u32 << eb) - 1, (1u64 << m) - 1);
        let (bias, emin) = (format.bias(), format.emin());
        let prod_frac = 2 * m as i32;
        // the product terms: exponent and signed significand (frac = 2m)
        let mut exps = [0i32; 32];
        let mut sigs = [0i64; 32];
        let mut nt = 0;
        for (&x, &y) in a.iter().zip(b) {
            let (ex, ey) = ((x >> m) as u32 & field_max, (y >> m) as u32 & field_max);
            if ex == field_max || ey == field_max {
                return None; // inf or NaN
            }
            let (fx, fy) = (x as u64 & frac_mask, y as u64 & frac_mask);
            if (ex == 0 && fx == 0) || (ey == 0 && fy == 0) {
                continue; // a zero product is left out (ZeroTerm::Skip)
            }
            let (xe, xs) = if ex == 0 {
                (emin, fx)
            } else {
                (ex as i32 - bias, fx | 1 << m)
            };
            let (ye, ys) = if ey == 0 {
                (emin, fy)
            } else {
                (ey as i32 - bias, fy | 1 << m)
            };
            let sig = (xs * ys) as i64;
            exps[nt] = xe + ye;
            if self.product_overflow {
                let lead = exps[nt] + (63 - sig.leading_zeros() as i32) - prod_frac;
                if lead >= 128 {
                    return None;
                }
            }
            sigs[nt] = if ((x ^ y) >> (m + eb)) & 1 == 1 {
                -sig
            } else {
                sig
            };
            nt += 1;
        }
        // C: (exponent, signed significand at 23 fractional bits), if it is a term
        let cb = c.to_bits();
        let (ce, cf) = ((cb >> 23) & 0xff, (cb & 0x7f_ffff) as i64);
        if ce == 0xff {
            return None;
        }
        let c_term = if ce == 0 && cf == 0 {
            match self.zero_c {
                ZeroTerm::Skip => None,
                ZeroTerm::Exponent(ez) => Some((ez, 0i64)),
            }
        } else {
            let (e, sig) = if ce == 0 {
                (-126, cf)
            } else {
                (ce as i32 - 127, cf | 1 << 23)
            };
            Some((e, if cb >> 31 == 1 { -sig } else { sig }))
        };
        let fb = self.frac_bits as i32;
        // signed significand `sig * 2^(exp - frac)` in units of 2^(e - fb), truncated toward zero
        let align = |sig: i64, exp: i32, frac: i32, e: i32| -> i64 {
            let right = (e - exp) + frac - fb;
            let mag = if right >= 0 {
                if right >= 63 {
                    0
                } else {
                    sig.unsigned_abs() >> right
                }
            } else {
                sig.unsigned_abs() << -right
            } as i64;
            if sig < 0 {
                -mag
            } else {
                mag
            }
        };
        let (sum, lsb_exp): (i128, i64) = match self.c_add {
            CAdd::Joint => {
                let pe = exps[..nt].iter().copied().max();
                let Some(mut e) = pe.max(c_term.map(|(e, _)| e)) else {
                    return Some(0.0);
                };
                if let Some(lo) = self.min_align_exp {
                    e = e.max(lo);
                }
                let mut s: i64 = (0..nt).map(|i| align(sigs[i], exps[i], prod_frac, e)).sum();
                if let Some((ce, cs)) = c_term {
                    s += align(cs, ce, 23, e);
                }
                (s as i128, e as i64 - fb as i64)
            }
            CAdd::Late { sum_extra_bits: x } => {
                let ep = exps[..nt]
                    .iter()
                    .copied()
                    .max()
                    .map(|e| match self.min_align_exp {
                        Some(lo) => e.max(lo),
                        None => e,
                    });
                let s: i64 = ep.map_or(0, |e| {
                    (0..nt).map(|i| align(sigs[i], exps[i], prod_frac, e)).sum()
                });
                let mx = match (ep, c_term) {
                    (None, None) => return Some(0.0),
                    (Some(e), None) => e,
                    (None, Some((t, _))) => t,
                    (Some(e), Some((t, _))) => e.max(t),
                };
                let s2 = ep.map_or(0, |e| floor_shift((s as i128) << x, (mx - e) as i64));
                let c2 = c_term.map_or(0, |(t, sig)| {
                    if let Some(cut) = self.late_c_cutoff {
                        if t < mx - cut as i32 {
                            return 0;
                        }
                    }
                    floor_shift(sig as i128, (mx - t) as i64 + 23 - fb as i64)
                });
                (s2 + (c2 << x), mx as i64 - fb as i64 - x as i64)
            }
        };
        if sum == 0 {
            return Some(0.0);
        }
        let d = round_to_f32(
            sum < 0,
            sum.unsigned_abs(),
            lsb_exp,
            self.rounding,
            self.overflow,
        );
        Some(if d == 0.0 { 0.0 } else { d })
    }

    /// [`Self::block_fma`] for any block: specials, fnuz formats and every
    /// model parameter.
    pub fn block_fma_general(&self, format: InFormat, a: &[u16], b: &[u16], c: f32) -> f32 {
        let nan = f32::from_bits(self.nan_bits);
        let cc = decode_f32(c);
        let (mut pos_inf, mut neg_inf) = (false, false);
        // the block's terms (products, then C) on the stack when they fit
        let mut arr = [Term::ZERO; 33];
        let mut heap = Vec::new();
        if a.len() + 1 > arr.len() {
            heap.resize(a.len() + 1, Term::ZERO);
        }
        let buf: &mut [Term] = if heap.is_empty() { &mut arr } else { &mut heap };
        let mut nt = 0;
        // which half (k parity) each product term comes from, for odd_even
        let mut odd = [false; 33];
        let mut odd_heap = vec![false; if a.len() + 1 > 33 { a.len() + 1 } else { 0 }];
        let odd: &mut [bool] = if odd_heap.is_empty() {
            &mut odd
        } else {
            &mut odd_heap
        };
        // every addend is a -0 (for the IEEE zero sign)
        let mut all_neg_zero = true;
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            odd[nt] = i % 2 == 1;
            match product(format.decode(x), format.decode(y)) {
                Prod::Nan => return nan,
                Prod::Inf(s) => {
                    all_neg_zero = false;
                    if s {
                        neg_inf = true
                    } else {
                        pos_inf = true
                    }
                }
                Prod::Term(t) => {
                    all_neg_zero = false;
                    buf[nt] = t;
                    nt += 1;
                }
                Prod::Zero(s, other_exp) => {
                    all_neg_zero &= s;
                    if let ZeroTerm::Exponent(ez) = self.zero_products {
                        let other = if other_exp == i32::MIN { ez } else { other_exp };
                        buf[nt] = Term {
                            neg: s,
                            exp: ez + other,
                            sig: 0,
                            frac: 0,
                        };
                        nt += 1;
                    }
                }
            }
        }
        let c_term = match cc {
            Class::Nan => return nan,
            Class::Inf(s) => {
                if s {
                    neg_inf = true
                } else {
                    pos_inf = true
                }
                None
            }
            Class::Zero(s) => {
                all_neg_zero &= s;
                match self.zero_c {
                    ZeroTerm::Skip => None,
                    ZeroTerm::Exponent(ez) => Some(Term {
                        neg: s,
                        exp: ez,
                        sig: 0,
                        frac: 0,
                    }),
                }
            }
            Class::Finite(t) => {
                all_neg_zero = false;
                Some(t)
            }
        };
        match (pos_inf, neg_inf) {
            (true, true) => return nan,
            (true, false) => return f32::INFINITY,
            (false, true) => return f32::NEG_INFINITY,
            _ => {}
        }
        if self.product_overflow {
            let (mut p, mut n) = (false, false);
            for t in buf[..nt].iter().filter(|t| t.sig != 0) {
                let lead = t.exp + (63 - t.sig.leading_zeros() as i32) - t.frac as i32;
                if lead >= 128 {
                    if t.neg {
                        n = true
                    } else {
                        p = true
                    }
                }
            }
            match (p, n) {
                (true, true) => return nan,
                (true, false) => return f32::INFINITY,
                (false, true) => return f32::NEG_INFINITY,
                _ => {}
            }
        }
        let fb = self.frac_bits;
        let (sum, lsb_exp) = match self.c_add {
            CAdd::Joint => {
                if let Some(t) = c_term {
                    buf[nt] = t;
                    nt += 1;
                }
                let terms = &buf[..nt];
                let Some(mut e) = terms.iter().map(|t| t.exp).max() else {
                    return self.zero(all_neg_zero);
                };
                if let Some(lo) = self.min_align_exp {
                    e = e.max(lo);
                }
                let s: i128 = terms.iter().map(|t| align(t, e, fb)).sum();
                (s, e as i64 - fb as i64)
            }
            CAdd::Late { sum_extra_bits: x } => {
                let terms = &buf[..nt];
                let floor = |e: i32| match self.min_align_exp {
                    Some(lo) => e.max(lo),
                    None => e,
                };
                // (exponent, sum at fb bits below it) of the terms `keep` picks
                let fused = |keep: &dyn Fn(usize) -> bool| -> Option<(i32, i128)> {
                    let e = floor((0..nt).filter(|&i| keep(i)).map(|i| terms[i].exp).max()?);
                    let s = (0..nt)
                        .filter(|&i| keep(i))
                        .map(|i| align(&terms[i], e, fb))
                        .sum();
                    Some((e, s))
                };
                let (ep, s) = if self.odd_even {
                    match (fused(&|i| !odd[i]), fused(&|i| odd[i])) {
                        (None, None) => (None, 0),
                        (Some((e, s)), None) | (None, Some((e, s))) => (Some(e), s),
                        // each half floored onto the larger half's grid
                        (Some((e0, s0)), Some((e1, s1))) => {
                            let e = e0.max(e1);
                            let s =
                                floor_shift(s0, (e - e0) as i64) + floor_shift(s1, (e - e1) as i64);
                            (Some(e), s)
                        }
                    }
                } else {
                    match fused(&|_| true) {
                        Some((e, s)) => (Some(e), s),
                        None => (None, 0),
                    }
                };
                let m = match (ep, c_term) {
                    (None, None) => return self.zero(all_neg_zero),
                    (Some(e), None) => e,
                    (None, Some(t)) => t.exp,
                    (Some(e), Some(t)) => e.max(t.exp),
                };
                // products: from fb bits below 2^ep to fb + x bits below 2^m, floor
                let s2 = ep.map_or(0, |e| floor_shift(s << x, (m - e) as i64));
                // C: fb bits below 2^m, floor; then to fb + x bits (exact)
                let c2 = c_term.map_or(0, |t| {
                    if let Some(cut) = self.late_c_cutoff {
                        if t.exp < m - cut as i32 {
                            return 0;
                        }
                    }
                    let v = if t.neg {
                        -(t.sig as i128)
                    } else {
                        t.sig as i128
                    };
                    // v * 2^(t.exp - 23) in units of 2^(m - fb)
                    let right = (m - t.exp) as i64 + t.frac as i64 - fb as i64;
                    floor_shift(v, right)
                });
                (s2 + (c2 << x), m as i64 - fb as i64 - x as i64)
            }
        };
        if sum == 0 {
            return self.zero(all_neg_zero);
        }
        let d = round_to_f32(
            sum < 0,
            sum.unsigned_abs(),
            lsb_exp,
            self.rounding,
            self.overflow,
        );
        // A nonzero sum that rounds to zero: +0 unless IEEE signs are kept
        // (the H100 returns +0 for a negative sum below 2^-149 under RZ:
        // 1,472 of 128 M bf16 elements of `attnlab diff --backend mma`).
        if d == 0.0 {
            self.zero(false)
        } else {
            d
        }
    }

    fn zero(&self, all_neg_zero: bool) -> f32 {
        if self.ieee_zero_sign && all_neg_zero {
            -0.0
        } else {
            0.0
        }
    }
}

impl Pairwise {
    fn flush(&self, x: f32) -> f32 {
        if self.flush_subnormals && x != 0.0 && x.abs() < f32::MIN_POSITIVE {
            0.0f32.copysign(x)
        } else {
            x
        }
    }

    fn tree(&self, p: &[f32]) -> f32 {
        if p.len() == 1 {
            return p[0];
        }
        let (l, r) = p.split_at(p.len() / 2);
        self.flush(self.tree(l) + self.tree(r))
    }

    /// One group: products rounded to f32 (`fma(a, b, +0)`), summed as a
    /// pairwise tree, then added to `c`; every partial result flushed.
    pub fn group_add(&self, format: InFormat, a: &[u16], b: &[u16], c: f32) -> f32 {
        let emin = (format.emin() as f32).exp2();
        let input = |bits: u16| {
            let v = format.to_f32(bits);
            if self.flush_subnormals && v != 0.0 && v.abs() < emin {
                0.0
            } else {
                v
            }
        };
        let c = if self.flush_subnormals && c != 0.0 && c.abs() < f32::MIN_POSITIVE {
            0.0
        } else {
            c
        };
        let prods: Vec<f32> = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| self.flush(input(x).mul_add(input(y), 0.0)))
            .collect();
        let r = self.flush(c + self.tree(&prods));
        if r.is_nan() {
            f32::from_bits(self.nan_bits)
        } else {
            r
        }
    }
}

/// The instruction shapes (M, N, K) of the modelled bf16/f16 -> f32 forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32`
    M16N8K16,
    /// `wgmma.mma_async.sync.aligned.m64n8k16.f32.{bf16,f16}.{bf16,f16}`
    /// (Hopper, one warpgroup of 128 threads; A from registers, B from
    /// shared memory through a matrix descriptor). Each element of D is
    /// one 16-product dot plus C, the arithmetic [`Shape::M16N8K16`]'s
    /// model describes: the diff tests that hypothesis.
    M64N8K16,
    /// `v_mfma_f32_16x16x16{bf16_1k,f16}`
    M16N16K16,
    /// `v_mfma_f32_32x32x8{bf16_1k,f16}`
    M32N32K8,
    /// `v_mfma_f32_16x16x32_{fp8_fp8,bf8_bf8}` (gfx940+)
    M16N16K32,
    /// `v_mfma_f32_32x32x16_{fp8_fp8,bf8_bf8}` (gfx940+)
    M32N32K16,
}

impl Shape {
    pub const fn mnk(self) -> (usize, usize, usize) {
        match self {
            Shape::M16N8K16 => (16, 8, 16),
            Shape::M64N8K16 => (64, 8, 16),
            Shape::M16N16K16 => (16, 16, 16),
            Shape::M32N32K8 => (32, 32, 8),
            Shape::M16N16K32 => (16, 16, 32),
            Shape::M32N32K16 => (32, 32, 16),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Shape::M16N8K16 => "m16n8k16",
            Shape::M64N8K16 => "m64n8k16",
            Shape::M16N16K16 => "16x16x16",
            Shape::M32N32K8 => "32x32x8",
            Shape::M16N16K32 => "16x16x32",
            Shape::M32N32K16 => "32x32x16",
        }
    }

    /// Lanes that hold the fragments (a warpgroup's 128 threads for wgmma).
    pub const fn lanes(self) -> usize {
        match self {
            Shape::M16N8K16 => 32,
            Shape::M64N8K16 => 128,
            _ => 64,
        }
    }

    /// A, B and C/D elements per lane.
    pub const fn per_lane(self) -> (usize, usize, usize) {
        let (m, n, k) = self.mnk();
        let l = self.lanes();
        (m * k / l, k * n / l, m * n / l)
    }

    /// (row, k) of element `i` of lane `lane`'s A fragment.
    pub const fn a_index(self, lane: usize, i: usize) -> (usize, usize) {
        match self {
            // PTX ISA, "Matrix Fragments for mma.m16n8k16" (.bf16/.f16):
            // groupID = lane / 4, tig = lane % 4; a0..a7 in 4 registers.
            Shape::M16N8K16 => {
                let (g, t) = (lane / 4, lane % 4);
                let row = g + 8 * ((i / 2) % 2);
                let col = 2 * t + (i % 2) + 8 * (i / 4);
                (row, col)
            }
            // PTX ISA, "Register Fragments and Shared Memory Matrix Layouts"
            // of wgmma .m64nNk16: warp w of the warpgroup holds rows
            // 16w..16w+15 in m16n8k16's A layout.
            Shape::M64N8K16 => {
                let (row, col) = Shape::M16N8K16.a_index(lane % 32, i);
                (row + 16 * (lane / 32), col)
            }
            // CDNA: lane l holds row l % M, k = P * (l / M) + i (P per lane).
            Shape::M16N16K16 => (lane % 16, 4 * (lane / 16) + i),
            Shape::M32N32K8 => (lane % 32, 4 * (lane / 32) + i),
            Shape::M16N16K32 => (lane % 16, 8 * (lane / 16) + i),
            Shape::M32N32K16 => (lane % 32, 8 * (lane / 32) + i),
        }
    }

    /// (k, col) of element `i` of lane `lane`'s B fragment.
    pub const fn b_index(self, lane: usize, i: usize) -> (usize, usize) {
        match self {
            Shape::M16N8K16 => (2 * (lane % 4) + (i % 2) + 8 * (i / 2), lane / 4),
            // B is read from shared memory, not registers: this is the
            // staging convention of the probe (thread l stores one element).
            Shape::M64N8K16 => (lane % 16, lane / 16),
            Shape::M16N16K16 => (4 * (lane / 16) + i, lane % 16),
            Shape::M32N32K8 => (4 * (lane / 32) + i, lane % 32),
            Shape::M16N16K32 => (8 * (lane / 16) + i, lane % 16),
            Shape::M32N32K16 => (8 * (lane / 32) + i, lane % 32),
        }
    }

    /// (row, col) of element `i` of lane `lane`'s C/D fragment.
    pub const fn d_index(self, lane: usize, i: usize) -> (usize, usize) {
        match self {
            Shape::M16N8K16 => (lane / 4 + 8 * (i / 2), 2 * (lane % 4) + (i % 2)),
            // warp w holds rows 16w..16w+15 in m16n8k16's D layout
            Shape::M64N8K16 => {
                let (row, col) = Shape::M16N8K16.d_index(lane % 32, i);
                (row + 16 * (lane / 32), col)
            }
            Shape::M16N16K16 | Shape::M16N16K32 => (4 * (lane / 16) + i, lane % 16),
            // 16 accumulators: 4 groups of 4 rows, 8 rows apart.
            Shape::M32N32K8 | Shape::M32N32K16 => {
                (8 * (i / 4) + 4 * (lane / 32) + i % 4, lane % 32)
            }
        }
    }
}

/// D = A·B + C for one instruction: `a` is M×K and `b` K×N, row-major
/// storage bits of `format`; `c` is M×N row-major. Returns D row-major.
pub fn tile(
    model: &Model,
    shape: Shape,
    format: InFormat,
    a: &[u16],
    b: &[u16],
    c: &[f32],
) -> Vec<f32> {
    let (m, n, k) = shape.mnk();
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    let mut d = vec![0.0f32; m * n];
    let mut col = vec![0u16; k];
    for j in 0..n {
        for (kk, x) in col.iter_mut().enumerate() {
            *x = b[kk * n + j];
        }
        for i in 0..m {
            d[i * n + j] = model.dot(format, &a[i * k..(i + 1) * k], &col, c[i * n + j]);
        }
    }
    d
}

/// [`tile`] in the lane layout: each lane's A, B and C fragments
/// (`lanes × per_lane` elements, lane-major) in, each lane's D fragment out:
/// what one execution of the instruction by a whole wave returns.
pub fn tile_fragments(
    model: &Model,
    shape: Shape,
    format: InFormat,
    a_frag: &[u16],
    b_frag: &[u16],
    c_frag: &[f32],
) -> Vec<f32> {
    let (m, n, k) = shape.mnk();
    let (pa, pb, pc) = shape.per_lane();
    let lanes = shape.lanes();
    let (mut a, mut b, mut c) = (vec![0u16; m * k], vec![0u16; k * n], vec![0f32; m * n]);
    for l in 0..lanes {
        for i in 0..pa {
            let (r, kk) = shape.a_index(l, i);
            a[r * k + kk] = a_frag[l * pa + i];
        }
        for i in 0..pb {
            let (kk, cc) = shape.b_index(l, i);
            b[kk * n + cc] = b_frag[l * pb + i];
        }
        for i in 0..pc {
            let (r, cc) = shape.d_index(l, i);
            c[r * n + cc] = c_frag[l * pc + i];
        }
    }
    let d = tile(model, shape, format, &a, &b, &c);
    let mut out = vec![0f32; lanes * pc];
    for l in 0..lanes {
        for i in 0..pc {
            let (r, cc) = shape.d_index(l, i);
            out[l * pc + i] = d[r * n + cc];
        }
    }
    out
}

#[cfg(test)]
mod tests;
