//! `attnlab trace`: what the scheduler and an attention backend do, step by
//! step, for a workload of identical requests.
//!
//! Each step: the scheduler's batch (per request kind, query_len,
//! context_len, seq_len, reordered decode : extend : prefill), the metadata
//! built from its block tables in the backend's kernel blocks, and the kernel
//! launches the emulated backend's `plan` makes for it, with tensor shapes.
//! Reproduces the blog's example:
//! `attnlab trace --backend TRITON_ATTN --prompt-len 80000 --output-len 1 --max-num-batched-tokens 32768`.
//!
//! MLA presets (`--model deepseek-r1`) go through the MLA backends' common
//! layer instead: absorbed decode (`concat_and_cache_mla`, the backend's
//! split-KV decode kernel) and non-absorbed prefill with context chunks.
//! `--tp N` shards the heads; every rank launches the same calls on its
//! `heads / N` heads against the replicated latent cache, so a step lists
//! them once and the header (JSON: `ranks`) says which heads each rank owns.

use super::common::{check_tp, reject_mla_flags, wrong_family};
use super::util::{backend_choice, emit, parse_bounded, parse_size};
use attnlab_shared::limits::{
    MAX_BLOCK_SIZE, MAX_NUM_BLOCKS, MAX_REQUESTS, MAX_SEQ_LEN, MAX_TRACE_TOKENS,
};
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::model::{self, ModelPreset};
use attnlab_shared::registry::BackendName;
use attnlab_shared::scheduler::{
    Request, ScheduledStep, Scheduler, SchedulerConfig, DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_NUM_SEQS,
};
use attnlab_sim::backends::flavour::{self, Flavour, FlavourChoice, MatmulKernel};
use attnlab_sim::backends::mla::{self, MlaBackend, MlaConfig};
use attnlab_sim::backends::{self, AttentionBackend, KernelCall};
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::flash_varlen_tc::DEFAULT_BLOCK_N;
use attnlab_sim::numerics::mma::MatrixTarget;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// vLLM backend name, any case: an MHA one (TRITON_ATTN, ROCM_ATTN, ROCM_AITER_FA, ...)
    /// or, for an MLA model, TRITON_MLA, ROCM_AITER_MLA, ROCM_AITER_TRITON_MLA; `all`
    /// traces each backend of the model's family in turn.
    #[arg(long, value_name = "NAME")]
    backend: String,
    /// Prompt tokens per request.
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    prompt_len: String,
    /// Output tokens per request (the prompt's last step samples the first).
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "N",
        default_value = "1"
    )]
    output_len: String,
    /// Identical requests, all arriving at step 0.
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "N",
        default_value = "1"
    )]
    num_requests: String,
    /// Token budget per step (vLLM `--max-num-batched-tokens`).
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value_t = DEFAULT_MAX_NUM_BATCHED_TOKENS.to_string())]
    max_num_batched_tokens: String,
    /// Requests running at once (vLLM `--max-num-seqs`).
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value_t = DEFAULT_MAX_NUM_SEQS.to_string())]
    max_num_seqs: String,
    /// Model preset: llama-3.1-8b, qwen3-next, deepseek-r1 (MLA).
    #[arg(long, value_name = "PRESET", default_value = "llama-3.1-8b")]
    model: String,
    /// Tensor-parallel ranks sharding the heads (MLA presets; must divide the head count).
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "N",
        default_value = "1"
    )]
    tp: String,
    /// MLA presets: 16 heads per rank and a 4K max_model_len, same per-head shapes.
    #[arg(long)]
    scale_down: bool,
    /// Manager block size [default: the preset's (qwen3-next: 544), else 16].
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    block_size: Option<String>,
    /// KV blocks in the pool [default: enough for every request at once].
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    num_blocks: Option<String>,
    /// Stop with an error after this many steps.
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "N",
        default_value = "10000"
    )]
    max_steps: String,
    /// Print {"steps": [{"requests": [...], "kernels": [...]}]}.
    #[arg(long)]
    json: bool,
    /// Draw the steps as SVG into FILE ("-": stdout) instead of the text:
    /// each request's context and new tokens per step, gathered context
    /// chunks, the kernels launched (one backend, not `all`).
    #[arg(long, value_name = "FILE", conflicts_with = "json")]
    svg: Option<String>,
    /// Kernel flavour: `fma` (the CUDA-core kernels), `tc` (the matrix
    /// cores of --target) or `auto` (what vLLM's kernels use on --target:
    /// the matrix cores). With tc/auto each step also lists the
    /// tensor-core family each matrix-product launch runs, and a launch
    /// with none (or an option its family lacks) is the error.
    #[arg(long, default_value = "fma", value_parser = FlavourChoice::NAMES, ignore_case = true)]
    flavour: String,
    /// The matrix-core target of --flavour tc/auto: sm_90 (Hopper's
    /// mma.sync), gfx942 (CDNA3's MFMA) or gfx90a (CDNA2's).
    #[arg(long, value_name = "TARGET", default_value = "gfx942")]
    target: String,
}

