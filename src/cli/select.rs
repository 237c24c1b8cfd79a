//! `attnlab select`: which attention backend vLLM picks on ROCm for this
//! model, cache config, GPU and environment, the rule that fired, and what
//! single change would change the choice.
//!
//! The environment is read exactly as vLLM reads it (`VLLM_ATTENTION_BACKEND`,
//! `VLLM_ROCM_USE_AITER*`, `VLLM_V1_USE_PREFILL_DECODE_ATTENTION`), so
//! `VLLM_ROCM_USE_AITER=1 attnlab select --model deepseek-r1 --block-size 1`
//! answers what `VLLM_ROCM_USE_AITER=1 vllm serve deepseek-ai/DeepSeek-R1
//! --block-size 1` selects. Exit status: 0 with a backend, 1 with vLLM's
//! error or a bad flag value, 2 for a malformed command line.

use super::util::{emit, exit};
use attnlab_shared::dtype::{DType, KvCacheDtype};
use attnlab_shared::model::{self, ModelPreset};
use attnlab_shared::registry::AttnType;
use attnlab_shared::selection::{self, EnvFlags, GpuArch, Profile, SelectorInput};
use serde_json::json;
use std::process::ExitCode;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Rules {
    /// vLLM e2a00c7b: PR #26980 + PR #29371 (default).
    Pr26980,
    /// The priority-list selector with validate_configuration (0.33).
    Latest,
}

#[derive(clap::Args)]
pub struct Args {
    /// Explicit backend, checked like VLLM_ATTENTION_BACKEND (case-insensitive,
    /// and "auto", under --rules latest); wins over a valid VLLM_ATTENTION_BACKEND,
    /// but an invalid one is still rejected first, as vLLM's envs.py does on access.
    #[arg(long, alias = "attn-backend", value_name = "NAME")]
    attention_backend: Option<String>,
    /// Model preset (llama-3.1-8b, qwen3-next, deepseek-r1); sets MLA, head size and dtype.
    #[arg(long, value_name = "PRESET", value_parser = parse_preset)]
    model: Option<&'static ModelPreset>,
    /// The model uses multi-head latent attention (DeepSeek-style).
    #[arg(long)]
    mla: bool,
    /// The model uses sparse MLA (DeepSeek-V3.2); wins over everything else.
    #[arg(long)]
    sparse: bool,
    /// KV-cache block size, as `vllm serve --block-size` [default: 16].
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = parse_positive)]
    block_size: Option<usize>,
    /// GPU architecture (gcnArchName), e.g. gfx90a, gfx942, gfx950, gfx1100.
    #[arg(long, default_value = "gfx942", value_parser = parse_arch)]
    arch: GpuArch,
    /// Model dtype [default: the preset's, else bfloat16].
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
    /// KV-cache dtype: auto, float16, bfloat16, fp8, fp8_e4m3, fp8_e5m2.
    #[arg(long, default_value = "auto", value_parser = parse_kv_dtype)]
    kv_cache_dtype: KvCacheDtype,
    /// Head size the selector sees [default: the preset's, else 128 (576 with --mla)].
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = parse_positive)]
    head_size: Option<usize>,
    /// Pretend `import aiter` fails.
    #[arg(long)]
    no_aiter_package: bool,
    /// The model has attention sinks (gpt-oss); only the latest rules read it.
    #[arg(long)]
    sinks: bool,
    /// A KV connector is configured (disaggregated prefill); latest rules only.
    #[arg(long)]
    kv_connector: bool,
    /// Attention type: decoder, encoder, encoder_only, encoder_decoder; latest rules only.
    #[arg(long, default_value = "decoder", value_parser = parse_attn_type)]
    attn_type: AttnType,
    /// Which selector to emulate.
    #[arg(long, value_enum, default_value = "pr26980")]
    rules: Rules,
    /// Print {"backend": ..., "rule": ...} or {"error": {"type": ..., "message": ...}}
    /// (vLLM's exception type, or for a bad flag usage/invalid).
    #[arg(long)]
    json: bool,
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' is not a positive integer")),
    }
}

fn parse_preset(s: &str) -> Result<&'static ModelPreset, String> {
    model::preset(s).map_err(|e| e.to_string())
}

