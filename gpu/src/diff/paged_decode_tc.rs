//! Diff of the tensor-core paged decode (split kernel + ascending reduce,
//! a second launch or fused into the split kernel, drawn per case)
//! against its sim twin on the device's own matrix-core model (sm_90 on
//! NVIDIA and at host wave 32, gfx942 on CDNA3 and at host wave 64): NHD
//! caches with shuffled block tables, decode-heavy batches (other rows must
//! stay untouched), contexts over many 16-key steps, split sizes from one
//! step to the automatic choice.

use super::cases::{attention_diff, prefilled_output, CaseSpace, Outputs};
use super::{DiffOptions, KernelReport};
use crate::kernels::Gpu;
use crate::ops::paged_decode_tc::{
    auto_split_size, device_target, paged_decode_tc as gpu_tc, TcReduce, TcVariant,
};
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::config::AttnConfigBuilder;
use attnlab_sim::kernels::paged_decode::PagedInputs;
use attnlab_sim::kernels::paged_decode_tc::{decode_tc as sim_tc, DecodeTcArgs};
use rand::seq::SliceRandom;

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd],
    block_sizes: &[16, 32, 1, 48],
    head_sizes: &[64, 128],
    max_reqs: 6,
    max_query_len: 4,
    max_context: 700,
    sinks: false,
    alibi: false,
    non_causal: false,
};

/// Split sizes the diff draws (None: the launcher's automatic choice).
const SPLITS: [Option<usize>; 5] = [Some(16), Some(32), Some(64), Some(256), None];

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let target = device_target(gpu)?;
    attention_diff("paged_decode_tc", opts, &SPACE, |rng, case| {
        let dt = case.cfg.dtype();
        if !matches!(dt, DType::Bf16 | DType::F16) || case.cfg.kv_dtype() != dt {
            return Ok(None); // the kernel's dtypes: bf16 or f16, cache as the query
        }
        case.cfg = AttnConfigBuilder {
            sliding_window: None,
            ..case.cfg.to_builder()
        }
        .build()?;
        let split = *SPLITS.choose(rng).expect("non-empty");
        let init = prefilled_output(rng, case.query.len(), dt);
        let (q, c, m, cfg) = (&case.query, &case.cache, &case.meta, &case.cfg);
        let variant = *TcVariant::ALL.choose(rng).expect("non-empty");
        let used = split.unwrap_or_else(|| auto_split_size(gpu, m, cfg, variant));
        let args = DecodeTcArgs::new(PagedInputs::new(q, c, m, cfg)?, target, used)?;
        let reduce = *TcReduce::ALL.choose(rng).expect("non-empty");
        let gpu = gpu_tc(gpu, &args, variant, reduce, &init)?;
        let mut sim = init;
        sim_tc(&args, &mut sim)?;
        let options = format!(
            "{} split {used} {} {}",
            target.name(),
            variant.name(),
            reduce.name()
        );
        Ok(Some(Outputs { options, sim, gpu }))
    })
}
