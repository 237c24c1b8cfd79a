//! The kernel-executor seam: every kernel launch a backend makes goes
//! through a [`KernelExecutor`], so one routing (the backend's own
//! `write_kv_with` / `forward_with`) can run its kernels on the emulator
//! ([`Cpu`], what `write_kv` / `forward` use) or on a GPU (attnlab-gpu's
//! executor, for `attnlab diff --backend NAME`): the backend diff compares
//! the same composition, kernel for kernel, with no routing copied.
//!
//! Every method defaults to the emulator kernel of the same name and
//! signature, so an executor overrides only what it runs elsewhere.
//!
//! An executor also carries the kernel [`Flavour`] (fma or tensor-core,
//! [`super::flavour`]): [`Cpu`] in the tensor-core flavour runs
//! `flash_attn_varlen` as `flash_varlen_tc`, `unified_attention` as
//! `unified_attention_tc`, `context_attention_fwd` as `prefix_prefill_tc`,
//! `flex_attention` as `flex_attention_tc`, the paged decodes as their
//! [`decode_tc_family`] says (`paged_decode_2d_tc` for ROCM_ATTN's 2D decode
//! and for the ll4mi decodes over the x-packed or shuffled caches,
//! `paged_decode_tc` for the others; a decode over a batch with no decode
//! row computes nothing) and TRITON_MLA's `decode_attention_fwd` as
//! `mla_decode_tc`; the MLA projections are the same GEMM in both
//! flavours ([`super::flavour::MLA_PROJECTION_FAMILY`]); it refuses the
//! launches with no tensor-core kernel (AITER's asm `mla_decode_fwd`).

use crate::backends::flavour::{
    backend_decode_split, check_decode_tc, check_flex_tc, check_prefix_tc, check_unified_tc,
    decode_tc_family, has_decode_rows, mla_decode_tc, no_tc_family, varlen_tc, DecodeTcFamily,
    Flavour, MatmulKernel,
};
use crate::kernels::flash_varlen::{varlen, VarlenArgs};
use crate::kernels::flash_varlen_tc::flash_attn_varlen_tc;
use crate::kernels::flex_attention::{flex, FlexArgs};
use crate::kernels::flex_attention_tc::flex_tc;
use crate::kernels::gather_cache::{gather, GatherArgs};
use crate::kernels::merge_attn_states::{merge, MergeArgs};
use crate::kernels::mla_cache::{write_latent, LatentCache, LatentWrite};
use crate::kernels::mla_decode::{
    aiter_splits, decode, AiterPaging, MlaDecodeArgs, MlaDecodeOutput, MlaDecodeParams,
};
use crate::kernels::mla_decode_tc::decode_tc as mla_decode_tc_kernel;
use crate::kernels::mla_decode_tc::MlaSoftmax;
use crate::kernels::mla_prefill::{gather_latent, LatentGather};
use crate::kernels::mla_proj::{absorb, output, up, ProjArgs};
use crate::kernels::paged_decode::{paged_2d, paged_ll4mi, PagedInputs, PartitionSize};
use crate::kernels::paged_decode_2d_tc::{paged_decode_2d_tc, Decode2dTcArgs};
use crate::kernels::paged_decode_tc::{decode_tc, DecodeTcArgs};
use crate::kernels::prefix_prefill::{context_attention, PrefixArgs};
use crate::kernels::prefix_prefill_tc::context_attention_tc;
use crate::kernels::reshape_and_cache::{write_cache, CacheWrite};
use crate::kernels::softmax::OutLse;
use crate::kernels::unified_attention::{unified, UnifiedArgs};
use crate::kernels::unified_attention_tc::unified_attention_tc;
use crate::numerics::mma::MatrixTarget;
use attnlab_shared::error::Result;
use attnlab_shared::fault::FaultSet;

/// Runs the kernels the MHA and MLA backends compose (see [`crate::kernels`] for each).
#[allow(clippy::too_many_arguments)]
pub trait KernelExecutor {
    /// The kernel flavour this executor runs (the compositions that have no
    /// tensor-core kernel read it to refuse that flavour).
    fn flavour(&self) -> Flavour {
        Flavour::Fma
    }

    fn reshape_and_cache(&self, args: CacheWrite) -> Result<()> {
        write_cache(args);
        Ok(())
    }

    fn unified_attention(&self, args: &UnifiedArgs) -> Result<Vec<f32>> {
        unified(args)
    }

