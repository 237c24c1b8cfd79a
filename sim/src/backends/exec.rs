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
//! `flash_attn_varlen` as `flash_varlen_tc` and the paged decodes as
//! `paged_decode_tc`, and refuses the launches with no tensor-core kernel.

use crate::backends::flavour::{
    backend_decode_split, check_decode_tc, no_tc_family, varlen_tc, Flavour, MatmulKernel,
};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::flash_varlen::{flash_attn_varlen, VarlenParams};
use crate::kernels::flash_varlen_tc::flash_attn_varlen_tc;
use crate::kernels::flex_attention::flex_attention;
use crate::kernels::gather_cache::{cp_mha_gather_cache, CacheFormat, GatherChunk};
use crate::kernels::merge_attn_states::{merge_attn_states, MergeKernel};
use crate::kernels::mla_cache::{concat_and_cache_mla, LatentCache};
use crate::kernels::mla_decode::{
    aiter_splits, decode_attention_fwd, AiterPaging, KvRow, KvSplits, MlaDecodeOutput,
    MlaDecodeParams,
};
use crate::kernels::mla_prefill::{gather_and_maybe_dequant_cache, ContextChunk};
use crate::kernels::mla_proj::{absorb_query, project_output, up_project, MlaWeights};
use crate::kernels::paged_decode::{paged_attention_2d, paged_attention_ll4mi};
use crate::kernels::paged_decode_tc::paged_decode_tc;
use crate::kernels::prefix_prefill::context_attention_fwd;
use crate::kernels::reshape_and_cache::{reshape_and_cache, CacheWriter};
use crate::kernels::softmax::OutLse;
use crate::kernels::unified_attention::{unified_attention, UnifiedLaunch};
use crate::numerics::mma::MatrixTarget;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Result;
use attnlab_shared::metadata::AttentionMetadata;

/// Runs the kernels the MHA and MLA backends compose (see [`crate::kernels`] for each).
#[allow(clippy::too_many_arguments)]
pub trait KernelExecutor {
    fn reshape_and_cache(
        &self,
        writer: CacheWriter,
        cache: &mut KvCache,
        key: &[f32],
        value: &[f32],
        slot_mapping: &[i64],
        cfg: &AttnConfig,
    ) -> Result<()> {
        reshape_and_cache(writer, cache, key, value, slot_mapping, cfg)
    }

    fn unified_attention(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        launch: &UnifiedLaunch,
    ) -> Result<Vec<f32>> {
        unified_attention(query, cache, meta, cfg, launch)
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
        context_attention_fwd(query, cache, meta, cfg, skip_decode, out)
    }

    fn paged_attention_2d(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        out: &mut [f32],
    ) -> Result<()> {
        paged_attention_2d(query, cache, meta, cfg, out)
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
        paged_attention_ll4mi(query, cache, meta, cfg, partition_size, out)
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
        cp_mha_gather_cache(cache, block_rows, chunk, format, scales, dst_dtype)
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
        flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, p)
    }

    fn merge_attn_states(
        &self,
        prefix: &OutLse,
        suffix: &OutLse,
        out_dtype: DType,
        kernel: MergeKernel,
    ) -> Result<OutLse> {
        merge_attn_states(prefix, suffix, out_dtype, kernel)
    }

    fn flex_attention(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        flex_attention(query, cache, meta, cfg)
    }

    // ---- MLA (backends::mla): latent cache, projections, decode, prefill gather.

    fn concat_and_cache_mla(
        &self,
        cache: &mut LatentCache,
        kv_c: &[f32],
        k_pe: &[f32],
        slot_mapping: &[i64],
        scale: f32,
    ) -> Result<()> {
        concat_and_cache_mla(cache, kv_c, k_pe, slot_mapping, scale)
    }

    fn up_project(
        &self,
        kv_c: &[f32],
        w: &MlaWeights,
        dtype: DType,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        up_project(kv_c, w, dtype)
    }

    fn absorb_query(&self, q: &[f32], w: &MlaWeights, dtype: DType) -> Result<Vec<f32>> {
        absorb_query(q, w, dtype)
    }

    fn project_output(&self, o_latent: &[f32], w: &MlaWeights, dtype: DType) -> Result<Vec<f32>> {
        project_output(o_latent, w, dtype)
    }

    fn decode_attention_fwd(
        &self,
        q: &[f32],
        rows: &[KvRow],
        cache: &LatentCache,
        splits: KvSplits,
        p: &MlaDecodeParams,
    ) -> Result<MlaDecodeOutput> {
        decode_attention_fwd(q, rows, cache, splits, p)
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
        self.decode_attention_fwd(q, &paging.rows_with(causal, p.faults), cache, splits, p)
    }

    fn gather_and_maybe_dequant_cache(
        &self,
        cache: &LatentCache,
        block_tables: &[&[i32]],
        chunk: &ContextChunk,
        k_scale: f32,
        to: DType,
    ) -> Result<Vec<f32>> {
        gather_and_maybe_dequant_cache(cache, block_tables, chunk, k_scale, to)
    }
}

