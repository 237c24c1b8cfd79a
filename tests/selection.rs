//! vLLM's ROCm backend selection as a specification: every example command of
//! the seed documents, every subtle point of selection.md §5, the MLA
//! block-size table of §2, the latest-profile consequences of §3, and the
//! `attnlab select` binary with real environment variables.

use attnlab_shared::dtype::{DType, KvCacheDtype};
use attnlab_shared::registry::{AttnType, BackendName, BackendName::*};
use attnlab_shared::selection::{
    select, EnvFlags, ErrorKind, GpuArch, Profile, SelectionError, SelectorInput,
};
use proptest::prelude::*;
use std::process::Command;

const AITER: &str = "VLLM_ROCM_USE_AITER";
const MHA: &str = "VLLM_ROCM_USE_AITER_MHA";
const MLA: &str = "VLLM_ROCM_USE_AITER_MLA";
const UNIFIED: &str = "VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION";
const PDA: &str = "VLLM_V1_USE_PREFILL_DECODE_ATTENTION";
const BACKEND: &str = "VLLM_ATTENTION_BACKEND";

/// A shell prefix of env assignments, e.g. `&[(AITER, "1")]`.
type Env = &'static [(&'static str, &'static str)];

const V0_REMOVED: &str =
    "V0 attention backends have been removed. Set VLLM_USE_V1=1 to select a supported backend.";

/// `meta-llama/Llama-3.1-8B-Instruct` on an MI300X with these env vars.
fn llama(env: &[(&str, &str)]) -> SelectorInput {
    SelectorInput {
        env: EnvFlags::from_pairs(env),
        ..Default::default()
    }
}

/// `deepseek-ai/DeepSeek-R1` (MLA, head 576) with these env vars.
fn deepseek(env: &[(&str, &str)], block_size: Option<usize>) -> SelectorInput {
    SelectorInput {
        env: EnvFlags::from_pairs(env),
        use_mla: true,
        head_size: 576,
        block_size,
        ..Default::default()
    }
}

fn on(arch: &str, input: SelectorInput) -> SelectorInput {
    SelectorInput {
        arch: GpuArch::parse(arch).unwrap(),
        ..input
    }
}

fn pick(input: &SelectorInput, profile: Profile) -> Result<BackendName, SelectionError> {
    select(input, profile).map(|s| s.backend)
}

/// The PR #26980-era choice; panics with vLLM's error if there is none.
fn pr(input: &SelectorInput) -> BackendName {
    pick(input, Profile::Pr26980).unwrap_or_else(|e| panic!("expected a backend, got {e}"))
}

fn latest(input: &SelectorInput) -> BackendName {
    pick(input, Profile::Latest).unwrap_or_else(|e| panic!("expected a backend, got {e}"))
}

fn pr_err(input: &SelectorInput) -> SelectionError {
    select(input, Profile::Pr26980).expect_err("expected vLLM to raise")
}

fn latest_err(input: &SelectorInput) -> SelectionError {
    select(input, Profile::Latest).expect_err("expected vLLM to raise")
}

// ---------------------------------------------------------------------------
// Seed: docs "ROCm Attention Backends" and the PR #26980 appendix (same commands)

#[test]
fn doc_triton_attn_example_1_default_is_triton_attn() {
    assert_eq!(pr(&llama(&[])), TritonAttn);
}

#[test]
fn doc_triton_attn_example_2_explicit() {
    assert_eq!(pr(&llama(&[(BACKEND, "TRITON_ATTN")])), TritonAttn);
}

#[test]
fn doc_triton_attn_example_3_explicit_beats_aiter() {
    assert_eq!(
        pr(&llama(&[(AITER, "1"), (BACKEND, "TRITON_ATTN")])),
        TritonAttn
    );
}

#[test]
fn doc_triton_attn_example_4_aiter_with_mha_off_falls_back_to_triton() {
    assert_eq!(pr(&llama(&[(AITER, "1"), (MHA, "0")])), TritonAttn);
}

#[test]
fn doc_rocm_attn_example_1_explicit() {
    assert_eq!(pr(&llama(&[(BACKEND, "ROCM_ATTN")])), RocmAttn);
}

#[test]
fn doc_rocm_attn_example_2_selects_rocm_attn_despite_its_triton_comment() {
    // The doc comment says "still want to use TRITON_ATTN" (a typo, §4.7).
    assert_eq!(
        pr(&llama(&[(AITER, "1"), (BACKEND, "ROCM_ATTN")])),
        RocmAttn
    );
}

#[test]
fn doc_rocm_attn_example_3_explicit_with_mha_off() {
    assert_eq!(
        pr(&llama(&[(AITER, "1"), (MHA, "0"), (BACKEND, "ROCM_ATTN")])),
        RocmAttn
    );
}

#[test]
fn doc_rocm_attn_example_4_legacy_prefill_decode_flag() {
    assert_eq!(
        pr(&llama(&[(AITER, "1"), (MHA, "0"), (PDA, "1")])),
        RocmAttn
    );
}

#[test]
fn doc_aiter_fa_example_1_explicit_without_other_aiter_kernels() {
    assert_eq!(pr(&llama(&[(BACKEND, "ROCM_AITER_FA")])), RocmAiterFa);
}

