//! Launcher for `kernels/unified_attention.hip` (2D, or 3D + reduce_segments),
//! mirroring `attnlab_sim::kernels::unified_attention::unified_attention`:
//! the register-tiled `unified_attention_tiled` where it takes the launch
//! ([`tiled_shared_bytes`]), else the scalar port.

use crate::kernels::{qkv_defines, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i32};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Arg, Buffer, FunctionId, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::softmax::MaskedRowMax;
use attnlab_sim::kernels::unified_attention::{
    Flavor, Grid, SegmentReduce, UnifiedArgs, UnifiedLaunch,
};
use attnlab_sim::numerics::{softmax_scale_log2, SoftcapFormula};

param_block! {
    /// `UnifiedArgs` of `kernels/unified_attention.hip`.
    pub struct UnifiedParams as "UnifiedArgs" {
        num_reqs: i64,
        num_heads: i64,
        num_kv_heads: i64,
        head_size: i64,
        block_size: i64,
        max_blocks: i64,
        block_m: i64,
        block_q: i64,
        tile: i64,
        num_segments: i64,
        window: i64,
        causal: i32,
        flavor: i32,
        is_3d: i32,
        has_sinks: i32,
        has_alibi: i32,
        softcap_formula: i32,
        zero_masked_max: i32,
        scale: f32,
        scale_log2: f32,
        softcap: f32,
        k_scale: f32,
        v_scale: f32,
    }
}

/// Static shared memory every CUDA/HIP device grants without opting in.
pub const SHARED_MEMORY_LIMIT: usize = 48 * 1024;

/// `[T, Hq, D]` output bits in `cfg.dtype`, for the [`UnifiedArgs`] the
/// emulator's executors take (validated where they were built; the plan
/// checks only what the device adds: grid sizes, shared memory).
pub fn unified_attention(gpu: &Gpu, args: &UnifiedArgs) -> Result<Vec<u32>> {
    let i = args.inputs();
    let plan = UnifiedPlan::new(gpu, i.meta(), i.cfg(), args.launch())?;
    if i.meta().num_actual_tokens() == 0 {
        return Ok(vec![]);
    }
    let (n_seg, is_3d) = (plan.num_segments, plan.is_3d);
    run_on_device(gpu, args, n_seg, is_3d, |bufs| plan.launch(gpu, bufs))
}

/// One unified-attention call on the device, for either family: uploads
/// `args`' tensors in the kernels' buffer order (query, key_cache,
/// value_cache, block_table, query_start_loc, seq_lens, sinks,
/// alibi_slopes, out, and the 3D partials segm_output, segm_max,
/// segm_expsum, one element each on the 2D grid), runs `launch` on them
/// and returns `out`'s bits in the layer's dtype.
pub(crate) fn run_on_device(
    gpu: &Gpu,
    args: &UnifiedArgs,
    num_segments: usize,
    is_3d: bool,
    launch: impl FnOnce([&Buffer; 12]) -> Result<()>,
) -> Result<Vec<u32>> {
    let i = args.inputs();
    let (query, cache, meta, cfg) = (i.query(), i.cache(), i.meta(), i.cfg());
    let (t_n, hq, d) = (meta.num_actual_tokens(), cfg.num_heads(), cfg.head_size());
    let dev = gpu.dev.as_ref();
    let q = Buffer::from_bytes(dev, &bytes_of(query, cfg.dtype()))?;
    let kc = Buffer::from_bytes(dev, &bytes_of(&cache.k, cfg.kv_dtype()))?;
    let vc = Buffer::from_bytes(dev, &bytes_of(&cache.v, cfg.kv_dtype()))?;
    let bt = Buffer::from_bytes(dev, &bytes_of_i32(&meta.block_table().data))?;
    let qsl = Buffer::from_bytes(dev, &bytes_of_i32(meta.query_start_loc()))?;
    let sl = Buffer::from_bytes(dev, &bytes_of_i32(meta.seq_lens()))?;
    let sinks = Buffer::from_bytes(dev, &bytes_of(cfg.sinks().unwrap_or(&[0.0]), DType::F32))?;
    let alibi = Buffer::from_bytes(
        dev,
        &bytes_of(cfg.alibi_slopes().unwrap_or(&[0.0]), DType::F32),
    )?;
    let out = Buffer::zeroed(dev, t_n * hq * d * cfg.dtype().size_bytes())?;
    let parts = t_n * hq * num_segments;
    let (p_n, p_acc) = if is_3d { (parts, parts * d) } else { (1, 1) };
    let segm_acc = Buffer::zeroed(dev, p_acc * 4)?;
    let segm_m = Buffer::from_bytes(dev, &bytes_of(&vec![f32::NEG_INFINITY; p_n], DType::F32))?;
    let segm_l = Buffer::zeroed(dev, p_n * 4)?;
    launch([
        &q, &kc, &vc, &bt, &qsl, &sl, &sinks, &alibi, &out, &segm_acc, &segm_m, &segm_l,
    ])?;
    Ok(bits_from_bytes(&out.to_bytes()?, cfg.dtype()))
}

