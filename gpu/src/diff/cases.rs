//! The case loop the attention-kernel diffs share. The cases themselves come
//! from the emulator crate's generator ([`attnlab_sim::draw`]), the one the
//! drawn-case property tests and `attnlab cases` use too: a mixed batch
//! (decode, extend, prefill rows), a paged cache in a chosen layout whose
//! block table is a random permutation (non-contiguous), and a layer config
//! drawn over GQA ratios, head sizes, dtypes (incl. fp8 caches with scales),
//! sliding windows, soft-cap, sinks and ALiBi.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
pub use attnlab_sim::draw::{draw, AttnCase, CaseSpace};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// What one case of an attention-kernel diff produced: the `output` tensor
/// `[tokens, Hq, D]` (values exact in the query dtype) on each side.
pub struct Outputs {
    /// What the case was, beyond [`AttnCase::describe`] (kernel options).
    pub options: String,
    pub sim: Vec<f32>,
    pub gpu: Vec<u32>,
}

/// The case loop every attention-kernel diff shares: draw from `space` with
/// the kernel's own stream ([`rng_for`]), let `one` make its choices with
/// the same stream and run both sides (`Ok(None)` rejects the draw: the
/// loop draws again), compare the outputs bit for bit, until `opts.cases`
/// cases ran.
pub fn attention_diff(
    kernel: &str,
    opts: DiffOptions,
    space: &CaseSpace,
    mut one: impl FnMut(&mut ChaCha8Rng, &mut AttnCase) -> Result<Option<Outputs>>,
) -> Result<KernelReport> {
    let mut rng = rng_for(kernel, opts.seed);
    let mut tally = Tally::new(kernel);
    while opts.more(tally.cases()) {
        let Some(mut case) = draw(&mut rng, space) else {
            continue;
        };
        let Some(out) = one(&mut rng, &mut case)? else {
            continue;
        };
        let desc = || {
            if out.options.is_empty() {
                case.describe()
            } else {
                format!("{}: {}", out.options, case.describe())
            }
        };
        let shape = [
            case.meta.num_actual_tokens(),
            case.cfg.num_heads(),
            case.cfg.head_size(),
        ];
        tally.compare_values(
            &desc,
            "output",
            &shape,
            case.cfg.dtype(),
            &out.sim,
            &out.gpu,
        );
        tally.case_done();
    }
    Ok(tally.finish())
}

/// Random initial contents of an output tensor, exact in `dtype`, for
/// kernels that must leave some rows untouched: both sides start from them
/// and the untouched rows are compared too.
pub fn prefilled_output(rng: &mut ChaCha8Rng, n: usize, dtype: DType) -> Vec<f32> {
    (0..n)
        .map(|_| dtype.round(rng.gen_range(-1.0f32..1.0)))
        .collect()
}