#[test]
fn doc_aiter_fa_example_2_auto_via_aiter_flag() {
    assert_eq!(pr(&llama(&[(AITER, "1")])), RocmAiterFa);
}

#[test]
fn doc_aiter_unified_example_1_explicit() {
    assert_eq!(
        pr(&llama(&[(BACKEND, "ROCM_AITER_UNIFIED_ATTN")])),
        RocmAiterUnifiedAttn
    );
}

#[test]
fn doc_aiter_unified_example_2_explicit_with_aiter() {
    assert_eq!(
        pr(&llama(&[
            (AITER, "1"),
            (BACKEND, "ROCM_AITER_UNIFIED_ATTN")
        ])),
        RocmAiterUnifiedAttn
    );
}

#[test]
fn doc_aiter_unified_example_3_auto_via_unified_flag() {
    assert_eq!(
        pr(&llama(&[(AITER, "1"), (MHA, "0"), (UNIFIED, "1")])),
        RocmAiterUnifiedAttn
    );
}

#[test]
fn doc_triton_mla_example_1_explicit() {
    assert_eq!(pr(&deepseek(&[(BACKEND, "TRITON_MLA")], None)), TritonMla);
}

#[test]
fn doc_triton_mla_example_2_explicit_beats_aiter() {
    assert_eq!(
        pr(&deepseek(&[(AITER, "1"), (BACKEND, "TRITON_MLA")], None)),
        TritonMla
    );
}

#[test]
fn doc_aiter_mla_example_1_explicit() {
    assert_eq!(
        pr(&deepseek(&[(BACKEND, "ROCM_AITER_MLA")], None)),
        RocmAiterMla
    );
}

#[test]
fn doc_aiter_mla_example_2_auto_via_aiter_flag() {
    assert_eq!(pr(&deepseek(&[(AITER, "1")], None)), RocmAiterMla);
}

#[test]
fn doc_aiter_mla_example_3_block_size_1() {
    assert_eq!(pr(&deepseek(&[(AITER, "1")], Some(1))), RocmAiterMla);
}

#[test]
fn doc_claim_deepseek_defaults_to_aiter_mla_is_wrong_without_aiter_flag() {
    // §4.1: the code picks TRITON_MLA; the blog agrees with the code.
    assert_eq!(pr(&deepseek(&[], None)), TritonMla);
}

#[test]
fn doc_claim_triton_mla_needs_block_16_is_wrong_block_8_is_accepted() {
    assert_eq!(
        pr(&deepseek(&[(BACKEND, "TRITON_MLA")], Some(8))),
        TritonMla
    );
}

#[test]
fn pr_text_flash_attn_means_aiter_fa_explicit_flash_attn_raises_v0_error() {
    let e = pr_err(&llama(&[(BACKEND, "FLASH_ATTN")]));
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::RuntimeError, V0_REMOVED)
    );
}

#[test]
fn blog_attn_backend_flag_selects_every_listed_backend() {
    for (name, expect, mla) in [
        ("TRITON_ATTN", TritonAttn, false),
        ("ROCM_AITER_UNIFIED_ATTN", RocmAiterUnifiedAttn, false),
        ("ROCM_ATTN", RocmAttn, false),
        ("ROCM_AITER_FA", RocmAiterFa, false),
        ("TRITON_MLA", TritonMla, true),
        ("ROCM_AITER_TRITON_MLA", RocmAiterTritonMla, true),
        ("ROCM_AITER_MLA", RocmAiterMla, true),
    ] {
        let base = if mla { deepseek(&[], None) } else { llama(&[]) };
        let input = SelectorInput {
            attention_backend_flag: Some(name.into()),
            ..base
        };
        assert_eq!(pr(&input), expect, "--attn-backend {name}");
        assert_eq!(latest(&input), expect, "--attn-backend {name} (latest)");
    }
}

// ---------------------------------------------------------------------------
// selection.md §2: rule order and exact messages

#[test]
fn explicit_aiter_fa_off_gfx9_raises_value_error() {
    let e = pr_err(&on("gfx1100", llama(&[(BACKEND, "ROCM_AITER_FA")])));
    assert_eq!(e.kind, ErrorKind::ValueError);
    assert_eq!(
        e.message,
        "The selected backend, ROCM_AITER_FA, is only supported on gfx9 architectures."
    );
}

#[test]
fn mla_with_non_mla_backend_message_keeps_vllms_odd_spacing() {
    for name in [
        "TRITON_ATTN",
        "ROCM_ATTN",
        "ROCM_AITER_FA",
        "ROCM_AITER_UNIFIED_ATTN",
        "FLEX_ATTENTION",
        "FLASHMLA",
        "ROCM_AITER_MLA_SPARSE",
    ] {
        let e = pr_err(&deepseek(&[(BACKEND, name)], None));
        assert_eq!(e.kind, ErrorKind::ValueError);
        assert_eq!(
            e.message,
            format!(
                " The selected backend, {name},is not MLA type while requested for MLA backend."
            )
        );
    }
}

