//! Random attention cases: the one generator behind the GPU diffs
//! (`attnlab diff`), the drawn-case property tests (`sim/tests/drawn.rs`)
//! and `attnlab cases` ([`crate::cases`]).
//!
//! [`draw`] is a mixed batch (decode, extend and prefill rows), a paged cache
//! in a chosen layout whose block table is a random permutation
//! (non-contiguous, with unused random blocks), and a layer config drawn over
//! GQA ratios, head sizes, dtypes (fp8 caches with scales included), sliding
//! windows, soft-cap, sinks and ALiBi. [`draw_with`] adds the [`Regimes`] a
//! caller asks for: other dtype and head-count lists, zero-length queries,
//! block 0 kept as vLLM's null block, and one [`Edge`] regime.
//! `draw(rng, space)` is `draw_with(rng, space, &Regimes::KERNEL_DIFF)` and
//! consumes the stream exactly as the GPU diffs always have, so their cases
//! are unchanged.

use crate::cache::KvCache;
use crate::config::AttnConfig;
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// What a kernel under test accepts; the generator draws inside it.
#[derive(Debug, Clone)]
pub struct CaseSpace {
    pub layouts: &'static [LayoutKind],
    pub block_sizes: &'static [usize],
    pub head_sizes: &'static [usize],
    pub max_reqs: usize,
    /// Longest query of a row (1 for decode-only kernels).
    pub max_query_len: usize,
    pub max_context: usize,
    pub sinks: bool,
    pub alibi: bool,
    pub non_causal: bool,
}

/// A boundary regime `attnlab cases --edge` draws (one per case); each has
/// a tag (`edge:<name>`) the case's metadata carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Edge {
    /// Sliding window of one token: each query sees only itself.
    Window1,
    /// A window that is a whole number of blocks, over rows whose length is
    /// a whole number of blocks: the window starts exactly on a block edge.
    WindowAtBlockEdge,
    /// A window of at most 8 tokens over a context of at least 128: the
    /// first KV tiles of every row are fully masked.
    MaskedFirstTile,
    /// Queries and keys aligned in sign with magnitudes of 8..16 and 2..8:
    /// logits of several hundred.
    ExtremeLogits,
    /// Extreme logits under a soft-cap of 1..4: |s| / softcap > 88.
    SoftcapOverflow,
    /// Every row's KV length is a whole number of blocks.
    LastBlockFull,
    /// merge_attn_states only: LSEs of +inf and -inf on either side.
    InfLse,
}

impl Edge {
    /// The regimes a paged case can carry.
    pub const PAGED: [Edge; 6] = [
        Edge::Window1,
        Edge::WindowAtBlockEdge,
        Edge::MaskedFirstTile,
        Edge::ExtremeLogits,
        Edge::SoftcapOverflow,
        Edge::LastBlockFull,
    ];

    /// `edge:<name>`, as in the `tags` of attn-fixture/2.
    pub fn tag(self) -> &'static str {
        match self {
            Edge::Window1 => "edge:window_1",
            Edge::WindowAtBlockEdge => "edge:window_at_block_edge",
            Edge::MaskedFirstTile => "edge:masked_first_tile",
            Edge::ExtremeLogits => "edge:extreme_logits",
            Edge::SoftcapOverflow => "edge:softcap_overflow",
            Edge::LastBlockFull => "edge:last_block_full",
            Edge::InfLse => "edge:inf_lse",
        }
    }

    /// Whether the regime needs a sliding window (a backend without one cannot draw it).
    pub fn needs_window(self) -> bool {
        matches!(
            self,
            Edge::Window1 | Edge::WindowAtBlockEdge | Edge::MaskedFirstTile
        )
    }
}

/// What [`draw_with`] draws beyond a [`CaseSpace`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regimes {
    /// Model dtypes (query, output; the cache too unless fp8).
    pub dtypes: &'static [DType],
    /// fp8 cache formats: the cache dtype is drawn uniformly from
    /// `[dtype, dtype, fp8_kv...]`; empty = never fp8.
    pub fp8_kv: &'static [DType],
    pub num_kv_heads: &'static [usize],
    pub queries_per_kv: &'static [usize],
    /// Soft-cap drawn at all (false for kernels without the argument).
    pub softcap: bool,
    /// Sliding windows drawn at all.
    pub window: bool,
    /// Rows with no query tokens (a sequence with KV but nothing to compute).
    pub zero_len_queries: bool,
    /// Block 0 is never in a sequence: vLLM's null block (and the table padding).
    pub null_block: bool,
    /// Rejects (returns `None` before drawing values) a draw whose two
    /// caches would take more bytes.
    pub max_cache_bytes: Option<usize>,
    pub edge: Option<Edge>,
}

