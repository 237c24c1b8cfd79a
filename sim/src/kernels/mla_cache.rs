//! The MLA latent KV cache and its writer, vLLM's `concat_and_cache_mla`
//! (`csrc/cache_kernels.cu`, vllm-backends.md §3.5), used by every MLA backend.
//!
//! One tensor per layer, `[num_blocks, block_size, kv_lora_rank + rope_dim]`
//! ([`MlaLayout`]): per token the compressed latent `c_kv` (after the kv_a
//! layernorm, 512 wide for DeepSeek) followed by the RoPE'd `k_pe` (64 wide).
//! There is no head axis: all query heads share one latent "KV head".
//!
//! ```text
//! grid: one program per new token t
//!   slot = slot_mapping[t]; if slot < 0: return          // PAD_SLOT_ID
//!   dst  = (slot / block_size) * block_stride + (slot % block_size) * entry_stride
//!   cache[dst + c]            = store(kv_c[t, c])   for c in 0..kv_lora_rank
//!   cache[dst + kv_lora_rank + c] = store(k_pe[t, c]) for c in 0..rope_dim
//! store(x) = round_to_cache_dtype(x)                    // f16 / bf16: one RNE rounding
//!          = fp8(x / scale)                             // fp8: scaled_convert, saturating
//! ```
//! vLLM forces `scale = 1.0` when the layer's `_k_scale` is 1.0 (`skip_scale`);
//! `x / 1.0 == x` exactly, so passing the scale either way gives the same bits.
//! Readers dequantize with `x * scale` (the decode kernels use `_k_scale` for
//! both the key and the "value", since V is the latent).

use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_shared::metadata::PAD_SLOT_ID;

/// A latent cache: `data[layout.offset(block, row, c)]`, values exact in
/// `layout.dtype` (quantized f32, as everywhere in attnlab).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentCache {
    pub layout: MlaLayout,
    pub data: Vec<f32>,
}

impl LatentCache {
    pub fn zeros(layout: MlaLayout) -> Self {
        LatentCache {
            layout,
            data: vec![0.0; layout.numel()],
        }
    }

    /// Wraps an existing `[nb, bs, width]` tensor (e.g. a fixture's
    /// `kv_cache`), rounding every element to the cache dtype.
    pub fn from_tensor(layout: MlaLayout, mut data: Vec<f32>) -> Result<Self> {
        if data.len() != layout.numel() {
            return Err(Error::invalid(
                "kv_cache element count",
                data.len(),
                format!("layout {:?} needs {}", layout.shape(), layout.numel()),
            ));
        }
        layout.dtype.round_slice(&mut data);
        Ok(LatentCache { layout, data })
    }

    /// The `width`-long entry of flat slot `slot = block * block_size + row`.
    /// Callers validate `slot` against [`LatentCache::num_slots`] first.
    #[inline]
    pub fn entry(&self, slot: usize) -> &[f32] {
        let w = self.layout.width();
        &self.data[slot * w..(slot + 1) * w]
    }

    /// Token slots in the cache: `num_blocks * block_size`.
    pub fn num_slots(&self) -> usize {
        self.layout.num_blocks * self.layout.block_size
    }
}

/// `concat_and_cache_mla(kv_c [T, kv_lora_rank], k_pe [T, rope_dim], cache,
/// slot_mapping [T], scale)`: writes each token's latent entry; `-1` slots are
/// skipped. `scale` is the layer's `_k_scale` (only read for an fp8 cache).
pub fn concat_and_cache_mla(
    cache: &mut LatentCache,
    kv_c: &[f32],
    k_pe: &[f32],
    slot_mapping: &[i64],
    scale: f32,
) -> Result<()> {
    write_latent(LatentWrite::new(cache, kv_c, k_pe, slot_mapping, scale)?);
    Ok(())
}

/// One latent-cache write, validated once: `kv_c [T, Lkv]` and `k_pe [T, R]`
/// for the `T` slots, each -1 or inside the cache, a usable fp8 scale, and
/// cache data holding its layout. The emulator ([`write_latent`]), both
/// kernel executors and the GPU launcher take it; the cache is borrowed
/// mutably and the rest immutably, so nothing changes between check and write.
#[derive(Debug)]
pub struct LatentWrite<'a> {
    cache: &'a mut LatentCache,
    kv_c: &'a [f32],
    k_pe: &'a [f32],
    slot_mapping: &'a [i64],
    scale: f32,
}

impl<'a> LatentWrite<'a> {
    pub fn new(
        cache: &'a mut LatentCache,
        kv_c: &'a [f32],
        k_pe: &'a [f32],
        slot_mapping: &'a [i64],
        scale: f32,
    ) -> Result<Self> {
        check_latent_write(cache, kv_c, k_pe, slot_mapping, scale)?;
        Ok(LatentWrite {
            cache,
            kv_c,
            k_pe,
            slot_mapping,
            scale,
        })
    }
    pub fn cache(&self) -> &LatentCache {
        self.cache
    }
    /// The cache's elements, to store the device's result into (its layout
    /// is fixed; the length must stay `layout.numel()`).
    pub fn cache_data(&mut self) -> &mut Vec<f32> {
        &mut self.cache.data
    }
    pub fn kv_c(&self) -> &'a [f32] {
        self.kv_c
    }
    pub fn k_pe(&self) -> &'a [f32] {
        self.k_pe
    }
    /// One slot per token; -1 is skipped.
    pub fn slot_mapping(&self) -> &'a [i64] {
        self.slot_mapping
    }
    /// The fp8 quantization scale (ignored for 16-bit caches).
    pub fn scale(&self) -> f32 {
        self.scale
    }
}

