//! ROCM_AITER_FA, flash varlen, the context gather and merge_attn_states as
//! specifications: the backend equals the f64 reference on mixed batches,
//! a chunked extend equals the one-shot one for any chunk size and is
//! deterministic, both cache layouts give the same bits, the merge rules for
//! empty sides hold, and vLLM's captured merge outputs replay.

use attnlab_shared::dtype::DType;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_sim::backends::context_chunks::context_chunks;
use attnlab_sim::backends::flex_attention::FlexAttention;
use attnlab_sim::backends::rocm_aiter_fa::{RocmAiterFa, SHUFFLE_UNSUPPORTED};
use attnlab_sim::backends::{by_name, AttentionBackend};
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::fixture::{self, Case};
use attnlab_sim::kernels::merge_attn_states::{merge_attn_states, MergeKernel};
use attnlab_sim::kernels::softmax::OutLse;
use attnlab_sim::reference::{compare, paged_attention, Tolerance};
use attnlab_sim::tensor::Flat;
use ndarray::{Array2, Array3};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A batch of `(query_len, context_len)` requests over a paged cache whose
/// blocks are a random permutation with unused blocks in between.
struct Batch {
    meta: AttentionMetadata,
    query: Vec<f32>,
    /// Canonical NHD cache contents, exact in `cfg.kv_dtype`.
    nhd_k: Vec<f32>,
    nhd_v: Vec<f32>,
}

fn batch(reqs: &[(usize, usize)], cfg: &AttnConfig, block_size: usize, seed: u64) -> Batch {
    batch_with(reqs, cfg, block_size, seed, true)
}

fn batch_with(
    reqs: &[(usize, usize)],
    cfg: &AttnConfig,
    block_size: usize,
    seed: u64,
    causal: bool,
) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let per_req: Vec<usize> = reqs
        .iter()
        .map(|&(q, c)| (q + c).div_ceil(block_size))
        .collect();
    let num_blocks = per_req.iter().sum::<usize>() + 3;
    let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
    ids.shuffle(&mut rng);
    let mut rows = vec![];
    let mut next = 0;
    for &n in &per_req {
        rows.push(ids[next..next + n].to_vec());
        next += n;
    }
    let mut qsl = vec![0i32];
    let mut slots = vec![];
    for (i, &(q, c)) in reqs.iter().enumerate() {
        qsl.push(qsl[i] + q as i32);
        slots.extend(
            (c..c + q)
                .map(|t| (rows[i][t / block_size] as usize * block_size + t % block_size) as i64),
        );
    }
    let seq_lens = reqs.iter().map(|&(q, c)| (q + c) as i32).collect();
    let meta = AttentionMetadata::new(
        block_size,
        num_blocks,
        qsl,
        seq_lens,
        BlockTableTensor::from_rows(&rows),
        slots,
        causal,
    )
    .unwrap();
    let mut draw = |n: usize, dt: DType, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| dt.round(rng.gen_range(-1.0f32..1.0) / scale))
            .collect()
    };
    let n_cache = num_blocks * block_size * cfg.num_kv_heads() * cfg.head_size();
    let query = draw(
        meta.num_actual_tokens() * cfg.num_heads() * cfg.head_size(),
        cfg.dtype(),
        1.0,
    );
    let nhd_k = draw(n_cache, cfg.kv_dtype(), cfg.k_scale());
    let nhd_v = draw(n_cache, cfg.kv_dtype(), cfg.v_scale());
    Batch {
        meta,
        query,
        nhd_k,
        nhd_v,
    }
}

fn cache_for_backend(b: &dyn AttentionBackend, batch: &Batch, cfg: &AttnConfig) -> KvCache {
    let layout = b
        .cache_layout(cfg, batch.meta.num_blocks(), batch.meta.block_size())
        .unwrap();
    KvCache::from_nhd(&batch.nhd_k, &batch.nhd_v, layout).unwrap()
}

fn run(b: &dyn AttentionBackend, batch: &Batch, cfg: &AttnConfig) -> Vec<f32> {
    b.forward(
        &batch.query,
        &cache_for_backend(b, batch, cfg),
        &batch.meta,
        cfg,
    )
    .unwrap()
}

