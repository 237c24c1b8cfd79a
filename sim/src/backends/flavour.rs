//! Kernel flavours: which arithmetic a backend's attention kernels run.
//!
//! A backend's routing (`route`, [`super::steps`]) names the kernels vLLM
//! launches; the *flavour* says which of our implementations of them runs:
//!
//! - [`Flavour::Fma`]: the CUDA-core kernels (numerics.md §1-§5: every dot
//!   product a chain of IEEE fmas), the same bits on every device;
//! - [`Flavour::TensorCore`]: the matrix-core kernels of one target
//!   (numerics.md §6): Q·Kᵀ and P·V by that target's matrix instruction as
//!   [`crate::numerics::mma`] models it, bit-exact with the GPU run *on that
//!   target* only.
//!
//! The flavour is chosen once, at the edge (`--flavour fma|tc|auto`), and is
//! the executor's ([`super::exec::Cpu`], attnlab-gpu's `GpuExecutor`): the
//! backends' routing is the same in both. Per launch in the tensor-core
//! flavour:
//!
//! | launch ([`MatmulKernel`]) | tensor-core family |
//! |---|---|
//! | `flash_attn_varlen_func` | `flash_varlen_tc` (key tiles of [`DEFAULT_BLOCK_N`]) |
//! | `paged_attention_v1` / `paged_attention_common` / ROCM_ATTN's ll4mi decode over an NHD cache | `paged_decode_tc` (split-KV) |
//! | ROCM_ATTN's 2D decode (`kernel_paged_attention_2d`), and the ll4mi decodes over the x-packed or shuffled caches | `paged_decode_2d_tc` (any layout) |
//! | `unified_attention` | `unified_attention_tc` (NHD caches in the query dtype or fp8) |
//! | `context_attention_fwd` (ROCM_ATTN's prefix prefill) | `prefix_prefill_tc` (any layout) |
//! | `flex_attention` | `flex_attention_tc` |
//! | TRITON_MLA's `decode_attention_fwd` | `mla_decode_tc` (bf16/f16, latent and rope multiples of 16) |
//! | AITER's asm `mla_decode_fwd` (ROCM_AITER_MLA, ROCM_AITER_TRITON_MLA) | none: refused, naming it |
//! | the MLA projections (cuBLAS / hipBLASLt GEMMs) | `mla_proj` in both flavours ([`MLA_PROJECTION_FAMILY`]) |
//! | the MLA prefill's `flash_attn_varlen_func` (`P + R` / `V` heads) | `flash_varlen_tc` (head sizes multiples of 16) |
//!
//! Which decode family runs a paged decode launch is
//! [`decode_tc_family`]: `paged_decode_2d_tc` is the model of vLLM's
//! Triton 2D decode as it is (one program per sequence and kv head, no
//! split-KV); the ll4mi HIP kernel has no model of its own, so its launch
//! runs our split-KV `paged_decode_tc` where that reads the cache (NHD) and
//! `paged_decode_2d_tc` on the layouts it does not (ROCM_ATTN's x-packed K
//! and transposed V, AITER's shuffled V). A paged decode launch over a
//! batch with no decode row (query_len 1) computes nothing in either
//! flavour (vLLM's `filter_by_query_len` / `skip_decode` programs all
//! exit), so it is no matrix-product launch.
//!
//! A launch with no tensor-core family, or with an option its family does
//! not take (see [`admits`]), is refused with an error naming the kernel
//! and what it takes: never silently the fma kernel. Launches with no
//! matrix product (cache writes, gathers, `merge_attn_states`) are the same
//! kernel in both flavours.
//!
//! `auto` is what vLLM's kernels use on the target ([`vllm_flavour`],
//! stated per backend in [`VLLM_KERNELS`]).

use crate::backends::mla::common::{num_decodes, prefill_params};
use crate::backends::mla::decode_steps::MlaDecode;
use crate::backends::mla::{MlaBackend, MlaConfig, MlaDecodeBatch};
use crate::backends::steps::{self, Paged, Step};
use crate::backends::AttentionBackend;
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::flash_varlen::{VarlenParams, VarlenParamsBuilder};
use crate::kernels::flash_varlen_tc::{VarlenTcParams, DEFAULT_BLOCK_N};
use crate::kernels::flex_attention_tc::validate_config as validate_flex_tc;
use crate::kernels::mla_cache::LatentCache;
use crate::kernels::mla_decode::{KvSplits, MlaDecodeArgs, MlaDecodeParams};
use crate::kernels::mla_decode_tc::MlaDecodeTcArgs;
use crate::kernels::paged_decode::PagedInputs;
use crate::kernels::paged_decode_2d_tc::Decode2dTcArgs;
use crate::kernels::paged_decode_tc::{DecodeTcArgs, ROWS, STEP};
use crate::kernels::prefix_prefill::PrefixVariant;
use crate::kernels::prefix_prefill_tc::validate_config as validate_prefix_tc;
use crate::kernels::unified_attention::{UnifiedLaunch, MI300X_CU_COUNT};
use crate::kernels::unified_attention_tc::{tc_format, validate_launch};
use crate::numerics::mma::MatrixTarget;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::FaultSet;
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_shared::registry::BackendName;
use std::fmt;

/// Which implementation of the attention kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Flavour {
    /// The CUDA-core kernels (fma chains): the contract of numerics.md §1-§5.
    #[default]
    Fma,
    /// The matrix-core kernels of a target (numerics.md §6).
    TensorCore(MatrixTarget),
}

impl Flavour {
    /// The matrix target of a tensor-core flavour.
    pub fn target(self) -> Option<MatrixTarget> {
        match self {
            Flavour::Fma => None,
            Flavour::TensorCore(t) => Some(t),
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flavour::Fma => write!(f, "fma"),
            Flavour::TensorCore(t) => write!(f, "tensor-core ({})", t.name()),
        }
    }
}

/// The flavour a command line asks for, before it meets a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FlavourChoice {
    #[default]
    Fma,
    /// The target's matrix cores.
    Tc,
    /// What vLLM's kernels use on the target ([`vllm_flavour`]).
    Auto,
}

