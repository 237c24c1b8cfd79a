//! Diff of unified attention (vLLM and AITER flavours, 2D and 3D + reduce)
//! over random mixed batches. The launch comes from each flavour's own rule
//! (`UnifiedLaunch::vllm` / `::aiter`) and then, half the time, has its grid
//! forced to 2D or to 3D with 1-16 segments so both paths see every shape.

use super::cases::{draw, CaseSpace};
use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::unified_attention::unified_attention as gpu_unified;
use crate::runtime::Result;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::kernels::unified_attention::{
    unified_attention as sim_unified, Grid, UnifiedLaunch, VllmLaunchOptions, MI300X_CU_COUNT,
};
use rand::Rng;

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd],
    block_sizes: &[1, 16, 32, 544],
    head_sizes: &[64, 128, 96],
    max_reqs: 5,
    max_query_len: 24,
    max_context: 100,
    sinks: true,
    alibi: true,
    non_causal: true,
};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("unified_attention", opts.seed);
    let mut tally = Tally::new("unified_attention");
    while tally.cases() < opts.cases {
        let Some(case) = draw(&mut rng, &SPACE) else {
            continue;
        };
        let aiter = case.meta.causal && rng.gen_bool(0.5);
        let launch = if aiter {
            UnifiedLaunch::aiter(&case.meta, &case.cfg, MI300X_CU_COUNT)?
        } else {
            UnifiedLaunch::vllm(&case.meta, &case.cfg, VllmLaunchOptions::default())?
        };
        let launch = match rng.gen_range(0..4) {
            0 => launch.with_grid(Grid::TwoD),
            1 => launch.with_grid(Grid::ThreeD {
                num_segments: [1, 2, 4, 16][rng.gen_range(0..4)],
            }),
            _ => launch,
        };
        let sim = sim_unified(&case.query, &case.cache, &case.meta, &case.cfg, &launch)?;
        let dev = gpu_unified(
            gpu,
            &case.query,
            &case.cache,
            &case.meta,
            &case.cfg,
            &launch,
        )?;
        let desc = || {
            format!(
                "{:?} {:?} BLOCK_M {} TILE {}: {}",
                launch.flavor,
                launch.grid,
                launch.block_m,
                launch.tile_size,
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
