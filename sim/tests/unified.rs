//! TRITON_ATTN, ROCM_AITER_UNIFIED_ATTN, their unified-attention kernel and
//! the cache writers, as specifications: every step writes the new K/V with
//! the backend's writer into a cache whose every other slot is NaN (so a
//! read of an unused block, a stale slot or another request's block shows
//! up as NaN), runs one forward over a batch mixing decode, extend and
//! prefill, and must equal the f64 reference within the dtype's tolerance.
//! 3D split-KV equals 2D, results are bit-identical across thread counts,
//! the writers agree across layouts, and vLLM's launch rules and
//! rejections hold.

use attnlab_shared::dtype::DType;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_sim::backends::rocm_aiter_unified_attn::RocmAiterUnifiedAttn;
use attnlab_sim::backends::triton_attn::TritonAttn;
use attnlab_sim::backends::{by_name, AttentionBackend};
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::{AttnConfig, AttnConfigBuilder};
use attnlab_sim::kernels::reshape_and_cache::{reshape_and_cache, CacheWriter};
use attnlab_sim::kernels::unified_attention::{
    reduce_segments, unified_attention, unified_attention_2d, unified_attention_3d, Flavor, Grid,
    UnifiedLaunch, VllmLaunchOptions, MI300X_CU_COUNT,
};
use attnlab_sim::reference::{self, compare, Tolerance};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
mod common;
use common::shuffled_block_rows;

/// One scheduler step: the requests' earlier tokens (already cached), the
/// step's new tokens and the metadata of the forward.
struct Step {
    meta: AttentionMetadata,
    query: Vec<f32>,
    /// Context tokens of all requests, `[C, Hkv, D]`, and their slots.
    ctx_k: Vec<f32>,
    ctx_v: Vec<f32>,
    ctx_slots: Vec<i64>,
    /// The step's new tokens, `[T, Hkv, D]` (slots in `meta.slot_mapping`).
    new_k: Vec<f32>,
    new_v: Vec<f32>,
}

/// `reqs` are (context_len, query_len). Physical blocks are a shuffled
/// subset of `1..num_blocks` (block 0 and some spares are never used).
fn step(
    cfg: &AttnConfig,
    block_size: usize,
    reqs: &[(usize, usize)],
    causal: bool,
    seed: u64,
) -> Step {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (num_blocks, rows) = shuffled_block_rows(&mut rng, reqs, block_size, 4);
    let slot = |i: usize, t: usize| {
        (rows[i][t / block_size] as usize * block_size + t % block_size) as i64
    };
    let mut qsl = vec![0i32];
    let (mut ctx_slots, mut new_slots) = (vec![], vec![]);
    for (i, &(c, q)) in reqs.iter().enumerate() {
        qsl.push(qsl[i] + q as i32);
        ctx_slots.extend((0..c).map(|t| slot(i, t)));
        new_slots.extend((c..c + q).map(|t| slot(i, t)));
    }
    let seq_lens = reqs.iter().map(|&(c, q)| (c + q) as i32).collect();
    let meta = AttentionMetadata::new(
        block_size,
        num_blocks,
        qsl,
        seq_lens,
        BlockTableTensor::from_rows(&rows),
        new_slots,
        causal,
    )
    .unwrap();
    let (t, c) = (meta.num_actual_tokens(), ctx_slots.len());
    let kv_row = cfg.num_kv_heads() * cfg.head_size();
    // Values come from their own stream: the same seed gives the same
    // logical Q/K/V whatever the block size and block shuffle.
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1));
    let mut rand_vec = |n: usize, amp: f32| -> Vec<f32> {
        (0..n)
            .map(|_| cfg.dtype().round(rng.gen_range(-amp..amp)))
            .collect()
    };
    Step {
        query: rand_vec(t * cfg.num_heads() * cfg.head_size(), 2.0),
        ctx_k: rand_vec(c * kv_row, 1.0),
        ctx_v: rand_vec(c * kv_row, 1.0),
        new_k: rand_vec(t * kv_row, 1.0),
        new_v: rand_vec(t * kv_row, 1.0),
        ctx_slots,
        meta,
    }
}

