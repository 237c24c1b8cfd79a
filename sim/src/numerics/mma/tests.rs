use super::*;
use proptest::prelude::*;

fn bf(x: f32) -> u16 {
    InFormat::Bf16.from_f32(x)
}
fn hf(x: f32) -> u16 {
    InFormat::F16.from_f32(x)
}

fn sm90() -> Model {
    MatrixTarget::Sm90.model(InFormat::Bf16)
}
fn gfx942() -> Model {
    MatrixTarget::Gfx942.model(InFormat::Bf16)
}
fn fused(m: Model) -> Fused {
    match m {
        Model::Fused(f) => f,
        Model::Pairwise(_) => unreachable!("a fused model"),
    }
}

/// The exact a·b + c (f64 is exact for these sums: every term is a multiple
/// of 2^-lo and the span fits 53 bits in the generators below).
fn exact(format: InFormat, a: &[u16], b: &[u16], c: f32) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| format.to_f32(x) as f64 * format.to_f32(y) as f64)
        .sum::<f64>()
        + c as f64
}

/// f64 -> f32 rounded toward zero.
fn f32_rz(x: f64) -> f32 {
    let r = x as f32;
    if (r as f64).abs() > x.abs() {
        f32::from_bits(r.to_bits() - 1)
    } else {
        r
    }
}

/// `k` bf16 values with exponents in [lo, lo + spread] and random signs.
fn narrow(k: usize, lo: i32, spread: i32) -> impl Strategy<Value = Vec<u16>> {
    prop::collection::vec((any::<bool>(), 0..=spread, 0u16..128), k).prop_map(move |v| {
        v.into_iter()
            .map(|(neg, de, frac)| {
                let e = (lo + de + 127) as u16;
                (neg as u16) << 15 | e << 7 | frac
            })
            .collect()
    })
}

