//! Unified attention: vLLM's Triton `kernel_unified_attention_2d` /
//! `kernel_unified_attention_3d` + `reduce_segments`
//! (`vllm/v1/attention/ops/triton_unified_attention.py`, vllm-backends.md §9)
//! and AITER's copy of it (`aiter/ops/triton/.../unified_attention.py`,
//! §10.3, aiter.md §5), as one loop nest whose differences are the
//! parameters of [`Flavor`] and [`UnifiedLaunch`]. One launch covers the
//! whole batch (decode, extend and prefill rows alike) reading every key,
//! old and new, from the paged cache.
//!
//! Grid and work mapping (vllm-backends §9.2):
//! ```text
//! BLOCK_M = 16 if qpk <= 16 else next_pow2(qpk)      // qpk = Hq / Hkv
//! BLOCK_Q = BLOCK_M / qpk                             // query tokens per program
//! grid 2D (total_q_blocks, Hkv); 3D (total_q_blocks, Hkv, NUM_SEGMENTS)
//! total_q_blocks = T / BLOCK_Q + num_seqs             // surplus programs exit
//! program (g, kvh[, s]):
//!   seq  = last i with qsl[i] / BLOCK_Q + i <= g      // find_seq_idx
//!   qblk = g - (qsl[seq] / BLOCK_Q + seq); exit if qblk * BLOCK_Q >= q_len
//!   row m < BLOCK_Q * qpk:  token q_local = qblk * BLOCK_Q + m / qpk,
//!                            head kvh * qpk + m % qpk  (masked if q_local >= q_len)
//!   (max_prefix, tile_start, tile_end) = compute_tile_loop_bounds    // vllm-backends §9.3
//!   3D: tps = cdiv(seq_len, S * TILE); exit (no write) if s * tps * TILE >= seq_len;
//!       tiles [max(s * tps, tile_start), min((s + 1) * tps, tile_end))
//!   m_i = sink * LOG2E (2D, or 3D segment 0) else -inf; l_i = 1 with a sink else 0; acc = 0
//!   for j in tiles, ascending:
//!     keys t = j * TILE .. min((j + 1) * TILE, max_prefix)  // tile_mask t < max_prefix
//!     K^T, V tile gathered per key through block_table[seq][t / N], row t % N
//!       (TILE is independent of the block size N: a tile may straddle blocks)
//!     for each row m:
//!       s_t = ScoreParams::score(fma-chain q . k_t over d ascending, alibi slope * (t - ctx))
//!       s_t = -inf unless (causal: t <= ctx + q_local | non-causal: t < seq_len)
//!                      and window: (ctx + q_local) - t < SW  [and t - (ctx + q_local) < SW if non-causal]
//!       s_t's soft-cap spelled as the kernel does (UnifiedLaunch::softcap_formula)
//!       RowState::update(s, V tile, P -> Q dtype)            // online softmax, softmax.rs
//!       m_i = masked_row_max().apply(m_i)                    // AITER, seed-era vLLM: -inf -> 0 (vllm-backends §10.3)
//! 2D epilogue: vLLM out = acc / l_i; AITER out = acc * (v_scale / l_i); unguarded
//!   (l_i = 0 only after every P underflowed: NaN); cast to the out dtype
//! 3D epilogue: f32 partials (acc [* v_scale for AITER], m_i, l_i) per segment
//! reduce_segments, grid (T, Hq): nact = cdiv(seq_len, tps * TILE) written segments;
//!   valid s: every s < nact (AllWritten: seed-era vLLM, AITER) or l_s > 0 and
//!   m_s > -inf (ValidOnly: vLLM 0.34); g = max of valid m_s;
//!   w_s = valid ? exp2c(m_s - g) : 0;
//!   num[d] = fma(acc_s[d], w_s, num[d]), den = fma(l_s, w_s, den), every s < nact
//!   ascending (a NaN partial poisons the row even at w_s = 0, as NaN * 0 does
//!   in the kernel); out = num / den (0 when den == 0), cast to the out dtype
//! The three per-version behaviours (guard, soft-cap, reduce) come from
//! [`VllmProfile`] for [`Flavor::Vllm`] and are fixed for [`Flavor::Aiter`]
//! (`crate::profile` lists what each vLLM version's source does).
//! ```
//!
//! Rounding points (vllm-backends §20.2): K/V loaded from the cache and cast to the Q dtype
//! (vLLM: fp8 widened, `* scale` in f32, then cast; AITER: fp8 widened only,
//! `k_scale` folded into the score scale and `v_scale` into the epilogue);
//! scores and the online softmax in f32; P rounded to the Q (= V) dtype
//! before the PV fma; 2D: normalise then cast; 3D: f32 partials, f32 reduce,
//! one cast at the end.
//!
//! Constants (vllm-backends §20.3): `MIN_LAUNCH_GRID_SIZE_2D` 128 (`seq_threshold_3D =
//! 128 / Hkv`), `NUM_PAR_SOFTMAX_SEGMENTS` 16, `MAX_3D_QUERY_LEN` 8, vLLM
//! TILE 32 (2D) / 16 (3D); AITER TILE 64 (2D prefill on CDNA) or
//! `min(64, next_pow2(N))` (decode, 3D).
//!
//! Deliberate differences from the GPU kernels:
//! - exp is the contract's `exp2c` in base 2 with `scale * LOG2E` folded once
//!   for both flavours (vLLM's kernel uses natural `tl.exp`); the soft-cap is
//!   applied to the natural score (`ScoreParams::score`), the reduce uses
//!   exp2c on base-2 maxima.
//! - vLLM starts `L = 1.0` and relies on the first tile's `alpha = 0` to wipe
//!   it; we start at 0 (1 with a sink, as `RowState::new`): identical results.
//!   A segment whose loop range is empty stores `(m = -inf, l = 1)` on the GPU
//!   and `(-inf, 0)` here: its weight is `exp2c(-inf - g) = 0` (or invalid)
//!   either way, and `1 * 0 = 0 * 0`.
//! - When `BLOCK_M % qpk != 0` the GPU's trailing rows recompute the next
//!   q-block's first token and both programs store it (vllm-backends §19.9). The emulator
//!   computes every (token, head) once, in the program that owns the token;
//!   for vLLM the duplicate is bit-identical, for AITER with a window it is a
//!   store race on the GPU.
//! - Execution grouping: the emulator runs up to [`Q_BLOCKS_PER_UNIT`]
//!   consecutive q-block programs of one (request, kv head, segment) as one
//!   rayon task so a gathered K/V tile serves all their rows. Each row keeps
//!   its own program's tile range and key limit, so this is bit-neutral
//!   (`running_q_blocks_together_is_bit_neutral`); a HIP port runs one
//!   program per workgroup.
//! - fp8 queries ("fp8-Q" mode), fp8 outputs, `qq_bias`, mm-prefix, R-SWA,
//!   chunked local attention and per-token-head KV quantisation are not
//!   modelled (no ROCm seed-era backend configuration here reaches them).

use super::softmax::{
    dequant_kv, visible, DimOffsets, KvTile, MaskedRowMax, RowState, ScoreParams,
};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::paged_decode::PagedInputs;
use crate::kernels::KernelCall;
use crate::numerics::{exp2c, SoftcapFormula};
use crate::profile::VllmProfile;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::{Fault, FaultSet};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;
use rayon::prelude::*;

/// vLLM: `seq_threshold_3D = MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads`.
pub const MIN_LAUNCH_GRID_SIZE_2D: usize = 128;
/// vLLM: segments of the 3D split-KV kernel (64 only on CUDA SM120).
pub const NUM_PAR_SOFTMAX_SEGMENTS: usize = 16;
/// vLLM: the longest query (speculative decode) the 3D kernel takes.
pub const MAX_3D_QUERY_LEN: usize = 8;
/// Rows a tile serves up to which [`Kernel::load_kv`] prefetches the next
/// tile (decode-shaped programs, which stream K/V); a program of more rows
/// spends long enough on each tile that the hint only costs instructions.
const PREFETCH_ROWS: usize = 16;

/// vLLM: TILE_SIZE of the 2D kernel.
pub const TILE_SIZE_2D: usize = 32;
/// vLLM: TILE_SIZE of the 3D kernel for 2-byte (and wider) queries.
pub const TILE_SIZE_3D: usize = 16;
/// AITER: 2D prefill TILE_SIZE on CDNA (`select_2d_config`).
pub const AITER_TILE_SIZE_PREFILL: usize = 64;
/// AITER: the 2D kernel is used whenever `max_seqlen_k` is at most this.
pub const AITER_MAX_SEQLEN_K_2D: usize = 512;
/// Compute units of an MI300X: AITER sizes its grids from the CU count.
pub const MI300X_CU_COUNT: usize = 304;

/// Which copy of the kernel runs: they share the loop nest and differ in
/// the launch rule, the fully-masked-row guard, the fp8 scale placement and
/// the epilogue (vllm-backends §10.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// vLLM's `triton_unified_attention` (TRITON_ATTN; AITER-unified's
    /// non-causal fallback).
    Vllm,
    /// AITER's `unified_attention` (ROCM_AITER_UNIFIED_ATTN, causal only).
    Aiter,
}

impl Flavor {
    /// A K or V cache element `x` (its value, exactly widened) as the
    /// kernel's tile load turns it into a query-dtype operand: vLLM
    /// dequantizes an fp8 cache (`x * scale` in f32, [`dequant_kv`]) and
    /// casts to the query dtype (`_cast_kv_tile`'s per-tensor mode); AITER
    /// only casts (its scales are folded elsewhere: [`Flavor::score_scale`],
    /// [`Flavor::v_descale`]). A cache in another 16-bit dtype is cast by
    /// both; fp8 values are exact in f16 and bf16.
    #[inline]
    pub fn kv_to_q(self, x: f32, scale: f32, cfg: &AttnConfig) -> f32 {
        let (q, kv) = (cfg.dtype(), cfg.kv_dtype());
        match self {
            Flavor::Vllm => q.round(dequant_kv(x, scale, kv, q)),
            Flavor::Aiter => q.round(x),
        }
    }