/// The backend's cache for this step: NaN everywhere, then the context and
/// the new tokens written by the backend's own writer.
fn cache_for(backend: &dyn AttentionBackend, s: &Step, cfg: &AttnConfig) -> KvCache {
    let layout = backend
        .cache_layout(cfg, s.meta.num_blocks(), s.meta.block_size())
        .unwrap();
    let mut cache = KvCache {
        layout,
        k: vec![f32::NAN; layout.numel()],
        v: vec![f32::NAN; layout.numel()],
    };
    backend
        .write_kv(&mut cache, &s.ctx_k, &s.ctx_v, &s.ctx_slots, cfg)
        .unwrap();
    backend
        .write_kv(&mut cache, &s.new_k, &s.new_v, s.meta.slot_mapping(), cfg)
        .unwrap();
    cache
}

fn assert_matches_reference(out: &[f32], s: &Step, cache: &KvCache, cfg: &AttnConfig, what: &str) {
    let r = reference::paged_attention(&s.query, cache, &s.meta, cfg).unwrap();
    let c = compare(out, &r.out, Tolerance::for_dtype(cfg.dtype())).unwrap();
    assert!(
        c.passed(),
        "{what}: {c:?}\ncfg {cfg:?}\nseq_lens {:?} qsl {:?}",
        s.meta.seq_lens(),
        s.meta.query_start_loc()
    );
}

fn with_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap()
        .install(f)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn backends() -> [Box<dyn AttentionBackend>; 2] {
    [
        Box::new(TritonAttn::default()),
        Box::new(RocmAiterUnifiedAttn::default()),
    ]
}

/// A request: (context_len, query_len) of a decode, an extend or a prefill.
fn request() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![
        (1usize..150).prop_map(|c| (c, 1)),
        (1usize..100, 2usize..40),
        (1usize..60).prop_map(|q| (0, q))
    ]
}

#[derive(Debug, Clone)]
struct Features {
    window: Option<usize>,
    softcap: Option<f32>,
    sinks: bool,
    alibi: bool,
    causal: bool,
}

fn features() -> impl Strategy<Value = Features> {
    (
        prop::option::of(1usize..64),
        prop::option::of(2.0f32..30.0),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(window, softcap, sinks, alibi, non_causal)| Features {
            // vLLM's non-causal window is two-sided; the reference's is causal-style.
            window: if non_causal { None } else { window },
            softcap,
            sinks,
            // vLLM's ALiBi bias is slope * (t - ctx), a row-constant shift of
            // the reference's slope * (t - p) that a sink logit does not
            // share: the two agree only without sinks.
            alibi: alibi && !sinks,
            causal: !non_causal,
        })
}

