//! Every kernel parameter block's Rust layout equals its `.hip` struct's,
//! field for field: each family's translation unit is compiled (host C++
//! compiler, `-fsyntax-only`) with the `static_assert`s that
//! `runtime::params::static_asserts` writes from the Rust `#[repr(C)]`
//! block appended, so a field added, dropped, reordered or resized on
//! either side fails to compile, naming the struct and the field.
//!
//! Without a C++ compiler each test prints one line saying why and passes.

use attnlab_gpu::kernels::{family, translation_unit, PORTABLE_H};
use attnlab_gpu::ops::flash_varlen::VarlenBlock;
use attnlab_gpu::ops::flash_varlen_tc::VarlenTcBlock;
use attnlab_gpu::ops::flex_attention::FlexParams;
use attnlab_gpu::ops::flex_attention_tc::FlexTcParams;
use attnlab_gpu::ops::merge_attn_states::MergeParams;
use attnlab_gpu::ops::mla_decode::MlaParams;
use attnlab_gpu::ops::mla_decode_tc::MlaTcParams;
use attnlab_gpu::ops::mla_proj::ProjParams;
use attnlab_gpu::ops::paged_decode::PagedParams;
use attnlab_gpu::ops::paged_decode_2d_tc::Decode2dTcParams;
use attnlab_gpu::ops::paged_decode_tc::TcParams;
use attnlab_gpu::ops::prefix_prefill::PrefixParams;
use attnlab_gpu::ops::prefix_prefill_tc::PrefixTcParams;
use attnlab_gpu::ops::unified_attention::UnifiedParams;
use attnlab_gpu::ops::unified_attention_tc::UnifiedTcParams;
use attnlab_gpu::runtime::host::HostCompiler;
use attnlab_gpu::runtime::params::static_asserts;
use attnlab_gpu::runtime::GpuError;

fn compiler_or_skip(test: &str) -> Option<HostCompiler> {
    match HostCompiler::detect(PORTABLE_H) {
        Ok(c) => Some(c),
        Err(GpuError::NoDevice(why)) => {
            eprintln!("{test}: skipped: {why}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Compiles `family`'s source (its first define variant, wave 64: no
/// parameter block depends on either) with `asserts` appended.
fn compile_with(family_name: &str, asserts: &str) -> Option<Result<(), GpuError>> {
    let cxx = compiler_or_skip(family_name)?;
    let f = family(family_name).expect("a known family");
    let unit = format!(
        "{}\n#line 1 \"param_layout_asserts\"\n{asserts}",
        translation_unit(f).expect("source")
    );
    let defines = (f.variants)().into_iter().next().unwrap_or_default();
    Some(cxx.check_syntax(64, family_name, &unit, &defines))
}

fn layout_matches(family_name: &str, asserts: &[String]) {
    if let Some(r) = compile_with(family_name, &asserts.concat()) {
        r.unwrap_or_else(|e| panic!("{family_name}: {e}"));
    }
}

#[test]
fn a_block_whose_field_offset_differs_from_the_hip_struct_fails_naming_the_field() {
    let asserts = static_asserts::<MergeParams>();
    let wrong = asserts.replace(
        "__builtin_offsetof(MergeParams, hip_kernel) == 24",
        "__builtin_offsetof(MergeParams, hip_kernel) == 28",
    );
    assert_ne!(asserts, wrong, "{asserts}");
    if let Some(r) = compile_with("merge_attn_states", &wrong) {
        let e = r.expect_err("a wrong offset compiles").to_string();
        assert!(e.contains("MergeParams.hip_kernel"), "{e}");
    }
}

#[test]
fn merge_params_match_merge_attn_states_hip() {
    layout_matches("merge_attn_states", &[static_asserts::<MergeParams>()]);
}

#[test]
fn paged_params_match_paged_decode_hip() {
    layout_matches("paged_decode", &[static_asserts::<PagedParams>()]);
}

#[test]
fn prefix_params_match_prefix_prefill_hip() {
    layout_matches("prefix_prefill", &[static_asserts::<PrefixParams>()]);
}

#[test]
fn flex_params_match_flex_attention_hip() {
    layout_matches("flex_attention", &[static_asserts::<FlexParams>()]);
}

#[test]
fn varlen_params_match_flash_varlen_hip() {
    layout_matches("flash_varlen", &[static_asserts::<VarlenBlock>()]);
}

#[test]
fn varlen_tc_params_match_flash_varlen_tc_hip() {
    layout_matches("flash_varlen_tc", &[static_asserts::<VarlenTcBlock>()]);
}

#[test]
fn unified_params_match_unified_attention_hip() {
    layout_matches("unified_attention", &[static_asserts::<UnifiedParams>()]);
}

#[test]
fn flex_tc_params_match_flex_attention_tc_hip() {
    layout_matches("flex_attention_tc", &[static_asserts::<FlexTcParams>()]);
}

#[test]
fn prefix_tc_params_match_prefix_prefill_tc_hip() {
    layout_matches("prefix_prefill_tc", &[static_asserts::<PrefixTcParams>()]);
}

#[test]
fn unified_tc_params_match_unified_attention_tc_hip() {
    layout_matches(
        "unified_attention_tc",
        &[static_asserts::<UnifiedTcParams>()],
    );
}

#[test]
fn mla_params_match_mla_decode_hip() {
    layout_matches("mla_decode", &[static_asserts::<MlaParams>()]);
}

#[test]
fn mla_tc_params_match_mla_decode_tc_hip() {
    layout_matches("mla_decode_tc", &[static_asserts::<MlaTcParams>()]);
}

#[test]
fn proj_params_match_mla_proj_hip() {
    layout_matches("mla_proj", &[static_asserts::<ProjParams>()]);
}

#[test]
fn decode_2d_tc_params_match_paged_decode_2d_tc_hip() {
    layout_matches(
        "paged_decode_2d_tc",
        &[static_asserts::<Decode2dTcParams>()],
    );
}

#[test]
fn tc_params_match_paged_decode_tc_hip() {
    layout_matches("paged_decode_tc", &[static_asserts::<TcParams>()]);
}