    /// The softmax scale the kernel applies to Q·Kᵀ: AITER folds an fp8
    /// cache's `k_scale` into it (`qk_scale * k_descale`); vLLM's is the
    /// layer's.
    #[inline]
    pub fn score_scale(self, cfg: &AttnConfig) -> f32 {
        match self {
            Flavor::Aiter if cfg.kv_dtype().is_fp8() => cfg.scale() * cfg.k_scale(),
            _ => cfg.scale(),
        }
    }

    /// AITER's `v_descale` over an fp8 cache, applied to the accumulator in
    /// the epilogue (2D `acc * (v_descale / l)`, 3D `acc * v_descale` stored);
    /// `None` for vLLM (V was dequantized at the load) and 16-bit caches.
    #[inline]
    pub fn v_descale(self, cfg: &AttnConfig) -> Option<f32> {
        match self {
            Flavor::Aiter if cfg.kv_dtype().is_fp8() => Some(cfg.v_scale()),
            _ => None,
        }
    }
}

/// Which segments `reduce_segments` combines (the written ones: `s < nact`,
/// `nact = cdiv(seq_len, tps * TILE)`; each has stored `(acc, m, l)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SegmentReduce {
    /// Every written segment enters the max and both sums: `g = max m_s`,
    /// `w_s = exp2c(m_s - g)` (the seed era's `reduce_segments`,
    /// `triton_unified_attention.py` @00139433; AITER's). A segment that
    /// kept `m = 0` after fully masked tiles raises `g` to 0.
    #[default]
    AllWritten,
    /// Only segments with `l > 0` and `m > -inf` set the max; the others
    /// get weight 0 but are still multiplied in (`w = 0`, vLLM 0.34's
    /// `reduce_segments` with `valid_segment`), so a NaN `l` or `acc`
    /// still makes the output NaN (`NaN * 0`).
    ValidOnly,
}

/// 2D (one program covers all tiles of its rows) or 3D split-KV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grid {
    TwoD,
    ThreeD { num_segments: usize },
}

/// The launch parameters of one unified-attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnifiedLaunch {
    pub flavor: Flavor,
    pub block_m: usize,
    pub block_q: usize,
    pub tile_size: usize,
    pub grid: Grid,
    /// The vLLM version whose kernel behaviour [`Flavor::Vllm`] models
    /// (masked-row guard, soft-cap formula, reduce; see [`VllmProfile`]).
    /// AITER's kernel ignores it.
    pub profile: VllmProfile,
}

/// The inputs of vLLM's 2D/3D choice that come from the engine config
/// rather than the batch (`TritonAttentionMetadataBuilder`, §8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VllmLaunchOptions {
    /// `max_num_seqs`: sizes the 3D scratch with `seq_threshold_3D`.
    pub max_num_seqs: usize,
    /// `max_query_len_3d`: 1 without speculative decoding, else up to 8.
    pub max_query_len_3d: usize,
    /// `VLLM_BATCH_INVARIANT=1` forces 2D.
    pub batch_invariant: bool,
    /// Which vLLM's kernel runs (default: the fixtures' era).
    pub profile: VllmProfile,
    /// The engine's tensor-parallel size. The 2D/3D choice must not depend
    /// on it (the config's heads are already this rank's);
    /// [`Fault::ThresholdModelKvHeads`] multiplies it back in.
    pub tensor_parallel_size: usize,
}

impl Default for VllmLaunchOptions {
    fn default() -> Self {
        VllmLaunchOptions {
            max_num_seqs: 256,
            max_query_len_3d: 1,
            batch_invariant: false,
            profile: VllmProfile::default(),
            tensor_parallel_size: 1,
        }
    }
}

/// `BLOCK_M = 16 if qpk <= 16 else next_pow2(qpk)` (both flavours).
pub fn block_m_for(queries_per_kv: usize) -> usize {
    if queries_per_kv <= 16 {
        16
    } else {
        queries_per_kv.next_power_of_two()
    }
}

/// [`block_m_for`] with `faults` ([`Fault::BlockQTimesQpkNonPow2`]: the
/// wrapper uses `BLOCK_Q * qpk` as BLOCK_M, e.g. `(16 / 3) * 3 = 15`).
pub fn block_m_for_with(queries_per_kv: usize, faults: FaultSet) -> usize {
    let block_m = block_m_for(queries_per_kv);
    if faults.has(Fault::BlockQTimesQpkNonPow2) && queries_per_kv > 0 {
        block_m / queries_per_kv * queries_per_kv
    } else {
        block_m
    }
}

impl UnifiedLaunch {
    /// vLLM's wrapper (vllm-backends §9.1): 3D only when the scratch exists and holds the
    /// batch, no row is longer than `MAX_3D_QUERY_LEN` (or any is longer than
    /// 1 while non-causal), and `num_seqs * cdiv(max_seqlen_q, BLOCK_Q) <=
    /// seq_threshold_3D = 128 / Hkv`.
    pub fn vllm(
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        opts: VllmLaunchOptions,
    ) -> Result<Self> {
        let block_m = block_m_for_with(cfg.queries_per_kv(), cfg.faults());
        let block_q = block_m / cfg.queries_per_kv();
        // Per-rank KV heads; the fault reads the model's (every TP rank's).
        let threshold_heads = if cfg.faults().has(Fault::ThresholdModelKvHeads) {
            cfg.num_kv_heads() * opts.tensor_parallel_size.max(1)
        } else {
            cfg.num_kv_heads()
        };
        let seq_threshold_3d = MIN_LAUNCH_GRID_SIZE_2D / threshold_heads;
        let scratch_rows = seq_threshold_3d.min(opts.max_num_seqs) * opts.max_query_len_3d;
        let max_q = meta.max_query_len();
        let too_long = max_q > 1 && (max_q > MAX_3D_QUERY_LEN || !meta.causal());
        let too_many = meta.num_reqs() * max_q.div_ceil(block_q) > seq_threshold_3d;
        let use_3d = scratch_rows > 0
            && !(too_long || too_many || opts.batch_invariant)
            && scratch_rows >= meta.num_actual_tokens();
        let (tile_size, grid) = if use_3d {
            (
                TILE_SIZE_3D,
                Grid::ThreeD {
                    num_segments: NUM_PAR_SOFTMAX_SEGMENTS,
                },
            )
        } else {
            (TILE_SIZE_2D, Grid::TwoD)
        };
        Ok(UnifiedLaunch {
            flavor: Flavor::Vllm,
            block_m,
            block_q,
            tile_size,
            grid,
            profile: opts.profile,
        })
    }

    /// AITER's wrapper on CDNA (vllm-backends §10.3, aiter.md vllm-backends §5.2): 2D if sliding window,
    /// `max_seqlen_k <= 512`, more than `4 * cu_count` 2D programs, or
    /// head size >= 512 outside pure decode; else 3D with `NUM_SEGMENTS =
    /// next_pow2(clamp(cdiv(16 * cu_count, num_2d), MIN, MAX))`, `MAX =
    /// min(128, cdiv(max_seqlen_k, TILE))`, `MIN = min(8 (16 for D >= 512), MAX)`.
    /// The long-prefill BLOCK_M 128 and the per-head-size TILE of
    /// `select_2d_config` are applied; warps and stages do not change results.
    pub fn aiter(meta: &AttentionMetadata, cfg: &AttnConfig, cu_count: usize) -> Result<Self> {
        if cu_count == 0 {
            return Err(Error::invalid(
                "cu_count",
                0,
                "must be >= 1 (MI300X has 304)",
            ));
        }
        let qpk = cfg.queries_per_kv();
        let d = cfg.head_size();
        let all_decode = meta.max_query_len() <= 1;
        let block_m = block_m_for_with(qpk, cfg.faults());
        let q_blocks = meta.num_actual_tokens() / (block_m / qpk) + meta.num_reqs();
        let num_2d = q_blocks * cfg.num_kv_heads();
        let small_tile = meta.block_size().next_power_of_two().min(64);
        let use_2d = cfg.sliding_window().is_some()
            || meta.max_seq_len() <= AITER_MAX_SEQLEN_K_2D
            || num_2d > 4 * cu_count
            || (d >= 512 && !all_decode);
        if use_2d {
            let block_m = if meta.max_query_len() >= 256 {
                block_m.max(128)
            } else {
                block_m
            };
            let tile_size = if all_decode {
                small_tile
            } else if d >= 512 {
                16
            } else if d >= 256 {
                32
            } else {
                AITER_TILE_SIZE_PREFILL
            };
            return Ok(UnifiedLaunch {
                flavor: Flavor::Aiter,
                block_m,
                block_q: block_m / qpk,
                tile_size,
                grid: Grid::TwoD,
                profile: VllmProfile::default(),
            });
        }
        let max_segments = 128.min(meta.max_seq_len().div_ceil(small_tile));
        let min_segments = (if d >= 512 { 16 } else { 8 }).min(max_segments);
        let target = 16 * cu_count; // 4 * CUs * (waves_per_eu 2 * 4 / 2 warps)
        let num_segments = target
            .div_ceil(num_2d.max(1))
            .clamp(min_segments, max_segments)
            .next_power_of_two();
        Ok(UnifiedLaunch {
            flavor: Flavor::Aiter,
            block_m,
            block_q: block_m / qpk,
            tile_size: small_tile,
            grid: Grid::ThreeD { num_segments },
            profile: VllmProfile::default(),
        })
    }

    /// What a row's running max becomes after a tile fully masked for it
    /// while it has seen no key: AITER keeps 0 (aiter.md §5.3); vLLM per profile.
    pub fn masked_row_max(&self) -> MaskedRowMax {
        match self.flavor {
            Flavor::Aiter => MaskedRowMax::KeepZero,
            Flavor::Vllm => self.profile.unified_masked_row_max(),
        }
    }

