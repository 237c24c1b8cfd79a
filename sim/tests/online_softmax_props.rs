//! The online-softmax row state (`RowState`, `MaskedRowMax`, `OutLse` in
//! `sim/src/kernels/softmax.rs`; numerics.md §3-4) as properties: over any
//! tiling of a row's keys it computes the base-2 softmax-weighted mean of
//! the values and the row's log-sum-exp; a sink is one extra key of value
//! 0 that comes first; masked keys and all-masked tiles change nothing, bit
//! for bit, whatever their values; P is rounded to the V dtype before the
//! PV product but summed unrounded; an empty row gives 0 and -inf. Written
//! to close the holes `cargo mutants` found (docs/src/bugs.md, "Mutation
//! score"); the properties use only the public API, so they hold for any
//! rewrite of the state that keeps its behaviour.

use attnlab_shared::dtype::DType;
use attnlab_sim::kernels::softmax::{
    MaskedRowMax, OutLse, RowState, ScoreParams, PV_KEYS, ROW_BLOCK, TRITON_L_EPS,
};
use attnlab_sim::numerics::{exp2c, log2c, SoftcapFormula, LN2, LOG2E};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One tile: base-2 scores (-inf where masked) and the V rows.
#[derive(Debug, Clone)]
struct Tile {
    scores: Vec<f32>,
    values: Vec<Vec<f32>>,
}

/// A row's keys cut into 1-4 tiles of 0 to ~2.5 * PV_KEYS keys (so one
/// update spans several of the state's internal P chunks), a fifth masked.
fn tiles(d: usize, seed: u64, max_tile: usize) -> Vec<Tile> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n_tiles = rng.gen_range(1..=4);
    (0..n_tiles)
        .map(|_| {
            let n = rng.gen_range(0..=max_tile);
            let scores = (0..n)
                .map(|_| {
                    if rng.gen_bool(0.2) {
                        f32::NEG_INFINITY
                    } else {
                        rng.gen_range(-20.0f32..20.0)
                    }
                })
                .collect();
            let values = (0..n)
                .map(|_| (0..d).map(|_| rng.gen_range(-2.0f32..2.0)).collect())
                .collect();
            Tile { scores, values }
        })
        .collect()
}

fn run(d: usize, sink: Option<f32>, tiles: &[Tile], p_dtype: DType) -> RowState {
    let mut st = RowState::new(d, sink);
    for t in tiles {
        st.update(&t.scores, |j| t.values[j].as_slice(), p_dtype);
    }
    st
}

/// The f64 softmax over every key (and the sink, value 0): weighted mean,
/// base-2 lse and the max score; None when no key is visible.
fn reference(d: usize, sink: Option<f32>, tiles: &[Tile]) -> Option<(Vec<f64>, f64, f32)> {
    let mut keys: Vec<(f32, Vec<f32>)> = Vec::new();
    if let Some(s) = sink {
        keys.push((s * LOG2E, vec![0.0; d]));
    }
    for t in tiles {
        keys.extend(t.scores.iter().copied().zip(t.values.iter().cloned()));
    }
    let m = keys.iter().map(|k| k.0).fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        return None;
    }
    let mut l = 0.0f64;
    let mut acc = vec![0.0f64; d];
    for (s, v) in &keys {
        let w = (*s as f64 - m as f64).exp2();
        l += w;
        for (a, &x) in acc.iter_mut().zip(v) {
            *a += w * x as f64;
        }
    }
    Some((acc.iter().map(|a| a / l).collect(), m as f64 + l.log2(), m))
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

