//! FlexAttention as vLLM's FLEX_ATTENTION backend drives it (vllm-backends.md
//! §16.1): PyTorch's compiled `flex_attention` over the whole NHD cache, with
//! the batch structure expressed as a `mask_mod` and a block-sparse
//! `BlockMask`.
//!
//! The KV axis is the *physical* cache (`num_blocks * block_size` slots);
//! `mask_mod(q_idx, kv_idx)` translates back to logical positions:
//! ```text
//! req  = doc_id[q_idx];  lq = q_idx - query_start_loc[req] + context_len[req]
//! lb   = physical_to_logical[req][kv_idx / B]     // -1: not this request's block
//! lkv  = lb * B + kv_idx % B
//! keep = lb >= 0 && lkv < seq_len[req] && (!causal || lkv <= lq) && (!W || |lq - lkv| < W)
//! ```
//! `physical_to_logical` is a scatter-amax of logical block indices per
//! physical block, so a physical block used twice resolves to its latest
//! logical index, as in vLLM.
//!
//! Block mask (torch `create_block_mask` semantics): query rows in sparse
//! blocks of [`SPARSE_Q_BLOCK_SIZE`], keys in sparse blocks of one cache
//! block. Each (q block, kv block) is empty (skipped), full (every pair
//! kept: `mask_mod` not evaluated) or partial. Kernel loop per query row,
//! grid `(q tiles, Hq)`:
//! ```text
//! m_i = -inf, l_i = 0, acc = 0
//! for kv block in kv_indices (partial, ascending physical id),
//!              then full_kv_indices (full, ascending physical id):
//!     for BLOCK_N tiles of the block, ascending:
//!         s_j = score(fma-chain q . k_j)       // base 2, scale * LOG2E folded once
//!         partial blocks only: s_j = -inf unless mask_mod
//!         RowState::update(P -> V dtype)       // Inductor's exp2 online softmax,
//!                                             // fully-masked rows guarded by m = 0
//! out = acc / l  (l == 0 -> 0), rounded to the query dtype
//! ```
//! The partial-then-full order (not ascending KV order) is the template's
//! and changes rounding. BLOCK_N is vLLM's kernel option: 64 (32 for f32),
//! halved on ROCm (64 KiB of LDS < 144 KiB), lowered until it divides the
//! cache block size, at least 16. Deliberate differences: exp2 is the
//! contract's exp2c; `tl.dot` accumulation is an ascending fma chain; the
//! inverse table scatters only each request's used blocks (vLLM's padding
//! entries point at the never-used null block 0).

use crate::addressing::{check_extent, AddressedKernel, CacheExtent};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::simd;
use crate::kernels::softmax::{visible, DimOffsets, KvTile, RowState, ScoreParams};
use crate::numerics::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;
use rayon::prelude::*;

/// Query rows per block-mask entry (vLLM's `q_block_size`).
pub const SPARSE_Q_BLOCK_SIZE: usize = 16;

/// Sparse q blocks (of one request) one task walks together, sharing each
/// gathered K/V tile: 8 x 16 rows x the GQA group's heads.
const UNITS_PER_TASK: usize = 8;
/// Query tokens of a task's units, at most, for it to walk every kv head.
const SHORT_GROUP_TOKENS: usize = 16;

/// The kernel's BLOCK_N for a dtype and cache block size (see module doc).
pub fn flex_block_n(dtype: DType, block_size: usize) -> usize {
    let mut b = (if dtype == DType::F32 { 32 } else { 64 }) / 2; // ROCm: shared memory < 144 KiB
    while b > 16 && !block_size.is_multiple_of(b) {
        b /= 2;
    }
    b.max(16)
}

/// The batch's `mask_mod`, with the inverse block table it closes over.
#[derive(Debug, Clone)]
pub struct FlexMask<'a> {
    meta: &'a AttentionMetadata,
    /// `doc_ids`: the request of every query row.
    doc_id: Vec<usize>,
    /// `[num_reqs][num_blocks]`: logical block index, -1 if unused.
    physical_to_logical: Vec<Vec<i64>>,
    causal: bool,
    window: Option<usize>,
}

impl<'a> FlexMask<'a> {
    pub fn new(meta: &'a AttentionMetadata, window: Option<usize>) -> Self {
        let doc_id = (0..meta.num_reqs())
            .flat_map(|i| std::iter::repeat_n(i, meta.query_len(i)))
            .collect();
        let physical_to_logical = (0..meta.num_reqs())
            .map(|i| {
                let mut p2l = vec![-1i64; meta.num_blocks()];
                for j in 0..meta.seq_len(i).div_ceil(meta.block_size()) {
                    let b = meta.block_table().block(i, j);
                    p2l[b] = p2l[b].max(j as i64);
                }
                p2l
            })
            .collect();
        FlexMask {
            meta,
            doc_id,
            physical_to_logical,
            causal: meta.causal(),
            window,
        }
    }

    /// `mask_mod(q_idx, kv_idx)` on the flattened query rows and physical slots.
    #[inline]
    pub fn keep(&self, q_idx: usize, kv_idx: usize) -> bool {
        let bs = self.meta.block_size();
        let req = self.doc_id[q_idx];
        let lb = self.physical_to_logical[req][kv_idx / bs];
        if lb < 0 {
            return false;
        }
        let lkv = lb as usize * bs + kv_idx % bs;
        let lq = q_idx - self.meta.query_start_loc()[req] as usize + self.meta.context_len(req);
        lkv < self.meta.seq_len(req)
            && visible(lkv, lq, self.causal, None)
            && self.window.is_none_or(|w| lq.abs_diff(lkv) < w)
    }

