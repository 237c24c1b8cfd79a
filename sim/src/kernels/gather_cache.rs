//! `cp_mha_gather_cache`: copies a token range of each request's KV out of
//! the paged cache into contiguous `[tokens, Hkv, D]` K and V workspaces
//! (vllm-backends.md §11.4, aiter.md §1.5). vLLM's Triton kernel in
//! `rocm_aiter_fa.py`; ROCM_AITER_FA's extend path calls it once per context
//! chunk, its sliding-window extend once for the window tail, and its
//! KV-sharing path for the new tokens.
//!
//! Grid `(total_tokens, Hkv)`, one program copies the D channels of one
//! (token, head); no arithmetic besides the fp8 dequant, so no order matters:
//! ```text
//! b    = token_to_batch[t]; pos = t - cu_seqlens_kv[b] + seq_starts[b]
//! blk  = block_table[b][pos / B]; slot = pos % B
//! NHD:     src = offset of (blk, slot, h, d) in [nb, B, Hkv, D]
//! SHUFFLE: K src = base + (d / x)*B*x + slot*x + d % x
//!          V src = base + (slot / x)*D*x + d*x + slot % x      (base = blk*Hkv*D*B + h*D*B)
//! dst[t, h, d] = DEQUANT ? round_dst(f32(src) * scale) : src
//! ```
//! The format is the kernel's `CACHE_FORMAT` constexpr, not the cache's: the
//! cache memory is read with the named format's formula, so gathering a
//! shuffled cache as "NHD" reproduces vLLM's sliding-window + shuffle bug
//! (vllm-backends §19 #30) instead of silently fixing it.
//!
//! fp8 dequant follows vLLM 0.33 (vllm-backends §11.4), matching its writers, which divide
//! by the layer's per-tensor scale in both formats: `round_dst(x * scale)`.
//! Older vLLM (aiter.md §1.5) hard-coded 1.0 in the SHUFFLE writer and gather
//! alike, and re-rounded NHD values to fp8; that variant is not modelled.

use crate::cache::KvCache;
use crate::kernels::simd::round_slice;
use crate::kernels::softmax::DimOffsets;
use crate::numerics::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::{KvLayout, LayoutKind};
use rayon::prelude::*;

/// vLLM's `CACHE_FORMAT`: the only two layouts its gather understands
/// ("kv_cache_layout only supports NHD, SHUFFLE").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheFormat {
    Nhd,
    Shuffle,
}

impl CacheFormat {
    /// The format vLLM picks for a cache layout (`"SHUFFLE" if shuffle else "NHD"`).
    pub fn of(kind: LayoutKind) -> Result<Self> {
        match kind {
            LayoutKind::Nhd => Ok(CacheFormat::Nhd),
            LayoutKind::AiterShuffled => Ok(CacheFormat::Shuffle),
            other => Err(Error::invalid(
                "kv_cache_layout",
                other.name(),
                "kv_cache_layout only supports NHD, SHUFFLE",
            )),
        }
    }

    fn kind(self) -> LayoutKind {
        match self {
            CacheFormat::Nhd => LayoutKind::Nhd,
            CacheFormat::Shuffle => LayoutKind::AiterShuffled,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CacheFormat::Nhd => "NHD",
            CacheFormat::Shuffle => "SHUFFLE",
        }
    }
}

/// One gather launch's metadata: for request b (a row of `block_rows`), the
/// KV positions `seq_starts[b] .. seq_starts[b] + len_b` land at workspace
/// rows `cu_seqlens[b] .. cu_seqlens[b + 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatherChunk {
    pub seq_starts: Vec<usize>,
    /// `[batch + 1]`, also FA's `cu_seqlens_k` for the gathered chunk.
    pub cu_seqlens: Vec<i32>,
    /// `[total_tokens]`: the request each workspace row belongs to.
    pub token_to_batch: Vec<i32>,
    /// Longest per-request length (FA's `max_seqlen_k`).
    pub max_seqlen: usize,
}

impl GatherChunk {
    /// Builds cu_seqlens and token_to_batch as vLLM's builder does
    /// (`token_to_batch[k] = #{ b : cu[b + 1] <= k }`).
    pub fn new(seq_starts: Vec<usize>, lens: &[usize]) -> Result<Self> {
        if seq_starts.len() != lens.len() {
            return Err(Error::invalid(
                "seq_starts length",
                seq_starts.len(),
                format!("must equal the number of lengths {}", lens.len()),
            ));
        }
        let mut cu = vec![0i32];
        for (b, &l) in lens.iter().enumerate() {
            let next = *cu.last().unwrap() as i64 + l as i64;
            if next > i32::MAX as i64 {
                return Err(Error::invalid(
                    format!("chunk length [{b}]"),
                    l,
                    "cumulative tokens must fit in int32",
                ));
            }
            cu.push(next as i32);
        }
        let token_to_batch = (0..lens.len())
            .flat_map(|b| std::iter::repeat_n(b as i32, lens[b]))
            .collect();
        Ok(GatherChunk {
            seq_starts,
            cu_seqlens: cu,
            token_to_batch,
            max_seqlen: lens.iter().copied().max().unwrap_or(0),
        })
    }

