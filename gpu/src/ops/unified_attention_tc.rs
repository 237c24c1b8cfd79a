//! Launcher for `kernels/unified_attention_tc.hip` (2D, or 3D + the fma
//! family's `reduce_segments` from `kernels/unified_attention.hip`),
//! mirroring `attnlab_sim::kernels::unified_attention_tc::unified_attention_tc`:
//! unified attention with Q·Kᵀ and P·V on the device's matrix cores
//! (`mma.sync m16n8k16` on NVIDIA, MFMA 16x16x16 on CDNA; on the host device
//! the model of the target its wave width stands for).

use super::flash_varlen_tc::{host_target_code, matrix_target};
use super::unified_attention::{
    launch_unified, run_on_device, softcap_code, to_u32, ReduceSegments,
};
pub use crate::kernels::unified_tc_defines as defines;
use crate::kernels::Gpu;
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Arg, Buffer, FunctionId, LaunchDims, Result, Target};
use attnlab_shared::error::Error;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::softmax::MaskedRowMax;
use attnlab_sim::kernels::unified_attention::{Flavor, Grid, UnifiedArgs, UnifiedLaunch};
use attnlab_sim::kernels::unified_attention_tc::{tc_format, validate_launch, WAVE_ROWS};
use attnlab_sim::numerics::mma::MatrixTarget;
use attnlab_sim::numerics::softmax_scale_log2;

param_block! {
    /// `UnifiedTcArgs` of `kernels/unified_attention_tc.hip`.
    pub struct UnifiedTcParams as "UnifiedTcArgs" {
        num_heads: i64,
        num_kv_heads: i64,
        block_size: i64,
        max_blocks: i64,
        block_q: i64,
        num_segments: i64,
        window: i64,
        causal: i32,
        flavor: i32,
        is_3d: i32,
        has_sinks: i32,
        has_alibi: i32,
        softcap_formula: i32,
        zero_masked_max: i32,
        host_target: i32,
        scale: f32,
        scale_log2: f32,
        softcap: f32,
        k_scale: f32,
        v_scale: f32,
        v_descale: f32,
    }
}

/// Waves per workgroup when a program has fewer (BLOCK_M 16: 4 q-blocks
/// of one request and KV head per workgroup).
pub const DEFAULT_WARPS: usize = 4;
/// Dynamic shared memory an NVIDIA Hopper block may opt into (227 KiB).
const CUDA_SHARED_LIMIT: usize = 227 * 1024;
/// An AMD workgroup's LDS, and the host device's limit.
const LDS_LIMIT: usize = 64 * 1024;

/// Shared memory of one workgroup: `stages` K and V tiles of `tile` keys,
/// rows padded by 8 elements (the kernel's `UT_STAGE_ELEMS`).
pub fn shared_bytes(d: usize, tile: usize, stages: usize) -> usize {
    stages * tile * 2 * (d + 8) * 2
}

/// Waves per workgroup for BLOCK_M `block_m` with at least `warps`: a
/// multiple of the program's `block_m / 16` waves.
pub fn workgroup_waves(block_m: usize, warps: usize) -> usize {
    let wpp = (block_m / WAVE_ROWS).max(1);
    warps.max(wpp).div_ceil(wpp) * wpp
}

/// `[T, Hq, D]` output bits in `cfg.dtype`, computed with the device's
/// matrix instruction ([`matrix_target`]), for the [`UnifiedArgs`] the
/// emulator's executors take (validated where they were built; this
/// launcher checks what the tensor-core kernel adds: an NHD cache in the
/// layer's shape, and in the plan the launch rules, grid and shared memory).
pub fn unified_attention_tc(gpu: &Gpu, args: &UnifiedArgs) -> Result<Vec<u32>> {
    let i = args.inputs();
    let (cache, meta, cfg) = (i.cache(), i.meta(), i.cfg());
    let launch = args.launch();
    let l = &cache.layout;
    if l.kind != attnlab_shared::layout::LayoutKind::Nhd
        || (l.num_kv_heads, l.head_size, l.dtype)
            != (cfg.num_kv_heads(), cfg.head_size(), cfg.kv_dtype())
    {
        return Err(Error::invalid(
            "cache layout",
            format!("{:?}", l),
            "NHD with the layer's kv heads, head size and kv dtype",
        )
        .into());
    }
    let plan = UnifiedTcPlan::new(gpu, meta, cfg, launch, DEFAULT_WARPS)?;
    if meta.num_actual_tokens() == 0 {
        return Ok(vec![]);
    }
    // The cache goes up in cfg.kv_dtype (the query dtype or fp8, as the
    // plan's tc_format admits), the kernel's KV_DTYPE.
    let (n_seg, is_3d) = (plan.num_segments, plan.is_3d);
    run_on_device(gpu, args, n_seg, is_3d, |bufs| plan.launch(gpu, bufs))
}

/// One call prepared once (module, grid, argument struct, and the 3D
/// reduce) and replayed on device buffers: what the diff validates and the
/// bench times.
pub struct UnifiedTcPlan {
    main: FunctionId,
    dims: LaunchDims,
    args: Arg,
    reduce: Option<ReduceSegments>,
    pub target: MatrixTarget,
    pub num_segments: usize,
    pub is_3d: bool,
    /// Waves per workgroup.
    pub warps: usize,
}

