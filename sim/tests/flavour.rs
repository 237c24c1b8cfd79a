//! The backends in the tensor-core flavour as specifications: on random
//! mixed batches (decode, extend and prefill rows over shuffled paged
//! caches, GQA, windows, ALiBi, sinks, soft-cap, bf16 / f16 and fp8 caches)
//! every backend whose launches the flavour admits stays within the
//! dtype's tolerance of the f64 reference on both matrix-core models
//! (sm_90's `mma.sync`, gfx942's MFMA) wherever its fma flavour does; the flavour admits exactly what its
//! executor runs (`flavour::admits` is the case generators' filter); and a
//! launch with no tensor-core kernel, or an option its kernel lacks, is
//! refused naming it, never run by the fma kernel instead.

use attnlab_shared::dtype::DType;
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::registry::BackendName;
use attnlab_sim::backends::exec::Cpu;
use attnlab_sim::backends::flavour::{admits, Flavour};
use attnlab_sim::backends::rocm_aiter_fa::RocmAiterFa;
use attnlab_sim::backends::{mha_backends, AttentionBackend};
use attnlab_sim::cache::KvCache;
use attnlab_sim::draw::{draw, AttnCase, CaseSpace};
use attnlab_sim::numerics::mma::MatrixTarget;
use attnlab_sim::reference::{compare, paged_attention, Tolerance};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Mixed batches small enough for the matrix-instruction models in a test
/// build (every product of every instruction is modelled exactly).
const SPACE: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd],
    block_sizes: &[16, 32],
    head_sizes: &[64, 128],
    max_reqs: 3,
    max_query_len: 20,
    max_context: 80,
    sinks: true,
    alibi: true,
    non_causal: false,
};

const TARGETS: [MatrixTarget; 2] = [MatrixTarget::Sm90, MatrixTarget::Gfx942];

/// The case's cache in `backend`'s own layout, or None where the backend
/// rejects the configuration or needs another kernel block size.
fn backend_cache(backend: &dyn AttentionBackend, case: &AttnCase) -> Option<KvCache> {
    let bs = case.meta.block_size();
    backend.check(&case.cfg, bs).ok()?;
    if backend.kernel_block_size(bs).ok()? != bs {
        return None;
    }
    let layout = backend
        .cache_layout(&case.cfg, case.cache.layout.num_blocks, bs)
        .ok()?;
    KvCache::from_nhd(&case.cache.k, &case.cache.v, layout).ok()
}

/// A draw where the reference computes what the backends compute: no
/// soft-cap on batches with prefill or extend rows (vLLM's prefill and
/// extend calls drop it, ROCM_AITER_FA's decode applies it).
fn next_case(rng: &mut ChaCha8Rng) -> AttnCase {
    loop {
        if let Some(mut case) = draw(rng, &SPACE) {
            if case.meta.max_query_len() > 1 {
                case.cfg = attnlab_sim::config::AttnConfigBuilder {
                    softcap: None,
                    ..case.cfg.to_builder()
                }
                .build()
                .unwrap();
            }
            return case;
        }
    }
}

/// The dtype's tolerance for O(1) outputs (`Tolerance::for_dtype`), its
/// absolute part scaled by the largest |V| the case loads (fp8 caches
/// dequantize to values of up to 240 * v_scale): rounding P to the dtype
/// before P·V errs in proportion to V.
fn tolerance(case: &AttnCase) -> Tolerance {
    let t = Tolerance::for_dtype(case.cfg.dtype());
    let scale = if case.cfg.kv_dtype().is_fp8() {
        case.cfg.v_scale()
    } else {
        1.0
    };
    let vmax = case.cache.v.iter().fold(0f32, |m, v| m.max(v.abs())) * scale;
    Tolerance::new(t.atol * f64::from(vmax).max(1.0), t.rtol)
}

