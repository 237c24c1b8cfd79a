//! Diff of the tensor-core unified attention against its sim twin on the
//! device's own matrix-core model (sm_90 on an H100 and on the host at wave
//! 32, gfx942 on the host at wave 64, the GPU's CDNA generation on AMD):
//! mixed batches (decode, extend, prefill rows) over shuffled paged NHD
//! caches in the query dtype or fp8 (either e4m3 variant, random per-tensor
//! k/v scales: half the draws), both flavours' launches (vLLM with each version profile, AITER
//! causal), 2D and 3D with 1-16 segments, BLOCK_M 16 and 32 (two waves
//! per program), TILE_SIZE 16 to 64, windows, soft-cap, sinks, ALiBi,
//! non-causal rows; one case in six pushed to the extremes where the
//! profiles differ (as the fma family's diff). Off the host one case in
//! five is a longer batch (up to 200 new tokens on 200 cached): several
//! workgroups and staged tiles per row.

use super::cases::{attention_diff, draw, Outputs};
use super::unified_attention::{push_to_extremes, LONG_PREFILL, SPACE};
use super::{DiffOptions, KernelReport};
use crate::kernels::Gpu;
use crate::ops::flash_varlen_tc::matrix_target;
use crate::ops::unified_attention_tc::{defines, unified_attention_tc as gpu_tc, DEFAULT_WARPS};
use crate::runtime::{Result, Target};
use attnlab_shared::dtype::DType;
use attnlab_sim::kernels::unified_attention::{
    Grid, UnifiedArgs, UnifiedLaunch, VllmLaunchOptions, MI300X_CU_COUNT,
};
use attnlab_sim::kernels::unified_attention_tc::unified_attention_tc as sim_tc;
use attnlab_sim::profile::VllmProfile;
use rand::seq::SliceRandom;
use rand::Rng;

/// TILE_SIZEs the diff draws beside the launch's own (when that is a
/// multiple of 16).
const TILES: [usize; 3] = [16, 32, 64];
/// BLOCK_Ms the diff draws beside the launch's own (two waves per
/// program, two programs per workgroup).
const BLOCK_MS: [usize; 1] = [32];

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let target = matrix_target(&gpu.dev.info().target)?;
    let host = matches!(gpu.dev.info().target, Target::Host { .. });
    // Every shape the draws can take, compiled in parallel up front, when
    // enough cases run to meet most of them (a few cases compile lazily).
    if !host && opts.cases >= 20 {
        let mut variants = Vec::new();
        for dt in [DType::Bf16, DType::F16] {
            for kv in [dt, DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn] {
                for d in SPACE.head_sizes {
                    for tile in TILES {
                        for bm in [16, 32] {
                            variants.push(defines(dt, kv, *d, tile, bm, DEFAULT_WARPS));
                        }
                    }
                }
            }
        }
        gpu.precompile("unified_attention_tc", &variants)?;
    }
    attention_diff("unified_attention_tc", opts, &SPACE, |rng, case| {
        if !host && rng.gen_bool(0.2) {
            match draw(rng, &LONG_PREFILL) {
                Some(long) => *case = long,
                None => return Ok(None),
            }
        }
        let (dt, kv) = (case.cfg.dtype(), case.cfg.kv_dtype());
        if !matches!(dt, DType::Bf16 | DType::F16) || (kv != dt && !kv.is_fp8()) {
            return Ok(None); // the kernel's dtypes: bf16 or f16, the cache as the query or fp8
        }
        if rng.gen_ratio(1, 6) {
            push_to_extremes(rng, case)?;
        }
        let aiter = case.meta.causal() && rng.gen_bool(0.5);
        let profile = VllmProfile::ALL[rng.gen_range(0..VllmProfile::ALL.len())];
        let launch = if aiter {
            UnifiedLaunch::aiter(&case.meta, &case.cfg, MI300X_CU_COUNT)?
        } else {
            let opts = VllmLaunchOptions {
                profile,
                ..VllmLaunchOptions::default()
            };
            UnifiedLaunch::vllm(&case.meta, &case.cfg, opts)?
        };
        let mut launch = match rng.gen_range(0..4) {
            0 => launch.with_grid(Grid::TwoD),
            1 => launch.with_grid(Grid::ThreeD {
                num_segments: [1, 2, 4, 16][rng.gen_range(0..4)],
            }),
            _ => launch,
        };
        // The matrix tiles: TILE_SIZE a multiple of 16 (AITER's decode tile
        // follows the block size), and other tiles and BLOCK_Ms now and then.
        if !launch.tile_size.is_multiple_of(16) || rng.gen_ratio(1, 3) {
            launch.tile_size = *TILES.choose(rng).expect("non-empty");
        }
        let qpk = case.cfg.queries_per_kv();
        if launch.block_m == 16 && rng.gen_ratio(1, 4) {
            launch.block_m = *BLOCK_MS.choose(rng).expect("non-empty");
            launch.block_q = launch.block_m / qpk;
        }
        let sim = sim_tc(
            &case.query,
            &case.cache,
            &case.meta,
            &case.cfg,
            &launch,
            target,
        )?;
        let args = UnifiedArgs::new(&case.query, &case.cache, &case.meta, &case.cfg, &launch)?;
        let gpu = gpu_tc(gpu, &args)?;
        let options = format!(
            "{} {:?} (vLLM profile {}) {:?} BLOCK_M {} BLOCK_Q {} TILE {}",
            target.name(),
            launch.flavor,
            launch.profile,
            launch.grid,
            launch.block_m,
            launch.block_q,
            launch.tile_size
        );
        Ok(Some(Outputs { options, sim, gpu }))
    })
}