/// Query rows and threads of one tiled program (`TILE_BM`, `TILE_THREADS`).
const TILED_ROWS: usize = 64;
const TILED_THREADS: u32 = 256;
/// Keys per staged block (`UA_BN`) and dims / keys per staged chunk
/// (`TILE_DK`, `TILE_VK`) of the tiled kernel.
const TILED_BLOCK_N: usize = 128;
const TILED_DK: usize = 8;
const TILED_VK: usize = 8;

/// Shared memory (bytes) of one `unified_attention_tiled` program, if the
/// register-tiled kernel takes the launch: the 2D grid (its rows need not
/// be the launch's BLOCK_M: a tile fully masked for a row leaves the row's
/// state unchanged, see the kernel's header), head size % 16, a TILE_SIZE
/// that divides the 128-key staged block in whole 8-key V chunks, qpk
/// dividing 64 rows, and, for a kernel whose row keeps m = 0 after a fully
/// masked first tile (AITER, seed-era vLLM: `MaskedRowMax::KeepZero`), no
/// sliding window: then tile 0 holds key 0, visible to every row of both
/// row blockings. Mirrors the kernel's carve-up: P_s,
/// the Q/K or V staging union, m, l, skip and one alpha per tile and row.
pub fn tiled_shared_bytes(cfg: &AttnConfig, launch: &UnifiedLaunch) -> Option<usize> {
    let (d, tile, qpk) = (cfg.head_size(), launch.tile_size, cfg.queries_per_kv());
    let fits = launch.grid == Grid::TwoD
        && d.is_multiple_of(16)
        && tile.is_multiple_of(TILED_VK)
        && TILED_BLOCK_N.is_multiple_of(tile)
        && qpk > 0
        && TILED_ROWS.is_multiple_of(qpk)
        && (launch.masked_row_max() == MaskedRowMax::KeepNegInf || cfg.sliding_window().is_none());
    if !fits {
        return None;
    }
    let qk_stage = 2 * TILED_DK * (TILED_ROWS + TILED_BLOCK_N);
    let v_stage = 2 * TILED_VK * d;
    let floats = TILED_ROWS * (TILED_BLOCK_N + 4)
        + qk_stage.max(v_stage)
        + 3 * TILED_ROWS
        + TILED_BLOCK_N / tile * TILED_ROWS;
    (floats * 4 <= SHARED_MEMORY_LIMIT).then_some(floats * 4)
}

/// One unified-attention call prepared once (tiled or scalar kernel, module,
/// grids, argument struct, and the 3D reduce) and replayed on device
/// buffers: what the diff validates and the bench times.
pub struct UnifiedPlan {
    main: FunctionId,
    dims: LaunchDims,
    args: Arg,
    reduce: Option<ReduceSegments>,
    /// Whether the register-tiled kernel runs (else the scalar port).
    pub tiled: bool,
    pub num_segments: usize,
    pub is_3d: bool,
}

