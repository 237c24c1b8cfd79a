//! A KV cache in one of the layouts of `attnlab_shared::layout`: K and V as
//! flat tensors whose values are exact in the cache dtype (quantized f32).

use crate::config::AttnConfig;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::AttentionMetadata;

#[derive(Debug, Clone, PartialEq)]
pub struct KvCache {
    pub layout: KvLayout,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvCache {
    pub fn zeros(layout: KvLayout) -> Self {
        let n = layout.numel();
        KvCache {
            layout,
            k: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// Lays a canonical NHD cache (`[nb, bs, h, d]`, as fixtures store it)
    /// into `target`'s layout, element by element (no rounding: same dtype).
    pub fn from_nhd(nhd_k: &[f32], nhd_v: &[f32], target: KvLayout) -> Result<Self> {
        let n = target.numel();
        for (what, len) in [("key_cache", nhd_k.len()), ("value_cache", nhd_v.len())] {
            if len != n {
                return Err(Error::invalid(
                    format!("{what} element count"),
                    len,
                    format!("layout {:?} needs {n}", target.k_shape()),
                ));
            }
        }
        let nhd = KvLayout {
            kind: LayoutKind::Nhd,
            ..target
        };
        let mut c = KvCache::zeros(target);
        for b in 0..target.num_blocks {
            for r in 0..target.block_size {
                for h in 0..target.num_kv_heads {
                    for d in 0..target.head_size {
                        c.k[target.k_offset(b, r, h, d)] = nhd_k[nhd.k_offset(b, r, h, d)];
                        c.v[target.v_offset(b, r, h, d)] = nhd_v[nhd.v_offset(b, r, h, d)];
                    }
                }
            }
        }
        Ok(c)
    }

    /// Checks that this cache, a batch's metadata, its query `[T, Hq, D]` and
    /// the layer config describe the same shapes (kv heads, head size, block
    /// size, enough blocks, cache dtype, tensor lengths), so that an attention
    /// kernel or the reference can index without bounds surprises.
    pub fn check_batch(
        &self,
        query: &[f32],
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<()> {
        self.check_batch_len(query.len(), meta, cfg)
    }

    /// [`check_batch`](Self::check_batch) for a query of `query_len`
    /// elements in any float (the reference's f64 queries).
    pub fn check_batch_len(
        &self,
        query_len: usize,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
    ) -> Result<()> {
        let l = &self.layout;
        if l.num_kv_heads != cfg.num_kv_heads() || l.head_size != cfg.head_size() {
            return Err(Error::invalid(
                "cache layout",
                format!("{} kv heads x head size {}", l.num_kv_heads, l.head_size),
                format!(
                    "must match the config's {} kv heads x head size {}",
                    cfg.num_kv_heads(),
                    cfg.head_size()
                ),
            ));
        }
        if l.block_size != meta.block_size() || l.num_blocks < meta.num_blocks() {
            return Err(Error::invalid(
                "cache layout",
                format!("{} blocks of {}", l.num_blocks, l.block_size),
                format!(
                    "metadata needs block size {} and at least {} blocks",
                    meta.block_size(),
                    meta.num_blocks()
                ),
            ));
        }
        if l.dtype != cfg.kv_dtype() {
            return Err(Error::invalid(
                "cache dtype",
                l.dtype,
                format!("must equal the config's kv_dtype {}", cfg.kv_dtype()),
            ));
        }
        if self.k.len() != l.numel() || self.v.len() != l.numel() {
            return Err(Error::invalid(
                "cache tensors",
                format!("{} / {} elements", self.k.len(), self.v.len()),
                format!("layout holds {}", l.numel()),
            ));
        }
        let want = meta.num_actual_tokens() * cfg.num_heads() * cfg.head_size();
        if query_len != want {
            return Err(Error::invalid(
                "query length",
                query_len,
                format!("must be num_tokens x num_heads x head_size = {want}"),
            ));
        }
        Ok(())
    }

    /// K element (block, row, head, dim), as stored (not dequantized).
    #[inline]
    pub fn k_at(&self, block: usize, row: usize, head: usize, dim: usize) -> f32 {
        self.k[self.layout.k_offset(block, row, head, dim)]
    }

    #[inline]
    pub fn v_at(&self, block: usize, row: usize, head: usize, dim: usize) -> f32 {
        self.v[self.layout.v_offset(block, row, head, dim)]
    }
}
