//! [`GpuExecutor`]: the sim's kernel-executor seam
//! (`attnlab_sim::backends::exec::KernelExecutor`) backed by the HIP kernels,
//! so a backend's own `write_kv_with` / `forward_with` routing runs every
//! launch on the device. Each method calls the launcher in [`crate::ops`]
//! and widens the downloaded bits back to f32 (exact: they are storage
//! values), which is what the next kernel of the composition reads.
//!
//! The executor carries the kernel flavour (`attnlab_sim::backends::flavour`):
//! in the tensor-core flavour `flash_attn_varlen` runs `flash_varlen_tc`,
//! the paged decodes their `decode_tc_family` (`paged_decode_tc` at the
//! split size the sim's executor uses, or `paged_decode_2d_tc`) and
//! TRITON_MLA's decode `mla_decode_tc` (the MLA projections are the same
//! GEMM in both flavours), the flavour's target must be the device's, and
//! the launches with no tensor-core kernel (AITER's asm MLA decode) are
//! refused as the sim refuses them.

use crate::kernels::Gpu;
use crate::ops;
use crate::ops::paged_decode_tc::{TcReduce, TcVariant};
use crate::runtime::GpuError;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_sim::backends::exec::KernelExecutor;
use attnlab_sim::backends::flavour::{
    backend_decode_split, check_decode_tc, check_flex_tc, check_prefix_tc, check_unified_tc,
    decode_tc_family, has_decode_rows, mla_decode_tc, varlen_tc, DecodeTcFamily, Flavour,
    MatmulKernel,
};
use attnlab_sim::kernels::flash_varlen::VarlenArgs;
use attnlab_sim::kernels::flash_varlen_tc::VarlenTcArgs;
use attnlab_sim::kernels::flex_attention::FlexArgs;
use attnlab_sim::kernels::gather_cache::GatherArgs;
use attnlab_sim::kernels::merge_attn_states::MergeArgs;
use attnlab_sim::kernels::mla_cache::LatentWrite;
use attnlab_sim::kernels::mla_decode::{MlaDecodeArgs, MlaDecodeOutput};
use attnlab_sim::kernels::mla_prefill::LatentGather;
use attnlab_sim::kernels::mla_proj::ProjArgs;
use attnlab_sim::kernels::paged_decode::{PagedInputs, PartitionSize};
use attnlab_sim::kernels::paged_decode_2d_tc::Decode2dTcArgs;
use attnlab_sim::kernels::paged_decode_tc::{num_splits, DecodeTcArgs};
use attnlab_sim::kernels::prefix_prefill::PrefixArgs;
use attnlab_sim::kernels::reshape_and_cache::CacheWrite;
use attnlab_sim::kernels::softmax::OutLse;
use attnlab_sim::kernels::unified_attention::UnifiedArgs;
use attnlab_sim::numerics::mma::MatrixTarget;

/// Runs every kernel of a backend's composition on `gpu`, in `flavour`.
pub struct GpuExecutor<'a> {
    pub gpu: &'a Gpu,
    pub flavour: Flavour,
}

impl<'a> GpuExecutor<'a> {
    /// The fma (CUDA-core) kernels.
    pub fn new(gpu: &'a Gpu) -> Self {
        GpuExecutor {
            gpu,
            flavour: Flavour::Fma,
        }
    }

    /// `flavour`'s kernels; a tensor-core flavour must name the device's
    /// matrix target (the host device: sm_90 at wave 32, gfx942 at 64).
    pub fn with_flavour(gpu: &'a Gpu, flavour: Flavour) -> Result<Self> {
        if let Flavour::TensorCore(t) = flavour {
            let device = device_matrix_target(gpu).map_err(shared)?;
            if device != t {
                return Err(Error::invalid(
                    "tensor-core flavour target",
                    t.name(),
                    format!(
                        "the device's, {} ({})",
                        device.name(),
                        gpu.dev.info().target.name()
                    ),
                ));
            }
        }
        Ok(GpuExecutor { gpu, flavour })
    }

