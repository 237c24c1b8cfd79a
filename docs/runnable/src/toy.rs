//! Seeded toy batches for the book's boxes: requests `(context_len,
//! query_len)`, their K/V for every position (context included), the paged
//! metadata of the step that computes the `query_len` new tokens, and the
//! f64 reference ([`attnlab_sim::reference`]) the boxes check against.

use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_sim::backends::AttentionBackend;
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::reference::{self, RefAttention};
use attnlab_sim::workload::seeded_values;

/// One step over a few requests, with every position's K/V already drawn.
#[derive(Debug, Clone)]
pub struct Batch {
    pub cfg: AttnConfig,
    pub block_size: usize,
    pub num_blocks: usize,
    /// The step's paged metadata (slots of the new tokens only).
    pub meta: AttentionMetadata,
    /// `[new tokens, Hq, D]`, exact in `cfg.dtype`.
    pub query: Vec<f32>,
    /// `[all positions, Hkv, D]`, request by request, context first.
    pub key: Vec<f32>,
    pub value: Vec<f32>,
    /// The cache slot of every position of `key`/`value`.
    pub slots: Vec<i64>,
}

impl Batch {
    /// Requests `(context_len, query_len)`; request `i`'s blocks are taken
    /// from the top of the cache downwards, so block ids are not in order
    /// (block 0 stays unused, as vLLM's null block).
    pub fn new(
        cfg: AttnConfig,
        block_size: usize,
        reqs: &[(usize, usize)],
        seed: u64,
    ) -> Result<Self> {
        if block_size == 0 || reqs.is_empty() {
            return Err(Error::invalid(
                "toy batch",
                format!("block size {block_size}, {} requests", reqs.len()),
                "needs a block size >= 1 and at least one request",
            ));
        }
        let blocks: Vec<usize> = reqs
            .iter()
            .map(|&(c, q)| (c + q).div_ceil(block_size))
            .collect();
        let num_blocks = blocks.iter().sum::<usize>() + 1;
        let mut next = num_blocks as i32;
        let rows: Vec<Vec<i32>> = blocks
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        next -= 1;
                        next
                    })
                    .collect()
            })
            .collect();
        let (mut slots, mut new_slots, mut qsl, mut seq_lens) = (vec![], vec![], vec![0], vec![]);
        for (row, &(ctx, q)) in rows.iter().zip(reqs) {
            for t in 0..ctx + q {
                let slot = (row[t / block_size] as usize * block_size + t % block_size) as i64;
                slots.push(slot);
                if t >= ctx {
                    new_slots.push(slot);
                }
            }
            qsl.push(qsl.last().copied().unwrap_or(0) + q as i32);
            seq_lens.push((ctx + q) as i32);
        }
        let meta = AttentionMetadata::new(
            block_size,
            num_blocks,
            qsl,
            seq_lens,
            BlockTableTensor::from_rows(&rows),
            new_slots,
            true,
        )?;
        let kv = slots.len() * cfg.num_kv_heads() * cfg.head_size();
        let nq = meta.num_actual_tokens() * cfg.num_heads() * cfg.head_size();
        Ok(Batch {
            query: seeded_values(seed, nq, cfg.dtype()),
            key: seeded_values(seed + 1, kv, cfg.dtype()),
            value: seeded_values(seed + 2, kv, cfg.dtype()),
            cfg,
            block_size,
            num_blocks,
            meta,
            slots,
        })
    }

    /// A cache in `backend`'s layout holding every position's K/V, written by
    /// the backend's own writer (`write_kv`).
    pub fn cache_for(&self, backend: &dyn AttentionBackend) -> Result<KvCache> {
        let layout = backend.cache_layout(&self.cfg, self.num_blocks, self.block_size)?;
        let mut cache = KvCache::zeros(layout);
        backend.write_kv(&mut cache, &self.key, &self.value, &self.slots, &self.cfg)?;
        Ok(cache)
    }

    /// The same K/V in vLLM's NHD layout `[blocks, block_size, Hkv, D]`.
    pub fn nhd_cache(&self) -> Result<KvCache> {
        let layout = KvLayout::new(
            LayoutKind::Nhd,
            self.num_blocks,
            self.block_size,
            self.cfg.num_kv_heads(),
            self.cfg.head_size(),
            self.cfg.kv_dtype(),
        )?;
        let mut cache = KvCache::zeros(layout);
        let (hkv, d) = (self.cfg.num_kv_heads(), self.cfg.head_size());
        for (t, &slot) in self.slots.iter().enumerate() {
            let (block, row) = (
                slot as usize / self.block_size,
                slot as usize % self.block_size,
            );
            for g in 0..hkv {
                for x in 0..d {
                    let src = (t * hkv + g) * d + x;
                    let k = cache.layout.k_offset(block, row, g, x);
                    let v = cache.layout.v_offset(block, row, g, x);
                    cache.k[k] = self.key[src];
                    cache.v[v] = self.value[src];
                }
            }
        }
        Ok(cache)
    }

    /// f64 attention of the step's queries over `cache` (any layout).
    pub fn reference(&self, cache: &KvCache) -> Result<RefAttention<f64>> {
        reference::paged_attention(&self.query, cache, &self.meta, &self.cfg)
    }

    /// Request `i`'s K (or V) rows `[seq_len, Hkv, D]`, dense.
    pub fn dense<'a>(&self, which: &'a [f32], i: usize) -> &'a [f32] {
        let w = self.cfg.num_kv_heads() * self.cfg.head_size();
        let start: usize = (0..i).map(|r| self.meta.seq_len(r)).sum();
        &which[start * w..(start + self.meta.seq_len(i)) * w]
    }
}