fn config(dtype: DType, hkv: usize, qpk: usize, d: usize, f: &Features, seed: u64) -> AttnConfig {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let hq = hkv * qpk;
    AttnConfigBuilder {
        sliding_window: f.window,
        softcap: f.softcap,
        sinks: f
            .sinks
            .then(|| (0..hq).map(|_| rng.gen_range(-2.0f32..2.0)).collect()),
        alibi_slopes: f
            .alibi
            .then(|| (0..hq).map(|_| rng.gen_range(0.0f32..0.5)).collect()),
        ..AttnConfig::builder(hq, hkv, d, dtype)
    }
    .build()
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The core property: both unified backends equal plain f64 attention.
    #[test]
    fn unified_backends_match_the_f64_reference(
        dtype in prop::sample::select(vec![DType::F16, DType::Bf16, DType::F32]),
        block_size in prop::sample::select(vec![16usize, 32, 48, 64, 544]),
        hkv in 1usize..=2,
        qpk in prop::sample::select(vec![1usize, 2, 3, 5, 8, 16]),
        d in prop::sample::select(vec![32usize, 64, 80]),
        reqs in prop::collection::vec(request(), 1..=4),
        f in features(),
        seed in any::<u64>(),
    ) {
        let cfg = config(dtype, hkv, qpk, d, &f, seed);
        let s = step(&cfg, block_size, &reqs, f.causal, seed);
        for b in backends() {
            if let Err(e) = b.check(&cfg, block_size) {
                prop_assert!(b.name().name() == "ROCM_AITER_UNIFIED_ATTN" && dtype == DType::F32, "{}: {e}", b.name());
                continue;
            }
            let cache = cache_for(b.as_ref(), &s, &cfg);
            let out = b.forward(&s.query, &cache, &s.meta, &cfg).unwrap();
            assert_matches_reference(&out, &s, &cache, &cfg, b.name().name());
        }
    }

    /// Split-KV: the 3D kernel + reduce_segments equals the 2D kernel for
    /// any segment count, with sinks counted once (segment 0 only).
    #[test]
    fn split_kv_3d_matches_2d(
        flavor in prop::sample::select(vec![Flavor::Vllm, Flavor::Aiter]),
        num_segments in prop::sample::select(vec![1usize, 2, 5, 16]),
        qpk in prop::sample::select(vec![1usize, 4, 6]),
        reqs in prop::collection::vec(prop_oneof![(0usize..300).prop_map(|c| (c, 1)), (0usize..200, 2usize..8)], 1..=5),
        sinks in any::<bool>(),
        window in prop::option::of(1usize..100),
        seed in any::<u64>(),
    ) {
        let f = Features { window, softcap: None, sinks, alibi: false, causal: true };
        let cfg = config(DType::Bf16, 2, qpk, 64, &f, seed);
        let s = step(&cfg, 16, &reqs, true, seed);
        let b = TritonAttn::default();
        let cache = cache_for(&b, &s, &cfg);
        let base = b.launch(&s.meta, &cfg).unwrap();
        let launch = UnifiedLaunch { flavor, ..base };
        let two_d = unified_attention_2d(&s.query, &cache, &s.meta, &cfg, &launch).unwrap();
        let three_d = unified_attention(&s.query, &cache, &s.meta, &cfg, &launch.with_grid(Grid::ThreeD { num_segments })).unwrap();
        let c = compare(&three_d, &two_d, Tolerance::for_dtype(DType::Bf16)).unwrap();
        prop_assert!(c.passed(), "{c:?}");
        assert_matches_reference(&three_d, &s, &cache, &cfg, "3D");
    }

    /// The writers store the same logical cache in NHD, x-packed and
    /// shuffled layouts, and never touch a slot they are not given.
    #[test]
    fn writers_store_one_logical_cache_in_every_layout(
        kv_dtype in prop::sample::select(vec![DType::Bf16, DType::Fp8E4m3Fn, DType::Fp8E4m3Fnuz]),
        slots in prop::collection::vec(-1i64..64, 1..24),
        seed in any::<u64>(),
    ) {
        let cfg = AttnConfigBuilder { kv_dtype, k_scale: 0.25, v_scale: 0.5, ..AttnConfig::builder(4, 2, 32, DType::Bf16) }.build().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = slots.len() * 2 * 32;
        let (k, v): (Vec<f32>, Vec<f32>) = (0..n).map(|_| (DType::Bf16.round(rng.gen_range(-9.0f32..9.0)), DType::Bf16.round(rng.gen_range(-9.0f32..9.0)))).unzip();
        let mut logical = vec![];
        for (writer, kind) in [
            (CacheWriter::TritonReshapeAndCacheFlash, LayoutKind::Nhd),
            (CacheWriter::TritonReshapeAndCacheFlash, LayoutKind::RocmPaged),
            (CacheWriter::ReshapeAndCacheShuffleTriton, LayoutKind::AiterShuffled),
        ] {
            let layout = KvLayout::new(kind, 4, 16, 2, 32, kv_dtype).unwrap();
            let mut cache = KvCache { layout, k: vec![f32::NAN; layout.numel()], v: vec![f32::NAN; layout.numel()] };
            reshape_and_cache(writer, &mut cache, &k, &v, &slots, &cfg).unwrap();
            let mut read = vec![];
            for slot in 0..64usize {
                // The last token written to a slot wins; an unwritten slot stays NaN.
                let src = slots.iter().rposition(|&s| s == slot as i64);
                for h in 0..2 {
                    for dd in 0..32 {
                        let (kk, vv) = (cache.k_at(slot / 16, slot % 16, h, dd), cache.v_at(slot / 16, slot % 16, h, dd));
                        match src {
                            None => prop_assert!(kk.is_nan() && vv.is_nan(), "slot {slot} was written"),
                            Some(t) => {
                                let i = (t * 2 + h) * 32 + dd;
                                prop_assert_eq!(kk, writer.quantize(k[i], DType::Bf16, kv_dtype, 0.25));
                                prop_assert_eq!(vv, writer.quantize(v[i], DType::Bf16, kv_dtype, 0.5));
                            }
                        }
                        read.push((kk.to_bits(), vv.to_bits()));
                    }
                }
            }
            logical.push(read);
        }
        prop_assert_eq!(&logical[0], &logical[1]);
        prop_assert_eq!(&logical[0], &logical[2]);
    }
}

