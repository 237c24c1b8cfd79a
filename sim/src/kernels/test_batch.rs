//! Test batches shared by the tensor-core twins' unit tests: requests
//! `(ctx, q)` whose blocks are handed out in reverse (a non-contiguous block
//! table), with deterministic data exact in the dtypes.

use crate::cache::KvCache;
use crate::config::AttnConfig;
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};

/// A batch of requests `(ctx, q)` in a `kind` cache of `block_size`-key
/// blocks (in `cfg.kv_dtype()`), its blocks numbered from the top down;
/// `null_block` keeps block 0 unused (as vLLM's null block). K and V hold
/// `round_kv(sin(0.618 i + salt) * 1.5)`, rounded to `kv_values`; the query
/// the same in `cfg.dtype()`.
pub(crate) fn reversed_blocks(
    cfg: &AttnConfig,
    kind: LayoutKind,
    block_size: usize,
    reqs: &[(usize, usize)],
    null_block: bool,
    kv_values: DType,
) -> (Vec<f32>, KvCache, AttentionMetadata) {
    let per: Vec<usize> = reqs
        .iter()
        .map(|&(c, q)| (c + q).div_ceil(block_size).max(1))
        .collect();
    let blocks: usize = per.iter().sum::<usize>() + usize::from(null_block);
    let width = per.iter().copied().max().unwrap_or(1);
    let mut next = blocks as i32;
    let rows: Vec<Vec<i32>> = per
        .iter()
        .map(|&n| {
            (0..width)
                .map(|i| {
                    if i < n {
                        next -= 1;
                        next
                    } else {
                        0
                    }
                })
                .collect()
        })
        .collect();
    let mut qsl = vec![0i32];
    for &(_, q) in reqs {
        qsl.push(qsl.last().unwrap() + q as i32);
    }
    let t = *qsl.last().unwrap() as usize;
    let meta = AttentionMetadata::new(
        block_size,
        blocks,
        qsl,
        reqs.iter().map(|&(c, q)| (c + q) as i32).collect(),
        BlockTableTensor::from_rows(&rows),
        vec![-1; t],
        true,
    )
    .unwrap();
    let (hk, d) = (cfg.num_kv_heads(), cfg.head_size());
    let layout = KvLayout::new(kind, blocks, block_size, hk, d, cfg.kv_dtype()).unwrap();
    let val = |i: usize, salt: f32, dt: DType| dt.round(((i as f32) * 0.618 + salt).sin() * 1.5);
    let cache = KvCache {
        layout,
        k: (0..layout.numel())
            .map(|i| val(i, 0.3, kv_values))
            .collect(),
        v: (0..layout.numel())
            .map(|i| val(i, 1.7, kv_values))
            .collect(),
    };
    let query = (0..t * cfg.num_heads() * d)
        .map(|i| val(i, 2.9, cfg.dtype()))
        .collect();
    (query, cache, meta)
}

/// The tensor-core twins' agreement with their fma kernel: every element
/// within `0.02 + 0.02 |fma|` (the rounding of P to the query dtype and the
/// matrix instruction's truncation), naming `what` and the pair on failure.
pub(crate) fn assert_within_rounding(tc: &[f32], fma: &[f32], what: &str) {
    for (a, b) in tc.iter().zip(fma) {
        assert!((a - b).abs() <= 0.02 + 0.02 * b.abs(), "{what}: {a} vs {b}");
    }
}
