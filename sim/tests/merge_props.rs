//! `merge_attn_states` (vllm-backends.md §12, `sim/src/kernels/merge_attn_states.rs`)
//! as properties: the merge is the log-sum-exp weighted mean of the two
//! sides, row by row over (token, head) with the lse in FA's `[H, T]`
//! order; it is rounded once to the output dtype; each kernel's rule for
//! infinite lse holds; merging partial attentions over disjoint key sets
//! gives the attention over their union; bad shapes and lengths are
//! rejected naming them. Written to close the holes `cargo mutants` found
//! (docs/src/bugs.md, "Mutation score").

use attnlab_shared::dtype::DType;
use attnlab_shared::fault::{Fault, FaultSet};
use attnlab_sim::kernels::merge_attn_states::{
    merge_attn_states, merge_attn_states_with, MergeKernel,
};
use attnlab_sim::kernels::softmax::{OutLse, RowState};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const KERNELS: [MergeKernel; 2] = [MergeKernel::Triton, MergeKernel::Hip];
const OUT_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::Bf16];

/// An lse of one row: finite, or one of the infinities FA and vLLM use for
/// a row that saw no key.
#[derive(Debug, Clone, Copy)]
enum Lse {
    Finite(f32),
    PlusInf,
    MinusInf,
}

impl Lse {
    fn value(self) -> f32 {
        match self {
            Lse::Finite(x) => x,
            Lse::PlusInf => f32::INFINITY,
            Lse::MinusInf => f32::NEG_INFINITY,
        }
    }
}

fn lse_any() -> impl Strategy<Value = Lse> {
    prop_oneof![
        4 => (-30.0f32..30.0).prop_map(Lse::Finite),
        1 => Just(Lse::PlusInf),
        1 => Just(Lse::MinusInf),
    ]
}

