//! ROCM_ATTN (`vllm/v1/attention/backends/rocm_attn.py`, vllm-backends.md §5):
//! the x-packed paged cache, written by `reshape_and_cache`, and
//! `chunked_prefill_paged_decode` as the forward: requests with
//! query_len > 1 go to the Triton prefix-prefill kernel, decode requests to
//! the HIP "ll4mi" paged attention where its envelope allows (§5.5) and to
//! the Triton `kernel_paged_attention_2d` otherwise.
//!
//! Profiles: the seed era (PR #26980, the default) and vLLM 0.33 differ in
//! the supported kernel block sizes ([16, 32, 544] vs MultipleOf(16)), the
//! writer choice, and the window handed to the kernels: the seed source
//! passes `sliding_window[0] = W - 1`, so a window of W attends W - 1 keys
//! (and W = 1 none at all: the kernels read 0 as "no window"); 0.33 passes W
//! (§19 #8). Both ignore `logits_soft_cap` (§19 #5) and the selector rejects
//! sinks. Encoder layers (non-causal) run the prefix kernel with CAUSAL off
//! (0.33's `causal` argument); vLLM's separate encoder kernel is not emulated.

use crate::backends::exec::KernelExecutor;
use crate::backends::{AttentionBackend, KernelCall};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::paged_decode::{max_num_partitions, PARTITION_SIZE_ROCM};
use crate::kernels::prefix_prefill::PrefixVariant;
use crate::kernels::reshape_and_cache::CacheWriter;
use attnlab_shared::block_table::{select_kernel_block_size, KernelBlockSize};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::{Fault, FaultSet};
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;

/// `RocmAttentionBackend.get_supported_head_sizes()`.
pub const SUPPORTED_HEAD_SIZES: [usize; 9] = [32, 64, 80, 96, 128, 160, 192, 224, 256];
/// Seed-era `get_supported_kernel_block_sizes()`.
pub const SEED_KERNEL_BLOCK_SIZES: [KernelBlockSize; 3] = [
    KernelBlockSize::Exact(16),
    KernelBlockSize::Exact(32),
    KernelBlockSize::Exact(544),
];
/// `use_rocm_custom_paged_attention`'s context cap (the reduce's npar_loops <= 8).
pub const CUSTOM_PA_MAX_SEQ_LEN: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RocmAttnProfile {
    /// The PR #26980-era source (seeds/source-rocm_attn.txt).
    SeedEra,
    /// vLLM 0.33.0.
    V0_33,
}

/// The decode kernel a batch's query_len == 1 rows run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeKernel {
    /// HIP ll4mi partitions + reduce (CDNA launcher).
    Ll4mi,
    /// Triton `kernel_paged_attention_2d`.
    Triton2d,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocmAttn {
    pub profile: RocmAttnProfile,
}

impl Default for RocmAttn {
    fn default() -> Self {
        RocmAttn {
            profile: RocmAttnProfile::SeedEra,
        }
    }
}

impl RocmAttn {
    /// The window value `chunked_prefill_paged_decode` receives (`None` = 0).
    pub fn kernel_window(&self, window: Option<usize>) -> Option<usize> {
        self.kernel_window_with(window, FaultSet::NONE)
    }

    /// [`RocmAttn::kernel_window`] with `faults`
    /// ([`Fault::RocmAttnWindowOffByOne`]: every profile passes `W - 1`).
    pub fn kernel_window_with(&self, window: Option<usize>, faults: FaultSet) -> Option<usize> {
        let profile = if faults.has(Fault::RocmAttnWindowOffByOne) {
            RocmAttnProfile::SeedEra
        } else {
            self.profile
        };
        match profile {
            RocmAttnProfile::SeedEra => window.map(|w| w - 1).filter(|&w| w > 0),
            RocmAttnProfile::V0_33 => window,
        }
    }

    /// Inverse of [`RocmAttn::kernel_window`]: the model window whose kernel
    /// window is `visible` keys (seed era: `visible + 1`).
    pub fn model_window(&self, visible: Option<usize>) -> Option<usize> {
        match self.profile {
            RocmAttnProfile::SeedEra => visible.map(|w| w + 1),
            RocmAttnProfile::V0_33 => visible,
        }
    }

