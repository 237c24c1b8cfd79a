//! Host-side launchers, one module per kernel family in `kernels/`: each
//! validates its inputs on the host (every slot, block id and length) before
//! a launch, uploads, launches and downloads. Signatures mirror the sim
//! kernels they are diffed against.

pub mod contract;
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
pub mod mma;
pub mod paged_decode;
pub mod paged_decode_2d_tc;
pub mod paged_decode_tc;
pub mod prefix_prefill;
pub mod prefix_prefill_tc;
pub mod reshape_and_cache;
pub mod unified_attention;
pub mod unified_attention_tc;
