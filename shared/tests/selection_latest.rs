//! The validate-based selector (selection.md §3, vllm-backends.md §4.4-4.5,
//! `shared/src/selection/latest.rs`) and the selector's plumbing
//! (`shared/src/selection/mod.rs`: the explicit name from the env var or
//! `--attention-backend`, the block size vLLM then uses, the "what would
//! change" hints) as properties over the whole input space. Written from
//! the rule lists, not from the code, to close the holes `cargo mutants`
//! found there (docs/src/bugs.md, "Mutation score"). The backends'
//! capabilities are the registry's data (vllm-backends.md §4.6); what is
//! checked here is how the selector uses them.

use attnlab_shared::dtype::{DType, KvCacheDtype, ALL_DTYPES};
use attnlab_shared::registry::{python_str_list, AttnType, BackendName, BackendName::*};
use attnlab_shared::selection::{select, EnvFlags, GpuArch, Profile, SelectorInput};
use proptest::prelude::*;

/// CDNA2 (gfx90a), CDNA3/4/5 (gfx942, gfx950, gfx1250), RDNA3 (gfx1100),
/// RDNA4 (gfx1201).
const ARCHS: [&str; 6] = [
    "gfx942", "gfx90a", "gfx950", "gfx1100", "gfx1201", "gfx1250",
];
/// `get_cdna_version() > 2`, i.e. `is_aiter_found_and_supported()`'s GPU test.
fn cdna3_plus(arch: &str) -> bool {
    matches!(arch, "gfx942" | "gfx950" | "gfx1250")
}
const KV: [KvCacheDtype; 6] = [
    KvCacheDtype::Auto,
    KvCacheDtype::Float16,
    KvCacheDtype::Bfloat16,
    KvCacheDtype::Fp8,
    KvCacheDtype::Fp8E4m3,
    KvCacheDtype::Fp8E5m2,
];
/// Head sizes on both sides of every backend's list (16 < 32, 100 only in
/// the `>= 32` lists, 576 the MLA latent width).
const HEADS: [usize; 8] = [16, 32, 64, 80, 100, 128, 256, 576];
/// None (never a rejection), 1 (MLA only), 8/48 (not multiples of 16),
/// 16/32 (AITER FA's exact sizes), 64 and 544 (multiples of 16 and 32).
const BLOCKS: [Option<usize>; 8] = [
    None,
    Some(1),
    Some(8),
    Some(16),
    Some(32),
    Some(48),
    Some(64),
    Some(544),
];
/// An explicit choice: none, a ROCm backend, or one vLLM builds only for
/// other platforms.
const EXPLICIT: [Option<BackendName>; 11] = [
    None,
    Some(RocmAttn),
    Some(TritonAttn),
    Some(RocmAiterUnifiedAttn),
    Some(RocmAiterFa),
    Some(FlexAttention),
    Some(TritonMla),
    Some(RocmAiterMla),
    Some(RocmAiterTritonMla),
    Some(RocmAiterMlaSparse),
    Some(FlashAttn),
];

