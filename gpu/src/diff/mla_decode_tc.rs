//! Diff of the tensor-core absorbed MLA decode (stage 1 on the matrix
//! instruction + the shared stage 2) against its sim twin on the device's
//! own model (sm_90 on NVIDIA and at host wave 32, gfx942 on CDNA3 and at
//! host wave 64): TRITON_MLA's even splits and AITER-style granules,
//! block tables of several page sizes, the 512 + 64 latent and small ones,
//! head counts that leave a partial 16-row block, 16-bit and fp8 latent
//! caches, rows with no key and more splits than keys.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::mla_decode_tc::decode_attention_fwd_tc as gpu_tc;
use crate::runtime::{Result, Target};
use attnlab_shared::dtype::DType;
use attnlab_shared::fault::FaultSet;
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_sim::kernels::mla_cache::LatentCache;
use attnlab_sim::kernels::mla_decode::{KvRow, KvSplits, MlaDecodeArgs, MlaDecodeParams};
use attnlab_sim::kernels::mla_decode_tc::{decode_tc as sim_tc, MlaDecodeTcArgs};
use attnlab_sim::numerics::mma::MatrixTarget;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    *xs.choose(rng).expect("non-empty choice")
}

/// The model this device's matrix instruction follows.
fn target_of(gpu: &Gpu) -> Result<MatrixTarget> {
    Ok(match &gpu.dev.info().target {
        Target::Host { wave: 32 } | Target::Cuda { .. } => MatrixTarget::Sm90,
        Target::Host { .. } => MatrixTarget::Gfx942,
        Target::Amd { gfx } => MatrixTarget::parse(gfx)?,
    })
}

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let target = target_of(gpu)?;
    let mut rng = rng_for("mla_decode_tc", opts.seed);
    let mut tally = Tally::new("mla_decode_tc");
    for done in 0..opts.cases {
        if !opts.more(done) {
            break;
        }
        let q_dtype = pick(&mut rng, &[DType::F16, DType::Bf16]);
        let cache_dtype = pick(
            &mut rng,
            &[q_dtype, q_dtype, DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn],
        );
        let (lkv, rope) = pick(
            &mut rng,
            &[(512usize, 64usize), (128, 32), (64, 16), (32, 0)],
        );
        let num_heads = pick(&mut rng, &[1usize, 8, 16, 20, 32]);
        let page_size = pick(&mut rng, &[1usize, 16, 64]);
        let num_rows = rng.gen_range(1..=4usize);
        let lens: Vec<usize> = (0..num_rows)
            .map(|_| {
                if rng.gen_bool(0.1) {
                    0
                } else {
                    rng.gen_range(1..=300usize)
                }
            })
            .collect();
        let pages_per: Vec<usize> = lens.iter().map(|l| l.div_ceil(page_size)).collect();
        let num_blocks = pages_per.iter().sum::<usize>() + rng.gen_range(1..3);
        let layout = MlaLayout::new(num_blocks, page_size, lkv, rope, cache_dtype)?;
        let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
        ids.shuffle(&mut rng);
        let spread = if cache_dtype.is_fp8() { 200.0 } else { 2.0 };
        let data = (0..layout.numel())
            .map(|_| cache_dtype.round(rng.gen_range(-spread..spread)))
            .collect();
        let cache = LatentCache::from_tensor(layout, data)?;
        let p = MlaDecodeParams {
            num_heads,
            scale: rng.gen_range(0.03f32..0.12),
            q_dtype,
            kv_scale: if cache_dtype.is_fp8() {
                rng.gen_range(0.005f32..0.05)
            } else {
                1.0
            },
            out_dtype: q_dtype,
            lse_dtype: pick(&mut rng, &[q_dtype, DType::F32]),
            faults: FaultSet::NONE,
        };
        let w = lkv + rope;
        let q: Vec<f32> = (0..num_rows * num_heads * w)
            .map(|_| q_dtype.round(rng.gen_range(-2.0f32..2.0)))
            .collect();
        let num_kv_splits = rng.gen_range(1..=12usize);
        let splits = if rng.gen_bool(0.75) {
            KvSplits::Even { num_kv_splits }
        } else {
            KvSplits::Granular {
                num_kv_splits,
                granularity: pick(&mut rng, &[16usize, 32, 64]),
            }
        };
        let mut next = ids.into_iter();
        let tables: Vec<Vec<i32>> = pages_per
            .iter()
            .map(|&np| next.by_ref().take(np).collect())
            .collect();
        let rows: Vec<KvRow> = lens
            .iter()
            .zip(&tables)
            .map(|(&l, t)| KvRow {
                pages: t,
                page_size,
                kv_len: l,
                split_len: l,
            })
            .collect();
        let args =
            MlaDecodeTcArgs::new(MlaDecodeArgs::new(&q, &rows, &cache, splits, &p)?, target)?;
        let sim = sim_tc(&args)?;
        let dev = gpu_tc(gpu, &args)?;
        let desc = || {
            format!(
                "{} {num_heads} heads, q {q_dtype}, latent {lkv}+{rope} {cache_dtype} (scale {}), page {page_size}, kv lens {lens:?}, {splits:?}, block tables {tables:?}",
                target.name(),
                p.kv_scale
            )
        };
        tally.compare_values(
            &desc,
            "o",
            &[num_rows, num_heads, lkv],
            p.out_dtype,
            &sim.out,
            &dev.out,
        );
        tally.compare_values(
            &desc,
            "lse",
            &[num_rows, num_heads],
            p.lse_dtype,
            &sim.lse,
            &dev.lse,
        );
        tally.case_done();
    }
    Ok(tally.finish())
}