fn same_state(a: &RowState, b: &RowState) -> bool {
    a.m.to_bits() == b.m.to_bits() && a.l.to_bits() == b.l.to_bits() && bits(&a.acc) == bits(&b.acc)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// Over any tiling (tiles larger than the state's P chunk included),
    /// with or without a sink: out = sum 2^s v / sum 2^s, lse2 = log2 sum
    /// 2^s, m = the largest score; an empty row gives 0 and -inf.
    #[test]
    fn the_row_state_computes_the_softmax_weighted_mean_and_lse_over_any_tiling(
        d in 1usize..12, seed in any::<u64>(), sink in prop::option::weighted(0.3, -10.0f32..10.0),
        mask_all in prop::bool::weighted(0.15),
    ) {
        let mut ts = tiles(d, seed, 5 * PV_KEYS / 2);
        if mask_all {
            ts.iter_mut().for_each(|t| t.scores.fill(f32::NEG_INFINITY));
        }
        let st = run(d, sink, &ts, DType::F32);
        match reference(d, sink, &ts) {
            Some((out, lse2, m)) => {
                prop_assert_eq!(st.m.to_bits(), m.to_bits());
                prop_assert!((st.lse2() as f64 - lse2).abs() <= 1e-5 * lse2.abs().max(1.0), "lse2 {} vs {}", st.lse2(), lse2);
                for (a, b) in st.normalized().iter().zip(&out) {
                    prop_assert!((*a as f64 - b).abs() <= 2e-5, "{} vs {}", a, b);
                }
                for (a, b) in st.normalized_eps(TRITON_L_EPS).iter().zip(&out) {
                    prop_assert!((*a as f64 - b).abs() <= 2e-5, "{} vs {}", a, b);
                }
            }
            None => {
                prop_assert_eq!(st.l, 0.0);
                prop_assert_eq!(st.m, f32::NEG_INFINITY);
                // +0, not -0: the Triton epilogue's 0 / (0 + 1e-10).
                prop_assert_eq!(bits(&st.normalized()), vec![0u32; d]);
                prop_assert_eq!(bits(&st.normalized_eps(TRITON_L_EPS)), vec![0u32; d]);
                prop_assert_eq!(st.lse2(), f32::NEG_INFINITY);
                prop_assert_eq!(st.lse(), f32::NEG_INFINITY);
            }
        }
    }

    /// Masked keys (score -inf) never touch the state, whatever their V
    /// holds (NaN, inf): removing them, or adding all-masked tiles, leaves
    /// m, l and acc the same bit for bit.
    #[test]
    fn masked_keys_and_all_masked_tiles_change_nothing(
        d in 1usize..10, seed in any::<u64>(), sink in prop::option::weighted(0.3, -10.0f32..10.0),
        garbage in prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30]),
        extra in 0usize..200,
    ) {
        let mut ts = tiles(d, seed, 3 * PV_KEYS);
        for t in &mut ts {
            for (s, v) in t.scores.iter().zip(t.values.iter_mut()) {
                if *s == f32::NEG_INFINITY {
                    v.fill(garbage);
                }
            }
        }
        let unmasked: Vec<Tile> = ts.iter().map(|t| {
            let keep: Vec<usize> = (0..t.scores.len()).filter(|&j| t.scores[j] != f32::NEG_INFINITY).collect();
            Tile { scores: keep.iter().map(|&j| t.scores[j]).collect(), values: keep.iter().map(|&j| t.values[j].clone()).collect() }
        }).collect();
        let mut padded = ts.clone();
        padded.insert(seed as usize % (ts.len() + 1), Tile { scores: vec![f32::NEG_INFINITY; extra], values: vec![vec![garbage; d]; extra] });
        for p_dtype in [DType::F32, DType::Bf16] {
            let a = run(d, sink, &ts, p_dtype);
            prop_assert!(same_state(&a, &run(d, sink, &unmasked, p_dtype)), "{:?}", a);
            prop_assert!(same_state(&a, &run(d, sink, &padded, p_dtype)), "{:?}", a);
            prop_assert!(a.acc.iter().all(|x| x.is_finite()));
        }
    }

    /// A step whose scores are all -inf leaves the state's bits unchanged
    /// exactly when `all_masked_step_is_identity` says so (kernels skip it
    /// then): from states that saw finite, NaN, +inf or no scores at all,
    /// with or without a sink.
    #[test]
    fn all_masked_step_is_an_identity_unless_the_max_is_inf(
        d in 1usize..10, seed in any::<u64>(), sink in prop::option::weighted(0.3, -10.0f32..10.0),
        special in prop::sample::select(vec![None, Some(f32::NAN), Some(f32::INFINITY), Some(f32::NEG_INFINITY)]),
        n in 1usize..40,
    ) {
        let mut ts = tiles(d, seed, 2 * PV_KEYS);
        if let (Some(x), Some(t)) = (special, ts.first_mut()) {
            if let Some(s) = t.scores.first_mut() {
                *s = x;
            }
        }
        for p_dtype in [DType::F32, DType::Bf16] {
            let before = run(d, sink, &ts, p_dtype);
            let mut after = before.clone();
            let values = vec![vec![1.5f32; d]; n];
            after.update(&vec![f32::NEG_INFINITY; n], |j| values[j].as_slice(), p_dtype);
            prop_assert_eq!(before.all_masked_step_is_identity(), before.m != f32::INFINITY);
            if before.all_masked_step_is_identity() {
                prop_assert!(same_state(&before, &after), "{:?} -> {:?}", before, after);
            }
        }
    }

    /// One tile from a fresh state: P = exp2c(s - max) is rounded to the V
    /// dtype before the PV product (acc = sum round(P) v, in f32), but l
    /// sums the unrounded P.
    #[test]
    fn p_is_rounded_to_the_v_dtype_for_pv_but_summed_unrounded(
        d in 1usize..8, n in 1usize..300, seed in any::<u64>(), dt in 0usize..2,
    ) {
        let p_dtype = [DType::F16, DType::Bf16][dt];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scores: Vec<f32> = (0..n).map(|_| rng.gen_range(-6.0f32..6.0)).collect();
        let values: Vec<Vec<f32>> = (0..n).map(|_| (0..d).map(|_| rng.gen_range(0.5f32..2.0)).collect()).collect();
        let t = Tile { scores: scores.clone(), values: values.clone() };
        let st = run(d, None, &[t], p_dtype);
        let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let p: Vec<f32> = scores.iter().map(|&s| exp2c(s - m)).collect();
        // A recursive f32 sum of n non-negative terms is within γ_n of the
        // exact sum (Higham, Accuracy and Stability of Numerical Algorithms,
        // section 4.2: n·u with u = 2^-24,
        // one more u per term for the rounded product p·v).
        let u = f64::from(f32::EPSILON) / 2.0;
        let l: f64 = p.iter().map(|&x| x as f64).sum();
        let tol_l = n as f64 * u / (1.0 - n as f64 * u) * l;
        prop_assert!((st.l as f64 - l).abs() <= tol_l, "l {} vs {}", st.l, l);
        for dd in 0..d {
            let want: f64 = p.iter().zip(&values).map(|(&x, v)| p_dtype.round(x) as f64 * v[dd] as f64).sum();
            let tol = (n + 1) as f64 * u / (1.0 - (n + 1) as f64 * u) * want;
            prop_assert!((st.acc[dd] as f64 - want).abs() <= tol, "acc[{}] {} vs {}", dd, st.acc[dd], want);
        }
    }

    /// numerics.md §3: lse2 = m + log2c(l), the natural lse is lse2 * LN2 in
    /// one multiply, and the Triton epilogue divides by l + eps.
    #[test]
    fn the_lse_and_epilogues_follow_the_numerics_contract(
        d in 1usize..8, seed in any::<u64>(), sink in prop::option::weighted(0.3, -10.0f32..10.0),
    ) {
        let st = run(d, sink, &tiles(d, seed, 64), DType::F32);
        if st.l > 0.0 {
            prop_assert_eq!(st.lse2().to_bits(), (st.m + log2c(st.l)).to_bits());
            let plain: Vec<f32> = st.acc.iter().map(|a| a / st.l).collect();
            prop_assert_eq!(bits(&st.normalized()), bits(&plain));
            let eps: Vec<f32> = st.acc.iter().map(|a| a / (st.l + TRITON_L_EPS)).collect();
            prop_assert_eq!(bits(&st.normalized_eps(TRITON_L_EPS)), bits(&eps));
        }
        prop_assert_eq!(st.lse().to_bits(), (st.lse2() * LN2).to_bits());
    }

    /// `MaskedRowMax`: KeepNegInf keeps any max as it is; KeepZero turns
    /// -inf and NaN into 0 (`where(m_new > -inf, m_new, 0)`) and keeps the rest.
    #[test]
    fn masked_row_max_keeps_or_zeroes_only_the_non_numbers(
        x in prop_oneof![
            Just(f32::NEG_INFINITY), Just(f32::NAN), Just(f32::INFINITY), Just(0.0f32), Just(-0.0f32),
            -1e30f32..1e30,
        ],
    ) {
        prop_assert_eq!(MaskedRowMax::KeepNegInf.apply(x).to_bits(), x.to_bits());
        let z = MaskedRowMax::KeepZero.apply(x);
        if x.is_nan() || x == f32::NEG_INFINITY {
            prop_assert_eq!(z.to_bits(), 0.0f32.to_bits());
        } else {
            prop_assert_eq!(z.to_bits(), x.to_bits());
        }
    }

    /// `OutLse::new` accepts exactly [T, H, D] outputs and [H, T] lse, and
    /// names the bad length and the shape; `empty` is 0 with lse -inf.
    #[test]
    fn out_lse_checks_both_lengths_against_the_shape(
        t in 0usize..4, h in 0usize..4, d in 0usize..4, dout in -1i64..2, dlse in -1i64..2,
    ) {
        let (n_out, n_lse) = (t * h * d, h * t);
        let len = |n: usize, delta: i64| (n as i64 + delta).max(0) as usize;
        let (lo, ll) = (len(n_out, dout), len(n_lse, dlse));
        let r = OutLse::new(t, h, d, vec![1.0; lo], vec![2.0; ll]);
        if lo != n_out {
            let e = r.unwrap_err().to_string();
            prop_assert_eq!(e, format!("invalid output length {lo}: [tokens {t}, heads {h}, head_size {d}] needs {n_out}"));
        } else if ll != n_lse {
            let e = r.unwrap_err().to_string();
            prop_assert_eq!(e, format!("invalid lse length {ll}: [heads {h}, tokens {t}] needs {n_lse}"));
        } else {
            let o = r.unwrap();
            prop_assert_eq!((o.num_tokens(), o.num_heads(), o.head_size()), (t, h, d));
            prop_assert_eq!(o.out(), vec![1.0; n_out]);
            prop_assert_eq!(o.lse(), vec![2.0; n_lse]);
        }
        let e = OutLse::empty(t, h, d);
        prop_assert_eq!((e.num_tokens(), e.num_heads(), e.head_size()), (t, h, d));
        prop_assert_eq!(e.out(), vec![0.0; n_out]);
        prop_assert_eq!(e.lse(), vec![f32::NEG_INFINITY; n_lse]);
    }
}