impl FlavourChoice {
    pub const NAMES: [&'static str; 3] = ["fma", "tc", "auto"];

    /// `fma`, `tc` or `auto` (any case).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fma" => Ok(FlavourChoice::Fma),
            "tc" => Ok(FlavourChoice::Tc),
            "auto" => Ok(FlavourChoice::Auto),
            _ => Err(Error::invalid(
                "--flavour",
                format!("'{s}'"),
                Self::NAMES.join(", "),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The flavour `backend` runs on `target`.
    pub fn resolve(self, backend: BackendName, target: MatrixTarget) -> Flavour {
        match self {
            FlavourChoice::Fma => Flavour::Fma,
            FlavourChoice::Tc => Flavour::TensorCore(target),
            FlavourChoice::Auto => vllm_flavour(backend, target),
        }
    }
}

/// A kernel launch that multiplies matrices: the launches a flavour changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulKernel {
    /// AITER's / CK's `flash_attn_varlen_func`.
    FlashAttnVarlen,
    /// vLLM's or AITER's Triton `unified_attention`.
    UnifiedAttention,
    /// ROCM_ATTN's Triton prefix prefill (`context_attention_fwd`).
    ContextAttentionFwd,
    /// ROCM_ATTN's Triton `kernel_paged_attention_2d` decode.
    PagedAttention2d,
    /// The HIP ll4mi decode (`paged_attention_v1`, `paged_attention_common`, ROCM_ATTN's).
    PagedAttentionLl4mi,
    /// PyTorch's compiled `flex_attention`.
    FlexAttention,
    /// TRITON_MLA's split-KV decode: vLLM's Triton `decode_attention_fwd`
    /// (`_fwd_grouped_kernel_stage1` + `_fwd_kernel_stage2`).
    MlaDecode,
    /// ROCM_AITER_MLA's (and ROCM_AITER_TRITON_MLA's) decode: AITER's asm
    /// `mla_decode_fwd` (`aiter.mla`), which we model as the same split-KV
    /// loop with AITER's split rule in the fma flavour only.
    AiterMlaDecode,
    /// The MLA projections (`kv_b_proj` up-projection, query absorption,
    /// output projection): cuBLAS / hipBLASLt GEMMs in vLLM.
    MlaProjection,
}

impl MatmulKernel {
    /// The launch as vLLM names it.
    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::FlashAttnVarlen => "flash_attn_varlen_func",
            MatmulKernel::UnifiedAttention => "unified_attention",
            MatmulKernel::ContextAttentionFwd => "context_attention_fwd",
            MatmulKernel::PagedAttention2d => "kernel_paged_attention_2d",
            MatmulKernel::PagedAttentionLl4mi => "paged_attention_ll4mi",
            MatmulKernel::FlexAttention => "flex_attention",
            MatmulKernel::MlaDecode => "decode_attention_fwd (MLA)",
            MatmulKernel::AiterMlaDecode => "mla_decode_fwd (AITER asm)",
            MatmulKernel::MlaProjection => "the MLA projections",
        }
    }

    /// Our tensor-core family for this launch, if there is one (for the
    /// ll4mi decode over an NHD cache: over the others it is
    /// [`decode_tc_family`]'s `paged_decode_2d_tc`).
    pub fn tc_family(self) -> Option<&'static str> {
        match self {
            MatmulKernel::FlashAttnVarlen => Some("flash_varlen_tc"),
            MatmulKernel::PagedAttention2d => Some(DecodeTcFamily::TwoD.name()),
            MatmulKernel::PagedAttentionLl4mi => Some(DecodeTcFamily::Split.name()),
            MatmulKernel::UnifiedAttention => Some("unified_attention_tc"),
            MatmulKernel::ContextAttentionFwd => Some("prefix_prefill_tc"),
            MatmulKernel::FlexAttention => Some("flex_attention_tc"),
            MatmulKernel::MlaDecode => Some("mla_decode_tc"),
            MatmulKernel::MlaProjection => Some(MLA_PROJECTION_FAMILY),
            MatmulKernel::AiterMlaDecode => None,
        }
    }

    /// Why the launch has no tensor-core kernel, beyond "not yet".
    fn no_tc_reason(self) -> &'static str {
        match self {
            MatmulKernel::AiterMlaDecode => {
                "AITER's decode is its asm kernel (aiter.mla.mla_decode_fwd), not vLLM's Triton decode_attention_fwd that mla_decode_tc computes, and its MFMA order is not modelled; "
            }
            _ => "",
        }
    }

    /// The flavours we have of this launch.
    pub fn flavours(self) -> &'static str {
        match self.tc_family() {
            Some(_) => "fma, tc",
            None => "fma",
        }
    }
}

/// What the MLA projections run in the tensor-core flavour: the same GEMM
/// as in the fma flavour. vLLM runs them as cuBLAS / hipBLASLt GEMMs, whose
/// order (tiles, split-K) is the library's choice per shape and device, so
/// neither flavour models it: both run our one fixed, documented GEMM
/// (`kernels::mla_proj`, one fma chain per output), and the tensor-core
/// flavour of an MLA backend changes its attention kernels only.
pub const MLA_PROJECTION_FAMILY: &str = "mla_proj (the same GEMM in both flavours)";

/// The refusal of a launch with no tensor-core family on `target`.
pub fn no_tc_family(kernel: MatmulKernel, target: MatrixTarget) -> Error {
    Error::unsupported(
        format!(
            "{} in the tensor-core flavour ({})",
            kernel.name(),
            target.name()
        ),
        format!(
            "{}it has no tensor-core kernel (its flavours: {}); run it with --flavour fma",
            kernel.no_tc_reason(),
            kernel.flavours()
        ),
    )
}

/// The tensor-core kernels re-inject no bugs: a zoo fault (`attnlab zoo`)
/// exists in the fma kernels only.
fn no_faults(kernel: MatmulKernel, faults: FaultSet) -> Result<()> {
    if faults.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(
        format!("faults of {} in the tensor-core flavour", kernel.name()),
        format!("{faults:?}"),
        "none (the zoo's faults are re-injected into the fma kernels only)",
    ))
}

