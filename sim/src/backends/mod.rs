//! One module per vLLM attention backend, each a composition of the kernels
//! in [`crate::kernels`]: which layout it uses, how it writes new K/V, how it
//! routes the batch, which kernels it calls in which order. Every MHA backend
//! implements [`AttentionBackend`], so a test can run one batch through all.
//!
//! A backend module is its routing: `route` writes the batch out as the
//! [`steps`] language (attend, gather, merge, a paged kernel), and the trait
//! runs it ([`steps::run`], after the backend's `check`) or shows it
//! ([`steps::render`], after the cache writer's launch) the same way for all.

pub mod capability;
pub mod context_chunks;
pub mod exec;
pub mod flavour;
pub mod flex_attention;
pub mod mla;
pub mod rocm_aiter_fa;
pub mod rocm_aiter_unified_attn;
pub mod rocm_attn;
pub mod steps;
pub mod triton_attn;
pub mod unified;

use crate::backends::exec::{Cpu, KernelExecutor};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::{CacheWrite, CacheWriter};
use attnlab_shared::block_table::select_kernel_block_size;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::registry::BackendName;
use steps::{Rows, SubBatch};

/// Kernel launches as `attnlab trace` shows them (defined beside the kernels).
pub use crate::kernels::KernelCall;

/// An emulated MHA backend.
///
/// A step is: `write_kv` (the backend's cache writer, `-1` slots skipped),
/// then `forward` over the whole batch: `check`, then the steps of `route`.
/// `plan` lists the kernel launches of both for a batch without touching
/// data (for `attnlab trace`).
pub trait AttentionBackend: Send + Sync {
    /// vLLM's enum member, e.g. `ROCM_AITER_FA`.
    fn name(&self) -> BackendName;

    /// Rejects what vLLM rejects for this backend (head size, dtype, block
    /// size, sinks, ...: the registry entry's capabilities, see
    /// [`capability`]) with vLLM's message where it has one.
    fn check(&self, cfg: &AttnConfig, block_size: usize) -> Result<()>;

    /// The model-level config under which this backend's kernels compute what
    /// a kernel-level capture of `cfg` (a fixture) computed; `Err(reason)`
    /// when the backend cannot express it because vLLM's backend silently
    /// drops or alters a feature on its way to the kernels (e.g. seed-era
    /// ROCM_ATTN hands its kernels `sliding_window - 1` and no soft-cap).
    fn fixture_config(&self, cfg: &AttnConfig) -> std::result::Result<AttnConfig, String> {
        Ok(cfg.clone())
    }

    /// The kernel block size this backend uses for a manager block size
    /// (vLLM's `select_common_block_size` over the registry entry's kernel
    /// block sizes, e.g. ROCM_AITER_FA: 544 -> 32).
    fn kernel_block_size(&self, block_size: usize) -> Result<usize> {
        let caps = capability::capabilities_of(self.name())?;
        select_kernel_block_size(block_size, self.name().name(), caps.kernel_block_sizes)
    }

    /// The KV cache layout this backend's kernels read.
    fn layout_kind(&self) -> LayoutKind;

    /// The cache-update kernel vLLM's `do_kv_cache_update` calls for a kernel
    /// block size.
    fn cache_writer(&self, block_size: usize) -> CacheWriter;

