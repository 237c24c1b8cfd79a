//! attnlab's vocabulary, shared by the emulator, the GPU runner and the CLI.
//! Mirrors vLLM's names (`BlockTable`, `slot_mapping`, `query_start_loc`,
//! `seq_lens`, decode/extend/prefill) so a vLLM engineer finds their way.
//! Knows nothing about how attention is computed.

pub mod block_table;
pub mod dtype;
pub mod error;
pub mod fault;
pub mod layout;
pub mod limits;
pub mod metadata;
pub mod model;
pub mod registry;
pub mod scheduler;
pub mod selection;

pub use error::{Error, Result};
