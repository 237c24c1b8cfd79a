//! A backend's check, derived from its registry entry
//! ([`attnlab_shared::registry`]): which head sizes, dtypes, KV-cache dtypes,
//! block sizes and sinks it takes is written there once; a backend names the
//! order vLLM checks them in and words each rejection as vLLM does.

use crate::config::AttnConfig;
use attnlab_shared::dtype::KvCacheDtype;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::registry::{BackendName, Capabilities, HeadSizes};

/// One registry capability a layer config can lie outside of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    HeadSize,
    Dtype,
    /// The cache dtype: the model's (`auto`) or fp8 where the entry lists fp8.
    KvCacheDtype,
    /// The manager block size: some kernel block size must divide it.
    BlockSize,
    Sinks,
}

impl Capability {
    /// Whether `cfg` at manager block size `block_size` is within `caps`.
    pub fn accepts(self, caps: &Capabilities, cfg: &AttnConfig, block_size: usize) -> bool {
        match self {
            Capability::HeadSize => caps.head_sizes.accepts(cfg.head_size),
            Capability::Dtype => caps.dtypes.contains(&cfg.dtype),
            Capability::KvCacheDtype => {
                cfg.kv_dtype == cfg.dtype
                    || (cfg.kv_dtype.is_fp8() && caps.kv_cache_dtypes.contains(&KvCacheDtype::Fp8))
            }
            Capability::BlockSize => caps.supports_block_size(block_size),
            Capability::Sinks => caps.sinks || cfg.sinks.is_none(),
        }
    }
}

/// The registry entry of an emulated backend.
pub fn capabilities_of(name: BackendName) -> Result<&'static Capabilities> {
    name.capabilities().ok_or_else(|| {
        Error::unsupported(
            name.name(),
            "the registry lists no ROCm capabilities for this backend",
        )
    })
}

/// The first capability of `order` that `cfg` lies outside of, under
/// `name`'s registry entry, with the entry (for the message).
pub fn first_unsupported(
    name: BackendName,
    cfg: &AttnConfig,
    block_size: usize,
    order: &[Capability],
) -> Result<Option<(Capability, &'static Capabilities)>> {
    let caps = capabilities_of(name)?;
    Ok(order
        .iter()
        .copied()
        .find(|c| !c.accepts(caps, cfg, block_size))
        .map(|c| (c, caps)))
}

/// The entry's dtypes as vLLM names them: "float16, bfloat16, float32".
pub fn dtype_names(caps: &Capabilities) -> String {
    let names: Vec<&str> = caps.dtypes.iter().map(|d| d.name()).collect();
    names.join(", ")
}

/// The entry's head sizes: `[64, 128, 256]`, `>= 32` or `any`.
pub fn head_sizes(caps: &Capabilities) -> String {
    match caps.head_sizes {
        HeadSizes::Any => "any".into(),
        HeadSizes::AtLeast(n) => format!(">= {n}"),
        HeadSizes::OneOf(list) => format!("{list:?}"),
    }
}
