//! The multi-latent-attention backends (vllm-backends.md §13-§15): TRITON_MLA,
//! ROCM_AITER_MLA and ROCM_AITER_TRITON_MLA. They share vLLM's MLA common
//! layer ([`common`]: latent cache write, decode/prefill split, absorbed
//! decode around the backend's `forward_mqa`, non-absorbed chunked prefill)
//! and differ only in the decode kernel and its metadata, which is what
//! [`MlaBackend`] abstracts.
//!
//! ```text
//! concat_and_cache_mla(kv_c, k_pe) -> latent cache [nb, bs, 576]
//! decode rows : q_nope @ W_UK_T -> [ql_nope | q_pe] -> forward_mqa (backend) -> @ W_UV
//! prefill rows: kv_b_proj(kv_c) -> k = [k_nope | k_pe], v -> varlen flash (causal)
//!               + per context chunk: gather latent, kv_b_proj, flash (non-causal), merge by LSE
//! ```
//! Tensor parallelism shards heads: rank r of tp computes heads
//! `r * N/tp .. (r+1) * N/tp` against the full (replicated) latent cache.

pub mod common;
pub mod decode_steps;
pub mod rocm_aiter_mla;
pub mod rocm_aiter_triton_mla;
pub mod triton_mla;

pub use common::{
    forward, forward_with, plan, run_mla_step, run_mla_step_with, write_kv_with, MlaStep,
    RankOutput,
};

use super::exec::{Cpu, KernelExecutor};
use super::KernelCall;
use crate::kernels::mla_cache::LatentCache;
use crate::kernels::mla_decode::MlaDecodeOutput;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::FaultSet;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::model::{preset, MlaDims};
use attnlab_shared::registry::{BackendName, Capabilities};
use attnlab_shared::selection::Profile;

/// Compute units of an MI300X (gfx942): sizes TRITON_MLA's split count.
pub const MI300X_NUM_CUS: usize = 304;

/// Head sizes (`kv_lora_rank + rope`) `MLACommonBackend` accepts.
pub const MLA_HEAD_SIZES: [usize; 3] = [320, 512, 576];

/// One MLA attention layer as vLLM configures it.
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    /// Query heads of the whole model (all TP ranks).
    pub num_heads: usize,
    pub dims: MlaDims,
    /// Softmax scale (natural): `1/sqrt(P + R)` times the YaRN mscale^2.
    pub scale: f32,
    /// Activation dtype (query, weights, outputs).
    pub dtype: DType,
    /// Latent cache storage dtype.
    pub kv_dtype: DType,
    /// `layer._k_scale`: fp8 latent scale (stored x / scale, loaded x * scale).
    pub k_scale: f32,
    pub tp: usize,
    pub num_cus: usize,
    /// Forces the decode split count (fixture replay, `VLLM_BATCH_INVARIANT`: 1).
    pub num_kv_splits: Option<usize>,
    /// Requests with query_len <= this are decodes (1 + speculative tokens).
    pub decode_threshold: usize,
    /// Size the chunked-context workspace (§13.5).
    pub max_model_len: usize,
    pub max_num_seqs: usize,
    /// Seed-era (PR #26980) or 0.33 rules (AITER head-count rule, merge kernel).
    pub profile: Profile,
    /// Features every MLA impl rejects; present so `check` can say so.
    pub softcap: Option<f32>,
    pub sliding_window: Option<usize>,
    pub alibi: bool,
    /// Real bugs re-injected (`attnlab zoo`); empty unless a zoo run sets it.
    pub faults: FaultSet,
}

impl MlaConfig {
    /// DeepSeek-V3/R1: 128 heads, 512 + 64 latent, bf16, YaRN factor 40
    /// (mscale = 0.1 ln 40 + 1, applied squared to 1/sqrt(192)).
    pub fn deepseek_r1(tp: usize) -> Self {
        let p = preset("deepseek-r1").expect("deepseek-r1 is a built-in preset");
        let dims = p.mla.expect("deepseek-r1 is MLA");
        let mscale = 0.1 * 40f64.ln() + 1.0;
        let scale =
            ((dims.qk_nope_head_dim + dims.qk_rope_head_dim) as f64).powf(-0.5) * mscale * mscale;
        MlaConfig {
            num_heads: p.num_heads,
            dims,
            scale: scale as f32,
            dtype: p.dtype,
            kv_dtype: p.dtype,
            k_scale: 1.0,
            tp,
            num_cus: MI300X_NUM_CUS,
            num_kv_splits: None,
            decode_threshold: 1,
            max_model_len: 163_840,
            max_num_seqs: 256,
            profile: Profile::default(),
            softcap: None,
            sliding_window: None,
            alibi: false,
            faults: FaultSet::NONE,
        }
    }

