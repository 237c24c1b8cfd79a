//! Diff of `concat_and_cache_mla`: DeepSeek-sized (512 + 64) and small
//! latents, f16/bf16 caches and both fp8 flavours with random scales, block
//! sizes 1/16/64, padded slots; the cache starts from random contents.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::mla_cache::concat_and_cache_mla as gpu_write;
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_sim::kernels::mla_cache::{
    concat_and_cache_mla as sim_write, LatentCache, LatentWrite,
};
use rand::seq::SliceRandom;
use rand::Rng;

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("mla_cache", opts.seed);
    let mut tally = Tally::new("mla_cache");
    for done in 0..opts.cases {
        if !opts.more(done) {
            break;
        }
        let src = *[DType::F16, DType::Bf16]
            .choose(&mut rng)
            .expect("non-empty");
        let cache_dtype = *[src, DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn]
            .choose(&mut rng)
            .expect("non-empty");
        let (lkv, rope) = *[(512usize, 64usize), (64, 16), (128, 0)]
            .choose(&mut rng)
            .expect("non-empty");
        let block_size = *[1usize, 16, 64].choose(&mut rng).expect("non-empty");
        let num_blocks = rng.gen_range(1..6usize);
        let layout = MlaLayout::new(num_blocks, block_size, lkv, rope, cache_dtype)?;
        let scale = if cache_dtype.is_fp8() {
            rng.gen_range(0.01f32..2.0)
        } else {
            1.0
        };
        let spread = if cache_dtype.is_fp8() { 300.0 } else { 8.0 };
        let vals = |rng: &mut rand_chacha::ChaCha8Rng, n: usize, dt: DType| -> Vec<f32> {
            (0..n)
                .map(|_| dt.round(rng.gen_range(-spread..spread)))
                .collect()
        };
        let init = LatentCache {
            layout,
            data: vals(&mut rng, layout.numel(), cache_dtype),
        };
        let mut slots: Vec<i64> = (0..(num_blocks * block_size) as i64).collect();
        slots.shuffle(&mut rng);
        let t = rng.gen_range(1..=slots.len().min(24));
        let mut slot_mapping = slots[..t].to_vec();
        for s in slot_mapping.iter_mut() {
            if rng.gen_bool(0.1) {
                *s = -1;
            }
        }
        let (kv_c, k_pe) = (vals(&mut rng, t * lkv, src), vals(&mut rng, t * rope, src));
        let mut sim = init.clone();
        sim_write(&mut sim, &kv_c, &k_pe, &slot_mapping, scale)?;
        let mut dev_cache = init;
        let args = LatentWrite::new(&mut dev_cache, &kv_c, &k_pe, &slot_mapping, scale)?;
        let dev = gpu_write(gpu, &args, src)?;
        let desc = || {
            format!("{src} -> {cache_dtype} latent {lkv}+{rope}, {num_blocks} blocks of {block_size}, scale {scale}, slots {slot_mapping:?}")
        };
        tally.compare_values(
            &desc,
            "kv_cache",
            &layout.shape(),
            cache_dtype,
            &sim.data,
            &dev,
        );
        tally.case_done();
    }
    Ok(tally.finish())
}
