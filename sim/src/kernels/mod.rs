//! One module per GPU kernel family, each written as the loop nest its GPU
//! kernel runs (grid, tiles, lanes, reduction order) using only
//! [`crate::numerics`]. Backends compose these; no backend computes attention
//! itself. Each module's header names the vLLM/AITER kernel it mirrors.

pub mod flash_varlen;
pub mod flash_varlen_tc;
pub mod flex_attention;
pub mod flex_attention_tc;
pub mod gather_cache;
pub mod merge_attn_states;
pub mod mla_cache;
pub mod mla_decode;
pub mod mla_decode_tc;
pub mod mla_prefill;
pub mod mla_proj;
pub mod paged_decode;
pub mod paged_decode_2d_tc;
pub mod paged_decode_tc;
pub mod prefix_prefill;
pub mod prefix_prefill_tc;
pub mod reshape_and_cache;
pub mod simd;
pub mod softmax;
#[cfg(test)]
pub(crate) mod test_batch;
pub mod unified_attention;
pub mod unified_attention_tc;

use serde::Serialize;
use std::collections::BTreeMap;

/// One kernel launch as `attnlab trace` shows it: the vLLM/AITER kernel name
/// and the shapes of its main tensors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelCall {
    pub name: String,
    pub shapes: BTreeMap<String, Vec<usize>>,
}

impl KernelCall {
    pub fn new(name: &str, shapes: &[(&str, Vec<usize>)]) -> Self {
        KernelCall {
            name: name.to_string(),
            shapes: shapes
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }
}
