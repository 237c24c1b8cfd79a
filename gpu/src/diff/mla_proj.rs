//! Diff of the MLA projections (`kv_b_proj` up-projection, the W_UK query
//! absorption, the W_UV output projection): DeepSeek's 512-wide latent with
//! 128 + 64 query heads down to small latents, 1..128 heads (whole models
//! and TP shards of them), token counts that leave partial 64-row tiles,
//! bf16 / f16 / f32 activations.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::mla_proj as gpu;
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::model::MlaDims;
use attnlab_sim::kernels::mla_proj::{absorb, output, up, MlaWeights, ProjArgs, Projection};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    *xs.choose(rng).expect("non-empty choice")
}

fn values(rng: &mut ChaCha8Rng, n: usize, dtype: DType) -> Vec<f32> {
    (0..n)
        .map(|_| dtype.round(rng.gen_range(-2.0f32..2.0)))
        .collect()
}

pub fn run(dev: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("mla_proj", opts.seed);
    let mut tally = Tally::new("mla_proj");
    for done in 0..opts.cases {
        if !opts.more(done) {
            break;
        }
        let dtype = pick(
            &mut rng,
            &[DType::Bf16, DType::Bf16, DType::F16, DType::F32],
        );
        // (Lkv, R, P, V): DeepSeek-V3 and scaled-down shapes, odd sizes for partial tiles.
        let (lkv, r, pn, vd) = pick(
            &mut rng,
            &[
                (512usize, 64usize, 128usize, 128usize),
                (256, 64, 32, 32),
                (448, 64, 64, 96),
                (24, 8, 5, 7),
            ],
        );
        let dims = MlaDims {
            kv_lora_rank: lkv,
            qk_rope_head_dim: r,
            qk_nope_head_dim: pn,
            v_head_dim: vd,
        };
        // Keep a case's work bounded: many heads only with narrow heads.
        let model_heads = if pn * vd >= 128 * 96 {
            pick(&mut rng, &[1usize, 16, 128])
        } else {
            pick(&mut rng, &[1usize, 3, 16, 20, 128])
        };
        let tp = pick(&mut rng, &[1usize, 2, 8]);
        let full = MlaWeights::random(model_heads, dims, dtype, rng.gen())?;
        let w = if model_heads % tp == 0 {
            full.shard(rng.gen_range(0..tp), tp)?
        } else {
            full
        };
        let n = w.num_heads();
        // At most ~2^25 fmas per projection on the emulator side.
        let per_token = n * (pn + vd) * lkv;
        let t = pick(&mut rng, &[1usize, 7, 64, 65, 130])
            .min((1 << 25) / per_token)
            .max(1);
        let kv_c = values(&mut rng, t * lkv, dtype);
        let q = values(&mut rng, t * n * (pn + r), dtype);
        let o_latent = values(&mut rng, t * n * lkv, dtype);
        let desc =
            || format!("{n} heads (TP shard of {model_heads}), {t} tokens, {dims:?}, {dtype}");
        let args = ProjArgs::new(Projection::KvUp, &kv_c, &w, dtype)?;
        let (sk, sv) = up(&args)?;
        let (gk, gv) = gpu::up_project(dev, &args)?;
        tally.compare_values(&desc, "k_nope", &[t, n, pn], dtype, &sk, &gk);
        tally.compare_values(&desc, "v", &[t, n, vd], dtype, &sv, &gv);
        let args = ProjArgs::new(Projection::AbsorbQuery, &q, &w, dtype)?;
        let sq = absorb(&args)?;
        let gq = gpu::absorb_query(dev, &args)?;
        tally.compare_values(&desc, "mqa_q", &[t, n, lkv + r], dtype, &sq, &gq);
        let args = ProjArgs::new(Projection::Output, &o_latent, &w, dtype)?;
        let so = output(&args)?;
        let go = gpu::project_output(dev, &args)?;
        tally.compare_values(&desc, "out", &[t, n, vd], dtype, &so, &go);
        tally.case_done();
    }
    Ok(tally.finish())
}