impl UnifiedPlan {
    /// `meta`, `cfg` and `launch` as [`unified_attention`] takes them; the
    /// launch is checked (BLOCK_Q, TILE_SIZE, segments, AITER causal, shared memory).
    pub fn new(
        gpu: &Gpu,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        launch: &UnifiedLaunch,
    ) -> Result<UnifiedPlan> {
        let (hq, d, qpk) = (cfg.num_heads(), cfg.head_size(), cfg.queries_per_kv());
        if launch.block_q == 0 || launch.block_q * qpk > launch.block_m || launch.tile_size == 0 {
            return Err(Error::invalid(
                "launch",
                format!("{launch:?}"),
                "BLOCK_Q >= 1, BLOCK_Q * qpk <= BLOCK_M, TILE_SIZE >= 1",
            )
            .into());
        }
        if launch.flavor == Flavor::Aiter && !meta.causal() {
            return Err(Error::unsupported(
                "non-causal AITER unified_attention",
                "Only causal attention is supported",
            )
            .into());
        }
        let num_segments = match launch.grid {
            Grid::TwoD => 1,
            Grid::ThreeD { num_segments: 0 } => {
                return Err(Error::invalid("num_segments", 0, "must be >= 1").into())
            }
            Grid::ThreeD { num_segments } => num_segments,
        };
        let is_3d = matches!(launch.grid, Grid::ThreeD { .. });
        let tiled = tiled_shared_bytes(cfg, launch);
        let zero_max = launch.masked_row_max() == MaskedRowMax::KeepZero;
        let (main, dims) = match tiled {
            Some(bytes) => {
                let rows_per_token = TILED_ROWS / qpk;
                let q_blocks = meta.num_actual_tokens() / rows_per_token + meta.num_reqs();
                let flavor = matches!(launch.flavor, Flavor::Aiter) as usize;
                let mut defines = qkv_defines(cfg.dtype(), cfg.kv_dtype()).to_vec();
                for (k, v) in [
                    ("UA_D", d),
                    ("UA_TILE", launch.tile_size),
                    ("UA_QPK", qpk),
                    ("UA_FLAVOR", flavor),
                    ("UA_ZERO_MAX", zero_max as usize),
                ] {
                    defines.push((k.to_string(), v.to_string()));
                }
                let f = gpu.function("unified_attention", &defines, "unified_attention_tiled")?;
                let grid = [
                    to_u32(q_blocks, "q blocks")?,
                    to_u32(cfg.num_kv_heads(), "kv heads")?,
                    1,
                ];
                (
                    f,
                    LaunchDims {
                        grid,
                        block: [TILED_THREADS, 1, 1],
                        shared_bytes: bytes as u32,
                    },
                )
            }
            None => {
                let rows = launch.block_q * qpk;
                let shared = (rows * launch.tile_size + rows * d + 3 * rows) * 4;
                if shared > SHARED_MEMORY_LIMIT {
                    return Err(Error::invalid(
                        "shared memory of one program",
                        shared,
                        format!("at most {SHARED_MEMORY_LIMIT} bytes: (BLOCK_Q * qpk) x (TILE_SIZE + head_size + 3) f32"),
                    )
                    .into());
                }
                let defines = qkv_defines(cfg.dtype(), cfg.kv_dtype());
                let f = gpu.function("unified_attention", &defines, "unified_attention")?;
                let grid = [
                    to_u32(launch.total_q_blocks(meta), "q blocks")?,
                    to_u32(cfg.num_kv_heads(), "kv heads")?,
                    to_u32(num_segments, "segments")?,
                ];
                (
                    f,
                    LaunchDims {
                        grid,
                        block: [128, 1, 1],
                        shared_bytes: shared as u32,
                    },
                )
            }
        };
        // AITER folds k_descale into the score scale (the sim's rule).
        let scale = launch.flavor.score_scale(cfg);
        let args = UnifiedParams {
            num_reqs: meta.num_reqs() as i64,
            num_heads: hq as i64,
            num_kv_heads: cfg.num_kv_heads() as i64,
            head_size: d as i64,
            block_size: meta.block_size() as i64,
            max_blocks: meta.block_table().max_blocks as i64,
            block_m: launch.block_m as i64,
            block_q: launch.block_q as i64,
            tile: launch.tile_size as i64,
            num_segments: num_segments as i64,
            window: cfg.sliding_window().unwrap_or(0) as i64,
            causal: meta.causal() as i32,
            flavor: matches!(launch.flavor, Flavor::Aiter) as i32,
            is_3d: is_3d as i32,
            has_sinks: cfg.sinks().is_some() as i32,
            has_alibi: cfg.alibi_slopes().is_some() as i32,
            softcap_formula: softcap_code(launch.softcap_formula()),
            zero_masked_max: zero_max as i32,
            scale,
            scale_log2: softmax_scale_log2(scale),
            softcap: cfg.softcap().unwrap_or(0.0),
            k_scale: cfg.k_scale(),
            v_scale: cfg.v_scale(),
        }
        .arg();
        let reduce = if is_3d {
            Some(ReduceSegments::new(gpu, meta, cfg, launch, num_segments)?)
        } else {
            None
        };
        Ok(UnifiedPlan {
            main,
            dims,
            args,
            reduce,
            tiled: tiled.is_some(),
            num_segments,
            is_3d,
        })
    }

