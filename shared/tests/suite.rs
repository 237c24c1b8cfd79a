//! Every integration test file of this crate, compiled as one test binary
//! (`cargo test` builds and links one binary instead of 6, and its
//! tests share one parallel run). Each file stays its own target too, with
//! `test = false` in Cargo.toml: `cargo test --test <file>` builds and runs
//! it alone, as before; a new file in tests/ is its own binary until it is
//! listed here and there.

#[path = "block_table_properties.rs"]
mod block_table_properties;
#[path = "kv_layout_properties.rs"]
mod kv_layout_properties;
#[path = "layout_properties.rs"]
mod layout_properties;
#[path = "metadata_props.rs"]
mod metadata_props;
#[path = "selection_latest.rs"]
mod selection_latest;
#[path = "selection_rules.rs"]
mod selection_rules;