/// The tensor-core launch of a `flash_attn_varlen_func` call on `target`:
/// the same parameters with [`DEFAULT_BLOCK_N`]-key tiles (the tile the
/// family's launchers fit on every device), checked as the family checks
/// them (dtype bf16/f16, head sizes multiples of 16 up to 256) and with no
/// zoo fault. The one place both executors and [`admits`] take it from.
pub fn varlen_tc<'a>(p: &VarlenParams<'a>, target: MatrixTarget) -> Result<VarlenTcParams<'a>> {
    no_faults(MatmulKernel::FlashAttnVarlen, p.faults())?;
    let varlen = VarlenParamsBuilder {
        block_n: DEFAULT_BLOCK_N,
        ..p.to_builder()
    }
    .build()?;
    let tc = VarlenTcParams { varlen, target };
    tc.validate()?;
    Ok(tc)
}

/// The tensor-core decode families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeTcFamily {
    /// `paged_decode_tc`: split-KV over NHD caches (`DecodeTcArgs`).
    Split,
    /// `paged_decode_2d_tc`: vLLM's 2D decode, any layout (`Decode2dTcArgs`).
    TwoD,
}

impl DecodeTcFamily {
    pub fn name(self) -> &'static str {
        match self {
            DecodeTcFamily::Split => "paged_decode_tc",
            DecodeTcFamily::TwoD => "paged_decode_2d_tc",
        }
    }
}

/// The tensor-core family of a paged decode launch (`kernel`, one of the
/// paged decodes) over a cache of `layout` kind: ROCM_ATTN's 2D decode is
/// `paged_decode_2d_tc` on every layout; the ll4mi decodes are
/// `paged_decode_tc` over an NHD cache and `paged_decode_2d_tc` over the
/// others (which `paged_decode_tc` does not read).
pub fn decode_tc_family(kernel: MatmulKernel, layout: LayoutKind) -> DecodeTcFamily {
    match (kernel, layout) {
        (MatmulKernel::PagedAttentionLl4mi, LayoutKind::Nhd) => DecodeTcFamily::Split,
        _ => DecodeTcFamily::TwoD,
    }
}

/// Whether the tensor-core decode takes a decode launch (`kernel`, one of
/// the paged decodes) of `cfg` over a cache of `layout` kind and
/// `block_size`, as its family ([`decode_tc_family`]) checks it
/// (`paged_decode_tc`: bf16/f16 with the same cache dtype, an NHD cache,
/// head size 64 or 128, no sinks, ALiBi or window, sm_90 or gfx942;
/// `paged_decode_2d_tc`: bf16/f16 with the cache in that dtype or fp8, any
/// layout, head size a multiple of 16 up to 256, one staged tile within
/// 64 KiB), and with no zoo fault. The family's own check runs on a
/// one-token probe batch of that configuration, so only the configuration
/// is judged. Both executors call it before the launch, and [`admits`] for
/// a route.
pub fn check_decode_tc(
    kernel: MatmulKernel,
    cfg: &AttnConfig,
    layout: LayoutKind,
    block_size: usize,
    target: MatrixTarget,
) -> Result<()> {
    no_faults(kernel, cfg.faults())?;
    let family = decode_tc_family(kernel, layout);
    let refused = |e: Error| family_refuses(kernel, target, family.name(), e);
    let kv = KvLayout::new(
        layout,
        1,
        block_size,
        cfg.num_kv_heads(),
        cfg.head_size(),
        cfg.kv_dtype(),
    )?;
    let probe = AttentionMetadata::new(
        block_size,
        1,
        vec![0, 1],
        vec![1],
        BlockTableTensor::from_rows(&[vec![0]]),
        vec![0],
        true,
    )?;
    let query = vec![0.0f32; cfg.num_heads() * cfg.head_size()];
    let cache = KvCache::zeros(kv);
    let inputs = PagedInputs::new(&query, &cache, &probe, cfg).map_err(refused)?;
    match family {
        DecodeTcFamily::Split => DecodeTcArgs::new(inputs, target, STEP).map(|_| ()),
        DecodeTcFamily::TwoD => Decode2dTcArgs::new(inputs, target).map(|_| ()),
    }
    .map_err(refused)
}

/// Whether `unified_attention_tc` takes a unified-attention launch of
/// `cfg` over a cache of `layout` kind, as the family checks it (bf16/f16
/// with the cache in the query dtype or fp8 with per-tensor scales, an NHD
/// cache, BLOCK_M, TILE_SIZE and head size multiples of 16 within the
/// tiles' limits), and with no zoo fault.
/// Both executors call it before the launch, and [`admits`] for a route.
pub fn check_unified_tc(
    cfg: &AttnConfig,
    launch: &UnifiedLaunch,
    layout: LayoutKind,
    target: MatrixTarget,
) -> Result<()> {
    let kernel = MatmulKernel::UnifiedAttention;
    no_faults(kernel, cfg.faults())?;
    let refused = |e: Error| family_refuses(kernel, target, "unified_attention_tc", e);
    if layout != LayoutKind::Nhd {
        return Err(refused(Error::invalid(
            "unified_attention_tc cache layout",
            layout.name(),
            "NHD (the flash layout)",
        )));
    }
    tc_format(cfg).map_err(refused)?;
    validate_launch(cfg, launch).map_err(refused)
}

/// Whether `prefix_prefill_tc` takes a `context_attention_fwd` launch of
/// `cfg` (the variant the config selects), as the family checks it (bf16 or
/// f16 queries with the cache in their dtype or fp8, head size a multiple of
/// 16 up to 256, one staged tile within 64 KiB), and with no zoo fault. Any
/// KV layout. Both executors call it before the launch, and [`admits`] for
/// a route.
pub fn check_prefix_tc(cfg: &AttnConfig, target: MatrixTarget) -> Result<()> {
    let kernel = MatmulKernel::ContextAttentionFwd;
    no_faults(kernel, cfg.faults())?;
    validate_prefix_tc(cfg, &PrefixVariant::for_config(cfg))
        .map_err(|e| family_refuses(kernel, target, "prefix_prefill_tc", e))?;
    Ok(())
}