/// A new state: -inf / 0 / zeros, or with a sink the sink's base-2 logit,
/// l = 1 (the sink's own weight) and zeros (its value is 0).
#[test]
fn a_new_row_starts_empty_or_at_its_sink() {
    let s = RowState::new(5, None);
    assert_eq!(
        (s.m, s.l, s.acc.clone()),
        (f32::NEG_INFINITY, 0.0, vec![0.0; 5])
    );
    for sink in [-3.5f32, 0.0, 2.25] {
        let s = RowState::new(3, Some(sink));
        assert_eq!(
            (s.m.to_bits(), s.l, s.acc.clone()),
            ((sink * LOG2E).to_bits(), 1.0, vec![0.0; 3])
        );
        // A sink alone: output 0, lse = the sink logit (natural log).
        assert_eq!(s.normalized(), vec![0.0; 3]);
        assert!((s.lse() - sink).abs() <= 1e-6, "{} vs {sink}", s.lse());
    }
    assert_eq!(MaskedRowMax::default(), MaskedRowMax::KeepNegInf);
}

/// One KV tile shared by a program's rows: row r's base-2 scores at
/// `scores[r * stride..][..n]` (-inf where masked), and the tile's V rows.
struct SharedTile {
    scores: Vec<f32>,
    stride: usize,
    n: usize,
    values: Vec<Vec<f32>>,
}

