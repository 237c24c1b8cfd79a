//! A KV cache in one of the layouts of `attnlab_shared::layout`: K and V as
//! flat tensors whose values are exact in the cache dtype (quantized f32).

use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::{KvLayout, LayoutKind};

#[derive(Debug, Clone, PartialEq)]
pub struct KvCache {
    pub layout: KvLayout,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvCache {
    pub fn zeros(layout: KvLayout) -> Self {
        let n = layout.numel();
        KvCache { layout, k: vec![0.0; n], v: vec![0.0; n] }
    }

    /// Lays a canonical NHD cache (`[nb, bs, h, d]`, as fixtures store it)
    /// into `target`'s layout, element by element (no rounding: same dtype).
    pub fn from_nhd(nhd_k: &[f32], nhd_v: &[f32], target: KvLayout) -> Result<Self> {
        let n = target.numel();
        for (what, len) in [("key_cache", nhd_k.len()), ("value_cache", nhd_v.len())] {
            if len != n {
                return Err(Error::invalid(format!("{what} element count"), len, format!("layout {:?} needs {n}", target.k_shape())));
            }
        }
        let nhd = KvLayout { kind: LayoutKind::Nhd, ..target };
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
