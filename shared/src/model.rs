//! Model presets: the attention shapes of the models the seed documents use,
//! plus free shapes. MLA models carry their latent dimensions.

use crate::dtype::DType;
use crate::error::{Error, Result};
use serde::Serialize;

/// DeepSeek-style multi-latent attention dimensions (vllm-backends.md §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MlaDims {
    pub kv_lora_rank: usize,
    pub qk_rope_head_dim: usize,
    pub qk_nope_head_dim: usize,
    pub v_head_dim: usize,
}

impl MlaDims {
    /// Width of one latent cache entry: c_kv then k_pe (576 for DeepSeek).
    pub fn latent_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelPreset {
    pub name: &'static str,
    /// What `vllm serve` would be given for it.
    pub hf_name: &'static str,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// MHA head size (for MLA models, vLLM's selector sees kv_lora_rank + rope).
    pub head_size: usize,
    pub dtype: DType,
    pub mla: Option<MlaDims>,
    /// Manager block size forced by the model (hybrid mamba models), if any.
    pub block_size: Option<usize>,
}

pub const PRESETS: [ModelPreset; 3] = [
    ModelPreset {
        name: "llama-3.1-8b",
        hf_name: "meta-llama/Llama-3.1-8B-Instruct",
        num_heads: 32,
        num_kv_heads: 8,
        head_size: 128,
        dtype: DType::Bf16,
        mla: None,
        block_size: None,
    },
    ModelPreset {
        // Qwen3-Next's full-attention layers: 16 q heads, 2 kv heads, head 256;
        // the hybrid (mamba) page size forces a manager block size of 544.
        name: "qwen3-next",
        hf_name: "Qwen/Qwen3-Next-80B-A3B-Instruct",
        num_heads: 16,
        num_kv_heads: 2,
        head_size: 256,
        dtype: DType::Bf16,
        mla: None,
        block_size: Some(544),
    },
    ModelPreset {
        name: "deepseek-r1",
        hf_name: "deepseek-ai/DeepSeek-R1",
        num_heads: 128,
        num_kv_heads: 1,
        head_size: 576,
        dtype: DType::Bf16,
        mla: Some(MlaDims {
            kv_lora_rank: 512,
            qk_rope_head_dim: 64,
            qk_nope_head_dim: 128,
            v_head_dim: 128,
        }),
        block_size: None,
    },
];

/// Looks a preset up by name, naming the allowed ones when it fails.
pub fn preset(name: &str) -> Result<&'static ModelPreset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        Error::invalid(
            "model preset",
            format!("'{name}'"),
            format!(
                "allowed: {}",
                PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

impl ModelPreset {
    pub fn is_mla(&self) -> bool {
        self.mla.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_documented_shapes() {
        let l = preset("llama-3.1-8b").unwrap();
        assert_eq!((l.num_heads, l.num_kv_heads, l.head_size), (32, 8, 128));
        let d = preset("deepseek-r1").unwrap();
        assert_eq!(d.mla.unwrap().latent_width(), 576);
        assert_eq!(preset("qwen3-next").unwrap().block_size, Some(544));
    }

    #[test]
    fn unknown_preset_lists_the_allowed_ones() {
        let e = preset("gpt-5").unwrap_err().to_string();
        assert!(e.contains("'gpt-5'") && e.contains("deepseek-r1"), "{e}");
    }
}