fn reference(batch: &Batch, cfg: &AttnConfig) -> Vec<f64> {
    let nhd = KvLayout::new(
        LayoutKind::Nhd,
        batch.meta.num_blocks(),
        batch.meta.block_size(),
        cfg.num_kv_heads(),
        cfg.head_size(),
        cfg.kv_dtype(),
    )
    .unwrap();
    paged_attention(
        &batch.query,
        &KvCache::from_nhd(&batch.nhd_k, &batch.nhd_v, nhd).unwrap(),
        &batch.meta,
        cfg,
    )
    .unwrap()
    .out
    .flatten()
    .to_vec()
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn assert_close(out: &[f32], want: &[f64], tol: Tolerance) {
    let c = compare(out, want, tol).unwrap();
    assert!(c.passed(), "{c:?}");
}

fn req_strategy() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![
        (Just(1usize), 1usize..90),
        (2usize..20, 1usize..90),
        (2usize..40, Just(0usize))
    ]
}

fn cfg_strategy() -> impl Strategy<Value = AttnConfig> {
    (
        prop_oneof![
            Just((2usize, 1usize)),
            Just((4, 2)),
            Just((4, 4)),
            Just((8, 1))
        ],
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(|((hq, hkv), bf16, fp8)| {
            let dt = if bf16 { DType::Bf16 } else { DType::F16 };
            let mut cfg = AttnConfig::builder(hq, hkv, 64, dt);
            if fp8 {
                (cfg.kv_dtype, cfg.k_scale, cfg.v_scale) = (DType::Fp8E4m3Fnuz, 0.5, 0.25);
            }
            cfg.build().unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn flex_attention_matches_the_f64_reference(
        reqs in prop::collection::vec(req_strategy(), 1..5),
        (hq, hkv) in prop_oneof![Just((2usize, 1usize)), Just((4, 4)), Just((6, 2))],
        dtype in prop_oneof![Just(DType::F16), Just(DType::Bf16), Just(DType::F32)],
        head_size in prop_oneof![Just(32usize), Just(80)],
        block_size in prop_oneof![Just(16usize), Just(32), Just(48)],
        window in prop::option::of(1usize..40),
        causal in prop::bool::ANY,
        seed in any::<u64>(),
    ) {
        let mut cfg = AttnConfig::new(hq, hkv, head_size, dtype).unwrap();
        cfg = attnlab_sim::config::AttnConfigBuilder { sliding_window: window.filter(|_| causal), ..cfg.to_builder() }.build().unwrap(); // the reference's window is causal-style
        let b = batch_with(&reqs, &cfg, block_size, seed, causal);
        FlexAttention.check(&cfg, block_size).unwrap();
        let out = in_pool(2, || run(&FlexAttention, &b, &cfg));
        assert_close(&out, &reference(&b, &cfg), Tolerance::for_dtype(dtype));
        prop_assert_eq!(in_pool(1, || run(&FlexAttention, &b, &cfg)), out);
    }

    #[test]
    fn aiter_fa_matches_the_f64_reference_on_mixed_batches(
        reqs in prop::collection::vec(req_strategy(), 1..5),
        cfg in cfg_strategy(),
        shuffle in prop::bool::ANY,
        block_size in prop_oneof![Just(16usize), Just(32)],
        window in prop::option::of(1usize..40),
        budget in 1usize..200,
        seed in any::<u64>(),
    ) {
        let mut cfg = cfg;
        cfg = attnlab_sim::config::AttnConfigBuilder { sliding_window: window.filter(|_| !shuffle), ..cfg.to_builder() }.build().unwrap();
        let backend = RocmAiterFa { shuffle_kv_cache: shuffle, cp_tokens_per_iter: budget.max(reqs.len()) };
        let b = batch(&reqs, &cfg, block_size, seed);
        // fp8 caches: the emulator's new tokens are read back quantized, as the reference sees them.
        let tol = if cfg.kv_dtype().is_fp8() { Tolerance::for_dtype(DType::Bf16) } else { Tolerance::for_dtype(cfg.dtype()) };
        assert_close(&run(&backend, &b, &cfg), &reference(&b, &cfg), tol);
    }

    #[test]
    fn chunked_extend_with_any_chunk_size_equals_one_shot_and_is_deterministic(
        ctx in 1usize..120, q in 2usize..24, frac in 0.0f64..1.0, seed in any::<u64>(), bf16 in prop::bool::ANY,
    ) {
        let chunk = 1 + ((ctx - 1) as f64 * frac) as usize; // 1..=ctx
        let cfg = AttnConfig::new(4, 2, 64, if bf16 { DType::Bf16 } else { DType::F16 }).unwrap();
        let b = batch(&[(q, ctx), (1, 30)], &cfg, 16, seed);
        let chunked = RocmAiterFa { shuffle_kv_cache: true, cp_tokens_per_iter: chunk };
        let one_shot = RocmAiterFa::default();
        let one = in_pool(2, || run(&one_shot, &b, &cfg));
        let many = in_pool(2, || run(&chunked, &b, &cfg));
        let tol = Tolerance::for_dtype(cfg.dtype());
        assert_close(&many, &one.iter().map(|&x| x as f64).collect::<Vec<_>>(), tol);
        prop_assert_eq!(in_pool(1, || run(&chunked, &b, &cfg)), many.clone());
        prop_assert_eq!(in_pool(2, || run(&chunked, &b, &cfg)), many);
    }

    #[test]
    fn shuffled_and_nhd_caches_give_identical_outputs(
        reqs in prop::collection::vec(req_strategy(), 1..5), cfg in cfg_strategy(), budget in 1usize..100, seed in any::<u64>(),
    ) {
        let b = batch(&reqs, &cfg, 16, seed);
        let budget = budget.max(reqs.len());
        let shuffled = run(&RocmAiterFa { shuffle_kv_cache: true, cp_tokens_per_iter: budget }, &b, &cfg);
        let nhd = run(&RocmAiterFa { shuffle_kv_cache: false, cp_tokens_per_iter: budget }, &b, &cfg);
        prop_assert_eq!(shuffled.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), nhd.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn merge_with_an_empty_side_is_the_identity_and_never_nan(
        t in 1usize..6, h in 1usize..4, d in 1usize..9, seed in any::<u64>(), plus_inf in prop::bool::ANY, empty_first in prop::bool::ANY,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let full = OutLse::new(t, h, d, (0..t * h * d).map(|_| DType::Bf16.round(rng.gen_range(-2.0f32..2.0))).collect(),
            (0..t * h).map(|_| rng.gen_range(-30.0f32..30.0)).collect()).unwrap();
        let mut empty = OutLse::empty(t, h, d);
        if plus_inf {
            empty.lse_mut().fill(f32::INFINITY); // FA2's convention for an empty row
        }
        for kernel in [MergeKernel::Triton, MergeKernel::Hip] {
            let m = if empty_first { merge_attn_states(&empty, &full, DType::Bf16, kernel) } else { merge_attn_states(&full, &empty, DType::Bf16, kernel) }.unwrap();
            prop_assert_eq!(&m.out(), &full.out());
            prop_assert_eq!(&m.lse(), &full.lse());
        }
    }
}

/// Every attn-fixture/1 file in `fixtures/`.
fn shipped_fixtures() -> Vec<fixture::Fixture> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "safetensors"));
    paths.sort();
    paths.iter().map(|p| fixture::load(p).unwrap()).collect()
}

#[test]
fn merging_two_empty_sides_gives_zero_and_minus_inf_with_the_hip_kernel_and_nan_with_triton() {
    let empty = OutLse::empty(2, 3, 4);
    let hip = merge_attn_states(&empty, &empty, DType::F16, MergeKernel::Hip).unwrap();
    assert!(
        hip.out().iter().all(|&x| x == 0.0) && hip.lse().iter().all(|&x| x == f32::NEG_INFINITY)
    );
    // The fixture MANIFEST: "if both lse ... are non-finite it returns NaN (0/0)".
    let triton = merge_attn_states(&empty, &empty, DType::F16, MergeKernel::Triton).unwrap();
    assert!(triton.out().iter().all(|x| x.is_nan()) && triton.lse().iter().all(|x| x.is_nan()));
}

#[test]
fn merge_fixtures_replay_within_their_tolerance() {
    let mut seen = 0;
    for f in shipped_fixtures() {
        let Case::Merge(c) = &f.case else { continue };
        let side = |out: &Array3<f32>, lse: &Array2<f32>| {
            OutLse::new(
                c.num_tokens,
                c.num_heads,
                c.head_size,
                out.flat().into_owned(),
                lse.flat().into_owned(),
            )
            .unwrap()
        };
        let m = merge_attn_states(
            &side(&c.prefix_output, &c.prefix_lse),
            &side(&c.suffix_output, &c.suffix_lse),
            f.header.dtype,
            MergeKernel::Triton,
        )
        .unwrap();
        let tol = Tolerance::new(f.header.atol, f.header.rtol);
        assert!(
            compare(m.out(), c.output.as_ref().unwrap(), tol)
                .unwrap()
                .passed(),
            "{}",
            f.file
        );
        if let Some(lse) = &c.output_lse {
            assert!(
                compare(m.lse(), lse, tol).unwrap().passed(),
                "{} lse",
                f.file
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 4, "fixtures/ ships four merge cases");
}

#[test]
fn nhd_variant_replays_every_paged_fixture_it_supports() {
    // vLLM's default (NHD) runs the window and sink cases too (the shuffled
    // variant skips them): through the SWA extend, FA sinks and unified decode.
    let backend = RocmAiterFa::new(false);
    let mut ran = 0;
    for f in shipped_fixtures() {
        let Case::Paged(c) = &f.case else { continue };
        if backend.check(&c.cfg, c.meta.block_size()).is_err() {
            continue;
        }
        let layout = backend
            .cache_layout(&c.cfg, c.meta.num_blocks(), c.meta.block_size())
            .unwrap();
        let cache = KvCache::from_nhd(&c.key_cache.flat(), &c.value_cache.flat(), layout).unwrap();
        let out = backend
            .forward(&c.query.flat(), &cache, &c.meta, &c.cfg)
            .unwrap();
        let cmp = compare(
            &out,
            c.output.as_ref().unwrap(),
            Tolerance::new(f.header.atol, f.header.rtol),
        )
        .unwrap();
        assert!(cmp.passed(), "{}: {cmp:?}", f.file);
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} fixtures ran");
}

#[test]
fn blog_example_80000_token_prompt_is_prefill_then_one_then_two_context_chunks() {
    let cfg = AttnConfig::new(8, 1, 128, DType::Bf16).unwrap();
    let backend = by_name("ROCM_AITER_FA".parse().unwrap()).unwrap();
    let count = |q: usize, ctx: usize, name: &str| {
        let bs = 16;
        let row: Vec<i32> = (0..(q + ctx).div_ceil(bs) as i32).collect();
        let meta = AttentionMetadata::new(
            bs,
            row.len(),
            vec![0, q as i32],
            vec![(q + ctx) as i32],
            BlockTableTensor::from_rows(&[row]),
            vec![-1; q],
            true,
        )
        .unwrap();
        backend
            .plan(&meta, &cfg)
            .iter()
            .filter(|c| c.name == name)
            .count()
    };
    // Step 1: 32768 new tokens, no context: one varlen flash, no merge.
    assert_eq!(
        (
            count(32768, 0, "flash_attn_varlen_func"),
            count(32768, 0, "merge_attn_states")
        ),
        (1, 0)
    );
    // Step 2: 32768 tokens on 32768 of context: new tokens + 1 chunk, one final merge.
    assert_eq!(
        (
            count(32768, 32768, "flash_attn_varlen_func"),
            count(32768, 32768, "merge_attn_states")
        ),
        (2, 1)
    );
    // Step 3: 14464 tokens on 65536: 2 chunks, a chunk merge and the final merge.
    assert_eq!(
        (
            count(14464, 65536, "flash_attn_varlen_func"),
            count(14464, 65536, "merge_attn_states")
        ),
        (3, 2)
    );
    // vLLM's default cache is NHD (VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT unset):
    // the HIP flash writer; the blog's shuffle writer only with the variable.
    assert_eq!(count(14464, 65536, "reshape_and_cache_flash"), 1);
    assert_eq!(count(14464, 65536, "reshape_and_cache_shuffle_triton"), 0);
}

#[test]
fn context_chunks_split_the_budget_between_extends_without_block_alignment() {
    let chunks = context_chunks(&[70, 10, 0], 60).unwrap().chunks; // 20 tokens per request per chunk
    assert_eq!(chunks.len(), 4);
    assert_eq!(chunks[0].cu_seqlens, vec![0, 20, 30, 30]);
    assert_eq!(chunks[3].cu_seqlens, vec![0, 10, 10, 10]);
    assert_eq!(chunks[3].seq_starts, vec![60, 60, 60]);
    assert!(context_chunks(&[5, 5], 1)
        .unwrap_err()
        .to_string()
        .contains("cp_tokens_per_iter"));
}

#[test]
fn chunked_extend_counts_each_sink_once_as_vllm_does() {
    // vLLM 0.34 (rocm_aiter_fa.py, AiterFlashAttentionImpl.extend_forward)
    // passes sink_ptr to the new-token call only; the context-chunk calls get
    // sink_ptr=None ("adding it per context chunk would overcount it on
    // merge"). So the merged result is attention with the sink counted once,
    // not (num_chunks + 1) times as the old reading of vllm-backends.md §19 #14 had it.
    let mut cfg = AttnConfig::new(2, 1, 64, DType::F16).unwrap();
    cfg = attnlab_sim::config::AttnConfigBuilder {
        sinks: Some(vec![0.5, 2.0]),
        ..cfg.to_builder()
    }
    .build()
    .unwrap();
    let b = batch(&[(5, 48)], &cfg, 16, 7);
    let backend = RocmAiterFa {
        shuffle_kv_cache: false,
        cp_tokens_per_iter: 16,
    }; // 3 chunks
    let out = run(&backend, &b, &cfg);
    assert_close(&out, &reference(&b, &cfg), Tolerance::for_dtype(DType::F16));
    let mut overcounted = cfg.clone();
    overcounted = attnlab_sim::config::AttnConfigBuilder {
        sinks: Some(vec![0.5 + 4f32.ln(), 2.0 + 4f32.ln()]),
        ..overcounted.to_builder()
    }
    .build()
    .unwrap();
    assert!(!compare(
        &out,
        &reference(&b, &overcounted),
        Tolerance::for_dtype(DType::F16)
    )
    .unwrap()
    .passed());
}

#[test]
fn prefill_and_extend_ignore_softcap_but_decode_applies_it() {
    let mut cfg = AttnConfig::new(2, 2, 64, DType::Bf16).unwrap();
    cfg = attnlab_sim::config::AttnConfigBuilder {
        scale: 2.0,
        ..cfg.to_builder()
    }
    .build()
    .unwrap(); // large scores so a cap of 1 matters
    let b = batch(&[(6, 0), (4, 20), (1, 40)], &cfg, 16, 3);
    let backend = RocmAiterFa::default();
    let plain = run(&backend, &b, &cfg);
    cfg = attnlab_sim::config::AttnConfigBuilder {
        softcap: Some(1.0),
        ..cfg.to_builder()
    }
    .build()
    .unwrap();
    let capped = run(&backend, &b, &cfg);
    let row = 2 * 64;
    assert_eq!(
        plain[..10 * row],
        capped[..10 * row],
        "prefill + extend rows"
    );
    assert_ne!(plain[10 * row..], capped[10 * row..], "decode row");
    assert_close(
        &capped[10 * row..],
        &reference(&b, &cfg)[10 * row..],
        Tolerance::for_dtype(DType::Bf16),
    );
}

#[test]
fn written_kv_reaches_attention_through_the_shuffle_writer() {
    let cfg = AttnConfig::new(2, 1, 64, DType::Bf16).unwrap();
    let b = batch(&[(3, 17), (5, 0)], &cfg, 16, 11);
    let backend = RocmAiterFa::new(true);
    let mut cache = cache_for_backend(&backend, &b, &cfg);
    let (t, row) = (b.meta.num_actual_tokens(), 64);
    let new_k: Vec<f32> = (0..t * row)
        .map(|i| DType::Bf16.round((i % 13) as f32 * 0.1 - 0.6))
        .collect();
    backend
        .write_kv(&mut cache, &new_k, &new_k, b.meta.slot_mapping(), &cfg)
        .unwrap();
    let got = backend.forward(&b.query, &cache, &b.meta, &cfg).unwrap();
    // The same step against a canonical cache holding the written tokens.
    let nhd = KvLayout::new(LayoutKind::Nhd, b.meta.num_blocks(), 16, 1, 64, DType::Bf16).unwrap();
    let mut canon = KvCache::from_nhd(&b.nhd_k, &b.nhd_v, nhd).unwrap();
    for (tok, &slot) in b.meta.slot_mapping().iter().enumerate() {
        let (blk, r) = (slot as usize / 16, slot as usize % 16);
        for dd in 0..64 {
            canon.k[nhd.k_offset(blk, r, 0, dd)] = new_k[tok * row + dd];
            canon.v[nhd.v_offset(blk, r, 0, dd)] = new_k[tok * row + dd];
        }
    }
    assert_close(
        &got,
        &paged_attention(&b.query, &canon, &b.meta, &cfg)
            .unwrap()
            .out
            .flatten()
            .to_vec(),
        Tolerance::for_dtype(DType::Bf16),
    );
}

#[test]
fn default_follows_vllms_env_and_is_the_nhd_cache() {
    assert!(!RocmAiterFa::default().shuffle_kv_cache);
    assert_eq!(RocmAiterFa::from_env_value(None), RocmAiterFa::default());
    for on in ["1", "true", "True", "TRUE"] {
        assert!(
            RocmAiterFa::from_env_value(Some(on)).shuffle_kv_cache,
            "{on}"
        );
    }
    for off in ["0", "false", "", "yes"] {
        assert!(
            !RocmAiterFa::from_env_value(Some(off)).shuffle_kv_cache,
            "{off}"
        );
    }
}

#[test]
fn check_rejects_what_vllm_rejects() {
    let b = RocmAiterFa::new(true);
    let e = b
        .check(&AttnConfig::new(8, 8, 80, DType::Bf16).unwrap(), 16)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("head size 80") && e.contains("[64, 128, 256]"),
        "{e}"
    );
    let e = b
        .check(&AttnConfig::new(8, 8, 128, DType::F32).unwrap(), 16)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("float32") && e.contains("float16, bfloat16"),
        "{e}"
    );
    let e = b
        .check(&AttnConfig::new(8, 8, 128, DType::Bf16).unwrap(), 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Block size must be a multiple of 16."), "{e}");
    let mut sinks = AttnConfig::new(8, 8, 128, DType::Bf16).unwrap();
    sinks = attnlab_sim::config::AttnConfigBuilder {
        sinks: Some(vec![0.0; 8]),
        ..sinks.to_builder()
    }
    .build()
    .unwrap();
    assert!(b
        .check(&sinks, 16)
        .unwrap_err()
        .to_string()
        .contains(SHUFFLE_UNSUPPORTED));
    assert!(RocmAiterFa::new(false).check(&sinks, 16).is_ok());
    assert_eq!(b.kernel_block_size(544).unwrap(), 32);
    assert_eq!(b.kernel_block_size(48).unwrap(), 16);
    assert!(b
        .kernel_block_size(24)
        .unwrap_err()
        .to_string()
        .contains("No common block size for 24"));
}

#[test]
fn flex_check_rejects_what_vllm_rejects() {
    let mut cfg = AttnConfig::new(4, 4, 80, DType::Bf16).unwrap();
    FlexAttention.check(&cfg, 544).unwrap();
    assert!(FlexAttention
        .check(&cfg, 24)
        .unwrap_err()
        .to_string()
        .contains("multiple of 16"));
    cfg = attnlab_sim::config::AttnConfigBuilder {
        softcap: Some(30.0),
        ..cfg.to_builder()
    }
    .build()
    .unwrap();
    assert!(FlexAttention
        .check(&cfg, 16)
        .unwrap_err()
        .to_string()
        .contains("logits soft cap"));
    let mut fp8 = AttnConfig::new(4, 4, 80, DType::Bf16).unwrap();
    fp8 = attnlab_sim::config::AttnConfigBuilder {
        kv_dtype: DType::Fp8E4m3Fn,
        ..fp8.to_builder()
    }
    .build()
    .unwrap();
    assert!(FlexAttention
        .check(&fp8, 16)
        .unwrap_err()
        .to_string()
        .contains("quantized kv-cache"));
    assert_eq!(
        by_name("FLEX_ATTENTION".parse().unwrap())
            .unwrap()
            .plan(&batch(&[(3, 20)], &cfg, 16, 1).meta, &cfg)[1]
            .name,
        "flex_attention"
    );
}