#[test]
fn mha_model_with_any_non_rocm_mha_backend_raises_misleading_v0_error() {
    for name in [
        "FLASH_ATTN",
        "FLASHINFER",
        "TORCH_SDPA",
        "TRITON_MLA",
        "ROCM_AITER_MLA",
        "XFORMERS",
        "CUSTOM",
    ] {
        let e = pr_err(&llama(&[(BACKEND, name)]));
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::RuntimeError, V0_REMOVED),
            "{name}"
        );
    }
}

#[test]
fn dead_rule_4_4_never_changes_the_outcome() {
    // Rule 4.4 (AITER and gfx9 and MHA is not False) is covered by rule 4.2:
    // every AITER=1 input on gfx9 with MHA on already gets ROCM_AITER_FA.
    for pda in ["0", "1"] {
        assert_eq!(pr(&llama(&[(AITER, "1"), (PDA, pda)])), RocmAiterFa);
    }
}

#[test]
fn mla_block_size_table_of_section_2() {
    use Expect::*;
    #[derive(Debug, PartialEq)]
    enum Expect {
        B(BackendName),
        ValueError,
    }
    let rows: [(&str, Env, &str, [Expect; 4]); 6] = [
        (
            "no flags, auto",
            &[],
            "gfx942",
            [B(RocmAiterMla), B(TritonMla), B(TritonMla), B(TritonMla)],
        ),
        (
            "AITER=1, auto",
            &[(AITER, "1")],
            "gfx942",
            [
                B(RocmAiterMla),
                B(RocmAiterMla),
                B(RocmAiterMla),
                B(RocmAiterMla),
            ],
        ),
        (
            "AITER=1 AITER_MLA=0, auto",
            &[(AITER, "1"), (MLA, "0")],
            "gfx942",
            [B(RocmAiterMla), B(TritonMla), B(TritonMla), B(TritonMla)],
        ),
        (
            "AITER=1 on gfx1100, auto",
            &[(AITER, "1")],
            "gfx1100",
            [B(RocmAiterMla), B(TritonMla), B(TritonMla), B(TritonMla)],
        ),
        (
            "explicit TRITON_MLA",
            &[(BACKEND, "TRITON_MLA")],
            "gfx942",
            [ValueError, B(TritonMla), B(TritonMla), B(TritonMla)],
        ),
        (
            "explicit ROCM_AITER_MLA",
            &[(BACKEND, "ROCM_AITER_MLA")],
            "gfx942",
            [
                B(RocmAiterMla),
                B(RocmAiterMla),
                B(RocmAiterMla),
                B(RocmAiterMla),
            ],
        ),
    ];
    for (label, env, arch, expected) in rows {
        for (bs, want) in [1, 8, 16, 64].into_iter().zip(expected) {
            let got = match pick(&on(arch, deepseek(env, Some(bs))), Profile::Pr26980) {
                Ok(b) => B(b),
                Err(e) if e.kind == ErrorKind::ValueError => ValueError,
                Err(e) => panic!("{label} bs={bs}: {e}"),
            };
            assert_eq!(got, want, "{label} bs={bs}");
        }
    }
    for bs in [1, 8, 16, 64] {
        assert_eq!(
            pr(&deepseek(&[(BACKEND, "ROCM_AITER_TRITON_MLA")], Some(bs))),
            RocmAiterTritonMla
        );
    }
}

#[test]
fn triton_mla_block_1_message_is_vllms_exact_text() {
    let e = pr_err(&deepseek(&[(BACKEND, "TRITON_MLA")], Some(1)));
    assert_eq!(
        e.to_string(),
        "ValueError:  The selected backend, TRITON_MLA,does not support block size 1."
    );
}

// ---------------------------------------------------------------------------
// selection.md §5: subtle points, one test each

#[test]
fn s5_1_aiter_mha_0_only_removes_the_automatic_aiter_fa() {
    assert_eq!(pr(&llama(&[(AITER, "1"), (MHA, "0")])), TritonAttn);
    assert_eq!(
        pr(&llama(&[(AITER, "1"), (MHA, "0"), (PDA, "1")])),
        RocmAttn
    );
    assert_eq!(
        pr(&llama(&[
            (AITER, "1"),
            (MHA, "0"),
            (BACKEND, "ROCM_AITER_FA")
        ])),
        RocmAiterFa
    );
    assert_eq!(
        pr(&llama(&[(AITER, "1"), (MHA, "0"), (UNIFIED, "1")])),
        RocmAiterUnifiedAttn
    );
    assert_eq!(
        pr(&deepseek(&[(AITER, "1"), (MHA, "0")], None)),
        RocmAiterMla
    );
    // Latest: MHA=0 only drops FA from the fallback list after ROCM_ATTN.
    let kv = |env: &[(&str, &str)]| SelectorInput {
        use_kv_connector: true,
        ..llama(env)
    };
    assert_eq!(latest(&kv(&[(AITER, "1")])), RocmAiterFa);
    assert_eq!(
        latest(&kv(&[(AITER, "1"), (MHA, "0")])),
        RocmAiterUnifiedAttn
    );
}

#[test]
fn s5_2_prefill_decode_attention_is_beaten_by_aiter_fa_on_gfx9_only() {
    assert_eq!(pr(&llama(&[(PDA, "1")])), RocmAttn);
    assert_eq!(pr(&llama(&[(AITER, "1"), (PDA, "1")])), RocmAiterFa);
    assert_eq!(
        pr(&on("gfx1100", llama(&[(AITER, "1"), (PDA, "1")]))),
        RocmAttn
    );
    assert_eq!(
        pr(&llama(&[(AITER, "1"), (UNIFIED, "1"), (PDA, "1")])),
        RocmAiterUnifiedAttn
    );
}