    /// Checks the public fields still describe one consistent launch (as
    /// [`GatherChunk::new`] builds them), so the kernel never indexes out of bounds.
    pub fn validate(&self) -> Result<()> {
        let n = self.seq_starts.len();
        let lens: Vec<i64> = self
            .cu_seqlens
            .windows(2)
            .map(|w| w[1] as i64 - w[0] as i64)
            .collect();
        if self.cu_seqlens.len() != n + 1 || self.cu_seqlens[0] != 0 || lens.iter().any(|&l| l < 0)
        {
            return Err(Error::invalid(
                "gather cu_seqlens",
                format!("{:?}", self.cu_seqlens),
                format!("must start at 0 and be non-decreasing, {} entries", n + 1),
            ));
        }
        let lens: Vec<usize> = lens.iter().map(|&l| l as usize).collect();
        if *self != GatherChunk::new(self.seq_starts.clone(), &lens)? {
            return Err(Error::invalid(
                "gather token_to_batch",
                "inconsistent",
                "must map workspace row k to #{ b : cu_seqlens[b + 1] <= k }",
            ));
        }
        Ok(())
    }

    pub fn total_tokens(&self) -> usize {
        self.token_to_batch.len()
    }

    pub fn len(&self, b: usize) -> usize {
        (self.cu_seqlens[b + 1] - self.cu_seqlens[b]) as usize
    }
}

/// Gathers K and V for `chunk` into two `[total_tokens, Hkv, D]` tensors in
/// `dst_dtype`. `block_rows[b]` is request b's block-table row (kernel block
/// ids); fp8 caches are dequantized as `round_dst(x * scale)`.
pub fn cp_mha_gather_cache(
    cache: &KvCache,
    block_rows: &[&[i32]],
    chunk: &GatherChunk,
    format: CacheFormat,
    (k_scale, v_scale): (f32, f32),
    dst_dtype: DType,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let args = GatherArgs::new(
        cache,
        block_rows,
        chunk,
        format,
        (k_scale, v_scale),
        dst_dtype,
    )?;
    Ok(gather(&args))
}

/// One `cp_mha_gather_cache` launch, validated once: the chunk
/// ([`GatherChunk::validate`]), one block-table row per request holding its
/// range with block ids inside the cache, the cache readable in `format`
/// ([`KvLayout::new`]'s rules) and its tensors holding its layout. The
/// emulator ([`gather`]), both executors and the GPU launcher take it;
/// everything is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct GatherArgs<'a> {
    cache: &'a KvCache,
    block_rows: &'a [&'a [i32]],
    chunk: &'a GatherChunk,
    format: CacheFormat,
    /// The cache as `format` reads it.
    read_layout: KvLayout,
    scales: (f32, f32),
    dst_dtype: DType,
}

impl<'a> GatherArgs<'a> {
    pub fn new(
        cache: &'a KvCache,
        block_rows: &'a [&'a [i32]],
        chunk: &'a GatherChunk,
        format: CacheFormat,
        scales: (f32, f32),
        dst_dtype: DType,
    ) -> Result<Self> {
        let read_layout = check_gather(cache, block_rows, chunk, format)?;
        Ok(GatherArgs {
            cache,
            block_rows,
            chunk,
            format,
            read_layout,
            scales,
            dst_dtype,
        })
    }
    pub fn cache(&self) -> &'a KvCache {
        self.cache
    }
    /// One block-table row per request.
    pub fn block_rows(&self) -> &'a [&'a [i32]] {
        self.block_rows
    }
    pub fn chunk(&self) -> &'a GatherChunk {
        self.chunk
    }
    pub fn format(&self) -> CacheFormat {
        self.format
    }
    /// `(k_scale, v_scale)`, applied to an fp8 cache's values.
    pub fn scales(&self) -> (f32, f32) {
        self.scales
    }
    /// The workspace dtype.
    pub fn dst_dtype(&self) -> DType {
        self.dst_dtype
    }
}

