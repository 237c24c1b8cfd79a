//! `attnlab trace`: what the scheduler and an attention backend do, step by
//! step, for a workload of identical requests.
//!
//! Each step: the scheduler's batch (per request kind, query_len,
//! context_len, seq_len, reordered decode : extend : prefill), the metadata
//! built from its block tables in the backend's kernel blocks, and the kernel
//! launches the emulated backend's `plan` makes for it, with tensor shapes.
//! Reproduces the blog's example:
//! `attnlab trace --backend TRITON_ATTN --prompt-len 80000 --output-len 1 --max-num-batched-tokens 32768`.

use super::util::{emit, fail, parse_size};
use attnlab_shared::model::{self, ModelPreset};
use attnlab_shared::scheduler::{Request, ScheduledStep, Scheduler, SchedulerConfig, DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS};
use attnlab_sim::backends::{self, AttentionBackend, KernelCall};
use attnlab_sim::config::AttnConfig;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::process::ExitCode;

const MAX_TRACE_TOKENS: usize = 1 << 24;

#[derive(clap::Args)]
pub struct Args {
    /// vLLM backend name, e.g. TRITON_ATTN, ROCM_ATTN, ROCM_AITER_FA.
    #[arg(long, value_name = "NAME")]
    backend: String,
    /// Prompt tokens per request.
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    prompt_len: String,
    /// Output tokens per request (the prompt's last step samples the first).
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value = "1")]
    output_len: String,
    /// Identical requests, all arriving at step 0.
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value = "1")]
    num_requests: String,
    /// Token budget per step (vLLM `--max-num-batched-tokens`).
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value_t = DEFAULT_MAX_NUM_BATCHED_TOKENS.to_string())]
    max_num_batched_tokens: String,
    /// Requests running at once (vLLM `--max-num-seqs`).
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value_t = DEFAULT_MAX_NUM_SEQS.to_string())]
    max_num_seqs: String,
    /// Model preset: llama-3.1-8b, qwen3-next (MLA presets are not traced yet).
    #[arg(long, value_name = "PRESET", default_value = "llama-3.1-8b")]
    model: String,
    /// Manager block size [default: the preset's (qwen3-next: 544), else 16].
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    block_size: Option<String>,
    /// KV blocks in the pool [default: enough for every request at once].
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    num_blocks: Option<String>,
    /// Stop with an error after this many steps.
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value = "10000")]
    max_steps: String,
    /// Print {"steps": [{"requests": [...], "kernels": [...]}]}.
    #[arg(long)]
    json: bool,
}