    /// How the kernel's `apply_softcap` spells tanh.
    pub fn softcap_formula(&self) -> SoftcapFormula {
        match self.flavor {
            Flavor::Aiter => SoftcapFormula::AiterTwoExp2,
            Flavor::Vllm => self.profile.unified_softcap(),
        }
    }

    /// Which segments the kernel's `reduce_segments` combines.
    pub fn segment_reduce(&self) -> SegmentReduce {
        match self.flavor {
            Flavor::Aiter => SegmentReduce::AllWritten,
            Flavor::Vllm => self.profile.unified_reduce(),
        }
    }

    /// The same launch with another grid (e.g. to check 3D against 2D).
    pub fn with_grid(self, grid: Grid) -> Self {
        UnifiedLaunch { grid, ..self }
    }

    /// Programs along the q-block axis: `T / BLOCK_Q + num_seqs`.
    pub fn total_q_blocks(&self, meta: &AttentionMetadata) -> usize {
        meta.num_actual_tokens() / self.block_q + meta.num_reqs()
    }

    fn validate(&self, cfg: &AttnConfig) -> Result<()> {
        let qpk = cfg.queries_per_kv();
        if self.block_q == 0 || self.block_q * qpk > self.block_m {
            return Err(Error::invalid(
                "BLOCK_Q",
                self.block_q,
                format!(
                    "must be >= 1 with BLOCK_Q * qpk <= BLOCK_M = {} (qpk = {qpk})",
                    self.block_m
                ),
            ));
        }
        if self.tile_size == 0 {
            return Err(Error::invalid("TILE_SIZE", 0, "must be >= 1"));
        }
        if self.grid == (Grid::ThreeD { num_segments: 0 }) {
            return Err(Error::invalid("num_segments", 0, "must be >= 1"));
        }
        Ok(())
    }

    fn kernel_prefix(&self) -> &'static str {
        match self.flavor {
            Flavor::Vllm => "",
            Flavor::Aiter => "aiter.",
        }
    }

    /// The launches `unified_attention` makes, as `attnlab trace` shows them:
    /// the attention kernel (query, the KV it reads, grid) and for 3D the reduce.
    pub fn kernel_calls(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Vec<KernelCall> {
        let (t, hq, hkv, d) = (
            meta.num_actual_tokens(),
            cfg.num_heads(),
            cfg.num_kv_heads(),
            cfg.head_size(),
        );
        let q_blocks = self.total_q_blocks(meta);
        let common = |grid: Vec<usize>| {
            vec![
                ("query", vec![t, hq, d]),
                (
                    "key_cache",
                    vec![meta.num_blocks(), meta.block_size(), hkv, d],
                ),
                ("kv_read", vec![meta.max_seq_len(), hkv, d]),
                (
                    "block_table",
                    vec![meta.num_reqs(), meta.block_table().max_blocks],
                ),
                ("tile", vec![self.block_m, self.tile_size]),
                ("grid", grid),
            ]
        };
        let p = self.kernel_prefix();
        match self.grid {
            Grid::TwoD => vec![KernelCall::new(
                &format!("{p}kernel_unified_attention_2d"),
                &common(vec![q_blocks, hkv]),
            )],
            Grid::ThreeD { num_segments } => vec![
                KernelCall::new(
                    &format!("{p}kernel_unified_attention_3d"),
                    &common(vec![q_blocks, hkv, num_segments]),
                ),
                KernelCall::new(
                    &format!("{p}reduce_segments"),
                    &[
                        ("segm_output", vec![t, hq, num_segments, d]),
                        ("output", vec![t, hq, d]),
                        ("grid", vec![t, hq]),
                    ],
                ),
            ],
        }
    }
}

/// One unified-attention launch, validated once: the paged inputs
/// ([`PagedInputs`]: consistent metadata, matching shapes) and a launch the
/// kernel takes over an NHD cache (the checks of [`unified_attention`]
/// itself: launch rules, AITER's causal-only rule). Both kernel executors
/// and the GPU launcher take it; everything is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct UnifiedArgs<'a> {
    inputs: PagedInputs<'a>,
    launch: &'a UnifiedLaunch,
}

impl<'a> UnifiedArgs<'a> {
    pub fn new(
        query: &'a [f32],
        cache: &'a KvCache,
        meta: &'a AttentionMetadata,
        cfg: &'a AttnConfig,
        launch: &'a UnifiedLaunch,
    ) -> Result<Self> {
        // The kernel's own validation, in its order: the batch, then the launch.
        let inputs = PagedInputs::new(query, cache, meta, cfg)?;
        Kernel::check_launch(cache, meta, cfg, launch)?;
        Ok(UnifiedArgs { inputs, launch })
    }
    pub fn inputs(&self) -> &PagedInputs<'a> {
        &self.inputs
    }
    pub fn launch(&self) -> &'a UnifiedLaunch {
        self.launch
    }
}

/// The f32 scratch of the 3D kernel: per (token, head, segment) the
/// unnormalised `acc` (`[T, Hq, S, D]`), the running max `m` (base 2) and
/// the denominator `l` (`[T, Hq, S]`). Segments a program skipped keep
/// `m = -inf, l = 0` (the GPU leaves stale scratch there; the reduce never
/// reads either).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentPartials {
    pub num_segments: usize,
    pub head_size: usize,
    pub acc: Vec<f32>,
    pub m: Vec<f32>,
    pub l: Vec<f32>,
}

/// Runs the kernel `launch` describes over the whole batch: 2D, or 3D and
/// `reduce_segments`. Returns `[T, Hq, D]` in `cfg.dtype`.
pub fn unified_attention(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    launch: &UnifiedLaunch,
) -> Result<Vec<f32>> {
    unified(&UnifiedArgs::new(query, cache, meta, cfg, launch)?)
}

/// [`unified_attention`] over validated arguments: the kernel is built from
/// them without checking them again.
pub fn unified(args: &UnifiedArgs) -> Result<Vec<f32>> {
    let k = Kernel::from_args(args);
    match k.launch.grid {
        Grid::TwoD => Ok(run_2d(&k)),
        Grid::ThreeD { num_segments } => {
            let partials = run_3d(&k, num_segments);
            reduce_segments(&partials, k.meta, k.cfg, k.launch)
        }
    }
}

/// The 2D kernel: `[T, Hq, D]` in `cfg.dtype`. `launch.grid` is ignored.
pub fn unified_attention_2d(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    launch: &UnifiedLaunch,
) -> Result<Vec<f32>> {
    Ok(run_2d(&Kernel::new(query, cache, meta, cfg, launch)?))
}

fn run_2d(k: &Kernel) -> Vec<f32> {
    let (meta, cfg) = (k.meta, k.cfg);
    let (hq, d) = (cfg.num_heads(), cfg.head_size());
    // Each unit's epilogue in its own task (rows x D, in the unit's row
    // order); only the copies into `out` are serial.
    let units = k.units(1, Q_BLOCKS_PER_UNIT);
    let shared = k.share_kv(&units);
    let results: Vec<(Vec<RowId>, Vec<f32>)> = k
        .head_groups(units)
        .par_iter()
        .flat_map_iter(|us| k.run_heads(us, &shared))
        .map(|r| {
            let mut vals = vec![0.0f32; r.rows.len() * d];
            for (state, dst) in r.states.iter().zip(vals.chunks_exact_mut(d)) {
                k.epilogue_2d(state, dst);
            }
            (r.rows, vals)
        })
        .collect();
    let mut out = vec![0.0f32; meta.num_actual_tokens() * hq * d];
    for (rows, vals) in results {
        for (row, v) in rows.iter().zip(vals.chunks_exact(d)) {
            out[(row.token * hq + row.head) * d..][..d].copy_from_slice(v);
        }
    }
    out
}

/// The 3D kernel: per-segment f32 partials. Panics never; errors if
/// `launch.grid` is not 3D.
pub fn unified_attention_3d(
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    launch: &UnifiedLaunch,
) -> Result<SegmentPartials> {
    let Grid::ThreeD { num_segments } = launch.grid else {
        return Err(Error::invalid(
            "grid",
            "2D",
            "unified_attention_3d needs Grid::ThreeD { num_segments }",
        ));
    };
    Ok(run_3d(
        &Kernel::new(query, cache, meta, cfg, launch)?,
        num_segments,
    ))
}

fn run_3d(k: &Kernel, num_segments: usize) -> SegmentPartials {
    let (meta, cfg, launch) = (k.meta, k.cfg, k.launch);
    let (hq, d, s_n) = (cfg.num_heads(), cfg.head_size(), num_segments);
    let units = k.units(s_n, Q_BLOCKS_PER_UNIT);
    let shared = k.share_kv(&units);
    let results: Vec<UnitRows> = k
        .head_groups(units)
        .par_iter()
        .flat_map_iter(|us| k.run_heads(us, &shared))
        .collect();
    let rows = meta.num_actual_tokens() * hq * s_n;
    let mut parts = SegmentPartials {
        num_segments: s_n,
        head_size: d,
        acc: vec![0.0; rows * d],
        m: vec![f32::NEG_INFINITY; rows],
        l: vec![0.0; rows],
    };
    // AITER folds v_descale into the stored acc (`acc *= v_descale`); vLLM stores it raw.
    let v_fold = launch.flavor.v_descale(cfg);
    for r in results {
        for (row, state) in r.rows.iter().zip(&r.states) {
            let i = (row.token * hq + row.head) * s_n + r.segment;
            parts.m[i] = state.m;
            parts.l[i] = state.l;
            let dst = &mut parts.acc[i * d..(i + 1) * d];
            match v_fold {
                Some(vs) => dst
                    .iter_mut()
                    .zip(&state.acc)
                    .for_each(|(o, a)| *o = a * vs),
                None => dst.copy_from_slice(&state.acc),
            }
        }
    }
    parts
}