    /// Buffers in the kernel's order: query, key_cache, value_cache,
    /// block_table, query_start_loc, seq_lens, sinks, alibi_slopes, out,
    /// segm_output, segm_max, segm_expsum (the last three only read in 3D).
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

/// The 3D grid's second launch, `reduce_segments` of
/// `kernels/unified_attention.hip`: one program per (token, head) merging
/// the segments' partials (both unified families end with it).
pub(crate) struct ReduceSegments {
    f: FunctionId,
    dims: LaunchDims,
    tail: [Arg; 6],
}

impl ReduceSegments {
    pub(crate) fn new(
        gpu: &Gpu,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        launch: &UnifiedLaunch,
        num_segments: usize,
    ) -> Result<Self> {
        let (hq, d) = (cfg.num_heads(), cfg.head_size());
        let f = gpu.function(
            "unified_attention",
            &qkv_defines(cfg.dtype(), cfg.kv_dtype()),
            "reduce_segments",
        )?;
        let dims = LaunchDims {
            grid: [
                to_u32(meta.num_actual_tokens().max(1), "tokens")?,
                to_u32(hq, "heads")?,
                1,
            ],
            block: [d.min(128) as u32, 1, 1],
            shared_bytes: 0,
        };
        let tail = [
            Arg::I64(meta.num_reqs() as i64),
            Arg::I64(hq as i64),
            Arg::I64(d as i64),
            Arg::I64(num_segments as i64),
            Arg::I64(launch.tile_size as i64),
            Arg::I32((launch.segment_reduce() == SegmentReduce::ValidOnly) as i32),
        ];
        Ok(ReduceSegments { f, dims, tail })
    }
}

/// A unified-attention launch (`main` with its parameter block `args`),
/// then, on the 3D grid, `reduce_segments` over its partials. Buffers in
/// the kernels' order: query, key_cache, value_cache, block_table,
/// query_start_loc, seq_lens, sinks, alibi_slopes, out, segm_output,
/// segm_max, segm_expsum.
pub(crate) fn launch_unified(
    gpu: &Gpu,
    main: FunctionId,
    dims: LaunchDims,
    args: &Arg,
    reduce: Option<&ReduceSegments>,
    bufs: [&Buffer; 12],
) -> Result<()> {
    let dev = gpu.dev.as_ref();
    let mut call: Vec<Arg> = bufs.iter().map(|b| b.arg()).collect();
    call.push(args.clone());
    // SAFETY: the arguments are the kernel's parameter list in order (the
    // by-value block layout-checked by gpu/tests/param_layout.rs), and the
    // callers size every buffer for the shapes those scalars and this grid
    // index (from the same metadata).
    unsafe { dev.launch(main, dims, &call) }?;
    if let Some(r) = reduce {
        let mut call: Vec<Arg> = [bufs[9], bufs[10], bufs[11], bufs[4], bufs[5], bufs[8]]
            .iter()
            .map(|b| b.arg())
            .collect();
        call.extend(r.tail.iter().cloned());
        // SAFETY: reduce_segments' parameter list in order, over the 3D
        // partials the main launch wrote (sized tokens x heads x segments).
        unsafe { dev.launch(r.f, r.dims, &call) }?;
    }
    Ok(())
}

/// portable.h's `SOFTCAP_*` code of a formula.
pub(crate) fn softcap_code(f: SoftcapFormula) -> i32 {
    match f {
        SoftcapFormula::Tanh => 0,
        SoftcapFormula::VllmTwoExp => 1,
        SoftcapFormula::VllmOneExp => 2,
        SoftcapFormula::AiterTwoExp2 => 3,
    }
}

pub(crate) fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(what, v, "a launch dimension below 2^32").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnlab_shared::metadata::BlockTableTensor;
    use attnlab_sim::kernels::unified_attention::VllmLaunchOptions;
    use attnlab_sim::profile::VllmProfile;