#[test]
fn backends_in_the_tensor_core_flavour_stay_within_the_reference_tolerance_on_both_targets() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    // Cases each target ran through ROCM_AITER_FA: (any, with decode rows, with prefill/extend rows).
    let mut ran = [(0usize, 0usize, 0usize); 2];
    let mut draws = 0;
    while ran.iter().any(|r| r.0 < 8 || r.1 < 2 || r.2 < 2) {
        draws += 1;
        assert!(draws < 3000, "too few admitted draws: {ran:?}");
        let case = next_case(&mut rng);
        let reference = paged_attention(&case.query, &case.cache, &case.meta, &case.cfg).unwrap();
        let tol = tolerance(&case);
        for (ti, &target) in TARGETS.iter().enumerate() {
            let flavour = Flavour::TensorCore(target);
            for backend in mha_backends() {
                let Some(cache) = backend_cache(backend.as_ref(), &case) else {
                    continue;
                };
                let (q, m, c) = (&case.query, &case.meta, &case.cfg);
                if admits(backend.as_ref(), flavour, m, c, cache.layout.kind).is_err() {
                    continue;
                }
                // Where the backend itself computes the reference's attention
                // (its fma flavour within tolerance: not, e.g., vLLM's ALiBi
                // over context chunks), the tensor-core flavour does too.
                let fma = backend.forward_with(&Cpu::FMA, q, &cache, m, c).unwrap();
                if !compare(&fma, &reference.out, tol).unwrap().passed() {
                    continue;
                }
                let out = backend
                    .forward_with(&Cpu::new(flavour), q, &cache, m, c)
                    .unwrap_or_else(|e| panic!("{}: {e}: {}", backend.name(), case.describe()));
                let cmp = compare(&out, &reference.out, tol).unwrap();
                assert!(
                    cmp.passed(),
                    "{} [{flavour}]: {cmp:?}: {}",
                    backend.name(),
                    case.describe()
                );
                if backend.name() == BackendName::RocmAiterFa {
                    let r = &mut ran[ti];
                    r.0 += 1;
                    r.1 += usize::from((0..m.num_reqs()).any(|i| m.query_len(i) == 1));
                    r.2 += usize::from(m.max_query_len() > 1);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// `admits` (what the diff and these tests draw from) and the
    /// executor agree on every backend and draw: a case is admitted
    /// exactly when the tensor-core executor runs it, and a refused one
    /// fails in the executor with the refusal `admits` gives.
    #[test]
    fn the_flavour_admits_exactly_what_its_executor_runs(seed in any::<u64>(), t in 0usize..2) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let case = next_case(&mut rng);
        let flavour = Flavour::TensorCore(TARGETS[t]);
        for backend in mha_backends() {
            let Some(cache) = backend_cache(backend.as_ref(), &case) else {
                continue;
            };
            let (q, m, c) = (&case.query, &case.meta, &case.cfg);
            let admitted = admits(backend.as_ref(), flavour, m, c, cache.layout.kind);
            let ran = backend.forward_with(&Cpu::new(flavour), q, &cache, m, c);
            match (admitted, ran) {
                (Ok(()), Ok(out)) => prop_assert_eq!(out.len(), q.len()),
                (Err(a), Err(r)) => prop_assert_eq!(a.to_string(), r.to_string()),
                (a, r) => prop_assert!(
                    false,
                    "{}: admits {:?} but the executor {:?}: {}",
                    backend.name(),
                    a,
                    r.map(|_| "ran"),
                    case.describe()
                ),
            }
            // The fma flavour admits what the backend takes.
            prop_assert!(admits(backend.as_ref(), Flavour::Fma, m, c, cache.layout.kind).is_ok());
        }
    }
}

/// The first draw that `backend` takes with a row of query length > 1
/// (`prefill`) or only decode rows, shaped by `edit`.
fn case_for(
    backend: &dyn AttentionBackend,
    prefill: bool,
    edit: impl Fn(&mut AttnCase),
) -> (AttnCase, KvCache) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    loop {
        let mut case = next_case(&mut rng);
        if (case.meta.max_query_len() > 1) != prefill {
            continue;
        }
        edit(&mut case);
        if let Some(cache) = backend_cache(backend, &case) {
            return (case, cache);
        }
    }
}

/// FLEX_ATTENTION in the tensor-core flavour runs `flex_attention_tc`
/// (within the dtype's tolerance of its fma flavour on both targets), and
/// refuses an fp32 layer naming the launch, its family and the dtype.
#[test]
fn flex_attention_runs_on_matrix_cores_and_refuses_fp32_naming_it() {
    let backend = attnlab_sim::backends::by_name(BackendName::FlexAttention).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (case, cache) = loop {
        let case = next_case(&mut rng);
        let c = &case.cfg;
        if case.meta.max_query_len() > 1
            && matches!(c.dtype(), DType::Bf16 | DType::F16)
            && c.kv_dtype() == c.dtype()
        {
            if let Some(cache) = backend_cache(backend.as_ref(), &case) {
                break (case, cache);
            }
        }
    };
    let (q, m, c) = (&case.query, &case.meta, &case.cfg);
    let fma = backend.forward_with(&Cpu::FMA, q, &cache, m, c).unwrap();
    for target in TARGETS {
        let flavour = Flavour::TensorCore(target);
        let out = backend
            .forward_with(&Cpu::new(flavour), q, &cache, m, c)
            .unwrap_or_else(|e| panic!("[{flavour}] {e}: {}", case.describe()));
        let cmp = compare(&out, &fma, tolerance(&case)).unwrap();
        assert!(cmp.passed(), "[{flavour}] {cmp:?}: {}", case.describe());
    }
    let f32_cfg = attnlab_sim::config::AttnConfigBuilder {
        dtype: DType::F32,
        kv_dtype: DType::F32,
        ..c.to_builder()
    }
    .build()
    .unwrap();
    let e = attnlab_sim::backends::flavour::check_flex_tc(&f32_cfg, MatrixTarget::Gfx942)
        .expect_err("fp32")
        .to_string();
    assert!(
        e.contains("flex_attention") && e.contains("flex_attention_tc") && e.contains("float32"),
        "{e}"
    );
}

/// ROCM_ATTN in the tensor-core flavour: its prefix prefill runs
/// `prefix_prefill_tc` and its decode rows `paged_decode_2d_tc`, both on
/// the x-packed cache, within the dtype's tolerance of its fma flavour on
/// mixed batches (decode rows beside prefill and extend rows) and on
/// batches with no decode row (the decode launch then computes nothing);
/// what the flavour refuses, it refuses naming the decode family.
#[test]
fn rocm_attn_runs_its_prefix_prefill_and_its_decode_rows_on_matrix_cores() {
    let backend = attnlab_sim::backends::by_name(BackendName::RocmAttn).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (mut mixed, mut no_decode, mut draws) = ([0usize; 2], [0usize; 2], 0usize);
    while mixed.iter().chain(&no_decode).any(|&r| r < 2) {
        draws += 1;
        assert!(
            draws < 3000,
            "too few draws: mixed {mixed:?}, no decode row {no_decode:?}"
        );
        let case = next_case(&mut rng);
        let Some(cache) = backend_cache(backend.as_ref(), &case) else {
            continue;
        };
        let (q, m, c) = (&case.query, &case.meta, &case.cfg);
        let decode = (0..m.num_reqs()).any(|i| m.query_len(i) == 1);
        for (ti, &target) in TARGETS.iter().enumerate() {
            let flavour = Flavour::TensorCore(target);
            let r = backend.forward_with(&Cpu::new(flavour), q, &cache, m, c);
            let out = match r {
                Ok(out) => out,
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("tensor-core flavour") && e.contains("_tc refuses"),
                        "{e}: {}",
                        case.describe()
                    );
                    continue;
                }
            };
            let fma = backend.forward_with(&Cpu::FMA, q, &cache, m, c).unwrap();
            let cmp = compare(&out, &fma, tolerance(&case)).unwrap();
            assert!(cmp.passed(), "[{flavour}] {cmp:?}: {}", case.describe());
            if decode {
                mixed[ti] += 1;
            } else {
                no_decode[ti] += 1;
            }
        }
    }
}

