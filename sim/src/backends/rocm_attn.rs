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

use crate::backends::capability::Capability::{self, *};
use crate::backends::capability::Words::{self, *};
use crate::backends::capability::{capabilities_of, check_capabilities};
use crate::backends::steps::{Paged, Step, SubBatch};
use crate::backends::AttentionBackend;
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::CacheWriter;
use attnlab_shared::block_table::select_kernel_block_size;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::Fault;
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::registry::{BackendName, ROCM_ATTN_SEED_ERA_KERNEL_BLOCK_SIZES};

/// What `check` tests, in vLLM's order and words (the sets: the registry's).
#[rustfmt::skip]
const CHECKS: &[(Capability, Words)] = &[
    (
        HeadSize,
        Invalid(
            "head_size",
            "Head size {value} is not supported by RocmAttention. Supported head sizes are: {allowed}. \
             Set --attention-backend=FLEX_ATTENTION to use FlexAttention backend which supports all head sizes.",
        ),
    ),
    (Dtype, Invalid("dtype", "dtype not supported: ROCM_ATTN supports {allowed}")),
    (BlockSize, Invalid("block_size", "Block size must be a multiple of 16.")),
    (Sinks, Unsupported("ROCM_ATTN with sinks", "attention sinks not supported")),
];

/// `use_rocm_custom_paged_attention`'s context cap (the reduce's npar_loops <= 8).
pub const CUSTOM_PA_MAX_SEQ_LEN: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RocmAttnProfile {
    /// The PR #26980-era source (seeds/source-rocm_attn.txt), the default.
    #[default]
    SeedEra,
    /// vLLM 0.33.0.
    V0_33,
}

/// The decode kernel a batch's query_len == 1 rows run: [`Paged::Ll4mi`]
/// (HIP ll4mi partitions + reduce, CDNA launcher) or [`Paged::Triton2d`].
pub type DecodeKernel = Paged;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RocmAttn {
    pub profile: RocmAttnProfile,
}

impl RocmAttn {
    /// The window value `chunked_prefill_paged_decode` receives (`None` = 0)
    /// for `cfg`'s model window ([`Fault::RocmAttnWindowOffByOne`]: every
    /// profile passes `W - 1`).
    pub fn kernel_window(&self, cfg: &AttnConfig) -> Option<usize> {
        let (window, off_by_one) = (cfg.sliding_window(), Fault::RocmAttnWindowOffByOne);
        match (self.profile, cfg.faults().has(off_by_one)) {
            (RocmAttnProfile::SeedEra, _) | (_, true) => window.map(|w| w - 1).filter(|&w| w > 0),
            (RocmAttnProfile::V0_33, false) => window,
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

    /// `use_rocm_custom_paged_attention` on CDNA, plus the power-of-two block
    /// check of `chunked_prefill_paged_decode` (our x-packed cache is always native).
    pub fn decode_kernel(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> DecodeKernel {
        let qpk = cfg.queries_per_kv();
        // Fault::Ll4miHeadSize32: the launcher also admits head size 32.
        let head_ok = matches!(cfg.head_size(), 64 | 128)
            || (cfg.head_size() == 32 && cfg.faults().has(Fault::Ll4miHeadSize32));
        let custom = self.kernel_window(cfg).is_none()
            && matches!(cfg.dtype(), DType::F16 | DType::Bf16)
            && head_ok
            && matches!(meta.block_size(), 16 | 32)
            && (1..=16).contains(&qpk)
            && meta.max_seq_len() <= CUSTOM_PA_MAX_SEQ_LEN
            && cfg.sinks().is_none();
        if custom {
            DecodeKernel::Ll4mi
        } else {
            DecodeKernel::Triton2d
        }
    }

    /// `chunked_prefill_paged_decode` over the whole batch: the prefix
    /// prefill of the query_len > 1 rows (if any), then `decode` on the rest
    /// (replay passes the kernel a capture records, e.g. Triton's on NVIDIA,
    /// to [`AttentionBackend::forward_route`]).
    pub fn route_with_decode(meta: &AttentionMetadata, decode: DecodeKernel) -> Vec<SubBatch> {
        let mut steps = vec![];
        if meta.max_query_len() > 1 {
            steps.push(Step::Paged(Paged::PrefixPrefill));
        }
        steps.push(Step::Paged(decode));
        vec![SubBatch::all(steps)]
    }
}

impl AttentionBackend for RocmAttn {
    fn name(&self) -> BackendName {
        BackendName::RocmAttn
    }

    /// Fixtures record the kernel's window; the seed-era forward subtracts
    /// one from the model's, so the model window is one more. Soft-cap never
    /// reaches ROCM_ATTN's kernels, so a soft-capped capture cannot be expressed.
    fn fixture_config(&self, cfg: &AttnConfig) -> std::result::Result<AttnConfig, String> {
        if cfg.softcap().is_some() {
            return Err("ROCM_ATTN drops logits_soft_cap: its forward calls chunked_prefill_paged_decode without it".into());
        }
        let mut builder = cfg.to_builder();
        builder.sliding_window = self.model_window(cfg.sliding_window());
        builder.build().map_err(|e| e.to_string())
    }

    /// The registry's head sizes, dtypes, kernel block sizes (a multiple
    /// of 16) and no sinks, in vLLM's words.
    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()> {
        check_capabilities(self.name(), cfg, block_size, CHECKS)
    }

    fn kernel_block_size(&self, block_size: usize) -> Result<usize> {
        if !capabilities_of(self.name())?.supports_block_size(block_size) {
            return Err(Error::invalid(
                "block_size",
                block_size,
                "Block size must be a multiple of 16.",
            ));
        }
        match self.profile {
            RocmAttnProfile::V0_33 => Ok(block_size),
            // The size itself if listed, else the largest listed divisor (16 always divides).
            RocmAttnProfile::SeedEra => select_kernel_block_size(
                block_size,
                self.name().name(),
                ROCM_ATTN_SEED_ERA_KERNEL_BLOCK_SIZES,
            ),
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

    /// The config the kernels see: the profile's window, no soft-cap.
    fn kernel_config(&self, cfg: &AttnConfig) -> Result<AttnConfig> {
        let mut builder = cfg.to_builder();
        (builder.sliding_window, builder.softcap) = (self.kernel_window(cfg), None);
        builder.build()
    }

    fn route(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<Vec<SubBatch>> {
        Ok(Self::route_with_decode(meta, self.decode_kernel(meta, cfg)))
    }
}