impl Regimes {
    /// What the GPU kernel diffs draw (their streams depend on these values).
    pub const KERNEL_DIFF: Regimes = Regimes {
        dtypes: &[DType::F16, DType::Bf16],
        fp8_kv: &[DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn],
        num_kv_heads: &[1, 2, 4],
        queries_per_kv: &[1, 2, 4, 8],
        softcap: true,
        window: true,
        zero_len_queries: false,
        null_block: false,
        max_cache_bytes: None,
        edge: None,
    };
}

#[derive(Debug, Clone)]
pub struct AttnCase {
    pub cfg: AttnConfig,
    pub meta: AttentionMetadata,
    pub cache: KvCache,
    /// `[T, Hq, D]`, exact in `cfg.dtype`.
    pub query: Vec<f32>,
    /// The regimes this draw landed in (`zero_len_query`, `chunked_extend`,
    /// `mixed_batch`, `edge:*`), as attn-fixture/2 `tags`.
    pub tags: Vec<String>,
}

impl AttnCase {
    /// One line that identifies the case in a mismatch report.
    pub fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "{} q/{} kv heads x {}, {} -> cache {} ({} bs {}), scales {}/{}, window {:?}, softcap {:?}, sinks {}, alibi {}, causal {}, query_start_loc {:?}, seq_lens {:?}",
            c.num_heads(),
            c.num_kv_heads(),
            c.head_size(),
            c.dtype(),
            c.kv_dtype(),
            self.cache.layout.kind.name(),
            self.meta.block_size(),
            c.k_scale(),
            c.v_scale(),
            c.sliding_window(),
            c.softcap(),
            c.sinks().is_some(),
            c.alibi_slopes().is_some(),
            self.meta.causal(),
            self.meta.query_start_loc(),
            self.meta.seq_lens()
        )
    }

    /// Bytes of its tensors as a captured fixture stores them (query, the
    /// output a capture adds, two caches, table, lengths, per-head vectors).
    pub fn stored_bytes(&self) -> usize {
        let c = &self.cfg;
        2 * self.query.len() * c.dtype().size_bytes()
            + 2 * self.cache.layout.numel() * c.kv_dtype().size_bytes()
            + 4 * (self.meta.block_table().data.len() + 2 * self.meta.seq_lens().len() + 1)
            + 8 * c.num_heads()
    }
}

/// One element of a non-empty list.
pub fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    *xs.choose(rng).expect("non-empty choice")
}

/// Draws one case; `None` when the draw is not a shape the layout accepts
/// (the caller draws again).
pub fn draw(rng: &mut ChaCha8Rng, space: &CaseSpace) -> Option<AttnCase> {
    draw_with(rng, space, &Regimes::KERNEL_DIFF)
}

/// Kind of a batch row: decode (one token on a context), extend (several on
/// a context), prefill (no context), or a row with no query tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    Decode,
    Extend,
    Prefill,
    Empty,
}