/// [`GatherArgs::new`]'s checks; returns the layout `format` reads.
fn check_gather(
    cache: &KvCache,
    block_rows: &[&[i32]],
    chunk: &GatherChunk,
    format: CacheFormat,
) -> Result<KvLayout> {
    chunk.validate()?;
    let cl = cache.layout;
    let fl = KvLayout::new(
        format.kind(),
        cl.num_blocks,
        cl.block_size,
        cl.num_kv_heads,
        cl.head_size,
        cl.dtype,
    )?;
    if block_rows.len() + 1 != chunk.cu_seqlens.len() || chunk.seq_starts.len() != block_rows.len()
    {
        return Err(Error::invalid(
            "gather batch",
            format!("{} block-table rows", block_rows.len()),
            format!("chunk describes {} requests", chunk.seq_starts.len()),
        ));
    }
    for (b, row) in block_rows.iter().enumerate() {
        let end = chunk.seq_starts[b] + chunk.len(b);
        if end.div_ceil(cl.block_size) > row.len() {
            return Err(Error::invalid(
                format!("gather range of request {b}"),
                format!("positions {}..{end}", chunk.seq_starts[b]),
                format!(
                    "its block-table row holds {} tokens",
                    row.len() * cl.block_size
                ),
            ));
        }
        if let Some((j, &blk)) = row[..end.div_ceil(cl.block_size)]
            .iter()
            .enumerate()
            .find(|(_, &x)| x < 0 || x as usize >= cl.num_blocks)
        {
            return Err(Error::invalid(
                format!("block_table[{b}][{j}]"),
                blk,
                format!("block ids must be in [0, {})", cl.num_blocks),
            ));
        }
    }
    if cache.k.len() != cl.numel() || cache.v.len() != cl.numel() {
        return Err(Error::invalid(
            "cache tensors",
            format!("{} / {} elements", cache.k.len(), cache.v.len()),
            format!("layout holds {}", cl.numel()),
        ));
    }
    Ok(fl)
}