proptest! {
    /// Products within 8 binades of each other and no C: 25 kept bits hold
    /// every bit of every product, so Hopper's block sum is exact and the
    /// only rounding is the final one, toward zero.
    #[test]
    fn sm90_is_the_exact_sum_rounded_toward_zero_when_nothing_is_truncated(
        a in narrow(16, -4, 4), b in narrow(16, -4, 4)
    ) {
        let got = sm90().dot(InFormat::Bf16, &a, &b, 0.0);
        let want = f32_rz(exact(InFormat::Bf16, &a, &b, 0.0));
        prop_assert_eq!(got.to_bits(), want.to_bits());
    }

    /// CDNA3: the same, rounded to nearest even, block after block.
    #[test]
    fn gfx942_is_the_exact_sum_rounded_to_nearest_when_nothing_is_truncated(
        a in narrow(8, -3, 3), b in narrow(8, -3, 3)
    ) {
        let got = gfx942().dot(InFormat::Bf16, &a, &b, 0.0);
        let want = exact(InFormat::Bf16, &a, &b, 0.0) as f32;
        prop_assert_eq!(got.to_bits(), want.to_bits());
    }

    /// Truncation and RZ are symmetric in sign: negating A and C negates D
    /// bit for bit (a zero result stays +0).
    #[test]
    fn sm90_negating_a_and_c_negates_d(a in narrow(16, -20, 40), b in narrow(16, -20, 40), c in -1e6f32..1e6) {
        let m = sm90();
        let d = m.dot(InFormat::Bf16, &a, &b, c);
        let na: Vec<u16> = a.iter().map(|x| x ^ 0x8000).collect();
        let nd = m.dot(InFormat::Bf16, &na, &b, -c);
        if d == 0.0 {
            prop_assert_eq!(nd.to_bits(), 0);
        } else {
            prop_assert_eq!(nd.to_bits(), (-d).to_bits());
        }
    }

    /// Within one block the products are summed at once: their order
    /// does not matter (on both targets).
    #[test]
    fn a_block_is_independent_of_product_order(
        a in narrow(16, -30, 60), b in narrow(16, -30, 60), c in -1e3f32..1e3, rot in 1usize..8
    ) {
        for m in [sm90(), gfx942()] {
            let g = m.group();
            let (mut ra, mut rb) = (a.clone(), b.clone());
            for blk in 0..16 / g {
                ra[blk * g..(blk + 1) * g].rotate_left(rot % g);
                rb[blk * g..(blk + 1) * g].rotate_left(rot % g);
            }
            prop_assert_eq!(m.dot(InFormat::Bf16, &a, &b, c).to_bits(), m.dot(InFormat::Bf16, &ra, &rb, c).to_bits());
        }
    }

    /// K = 16 on CDNA3 is two 8-product blocks in k order, the first
    /// block's rounded result being the second's C.
    #[test]
    fn gfx942_k16_is_two_blocks_in_k_order(a in narrow(16, -30, 60), b in narrow(16, -30, 60), c in -1e3f32..1e3) {
        let f = fused(gfx942());
        let first = f.block_fma(InFormat::Bf16, &a[..8], &b[..8], c);
        let both = f.block_fma(InFormat::Bf16, &a[8..], &b[8..], first);
        prop_assert_eq!(gfx942().dot(InFormat::Bf16, &a, &b, c).to_bits(), both.to_bits());
    }

    /// Growing one non-leading positive product (the block's largest
    /// exponent unchanged) never lowers the result: each truncation is
    /// monotone, and so are the sum and the final rounding.
    #[test]
    fn sm90_is_monotone_in_a_term_below_the_leading_one(
        a in narrow(15, -10, 9), b in narrow(15, -10, 9), x in 1u16..64
    ) {
        let abs = |v: &Vec<u16>| v.iter().map(|x| x & 0x7fff).collect::<Vec<u16>>();
        let (mut a, mut b) = (abs(&a), abs(&b));
        a.push(bf(1.0)); // leading product 2^0 * 2^0 > every other
        b.push(bf(1.0));
        let lo = sm90().dot(InFormat::Bf16, &a, &b, 0.0);
        a[0] = (a[0] & 0xff80) | ((a[0] & 0x7f).saturating_add(x)).min(0x7f);
        let hi = sm90().dot(InFormat::Bf16, &a, &b, 0.0);
        prop_assert!(hi >= lo, "{hi} < {lo}");
    }

    /// Rounding an integer times a power of two to f32 agrees with f64's
    /// conversion (RNE) wherever f64 holds the value exactly.
    #[test]
    fn round_to_f32_matches_f64_conversion(mag in 1u64..(1 << 53), e in -220i64..140, neg in any::<bool>()) {
        let v = mag as f64 * (e as f64).exp2();
        let v = if neg { -v } else { v };
        let got = round_to_f32(neg, mag as u128, e, Rounding::NearestEven, Overflow::Inf);
        prop_assert_eq!(got.to_bits(), (v as f32).to_bits());
        let rz = round_to_f32(neg, mag as u128, e, Rounding::TowardZero, Overflow::Ieee);
        prop_assert_eq!(rz.to_bits(), f32_rz(v).to_bits());
    }

    /// The fragment layout is a bijection: scattering fragments into tiles
    /// and computing per lane equals computing on the tiles.
    #[test]
    fn lane_layout_covers_every_element_once(seed in any::<u64>()) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for (shape, target) in [(Shape::M16N8K16, MatrixTarget::Sm90), (Shape::M64N8K16, MatrixTarget::Sm90), (Shape::M16N16K16, MatrixTarget::Gfx942), (Shape::M32N32K8, MatrixTarget::Gfx942), (Shape::M16N16K32, MatrixTarget::Gfx942), (Shape::M32N32K16, MatrixTarget::Gfx942)] {
            let (m, n, k) = shape.mnk();
            let (pa, pb, pc) = shape.per_lane();
            let l = shape.lanes();
            prop_assert_eq!((l * pa, l * pb, l * pc), (m * k, k * n, m * n));
            let mut seen = vec![0u8; m * k];
            for lane in 0..l { for i in 0..pa { let (r, kk) = shape.a_index(lane, i); seen[r * k + kk] += 1; } }
            prop_assert!(seen.iter().all(|&s| s == 1));
            let mut seen = vec![0u8; k * n];
            for lane in 0..l { for i in 0..pb { let (kk, c) = shape.b_index(lane, i); seen[kk * n + c] += 1; } }
            prop_assert!(seen.iter().all(|&s| s == 1));
            let mut seen = vec![0u8; m * n];
            for lane in 0..l { for i in 0..pc { let (r, c) = shape.d_index(lane, i); seen[r * n + c] += 1; } }
            prop_assert!(seen.iter().all(|&s| s == 1));
            let a: Vec<u16> = (0..m * k).map(|_| bf(rng.gen_range(-4.0f32..4.0))).collect();
            let b: Vec<u16> = (0..k * n).map(|_| bf(rng.gen_range(-4.0f32..4.0))).collect();
            let c: Vec<f32> = (0..m * n).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
            let model = target.model(InFormat::Bf16);
            let d = tile(&model, shape, InFormat::Bf16, &a, &b, &c);
            let frag = |idx: &dyn Fn(usize, usize) -> usize, per: usize| -> Vec<usize> {
                (0..l * per).map(|x| idx(x / per, x % per)).collect()
            };
            let fa: Vec<u16> = frag(&|ln, i| { let (r, kk) = shape.a_index(ln, i); r * k + kk }, pa).iter().map(|&x| a[x]).collect();
            let fb: Vec<u16> = frag(&|ln, i| { let (kk, c) = shape.b_index(ln, i); kk * n + c }, pb).iter().map(|&x| b[x]).collect();
            let didx = frag(&|ln, i| { let (r, c) = shape.d_index(ln, i); r * n + c }, pc);
            let fc: Vec<f32> = didx.iter().map(|&x| c[x]).collect();
            let fd = tile_fragments(&model, shape, InFormat::Bf16, &fa, &fb, &fc);
            for (x, &i) in didx.iter().enumerate() {
                prop_assert_eq!(fd[x].to_bits(), d[i].to_bits());
            }
        }
    }
}

