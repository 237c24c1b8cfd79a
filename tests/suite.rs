//! Every integration test file of this crate, compiled as one test binary
//! (`cargo test` builds and links one binary instead of 13, and its
//! tests share one parallel run). Each file stays its own target too, with
//! `test = false` in Cargo.toml: `cargo test --test <file>` builds and runs
//! it alone, as before; a new file in tests/ is its own binary until it is
//! listed here and there.

// Files that share `common/` each say `mod common;`, as they must when
// built alone: here that is one small copy per file.
#![allow(clippy::duplicate_mod)]

#[path = "captured.rs"]
mod captured;
#[path = "cases.rs"]
mod cases;
#[path = "cli_fuzz.rs"]
mod cli_fuzz;
#[path = "cli_hostile.rs"]
mod cli_hostile;
#[path = "figures.rs"]
mod figures;
#[path = "flavour.rs"]
mod flavour;
#[path = "import_direction.rs"]
mod import_direction;
#[path = "layouts.rs"]
mod layouts;
#[path = "replay.rs"]
mod replay;
#[path = "run.rs"]
mod run;
#[path = "scheduler.rs"]
mod scheduler;
#[path = "selection.rs"]
mod selection;
#[path = "spec_refs.rs"]
mod spec_refs;
