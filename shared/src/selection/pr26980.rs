//! `RocmPlatform.get_attn_backend_cls` as of vLLM e2a00c7b (PR #26980 with
//! the FLEX_ATTENTION branch of PR #29371): first matching rule wins
//! (selection.md §2).
//!
//! ```text
//! 1. use_sparse            fp8 kv -> ValueError; block != 1 -> AssertionError; else ROCM_AITER_MLA_SPARSE
//! 2. use_mla               auto: ROCM_AITER_MLA if is_mla_enabled() or block == 1 else TRITON_MLA
//!                          TRITON_MLA (block != 1) | ROCM_AITER_MLA | ROCM_AITER_TRITON_MLA, else "not MLA type"
//! 3. explicit MHA          FLEX / TRITON_ATTN / ROCM_ATTN / ROCM_AITER_UNIFIED_ATTN as given;
//!                          ROCM_AITER_FA only on gfx9
//! 4. auto MHA              AITER&UNIFIED -> UNIFIED; AITER&MHA&gfx9 -> FA; PDA -> ROCM_ATTN; TRITON_ATTN
//! 5. anything else         RuntimeError "V0 attention backends have been removed..."
//! ```
//!
//! The auto MHA path reads the env flags live and never asks whether aiter
//! is importable; the auto MLA path goes through `is_mla_enabled()`, which
//! does (§5.6). Head size, dtype, sinks and attention type are not read.

use super::{Profile, SelectionError, SelectorInput};
use crate::registry::BackendName::{self, *};

type Outcome = Result<(BackendName, String), SelectionError>;

pub(super) fn select(input: &SelectorInput, selected: Option<BackendName>) -> Outcome {
    let block_size = input.effective_block_size();
    let env = &input.env;
    let gfx9 = input.arch.on_gfx9();

    if input.use_sparse {
        if input.kv_cache_dtype.is_fp8() {
            return Err(SelectionError::value(
                "ROCMAiterMLASparseBackend doesn't support fp8 kv_cache_dtype.",
            ));
        }
        if block_size != 1 {
            return Err(SelectionError::assertion(
                "Sparse MLA backend on ROCm only supports block size 1 for now.",
            ));
        }
        return ok(RocmAiterMlaSparse, "rule 1 (sparse): use_sparse wins over any explicit backend and use_mla; block size 1, no fp8 KV cache");
    }

    if input.use_mla {
        return match selected {
            None if input.is_mla_enabled(Profile::Pr26980) => ok(
                RocmAiterMla,
                "rule 2 (auto MLA): rocm_aiter_ops.is_mla_enabled() (VLLM_ROCM_USE_AITER=1, VLLM_ROCM_USE_AITER_MLA on, aiter importable, gfx9)",
            ),
            None if block_size == 1 => ok(
                RocmAiterMla,
                "rule 2 (auto MLA): block_size == 1 picks ROCM_AITER_MLA even with AITER off, on any GPU, without the aiter package",
            ),
            None => ok(TritonMla, format!("rule 2 (auto MLA): is_mla_enabled() is False and block_size {block_size} != 1")),
            Some(TritonMla) if block_size != 1 => {
                ok(TritonMla, format!("rule 2 (explicit MLA): VLLM_ATTENTION_BACKEND=TRITON_MLA with block_size {block_size} != 1"))
            }
            Some(TritonMla) => Err(SelectionError::value(" The selected backend, TRITON_MLA,does not support block size 1.")),
            Some(b @ (RocmAiterMla | RocmAiterTritonMla)) => {
                ok(b, format!("rule 2 (explicit MLA): {b} is returned as given (no block-size or arch check)"))
            }
            Some(b) => Err(SelectionError::value(format!(" The selected backend, {b},is not MLA type while requested for MLA backend."))),
        };
    }

    match selected {
        Some(b @ (FlexAttention | TritonAttn | RocmAttn | RocmAiterUnifiedAttn)) => {
            ok(b, format!("rule 3 (explicit MHA): {b} is returned as given, whatever the GPU and AITER flags"))
        }
        Some(RocmAiterFa) if gfx9 => ok(RocmAiterFa, format!("rule 3 (explicit MHA): ROCM_AITER_FA on gfx9 ({})", input.arch)),
        Some(RocmAiterFa) => {
            Err(SelectionError::value("The selected backend, ROCM_AITER_FA, is only supported on gfx9 architectures."))
        }
        Some(_) => Err(SelectionError::runtime("V0 attention backends have been removed. Set VLLM_USE_V1=1 to select a supported backend.")),
        None if env.use_aiter && env.use_aiter_unified_attention => ok(
            RocmAiterUnifiedAttn,
            "rule 4.1 (auto MHA): VLLM_ROCM_USE_AITER=1 and VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION=1 (no arch check)",
        ),
        None if env.use_aiter && env.use_aiter_mha && gfx9 => ok(
            RocmAiterFa,
            format!("rule 4.2 (auto MHA): VLLM_ROCM_USE_AITER=1 and VLLM_ROCM_USE_AITER_MHA on, on gfx9 ({})", input.arch),
        ),
        None if env.use_prefill_decode_attention => {
            ok(RocmAttn, "rule 4.3 (auto MHA): VLLM_V1_USE_PREFILL_DECODE_ATTENTION=1 (beaten by AITER unified and AITER FA)")
        }
        None => ok(TritonAttn, "rule 4.5 (auto MHA default): no AITER attention rule applies, so TRITON_ATTN"),
    }
}

fn ok(backend: BackendName, rule: impl Into<String>) -> Outcome {
    Ok((backend, format!("pr26980 {}", rule.into())))
}