/// One product beside C = 1: what 25 kept bits mean on Hopper. 1 - 2^-25
/// keeps its last bit and rounds toward zero to 1 - 2^-24; 2^-26 below
/// the leading exponent is cut, so 1 - 2^-26 gives exactly 1.
#[test]
fn sm90_keeps_25_fractional_bits_below_the_largest_exponent() {
    let m = sm90();
    let mut a = vec![0u16; 16];
    let mut b = vec![0u16; 16];
    b[0] = bf(1.0);
    a[0] = bf(-(2f32.powi(-25)));
    assert_eq!(m.dot(InFormat::Bf16, &a, &b, 1.0), 1.0 - 2f32.powi(-24));
    a[0] = bf(-(2f32.powi(-26)));
    assert_eq!(m.dot(InFormat::Bf16, &a, &b, 1.0), 1.0);
    // An IEEE fma chain would round 1 - 2^-26 to nearest: 1.0 as well, but
    // 1 + 2^-24 + 2^-24 (two products) is 1 + 2^-23 exactly here.
    a[0] = bf(2f32.powi(-24));
    a[1] = bf(2f32.powi(-24));
    b[1] = bf(1.0);
    assert_eq!(m.dot(InFormat::Bf16, &a, &b, 1.0), 1.0 + 2f32.powi(-23));
}

/// Fasi et al.'s observation: aligned truncation makes the result
/// non-monotone: a larger C can give a smaller D (it raises the alignment
/// exponent and cuts the products' low bits).
#[test]
fn sm90_dot_is_not_monotone_in_c() {
    let m = sm90();
    let a = vec![bf(2f32.powi(-25)); 16];
    let b = vec![bf(1.0); 16];
    // C just below 2: the grid is 2^-25, the 16 products add 2^-21.
    let below = 2.0 - 2f32.powi(-23);
    let d_below = m.dot(InFormat::Bf16, &a, &b, below);
    assert_eq!(d_below, 2.0 + 2f32.powi(-22));
    // C = 2: the grid is 2^-24 and every product is cut.
    let d_two = m.dot(InFormat::Bf16, &a, &b, 2.0);
    assert_eq!(d_two, 2.0);
    assert!(2.0 > below && d_two < d_below);
}