/// `reduce_segments` (grid `(T, Hq)`): combines the valid segments of each
/// (token, head) in ascending order (see the module doc); `[T, Hq, D]` in
/// `cfg.dtype`.
pub fn reduce_segments(
    parts: &SegmentPartials,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    launch: &UnifiedLaunch,
) -> Result<Vec<f32>> {
    let (t_n, hq, d, s_n) = (
        meta.num_actual_tokens(),
        cfg.num_heads(),
        cfg.head_size(),
        parts.num_segments,
    );
    let rows = t_n * hq * s_n;
    if parts.head_size != d
        || parts.m.len() != rows
        || parts.l.len() != rows
        || parts.acc.len() != rows * d
        || s_n == 0
    {
        return Err(Error::invalid(
            "segment partials",
            format!(
                "{} segments of head size {} with {} rows",
                s_n,
                parts.head_size,
                parts.m.len()
            ),
            format!(
                "need >= 1 segment, head size {d} and {t_n} tokens x {hq} heads x segments rows"
            ),
        ));
    }
    if launch.tile_size == 0 {
        return Err(Error::invalid("TILE_SIZE", 0, "must be >= 1"));
    }
    let tile = launch.tile_size;
    let rule = launch.segment_reduce();
    let mut out = vec![0.0f32; t_n * hq * d];
    out.par_chunks_mut(d).enumerate().for_each(|(th, o)| {
        let token = th / hq;
        // find_seq_idx(q_block_mode=False): the last request starting at or before `token`.
        let seq = meta.query_start_loc()[1..].partition_point(|&x| x as usize <= token);
        let seq_len = meta.seq_len(seq);
        if seq_len == 0 {
            return;
        }
        let tps = seq_len.div_ceil(s_n * tile);
        let nact = seq_len.div_ceil(tps * tile).min(s_n);
        let base = th * s_n;
        let valid = |s: usize| match rule {
            SegmentReduce::AllWritten => true,
            SegmentReduce::ValidOnly => {
                parts.l[base + s] > 0.0 && parts.m[base + s] > f32::NEG_INFINITY
            }
        };
        // tl.max ignores NaN (maxnumf), as f32::max does.
        let g = (0..nact)
            .filter(|&s| valid(s))
            .fold(f32::NEG_INFINITY, |a, s| a.max(parts.m[base + s]));
        let mut num = vec![0.0f32; d];
        let mut den = 0.0f32;
        for s in 0..nact {
            // An invalid segment is weighted 0 but still multiplied in:
            // finite partials add +-0 (no bit changes), NaN or inf ones NaN.
            let w = if valid(s) {
                exp2c(nan_fresh(parts.m[base + s] - g))
            } else {
                0.0
            };
            den = parts.l[base + s].mul_add(w, den);
            for (n, &a) in num
                .iter_mut()
                .zip(&parts.acc[(base + s) * d..(base + s + 1) * d])
            {
                *n = a.mul_add(w, *n);
            }
        }
        if den != 0.0 {
            for (o, n) in o.iter_mut().zip(&num) {
                *o = cfg.dtype().round(nan_fresh(n / den));
            }
        }
    });
    Ok(out)
}

/// A NaN made by an invalid operation (`0 / 0`, `inf / inf`, `0 * inf`,
/// `-inf - -inf`) has platform-dependent bits (x86 and NVIDIA differ), so
/// where a kernel can produce one the contract names it: `f32::NAN`
/// (portable.h `nan_fresh`). Any other value passes unchanged.
#[inline]
pub fn nan_fresh(x: f32) -> f32 {
    if x.is_nan() {
        f32::NAN
    } else {
        x
    }
}

/// `find_seq_idx(q_block_mode=True)`: the last request i with
/// `qsl[i] / BLOCK_Q + i <= g` (request i's q-blocks start at that index).
pub fn find_seq_idx(query_start_loc: &[i32], num_seqs: usize, block_q: usize, g: usize) -> usize {
    // qsl[i] / BLOCK_Q + i is strictly increasing in i: binary search.
    let (mut lo, mut hi) = (0, num_seqs);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if query_start_loc[mid] as usize / block_q + mid <= g {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo.saturating_sub(1)
}

/// `compute_tile_loop_bounds` (vllm-backends §9.3) for q-block `qblk` of a request:
/// keys `< max_prefix` are loaded; tiles `[tile_start, tile_end)` are
/// visited (a sliding window prunes tiles wholly before the earliest row's
/// window and after the latest row's last key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileBounds {
    pub max_prefix: usize,
    pub tile_start: usize,
    pub tile_end: usize,
}

impl TileBounds {
    /// `window` is SLIDING_WINDOW (0 = off). Meaningful for a program that
    /// runs (`qblk * BLOCK_Q < q_len <= seq_len`); never panics.
    pub fn new(
        launch: &UnifiedLaunch,
        qpk: usize,
        qblk: usize,
        q_len: usize,
        seq_len: usize,
        causal: bool,
        window: usize,
    ) -> Self {
        // Zero sizes (a hand-built launch; kernels reject it first) count as 1.
        let (bq, bm, tile) = (
            launch.block_q.max(1),
            launch.block_m.max(1),
            launch.tile_size.max(1),
        );
        let qpk = qpk.max(1);
        let ctx = seq_len.saturating_sub(q_len);
        let max_prefix = if causal {
            (ctx + qblk * bq + (bm - 1) / qpk + 1).min(seq_len)
        } else {
            seq_len
        };
        let num_tiles = max_prefix.div_ceil(tile);
        let (mut tile_start, mut tile_end) = (0, num_tiles);
        if window > 0 {
            let qlo = qblk * bq;
            let qhi = (qlo + (bm - 1) / qpk).min(q_len.saturating_sub(1));
            let first = (ctx + qlo + 1).saturating_sub(window); // ctx + qlo - SW + 1, clamped at 0
            let last =
                (ctx + qhi + if causal { 0 } else { window - 1 }).min(seq_len.saturating_sub(1));
            tile_start = first / tile;
            tile_end = (last / tile + 1).min(num_tiles);
        }
        TileBounds {
            max_prefix,
            tile_start,
            tile_end,
        }
    }
}

/// q-blocks of one request the emulator runs together, at most, so one
/// gathered K/V tile serves all their rows (bit-neutral: see
/// `Kernel::run`); fewer when their rows would exceed [`ROWS_PER_UNIT`].
pub const Q_BLOCKS_PER_UNIT: usize = 32;
/// Query tokens of a unit, at most, for its kv heads to run together
/// ([`Kernel::run_heads`]).
const SHORT_UNIT_TOKENS: usize = 16;
/// Rows (`q-blocks * BLOCK_M`) of one unit, at most (at least one q-block):
/// a unit's row states, queries and scores stay within the core's L2.
pub const ROWS_PER_UNIT: usize = 512;

/// Consecutive programs `(g, kv_head, segment)` of one request.
#[derive(Debug, Clone)]
struct Unit {
    seq: usize,
    q_blocks: std::ops::Range<usize>,
    kv_head: usize,
    segment: usize,
    num_segments: usize,
}

#[derive(Debug, Clone, Copy)]
struct RowId {
    token: usize,
    head: usize,
}

/// A row's program: its tile range, key limit and absolute position.
#[derive(Debug, Clone, Copy)]
struct RowPlan {
    lo: usize,
    hi: usize,
    max_prefix: usize,
    qabs: usize,
    /// The request's cached tokens (the ALiBi origin) and total length.
    ctx: usize,
    seq_len: usize,
    /// Tiles this row's program runs without a mask; only with
    /// [`Fault::SplitUnmaskedUnion`] (the correct, intersected range needs
    /// no mask, so it is not represented).
    unmasked: Option<(usize, usize)>,
}

/// What a unit stores: one online-softmax state per owned (token, head).
struct UnitRows {
    segment: usize,
    rows: Vec<RowId>,
    states: Vec<RowState>,
}

/// A unit in flight: its programs' rows and bounds, row states, buffers
/// and the tiles its programs visit.
struct UnitRun<'u, 'q> {
    unit: &'u Unit,
    rows: Vec<RowId>,
    plans: Vec<RowPlan>,
    state: Vec<RowState>,
    buf: TileBuffers<'q>,
    tiles: std::ops::Range<usize>,
}

impl UnitRun<'_, '_> {
    fn finish(self) -> UnitRows {
        UnitRows {
            segment: self.unit.segment,
            rows: self.rows,
            states: self.state,
        }
    }
}

/// Validated inputs of one launch.
struct Kernel<'a> {
    query: &'a [f32],
    cache: &'a KvCache,
    meta: &'a AttentionMetadata,
    cfg: &'a AttnConfig,
    launch: &'a UnifiedLaunch,
    params: ScoreParams,
    dims: DimOffsets,
    /// SLIDING_WINDOW (0 = off), as the kernel receives it.
    window: usize,
}

impl<'a> Kernel<'a> {
    fn new(
        query: &'a [f32],
        cache: &'a KvCache,
        meta: &'a AttentionMetadata,
        cfg: &'a AttnConfig,
        launch: &'a UnifiedLaunch,
    ) -> Result<Self> {
        cache.check_batch(query, meta, cfg)?;
        Self::check_launch(cache, meta, cfg, launch)?;
        Ok(Self::build(query, cache, meta, cfg, launch))
    }

    /// The kernel over arguments [`UnifiedArgs::new`] validated.
    fn from_args(args: &UnifiedArgs<'a>) -> Self {
        let i = args.inputs();
        Self::build(i.query(), i.cache(), i.meta(), i.cfg(), args.launch())
    }

