//! [`GpuExecutor`]: the sim's kernel-executor seam
//! (`attnlab_sim::backends::exec::KernelExecutor`) backed by the HIP kernels,
//! so a backend's own `write_kv_with` / `forward_with` routing runs every
//! launch on the device. Each method calls the launcher in [`crate::ops`]
//! and widens the downloaded bits back to f32 (exact: they are storage
//! values), which is what the next kernel of the composition reads.

use crate::kernels::Gpu;
use crate::ops;
use crate::runtime::GpuError;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_sim::backends::exec::KernelExecutor;
use attnlab_sim::kernels::flash_varlen::VarlenArgs;
use attnlab_sim::kernels::flex_attention::FlexArgs;
use attnlab_sim::kernels::gather_cache::GatherArgs;
use attnlab_sim::kernels::merge_attn_states::MergeArgs;
use attnlab_sim::kernels::mla_cache::LatentWrite;
use attnlab_sim::kernels::mla_decode::{MlaDecodeArgs, MlaDecodeOutput};
use attnlab_sim::kernels::mla_prefill::LatentGather;
use attnlab_sim::kernels::mla_proj::ProjArgs;
use attnlab_sim::kernels::paged_decode::{PagedInputs, PartitionSize};
use attnlab_sim::kernels::prefix_prefill::PrefixArgs;
use attnlab_sim::kernels::reshape_and_cache::CacheWrite;
use attnlab_sim::kernels::softmax::OutLse;
use attnlab_sim::kernels::unified_attention::UnifiedArgs;

/// Runs every kernel of a backend's composition on `gpu`.
pub struct GpuExecutor<'a>(pub &'a Gpu);

/// Invalid inputs keep their error; device failures become "not supported
/// on this device" with the driver's message.
fn shared(e: GpuError) -> Error {
    match e {
        GpuError::Invalid(e) => e,
        other => Error::unsupported("GPU kernel execution", other.to_string()),
    }
}

fn widen(bits: &[u32], dtype: DType) -> Vec<f32> {
    bits.iter().map(|&b| dtype.from_bits(b)).collect()
}

impl KernelExecutor for GpuExecutor<'_> {
    fn reshape_and_cache(&self, args: CacheWrite) -> Result<()> {
        ops::reshape_and_cache::reshape_and_cache(self.0, args).map_err(shared)
    }

    fn unified_attention(&self, args: &UnifiedArgs) -> Result<Vec<f32>> {
        let bits = ops::unified_attention::unified_attention(self.0, args).map_err(shared)?;
        Ok(widen(&bits, args.inputs().cfg().dtype))
    }

    fn context_attention_fwd(&self, args: &PrefixArgs, out: &mut [f32]) -> Result<()> {
        let bits = ops::prefix_prefill::context_attention_fwd(self.0, args, out).map_err(shared)?;
        out.copy_from_slice(&widen(&bits, args.inputs().cfg().dtype));
        Ok(())
    }

    fn paged_attention_2d(&self, inputs: &PagedInputs, out: &mut [f32]) -> Result<()> {
        let bits = ops::paged_decode::paged_attention_2d(self.0, inputs, out).map_err(shared)?;
        out.copy_from_slice(&widen(&bits, inputs.cfg().dtype));
        Ok(())
    }

    fn paged_attention_ll4mi(
        &self,
        inputs: &PagedInputs,
        partition_size: PartitionSize,
        out: &mut [f32],
    ) -> Result<()> {
        let bits = ops::paged_decode::paged_attention_ll4mi(self.0, inputs, partition_size, out)
            .map_err(shared)?;
        out.copy_from_slice(&widen(&bits, inputs.cfg().dtype));
        Ok(())
    }

    fn cp_mha_gather_cache(&self, args: &GatherArgs) -> Result<(Vec<f32>, Vec<f32>)> {
        let (k, v) = ops::gather_cache::cp_mha_gather_cache(self.0, args).map_err(shared)?;
        let dst_dtype = args.dst_dtype();
        Ok((widen(&k, dst_dtype), widen(&v, dst_dtype)))
    }

    fn flash_attn_varlen(&self, args: &VarlenArgs) -> Result<OutLse> {
        let (out, lse) = ops::flash_varlen::flash_attn_varlen(self.0, args).map_err(shared)?;
        let p = args.params();
        OutLse::new(
            args.total_q(),
            p.num_heads,
            p.head_size_v,
            widen(&out, p.dtype),
            widen(&lse, DType::F32),
        )
    }

    fn merge_attn_states(&self, args: &MergeArgs) -> Result<OutLse> {
        let m = ops::merge_attn_states::merge_attn_states(self.0, args).map_err(shared)?;
        let (t, h, d) = args.shape();
        OutLse::new(
            t,
            h,
            d,
            widen(&m.out, args.out_dtype()),
            widen(&m.lse, DType::F32),
        )
    }

    fn flex_attention(&self, args: &FlexArgs) -> Result<Vec<f32>> {
        let bits = ops::flex_attention::flex_attention(self.0, args).map_err(shared)?;
        Ok(widen(&bits, args.cfg().dtype))
    }

    /// The step's activations go up as f32 (exact: every f32 is), so the
    /// device stores `round(x)` / `fp8(x / scale)` of the same values the
    /// sim stores, whatever their dtype.
    fn concat_and_cache_mla(&self, mut args: LatentWrite) -> Result<()> {
        let bits =
            ops::mla_cache::concat_and_cache_mla(self.0, &args, DType::F32).map_err(shared)?;
        let dtype = args.cache().layout.dtype;
        *args.cache_data() = widen(&bits, dtype);
        Ok(())
    }

    fn up_project(&self, args: &ProjArgs) -> Result<(Vec<f32>, Vec<f32>)> {
        let (k, v) = ops::mla_proj::up_project(self.0, args).map_err(shared)?;
        Ok((widen(&k, args.dtype()), widen(&v, args.dtype())))
    }

    fn absorb_query(&self, args: &ProjArgs) -> Result<Vec<f32>> {
        let bits = ops::mla_proj::absorb_query(self.0, args).map_err(shared)?;
        Ok(widen(&bits, args.dtype()))
    }

    fn project_output(&self, args: &ProjArgs) -> Result<Vec<f32>> {
        let bits = ops::mla_proj::project_output(self.0, args).map_err(shared)?;
        Ok(widen(&bits, args.dtype()))
    }

    fn decode_attention_fwd(&self, args: &MlaDecodeArgs) -> Result<MlaDecodeOutput> {
        let o = ops::mla_decode::decode_attention_fwd(self.0, args).map_err(shared)?;
        let p = args.params();
        Ok(MlaDecodeOutput {
            out: widen(&o.out, p.out_dtype),
            lse: widen(&o.lse, p.lse_dtype),
        })
    }

    fn gather_and_maybe_dequant_cache(&self, args: &LatentGather) -> Result<Vec<f32>> {
        let bits =
            ops::mla_prefill::gather_and_maybe_dequant_cache(self.0, args).map_err(shared)?;
        let dtype = ops::mla_prefill::gathered_dtype(args.cache().layout.dtype, args.to());
        Ok(widen(&bits, dtype))
    }
}