    /// `keep` of query row `q_idx` over one physical block, as the slots it
    /// keeps: `Some(lo..hi)` rows of the block (possibly empty) when the
    /// block is one of the row's request's, `None` when it is not (every
    /// `keep(q_idx, block * B + r)` false). `keep`'s conditions are each an
    /// interval of the logical key (`lkv < seq_len`, causal `lkv <= lq`,
    /// window `|lq - lkv| < W`), so the kept rows are one interval;
    /// `kept_rows_are_keep` checks it against `keep` slot by slot.
    #[inline]
    pub fn kept_rows(&self, q_idx: usize, block: usize) -> Option<std::ops::Range<usize>> {
        let bs = self.meta.block_size();
        let req = self.doc_id[q_idx];
        let lb = self.physical_to_logical[req][block];
        if lb < 0 {
            return None;
        }
        let lq = q_idx - self.meta.query_start_loc()[req] as usize + self.meta.context_len(req);
        // Logical keys kept: [lo, hi).
        let mut hi = self.meta.seq_len(req);
        if self.causal {
            hi = hi.min(lq + 1);
        }
        let mut lo = 0;
        if let Some(w) = self.window {
            // |lq - lkv| < w: lq - w < lkv < lq + w.
            lo = (lq + 1).saturating_sub(w);
            hi = hi.min(lq.saturating_add(w));
        }
        let first = lb as usize * bs;
        let (a, b) = (lo.clamp(first, first + bs), hi.clamp(first, first + bs));
        Some(a - first..b.max(a) - first)
    }
}

/// The block-sparse mask: per sparse q block, the partial and the full kv
/// blocks (physical ids, ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMask {
    pub kv_indices: Vec<Vec<usize>>,
    pub full_kv_indices: Vec<Vec<usize>>,
}

impl BlockMask {
    /// Classifies every (q block, kv block) pair by evaluating `mask_mod`
    /// over it; only blocks of the q block's requests can be non-empty.
    pub fn build(mask: &FlexMask) -> Self {
        let meta = mask.meta;
        let bs = meta.block_size();
        let (parts, fulls): (Vec<_>, Vec<_>) =
            (0..meta.num_actual_tokens().div_ceil(SPARSE_Q_BLOCK_SIZE))
                .map(|qb| {
                    let rows = qb * SPARSE_Q_BLOCK_SIZE
                        ..((qb + 1) * SPARSE_Q_BLOCK_SIZE).min(meta.num_actual_tokens());
                    let mut cands: Vec<usize> = rows
                        .clone()
                        .flat_map(|r| {
                            let i = mask.doc_id[r];
                            (0..meta.seq_len(i).div_ceil(bs))
                                .map(move |j| meta.block_table().block(i, j))
                        })
                        .collect();
                    cands.sort_unstable();
                    cands.dedup();
                    let (mut partial, mut full) = (vec![], vec![]);
                    for b in cands {
                        // Kept (row, slot) pairs: each row's kept slots are one interval.
                        let kept: usize = rows
                            .clone()
                            .filter_map(|r| mask.kept_rows(r, b).map(|k| k.len()))
                            .sum();
                        if kept == rows.len() * bs {
                            full.push(b);
                        } else if kept > 0 {
                            partial.push(b);
                        }
                    }
                    (partial, full)
                })
                .unzip();
        BlockMask {
            kv_indices: parts,
            full_kv_indices: fulls,
        }
    }
}

/// One FlexAttention launch, validated once: an NHD cache of the query
/// dtype with the config's heads and head size and the metadata's blocks,
/// a `[T, Hq, D]` query, a block size BLOCK_N divides, and metadata that is
/// consistent by construction ([`AttentionMetadata`]). The emulator,
/// both executors and the GPU launcher take it; everything is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct FlexArgs<'a> {
    query: &'a [f32],
    cache: &'a KvCache,
    meta: &'a AttentionMetadata,
    cfg: &'a AttnConfig,
}

impl<'a> FlexArgs<'a> {
    pub fn new(
        query: &'a [f32],
        cache: &'a KvCache,
        meta: &'a AttentionMetadata,
        cfg: &'a AttnConfig,
    ) -> Result<Self> {
        let l = cache.layout;
        if l.kind != LayoutKind::Nhd
            || l.dtype != cfg.dtype()
            || l.num_kv_heads != cfg.num_kv_heads()
            || l.head_size != cfg.head_size()
        {
            return Err(Error::invalid(
                "cache layout",
                format!(
                    "{} {} x {} heads x head size {}",
                    l.kind.name(),
                    l.dtype,
                    l.num_kv_heads,
                    l.head_size
                ),
                format!(
                    "flex_attention reads an nhd cache of {} with {} kv heads x head size {}",
                    cfg.dtype(),
                    cfg.num_kv_heads(),
                    cfg.head_size()
                ),
            ));
        }
        if l.block_size != meta.block_size() || l.num_blocks < meta.num_blocks() {
            return Err(Error::invalid(
                "cache blocks",
                format!("{} x {}", l.num_blocks, l.block_size),
                format!(
                    "metadata needs {} x {}",
                    meta.num_blocks(),
                    meta.block_size()
                ),
            ));
        }
        let (hq, d) = (cfg.num_heads(), cfg.head_size());
        if query.len() != meta.num_actual_tokens() * hq * d {
            return Err(Error::invalid(
                "query length",
                query.len(),
                format!(
                    "must be num_tokens * num_heads * head_size = {}",
                    meta.num_actual_tokens() * hq * d
                ),
            ));
        }
        let bs = meta.block_size();
        if !bs.is_multiple_of(flex_block_n(cfg.dtype(), bs)) {
            return Err(Error::invalid(
                "block_size",
                bs,
                "FlexAttention needs a multiple of 16 (BLOCK_N must divide the cache block)",
            ));
        }
        if cache.k.len() != l.numel() || cache.v.len() != l.numel() {
            return Err(Error::invalid(
                "cache tensors",
                format!("{} / {} elements", cache.k.len(), cache.v.len()),
                format!("layout holds {}", l.numel()),
            ));
        }
        Ok(FlexArgs {
            query,
            cache,
            meta,
            cfg,
        })
    }
    /// `[T, Hq, D]` in `cfg.dtype`.
    pub fn query(&self) -> &'a [f32] {
        self.query
    }
    pub fn cache(&self) -> &'a KvCache {
        self.cache
    }
    pub fn meta(&self) -> &'a AttentionMetadata {
        self.meta
    }
    pub fn cfg(&self) -> &'a AttnConfig {
        self.cfg
    }
}