#[test]
fn the_tensor_core_decode_refuses_the_options_it_lacks_naming_them() {
    let backend = RocmAiterFa::default();
    let flavour = Flavour::TensorCore(MatrixTarget::Sm90);
    type Edit = fn(&mut AttnCase);
    let cases: [(&str, Edit); 2] = [
        ("sliding window", |c| {
            c.cfg = attnlab_sim::config::AttnConfigBuilder {
                sliding_window: Some(8),
                ..c.cfg.to_builder()
            }
            .build()
            .unwrap();
            c.cfg = attnlab_sim::config::AttnConfigBuilder {
                alibi_slopes: None,
                ..c.cfg.to_builder()
            }
            .build()
            .unwrap();
            c.cfg = attnlab_sim::config::AttnConfigBuilder {
                sinks: None,
                ..c.cfg.to_builder()
            }
            .build()
            .unwrap();
        }),
        ("no fp8 KV", |c| {
            c.cfg = attnlab_sim::config::AttnConfigBuilder {
                kv_dtype: DType::Fp8E4m3Fnuz,
                ..c.cfg.to_builder()
            }
            .build()
            .unwrap();
            c.cfg = attnlab_sim::config::AttnConfigBuilder {
                sinks: None,
                ..c.cfg.to_builder()
            }
            .build()
            .unwrap();
        }),
    ];
    for (what, edit) in cases {
        let (case, cache) = case_for(&backend, false, edit);
        let e = admits(&backend, flavour, &case.meta, &case.cfg, cache.layout.kind)
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("paged_attention_ll4mi")
                && e.contains("paged_decode_tc")
                && e.contains(what),
            "{what}: {e}"
        );
    }
}