#[derive(Debug, Clone)]
struct Knobs {
    /// AITER, AITER_MHA, AITER_MLA, AITER_UNIFIED_ATTENTION, PREFILL_DECODE.
    flags: [bool; 5],
    aiter_installed: bool,
    use_mla: bool,
    use_sparse: bool,
    kv: usize,
    dtype: usize,
    head: usize,
    block: usize,
    arch: usize,
    has_sink: bool,
    attn_type: usize,
    use_non_causal: bool,
    use_kv_connector: bool,
    use_dcp: bool,
    explicit: usize,
    /// How the explicit choice is given: 0 the env var; 1 the flag as
    /// written; 2 the flag in lower case (the AttentionConfig era
    /// upper-cases it). With the flag, the env var holds a decoy the flag
    /// must win over; an absent choice through the flag is "auto".
    how: usize,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    let rare = || prop::bool::weighted(0.2);
    (
        (
            any::<[bool; 5]>(),
            prop::bool::weighted(0.8),
            any::<bool>(),
            rare(),
            0..KV.len(),
            0..ALL_DTYPES.len(),
            0..HEADS.len(),
            0..BLOCKS.len(),
        ),
        (
            0..ARCHS.len(),
            rare(),
            0..AttnType::ALL.len(),
            rare(),
            rare(),
            rare(),
            0..EXPLICIT.len(),
            0..3usize,
        ),
    )
        .prop_map(
            |(
                (flags, aiter_installed, use_mla, use_sparse, kv, dtype, head, block),
                (
                    arch,
                    has_sink,
                    attn_type,
                    use_non_causal,
                    use_kv_connector,
                    use_dcp,
                    explicit,
                    how,
                ),
            )| Knobs {
                flags,
                aiter_installed,
                use_mla,
                use_sparse,
                kv,
                dtype,
                head,
                block,
                arch,
                has_sink,
                attn_type,
                use_non_causal,
                use_kv_connector,
                use_dcp,
                explicit,
                how,
            },
        )
}

fn input(k: &Knobs) -> SelectorInput {
    let on = |b: bool| if b { "1" } else { "0" };
    let mut pairs = vec![
        ("VLLM_ROCM_USE_AITER", on(k.flags[0])),
        ("VLLM_ROCM_USE_AITER_MHA", on(k.flags[1])),
        ("VLLM_ROCM_USE_AITER_MLA", on(k.flags[2])),
        ("VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION", on(k.flags[3])),
        ("VLLM_V1_USE_PREFILL_DECODE_ATTENTION", on(k.flags[4])),
    ];
    let explicit = EXPLICIT[k.explicit];
    let mut flag = None;
    match (k.how, explicit) {
        (0, Some(b)) => pairs.push(("VLLM_ATTENTION_BACKEND", b.name())),
        (0, None) => {}
        (how, choice) => {
            pairs.push(("VLLM_ATTENTION_BACKEND", "TRITON_ATTN"));
            flag = Some(match choice {
                None if how == 1 => "auto".to_string(),
                None => "AUTO".to_string(),
                Some(b) if how == 1 => b.name().to_string(),
                Some(b) => b.name().to_lowercase(),
            });
        }
    }
    SelectorInput {
        env: EnvFlags::from_pairs(&pairs),
        attention_backend_flag: flag,
        use_mla: k.use_mla,
        use_sparse: k.use_sparse,
        block_size: BLOCKS[k.block],
        kv_cache_dtype: KV[k.kv],
        head_size: HEADS[k.head],
        dtype: ALL_DTYPES[k.dtype],
        arch: GpuArch::parse(ARCHS[k.arch]).unwrap(),
        aiter_installed: k.aiter_installed,
        has_sink: k.has_sink,
        attn_type: AttnType::ALL[k.attn_type],
        use_non_causal: k.use_non_causal,
        use_kv_connector: k.use_kv_connector,
        use_dcp: k.use_dcp,
    }
}

/// vllm-backends.md §4.4: `_get_backend_priorities` and `get_valid_backends`
/// dropping ROCM_ATTN for encoder-decoder models.
fn priorities(k: &Knobs) -> Vec<BackendName> {
    let [aiter, mha, mla, _unified, _pda] = k.flags;
    let arch = ARCHS[k.arch];
    let found_and_supported = k.aiter_installed && cdna3_plus(arch);
    if k.use_sparse {
        return vec![RocmAiterMlaSparse];
    }
    if k.use_mla {
        return if found_and_supported && aiter && mla {
            vec![RocmAiterMla, TritonMla, RocmAiterTritonMla]
        } else {
            vec![TritonMla]
        };
    }
    let mut list = Vec::new();
    if !k.use_kv_connector && AttnType::ALL[k.attn_type] != AttnType::EncoderDecoder {
        list.push(RocmAttn);
    }
    if found_and_supported && aiter && mha {
        list.push(RocmAiterFa);
    }
    if found_and_supported {
        list.push(RocmAiterUnifiedAttn);
    } else if k.aiter_installed && aiter && matches!(arch, "gfx1200" | "gfx1201") {
        list.insert(0, RocmAiterUnifiedAttn);
    }
    list.push(TritonAttn);
    list
}

