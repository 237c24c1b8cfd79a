//! The PR #26980-era selector as properties over its whole input space
//! (selection.md §2, `shared/src/selection/pr26980.rs`): whatever the env
//! flags, block size, GPU, MLA/sparse switches and explicit backend, the
//! answer is the first rule that applies. Written from the rule list, not
//! from the code, to close the mutation-testing holes `cargo mutants` found
//! in `pr26980.rs` (docs/src/bugs.md, "Mutation score").

use attnlab_shared::dtype::KvCacheDtype;
use attnlab_shared::registry::BackendName::{self, *};
use attnlab_shared::selection::{select, EnvFlags, ErrorKind, GpuArch, Profile, SelectorInput};
use proptest::prelude::*;

const ARCHS: [&str; 4] = ["gfx942", "gfx90a", "gfx950", "gfx1100"];
const BLOCKS: [Option<usize>; 4] = [None, Some(1), Some(16), Some(544)];
/// An explicit backend: none, or one of these by name.
const EXPLICIT: [Option<BackendName>; 9] = [
    None,
    Some(TritonMla),
    Some(RocmAiterMla),
    Some(RocmAiterTritonMla),
    Some(TritonAttn),
    Some(RocmAttn),
    Some(RocmAiterFa),
    Some(RocmAiterUnifiedAttn),
    Some(FlexAttention),
];

#[derive(Debug, Clone)]
struct Knobs {
    flags: [bool; 5],
    aiter_installed: bool,
    use_mla: bool,
    use_sparse: bool,
    fp8: bool,
    block: usize,
    arch: usize,
    explicit: usize,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        any::<[bool; 5]>(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        any::<bool>(),
        0..BLOCKS.len(),
        0..ARCHS.len(),
        0..EXPLICIT.len(),
    )
        .prop_map(
            |(flags, aiter_installed, use_mla, use_sparse, fp8, block, arch, explicit)| Knobs {
                flags,
                aiter_installed,
                use_mla,
                use_sparse,
                fp8,
                block,
                arch,
                explicit,
            },
        )
}

fn input(k: &Knobs) -> SelectorInput {
    let on = |b: bool| if b { "1" } else { "0" };
    let explicit = EXPLICIT[k.explicit].map(|b| b.name().to_string());
    let mut pairs = vec![
        ("VLLM_ROCM_USE_AITER", on(k.flags[0])),
        ("VLLM_ROCM_USE_AITER_MHA", on(k.flags[1])),
        ("VLLM_ROCM_USE_AITER_MLA", on(k.flags[2])),
        ("VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION", on(k.flags[3])),
        ("VLLM_V1_USE_PREFILL_DECODE_ATTENTION", on(k.flags[4])),
    ];
    if let Some(e) = &explicit {
        pairs.push(("VLLM_ATTENTION_BACKEND", e.as_str()));
    }
    SelectorInput {
        env: EnvFlags::from_pairs(&pairs),
        use_mla: k.use_mla,
        use_sparse: k.use_sparse,
        block_size: BLOCKS[k.block],
        kv_cache_dtype: if k.fp8 {
            KvCacheDtype::Fp8
        } else {
            KvCacheDtype::Auto
        },
        arch: GpuArch::parse(ARCHS[k.arch]).unwrap(),
        aiter_installed: k.aiter_installed,
        ..SelectorInput::default()
    }
}

/// selection.md §2, rule by rule.
fn expected(k: &Knobs) -> Result<BackendName, ErrorKind> {
    let [aiter, mha, mla, unified, pda] = k.flags;
    let block = BLOCKS[k.block].unwrap_or(16);
    let gfx9 = matches!(ARCHS[k.arch], "gfx942" | "gfx90a" | "gfx950");
    let explicit = EXPLICIT[k.explicit];
    if k.use_sparse {
        return match (k.fp8, block) {
            (true, _) => Err(ErrorKind::ValueError),
            (false, 1) => Ok(RocmAiterMlaSparse),
            (false, _) => Err(ErrorKind::AssertionError),
        };
    }
    if k.use_mla {
        let mla_enabled = k.aiter_installed && gfx9 && aiter && mla;
        return match explicit {
            None if mla_enabled || block == 1 => Ok(RocmAiterMla),
            None => Ok(TritonMla),
            Some(TritonMla) if block == 1 => Err(ErrorKind::ValueError),
            Some(b @ (TritonMla | RocmAiterMla | RocmAiterTritonMla)) => Ok(b),
            Some(_) => Err(ErrorKind::ValueError),
        };
    }
    match explicit {
        Some(RocmAiterFa) if !gfx9 => Err(ErrorKind::ValueError),
        Some(b @ (FlexAttention | TritonAttn | RocmAttn | RocmAiterUnifiedAttn | RocmAiterFa)) => {
            Ok(b)
        }
        Some(_) => Err(ErrorKind::RuntimeError),
        None if aiter && unified => Ok(RocmAiterUnifiedAttn),
        None if aiter && mha && gfx9 => Ok(RocmAiterFa),
        None if pda => Ok(RocmAttn),
        None => Ok(TritonAttn),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_pr_era_selector_answers_with_the_first_rule_that_applies(k in knobs()) {
        let got = select(&input(&k), Profile::Pr26980)
            .map(|s| s.backend)
            .map_err(|e| e.kind);
        prop_assert_eq!(got, expected(&k), "{:?}", k);
    }
}

/// The names the CLI and `--json` print: profiles parse back from their
/// names, vLLM's exception types print as Python does (`Kind: message`).
#[test]
fn profile_names_round_trip_and_errors_print_as_python() {
    for p in [Profile::Pr26980, Profile::Latest] {
        assert_eq!(Profile::parse(p.name()).unwrap(), p);
    }
    assert_eq!(Profile::Latest.name(), "latest");
    let e = Profile::parse("nope").unwrap_err().to_string();
    assert!(e.contains("'nope'") && e.contains("pr26980, latest"), "{e}");
    // A sparse fp8 model: vLLM's ValueError, printed as Python prints it.
    let k = Knobs {
        flags: [false; 5],
        aiter_installed: true,
        use_mla: true,
        use_sparse: true,
        fp8: true,
        block: 1,
        arch: 0,
        explicit: 0,
    };
    let err = select(&input(&k), Profile::Pr26980).unwrap_err();
    assert_eq!(err.kind.name(), "ValueError");
    assert_eq!(err.to_string(), format!("ValueError: {}", err.message));
    for (kind, name) in [
        (ErrorKind::ValueError, "ValueError"),
        (ErrorKind::RuntimeError, "RuntimeError"),
        (ErrorKind::AssertionError, "AssertionError"),
    ] {
        assert_eq!(kind.name(), name);
    }
}
