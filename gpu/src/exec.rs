//! [`GpuExecutor`]: the sim's kernel-executor seam
//! (`attnlab_sim::backends::exec::KernelExecutor`) backed by the HIP kernels,
//! so a backend's own `write_kv_with` / `forward_with` routing runs every
//! launch on the device. Each method calls the launcher in [`crate::ops`]
//! and widens the downloaded bits back to f32 (exact: they are storage
//! values), which is what the next kernel of the composition reads.
//!
//! The executor carries the kernel flavour (`attnlab_sim::backends::flavour`):
//! in the tensor-core flavour `flash_attn_varlen` runs `flash_varlen_tc`
//! and the paged decodes `paged_decode_tc` (at the split size the sim's
//! executor uses), the flavour's target must be the device's, and the
//! launches with no tensor-core kernel are refused as the sim refuses them.

use crate::kernels::Gpu;
use crate::ops;
use crate::ops::paged_decode_tc::TcVariant;
use crate::runtime::GpuError;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_sim::backends::exec::KernelExecutor;
use attnlab_sim::backends::flavour::{
    backend_decode_split, check_decode_tc, no_tc_family, varlen_tc, Flavour, MatmulKernel,
};
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::flash_varlen::VarlenParams;
use attnlab_sim::kernels::gather_cache::{CacheFormat, GatherChunk};
use attnlab_sim::kernels::merge_attn_states::MergeKernel;
use attnlab_sim::kernels::mla_cache::LatentCache;
use attnlab_sim::kernels::mla_decode::{KvRow, KvSplits, MlaDecodeOutput, MlaDecodeParams};
use attnlab_sim::kernels::mla_prefill::ContextChunk;
use attnlab_sim::kernels::mla_proj::MlaWeights;
use attnlab_sim::kernels::reshape_and_cache::CacheWriter;
use attnlab_sim::kernels::softmax::OutLse;
use attnlab_sim::kernels::unified_attention::UnifiedLaunch;
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

    /// A paged decode launch (`kernel`) in the tensor-core flavour:
    /// `paged_decode_tc` at the split size the sim's executor uses.
    #[allow(clippy::too_many_arguments)]
    fn decode_tc(
        &self,
        kernel: MatmulKernel,
        target: MatrixTarget,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        out: &mut [f32],
    ) -> Result<()> {
        check_decode_tc(kernel, cfg, cache.layout.kind, meta.block_size, target)?;
        let split = backend_decode_split(target, meta, cfg);
        let (bits, _) = ops::paged_decode_tc::paged_decode_tc(
            self.gpu,
            query,
            cache,
            meta,
            cfg,
            Some(split),
            TcVariant::Default,
            out,
        )
        .map_err(shared)?;
        out.copy_from_slice(&widen(&bits, cfg.dtype));
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
    fn reshape_and_cache(
        &self,
        writer: CacheWriter,
        cache: &mut KvCache,
        key: &[f32],
        value: &[f32],
        slot_mapping: &[i64],
        cfg: &AttnConfig,
    ) -> Result<()> {
        ops::reshape_and_cache::reshape_and_cache(
            self.gpu,
            writer,
            cache,
            key,
            value,
            slot_mapping,
            cfg,
        )
        .map_err(shared)
    }

    fn unified_attention(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        launch: &UnifiedLaunch,
    ) -> Result<Vec<f32>> {
        if let Flavour::TensorCore(target) = self.flavour {
            // LEAD: at the merge with branch tcu, run
            // ops::unified_attention_tc here (target: `target`).
            return Err(no_tc_family(MatmulKernel::UnifiedAttention, target));
        }
        let bits =
            ops::unified_attention::unified_attention(self.gpu, query, cache, meta, cfg, launch)
                .map_err(shared)?;
        Ok(widen(&bits, cfg.dtype))
    }

    fn context_attention_fwd(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        skip_decode: bool,
        out: &mut [f32],
    ) -> Result<()> {
        if let Flavour::TensorCore(t) = self.flavour {
            return Err(no_tc_family(MatmulKernel::ContextAttentionFwd, t));
        }
        let bits = ops::prefix_prefill::context_attention_fwd(
            self.gpu,
            query,
            cache,
            meta,
            cfg,
            skip_decode,
            out,
        )
        .map_err(shared)?;
        out.copy_from_slice(&widen(&bits, cfg.dtype));
        Ok(())
    }

    fn paged_attention_2d(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        out: &mut [f32],
    ) -> Result<()> {
        if let Flavour::TensorCore(t) = self.flavour {
            let k = MatmulKernel::PagedAttention2d;
            return self.decode_tc(k, t, query, cache, meta, cfg, out);
        }
        let bits = ops::paged_decode::paged_attention_2d(self.gpu, query, cache, meta, cfg, out)
            .map_err(shared)?;
        out.copy_from_slice(&widen(&bits, cfg.dtype));
        Ok(())
    }

    fn paged_attention_ll4mi(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        partition_size: usize,
        out: &mut [f32],
    ) -> Result<()> {
        if let Flavour::TensorCore(t) = self.flavour {
            let k = MatmulKernel::PagedAttentionLl4mi;
            return self.decode_tc(k, t, query, cache, meta, cfg, out);
        }
        let bits = ops::paged_decode::paged_attention_ll4mi(
            self.gpu,
            query,
            cache,
            meta,
            cfg,
            partition_size,
            out,
        )
        .map_err(shared)?;
        out.copy_from_slice(&widen(&bits, cfg.dtype));
        Ok(())
    }

    fn cp_mha_gather_cache(
        &self,
        cache: &KvCache,
        block_rows: &[&[i32]],
        chunk: &GatherChunk,
        format: CacheFormat,
        scales: (f32, f32),
        dst_dtype: DType,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (k, v) = ops::gather_cache::cp_mha_gather_cache(
            self.gpu, cache, block_rows, chunk, format, scales, dst_dtype,
        )
        .map_err(shared)?;
        Ok((widen(&k, dst_dtype), widen(&v, dst_dtype)))
    }

    fn flash_attn_varlen(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        cu_seqlens_q: &[i32],
        cu_seqlens_k: &[i32],
        p: &VarlenParams,
    ) -> Result<OutLse> {
        let (out, lse) = match self.flavour {
            Flavour::Fma => ops::flash_varlen::flash_attn_varlen(
                self.gpu,
                q,
                k,
                v,
                cu_seqlens_q,
                cu_seqlens_k,
                p,
            ),
            Flavour::TensorCore(t) => ops::flash_varlen_tc::flash_attn_varlen_tc(
                self.gpu,
                q,
                k,
                v,
                cu_seqlens_q,
                cu_seqlens_k,
                &varlen_tc(p, t)?,
            ),
        }
        .map_err(shared)?;
        let total_q = cu_seqlens_q.last().copied().unwrap_or(0).max(0) as usize;
        OutLse::new(
            total_q,
            p.num_heads,
            p.head_size_v,
            widen(&out, p.dtype),
            widen(&lse, DType::F32),
        )
    }

    fn merge_attn_states(
        &self,
        prefix: &OutLse,
        suffix: &OutLse,
        out_dtype: DType,
        kernel: MergeKernel,
    ) -> Result<OutLse> {
        let m =
            ops::merge_attn_states::merge_attn_states(self.gpu, prefix, suffix, out_dtype, kernel)
                .map_err(shared)?;
        OutLse::new(
            prefix.num_tokens,
            prefix.num_heads,
            prefix.head_size,
            widen(&m.out, out_dtype),
            widen(&m.lse, DType::F32),
        )
    }

    fn flex_attention(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        if let Flavour::TensorCore(t) = self.flavour {
            return Err(no_tc_family(MatmulKernel::FlexAttention, t));
        }
        let bits = ops::flex_attention::flex_attention(self.gpu, query, cache, meta, cfg)
            .map_err(shared)?;
        Ok(widen(&bits, cfg.dtype))
    }

    /// The step's activations go up as f32 (exact: every f32 is), so the
    /// device stores `round(x)` / `fp8(x / scale)` of the same values the
    /// sim stores, whatever their dtype.
    fn concat_and_cache_mla(
        &self,
        cache: &mut LatentCache,
        kv_c: &[f32],
        k_pe: &[f32],
        slot_mapping: &[i64],
        scale: f32,
    ) -> Result<()> {
        let bits = ops::mla_cache::concat_and_cache_mla(
            self.gpu,
            cache,
            kv_c,
            k_pe,
            slot_mapping,
            scale,
            DType::F32,
        )
        .map_err(shared)?;
        cache.data = widen(&bits, cache.layout.dtype);
        Ok(())
    }

    fn up_project(
        &self,
        kv_c: &[f32],
        w: &MlaWeights,
        dtype: DType,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        if let Flavour::TensorCore(t) = self.flavour {
            return Err(no_tc_family(MatmulKernel::MlaProjection, t));
        }
        let (k, v) = ops::mla_proj::up_project(self.gpu, kv_c, w, dtype).map_err(shared)?;
        Ok((widen(&k, dtype), widen(&v, dtype)))
    }

    fn absorb_query(&self, q: &[f32], w: &MlaWeights, dtype: DType) -> Result<Vec<f32>> {
        if let Flavour::TensorCore(t) = self.flavour {
            return Err(no_tc_family(MatmulKernel::MlaProjection, t));
        }
        let bits = ops::mla_proj::absorb_query(self.gpu, q, w, dtype).map_err(shared)?;
        Ok(widen(&bits, dtype))
    }

    fn project_output(&self, o_latent: &[f32], w: &MlaWeights, dtype: DType) -> Result<Vec<f32>> {
        if let Flavour::TensorCore(t) = self.flavour {
            return Err(no_tc_family(MatmulKernel::MlaProjection, t));
        }
        let bits = ops::mla_proj::project_output(self.gpu, o_latent, w, dtype).map_err(shared)?;
        Ok(widen(&bits, dtype))
    }

    fn decode_attention_fwd(
        &self,
        q: &[f32],
        rows: &[KvRow],
        cache: &LatentCache,
        splits: KvSplits,
        p: &MlaDecodeParams,
    ) -> Result<MlaDecodeOutput> {
        if let Flavour::TensorCore(t) = self.flavour {
            return Err(no_tc_family(MatmulKernel::MlaDecode, t));
        }
        let o = ops::mla_decode::decode_attention_fwd(self.gpu, q, rows, cache, splits, p)
            .map_err(shared)?;
        Ok(MlaDecodeOutput {
            out: widen(&o.out, p.out_dtype),
            lse: widen(&o.lse, p.lse_dtype),
        })
    }

    fn gather_and_maybe_dequant_cache(
        &self,
        cache: &LatentCache,
        block_tables: &[&[i32]],
        chunk: &ContextChunk,
        k_scale: f32,
        to: DType,
    ) -> Result<Vec<f32>> {
        let bits = ops::mla_prefill::gather_and_maybe_dequant_cache(
            self.gpu,
            cache,
            block_tables,
            chunk,
            k_scale,
            to,
        )
        .map_err(shared)?;
        Ok(widen(
            &bits,
            ops::mla_prefill::gathered_dtype(cache.layout.dtype, to),
        ))
    }
}