/// CDNA3 adds C after the product sum, rounding each down onto the larger
/// exponent's grid, then rounds to nearest even.
#[test]
fn gfx942_adds_c_late_with_round_down_alignment() {
    let m = gfx942();
    let mut a = vec![0u16; 8];
    let mut b = vec![0u16; 8];
    b[0] = bf(1.0);
    // products: 2^20 (leading); C = -2^-5 is floored at 24 bits below 2^20:
    // the grid is 2^-4, so -2^-5 becomes -2^-4, and 2^20 - 2^-4 is an f32.
    // (IEEE: 2^20 - 2^-5 is a tie between 2^20 - 2^-4 and 2^20: even, 2^20.)
    a[0] = bf(2f32.powi(20));
    assert_eq!(
        m.dot(InFormat::Bf16, &a, &b, -(2f32.powi(-5))),
        2f32.powi(20) - 2f32.powi(-4)
    );
    // positive C below the grid is floored to zero
    assert_eq!(m.dot(InFormat::Bf16, &a, &b, 2f32.powi(-5)), 2f32.powi(20));
}

#[test]
fn special_values_follow_each_target() {
    let nan_in = 0x7fc1u16; // a bf16 NaN
    let inf = bf(f32::INFINITY);
    let ninf = bf(f32::NEG_INFINITY);
    let one = bf(1.0);
    let mut a = vec![one; 16];
    let b = vec![one; 16];
    for m in [sm90(), gfx942()] {
        let nan_bits = match m {
            Model::Fused(f) => f.nan_bits,
            Model::Pairwise(p) => p.nan_bits,
        };
        a[3] = nan_in;
        assert_eq!(m.dot(InFormat::Bf16, &a, &b, 0.0).to_bits(), nan_bits);
        a[3] = inf;
        assert_eq!(m.dot(InFormat::Bf16, &a, &b, 0.0), f32::INFINITY);
        assert_eq!(
            m.dot(InFormat::Bf16, &a, &b, f32::NEG_INFINITY).to_bits(),
            nan_bits
        );
        a[4] = ninf;
        assert_eq!(m.dot(InFormat::Bf16, &a, &b, 0.0).to_bits(), nan_bits);
        a[4] = one;
        let mut z = b.clone();
        z[3] = 0;
        assert_eq!(
            m.dot(InFormat::Bf16, &a, &z, 0.0).to_bits(),
            nan_bits,
            "inf * 0"
        );
        a[3] = one;
        assert_eq!(m.dot(InFormat::Bf16, &a, &b, f32::NAN).to_bits(), nan_bits);
    }
    // 2^100 * 2^100 overflows f32 as a product: CDNA3 says inf at once;
    // Hopper keeps it and cancels it with its negative exactly.
    let mut a = vec![0u16; 16];
    let mut b = vec![0u16; 16];
    a[0] = bf(2f32.powi(100));
    b[0] = bf(2f32.powi(100));
    a[1] = bf(-(2f32.powi(100)));
    b[1] = bf(2f32.powi(100));
    a[2] = bf(3.0);
    b[2] = bf(1.0);
    assert_eq!(
        gfx942().dot(InFormat::Bf16, &a, &b, 0.0).to_bits(),
        QUIET_NAN
    );
    assert_eq!(
        sm90().dot(InFormat::Bf16, &a, &b, 0.0),
        0.0,
        "3 is cut below 2^200"
    );
    a[1] = 0;
    assert_eq!(gfx942().dot(InFormat::Bf16, &a, &b, 0.0), f32::INFINITY);
    assert_eq!(sm90().dot(InFormat::Bf16, &a, &b, 0.0), f32::INFINITY);
}

#[test]
fn subnormals_take_part_and_come_out() {
    // f16 subnormal inputs: 2^-24 * 2^-24 is far below f32's subnormals;
    // 2^-14 * 2^-24 = 2^-38 is a normal f32.
    let m = MatrixTarget::Sm90.model(InFormat::F16);
    let mut a = vec![0u16; 16];
    let mut b = vec![0u16; 16];
    a[0] = hf(2f32.powi(-24));
    b[0] = hf(2f32.powi(-14));
    assert_eq!(m.dot(InFormat::F16, &a, &b, 0.0), 2f32.powi(-38));
    // bf16: 2^-70 * 2^-70 = 2^-140 is an f32 subnormal, kept by both.
    let mut a = vec![0u16; 16];
    let mut b = vec![0u16; 16];
    a[0] = bf(2f32.powi(-70));
    b[0] = bf(2f32.powi(-70));
    assert_eq!(sm90().dot(InFormat::Bf16, &a, &b, 0.0), 2f32.powi(-140));
    assert_eq!(gfx942().dot(InFormat::Bf16, &a, &b, 0.0), 2f32.powi(-140));
    // CDNA2 flushes: the same product is 0, and so is an f16 subnormal input.
    let cdna2 = MatrixTarget::Gfx90a.model(InFormat::Bf16);
    assert_eq!(cdna2.dot(InFormat::Bf16, &a[..4], &b[..4], 0.0), 0.0);
}

