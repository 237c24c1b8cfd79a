//! Cases captured from vLLM 0.34.0's own Triton kernels on an NVIDIA H100
//! (`fixtures/vllm-0.34-h100/`, attn-fixture/2; how they were made and how
//! to regenerate them: `fixtures/MANIFEST.md`), replayed through the
//! emulator. These pin what the emulator must reproduce: vLLM's kernel, bit
//! for bit, including where that kernel disagrees with f64 attention.

use attnlab_sim::replay::{replay_paths, ReplayResult, Status};
use std::path::{Path, PathBuf};

fn captured_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vllm-0.34-h100")
}

fn replay(name: &str, backend: Option<&str>) -> Vec<ReplayResult> {
    let path = captured_dir().join(format!("{name}.safetensors"));
    replay_paths(&[path], backend).unwrap()
}

fn row<'a>(rows: &'a [ReplayResult], backend: &str) -> &'a ReplayResult {
    rows.iter()
        .find(|r| r.backend == backend)
        .unwrap_or_else(|| panic!("no {backend} row in {rows:#?}"))
}

/// Bit-exact on every output element, with the element count checked.
fn assert_bit_exact(r: &ReplayResult) {
    let u = r
        .ulp
        .as_ref()
        .unwrap_or_else(|| panic!("no ULP stats: {r:#?}"));
    assert!(u.elements > 0, "{r:#?}");
    assert_eq!(u.bit_exact, u.elements, "{}: not bit-exact: {u:?}", r.file);
    assert!(r.fidelity_exact, "{r:#?}");
}

#[test]
fn emulator_reproduces_vllm_not_f64_on_captured_masked_tile_softcap_and_window_1_cases() {
    // triton_attn_00473: a fully masked first KV tile (edge:masked_first_tile);
    // 00297: |s| / softcap > 88 (edge:softcap_overflow); 00301: window 1.
    // On each, vLLM 0.34's unified_attention is outside f64 attention's
    // tolerance, and the emulator (profile 0.34, taken from the capture's
    // `capture.vllm`) reproduces the kernel bit for bit.
    for (name, tag) in [
        ("triton_attn_00473", "edge:masked_first_tile"),
        ("triton_attn_00297", "edge:softcap_overflow"),
        ("triton_attn_00301", "edge:window_1"),
    ] {
        let rows = replay(name, Some("TRITON_ATTN"));
        let f64_row = row(&rows, "reference(f64)");
        assert_eq!(
            f64_row.status,
            Status::Fail,
            "{name} ({tag}): f64 should disagree with vLLM: {f64_row:#?}"
        );
        let emu = row(&rows, "TRITON_ATTN");
        assert_eq!(emu.status, Status::Pass, "{name} ({tag}): {emu:#?}");
        assert_bit_exact(emu);
        assert!(
            emu.launch
                .as_deref()
                .is_some_and(|l| l.contains("profile 0.34")),
            "{name}: replayed with the capture's vLLM profile: {:?}",
            emu.launch
        );
    }
}

#[test]
fn every_captured_kernel_output_passes_through_its_own_backend() {
    let rows = replay_paths(&[captured_dir()], None).unwrap();
    let own = |file: &str| -> Option<&'static str> {
        let stem = Path::new(file).file_stem()?.to_str()?;
        [
            ("triton_attn_", "TRITON_ATTN"),
            ("merge_attn_states_", "merge_attn_states"),
            ("triton_mla_", "TRITON_MLA"),
        ]
        .into_iter()
        .find(|(p, _)| stem.starts_with(p))
        .map(|(_, b)| b)
    };
    let mut checked = 0;
    for r in &rows {
        if own(&r.file) == Some(r.backend.as_str()) {
            assert_eq!(r.status, Status::Pass, "{r:#?}");
            checked += 1;
        }
    }
    assert!(
        checked >= 18,
        "only {checked} captured rows of their own backend"
    );
}

#[test]
fn vllm_paged_decode_writes_zero_length_query_rows_as_decodes() {
    // vLLM's kernel_paged_attention_2d returns early only for query_len > 1,
    // so a sequence with no new token is computed as a decode and written
    // at query_start_loc[i], the next sequence's first row (rocm_attn_00458,
    // 'zero_len_query': its output is outside f64's tolerance), or past the
    // end of the output when it is the batch's last sequence: the capture of
    // rocm_attn_00028 (one sequence, query length 0) ended in an illegal
    // memory access, recorded as the file's capture_error.
    let rows = replay("rocm_attn_00458", None);
    assert_eq!(
        row(&rows, "reference(f64)").status,
        Status::Fail,
        "{rows:#?}"
    );
    let rows = replay("rocm_attn_00028", None);
    let r = &rows[0];
    assert_eq!(r.status, Status::Error, "{rows:#?}");
    assert!(
        r.reason
            .as_deref()
            .is_some_and(|m| m.contains("illegal memory access")),
        "{r:#?}"
    );
}

#[test]
fn aiter_unified_softcap_overflow_on_a_captured_case_is_a_divergence_with_its_reason() {
    // 00093 and 00297 (edge:softcap_overflow): vLLM 0.34's one-exp soft-cap
    // saturates at +-c; AITER's two-exp2 spelling overflows to inf/NaN on the
    // same scores, so the emulated ROCM_AITER_UNIFIED_ATTN is non-finite where
    // the capture is finite: a divergence of that backend, named, not a fail.
    for name in ["triton_attn_00093", "triton_attn_00297"] {
        let rows = replay(name, Some("ROCM_AITER_UNIFIED_ATTN"));
        let r = row(&rows, "ROCM_AITER_UNIFIED_ATTN");
        assert_eq!(r.status, Status::Divergence, "{name}: {r:#?}");
        let why = r.reason.as_deref().unwrap_or_default();
        assert!(
            why.contains("two exp2") && why.contains("128"),
            "{name}: {why}"
        );
    }
    // A soft-capped capture whose scores stay in range is still judged as usual.
    let rows = replay("triton_attn_00473", Some("ROCM_AITER_UNIFIED_ATTN"));
    assert_eq!(row(&rows, "ROCM_AITER_UNIFIED_ATTN").status, Status::Pass);
}
