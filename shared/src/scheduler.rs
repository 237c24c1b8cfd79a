//! A vLLM-v1-style continuous-batching scheduler with chunked prefill
//! (vllm-backends.md §1.5-§1.6, §11.3), reduced to what attention sees.
//!
//! One [`Scheduler::step`]:
//!
//! ```text
//! token_budget = max_num_batched_tokens
//! 1. RUNNING, in running order (decodes and in-flight chunked prefills):
//!        num_new = min(num_tokens - num_computed, token_budget)
//!        reserve KV blocks; if the pool is exhausted, preempt the LAST running
//!        request (free its blocks, num_computed = 0, back to the FRONT of
//!        WAITING) and retry; a request that preempts itself is not scheduled
//! 2. WAITING, FCFS, only if nothing was preempted, while len(running) < max_num_seqs:
//!        num_new = min(num_tokens, token_budget)        # chunked prefill
//!        stop at the first request whose blocks do not fit
//! 3. "execute": num_computed += num_new; a request whose computed tokens reach
//!    its known tokens samples one token (so the step that finishes the prompt
//!    samples the first output token); after output_len tokens it finishes and
//!    frees its blocks
//! ```
//!
//! The step's batch is reordered decode : extend : prefill with vLLM's
//! `reorder_batch_to_split_decodes_and_prefills` regions (stable order within
//! a region). Prefix caching, speculative decoding, `long_prefill_token_threshold`
//! and `max_model_len` clamps are not modelled.
//!
//! Defaults: `max_num_batched_tokens` 8192, what `vllm serve` (v1, chunked
//! prefill on) uses on GPUs with >= 70 GiB such as the MI300X; `max_num_seqs`
//! 256; decode threshold 1 (ROCM_AITER_FA's `reorder_batch_threshold`);
//! `num_blocks` enough for every request at once (no preemption).

use crate::block_table::{block_table_tensor, BlockPool, BlockTable, KernelBlockSplit};
use crate::error::{Error, Result};
use crate::metadata::{AttentionMetadata, RequestKind};
use serde::Serialize;
use std::collections::VecDeque;

pub const DEFAULT_MAX_NUM_BATCHED_TOKENS: usize = 8192;
pub const DEFAULT_MAX_NUM_SEQS: usize = 256;
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// A workload entry: `prompt_len` tokens in, `output_len` tokens out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Request {
    pub prompt_len: usize,
    pub output_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedulerConfig {
    /// Manager block size (tokens per KV block).
    pub block_size: usize,
    /// KV blocks in the pool; `None` = enough for every request at once.
    pub num_blocks: Option<usize>,
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    /// Largest query length still counted as a decode (`reorder_batch_threshold`).
    pub decode_threshold: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            block_size: DEFAULT_BLOCK_SIZE,
            num_blocks: None,
            max_num_batched_tokens: DEFAULT_MAX_NUM_BATCHED_TOKENS,
            max_num_seqs: DEFAULT_MAX_NUM_SEQS,
            decode_threshold: 1,
        }
    }
}

/// One request's share of a step, in vLLM's length vocabulary (§1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduledRequest {
    pub id: usize,
    pub kind: RequestKind,
    /// Tokens computed this step.
    pub query_len: usize,
    /// Tokens already in the KV cache (`num_computed_tokens`).
    pub context_len: usize,
    /// `context_len + query_len`: the KV length attention reads.
    pub seq_len: usize,
    pub prompt_len: usize,
    /// Manager blocks holding the request's KV after this step's writes.
    #[serde(skip)]
    pub blocks: Vec<usize>,
}

/// The batch of one scheduler step, reordered decode : extend : prefill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduledStep {
    pub index: usize,
    pub requests: Vec<ScheduledRequest>,
    /// Requests preempted (recompute) while scheduling this step.
    pub preempted: Vec<usize>,
    /// Requests that sampled their last token in this step.
    pub finished: Vec<usize>,
    pub block_size: usize,
    pub num_blocks: usize,
}

/// The per-class counts of `split_decodes_prefills_and_extends`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct BatchSplit {
    pub num_decodes: usize,
    pub num_extends: usize,
    pub num_prefills: usize,
    pub num_decode_tokens: usize,
    pub num_extend_tokens: usize,
    pub num_prefill_tokens: usize,
}