    /// `--scale-down`: the same per-head shapes (the 576-wide latent stays,
    /// vLLM rejects other widths) with 16 heads per rank (the fewest every
    /// MLA backend accepts) and a 4K max_model_len, so a laptop runs a step
    /// in seconds. Never adds heads: from tp 8 up, 16 per rank is already
    /// the whole model.
    pub fn scaled_down(mut self) -> Self {
        self.num_heads = (16 * self.tp.max(1)).min(self.num_heads);
        self.max_model_len = 4096;
        self
    }

    pub fn heads_per_rank(&self) -> usize {
        self.num_heads / self.tp.max(1)
    }

    /// The configuration checks every MLA backend shares.
    pub fn validate(&self) -> Result<()> {
        let width = self.dims.latent_width();
        if !MLA_HEAD_SIZES.contains(&width) {
            return Err(Error::unsupported(
                format!("MLA latent width {width}"),
                format!(
                    "Head dimension {width} is not supported by MLA. (allowed: {MLA_HEAD_SIZES:?})"
                ),
            ));
        }
        if self.dims.qk_nope_head_dim == 0 || self.dims.v_head_dim == 0 {
            return Err(Error::invalid(
                "qk_nope_head_dim / v_head_dim",
                format!("{} / {}", self.dims.qk_nope_head_dim, self.dims.v_head_dim),
                "must be >= 1",
            ));
        }
        if self.tp == 0 || self.num_heads == 0 || !self.num_heads.is_multiple_of(self.tp) {
            return Err(Error::invalid(
                "tensor_parallel_size",
                self.tp,
                format!("must be >= 1 and divide num_heads = {}", self.num_heads),
            ));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::invalid(
                "scale",
                self.scale,
                "must be finite and > 0",
            ));
        }
        if self.kv_dtype.is_fp8() && !(self.k_scale.is_finite() && self.k_scale > 0.0) {
            return Err(Error::invalid(
                "k_scale",
                self.k_scale,
                "an fp8 latent cache needs a finite scale > 0",
            ));
        }
        if self.decode_threshold == 0 {
            return Err(Error::invalid("decode_threshold", 0, "must be >= 1"));
        }
        if self.num_kv_splits == Some(0) {
            return Err(Error::invalid("num_kv_splits", 0, "must be >= 1"));
        }
        Ok(())
    }

    /// The shared parts of `check`: the registry's capabilities, then the
    /// impl's feature rejection with the backend's message.
    pub fn check_common(&self, name: &str, caps: &Capabilities, impl_msg: &str) -> Result<()> {
        self.validate()?;
        if !caps.dtypes.contains(&self.dtype) {
            return Err(Error::unsupported(
                format!("{name} with dtype {}", self.dtype),
                format!("dtype not supported (allowed: {:?})", caps.dtypes),
            ));
        }
        if self.kv_dtype != self.dtype && !self.kv_dtype.is_fp8() {
            return Err(Error::invalid(
                "kv cache dtype",
                self.kv_dtype,
                format!("must be the model dtype {} or fp8", self.dtype),
            ));
        }
        if self.softcap.is_some() || self.sliding_window.is_some() || self.alibi {
            return Err(Error::unsupported(
                format!("{name} with alibi / sliding window / soft-cap"),
                impl_msg,
            ));
        }
        Ok(())
    }
}

/// The decode rows of a batch, as `forward_mqa` receives them: the first
/// `num_decodes` requests of `meta` (vLLM orders decodes first).
#[derive(Debug, Clone, Copy)]
pub struct MlaDecodeBatch<'a> {
    pub meta: &'a AttentionMetadata,
    pub num_decodes: usize,
}