#[test]
fn s5_3_aiter_unified_has_no_arch_check_but_aiter_fa_needs_gfx9() {
    assert_eq!(
        pr(&on("gfx1100", llama(&[(AITER, "1"), (UNIFIED, "1")]))),
        RocmAiterUnifiedAttn
    );
    assert_eq!(
        pr(&on(
            "gfx1100",
            llama(&[(BACKEND, "ROCM_AITER_UNIFIED_ATTN")])
        )),
        RocmAiterUnifiedAttn
    );
    assert_eq!(pr(&on("gfx1100", llama(&[(AITER, "1")]))), TritonAttn);
    assert_eq!(
        pr_err(&on("gfx1100", llama(&[(BACKEND, "ROCM_AITER_FA")]))).kind,
        ErrorKind::ValueError
    );
}

#[test]
fn s5_4_gfx9_means_gfx90a_gfx942_gfx950_and_latest_fa_needs_mi3xx() {
    for arch in ["gfx90a", "gfx942", "gfx950", "gfx942:sramecc+:xnack-"] {
        assert_eq!(pr(&on(arch, llama(&[(AITER, "1")]))), RocmAiterFa, "{arch}");
    }
    for arch in ["gfx908", "gfx906", "gfx1100", "gfx1201"] {
        assert_eq!(pr(&on(arch, llama(&[(AITER, "1")]))), TritonAttn, "{arch}");
    }
    let e = latest_err(&on("gfx90a", llama(&[(BACKEND, "ROCM_AITER_FA")])));
    assert_eq!(
        e.message,
        "Selected backend AttentionBackendEnum.ROCM_AITER_FA is not valid for this configuration. \
         Reason: ['compute capability not supported']"
    );
}

#[test]
fn s5_5_mla_block_size_1_always_selects_aiter_mla_in_pr_era() {
    for input in [
        deepseek(&[], Some(1)),
        deepseek(&[(AITER, "1"), (MLA, "0")], Some(1)),
        on("gfx1100", deepseek(&[(AITER, "1")], Some(1))),
        SelectorInput {
            aiter_installed: false,
            ..deepseek(&[(AITER, "1")], Some(1))
        },
    ] {
        assert_eq!(pr(&input), RocmAiterMla);
    }
    let e = latest_err(&deepseek(&[], Some(1)));
    assert!(
        e.message.starts_with(
            "No valid attention backend found for rocm with AttentionSelectorConfig(head_size=576,"
        ),
        "{e}"
    );
    assert!(
        e.message
            .ends_with("Reasons: {TRITON_MLA: [block_size not supported]}."),
        "{e}"
    );
}

#[test]
fn s5_6_auto_mla_checks_the_aiter_package_but_auto_mha_does_not() {
    let no_pkg = |i: SelectorInput| SelectorInput {
        aiter_installed: false,
        ..i
    };
    assert_eq!(pr(&no_pkg(llama(&[(AITER, "1")]))), RocmAiterFa);
    assert_eq!(pr(&no_pkg(deepseek(&[(AITER, "1")], Some(16)))), TritonMla);
    assert_eq!(pr(&deepseek(&[(AITER, "1")], Some(16))), RocmAiterMla);
}

#[test]
fn s5_7_only_1_and_true_are_true_so_empty_or_off_disables_mha() {
    for v in ["yes", "on", "2", "", "0", "false"] {
        assert_eq!(pr(&llama(&[(AITER, v)])), TritonAttn, "AITER={v:?}");
    }
    for v in ["1", "true", "TRUE", "True"] {
        assert_eq!(pr(&llama(&[(AITER, v)])), RocmAiterFa, "AITER={v:?}");
    }
    for v in ["", "off", "no"] {
        assert_eq!(
            pr(&llama(&[(AITER, "1"), (MHA, v)])),
            TritonAttn,
            "MHA={v:?}"
        );
    }
}

#[test]
fn s5_8_explicit_names_are_case_sensitive_in_envs_py() {
    let list = BackendName::python_list();
    for bad in [
        "triton_attn",
        "TRITON_ATTN_VLLM_V1",
        "ROCM_FLASH",
        "Rocm_Attn",
        "",
    ] {
        let e = pr_err(&llama(&[(BACKEND, bad)]));
        assert_eq!(e.kind, ErrorKind::ValueError);
        assert_eq!(
            e.message,
            format!("Invalid value '{bad}' for VLLM_ATTENTION_BACKEND. Valid options: {list}.")
        );
        // The deprecated env var still goes through envs.py in the later era.
        assert_eq!(latest_err(&llama(&[(BACKEND, bad)])).message, e.message);
    }
    assert!(
        list.starts_with("['FLASH_ATTN', 'TRITON_ATTN', 'XFORMERS', 'ROCM_ATTN',")
            && list.ends_with("'CPU_ATTN', 'CUSTOM']")
    );
    // --attention-backend: case-insensitive with "auto" in the AttentionConfig era.
    let flag = |v: &str| SelectorInput {
        attention_backend_flag: Some(v.into()),
        ..llama(&[])
    };
    assert_eq!(latest(&flag("rocm_aiter_fa")), RocmAiterFa);
    assert_eq!(latest(&flag("auto")), RocmAttn);
    assert!(latest_err(&flag("rocm_flash"))
        .message
        .starts_with("Unknown attention backend: 'rocm_flash'. Valid options are: FLASH_ATTN,"));
    assert_eq!(pr_err(&flag("rocm_aiter_fa")).kind, ErrorKind::ValueError);
}

