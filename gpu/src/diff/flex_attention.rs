//! Diff of FlexAttention over mixed batches on an NHD cache of the query
//! dtype, with non-contiguous block tables (so q blocks see partial and full
//! kv blocks in physical order), windows and non-causal batches.

use super::cases::{draw, CaseSpace};
use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::flex_attention::flex_attention as gpu_flex;
use crate::runtime::Result;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::kernels::flex_attention::flex_attention as sim_flex;

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd],
    block_sizes: &[16, 32, 64],
    head_sizes: &[64, 128],
    max_reqs: 5,
    max_query_len: 40,
    max_context: 120,
    sinks: false,
    alibi: false,
    non_causal: true,
};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("flex_attention", opts.seed);
    let mut tally = Tally::new("flex_attention");
    while tally.cases() < opts.cases {
        let Some(mut case) = draw(&mut rng, &SPACE) else {
            continue;
        };
        if case.cfg.kv_dtype != case.cfg.dtype {
            continue; // FLEX_ATTENTION has no fp8 cache
        }
        case.cfg.softcap = None; // nor a soft-cap score_mod
        let sim = sim_flex(&case.query, &case.cache, &case.meta, &case.cfg)?;
        let dev = gpu_flex(gpu, &case.query, &case.cache, &case.meta, &case.cfg)?;
        let desc = || case.describe();
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