/// `flex_attention(q, k_cache, v_cache, block_mask=..., enable_gqa=Hkv != Hq)`
/// for the batch's query rows (`[T, Hq, D]`) over an NHD cache of the query
/// dtype. Windows come from `cfg.sliding_window`; causality from `meta`.
pub fn flex_attention(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
) -> Result<Vec<f32>> {
    flex(&FlexArgs::new(query, cache, meta, cfg)?)
}

/// [`flex_attention`] over validated arguments.
pub fn flex(args: &FlexArgs) -> Result<Vec<f32>> {
    let FlexArgs {
        query,
        cache,
        meta,
        cfg,
    } = *args;
    let l = cache.layout;
    let (hq, hk, d) = (cfg.num_heads(), cfg.num_kv_heads(), cfg.head_size());
    let mask = FlexMask::new(meta, cfg.sliding_window());
    let block_mask = BlockMask::build(&mask);
    let (bs, bn, qpk) = (
        meta.block_size(),
        flex_block_n(cfg.dtype(), meta.block_size()),
        cfg.queries_per_kv(),
    );
    let score = ScoreParams::new(cfg.scale(), None);
    let dims = DimOffsets::new(&l);
    // The K/V offset arithmetic over this cache, in the kernel's width.
    let extent = CacheExtent {
        num_blocks: l.num_blocks,
        block_size: l.block_size,
        row_elems: l.num_kv_heads * l.head_size,
    };
    check_extent(AddressedKernel::FlexPaged, extent, cfg.faults())?;

    // Units: (sparse q block, one request's rows in it). One task per
    // (run of up to UNITS_PER_TASK consecutive units of one request, kv
    // head): the rows' (row, head) pairs share each K/V tile, as the
    // kernel's programs of one kv head read the same blocks, so a tile is
    // gathered once for all of them (`GroupCtx::run` keeps every row's own
    // block order). Rows of different requests keep no key of the same
    // block, so they run apart, and a decode batch gives one task per
    // (request, kv head).
    let mut units: Vec<(usize, std::ops::Range<usize>)> = vec![];
    for qb in 0..block_mask.kv_indices.len() {
        let rows = qb * SPARSE_Q_BLOCK_SIZE
            ..((qb + 1) * SPARSE_Q_BLOCK_SIZE).min(meta.num_actual_tokens());
        let mut a = rows.start;
        for r in rows.clone() {
            if r + 1 == rows.end || mask.doc_id[r + 1] != mask.doc_id[a] {
                units.push((qb, a..r + 1));
                a = r + 1;
            }
        }
    }
    let mut groups: Vec<std::ops::Range<usize>> = vec![];
    for u in 0..units.len() {
        match groups.last_mut() {
            Some(grp)
                if grp.len() < UNITS_PER_TASK
                    && mask.doc_id[units[grp.start].1.start] == mask.doc_id[units[u].1.start] =>
            {
                grp.end = u + 1
            }
            _ => groups.push(u..u + 1),
        }
    }
    // A short group (a decode's request) walks every kv head in one task,
    // head by head at each tile: the heads of a token sit side by side in
    // the NHD cache, so its blocks are read front to back instead of one
    // head's 512-byte rows strided across them.
    let tasks: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> = groups
        .iter()
        .flat_map(|grp| {
            let tokens: usize = units[grp.clone()].iter().map(|(_, rows)| rows.len()).sum();
            match tokens <= SHORT_GROUP_TOKENS {
                true => vec![(grp.clone(), 0..hk)],
                false => (0..hk).map(|g| (grp.clone(), g..g + 1)).collect(),
            }
        })
        .collect();
    let ctx = GroupCtx {
        query,
        cache,
        mask: &mask,
        block_mask: &block_mask,
        dims: &dims,
        score,
        hq,
        d,
        bs,
        bn,
        qpk,
        dtype: cfg.dtype(),
    };
    let shared = SharedBlocks::new(&ctx, meta, hk);
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map_init(
            || GroupScratch::new(bn, d, qpk),
            |scratch, (grp, heads)| {
                ctx.run(&units[grp.clone()], heads.clone(), scratch, shared.as_ref())
            },
        )
        .collect();
    let mut out = vec![0.0f32; meta.num_actual_tokens() * hq * d];
    for ((grp, heads), part) in tasks.iter().zip(&parts) {
        let rows = heads.clone().flat_map(|g| {
            units[grp.clone()]
                .iter()
                .flat_map(move |(_, rows)| rows.clone().map(move |r| (r, g)))
        });
        for ((r, g), vals) in rows.zip(part.chunks_exact(qpk * d)) {
            out[(r * hq + g * qpk) * d..][..qpk * d].copy_from_slice(vals);
        }
    }
    Ok(out)
}

/// A tile's K^T (`kt[dd * ld + j]`: key j's dim dd) and V rows (`v[j *
/// ld_v..][..d]`), gathered into a task's [`KvTile`] or laid out once per
/// launch ([`SharedBlocks`]): the same values either way.
#[derive(Clone, Copy)]
struct TileRef<'t> {
    kt: &'t [f32],
    ld: usize,
    v: &'t [f32],
    ld_v: usize,
    d: usize,
}

impl<'t> TileRef<'t> {
    fn of(tile: &'t KvTile) -> Self {
        let (kt, v) = tile.parts();
        TileRef {
            kt,
            ld: tile.tile_size,
            v,
            ld_v: tile.head_size,
            d: tile.head_size,
        }
    }

    /// `out[r * out_stride + j] = dot(qs[r], k_j)` for keys `j < n`
    /// ([`KvTile::qk_rows`]'s chains).
    fn qk_rows(&self, qs: &[&[f32]], out: &mut [f32], out_stride: usize, n: usize) {
        simd::dots_rows(
            simd::SimdPath::active(),
            qs,
            &self.kt[..self.d * self.ld],
            self.ld,
            0,
            n,
            out,
            out_stride,
        );
    }

    fn v_row(&self, j: usize) -> &'t [f32] {
        &self.v[j * self.ld_v..j * self.ld_v + self.d]
    }
}

/// Query tokens of the longest request from which a launch lays out every
/// block its block mask lists once ([`SharedBlocks`]).
const SHARED_MIN_TOKENS: usize = 256;

