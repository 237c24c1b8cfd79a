//! One module per GPU kernel family, each written as the loop nest its GPU
//! kernel runs (grid, tiles, lanes, reduction order) using only
//! [`crate::numerics`]. Backends compose these; no backend computes attention
//! itself. Each module's header names the vLLM/AITER kernel it mirrors.

pub mod flash_varlen;
pub mod flex_attention;
pub mod gather_cache;
pub mod merge_attn_states;
pub mod mla_cache;
pub mod mla_decode;
pub mod mla_prefill;
pub mod mla_proj;
pub mod paged_decode;
pub mod prefix_prefill;
pub mod reshape_and_cache;
pub mod simd;
pub mod softmax;
pub mod unified_attention;