#[test]
fn results_are_bit_identical_across_thread_counts() {
    let f = Features {
        window: Some(40),
        softcap: Some(20.0),
        sinks: true,
        alibi: false,
        causal: true,
    };
    let cfg = config(DType::Bf16, 2, 4, 64, &f, 7);
    // A decode-only batch (3D for both flavours with long contexts) and a mixed one (2D).
    for reqs in [
        vec![(700usize, 1usize), (900, 1), (650, 1)],
        vec![(0, 50), (30, 20), (200, 1)],
    ] {
        let s = step(&cfg, 32, &reqs, true, 11);
        for b in backends() {
            let cache = cache_for(b.as_ref(), &s, &cfg);
            let one = with_threads(1, || b.forward(&s.query, &cache, &s.meta, &cfg).unwrap());
            let two = with_threads(2, || b.forward(&s.query, &cache, &s.meta, &cfg).unwrap());
            assert_eq!(bits(&one), bits(&two), "{}", b.name());
        }
    }
}

#[test]
fn every_simd_path_gives_every_mha_backend_the_same_bits() {
    use attnlab_sim::backends::mha_backends;
    use attnlab_sim::kernels::simd::SimdPath;
    let plain = Features {
        window: None,
        softcap: None,
        sinks: false,
        alibi: false,
        causal: true,
    };
    let featured = Features {
        window: Some(45),
        softcap: Some(20.0),
        alibi: true,
        ..plain.clone()
    };
    let mut ran = 0;
    for (f, dtype, qpk, d) in [
        (&plain, DType::Bf16, 4, 128),
        (&featured, DType::F16, 3, 80),
    ] {
        let cfg = config(dtype, 2, qpk, d, f, 5);
        // Decodes (long contexts: split-KV), an extend and a prefill in one batch.
        let s = step(&cfg, 16, &[(700, 1), (333, 1), (90, 17), (0, 70)], true, 23);
        for b in mha_backends() {
            if b.check(&cfg, 16).is_err() || b.kernel_block_size(16).ok() != Some(16) {
                continue;
            }
            let cache = cache_for(b.as_ref(), &s, &cfg);
            let runs: Vec<(SimdPath, Vec<u32>)> = SimdPath::available()
                .into_iter()
                .map(|path| {
                    SimdPath::force(Some(path));
                    let out = b.forward(&s.query, &cache, &s.meta, &cfg);
                    SimdPath::force(None);
                    (path, bits(&out.unwrap()))
                })
                .collect();
            for (path, out) in &runs[1..] {
                assert!(*out == runs[0].1, "{} on {}", b.name(), path.name());
            }
            ran += 1;
        }
    }
    assert!(ran >= 6, "only {ran} backend runs");
}