/// vLLM's reorder regions: 0 decode, 1 short extend (a prompt chunk of
/// <= threshold tokens on top of context), 2 long extend, 3 prefill.
fn reorder_region(context_len: usize, query_len: usize, prompt_len: usize, threshold: usize) -> u8 {
    let (has_context, below, done_prefill) = (
        context_len > 0,
        query_len <= threshold,
        context_len >= prompt_len,
    );
    match (has_context, below, done_prefill) {
        (true, true, true) => 0,
        (true, true, false) => 1,
        (true, false, _) => 2,
        (false, _, _) => 3,
    }
}

/// Where `split_decodes_prefills_and_extends` cuts a reordered batch of
/// `(query_len, context_len)` rows: decodes are the rows before the first one
/// with `query_len > threshold`, prefills start at the first such row with no
/// context, extends lie between. So a 1-token first chunk of a prompt that
/// follows extends counts as an extend (with empty context), as in vLLM.
fn split_points(rows: &[(usize, usize)], threshold: usize) -> (usize, usize) {
    let n = rows.len();
    let first_extend = rows.iter().position(|&(q, _)| q > threshold).unwrap_or(n);
    let first_prefill = (first_extend..n)
        .find(|&i| rows[i].0 > threshold && rows[i].1 == 0)
        .unwrap_or(n);
    (first_extend, first_prefill)
}

fn batch_split(rows: &[(usize, usize)], threshold: usize) -> BatchSplit {
    let (fe, fp) = split_points(rows, threshold);
    let tokens = |r: std::ops::Range<usize>| rows[r].iter().map(|&(q, _)| q).sum();
    BatchSplit {
        num_decodes: fe,
        num_extends: fp - fe,
        num_prefills: rows.len() - fp,
        num_decode_tokens: tokens(0..fe),
        num_extend_tokens: tokens(fe..fp),
        num_prefill_tokens: tokens(fp..rows.len()),
    }
}

impl ScheduledStep {
    /// New tokens in the step (`num_actual_tokens`).
    pub fn num_tokens(&self) -> usize {
        self.requests.iter().map(|r| r.query_len).sum()
    }

    /// Requests and tokens per class (the split ROCM_AITER_FA computes).
    pub fn split(&self, decode_threshold: usize) -> BatchSplit {
        let rows: Vec<(usize, usize)> = self
            .requests
            .iter()
            .map(|r| (r.query_len, r.context_len))
            .collect();
        batch_split(&rows, decode_threshold)
    }

    /// The attention metadata of this step in kernel blocks of
    /// `kernel_block_size` (which must divide the manager block size; pass
    /// the block size itself when the backend takes it as is).
    pub fn metadata(&self, kernel_block_size: usize) -> Result<AttentionMetadata> {
        let split = KernelBlockSplit::new(self.block_size, kernel_block_size)?;
        let rows: Vec<&[usize]> = self.requests.iter().map(|r| r.blocks.as_slice()).collect();
        let table = block_table_tensor(&rows, split)?;
        let as_i32 = |what: String, v: usize| {
            i32::try_from(v)
                .map_err(|_| Error::invalid(what, v, format!("must be <= {}", i32::MAX)))
        };
        let mut query_start_loc = vec![0i32];
        let mut seq_lens = Vec::with_capacity(self.requests.len());
        let mut slot_mapping = Vec::with_capacity(self.num_tokens());
        for (i, r) in self.requests.iter().enumerate() {
            let end = query_start_loc[i] as usize + r.query_len;
            query_start_loc.push(as_i32("query_start_loc".into(), end)?);
            seq_lens.push(as_i32(format!("seq_lens[{i}]"), r.seq_len)?);
            for pos in r.context_len..r.seq_len {
                let block = r.blocks.get(pos / self.block_size).ok_or_else(|| {
                    Error::invalid(
                        format!("request {} token position", r.id),
                        pos,
                        format!(
                            "its blocks hold {} tokens",
                            r.blocks.len() * self.block_size
                        ),
                    )
                })?;
                slot_mapping.push((block * self.block_size + pos % self.block_size) as i64);
            }
        }
        AttentionMetadata::new(
            kernel_block_size,
            split.num_kernel_blocks(self.num_blocks),
            query_start_loc,
            seq_lens,
            table,
            slot_mapping,
            true,
        )
    }
}