/// The attention layer a trace plans for.
enum Layer {
    Mha {
        backend: Box<dyn AttentionBackend>,
        cfg: AttnConfig,
        kernel_block_size: usize,
    },
    /// MLA pages its latent cache in the manager's blocks; `cfg.max_model_len`
    /// sizes the prefill's context-chunk workspace.
    Mla {
        backend: Box<dyn MlaBackend>,
        cfg: MlaConfig,
    },
}

impl Layer {
    fn name(&self) -> BackendName {
        match self {
            Layer::Mha { backend, .. } => backend.name(),
            Layer::Mla { backend, .. } => backend.name(),
        }
    }

    fn kernel_block_size(&self, block_size: usize) -> usize {
        match self {
            Layer::Mha {
                kernel_block_size, ..
            } => *kernel_block_size,
            Layer::Mla { .. } => block_size,
        }
    }

    /// One rank's launches (MLA: every rank's, see the module doc).
    fn plan(&self, meta: &AttentionMetadata) -> anyhow::Result<Vec<KernelCall>> {
        Ok(match self {
            Layer::Mha { backend, cfg, .. } => backend.plan(meta, cfg),
            Layer::Mla { backend, cfg } => mla::plan(backend.as_ref(), meta, cfg)?,
        })
    }

    /// In a tensor-core flavour, each matrix-product launch of the step and
    /// the family that runs it (the executors' refusal as the error).
    fn tc_launches(
        &self,
        meta: &AttentionMetadata,
        flavour: Flavour,
    ) -> anyhow::Result<Option<Vec<(MatmulKernel, &'static str)>>> {
        let Flavour::TensorCore(target) = flavour else {
            return Ok(None);
        };
        Ok(Some(match self {
            Layer::Mha { backend, cfg, .. } => {
                let layout = backend.layout_kind();
                flavour::tc_launches(backend.as_ref(), meta, cfg, layout, target)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", backend.name().name()))?
            }
            Layer::Mla { backend, cfg } => {
                flavour::mla_tc_launches(backend.as_ref(), meta, cfg, target)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", backend.name().name()))?
            }
        }))
    }

    /// The head ranges of the TP ranks, `[start, end)` each.
    fn ranks(cfg: &MlaConfig) -> Vec<(usize, usize)> {
        let h = cfg.heads_per_rank();
        (0..cfg.tp).map(|r| (r * h, (r + 1) * h)).collect()
    }
}