    /// What the kernel takes on top of a consistent batch: the launch rules,
    /// AITER's causal-only rule and the NHD layout.
    fn check_launch(
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        launch: &UnifiedLaunch,
    ) -> Result<()> {
        launch.validate(cfg)?;
        crate::rules::unified_launch(launch, cfg, crate::rules::Target::default())?;
        if launch.flavor == Flavor::Aiter && !meta.causal() {
            return Err(Error::unsupported(
                "non-causal AITER unified_attention",
                "Only causal attention is supported",
            ));
        }
        let l = &cache.layout;
        if l.kind != LayoutKind::Nhd {
            // The Triton kernel reads (block, token, head, dim) strided views;
            // the x-packed and shuffled layouts are not such views.
            return Err(Error::invalid(
                "cache layout",
                l.kind.name(),
                "unified attention reads the NHD (flash) layout",
            ));
        }
        Ok(())
    }

    fn build(
        query: &'a [f32],
        cache: &'a KvCache,
        meta: &'a AttentionMetadata,
        cfg: &'a AttnConfig,
        launch: &'a UnifiedLaunch,
    ) -> Self {
        let l = &cache.layout;
        // AITER folds k_descale into qk_scale and applies v_descale in the epilogue.
        let scale = launch.flavor.score_scale(cfg);
        Kernel {
            query,
            cache,
            meta,
            cfg,
            launch,
            params: ScoreParams::new(scale, cfg.softcap())
                .with_softcap_formula(launch.softcap_formula()),
            dims: DimOffsets::new(l),
            window: cfg.sliding_window().unwrap_or(0),
        }
    }

    /// The grid's programs that do work, grouped into [`Unit`]s: program
    /// `(g, kvh, s)` maps to (request, q-block) by [`find_seq_idx`] (surplus
    /// programs exit), and up to [`Q_BLOCKS_PER_UNIT`] consecutive q-blocks
    /// of one request share a unit (`q_blocks_per_unit`, normally
    /// [`Q_BLOCKS_PER_UNIT`]).
    fn units(&self, num_segments: usize, q_blocks_per_unit: usize) -> Vec<Unit> {
        let meta = self.meta;
        let bq = self.launch.block_q;
        let q_blocks_per_unit =
            q_blocks_per_unit.min((ROWS_PER_UNIT / self.launch.block_m.max(1)).max(1));
        let mut blocks: Vec<(usize, usize)> = vec![]; // (seq, qblk) of every working program, g ascending
        for g in 0..self.launch.total_q_blocks(meta) {
            let seq = find_seq_idx(meta.query_start_loc(), meta.num_reqs(), bq, g);
            let qblk = g - (meta.query_start_loc()[seq] as usize / bq + seq);
            if qblk * bq < meta.query_len(seq) {
                blocks.push((seq, qblk));
            }
        }
        let mut units = vec![];
        let mut i = 0;
        while i < blocks.len() {
            let (seq, first) = blocks[i];
            let mut n = 1;
            while n < q_blocks_per_unit && i + n < blocks.len() && blocks[i + n].0 == seq {
                n += 1;
            }
            for kv_head in 0..self.cfg.num_kv_heads() {
                for segment in 0..num_segments {
                    units.push(Unit {
                        seq,
                        q_blocks: first..first + n,
                        kv_head,
                        segment,
                        num_segments,
                    });
                }
            }
            i += n;
        }
        units
    }

    /// The requests' K^T and V laid out once for every kv head of a
    /// request with at least [`SHARED_KV_MIN_TOKENS`] query tokens whose
    /// tiles the kernel loads as stored (no dtype conversion): the values
    /// [`Kernel::load_kv`] would gather per unit and tile.
    fn share_kv(&self, units: &[Unit]) -> SharedKv {
        let (meta, cfg) = (self.meta, self.cfg);
        let (hkv, d) = (cfg.num_kv_heads(), cfg.head_size());
        let (q_dtype, kv_dtype) = (cfg.dtype(), cfg.kv_dtype());
        let converts = match self.launch.flavor {
            Flavor::Vllm => kv_dtype.is_fp8() || kv_dtype != q_dtype,
            Flavor::Aiter => !kv_dtype.is_fp8() && kv_dtype != q_dtype,
        };
        let identity = |o: &[usize]| o.iter().enumerate().all(|(i, &x)| x == i);
        let wanted = |seq: usize| {
            !converts
                && identity(&self.dims.v)
                && meta.query_len(seq) >= SHARED_KV_MIN_TOKENS
                && units.iter().any(|u| u.seq == seq)
        };
        let pairs: Vec<(usize, usize)> = (0..meta.num_reqs())
            .flat_map(|seq| (0..hkv).map(move |g| (seq, g)))
            .collect();
        let by_head = pairs
            .par_iter()
            .map(|&(seq, g)| {
                if !wanted(seq) {
                    return None;
                }
                let (sk, tile) = (meta.seq_len(seq), self.launch.tile_size);
                let (ld, ld_v) = (
                    super::flash_varlen::padded(tile),
                    super::flash_varlen::padded(d),
                );
                let l = &self.cache.layout;
                let path = super::simd::SimdPath::active();
                let mut kt = vec![0.0f32; sk.div_ceil(tile) * d * ld];
                let mut v = vec![0.0f32; sk * ld_v];
                for (jt, kt_tile) in kt.chunks_exact_mut(d * ld).enumerate() {
                    let t0 = jt * tile;
                    let n = tile.min(sk - t0);
                    let base = |i: usize| {
                        let (b, r) = meta.kv_location(seq, t0 + i);
                        l.k_offset(b, r, g, 0)
                    };
                    let mut j0 = 0;
                    while j0 + 8 <= n {
                        let bases: [usize; 8] = std::array::from_fn(|i| base(j0 + i));
                        let done = super::simd::gather_kt8(
                            path,
                            &self.cache.k,
                            &bases,
                            &self.dims.k,
                            kt_tile,
                            ld,
                            j0,
                        );
                        for (i, &b) in bases.iter().enumerate() {
                            for (dd, &ko) in self.dims.k.iter().enumerate().skip(done) {
                                kt_tile[dd * ld + j0 + i] = self.cache.k[b + ko];
                            }
                        }
                        j0 += 8;
                    }
                    for i in j0..n {
                        let b = base(i);
                        for (dd, &ko) in self.dims.k.iter().enumerate() {
                            kt_tile[dd * ld + i] = self.cache.k[b + ko];
                        }
                    }
                }
                for (t, row) in v.chunks_exact_mut(ld_v).enumerate() {
                    let (b, r) = meta.kv_location(seq, t);
                    let o = l.v_offset(b, r, g, 0);
                    row[..d].copy_from_slice(&self.cache.v[o..o + d]);
                }
                Some(SeqKv { kt, ld, v, ld_v })
            })
            .collect();
        SharedKv { hkv, by_head }
    }

    /// The units as [`Kernel::run_heads`] runs them: the kv heads of a
    /// short unit (at most [`SHORT_UNIT_TOKENS`] query tokens: a decode's
    /// rows) together, every other unit alone.
    fn head_groups(&self, units: Vec<Unit>) -> Vec<Vec<Unit>> {
        let bq = self.launch.block_q;
        let mut short: std::collections::BTreeMap<(usize, usize, usize), Vec<Unit>> =
            Default::default();
        let mut groups = vec![];
        for u in units {
            let tokens = (u.q_blocks.len() * bq).min(self.meta.query_len(u.seq));
            if tokens <= SHORT_UNIT_TOKENS {
                short
                    .entry((u.seq, u.q_blocks.start, u.segment))
                    .or_default()
                    .push(u);
            } else {
                groups.push(vec![u]);
            }
        }
        groups.extend(short.into_values());
        groups
    }

    /// The programs of one unit, run at once (the module doc's program,
    /// as `kernels/unified_attention.hip` spells it); `None` when they exit
    /// early (no store). Each row keeps its own program's tile range and
    /// key limit and sees exactly the tiles, keys and operation order it
    /// would alone; only the K/V load of a tile is shared by the rows that
    /// visit it.
    fn run(&self, u: &Unit, shared: &SharedKv) -> Option<UnitRows> {
        let mut run = self.start(u)?;
        for j in run.tiles.clone() {
            self.step(&mut run, j, shared);
        }
        Some(run.finish())
    }

    /// [`Kernel::run`] of units that differ only in their kv head (the
    /// same request, q-blocks and segment), tile by tile: at each tile
    /// every head takes its own step, so each unit's rows see exactly what
    /// they see in `run`. The heads of a token sit side by side in a paged
    /// cache row, so a short unit (a decode's few rows) reads each block's
    /// keys of all heads together instead of one head's 512-byte rows
    /// strided across the blocks.
    fn run_heads(&self, us: &[Unit], shared: &SharedKv) -> Vec<UnitRows> {
        if let [u] = us {
            return self.run(u, shared).into_iter().collect();
        }
        let mut runs: Vec<UnitRun<'_, 'a>> = us.iter().filter_map(|u| self.start(u)).collect();
        let tiles = runs.iter().map(|r| r.tiles.start).min().unwrap_or(0)
            ..runs.iter().map(|r| r.tiles.end).max().unwrap_or(0);
        for j in tiles {
            for run in runs.iter_mut() {
                if run.tiles.contains(&j) {
                    self.step(run, j, shared);
                }
            }
        }
        runs.into_iter().map(UnitRun::finish).collect()
    }

