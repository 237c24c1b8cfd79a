//! Every integration test file of this crate, compiled as one test binary
//! (`cargo test` builds and links one binary instead of 6, and its
//! tests share one parallel run). Each file stays its own target too, with
//! `test = false` in Cargo.toml: `cargo test --test <file>` builds and runs
//! it alone, as before; a new file in tests/ is its own binary until it is
//! listed here and there.

#[path = "device.rs"]
mod device;
#[path = "hip_fake.rs"]
mod hip_fake;
#[path = "hip_headers.rs"]
mod hip_headers;
#[path = "host_diff.rs"]
mod host_diff;
#[path = "param_layout.rs"]
mod param_layout;
#[path = "portable_h.rs"]
mod portable_h;