impl MlaDecodeBatch<'_> {
    pub fn num_decode_tokens(&self) -> usize {
        self.meta.query_start_loc()[self.num_decodes] as usize
    }

    pub fn max_seq_len(&self) -> usize {
        (0..self.num_decodes)
            .map(|i| self.meta.seq_len(i))
            .max()
            .unwrap_or(0)
    }
}

/// An emulated MLA backend: the decode half of vLLM's `MLAAttentionImpl`.
/// Everything else (cache write, projections, prefill) is [`common`].
pub trait MlaBackend: Send + Sync {
    /// vLLM's enum member, e.g. `TRITON_MLA`.
    fn name(&self) -> BackendName;

    /// Rejects what vLLM rejects (block size, heads per rank, dtypes,
    /// features) with vLLM's message; `block_size` is the manager block size.
    fn check(&self, cfg: &MlaConfig, block_size: usize) -> Result<()>;

    /// Absorbed decode: `q [num_decode_tokens, heads, Lkv + R]` (exact in
    /// `cfg.dtype`) -> latent output `[num_decode_tokens, heads, Lkv]` + lse.
    fn forward_mqa(
        &self,
        q: &[f32],
        heads: usize,
        cache: &LatentCache,
        batch: &MlaDecodeBatch,
        cfg: &MlaConfig,
    ) -> Result<MlaDecodeOutput> {
        self.forward_mqa_with(&Cpu::FMA, q, heads, cache, batch, cfg)
    }

    /// The routing: the decode kernel (and its launch metadata) for the
    /// decode tokens of `batch` on `heads` heads.
    fn route_mqa(
        &self,
        batch: &MlaDecodeBatch,
        heads: usize,
        cfg: &MlaConfig,
    ) -> Result<decode_steps::MlaDecode>;

    /// [`MlaBackend::forward_mqa`] with the decode kernel launched through `ex`.
    fn forward_mqa_with(
        &self,
        ex: &dyn KernelExecutor,
        q: &[f32],
        heads: usize,
        cache: &LatentCache,
        batch: &MlaDecodeBatch,
        cfg: &MlaConfig,
    ) -> Result<MlaDecodeOutput> {
        let step = self.route_mqa(batch, heads, cfg)?;
        decode_steps::run(ex, &step, q, heads, cache, batch, cfg)
    }

    /// The kernel launches `forward_mqa` makes (what `attnlab trace` shows).
    fn plan_mqa(
        &self,
        batch: &MlaDecodeBatch,
        heads: usize,
        cfg: &MlaConfig,
    ) -> Result<Vec<KernelCall>> {
        let step = self.route_mqa(batch, heads, cfg)?;
        Ok(decode_steps::render(&step, batch, heads, cfg))
    }

    /// Whether decode rows must share one query length (vLLM's
    /// `query_len_support == UNIFORM`), which shapes the decode split.
    fn uniform_decode(&self) -> bool {
        true
    }
}

/// Every emulated MLA backend, in registry order.
pub fn mla_backends() -> Vec<Box<dyn MlaBackend>> {
    vec![
        Box::new(triton_mla::TritonMla),
        Box::new(rocm_aiter_mla::RocmAiterMla::default()),
        Box::new(rocm_aiter_triton_mla::RocmAiterTritonMla::default()),
    ]
}

/// Looks an MLA backend up by vLLM enum name, naming the emulated ones when it fails.
pub fn by_name(name: BackendName) -> Result<Box<dyn MlaBackend>> {
    let all = mla_backends();
    let emulated: Vec<BackendName> = all.iter().map(|b| b.name()).collect();
    all.into_iter()
        .find(|b| b.name() == name)
        .ok_or_else(|| super::not_emulated("MLA backend", name.name(), &emulated))
}

/// Parses an emulated MLA backend's vLLM enum name (exact): where a name
/// becomes a [`BackendName`] (the CLI edge); the error names the emulated ones.
pub fn parse(name: &str) -> Result<BackendName> {
    let emulated: Vec<BackendName> = mla_backends().iter().map(|b| b.name()).collect();
    BackendName::from_name(name)
        .filter(|n| emulated.contains(n))
        .ok_or_else(|| super::not_emulated("MLA backend", name, &emulated))
}
