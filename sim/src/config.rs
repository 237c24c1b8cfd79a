//! Per-layer attention configuration every backend and kernel receives.

use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::FaultSet;
use serde::{Deserialize, Serialize};

/// The fields of an [`AttnConfig`], not yet checked: set what differs from
/// [`AttnConfigBuilder::new`]'s plain causal config (struct-update syntax
/// works), then [`AttnConfigBuilder::build`] checks them. Also the
/// serialised form: deserialising an [`AttnConfig`] goes through `build`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttnConfigBuilder {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    /// Softmax scale (natural log domain), usually 1/sqrt(head_size).
    pub scale: f32,
    /// Dtype of query, new key/value and output.
    pub dtype: DType,
    /// Storage dtype of the KV cache (== `dtype` unless an fp8 cache).
    pub kv_dtype: DType,
    /// Per-tensor fp8 scales: stored = fp8(x / scale), loaded = fp8 * scale.
    pub k_scale: f32,
    pub v_scale: f32,
    /// A query at position p sees keys in (p - window, p].
    pub sliding_window: Option<usize>,
    /// Scores become c * tanh(s / c).
    pub softcap: Option<f32>,
    /// Per-q-head sink logits (natural log), added to the softmax denominator.
    pub sinks: Option<Vec<f32>>,
    /// Per-q-head ALiBi slopes: score += slope * (t - p).
    pub alibi_slopes: Option<Vec<f32>>,
    /// Real bugs re-injected (`attnlab zoo`, [`attnlab_shared::fault`]);
    /// empty unless a zoo run sets it. Not part of a fixture.
    #[serde(skip)]
    pub faults: FaultSet,
}

impl AttnConfigBuilder {
    /// A plain causal config with scale 1/sqrt(head_size).
    pub fn new(num_heads: usize, num_kv_heads: usize, head_size: usize, dtype: DType) -> Self {
        AttnConfigBuilder {
            num_heads,
            num_kv_heads,
            head_size,
            scale: 1.0 / (head_size as f32).sqrt(),
            dtype,
            kv_dtype: dtype,
            k_scale: 1.0,
            v_scale: 1.0,
            sliding_window: None,
            softcap: None,
            sinks: None,
            alibi_slopes: None,
            faults: FaultSet::NONE,
        }
    }

    /// Checks the invariants of [`AttnConfig`]; the error names the first
    /// bad field, its value and what it must be.
    pub fn build(self) -> Result<AttnConfig> {
        self.validate()?;
        Ok(AttnConfig(self))
    }
    fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.head_size == 0 {
            return Err(Error::invalid(
                "attention shape",
                format!(
                    "heads {} / kv heads {} / head size {}",
                    self.num_heads, self.num_kv_heads, self.head_size
                ),
                "all must be >= 1",
            ));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::invalid(
                "num_kv_heads",
                self.num_kv_heads,
                format!("must divide num_heads = {}", self.num_heads),
            ));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::invalid(
                "scale",
                self.scale,
                "must be finite and > 0",
            ));
        }
        if self.sliding_window == Some(0) {
            return Err(Error::invalid(
                "sliding_window",
                0,
                "must be >= 1 or absent",
            ));
        }
        if let Some(c) = self.softcap {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid("softcap", c, "must be finite and > 0"));
            }
        }
        for (what, v) in [("sinks", &self.sinks), ("alibi_slopes", &self.alibi_slopes)] {
            if let Some(v) = v {
                if v.len() != self.num_heads {
                    return Err(Error::invalid(
                        format!("{what} length"),
                        v.len(),
                        format!("must be num_heads = {}", self.num_heads),
                    ));
                }
            }
        }
        if self.kv_dtype.is_fp8() {
            for (what, s) in [("k_scale", self.k_scale), ("v_scale", self.v_scale)] {
                if !(s.is_finite() && s > 0.0) {
                    return Err(Error::invalid(what, s, "fp8 scales must be finite and > 0"));
                }
            }
        }
        Ok(())
    }
}

impl TryFrom<AttnConfigBuilder> for AttnConfig {
    type Error = Error;
    fn try_from(b: AttnConfigBuilder) -> Result<Self> {
        b.build()
    }
}