#[test]
fn s5_9_error_types_differ_by_branch() {
    assert_eq!(
        pr_err(&deepseek(&[(BACKEND, "ROCM_ATTN")], None)).kind,
        ErrorKind::ValueError
    );
    assert_eq!(
        pr_err(&llama(&[(BACKEND, "TRITON_MLA")])).kind,
        ErrorKind::RuntimeError
    );
    assert_eq!(
        pr_err(&deepseek(&[(BACKEND, "TRITON_MLA")], Some(1))).kind,
        ErrorKind::ValueError
    );
    assert_eq!(
        pr_err(&on("gfx908", llama(&[(BACKEND, "ROCM_AITER_FA")]))).kind,
        ErrorKind::ValueError
    );
    let sparse = SelectorInput {
        use_sparse: true,
        block_size: Some(16),
        ..deepseek(&[], None)
    };
    let e = pr_err(&sparse);
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::AssertionError,
            "Sparse MLA backend on ROCm only supports block size 1 for now."
        )
    );
}

#[test]
fn s5_10_flex_attention_is_explicit_only_and_mha_only() {
    for arch in ["gfx942", "gfx1100", "gfx908"] {
        assert_eq!(
            pr(&on(arch, llama(&[(BACKEND, "FLEX_ATTENTION")]))),
            FlexAttention
        );
    }
    let e = pr_err(&deepseek(&[(BACKEND, "FLEX_ATTENTION")], None));
    assert!(e.message.contains("FLEX_ATTENTION,is not MLA type"), "{e}");
    assert_eq!(
        latest(&llama(&[(BACKEND, "FLEX_ATTENTION")])),
        FlexAttention
    );
}

#[test]
fn s5_11_use_sparse_wins_over_explicit_backend_and_use_mla() {
    let sparse = |env: &[(&str, &str)], use_mla: bool, bs: usize| SelectorInput {
        use_sparse: true,
        use_mla,
        block_size: Some(bs),
        ..llama(env)
    };
    assert_eq!(
        pr(&sparse(&[(BACKEND, "TRITON_ATTN")], false, 1)),
        RocmAiterMlaSparse
    );
    assert_eq!(pr(&sparse(&[], true, 1)), RocmAiterMlaSparse);
    // PR-era test_sparse_not_supported: use_mla=False, use_sparse=True, bs=16.
    assert_eq!(
        pr_err(&sparse(&[], false, 16)).kind,
        ErrorKind::AssertionError
    );
    let fp8 = SelectorInput {
        kv_cache_dtype: KvCacheDtype::Fp8,
        ..sparse(&[], true, 1)
    };
    assert_eq!(
        pr_err(&fp8).message,
        "ROCMAiterMLASparseBackend doesn't support fp8 kv_cache_dtype."
    );
    // Latest: the non-MLA sparse case has no valid backend; sparse MLA accepts 16.
    assert!(latest_err(&sparse(&[], false, 16))
        .message
        .contains("ROCM_AITER_MLA_SPARSE: [non-MLA not supported]"));
    assert_eq!(latest(&sparse(&[], true, 16)), RocmAiterMlaSparse);
}

#[test]
fn s5_12_pr_era_ignores_head_size_dtype_sinks_and_attn_type() {
    let odd = SelectorInput {
        head_size: 100,
        dtype: DType::F32,
        has_sink: true,
        attn_type: AttnType::EncoderDecoder,
        ..llama(&[(AITER, "1")])
    };
    assert_eq!(pr(&odd), RocmAiterFa);
    let rocm_attn_bs1 = SelectorInput {
        block_size: Some(1),
        ..llama(&[(BACKEND, "ROCM_ATTN")])
    };
    assert_eq!(pr(&rocm_attn_bs1), RocmAttn);
    assert_eq!(
        latest_err(&rocm_attn_bs1).message,
        "Selected backend AttentionBackendEnum.ROCM_ATTN is not valid for this configuration. Reason: ['block_size not supported']"
    );
    // Latest: head 100 is outside ROCM_ATTN's list, so the next valid one wins.
    assert_eq!(
        latest(&SelectorInput {
            head_size: 100,
            ..llama(&[])
        }),
        RocmAiterUnifiedAttn
    );
}

#[test]
fn s5_13_vllm_mla_test_table_with_head_128_fp16_and_mocked_is_mla_enabled() {
    // The tests pass head_size=128 and fp16 for MLA; the selector ignores both.
    let t = |env: &[(&str, &str)], bs| SelectorInput {
        head_size: 128,
        dtype: DType::F16,
        ..deepseek(env, Some(bs))
    };
    assert_eq!(pr(&t(&[], 16)), TritonMla);
    assert_eq!(pr(&t(&[], 1)), RocmAiterMla);
    assert_eq!(pr(&t(&[(AITER, "1")], 16)), RocmAiterMla); // "(should raise)" is stale
    assert_eq!(pr(&t(&[(AITER, "1")], 1)), RocmAiterMla);
}