/// vllm-backends.md §4.5: every reason `validate_configuration` gives, in
/// its order; a backend vLLM does not build for ROCm is "compute capability
/// not supported".
fn reasons(b: BackendName, k: &Knobs) -> Vec<String> {
    let Some(caps) = b.capabilities() else {
        return vec!["compute capability not supported".into()];
    };
    let attn_type = AttnType::ALL[k.attn_type];
    let sparse = caps.is_sparse();
    let mla = caps.is_mla();
    let attn_type_reason = format!("attention type {} not supported", attn_type.python_str());
    [
        (
            caps.head_sizes.accepts(HEADS[k.head]),
            "head_size not supported",
        ),
        (
            caps.dtypes.contains(&ALL_DTYPES[k.dtype]),
            "dtype not supported",
        ),
        (
            caps.kv_cache_dtypes.contains(&KV[k.kv]),
            "kv_cache_dtype not supported",
        ),
        (
            BLOCKS[k.block].is_none_or(|bs| caps.supports_block_size(bs)),
            "block_size not supported",
        ),
        (!k.use_mla || mla, "MLA not supported"),
        (k.use_mla || !mla, "non-MLA not supported"),
        (!k.has_sink || caps.sinks, "attention sinks not supported"),
        (!k.use_sparse || sparse, "sparse not supported"),
        (k.use_sparse || !sparse, "non-sparse not supported"),
        (
            caps.arch == attnlab_shared::registry::ArchRequirement::Any
                || cdna3_plus(ARCHS[k.arch]),
            "compute capability not supported",
        ),
        (
            caps.attn_types.contains(&attn_type),
            attn_type_reason.as_str(),
        ),
        (
            !k.use_non_causal || caps.non_causal,
            "non-causal attention not supported",
        ),
        (
            !k.use_kv_connector || caps.kv_connector,
            "KV connector not supported",
        ),
        (!k.use_dcp || caps.dcp, "DCP not supported"),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, why)| why.to_string())
    .collect()
}

/// `AttentionSelectorConfig.__repr__` as vLLM prints it in the "No valid
/// attention backend" error.
fn config_repr(k: &Knobs) -> String {
    let py = |b: bool| if b { "True" } else { "False" };
    let dtype = match ALL_DTYPES[k.dtype] {
        DType::F32 => "torch.float32",
        DType::F16 => "torch.float16",
        DType::Bf16 => "torch.bfloat16",
        DType::Fp8E4m3Fnuz => "torch.float8_e4m3fnuz",
        DType::Fp8E4m3Fn => "torch.float8_e4m3fn",
    };
    let block = BLOCKS[k.block].map_or("None".to_string(), |b| b.to_string());
    format!(
        "AttentionSelectorConfig(head_size={}, dtype={dtype}, kv_cache_dtype={}, block_size={block}, \
         use_mla={}, has_sink={}, use_sparse={}, use_mm_prefix=False, use_per_head_quant_scales=False, \
         attn_type={}, use_non_causal={}, use_batch_invariant=False, use_kv_connector={})",
        HEADS[k.head],
        KV[k.kv].name(),
        py(k.use_mla),
        py(k.has_sink),
        py(k.use_sparse),
        AttnType::ALL[k.attn_type].python_str(),
        py(k.use_non_causal),
        py(k.use_kv_connector),
    )
}

