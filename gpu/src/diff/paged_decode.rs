//! Diff of both paged decode kernels (Triton 2D and HIP ll4mi partitions +
//! reduce) over every KV layout they read (NHD, ROCm x-packed, AITER
//! shuffled), decode-heavy batches with contexts across several 256-token
//! partitions. Non-decode rows must stay untouched on both sides.

use super::cases::{draw, CaseSpace};
use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::paged_decode::{paged_attention_2d as gpu_2d, paged_attention_ll4mi as gpu_ll4mi};
use crate::runtime::Result;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::kernels::paged_decode::{
    paged_attention_2d as sim_2d, paged_attention_ll4mi as sim_ll4mi, PARTITION_SIZE_ROCM,
};
use rand::Rng;

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[
        LayoutKind::Nhd,
        LayoutKind::RocmPaged,
        LayoutKind::AiterShuffled,
    ],
    block_sizes: &[16, 32, 1, 544],
    head_sizes: &[64, 128],
    max_reqs: 6,
    max_query_len: 4,
    max_context: 700,
    sinks: true,
    alibi: true,
    non_causal: false,
};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("paged_decode", opts.seed);
    let mut tally = Tally::new("paged_decode");
    while opts.more(tally.cases()) {
        let Some(mut case) = draw(&mut rng, &SPACE) else {
            continue;
        };
        let ll4mi = rng.gen_bool(0.5);
        if ll4mi {
            case.cfg.sinks = None; // the ll4mi kernels take no sinks
        }
        let n = case.query.len();
        let init: Vec<f32> = (0..n)
            .map(|_| case.cfg.dtype.round(rng.gen_range(-1.0f32..1.0)))
            .collect();
        let mut sim = init.clone();
        let dev = if ll4mi {
            sim_ll4mi(
                &case.query,
                &case.cache,
                &case.meta,
                &case.cfg,
                PARTITION_SIZE_ROCM,
                &mut sim,
            )?;
            gpu_ll4mi(
                gpu,
                &case.query,
                &case.cache,
                &case.meta,
                &case.cfg,
                PARTITION_SIZE_ROCM,
                &init,
            )?
        } else {
            sim_2d(&case.query, &case.cache, &case.meta, &case.cfg, &mut sim)?;
            gpu_2d(gpu, &case.query, &case.cache, &case.meta, &case.cfg, &init)?
        };
        let desc = || {
            format!(
                "{}: {}",
                if ll4mi { "ll4mi" } else { "2d" },
                case.describe()
            )
        };
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
