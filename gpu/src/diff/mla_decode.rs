//! Diff of absorbed MLA decode (stage 1 + stage 2) in both of the sim's
//! configurations: TRITON_MLA's `decode_attention_fwd` (even splits over a
//! block table) and AITER's `mla_decode_fwd` (page-size-1 or paged
//! `kv_indices`, causal multi-token rows, whole-granule splits, AITER's own
//! split count). Latents 512 + 64 and small ones, head counts that leave a
//! partial BLOCK_H, 16-bit and fp8 latent caches.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::mla_decode::decode_attention_fwd as gpu_decode;
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_sim::kernels::mla_cache::LatentCache;
use attnlab_sim::kernels::mla_decode::{
    aiter_num_kv_splits, aiter_split_granularity, decode as sim_decode, mla_decode_fwd,
    AiterPaging, KvRow, KvSplits, MlaDecodeArgs, MlaDecodeParams,
};
use attnlab_sim::kernels::unified_attention::MI300X_CU_COUNT;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    *xs.choose(rng).expect("non-empty choice")
}

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("mla_decode", opts.seed);
    let mut tally = Tally::new("mla_decode");
    for done in 0..opts.cases {
        if !opts.more(done) {
            break;
        }
        let q_dtype = pick(&mut rng, &[DType::F16, DType::Bf16]);
        let cache_dtype = pick(
            &mut rng,
            &[q_dtype, q_dtype, DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn],
        );
        let (lkv, rope) = pick(&mut rng, &[(512usize, 64usize), (128, 32), (64, 16)]);
        let num_heads = pick(&mut rng, &[1usize, 8, 16, 20, 32]);
        let aiter = rng.gen_bool(0.5);
        let page_size = if aiter {
            pick(&mut rng, &[1usize, 1, 16, 64])
        } else {
            pick(&mut rng, &[1usize, 16, 64])
        };
        // Requests: KV length and (AITER) query rows each.
        let num_reqs = rng.gen_range(1..=5usize);
        let reqs: Vec<(usize, usize)> = (0..num_reqs)
            .map(|_| {
                let nq = if aiter { rng.gen_range(1..=3usize) } else { 1 };
                (rng.gen_range(nq..=400usize), nq)
            })
            .collect();
        let pages_per: Vec<usize> = reqs.iter().map(|&(l, _)| l.div_ceil(page_size)).collect();
        let num_blocks = pages_per.iter().sum::<usize>() + rng.gen_range(0..3);
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
            lse_dtype: if aiter { DType::F32 } else { q_dtype },
            faults: attnlab_shared::fault::FaultSet::NONE,
        };
        let total_q: usize = reqs.iter().map(|r| r.1).sum();
        let w = lkv + rope;
        let q: Vec<f32> = (0..total_q * num_heads * w)
            .map(|_| q_dtype.round(rng.gen_range(-2.0f32..2.0)))
            .collect();
        let (sim, dev, what) = if aiter {
            let (mut qo, mut kvp, mut kvi, mut last) = (vec![0i32], vec![0i32], vec![], vec![]);
            let mut next = ids.into_iter();
            for (&(l, nq), &np) in reqs.iter().zip(&pages_per) {
                qo.push(qo.last().copied().unwrap_or(0) + nq as i32);
                kvi.extend(next.by_ref().take(np));
                kvp.push(kvi.len() as i32);
                last.push((l - (np - 1) * page_size) as i32);
            }
            let paging = AiterPaging {
                qo_indptr: qo,
                kv_indptr: kvp,
                kv_indices: kvi,
                kv_last_page_lens: last,
                page_size,
            };
            let causal = rng.gen_bool(0.7);
            let num_splits = if rng.gen_bool(0.5) {
                Some(rng.gen_range(1..=16usize))
            } else {
                None
            };
            let max_q = reqs.iter().map(|r| r.1).max().unwrap_or(1);
            let total_kv = reqs.iter().map(|r| r.0).sum();
            let splits = KvSplits::Granular {
                num_kv_splits: num_splits
                    .unwrap_or_else(|| aiter_num_kv_splits(num_reqs, total_kv, MI300X_CU_COUNT)),
                granularity: aiter_split_granularity(num_heads, max_q, cache_dtype.is_fp8()),
            };
            let sim = mla_decode_fwd(&q, &cache, &paging, causal, num_splits, MI300X_CU_COUNT, &p)?;
            let rows = paging.rows(causal);
            let dev = gpu_decode(gpu, &MlaDecodeArgs::new(&q, &rows, &cache, splits, &p)?)?;
            (
                sim,
                dev,
                format!("aiter causal {causal} {splits:?} {paging:?}"),
            )
        } else {
            let splits = KvSplits::Even {
                num_kv_splits: rng.gen_range(1..=16),
            };
            let mut next = ids.into_iter();
            let tables: Vec<Vec<i32>> = pages_per
                .iter()
                .map(|&np| next.by_ref().take(np).collect())
                .collect();
            let rows: Vec<KvRow> = reqs
                .iter()
                .zip(&tables)
                .map(|(&(l, _), t)| KvRow {
                    pages: t,
                    page_size,
                    kv_len: l,
                    split_len: l,
                })
                .collect();
            let args = MlaDecodeArgs::new(&q, &rows, &cache, splits, &p)?;
            let sim = sim_decode(&args)?;
            let dev = gpu_decode(gpu, &args)?;
            (
                sim,
                dev,
                format!("triton {splits:?} block tables {tables:?}"),
            )
        };
        let desc = || {
            format!(
                "{num_heads} heads, q {q_dtype}, latent {lkv}+{rope} {cache_dtype} (scale {}), page {page_size}, requests (kv, q) {reqs:?}, {what}",
                p.kv_scale
            )
        };
        tally.compare_values(
            &desc,
            "o",
            &[total_q, num_heads, lkv],
            p.out_dtype,
            &sim.out,
            &dev.out,
        );
        tally.compare_values(
            &desc,
            "lse",
            &[total_q, num_heads],
            p.lse_dtype,
            &sim.lse,
            &dev.lse,
        );
        tally.case_done();
    }
    Ok(tally.finish())
}