/// Whether `flex_attention_tc` takes a `flex_attention` launch of `cfg`, as
/// the family checks it (bf16 or f16, head size a multiple of 16 up to
/// 256), and with no zoo fault. Both executors call it before the launch,
/// and [`admits`] for a route.
pub fn check_flex_tc(cfg: &AttnConfig, target: MatrixTarget) -> Result<()> {
    let kernel = MatmulKernel::FlexAttention;
    no_faults(kernel, cfg.faults())?;
    validate_flex_tc(cfg).map_err(|e| family_refuses(kernel, target, "flex_attention_tc", e))?;
    Ok(())
}

/// The refusal of `kernel` whose tensor-core `family` refuses the launch
/// (`e`): the one wording every `check_*_tc` gives.
fn family_refuses(kernel: MatmulKernel, target: MatrixTarget, family: &str, e: Error) -> Error {
    Error::unsupported(
        format!(
            "{} in the tensor-core flavour ({})",
            kernel.name(),
            target.name()
        ),
        format!("its tensor-core family {family} refuses the launch: {e}"),
    )
}

/// The tensor-core launch of TRITON_MLA's `decode_attention_fwd` on
/// `target`: the same arguments, checked as `mla_decode_tc` checks them
/// (bf16/f16 query, latent cache in its dtype or fp8, latent and rope
/// widths multiples of 16, no zoo fault). The one place both executors
/// and [`mla_tc_launches`] take it from.
pub fn mla_decode_tc<'a>(
    args: &MlaDecodeArgs<'a>,
    target: MatrixTarget,
) -> Result<MlaDecodeTcArgs<'a>> {
    MlaDecodeTcArgs::new(*args, target)
        .map_err(|e| family_refuses(K::MlaDecode, target, "mla_decode_tc", e))
}

/// Whether `mla_decode_tc` takes TRITON_MLA's decode of `cfg` on `target`:
/// [`mla_decode_tc`] on a one-row probe launch of that configuration (no
/// key), so only the configuration is judged.
pub fn check_mla_decode_tc(cfg: &MlaConfig, target: MatrixTarget) -> Result<()> {
    let d = cfg.dims;
    let layout = MlaLayout::new(1, 1, d.kv_lora_rank, d.qk_rope_head_dim, cfg.kv_dtype)?;
    let cache = LatentCache::from_tensor(layout, vec![0.0; layout.numel()])?;
    let heads = cfg.heads_per_rank().max(1);
    let q = vec![0.0f32; heads * d.latent_width()];
    let rows = [crate::kernels::mla_decode::KvRow {
        pages: &[],
        page_size: 1,
        kv_len: 0,
        split_len: 0,
    }];
    let p = MlaDecodeParams {
        num_heads: heads,
        scale: cfg.scale,
        q_dtype: cfg.dtype,
        kv_scale: cfg.k_scale,
        out_dtype: cfg.dtype,
        lse_dtype: cfg.dtype,
        faults: cfg.faults,
    };
    let splits = KvSplits::Even { num_kv_splits: 1 };
    let args = MlaDecodeArgs::new(&q, &rows, &cache, splits, &p)
        .map_err(|e| family_refuses(K::MlaDecode, target, "mla_decode_tc", e))?;
    mla_decode_tc(&args, target).map(|_| ())
}

/// The matrix-product launches of an MLA `backend`'s step over `meta` (one
/// rank's; every rank makes the same), in launch order, each with the
/// family that runs it in the tensor-core flavour on `target`; or the
/// first refusal (what [`admits_mla`] says and `attnlab trace --flavour tc`
/// shows): decode rows run the query absorption, the decode
/// (TRITON_MLA: `mla_decode_tc`; AITER's asm decode: refused) and the output
/// projection; prefill rows the up-projection and `flash_attn_varlen_func`
/// (`flash_varlen_tc` with the prefill's head sizes).
pub fn mla_tc_launches(
    backend: &dyn MlaBackend,
    meta: &AttentionMetadata,
    cfg: &MlaConfig,
    target: MatrixTarget,
) -> Result<Vec<(MatmulKernel, &'static str)>> {
    backend.check(cfg, meta.block_size())?;
    no_faults(K::MlaDecode, cfg.faults)?;
    let nd = num_decodes(backend, meta, cfg)?;
    let ndt = meta.query_start_loc()[nd] as usize;
    let proj = (K::MlaProjection, MLA_PROJECTION_FAMILY);
    let mut launches = Vec::new();
    if ndt > 0 {
        launches.push(proj);
        let batch = MlaDecodeBatch {
            meta,
            num_decodes: nd,
        };
        match backend.route_mqa(&batch, cfg.heads_per_rank(), cfg)? {
            MlaDecode::SplitKv { .. } => {
                check_mla_decode_tc(cfg, target)?;
                launches.push((K::MlaDecode, "mla_decode_tc"));
            }
            MlaDecode::AiterPaged { .. } => return Err(no_tc_family(K::AiterMlaDecode, target)),
        }
        launches.push(proj);
    }
    if ndt < meta.num_actual_tokens() {
        launches.push(proj);
        varlen_tc(&prefill_params(cfg, cfg.heads_per_rank())?, target)?;
        launches.push((K::FlashAttnVarlen, "flash_varlen_tc"));
    }
    Ok(launches)
}

/// [`admits`] for an MLA backend: every launch of its step over `meta` has
/// a kernel in `flavour` that takes the launch ([`mla_tc_launches`]).
pub fn admits_mla(
    backend: &dyn MlaBackend,
    flavour: Flavour,
    meta: &AttentionMetadata,
    cfg: &MlaConfig,
) -> Result<()> {
    match flavour {
        Flavour::Fma => Ok(()),
        Flavour::TensorCore(target) => mla_tc_launches(backend, meta, cfg, target).map(|_| ()),
    }
}

