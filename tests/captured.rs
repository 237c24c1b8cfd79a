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
use attnlab_sim::kernels::mla_decode_tc::MlaSoftmax;
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

/// vLLM 0.34's TRITON_MLA decode (`decode_attention_fwd`, grouped stage 1 +
/// stage 2) on the H100, replayed in the tensor-core flavour (sm_90's
/// `mma.sync` model, 32-key tiles, Triton's row-sum tree): the 7- and
/// 15-key captures bit for bit. The 16-key capture differs in one softmax
/// weight only: head 15's p of key 15 lies one f32 ulp above an f16
/// rounding midpoint under the contract's exp2c (the tile's Q·K chain is
/// Triton's, instruction for instruction), where the H100's `ex2.approx.f32`
/// gives at most the midpoint; P rounded to f16 then moves that head's
/// output (171 elements, up to 70 ulp) and no other (matrix-cores.md,
/// "mla_decode_tc", against vLLM's own kernel).
#[test]
fn tensor_core_mla_decode_in_the_contracts_arithmetic_reproduces_vllms_h100_captures_but_one_exp_rounding(
) {
    use attnlab_sim::backends::flavour::FlavourChoice;
    use attnlab_sim::replay::replay_paths_in;
    for name in ["triton_mla_00146", "triton_mla_00442"] {
        let path = captured_dir().join(format!("{name}.safetensors"));
        let rows =
            replay_paths_in(&[path], Some("TRITON_MLA"), FlavourChoice::Tc, |_, _| ()).unwrap();
        let r = row(&rows, "TRITON_MLA");
        assert_eq!(r.status, Status::Pass, "{name}: {r:#?}");
        assert_bit_exact(r);
    }
    let (out, want, lkv) = mla_tc_output("triton_mla_00515");
    for (head, (o, w)) in out.chunks(lkv).zip(want.chunks(lkv)).enumerate() {
        let differing = o
            .iter()
            .zip(w)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        if head == 15 {
            assert!(
                differing > 0,
                "head 15 now matches: update the docs and this test"
            );
        } else {
            assert_eq!(differing, 0, "head {head}");
        }
    }
}

/// With vLLM's own softmax arithmetic on sm_90 (natural-log scores, each
/// weight `ex2.approx(rn(rn(s - m) * log2 e))` through the unit measured on
/// an H100, `numerics::ex2_approx`), the twin reproduces every element of
/// the three H100 captures, 00515's head 15 included: the contract's one
/// divergence there was the exponential, and the model accounts for it.
#[test]
fn tensor_core_mla_decode_in_vllms_sm90_arithmetic_reproduces_every_h100_capture_bit_for_bit() {
    for name in ["triton_mla_00146", "triton_mla_00442", "triton_mla_00515"] {
        let (out, want, _) = mla_tc_output_with(name, MlaSoftmax::VllmSm90);
        let differing: Vec<usize> = (0..out.len())
            .filter(|&i| out[i].to_bits() != want[i].to_bits())
            .collect();
        assert!(
            differing.is_empty(),
            "{name}: elements {differing:?} differ"
        );
    }
    // `attnlab replay` runs TRITON_MLA in vLLM's arithmetic where it is
    // modelled: the capture replays bit for bit there too.
    let path = captured_dir().join("triton_mla_00515.safetensors");
    let rows = attnlab_sim::replay::replay_paths_in(
        &[path],
        Some("TRITON_MLA"),
        FlavourChoice::Tc,
        |_, _| (),
    )
    .unwrap();
    let r = row(&rows, "TRITON_MLA");
    assert_eq!(r.status, Status::Pass, "{r:#?}");
    assert_bit_exact(r);
    // Each half alone is not enough on 00515: the measured unit on the
    // contract's base-2 arguments leaves one element, the natural-log
    // arguments with exp2c leave head 15 (docs/src/matrix-cores.md).
    let (out, want, _) = mla_tc_output("triton_mla_00515");
    assert!(out
        .iter()
        .zip(&want)
        .any(|(a, b)| a.to_bits() != b.to_bits()));
}

/// The sm_90 tensor-core twin's output of one captured `mla_decode` file,
/// the captured output and `kv_lora_rank`.
fn mla_tc_output(name: &str) -> (Vec<f32>, Vec<f32>, usize) {
    mla_tc_output_with(name, MlaSoftmax::Contract)
}

/// [`mla_tc_output`] with stage 1's softmax in `softmax`'s arithmetic.
fn mla_tc_output_with(name: &str, softmax: MlaSoftmax) -> (Vec<f32>, Vec<f32>, usize) {
    use attnlab_shared::fault::FaultSet;
    use attnlab_shared::layout::mla::MlaLayout;
    use attnlab_sim::fixture::{load, Case};
    use attnlab_sim::kernels::mla_cache::LatentCache;
    use attnlab_sim::kernels::mla_decode::{KvRow, KvSplits, MlaDecodeArgs, MlaDecodeParams};
    use attnlab_sim::kernels::mla_decode_tc::{decode_tc, MlaDecodeTcArgs};
    use attnlab_sim::numerics::mma::MatrixTarget;
    let f = load(&captured_dir().join(format!("{name}.safetensors"))).unwrap();
    let Case::Mla(m) = &f.case else {
        panic!("{name} is not an mla_decode capture")
    };
    let (dt, bs) = (f.header.dtype, m.meta.block_size());
    let layout = MlaLayout::new(
        m.kv_cache.shape()[0],
        bs,
        m.kv_lora_rank,
        m.qk_rope_head_dim,
        dt,
    )
    .unwrap();
    let cache = LatentCache::from_tensor(layout, m.kv_cache.iter().copied().collect()).unwrap();
    let tables: Vec<Vec<i32>> = (0..m.meta.seq_lens().len())
        .map(|i| m.meta.block_table().row(i).to_vec())
        .collect();
    let rows: Vec<KvRow> = m
        .meta
        .seq_lens()
        .iter()
        .zip(&tables)
        .map(|(&n, t)| KvRow {
            pages: t,
            page_size: bs,
            kv_len: n as usize,
            split_len: n as usize,
        })
        .collect();
    let p = MlaDecodeParams {
        num_heads: m.num_heads,
        scale: m.scale,
        q_dtype: dt,
        kv_scale: 1.0,
        out_dtype: dt,
        lse_dtype: dt,
        faults: FaultSet::NONE,
    };
    let q: Vec<f32> = m.query.iter().copied().collect();
    let splits = KvSplits::Even {
        num_kv_splits: m.num_kv_splits,
    };
    let a = MlaDecodeArgs::new(&q, &rows, &cache, splits, &p).unwrap();
    let args = MlaDecodeTcArgs::new(a, MatrixTarget::Sm90)
        .unwrap()
        .with_softmax(softmax)
        .unwrap();
    let o = decode_tc(&args).unwrap();
    let want = m
        .output
        .as_ref()
        .expect("a captured output")
        .iter()
        .copied()
        .collect();
    (o.out, want, m.kv_lora_rank)
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