    /// A unit's programs, fresh row states and buffers; `None` when they
    /// exit early (no store).
    fn start<'u>(&self, u: &'u Unit) -> Option<UnitRun<'u, 'a>> {
        let (tile, d) = (self.launch.tile_size, self.cfg.head_size());
        let Programs { rows, plans } = self.programs(u)?;
        // m_i = sink * LOG2E (segment 0 only) or -inf; l_i = 1 with a sink, else 0; O_i = 0
        let state: Vec<RowState> = rows
            .iter()
            .map(|r| RowState::new(d, self.sink(u, r.head)))
            .collect();
        let buf = TileBuffers::new(tile, d, rows.len());
        let tiles = plans.iter().map(|p| p.lo).min().unwrap_or(0)
            ..plans.iter().map(|p| p.hi).max().unwrap_or(0);
        Some(UnitRun {
            unit: u,
            rows,
            plans,
            state,
            buf,
            tiles,
        })
    }

    /// Tile `j` of a unit's programs: the rows that visit it take their
    /// step (K^T and V read from `shared` where it holds the unit's
    /// request and kv head, else gathered into the unit's tile).
    fn step(&self, run: &mut UnitRun<'_, 'a>, j: usize, shared: &SharedKv) {
        let tile = self.launch.tile_size;
        let UnitRun {
            unit: u,
            rows,
            plans,
            state,
            buf,
            ..
        } = run;
        // The rows whose program visits tile j (consecutive rows), and
        // the tile's keys t0 .. min((j + 1) * TILE, max_prefix).
        let Some((active, keys)) = tile_rows(plans, j, tile) else {
            return;
        };
        let q_dtype = self.cfg.dtype();
        let d = self.cfg.head_size();
        if let Some(sh) = shared.get(u.seq, u.kv_head) {
            // The request's K^T columns and V rows of these keys, laid out
            // once for all its units (the same values the gather copies).
            let kt = &sh.kt[j * d * sh.ld..(j + 1) * d * sh.ld];
            self.scores(
                &rows[active.clone()],
                &plans[active.clone()],
                j,
                keys.start,
                keys.len(),
                Some((kt, sh.ld)),
                buf,
            );
            let (v, t0, ld_v) = (&sh.v, keys.start, sh.ld_v);
            RowState::update_rows(
                &mut state[active.clone()],
                &buf.s,
                tile,
                keys.len(),
                |jj| &v[(t0 + jj) * ld_v..][..d],
                q_dtype,
            );
        } else {
            // K_j, V_j through the block table, as the kernel loads them.
            self.load_kv(u, keys.clone(), buf, active.len() <= PREFETCH_ROWS);
            // A) S_ij = score(q_i . k_j), -inf where masked.
            self.scores(
                &rows[active.clone()],
                &plans[active.clone()],
                j,
                keys.start,
                buf.kv.len,
                None,
                buf,
            );
            // B), C) the online-softmax step of every visiting row.
            let (kv, s) = (&buf.kv, &buf.s);
            RowState::update_rows(
                &mut state[active.clone()],
                s,
                tile,
                keys.len(),
                |jj| kv.v_row(jj),
                q_dtype,
            );
        }
        // AITER and the seed era's softmax_step keep a guarded max.
        let masked = self.launch.masked_row_max();
        state[active]
            .iter_mut()
            .for_each(|row| row.m = masked.apply(row.m));
    }

    /// The rows of a unit's programs and their bounds: per program `qblk`,
    /// `compute_tile_loop_bounds` within the segment, then its rows `m <
    /// BLOCK_Q * qpk` (token `qblk * BLOCK_Q + m / qpk`, head `kvh * qpk + m
    /// % qpk`) whose token is inside the request. `None` when the segment
    /// starts past the sequence (no scratch write).
    fn programs(&self, u: &Unit) -> Option<Programs> {
        let (meta, launch) = (self.meta, self.launch);
        let (bq, tile, qpk) = (launch.block_q, launch.tile_size, self.cfg.queries_per_kv());
        let q_start = meta.query_start_loc()[u.seq] as usize;
        let (q_len, seq_len) = (meta.query_len(u.seq), meta.seq_len(u.seq));
        let ctx = seq_len - q_len;
        // Segment s of S covers tiles [s * tps, (s + 1) * tps); 2D is S = 1,
        // whose one segment spans every tile.
        let tps = seq_len.div_ceil(u.num_segments * tile);
        if u.segment * tps * tile >= seq_len {
            return None;
        }
        let (mut rows, mut plans) = (vec![], vec![]);
        for qblk in u.q_blocks.clone() {
            let b = TileBounds::new(
                launch,
                qpk,
                qblk,
                q_len,
                seq_len,
                meta.causal(),
                self.window,
            );
            let lo = (u.segment * tps).max(b.tile_start);
            let hi = ((u.segment + 1) * tps).min(b.tile_end);
            let unmasked = self.union_unmasked_tiles(qblk, q_len, ctx);
            for m in 0..bq * qpk {
                let q_local = qblk * bq + m / qpk;
                if q_local < q_len {
                    rows.push(RowId {
                        token: q_start + q_local,
                        head: u.kv_head * qpk + m % qpk,
                    });
                    plans.push(RowPlan {
                        lo,
                        hi,
                        max_prefix: b.max_prefix,
                        qabs: ctx + q_local,
                        ctx,
                        seq_len,
                        unmasked,
                    });
                }
            }
        }
        Some(Programs { rows, plans })
    }

    /// The sink logit a row starts from: only segment 0 counts it.
    fn sink(&self, u: &Unit, head: usize) -> Option<f32> {
        match u.segment {
            0 => self.cfg.sinks().as_ref().map(|s| s[head]),
            _ => None,
        }
    }

    /// Loads keys `keys` of request `u.seq`, kv head `u.kv_head`, into
    /// `buf.kv` (K transposed, V by rows) as the kernel loads them (module
    /// doc): vLLM dequantizes fp8 (`* scale` in f32) and casts to the Q
    /// dtype; AITER only casts. The identity when the cache already holds
    /// Q-dtype values (fp8 is exact in f16/bf16).
    fn load_kv(
        &self,
        u: &Unit,
        keys: std::ops::Range<usize>,
        buf: &mut TileBuffers,
        prefetch: bool,
    ) {
        let cfg = self.cfg;
        let (q_dtype, kv_dtype, flavor) = (cfg.dtype(), cfg.kv_dtype(), self.launch.flavor);
        let keys_end = keys.end;
        buf.locs.clear();
        buf.locs
            .extend(keys.map(|t| self.meta.kv_location(u.seq, t)));
        let converts = match flavor {
            Flavor::Vllm => kv_dtype.is_fp8() || kv_dtype != q_dtype,
            Flavor::Aiter => !kv_dtype.is_fp8() && kv_dtype != q_dtype,
        };
        if !converts {
            buf.kv
                .gather_paged_exact(self.cache, &self.dims, u.kv_head, &buf.locs);
            if !prefetch {
                return;
            }
            // The keys after this tile (the next tile of an ascending loop)
            // start their way in while this one is computed.
            let next = buf.locs.len();
            let ahead = keys_end..(keys_end + next).min(self.meta.seq_len(u.seq));
            buf.locs.clear();
            buf.locs
                .extend(ahead.map(|t| self.meta.kv_location(u.seq, t)));
            KvTile::prefetch_paged(self.cache, &self.dims, u.kv_head, &buf.locs);
            return;
        }
        // Fault::Fp8KvDtypeMismatch: the bytes decoded as the other e4m3 variant.
        let reread = self.fp8_reread();
        let load = |x: f32, scale: f32| {
            let x = match flavor {
                Flavor::Vllm => reread.map_or(x, |(w, r)| r.from_bits(w.to_bits(x))),
                Flavor::Aiter => x,
            };
            flavor.kv_to_q(x, scale, cfg)
        };
        buf.kv.gather_paged(
            self.cache,
            &self.dims,
            u.kv_head,
            &buf.locs,
            |x| load(x, cfg.k_scale()),
            |x| load(x, cfg.v_scale()),
        );
    }

    /// Phase A for the rows `rows` visiting tile `j` (keys from `t0`, as
    /// many as `buf.kv` holds): `buf.s[a * TILE + jj]` = row a's score of key
    /// `t0 + jj`: the fma-chain dot product over d ascending, then
    /// [`ScoreParams::score`] (scale, soft-cap, ALiBi `slope * (t - ctx)`)
    /// inside the mask, -inf outside it and past the row's own key limit
    /// `max_prefix` (a key the row's program does not load; -inf there
    /// leaves the row's step unchanged, see [`tile_rows`]).
    #[allow(clippy::too_many_arguments)]
    fn scores(
        &self,
        rows: &[RowId],
        plans: &[RowPlan],
        j: usize,
        t0: usize,
        n: usize,
        shared_kt: Option<(&[f32], usize)>,
        buf: &mut TileBuffers<'a>,
    ) {
        let (tile, d, hq) = (
            self.launch.tile_size,
            self.cfg.head_size(),
            self.cfg.num_heads(),
        );
        buf.qs.clear();
        buf.qs.extend(
            rows.iter()
                .map(|r| &self.query[(r.token * hq + r.head) * d..][..d]),
        );
        // One K load feeds several rows' chains; each chain is unchanged.
        match shared_kt {
            Some((kt, ld)) => super::simd::dots_rows(
                super::simd::SimdPath::active(),
                &buf.qs,
                kt,
                ld,
                0,
                n,
                &mut buf.s,
                tile,
            ),
            None => buf.kv.qk_rows(&buf.qs, &mut buf.s, tile),
        }
        for ((row, plan), s) in rows.iter().zip(plans).zip(buf.s.chunks_exact_mut(tile)) {
            // This program's keys: t0 .. min((j + 1) * TILE, max_prefix).
            let n_row = ((j + 1) * tile).min(plan.max_prefix) - t0;
            // The mask is one interval of t (`allowed_range`); the
            // Fault::SplitUnmaskedUnion tiles of the (wrong) unmasked loop
            // are scored whole.
            let unmasked = plan.unmasked.is_some_and(|(x, y)| x <= j && j < y);
            let (lo, hi) = match unmasked {
                true => (t0, t0 + n_row),
                false => self.allowed_range(plan.qabs, plan.seq_len),
            };
            let va = lo.clamp(t0, t0 + n_row) - t0;
            let vb = hi.clamp(t0 + va, t0 + n_row) - t0;
            let slope = self.cfg.alibi_slopes().as_ref().map(|s| s[row.head]);
            score_run(&self.params, &mut s[..n], va..vb, t0, plan.ctx, slope);
        }
    }
    /// [`Fault::SplitUnmaskedUnion`] (AITER, causal, sliding window): the
    /// tiles q-block `qblk`'s program runs in its unmasked loop when that
    /// range is the union of its rows' fully visible tiles (tile `j` is
    /// fully visible for a row at `p` when `(j + 1) * TILE - 1 <= p` and
    /// `p - j * TILE < W`) instead of their intersection. `None` otherwise.
    fn union_unmasked_tiles(
        &self,
        qblk: usize,
        q_len: usize,
        ctx: usize,
    ) -> Option<(usize, usize)> {
        if !self.cfg.faults().has(Fault::SplitUnmaskedUnion)
            || self.launch.flavor != Flavor::Aiter
            || !self.meta.causal()
            || self.window == 0
        {
            return None;
        }
        let (bq, tile, w) = (self.launch.block_q, self.launch.tile_size, self.window);
        let qlo = qblk * bq;
        let qhi = (qlo + bq).min(q_len).checked_sub(1)?;
        let (plo, phi) = (ctx + qlo, ctx + qhi);
        let first = (plo + 1).saturating_sub(w).div_ceil(tile);
        let end = (phi + 1) / tile;
        Some((first, end))
    }

    /// `(written as, read as)` under [`Fault::Fp8KvDtypeMismatch`] with an fp8 cache.
    fn fp8_reread(&self) -> Option<(DType, DType)> {
        let kv = self.cfg.kv_dtype();
        if !self.cfg.faults().has(Fault::Fp8KvDtypeMismatch) {
            return None;
        }
        match kv {
            DType::Fp8E4m3Fnuz => Some((kv, DType::Fp8E4m3Fn)),
            DType::Fp8E4m3Fn => Some((kv, DType::Fp8E4m3Fnuz)),
            _ => None,
        }
    }

    /// The kernel's mask for key `t` and query position `qabs`: causal (or
    /// `t < seq_len` when non-causal) and the sliding window, two-sided when
    /// non-causal (`window_size = (W-1, W-1)`).
    /// The kernel computes it as [`Kernel::allowed_range`]; this per-key
    /// form is the definition the tests hold that range to.
    #[cfg_attr(not(test), allow(dead_code))]
    #[inline]
    fn allowed(&self, t: usize, qabs: usize, seq_len: usize) -> bool {
        let causal = self.meta.causal();
        let w = self.cfg.sliding_window();
        t < seq_len && visible(t, qabs, causal, w) && (causal || w.is_none_or(|w| t < qabs + w))
    }

    /// The keys [`Kernel::allowed`] lets query position `qabs` see, as the
    /// interval `[lo, hi)` they form (empty when `hi <= lo`): `t < seq_len`,
    /// causal `t <= qabs`, window `qabs < t + w` (and non-causal `t < qabs + w`).
    #[inline]
    fn allowed_range(&self, qabs: usize, seq_len: usize) -> (usize, usize) {
        let w = self.cfg.sliding_window();
        let lo = w.map_or(0, |w| (qabs + 1).saturating_sub(w));
        let hi = match (self.meta.causal(), w) {
            (true, _) => qabs + 1,
            (false, Some(w)) => qabs + w,
            (false, None) => seq_len,
        };
        (lo, hi.min(seq_len))
    }

    /// 2D epilogue into `dst` (rounded to the output dtype). Both kernels
    /// divide without a guard: a stored row always has a visible key, so
    /// `l == 0` only happens when every P underflowed (the seed era's
    /// `M = 0` floor under very negative scores), and then the output is
    /// the kernel's `0 / 0` = NaN (the contract's fresh NaN, see [`nan_fresh`]).
    fn epilogue_2d(&self, state: &RowState, dst: &mut [f32]) {
        let out_dtype = self.cfg.dtype();
        match self.launch.flavor {
            Flavor::Vllm => {
                for (o, a) in dst.iter_mut().zip(&state.acc) {
                    *o = nan_fresh(a / state.l);
                }
            }
            Flavor::Aiter => {
                let r = self.launch.flavor.v_descale(self.cfg).unwrap_or(1.0) / state.l;
                for (o, a) in dst.iter_mut().zip(&state.acc) {
                    *o = nan_fresh(a * r);
                }
            }
        }
        // out_dtype.round of every element (simd::round_slice: the same bits).
        super::simd::round_slice(out_dtype, dst);
    }
}