    /// The routing: the sub-batches of this batch and the [`steps::Step`]s
    /// computing their rows, in launch order.
    fn route(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Result<Vec<SubBatch>>;

    /// The config the backend hands its kernels (by default the layer's).
    fn kernel_config(&self, cfg: &AttnConfig) -> Result<AttnConfig> {
        Ok(cfg.clone())
    }

    /// The cache layout for `num_blocks` kernel blocks of `block_size`.
    fn cache_layout(
        &self,
        cfg: &AttnConfig,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<KvLayout> {
        KvLayout::new(
            self.layout_kind(),
            num_blocks,
            block_size,
            cfg.num_kv_heads(),
            cfg.head_size(),
            cfg.kv_dtype(),
        )
    }

    /// Writes the step's new K/V (`[T, Hkv, D]`, in `cfg.dtype`) at `slot_mapping`.
    fn write_kv(
        &self,
        cache: &mut KvCache,
        key: &[f32],
        value: &[f32],
        slot_mapping: &[i64],
        cfg: &AttnConfig,
    ) -> Result<()> {
        self.write_kv_with(&Cpu::FMA, cache, key, value, slot_mapping, cfg)
    }

    /// Attention for every query token of the batch: `[T, Hq, D]` in `cfg.dtype`.
    fn forward(
        &self,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        self.forward_with(&Cpu::FMA, query, cache, meta, cfg)
    }

    /// [`AttentionBackend::write_kv`] with its kernel run by `ex`.
    fn write_kv_with(
        &self,
        ex: &dyn KernelExecutor,
        cache: &mut KvCache,
        key: &[f32],
        value: &[f32],
        slot_mapping: &[i64],
        cfg: &AttnConfig,
    ) -> Result<()> {
        let writer = self.cache_writer(cache.layout.block_size);
        ex.reshape_and_cache(CacheWrite::new(
            writer,
            cache,
            key,
            value,
            slot_mapping,
            cfg,
        )?)
    }

    /// [`AttentionBackend::forward`] with every kernel launch made through
    /// `ex`: `check`, then the steps of `route`.
    fn forward_with(
        &self,
        ex: &dyn KernelExecutor,
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        self.check(cfg, meta.block_size())?;
        let route = self.route(meta, cfg)?;
        self.forward_route(ex, &route, query, cache, meta, cfg)
    }

    /// [`AttentionBackend::forward_with`] over a given route (replay's
    /// recorded kernel choice): `check`, then the steps of `route` (a route
    /// that splits the batch reads query rows and the cache itself, so they
    /// are checked too).
    fn forward_route(
        &self,
        ex: &dyn KernelExecutor,
        route: &[SubBatch],
        query: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<Vec<f32>> {
        self.check(cfg, meta.block_size())?;
        if !matches!(
            route,
            [SubBatch {
                rows: Rows::All,
                ..
            }]
        ) {
            let want = self.cache_layout(cfg, cache.layout.num_blocks, meta.block_size())?;
            steps::check_split_inputs(self.name().name(), &want, query, cache, meta, cfg)?;
        }
        steps::run(ex, route, query, cache, meta, &self.kernel_config(cfg)?)
    }

    /// The kernel launches `write_kv` and `forward` make for this batch: the
    /// cache writer's, then each step of `route` (empty if the batch is invalid).
    fn plan(&self, meta: &AttentionMetadata, cfg: &AttnConfig) -> Vec<KernelCall> {
        let (Ok(layout), Ok(route)) = (
            self.cache_layout(cfg, meta.num_blocks(), meta.block_size()),
            self.route(meta, cfg),
        ) else {
            return vec![];
        };
        let mut calls = vec![self
            .cache_writer(meta.block_size())
            .kernel_call(&layout, meta.num_actual_tokens())];
        calls.extend(steps::render(&route, meta, cfg, &layout));
        calls
    }
}

/// Every emulated MHA backend, in registry order.
pub fn mha_backends() -> Vec<Box<dyn AttentionBackend>> {
    vec![
        Box::new(triton_attn::TritonAttn::default()),
        Box::new(rocm_attn::RocmAttn::default()),
        Box::new(rocm_aiter_fa::RocmAiterFa::from_env()),
        Box::new(rocm_aiter_unified_attn::RocmAiterUnifiedAttn::default()),
        Box::new(flex_attention::FlexAttention),
    ]
}

/// The emulated backend of vLLM enum member `name`, naming the emulated
/// ones when there is none.
pub fn by_name(name: BackendName) -> Result<Box<dyn AttentionBackend>> {
    let all = mha_backends();
    let emulated: Vec<BackendName> = all.iter().map(|b| b.name()).collect();
    all.into_iter()
        .find(|b| b.name() == name)
        .ok_or_else(|| not_emulated("MHA backend", name.name(), &emulated))
}

/// Parses an emulated MHA backend's vLLM enum name (exact, as
/// `AttentionBackendEnum[name]`): where a name becomes a [`BackendName`]
/// (the CLI edge); the error names the emulated ones.
pub fn parse(name: &str) -> Result<BackendName> {
    let emulated: Vec<BackendName> = mha_backends().iter().map(|b| b.name()).collect();
    BackendName::from_name(name)
        .filter(|n| emulated.contains(n))
        .ok_or_else(|| not_emulated("MHA backend", name, &emulated))
}

/// `'name'` is not among the `emulated` backends of a family (`what`).
pub(crate) fn not_emulated(what: &str, name: &str, emulated: &[BackendName]) -> Error {
    let names: Vec<&str> = emulated.iter().map(|b| b.name()).collect();
    Error::invalid(
        what,
        format!("'{name}'"),
        format!("emulated {what}s: {}", names.join(", ")),
    )
}