/// Whether a paged decode launch over `meta` computes anything: vLLM's
/// decode kernels beside a prefill (`filter_by_query_len`) and ours only
/// compute rows with query_len 1.
pub fn has_decode_rows(meta: &AttentionMetadata) -> bool {
    (0..meta.num_reqs()).any(|b| meta.query_len(b) == 1)
}

/// Waves resident per multiprocessor the automatic decode split fills (the
/// default build of `paged_decode_tc` on an H100: 2 blocks of 4 warps).
pub const TC_DECODE_WAVES_PER_MP: usize = 8;
/// The smallest split the automatic choice makes (keys).
pub const TC_DECODE_MIN_SPLIT: usize = 32;

/// The shortest split worth its place in the reduce, for sequences of up to
/// `max_seq_len` keys: `sqrt(2 * max_seq_len)` rounded down to whole steps.
///
/// A sequence cut into `S` splits costs one wave's walk of `max_seq_len / S`
/// keys (the waves run side by side) plus the reduce's serial chain over `S`
/// partials (`paged_decode_tc_reduce`): `b * len / (16 S) + c * S`, least at
/// `S = sqrt(b * len / (16 c))`. On an H100 a 16-key step of a wave costs
/// about 8x one link of the reduce chain (b / c = 8, from the split sweep of
/// 2026-12-07: `ATTNLAB_TC_MIN_SPLIT` 32..1024 over the 24-cell decode grid,
/// docs/src/performance.md), so `S = sqrt(len / 2)` and the split is
/// `len / S = sqrt(2 len)`: 32 keys at 1K, 128 at 8K, 256 at 32K, the
/// best of the sweep at each length with few programs.
pub fn balanced_split(max_seq_len: usize) -> usize {
    ((2 * max_seq_len).isqrt() / STEP * STEP).max(STEP)
}

/// The split size of `paged_decode_tc` for a batch on a GPU of
/// `multiprocessors` holding `waves_per_mp` waves each: as many waves as
/// the GPU holds at once, spread over the batch's (sequence, kv head, head
/// group) programs, at least `min_split` keys and at least
/// [`balanced_split`] (more splits would cost the reduce more than they
/// save), a multiple of 16 (the rule attnlab-gpu's `auto_split_size`
/// applies with the device's numbers).
pub fn decode_split_size(
    multiprocessors: usize,
    waves_per_mp: usize,
    min_split: usize,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
) -> usize {
    let groups = cfg.queries_per_kv().div_ceil(ROWS);
    let programs = (meta.num_reqs() * cfg.num_kv_heads() * groups).max(1);
    let splits = (multiprocessors.max(1) * waves_per_mp / programs).max(1);
    meta.max_seq_len()
        .div_ceil(splits)
        .next_multiple_of(STEP)
        .max(min_split.next_multiple_of(STEP))
        .max(balanced_split(meta.max_seq_len()))
}

/// Multiprocessors of the target's reference GPU: H100 SXM (132 SMs),
/// MI250X per die (110 CUs), MI300X (304 CUs).
pub fn reference_multiprocessors(target: MatrixTarget) -> usize {
    match target {
        MatrixTarget::Sm90 => 132,
        MatrixTarget::Gfx90a => 110,
        MatrixTarget::Gfx942 => 304,
    }
}

/// The split size a backend's decode uses in the tensor-core flavour: the
/// automatic rule for the target's reference GPU. It depends on the batch
/// and the target only (not on the device at hand), so the emulator and
/// any device of the target compute the same bits.
pub fn backend_decode_split(
    target: MatrixTarget,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
) -> usize {
    decode_split_size(
        reference_multiprocessors(target),
        TC_DECODE_WAVES_PER_MP,
        TC_DECODE_MIN_SPLIT,
        meta,
        cfg,
    )
}

/// What vLLM's kernels for one backend run on a matrix-core target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VllmKernels {
    pub backend: BackendName,
    /// The launches with matrix products, as our routing names them.
    pub kernels: &'static [MatmulKernel],
    /// How vLLM's kernels compute those products there.
    pub on_matrix_targets: &'static str,
}

use MatmulKernel as K;

/// Per emulated backend: its matrix-product launches and what vLLM's
/// kernels use for them on sm_90 / gfx90a / gfx942. Every one runs on the
/// matrix cores there, so `auto` is the tensor-core flavour for each.
pub const VLLM_KERNELS: &[VllmKernels] = &[
    VllmKernels {
        backend: BackendName::TritonAttn,
        kernels: &[K::UnifiedAttention],
        on_matrix_targets: "Triton tl.dot: mma/wgmma on sm_90, MFMA on CDNA",
    },
    VllmKernels {
        backend: BackendName::RocmAttn,
        kernels: &[
            K::ContextAttentionFwd,
            K::PagedAttentionLl4mi,
            K::PagedAttention2d,
        ],
        on_matrix_targets: "Triton tl.dot (prefix prefill, 2D decode) and the ll4mi HIP kernel's MFMA (mfma4/mfma16)",
    },
    VllmKernels {
        backend: BackendName::RocmAiterFa,
        kernels: &[
            K::FlashAttnVarlen,
            K::PagedAttentionLl4mi,
            K::UnifiedAttention,
        ],
        on_matrix_targets: "AITER's CK / asm flash attention and paged attention (MFMA), AITER's Triton unified_attention (tl.dot)",
    },
    VllmKernels {
        backend: BackendName::RocmAiterUnifiedAttn,
        kernels: &[K::UnifiedAttention],
        on_matrix_targets: "AITER's Triton unified_attention (tl.dot)",
    },
    VllmKernels {
        backend: BackendName::FlexAttention,
        kernels: &[K::FlexAttention],
        on_matrix_targets: "torch.compile's Triton flex_attention (tl.dot)",
    },
    VllmKernels {
        backend: BackendName::TritonMla,
        kernels: &[K::MlaDecode, K::MlaProjection, K::FlashAttnVarlen],
        on_matrix_targets: "Triton decode_attention_fwd (tl.dot), GEMMs (hipBLASLt / cuBLAS), flash_attn_varlen_func",
    },
    VllmKernels {
        backend: BackendName::RocmAiterMla,
        kernels: &[K::AiterMlaDecode, K::MlaProjection, K::FlashAttnVarlen],
        on_matrix_targets: "AITER's asm mla_decode_fwd (MFMA), GEMMs, flash_attn_varlen_func",
    },
    VllmKernels {
        backend: BackendName::RocmAiterTritonMla,
        kernels: &[K::AiterMlaDecode, K::MlaProjection, K::FlashAttnVarlen],
        on_matrix_targets: "AITER's asm mla_decode_fwd (MFMA; the subclass overrides only an unused prefill hook), GEMMs, flash_attn_varlen_func",
    },
];