    /// The config the kernels see: the profile's window, no soft-cap.
    fn kernel_config(&self, cfg: &AttnConfig) -> AttnConfig {
        AttnConfig {
            sliding_window: self.kernel_window_with(cfg.sliding_window, cfg.faults),
            softcap: None,
            ..cfg.clone()
        }
    }

    /// `use_rocm_custom_paged_attention` on CDNA, plus the power-of-two block
    /// check of `chunked_prefill_paged_decode` (our x-packed cache is always native).
    pub fn decode_kernel(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> DecodeKernel {
        let qpk = cfg.queries_per_kv();
        // Fault::Ll4miHeadSize32: the launcher also admits head size 32.
        let head_ok = matches!(cfg.head_size, 64 | 128)
            || (cfg.head_size == 32 && cfg.faults.has(Fault::Ll4miHeadSize32));
        let custom = self
            .kernel_window_with(cfg.sliding_window, cfg.faults)
            .is_none()
            && matches!(cfg.dtype, DType::F16 | DType::Bf16)
            && head_ok
            && matches!(meta.block_size, 16 | 32)
            && (1..=16).contains(&qpk)
            && meta.max_seq_len <= CUSTOM_PA_MAX_SEQ_LEN
            && cfg.sinks.is_none();
        if custom {
            DecodeKernel::Ll4mi
        } else {
            DecodeKernel::Triton2d
        }
    }

    /// `forward` with the decode rows' kernel chosen by the caller (replay
    /// of a capture that records which one ran, e.g. Triton's on NVIDIA,
    /// where `use_rocm_custom_paged_attention()` is false).
    pub fn forward_with_decode(
        &self,
        ex: &dyn KernelExecutor,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        decode: DecodeKernel,
    ) -> Result<Vec<f32>> {
        self.check(cfg, meta.block_size)?;
        let kcfg = self.kernel_config(cfg);
        let mut out = vec![0f32; meta.num_actual_tokens * cfg.num_heads * cfg.head_size];
        if meta.max_query_len > 1 {
            ex.context_attention_fwd(query, cache, meta, &kcfg, true, &mut out)?;
        }
        match decode {
            DecodeKernel::Ll4mi => {
                crate::rules::ll4mi_head_size(cfg.head_size)?;
                ex.paged_attention_ll4mi(query, cache, meta, &kcfg, PARTITION_SIZE_ROCM, &mut out)?
            }
            DecodeKernel::Triton2d => ex.paged_attention_2d(query, cache, meta, &kcfg, &mut out)?,
        }
        Ok(out)
    }
}

impl AttentionBackend for RocmAttn {
    fn name(&self) -> &'static str {
        "ROCM_ATTN"
    }