#[test]
fn typed_dot_is_the_model_on_storage_bits() {
    let a = [half::bf16::from_f32(1.5); 16];
    let b = [half::bf16::from_f32(-2.0); 16];
    assert_eq!(dot(MatrixTarget::Sm90, &a, &b, 1.0), -47.0);
    let a = [half::f16::from_f32(0.25); 8];
    let b = [half::f16::from_f32(4.0); 8];
    assert_eq!(dot(MatrixTarget::Gfx942, &a, &b, 0.5), 8.5);
    assert_eq!(dot(MatrixTarget::Gfx90a, &a, &b, 0.5), 8.5);
}

#[test]
fn targets_parse_by_their_compiler_names() {
    assert_eq!(MatrixTarget::parse("gfx940").unwrap(), MatrixTarget::Gfx942);
    assert_eq!(MatrixTarget::parse("sm_90").unwrap(), MatrixTarget::Sm90);
    let e = MatrixTarget::parse("sm_80").unwrap_err().to_string();
    assert!(e.contains("'sm_80'") && e.contains("gfx90a"), "{e}");
}

#[test]
fn fnuz_fp8_formats_decode_as_shared_dtype_does() {
    use attnlab_shared::dtype::FP8_FNUZ;
    for code in 0u16..256 {
        let ours = InFormat::Fp8E4m3Fnuz.to_f32(code);
        let theirs = FP8_FNUZ.decode(code as u8);
        assert!(
            ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
            "{code:#x}: {ours} vs {theirs}"
        );
    }
    assert!(InFormat::Bf8E5m2Fnuz.to_f32(0x80).is_nan());
    assert_eq!(InFormat::Bf8E5m2Fnuz.to_f32(0x7f), 57344.0);
    assert_eq!(InFormat::Fp8E4m3Fnuz.to_f32(0x7f), 240.0);
    assert_eq!(InFormat::Bf8E5m2Fnuz.to_f32(0x01), 2f32.powi(-17));
    for f in [InFormat::Fp8E4m3Fnuz, InFormat::Bf8E5m2Fnuz] {
        for code in 0u16..256 {
            if code != 0x80 {
                assert_eq!(f.from_f32(f.to_f32(code)), code, "{f:?} {code:#x}");
            }
        }
    }
}

/// CDNA3 fp8: the even and odd products of a 16-product block are two
/// sums, and the smaller is floored onto the larger's 24-bit grid: 1 and
/// -2^-30 give 1 - 2^-24 (one block of all 16 would truncate -2^-30 to
/// zero and give 1; IEEE would round 1 - 2^-30 to 1).
#[test]
fn gfx942_fp8_floors_the_smaller_half_onto_the_larger_halfs_grid() {
    let f = InFormat::Bf8E5m2Fnuz;
    let m = MatrixTarget::Gfx942.model(f);
    let mut a = vec![0u16; 32];
    let mut b = vec![0u16; 32];
    a[0] = f.from_f32(1.0);
    b[0] = f.from_f32(1.0);
    a[1] = f.from_f32(-(2f32.powi(-15)));
    b[1] = f.from_f32(2f32.powi(-15));
    assert_eq!(m.dot(f, &a, &b, 0.0), 1.0 - 2f32.powi(-24));
    let Model::Fused(fused) = m else {
        panic!("fused")
    };
    let together = Model::Fused(Fused {
        odd_even: false,
        ..fused
    });
    assert_eq!(together.dot(f, &a, &b, 0.0), 1.0);
    // NaN is 0x80 and there is no infinity
    a[5] = 0x80;
    assert_eq!(m.dot(f, &a, &b, 0.0).to_bits(), QUIET_NAN);
}

