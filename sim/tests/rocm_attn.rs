//! ROCM_ATTN and its kernels as specifications: the backend equals the f64
//! reference on random mixed batches (with the seed era's window and
//! soft-cap semantics), the partitioned HIP decode equals the single-pass
//! Triton decode within tolerance, every kernel is bit-identical across
//! thread counts and across cache layouts, and vLLM's rejections hold.

use attnlab_shared::dtype::DType;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_sim::backends::rocm_attn::{DecodeKernel, RocmAttn, RocmAttnProfile};
use attnlab_sim::backends::{by_name, AttentionBackend};
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::{AttnConfig, AttnConfigBuilder};
use attnlab_sim::fixture::{self, Case};
use attnlab_sim::kernels::paged_decode::{
    paged_attention_2d, paged_attention_ll4mi, PARTITION_SIZE_ROCM,
};
use attnlab_sim::kernels::prefix_prefill::context_attention_fwd;
use attnlab_sim::kernels::softmax::{dot, DimOffsets, KvTile};
use attnlab_sim::reference::{self, compare, Tolerance};
use attnlab_sim::tensor::Flat;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
mod common;
use common::shuffled_block_rows;

/// A batch: its metadata, query, and a cache filled with random K/V in
/// canonical NHD order (laid into any layout on demand).
struct Batch {
    meta: AttentionMetadata,
    query: Vec<f32>,
    nhd_k: Vec<f32>,
    nhd_v: Vec<f32>,
    num_blocks: usize,
}

/// `reqs` are (context_len, query_len). Blocks are a shuffled permutation of
/// 1..num_blocks with spare unused blocks; block 0 is never used.
fn batch(cfg: &AttnConfig, block_size: usize, reqs: &[(usize, usize)], seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (num_blocks, rows) = shuffled_block_rows(&mut rng, reqs, block_size, 1 + 3);
    let mut qsl = vec![0i32];
    for &(_, q) in reqs {
        qsl.push(qsl.last().unwrap() + q as i32);
    }
    let seq_lens = reqs.iter().map(|&(c, q)| (c + q) as i32).collect();
    let t = *qsl.last().unwrap() as usize;
    let meta = AttentionMetadata::new(
        block_size,
        num_blocks,
        qsl,
        seq_lens,
        BlockTableTensor::from_rows(&rows),
        vec![-1; t],
        true,
    )
    .unwrap();
    let mut rand_vec = |n: usize, dtype: DType| -> Vec<f32> {
        (0..n)
            .map(|_| dtype.round(rng.gen_range(-1.0f32..1.0)))
            .collect()
    };
    let query = rand_vec(t * cfg.num_heads() * cfg.head_size(), cfg.dtype());
    let n = num_blocks * block_size * cfg.num_kv_heads() * cfg.head_size();
    // Stored values: exact in the cache dtype (fp8: x / scale quantized).
    let nhd_k = rand_vec(n, DType::F32)
        .into_iter()
        .map(|x| cfg.kv_dtype().round(x / cfg.k_scale()))
        .collect();
    let nhd_v = rand_vec(n, DType::F32)
        .into_iter()
        .map(|x| cfg.kv_dtype().round(x / cfg.v_scale()))
        .collect();
    Batch {
        meta,
        query,
        nhd_k,
        nhd_v,
        num_blocks,
    }
}

