//! The priority-list selector of the validate-based era (rocm.py 001eda31,
//! vLLM 0.33; selection.md §3, vllm-backends.md §4.4-4.5):
//!
//! ```text
//! sparse: [ROCM_AITER_MLA_SPARSE]
//! MLA:    [ROCM_AITER_MLA, TRITON_MLA, ROCM_AITER_TRITON_MLA] if is_mla_enabled() else [TRITON_MLA]
//! MHA:    [ROCM_ATTN (not with a KV connector), ROCM_AITER_FA if is_mha_enabled(),
//!          ROCM_AITER_UNIFIED_ATTN if aiter found on CDNA3+ (or first, on RDNA4 with AITER=1),
//!          TRITON_ATTN]
//! explicit: validated alone -> "Selected backend ... is not valid ... Reason: [...]"
//! auto:     first backend whose validate_configuration() gives no reason,
//!           else "No valid attention backend found for rocm with ... Reasons: {...}."
//! ```
//!
//! `VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION` and
//! `VLLM_V1_USE_PREFILL_DECODE_ATTENTION` are no longer read. Deliberate
//! simplifications: the quantized-KV backends (TURBOQUANT, ROCM_OCTAVE,
//! ULTRAQUANT) that follow TRITON_ATTN need kv dtypes attnlab does not model,
//! so they are left out of the list; an explicit backend that vLLM does not
//! build for ROCm (FLASH_ATTN, FLASHINFER, ...) is reported as "compute
//! capability not supported".

use super::{Profile, SelectionError, SelectorInput};
use crate::dtype::DType;
use crate::registry::{ArchRequirement, AttnType, BackendName, BackendName::*};

type Outcome = Result<(BackendName, String), SelectionError>;

pub(super) fn select(input: &SelectorInput, selected: Option<BackendName>) -> Outcome {
    if let Some(b) = selected {
        let reasons = validate(b, input);
        if !reasons.is_empty() {
            let list: Vec<&str> = reasons.iter().map(String::as_str).collect();
            return Err(SelectionError::value(format!(
                "Selected backend AttentionBackendEnum.{b} is not valid for this configuration. Reason: {}",
                crate::registry::python_str_list(&list)
            )));
        }
        return Ok((
            b,
            format!("latest: explicit {b} passes validate_configuration"),
        ));
    }

    let priorities = priorities(input);
    let mut rejected: Vec<(BackendName, Vec<String>)> = Vec::new();
    for &b in &priorities {
        let reasons = validate(b, input);
        if reasons.is_empty() {
            let names: Vec<&str> = priorities.iter().map(|b| b.name()).collect();
            let mut rule = format!(
                "latest: first valid backend of the priority list [{}]",
                names.join(", ")
            );
            for (r, why) in &rejected {
                rule.push_str(&format!("; {r} skipped: {}", why.join(", ")));
            }
            return Ok((b, rule));
        }
        rejected.push((b, reasons));
    }
    let reasons: Vec<String> = rejected
        .iter()
        .map(|(b, why)| format!("{b}: [{}]", why.join(", ")))
        .collect();
    Err(SelectionError::value(format!(
        "No valid attention backend found for rocm with {}. Reasons: {{{}}}.",
        selector_config_repr(input),
        reasons.join(", ")
    )))
}

/// `_get_backend_priorities(use_mla, use_sparse, use_kv_connector)` plus
/// `get_valid_backends` dropping ROCM_ATTN for encoder-decoder models.
fn priorities(input: &SelectorInput) -> Vec<BackendName> {
    if input.use_sparse {
        return vec![RocmAiterMlaSparse];
    }
    if input.use_mla {
        return if input.is_mla_enabled(Profile::Latest) {
            vec![RocmAiterMla, TritonMla, RocmAiterTritonMla]
        } else {
            vec![TritonMla]
        };
    }
    let env = &input.env;
    let aiter_found_and_supported = input.aiter_supported(Profile::Latest);
    let mut list = Vec::new();
    if !input.use_kv_connector && input.attn_type != AttnType::EncoderDecoder {
        list.push(RocmAttn);
    }
    if aiter_found_and_supported && env.use_aiter && env.use_aiter_mha {
        list.push(RocmAiterFa);
    }
    if aiter_found_and_supported {
        list.push(RocmAiterUnifiedAttn);
    } else if input.aiter_installed && input.arch.on_rdna4() && env.use_aiter {
        list.insert(0, RocmAiterUnifiedAttn);
    }
    list.push(TritonAttn);
    list
}