/// Rows that share KV tiles (`RowState::update_rows`, what the kernels
/// call for a program's rows): per row its sink (or none), then 1-3 tiles
/// whose score rows are `stride` apart, with masked keys per row.
fn shared_tile_rows(d: usize, rows: usize, seed: u64) -> (Vec<Option<f32>>, Vec<SharedTile>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sinks = (0..rows)
        .map(|_| rng.gen_bool(0.3).then(|| rng.gen_range(-4.0f32..4.0)))
        .collect();
    let tiles = (0..rng.gen_range(1..=3))
        .map(|_| {
            let n = rng.gen_range(0..=3 * PV_KEYS);
            let stride = n + rng.gen_range(0..=3);
            let masked_row = rng.gen_range(0..rows.max(1));
            let scores = (0..rows * stride)
                .map(|i| {
                    if i / stride.max(1) == masked_row && rng.gen_bool(0.5) || rng.gen_bool(0.15) {
                        f32::NEG_INFINITY
                    } else {
                        rng.gen_range(-20.0f32..20.0)
                    }
                })
                .collect();
            let values = (0..n)
                .map(|_| (0..d).map(|_| rng.gen_range(-2.0f32..2.0)).collect())
                .collect();
            SharedTile {
                scores,
                stride,
                n,
                values,
            }
        })
        .collect();
    (sinks, tiles)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// `update_rows` over any number of rows (whole blocks of
    /// `ROW_BLOCK` and a remainder) is, bit for bit, every row's own
    /// `update` against the same tiles: rows share only the loads of V.
    #[test]
    fn rows_stepped_together_are_each_rows_own_update_bit_for_bit(
        d in prop_oneof![Just(1usize), Just(8), Just(64), 1usize..40],
        rows in 0usize..=(2 * ROW_BLOCK + 3),
        seed in any::<u64>(),
        p_dtype in prop_oneof![Just(DType::Bf16), Just(DType::F16), Just(DType::F32)],
    ) {
        let (sinks, tiles) = shared_tile_rows(d, rows, seed);
        let mut together: Vec<RowState> = sinks.iter().map(|&s| RowState::new(d, s)).collect();
        let mut alone = together.clone();
        for t in &tiles {
            let v = |j: usize| t.values[j].as_slice();
            RowState::update_rows(&mut together, &t.scores, t.stride, t.n, v, p_dtype);
            for (r, st) in alone.iter_mut().enumerate() {
                st.update(&t.scores[r * t.stride..][..t.n], v, p_dtype);
            }
        }
        prop_assert_eq!(together.len(), rows);
        for (r, (a, b)) in together.iter().zip(&alone).enumerate() {
            prop_assert!(same_state(a, b), "row {} of {}: together {:?} alone {:?}", r, rows, a, b);
        }
    }
}

proptest! {
    /// The score parameters a kernel builds for its soft-cap spelling:
    /// `with_softcap_formula` sets the formula and changes nothing else.
    #[test]
    fn with_softcap_formula_sets_the_formula_and_nothing_else(
        scale in 0.01f32..2.0,
        cap in prop_oneof![Just(None), (1.0f32..60.0).prop_map(Some)],
        f in prop_oneof![
            Just(SoftcapFormula::Tanh),
            Just(SoftcapFormula::VllmTwoExp),
            Just(SoftcapFormula::VllmOneExp),
            Just(SoftcapFormula::AiterTwoExp2),
        ],
    ) {
        let p = ScoreParams::new(scale, cap);
        prop_assert_eq!(p.softcap_formula, SoftcapFormula::Tanh);
        prop_assert_eq!(p.with_softcap_formula(f), ScoreParams { softcap_formula: f, ..p });
    }
}
