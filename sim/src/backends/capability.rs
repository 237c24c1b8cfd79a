//! A backend's check, derived from its registry entry
//! ([`attnlab_shared::registry`]): which head sizes, dtypes, KV-cache dtypes,
//! block sizes and sinks it takes is written there once; a backend lists the
//! capabilities in the order vLLM checks them, each with vLLM's words
//! ([`Words`]), and [`check_capabilities`] does the rest.

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
            Capability::HeadSize => caps.head_sizes.accepts(cfg.head_size()),
            Capability::Dtype => caps.dtypes.contains(&cfg.dtype()),
            Capability::KvCacheDtype => {
                cfg.kv_dtype() == cfg.dtype()
                    || (cfg.kv_dtype().is_fp8()
                        && caps.kv_cache_dtypes.contains(&KvCacheDtype::Fp8))
            }
            Capability::BlockSize => caps.supports_block_size(block_size),
            Capability::Sinks => caps.sinks || cfg.sinks().is_none(),
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

/// vLLM's words for one rejection: `{value}` stands for the config's value
/// (head size, dtype, cache dtype, block size), `{allowed}` for the
/// registry's set, `{backend}` for the backend's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Words {
    /// [`Error::invalid`]`(field, value, reason)`.
    Invalid(&'static str, &'static str),
    /// [`Error::unsupported`]`(what, why)`.
    Unsupported(&'static str, &'static str),
}

/// Rejects `cfg` at the first capability of `rules` it lies outside of
/// (under `name`'s registry entry), in that rule's words.
pub fn check_capabilities(
    name: BackendName,
    cfg: &AttnConfig,
    block_size: usize,
    rules: &[(Capability, Words)],
) -> Result<()> {
    let caps = capabilities_of(name)?;
    let Some((c, words)) = rules
        .iter()
        .find(|(c, _)| !c.accepts(caps, cfg, block_size))
    else {
        return Ok(());
    };
    let (value, allowed) = match c {
        Capability::HeadSize => (cfg.head_size().to_string(), head_sizes(caps)),
        Capability::Dtype => (cfg.dtype().to_string(), dtype_names(caps)),
        Capability::KvCacheDtype => (cfg.kv_dtype().to_string(), String::new()),
        Capability::BlockSize => (block_size.to_string(), String::new()),
        Capability::Sinks => ("sinks".to_string(), String::new()),
    };
    let fill = |t: &str| {
        t.replace("{value}", &value)
            .replace("{allowed}", &allowed)
            .replace("{backend}", name.name())
    };
    Err(match *words {
        Words::Invalid(field, reason) => Error::invalid(field, value.clone(), fill(reason)),
        Words::Unsupported(what, why) => Error::unsupported(fill(what), fill(why)),
    })
}