#[test]
fn s5_14_block_size_after_selection_is_16_or_64_for_latest_aiter_unified() {
    assert_eq!(
        select(&llama(&[(AITER, "1"), (UNIFIED, "1")]), Profile::Pr26980)
            .unwrap()
            .block_size,
        16
    );
    let kv = SelectorInput {
        use_kv_connector: true,
        ..llama(&[(AITER, "1"), (MHA, "0")])
    };
    let s = select(&kv, Profile::Latest).unwrap();
    assert_eq!((s.backend, s.block_size), (RocmAiterUnifiedAttn, 64));
    assert_eq!(
        select(
            &SelectorInput {
                block_size: Some(32),
                ..kv
            },
            Profile::Latest
        )
        .unwrap()
        .block_size,
        32
    );
}

// ---------------------------------------------------------------------------
// selection.md §3 / vllm-backends §4.4: the latest profile

#[test]
fn latest_default_mha_backend_is_rocm_attn_even_with_aiter() {
    for env in [
        &[][..],
        &[(AITER, "1")][..],
        &[(AITER, "1"), (MHA, "0")][..],
        &[(AITER, "1"), (MHA, "0"), (UNIFIED, "1")][..],
        &[(AITER, "1"), (MHA, "0"), (PDA, "1")][..],
    ] {
        assert_eq!(latest(&llama(env)), RocmAttn, "{env:?}");
    }
}

#[test]
fn latest_kv_connector_falls_back_to_fa_then_unified_then_triton() {
    let kv = |env: &[(&str, &str)], pkg: bool| SelectorInput {
        use_kv_connector: true,
        aiter_installed: pkg,
        ..llama(env)
    };
    assert_eq!(latest(&kv(&[(AITER, "1")], true)), RocmAiterFa);
    assert_eq!(
        latest(&kv(&[(AITER, "1"), (MHA, "0")], true)),
        RocmAiterUnifiedAttn
    );
    assert_eq!(latest(&kv(&[], false)), TritonAttn);
}

#[test]
fn latest_sinks_rule_out_rocm_attn() {
    let sinks = |env: &[(&str, &str)], pkg: bool| SelectorInput {
        has_sink: true,
        aiter_installed: pkg,
        ..llama(env)
    };
    assert_eq!(latest(&sinks(&[(AITER, "1")], true)), RocmAiterFa);
    assert_eq!(latest(&sinks(&[], true)), RocmAiterUnifiedAttn);
    assert_eq!(latest(&sinks(&[], false)), TritonAttn);
}

#[test]
fn latest_mla_defaults_to_triton_mla_and_aiter_mla_with_aiter() {
    assert_eq!(latest(&deepseek(&[], None)), TritonMla);
    assert_eq!(latest(&deepseek(&[(AITER, "1")], None)), RocmAiterMla);
    assert_eq!(latest(&deepseek(&[(AITER, "1")], Some(1))), RocmAiterMla);
}

#[test]
fn latest_explicit_mla_rows_behave_as_before() {
    let e = latest_err(&deepseek(&[(BACKEND, "TRITON_MLA")], Some(1)));
    assert!(
        e.message.ends_with("Reason: ['block_size not supported']"),
        "{e}"
    );
    for bs in [1, 16] {
        assert_eq!(
            latest(&deepseek(&[(BACKEND, "ROCM_AITER_MLA")], Some(bs))),
            RocmAiterMla
        );
    }
}

#[test]
fn latest_mha_backends_reject_dcp_and_dense_mla_accepts_it() {
    let dcp = |i: SelectorInput| SelectorInput { use_dcp: true, ..i };
    assert!(latest_err(&dcp(llama(&[])))
        .message
        .contains("ROCM_ATTN: [DCP not supported]"));
    assert!(latest_err(&dcp(llama(&[(BACKEND, "TRITON_ATTN")])))
        .message
        .ends_with("Reason: ['DCP not supported']"));
    assert_eq!(latest(&dcp(deepseek(&[], None))), TritonMla);
}

#[test]
fn latest_explicit_reasons_list_every_failed_check_in_order() {
    let i = SelectorInput {
        kv_cache_dtype: KvCacheDtype::Fp8,
        block_size: Some(8),
        ..deepseek(&[(BACKEND, "FLEX_ATTENTION")], None)
    };
    assert_eq!(
        latest_err(&i).message,
        "Selected backend AttentionBackendEnum.FLEX_ATTENTION is not valid for this configuration. \
         Reason: ['kv_cache_dtype not supported', 'block_size not supported', 'MLA not supported']"
    );
}

