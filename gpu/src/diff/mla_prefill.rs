//! Diff of `gather_and_maybe_dequant_cache`: the chunked-context gather of
//! the MLA prefill over the chunks `plan_mla_context_chunks` cuts (small
//! workspaces, so requests split block-aligned across chunks and continue
//! mid-sequence), block sizes 1 / 16 / 64 over non-contiguous block tables,
//! 576-wide and small latents, 16-bit and fp8 caches with scales.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::mla_prefill::{gather_and_maybe_dequant_cache as gpu_gather, gathered_dtype};
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_sim::kernels::mla_cache::LatentCache;
use attnlab_sim::kernels::mla_prefill::{
    gather_latent as sim_gather, plan_mla_context_chunks, LatentGather,
};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    *xs.choose(rng).expect("non-empty choice")
}

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("mla_prefill", opts.seed);
    let mut tally = Tally::new("mla_prefill");
    for done in 0..opts.cases {
        if !opts.more(done) {
            break;
        }
        let to = pick(&mut rng, &[DType::Bf16, DType::F16]);
        let cache_dtype = pick(&mut rng, &[to, to, DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn]);
        let (lkv, rope) = pick(&mut rng, &[(512usize, 64usize), (256, 64), (24, 8)]);
        let bs = pick(&mut rng, &[1usize, 16, 64]);
        // Prefill requests' cached context lengths (0: nothing to gather).
        let num_reqs = rng.gen_range(1..=5usize);
        let ctx: Vec<usize> = (0..num_reqs)
            .map(|_| {
                if rng.gen_bool(0.2) {
                    0
                } else {
                    rng.gen_range(1..=300usize)
                }
            })
            .collect();
        let per_req: Vec<usize> = ctx
            .iter()
            .map(|&c| c.div_ceil(bs) + rng.gen_range(0..2))
            .collect();
        let num_blocks = per_req.iter().sum::<usize>() + rng.gen_range(1..4);
        let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
        ids.shuffle(&mut rng);
        let mut next = ids.into_iter();
        let tables: Vec<Vec<i32>> = per_req
            .iter()
            .map(|&n| next.by_ref().take(n).collect())
            .collect();
        let rows: Vec<&[i32]> = tables.iter().map(|t| t.as_slice()).collect();
        let layout = MlaLayout::new(num_blocks, bs, lkv, rope, cache_dtype)?;
        let spread = if cache_dtype.is_fp8() { 200.0 } else { 2.0 };
        let data = (0..layout.numel())
            .map(|_| cache_dtype.round(rng.gen_range(-spread..spread)))
            .collect();
        let cache = LatentCache::from_tensor(layout, data)?;
        let k_scale = if cache_dtype.is_fp8() {
            rng.gen_range(0.005f32..0.05)
        } else {
            1.0
        };
        let workspace = pick(&mut rng, &[1usize, 2, 8, 64]) * 64;
        let chunks = plan_mla_context_chunks(&ctx, workspace, bs)?;
        let dst = gathered_dtype(cache_dtype, to);
        for (ci, chunk) in chunks.iter().enumerate() {
            let desc = || {
                format!(
                    "chunk {ci} {:?} of contexts {ctx:?} (workspace {workspace}), block {bs}, latent {lkv}+{rope} {cache_dtype} scale {k_scale} -> {to}, tables {tables:?}",
                    chunk.parts
                )
            };
            let args = LatentGather::new(&cache, &rows, chunk, k_scale, to)?;
            let sim = sim_gather(&args);
            let dev = gpu_gather(gpu, &args)?;
            tally.compare_values(
                &desc,
                "workspace",
                &[chunk.total_tokens(), lkv + rope],
                dst,
                &sim,
                &dev,
            );
        }
        tally.case_done();
    }
    Ok(tally.finish())
}