    /// Fixtures record the kernel's window; the seed-era forward subtracts
    /// one from the model's, so the model window is one more. Soft-cap never
    /// reaches ROCM_ATTN's kernels, so a soft-capped capture cannot be expressed.
    fn fixture_config(&self, cfg: &AttnConfig) -> std::result::Result<AttnConfig, String> {
        if cfg.softcap.is_some() {
            return Err("ROCM_ATTN drops logits_soft_cap: its forward calls chunked_prefill_paged_decode without it".into());
        }
        Ok(AttnConfig {
            sliding_window: self.model_window(cfg.sliding_window),
            ..cfg.clone()
        })
    }

    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        cfg.validate()?;
        if !SUPPORTED_HEAD_SIZES.contains(&cfg.head_size) {
            return Err(Error::invalid(
                "head_size",
                cfg.head_size,
                format!(
                    "Head size {} is not supported by RocmAttention. Supported head sizes are: {:?}. \
                     Set --attention-backend=FLEX_ATTENTION to use FlexAttention backend which supports all head sizes.",
                    cfg.head_size, SUPPORTED_HEAD_SIZES
                ),
            ));
        }
        if !matches!(cfg.dtype, DType::F16 | DType::Bf16 | DType::F32) {
            return Err(Error::invalid(
                "dtype",
                cfg.dtype,
                "dtype not supported: ROCM_ATTN supports float16, bfloat16, float32",
            ));
        }
        if block_size == 0 || block_size % 16 != 0 {
            return Err(Error::invalid(
                "block_size",
                block_size,
                "Block size must be a multiple of 16.",
            ));
        }
        if cfg.sinks.is_some() {
            return Err(Error::unsupported(
                "ROCM_ATTN with sinks",
                "attention sinks not supported",
            ));
        }
        Ok(())
    }

    fn kernel_block_size(&self, block_size: usize) -> Result<usize> {
        if block_size == 0 || block_size % 16 != 0 {
            return Err(Error::invalid(
                "block_size",
                block_size,
                "Block size must be a multiple of 16.",
            ));
        }
        match self.profile {
            RocmAttnProfile::V0_33 => Ok(block_size),
            // The size itself if listed, else the largest listed divisor (16 always divides).
            RocmAttnProfile::SeedEra => {
                select_kernel_block_size(block_size, self.name(), &SEED_KERNEL_BLOCK_SIZES)
            }
        }
    }

    fn layout_kind(&self) -> LayoutKind {
        LayoutKind::RocmPaged
    }

    /// `reshape_and_cache` where the HIP kernel takes the block size, else
    /// the Triton flash writer.
    fn cache_writer(&self, block_size: usize) -> CacheWriter {
        let native = match self.profile {
            RocmAttnProfile::SeedEra => block_size.is_power_of_two(),
            RocmAttnProfile::V0_33 => matches!(block_size, 16 | 32),
        };
        if native {
            CacheWriter::ReshapeAndCache
        } else {
            CacheWriter::TritonReshapeAndCacheFlash
        }
    }

    fn forward_with(
        &self,
        ex: &dyn KernelExecutor,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        self.forward_with_decode(ex, query, cache, meta, cfg, self.decode_kernel(meta, cfg))
    }

    fn plan(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Vec<KernelCall> {
        let (t, hq, hkv, d) = (
            meta.num_actual_tokens,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_size,
        );
        let n = meta.num_reqs();
        let Ok(layout) = self.cache_layout(cfg, meta.num_blocks, meta.block_size) else {
            return vec![];
        };
        let (k_cache, v_cache) = (layout.k_shape(), layout.v_shape());
        let mut calls = vec![self.cache_writer(meta.block_size).kernel_call(&layout, t)];
        let qo = [
            ("query", vec![t, hq, d]),
            ("output", vec![t, hq, d]),
            ("key_cache", k_cache),
            ("value_cache", v_cache),
        ];
        if meta.max_query_len > 1 {
            let v = PrefixVariant::for_config(cfg);
            let mut shapes = qo.to_vec();
            shapes.push(("grid", vec![n, hq, meta.max_query_len.div_ceil(v.block_m)]));
            calls.push(KernelCall::new(v.kernel, &shapes));
        }
        match self.decode_kernel(meta, cfg) {
            DecodeKernel::Ll4mi => {
                let p = max_num_partitions(meta.max_seq_len, PARTITION_SIZE_ROCM);
                let name = if cfg.queries_per_kv() <= 4 {
                    "paged_attention_ll4mi_QKV_mfma4_kernel"
                } else {
                    "paged_attention_ll4mi_QKV_mfma16_kernel"
                };
                let mut shapes = qo.to_vec();
                shapes.extend([
                    ("grid", vec![n, p, hkv]),
                    ("exp_sums", vec![n, hq, p]),
                    ("max_logits", vec![n, hq, p]),
                    ("tmp_out", vec![n, hq, p, d]),
                ]);
                calls.push(KernelCall::new(name, &shapes));
                calls.push(KernelCall::new(
                    "paged_attention_ll4mi_reduce_kernel",
                    &[
                        ("grid", vec![hq, n]),
                        ("tmp_out", vec![n, hq, p, d]),
                        ("output", vec![t, hq, d]),
                    ],
                ));
            }
            DecodeKernel::Triton2d => {
                let mut shapes = qo.to_vec();
                shapes.push(("grid", vec![n, hkv]));
                calls.push(KernelCall::new("kernel_paged_attention_2d", &shapes));
            }
        }
        calls
    }
}
