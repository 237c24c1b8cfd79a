//! Runs attnlab's HIP kernels (`kernels/*.hip`) on a real GPU and diffs them
//! bit for bit against the emulator. Builds and tests without any GPU stack.
//!
//! - [`runtime`]: the `Device` trait (CUDA via cudarc, HIP behind `rocm`);
//! - [`kernels`]: the embedded sources, compile flags and module cache;
//! - [`compile`]: compiling every kernel for a target with no device;
//! - [`ops`]: host launchers, one per kernel family, validating on the host;
//! - [`exec`]: the sim backends' kernel-executor seam on the GPU;
//! - [`diff`]: random cases, sim vs GPU, bit for bit (kernels and whole backends);
//! - [`bench`](mod@bench): GPU-event timings against a device-to-device copy.

pub mod bench;
pub mod compile;
pub mod diff;
pub mod exec;
pub mod kernels;
pub mod ops;
pub mod runtime;