#[test]
fn fp8_kv_cache_matches_the_reference_on_both_backends() {
    for kv_dtype in [DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn] {
        let cfg = AttnConfigBuilder {
            kv_dtype,
            k_scale: 0.02,
            v_scale: 0.015,
            ..AttnConfig::builder(8, 2, 64, DType::Bf16)
        }
        .build()
        .unwrap();
        let s = step(&cfg, 16, &[(90, 1), (40, 12), (0, 30)], true, 3);
        for b in backends() {
            let cache = cache_for(b.as_ref(), &s, &cfg);
            // The writer stored x / scale: every stored value is an fp8 code.
            assert!(cache
                .k
                .iter()
                .filter(|x| !x.is_nan())
                .all(|&x| kv_dtype.round(x) == x && x.abs() <= kv_dtype.max_finite()));
            let out = b.forward(&s.query, &cache, &s.meta, &cfg).unwrap();
            assert_matches_reference(&out, &s, &cache, &cfg, b.name().name());
        }
    }
}

#[test]
fn vllm_uses_3d_only_for_small_decode_batches() {
    let cfg = AttnConfig::new(32, 8, 128, DType::Bf16).unwrap(); // seq_threshold_3D = 128 / 8 = 16
    let launch = |reqs: &[(usize, usize)], opts| {
        UnifiedLaunch::vllm(&step(&cfg, 16, reqs, true, 1).meta, &cfg, opts).unwrap()
    };
    let d = VllmLaunchOptions::default();
    assert_eq!(
        launch(&[(100, 1); 16], d).grid,
        Grid::ThreeD { num_segments: 16 }
    );
    assert_eq!(launch(&[(100, 1); 16], d).tile_size, 16);
    assert_eq!(
        launch(&[(100, 1); 17], d).grid,
        Grid::TwoD,
        "17 sequences exceed seq_threshold_3D"
    );
    assert_eq!(
        launch(&[(100, 1), (0, 30)], d).grid,
        Grid::TwoD,
        "a prefill row"
    );
    assert_eq!(launch(&[(100, 1), (0, 30)], d).tile_size, 32);
    assert_eq!(
        launch(&[(100, 4); 5], d).grid,
        Grid::TwoD,
        "20 spec-decode rows overflow the 16-row scratch"
    );
    let spec = VllmLaunchOptions {
        max_query_len_3d: 8,
        ..d
    };
    assert_eq!(
        launch(&[(100, 4); 5], spec).grid,
        Grid::ThreeD { num_segments: 16 }
    );
    assert_eq!(
        launch(&[(100, 9)], spec).grid,
        Grid::TwoD,
        "longer than MAX_3D_QUERY_LEN"
    );
    assert_eq!(
        launch(
            &[(100, 1)],
            VllmLaunchOptions {
                batch_invariant: true,
                ..d
            }
        )
        .grid,
        Grid::TwoD
    );
    let wide = AttnConfig::new(256, 256, 64, DType::Bf16).unwrap(); // 128 / 256 = 0: no scratch
    assert_eq!(
        UnifiedLaunch::vllm(&step(&wide, 16, &[(10, 1)], true, 1).meta, &wide, d)
            .unwrap()
            .grid,
        Grid::TwoD
    );
}

#[test]
fn block_m_packs_gqa_heads_with_block_q_tokens() {
    for (qpk, block_m, block_q) in [
        (1, 16, 16),
        (4, 16, 4),
        (5, 16, 3),
        (16, 16, 1),
        (20, 32, 1),
    ] {
        let cfg = AttnConfig::new(qpk * 2, 2, 64, DType::F16).unwrap();
        let l = UnifiedLaunch::vllm(
            &step(&cfg, 16, &[(0, 5)], true, 1).meta,
            &cfg,
            VllmLaunchOptions::default(),
        )
        .unwrap();
        assert_eq!((l.block_m, l.block_q), (block_m, block_q), "qpk {qpk}");
    }
}

