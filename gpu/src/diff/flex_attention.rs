//! Diff of FlexAttention over mixed batches on an NHD cache of the query
//! dtype, with non-contiguous block tables (so q blocks see partial and full
//! kv blocks in physical order), windows and non-causal batches.

use super::cases::{attention_diff, CaseSpace, Outputs};
use super::{DiffOptions, KernelReport};
use crate::kernels::Gpu;
use crate::ops::flex_attention::flex_attention as gpu_flex;
use crate::runtime::Result;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::config::AttnConfigBuilder;
use attnlab_sim::kernels::flex_attention::{flex as sim_flex, FlexArgs};

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd],
    block_sizes: &[16, 32, 64],
    head_sizes: &[64, 128],
    max_reqs: 5,
    max_query_len: 40,
    max_context: 120,
    sinks: false,
    alibi: false,
    non_causal: true,
};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    attention_diff("flex_attention", opts, &SPACE, |_, case| {
        if case.cfg.kv_dtype() != case.cfg.dtype() {
            return Ok(None); // FLEX_ATTENTION has no fp8 cache
        }
        // nor a soft-cap score_mod
        case.cfg = AttnConfigBuilder {
            softcap: None,
            ..case.cfg.to_builder()
        }
        .build()?;
        let args = FlexArgs::new(&case.query, &case.cache, &case.meta, &case.cfg)?;
        let sim = sim_flex(&args)?;
        let gpu = gpu_flex(gpu, &args)?;
        Ok(Some(Outputs {
            options: String::new(),
            sim,
            gpu,
        }))
    })
}