/// The flavour vLLM's kernels for `backend` use on `target`: the matrix
/// cores for every backend of [`VLLM_KERNELS`] (each has matrix-product
/// launches there); the fma kernels for a backend with none.
pub fn vllm_flavour(backend: BackendName, target: MatrixTarget) -> Flavour {
    match VLLM_KERNELS.iter().find(|k| k.backend == backend) {
        Some(k) if !k.kernels.is_empty() => Flavour::TensorCore(target),
        _ => Flavour::Fma,
    }
}

/// The matrix-product launch of a paged step.
pub fn paged_kernel(p: &Paged) -> MatmulKernel {
    match p {
        Paged::Unified(_) | Paged::AiterUnifiedAttention => K::UnifiedAttention,
        Paged::PagedAttentionV1 | Paged::PagedAttentionCommon | Paged::Ll4mi => {
            K::PagedAttentionLl4mi
        }
        Paged::Triton2d => K::PagedAttention2d,
        Paged::PrefixPrefill => K::ContextAttentionFwd,
        Paged::Flex => K::FlexAttention,
    }
}

/// Whether `backend` can run this batch in `flavour` over a cache of
/// `layout` kind: every launch of its route has a kernel in the flavour
/// that takes the launch's options, as the executors decide it (the same
/// checks: [`varlen_tc`], [`check_decode_tc`], [`no_tc_family`]). The fma
/// flavour takes everything the backend takes. Case generators draw from
/// here, so they draw only what the executors run.
pub fn admits(
    backend: &dyn AttentionBackend,
    flavour: Flavour,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    layout: LayoutKind,
) -> Result<()> {
    match flavour {
        Flavour::Fma => Ok(()),
        Flavour::TensorCore(target) => tc_launches(backend, meta, cfg, layout, target).map(|_| ()),
    }
}

/// The matrix-product launches of `backend`'s route for this batch, in
/// launch order, each with the tensor-core family that runs it on
/// `target`; or the first refusal (what [`admits`] says, and what
/// `attnlab trace --flavour tc` shows).
pub fn tc_launches(
    backend: &dyn AttentionBackend,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    layout: LayoutKind,
    target: MatrixTarget,
) -> Result<Vec<(MatmulKernel, &'static str)>> {
    let kcfg = backend.kernel_config(cfg)?;
    let mut launches = vec![];
    for batch in backend.route(meta, cfg)? {
        for step in &batch.steps {
            if let Some(k) = tc_step(step, &kcfg, meta, layout, target)? {
                launches.push(k);
            }
        }
    }
    Ok(launches)
}