    /// A paged decode launch (`kernel`) in the tensor-core flavour: its
    /// `decode_tc_family`, `paged_decode_tc` at the split size the sim's
    /// executor uses or `paged_decode_2d_tc`.
    fn decode_tc(
        &self,
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
        let bits = match decode_tc_family(kernel, cache.layout.kind) {
            DecodeTcFamily::Split => {
                let split = backend_decode_split(target, meta, cfg);
                let args = DecodeTcArgs::new(*inputs, target, split)?;
                let reduce = TcReduce::auto(num_splits(meta.max_seq_len(), split));
                ops::paged_decode_tc::paged_decode_tc(
                    self.gpu,
                    &args,
                    TcVariant::Default,
                    reduce,
                    out,
                )
            }
            DecodeTcFamily::TwoD => {
                let args = Decode2dTcArgs::new(*inputs, target)?;
                ops::paged_decode_2d_tc::paged_decode_2d_tc(self.gpu, &args, out)
            }
        }
        .map_err(shared)?;
        out.copy_from_slice(&widen(&bits, cfg.dtype()));
        Ok(())
    }
}

/// The matrix target the device's kernels run.
pub fn device_matrix_target(gpu: &Gpu) -> crate::runtime::Result<MatrixTarget> {
    ops::flash_varlen_tc::matrix_target(&gpu.dev.info().target)
}

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
    fn flavour(&self) -> Flavour {
        self.flavour
    }

    fn reshape_and_cache(&self, args: CacheWrite) -> Result<()> {
        ops::reshape_and_cache::reshape_and_cache(self.gpu, args).map_err(shared)
    }

    fn unified_attention(&self, args: &UnifiedArgs) -> Result<Vec<f32>> {
        if let Flavour::TensorCore(t) = self.flavour {
            let (i, launch) = (args.inputs(), args.launch());
            check_unified_tc(i.cfg(), launch, i.cache().layout.kind, t)?;
            let bits =
                ops::unified_attention_tc::unified_attention_tc(self.gpu, args).map_err(shared)?;
            return Ok(widen(&bits, i.cfg().dtype()));
        }
        let bits = ops::unified_attention::unified_attention(self.gpu, args).map_err(shared)?;
        Ok(widen(&bits, args.inputs().cfg().dtype()))
    }

    fn context_attention_fwd(&self, args: &PrefixArgs, out: &mut [f32]) -> Result<()> {
        let bits = match self.flavour {
            Flavour::Fma => ops::prefix_prefill::context_attention_fwd(self.gpu, args, out),
            Flavour::TensorCore(t) => {
                check_prefix_tc(args.inputs().cfg(), t)?;
                ops::prefix_prefill_tc::context_attention_tc(self.gpu, args, out)
            }
        }
        .map_err(shared)?;
        out.copy_from_slice(&widen(&bits, args.inputs().cfg().dtype()));
        Ok(())
    }

    fn paged_attention_2d(&self, inputs: &PagedInputs, out: &mut [f32]) -> Result<()> {
        if let Flavour::TensorCore(t) = self.flavour {
            return self.decode_tc(MatmulKernel::PagedAttention2d, t, inputs, out);
        }
        let bits = ops::paged_decode::paged_attention_2d(self.gpu, inputs, out).map_err(shared)?;
        out.copy_from_slice(&widen(&bits, inputs.cfg().dtype()));
        Ok(())
    }

    fn paged_attention_ll4mi(
        &self,
        inputs: &PagedInputs,
        partition_size: PartitionSize,
        out: &mut [f32],
    ) -> Result<()> {
        if let Flavour::TensorCore(t) = self.flavour {
            return self.decode_tc(MatmulKernel::PagedAttentionLl4mi, t, inputs, out);
        }
        let bits = ops::paged_decode::paged_attention_ll4mi(self.gpu, inputs, partition_size, out)
            .map_err(shared)?;
        out.copy_from_slice(&widen(&bits, inputs.cfg().dtype()));
        Ok(())
    }

    fn cp_mha_gather_cache(&self, args: &GatherArgs) -> Result<(Vec<f32>, Vec<f32>)> {
        let (k, v) = ops::gather_cache::cp_mha_gather_cache(self.gpu, args).map_err(shared)?;
        let dst_dtype = args.dst_dtype();
        Ok((widen(&k, dst_dtype), widen(&v, dst_dtype)))
    }

    fn flash_attn_varlen(&self, args: &VarlenArgs) -> Result<OutLse> {
        let (out, lse) = match self.flavour {
            Flavour::Fma => ops::flash_varlen::flash_attn_varlen(self.gpu, args),
            Flavour::TensorCore(t) => {
                let tc = varlen_tc(args.params(), t)?;
                let (q, k, v) = (args.q(), args.k(), args.v());
                let (cu_q, cu_k) = (args.cu_seqlens_q(), args.cu_seqlens_k());
                let tc_args = VarlenTcArgs::new(q, k, v, cu_q, cu_k, &tc)?;
                ops::flash_varlen_tc::flash_attn_varlen_tc(self.gpu, &tc_args)
            }
        }
        .map_err(shared)?;
        let p = args.params();
        OutLse::new(
            args.total_q(),
            p.num_heads(),
            p.head_size_v(),
            widen(&out, p.dtype()),
            widen(&lse, DType::F32),
        )
    }

    fn merge_attn_states(&self, args: &MergeArgs) -> Result<OutLse> {
        let m = ops::merge_attn_states::merge_attn_states(self.gpu, args).map_err(shared)?;
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
        let bits = match self.flavour {
            Flavour::Fma => ops::flex_attention::flex_attention(self.gpu, args),
            Flavour::TensorCore(t) => {
                check_flex_tc(args.cfg(), t)?;
                ops::flex_attention_tc::flex_attention_tc(self.gpu, args)
            }
        }
        .map_err(shared)?;
        Ok(widen(&bits, args.cfg().dtype()))
    }

    /// The step's activations go up as f32 (exact: every f32 is), so the
    /// device stores `round(x)` / `fp8(x / scale)` of the same values the
    /// sim stores, whatever their dtype.
    fn concat_and_cache_mla(&self, mut args: LatentWrite) -> Result<()> {
        let bits =
            ops::mla_cache::concat_and_cache_mla(self.gpu, &args, DType::F32).map_err(shared)?;
        let dtype = args.cache().layout.dtype;
        *args.cache_data() = widen(&bits, dtype);
        Ok(())
    }

    fn up_project(&self, args: &ProjArgs) -> Result<(Vec<f32>, Vec<f32>)> {
        let (k, v) = ops::mla_proj::up_project(self.gpu, args).map_err(shared)?;
        Ok((widen(&k, args.dtype()), widen(&v, args.dtype())))
    }

    fn absorb_query(&self, args: &ProjArgs) -> Result<Vec<f32>> {
        let bits = ops::mla_proj::absorb_query(self.gpu, args).map_err(shared)?;
        Ok(widen(&bits, args.dtype()))
    }

    fn project_output(&self, args: &ProjArgs) -> Result<Vec<f32>> {
        let bits = ops::mla_proj::project_output(self.gpu, args).map_err(shared)?;
        Ok(widen(&bits, args.dtype()))
    }

    fn decode_attention_fwd(&self, args: &MlaDecodeArgs) -> Result<MlaDecodeOutput> {
        let o = match self.flavour {
            Flavour::Fma => ops::mla_decode::decode_attention_fwd(self.gpu, args),
            Flavour::TensorCore(t) => {
                ops::mla_decode_tc::decode_attention_fwd_tc(self.gpu, &mla_decode_tc(args, t)?)
            }
        }
        .map_err(shared)?;
        let p = args.params();
        Ok(MlaDecodeOutput {
            out: widen(&o.out, p.out_dtype),
            lse: widen(&o.lse, p.lse_dtype),
        })
    }

    fn gather_and_maybe_dequant_cache(&self, args: &LatentGather) -> Result<Vec<f32>> {
        let bits =
            ops::mla_prefill::gather_and_maybe_dequant_cache(self.gpu, args).map_err(shared)?;
        let dtype = ops::mla_prefill::gathered_dtype(args.cache().layout.dtype, args.to());
        Ok(widen(&bits, dtype))
    }
}
