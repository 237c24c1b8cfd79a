//! Diff of both paged decode kernels (Triton 2D and HIP ll4mi partitions +
//! reduce) over every KV layout they read (NHD, ROCm x-packed, AITER
//! shuffled), decode-heavy batches with contexts across several 256-token
//! partitions. Non-decode rows must stay untouched on both sides.

use super::cases::{attention_diff, prefilled_output, CaseSpace, Outputs};
use super::{DiffOptions, KernelReport};
use crate::kernels::Gpu;
use crate::ops::paged_decode::{paged_attention_2d as gpu_2d, paged_attention_ll4mi as gpu_ll4mi};
use crate::runtime::Result;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::config::AttnConfigBuilder;
use attnlab_sim::kernels::paged_decode::{
    paged_2d as sim_2d, paged_ll4mi as sim_ll4mi, PagedInputs, PartitionSize,
};
use rand::Rng;

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[
        LayoutKind::Nhd,
        LayoutKind::RocmPaged,
        LayoutKind::AiterShuffled,
    ],
    block_sizes: &[16, 32, 1, 544],
    head_sizes: &[64, 128],
    max_reqs: 6,
    max_query_len: 4,
    max_context: 700,
    sinks: true,
    alibi: true,
    non_causal: false,
};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    attention_diff("paged_decode", opts, &SPACE, |rng, case| {
        let ll4mi = rng.gen_bool(0.5);
        if ll4mi {
            // the ll4mi kernels take no sinks
            case.cfg = AttnConfigBuilder {
                sinks: None,
                ..case.cfg.to_builder()
            }
            .build()?;
        }
        let init = prefilled_output(rng, case.query.len(), case.cfg.dtype());
        let mut sim = init.clone();
        let inputs = PagedInputs::new(&case.query, &case.cache, &case.meta, &case.cfg)?;
        let gpu = if ll4mi {
            sim_ll4mi(&inputs, PartitionSize::ROCM, &mut sim)?;
            gpu_ll4mi(gpu, &inputs, PartitionSize::ROCM, &init)?
        } else {
            sim_2d(&inputs, &mut sim)?;
            gpu_2d(gpu, &inputs, &init)?
        };
        let options = if ll4mi { "ll4mi" } else { "2d" }.to_string();
        Ok(Some(Outputs { options, sim, gpu }))
    })
}