/// The emulated gather over validated arguments (it cannot fail).
pub fn gather(args: &GatherArgs) -> (Vec<f32>, Vec<f32>) {
    let GatherArgs {
        cache,
        block_rows,
        chunk,
        read_layout: fl,
        scales: (k_scale, v_scale),
        dst_dtype,
        ..
    } = *args;
    let cl = cache.layout;
    let (hk, d, bs) = (cl.num_kv_heads, cl.head_size, cl.block_size);
    let (ks, vs) = if cl.dtype.is_fp8() {
        (Some(k_scale), Some(v_scale))
    } else {
        (None, None)
    };
    let load = |x: f32, scale: Option<f32>| match scale {
        Some(s) => dst_dtype.round(x * s),
        None => dst_dtype.round(x),
    };
    // Every layout is separable (`DimOffsets`): one offset per (token,
    // head), then the dims' fixed offsets; a run of D contiguous values is
    // one copy. Without a scale `load` is `dst_dtype.round`, which
    // `round_slice` applies to the token's copied values bit for bit.
    let dims = DimOffsets::new(&fl);
    let contiguous = |o: &[usize]| o.iter().enumerate().all(|(i, &x)| x == i);
    let (k_rows, v_rows) = (contiguous(&dims.k), contiguous(&dims.v));
    let n = chunk.total_tokens() * hk * d;
    let (mut k, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    k.par_chunks_mut(hk * d)
        .zip(v.par_chunks_mut(hk * d))
        .enumerate()
        .for_each(|(t, (kt, vt))| {
            let b = chunk.token_to_batch[t] as usize;
            let pos = t - chunk.cu_seqlens[b] as usize + chunk.seq_starts[b];
            let (blk, slot) = (block_rows[b][pos / bs] as usize, pos % bs);
            for h in 0..hk {
                let (kb, vb) = (fl.k_offset(blk, slot, h, 0), fl.v_offset(blk, slot, h, 0));
                let (ko, vo) = (&mut kt[h * d..(h + 1) * d], &mut vt[h * d..(h + 1) * d]);
                copy_head(ko, &cache.k, kb, &dims.k, k_rows);
                copy_head(vo, &cache.v, vb, &dims.v, v_rows);
            }
            for (xs, scale) in [(kt, ks), (vt, vs)] {
                match scale {
                    Some(_) => xs.iter_mut().for_each(|x| *x = load(*x, scale)),
                    None => round_slice(dst_dtype, xs),
                }
            }
        });
    (k, v)
}

/// One head's `d` values of a token from `src` at `base`: dim `i` at
/// `base + offsets[i]`, one slice copy when the dims are contiguous.
fn copy_head(out: &mut [f32], src: &[f32], base: usize, offsets: &[usize], contiguous: bool) {
    if contiguous {
        out.copy_from_slice(&src[base..base + out.len()]);
    } else {
        out.iter_mut()
            .zip(offsets)
            .for_each(|(o, &x)| *o = src[base + x]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache whose element (block, row, head, dim) holds a unique value of `dtype`.
    fn cache(kind: LayoutKind, dtype: DType) -> KvCache {
        let l = KvLayout::new(kind, 3, 16, 2, 16, dtype).unwrap();
        let nhd = KvLayout {
            kind: LayoutKind::Nhd,
            ..l
        };
        let vals: Vec<f32> = (0..nhd.numel())
            .map(|i| dtype.round((i % 97) as f32 * 0.0625 - 3.0))
            .collect();
        let neg: Vec<f32> = vals.iter().map(|x| -x).collect();
        KvCache::from_nhd(&vals, &neg, l).unwrap()
    }

    /// Gathers `chunk` from a bf16 cache laid out as `kind`, read as `format`.
    fn gather_bf16(
        kind: LayoutKind,
        format: CacheFormat,
        rows: &[&[i32]],
        chunk: &GatherChunk,
    ) -> (Vec<f32>, Vec<f32>) {
        cp_mha_gather_cache(
            &cache(kind, DType::Bf16),
            rows,
            chunk,
            format,
            (1.0, 1.0),
            DType::Bf16,
        )
        .unwrap()
    }

    #[test]
    fn shuffle_and_nhd_gathers_of_the_same_tokens_are_identical() {
        let rows: Vec<&[i32]> = vec![&[2, 0], &[1]];
        let chunk = GatherChunk::new(vec![5, 3], &[20, 9]).unwrap();
        let a = gather_bf16(LayoutKind::Nhd, CacheFormat::Nhd, &rows, &chunk);
        assert_eq!(
            a,
            gather_bf16(
                LayoutKind::AiterShuffled,
                CacheFormat::Shuffle,
                &rows,
                &chunk
            )
        );
        // Token 0 of request 0 is position 5 of block 2: NHD element (2, 5, h, d).
        let c = cache(LayoutKind::Nhd, DType::Bf16);
        assert_eq!(a.0[0..16], c.k[c.layout.k_offset(2, 5, 0, 0)..][..16]);
        assert_eq!(chunk.token_to_batch[19..21], [0, 1]);
    }

    #[test]
    fn reading_a_shuffled_cache_as_nhd_scrambles_it_as_vllm_does_with_a_window() {
        let rows: Vec<&[i32]> = vec![&[1]];
        let chunk = GatherChunk::new(vec![0], &[16]).unwrap();
        let good = gather_bf16(LayoutKind::Nhd, CacheFormat::Nhd, &rows, &chunk);
        assert_ne!(
            good.0,
            gather_bf16(LayoutKind::AiterShuffled, CacheFormat::Nhd, &rows, &chunk).0
        );
    }

    #[test]
    fn fp8_is_dequantized_with_the_layer_scale_in_both_formats() {
        let rows: Vec<&[i32]> = vec![&[0]];
        let chunk = GatherChunk::new(vec![0], &[1]).unwrap();
        let raw = cache(LayoutKind::Nhd, DType::Fp8E4m3Fnuz);
        let (k, v) = cp_mha_gather_cache(
            &raw,
            &rows,
            &chunk,
            CacheFormat::Nhd,
            (0.5, 2.0),
            DType::Bf16,
        )
        .unwrap();
        assert_eq!(
            (k[3], v[3]),
            (
                DType::Bf16.round(raw.k[3] * 0.5),
                DType::Bf16.round(raw.v[3] * 2.0)
            )
        );
        let sh = cache(LayoutKind::AiterShuffled, DType::Fp8E4m3Fnuz);
        assert_eq!(
            cp_mha_gather_cache(
                &sh,
                &rows,
                &chunk,
                CacheFormat::Shuffle,
                (0.5, 2.0),
                DType::Bf16
            )
            .unwrap(),
            (k, v)
        );
    }

    #[test]
    fn rejects_ranges_beyond_the_block_table_and_bad_block_ids() {
        let c = cache(LayoutKind::Nhd, DType::Bf16);
        let chunk = GatherChunk::new(vec![10], &[10]).unwrap();
        let e = cp_mha_gather_cache(
            &c,
            &[&[0]],
            &chunk,
            CacheFormat::Nhd,
            (1.0, 1.0),
            DType::Bf16,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("positions 10..20") && e.contains("16 tokens"),
            "{e}"
        );
        let e = cp_mha_gather_cache(
            &c,
            &[&[0, 7]],
            &chunk,
            CacheFormat::Nhd,
            (1.0, 1.0),
            DType::Bf16,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("block_table[0][1]") && e.contains("[0, 3)"),
            "{e}"
        );
        assert!(CacheFormat::of(LayoutKind::RocmPaged)
            .unwrap_err()
            .to_string()
            .contains("NHD, SHUFFLE"));
        let mut forged = GatherChunk::new(vec![0], &[4]).unwrap();
        forged.token_to_batch[3] = 5;
        let e = cp_mha_gather_cache(
            &c,
            &[&[0]],
            &forged,
            CacheFormat::Nhd,
            (1.0, 1.0),
            DType::Bf16,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("token_to_batch"), "{e}");
    }
}
