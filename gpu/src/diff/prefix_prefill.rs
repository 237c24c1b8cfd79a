//! Diff of prefix prefill (`_fwd_kernel` and `_fwd_kernel_alibi`) over mixed
//! batches with contexts over several 32-key context tiles and queries over
//! two BLOCK_M programs, every KV layout, with and without `skip_decode`.
//! Rows the kernel skips must stay untouched on both sides.

use super::cases::{draw, CaseSpace};
use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::prefix_prefill::context_attention_fwd as gpu_prefix;
use crate::runtime::Result;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::kernels::prefix_prefill::context_attention_fwd as sim_prefix;
use rand::Rng;

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[
        LayoutKind::Nhd,
        LayoutKind::RocmPaged,
        LayoutKind::AiterShuffled,
    ],
    block_sizes: &[16, 32, 1, 544],
    head_sizes: &[64, 128],
    max_reqs: 4,
    max_query_len: 140,
    max_context: 150,
    sinks: true,
    alibi: true,
    non_causal: true,
};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("prefix_prefill", opts.seed);
    let mut tally = Tally::new("prefix_prefill");
    while tally.cases() < opts.cases {
        let Some(mut case) = draw(&mut rng, &SPACE) else {
            continue;
        };
        if case.cfg.alibi_slopes.is_some() {
            // _fwd_kernel_alibi: causal, no sinks (vLLM asserts both).
            case.cfg.sinks = None;
            case.meta.causal = true;
        }
        let skip_decode = rng.gen_bool(0.7);
        let n = case.query.len();
        let init: Vec<f32> = (0..n)
            .map(|_| case.cfg.dtype.round(rng.gen_range(-1.0f32..1.0)))
            .collect();
        let mut sim = init.clone();
        sim_prefix(
            &case.query,
            &case.cache,
            &case.meta,
            &case.cfg,
            skip_decode,
            &mut sim,
        )?;
        let dev = gpu_prefix(
            gpu,
            &case.query,
            &case.cache,
            &case.meta,
            &case.cfg,
            skip_decode,
            &init,
        )?;
        let desc = || format!("skip_decode {skip_decode}: {}", case.describe());
        let shape = [
            case.meta.num_actual_tokens,
            case.cfg.num_heads,
            case.cfg.head_size,
        ];
        tally.compare_values(&desc, "output", &shape, case.cfg.dtype, &sim, &dev);
        tally.case_done();
    }
    Ok(tally.finish())
}