/// The launch of one route step and the tensor-core family that runs it
/// (None: a launch with no matrix product, the same kernel in both
/// flavours), or the refusal the executors give.
pub fn tc_step(
    step: &Step,
    kcfg: &AttnConfig,
    meta: &AttentionMetadata,
    layout: LayoutKind,
    target: MatrixTarget,
) -> Result<Option<(MatmulKernel, &'static str)>> {
    let k = match step {
        Step::Merge { .. } => return Ok(None),
        Step::Attend { mask, .. } => {
            varlen_tc(&steps::attend_params(kcfg, meta.causal(), *mask)?, target)?;
            K::FlashAttnVarlen
        }
        Step::Paged(p) => {
            let k = paged_kernel(p);
            if matches!(k, K::PagedAttentionLl4mi | K::PagedAttention2d) {
                if !has_decode_rows(meta) {
                    return Ok(None); // every program exits: no matrix product
                }
                check_decode_tc(k, kcfg, layout, meta.block_size(), target)?;
                return Ok(Some((k, decode_tc_family(k, layout).name())));
            }
            if k == K::ContextAttentionFwd {
                check_prefix_tc(kcfg, target)?;
            }
            if k == K::FlexAttention {
                check_flex_tc(kcfg, target)?;
            }
            match p {
                Paged::Unified(launch) => check_unified_tc(kcfg, launch, layout, target)?,
                Paged::AiterUnifiedAttention => {
                    let launch = UnifiedLaunch::aiter(meta, kcfg, MI300X_CU_COUNT)?;
                    check_unified_tc(kcfg, &launch, layout, target)?
                }
                _ => {}
            }
            k
        }
    };
    match k.tc_family() {
        Some(family) => Ok(Some((k, family))),
        None => Err(no_tc_family(k, target)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_choice_parses_its_names_in_any_case_and_names_them_on_a_typo() {
        for n in FlavourChoice::NAMES {
            assert_eq!(FlavourChoice::parse(n).unwrap().name(), n);
            assert_eq!(FlavourChoice::parse(&n.to_uppercase()).unwrap().name(), n);
        }
        let e = FlavourChoice::parse("tensor").unwrap_err().to_string();
        assert!(e.contains("'tensor'") && e.contains("fma, tc, auto"), "{e}");
    }

    #[test]
    fn auto_is_the_matrix_cores_for_every_emulated_backend_on_every_target() {
        for k in VLLM_KERNELS {
            for t in MatrixTarget::ALL {
                assert_eq!(
                    FlavourChoice::Auto.resolve(k.backend, t),
                    Flavour::TensorCore(t)
                );
                assert_eq!(FlavourChoice::Fma.resolve(k.backend, t), Flavour::Fma);
            }
        }
        // A backend with no matrix-product launch we list runs the fma kernels.
        assert_eq!(
            vllm_flavour(BackendName::NoAttention, MatrixTarget::Sm90),
            Flavour::Fma
        );
    }

    #[test]
    fn every_emulated_backend_states_its_kernels_once() {
        let mut names: Vec<BackendName> = crate::backends::mha_backends()
            .iter()
            .map(|b| b.name())
            .chain(
                crate::backends::mla::mla_backends()
                    .iter()
                    .map(|b| b.name()),
            )
            .collect();
        names.sort_by_key(|b| b.name());
        let mut listed: Vec<BackendName> = VLLM_KERNELS.iter().map(|k| k.backend).collect();
        listed.sort_by_key(|b| b.name());
        assert_eq!(names, listed);
    }

    #[test]
    fn a_kernel_without_a_tensor_core_family_is_refused_naming_it_and_its_flavours() {
        let e = no_tc_family(MatmulKernel::AiterMlaDecode, MatrixTarget::Gfx942).to_string();
        assert!(
            e.contains("mla_decode_fwd (AITER asm)")
                && e.contains("aiter.mla.mla_decode_fwd")
                && e.contains("gfx942")
                && e.contains("no tensor-core kernel (its flavours: fma)"),
            "{e}"
        );
        assert_eq!(MatmulKernel::MlaDecode.flavours(), "fma, tc");
        assert_eq!(MatmulKernel::ContextAttentionFwd.flavours(), "fma, tc");
        assert_eq!(MatmulKernel::FlexAttention.flavours(), "fma, tc");
        assert_eq!(MatmulKernel::FlashAttnVarlen.flavours(), "fma, tc");
    }

    #[test]
    fn the_2d_decode_runs_paged_decode_2d_tc_and_the_ll4mi_decode_its_family_by_layout() {
        use LayoutKind::{AiterShuffled, Nhd, RocmPaged};
        for layout in [Nhd, RocmPaged, AiterShuffled] {
            assert_eq!(
                decode_tc_family(MatmulKernel::PagedAttention2d, layout),
                DecodeTcFamily::TwoD
            );
        }
        let ll4mi = |l| decode_tc_family(MatmulKernel::PagedAttentionLl4mi, l).name();
        assert_eq!(ll4mi(Nhd), "paged_decode_tc");
        assert_eq!(ll4mi(RocmPaged), "paged_decode_2d_tc");
        assert_eq!(ll4mi(AiterShuffled), "paged_decode_2d_tc");
        // The 2D family takes what the split one refuses (x-packed, fp8,
        // sinks), and refuses naming itself what neither takes.
        let cfg = crate::config::AttnConfigBuilder {
            kv_dtype: attnlab_shared::dtype::DType::Fp8E4m3Fnuz,
            sinks: Some(vec![0.5; 8]),
            ..AttnConfig::builder(8, 2, 96, attnlab_shared::dtype::DType::Bf16)
        }
        .build()
        .unwrap();
        for k in [
            MatmulKernel::PagedAttention2d,
            MatmulKernel::PagedAttentionLl4mi,
        ] {
            check_decode_tc(k, &cfg, RocmPaged, 16, MatrixTarget::Sm90).unwrap();
        }
        let big = AttnConfig::new(2, 1, 256, attnlab_shared::dtype::DType::Bf16).unwrap();
        let e = check_decode_tc(
            MatmulKernel::PagedAttention2d,
            &big,
            RocmPaged,
            128,
            MatrixTarget::Gfx942,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("kernel_paged_attention_2d")
                && e.contains("paged_decode_2d_tc refuses")
                && e.contains("67584"),
            "{e}"
        );
    }

    #[test]
    fn the_decode_split_is_whole_steps_at_least_the_minimum_and_fills_the_reference_gpu() {
        let meta = AttentionMetadata::new(
            16,
            64,
            vec![0, 1],
            vec![1000],
            attnlab_shared::metadata::BlockTableTensor::from_rows(&[(0..63).collect()]),
            vec![999],
            true,
        )
        .unwrap();
        let cfg = AttnConfig::new(8, 1, 128, attnlab_shared::dtype::DType::Bf16).unwrap();
        // One program: 132 * 8 waves would split 1000 keys into 16s; the minimum holds.
        assert_eq!(
            backend_decode_split(MatrixTarget::Sm90, &meta, &cfg),
            TC_DECODE_MIN_SPLIT
        );
        // One multiprocessor of one wave: the whole sequence in one split, rounded to steps.
        assert_eq!(decode_split_size(1, 1, 32, &meta, &cfg), 1008);
    }

    #[test]
    fn unified_attention_tc_takes_fp8_caches_and_refuses_other_cache_dtypes_naming_them() {
        use attnlab_shared::dtype::DType;
        let meta = AttentionMetadata::new(
            16,
            3,
            vec![0, 1, 4],
            vec![20, 3],
            BlockTableTensor::from_rows(&[vec![0, 1], vec![2, 0]]),
            vec![19, 32, 33, 34],
            true,
        )
        .unwrap();
        let cfg = |q: DType, kv: DType| {
            crate::config::AttnConfigBuilder {
                kv_dtype: kv,
                sinks: Some(vec![0.5; 4]),
                ..AttnConfig::builder(4, 1, 64, q)
            }
            .build()
            .unwrap()
        };
        for (q, kv) in [
            (DType::Bf16, DType::Fp8E4m3Fn),
            (DType::Bf16, DType::Fp8E4m3Fnuz),
            (DType::F16, DType::Fp8E4m3Fnuz),
            (DType::F16, DType::F16),
        ] {
            let c = cfg(q, kv);
            let vllm = UnifiedLaunch::vllm(&meta, &c, Default::default()).unwrap();
            let aiter = UnifiedLaunch::aiter(&meta, &c, MI300X_CU_COUNT).unwrap();
            for t in MatrixTarget::ALL {
                for launch in [vllm, aiter] {
                    check_unified_tc(&c, &launch, LayoutKind::Nhd, t)
                        .unwrap_or_else(|e| panic!("{} / {}: {e}", q.name(), kv.name()));
                }
            }
        }
        let c = cfg(DType::Bf16, DType::F16);
        let launch = UnifiedLaunch::vllm(&meta, &c, Default::default()).unwrap();
        let e = check_unified_tc(&c, &launch, LayoutKind::Nhd, MatrixTarget::Sm90)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unified_attention_tc refuses")
                && e.contains("KV cache dtype float16")
                && e.contains("fp8"),
            "{e}"
        );
    }

    #[test]
    fn the_balanced_split_is_whole_steps_near_the_square_root_of_twice_the_length() {
        assert_eq!(balanced_split(0), STEP);
        assert_eq!(balanced_split(1), STEP);
        assert_eq!(balanced_split(1024), 32);
        assert_eq!(balanced_split(8192), 128);
        assert_eq!(balanced_split(32768), 256);
        for len in [1usize, 17, 1000, 4096, 100_000, 1 << 20] {
            let s = balanced_split(len);
            assert_eq!(s % STEP, 0, "{len}");
            assert!(s * s <= 2 * len.max(128), "{len}: {s}");
        }
    }

    #[test]
    fn few_programs_on_a_long_sequence_split_at_the_balanced_length_not_at_the_minimum() {
        const LEN: i32 = 32768;
        let blocks = LEN / 16;
        let meta = AttentionMetadata::new(
            16,
            blocks as usize + 1,
            vec![0, 1],
            vec![LEN],
            attnlab_shared::metadata::BlockTableTensor::from_rows(&[(0..blocks).collect()]),
            vec![i64::from(LEN) - 1],
            true,
        )
        .unwrap();
        let cfg = AttnConfig::new(8, 1, 128, attnlab_shared::dtype::DType::Bf16).unwrap();
        // 132 * 8 waves over one program would make 1024 splits of 32 keys.
        assert_eq!(backend_decode_split(MatrixTarget::Sm90, &meta, &cfg), 256);
    }

    /// A DeepSeek-shaped MLA step (16 heads, 512 + 64 latent, nope / v
    /// heads `pv`) over `reqs` (query_len, context_len), decodes first.
    fn mla_step(pv: (usize, usize), reqs: &[(usize, usize)]) -> (MlaConfig, AttentionMetadata) {
        let mut cfg = MlaConfig::deepseek_r1(8).scaled_down();
        cfg.dims.qk_nope_head_dim = pv.0;
        cfg.dims.v_head_dim = pv.1;
        let mut rows = Vec::new();
        let (mut qsl, mut slots, mut next) = (vec![0i32], Vec::new(), 0i32);
        for &(q, c) in reqs {
            let n = (q + c).div_ceil(16) as i32;
            rows.push((next..next + n).collect::<Vec<i32>>());
            slots.extend((c..c + q).map(|t| (next as i64) * 16 + t as i64));
            next += n;
            qsl.push(qsl[qsl.len() - 1] + q as i32);
        }
        let lens = reqs.iter().map(|&(q, c)| (q + c) as i32).collect();
        let meta = AttentionMetadata::new(
            16,
            next as usize,
            qsl,
            lens,
            BlockTableTensor::from_rows(&rows),
            slots,
            true,
        )
        .unwrap();
        (cfg, meta)
    }

    #[test]
    fn triton_mla_runs_its_decode_on_mla_decode_tc_and_its_prefill_on_flash_varlen_tc() {
        use crate::backends::mla::triton_mla::TritonMla;
        let (cfg, meta) = mla_step((128, 128), &[(1, 40), (1, 7), (20, 0)]);
        let got = mla_tc_launches(&TritonMla, &meta, &cfg, MatrixTarget::Sm90).unwrap();
        let families: Vec<&str> = got.iter().map(|(_, f)| *f).collect();
        assert_eq!(
            families,
            [
                MLA_PROJECTION_FAMILY,
                "mla_decode_tc",
                MLA_PROJECTION_FAMILY,
                MLA_PROJECTION_FAMILY,
                "flash_varlen_tc"
            ]
        );
        assert!(admits_mla(
            &TritonMla,
            Flavour::TensorCore(MatrixTarget::Gfx942),
            &meta,
            &cfg
        )
        .is_ok());
    }

    #[test]
    fn aiter_mla_decodes_are_refused_naming_the_asm_kernel_and_its_prefills_run() {
        use crate::backends::mla::rocm_aiter_mla::RocmAiterMla;
        use crate::backends::mla::rocm_aiter_triton_mla::RocmAiterTritonMla;
        let (cfg, meta) = mla_step((128, 128), &[(1, 40), (20, 0)]);
        for b in [
            &RocmAiterMla::default() as &dyn MlaBackend,
            &RocmAiterTritonMla::default(),
        ] {
            let e = admits_mla(b, Flavour::TensorCore(MatrixTarget::Gfx942), &meta, &cfg)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("mla_decode_fwd (AITER asm)") && e.contains("asm kernel"),
                "{e}"
            );
            // The fma flavour takes everything the backend takes.
            assert!(admits_mla(b, Flavour::Fma, &meta, &cfg).is_ok());
        }
        let (cfg, meta) = mla_step((128, 128), &[(20, 0), (9, 30)]);
        assert!(admits_mla(
            &RocmAiterMla::default(),
            Flavour::TensorCore(MatrixTarget::Sm90),
            &meta,
            &cfg
        )
        .is_ok());
    }

    #[test]
    fn an_mla_prefill_whose_value_head_is_no_multiple_of_16_is_refused_naming_flash_varlen_tc() {
        use crate::backends::mla::triton_mla::TritonMla;
        let (cfg, meta) = mla_step((48, 24), &[(20, 0)]);
        let e = admits_mla(
            &TritonMla,
            Flavour::TensorCore(MatrixTarget::Sm90),
            &meta,
            &cfg,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("24"), "{e}");
        // Its decode takes any nope / v heads: they never reach the latent kernel.
        let (cfg, meta) = mla_step((48, 24), &[(1, 30)]);
        assert!(admits_mla(
            &TritonMla,
            Flavour::TensorCore(MatrixTarget::Sm90),
            &meta,
            &cfg
        )
        .is_ok());
    }
}