struct Trace {
    layer: Layer,
    flavour: Flavour,
    preset: &'static ModelPreset,
    sched: SchedulerConfig,
    requests: Vec<Request>,
    max_steps: usize,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Some(name) = backend_choice(&a.backend) else {
        if a.svg.is_some() {
            anyhow::bail!(
                "invalid --svg with --backend {}: draw one backend at a time",
                a.backend
            );
        }
        return trace_all(&a);
    };
    if let Some(path) = &a.svg {
        let value: Value = serde_json::from_str(&setup(&a, &name).and_then(|t| trace(&t, true))?)?;
        let svg = super::trace_svg::draw(&value);
        if path == "-" {
            emit(&svg);
        } else {
            std::fs::write(path, svg).map_err(|e| anyhow::anyhow!("invalid --svg {path}: {e}"))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = setup(&a, &name).and_then(|t| trace(&t, a.json))?;
    emit(&out);
    Ok(ExitCode::SUCCESS)
}

/// `--backend all`: the trace of every backend of the preset's family, one
/// after another (JSON: `{"backends": [...]}`); a backend that rejects the
/// configuration is listed with its reason. When every one rejects it, the
/// first reason is the error.
fn trace_all(a: &Args) -> anyhow::Result<ExitCode> {
    let names: Vec<&'static str> = match model::preset(&a.model)?.is_mla() {
        true => mla::mla_backends()
            .iter()
            .map(|b| b.name().name())
            .collect(),
        false => backends::mha_backends()
            .iter()
            .map(|b| b.name().name())
            .collect(),
    };
    let (mut text, mut values, mut skipped, mut first_err) =
        (String::new(), Vec::new(), Vec::new(), None);
    for name in names {
        match setup(a, name).and_then(|t| trace(&t, a.json)) {
            Ok(out) if a.json => values.push(serde_json::from_str::<Value>(&out)?),
            Ok(out) => text += &format!("=== {name} ===\n{out}\n"),
            Err(e) => {
                skipped.push(json!({"backend": name, "skipped": format!("{e:#}")}));
                first_err.get_or_insert(e);
            }
        }
    }
    if values.is_empty() && text.is_empty() {
        return Err(first_err.unwrap_or_else(|| anyhow::anyhow!("no backend to trace")));
    }
    if a.json {
        values.extend(skipped);
        emit(&format!("{}\n", json!({ "backends": values })));
    } else {
        for s in &skipped {
            let field = |k: &str| s[k].as_str().unwrap_or("").to_string();
            text += &format!("skipped {}: {}\n", field("backend"), field("skipped"));
        }
        emit(&text);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the scheduler and renders each step as it goes, so a step's block
/// lists are dropped before the next one is built.
fn trace(t: &Trace, json: bool) -> anyhow::Result<String> {
    let mut sched = Scheduler::new(t.sched.clone(), &t.requests)?;
    let num_blocks = sched.pool().num_blocks();
    let kernel_block_size = t.layer.kernel_block_size(t.sched.block_size);
    let (mut text, mut steps, mut n) = (header(t, num_blocks), Vec::new(), 0usize);
    while !sched.is_finished() {
        if n == t.max_steps {
            anyhow::bail!("invalid --max-steps {n}: the workload needs more steps than this");
        }
        let step = sched.step()?;
        let meta = step.metadata(kernel_block_size)?;
        let plan = t.layer.plan(&meta)?;
        let tc = t.layer.tc_launches(&meta, t.flavour)?;
        if json {
            let mut v = step_json(&step, &plan);
            if let Some(tc) = &tc {
                let launches: Vec<Value> = tc
                    .iter()
                    .map(|(k, f)| json!({"launch": k.name(), "family": f}))
                    .collect();
                v["tensor_core"] = json!(launches);
            }
            steps.push(v);
        } else {
            let tc_line = match (&tc, t.flavour) {
                (Some(tc), Flavour::TensorCore(target)) => {
                    let runs: Vec<String> = tc
                        .iter()
                        .map(|(k, f)| match k {
                            // The family's own key tile, not CK's (the plan's block_n).
                            MatmulKernel::FlashAttnVarlen => {
                                format!("{} -> {f} (block_n {DEFAULT_BLOCK_N})", k.name())
                            }
                            _ => format!("{} -> {f}", k.name()),
                        })
                        .collect();
                    Some(format!(
                        "  tensor-core flavour ({}): {}\n",
                        target.name(),
                        runs.join(", ")
                    ))
                }
                _ => None,
            };
            text += &step_text(&step, &plan, tc_line.as_deref());
        }
        n += 1;
    }
    if !json {
        return Ok(text);
    }
    let mut v = json!({
        "backend": t.layer.name(), "flavour": t.flavour.to_string(), "model": t.preset.name, "block_size": t.sched.block_size,
        "kernel_block_size": kernel_block_size, "num_blocks": num_blocks,
        "max_num_batched_tokens": t.sched.max_num_batched_tokens, "max_num_seqs": t.sched.max_num_seqs, "steps": steps,
    });
    if let Layer::Mla { cfg, .. } = &t.layer {
        let ranks: Vec<Value> = Layer::ranks(cfg)
            .iter()
            .enumerate()
            .map(|(r, h)| json!({"rank": r, "heads": [h.0, h.1]}))
            .collect();
        v["num_heads"] = json!(cfg.num_heads);
        v["max_model_len"] = json!(cfg.max_model_len);
        v["tp"] = json!(cfg.tp);
        v["ranks"] = Value::Array(ranks);
    }
    Ok(format!("{v}\n"))
}

/// The trace of backend `name` (upper case) under the flags.
fn setup(a: &Args, name: &str) -> anyhow::Result<Trace> {
    let prompt_len = parse_bounded("--prompt-len", &a.prompt_len, 1, &MAX_SEQ_LEN)?;
    let output_len = parse_bounded("--output-len", &a.output_len, 1, &MAX_SEQ_LEN)?;
    let num_requests = parse_bounded("--num-requests", &a.num_requests, 1, &MAX_REQUESTS)?;
    let max_steps = parse_size("--max-steps", &a.max_steps, 1)?;
    let tp = parse_size("--tp", &a.tp, 1)?;
    // A trace is for reading: bound the work so a typo cannot exhaust memory.
    MAX_TRACE_TOKENS.check(
        "workload (--num-requests x (--prompt-len + --output-len)) of tokens",
        (num_requests * (prompt_len + output_len)) as u64,
    )?;
    let preset = model::preset(&a.model)?;
    let max_num_batched_tokens = parse_bounded(
        "--max-num-batched-tokens",
        &a.max_num_batched_tokens,
        1,
        &MAX_TRACE_TOKENS,
    )?;
    let max_num_seqs = parse_bounded("--max-num-seqs", &a.max_num_seqs, 1, &MAX_REQUESTS)?;
    // A request holds one of max_num_seqs slots for at least output_len steps,
    // and the budget bounds the tokens per step.
    let min_steps = (num_requests.div_ceil(max_num_seqs) * output_len)
        .max((num_requests * (prompt_len + output_len - 1)).div_ceil(max_num_batched_tokens));
    if min_steps > max_steps {
        anyhow::bail!(
            "invalid --max-steps {max_steps}: this workload needs at least {min_steps} steps"
        );
    }
    let block_size = match &a.block_size {
        Some(s) => parse_bounded("--block-size", s, 1, &MAX_BLOCK_SIZE)?,
        None => preset.block_size.unwrap_or(16),
    };
    let layer = if preset.is_mla() {
        check_tp(preset, tp)?;
        let backend = match mla::parse(name) {
            Err(_) if backends::parse(name).is_ok() => return Err(wrong_family(name, preset)),
            b => mla::by_name(b?)?,
        };
        // deepseek-r1 is the only MLA preset; its YaRN-scaled softmax scale lives here.
        let cfg = MlaConfig::deepseek_r1(tp);
        let cfg = MlaConfig {
            max_num_seqs,
            ..if a.scale_down { cfg.scaled_down() } else { cfg }
        };
        backend.check(&cfg, block_size)?;
        Layer::Mla { backend, cfg }
    } else {
        reject_mla_flags(preset, tp, a.scale_down)?;
        let backend = match backends::parse(name) {
            Err(_) if mla::parse(name).is_ok() => return Err(wrong_family(name, preset)),
            b => backends::by_name(b?)?,
        };
        let cfg = AttnConfig::new(
            preset.num_heads,
            preset.num_kv_heads,
            preset.head_size,
            preset.dtype,
        )?;
        backend.check(&cfg, block_size)?;
        let kernel_block_size = backend.kernel_block_size(block_size)?;
        Layer::Mha {
            backend,
            cfg,
            kernel_block_size,
        }
    };
    let sched = SchedulerConfig {
        block_size,
        num_blocks: a
            .num_blocks
            .as_deref()
            .map(|s| parse_bounded("--num-blocks", s, 1, &MAX_NUM_BLOCKS))
            .transpose()?,
        max_num_batched_tokens,
        max_num_seqs,
        decode_threshold: 1,
    };
    let choice = FlavourChoice::parse(&a.flavour)?;
    let flavour = choice.resolve(layer.name(), MatrixTarget::parse(&a.target)?);
    Ok(Trace {
        layer,
        flavour,
        preset,
        sched,
        requests: vec![
            Request {
                prompt_len,
                output_len
            };
            num_requests
        ],
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
    let mut s = match &t.layer {
        Layer::Mha { cfg: c, .. } => format!(
            "{} on {} ({} q heads, {} kv heads, head {}, {})",
            t.layer.name(),
            t.preset.name,
            c.num_heads(),
            c.num_kv_heads(),
            c.head_size(),
            c.dtype()
        ),
        Layer::Mla { cfg: c, .. } => format!(
            "{} on {} ({} heads, latent {} + rope {}, q/k nope {}, v {}, {}, max_model_len {})",
            t.layer.name(),
            t.preset.name,
            c.num_heads,
            c.dims.kv_lora_rank,
            c.dims.qk_rope_head_dim,
            c.dims.qk_nope_head_dim,
            c.dims.v_head_dim,
            c.dtype,
            c.max_model_len
        ),
    };
    let _ = writeln!(
        s,
        "; block_size {} (kernel {}), {} blocks\n\
         {} request(s) of prompt {} / output {}; max_num_batched_tokens {}, max_num_seqs {}",
        t.sched.block_size,
        t.layer.kernel_block_size(t.sched.block_size),
        num_blocks,
        t.requests.len(),
        t.requests[0].prompt_len,
        t.requests[0].output_len,
        t.sched.max_num_batched_tokens,
        t.sched.max_num_seqs
    );
    if let Layer::Mla { cfg, .. } = &t.layer {
        if cfg.tp > 1 {
            let ranks: Vec<String> = Layer::ranks(cfg)
                .iter()
                .enumerate()
                .map(|(r, h)| format!("rank {r}: heads {}..{}", h.0, h.1))
                .collect();
            let _ = writeln!(
                s,
                "tp {}: each rank launches the kernels below on its {} heads, against the replicated latent cache\n  {}",
                cfg.tp,
                cfg.heads_per_rank(),
                ranks.join(", ")
            );
        }
    }
    s
}

/// One step as text; `tc` is the tensor-core flavour's line (after the launches).
fn step_text(st: &ScheduledStep, plan: &[KernelCall], tc: Option<&str>) -> String {
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
    let _ = writeln!(
        s,
        "  {:>4}  {:<8} {:>10} {:>12} {:>8}",
        "id", "kind", "query_len", "context_len", "seq_len"
    );
    for r in &st.requests {
        let _ = writeln!(
            s,
            "  {:>4}  {:<8} {:>10} {:>12} {:>8}",
            r.id,
            r.kind.name(),
            r.query_len,
            r.context_len,
            r.seq_len
        );
    }
    for k in plan {
        let shapes: Vec<String> = k
            .shapes
            .iter()
            .map(|(n, sh)| format!("{n} {sh:?}"))
            .collect();
        let _ = writeln!(s, "  -> {}  {}", k.name, shapes.join("  "));
    }
    s += tc.unwrap_or("");
    if !st.finished.is_empty() {
        let _ = writeln!(s, "  finished: {:?}", st.finished);
    }
    s
}
