//! ROCM_AITER_FA's context chunking (vllm-backends.md §11.3), kept beside
//! the backend as vLLM keeps it in its metadata builder: the extend
//! requests' cached contexts are gathered `cp_tokens_per_iter` tokens per
//! iteration, split evenly between the requests, each iteration one
//! `cp_mha_gather_cache` launch ([`GatherChunk`]); with a sliding window an
//! extend gathers its window's keys at once ([`window_keys`]).

use crate::kernels::gather_cache::GatherChunk;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::metadata::RequestKind;
use attnlab_shared::scheduler::{split_decodes_prefills_and_extends, ScheduledStep};

/// `_CP_TOKENS_PER_ITER_ROCM`: context tokens ROCM_AITER_FA gathers per
/// extend iteration, across all extend requests of the batch.
pub const CP_TOKENS_PER_ITER_ROCM: usize = 32 * 1024;

/// The chunks of one batch's extend contexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextChunks {
    /// `chunk_tokens // num_extends`: every request's per-iteration share.
    pub max_context_chunk: usize,
    /// Per iteration, per extend request: `chunk_starts[c, i]` (its
    /// `seq_starts`), the tokens gathered (`cu_seqlens`, 0 once a context is
    /// exhausted) and the workspace rows' requests (`token_to_batch`).
    pub chunks: Vec<GatherChunk>,
}

/// vLLM's chunking of extend contexts: each request gets an equal share
/// `max_chunk = chunk_tokens // num_extends` per iteration, not aligned to
/// blocks, and there are `cdiv(max(context_lens), max_chunk)` iterations.
pub fn context_chunks(context_lens: &[usize], chunk_tokens: usize) -> Result<ContextChunks> {
    let ne = context_lens.len();
    if ne == 0 {
        return Ok(ContextChunks {
            max_context_chunk: chunk_tokens,
            chunks: Vec::new(),
        });
    }
    let max_chunk = chunk_tokens / ne;
    if max_chunk == 0 {
        return Err(Error::invalid(
            "context chunk size",
            chunk_tokens,
            format!("cp_tokens_per_iter must be >= the number of extend requests ({ne})"),
        ));
    }
    let num_chunks = context_lens
        .iter()
        .max()
        .copied()
        .unwrap_or(0)
        .div_ceil(max_chunk);
    let chunks = (0..num_chunks)
        .map(|c| {
            let start = c * max_chunk;
            let lens: Vec<usize> = context_lens
                .iter()
                .map(|&ctx| ctx.min(start + max_chunk).saturating_sub(start))
                .collect();
            GatherChunk::new(vec![start; ne], &lens)
        })
        .collect::<Result<_>>()?;
    Ok(ContextChunks {
        max_context_chunk: max_chunk,
        chunks,
    })
}

/// The new tokens' keys of requests `reqs` (positions `context_len ..
/// seq_len` each), as one attend step reads them.
pub fn new_token_keys(meta: &AttentionMetadata, reqs: &[usize]) -> Result<GatherChunk> {
    GatherChunk::new(
        reqs.iter().map(|&i| meta.context_len(i)).collect(),
        &reqs.iter().map(|&i| meta.query_len(i)).collect::<Vec<_>>(),
    )
}

/// The keys a sliding-window extend attends instead of chunking its
/// context: the last `min(seq_len, query_len + window)` of each request.
pub fn window_keys(meta: &AttentionMetadata, reqs: &[usize], window: usize) -> Result<GatherChunk> {
    let lens: Vec<usize> = reqs
        .iter()
        .map(|&i| meta.seq_len(i).min(meta.query_len(i) + window))
        .collect();
    let starts = reqs
        .iter()
        .zip(&lens)
        .map(|(&i, l)| meta.seq_len(i) - l)
        .collect();
    GatherChunk::new(starts, &lens)
}

/// The context chunks of the extend rows of built metadata.
pub fn extend_context_chunks(
    meta: &AttentionMetadata,
    decode_threshold: usize,
    chunk_tokens: usize,
) -> Result<ContextChunks> {
    let s = split_decodes_prefills_and_extends(meta, decode_threshold);
    let ctx: Vec<usize> = (s.num_decodes..s.num_decodes + s.num_extends)
        .map(|i| meta.context_len(i))
        .collect();
    context_chunks(&ctx, chunk_tokens)
}

/// The context chunks of a scheduled step's extend requests.
pub fn step_context_chunks(step: &ScheduledStep, chunk_tokens: usize) -> Result<ContextChunks> {
    let ctx: Vec<usize> = step
        .requests
        .iter()
        .filter(|r| r.kind == RequestKind::Extend)
        .map(|r| r.context_len)
        .collect();
    context_chunks(&ctx, chunk_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_smaller_than_extend_count_is_rejected() {
        let e = context_chunks(&[5, 5, 5], 2).unwrap_err().to_string();
        assert!(
            e.contains("context chunk size 2") && e.contains("(3)"),
            "{e}"
        );
    }
}
