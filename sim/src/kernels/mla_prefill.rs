//! What the non-absorbed MLA prefill needs besides varlen flash and
//! merge_attn_states (vllm-backends.md §13.5, `mla_attention.py`
//! `build_mla_chunked_context_metadata` / `plan_mla_context_chunks`, and
//! `csrc/cache_kernels.cu` `gather_and_maybe_dequant_cache`):
//!
//! 1. the chunked-context workspace size `W` (rows of 576) and the greedy
//!    packing of the prefill requests' cached contexts into chunks of <= W rows;
//! 2. the gather of one chunk's latent rows from the paged cache into the
//!    contiguous workspace, fp8 dequantized (`x * k_scale`) to the query dtype.
//!
//! The chunk loop itself (up-project, flash non-causal, merge by LSE) is the
//! MLA common layer's composition (`backends::mla::common`).
//!
//! ```text
//! W = align_up(min(max(8 * max_model_len, 4 * max_num_seqs * block_size), 65536), block_size)
//! for each prefill request i in order, ctx_i = seq_len_i - query_len_i (0: skipped):
//!     while ctx left: if it fits in the chunk's free rows, add it whole;
//!         else add the largest multiple of block_size that fits (maybe 0),
//!         close the chunk; the rest continues at the head of the next chunk
//! ```

use super::mla_cache::{load_latent, LatentCache};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};

/// vLLM's cap on the chunked-context workspace, in rows.
pub const MAX_WORKSPACE_ROWS: usize = 65536;

/// Workspace rows `W` of the chunked-context prefill (§13.5, no DCP).
pub fn workspace_rows(
    max_model_len: usize,
    max_num_seqs: usize,
    block_size: usize,
) -> Result<usize> {
    for (what, v) in [
        ("max_model_len", max_model_len),
        ("max_num_seqs", max_num_seqs),
        ("block_size", block_size),
    ] {
        if v == 0 {
            return Err(Error::invalid(what, 0, "must be >= 1"));
        }
    }
    let w = (8 * max_model_len)
        .max(4 * max_num_seqs * block_size)
        .min(MAX_WORKSPACE_ROWS);
    Ok(w.div_ceil(block_size) * block_size)
}

/// One request's share of a context chunk: context tokens `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ChunkPart {
    /// Index among the prefill requests.
    pub req: usize,
    pub start: usize,
    pub len: usize,
}

/// One context chunk: at most `W` gathered rows, requests in order; only
/// the first part can continue a request begun in the previous chunk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContextChunk {
    pub parts: Vec<ChunkPart>,
}

impl ContextChunk {
    /// `cu_seq_lens` of the chunk's keys (one entry per part, + 1).
    pub fn cu_seq_lens(&self) -> Vec<i32> {
        std::iter::once(0)
            .chain(self.parts.iter().scan(0i32, |acc, p| {
                *acc += p.len as i32;
                Some(*acc)
            }))
            .collect()
    }

    pub fn total_tokens(&self) -> usize {
        self.parts.iter().map(|p| p.len).sum()
    }
}

/// Packs the prefill requests' contexts (`context_lens[i]` cached tokens of
/// prefill request i) into chunks of at most `workspace` rows.
pub fn plan_mla_context_chunks(
    context_lens: &[usize],
    workspace: usize,
    block_size: usize,
) -> Result<Vec<ContextChunk>> {
    if block_size == 0 || workspace < block_size || !workspace.is_multiple_of(block_size) {
        return Err(Error::invalid(
            "workspace rows",
            workspace,
            format!("must be a positive multiple of block_size {block_size}"),
        ));
    }
    let mut chunks = Vec::new();
    let mut cur = ContextChunk { parts: Vec::new() };
    let mut used = 0;
    for (req, &ctx) in context_lens.iter().enumerate() {
        let mut start = 0;
        while start < ctx {
            let (left, room) = (ctx - start, workspace - used);
            if left <= room {
                cur.parts.push(ChunkPart {
                    req,
                    start,
                    len: left,
                });
                used += left;
                break;
            }
            let take = room / block_size * block_size;
            if take > 0 {
                cur.parts.push(ChunkPart {
                    req,
                    start,
                    len: take,
                });
                start += take;
            }
            chunks.push(std::mem::replace(
                &mut cur,
                ContextChunk { parts: Vec::new() },
            ));
            used = 0;
        }
    }
    if !cur.parts.is_empty() {
        chunks.push(cur);
    }
    Ok(chunks)
}

/// `gather_and_maybe_dequant_cache`: the chunk's latent rows `[toks, width]`
/// in part order, each loaded as the decode kernels load it (fp8: `x *
/// k_scale` rounded to `to`). `block_tables[req]` is the request's block-table
/// row; every block it names for the gathered tokens must be in the cache.
pub fn gather_and_maybe_dequant_cache(
    cache: &LatentCache,
    block_tables: &[&[i32]],
    chunk: &ContextChunk,
    k_scale: f32,
    to: DType,
) -> Result<Vec<f32>> {
    let args = LatentGather::new(cache, block_tables, chunk, k_scale, to)?;
    Ok(gather_latent(&args))
}

/// One `gather_and_maybe_dequant_cache` launch, validated once: cache data
/// holding its layout, a block-table row for every part's request, covering
/// the part's tokens with block ids inside the cache (the first bad token
/// or block is named, in part and token order). The emulator
/// ([`gather_latent`]), both executors and the GPU launcher take it;
/// everything is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct LatentGather<'a> {
    cache: &'a LatentCache,
    block_tables: &'a [&'a [i32]],
    chunk: &'a ContextChunk,
    k_scale: f32,
    to: DType,
}

