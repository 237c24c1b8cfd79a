//! Properties of the f64 reference, the oracle every backend and fixture is
//! judged by: it must not depend on how the cache is laid out or blocked, and
//! its LSE must merge partial results into the one-shot answer.

use attnlab_shared::dtype::DType;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::reference::{merge_attn_states, paged_attention, paged_attention_in};
use attnlab_sim::tensor::Flat;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BS: usize = 8;
const D: usize = 16;

/// One non-causal request of `q_len` queries over `seq_len` keys, its blocks
/// a seeded permutation of `num_blocks` f16 blocks (the rest unused).
struct Case {
    cfg: AttnConfig,
    query: Vec<f32>,
    nhd_k: Vec<f32>,
    nhd_v: Vec<f32>,
    blocks: Vec<i32>,
    num_blocks: usize,
    seq_len: usize,
    q_len: usize,
}

fn case(seed: u64, hq: usize, hkv: usize, seq_len: usize, q_len: usize) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let num_blocks = seq_len.div_ceil(BS) + 2;
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| DType::F16.round(rng.gen_range(-2.0f32..2.0)))
            .collect()
    };
    let (nhd_k, nhd_v, query) = (
        draw(num_blocks * BS * hkv * D),
        draw(num_blocks * BS * hkv * D),
        draw(q_len * hq * D),
    );
    let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.gen_range(0..=i));
    }
    ids.truncate(seq_len.div_ceil(BS));
    Case {
        cfg: AttnConfig::new(hq, hkv, D, DType::F16).unwrap(),
        query,
        nhd_k,
        nhd_v,
        blocks: ids,
        num_blocks,
        seq_len,
        q_len,
    }
}

fn meta(c: &Case, blocks: &[i32], seq_len: usize) -> AttentionMetadata {
    let table = BlockTableTensor::from_rows(&[blocks.to_vec()]);
    AttentionMetadata::new(
        BS,
        c.num_blocks,
        vec![0, c.q_len as i32],
        vec![seq_len as i32],
        table,
        vec![-1; c.q_len],
        false,
    )
    .unwrap()
}

fn cache(c: &Case, kind: LayoutKind) -> KvCache {
    let layout =
        KvLayout::new(kind, c.num_blocks, BS, c.cfg.num_kv_heads(), D, DType::F16).unwrap();
    KvCache::from_nhd(&c.nhd_k, &c.nhd_v, layout).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn reference_is_bit_identical_across_kv_layouts(seed in any::<u64>(), seq_len in 1usize..40, q_len in 1usize..4, group in 1usize..4) {
        let c = case(seed, 2 * group, 2, seq_len.max(q_len), q_len);
        let m = meta(&c, &c.blocks, c.seq_len);
        let nhd = paged_attention(&c.query, &cache(&c, LayoutKind::Nhd), &m, &c.cfg).unwrap();
        for kind in [LayoutKind::RocmPaged, LayoutKind::AiterShuffled] {
            let other = paged_attention(&c.query, &cache(&c, kind), &m, &c.cfg).unwrap();
            prop_assert_eq!(&nhd, &other, "{:?}", kind);
        }
    }

    #[test]
    fn reference_split_kv_merged_by_lse_equals_one_shot(seed in any::<u64>(), prefix_blocks in 1usize..4, suffix_len in 2usize..30) {
        let seq_len = prefix_blocks * BS + suffix_len;
        let c = case(seed, 4, 2, seq_len, 2);
        let full = paged_attention(&c.query, &cache(&c, LayoutKind::Nhd), &meta(&c, &c.blocks, seq_len), &c.cfg).unwrap();
        let kv = cache(&c, LayoutKind::Nhd);
        let prefix = paged_attention(&c.query, &kv, &meta(&c, &c.blocks[..prefix_blocks], prefix_blocks * BS), &c.cfg).unwrap();
        let suffix = paged_attention(&c.query, &kv, &meta(&c, &c.blocks[prefix_blocks..], suffix_len), &c.cfg).unwrap();
        let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<_>>();
        let merged = merge_attn_states(&f32s(&prefix.out.flat()), &f32s(&prefix.lse.flat()), &f32s(&suffix.out.flat()), &f32s(&suffix.lse.flat()), 4, D).unwrap();
        for (a, b) in merged.out.iter().zip(&full.out) {
            prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{} vs {}", a, b);
        }
        for (a, b) in merged.lse.iter().zip(&full.lse) {
            prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "lse {} vs {}", a, b);
        }
    }

    #[test]
    fn gqa_equals_mha_with_each_kv_head_repeated(seed in any::<u64>(), seq_len in 1usize..30, group in 2usize..5) {
        let c = case(seed, group, 1, seq_len, 1);
        let gqa = paged_attention(&c.query, &cache(&c, LayoutKind::Nhd), &meta(&c, &c.blocks, seq_len), &c.cfg).unwrap();
        // MHA: kv head h of every token is the single kv head of the GQA case.
        let rep = |x: &[f32]| x.chunks(D).flat_map(|row| std::iter::repeat_n(row, group).flatten().copied()).collect::<Vec<f32>>();
        let mha = Case { cfg: AttnConfig::new(group, group, D, DType::F16).unwrap(), nhd_k: rep(&c.nhd_k), nhd_v: rep(&c.nhd_v), query: c.query.clone(), blocks: c.blocks.clone(), ..c };
        let out = paged_attention(&mha.query, &cache(&mha, LayoutKind::Nhd), &meta(&mha, &mha.blocks, seq_len), &mha.cfg).unwrap();
        prop_assert_eq!(gqa, out);
    }
}

#[test]
fn f32_reference_tracks_the_f64_one() {
    let c = case(3, 4, 2, 37, 3);
    let (kv, m) = (cache(&c, LayoutKind::Nhd), meta(&c, &c.blocks, 37));
    let f64r = paged_attention(&c.query, &kv, &m, &c.cfg).unwrap();
    let f32r = paged_attention_in::<f32>(&c.query, &kv, &m, &c.cfg).unwrap();
    for (a, b) in f32r.out.iter().zip(&f64r.out) {
        approx::assert_abs_diff_eq!(*a as f64, *b, epsilon = 1e-5);
    }
}