/// A side of shape [t, h, d] with values exact in `dtype` and lse in
/// `[H, T]` order drawn from `lse`.
fn side(t: usize, h: usize, d: usize, dtype: DType, lse: Vec<f32>, rng: &mut ChaCha8Rng) -> OutLse {
    let out = (0..t * h * d)
        .map(|_| dtype.round(rng.gen_range(-2.0f32..2.0)))
        .collect();
    OutLse::new(t, h, d, out, lse).unwrap()
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

/// `ln(e^a + e^b)` and the two weights, in f64.
fn logaddexp(a: f64, b: f64) -> (f64, f64, f64) {
    let m = a.max(b);
    let (ea, eb) = ((a - m).exp(), (b - m).exp());
    (m + (ea + eb).ln(), ea / (ea + eb), eb / (ea + eb))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Finite lse on both sides: out = (e^p A + e^s B) / (e^p + e^s) and
    /// lse = ln(e^p + e^s), to the contract's exp/log accuracy, per
    /// (token, head), whichever kernel.
    #[test]
    fn merge_is_the_lse_weighted_mean_of_the_two_sides(
        t in 1usize..5, h in 1usize..4, d in 1usize..10, seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let lp: Vec<f32> = (0..t * h).map(|_| rng.gen_range(-30.0f32..30.0)).collect();
        // Some rows within a few units of each other, so both weights matter.
        let ls: Vec<f32> = lp.iter().map(|&p| if rng.gen_bool(0.5) { p + rng.gen_range(-3.0f32..3.0) } else { rng.gen_range(-30.0f32..30.0) }).collect();
        let p = side(t, h, d, DType::F32, lp.clone(), &mut rng);
        let s = side(t, h, d, DType::F32, ls.clone(), &mut rng);
        for kernel in KERNELS {
            let m = merge_attn_states(&p, &s, DType::F32, kernel).unwrap();
            prop_assert_eq!((m.num_tokens(), m.num_heads(), m.head_size()), (t, h, d));
            for ti in 0..t {
                for hi in 0..h {
                    let (want_lse, wp, ws) = logaddexp(lp[hi * t + ti] as f64, ls[hi * t + ti] as f64);
                    let got_lse = m.lse()[hi * t + ti] as f64;
                    prop_assert!((got_lse - want_lse).abs() <= 1e-5 + 2e-6 * want_lse.abs(),
                        "lse[{},{}] {} vs {}", hi, ti, got_lse, want_lse);
                    for di in 0..d {
                        let i = (ti * h + hi) * d + di;
                        let want = wp * p.out()[i] as f64 + ws * s.out()[i] as f64;
                        prop_assert!((m.out()[i] as f64 - want).abs() <= 1e-5,
                            "out[{},{},{}] {} vs {}", ti, hi, di, m.out()[i], want);
                    }
                }
            }
        }
    }

    /// A [T, H, D] merge is T*H independent one-row merges: each (t, h)
    /// reads its own rows and lse[h, t] and writes only its own, bit for bit.
    #[test]
    fn merge_is_row_wise_over_tokens_and_heads(
        t in 1usize..5, h in 1usize..4, d in 1usize..7,
        lse in prop::collection::vec((lse_any(), lse_any()), 16), seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let lp: Vec<f32> = (0..t * h).map(|i| lse[i].0.value()).collect();
        let ls: Vec<f32> = (0..t * h).map(|i| lse[i].1.value()).collect();
        let p = side(t, h, d, DType::Bf16, lp.clone(), &mut rng);
        let s = side(t, h, d, DType::Bf16, ls.clone(), &mut rng);
        for kernel in KERNELS {
            let m = merge_attn_states(&p, &s, DType::Bf16, kernel).unwrap();
            for ti in 0..t {
                for hi in 0..h {
                    let row = (ti * h + hi) * d..(ti * h + hi + 1) * d;
                    let one = |o: &OutLse, l: &[f32]| OutLse::new(1, 1, d, o.out()[row.clone()].to_vec(), vec![l[hi * t + ti]]).unwrap();
                    let alone = merge_attn_states(&one(&p, &lp), &one(&s, &ls), DType::Bf16, kernel).unwrap();
                    prop_assert_eq!(bits(&m.out()[row.clone()]), bits(alone.out()));
                    prop_assert_eq!(m.lse()[hi * t + ti].to_bits(), alone.lse()[0].to_bits());
                }
            }
        }
    }

    /// Each kernel's rule for infinite lse (vllm-backends §12): Triton maps
    /// only +inf to -inf, and two empty sides give NaN (written as the
    /// canonical quiet NaN); HIP maps any infinity to -inf and copies the
    /// prefix with lse -inf. One empty side leaves the other side as it is.
    #[test]
    fn merge_follows_each_kernels_rule_for_infinite_lse(
        lp in lse_any(), ls in lse_any(), d in 1usize..6, seed in any::<u64>(), dt in 0usize..3,
    ) {
        let dtype = OUT_DTYPES[dt];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let p = side(1, 1, d, dtype, vec![lp.value()], &mut rng);
        let s = side(1, 1, d, dtype, vec![ls.value()], &mut rng);
        for kernel in KERNELS {
            let empty = |l: Lse| match (kernel, l) {
                (_, Lse::Finite(_)) => false,
                (MergeKernel::Triton, Lse::MinusInf | Lse::PlusInf) => true,
                (MergeKernel::Hip, _) => true,
            };
            let m = merge_attn_states(&p, &s, dtype, kernel).unwrap();
            match (empty(lp), empty(ls), kernel) {
                (true, true, MergeKernel::Triton) => {
                    let nan = dtype.round(f32::from_bits(0x7fc0_0000)).to_bits();
                    prop_assert!(m.out().iter().all(|x| x.to_bits() == nan), "{:?}", bits(m.out()));
                    prop_assert!(m.lse()[0].is_nan());
                }
                (true, true, MergeKernel::Hip) => {
                    prop_assert_eq!(bits(m.out()), bits(p.out()));
                    prop_assert_eq!(m.lse()[0], f32::NEG_INFINITY);
                }
                (true, false, _) => {
                    prop_assert_eq!(bits(m.out()), bits(s.out()));
                    prop_assert_eq!(m.lse()[0].to_bits(), ls.value().to_bits());
                }
                (false, true, _) => {
                    prop_assert_eq!(bits(m.out()), bits(p.out()));
                    prop_assert_eq!(m.lse()[0].to_bits(), lp.value().to_bits());
                }
                (false, false, _) => prop_assert!(m.lse()[0].is_finite() && m.out().iter().all(|x| x.is_finite())),
            }
        }
    }

    /// The fault `merge-neg-inf-nan` removes the HIP kernel's both-empty
    /// guard: HIP then computes exactly what Triton computes, and without
    /// the fault both kernels are unchanged.
    #[test]
    fn the_neg_inf_nan_fault_turns_the_hip_merge_into_the_triton_one(
        lp in lse_any(), ls in lse_any(), d in 1usize..6, seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let p = side(1, 1, d, DType::F16, vec![lp.value()], &mut rng);
        let s = side(1, 1, d, DType::F16, vec![ls.value()], &mut rng);
        let fault = FaultSet::only(Fault::MergeNegInfNan);
        let run = |k, f| merge_attn_states_with(&p, &s, DType::F16, k, f).unwrap();
        let (hip_faulty, triton) = (run(MergeKernel::Hip, fault), run(MergeKernel::Triton, FaultSet::NONE));
        prop_assert_eq!(bits(hip_faulty.out()), bits(triton.out()));
        prop_assert_eq!(bits(hip_faulty.lse()), bits(triton.lse()));
        let triton_faulty = run(MergeKernel::Triton, fault);
        prop_assert_eq!(bits(triton_faulty.out()), bits(triton.out()));
        prop_assert_eq!(bits(triton_faulty.lse()), bits(triton.lse()));
        let hip = run(MergeKernel::Hip, FaultSet::NONE);
        prop_assert_eq!(bits(hip.out()), bits(merge_attn_states(&p, &s, DType::F16, MergeKernel::Hip).unwrap().out()));
        if matches!((lp, ls), (Lse::MinusInf, Lse::MinusInf)) {
            prop_assert_eq!(hip.lse()[0], f32::NEG_INFINITY);
            prop_assert!(hip_faulty.lse()[0].is_nan());
        }
    }

    /// The output is the f32 merge rounded once to the output dtype, and
    /// the lse does not depend on the output dtype.
    #[test]
    fn the_output_is_the_f32_merge_rounded_once(
        t in 1usize..4, h in 1usize..3, d in 1usize..9, dt in 1usize..3,
        lse in prop::collection::vec((-20.0f32..20.0, -20.0f32..20.0), 6), seed in any::<u64>(),
    ) {
        let dtype = OUT_DTYPES[dt];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let p = side(t, h, d, DType::F32, (0..t * h).map(|i| lse[i].0).collect(), &mut rng);
        let s = side(t, h, d, DType::F32, (0..t * h).map(|i| lse[i].1).collect(), &mut rng);
        for kernel in KERNELS {
            let wide = merge_attn_states(&p, &s, DType::F32, kernel).unwrap();
            let narrow = merge_attn_states(&p, &s, dtype, kernel).unwrap();
            let rounded: Vec<f32> = wide.out().iter().map(|&x| dtype.round(x)).collect();
            prop_assert_eq!(bits(narrow.out()), bits(&rounded));
            prop_assert_eq!(bits(narrow.lse()), bits(wide.lse()));
        }
    }

    /// Split a row's keys in two: attending to each part and merging the
    /// two results gives the attention over all keys (why the merge exists:
    /// chunked prefill, split-KV decode), up to f32 rounding.
    #[test]
    fn merging_attention_over_two_disjoint_key_sets_is_attention_over_their_union(
        n in 2usize..40, cut_frac in 0.0f64..1.0, d in 1usize..9, seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scores: Vec<f32> = (0..n).map(|_| rng.gen_range(-8.0f32..8.0)).collect();
        let values: Vec<Vec<f32>> = (0..n).map(|_| (0..d).map(|_| rng.gen_range(-2.0f32..2.0)).collect()).collect();
        let cut = ((n as f64 * cut_frac) as usize).clamp(1, n - 1);
        let attend = |keys: std::ops::Range<usize>| {
            let mut st = RowState::new(d, None);
            let off = keys.start;
            st.update(&scores[keys], |j| values[off + j].as_slice(), DType::F32);
            OutLse::new(1, 1, d, st.normalized(), vec![st.lse()]).unwrap()
        };
        let whole = attend(0..n);
        for kernel in KERNELS {
            let m = merge_attn_states(&attend(0..cut), &attend(cut..n), DType::F32, kernel).unwrap();
            prop_assert!((m.lse()[0] - whole.lse()[0]).abs() <= 1e-5 * whole.lse()[0].abs().max(1.0), "{} vs {}", m.lse()[0], whole.lse()[0]);
            for (a, b) in m.out().iter().zip(whole.out()) {
                prop_assert!((a - b).abs() <= 1e-5, "{} vs {}", a, b);
            }
        }
    }

    /// The two sides must have the same [tokens, heads, head_size]; the
    /// error names both shapes.
    #[test]
    fn merge_rejects_sides_of_different_shapes_naming_both(
        a in (0usize..3, 1usize..3, 0usize..4), b in (0usize..3, 1usize..3, 0usize..4), kernel in 0usize..2,
    ) {
        let p = OutLse::empty(a.0, a.1, a.2);
        let s = OutLse::empty(b.0, b.1, b.2);
        let r = merge_attn_states(&p, &s, DType::F32, KERNELS[kernel]);
        if a == b {
            let m = r.unwrap();
            prop_assert_eq!((m.num_tokens(), m.num_heads(), m.head_size()), a);
            prop_assert_eq!(m.out().len(), a.0 * a.1 * a.2);
            prop_assert_eq!(m.lse().len(), a.0 * a.1);
        } else {
            let e = r.unwrap_err().to_string();
            prop_assert!(e.contains(&format!("{:?}", b)) && e.contains(&format!("must equal the prefix shape {:?}", a)), "{}", e);
        }
    }

    /// `OutLse`'s fields are private and `OutLse::new` is the only way to
    /// give it buffers: an output or lse one element off the shape is
    /// refused naming the buffer, its length and the length the shape
    /// needs; the exact lengths are accepted and kept.
    #[test]
    fn out_lse_new_refuses_a_buffer_off_its_shape_naming_it(
        t in 1usize..4, h in 1usize..3, d in 1usize..4, which in 0usize..2, grow in any::<bool>(),
    ) {
        let (n_out, n_lse) = (t * h * d, h * t);
        let ok = OutLse::new(t, h, d, vec![0.5; n_out], vec![1.0; n_lse]).unwrap();
        prop_assert_eq!((ok.out().len(), ok.lse().len()), (n_out, n_lse));
        let off = |n: usize| if grow { n + 1 } else { n - 1 };
        let (out_len, lse_len) = if which == 0 { (off(n_out), n_lse) } else { (n_out, off(n_lse)) };
        let e = OutLse::new(t, h, d, vec![0.5; out_len], vec![1.0; lse_len]).unwrap_err().to_string();
        if which == 0 {
            prop_assert!(e.starts_with(&format!("invalid output length {out_len}: ")), "{}", e);
            prop_assert!(e.ends_with(&format!("needs {n_out}")), "{}", e);
        } else {
            prop_assert!(e.starts_with(&format!("invalid lse length {lse_len}: ")), "{}", e);
            prop_assert!(e.ends_with(&format!("needs {n_lse}")), "{}", e);
        }
    }
}

/// Zero-width heads: nothing to average, no panic, an output of length 0.
#[test]
fn a_merge_of_zero_width_heads_has_no_output_elements() {
    for kernel in KERNELS {
        let m = merge_attn_states(
            &OutLse::empty(3, 2, 0),
            &OutLse::empty(3, 2, 0),
            DType::F16,
            kernel,
        )
        .unwrap();
        assert!(m.out().is_empty());
        assert_eq!(m.lse().len(), 6);
    }
}
