//! Diff of prefix prefill (`_fwd_kernel` and `_fwd_kernel_alibi`) over mixed
//! batches with contexts over several 32-key context tiles and queries over
//! two BLOCK_M programs, every KV layout, with and without `skip_decode`.
//! Rows the kernel skips must stay untouched on both sides.

use super::cases::{attention_diff, prefilled_output, CaseSpace, Outputs};
use super::{DiffOptions, KernelReport};
use crate::kernels::Gpu;
use crate::ops::prefix_prefill::context_attention_fwd as gpu_prefix;
use crate::runtime::Result;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::config::AttnConfigBuilder;
use attnlab_sim::kernels::paged_decode::PagedInputs;
use attnlab_sim::kernels::prefix_prefill::{context_attention as sim_prefix, PrefixArgs};
use rand::Rng;

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[
        LayoutKind::Nhd,
        LayoutKind::RocmPaged,
        LayoutKind::AiterShuffled,
    ],
    block_sizes: &[16, 32, 1, 544],
    head_sizes: &[64, 128],
    max_reqs: 4,
    max_query_len: 140,
    max_context: 150,
    sinks: true,
    alibi: true,
    non_causal: true,
};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    attention_diff("prefix_prefill", opts, &SPACE, |rng, case| {
        if case.cfg.alibi_slopes().is_some() {
            // _fwd_kernel_alibi: causal, no sinks (vLLM asserts both).
            case.cfg = AttnConfigBuilder {
                sinks: None,
                ..case.cfg.to_builder()
            }
            .build()?;
            case.meta = case.meta.clone().with_causal(true);
        }
        let skip_decode = rng.gen_bool(0.7);
        let init = prefilled_output(rng, case.query.len(), case.cfg.dtype());
        let mut sim = init.clone();
        let inputs = PagedInputs::new(&case.query, &case.cache, &case.meta, &case.cfg)?;
        let args = PrefixArgs::new(inputs, skip_decode)?;
        sim_prefix(&args, &mut sim)?;
        let gpu = gpu_prefix(gpu, &args, &init)?;
        Ok(Some(Outputs {
            options: format!("skip_decode {skip_decode}"),
            sim,
            gpu,
        }))
    })
}
