//! The checked constructors of the sim's configuration types: `AttnConfig`
//! (through `AttnConfigBuilder::build`, which deserialising goes through
//! too), `VarlenParams` (`VarlenParamsBuilder::build`) and `MlaWeights`
//! (`MlaWeights::new`). Each accepts every value inside its invariants,
//! keeping it as given, and refuses each broken invariant naming the field,
//! its value and what it must be.

use attnlab_shared::dtype::DType;
use attnlab_shared::model::MlaDims;
use attnlab_sim::config::{AttnConfig, AttnConfigBuilder};
use attnlab_sim::kernels::flash_varlen::{VarlenParams, VarlenParamsBuilder};
use attnlab_sim::kernels::mla_proj::MlaWeights;
use proptest::prelude::*;

const DTYPES: [DType; 5] = [
    DType::F32,
    DType::F16,
    DType::Bf16,
    DType::Fp8E4m3Fnuz,
    DType::Fp8E4m3Fn,
];

/// Valid config fields: 1 to 4 KV heads, 1 to 4 queries each, any window,
/// soft-cap, sinks and ALiBi of the right length, positive fp8 scales.
fn valid_config() -> impl Strategy<Value = AttnConfigBuilder> {
    (
        (1usize..=4, 1usize..=4, 1usize..=256),
        (0usize..3, 0usize..5),
        (0.01f32..4.0, 0.01f32..2.0, 0.01f32..2.0),
        (
            prop::option::of(1usize..512),
            prop::option::of(0.5f32..60.0),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |((hkv, qpk, d), (dt, kv), (scale, ks, vs), (window, cap, sinks, alibi))| {
                let hq = hkv * qpk;
                let dtype = DTYPES[dt];
                let kv_dtype = if kv < 3 { dtype } else { DTYPES[kv] };
                AttnConfigBuilder {
                    scale,
                    kv_dtype,
                    k_scale: ks,
                    v_scale: vs,
                    sliding_window: window,
                    softcap: cap,
                    sinks: sinks.then(|| (0..hq).map(|h| h as f32 * 0.25).collect()),
                    alibi_slopes: alibi.then(|| (0..hq).map(|h| 0.5f32.powi(h as i32)).collect()),
                    ..AttnConfig::builder(hq, hkv, d, dtype)
                }
            },
        )
}

/// One way to break each invariant of `AttnConfig`.
const CONFIG_BREAKS: usize = 11;

/// Breaks invariant `which`; returns the words the refusal must name.
fn broken_config(mut c: AttnConfigBuilder, which: usize) -> (AttnConfigBuilder, Vec<String>) {
    let words = match which {
        0 => {
            c.num_heads = 0;
            vec!["attention shape".into(), "heads 0".into(), ">= 1".into()]
        }
        1 => {
            c.num_kv_heads = 0;
            vec!["kv heads 0".into(), ">= 1".into()]
        }
        2 => {
            c.head_size = 0;
            vec!["head size 0".into(), ">= 1".into()]
        }
        3 => {
            c.num_kv_heads = c.num_heads + 1;
            vec![
                format!("num_kv_heads {}", c.num_kv_heads),
                format!("divide num_heads = {}", c.num_heads),
            ]
        }
        4 => {
            c.scale = -c.scale;
            vec![format!("scale {}", c.scale), "finite and > 0".into()]
        }
        5 => {
            c.scale = f32::NAN;
            vec!["scale NaN".into(), "finite and > 0".into()]
        }
        6 => {
            c.sliding_window = Some(0);
            vec!["sliding_window 0".into(), ">= 1 or absent".into()]
        }
        7 => {
            c.softcap = Some(0.0);
            vec!["softcap 0".into(), "finite and > 0".into()]
        }
        8 => {
            c.sinks = Some(vec![0.0; c.num_heads + 1]);
            vec![
                format!("sinks length {}", c.num_heads + 1),
                format!("num_heads = {}", c.num_heads),
            ]
        }
        9 => {
            c.alibi_slopes = Some(vec![]);
            vec![
                "alibi_slopes length 0".into(),
                format!("num_heads = {}", c.num_heads),
            ]
        }
        _ => {
            c.kv_dtype = DType::Fp8E4m3Fn;
            c.v_scale = f32::INFINITY;
            vec![
                "v_scale inf".into(),
                "fp8 scales must be finite and > 0".into(),
            ]
        }
    };
    (c, words)
}

/// Valid varlen parameters: 1 to 4 KV heads, 1 to 4 queries each, Q/K and V
/// head sizes and tiles from 1, any window; ALiBi and sinks of `heads`.
fn valid_varlen(slopes: &'static [f32]) -> impl Strategy<Value = VarlenParamsBuilder<'static>> {
    (
        (1usize..=4, 1usize..=4),
        (1usize..=256, 1usize..=256, 1usize..=128),
        (any::<bool>(), prop::option::of(1usize..512)),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            move |((hkv, qpk), (d, dv, block_n), (causal, window), (alibi, sinks))| {
                let hq = hkv * qpk;
                VarlenParamsBuilder {
                    head_size_v: dv,
                    block_n,
                    causal,
                    window,
                    alibi_slopes: alibi.then(|| &slopes[..hq]),
                    sinks: sinks.then(|| &slopes[..hq]),
                    ..VarlenParams::builder(hq, hkv, d, DType::Bf16, 0.125)
                }
            },
        )
}

/// Per-head values for ALiBi and sinks: enough for 16 heads and one more.
static SLOPES: [f32; 17] = [0.5; 17];

const VARLEN_BREAKS: usize = 8;

fn broken_varlen<'a>(
    mut p: VarlenParamsBuilder<'a>,
    which: usize,
    slopes: &'a [f32],
) -> (VarlenParamsBuilder<'a>, Vec<String>) {
    let words = match which {
        0..=4 => {
            let what = [
                "num_heads",
                "num_kv_heads",
                "head_size",
                "head_size_v",
                "block_n",
            ][which];
            match which {
                0 => p.num_heads = 0,
                1 => p.num_kv_heads = 0,
                2 => p.head_size = 0,
                3 => p.head_size_v = 0,
                _ => p.block_n = 0,
            }
            vec![format!("invalid {what} 0: must be >= 1")]
        }
        5 => {
            p.num_kv_heads = p.num_heads + 1;
            vec![
                format!("num_kv_heads {}", p.num_kv_heads),
                format!("divide num_heads = {}", p.num_heads),
            ]
        }
        6 => {
            p.window = Some(0);
            vec!["window 0".into(), ">= 1 or absent".into()]
        }
        _ => {
            p.sinks = Some(&slopes[..p.num_heads + 1]);
            vec![
                format!("sinks length {}", p.num_heads + 1),
                format!("num_heads = {}", p.num_heads),
            ]
        }
    };
    (p, words)
}

fn mla_dims() -> impl Strategy<Value = MlaDims> {
    (1usize..=8, 0usize..=4, 1usize..=8, 1usize..=8).prop_map(|(lkv, r, p, v)| MlaDims {
        kv_lora_rank: lkv,
        qk_rope_head_dim: r,
        qk_nope_head_dim: p,
        v_head_dim: v,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn attn_config_build_accepts_fields_inside_the_invariants_and_keeps_them(
        c in valid_config(),
    ) {
        let cfg = c.clone().build().unwrap();
        prop_assert_eq!(cfg.to_builder(), c.clone());
        prop_assert_eq!(cfg.queries_per_kv() * cfg.num_kv_heads(), cfg.num_heads());
        prop_assert_eq!(cfg.sinks(), c.sinks.as_deref());
        prop_assert_eq!(cfg.alibi_slopes(), c.alibi_slopes.as_deref());
    }

    #[test]
    fn attn_config_build_refuses_each_broken_invariant_naming_the_field(
        c in valid_config(),
        which in 0..CONFIG_BREAKS,
    ) {
        let (bad, words) = broken_config(c, which);
        let e = bad.build().unwrap_err().to_string();
        for w in &words {
            prop_assert!(e.contains(w.as_str()), "break {}: {:?} not in {}", which, w, e);
        }
    }

    #[test]
    fn attn_config_deserialises_only_through_build(
        c in valid_config(),
        which in 0..CONFIG_BREAKS,
    ) {
        let cfg = c.clone().build().unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        prop_assert_eq!(serde_json::from_str::<AttnConfig>(&json).unwrap(), cfg);
        let (bad, words) = broken_config(c, which);
        let e = serde_json::from_value::<AttnConfig>(serde_json::to_value(&bad).unwrap())
            .unwrap_err()
            .to_string();
        // JSON has no NaN or infinity (they are written as null, refused as
        // not a number); every other break is refused in build's words.
        if !matches!(which, 5 | 10) {
            for w in &words {
                prop_assert!(e.contains(w.as_str()), "break {}: {:?} not in {}", which, w, e);
            }
        }
    }

    #[test]
    fn varlen_params_build_accepts_fields_inside_the_invariants_and_keeps_them(
        p in valid_varlen(&SLOPES),
    ) {
        let built = p.clone().build().unwrap();
        prop_assert_eq!(built.to_builder(), p.clone());
        prop_assert_eq!(
            (built.num_heads(), built.num_kv_heads(), built.head_size(), built.head_size_v()),
            (p.num_heads, p.num_kv_heads, p.head_size, p.head_size_v)
        );
        prop_assert_eq!((built.block_n(), built.causal(), built.window()), (p.block_n, p.causal, p.window));
        prop_assert_eq!((built.sinks(), built.alibi_slopes()), (p.sinks, p.alibi_slopes));
    }

    #[test]
    fn varlen_params_build_refuses_each_broken_invariant_naming_the_field(
        p in valid_varlen(&SLOPES),
        which in 0..VARLEN_BREAKS,
    ) {
        let (bad, words) = broken_varlen(p, which, &SLOPES);
        let e = bad.build().unwrap_err().to_string();
        for w in &words {
            prop_assert!(e.contains(w.as_str()), "break {}: {:?} not in {}", which, w, e);
        }
    }

    #[test]
    fn mla_weights_new_accepts_the_exact_shape_and_refuses_any_other(
        heads in 1usize..=4,
        dims in mla_dims(),
        off in prop_oneof![Just(0i64), Just(1), Just(-1)],
    ) {
        let n = heads * (dims.qk_nope_head_dim + dims.v_head_dim) * dims.kv_lora_rank;
        let len = (n as i64 + off) as usize;
        let r = MlaWeights::new(heads, dims, vec![0.5; len]);
        if off == 0 {
            let w = r.unwrap();
            prop_assert_eq!((w.num_heads(), w.dims(), w.kv_b_proj().len()), (heads, dims, n));
        } else {
            let e = r.unwrap_err().to_string();
            prop_assert!(e.starts_with(&format!("invalid kv_b_proj length {len}: ")), "{}", e);
            prop_assert!(e.ends_with(&format!("needs {n}")), "{}", e);
        }
    }

    #[test]
    fn mla_weights_new_and_random_refuse_a_zero_dimension_naming_it(
        heads in 1usize..=4,
        dims in mla_dims(),
        which in 0usize..4,
    ) {
        let (mut heads, mut dims) = (heads, dims);
        let what = ["num_heads", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim"][which];
        match which {
            0 => heads = 0,
            1 => dims.kv_lora_rank = 0,
            2 => dims.qk_nope_head_dim = 0,
            _ => dims.v_head_dim = 0,
        }
        let n = heads * (dims.qk_nope_head_dim + dims.v_head_dim) * dims.kv_lora_rank;
        let e = MlaWeights::new(heads, dims, vec![0.0; n]).unwrap_err().to_string();
        prop_assert!(e.starts_with(&format!("invalid MLA weight {what} 0: ")), "{}", e);
        let e = MlaWeights::random(heads, dims, DType::Bf16, 1).unwrap_err().to_string();
        prop_assert!(e.starts_with(&format!("invalid MLA weight {what} 0: ")), "{}", e);
    }
}