/// selection.md §3 (newest): the backend with the rule text naming the list
/// and why each earlier entry was skipped, or vLLM's ValueError text.
fn expected(k: &Knobs) -> Result<(BackendName, String), String> {
    if let Some(b) = EXPLICIT[k.explicit] {
        let why = reasons(b, k);
        if why.is_empty() {
            return Ok((
                b,
                format!("latest: explicit {b} passes validate_configuration"),
            ));
        }
        let list: Vec<&str> = why.iter().map(String::as_str).collect();
        return Err(format!(
            "ValueError: Selected backend AttentionBackendEnum.{b} is not valid for this \
             configuration. Reason: {}",
            python_str_list(&list)
        ));
    }
    let list = priorities(k);
    let names: Vec<&str> = list.iter().map(|b| b.name()).collect();
    let mut rule = format!(
        "latest: first valid backend of the priority list [{}]",
        names.join(", ")
    );
    let mut rejected = Vec::new();
    for &b in &list {
        let why = reasons(b, k);
        if why.is_empty() {
            return Ok((b, rule));
        }
        rule.push_str(&format!("; {b} skipped: {}", why.join(", ")));
        rejected.push(format!("{b}: [{}]", why.join(", ")));
    }
    Err(format!(
        "ValueError: No valid attention backend found for rocm with {}. Reasons: {{{}}}.",
        config_repr(k),
        rejected.join(", ")
    ))
}

/// The outcome as the hints print it: the backend's name or the error line.
fn outcome(i: &SelectorInput, p: Profile) -> String {
    match select(i, p) {
        Ok(s) => s.backend.name().to_string(),
        Err(e) => e.to_string(),
    }
}

