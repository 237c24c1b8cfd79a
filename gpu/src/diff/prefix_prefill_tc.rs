//! Diff of the tensor-core prefix prefill (`_fwd_kernel` and
//! `_fwd_kernel_alibi` on the matrix cores) against its sim twin on the
//! device's own matrix-core model (sm_90 on an H100 and on the host at wave
//! 32, gfx942 on the host at wave 64, the GPU's CDNA generation on AMD),
//! over the fma family's space: mixed batches with contexts over several
//! 32-key tiles and queries over two BLOCK_M programs, every KV layout
//! (ROCM_ATTN's x-packed one included), fp8 caches, sinks, windows, ALiBi,
//! non-causal rows, with and without `skip_decode`. Draws of a dtype the
//! matrix tiles do not take (fp32 queries, a cache neither the query dtype
//! nor fp8) are drawn again. Rows the kernel skips must stay untouched on
//! both sides.

use super::cases::{attention_diff, prefilled_output, Outputs};
use super::prefix_prefill::SPACE;
use super::{DiffOptions, KernelReport};
use crate::kernels::Gpu;
use crate::ops::flash_varlen_tc::matrix_target;
use crate::ops::prefix_prefill_tc::context_attention_tc as gpu_tc;
use crate::runtime::Result;
use attnlab_sim::config::AttnConfigBuilder;
use attnlab_sim::kernels::paged_decode::PagedInputs;
use attnlab_sim::kernels::prefix_prefill::PrefixArgs;
use attnlab_sim::kernels::prefix_prefill_tc::{context_attention_tc as sim_tc, tc_format};
use rand::Rng;

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let target = matrix_target(&gpu.dev.info().target)?;
    attention_diff("prefix_prefill_tc", opts, &SPACE, |rng, case| {
        if tc_format(&case.cfg).is_err() {
            return Ok(None); // bf16 / f16 queries, the cache in their dtype or fp8
        }
        if case.cfg.alibi_slopes().is_some() {
            // _fwd_kernel_alibi: causal, no sinks (vLLM asserts both).
            case.cfg = AttnConfigBuilder {
                sinks: None,
                ..case.cfg.to_builder()
            }
            .build()?;
            case.meta = case.meta.clone().with_causal(true);
        }
        let dt = case.cfg.dtype();
        let skip_decode = rng.gen_bool(0.7);
        let init = prefilled_output(rng, case.query.len(), dt);
        let mut sim = init.clone();
        let inputs = PagedInputs::new(&case.query, &case.cache, &case.meta, &case.cfg)?;
        let args = PrefixArgs::new(inputs, skip_decode)?;
        sim_tc(&args, target, &mut sim)?;
        let gpu = gpu_tc(gpu, &args, &init)?;
        Ok(Some(Outputs {
            options: format!(
                "{} {} skip_decode {skip_decode}",
                target.name(),
                args.variant().kernel
            ),
            sim,
            gpu,
        }))
    })
}