#[test]
fn aiter_launch_follows_its_own_2d_3d_rule() {
    let cfg = AttnConfig::new(64, 8, 64, DType::Bf16).unwrap();
    let launch = |cfg: &AttnConfig, reqs: &[(usize, usize)], bs| {
        UnifiedLaunch::aiter(&step(cfg, bs, reqs, true, 1).meta, cfg, MI300X_CU_COUNT).unwrap()
    };
    let short = launch(&cfg, &[(400, 1), (300, 1)], 64);
    assert_eq!(
        (short.grid, short.tile_size),
        (Grid::TwoD, 64),
        "max_seqlen_k <= 512: 2D, decode TILE min(64, N)"
    );
    let long = launch(&cfg, &[(4000, 1), (1200, 1)], 16);
    let Grid::ThreeD { num_segments } = long.grid else {
        panic!("long decode should be 3D: {long:?}")
    };
    assert!(
        num_segments.is_power_of_two() && (8..=128).contains(&num_segments),
        "{num_segments}"
    );
    assert_eq!(long.tile_size, 16, "3D TILE = min(64, next_pow2(16))");
    let windowed = AttnConfigBuilder {
        sliding_window: Some(128),
        ..cfg.to_builder()
    }
    .build()
    .unwrap();
    assert_eq!(launch(&windowed, &[(4000, 1)], 16).grid, Grid::TwoD);
    let prefill = launch(&cfg, &[(0, 300)], 16);
    assert_eq!(
        (prefill.grid, prefill.tile_size, prefill.block_m),
        (Grid::TwoD, 64, 128),
        "long prefill: BLOCK_M 128"
    );
    assert_eq!(prefill.flavor, Flavor::Aiter);
}

#[test]
fn aiter_kernel_is_causal_only_and_its_backend_falls_back_to_vllm() {
    let cfg = AttnConfig::new(8, 2, 64, DType::F16).unwrap();
    let s = step(&cfg, 16, &[(0, 20), (10, 7)], false, 5);
    let b = RocmAiterUnifiedAttn::default();
    let cache = cache_for(&b, &s, &cfg);
    let aiter = UnifiedLaunch {
        flavor: Flavor::Aiter,
        ..b.launch(&s.meta, &cfg).unwrap()
    };
    let err = unified_attention_2d(&s.query, &cache, &s.meta, &cfg, &aiter)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Only causal attention is supported"), "{err}");
    assert_eq!(b.launch(&s.meta, &cfg).unwrap().flavor, Flavor::Vllm);
    let out = b.forward(&s.query, &cache, &s.meta, &cfg).unwrap();
    assert_matches_reference(&out, &s, &cache, &cfg, "non-causal fallback");
    assert!(b
        .plan(&s.meta, &cfg)
        .iter()
        .any(|c| c.name == "kernel_unified_attention_2d"));
}

#[test]
fn vllm_and_aiter_kernels_agree_within_tolerance_but_not_bit_for_bit() {
    let f = Features {
        window: None,
        softcap: None,
        sinks: false,
        alibi: false,
        causal: true,
    };
    let cfg = config(DType::Bf16, 2, 4, 64, &f, 1);
    let s = step(&cfg, 16, &[(300, 1), (50, 30), (0, 64)], true, 9);
    let cache = cache_for(&TritonAttn::default(), &s, &cfg);
    let v = TritonAttn::default()
        .forward(&s.query, &cache, &s.meta, &cfg)
        .unwrap();
    let a = RocmAiterUnifiedAttn::default()
        .forward(&s.query, &cache, &s.meta, &cfg)
        .unwrap();
    assert!(compare(&a, &v, Tolerance::for_dtype(DType::Bf16))
        .unwrap()
        .passed());
    assert_ne!(
        bits(&a),
        bits(&v),
        "different tiles and epilogues round differently (vllm-backends.md §10.3)"
    );
}

#[test]
fn reduce_segments_rejects_partials_of_another_shape() {
    let cfg = AttnConfig::new(4, 2, 64, DType::F16).unwrap();
    let s = step(&cfg, 16, &[(40, 1)], true, 2);
    let b = TritonAttn::default();
    let cache = cache_for(&b, &s, &cfg);
    let launch = b.launch(&s.meta, &cfg).unwrap();
    let mut parts = unified_attention_3d(&s.query, &cache, &s.meta, &cfg, &launch).unwrap();
    parts.m.pop();
    let err = reduce_segments(&parts, &s.meta, &cfg, &launch)
        .unwrap_err()
        .to_string();
    assert!(err.contains("segment partials"), "{err}");
    let two_d = launch.with_grid(Grid::TwoD);
    assert!(unified_attention_3d(&s.query, &cache, &s.meta, &cfg, &two_d).is_err());
}

