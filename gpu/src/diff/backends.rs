//! Backend-level diff: a whole emulated backend step (`write_kv` then
//! `forward`, sim/src/backends/*) on the emulator and the same step with
//! every kernel launch on the GPU, comparing the final output bits.
//!
//! Both sides run the backend's own routing (`write_kv_with` /
//! `forward_with`), once with the sim's `Cpu` executor and once with
//! [`GpuExecutor`]: nothing of the routing is restated here. Each case is a
//! random mixed batch (decode, extend, prefill rows over a non-contiguous
//! block table) whose old context is random cache contents in the backend's
//! own layout; draws the backend rejects (`check`, kernel block size) are
//! drawn again.

use super::cases::{draw, CaseSpace};
use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::exec::GpuExecutor;
use crate::kernels::Gpu;
use crate::runtime::Result;
use attnlab_shared::error::Error;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::backends::by_name;
use attnlab_sim::backends::exec::Cpu;
use attnlab_sim::cache::KvCache;
use rand::Rng;

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd],
    block_sizes: &[16, 32, 64],
    head_sizes: &[64, 128],
    max_reqs: 5,
    max_query_len: 24,
    max_context: 300,
    sinks: true,
    alibi: false,
    non_causal: false,
};

/// Draws accepted per case before giving up on a backend (a space it
/// rejects entirely would otherwise loop forever).
const MAX_DRAWS_PER_CASE: usize = 200;

pub fn run(gpu: &Gpu, name: &str, opts: DiffOptions) -> Result<KernelReport> {
    let backend = by_name(name)?;
    let mut rng = rng_for(name, opts.seed);
    let mut tally = Tally::new(name);
    let mut draws = 0usize;
    while tally.cases() < opts.cases {
        draws += 1;
        if draws > MAX_DRAWS_PER_CASE * (tally.cases() + 1) {
            return Err(Error::invalid(
                "backend diff case space",
                name,
                "a space the backend accepts (it rejected every draw)",
            )
            .into());
        }
        let Some(case) = draw(&mut rng, &SPACE) else {
            continue;
        };
        let (cfg, meta) = (&case.cfg, &case.meta);
        let bs = meta.block_size;
        if backend.check(cfg, bs).is_err() || backend.kernel_block_size(bs).ok() != Some(bs) {
            continue;
        }
        let Ok(layout) = backend.cache_layout(cfg, case.cache.layout.num_blocks, bs) else {
            continue;
        };
        // The old context: random contents in the backend's layout.
        let spread = if cfg.kv_dtype.is_fp8() { 200.0 } else { 2.0 };
        let mut fill = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| cfg.kv_dtype.round(rng.gen_range(-spread..spread)))
                .collect()
        };
        let init = KvCache {
            layout,
            k: fill(layout.numel()),
            v: fill(layout.numel()),
        };
        let n_kv = meta.num_actual_tokens * cfg.num_kv_heads * cfg.head_size;
        let mut step = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| cfg.dtype.round(rng.gen_range(-2.0f32..2.0)))
                .collect()
        };
        let (key, value) = (step(n_kv), step(n_kv));
        let (mut sim_cache, mut gpu_cache) = (init.clone(), init);
        let gx = GpuExecutor(gpu);
        backend.write_kv_with(&Cpu, &mut sim_cache, &key, &value, &meta.slot_mapping, cfg)?;
        backend.write_kv_with(&gx, &mut gpu_cache, &key, &value, &meta.slot_mapping, cfg)?;
        let sim = backend.forward_with(&Cpu, &case.query, &sim_cache, meta, cfg)?;
        let dev = backend.forward_with(&gx, &case.query, &gpu_cache, meta, cfg)?;
        let dev_bits: Vec<u32> = dev.iter().map(|&x| cfg.dtype.to_bits(x)).collect();
        let desc = || format!("{name}: {}", case.describe());
        let shape = [meta.num_actual_tokens, cfg.num_heads, cfg.head_size];
        tally.compare_values(&desc, "output", &shape, cfg.dtype, &sim, &dev_bits);
        tally.case_done();
    }
    Ok(tally.finish())
}

/// `attnlab diff` entries, one per emulated MHA backend.
pub fn triton_attn(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run(gpu, "TRITON_ATTN", opts)
}
pub fn rocm_attn(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run(gpu, "ROCM_ATTN", opts)
}
pub fn rocm_aiter_fa(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run(gpu, "ROCM_AITER_FA", opts)
}
pub fn rocm_aiter_unified_attn(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run(gpu, "ROCM_AITER_UNIFIED_ATTN", opts)
}
pub fn flex_attention(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run(gpu, "FLEX_ATTENTION", opts)
}