impl UnifiedTcPlan {
    /// For `meta`'s batch shape (its largest query sets the grid), with at
    /// least `warps` waves per workgroup.
    pub fn new(
        gpu: &Gpu,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        launch: &UnifiedLaunch,
        warps: usize,
    ) -> Result<UnifiedTcPlan> {
        tc_format(cfg)?;
        validate_launch(cfg, launch)?;
        if launch.flavor == Flavor::Aiter && !meta.causal() {
            return Err(Error::unsupported(
                "non-causal AITER unified_attention",
                "Only causal attention is supported",
            )
            .into());
        }
        if warps == 0 || warps > 16 {
            return Err(Error::invalid("waves per workgroup", warps, "1 to 16").into());
        }
        let info = gpu.dev.info();
        let target = matrix_target(&info.target)?;
        let (hq, d) = (cfg.num_heads(), cfg.head_size());
        let num_segments = match launch.grid {
            Grid::TwoD => 1,
            Grid::ThreeD { num_segments } => num_segments,
        };
        let is_3d = matches!(launch.grid, Grid::ThreeD { .. });
        let warps = workgroup_waves(launch.block_m, warps);
        if warps > 16 {
            return Err(Error::invalid(
                "BLOCK_M",
                launch.block_m,
                "at most 256 (16 waves of 16 rows per workgroup)",
            )
            .into());
        }
        let (stages, limit) = match info.target {
            Target::Cuda { .. } => (2, CUDA_SHARED_LIMIT),
            _ => (1, LDS_LIMIT),
        };
        let shared = shared_bytes(d, launch.tile_size, stages);
        if shared > limit {
            return Err(Error::invalid(
                "shared memory of one workgroup (head size and TILE_SIZE)",
                shared,
                format!("at most {limit} bytes on this device"),
            )
            .into());
        }
        let main = gpu.function(
            "unified_attention_tc",
            &defines(
                cfg.dtype(),
                cfg.kv_dtype(),
                d,
                launch.tile_size,
                launch.block_m,
                warps,
            ),
            "unified_attention_tc",
        )?;
        let programs_per_wg = warps / (launch.block_m / WAVE_ROWS);
        let max_q_blocks = (0..meta.num_reqs())
            .map(|s| meta.query_len(s).div_ceil(launch.block_q))
            .max()
            .unwrap_or(0);
        let wave = info.target.wave_size() as usize;
        let dims = LaunchDims {
            grid: [
                to_u32(
                    max_q_blocks.div_ceil(programs_per_wg).max(1),
                    "q-block groups",
                )?,
                to_u32(meta.num_reqs().max(1), "requests")?,
                to_u32(cfg.num_kv_heads() * num_segments, "kv heads x segments")?,
            ],
            block: [to_u32(warps * wave, "threads")?, 1, 1],
            shared_bytes: shared as u32,
        };
        let zero_max = launch.masked_row_max() == MaskedRowMax::KeepZero;
        // The flavour's score scale and fp8 factors, as the twin's.
        let scale = launch.flavor.score_scale(cfg);
        let args = UnifiedTcParams {
            num_heads: hq as i64,
            num_kv_heads: cfg.num_kv_heads() as i64,
            block_size: meta.block_size() as i64,
            max_blocks: meta.block_table().max_blocks as i64,
            block_q: launch.block_q as i64,
            num_segments: num_segments as i64,
            window: cfg.sliding_window().unwrap_or(0) as i64,
            causal: meta.causal() as i32,
            flavor: matches!(launch.flavor, Flavor::Aiter) as i32,
            is_3d: is_3d as i32,
            has_sinks: cfg.sinks().is_some() as i32,
            has_alibi: cfg.alibi_slopes().is_some() as i32,
            softcap_formula: softcap_code(launch.softcap_formula()),
            zero_masked_max: zero_max as i32,
            host_target: host_target_code(target),
            scale,
            scale_log2: softmax_scale_log2(scale),
            softcap: cfg.softcap().unwrap_or(0.0),
            k_scale: cfg.k_scale(),
            v_scale: cfg.v_scale(),
            v_descale: launch.flavor.v_descale(cfg).unwrap_or(1.0),
        }
        .arg();
        let reduce = if is_3d {
            Some(ReduceSegments::new(gpu, meta, cfg, launch, num_segments)?)
        } else {
            None
        };
        Ok(UnifiedTcPlan {
            main,
            dims,
            args,
            reduce,
            target,
            num_segments,
            is_3d,
            warps,
        })
    }

    /// Buffers in the kernel's order: query, key_cache, value_cache,
    /// block_table, query_start_loc, seq_lens, sinks, alibi_slopes, out,
    /// segm_output, segm_max, segm_expsum (the last three only used in 3D).
    pub fn launch(&self, gpu: &Gpu, bufs: [&Buffer; 12]) -> Result<()> {
        launch_unified(
            gpu,
            self.main,
            self.dims,
            &self.args,
            self.reduce.as_ref(),
            bufs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workgroup_holds_whole_programs() {
        assert_eq!(workgroup_waves(16, 4), 4);
        assert_eq!(workgroup_waves(32, 4), 4);
        assert_eq!(workgroup_waves(64, 4), 4);
        assert_eq!(workgroup_waves(128, 4), 8);
        assert_eq!(workgroup_waves(48, 4), 6);
        assert_eq!(workgroup_waves(16, 8), 8);
    }

    #[test]
    fn shared_memory_of_the_bench_and_diff_shapes_fits_each_device() {
        // NVIDIA, two stages: TILE 32 / 64 at d 128, TILE 64 at d 256.
        assert_eq!(shared_bytes(128, 32, 2), 34816);
        assert!(shared_bytes(256, 64, 2) <= CUDA_SHARED_LIMIT);
        // host / AMD, one stage: d 128 up to TILE 64, d 96 up to 128.
        assert!(shared_bytes(128, 64, 1) <= LDS_LIMIT);
        assert!(shared_bytes(96, 128, 1) <= LDS_LIMIT);
        assert!(shared_bytes(256, 128, 1) > LDS_LIMIT);
    }
}