    fn context_attention_fwd(&self, args: &PrefixArgs, out: &mut [f32]) -> Result<()> {
        context_attention(args, out)
    }

    fn paged_attention_2d(&self, inputs: &PagedInputs, out: &mut [f32]) -> Result<()> {
        paged_2d(inputs, out)
    }

    fn paged_attention_ll4mi(
        &self,
        inputs: &PagedInputs,
        partition_size: PartitionSize,
        out: &mut [f32],
    ) -> Result<()> {
        paged_ll4mi(inputs, partition_size, out)
    }

    fn cp_mha_gather_cache(&self, args: &GatherArgs) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(gather(args))
    }

    fn flash_attn_varlen(&self, args: &VarlenArgs) -> Result<OutLse> {
        Ok(varlen(args))
    }

    fn merge_attn_states(&self, args: &MergeArgs) -> Result<OutLse> {
        Ok(merge(args, FaultSet::NONE))
    }

    fn flex_attention(&self, args: &FlexArgs) -> Result<Vec<f32>> {
        flex(args)
    }

    // ---- MLA (backends::mla): latent cache, projections, decode, prefill gather.

    fn concat_and_cache_mla(&self, args: LatentWrite) -> Result<()> {
        write_latent(args);
        Ok(())
    }

    fn up_project(&self, args: &ProjArgs) -> Result<(Vec<f32>, Vec<f32>)> {
        up(args)
    }

    fn absorb_query(&self, args: &ProjArgs) -> Result<Vec<f32>> {
        absorb(args)
    }

    fn project_output(&self, args: &ProjArgs) -> Result<Vec<f32>> {
        output(args)
    }

    fn decode_attention_fwd(&self, args: &MlaDecodeArgs) -> Result<MlaDecodeOutput> {
        decode(args)
    }

    /// AITER's launch (paging checks, split count, granularity:
    /// [`aiter_splits`]) around this executor's split-KV decode, exactly as
    /// the emulator's `mla_decode_fwd` composes them; an executor that
    /// overrides `decode_attention_fwd` runs AITER's decode with it too. In
    /// the tensor-core flavour it is refused: AITER's asm kernel is not
    /// vLLM's Triton kernel that `mla_decode_tc` computes.
    fn mla_decode_fwd(
        &self,
        q: &[f32],
        cache: &LatentCache,
        paging: &AiterPaging,
        causal: bool,
        num_kv_splits: Option<usize>,
        num_cus: usize,
        p: &MlaDecodeParams,
    ) -> Result<MlaDecodeOutput> {
        if let Flavour::TensorCore(t) = self.flavour() {
            return Err(no_tc_family(MatmulKernel::AiterMlaDecode, t));
        }
        let splits = aiter_splits(cache, paging, num_kv_splits, num_cus, p.num_heads)?;
        let rows = paging.rows_with(causal, p.faults);
        self.decode_attention_fwd(&MlaDecodeArgs::new(q, &rows, cache, splits, p)?)
    }

    fn gather_and_maybe_dequant_cache(&self, args: &LatentGather) -> Result<Vec<f32>> {
        Ok(gather_latent(args))
    }
}

/// The emulator: every kernel as `crate::kernels` computes it, in its
/// [`Flavour`] (the fma kernels unless told otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    pub flavour: Flavour,
    /// Whose arithmetic the hardware functions follow where a vendor's is
    /// modelled (today: TRITON_MLA's decode on sm_90, `MlaSoftmax::VllmSm90`);
    /// the contract everywhere else.
    pub arithmetic: Arithmetic,
}

/// The contract's functions (`exp2c`, what attnlab's kernels compute on
/// every device), or, where the emulator models it, the vendor kernel's own
/// arithmetic on the flavour's target: what `attnlab replay` compares a
/// capture with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Arithmetic {
    #[default]
    Contract,
    Vendor,
}

impl Cpu {
    /// The fma (CUDA-core) kernels: what `write_kv` / `forward` run.
    pub const FMA: Cpu = Cpu {
        flavour: Flavour::Fma,
        arithmetic: Arithmetic::Contract,
    };

    pub fn new(flavour: Flavour) -> Self {
        Cpu {
            flavour,
            arithmetic: Arithmetic::Contract,
        }
    }

    /// The same executor in `arithmetic`.
    pub fn with_arithmetic(self, arithmetic: Arithmetic) -> Self {
        Cpu { arithmetic, ..self }
    }