/// K^T and V of whole requests' kv heads, laid out once per launch for
/// the requests whose units read many tiles (a long prefill's units read
/// the same tiles again and again), tile by tile as a unit's gather lays
/// out one: tile j's K^T is `kt[j * d * ld..]` (`kt[(j * d + dd) * ld +
/// t - j * TILE]` is key t's dim dd), key t's V row `v[t * ld_v..][..d]`
/// (leading dimensions padded off multiples of 512 bytes, as
/// flash_varlen's). Which requests get one changes no value, only where
/// the values are read from.
struct SharedKv {
    hkv: usize,
    by_head: Vec<Option<SeqKv>>,
}

struct SeqKv {
    kt: Vec<f32>,
    ld: usize,
    v: Vec<f32>,
    ld_v: usize,
}

impl SharedKv {
    /// Nothing shared: every unit gathers its own tiles.
    #[cfg(test)]
    fn none(hkv: usize) -> Self {
        SharedKv {
            hkv,
            by_head: vec![],
        }
    }

    fn get(&self, seq: usize, kv_head: usize) -> Option<&SeqKv> {
        self.by_head.get(seq * self.hkv + kv_head)?.as_ref()
    }
}

/// Query tokens of a request from which its kv heads' K^T and V are laid
/// out once per launch ([`Kernel::share_kv`]).
const SHARED_KV_MIN_TOKENS: usize = 256;

/// The rows of one unit and each row's program bounds.
struct Programs {
    rows: Vec<RowId>,
    plans: Vec<RowPlan>,
}

/// The rows whose program visits tile `j`, and the tile's keys `t0 ..
/// min((j + 1) * TILE, max_prefix)` for the longest key limit among them;
/// `None` if no row visits it. The visiting rows are consecutive: a unit's
/// programs are consecutive q-blocks of one request, whose tile ranges
/// start and end in ascending order. A row with a shorter key limit scores
/// the keys past it -inf ([`Kernel::scores`]), which leaves its step as it
/// would be without them: they add nothing to the max, `P = exp2c(-inf) =
/// 0` adds +0 to the row sum and is skipped in `P V`.
fn tile_rows(
    plans: &[RowPlan],
    j: usize,
    tile: usize,
) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let visits = |p: &RowPlan| p.lo <= j && j < p.hi;
    let first = plans.iter().position(visits)?;
    let end = first + plans[first..].iter().take_while(|p| visits(p)).count();
    debug_assert!(
        !plans[end..].iter().any(visits),
        "visiting rows are consecutive"
    );
    let t0 = j * tile;
    let t1 = plans[first..end]
        .iter()
        .map(|p| ((j + 1) * tile).min(p.max_prefix))
        .max()?;
    Some((first..end, t0..t1))
}

/// One row's scores of a tile, in place over its dot products `s`:
/// `S = score(dot, slope * (t - ctx))` for the visible keys `t0 + vis`,
/// -inf for the others.
fn score_run(
    params: &ScoreParams,
    s: &mut [f32],
    vis: std::ops::Range<usize>,
    t0: usize,
    ctx: usize,
    slope: Option<f32>,
) {
    let (va, vb) = (vis.start, vis.end);
    s[..va].fill(f32::NEG_INFINITY);
    s[vb..].fill(f32::NEG_INFINITY);
    let visible = s[va..vb].iter_mut();
    match slope {
        None => visible.for_each(|x| *x = params.score(*x, 0.0)),
        Some(sl) => visible.enumerate().for_each(|(i, x)| {
            let t = t0 + va + i;
            *x = params.score(*x, sl * (t as i64 - ctx as i64) as f32);
        }),
    }
}

/// A unit's reused buffers (no allocation per tile): the K/V tile, its
/// block-table locations, the visiting rows' queries and their scores
/// (`s[a * TILE + jj]`: dot products, then `S_ij` in place).
struct TileBuffers<'q> {
    kv: KvTile,
    locs: Vec<(usize, usize)>,
    qs: Vec<&'q [f32]>,
    s: Vec<f32>,
}