#[test]
fn block_sizes_follow_multiple_of_16() {
    let cfg = AttnConfig::new(8, 2, 64, DType::Bf16).unwrap();
    for b in backends() {
        for ok in [16, 32, 48, 64, 544] {
            assert!(b.check(&cfg, ok).is_ok(), "{} block {ok}", b.name());
        }
        for bad in [0, 1, 8, 24] {
            let e = b.check(&cfg, bad).unwrap_err().to_string();
            assert!(
                e.contains("block_size") && e.contains(&bad.to_string()),
                "{}: {e}",
                b.name()
            );
        }
    }
    let e = RocmAiterUnifiedAttn::default()
        .check(&cfg, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Block size must be a multiple of 16."), "{e}");
}

#[test]
fn rejections_name_the_bad_value() {
    let f32_cfg = AttnConfig::new(8, 2, 64, DType::F32).unwrap();
    assert!(TritonAttn::default().check(&f32_cfg, 16).is_ok());
    let e = RocmAiterUnifiedAttn::default()
        .check(&f32_cfg, 16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("float32") && e.contains("bfloat16"), "{e}");
    for b in backends() {
        let small = AttnConfig::new(8, 2, 16, DType::F16).unwrap();
        assert!(b
            .check(&small, 16)
            .unwrap_err()
            .to_string()
            .contains("head_size not supported"));
    }
    // Sinks of the wrong length never make a config a backend could see.
    let e = AttnConfigBuilder {
        sinks: Some(vec![0.0; 3]),
        ..AttnConfig::builder(8, 2, 64, DType::F16)
    }
    .build()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("sinks length 3") && e.contains("num_heads = 8"),
        "{e}"
    );
    assert_eq!(
        by_name("TRITON_ATTN".parse().unwrap())
            .unwrap()
            .name()
            .name(),
        "TRITON_ATTN"
    );
    assert_eq!(
        by_name("ROCM_AITER_UNIFIED_ATTN".parse().unwrap())
            .unwrap()
            .name()
            .name(),
        "ROCM_AITER_UNIFIED_ATTN"
    );
}

#[test]
fn forward_rejects_a_query_of_the_wrong_length() {
    let cfg = AttnConfig::new(8, 2, 64, DType::F16).unwrap();
    let s = step(&cfg, 16, &[(5, 3)], true, 4);
    for b in backends() {
        let cache = cache_for(b.as_ref(), &s, &cfg);
        let e = b
            .forward(&s.query[1..], &cache, &s.meta, &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("query length"), "{e}");
    }
}

/// The blog's example: one 80000-token prompt, max_num_batched_tokens 32768,
/// chunked into three steps; every step is one write and one unified
/// attention over all KV so far.
#[test]
fn triton_attn_plan_walks_the_blog_80000_token_prefill() {
    let cfg = AttnConfig::new(32, 8, 128, DType::Bf16).unwrap(); // llama-3.1-8b attention shape
    let bs = 16;
    let table = BlockTableTensor::from_rows(&[(0..80000 / bs as i32).collect()]);
    let mut done = 0usize;
    for (chunk, kv) in [(32768usize, 32768usize), (32768, 65536), (14464, 80000)] {
        let slots = (done..done + chunk).map(|t| t as i64).collect();
        let meta = AttentionMetadata::new(
            bs,
            5000,
            vec![0, chunk as i32],
            vec![kv as i32],
            table.clone(),
            slots,
            true,
        )
        .unwrap();
        let plan = TritonAttn::default().plan(&meta, &cfg);
        let names: Vec<&str> = plan.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "triton_reshape_and_cache_flash",
                "kernel_unified_attention_2d"
            ]
        );
        assert_eq!(plan[0].shapes["key"], vec![chunk, 8, 128]);
        assert_eq!(plan[1].shapes["query"], vec![chunk, 32, 128]);
        assert_eq!(plan[1].shapes["kv_read"], vec![kv, 8, 128]);
        done += chunk;
    }
    assert_eq!(done, 80000);
}