    /// A paged decode launch (`kernel`) in the tensor-core flavour: its
    /// [`decode_tc_family`], `paged_decode_tc` at the backends' split size
    /// for `target` or `paged_decode_2d_tc`.
    fn decode_tc(
        kernel: MatmulKernel,
        target: MatrixTarget,
        inputs: &PagedInputs,
        out: &mut [f32],
    ) -> Result<()> {
        let (cache, meta, cfg) = (inputs.cache(), inputs.meta(), inputs.cfg());
        if !has_decode_rows(meta) {
            return inputs.check_out(out); // every program exits: out unchanged
        }
        check_decode_tc(kernel, cfg, cache.layout.kind, meta.block_size(), target)?;
        match decode_tc_family(kernel, cache.layout.kind) {
            DecodeTcFamily::Split => {
                let split = backend_decode_split(target, meta, cfg);
                decode_tc(&DecodeTcArgs::new(*inputs, target, split)?, out)
            }
            DecodeTcFamily::TwoD => paged_decode_2d_tc(&Decode2dTcArgs::new(*inputs, target)?, out),
        }
    }
}

/// The fma kernels are the trait's defaults; the tensor-core flavour
/// replaces the launches with matrix products.
impl KernelExecutor for Cpu {
    fn flavour(&self) -> Flavour {
        self.flavour
    }

    fn unified_attention(&self, args: &UnifiedArgs) -> Result<Vec<f32>> {
        let i = args.inputs();
        match self.flavour {
            Flavour::Fma => unified(args),
            Flavour::TensorCore(target) => {
                let (cache, launch) = (i.cache(), args.launch());
                check_unified_tc(i.cfg(), launch, cache.layout.kind, target)?;
                unified_attention_tc(i.query(), cache, i.meta(), i.cfg(), launch, target)
            }
        }
    }

    fn context_attention_fwd(&self, args: &PrefixArgs, out: &mut [f32]) -> Result<()> {
        match self.flavour {
            Flavour::Fma => context_attention(args, out),
            Flavour::TensorCore(t) => {
                check_prefix_tc(args.inputs().cfg(), t)?;
                context_attention_tc(args, t, out)
            }
        }
    }

    fn paged_attention_2d(&self, inputs: &PagedInputs, out: &mut [f32]) -> Result<()> {
        match self.flavour {
            Flavour::Fma => paged_2d(inputs, out),
            Flavour::TensorCore(t) => {
                Self::decode_tc(MatmulKernel::PagedAttention2d, t, inputs, out)
            }
        }
    }

    fn paged_attention_ll4mi(
        &self,
        inputs: &PagedInputs,
        partition_size: PartitionSize,
        out: &mut [f32],
    ) -> Result<()> {
        match self.flavour {
            Flavour::Fma => paged_ll4mi(inputs, partition_size, out),
            Flavour::TensorCore(t) => {
                Self::decode_tc(MatmulKernel::PagedAttentionLl4mi, t, inputs, out)
            }
        }
    }

    fn flash_attn_varlen(&self, args: &VarlenArgs) -> Result<OutLse> {
        match self.flavour {
            Flavour::Fma => Ok(varlen(args)),
            Flavour::TensorCore(t) => flash_attn_varlen_tc(
                args.q(),
                args.k(),
                args.v(),
                args.cu_seqlens_q(),
                args.cu_seqlens_k(),
                &varlen_tc(args.params(), t)?,
            ),
        }
    }

    fn flex_attention(&self, args: &FlexArgs) -> Result<Vec<f32>> {
        match self.flavour {
            Flavour::Fma => flex(args),
            Flavour::TensorCore(t) => {
                check_flex_tc(args.cfg(), t)?;
                flex_tc(args, t)
            }
        }
    }

    // The MLA projections (up_project, absorb_query, project_output) are
    // the trait's defaults in both flavours: MLA_PROJECTION_FAMILY.

    fn decode_attention_fwd(&self, args: &MlaDecodeArgs) -> Result<MlaDecodeOutput> {
        match self.flavour {
            Flavour::Fma => decode(args),
            Flavour::TensorCore(t) => {
                let tc = mla_decode_tc(args, t)?;
                let tc = match (self.arithmetic, t) {
                    (Arithmetic::Vendor, MatrixTarget::Sm90) => {
                        tc.with_softmax(MlaSoftmax::VllmSm90)?
                    }
                    _ => tc,
                };
                mla_decode_tc_kernel(&tc)
            }
        }
    }
}