#[test]
fn latest_no_valid_backend_message_shows_the_selector_config() {
    let e = latest_err(&SelectorInput {
        block_size: Some(8),
        ..llama(&[])
    });
    assert_eq!(
        e.message,
        "No valid attention backend found for rocm with AttentionSelectorConfig(head_size=128, dtype=torch.bfloat16, \
         kv_cache_dtype=auto, block_size=8, use_mla=False, has_sink=False, use_sparse=False, use_mm_prefix=False, \
         use_per_head_quant_scales=False, attn_type=AttentionType.DECODER, use_non_causal=False, \
         use_batch_invariant=False, use_kv_connector=False). Reasons: {ROCM_ATTN: [block_size not supported], \
         ROCM_AITER_UNIFIED_ATTN: [block_size not supported], TRITON_ATTN: [block_size not supported]}."
    );
}

#[test]
fn latest_rdna4_with_aiter_puts_unified_first() {
    assert_eq!(
        latest(&on("gfx1201", llama(&[(AITER, "1")]))),
        RocmAiterUnifiedAttn
    );
    assert_eq!(latest(&on("gfx1100", llama(&[(AITER, "1")]))), RocmAttn);
}

// ---------------------------------------------------------------------------
// Invariants over every env combination

fn env_value() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        None,
        Some("1"),
        Some("0"),
        Some("true"),
        Some("yes"),
        Some(""),
    ])
}

fn any_input() -> impl Strategy<Value = SelectorInput> {
    (
        prop::array::uniform5(env_value()),
        prop::sample::select(vec![
            "gfx90a", "gfx908", "gfx942", "gfx950", "gfx1100", "gfx1201",
        ]),
        prop::option::of(prop::sample::select(vec![1usize, 8, 16, 32, 64, 544])),
        any::<(bool, bool, bool, bool)>(),
    )
        .prop_map(|(vals, arch, block_size, (use_mla, pkg, sink, kv))| {
            let names = [AITER, MHA, MLA, UNIFIED, PDA];
            let pairs: Vec<(&str, &str)> = names
                .iter()
                .zip(vals)
                .filter_map(|(n, v)| v.map(|v| (*n, v)))
                .collect();
            SelectorInput {
                env: EnvFlags::from_pairs(&pairs),
                arch: GpuArch::parse(arch).unwrap(),
                block_size,
                use_mla,
                head_size: if use_mla { 576 } else { 128 },
                aiter_installed: pkg,
                has_sink: sink,
                use_kv_connector: kv,
                ..Default::default()
            }
        })
}