/// K^T and V of every (kv head, cache block) a prefill launch's block mask
/// lists, laid out once per launch in tiles of BLOCK_N keys (a long
/// prefill's tasks read each block again and again): block `blk`'s tile t
/// of kv head g at `kt[((slot[blk] * hk + g) * tiles + t) * d * ld..]`, its
/// key r's V row at `v[((slot[blk] * hk + g) * bs + r) * ld_v..]`; leading
/// dimensions padded as flash_varlen's. Changes where values are read
/// from, not one value.
struct SharedBlocks {
    slot: Vec<usize>,
    hk: usize,
    tiles: usize,
    bs: usize,
    d: usize,
    ld: usize,
    ld_v: usize,
    kt: Vec<f32>,
    v: Vec<f32>,
}

impl SharedBlocks {
    fn new(ctx: &GroupCtx, meta: &AttentionMetadata, hk: usize) -> Option<Self> {
        if meta.max_query_len() < SHARED_MIN_TOKENS
            || !ctx.dims.v.iter().enumerate().all(|(i, &o)| o == i)
        {
            return None;
        }
        let (bs, bn, d) = (ctx.bs, ctx.bn, ctx.d);
        let bm = ctx.block_mask;
        let mut blocks: Vec<usize> = bm
            .kv_indices
            .iter()
            .chain(&bm.full_kv_indices)
            .flatten()
            .copied()
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        let mut slot = vec![usize::MAX; ctx.cache.layout.num_blocks];
        for (i, &b) in blocks.iter().enumerate() {
            *slot.get_mut(b)? = i;
        }
        let tiles = bs / bn;
        let (ld, ld_v) = (
            super::flash_varlen::padded(bn),
            super::flash_varlen::padded(d),
        );
        let mut kt = vec![0.0f32; blocks.len() * hk * tiles * d * ld];
        let mut v = vec![0.0f32; blocks.len() * hk * bs * ld_v];
        let path = simd::SimdPath::active();
        kt.par_chunks_mut(tiles * d * ld)
            .zip(v.par_chunks_mut(bs * ld_v))
            .enumerate()
            .for_each(|(i, (kt, v))| {
                let (blk, g) = (blocks[i / hk], i % hk);
                let l = &ctx.cache.layout;
                for (t, kt) in kt.chunks_exact_mut(d * ld).enumerate() {
                    let r0 = t * bn;
                    let mut j0 = 0;
                    while j0 + 8 <= bn {
                        let bases: [usize; 8] =
                            std::array::from_fn(|i| l.k_offset(blk, r0 + j0 + i, g, 0));
                        let done =
                            simd::gather_kt8(path, &ctx.cache.k, &bases, &ctx.dims.k, kt, ld, j0);
                        for (i, &b) in bases.iter().enumerate() {
                            for (dd, &ko) in ctx.dims.k.iter().enumerate().skip(done) {
                                kt[dd * ld + j0 + i] = ctx.cache.k[b + ko];
                            }
                        }
                        j0 += 8;
                    }
                    for j in j0..bn {
                        let b = l.k_offset(blk, r0 + j, g, 0);
                        for (dd, &ko) in ctx.dims.k.iter().enumerate() {
                            kt[dd * ld + j] = ctx.cache.k[b + ko];
                        }
                    }
                }
                for (r, row) in v.chunks_exact_mut(ld_v).enumerate() {
                    let o = l.v_offset(blk, r, g, 0);
                    row[..d].copy_from_slice(&ctx.cache.v[o..o + d]);
                }
            });
        Some(SharedBlocks {
            slot,
            hk,
            tiles,
            bs,
            d,
            ld,
            ld_v,
            kt,
            v,
        })
    }

    /// Tile `t` of block `blk`, kv head `g`, if laid out.
    fn tile(&self, g: usize, blk: usize, t: usize) -> Option<TileRef<'_>> {
        let s = *self.slot.get(blk)?;
        if s == usize::MAX {
            return None;
        }
        let kt0 = ((s * self.hk + g) * self.tiles + t) * self.d * self.ld;
        let v0 = ((s * self.hk + g) * self.bs + t * (self.bs / self.tiles)) * self.ld_v;
        Some(TileRef {
            kt: &self.kt[kt0..kt0 + self.d * self.ld],
            ld: self.ld,
            v: &self.v[v0..],
            ld_v: self.ld_v,
            d: self.d,
        })
    }
}

/// Rows (tokens x heads of a kv head) a task steps per tile up to which it
/// prefetches the next tile.
const PREFETCH_ROWS: usize = 16;

/// What every (q block, kv head) task of one launch reads.
struct GroupCtx<'a> {
    query: &'a [f32],
    cache: &'a KvCache,
    mask: &'a FlexMask<'a>,
    block_mask: &'a BlockMask,
    dims: &'a DimOffsets,
    score: ScoreParams,
    hq: usize,
    d: usize,
    bs: usize,
    bn: usize,
    qpk: usize,
    dtype: DType,
}

/// A task's reusable buffers (one set per rayon worker split).
struct GroupScratch {
    tile: KvTile,
    locs: Vec<(usize, usize)>,
    /// The dots, then the scores, of a run of live rows: `[row, head][BLOCK_N]`.
    s: Vec<f32>,
    /// All -inf: a row that keeps no key of the tile.
    masked: Vec<f32>,
    /// Per member unit of the block, per row: the block rows it keeps
    /// (`None`: none).
    kept: Vec<Vec<Option<std::ops::Range<usize>>>>,
    /// The task's units whose block list holds the current block.
    members: Vec<usize>,
}

impl GroupScratch {
    fn new(bn: usize, d: usize, qpk: usize) -> Self {
        GroupScratch {
            tile: KvTile::new(bn, d),
            locs: Vec::with_capacity(bn),
            s: vec![0.0; SPARSE_Q_BLOCK_SIZE * qpk * bn],
            masked: vec![f32::NEG_INFINITY; bn],
            kept: Vec::with_capacity(UNITS_PER_TASK),
            members: Vec::with_capacity(UNITS_PER_TASK),
        }
    }
}