/// Per-layer attention configuration, checked once by
/// [`AttnConfigBuilder::build`] (which [`AttnConfig::new`] and
/// deserialisation go through).
///
/// # Invariants
///
/// Its fields (an [`AttnConfigBuilder`]) are private, so every value keeps
/// what `build` checked and no backend, kernel or GPU launcher checks it
/// again:
/// - `num_heads`, `num_kv_heads` and `head_size` are `>= 1`, and
///   `num_kv_heads` divides `num_heads`;
/// - `scale` is finite and `> 0`; `softcap`, when set, too;
/// - `sliding_window`, when set, is `>= 1`;
/// - `sinks` and `alibi_slopes`, when set, hold one value per query head;
/// - with an fp8 `kv_dtype`, `k_scale` and `v_scale` are finite and `> 0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AttnConfigBuilder", into = "AttnConfigBuilder")]
pub struct AttnConfig(AttnConfigBuilder);

impl From<AttnConfig> for AttnConfigBuilder {
    fn from(c: AttnConfig) -> Self {
        c.0
    }
}

impl AttnConfig {
    /// A plain causal config with scale 1/sqrt(head_size), checked.
    pub fn new(
        num_heads: usize,
        num_kv_heads: usize,
        head_size: usize,
        dtype: DType,
    ) -> Result<Self> {
        AttnConfigBuilder::new(num_heads, num_kv_heads, head_size, dtype).build()
    }

    /// [`AttnConfigBuilder::new`]: a plain causal config to change and build.
    pub fn builder(
        num_heads: usize,
        num_kv_heads: usize,
        head_size: usize,
        dtype: DType,
    ) -> AttnConfigBuilder {
        AttnConfigBuilder::new(num_heads, num_kv_heads, head_size, dtype)
    }

    /// This config's fields, to change and build again.
    pub fn to_builder(&self) -> AttnConfigBuilder {
        self.0.clone()
    }

    /// The same config with these faults re-injected (no invariant depends
    /// on them).
    pub fn with_faults(mut self, faults: FaultSet) -> Self {
        self.0.faults = faults;
        self
    }

    pub fn num_heads(&self) -> usize {
        self.0.num_heads
    }
    pub fn num_kv_heads(&self) -> usize {
        self.0.num_kv_heads
    }
    pub fn head_size(&self) -> usize {
        self.0.head_size
    }
    /// Softmax scale (natural log domain), usually 1/sqrt(head_size).
    pub fn scale(&self) -> f32 {
        self.0.scale
    }
    /// Dtype of query, new key/value and output.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    /// Storage dtype of the KV cache (== `dtype` unless an fp8 cache).
    pub fn kv_dtype(&self) -> DType {
        self.0.kv_dtype
    }
    /// Per-tensor fp8 key scale: stored = fp8(x / scale), loaded = fp8 * scale.
    pub fn k_scale(&self) -> f32 {
        self.0.k_scale
    }
    /// Per-tensor fp8 value scale.
    pub fn v_scale(&self) -> f32 {
        self.0.v_scale
    }
    /// A query at position p sees keys in (p - window, p].
    pub fn sliding_window(&self) -> Option<usize> {
        self.0.sliding_window
    }
    /// Scores become c * tanh(s / c).
    pub fn softcap(&self) -> Option<f32> {
        self.0.softcap
    }
    /// Per-q-head sink logits (natural log), added to the softmax denominator.
    pub fn sinks(&self) -> Option<&[f32]> {
        self.0.sinks.as_deref()
    }
    /// Per-q-head ALiBi slopes: score += slope * (t - p).
    pub fn alibi_slopes(&self) -> Option<&[f32]> {
        self.0.alibi_slopes.as_deref()
    }
    /// Real bugs re-injected (`attnlab zoo`); empty unless a zoo run sets it.
    pub fn faults(&self) -> FaultSet {
        self.0.faults
    }

    /// Query heads per KV head (GQA group size).
    pub fn queries_per_kv(&self) -> usize {
        self.0.num_heads / self.0.num_kv_heads
    }
}