impl<'a> LatentGather<'a> {
    pub fn new(
        cache: &'a LatentCache,
        block_tables: &'a [&'a [i32]],
        chunk: &'a ContextChunk,
        k_scale: f32,
        to: DType,
    ) -> Result<Self> {
        let l = cache.layout;
        if cache.data.len() != l.numel() {
            return Err(Error::invalid(
                "latent cache length",
                cache.data.len(),
                format!("the layout holds {}", l.numel()),
            ));
        }
        let bs = l.block_size;
        for part in &chunk.parts {
            let table = block_tables.get(part.req).ok_or_else(|| {
                Error::invalid(
                    "chunk request",
                    part.req,
                    format!("only {} block-table rows were given", block_tables.len()),
                )
            })?;
            if part.len == 0 {
                continue;
            }
            let end = part.start + part.len;
            for j in part.start / bs..end.div_ceil(bs) {
                let Some(&blk) = table.get(j) else {
                    let t = part.start.max(j * bs);
                    return Err(Error::invalid(
                        format!("context token {t} of prefill request {}", part.req),
                        t,
                        format!("its block-table row covers {} tokens", table.len() * bs),
                    ));
                };
                if blk < 0 || blk as usize >= l.num_blocks {
                    return Err(Error::invalid(
                        format!("block_table[{}][{j}]", part.req),
                        blk,
                        format!("block ids must be in [0, {})", l.num_blocks),
                    ));
                }
            }
        }
        Ok(LatentGather {
            cache,
            block_tables,
            chunk,
            k_scale,
            to,
        })
    }
    pub fn cache(&self) -> &'a LatentCache {
        self.cache
    }
    /// One block-table row per request.
    pub fn block_tables(&self) -> &'a [&'a [i32]] {
        self.block_tables
    }
    pub fn chunk(&self) -> &'a ContextChunk {
        self.chunk
    }
    /// The fp8 dequant scale (ignored for 16-bit caches).
    pub fn k_scale(&self) -> f32 {
        self.k_scale
    }
    /// The compute dtype an fp8 cache is dequantized to.
    pub fn to(&self) -> DType {
        self.to
    }
}

/// The emulated gather over validated arguments (it cannot fail).
pub fn gather_latent(args: &LatentGather) -> Vec<f32> {
    let LatentGather {
        cache,
        block_tables,
        chunk,
        k_scale,
        to,
    } = *args;
    let (bs, w) = (cache.layout.block_size, cache.layout.width());
    let mut out = Vec::with_capacity(chunk.total_tokens() * w);
    for part in &chunk.parts {
        let table = block_tables[part.req];
        for t in part.start..part.start + part.len {
            let blk = table[t / bs];
            let entry = cache.entry(blk as usize * bs + t % bs);
            out.extend(
                entry
                    .iter()
                    .map(|&x| load_latent(x, cache.layout.dtype, k_scale, to)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnlab_shared::layout::mla::MlaLayout;

    #[test]
    fn workspace_follows_vllms_rule() {
        // DeepSeek-R1 at 4K context, 256 seqs, block 16: max(32768, 16384) = 32768.
        assert_eq!(workspace_rows(4096, 256, 16).unwrap(), 32768);
        assert_eq!(
            workspace_rows(163_840, 256, 16).unwrap(),
            MAX_WORKSPACE_ROWS,
            "capped at 64K rows"
        );
        assert_eq!(
            workspace_rows(5, 1, 48).unwrap(),
            192,
            "aligned up to the block size"
        );
        assert!(workspace_rows(0, 1, 16)
            .unwrap_err()
            .to_string()
            .contains("max_model_len 0"));
    }

    #[test]
    fn contexts_that_fit_share_one_chunk_and_empty_contexts_are_skipped() {
        let c = plan_mla_context_chunks(&[10, 0, 20], 64, 16).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].parts,
            vec![
                ChunkPart {
                    req: 0,
                    start: 0,
                    len: 10
                },
                ChunkPart {
                    req: 2,
                    start: 0,
                    len: 20
                }
            ]
        );
        assert_eq!(c[0].cu_seq_lens(), vec![0, 10, 30]);
    }

    #[test]
    fn an_overflowing_context_is_split_block_aligned_and_continues_first() {
        let c = plan_mla_context_chunks(&[40, 100], 64, 16).unwrap();
        let parts: Vec<Vec<(usize, usize, usize)>> = c
            .iter()
            .map(|ch| ch.parts.iter().map(|p| (p.req, p.start, p.len)).collect())
            .collect();
        // 40 + 16 (largest multiple of 16 <= 24 free rows), then 64, then 20.
        assert_eq!(
            parts,
            vec![
                vec![(0, 0, 40), (1, 0, 16)],
                vec![(1, 16, 64)],
                vec![(1, 80, 20)]
            ]
        );
        assert!(c.iter().all(|ch| ch.total_tokens() <= 64));
    }

    #[test]
    fn gather_reads_the_paged_rows_in_order_and_rejects_bad_blocks() {
        let l = MlaLayout::new(3, 2, 2, 1, DType::F32).unwrap();
        let cache = LatentCache::from_tensor(l, (0..18).map(|i| i as f32).collect()).unwrap();
        let chunk = ContextChunk {
            parts: vec![ChunkPart {
                req: 0,
                start: 1,
                len: 2,
            }],
        };
        let rows =
            gather_and_maybe_dequant_cache(&cache, &[&[2, 0]], &chunk, 1.0, DType::F32).unwrap();
        assert_eq!(
            rows,
            vec![15.0, 16.0, 17.0, 0.0, 1.0, 2.0],
            "token 1 = block 2 row 1, token 2 = block 0 row 0"
        );
        let e = gather_and_maybe_dequant_cache(&cache, &[&[2, 7]], &chunk, 1.0, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("block_table[0][1]") && e.contains("[0, 3)"),
            "{e}"
        );
    }
}
