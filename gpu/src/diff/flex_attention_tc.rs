//! Diff of the tensor-core FlexAttention against its sim twin on the
//! device's own matrix-core model (sm_90 on an H100 and on the host at wave
//! 32, gfx942 on the host at wave 64), over the fma family's space (mixed
//! batches on an NHD cache, non-contiguous block tables, windows,
//! non-causal batches), bf16 and f16 only (fp32 draws are drawn again).

use super::cases::{attention_diff, Outputs};
use super::flex_attention::SPACE;
use super::{DiffOptions, KernelReport};
use crate::kernels::Gpu;
use crate::ops::flash_varlen_tc::matrix_target;
use crate::ops::flex_attention_tc::flex_attention_tc as gpu_tc;
use crate::runtime::Result;
use attnlab_sim::config::AttnConfigBuilder;
use attnlab_sim::kernels::flex_attention::FlexArgs;
use attnlab_sim::kernels::flex_attention_tc::{flex_tc as sim_tc, validate_config};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let target = matrix_target(&gpu.dev.info().target)?;
    attention_diff("flex_attention_tc", opts, &SPACE, |_, case| {
        if case.cfg.kv_dtype() != case.cfg.dtype() || validate_config(&case.cfg).is_err() {
            return Ok(None); // no fp8 cache; bf16 / f16 only
        }
        // FLEX_ATTENTION passes no soft-cap score_mod
        case.cfg = AttnConfigBuilder {
            softcap: None,
            ..case.cfg.to_builder()
        }
        .build()?;
        let args = FlexArgs::new(&case.query, &case.cache, &case.meta, &case.cfg)?;
        let sim = sim_tc(&args, target)?;
        let gpu = gpu_tc(gpu, &args)?;
        Ok(Some(Outputs {
            options: target.name().to_string(),
            sim,
            gpu,
        }))
    })
}
