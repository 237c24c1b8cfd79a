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
    let result = setup(&a).and_then(|t| {
        let steps = Scheduler::new(t.sched.clone(), &t.requests)?.run(t.max_steps)?;
        let plans =
            steps.iter().map(|s| Ok(t.backend.plan(&s.metadata(t.kernel_block_size)?, &t.cfg))).collect::<anyhow::Result<Vec<_>>>()?;
        Ok((t, steps, plans))
    });
    match result {
        Ok((t, steps, plans)) => {
            emit(&if a.json { format!("{}\n", to_json(&t, &steps, &plans)) } else { to_text(&t, &steps, &plans) });
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(a.json, e),
    }
}

fn setup(a: &Args) -> anyhow::Result<Trace> {
    let prompt_len = parse_size("--prompt-len", &a.prompt_len, 1)?;
    let output_len = parse_size("--output-len", &a.output_len, 1)?;
    let num_requests = parse_size("--num-requests", &a.num_requests, 1)?;
    let max_steps = parse_size("--max-steps", &a.max_steps, 1)?;
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
        max_num_batched_tokens: parse_size("--max-num-batched-tokens", &a.max_num_batched_tokens, 1)?,
        max_num_seqs: parse_size("--max-num-seqs", &a.max_num_seqs, 1)?,
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

fn to_json(t: &Trace, steps: &[ScheduledStep], plans: &[Vec<KernelCall>]) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .zip(plans)
        .map(|(s, p)| {
            let reqs: Vec<Value> = s
                .requests
                .iter()
                .map(|r| json!({"id": r.id, "kind": r.kind, "query_len": r.query_len, "context_len": r.context_len, "seq_len": r.seq_len}))
                .collect();
            json!({"step": s.index, "num_tokens": s.num_tokens(), "requests": reqs, "preempted": s.preempted, "finished": s.finished, "kernels": p})
        })
        .collect();
    json!({
        "backend": t.backend.name(), "model": t.preset.name, "block_size": t.sched.block_size,
        "kernel_block_size": t.kernel_block_size, "max_num_batched_tokens": t.sched.max_num_batched_tokens,
        "max_num_seqs": t.sched.max_num_seqs, "steps": steps,
    })
}

fn to_text(t: &Trace, steps: &[ScheduledStep], plans: &[Vec<KernelCall>]) -> String {
    let c = &t.cfg;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} on {} ({} q heads, {} kv heads, head {}, {}); block_size {} (kernel {}), {} blocks",
        t.backend.name(),
        t.preset.name,
        c.num_heads,
        c.num_kv_heads,
        c.head_size,
        c.dtype,
        t.sched.block_size,
        t.kernel_block_size,
        steps.first().map_or(0, |st| st.num_blocks)
    );
    let _ = writeln!(
        s,
        "{} request(s) of prompt {} / output {}; max_num_batched_tokens {}, max_num_seqs {}",
        t.requests.len(),
        t.requests[0].prompt_len,
        t.requests[0].output_len,
        t.sched.max_num_batched_tokens,
        t.sched.max_num_seqs
    );
    for (st, plan) in steps.iter().zip(plans) {
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
    }
    s
}