/// The emulated MHA backend vLLM calls `name` (`TRITON_ATTN`, `ROCM_ATTN`,
/// ...), found in `attnlab_sim::backends::mha_backends()` by the name it
/// prints (`name()`), so the boxes do not depend on how `by_name` spells its
/// argument.
pub fn mha(name: &str) -> Result<Box<dyn AttentionBackend>> {
    let all = attnlab_sim::backends::mha_backends();
    let names: Vec<String> = all.iter().map(|b| b.name().to_string()).collect();
    let joined = names.join(", ");
    let at = names.iter().position(|n| n == name);
    at.and_then(|i| all.into_iter().nth(i)).ok_or_else(|| {
        Error::invalid(
            "MHA backend",
            format!("'{name}'"),
            format!("emulated: {joined}"),
        )
    })
}

/// The emulated MLA backend vLLM calls `name` (`TRITON_MLA`,
/// `ROCM_AITER_MLA`, `ROCM_AITER_TRITON_MLA`), as [`mha`] finds one.
pub fn mla(name: &str) -> Result<Box<dyn attnlab_sim::backends::mla::MlaBackend>> {
    let all = attnlab_sim::backends::mla::mla_backends();
    let names: Vec<String> = all.iter().map(|b| b.name().to_string()).collect();
    let joined = names.join(", ");
    let at = names.iter().position(|n| n == name);
    at.and_then(|i| all.into_iter().nth(i)).ok_or_else(|| {
        Error::invalid(
            "MLA backend",
            format!("'{name}'"),
            format!("emulated: {joined}"),
        )
    })
}

