//! Runs attnlab's HIP kernels (`kernels/*.hip`) on a real GPU and diffs them
//! bit for bit against the emulator. Builds and tests without any GPU stack.

pub mod runtime;