/// The emulator: every kernel as `crate::kernels` computes it, in its
/// [`Flavour`] (the fma kernels unless told otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    pub flavour: Flavour,
}

impl Cpu {
    /// The fma (CUDA-core) kernels: what `write_kv` / `forward` run.
    pub const FMA: Cpu = Cpu {
        flavour: Flavour::Fma,
    };

    pub fn new(flavour: Flavour) -> Self {
        Cpu { flavour }
    }

    /// A paged decode launch (`kernel`) in the tensor-core flavour:
    /// `paged_decode_tc` at the backends' split size for `target`.
    #[allow(clippy::too_many_arguments)]
    fn decode_tc(
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
        paged_decode_tc(query, cache, meta, cfg, target, split, out)
    }
}

/// The fma kernels are the trait's defaults; the tensor-core flavour
/// replaces the launches with matrix products.
impl KernelExecutor for Cpu {
    fn unified_attention(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        launch: &UnifiedLaunch,
    ) -> Result<Vec<f32>> {
        match self.flavour {
            Flavour::Fma => unified_attention(query, cache, meta, cfg, launch),
            // LEAD: at the merge with branch tcu, this arm becomes
            // `unified_attention_tc(query, cache, meta, cfg, launch, target)`
            // (and MatmulKernel::tc_family / flavour::admits learn it).
            Flavour::TensorCore(target) => {
                Err(no_tc_family(MatmulKernel::UnifiedAttention, target))
            }
        }
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
        match self.flavour {
            Flavour::Fma => context_attention_fwd(query, cache, meta, cfg, skip_decode, out),
            Flavour::TensorCore(t) => Err(no_tc_family(MatmulKernel::ContextAttentionFwd, t)),
        }
    }

    fn paged_attention_2d(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        out: &mut [f32],
    ) -> Result<()> {
        match self.flavour {
            Flavour::Fma => paged_attention_2d(query, cache, meta, cfg, out),
            Flavour::TensorCore(t) => Self::decode_tc(
                MatmulKernel::PagedAttention2d,
                t,
                query,
                cache,
                meta,
                cfg,
                out,
            ),
        }
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
        match self.flavour {
            Flavour::Fma => paged_attention_ll4mi(query, cache, meta, cfg, partition_size, out),
            Flavour::TensorCore(t) => Self::decode_tc(
                MatmulKernel::PagedAttentionLl4mi,
                t,
                query,
                cache,
                meta,
                cfg,
                out,
            ),
        }
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
        match self.flavour {
            Flavour::Fma => flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, p),
            Flavour::TensorCore(t) => {
                flash_attn_varlen_tc(q, k, v, cu_seqlens_q, cu_seqlens_k, &varlen_tc(p, t)?)
            }
        }
    }

    fn flex_attention(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        match self.flavour {
            Flavour::Fma => flex_attention(query, cache, meta, cfg),
            Flavour::TensorCore(t) => Err(no_tc_family(MatmulKernel::FlexAttention, t)),
        }
    }

    fn up_project(
        &self,
        kv_c: &[f32],
        w: &MlaWeights,
        dtype: DType,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        match self.flavour {
            Flavour::Fma => up_project(kv_c, w, dtype),
            Flavour::TensorCore(t) => Err(no_tc_family(MatmulKernel::MlaProjection, t)),
        }
    }

    fn absorb_query(&self, q: &[f32], w: &MlaWeights, dtype: DType) -> Result<Vec<f32>> {
        match self.flavour {
            Flavour::Fma => absorb_query(q, w, dtype),
            Flavour::TensorCore(t) => Err(no_tc_family(MatmulKernel::MlaProjection, t)),
        }
    }

    fn project_output(&self, o_latent: &[f32], w: &MlaWeights, dtype: DType) -> Result<Vec<f32>> {
        match self.flavour {
            Flavour::Fma => project_output(o_latent, w, dtype),
            Flavour::TensorCore(t) => Err(no_tc_family(MatmulKernel::MlaProjection, t)),
        }
    }

    fn decode_attention_fwd(
        &self,
        q: &[f32],
        rows: &[KvRow],
        cache: &LatentCache,
        splits: KvSplits,
        p: &MlaDecodeParams,
    ) -> Result<MlaDecodeOutput> {
        match self.flavour {
            Flavour::Fma => decode_attention_fwd(q, rows, cache, splits, p),
            Flavour::TensorCore(t) => Err(no_tc_family(MatmulKernel::MlaDecode, t)),
        }
    }
}
