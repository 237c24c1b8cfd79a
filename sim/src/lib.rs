//! attnlab's CPU emulator: every backend's real algorithm (layout, routing,
//! tiling, split-KV, merges) as the loop nest its GPU kernel runs, using only
//! the arithmetic of [`numerics`], so the HIP kernels in `kernels/` produce
//! the same bits. [`reference`](mod@crate::reference) is plain f64 attention, the oracle.

pub mod addressing;
pub mod backends;
pub mod cache;
pub mod cases;
pub mod config;
pub mod draw;
pub mod fidelity;
pub mod fixture;
pub mod kernels;
pub mod mla_workload;
pub mod numerics;
pub mod profile;
pub mod reference;
pub mod replay;
pub mod rules;
pub mod tensor;
pub mod workload;
pub mod zoo;
