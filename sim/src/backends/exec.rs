//! The kernel-executor seam: every kernel launch a backend makes goes
//! through a [`KernelExecutor`], so one routing (the backend's own
//! `write_kv_with` / `forward_with`) can run its kernels on the emulator
//! ([`Cpu`], what `write_kv` / `forward` use) or on a GPU (attnlab-gpu's
//! executor, for `attnlab diff --backend NAME`): the backend diff compares
//! the same composition, kernel for kernel, with no routing copied.
//!
//! Every method defaults to the emulator kernel of the same name and
//! signature, so an executor overrides only what it runs elsewhere.

use crate::kernels::flash_varlen::{varlen, VarlenArgs};
use crate::kernels::flex_attention::{flex, FlexArgs};
use crate::kernels::gather_cache::{gather, GatherArgs};
use crate::kernels::merge_attn_states::{merge, MergeArgs};
use crate::kernels::mla_cache::{write_latent, LatentCache, LatentWrite};
use crate::kernels::mla_decode::{
    aiter_splits, decode, AiterPaging, MlaDecodeArgs, MlaDecodeOutput, MlaDecodeParams,
};
use crate::kernels::mla_prefill::{gather_latent, LatentGather};
use crate::kernels::mla_proj::{absorb, output, up, ProjArgs};
use crate::kernels::paged_decode::{paged_2d, paged_ll4mi, PagedInputs, PartitionSize};
use crate::kernels::prefix_prefill::{context_attention, PrefixArgs};
use crate::kernels::reshape_and_cache::{write_cache, CacheWrite};
use crate::kernels::softmax::OutLse;
use crate::kernels::unified_attention::{unified_attention, UnifiedArgs};
use attnlab_shared::error::Result;
use attnlab_shared::fault::FaultSet;

/// Runs the kernels the MHA and MLA backends compose (see [`crate::kernels`] for each).
#[allow(clippy::too_many_arguments)]
pub trait KernelExecutor {
    fn reshape_and_cache(&self, args: CacheWrite) -> Result<()> {
        write_cache(args);
        Ok(())
    }

    fn unified_attention(&self, args: &UnifiedArgs) -> Result<Vec<f32>> {
        let i = args.inputs();
        unified_attention(i.query(), i.cache(), i.meta(), i.cfg(), args.launch())
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
    /// overrides `decode_attention_fwd` runs AITER's decode with it too.
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
        let splits = aiter_splits(cache, paging, num_kv_splits, num_cus, p.num_heads)?;
        let rows = paging.rows_with(causal, p.faults);
        self.decode_attention_fwd(&MlaDecodeArgs::new(q, &rows, cache, splits, p)?)
    }

    fn gather_and_maybe_dequant_cache(&self, args: &LatentGather) -> Result<Vec<f32>> {
        Ok(gather_latent(args))
    }
}

/// The emulator: every kernel as `crate::kernels` computes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

impl KernelExecutor for Cpu {}