impl Batch {
    fn cache(&self, cfg: &AttnConfig, kind: LayoutKind) -> KvCache {
        let layout = KvLayout::new(
            kind,
            self.num_blocks,
            self.meta.block_size(),
            cfg.num_kv_heads(),
            cfg.head_size(),
            cfg.kv_dtype(),
        )
        .unwrap();
        KvCache::from_nhd(&self.nhd_k, &self.nhd_v, layout).unwrap()
    }
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

/// The backend's output against the f64 reference for `ref_cfg`.
fn assert_matches_reference(out: &[f32], b: &Batch, cache: &KvCache, ref_cfg: &AttnConfig) {
    let r = reference::paged_attention(&b.query, cache, &b.meta, ref_cfg).unwrap();
    let c = compare(out, &r.out, Tolerance::for_dtype(ref_cfg.dtype())).unwrap();
    assert!(c.passed(), "{c:?} for {ref_cfg:?}");
}

fn config(dtype: DType, hq: usize, hkv: usize, d: usize) -> AttnConfig {
    AttnConfig::new(hq, hkv, d, dtype).unwrap()
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F16), Just(DType::Bf16), Just(DType::F32)]
}

fn reqs_strategy() -> impl Strategy<Value = Vec<(usize, usize)>> {
    // (context, query): decode rows, extends and fresh prefills mixed.
    prop::collection::vec(
        (
            0usize..300,
            prop_oneof![Just(1usize), 1usize..40, 60usize..140],
        ),
        1..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn backend_matches_f64_reference_on_mixed_batches(
        dtype in dtype_strategy(),
        block_size in prop_oneof![Just(16usize), Just(32), Just(48), Just(544)],
        (hq, hkv) in prop_oneof![Just((4usize, 4usize)), Just((8, 2)), Just((8, 1)), Just((12, 2))],
        d in prop_oneof![Just(64usize), Just(128), Just(32)],
        window in prop::option::of(2usize..200),
        reqs in reqs_strategy(),
        seed in any::<u64>(),
    ) {
        let cfg = AttnConfigBuilder { sliding_window: window, ..config(dtype, hq, hkv, d).to_builder() }.build().unwrap();
        let b = batch(&cfg, block_size, &reqs, seed);
        let backend = RocmAttn::default();
        let cache = b.cache(&cfg, LayoutKind::RocmPaged);
        let out = backend.forward(&b.query, &cache, &b.meta, &cfg).unwrap();
        // Seed era: a window of W reaches the kernels as W - 1.
        let ref_cfg = AttnConfigBuilder { sliding_window: backend.kernel_window(&cfg), ..cfg.to_builder() }.build().unwrap();
        assert_matches_reference(&out, &b, &cache, &ref_cfg);
    }

    #[test]
    fn partitioned_decode_matches_single_pass_and_is_thread_count_invariant(
        dtype in prop_oneof![Just(DType::F16), Just(DType::Bf16)],
        block_size in prop_oneof![Just(16usize), Just(32)],
        qpk in 1usize..=8,
        seq_lens in prop::collection::vec(1usize..900, 1..4),
        seed in any::<u64>(),
    ) {
        let cfg = config(dtype, 2 * qpk, 2, 64);
        let reqs: Vec<(usize, usize)> = seq_lens.iter().map(|&s| (s - 1, 1)).collect();
        let b = batch(&cfg, block_size, &reqs, seed);
        let cache = b.cache(&cfg, LayoutKind::RocmPaged);
        let n = b.query.len();
        let run_ll4mi = || { let mut o = vec![0f32; n]; paged_attention_ll4mi(&b.query, &cache, &b.meta, &cfg, PARTITION_SIZE_ROCM, &mut o).unwrap(); o };
        let (one, two) = (with_threads(1, run_ll4mi), with_threads(2, run_ll4mi));
        prop_assert_eq!(bits(&one), bits(&two));
        let mut single = vec![0f32; n];
        paged_attention_2d(&b.query, &cache, &b.meta, &cfg, &mut single).unwrap();
        let c = compare(&one, &single, Tolerance::for_dtype(dtype)).unwrap();
        prop_assert!(c.passed(), "{:?}", c);
    }
}

#[test]
fn seed_era_window_attends_w_minus_1_keys_and_v0_33_attends_w() {
    let cfg = AttnConfigBuilder {
        sliding_window: Some(24),
        ..config(DType::F32, 4, 2, 64).to_builder()
    }
    .build()
    .unwrap();
    let b = batch(&cfg, 16, &[(70, 1), (30, 45), (0, 90)], 7);
    let cache = b.cache(&cfg, LayoutKind::RocmPaged);
    for (profile, seen) in [(RocmAttnProfile::SeedEra, 23), (RocmAttnProfile::V0_33, 24)] {
        let out = RocmAttn { profile }
            .forward(&b.query, &cache, &b.meta, &cfg)
            .unwrap();
        assert_matches_reference(
            &out,
            &b,
            &cache,
            &AttnConfigBuilder {
                sliding_window: Some(seen),
                ..cfg.to_builder()
            }
            .build()
            .unwrap(),
        );
    }
}

#[test]
fn seed_era_window_of_one_disables_the_window() {
    let cfg = AttnConfigBuilder {
        sliding_window: Some(1),
        ..config(DType::F32, 2, 1, 32).to_builder()
    }
    .build()
    .unwrap();
    let b = batch(&cfg, 32, &[(50, 1), (10, 20)], 3);
    let cache = b.cache(&cfg, LayoutKind::RocmPaged);
    let out = RocmAttn::default()
        .forward(&b.query, &cache, &b.meta, &cfg)
        .unwrap();
    assert_matches_reference(
        &out,
        &b,
        &cache,
        &AttnConfigBuilder {
            sliding_window: None,
            ..cfg.to_builder()
        }
        .build()
        .unwrap(),
    );
}

#[test]
fn softcap_is_ignored_as_vllm_rocm_attn_ignores_it() {
    let cfg = AttnConfigBuilder {
        softcap: Some(2.0),
        scale: 2.0,
        ..config(DType::F32, 4, 4, 64).to_builder()
    }
    .build()
    .unwrap();
    let b = batch(&cfg, 16, &[(40, 1), (20, 33)], 11);
    let cache = b.cache(&cfg, LayoutKind::RocmPaged);
    let out = RocmAttn::default()
        .forward(&b.query, &cache, &b.meta, &cfg)
        .unwrap();
    assert_matches_reference(
        &out,
        &b,
        &cache,
        &AttnConfigBuilder {
            softcap: None,
            ..cfg.to_builder()
        }
        .build()
        .unwrap(),
    );
    let capped = reference::paged_attention(&b.query, &cache, &b.meta, &cfg).unwrap();
    assert!(
        !compare(&out, &capped.out, Tolerance::for_dtype(DType::F32))
            .unwrap()
            .passed(),
        "soft-cap must change this batch"
    );
}

#[test]
fn kernels_apply_softcap_when_the_config_carries_it() {
    // AITER's paged_attention_v1 soft-caps; the kernels do when asked.
    let cfg = AttnConfigBuilder {
        softcap: Some(3.0),
        scale: 1.5,
        ..config(DType::F32, 4, 2, 64).to_builder()
    }
    .build()
    .unwrap();
    let b = batch(&cfg, 16, &[(300, 1), (40, 1), (20, 50)], 5);
    let cache = b.cache(&cfg, LayoutKind::RocmPaged);
    let n = b.query.len();
    let (mut two_d, mut ll4mi) = (vec![0f32; n], vec![0f32; n]);
    context_attention_fwd(&b.query, &cache, &b.meta, &cfg, true, &mut two_d).unwrap();
    ll4mi.copy_from_slice(&two_d);
    paged_attention_2d(&b.query, &cache, &b.meta, &cfg, &mut two_d).unwrap();
    paged_attention_ll4mi(&b.query, &cache, &b.meta, &cfg, 64, &mut ll4mi).unwrap();
    assert_matches_reference(&two_d, &b, &cache, &cfg);
    assert_matches_reference(&ll4mi, &b, &cache, &cfg);
}

#[test]
fn alibi_batches_match_the_reference() {
    let slopes = vec![0.5, 0.25, 0.125, 0.0625];
    for dtype in [DType::F32, DType::F16] {
        let cfg = AttnConfigBuilder {
            alibi_slopes: Some(slopes.clone()),
            ..config(dtype, 4, 2, 64).to_builder()
        }
        .build()
        .unwrap();
        let b = batch(&cfg, 32, &[(200, 1), (150, 70), (0, 130)], 17);
        let cache = b.cache(&cfg, LayoutKind::RocmPaged);
        let out = RocmAttn::default()
            .forward(&b.query, &cache, &b.meta, &cfg)
            .unwrap();
        assert_matches_reference(&out, &b, &cache, &cfg);
    }
}

#[test]
fn fp8_cache_written_by_write_kv_matches_the_reference() {
    for kv_dtype in [DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn] {
        let cfg = AttnConfigBuilder {
            kv_dtype,
            k_scale: 0.37,
            v_scale: 0.61,
            ..config(DType::Bf16, 8, 2, 128).to_builder()
        }
        .build()
        .unwrap();
        let b = batch(&cfg, 16, &[(100, 1), (64, 20)], 23);
        let backend = RocmAttn::default();
        let mut cache = b.cache(&cfg, LayoutKind::RocmPaged);
        // Rewrite the last tokens of every request through the backend's writer.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let t = b.meta.num_actual_tokens();
        let row = cfg.num_kv_heads() * cfg.head_size();
        let key: Vec<f32> = (0..t * row)
            .map(|_| cfg.dtype().round(rng.gen_range(-1.0f32..1.0)))
            .collect();
        let value: Vec<f32> = (0..t * row)
            .map(|_| cfg.dtype().round(rng.gen_range(-1.0f32..1.0)))
            .collect();
        let slots: Vec<i64> = (0..b.meta.num_reqs())
            .flat_map(|i| {
                let m = &b.meta;
                (m.context_len(i)..m.seq_len(i)).map(move |p| {
                    let (blk, r) = m.kv_location(i, p);
                    (blk * m.block_size() + r) as i64
                })
            })
            .collect();
        backend
            .write_kv(&mut cache, &key, &value, &slots, &cfg)
            .unwrap();
        let out = backend.forward(&b.query, &cache, &b.meta, &cfg).unwrap();
        assert_eq!(backend.decode_kernel(&b.meta, &cfg), DecodeKernel::Ll4mi);
        assert_matches_reference(&out, &b, &cache, &cfg);
    }
}

#[test]
fn every_kernel_is_bit_identical_across_layouts_and_thread_counts() {
    let cfg = config(DType::Bf16, 8, 2, 64);
    let b = batch(&cfg, 16, &[(400, 1), (33, 1), (90, 40), (0, 150)], 29);
    let n = b.query.len();
    let run = |kind: LayoutKind, threads: usize| {
        let cache = b.cache(&cfg, kind);
        with_threads(threads, || {
            let (mut p, mut d2, mut ll) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            context_attention_fwd(&b.query, &cache, &b.meta, &cfg, true, &mut p).unwrap();
            paged_attention_2d(&b.query, &cache, &b.meta, &cfg, &mut d2).unwrap();
            paged_attention_ll4mi(
                &b.query,
                &cache,
                &b.meta,
                &cfg,
                PARTITION_SIZE_ROCM,
                &mut ll,
            )
            .unwrap();
            [bits(&p), bits(&d2), bits(&ll)]
        })
    };
    let want = run(LayoutKind::RocmPaged, 1);
    assert_eq!(run(LayoutKind::RocmPaged, 2), want);
    assert_eq!(
        run(LayoutKind::AiterShuffled, 2),
        want,
        "shuffled layout must give the x-packed bits"
    );
    assert_eq!(run(LayoutKind::Nhd, 1), want);
}

#[test]
fn kv_tile_qk_is_bit_identical_to_dot_per_key() {
    // Two KV heads (GQA 1, the smallest valid config with a head 1 to read).
    let cfg = config(DType::F32, 2, 2, 64);
    let b = batch(&cfg, 16, &[(40, 1)], 31);
    let cache = b.cache(&cfg, LayoutKind::RocmPaged);
    let dims = DimOffsets::new(&cache.layout);
    let locs: Vec<(usize, usize)> = (0..27).map(|t| b.meta.kv_location(0, t)).collect();
    let mut tile = KvTile::new(32, 64);
    tile.gather_paged(&cache, &dims, 1, &locs, |k| k, |v| v);
    let mut out = vec![0f32; 32];
    let q = &b.query[..64]; // token 0, head 0
    tile.qk(q, &mut out);
    for (j, &(blk, r)) in locs.iter().enumerate() {
        let k: Vec<f32> = (0..64).map(|d| cache.k_at(blk, r, 1, d)).collect();
        assert_eq!(out[j].to_bits(), dot(q, &k).to_bits(), "key {j}");
        assert_eq!(
            tile.v_row(j),
            (0..64)
                .map(|d| cache.v_at(blk, r, 1, d))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn decode_routes_to_ll4mi_only_inside_the_custom_envelope() {
    let b = RocmAttn::default();
    let meta = |bs: usize| batch(&config(DType::F16, 8, 2, 64), bs, &[(20, 1)], 1).meta;
    let route = |cfg: &AttnConfig, bs: usize| b.decode_kernel(&meta(bs), cfg);
    assert_eq!(
        route(&config(DType::F16, 8, 2, 128), 16),
        DecodeKernel::Ll4mi
    );
    assert_eq!(
        route(&config(DType::Bf16, 8, 2, 64), 32),
        DecodeKernel::Ll4mi
    );
    assert_eq!(
        route(&config(DType::F32, 8, 2, 128), 16),
        DecodeKernel::Triton2d,
        "fp32 query"
    );
    assert_eq!(
        route(&config(DType::F16, 8, 2, 96), 16),
        DecodeKernel::Triton2d,
        "head size 96"
    );
    assert_eq!(
        route(&config(DType::F16, 8, 2, 128), 544),
        DecodeKernel::Triton2d,
        "block 544"
    );
    assert_eq!(
        route(&config(DType::F16, 34, 2, 128), 16),
        DecodeKernel::Triton2d,
        "gqa 17"
    );
    let windowed = AttnConfigBuilder {
        sliding_window: Some(64),
        ..config(DType::F16, 8, 2, 128).to_builder()
    }
    .build()
    .unwrap();
    assert_eq!(
        route(&windowed, 16),
        DecodeKernel::Triton2d,
        "sliding window"
    );
}

#[test]
fn plan_names_vllm_kernels_with_their_shapes() {
    let cfg = config(DType::F16, 8, 2, 128);
    let b = batch(&cfg, 16, &[(600, 1), (10, 200)], 2);
    let plan = RocmAttn::default().plan(&b.meta, &cfg);
    let names: Vec<&str> = plan.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "reshape_and_cache",
            "_fwd_kernel",
            "paged_attention_ll4mi_QKV_mfma4_kernel",
            "paged_attention_ll4mi_reduce_kernel"
        ]
    );
    assert_eq!(plan[1].shapes["grid"], vec![2, 8, 2]); // cdiv(200, BLOCK_M = 128)
    assert_eq!(plan[2].shapes["tmp_out"], vec![2, 8, 3, 128]); // cdiv(601, 256) partitions
    assert_eq!(
        plan[0].shapes["key_cache"],
        vec![b.num_blocks, 2, 16, 16, 8]
    );
    let odd = batch(&cfg, 544, &[(600, 1)], 2);
    let names: Vec<String> = RocmAttn::default()
        .plan(&odd.meta, &cfg)
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        names,
        [
            "triton_reshape_and_cache_flash",
            "kernel_paged_attention_2d"
        ]
    );
}

#[test]
fn rejects_block_size_8_with_vllms_message() {
    let e = RocmAttn::default()
        .check(&config(DType::F16, 8, 2, 128), 8)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Block size must be a multiple of 16.") && e.contains('8'),
        "{e}"
    );
    assert!(RocmAttn::default().kernel_block_size(8).is_err());
}