proptest! {
    #[test]
    fn auto_selection_never_picks_flex_and_always_matches_the_model_kind(input in any_input()) {
        for profile in [Profile::Pr26980, Profile::Latest] {
            if let Ok(s) = select(&input, profile) {
                prop_assert_ne!(s.backend, FlexAttention);
                let caps = s.backend.capabilities().expect("auto picks only ROCm backends");
                prop_assert_eq!(caps.is_mla(), input.use_mla);
            }
        }
    }

    #[test]
    fn auto_mha_in_pr_era_never_fails(input in any_input()) {
        let mha = SelectorInput { use_mla: false, ..input };
        prop_assert!(select(&mha, Profile::Pr26980).is_ok());
    }

    #[test]
    fn latest_choice_always_passes_its_own_explicit_validation(input in any_input()) {
        if let Ok(s) = select(&input, Profile::Latest) {
            let explicit = SelectorInput { attention_backend_flag: Some(s.backend.name().into()), ..input };
            prop_assert_eq!(select(&explicit, Profile::Latest).map(|e| e.backend), Ok(s.backend));
        }
    }

    #[test]
    fn every_hint_states_the_outcome_of_its_change(input in any_input()) {
        let s = select(&input, Profile::Pr26980);
        if let Ok(s) = s {
            for h in &s.hints {
                prop_assert_ne!(&h.outcome, s.backend.name());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The `attnlab select` binary

/// Runs `attnlab select ARGS` with exactly these VLLM_* variables set.
fn cli(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_attnlab"));
    cmd.arg("select").args(args);
    for name in attnlab_shared::selection::ENV_VARS {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run attnlab");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_json(env: &[(&str, &str)], args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, stdout, stderr) = cli(env, &all);
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout} / {stderr}"));
    (code, v)
}

#[test]
fn cli_aiter_deepseek_block_size_1_answers_like_vllm_serve() {
    let (code, v) = cli_json(
        &[(AITER, "1")],
        &["--model", "deepseek-r1", "--block-size", "1"],
    );
    assert_eq!(code, 0);
    assert_eq!(v["backend"], "ROCM_AITER_MLA");
    assert!(v["rule"].as_str().unwrap().contains("is_mla_enabled"));
}

#[test]
fn cli_runs_every_seed_example_command() {
    let llama = ["--model", "llama-3.1-8b"];
    let r1 = ["--model", "deepseek-r1"];
    let cases: [(Env, &[&str], &str); 19] = [
        (&[], &llama, "TRITON_ATTN"),
        (&[(BACKEND, "TRITON_ATTN")], &llama, "TRITON_ATTN"),
        (
            &[(AITER, "1"), (BACKEND, "TRITON_ATTN")],
            &llama,
            "TRITON_ATTN",
        ),
        (&[(AITER, "1"), (MHA, "0")], &llama, "TRITON_ATTN"),
        (&[(BACKEND, "ROCM_ATTN")], &llama, "ROCM_ATTN"),
        (&[(AITER, "1"), (BACKEND, "ROCM_ATTN")], &llama, "ROCM_ATTN"),
        (
            &[(AITER, "1"), (MHA, "0"), (BACKEND, "ROCM_ATTN")],
            &llama,
            "ROCM_ATTN",
        ),
        (&[(AITER, "1"), (MHA, "0"), (PDA, "1")], &llama, "ROCM_ATTN"),
        (&[(BACKEND, "ROCM_AITER_FA")], &llama, "ROCM_AITER_FA"),
        (&[(AITER, "1")], &llama, "ROCM_AITER_FA"),
        (
            &[(BACKEND, "ROCM_AITER_UNIFIED_ATTN")],
            &llama,
            "ROCM_AITER_UNIFIED_ATTN",
        ),
        (
            &[(AITER, "1"), (BACKEND, "ROCM_AITER_UNIFIED_ATTN")],
            &llama,
            "ROCM_AITER_UNIFIED_ATTN",
        ),
        (
            &[(AITER, "1"), (MHA, "0"), (UNIFIED, "1")],
            &llama,
            "ROCM_AITER_UNIFIED_ATTN",
        ),
        (&[(BACKEND, "TRITON_MLA")], &r1, "TRITON_MLA"),
        (&[(AITER, "1"), (BACKEND, "TRITON_MLA")], &r1, "TRITON_MLA"),
        (&[(BACKEND, "ROCM_AITER_MLA")], &r1, "ROCM_AITER_MLA"),
        (&[(AITER, "1")], &r1, "ROCM_AITER_MLA"),
        (
            &[(AITER, "1")],
            &["--model", "deepseek-r1", "--block-size", "1"],
            "ROCM_AITER_MLA",
        ),
        (&[], &r1, "TRITON_MLA"),
    ];
    for (env, args, want) in cases {
        let (code, v) = cli_json(env, args);
        assert_eq!(
            (code, v["backend"].as_str()),
            (0, Some(want)),
            "{env:?} {args:?}: {v}"
        );
    }
}

#[test]
fn cli_latest_rules_pick_rocm_attn_for_the_doc_examples_that_changed() {
    for env in [
        &[][..],
        &[(AITER, "1"), (MHA, "0")][..],
        &[(AITER, "1")][..],
        &[(AITER, "1"), (MHA, "0"), (UNIFIED, "1")][..],
    ] {
        let (code, v) = cli_json(env, &["--rules", "latest"]);
        assert_eq!(
            (code, v["backend"].as_str()),
            (0, Some("ROCM_ATTN")),
            "{env:?}"
        );
    }
}

#[test]
fn cli_vllm_error_is_json_with_type_and_message_and_exit_1() {
    let (code, v) = cli_json(&[(BACKEND, "rocm_attn")], &[]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "ValueError");
    assert!(v["error"]["message"].as_str().unwrap().starts_with(
        "Invalid value 'rocm_attn' for VLLM_ATTENTION_BACKEND. Valid options: ['FLASH_ATTN',"
    ));
    let (code, v) = cli_json(&[], &["--sparse", "--mla"]);
    assert_eq!(
        (code, v["error"]["type"].as_str()),
        (1, Some("AssertionError"))
    );
}

#[test]
fn cli_vllm_error_without_json_prints_the_exception_line_and_exits_1() {
    let (code, _, stderr) = cli(&[(BACKEND, "ROCM_AITER_FA")], &["--arch", "gfx1100"]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("ValueError: The selected backend, ROCM_AITER_FA, is only supported on gfx9 architectures.\n"), "{stderr}");
}

#[test]
fn cli_human_output_names_backend_rule_and_what_would_change_it() {
    let (code, stdout, _) = cli(&[], &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("backend: TRITON_ATTN\nrule:    pr26980 rule 4.5"),
        "{stdout}"
    );
    assert!(
        stdout.contains("what would change the choice:")
            && stdout.contains("VLLM_ROCM_USE_AITER=1"),
        "{stdout}"
    );
}

#[test]
fn cli_attention_backend_flag_is_validated_like_the_env_var() {
    let (code, v) = cli_json(&[], &["--attention-backend", "rocm_attn"]);
    assert_eq!((code, v["error"]["type"].as_str()), (1, Some("ValueError")));
    let (code, v) = cli_json(
        &[(BACKEND, "TRITON_ATTN")],
        &["--attention-backend", "ROCM_ATTN"],
    );
    assert_eq!((code, v["backend"].as_str()), (0, Some("ROCM_ATTN")));
}

#[test]
fn cli_bad_flag_values_name_the_value_and_exit_1_without_panicking() {
    for (args, value) in [
        (&["--block-size", "0"][..], "'0'"),
        (&["--block-size", "-3"][..], "-3"),
        (&["--block-size", "abc"][..], "'abc'"),
        (&["--head-size", "0"][..], "'0'"),
        (&["--arch", "mi300"][..], "'mi300'"),
        (&["--arch", "gfx42"][..], "'gfx42'"),
        (&["--model", "gpt-5"][..], "'gpt-5'"),
        (&["--dtype", "int3"][..], "'int3'"),
        (&["--kv-cache-dtype", "fp4"][..], "'fp4'"),
        (&["--rules", "v0"][..], "'v0'"),
    ] {
        let (code, _, stderr) = cli(&[], args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(value) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}