/// `AttentionBackend.validate_configuration`: every reason, in vLLM's order.
fn validate(backend: BackendName, input: &SelectorInput) -> Vec<String> {
    let Some(caps) = backend.capabilities() else {
        return vec!["compute capability not supported".into()];
    };
    let mut reasons: Vec<String> = Vec::new();
    let mut check = |ok: bool, reason: &str| {
        if !ok {
            reasons.push(reason.to_string());
        }
    };
    check(
        caps.head_sizes.accepts(input.head_size),
        "head_size not supported",
    );
    check(caps.dtypes.contains(&input.dtype), "dtype not supported");
    check(
        caps.kv_cache_dtypes.contains(&input.kv_cache_dtype),
        "kv_cache_dtype not supported",
    );
    check(
        !matches!(input.block_size, Some(b) if !caps.supports_block_size(b)),
        "block_size not supported",
    );
    check(!input.use_mla || caps.is_mla(), "MLA not supported");
    check(input.use_mla || !caps.is_mla(), "non-MLA not supported");
    check(
        !input.has_sink || caps.sinks,
        "attention sinks not supported",
    );
    check(
        !input.use_sparse || caps.is_sparse(),
        "sparse not supported",
    );
    check(
        input.use_sparse || !caps.is_sparse(),
        "non-sparse not supported",
    );
    let arch_ok = match caps.arch {
        ArchRequirement::Any => true,
        ArchRequirement::Cdna3Plus => input.arch.cdna_version() > 2,
    };
    check(arch_ok, "compute capability not supported");
    let attn_type_reason = format!(
        "attention type {} not supported",
        input.attn_type.python_str()
    );
    check(
        caps.attn_types.contains(&input.attn_type),
        &attn_type_reason,
    );
    check(
        !input.use_non_causal || caps.non_causal,
        "non-causal attention not supported",
    );
    check(
        !input.use_kv_connector || caps.kv_connector,
        "KV connector not supported",
    );
    check(!input.use_dcp || caps.dcp, "DCP not supported");
    reasons
}

/// `AttentionSelectorConfig.__repr__` (the version with `use_kv_connector`).
fn selector_config_repr(i: &SelectorInput) -> String {
    let py_bool = |b: bool| if b { "True" } else { "False" };
    let dtype = match i.dtype {
        DType::F32 => "torch.float32",
        DType::F16 => "torch.float16",
        DType::Bf16 => "torch.bfloat16",
        DType::Fp8E4m3Fnuz => "torch.float8_e4m3fnuz",
        DType::Fp8E4m3Fn => "torch.float8_e4m3fn",
    };
    let block_size = i.block_size.map_or("None".to_string(), |b| b.to_string());
    format!(
        "AttentionSelectorConfig(head_size={}, dtype={dtype}, kv_cache_dtype={}, block_size={block_size}, use_mla={}, \
         has_sink={}, use_sparse={}, use_mm_prefix=False, use_per_head_quant_scales=False, attn_type={}, \
         use_non_causal={}, use_batch_invariant=False, use_kv_connector={})",
        i.head_size,
        i.kv_cache_dtype.name(),
        py_bool(i.use_mla),
        py_bool(i.has_sink),
        py_bool(i.use_sparse),
        i.attn_type.python_str(),
        py_bool(i.use_non_causal),
        py_bool(i.use_kv_connector),
    )
}
