//! Diff of the contract functions (exp2c, log2c, tanhc, expc, the kernels'
//! soft-cap formulas with cap 1, whose inputs straddle the |x| = 88.73
//! overflow) and of every
//! storage rounding, elementwise. Each case is a batch of inputs: the edge
//! values (±0, ±inf, NaN, subnormals, the exp2c cut-offs, rounding ties)
//! plus random bit patterns and random values in each function's working range.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::contract::{round, unary, UnaryOp};
use crate::runtime::Result;
use attnlab_shared::dtype::{DType, ALL_DTYPES};
use rand::Rng;

const BATCH: usize = 4096;

fn edge_values() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        2.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        -f32::from_bits(1),
        f32::MAX,
        f32::MIN,
        -150.0,
        -149.5,
        88.0,
        88.72,
        88.73,
        -88.73,
        89.0,
        -89.0,
        -126.5,
        -125.5,
        127.5,
        127.99,
        128.0,
        1.0625,
        1.1875,
        65504.0,
        65520.0,
        448.0,
        464.0,
        240.0,
        248.0,
        1e-8,
        6.0e-8,
        3.0e-8,
    ];
    v.extend((-40..40).map(|i| i as f32 * 0.5));
    v
}

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("contract", opts.seed);
    let mut tally = Tally::new("contract");
    for case in 0..opts.cases {
        if !opts.more(case) {
            break;
        }
        let mut x = if case == 0 { edge_values() } else { Vec::new() };
        while x.len() < BATCH {
            x.push(match rng.gen_range(0..4) {
                0 => f32::from_bits(rng.gen()),
                1 => rng.gen_range(-160.0f32..130.0),
                2 => rng.gen_range(-20.0f32..20.0),
                _ => rng.gen_range(0.0f32..1.0) * 10f32.powi(rng.gen_range(-40..38)),
            });
        }
        for op in UnaryOp::ALL {
            let sim: Vec<u32> = x.iter().map(|&v| op.sim(v).to_bits()).collect();
            let dev = unary(gpu, op, &x)?;
            let desc = || {
                format!(
                    "{}(x) over {} inputs, seed {}",
                    op.name(),
                    x.len(),
                    opts.seed
                )
            };
            tally.compare(&desc, op.name(), &[x.len()], DType::F32, &sim, &dev);
        }
        for dt in ALL_DTYPES {
            let sim: Vec<u32> = x.iter().map(|&v| dt.round(v).to_bits()).collect();
            let dev = round(gpu, dt, &x)?;
            let desc = || format!("round to {dt} over {} inputs, seed {}", x.len(), opts.seed);
            tally.compare(
                &desc,
                &format!("round_{dt}"),
                &[x.len()],
                DType::F32,
                &sim,
                &dev,
            );
        }
        tally.case_done();
    }
    Ok(tally.finish())
}
