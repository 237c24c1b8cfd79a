//! Diff of varlen flash attention with LSE: random batches with sk >= sq
//! (prefill, extend on a context, chunk-shaped calls), causal or not,
//! windows, ALiBi, sinks, soft-cap, GQA, CK's block_n (64/128) and 32, and
//! MLA-prefill-shaped V head sizes (Dqk 192, Dv 128). Every shape but head
//! size 72 (Dv not a multiple of 16: the scalar fallback) takes the
//! register-tiled kernel; a quarter of the sequences span several of its
//! 64-row blocks.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::flash_varlen::flash_attn_varlen as gpu_varlen;
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_sim::kernels::flash_varlen::{
    ck_block_n, varlen as sim_varlen, VarlenArgs, VarlenParams, VarlenParamsBuilder,
};
use attnlab_sim::kernels::softmax::ScoreParams;
use rand::seq::SliceRandom;
use rand::Rng;

/// A varlen case's random tensors: Q, K, V values of the dtype, then
/// sinks and ALiBi slopes (each present or not), drawn in this order by
/// every `flash_attn_varlen` flavour's diff.
pub(crate) struct Tensors {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub sinks: Option<Vec<f32>>,
    pub alibi: Option<Vec<f32>>,
}

/// Draws [`Tensors`] for `(total_q, total_k)` tokens, `(hq, hk)` heads and
/// head sizes `(d, dv)`.
pub(crate) fn draw_tensors(
    rng: &mut impl Rng,
    dtype: DType,
    (tq, tk): (usize, usize),
    (hq, hk): (usize, usize),
    (d, dv): (usize, usize),
) -> Tensors {
    let mut vals = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| dtype.round(rng.gen_range(-2.0f32..2.0)))
            .collect()
    };
    let (q, k, v) = (vals(tq * hq * d), vals(tk * hk * d), vals(tk * hk * dv));
    let sinks: Option<Vec<f32>> = rng
        .gen_bool(0.2)
        .then(|| (0..hq).map(|_| rng.gen_range(-3.0f32..3.0)).collect());
    let alibi: Option<Vec<f32>> = rng
        .gen_bool(0.15)
        .then(|| (0..hq).map(|h| 2f32.powi(-(h as i32 % 8) - 1)).collect());
    Tensors {
        q,
        k,
        v,
        sinks,
        alibi,
    }
}

/// Draws the mask and score options of `p`, in this order: causal (80%), a
/// window of 1..64 (30%), a soft-cap of 5..50 (30%).
pub(crate) fn draw_mask(rng: &mut impl Rng, p: &mut VarlenParamsBuilder) {
    p.causal = rng.gen_bool(0.8);
    p.window = rng.gen_bool(0.3).then(|| rng.gen_range(1..64));
    p.score = ScoreParams::new(
        p.score.scale,
        rng.gen_bool(0.3).then(|| rng.gen_range(5.0f32..50.0)),
    );
}

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("flash_varlen", opts.seed);
    let mut tally = Tally::new("flash_varlen");
    for done in 0..opts.cases {
        if !opts.more(done) {
            break;
        }
        let dtype = *[DType::F16, DType::Bf16]
            .choose(&mut rng)
            .expect("non-empty");
        let hk = *[1usize, 2, 4].choose(&mut rng).expect("non-empty");
        let hq = hk * *[1usize, 2, 4, 8].choose(&mut rng).expect("non-empty");
        let (d, dv) = *[
            (64usize, 64usize),
            (128, 128),
            (192, 128),
            (96, 96),
            (72, 72),
        ]
        .choose(&mut rng)
        .expect("non-empty");
        let batch = rng.gen_range(1..=4usize);
        let (mut cu_q, mut cu_k) = (vec![0i32], vec![0i32]);
        for _ in 0..batch {
            // Mostly short rows; a quarter long enough for several row
            // blocks of the tiled kernel (64 rows) and full key tiles.
            let sq = if rng.gen_bool(0.25) {
                rng.gen_range(49..=200)
            } else {
                rng.gen_range(1..=48)
            };
            let sk = sq
                + if rng.gen_bool(0.5) {
                    0
                } else {
                    rng.gen_range(0..=150)
                };
            cu_q.push(cu_q.last().copied().unwrap_or(0) + sq);
            cu_k.push(cu_k.last().copied().unwrap_or(0) + sk);
        }
        let (tq, tk) = (
            *cu_q.last().unwrap_or(&0) as usize,
            *cu_k.last().unwrap_or(&0) as usize,
        );
        let Tensors {
            q,
            k,
            v,
            sinks,
            alibi,
        } = draw_tensors(&mut rng, dtype, (tq, tk), (hq, hk), (d, dv));
        let mut p = VarlenParams::builder(hq, hk, d, dtype, 1.0 / (d as f32).sqrt());
        p.head_size_v = dv;
        draw_mask(&mut rng, &mut p);
        p.sinks = sinks.as_deref();
        p.alibi_slopes = alibi.as_deref();
        p.block_n = if rng.gen_bool(0.25) {
            32
        } else {
            ck_block_n(d)
        };
        let p = p.build()?;
        let args = VarlenArgs::new(&q, &k, &v, &cu_q, &cu_k, &p)?;
        let sim = sim_varlen(&args);
        let (out, lse) = gpu_varlen(gpu, &args)?;
        let desc = || {
            format!(
                "{dtype} {hq}/{hk} heads, d {d}/{dv}, causal {}, window {:?}, softcap {:?}, sinks {}, alibi {}, block_n {}, cu_q {cu_q:?}, cu_k {cu_k:?}",
                p.causal(),
                p.window(),
                p.score().softcap,
                p.sinks().is_some(),
                p.alibi_slopes().is_some(),
                p.block_n()
            )
        };
        tally.compare_values(&desc, "out", &[tq, hq, dv], dtype, sim.out(), &out);
        tally.compare_values(&desc, "lse", &[hq, tq], DType::F32, sim.lse(), &lse);
        tally.case_done();
    }
    Ok(tally.finish())
}
