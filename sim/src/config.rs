//! Per-layer attention configuration every backend and kernel receives.

use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::FaultSet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttnConfig {
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

impl AttnConfig {
    /// A plain causal config with scale 1/sqrt(head_size).
    pub fn new(num_heads: usize, num_kv_heads: usize, head_size: usize, dtype: DType) -> Self {
        AttnConfig {
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

    /// Query heads per KV head (GQA group size).
    pub fn queries_per_kv(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    pub fn validate(&self) -> Result<()> {
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