#[test]
fn plan_lists_reduce_segments_after_a_3d_launch() {
    let cfg = AttnConfig::new(8, 2, 64, DType::Bf16).unwrap();
    let s = step(&cfg, 16, &[(700, 1), (900, 1)], true, 1);
    let names = |b: &dyn AttentionBackend| {
        b.plan(&s.meta, &cfg)
            .into_iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&TritonAttn::default()),
        [
            "triton_reshape_and_cache_flash",
            "kernel_unified_attention_3d",
            "reduce_segments"
        ]
    );
    assert_eq!(
        names(&RocmAiterUnifiedAttn::default()),
        [
            "reshape_and_cache_flash",
            "aiter.kernel_unified_attention_3d",
            "aiter.reduce_segments"
        ]
    );
}

/// Every shipped case captured from vLLM's Triton unified attention (and
/// ROCM_ATTN's kernels) replays within the file's tolerance through both
/// unified backends; AITER-unified skips float32 as vLLM rejects it.
#[test]
fn shipped_fixtures_replay_through_both_unified_backends() {
    use attnlab_sim::replay::{replay_paths, Status};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    for name in ["TRITON_ATTN", "ROCM_AITER_UNIFIED_ATTN"] {
        let rows = replay_paths(std::slice::from_ref(&dir), Some(name)).unwrap();
        let mine: Vec<_> = rows.iter().filter(|r| r.backend == name).collect();
        assert!(mine.len() >= 15, "{name}: {} paged cases", mine.len());
        for r in mine {
            match r.status {
                Status::Pass => {}
                Status::Skipped => assert!(
                    name == "ROCM_AITER_UNIFIED_ATTN" && r.file.contains("f32"),
                    "{r:?}"
                ),
                _ => panic!("{r:?}"),
            }
        }
    }
}

/// Throughput on prefill-shaped work (issue 3, item 7):
/// `cargo test -p attnlab-sim --release --test unified -- --ignored --nocapture`.
#[test]
#[ignore]
fn prefill_throughput_gflops() {
    let cfg = AttnConfig::new(32, 8, 128, DType::Bf16).unwrap();
    let s = step(&cfg, 16, &[(0, 1024)], true, 1);
    let flops = 4.0 * 32.0 * 128.0 * (1024.0 * 1025.0 / 2.0);
    let report =
        |name: &str, secs: f64| println!("{name}: {secs:.2} s, {:.1} GFLOP/s", flops / secs / 1e9);
    for b in backends() {
        let cache = cache_for(b.as_ref(), &s, &cfg);
        let t0 = std::time::Instant::now();
        b.forward(&s.query, &cache, &s.meta, &cfg).unwrap();
        report(b.name().name(), t0.elapsed().as_secs_f64());
    }
    // The plain f32 attention of the same batch (no tiling), in the same run.
    let cache = cache_for(&TritonAttn::default(), &s, &cfg);
    let t0 = std::time::Instant::now();
    reference::paged_attention_in::<f32>(&s.query, &cache, &s.meta, &cfg).unwrap();
    report("plain f32 attention", t0.elapsed().as_secs_f64());
}

/// TILE_SIZE is independent of the block size: the same logical KV stored in
/// blocks of 16, 48 or 544 (tiles straddling physical blocks, shuffled block
/// ids) gives the same bits.
#[test]
fn tiles_straddle_physical_blocks_without_changing_a_bit() {
    let f = Features {
        window: Some(50),
        softcap: None,
        sinks: true,
        alibi: false,
        causal: true,
    };
    let cfg = config(DType::F16, 2, 3, 80, &f, 4);
    let reqs = [(130usize, 1usize), (70, 25), (0, 90)];
    let outs: Vec<Vec<u32>> = [16usize, 48, 544]
        .iter()
        .map(|&bs| {
            let s = step(&cfg, bs, &reqs, true, 21);
            let b = TritonAttn::default();
            bits(
                &b.forward(&s.query, &cache_for(&b, &s, &cfg), &s.meta, &cfg)
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0], outs[2]);
}
