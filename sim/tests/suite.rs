//! Every integration test file of this crate, compiled as one test binary
//! (`cargo test` builds and links one binary instead of 14, and its
//! tests share one parallel run). Each file stays its own target too, with
//! `test = false` in Cargo.toml: `cargo test --test <file>` builds and runs
//! it alone, as before; a new file in tests/ is its own binary until it is
//! listed here and there.

// Files that share `common/` each say `mod common;`, as they must when
// built alone: here that is one small copy per file.
#![allow(clippy::duplicate_mod)]

#[path = "aiter_fa.rs"]
mod aiter_fa;
#[path = "cases.rs"]
mod cases;
#[path = "config_props.rs"]
mod config_props;
#[path = "faithful.rs"]
mod faithful;
#[path = "fixture_fuzz.rs"]
mod fixture_fuzz;
#[path = "flavour.rs"]
mod flavour;
#[path = "merge_props.rs"]
mod merge_props;
#[path = "mla.rs"]
mod mla;
#[path = "online_softmax_props.rs"]
mod online_softmax_props;
#[path = "paged_decode_tc.rs"]
mod paged_decode_tc;
#[path = "replay.rs"]
mod replay;
#[path = "rocm_attn.rs"]
mod rocm_attn;
#[path = "unified.rs"]
mod unified;
#[path = "zoo.rs"]
mod zoo;