/// [`LatentWrite::new`]'s checks.
fn check_latent_write(
    cache: &LatentCache,
    kv_c: &[f32],
    k_pe: &[f32],
    slot_mapping: &[i64],
    scale: f32,
) -> Result<()> {
    let l = cache.layout;
    let (lkv, r) = (l.kv_lora_rank, l.rope_dim);
    let t = slot_mapping.len();
    for (what, len, width) in [("kv_c", kv_c.len(), lkv), ("k_pe", k_pe.len(), r)] {
        if len != t * width {
            return Err(Error::invalid(
                format!("{what} length"),
                len,
                format!("[{t} tokens, {width}] needs {}", t * width),
            ));
        }
    }
    if l.dtype.is_fp8() && !(scale.is_finite() && scale > 0.0) {
        return Err(Error::invalid(
            "k_scale",
            scale,
            "an fp8 latent cache needs a finite scale > 0",
        ));
    }
    let num_slots = cache.num_slots() as i64;
    if let Some((i, &s)) = slot_mapping
        .iter()
        .enumerate()
        .find(|(_, &s)| s != PAD_SLOT_ID && !(0..num_slots).contains(&s))
    {
        return Err(Error::invalid(
            format!("slot_mapping[{i}]"),
            s,
            format!("slots must be -1 (padding) or in [0, {num_slots})"),
        ));
    }
    if cache.data.len() != l.numel() {
        return Err(Error::invalid(
            "latent cache length",
            cache.data.len(),
            format!("the layout holds {}", l.numel()),
        ));
    }
    Ok(())
}

/// The emulated write over a validated [`LatentWrite`] (it cannot fail).
pub fn write_latent(args: LatentWrite) {
    let LatentWrite {
        cache,
        kv_c,
        k_pe,
        slot_mapping,
        scale,
    } = args;
    let l = cache.layout;
    let (lkv, r) = (l.kv_lora_rank, l.rope_dim);
    let store = |x: f32| {
        if l.dtype.is_fp8() {
            l.dtype.round(x / scale)
        } else {
            l.dtype.round(x)
        }
    };
    for (i, &slot) in slot_mapping.iter().enumerate() {
        if slot == PAD_SLOT_ID {
            continue;
        }
        let s = slot as usize;
        let dst = l.offset(s / l.block_size, s % l.block_size, 0);
        let entry = &mut cache.data[dst..dst + lkv + r];
        for (d, &x) in entry[..lkv].iter_mut().zip(&kv_c[i * lkv..(i + 1) * lkv]) {
            *d = store(x);
        }
        for (d, &x) in entry[lkv..].iter_mut().zip(&k_pe[i * r..(i + 1) * r]) {
            *d = store(x);
        }
    }
}

/// The value a reader sees for a stored element: fp8 dequantized `x * scale`
/// then cast to the compute dtype `to` (vLLM's `(k.to(f32) * k_scale).to(q.dtype)`);
/// 16-bit caches are read as they are.
#[inline]
pub fn load_latent(x: f32, cache_dtype: DType, scale: f32, to: DType) -> f32 {
    if cache_dtype.is_fp8() {
        to.round(x * scale)
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dtype: DType) -> MlaLayout {
        MlaLayout::new(3, 4, 8, 2, dtype).unwrap()
    }

    #[test]
    fn writes_c_kv_then_k_pe_at_the_slot_and_skips_padding() {
        let mut c = LatentCache::zeros(layout(DType::F32));
        let kv_c: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let k_pe = vec![-1.0, -2.0, -3.0, -4.0];
        concat_and_cache_mla(&mut c, &kv_c, &k_pe, &[5, -1], 1.0).unwrap();
        assert_eq!(
            c.entry(5),
            &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, -1.0, -2.0]
        );
        assert!(
            c.data
                .iter()
                .enumerate()
                .all(|(i, &x)| (50..60).contains(&i) || x == 0.0),
            "only slot 5 written"
        );
    }

    #[test]
    fn fp8_cache_stores_x_over_scale_and_loads_x_times_scale() {
        let mut c = LatentCache::zeros(layout(DType::Fp8E4m3Fn));
        let kv_c = vec![1.0, 2.0, 3.0, 1000.0, 0.0, 0.0, 0.0, 0.0];
        concat_and_cache_mla(&mut c, &kv_c, &[0.5, 0.25], &[0], 2.0).unwrap();
        assert_eq!(
            &c.entry(0)[..4],
            &[0.5, 1.0, 1.5, 448.0],
            "1000/2 saturates to 448"
        );
        assert_eq!(
            load_latent(c.entry(0)[2], DType::Fp8E4m3Fn, 2.0, DType::Bf16),
            3.0
        );
    }

    #[test]
    fn bf16_cache_rounds_once_to_nearest_even() {
        let mut c = LatentCache::zeros(layout(DType::Bf16));
        let x = 1.0 + 2f32.powi(-9); // halfway between two bf16 values: ties to even (1.0)
        concat_and_cache_mla(&mut c, &[x; 8], &[x; 2], &[11], 1.0).unwrap();
        assert!(c.entry(11).iter().all(|&v| v == 1.0));
    }

    #[test]
    fn rejects_slot_outside_the_cache_and_wrong_widths() {
        let mut c = LatentCache::zeros(layout(DType::F32));
        let e = concat_and_cache_mla(&mut c, &[0.0; 8], &[0.0; 2], &[12], 1.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("slot_mapping[0]") && e.contains("[0, 12)"),
            "{e}"
        );
        let e = concat_and_cache_mla(&mut c, &[0.0; 7], &[0.0; 2], &[0], 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kv_c length 7"), "{e}");
        let mut f8 = LatentCache::zeros(layout(DType::Fp8E4m3Fnuz));
        let e = concat_and_cache_mla(&mut f8, &[0.0; 8], &[0.0; 2], &[0], 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k_scale 0"), "{e}");
    }
}
