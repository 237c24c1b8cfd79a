//! `attnlab cases` and the attn-fixture/2 round trip: every drawn case
//! writes, loads back equal, respects the registry and the size cap, and
//! replays; the drawn-case generator's property against f64 attention.

use attnlab_shared::registry::BackendName;
use attnlab_sim::cases::{
    draw_case, edge_of, generate, rng_for, CasesError, PagedSpace, Target, BLOCK_SIZES, HEAD_SIZES,
    MAX_CASE_BYTES, MAX_COUNT,
};
use attnlab_sim::draw::Edge;
use attnlab_sim::fidelity::round_f64;
use attnlab_sim::fixture::{self, Case, Fixture};
use attnlab_sim::reference;
use attnlab_sim::replay::{replay_fixture, Status, REFERENCE};
use attnlab_sim::tensor::Flat;
use ndarray::{s, Array3};
use proptest::prelude::*;
use std::collections::BTreeSet;

/// Parses what `write` produced; the names differ only in `file`.
fn round_trip(f: &Fixture) -> Fixture {
    let bytes = fixture::write(f).unwrap();
    assert!(
        bytes.len() <= MAX_CASE_BYTES + 4096,
        "{}: {} bytes",
        f.file,
        bytes.len()
    );
    fixture::parse(&f.file, &bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// The f64 reference rounded to the output dtype, as if a kernel had returned it
/// (a stand-in capture; the real one runs vLLM's kernels on a GPU).
fn capture_with_reference(f: &mut Fixture) {
    let dtype = f.header.dtype;
    let round = |v: Array3<f64>| v.mapv(|x| round_f64(x, dtype));
    match &mut f.case {
        Case::Paged(p) => {
            let cache = attnlab_sim::cache::KvCache {
                layout: attnlab_shared::layout::KvLayout {
                    kind: attnlab_shared::layout::LayoutKind::Nhd,
                    num_blocks: p.meta.num_blocks(),
                    block_size: p.meta.block_size(),
                    num_kv_heads: p.cfg.num_kv_heads(),
                    head_size: p.cfg.head_size(),
                    dtype: p.cfg.kv_dtype(),
                },
                k: p.key_cache.flat().into_owned(),
                v: p.value_cache.flat().into_owned(),
            };
            let r = reference::paged_attention(&p.query.flat(), &cache, &p.meta, &p.cfg).unwrap();
            p.output = Some(round(r.out));
        }
        Case::Merge(m) => {
            let r = reference::merge_attn_states(
                &m.prefix_output.flat(),
                &m.prefix_lse.flat(),
                &m.suffix_output.flat(),
                &m.suffix_lse.flat(),
                m.num_heads,
                m.head_size,
            )
            .unwrap();
            m.output = Some(round(r.out));
        }
        Case::Mla(m) => {
            let r = reference::mla_decode(
                &m.query.flat(),
                &m.kv_cache.flat(),
                m.meta.block_table(),
                m.meta.seq_lens(),
                m.num_heads,
                m.kv_lora_rank,
                m.meta.block_size(),
                m.scale,
            )
            .unwrap();
            m.output = Some(round(r));
        }
    }
    f.header.producer = "f64 reference (test stand-in for a capture)".into();
}

#[test]
fn every_target_writes_cases_that_load_back_equal() {
    for t in Target::ALL {
        for (name, f) in generate(t, 12, 7, true).unwrap() {
            let back = round_trip(&f);
            assert_eq!(back.header, f.header, "{name}");
            assert_eq!(back.case, f.case, "{name}");
            assert_eq!(back.header.backend.as_deref(), t.backend());
            assert_eq!(back.header.path.as_deref(), Some(t.path()));
            assert_eq!(back.header.version, 2);
            assert!(
                back.case.output().is_none(),
                "{name}: a case holds inputs only"
            );
        }
    }
}

#[test]
fn cases_are_deterministic_in_the_seed() {
    for t in [
        Target::TritonAttn,
        Target::MergeAttnStates,
        Target::TritonMla,
    ] {
        let bytes = |seed| -> Vec<Vec<u8>> {
            generate(t, 6, seed, true)
                .unwrap()
                .iter()
                .map(|(_, f)| fixture::write(f).unwrap())
                .collect()
        };
        assert_eq!(bytes(3), bytes(3), "{}", t.name());
        assert_ne!(bytes(3), bytes(4), "{}", t.name());
    }
}

#[test]
fn edge_cases_emit_every_edge_tag_of_their_target() {
    for t in Target::ALL {
        let n = 2 * t.edges().len();
        let tags: BTreeSet<String> = generate(t, n, 11, true)
            .unwrap()
            .into_iter()
            .flat_map(|(_, f)| f.header.tags)
            .collect();
        for e in t.edges() {
            assert!(
                tags.contains(e.tag()),
                "{}: no {} in {tags:?}",
                t.name(),
                e.tag()
            );
        }
    }
    // Every paged edge regime of the issue is some target's.
    let triton = Target::TritonAttn.edges();
    for e in Edge::PAGED {
        assert!(triton.contains(&e), "{e:?}");
    }
    assert_eq!(Target::MergeAttnStates.edges(), vec![Edge::InfLse]);
    assert_eq!(
        edge_of(Target::TritonAttn, 0, true),
        None,
        "even cases stay regular"
    );
    assert_eq!(edge_of(Target::TritonAttn, 1, false), None);
}

#[test]
fn edge_regimes_shape_the_case_as_their_tag_says() {
    for i in 0..12 {
        let Some(e) = edge_of(Target::TritonAttn, 2 * i + 1, true) else {
            panic!("odd cases are edge cases")
        };
        let mut rng = rng_for(Target::TritonAttn, 100 + i as u64);
        let f = (0..2000)
            .find_map(|_| draw_case(Target::TritonAttn, &mut rng, Some(e), 0))
            .unwrap();
        let Case::Paged(p) = &f.case else { panic!() };
        let bs = p.meta.block_size();
        match e {
            Edge::Window1 => assert_eq!(p.cfg.sliding_window(), Some(1)),
            Edge::WindowAtBlockEdge => {
                assert_eq!(p.cfg.sliding_window().unwrap() % bs, 0);
                assert!(p
                    .meta
                    .seq_lens()
                    .iter()
                    .all(|&s| (s as usize).is_multiple_of(bs)));
            }
            Edge::MaskedFirstTile => {
                assert!(p.cfg.sliding_window().unwrap() <= 8);
                // Every row with query tokens has a context of 128 or more.
                let q = |i: usize| p.meta.query_start_loc()[i + 1] - p.meta.query_start_loc()[i];
                assert!((0..p.meta.num_reqs()).all(|i| q(i) == 0 || p.meta.seq_lens()[i] >= 128));
            }
            Edge::LastBlockFull => assert!(p
                .meta
                .seq_lens()
                .iter()
                .all(|&s| (s as usize).is_multiple_of(bs))),
            Edge::SoftcapOverflow | Edge::ExtremeLogits => {
                // Some real (query, key) pair has a logit beyond 88 * softcap (or 88).
                let c = p.cfg.softcap().unwrap_or(1.0) as f64;
                let r = reference::paged_attention(&p.query.flat(), &cache_of(p), &p.meta, &p.cfg);
                assert!(r.is_ok());
                // Token 0 head 0 against the first key of request 0 (kv head 0).
                let q0 = p.query.slice(s![0, 0, ..]);
                let block = p.meta.block_table().row(0)[0] as usize;
                let k0 = p.key_cache.slice(s![block, 0, 0, ..]);
                let s: f64 = q0.iter().zip(k0).map(|(a, b)| (a * b) as f64).sum::<f64>()
                    * p.cfg.scale() as f64;
                assert!(s.abs() / c > 88.0, "{e:?}: |s| / c = {}", s.abs() / c);
            }
            Edge::InfLse => unreachable!(),
        }
        assert!(f.header.tags.contains(&e.tag().to_string()));
    }
}

fn cache_of(p: &attnlab_sim::fixture::PagedCase) -> attnlab_sim::cache::KvCache {
    attnlab_sim::cache::KvCache {
        layout: attnlab_shared::layout::KvLayout {
            kind: attnlab_shared::layout::LayoutKind::Nhd,
            num_blocks: p.meta.num_blocks(),
            block_size: p.meta.block_size(),
            num_kv_heads: p.cfg.num_kv_heads(),
            head_size: p.cfg.head_size(),
            dtype: p.cfg.kv_dtype(),
        },
        k: p.key_cache.flat().into_owned(),
        v: p.value_cache.flat().into_owned(),
    }
}

#[test]
fn paged_spaces_agree_with_the_registry() {
    for t in Target::ALL
        .into_iter()
        .filter(|t| t.op() == attnlab_sim::fixture::Op::PagedAttention)
    {
        let caps = BackendName::from_name(t.name())
            .unwrap()
            .capabilities()
            .unwrap();
        let ps = PagedSpace::of(t);
        let want_blocks: Vec<usize> = BLOCK_SIZES
            .into_iter()
            .filter(|&b| caps.supports_block_size(b))
            .collect();
        assert_eq!(ps.block_sizes, want_blocks.as_slice(), "{}", t.name());
        let want_heads: Vec<usize> = HEAD_SIZES
            .into_iter()
            .filter(|&h| caps.head_sizes.accepts(h))
            .collect();
        assert_eq!(ps.head_sizes, want_heads.as_slice(), "{}", t.name());
        assert_eq!(ps.dtypes, caps.dtypes, "{}", t.name());
        assert_eq!(ps.sinks, caps.sinks, "{}", t.name());
        assert_eq!(
            !ps.fp8_kv.is_empty(),
            caps.kv_cache_dtypes.iter().any(|k| k.is_fp8()),
            "{}",
            t.name()
        );
    }
}

#[test]
fn drawn_cases_cover_the_issues_space() {
    let mut seen_blocks = BTreeSet::new();
    let mut seen_heads = BTreeSet::new();
    let mut seen_qpk = BTreeSet::new();
    let mut seen_kv = BTreeSet::new();
    let mut tags = BTreeSet::new();
    let (mut sinks, mut alibi, mut window, mut softcap) = (0, 0, 0, 0);
    for (_, f) in generate(Target::TritonAttn, 300, 1, false).unwrap() {
        let Case::Paged(p) = &f.case else { panic!() };
        seen_blocks.insert(p.meta.block_size());
        seen_heads.insert(p.cfg.head_size());
        seen_qpk.insert(p.cfg.queries_per_kv());
        seen_kv.insert(p.cfg.kv_dtype().name());
        tags.extend(f.header.tags.clone());
        sinks += p.cfg.sinks().is_some() as usize;
        alibi += p.cfg.alibi_slopes().is_some() as usize;
        window += p.cfg.sliding_window().is_some() as usize;
        softcap += p.cfg.softcap().is_some() as usize;
        // Block 0 is the null block: no sequence uses it.
        for i in 0..p.meta.num_reqs() {
            let used = (p.meta.seq_lens()[i] as usize).div_ceil(p.meta.block_size());
            assert!(
                !p.meta.block_table().row(i)[..used].contains(&0),
                "{}",
                f.file
            );
        }
    }
    assert_eq!(seen_blocks, BTreeSet::from([16, 32, 64, 544, 1056]));
    assert_eq!(seen_heads, BTreeSet::from([64, 80, 96, 128, 256, 512]));
    for q in [1, 2, 3, 5, 6, 8] {
        assert!(seen_qpk.contains(&q), "{seen_qpk:?}");
    }
    assert_eq!(
        seen_kv,
        BTreeSet::from(["bfloat16", "float16", "float32", "float8_e4m3fn"])
    );
    for t in ["zero_len_query", "chunked_extend", "mixed_batch"] {
        assert!(tags.contains(t), "{tags:?}");
    }
    assert!(sinks > 0 && alibi > 0 && window > 0 && softcap > 0);
}

#[test]
fn count_is_bounded_and_names_are_checked() {
    assert_eq!(
        generate(Target::TritonAttn, MAX_COUNT + 1, 0, false).unwrap_err(),
        CasesError::Count {
            count: MAX_COUNT + 1,
            max: MAX_COUNT
        }
    );
    assert!(generate(Target::TritonAttn, 0, 0, false).is_err());
    let e = Target::parse("TRITON").unwrap_err().to_string();
    assert!(
        e.contains("'TRITON'") && e.contains("TRITON_ATTN") && e.contains("all"),
        "{e}"
    );
    assert_eq!(Target::parse("all").unwrap().len(), Target::ALL.len());
}

#[test]
fn a_case_without_output_is_reported_as_such_and_a_capture_error_as_error() {
    let (_, mut f) = generate(Target::TritonAttn, 1, 0, false).unwrap().remove(0);
    let rows = replay_fixture(&round_trip(&f), None);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, Status::NoOutput);
    f.header.capture_error = Some("RuntimeError: triton compile failed".into());
    let rows = replay_fixture(&round_trip(&f), None);
    assert_eq!(rows[0].status, Status::Error);
    assert!(rows[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("triton compile failed"));
}

#[test]
fn a_case_captured_from_the_reference_replays_with_a_bit_exact_reference_row() {
    for t in Target::ALL {
        for (name, mut f) in generate(t, 4, 5, false).unwrap() {
            capture_with_reference(&mut f);
            let rows = replay_fixture(&round_trip(&f), None);
            let r = rows.iter().find(|r| r.backend == REFERENCE).unwrap();
            assert_eq!(r.status, Status::Pass, "{name}: {r:?}");
            let u = r.ulp.as_ref().unwrap();
            assert_eq!(u.bit_exact, u.elements, "{name}");
            for r in &rows {
                assert!(
                    !r.reason.as_deref().unwrap_or("").contains("panicked"),
                    "{name} {}: {:?}",
                    r.backend,
                    r.reason
                );
                if matches!(r.status, Status::Pass | Status::Fail) {
                    assert!(
                        r.ulp.is_some() && r.reference_ulp.is_some(),
                        "{name} {}",
                        r.backend
                    );
                }
                if matches!(r.status, Status::Skipped | Status::Divergence) {
                    assert!(
                        !r.reason.as_deref().unwrap_or("").is_empty(),
                        "{name} {}",
                        r.backend
                    );
                }
            }
        }
    }
}

#[test]
fn an_output_captured_from_an_emulated_backend_replays_bit_exact_on_it() {
    use attnlab_sim::backends::by_name;
    let (name, mut f) = generate(Target::TritonAttn, 3, 9, false).unwrap().remove(2);
    let Case::Paged(p) = &mut f.case else {
        panic!()
    };
    let b = by_name("TRITON_ATTN".parse().unwrap()).unwrap();
    let layout = b
        .cache_layout(&p.cfg, p.meta.num_blocks(), p.meta.block_size())
        .unwrap();
    let cache =
        attnlab_sim::cache::KvCache::from_nhd(&p.key_cache.flat(), &p.value_cache.flat(), layout)
            .unwrap();
    let out = b.forward(&p.query.flat(), &cache, &p.meta, &p.cfg).unwrap();
    p.output = Some(Array3::from_shape_vec(p.query.raw_dim(), out).unwrap()); // [token, head, d]
    let rows = replay_fixture(&round_trip(&f), Some("TRITON_ATTN"));
    let r = rows.iter().find(|r| r.backend == "TRITON_ATTN").unwrap();
    assert_eq!(r.status, Status::Pass, "{name}: {r:?}");
    let u = r.ulp.as_ref().unwrap();
    assert_eq!((u.bit_exact, u.max_ulp), (u.elements, Some(0)));
    let ru = r.reference_ulp.as_ref().unwrap();
    assert_eq!(r.fidelity_exact, ru.bit_exact < ru.elements);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The drawn-case property: on regular (non-edge) cases every emulated
    /// backend that accepts a case agrees with f64 attention within the
    /// case's own (vLLM test) tolerance, or is a documented divergence.
    ///
    /// Two regimes are left out because the emulator follows vLLM there and
    /// f64 attention does not (found by this generator; see the issue's
    /// closing note): ALiBi with sinks on rows of more than one query token
    /// (vLLM's unified kernel biases by `slope * (t - context_len)`, a
    /// per-row shift that softmax ignores but a sink does not), and
    /// ROCM_AITER_FA with ALiBi (its extend path leaves vLLM's tolerance on
    /// most such rows, e.g. seed 5540491893894277157 of ROCM_ATTN's
    /// stream; not yet explained: an emulator defect or a modelled AITER
    /// behaviour).
    #[test]
    fn drawn_cases_match_the_f64_reference_on_every_backend_that_accepts_them(
        seed in any::<u64>(),
        which in 0usize..Target::ALL.len(),
    ) {
        let t = Target::ALL[which];
        let mut rng = rng_for(t, seed);
        let mut f = (0..2000).find_map(|_| draw_case(t, &mut rng, None, 0)).unwrap();
        let alibi = matches!(&f.case, Case::Paged(p) if p.cfg.alibi_slopes().is_some());
        if let Case::Paged(p) = &f.case {
            prop_assume!(!alibi || p.cfg.sinks().is_none());
        }
        capture_with_reference(&mut f);
        for r in replay_fixture(&f, None) {
            if alibi && r.backend == "ROCM_AITER_FA" {
                continue;
            }
            prop_assert!(
                matches!(r.status, Status::Pass | Status::Skipped | Status::Divergence),
                "{} {}: {:?} ({})", t.name(), r.backend, r.reason, describe(&f)
            );
        }
    }
}

fn describe(f: &Fixture) -> String {
    match &f.case {
        Case::Paged(p) => format!(
            "{:?} bs {} seq_lens {:?} qsl {:?}",
            p.cfg,
            p.meta.block_size(),
            p.meta.seq_lens(),
            p.meta.query_start_loc()
        ),
        Case::Merge(m) => format!(
            "merge t {} h {} d {}",
            m.num_tokens, m.num_heads, m.head_size
        ),
        Case::Mla(m) => format!(
            "mla seq_lens {:?} bs {}",
            m.meta.seq_lens(),
            m.meta.block_size()
        ),
    }
}

/// What the drawn-case property found (and leaves out): vLLM's unified
/// kernel adds ALiBi as `slope * (t - context_len)` for every query row of a
/// sequence, where attention defines `slope * (t - p)` for the row at
/// position `p`. Softmax ignores a per-row shift, a sink does not: the
/// kernel's row `p` equals f64 attention whose sink is `sink - slope * (p -
/// context_len)`. A two-token prefill with one head shows it; the emulator
/// reproduces the kernel.
#[test]
fn alibi_with_sinks_shifts_the_sink_by_the_rows_offset_in_vllms_unified_kernel() {
    use attnlab_shared::dtype::DType;
    use attnlab_shared::layout::{KvLayout, LayoutKind};
    use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
    use attnlab_sim::backends::by_name;
    use attnlab_sim::cache::KvCache;
    use attnlab_sim::config::{AttnConfig, AttnConfigBuilder};
    let (d, bs) = (64, 16);
    let mut cfg = AttnConfig::new(1, 1, d, DType::F32).unwrap();
    cfg = attnlab_sim::config::AttnConfigBuilder {
        alibi_slopes: Some(vec![1.0]),
        ..cfg.to_builder()
    }
    .build()
    .unwrap();
    cfg = attnlab_sim::config::AttnConfigBuilder {
        sinks: Some(vec![0.0]),
        ..cfg.to_builder()
    }
    .build()
    .unwrap();
    let meta = AttentionMetadata::new(
        bs,
        2,
        vec![0, 2],
        vec![2],
        BlockTableTensor::from_rows(&[vec![1]]),
        vec![16, 17],
        true,
    )
    .unwrap();
    let layout = KvLayout::new(LayoutKind::Nhd, 2, bs, 1, d, DType::F32).unwrap();
    let val = |i: usize| ((i * 37 % 19) as f32 - 9.0) / 9.0;
    let cache = KvCache {
        layout,
        k: (0..layout.numel()).map(val).collect(),
        v: (0..layout.numel()).map(|i| val(i + 5)).collect(),
    };
    let query: Vec<f32> = (0..2 * d).map(|i| val(i + 11)).collect();
    let out = by_name("TRITON_ATTN".parse().unwrap())
        .unwrap()
        .forward(&query, &cache, &meta, &cfg)
        .unwrap();
    let f64_row1 = |sink: f32| {
        let c = AttnConfigBuilder {
            sinks: Some(vec![sink]),
            ..cfg.to_builder()
        }
        .build()
        .unwrap();
        // Query row 1 (of [token, head = 1, d]).
        let r = reference::paged_attention(&query, &cache, &meta, &c).unwrap();
        r.out.slice(s![1, 0, ..]).to_vec()
    };
    let max_diff = |r: &[f64]| {
        out[d..]
            .iter()
            .zip(r)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max)
    };
    // Row 1 sits at p = 1 over context_len 0: the kernel's sink is 0 - 1 * 1.
    assert!(
        max_diff(&f64_row1(-1.0)) < 1e-5,
        "{}",
        max_diff(&f64_row1(-1.0))
    );
    assert!(
        max_diff(&f64_row1(0.0)) > 1e-2,
        "{}",
        max_diff(&f64_row1(0.0))
    );
}