/// [`draw`] with `regimes`; `None` when the draw is not a shape the layout accepts.
pub fn draw_with(rng: &mut ChaCha8Rng, space: &CaseSpace, regimes: &Regimes) -> Option<AttnCase> {
    let kind = pick(rng, space.layouts);
    let block_size = pick(rng, space.block_sizes);
    let head_size = pick(rng, space.head_sizes);
    let num_kv_heads = pick(rng, regimes.num_kv_heads);
    let qpk = pick(rng, regimes.queries_per_kv);
    let dtype = pick(rng, regimes.dtypes);
    let mut kv_choices = vec![dtype, dtype];
    kv_choices.extend_from_slice(regimes.fp8_kv);
    let mut kv_dtype = pick(rng, &kv_choices);
    let edge = regimes.edge;
    // Edge regimes are about the softmax, not the fp8 cache: model dtype there.
    if edge.is_some() {
        kv_dtype = dtype;
    }
    let mut cfg = AttnConfig::builder(num_kv_heads * qpk, num_kv_heads, head_size, dtype);
    cfg.kv_dtype = kv_dtype;
    if kv_dtype.is_fp8() {
        cfg.k_scale = rng.gen_range(0.005f32..0.05);
        cfg.v_scale = rng.gen_range(0.005f32..0.05);
    }
    if regimes.window && rng.gen_bool(0.3) {
        cfg.sliding_window = Some(rng.gen_range(1..64));
    }
    if regimes.softcap && rng.gen_bool(0.3) {
        cfg.softcap = Some(rng.gen_range(5.0f32..50.0));
    }
    if space.sinks && rng.gen_bool(0.25) {
        cfg.sinks = Some(
            (0..cfg.num_heads)
                .map(|_| rng.gen_range(-3.0f32..3.0))
                .collect(),
        );
    }
    if space.alibi && rng.gen_bool(0.15) {
        cfg.alibi_slopes = Some(
            (0..cfg.num_heads)
                .map(|h| 2f32.powi(-(h as i32 % 8) - 1))
                .collect(),
        );
    }
    let causal = !(space.non_causal && rng.gen_bool(0.2));
    match edge {
        Some(Edge::Window1) => cfg.sliding_window = Some(1),
        Some(Edge::WindowAtBlockEdge) => {
            cfg.sliding_window = Some(block_size * rng.gen_range(1..=2usize))
        }
        Some(Edge::MaskedFirstTile) => cfg.sliding_window = Some(rng.gen_range(1..=8)),
        Some(Edge::SoftcapOverflow) => cfg.softcap = Some(rng.gen_range(1.0f32..4.0)),
        Some(Edge::ExtremeLogits) => cfg.softcap = None,
        _ => {}
    }
    let cfg = cfg.build().ok()?;

    // Rows: decode (1 token on a context), extend (a few on a context),
    // prefill (no context), and (when asked) rows with no query tokens.
    let num_reqs = rng.gen_range(1..=space.max_reqs);
    let mut qsl = vec![0i32];
    let mut seq_lens = Vec::new();
    let mut kinds = Vec::new();
    for _ in 0..num_reqs {
        let (mut ctx, q, mut k) = match rng.gen_range(0..3) {
            0 => (rng.gen_range(1..=space.max_context), 1, RowKind::Decode),
            1 => (
                rng.gen_range(1..=space.max_context),
                rng.gen_range(1..=space.max_query_len),
                RowKind::Extend,
            ),
            _ => (0, rng.gen_range(1..=space.max_query_len), RowKind::Prefill),
        };
        let mut q = q;
        if regimes.zero_len_queries && rng.gen_bool(0.1) {
            (ctx, q, k) = (ctx.max(1), 0, RowKind::Empty);
        }
        match edge {
            Some(Edge::MaskedFirstTile) if k != RowKind::Empty => {
                ctx = ctx.max(128 + rng.gen_range(0..64));
                if k == RowKind::Prefill {
                    k = RowKind::Extend;
                }
            }
            Some(Edge::WindowAtBlockEdge | Edge::LastBlockFull) => {
                let s = (ctx + q).max(1).next_multiple_of(block_size);
                ctx = s - q;
                if ctx > 0 && k == RowKind::Prefill {
                    k = RowKind::Extend;
                }
            }
            _ => {}
        }
        if k == RowKind::Extend && q == 1 {
            k = RowKind::Decode;
        }
        qsl.push(qsl.last().copied().unwrap_or(0) + q as i32);
        seq_lens.push((ctx + q) as i32);
        kinds.push(k);
    }
    let blocks_per_req: Vec<usize> = seq_lens
        .iter()
        .map(|&s| (s as usize).div_ceil(block_size))
        .collect();
    let spare = rng.gen_range(0..3);
    let first_id = usize::from(regimes.null_block);
    let num_blocks = blocks_per_req.iter().sum::<usize>() + spare + first_id;
    let layout = KvLayout::new(
        kind,
        num_blocks,
        block_size,
        num_kv_heads,
        head_size,
        kv_dtype,
    )
    .ok()?;
    if regimes
        .max_cache_bytes
        .is_some_and(|max| 2 * layout.numel() * kv_dtype.size_bytes() > max)
    {
        return None;
    }
    let mut ids: Vec<i32> = (first_id as i32..num_blocks as i32).collect();
    ids.shuffle(rng);
    let mut next = ids.into_iter();
    let rows: Vec<Vec<i32>> = blocks_per_req
        .iter()
        .map(|&n| next.by_ref().take(n).collect())
        .collect();
    let table = BlockTableTensor::from_rows(&rows);
    let mut slot_mapping = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let (q, s) = ((qsl[i + 1] - qsl[i]) as usize, seq_lens[i] as usize);
        for pos in s - q..s {
            slot_mapping
                .push(row[pos / block_size] as i64 * block_size as i64 + (pos % block_size) as i64);
        }
    }
    let meta = AttentionMetadata::new(
        block_size,
        num_blocks,
        qsl,
        seq_lens,
        table,
        slot_mapping,
        causal,
    )
    .ok()?;
    let (cache, query) = if matches!(edge, Some(Edge::ExtremeLogits | Edge::SoftcapOverflow)) {
        aligned_values(rng, layout, &meta, &cfg)
    } else {
        // fp8 caches hold values around 1/scale so that dequantized K/V are O(1).
        let spread = if kv_dtype.is_fp8() { 200.0 } else { 2.0 };
        let mut values = |n: usize, dt: DType| -> Vec<f32> {
            (0..n)
                .map(|_| dt.round(rng.gen_range(-spread..spread)))
                .collect()
        };
        let cache = KvCache {
            layout,
            k: values(layout.numel(), kv_dtype),
            v: values(layout.numel(), kv_dtype),
        };
        let query: Vec<f32> = (0..meta.num_actual_tokens() * cfg.num_heads() * head_size)
            .map(|_| dtype.round(rng.gen_range(-2.0f32..2.0)))
            .collect();
        (cache, query)
    };
    let tags = row_tags(&kinds, edge);
    Some(AttnCase {
        cfg,
        meta,
        cache,
        query,
        tags,
    })
}