#[test]
fn rejects_head_size_72_with_vllms_message() {
    let e = RocmAttn::default()
        .check(&config(DType::F16, 8, 2, 72), 16)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Head size 72 is not supported by RocmAttention. Supported head sizes are: [32, 64, 80, 96, 128, 160, 192, 224, 256]"),
        "{e}"
    );
}

#[test]
fn rejects_sinks_as_the_selector_does() {
    let cfg = AttnConfigBuilder {
        sinks: Some(vec![0.5; 4]),
        ..config(DType::F16, 4, 2, 64).to_builder()
    }
    .build()
    .unwrap();
    let e = RocmAttn::default().check(&cfg, 16).unwrap_err().to_string();
    assert!(e.contains("attention sinks not supported"), "{e}");
}

#[test]
fn seed_era_kernel_block_sizes_split_manager_blocks() {
    let b = RocmAttn::default();
    let got: Vec<usize> = [16, 32, 48, 64, 544, 1088]
        .iter()
        .map(|&s| b.kernel_block_size(s).unwrap())
        .collect();
    assert_eq!(got, [16, 32, 16, 32, 544, 544]);
    assert_eq!(
        RocmAttn {
            profile: RocmAttnProfile::V0_33
        }
        .kernel_block_size(48)
        .unwrap(),
        48
    );
}