    /// One causal prefill row of `tokens` tokens, block size 16.
    fn prefill_meta(tokens: usize) -> AttentionMetadata {
        let per = tokens.div_ceil(16);
        AttentionMetadata::new(
            16,
            per,
            vec![0, tokens as i32],
            vec![tokens as i32],
            BlockTableTensor::from_rows(&[(0..per as i32).collect()]),
            (0..tokens as i64).collect(),
            true,
        )
        .expect("valid metadata")
    }

    #[test]
    fn tiled_kernel_takes_the_bench_prefill_and_aiter_long_prefill_launches() {
        let meta = prefill_meta(4096);
        let cfg = AttnConfig::new(32, 8, 128, DType::Bf16).unwrap();
        let vllm = UnifiedLaunch::vllm(&meta, &cfg, VllmLaunchOptions::default()).unwrap();
        assert_eq!(
            (vllm.grid, vllm.block_m, vllm.tile_size),
            (Grid::TwoD, 16, 32)
        );
        let bytes = tiled_shared_bytes(&cfg, &vllm).expect("tiled");
        assert!(bytes <= SHARED_MEMORY_LIMIT);
        // AITER's BLOCK_M 128 x TILE 64 program needs 99 KiB in the scalar
        // port; the tiled kernel runs it in its own 64-row programs.
        let aiter = UnifiedLaunch::aiter(&meta, &cfg, 304).unwrap();
        assert_eq!(
            (aiter.grid, aiter.block_m, aiter.tile_size),
            (Grid::TwoD, 128, 64)
        );
        assert!(tiled_shared_bytes(&cfg, &aiter).is_some());
        for (qpk, d, tile) in [(1, 64, 16), (8, 96, 128), (16, 128, 32), (64, 64, 64)] {
            let cfg = AttnConfig::new(qpk, 1, d, DType::F16).unwrap();
            let launch = vllm.with_grid(Grid::TwoD);
            let launch = UnifiedLaunch {
                tile_size: tile,
                ..launch
            };
            assert!(
                tiled_shared_bytes(&cfg, &launch).is_some(),
                "qpk {qpk} d {d} tile {tile}"
            );
        }
    }

    #[test]
    fn launches_the_tiled_kernel_cannot_take_fall_back_to_the_scalar_port() {
        let meta = prefill_meta(64);
        let cfg = AttnConfig::new(32, 8, 128, DType::Bf16).unwrap();
        let base = UnifiedLaunch::vllm(&meta, &cfg, VllmLaunchOptions::default()).unwrap();
        // 3D (segments split the tiles), TILE_SIZE not dividing 128 in whole
        // 8-key chunks, or so small that the per-tile alphas overflow 48 KiB.
        assert_eq!(
            tiled_shared_bytes(&cfg, &base.with_grid(Grid::ThreeD { num_segments: 4 })),
            None
        );
        for tile in [1, 4, 24, 256, 8] {
            let launch = UnifiedLaunch {
                tile_size: tile,
                ..base
            };
            assert_eq!(tiled_shared_bytes(&cfg, &launch), None, "tile {tile}");
        }
        // Head size not a multiple of 16, qpk not dividing 64 rows, head size
        // whose V staging overflows 48 KiB.
        for (hq, hkv, d) in [(4, 1, 72), (6, 2, 64), (3, 1, 128), (4, 1, 256)] {
            let cfg = AttnConfig::new(hq, hkv, d, DType::Bf16).unwrap();
            assert_eq!(tiled_shared_bytes(&cfg, &base), None, "{hq}/{hkv} x {d}");
        }
        // A sliding window with a kernel that keeps m = 0 on a row with no
        // key yet (AITER, the seed era's vLLM); vLLM 0.34 keeps -inf.
        let windowed = attnlab_sim::config::AttnConfigBuilder {
            sliding_window: Some(32),
            ..cfg.to_builder()
        }
        .build()
        .unwrap();
        let aiter = UnifiedLaunch {
            flavor: Flavor::Aiter,
            ..base
        };
        let v0_34 = UnifiedLaunch {
            profile: VllmProfile::V0_34,
            ..base
        };
        assert!(tiled_shared_bytes(&cfg, &aiter).is_some());
        assert_eq!(tiled_shared_bytes(&windowed, &aiter), None);
        assert!(tiled_shared_bytes(&cfg, &base).is_some());
        assert_eq!(tiled_shared_bytes(&windowed, &base), None);
        assert!(tiled_shared_bytes(&windowed, &v0_34).is_some());
    }
}
