//! The tensor-core paged decode's sim twin computes attention: on random
//! decode batches (NHD caches, shuffled block tables, GQA and MQA, bf16 and
//! f16, any split size) its output stays within the dtype's tolerance of
//! the f64 reference on both matrix-core models, and the split size moves
//! the bits but not the result.

use attnlab_shared::dtype::DType;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::draw::{draw, CaseSpace};
use attnlab_sim::kernels::paged_decode_tc::{paged_decode_tc, STEP};
use attnlab_sim::numerics::mma::MatrixTarget;
use attnlab_sim::reference::{compare, paged_attention, Tolerance};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SPACE: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd],
    block_sizes: &[16, 32, 1, 48],
    head_sizes: &[64, 128],
    max_reqs: 3,
    max_query_len: 1, // every row a decode row: the reference covers all of them
    max_context: 300,
    sinks: false,
    alibi: false,
    non_causal: false,
};

#[test]
fn output_matches_the_f64_reference_on_both_targets_at_any_split() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mut checked = 0;
    while checked < 12 {
        let Some(mut case) = draw(&mut rng, &SPACE) else {
            continue;
        };
        let dt = case.cfg.dtype();
        if !matches!(dt, DType::Bf16 | DType::F16) || case.cfg.kv_dtype() != dt {
            continue;
        }
        case.cfg = attnlab_sim::config::AttnConfigBuilder {
            sliding_window: None,
            ..case.cfg.to_builder()
        }
        .build()
        .unwrap();
        let reference = paged_attention(&case.query, &case.cache, &case.meta, &case.cfg).unwrap();
        for target in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
            let split = STEP * rng.gen_range(1..=20usize);
            let mut out = vec![f32::NAN; case.query.len()];
            paged_decode_tc(
                &case.query,
                &case.cache,
                &case.meta,
                &case.cfg,
                target,
                split,
                &mut out,
            )
            .unwrap();
            let c = compare(&out, &reference.out, Tolerance::for_dtype(dt)).unwrap();
            assert!(
                c.passed(),
                "{target:?} split {split} {}: {c:?}",
                case.describe()
            );
        }
        checked += 1;
    }
}

#[test]
fn a_split_size_that_is_not_whole_steps_is_rejected_naming_it() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let case = loop {
        if let Some(c) = draw(&mut rng, &SPACE) {
            if matches!(c.cfg.dtype(), DType::Bf16 | DType::F16)
                && c.cfg.kv_dtype() == c.cfg.dtype()
            {
                break c;
            }
        }
    };
    let mut out = vec![0f32; case.query.len()];
    let e = paged_decode_tc(
        &case.query,
        &case.cache,
        &case.meta,
        &case.cfg,
        MatrixTarget::Sm90,
        40,
        &mut out,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("split size 40") && e.contains("16"), "{e}");
}