fn parse_arch(s: &str) -> Result<GpuArch, String> {
    GpuArch::parse(s).map_err(|e| e.to_string())
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::parse(s).map_err(|e| e.to_string())
}

fn parse_kv_dtype(s: &str) -> Result<KvCacheDtype, String> {
    KvCacheDtype::parse(s).map_err(|e| e.to_string())
}

fn parse_attn_type(s: &str) -> Result<AttnType, String> {
    AttnType::parse(s).map_err(|e| e.to_string())
}

impl Args {
    fn selector_input(&self) -> SelectorInput {
        let use_mla = self.mla || self.model.is_some_and(|m| m.is_mla());
        let default_head = if use_mla { 576 } else { 128 };
        SelectorInput {
            env: EnvFlags::from_process_env(),
            attention_backend_flag: self.attention_backend.clone(),
            use_mla,
            use_sparse: self.sparse,
            block_size: self.block_size,
            kv_cache_dtype: self.kv_cache_dtype,
            head_size: self
                .head_size
                .or(self.model.map(|m| m.head_size))
                .unwrap_or(default_head),
            dtype: self
                .dtype
                .or(self.model.map(|m| m.dtype))
                .unwrap_or(DType::Bf16),
            arch: self.arch.clone(),
            aiter_installed: !self.no_aiter_package,
            has_sink: self.sinks,
            attn_type: self.attn_type,
            use_kv_connector: self.kv_connector,
            ..SelectorInput::default()
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let input = args.selector_input();
    input.validate()?;
    let profile = match args.rules {
        Rules::Pr26980 => Profile::Pr26980,
        Rules::Latest => Profile::Latest,
    };
    match selection::select(&input, profile) {
        Ok(s) if args.json => {
            emit(&format!(
                "{}\n",
                json!({ "backend": s.backend, "rule": s.rule, "block_size": s.block_size, "hints": s.hints })
            ));
            Ok(ExitCode::SUCCESS)
        }
        Ok(s) => {
            emit(&format!(
                "backend: {}\nrule:    {}\nblocks:  block_size {} for the KV cache\ninputs:  {}\n",
                s.backend,
                s.rule,
                s.block_size,
                describe(&input, profile)
            ));
            print_hints(&mut std::io::stdout(), &s.hints);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if args.json => {
            emit(&format!("{}\n", json!({ "error": e })));
            Ok(ExitCode::from(exit::FAILED))
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("inputs: {}", describe(&input, profile));
            print_hints(
                &mut std::io::stderr(),
                &selection::what_would_change(&input, profile),
            );
            Ok(ExitCode::from(exit::FAILED))
        }
    }
}

fn print_hints(out: &mut dyn std::io::Write, hints: &[selection::Hint]) {
    if hints.is_empty() {
        return;
    }
    // A closed pipe is not worth a panic or an error exit here.
    let _ = writeln!(out, "what would change the choice:");
    for h in hints {
        let _ = writeln!(out, "  {:<48} -> {}", h.change, h.outcome);
    }
}

/// One line with what the selector saw.
fn describe(i: &SelectorInput, profile: Profile) -> String {
    let kind = match (i.use_sparse, i.use_mla) {
        (true, _) => "sparse MLA",
        (false, true) => "MLA",
        (false, false) => "MHA",
    };
    let block = match i.block_size {
        Some(b) => b.to_string(),
        None if profile == Profile::Pr26980 => {
            format!("{} (default)", selection::DEFAULT_BLOCK_SIZE)
        }
        None => "None (not given)".into(),
    };
    let e = &i.env;
    let flag = |b: bool| if b { "1" } else { "0" };
    format!(
        "rules {}, {kind}, head_size {}, {}, kv {}, block_size {block}, {}, aiter package {}; \
         AITER={} MHA={} MLA={} UNIFIED={} PREFILL_DECODE={} VLLM_ATTENTION_BACKEND={}",
        profile.name(),
        i.head_size,
        i.dtype,
        i.kv_cache_dtype.name(),
        i.arch.describe(),
        if i.aiter_installed {
            "installed"
        } else {
            "missing"
        },
        flag(e.use_aiter),
        flag(e.use_aiter_mha),
        flag(e.use_aiter_mla),
        flag(e.use_aiter_unified_attention),
        flag(e.use_prefill_decode_attention),
        e.attention_backend.as_deref().unwrap_or("(unset)"),
    )
}