#[test]
fn registered_under_vllms_name() {
    assert_eq!(
        by_name("ROCM_ATTN".parse().unwrap()).unwrap().name().name(),
        "ROCM_ATTN"
    );
}

#[test]
fn forward_rejects_a_query_of_the_wrong_length() {
    let cfg = config(DType::F16, 4, 2, 64);
    let b = batch(&cfg, 16, &[(5, 3)], 1);
    let cache = b.cache(&cfg, LayoutKind::RocmPaged);
    let e = RocmAttn::default()
        .forward(&b.query[1..], &cache, &b.meta, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("query length"), "{e}");
}

#[test]
fn vllm_chunked_prefill_paged_decode_fixtures_replay_within_their_tolerance() {
    // fixtures/rocm_mix_*: vLLM's prefix_prefill + kernel_paged_attention_2d on an H200.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("rocm_mix_")
        {
            continue;
        }
        let fx = fixture::load(&path).unwrap();
        let Case::Paged(case) = fx.case else {
            panic!("{}: not a paged_attention case", fx.file)
        };
        let cfg = &case.cfg;
        let layout = KvLayout::new(
            LayoutKind::RocmPaged,
            case.meta.num_blocks(),
            case.meta.block_size(),
            cfg.num_kv_heads(),
            cfg.head_size(),
            cfg.kv_dtype(),
        )
        .unwrap();
        let cache =
            KvCache::from_nhd(&case.key_cache.flat(), &case.value_cache.flat(), layout).unwrap();
        let query = case.query.flat();
        let mut out = vec![0f32; query.len()];
        context_attention_fwd(&query, &cache, &case.meta, cfg, true, &mut out).unwrap();
        paged_attention_2d(&query, &cache, &case.meta, cfg, &mut out).unwrap();
        let c = compare(
            &out,
            case.output.as_ref().unwrap(),
            Tolerance::new(fx.header.atol, fx.header.rtol),
        )
        .unwrap();
        assert!(c.passed(), "{}: {c:?}", fx.file);
        replayed += 1;
    }
    assert_eq!(
        replayed, 3,
        "the three rocm_mix fixtures of fixtures/MANIFEST.md"
    );
}