/// Storage bits for the fast-path check: random patterns (specials included),
/// zeros and subnormals, and values with wide or narrow exponent spreads.
fn operand_bits(format: InFormat) -> impl Strategy<Value = u16> {
    let (m, eb) = (format.mant_bits(), 16 - 1 - format.mant_bits());
    let field_max = (1u16 << eb) - 1;
    prop_oneof![
        3 => any::<u16>(),
        1 => (any::<bool>(), 0u16..(1 << m)).prop_map(move |(s, f)| (s as u16) << 15 | f),
        1 => Just(0u16),
        1 => Just(0x8000u16),
        4 => (any::<bool>(), 1..field_max, 0u16..(1 << m))
            .prop_map(move |(s, e, f)| (s as u16) << 15 | e << m | f),
        2 => (any::<bool>(), 0u16..6, 0u16..(1 << m))
            .prop_map(move |(s, e, f)| (s as u16) << 15 | (field_max / 2 + e) << m | f),
    ]
}

fn c_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => any::<u32>().prop_map(f32::from_bits),
        2 => -1e6f32..1e6,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => (0u32..0x80_0000).prop_map(f32::from_bits),
    ]
}

/// The published models and the probe's kind of alternatives (other kept
/// bits, rounding, C entry, alignment floor, zero-C exponent).
fn fast_path_models() -> Vec<Fused> {
    let mut out = Vec::new();
    for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
        let f = fused(t.model(InFormat::Bf16));
        out.push(f);
        out.push(Fused {
            frac_bits: f.frac_bits + 3,
            ..f
        });
        out.push(Fused {
            frac_bits: 23,
            rounding: Rounding::NearestEven,
            ..f
        });
        out.push(Fused {
            min_align_exp: None,
            zero_c: ZeroTerm::Exponent(-126),
            ..f
        });
        out.push(Fused {
            c_add: CAdd::Joint,
            product_overflow: !f.product_overflow,
            ..f
        });
        out.push(Fused {
            c_add: CAdd::Late { sum_extra_bits: 3 },
            late_c_cutoff: Some(25),
            overflow: Overflow::Ieee,
            ..f
        });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// `block_fma`'s integer fast path gives the general path's bits for
    /// every model it takes, at every block length up to 32.
    #[test]
    fn fast_path_equals_the_general_block_fma(
        f16 in any::<bool>(),
        model in 0usize..12,
        n in 1usize..=32,
        seed in prop::collection::vec((any::<u16>(), any::<u16>()), 32),
        bits in prop::collection::vec((operand_bits(InFormat::Bf16), operand_bits(InFormat::F16)), 64),
        pick in prop::collection::vec(0u8..4, 64),
        c in c_value(),
    ) {
        let format = if f16 { InFormat::F16 } else { InFormat::Bf16 };
        let f = fast_path_models()[model];
        // mostly the structured operands, some raw random bits
        let val = |i: usize| {
            let (b, h) = bits[i];
            match pick[i] {
                0 => if i < 32 { seed[i].0 } else { seed[i - 32].1 },
                _ => if f16 { h } else { b },
            }
        };
        let a: Vec<u16> = (0..n).map(val).collect();
        let b: Vec<u16> = (0..n).map(|i| val(32 + i)).collect();
        let fast = f.block_fma(format, &a, &b, c);
        let general = f.block_fma_general(format, &a, &b, c);
        prop_assert_eq!(fast.to_bits(), general.to_bits(), "{:?} {:?} a={:04x?} b={:04x?} c={:e}", f, format, a, b, c);
    }
}

#[test]
fn finite_blocks_of_both_targets_take_the_fast_path() {
    let a: Vec<u16> = (0..16).map(|i| bf(1.0 + i as f32 / 8.0)).collect();
    let b: Vec<u16> = (0..16).map(|i| bf(-0.5 + i as f32 / 32.0)).collect();
    for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
        let f = fused(t.model(InFormat::Bf16));
        let k = f.block.min(16);
        assert!(
            f.block_fma_finite(InFormat::Bf16, &a[..k], &b[..k], 3.25)
                .is_some(),
            "{t:?}"
        );
        // specials leave it to the general path
        let mut inf = a.clone();
        inf[0] = bf(f32::INFINITY);
        assert!(f
            .block_fma_finite(InFormat::Bf16, &inf[..k], &b[..k], 3.25)
            .is_none());
    }
}