impl GroupCtx<'_> {
    /// The kernel loop (module doc) for the query heads of each kv head of
    /// `heads` and each unit's rows `rows` of its q block `qb` (whose block
    /// lists the rows walk): `[kv head, row, head of the group, D]` (kv
    /// heads ascending, then the units' rows in order), rounded. At each
    /// tile the kv heads take their steps one after another.
    ///
    /// The units walk their lists in lockstep: the union of their partial
    /// lists ascending, then the union of their full lists ascending; a
    /// tile is gathered once and stepped by every unit whose list holds its
    /// block (the others do not see it), so each row still takes its own
    /// partial blocks, then its own full blocks, each ascending.
    ///
    /// A row keeps no key of a tile when the tile's block is not its
    /// request's or the mask drops every key: its step sees only -inf
    /// scores and changes nothing ([`RowState::all_masked_step_is_identity`]),
    /// so it is skipped; the live rows of the tile, in runs of consecutive
    /// rows, take the step together ([`RowState::update_rows`]), each its
    /// own chains, sharing the tile's K and V loads.
    fn run(
        &self,
        units: &[(usize, std::ops::Range<usize>)],
        heads: std::ops::Range<usize>,
        scr: &mut GroupScratch,
        shared: Option<&SharedBlocks>,
    ) -> Vec<f32> {
        let (d, bn, bs, qpk, hq) = (self.d, self.bn, self.bs, self.qpk, self.hq);
        // Decode-shaped tasks (few rows per tile) stream K/V and prefetch
        // the next tile; a prefill task spends long enough on each tile
        // that the hints only cost instructions.
        let prefetch =
            units.iter().map(|(_, rows)| rows.len()).sum::<usize>() * qpk <= PREFETCH_ROWS;
        // Per (kv head, unit), heads outer.
        let nu = units.len();
        let mut states: Vec<Vec<RowState>> = heads
            .clone()
            .flat_map(|_| units.iter())
            .map(|(_, rows)| {
                (0..rows.len() * qpk)
                    .map(|_| RowState::new(d, None))
                    .collect()
            })
            .collect();
        let qs: Vec<Vec<&[f32]>> = heads
            .clone()
            .flat_map(|g| units.iter().map(move |u| (g, u)))
            .map(|(g, (_, rows))| {
                rows.clone()
                    .flat_map(|r| (g * qpk..(g + 1) * qpk).map(move |h| (r, h)))
                    .map(|(r, h)| &self.query[(r * hq + h) * d..][..d])
                    .collect()
            })
            .collect();
        for partial in [true, false] {
            let list = |qb: usize| match partial {
                true => &self.block_mask.kv_indices[qb],
                false => &self.block_mask.full_kv_indices[qb],
            };
            let mut union: Vec<usize> = units
                .iter()
                .flat_map(|(qb, _)| list(*qb))
                .copied()
                .collect();
            union.sort_unstable();
            union.dedup();
            for (i, &blk) in union.iter().enumerate() {
                // The units whose list holds the block, with their rows' kept slots.
                scr.members.clear();
                scr.members.extend(
                    (0..units.len()).filter(|&u| list(units[u].0).binary_search(&blk).is_ok()),
                );
                if scr.kept.len() < scr.members.len() {
                    scr.kept.resize(scr.members.len(), vec![]);
                }
                for (kept, &u) in scr.kept.iter_mut().zip(&scr.members) {
                    kept.clear();
                    kept.extend(units[u].1.clone().map(|r| match partial {
                        true => self.mask.kept_rows(r, blk),
                        false => Some(0..bs), // a full block: mask_mod is not evaluated
                    }));
                }
                for n0 in (0..bs).step_by(bn) {
                    let tile_keys = n0..n0 + bn;
                    // The tile's kept keys of row k, relative to n0 (empty: dead).
                    let live = |kept: &Option<std::ops::Range<usize>>| {
                        kept.as_ref().map_or(0..0, |kr| {
                            let a = kr.start.clamp(tile_keys.start, tile_keys.end);
                            let b = kr.end.clamp(a, tile_keys.end);
                            a - n0..b - n0
                        })
                    };
                    let members = scr.members.len();
                    if scr.kept[..members]
                        .iter()
                        .flatten()
                        .all(|k| live(k).is_empty())
                    {
                        for (gi, _) in heads.clone().enumerate() {
                            for (m, &u) in scr.members.iter().enumerate() {
                                let n_rows = units[u].1.len();
                                self.dead_rows(
                                    &mut states[gi * nu + u],
                                    &scr.kept[m],
                                    &live,
                                    TileRef::of(&scr.tile),
                                    &scr.masked,
                                    0..n_rows,
                                );
                            }
                        }
                        continue;
                    }
                    for (gi, g) in heads.clone().enumerate() {
                        let laid_out = shared.and_then(|sh| sh.tile(g, blk, n0 / bn));
                        if laid_out.is_none() {
                            scr.locs.clear();
                            scr.locs.extend(tile_keys.clone().map(|r| (blk, r)));
                            scr.tile
                                .gather_paged_exact(self.cache, self.dims, g, &scr.locs);
                        }
                        let tile = laid_out.unwrap_or_else(|| TileRef::of(&scr.tile));
                        // The next tile's keys (this block's next, or the next
                        // block's first) start their way in meanwhile.
                        let next = match (n0 + bn < bs, union.get(i + 1)) {
                            (true, _) => Some((blk, n0 + bn)),
                            (false, Some(&b)) => Some((b, 0)),
                            (false, None) => None,
                        };
                        if let Some((b, r0)) = next.filter(|_| prefetch) {
                            scr.locs.clear();
                            scr.locs.extend((r0..r0 + bn).map(|r| (b, r)));
                            KvTile::prefetch_paged(self.cache, self.dims, g, &scr.locs);
                        }
                        for (m, &u) in scr.members.iter().enumerate() {
                            self.live_rows(
                                &mut states[gi * nu + u],
                                &qs[gi * nu + u],
                                &scr.kept[m],
                                &live,
                                tile,
                                &scr.masked,
                                &mut scr.s,
                            );
                        }
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(states.iter().map(Vec::len).sum::<usize>() * d);
        for st in states.iter().flatten() {
            out.extend(st.normalized());
        }
        simd::round_slice(self.dtype, &mut out);
        out
    }

    /// One tile's step for one unit's rows: runs of consecutive live rows
    /// step together; dead rows take the all -inf step ([`Self::dead_rows`]).
    #[allow(clippy::too_many_arguments)]
    fn live_rows(
        &self,
        states: &mut [RowState],
        qs: &[&[f32]],
        kept: &[Option<std::ops::Range<usize>>],
        live: &impl Fn(&Option<std::ops::Range<usize>>) -> std::ops::Range<usize>,
        tile: TileRef<'_>,
        masked: &[f32],
        s_buf: &mut [f32],
    ) {
        let (bn, qpk) = (self.bn, self.qpk);
        let n_rows = kept.len();
        let mut k = 0;
        while k < n_rows {
            if live(&kept[k]).is_empty() {
                self.dead_rows(states, kept, live, tile, masked, k..k + 1);
                k += 1;
                continue;
            }
            let a = k;
            while k < n_rows && !live(&kept[k]).is_empty() {
                k += 1;
            }
            let run = a * qpk..k * qpk;
            let s = &mut s_buf[..run.len() * bn];
            tile.qk_rows(&qs[run.clone()], s, bn, bn);
            for (kk, s_row) in s.chunks_exact_mut(qpk * bn).enumerate() {
                let kr = live(&kept[a + kk]);
                for s_h in s_row.chunks_exact_mut(bn) {
                    s_h[..kr.start].fill(f32::NEG_INFINITY);
                    s_h[kr.end..].fill(f32::NEG_INFINITY);
                    self.score.score_slice(&mut s_h[kr.clone()]);
                }
            }
            RowState::update_rows(&mut states[run], s, bn, bn, |j| tile.v_row(j), self.dtype);
        }
    }

    /// The all -inf step of the dead rows among `rows`: skipped where it
    /// is an identity, run where it is not (a row whose max is +inf).
    fn dead_rows(
        &self,
        states: &mut [RowState],
        kept: &[Option<std::ops::Range<usize>>],
        live: &impl Fn(&Option<std::ops::Range<usize>>) -> std::ops::Range<usize>,
        tile: TileRef<'_>,
        masked: &[f32],
        rows: std::ops::Range<usize>,
    ) {
        let qpk = self.qpk;
        for k in rows {
            if !live(&kept[k]).is_empty() {
                continue;
            }
            for st in &mut states[k * qpk..(k + 1) * qpk] {
                if !st.all_masked_step_is_identity() {
                    st.update(masked, |j| tile.v_row(j), self.dtype);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnlab_shared::metadata::BlockTableTensor;

    fn meta(q: usize, ctx: usize, table: Vec<i32>, causal: bool) -> AttentionMetadata {
        let nb = *table.iter().max().unwrap() as usize + 1;
        AttentionMetadata::new(
            16,
            nb,
            vec![0, q as i32],
            vec![(q + ctx) as i32],
            BlockTableTensor::from_rows(&[table]),
            vec![-1; q],
            causal,
        )
        .unwrap()
    }

    #[test]
    fn block_n_divides_the_cache_block_and_is_halved_on_rocm() {
        assert_eq!(flex_block_n(DType::Bf16, 16), 16);
        assert_eq!(flex_block_n(DType::Bf16, 32), 32);
        assert_eq!(flex_block_n(DType::Bf16, 544), 32);
        assert_eq!(flex_block_n(DType::Bf16, 48), 16);
        assert_eq!(flex_block_n(DType::F32, 64), 16);
    }

    #[test]
    fn mask_translates_physical_slots_to_logical_positions() {
        // Logical block 0 -> physical 3, logical 1 -> physical 1; 20 tokens, the last 4 are queries.
        let m = meta(4, 16, vec![3, 1], true);
        let mask = FlexMask::new(&m, None);
        assert!(mask.keep(0, 3 * 16)); // query at position 16 sees position 0
        assert!(mask.keep(0, 16)); // ... and itself (logical 16 = physical block 1, row 0)
        assert!(!mask.keep(0, 17)); // not position 17 (causal)
        assert!(!mask.keep(3, 16 + 4)); // position 20 is past seq_len
        assert!(!mask.keep(0, 2 * 16)); // block 2 is not this request's
        let windowed = FlexMask::new(&m, Some(2));
        assert!(windowed.keep(1, 16) && !windowed.keep(1, 3 * 16 + 15));
    }

    #[test]
    fn block_mask_separates_full_and_partial_blocks() {
        let m = meta(4, 16, vec![3, 1], true);
        let bm = BlockMask::build(&FlexMask::new(&m, None));
        assert_eq!(
            (bm.kv_indices, bm.full_kv_indices),
            (vec![vec![1]], vec![vec![3]])
        );
        let enc = meta(4, 0, vec![5], false); // non-causal: the 4 keys of block 5, 12 slots past seq_len
        assert_eq!(
            BlockMask::build(&FlexMask::new(&enc, None)).kv_indices,
            vec![vec![5]]
        );
    }

    /// The kernel loop as first written: one task per q block, every
    /// (row, head) stepped on its own against every tile of the q block's
    /// lists, dead rows included (all -inf scores), the mask evaluated slot
    /// by slot. The restructured [`flex`] must give its bits.
    fn one_row_reference(
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Vec<f32> {
        let (hq, hk, d) = (cfg.num_heads(), cfg.num_kv_heads(), cfg.head_size());
        let mask = FlexMask::new(meta, cfg.sliding_window());
        let block_mask = one_by_one_block_mask(&mask);
        let (bs, bn, qpk) = (
            meta.block_size(),
            flex_block_n(cfg.dtype(), meta.block_size()),
            cfg.queries_per_kv(),
        );
        let score = ScoreParams::new(cfg.scale(), None);
        let dims = DimOffsets::new(&cache.layout);
        let blocks: Vec<Vec<f32>> = (0..block_mask.kv_indices.len())
            .into_par_iter()
            .map(|qb| {
                let rows = qb * SPARSE_Q_BLOCK_SIZE
                    ..((qb + 1) * SPARSE_Q_BLOCK_SIZE).min(meta.num_actual_tokens());
                let mut states: Vec<RowState> = (0..rows.len() * hq)
                    .map(|_| RowState::new(d, None))
                    .collect();
                let mut tile = KvTile::new(bn, d);
                let (mut s, mut locs) = (vec![0.0f32; bn], Vec::with_capacity(bn));
                // Per kv head g: the (row, head) pairs of its group, in the loop's
                // order, and their dots against the tile, computed together.
                let group_qs = |g: usize| -> Vec<&[f32]> {
                    rows.clone()
                        .flat_map(|r| {
                            (g * qpk..(g + 1) * qpk).map(move |h| &query[(r * hq + h) * d..][..d])
                        })
                        .collect()
                };
                let qs: Vec<Vec<&[f32]>> = (0..hk).map(group_qs).collect();
                let mut dots = vec![0.0f32; rows.len() * qpk * bn];
                // Per tile: which keys each row keeps, and whether it keeps any.
                // A row that keeps none gets all -inf scores whatever its dots
                // are, so its QK is not computed (its update still runs).
                let mut keep = vec![false; rows.len() * bn];
                let mut alive = vec![false; rows.len()];
                let mut live_qs: Vec<&[f32]> = Vec::with_capacity(rows.len() * qpk);
                let masked = vec![f32::NEG_INFINITY; bn];
                let lists = [
                    (&block_mask.kv_indices[qb], true),
                    (&block_mask.full_kv_indices[qb], false),
                ];
                for (list, partial) in lists {
                    for &blk in list {
                        for n0 in (0..bs).step_by(bn) {
                            locs.clear();
                            locs.extend((n0..n0 + bn).map(|r| (blk, r)));
                            for (k, r) in rows.clone().enumerate() {
                                let kr = &mut keep[k * bn..(k + 1) * bn];
                                for (j, kj) in kr.iter_mut().enumerate() {
                                    *kj = !partial || mask.keep(r, blk * bs + n0 + j);
                                }
                                alive[k] = kr.contains(&true);
                            }
                            let any_alive = alive.contains(&true);
                            for (g, group_qs) in qs.iter().enumerate() {
                                if any_alive {
                                    tile.gather_paged_exact(cache, &dims, g, &locs);
                                    live_qs.clear();
                                    for (row_qs, _) in
                                        group_qs.chunks_exact(qpk).zip(&alive).filter(|(_, &a)| a)
                                    {
                                        live_qs.extend_from_slice(row_qs);
                                    }
                                    tile.qk_rows(&live_qs, &mut dots, bn);
                                }
                                let mut dots = dots.chunks_exact(bn);
                                for k in 0..rows.len() {
                                    for h in g * qpk..(g + 1) * qpk {
                                        let s: &[f32] = if alive[k] {
                                            s.copy_from_slice(
                                                dots.next().expect("one per live (row, head)"),
                                            );
                                            for (sj, &kj) in s.iter_mut().zip(&keep[k * bn..]) {
                                                *sj = if kj {
                                                    score.score(*sj, 0.0)
                                                } else {
                                                    f32::NEG_INFINITY
                                                };
                                            }
                                            &s
                                        } else {
                                            &masked
                                        };
                                        states[k * hq + h].update(
                                            s,
                                            |j| tile.v_row(j),
                                            cfg.dtype(),
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
                states
                    .iter()
                    .flat_map(|st| st.normalized().into_iter().map(|x| cfg.dtype().round(x)))
                    .collect()
            })
            .collect();
        blocks.concat()
    }

    /// `BlockMask::build` with `mask_mod` evaluated slot by slot.
    fn one_by_one_block_mask(mask: &FlexMask) -> BlockMask {
        let meta = mask.meta;
        let bs = meta.block_size();
        let (mut kv_indices, mut full_kv_indices) = (vec![], vec![]);
        for qb in 0..meta.num_actual_tokens().div_ceil(SPARSE_Q_BLOCK_SIZE) {
            let rows = qb * SPARSE_Q_BLOCK_SIZE
                ..((qb + 1) * SPARSE_Q_BLOCK_SIZE).min(meta.num_actual_tokens());
            let (mut partial, mut full) = (vec![], vec![]);
            for b in 0..meta.num_blocks() {
                let kept = rows
                    .clone()
                    .flat_map(|r| (b * bs..(b + 1) * bs).map(move |t| (r, t)))
                    .filter(|&(r, t)| mask.keep(r, t))
                    .count();
                if kept == rows.len() * bs {
                    full.push(b);
                } else if kept > 0 {
                    partial.push(b);
                }
            }
            kv_indices.push(partial);
            full_kv_indices.push(full);
        }
        BlockMask {
            kv_indices,
            full_kv_indices,
        }
    }

    /// A random batch: 1-5 requests (decode, extend, prefill), blocks
    /// drawn from a shuffled pool (some shared between requests), random
    /// K/V and queries (a few huge ones, so some scores overflow to inf).
    fn random_batch(
        seed: u64,
        cfg: &AttnConfig,
        block_size: usize,
        causal: bool,
    ) -> (Vec<f32>, KvCache, AttentionMetadata) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n_req = rng.gen_range(1..=5);
        let reqs: Vec<(usize, usize)> = (0..n_req)
            .map(|_| match rng.gen_range(0..3) {
                0 => (1, rng.gen_range(1..70)),
                1 => (rng.gen_range(2..20), rng.gen_range(1..50)),
                _ => (rng.gen_range(1..40), 0),
            })
            .collect();
        let per_req: Vec<usize> = reqs
            .iter()
            .map(|&(q, c)| (q + c).div_ceil(block_size))
            .collect();
        let num_blocks = per_req.iter().sum::<usize>() + 3;
        let mut pool: Vec<i32> = (0..num_blocks as i32).collect();
        for i in (1..pool.len()).rev() {
            pool.swap(i, rng.gen_range(0..=i));
        }
        let mut next = 0;
        let rows: Vec<Vec<i32>> = per_req
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        // Now and then a block another request also uses.
                        if next > 0 && rng.gen_bool(0.1) {
                            pool[rng.gen_range(0..next)]
                        } else {
                            next += 1;
                            pool[next - 1]
                        }
                    })
                    .collect()
            })
            .collect();
        let mut qsl = vec![0i32];
        for &(q, _) in &reqs {
            qsl.push(qsl.last().unwrap() + q as i32);
        }
        let t = *qsl.last().unwrap() as usize;
        let meta = AttentionMetadata::new(
            block_size,
            num_blocks,
            qsl,
            reqs.iter().map(|&(q, c)| (q + c) as i32).collect(),
            BlockTableTensor::from_rows(&rows),
            vec![-1; t],
            causal,
        )
        .unwrap();
        let layout = attnlab_shared::layout::KvLayout::new(
            LayoutKind::Nhd,
            num_blocks,
            block_size,
            cfg.num_kv_heads(),
            cfg.head_size(),
            cfg.dtype(),
        )
        .unwrap();
        let mut cache = KvCache::zeros(layout);
        let draw = |rng: &mut rand_chacha::ChaCha8Rng| {
            let x: f32 = if rng.gen_bool(0.002) {
                3e19
            } else {
                rng.gen_range(-2.0..2.0)
            };
            cfg.dtype().round(x)
        };
        for x in cache.k.iter_mut().chain(cache.v.iter_mut()) {
            *x = draw(&mut rng);
        }
        let query = (0..t * cfg.num_heads() * cfg.head_size())
            .map(|_| draw(&mut rng))
            .collect();
        (query, cache, meta)
    }

    #[test]
    fn grouped_live_row_kernel_gives_the_one_row_loops_bits() {
        for seed in 0..40u64 {
            let dtype = [DType::Bf16, DType::F32, DType::F16][seed as usize % 3];
            let (hq, hk) = [(8, 2), (4, 4), (6, 2), (2, 1)][seed as usize % 4];
            let block_size = [16, 32, 48][(seed / 3) as usize % 3];
            let causal = seed % 5 != 0;
            let cfg = crate::config::AttnConfigBuilder {
                sliding_window: (seed % 4 == 1).then_some(1 + seed as usize % 30),
                ..AttnConfig::builder(hq, hk, 32, dtype)
            }
            .build()
            .unwrap();
            let (q, cache, meta) = random_batch(seed, &cfg, block_size, causal);
            let want = one_row_reference(&q, &cache, &meta, &cfg);
            let got = flex_attention(&q, &cache, &meta, &cfg).unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "seed {seed}");
        }
    }

    #[test]
    fn a_long_prefills_blocks_laid_out_once_give_the_one_row_loops_bits() {
        // A request long enough for SharedBlocks (cached context, a block
        // shared with a second, decode request, blocks out of order), in
        // bf16 and f32, causal and with a window.
        use rand::{Rng, SeedableRng};
        for (seed, dtype, window) in [(1u64, DType::Bf16, None), (2, DType::F32, Some(70))] {
            let cfg = crate::config::AttnConfigBuilder {
                sliding_window: window,
                ..AttnConfig::builder(4, 2, 32, dtype)
            }
            .build()
            .unwrap();
            let bs = 32;
            let (q0, c0) = (SHARED_MIN_TOKENS + 20, 40);
            let n0 = (q0 + c0).div_ceil(bs);
            let num_blocks = n0 + 2;
            let mut row0: Vec<i32> = (0..n0 as i32).rev().collect();
            row0.swap(1, 4);
            let row1 = vec![row0[2], n0 as i32 + 1];
            let meta = AttentionMetadata::new(
                bs,
                num_blocks,
                vec![0, q0 as i32, q0 as i32 + 1],
                vec![(q0 + c0) as i32, 40],
                BlockTableTensor::from_rows(&[row0, row1]),
                vec![-1; q0 + 1],
                true,
            )
            .unwrap();
            let layout = attnlab_shared::layout::KvLayout::new(
                LayoutKind::Nhd,
                num_blocks,
                bs,
                cfg.num_kv_heads(),
                cfg.head_size(),
                cfg.dtype(),
            )
            .unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut cache = KvCache::zeros(layout);
            for x in cache.k.iter_mut().chain(cache.v.iter_mut()) {
                *x = dtype.round(rng.gen_range(-2.0..2.0));
            }
            let q: Vec<f32> = (0..(q0 + 1) * cfg.num_heads() * cfg.head_size())
                .map(|_| dtype.round(rng.gen_range(-2.0..2.0)))
                .collect();
            let want = one_row_reference(&q, &cache, &meta, &cfg);
            let got = flex_attention(&q, &cache, &meta, &cfg).unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{dtype:?} window {window:?}");
        }
    }

    #[test]
    fn block_mask_counts_kept_pairs_as_mask_mod_does() {
        for seed in 0..40u64 {
            let cfg = AttnConfig::new(2, 1, 16, DType::Bf16).unwrap();
            let (_, _, meta) = random_batch(seed, &cfg, 16, seed % 3 != 0);
            let meta = meta.with_causal(seed % 3 != 0);
            let window = (seed % 2 == 1).then_some(1 + seed as usize % 40);
            let mask = FlexMask::new(&meta, window);
            assert_eq!(
                BlockMask::build(&mask),
                one_by_one_block_mask(&mask),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn kept_rows_are_keep() {
        for seed in 0..40u64 {
            let cfg = AttnConfig::new(2, 1, 16, DType::Bf16).unwrap();
            let (_, _, meta) = random_batch(seed, &cfg, 16, seed % 3 != 0);
            let window = (seed % 2 == 1).then_some(1 + seed as usize % 40);
            let mask = FlexMask::new(&meta, window);
            let bs = meta.block_size();
            for q in 0..meta.num_actual_tokens() {
                for b in 0..meta.num_blocks() {
                    let kept = mask.kept_rows(q, b);
                    for r in 0..bs {
                        let want = mask.keep(q, b * bs + r);
                        let got = kept.as_ref().is_some_and(|k| k.contains(&r));
                        assert_eq!(got, want, "seed {seed} q {q} block {b} row {r}");
                    }
                }
            }
        }
    }
}