struct Trace {
    backend: Box<dyn AttentionBackend>,
    preset: &'static ModelPreset,
    cfg: AttnConfig,
    sched: SchedulerConfig,
    kernel_block_size: usize,
    requests: Vec<Request>,
    max_steps: usize,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    match setup(&a).and_then(|t| trace(&t, a.json)) {
        Ok(out) => {
            emit(&out);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(a.json, e),
    }
}

/// Runs the scheduler and renders each step as it goes, so a step's block
/// lists are dropped before the next one is built.
fn trace(t: &Trace, json: bool) -> anyhow::Result<String> {
    let mut sched = Scheduler::new(t.sched.clone(), &t.requests)?;
    let num_blocks = sched.pool().num_blocks();
    let (mut text, mut steps, mut n) = (header(t, num_blocks), Vec::new(), 0usize);
    while !sched.is_finished() {
        if n == t.max_steps {
            anyhow::bail!("invalid --max-steps {n}: the workload needs more steps than this");
        }
        let step = sched.step()?;
        let plan = t.backend.plan(&step.metadata(t.kernel_block_size)?, &t.cfg);
        if json {
            steps.push(step_json(&step, &plan));
        } else {
            text += &step_text(&step, &plan);
        }
        n += 1;
    }
    if !json {
        return Ok(text);
    }
    let v = json!({
        "backend": t.backend.name(), "model": t.preset.name, "block_size": t.sched.block_size,
        "kernel_block_size": t.kernel_block_size, "num_blocks": num_blocks,
        "max_num_batched_tokens": t.sched.max_num_batched_tokens, "max_num_seqs": t.sched.max_num_seqs, "steps": steps,
    });
    Ok(format!("{v}\n"))
}

fn setup(a: &Args) -> anyhow::Result<Trace> {
    let prompt_len = parse_size("--prompt-len", &a.prompt_len, 1)?;
    let output_len = parse_size("--output-len", &a.output_len, 1)?;
    let num_requests = parse_size("--num-requests", &a.num_requests, 1)?;
    let max_steps = parse_size("--max-steps", &a.max_steps, 1)?;
    // A trace is for reading: bound the work so a typo cannot exhaust memory.
    let total = num_requests.saturating_mul(prompt_len.saturating_add(output_len));
    if total > MAX_TRACE_TOKENS {
        anyhow::bail!(
            "invalid workload of {total} tokens (--num-requests x (--prompt-len + --output-len)): allowed up to {MAX_TRACE_TOKENS}"
        );
    }
    let preset = model::preset(&a.model)?;
    if let Some(mla) = preset.mla {
        anyhow::bail!(
            "model preset '{}' uses MLA (kv_lora_rank {}, rope {}): trace covers MHA presets for now; allowed: {}",
            preset.name,
            mla.kv_lora_rank,
            mla.qk_rope_head_dim,
            model::PRESETS.iter().filter(|p| !p.is_mla()).map(|p| p.name).collect::<Vec<_>>().join(", ")
        );
    }
    let max_num_batched_tokens = parse_size("--max-num-batched-tokens", &a.max_num_batched_tokens, 1)?;
    let max_num_seqs = parse_size("--max-num-seqs", &a.max_num_seqs, 1)?;
    // A request holds one of max_num_seqs slots for at least output_len steps,
    // and the budget bounds the tokens per step.
    let min_steps = (num_requests.div_ceil(max_num_seqs) * output_len)
        .max((num_requests * (prompt_len + output_len - 1)).div_ceil(max_num_batched_tokens));
    if min_steps > max_steps {
        anyhow::bail!("invalid --max-steps {max_steps}: this workload needs at least {min_steps} steps");
    }
    let backend = backends::by_name(&a.backend.to_ascii_uppercase())?;
    let block_size = match &a.block_size {
        Some(s) => parse_size("--block-size", s, 1)?,
        None => preset.block_size.unwrap_or(16),
    };
    let cfg = AttnConfig::new(preset.num_heads, preset.num_kv_heads, preset.head_size, preset.dtype);
    backend.check(&cfg, block_size)?;
    let kernel_block_size = backend.kernel_block_size(block_size)?;
    let sched = SchedulerConfig {
        block_size,
        num_blocks: a.num_blocks.as_deref().map(|s| parse_size("--num-blocks", s, 1)).transpose()?,
        max_num_batched_tokens,
        max_num_seqs,
        decode_threshold: 1,
    };
    Ok(Trace {
        backend,
        preset,
        cfg,
        sched,
        kernel_block_size,
        requests: vec![Request { prompt_len, output_len }; num_requests],
        max_steps,
    })
}

fn step_json(s: &ScheduledStep, plan: &[KernelCall]) -> Value {
    let reqs: Vec<Value> = s
        .requests
        .iter()
        .map(|r| json!({"id": r.id, "kind": r.kind, "query_len": r.query_len, "context_len": r.context_len, "seq_len": r.seq_len}))
        .collect();
    json!({"step": s.index, "num_tokens": s.num_tokens(), "requests": reqs, "preempted": s.preempted, "finished": s.finished, "kernels": plan})
}

fn header(t: &Trace, num_blocks: usize) -> String {
    let c = &t.cfg;
    format!(
        "{} on {} ({} q heads, {} kv heads, head {}, {}); block_size {} (kernel {}), {} blocks\n\
         {} request(s) of prompt {} / output {}; max_num_batched_tokens {}, max_num_seqs {}\n",
        t.backend.name(),
        t.preset.name,
        c.num_heads,
        c.num_kv_heads,
        c.head_size,
        c.dtype,
        t.sched.block_size,
        t.kernel_block_size,
        num_blocks,
        t.requests.len(),
        t.requests[0].prompt_len,
        t.requests[0].output_len,
        t.sched.max_num_batched_tokens,
        t.sched.max_num_seqs
    )
}

fn step_text(st: &ScheduledStep, plan: &[KernelCall]) -> String {
    let mut s = String::new();
    let sp = st.split(1);
    let _ = writeln!(
        s,
        "\nstep {}: {} new tokens ({} decode, {} extend, {} prefill)",
        st.index,
        st.num_tokens(),
        sp.num_decodes,
        sp.num_extends,
        sp.num_prefills
    );
    if !st.preempted.is_empty() {
        let _ = writeln!(s, "  preempted (recompute): {:?}", st.preempted);
    }
    let _ = writeln!(s, "  {:>4}  {:<8} {:>10} {:>12} {:>8}", "id", "kind", "query_len", "context_len", "seq_len");
    for r in &st.requests {
        let _ = writeln!(s, "  {:>4}  {:<8} {:>10} {:>12} {:>8}", r.id, r.kind.name(), r.query_len, r.context_len, r.seq_len);
    }
    for k in plan {
        let shapes: Vec<String> = k.shapes.iter().map(|(n, sh)| format!("{n} {sh:?}")).collect();
        let _ = writeln!(s, "  -> {}  {}", k.name, shapes.join("  "));
    }
    if !st.finished.is_empty() {
        let _ = writeln!(s, "  finished: {:?}", st.finished);
    }
    s
}
