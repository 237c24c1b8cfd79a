//! Diff of the KV-cache writers: every writer into each layout it covers,
//! random dtypes (f16/bf16/f32 sources; same-dtype or fp8 fnuz/fn caches with
//! random scales), block sizes 1/16/32 where the layout allows them, GQA head
//! counts, padded (-1) slots and non-contiguous slot sets. The cache starts
//! from random contents so untouched elements are checked too.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::reshape_and_cache::reshape_and_cache as gpu_write;
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::KvLayout;
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::reshape_and_cache::{
    reshape_and_cache as sim_write, CacheWrite, CacheWriter,
};
use rand::seq::SliceRandom;
use rand::Rng;

const WRITERS: [CacheWriter; 4] = [
    CacheWriter::ReshapeAndCache,
    CacheWriter::ReshapeAndCacheFlash,
    CacheWriter::TritonReshapeAndCacheFlash,
    CacheWriter::ReshapeAndCacheShuffleTriton,
];

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("reshape_and_cache", opts.seed);
    let mut tally = Tally::new("reshape_and_cache");
    let mut drawn = 0;
    while opts.more(drawn) {
        let writer = *WRITERS.choose(&mut rng).expect("non-empty");
        let kind = *writer.layouts().choose(&mut rng).expect("non-empty");
        let dtype = *[DType::F16, DType::Bf16, DType::F32]
            .choose(&mut rng)
            .expect("non-empty");
        let kv_dtype = *[dtype, DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn]
            .choose(&mut rng)
            .expect("non-empty");
        let block_size = *[1usize, 16, 32].choose(&mut rng).expect("non-empty");
        let num_kv_heads = *[1usize, 2, 8].choose(&mut rng).expect("non-empty");
        let head_size = *[64usize, 128, 80].choose(&mut rng).expect("non-empty");
        let num_blocks = rng.gen_range(1..8usize);
        let Ok(layout) = KvLayout::new(
            kind,
            num_blocks,
            block_size,
            num_kv_heads,
            head_size,
            kv_dtype,
        ) else {
            continue; // not a shape this layout accepts: draw again
        };
        let mut cfg = AttnConfig::builder(num_kv_heads * 4, num_kv_heads, head_size, dtype);
        cfg.kv_dtype = kv_dtype;
        if kv_dtype.is_fp8() {
            cfg.k_scale = rng.gen_range(0.01f32..2.0);
            cfg.v_scale = rng.gen_range(0.01f32..2.0);
        }
        let cfg = cfg.build()?;
        let num_slots = num_blocks * block_size;
        let mut slots: Vec<i64> = (0..num_slots as i64).collect();
        slots.shuffle(&mut rng);
        let num_tokens = rng.gen_range(1..=num_slots.min(24));
        let mut slot_mapping: Vec<i64> = slots[..num_tokens].to_vec();
        for s in slot_mapping.iter_mut() {
            if rng.gen_bool(0.1) {
                *s = -1;
            }
        }
        let n = num_tokens * num_kv_heads * head_size;
        let spread = if kv_dtype.is_fp8() { 300.0 } else { 8.0 };
        let mut draw = |len: usize, dt: DType| -> Vec<f32> {
            (0..len)
                .map(|_| dt.round(rng.gen_range(-spread..spread)))
                .collect()
        };
        let (key, value) = (draw(n, dtype), draw(n, dtype));
        let init = KvCache {
            layout,
            k: draw(layout.numel(), kv_dtype),
            v: draw(layout.numel(), kv_dtype),
        };
        let mut sim_cache = init.clone();
        sim_write(writer, &mut sim_cache, &key, &value, &slot_mapping, &cfg)?;
        let mut dev_cache = init;
        let args = CacheWrite::new(writer, &mut dev_cache, &key, &value, &slot_mapping, &cfg)?;
        gpu_write(gpu, args)?;
        let desc = || {
            format!(
                "{} into {} (nb {num_blocks}, bs {block_size}, {num_kv_heads} kv heads x {head_size}), {dtype} -> {kv_dtype}, scales {}/{}, slots {:?}",
                writer.kernel_name(),
                kind.name(),
                cfg.k_scale(),
                cfg.v_scale(),
                slot_mapping
            )
        };
        let shape = layout.k_shape();
        let bits = |v: &[f32]| v.iter().map(|&x| kv_dtype.to_bits(x)).collect::<Vec<u32>>();
        tally.compare(
            &desc,
            "key_cache",
            &shape,
            kv_dtype,
            &bits(&sim_cache.k),
            &bits(&dev_cache.k),
        );
        tally.compare(
            &desc,
            "value_cache",
            &layout.v_shape(),
            kv_dtype,
            &bits(&sim_cache.v),
            &bits(&dev_cache.v),
        );
        tally.case_done();
        drawn += 1;
    }
    Ok(tally.finish())
}
