//! Diff of `merge_attn_states`: both kernels (Triton, HIP), f32/f16/bf16
//! outputs, random lse pairs including empty sides (-inf), +inf, and both
//! sides empty (Triton's NaN row, the HIP kernel's prefix copy).

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::merge_attn_states::merge_attn_states as gpu_merge;
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::fault::FaultSet;
use attnlab_sim::kernels::merge_attn_states::{merge, MergeArgs, MergeKernel};
use attnlab_sim::kernels::softmax::OutLse;
use rand::seq::SliceRandom;
use rand::Rng;

fn draw_lse(rng: &mut impl Rng) -> f32 {
    match rng.gen_range(0..20) {
        0 => f32::NEG_INFINITY,
        1 => f32::INFINITY,
        _ => rng.gen_range(-30.0f32..30.0),
    }
}

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("merge_attn_states", opts.seed);
    let mut tally = Tally::new("merge_attn_states");
    for done in 0..opts.cases {
        if !opts.more(done) {
            break;
        }
        let kernel = *[MergeKernel::Triton, MergeKernel::Hip]
            .choose(&mut rng)
            .expect("non-empty");
        let dtype = *[DType::F32, DType::F16, DType::Bf16]
            .choose(&mut rng)
            .expect("non-empty");
        let (t, h) = (rng.gen_range(1..20usize), rng.gen_range(1..9usize));
        let d = *[64usize, 128, 80, 256].choose(&mut rng).expect("non-empty");
        let side = |rng: &mut rand_chacha::ChaCha8Rng| {
            let out: Vec<f32> = (0..t * h * d)
                .map(|_| dtype.round(rng.gen_range(-4.0f32..4.0)))
                .collect();
            let lse: Vec<f32> = (0..t * h).map(|_| draw_lse(rng)).collect();
            OutLse::new(t, h, d, out, lse)
        };
        let (prefix, suffix) = (side(&mut rng)?, side(&mut rng)?);
        let args = MergeArgs::new(&prefix, &suffix, dtype, kernel)?;
        let sim = merge(&args, FaultSet::NONE);
        let dev = gpu_merge(gpu, &args)?;
        let desc = || format!("{kernel:?} merge, [{t} tokens, {h} heads, {d}] in {dtype}");
        tally.compare_values(&desc, "output", &[t, h, d], dtype, sim.out(), &dev.out);
        tally.compare_values(
            &desc,
            "output_lse",
            &[h, t],
            DType::F32,
            sim.lse(),
            &dev.lse,
        );
        tally.case_done();
    }
    Ok(tally.finish())
}
