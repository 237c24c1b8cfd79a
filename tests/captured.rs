//! Cases captured from vLLM 0.34.0's own Triton kernels on an NVIDIA H100
//! (`fixtures/vllm-0.34-h100/`, attn-fixture/2; how they were made and how
//! to regenerate them: `fixtures/MANIFEST.md`), replayed through the
//! emulator. These pin what the emulator must reproduce: vLLM's kernel, bit
//! for bit, including where that kernel disagrees with f64 attention.

use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::registry::BackendName;
use attnlab_sim::backends::flavour::{Flavour, FlavourChoice};
use attnlab_sim::cache::KvCache;
use attnlab_sim::fixture::{self, Case};
use attnlab_sim::kernels::unified_attention::{
    unified_attention, unified_attention_3d, Grid, UnifiedLaunch, VllmLaunchOptions,
};
use attnlab_sim::kernels::unified_attention_tc::{unified_attention_tc, unified_attention_tc_3d};
use attnlab_sim::numerics::mma::MatrixTarget;
use attnlab_sim::profile::VllmProfile;
use attnlab_sim::replay::{fixture_flavour, replay_paths, replay_paths_in, ReplayResult, Status};
use attnlab_sim::tensor::Flat;
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
fn vllms_h100_fp8_capture_is_bit_exact_in_both_flavours_because_the_bf16_output_hides_their_f32_difference(
) {
    // triton_attn_00432: vLLM 0.34's unified_attention on an H100 (capture
    // arch sm_90): a bf16 query, an fp8_e4m3 cache with per-tensor k/v
    // scales, sinks; one decode token (5 query heads on 1 KV head, d 64)
    // over 28 keys, every key visible (no mask inside the tiles), the
    // recorded 3D launch of 16 segments of 16 keys (two segments work: keys
    // 0-15 and 16-27). vLLM casts each fp8 tile to bf16 (`x * scale`) and
    // runs tl.dot on the tensor cores: the tensor-core flavour (`auto` on
    // this capture) is what it computes, and replays it bit for bit; so
    // does the fma flavour.
    let name = "triton_attn_00432";
    let path = captured_dir().join(format!("{name}.safetensors"));
    let f = fixture::load(&path).unwrap();
    assert_eq!(
        fixture_flavour(FlavourChoice::Auto, BackendName::TritonAttn, &f.header).unwrap(),
        Flavour::TensorCore(MatrixTarget::Sm90)
    );
    for choice in [FlavourChoice::Tc, FlavourChoice::Fma, FlavourChoice::Auto] {
        let rows = replay_paths_in(
            std::slice::from_ref(&path),
            Some("TRITON_ATTN"),
            choice,
            |_, _| {},
        )
        .unwrap();
        let r = row(&rows, "TRITON_ATTN");
        assert_eq!(r.status, Status::Pass, "{} {r:#?}", choice.name());
        assert_bit_exact(r);
    }
    // Why both: the two arithmetics differ in f32, and the output's one
    // rounding to bf16 (16 fewer bits) swallows the difference. The fp8
    // data does not make them agree: K and V become bf16 values (4
    // significant bits times the scale, rounded), so the products are exact
    // in both, but the 64-term sums and P.V still round differently.
    let Case::Paged(p) = &f.case else {
        panic!("{name}: not a paged case")
    };
    let cfg = &p.cfg;
    let layout = KvLayout {
        kind: LayoutKind::Nhd,
        num_blocks: p.meta.num_blocks(),
        block_size: p.meta.block_size(),
        num_kv_heads: cfg.num_kv_heads(),
        head_size: cfg.head_size(),
        dtype: cfg.kv_dtype(),
    };
    let cache = KvCache {
        layout,
        k: p.key_cache.flat().into_owned(),
        v: p.value_cache.flat().into_owned(),
    };
    let q = p.query.flat().into_owned();
    let opts = VllmLaunchOptions {
        profile: VllmProfile::V0_34,
        ..VllmLaunchOptions::default()
    };
    let launch = UnifiedLaunch {
        grid: Grid::ThreeD { num_segments: 16 },
        tile_size: 16,
        ..UnifiedLaunch::vllm(&p.meta, cfg, opts).unwrap()
    };
    let fma = unified_attention_3d(&q, &cache, &p.meta, cfg, &launch).unwrap();
    let tc =
        unified_attention_tc_3d(&q, &cache, &p.meta, cfg, &launch, MatrixTarget::Sm90).unwrap();
    let differ = fma
        .acc
        .iter()
        .zip(&tc.acc)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert!(
        differ > 0,
        "{name}: the fma and sm_90 segment partials should differ in f32"
    );
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let out_fma = unified_attention(&q, &cache, &p.meta, cfg, &launch).unwrap();
    let out_tc =
        unified_attention_tc(&q, &cache, &p.meta, cfg, &launch, MatrixTarget::Sm90).unwrap();
    assert_eq!(bits(&out_fma), bits(&out_tc), "{name}: bf16 outputs");
    let captured = p.output.as_ref().unwrap().flat().into_owned();
    assert_eq!(bits(&out_tc), bits(&captured), "{name}: vLLM's H100 bits");
}

#[test]
fn every_16_bit_triton_attn_capture_replays_bit_exact_on_the_h100s_tensor_cores() {
    // `--flavour auto` on these sm_90 captures is the tensor-core flavour:
    // TRITON_ATTN on unified_attention_tc, fp8 caches (4 of the captures)
    // included; the f32-query capture (TF32 on the H100) is refused naming
    // its dtype.
    let rows = replay_paths_in(
        &[captured_dir()],
        Some("TRITON_ATTN"),
        FlavourChoice::Auto,
        |_, _| {},
    )
    .unwrap();
    let (mut exact, mut fp8) = (0, 0);
    for r in rows.iter().filter(|r| {
        r.backend == "TRITON_ATTN"
            && Path::new(&r.file)
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.starts_with("triton_attn_"))
    }) {
        if r.dtype == "float32" {
            assert_eq!(r.status, Status::Skipped, "{r:#?}");
            assert!(
                r.reason.as_deref().is_some_and(|m| m.contains("float32")),
                "{r:#?}"
            );
            continue;
        }
        assert_eq!(r.status, Status::Pass, "{r:#?}");
        let u = r
            .ulp
            .as_ref()
            .unwrap_or_else(|| panic!("no ULP stats: {r:#?}"));
        assert_eq!(u.bit_exact, u.elements, "{}: not bit-exact: {u:?}", r.file);
        exact += 1;
        fp8 += usize::from(
            r.kv_cache_dtype
                .as_deref()
                .is_some_and(|k| k.starts_with("fp8")),
        );
    }
    assert!(
        exact >= 11 && fp8 >= 4,
        "{exact} bit-exact, {fp8} with fp8 caches"
    );
}