impl TileBuffers<'_> {
    fn new(tile: usize, head_size: usize, rows: usize) -> Self {
        TileBuffers {
            kv: KvTile::new(tile, head_size),
            locs: Vec::with_capacity(tile),
            qs: Vec::with_capacity(rows),
            s: vec![0.0; rows * tile],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::DType;
    use attnlab_shared::layout::KvLayout;
    use attnlab_shared::metadata::BlockTableTensor;

    /// One request of `ctx + q` tokens in contiguous blocks, deterministic data.
    fn one_request(
        cfg: &AttnConfig,
        block_size: usize,
        ctx: usize,
        q: usize,
    ) -> (Vec<f32>, KvCache, AttentionMetadata) {
        let blocks = (ctx + q).div_ceil(block_size);
        let table = BlockTableTensor::from_rows(&[(0..blocks as i32).collect()]);
        let meta = AttentionMetadata::new(
            block_size,
            blocks,
            vec![0, q as i32],
            vec![(ctx + q) as i32],
            table,
            vec![-1; q],
            true,
        )
        .unwrap();
        let layout = KvLayout::new(
            LayoutKind::Nhd,
            blocks,
            block_size,
            cfg.num_kv_heads(),
            cfg.head_size(),
            cfg.kv_dtype(),
        )
        .unwrap();
        let val = |i: usize, salt: f32| cfg.dtype().round(((i as f32) * 0.618 + salt).sin());
        let cache = KvCache {
            layout,
            k: (0..layout.numel()).map(|i| val(i, 0.3)).collect(),
            v: (0..layout.numel()).map(|i| val(i, 1.7)).collect(),
        };
        let query = (0..q * cfg.num_heads() * cfg.head_size())
            .map(|i| val(i, 2.9))
            .collect();
        (query, cache, meta)
    }

    #[test]
    fn find_seq_idx_maps_q_blocks_to_requests_skipping_empty_ones() {
        // Requests of 0, 5 and 1 tokens with BLOCK_Q 4: q-blocks start at 0, 1, 3.
        let qsl = [0, 0, 5, 6];
        let seqs: Vec<usize> = (0..5).map(|g| find_seq_idx(&qsl, 3, 4, g)).collect();
        assert_eq!(seqs, [0, 1, 1, 2, 2]);
    }

    #[test]
    fn sliding_window_prunes_tiles_before_the_window() {
        let launch = UnifiedLaunch {
            flavor: Flavor::Vllm,
            block_m: 16,
            block_q: 16,
            tile_size: 16,
            grid: Grid::TwoD,
            profile: VllmProfile::Seed,
        };
        // Decode at position 100 with window 20 sees keys 81..=100: tiles 5 and 6.
        let b = TileBounds::new(&launch, 1, 0, 1, 101, true, 20);
        assert_eq!(
            b,
            TileBounds {
                max_prefix: 101,
                tile_start: 5,
                tile_end: 7
            }
        );
        // Without a window every tile up to the causal limit is visited.
        assert_eq!(
            TileBounds::new(&launch, 1, 0, 1, 101, true, 0),
            TileBounds {
                max_prefix: 101,
                tile_start: 0,
                tile_end: 7
            }
        );
        // The second q-block of a 40-token prefill loads keys < 32.
        assert_eq!(
            TileBounds::new(&launch, 1, 1, 40, 40, true, 0).max_prefix,
            32
        );
    }

    #[test]
    fn one_segment_3d_is_bit_identical_to_2d() {
        let cfg = crate::config::AttnConfigBuilder {
            sinks: Some(vec![0.5, -1.0, 0.25, 2.0]),
            ..AttnConfig::builder(4, 2, 64, DType::Bf16)
        }
        .build()
        .unwrap();
        let (q, cache, meta) = one_request(&cfg, 16, 70, 3);
        let launch = UnifiedLaunch::vllm(&meta, &cfg, VllmLaunchOptions::default()).unwrap();
        let two_d = unified_attention_2d(&q, &cache, &meta, &cfg, &launch).unwrap();
        let three_d = unified_attention(
            &q,
            &cache,
            &meta,
            &cfg,
            &launch.with_grid(Grid::ThreeD { num_segments: 1 }),
        )
        .unwrap();
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&two_d), bits(&three_d));
    }

    #[test]
    fn sink_is_counted_in_segment_0_only() {
        let cfg = crate::config::AttnConfigBuilder {
            sinks: Some(vec![1.0, 3.0]),
            ..AttnConfig::builder(2, 1, 32, DType::F32)
        }
        .build()
        .unwrap();
        let (q, cache, meta) = one_request(&cfg, 16, 100, 1);
        let launch = UnifiedLaunch::vllm(&meta, &cfg, VllmLaunchOptions::default()).unwrap();
        let parts = unified_attention_3d(&q, &cache, &meta, &cfg, &launch).unwrap();
        let s_n = parts.num_segments;
        for h in 0..2 {
            // Segment 0 starts from (m = sink * LOG2E, l = 1); the others from -inf.
            let sink2 = cfg.sinks().as_ref().unwrap()[h] * crate::numerics::LOG2E;
            assert!(parts.m[h * s_n] >= sink2 && parts.l[h * s_n] >= 1.0);
        }
        let tps = 101usize.div_ceil(s_n * launch.tile_size);
        let written = 101usize.div_ceil(tps * launch.tile_size);
        assert!(
            parts.m[written..s_n]
                .iter()
                .all(|&m| m == f32::NEG_INFINITY),
            "segments past the sequence store nothing"
        );
    }

    #[test]
    fn aiter_folds_fp8_scales_into_score_and_epilogue() {
        let base = AttnConfig::new(4, 1, 32, DType::Bf16).unwrap();
        let cfg = crate::config::AttnConfigBuilder {
            kv_dtype: DType::Fp8E4m3Fn,
            k_scale: 0.5,
            v_scale: 4.0,
            ..base.to_builder()
        }
        .build()
        .unwrap();
        let (q, mut cache, meta) = one_request(&cfg, 16, 20, 2);
        cache
            .k
            .iter_mut()
            .chain(cache.v.iter_mut())
            .for_each(|x| *x = DType::Fp8E4m3Fn.round(*x * 8.0));
        let launch = UnifiedLaunch::aiter(&meta, &cfg, MI300X_CU_COUNT).unwrap();
        let aiter = unified_attention(&q, &cache, &meta, &cfg, &launch).unwrap();
        let vllm = unified_attention(
            &q,
            &cache,
            &meta,
            &cfg,
            &UnifiedLaunch {
                flavor: Flavor::Vllm,
                ..launch
            },
        )
        .unwrap();
        for (a, v) in aiter.iter().zip(&vllm) {
            assert!((a - v).abs() <= 2e-2 * (1.0 + v.abs()), "{a} vs {v}");
        }
    }

    #[test]
    fn running_q_blocks_together_is_bit_neutral() {
        let cfg = crate::config::AttnConfigBuilder {
            sliding_window: Some(37),
            ..AttnConfig::builder(6, 2, 64, DType::Bf16)
        }
        .build()
        .unwrap();
        let (q, cache, meta) = one_request(&cfg, 16, 50, 90);
        for flavor in [Flavor::Vllm, Flavor::Aiter] {
            let launch = UnifiedLaunch {
                flavor,
                ..UnifiedLaunch::vllm(&meta, &cfg, VllmLaunchOptions::default()).unwrap()
            };
            let k = Kernel::new(&q, &cache, &meta, &cfg, &launch).unwrap();
            let run = |per_unit: usize| {
                let mut rows: Vec<(usize, usize, Vec<u32>)> = k
                    .units(1, per_unit)
                    .iter()
                    .filter_map(|u| k.run(u, &SharedKv::none(cfg.num_kv_heads())))
                    .flat_map(|r| {
                        r.rows.into_iter().zip(r.states).map(|(id, s)| {
                            (
                                id.token,
                                id.head,
                                s.acc
                                    .iter()
                                    .chain([&s.m, &s.l])
                                    .map(|x| x.to_bits())
                                    .collect(),
                            )
                        })
                    })
                    .collect();
                rows.sort();
                rows
            };
            let alone = run(1);
            assert_eq!(alone.len(), 90 * 6);
            assert_eq!(alone, run(Q_BLOCKS_PER_UNIT), "{flavor:?}");
        }
    }

    #[test]
    fn reading_a_requests_shared_kv_is_bit_neutral() {
        // A request long enough to share its K^T and V (context and new
        // tokens, a tile straddling cache blocks), both flavours, 2D and 3D.
        let cfg = AttnConfig::new(8, 2, 64, DType::Bf16).unwrap();
        let (q, cache, meta) = one_request(&cfg, 16, 70, SHARED_KV_MIN_TOKENS + 9);
        for flavor in [Flavor::Vllm, Flavor::Aiter] {
            for segments in [1, 3] {
                let launch = UnifiedLaunch {
                    flavor,
                    ..UnifiedLaunch::vllm(&meta, &cfg, VllmLaunchOptions::default()).unwrap()
                };
                let k = Kernel::new(&q, &cache, &meta, &cfg, &launch).unwrap();
                let units = k.units(segments, Q_BLOCKS_PER_UNIT);
                let shared = k.share_kv(&units);
                assert!(
                    shared.get(0, 1).is_some(),
                    "the request shares its kv heads"
                );
                let run = |sh: &SharedKv| -> Vec<u32> {
                    units
                        .iter()
                        .filter_map(|u| k.run(u, sh))
                        .flat_map(|r| r.states)
                        .flat_map(|s| {
                            s.acc
                                .iter()
                                .chain([&s.m, &s.l])
                                .map(|x| x.to_bits())
                                .collect::<Vec<_>>()
                        })
                        .collect()
                };
                let gathered = run(&SharedKv::none(cfg.num_kv_heads()));
                assert!(!gathered.is_empty());
                assert_eq!(run(&shared), gathered, "{flavor:?} {segments} segments");
            }
        }
    }

    #[test]
    fn the_allowed_range_is_exactly_the_keys_allowed_lets_through() {
        for causal in [true, false] {
            for window in [None, Some(1), Some(5), Some(40)] {
                let cfg = crate::config::AttnConfigBuilder {
                    sliding_window: window,
                    ..AttnConfig::builder(2, 1, 32, DType::F32)
                }
                .build()
                .unwrap();
                let (q, cache, meta) = one_request(&cfg, 16, 30, 9);
                let meta = meta.with_causal(causal);
                let launch =
                    UnifiedLaunch::vllm(&meta, &cfg, VllmLaunchOptions::default()).unwrap();
                let k = Kernel::new(&q, &cache, &meta, &cfg, &launch).unwrap();
                for seq_len in [1, 17, 39] {
                    for qabs in 0..45 {
                        let (lo, hi) = k.allowed_range(qabs, seq_len);
                        for t in 0..60 {
                            assert_eq!(
                                (lo..hi).contains(&t),
                                k.allowed(t, qabs, seq_len),
                                "causal {causal} window {window:?} seq_len {seq_len} qabs {qabs} t {t}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_launch_whose_block_q_overflows_block_m_is_rejected() {
        let cfg = AttnConfig::new(8, 1, 32, DType::F16).unwrap();
        let (q, cache, meta) = one_request(&cfg, 16, 4, 4);
        let bad = UnifiedLaunch {
            flavor: Flavor::Vllm,
            block_m: 16,
            block_q: 4,
            tile_size: 32,
            grid: Grid::TwoD,
            profile: VllmProfile::Seed,
        };
        let e = unified_attention(&q, &cache, &meta, &cfg, &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("BLOCK_Q") && e.contains("qpk = 8"), "{e}");
    }
}
