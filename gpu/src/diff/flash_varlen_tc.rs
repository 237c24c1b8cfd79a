//! Diff of the tensor-core varlen prefill: the sim with the device's
//! matrix-core model (sm_90 on an H100 and on the host at wave 32, gfx942 on
//! the host at wave 64, the GPU's own CDNA generation on AMD) against the
//! HIP kernel, bit for bit. Random batches with sk >= sq (prefill, extend
//! on a context), causal or not, windows, ALiBi, sinks, soft-cap, GQA, head
//! sizes 64, 128, 96 and MLA-prefill-shaped 192/128, key tiles of 16 to 64
//! keys (to 128 on GPUs), sequences spanning several 16-row waves and several
//! 64-row workgroups. The host device runs every matrix instruction through
//! the model in C++, so its cases are smaller.

use super::flash_varlen::{draw_mask, draw_tensors, Tensors};
use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::flash_varlen_tc::{
    defines, flash_attn_varlen_tc as gpu_varlen_tc, matrix_target, DEFAULT_WARPS,
};
use crate::runtime::{Result, Target};
use attnlab_shared::dtype::DType;
use attnlab_sim::kernels::flash_varlen_tc::{
    varlen_tc as sim_varlen_tc, VarlenTcArgs, VarlenTcParams,
};
use rand::seq::SliceRandom;
use rand::Rng;

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let target = matrix_target(&gpu.dev.info().target)?;
    let host = matches!(gpu.dev.info().target, Target::Host { .. });
    if !host {
        // every shape the draws below can take, compiled in parallel
        let mut variants = Vec::new();
        for dt in [DType::F16, DType::Bf16] {
            for (d, dv, bns) in [
                (64usize, 64usize, &[16usize, 64, 128][..]),
                (128, 128, &[16, 64, 128][..]),
                (96, 96, &[64][..]),
                (192, 128, &[64][..]),
            ] {
                for &bn in bns {
                    variants.push(defines(dt, d, dv, bn, DEFAULT_WARPS));
                }
            }
        }
        gpu.precompile("flash_varlen_tc", &variants)?;
    }
    let mut rng = rng_for("flash_varlen_tc", opts.seed);
    let mut tally = Tally::new("flash_varlen_tc");
    for done in 0..opts.cases {
        if !opts.more(done) {
            break;
        }
        let dtype = *[DType::F16, DType::Bf16]
            .choose(&mut rng)
            .expect("non-empty");
        let hk = *[1usize, 2].choose(&mut rng).expect("non-empty");
        let hq = hk * *[1usize, 2, 4].choose(&mut rng).expect("non-empty");
        let (d, dv) = *[(64usize, 64usize), (128, 128), (96, 96), (192, 128)]
            .choose(&mut rng)
            .expect("non-empty");
        // Key tiles: 16, 32 (host) or 128 (GPUs) beside the bench's 64 for
        // the two common head sizes; 64 for the others (each shape is one
        // compile on the device).
        let block_n = match (d, host) {
            (64 | 128, true) => *[16usize, 32, 64].choose(&mut rng).expect("non-empty"),
            (64 | 128, false) => *[16usize, 64, 64, 128].choose(&mut rng).expect("non-empty"),
            _ => 64,
        };
        let (batch, long, short, extra) = if host {
            (rng.gen_range(1..=2usize), 40, 20, 40)
        } else {
            (rng.gen_range(1..=3usize), 200, 48, 150)
        };
        let (mut cu_q, mut cu_k) = (vec![0i32], vec![0i32]);
        for _ in 0..batch {
            // Mostly short rows; a quarter long enough for several waves
            // (16 rows) and, off the host, several 64-row workgroups.
            let sq = if rng.gen_bool(0.25) {
                rng.gen_range(short + 1..=long)
            } else {
                rng.gen_range(1..=short)
            };
            let sk = sq
                + if rng.gen_bool(0.5) {
                    0
                } else {
                    rng.gen_range(0..=extra)
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
        let tc = VarlenTcParams::new(hq, hk, d, dtype, 1.0 / (d as f32).sqrt(), target)?;
        let mut varlen = tc.varlen.to_builder();
        varlen.head_size_v = dv;
        varlen.block_n = block_n;
        draw_mask(&mut rng, &mut varlen);
        varlen.sinks = sinks.as_deref();
        varlen.alibi_slopes = alibi.as_deref();
        let p = VarlenTcParams {
            varlen: varlen.build()?,
            ..tc
        };
        let args = VarlenTcArgs::new(&q, &k, &v, &cu_q, &cu_k, &p)?;
        let sim = sim_varlen_tc(&args)?;
        let (out, lse) = gpu_varlen_tc(gpu, &args)?;
        let vp = &p.varlen;
        let desc = || {
            format!(
                "{} {dtype} {hq}/{hk} heads, d {d}/{dv}, causal {}, window {:?}, softcap {:?}, sinks {}, alibi {}, block_n {}, cu_q {cu_q:?}, cu_k {cu_k:?}",
                target.name(),
                vp.causal(),
                vp.window(),
                vp.score().softcap,
                vp.sinks().is_some(),
                vp.alibi_slopes().is_some(),
                vp.block_n()
            )
        };
        tally.compare_values(&desc, "out", &[tq, hq, dv], dtype, sim.out(), &out);
        tally.compare_values(&desc, "lse", &[hq, tq], DType::F32, sim.lse(), &lse);
        tally.case_done();
    }
    Ok(tally.finish())
}