/// Every single change the hints may name (the CLI's wording), applied.
fn single_changes(i: &SelectorInput) -> Vec<(String, SelectorInput)> {
    let mut out = Vec::new();
    let mut vary = |change: String, edit: &dyn Fn(&mut SelectorInput)| {
        let mut v = i.clone();
        edit(&mut v);
        out.push((change, v));
    };
    if i.env.attention_backend.is_some() {
        vary("unset VLLM_ATTENTION_BACKEND".into(), &|v| {
            v.env.attention_backend = None
        });
    }
    if i.attention_backend_flag.is_some() {
        vary("without --attention-backend".into(), &|v| {
            v.attention_backend_flag = None
        });
    }
    let to = |now: bool| if now { "0" } else { "1" };
    vary(
        format!("VLLM_ROCM_USE_AITER={}", to(i.env.use_aiter)),
        &|v| v.env.use_aiter = !v.env.use_aiter,
    );
    vary(
        format!("VLLM_ROCM_USE_AITER_MHA={}", to(i.env.use_aiter_mha)),
        &|v| v.env.use_aiter_mha = !v.env.use_aiter_mha,
    );
    vary(
        format!("VLLM_ROCM_USE_AITER_MLA={}", to(i.env.use_aiter_mla)),
        &|v| v.env.use_aiter_mla = !v.env.use_aiter_mla,
    );
    vary(
        format!(
            "VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION={}",
            to(i.env.use_aiter_unified_attention)
        ),
        &|v| v.env.use_aiter_unified_attention = !v.env.use_aiter_unified_attention,
    );
    vary(
        format!(
            "VLLM_V1_USE_PREFILL_DECODE_ATTENTION={}",
            to(i.env.use_prefill_decode_attention)
        ),
        &|v| v.env.use_prefill_decode_attention = !v.env.use_prefill_decode_attention,
    );
    let package = if i.aiter_installed {
        "--no-aiter-package"
    } else {
        "with the aiter package installed"
    };
    vary(package.into(), &|v| v.aiter_installed = !v.aiter_installed);
    for gpu in ["gfx942", "gfx90a", "gfx1100"] {
        if i.arch.name() != gpu {
            vary(format!("--arch {gpu}"), &|v| {
                v.arch = GpuArch::parse(gpu).unwrap()
            });
        }
    }
    let other = if i.block_size.unwrap_or(16) == 1 {
        16
    } else {
        1
    };
    vary(format!("--block-size {other}"), &|v| {
        v.block_size = Some(other)
    });
    let sinks = if i.has_sink {
        "without attention sinks"
    } else {
        "a model with attention sinks"
    };
    vary(sinks.into(), &|v| v.has_sink = !v.has_sink);
    let connector = if i.use_kv_connector {
        "without a KV connector"
    } else {
        "with a KV connector"
    };
    vary(connector.into(), &|v| {
        v.use_kv_connector = !v.use_kv_connector
    });
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Explicit: validated alone. Auto: the first backend of the priority
    /// list that validates, else vLLM's "No valid attention backend" error
    /// with the config and every backend's reasons.
    #[test]
    fn the_latest_selector_picks_the_first_valid_backend_of_its_priority_list(k in knobs()) {
        let got = select(&input(&k), Profile::Latest)
            .map(|s| (s.backend, s.rule))
            .map_err(|e| e.to_string());
        prop_assert_eq!(got, expected(&k), "{:?}", k);
    }

    /// The block size vLLM then uses: the user's; else ROCM_AITER_UNIFIED_ATTN's
    /// preferred 64 in the latest era; else 16 (vllm-backends §4.9).
    #[test]
    fn the_block_size_is_the_users_else_the_backends_preferred_one(
        k in knobs(), latest in any::<bool>(),
    ) {
        let p = if latest { Profile::Latest } else { Profile::Pr26980 };
        if let Ok(s) = select(&input(&k), p) {
            let want = match BLOCKS[k.block] {
                Some(b) => b,
                None if latest && s.backend == RocmAiterUnifiedAttn => 64,
                None => 16,
            };
            prop_assert_eq!(s.block_size, want);
        }
    }

    /// The hints are exactly the single changes that change the outcome,
    /// each with the outcome the selector gives after that change, in both
    /// eras.
    #[test]
    fn hints_are_exactly_the_single_changes_that_change_the_outcome(
        k in knobs(), latest in any::<bool>(),
    ) {
        let p = if latest { Profile::Latest } else { Profile::Pr26980 };
        let i = input(&k);
        let now = outcome(&i, p);
        let mut want: Vec<(String, String)> = single_changes(&i)
            .into_iter()
            .map(|(change, v)| (change, outcome(&v, p)))
            .filter(|(_, o)| *o != now)
            .collect();
        want.sort();
        let hints = attnlab_shared::selection::what_would_change(&i, p);
        let mut got: Vec<(String, String)> =
            hints.into_iter().map(|h| (h.change, h.outcome)).collect();
        got.sort();
        prop_assert_eq!(&got, &want, "{:?}", k);
        if let Ok(s) = select(&i, p) {
            let mut from_select: Vec<(String, String)> =
                s.hints.into_iter().map(|h| (h.change, h.outcome)).collect();
            from_select.sort();
            prop_assert_eq!(from_select, want);
        }
    }
}

/// selection.md §3's consequences, through the generator's vocabulary: the
/// default MHA backend is ROCM_ATTN, and AITER FA is only reached when
/// ROCM_ATTN is invalid (here: a KV connector), and never on gfx90a.
#[test]
fn the_latest_default_is_rocm_attn_and_aiter_fa_needs_cdna3() {
    let base = Knobs {
        flags: [true, true, true, false, false],
        aiter_installed: true,
        use_mla: false,
        use_sparse: false,
        kv: 0,
        dtype: 2,
        head: 5,
        block: 0,
        arch: 0,
        has_sink: false,
        attn_type: 0,
        use_non_causal: false,
        use_kv_connector: false,
        use_dcp: false,
        explicit: 0,
        how: 0,
    };
    let pick = |k: &Knobs| select(&input(k), Profile::Latest).map(|s| s.backend);
    assert_eq!(pick(&base), Ok(RocmAttn));
    let connector = Knobs {
        use_kv_connector: true,
        ..base.clone()
    };
    assert_eq!(pick(&connector), Ok(RocmAiterFa));
    let gfx90a = Knobs {
        arch: 1,
        ..connector
    };
    assert_eq!(pick(&gfx90a), Ok(TritonAttn));
}