/// Values whose logits are several hundred: every query dimension has a
/// sign shared with every key of half the KV rows (the other half get the
/// opposite sign), magnitudes 8..16 (query) and 2..8 (key). V stays O(1).
fn aligned_values(
    rng: &mut ChaCha8Rng,
    layout: KvLayout,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
) -> (KvCache, Vec<f32>) {
    let d = cfg.head_size();
    let sign: Vec<f32> = (0..d)
        .map(|_| if rng.gen_bool(0.5) { 1.0 } else { -1.0 })
        .collect();
    let mut cache = KvCache::zeros(layout);
    // Fill the cache in NHD order [block, row, head, dim], then lay it out.
    let n = layout.num_blocks * layout.block_size * layout.num_kv_heads;
    let (mut k, mut v) = (Vec::with_capacity(n * d), Vec::with_capacity(n * d));
    for _ in 0..n {
        let flip = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
        for s in &sign {
            k.push(cfg.kv_dtype().round(flip * s * rng.gen_range(2.0f32..8.0)));
            v.push(cfg.kv_dtype().round(rng.gen_range(-2.0f32..2.0)));
        }
    }
    if let Ok(c) = KvCache::from_nhd(&k, &v, layout) {
        cache = c;
    }
    let query = (0..meta.num_actual_tokens() * cfg.num_heads())
        .flat_map(|_| sign.clone())
        .map(|s| cfg.dtype().round(s * rng.gen_range(8.0f32..16.0)))
        .collect();
    (cache, query)
}

/// `zero_len_query`, `chunked_extend`, `mixed_batch` (two or more row kinds
/// among decode, extend, prefill) and the edge tag.
fn row_tags(kinds: &[RowKind], edge: Option<Edge>) -> Vec<String> {
    let mut tags = Vec::new();
    if kinds.contains(&RowKind::Empty) {
        tags.push("zero_len_query".to_string());
    }
    if kinds.contains(&RowKind::Extend) {
        tags.push("chunked_extend".to_string());
    }
    let distinct = [RowKind::Decode, RowKind::Extend, RowKind::Prefill]
        .iter()
        .filter(|k| kinds.contains(k))
        .count();
    if distinct >= 2 {
        tags.push("mixed_batch".to_string());
    }
    if let Some(e) = edge {
        tags.push(e.tag().to_string());
    }
    tags
}
