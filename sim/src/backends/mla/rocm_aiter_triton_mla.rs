//! ROCM_AITER_TRITON_MLA (`v1/attention/backends/mla/aiter_triton_mla.py`,
//! vllm-backends.md §15.4): a subclass of ROCM_AITER_MLA whose only override
//! is the prefill's `_flash_attn_varlen_diff_headdims`, wrapping AITER's
//! Triton `flash_attn_varlen_func` and transposing its LSE from `[T, H]` to
//! `[H, T]`. In vLLM that override has no callers: the common prefill goes
//! through the selected MLA prefill backend (§4.7), and decode is AITER's
//! asm `mla_decode_fwd`. So this backend computes exactly what
//! ROCM_AITER_MLA computes; it exists so selection, `check` and traces can
//! name it, and a test pins the equality.

use super::decode_steps::MlaDecode;
use super::rocm_aiter_mla::RocmAiterMla;
use super::{MlaBackend, MlaConfig, MlaDecodeBatch};
use attnlab_shared::error::Result;
use attnlab_shared::registry::BackendName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RocmAiterTritonMla(pub RocmAiterMla);

impl MlaBackend for RocmAiterTritonMla {
    fn name(&self) -> BackendName {
        BackendName::RocmAiterTritonMla
    }

    fn check(&self, cfg: &MlaConfig, block_size: usize) -> Result<()> {
        self.0.check(cfg, block_size)
    }

    fn route_mqa(
        &self,
        batch: &MlaDecodeBatch,
        heads: usize,
        cfg: &MlaConfig,
    ) -> Result<MlaDecode> {
        self.0.route_mqa(batch, heads, cfg)
    }

    fn uniform_decode(&self) -> bool {
        self.0.uniform_decode()
    }
}