/// vLLM's `split_decodes_prefills_and_extends` on built metadata (rows
/// must be reordered decode : extend : prefill).
pub fn split_decodes_prefills_and_extends(
    meta: &AttentionMetadata,
    decode_threshold: usize,
) -> BatchSplit {
    let rows: Vec<(usize, usize)> = (0..meta.num_reqs())
        .map(|i| (meta.query_len(i), meta.context_len(i)))
        .collect();
    batch_split(&rows, decode_threshold)
}

#[derive(Debug)]
struct Live {
    id: usize,
    req: Request,
    num_computed: usize,
    num_output: usize,
    table: BlockTable,
}

impl Live {
    /// Tokens known so far: the prompt and every sampled token.
    fn num_tokens(&self) -> usize {
        self.req.prompt_len + self.num_output
    }
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    waiting: VecDeque<Live>,
    running: Vec<Live>,
    step_index: usize,
}

impl Scheduler {
    /// Validates the configuration and every request; request ids are their
    /// positions in `requests`, and they arrive in that order.
    pub fn new(cfg: SchedulerConfig, requests: &[Request]) -> Result<Self> {
        for (what, v) in [
            ("block_size", cfg.block_size),
            ("max_num_batched_tokens", cfg.max_num_batched_tokens),
            ("max_num_seqs", cfg.max_num_seqs),
            ("decode_threshold", cfg.decode_threshold),
        ] {
            if v == 0 {
                return Err(Error::invalid(what, 0, "must be >= 1"));
            }
        }
        if cfg.max_num_batched_tokens > i32::MAX as usize {
            return Err(Error::invalid(
                "max_num_batched_tokens",
                cfg.max_num_batched_tokens,
                format!("allowed range is [1, {}]", i32::MAX),
            ));
        }
        let mut needed = 0usize;
        for (i, r) in requests.iter().enumerate() {
            if r.prompt_len == 0 || r.output_len == 0 {
                return Err(Error::invalid(
                    format!("request {i} lengths"),
                    format!("prompt {} / output {}", r.prompt_len, r.output_len),
                    "both must be >= 1",
                ));
            }
            // The last sampled token is never fed back, so the KV holds prompt + output - 1.
            let kv = r
                .prompt_len
                .checked_add(r.output_len - 1)
                .filter(|&kv| kv <= i32::MAX as usize)
                .ok_or_else(|| {
                    Error::invalid(
                        format!("request {i} prompt + output length"),
                        format!("{} + {}", r.prompt_len, r.output_len),
                        format!("must be <= {}", i32::MAX),
                    )
                })?;
            needed = needed.saturating_add(kv.div_ceil(cfg.block_size));
        }
        let num_blocks = cfg.num_blocks.unwrap_or(needed.max(1));
        let pool = BlockPool::new(num_blocks)?;
        for (i, r) in requests.iter().enumerate() {
            let blocks = (r.prompt_len + r.output_len - 1).div_ceil(cfg.block_size);
            if blocks > num_blocks {
                return Err(Error::invalid(
                    format!("request {i} length"),
                    r.prompt_len + r.output_len - 1,
                    format!(
                        "needs {blocks} blocks of {} but the pool has {num_blocks}",
                        cfg.block_size
                    ),
                ));
            }
        }
        let mut waiting = VecDeque::with_capacity(requests.len());
        for (id, &req) in requests.iter().enumerate() {
            waiting.push_back(Live {
                id,
                req,
                num_computed: 0,
                num_output: 0,
                table: BlockTable::new(cfg.block_size)?,
            });
        }
        Ok(Scheduler {
            cfg,
            pool,
            waiting,
            running: Vec::new(),
            step_index: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn is_finished(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Schedules one step, then advances every scheduled request as if the
    /// model had run it.
    pub fn step(&mut self) -> Result<ScheduledStep> {
        if self.is_finished() {
            return Err(Error::unsupported(
                "scheduling a step",
                "every request has finished",
            ));
        }
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut scheduled: Vec<(usize, usize)> = Vec::new(); // (index in running, num_new)
        let mut preempted = Vec::new();
        let mut i = 0;
        'running: while i < self.running.len() && budget > 0 {
            let num_new = (self.running[i].num_tokens() - self.running[i].num_computed).min(budget);
            while self.running[i]
                .table
                .append_tokens(num_new, &mut self.pool)
                .is_err()
            {
                let mut victim = self.running.pop().expect("running holds request i");
                victim.table.free_all(&mut self.pool)?;
                victim.num_computed = 0;
                preempted.push(victim.id);
                self.waiting.push_front(victim);
                if i == self.running.len() {
                    break 'running; // request i preempted itself
                }
            }
            scheduled.push((i, num_new));
            budget -= num_new;
            i += 1;
        }
        while preempted.is_empty() && budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(w) = self.waiting.front_mut() else {
                break;
            };
            let num_new = (w.num_tokens() - w.num_computed).min(budget);
            if w.table.append_tokens(num_new, &mut self.pool).is_err() {
                break;
            }
            let w = self.waiting.pop_front().expect("front exists");
            self.running.push(w);
            scheduled.push((self.running.len() - 1, num_new));
            budget -= num_new;
        }
        if scheduled.is_empty() {
            return Err(Error::unsupported(
                "scheduling a step",
                format!(
                    "no request fits: {} blocks free of {}",
                    self.pool.num_free(),
                    self.pool.num_blocks()
                ),
            ));
        }

        let threshold = self.cfg.decode_threshold;
        let mut requests: Vec<(u8, ScheduledRequest)> = scheduled
            .iter()
            .map(|&(idx, num_new)| {
                let r = &self.running[idx];
                let req = ScheduledRequest {
                    id: r.id,
                    kind: RequestKind::Decode, // set below, once the batch is ordered
                    query_len: num_new,
                    context_len: r.num_computed,
                    seq_len: r.num_computed + num_new,
                    prompt_len: r.req.prompt_len,
                    blocks: r.table.blocks().to_vec(),
                };
                (
                    reorder_region(r.num_computed, num_new, r.req.prompt_len, threshold),
                    req,
                )
            })
            .collect();
        requests.sort_by_key(|(region, _)| *region); // stable
        let mut requests: Vec<ScheduledRequest> = requests.into_iter().map(|(_, r)| r).collect();
        let rows: Vec<(usize, usize)> = requests
            .iter()
            .map(|r| (r.query_len, r.context_len))
            .collect();
        let (first_extend, first_prefill) = split_points(&rows, threshold);
        for (i, r) in requests.iter_mut().enumerate() {
            r.kind = if i < first_extend {
                RequestKind::Decode
            } else if i < first_prefill {
                RequestKind::Extend
            } else {
                RequestKind::Prefill
            };
        }

        let mut finished = Vec::new();
        for &(idx, num_new) in &scheduled {
            let r = &mut self.running[idx];
            r.num_computed += num_new;
            if r.num_computed == r.num_tokens() {
                r.num_output += 1;
                if r.num_output == r.req.output_len {
                    finished.push(r.id);
                    r.table.free_all(&mut self.pool)?;
                }
            }
        }
        self.running.retain(|r| !finished.contains(&r.id));

        let step = ScheduledStep {
            index: self.step_index,
            requests,
            preempted,
            finished,
            block_size: self.cfg.block_size,
            num_blocks: self.pool.num_blocks(),
        };
        self.step_index += 1;
        Ok(step)
    }

    /// Steps until every request has finished, or `max_steps` is reached.
    pub fn run(&mut self, max_steps: usize) -> Result<Vec<ScheduledStep>> {
        let mut steps = Vec::new();
        while !self.is_finished() {
            if steps.len() == max_steps {
                return Err(Error::invalid(
                    "max_steps",
                    max_steps,
                    "the workload needs more steps than this limit",
                ));
            }
            steps.push(self.step()?);
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_prompt_chunk_is_ordered_between_decodes_and_extends() {
        assert_eq!(reorder_region(10, 1, 10, 1), 0);
        assert_eq!(reorder_region(5, 1, 10, 1), 1);
        assert_eq!(reorder_region(5, 2, 10, 1), 2);
        assert_eq!(reorder_region(0, 1, 1, 1), 3);
    }

    #[test]
    fn all_rows_at_or_below_threshold_are_decodes() {
        assert_eq!(split_points(&[(1, 4), (1, 0)], 1), (2, 2));
        assert_eq!(split_points(&[(1, 4), (3, 2), (1, 0), (5, 0)], 1), (1, 3));
    }
}