/// `max_i |actual_i - expected_i|` (infinite for a NaN or a length mismatch);
/// `expected` is a flat slice or a reference's shaped array (row-major).
pub fn max_abs_err<'e>(
    actual: &[f32],
    expected: impl IntoIterator<Item = &'e f64, IntoIter: ExactSizeIterator>,
) -> f64 {
    let expected = expected.into_iter();
    if actual.len() != expected.len() {
        return f64::INFINITY;
    }
    actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| {
            let d = (a as f64 - e).abs();
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

/// A plain causal config (`AttnConfig::new`).
pub fn config(
    num_heads: usize,
    num_kv_heads: usize,
    head_size: usize,
    dtype: DType,
) -> Result<AttnConfig> {
    AttnConfig::new(num_heads, num_kv_heads, head_size, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhd_cache_reference_matches_a_backend_cache_reference() {
        let b = Batch::new(
            config(4, 2, 32, DType::F16).unwrap(),
            16,
            &[(20, 5), (0, 9)],
            3,
        )
        .unwrap();
        let be = mha("ROCM_ATTN").unwrap();
        let (a, n) = (b.cache_for(be.as_ref()).unwrap(), b.nhd_cache().unwrap());
        let (ra, rn) = (b.reference(&a).unwrap(), b.reference(&n).unwrap());
        assert_eq!(ra.out, rn.out);
        assert_eq!(ra.lse, rn.lse);
    }

    #[test]
    fn dense_rows_of_a_request_are_its_seq_len() {
        let b = Batch::new(
            config(2, 1, 8, DType::F32).unwrap(),
            4,
            &[(3, 2), (0, 6)],
            0,
        )
        .unwrap();
        assert_eq!(b.dense(&b.key, 0).len(), 5 * 8);
        assert_eq!(b.dense(&b.key, 1), &b.key[5 * 8..11 * 8]);
    }

    #[test]
    fn an_unknown_backend_name_lists_the_emulated_ones() {
        let e = mha("FLASH_ATTN").err().expect("not emulated");
        assert!(e.to_string().contains("ROCM_ATTN"), "{e}");
        let e = mla("ROCM_ATTN").err().expect("not an MLA backend");
        assert!(e.to_string().contains("TRITON_MLA"), "{e}");
        assert_eq!(
            mha("FLEX_ATTENTION").unwrap().name().to_string(),
            "FLEX_ATTENTION"
        );
    }

    #[test]
    fn empty_request_list_is_refused_with_its_count() {
        let e = Batch::new(config(2, 1, 8, DType::F32).unwrap(), 4, &[], 0).unwrap_err();
        assert!(e.to_string().contains("0 requests"), "{e}");
    }
}

/// One MLA step's inputs, as `run_mla_step` takes them.
#[derive(Debug, Clone)]
pub struct MlaStepData {
    /// `[T, heads, P + R]`: q_nope then q_pe.
    pub q: Vec<f32>,
    /// `[T, Lkv]`.
    pub kv_c: Vec<f32>,
    /// `[T, R]`.
    pub k_pe: Vec<f32>,
    pub meta: AttentionMetadata,
}

impl MlaStepData {
    pub fn step(&self) -> attnlab_sim::backends::mla::MlaStep<'_> {
        attnlab_sim::backends::mla::MlaStep {
            q: &self.q,
            kv_c: &self.kv_c,
            k_pe: &self.k_pe,
            meta: &self.meta,
        }
    }
}

/// DeepSeek-R1's MLA layer scaled down to 16 heads (`MlaConfig::deepseek_r1(1)
/// .scaled_down()`: latent 512 + rope 64, nope 128, V 128, bf16), a
/// `ctx`-token prompt (`prefill`) and the decode step after it (`decode`),
/// over one block table.
#[derive(Debug, Clone)]
pub struct MlaToy {
    pub cfg: attnlab_sim::backends::mla::MlaConfig,
    pub weights: attnlab_sim::kernels::mla_proj::MlaWeights,
    pub block_size: usize,
    pub num_blocks: usize,
    pub prefill: MlaStepData,
    pub decode: MlaStepData,
}

impl MlaToy {
    pub fn new(block_size: usize, ctx: usize, seed: u64) -> Result<Self> {
        use attnlab_sim::backends::mla::MlaConfig;
        use attnlab_sim::kernels::mla_proj::MlaWeights;
        let cfg = MlaConfig::deepseek_r1(1).scaled_down();
        let (d, h, dt) = (cfg.dims, cfg.num_heads, cfg.dtype);
        // The decode step's batch fixes the block table; the prefill reuses it.
        let dec = Batch::new(config(1, 1, 1, DType::F32)?, block_size, &[(ctx, 1)], 0)?;
        let pre_meta = AttentionMetadata::new(
            block_size,
            dec.num_blocks,
            vec![0, ctx as i32],
            vec![ctx as i32],
            dec.meta.block_table().clone(),
            dec.slots[..ctx].to_vec(),
            true,
        )?;
        let qw = d.qk_nope_head_dim + d.qk_rope_head_dim;
        let data = |s: u64, t: usize, meta: AttentionMetadata| MlaStepData {
            q: seeded_values(s, t * h * qw, dt),
            kv_c: seeded_values(s + 1, t * d.kv_lora_rank, dt),
            k_pe: seeded_values(s + 2, t * d.qk_rope_head_dim, dt),
            meta,
        };
        Ok(MlaToy {
            weights: MlaWeights::random(h, d, dt, seed).unwrap(),
            block_size,
            num_blocks: dec.num_blocks,
            prefill: data(seed + 10, ctx, pre_meta),
            decode: data(seed + 20, 1, dec.meta),
            cfg,
        })
    }

    /// An empty latent cache for the toy's blocks.
    pub fn cache(&self) -> Result<attnlab_sim::kernels::mla_cache::LatentCache> {
        let d = self.cfg.dims;
        let layout = attnlab_shared::layout::mla::MlaLayout::new(
            self.num_blocks,
            self.block_size,
            d.kv_lora_rank,
            d.qk_rope_head_dim,
            self.cfg.kv_dtype,
        )?;
        Ok(attnlab_sim::kernels::mla_cache::LatentCache::zeros(layout))
    }

    /// The decode token's output `[1, heads, V]` in f64: the query absorbed
    /// through `W_UK`, softmax over every latent row (the prompt's and its
    /// own), `W_UV` applied to the latent result.
    pub fn reference_decode(&self) -> Vec<f64> {
        let d = self.cfg.dims;
        let (lkv, r, pn, vd) = (
            d.kv_lora_rank,
            d.qk_rope_head_dim,
            d.qk_nope_head_dim,
            d.v_head_dim,
        );
        let rows: Vec<(&[f32], &[f32])> = self
            .prefill
            .kv_c
            .chunks(lkv)
            .zip(self.prefill.k_pe.chunks(r))
            .chain(std::iter::once((
                &self.decode.kv_c[..],
                &self.decode.k_pe[..],
            )))
            .collect();
        let w = |row: usize, c: usize| self.weights.kv_b_proj()[row * lkv + c] as f64;
        let mut out = Vec::with_capacity(self.cfg.num_heads * vd);
        for (h, q) in self.decode.q.chunks(pn + r).enumerate() {
            let base = h * (pn + vd);
            let ql: Vec<f64> = (0..lkv)
                .map(|c| (0..pn).map(|p| q[p] as f64 * w(base + p, c)).sum())
                .collect();
            let s: Vec<f64> = rows
                .iter()
                .map(|(c, pe)| {
                    let nope: f64 = c.iter().zip(&ql).map(|(&x, y)| x as f64 * y).sum();
                    let rope: f64 = pe
                        .iter()
                        .zip(&q[pn..])
                        .map(|(&x, &y)| x as f64 * y as f64)
                        .sum();
                    (nope + rope) * self.cfg.scale as f64
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let l: f64 = p.iter().sum();
            let o_lat: Vec<f64> = (0..lkv)
                .map(|c| {
                    rows.iter()
                        .zip(&p)
                        .map(|((kv, _), pt)| pt * kv[c] as f64)
                        .sum::<f64>()
                        / l
                })
                .collect();
            out.extend((0..vd).map(|i| {
                o_lat
                    .iter()
                    .enumerate()
                    .map(|(c, o)| o * w(base + pn + i, c))
                    .sum::<f64>()
            }));
        }
        out
    }
}
