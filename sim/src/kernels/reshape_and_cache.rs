//! The KV-cache writers: vLLM's `reshape_and_cache`, `reshape_and_cache_flash`,
//! `triton_reshape_and_cache_flash` and AITER-FA's
//! `reshape_and_cache_shuffle_triton` (vllm-backends.md §3.1-§3.4) as ONE
//! algorithm. They differ only in two things, both modelled here as data:
//!
//! 1. the offset map of the destination: [`KvLayout::k_offset`] /
//!    [`KvLayout::v_offset`] (NHD, ROCM_ATTN x-packed, AITER shuffled);
//! 2. the fp8 conversion: the HIP writers (`csrc/cache_kernels.cu`) divide in
//!    f32 and, for an fp16 source, round the quotient back to fp16 before the
//!    fp8 conversion (`quant_utils.cuh`: double rounding, §19.19); the Triton
//!    writers divide in f32 and round once at `tl.store`.
//!
//! Grid and loop nest (all four): one program per token `t`; `slot =
//! slot_mapping[t]`, `slot < 0` (`PAD_SLOT_ID`) returns at once;
//! `b = slot / block_size`, `n = slot % block_size`; then every
//! (kv head `h`, dim `d`) element of K and V is converted and stored at
//! `k_offset(b, n, h, d)` / `v_offset(b, n, h, d)`. Elements are independent,
//! so the order inside a token does not matter; tokens run in ascending order,
//! so if two tokens share a slot the later one wins (vLLM races there).
//!
//! Rounding points (one per stored element):
//! - cache dtype not fp8: `cache_dtype.round(x)` (`static_cast` / the Triton
//!   store cast; exact when the cache dtype is the model dtype);
//! - fp8, Triton writer or non-fp16 source: `fp8(x / scale)`;
//! - fp8, HIP writer and fp16 source: `fp8(f16(x / scale))`.
//!
//! fp8 stores saturate to the format's largest finite value (HIP's
//! `__HIP_SATFINITE`). Deliberate difference: Triton's fp32->fp8 store cast
//! has no explicit clamp, so out-of-range values are implementation-defined
//! on the GPU; the emulator saturates for every writer.

use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::KernelCall;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::{Fault, FaultSet};
use attnlab_shared::layout::{KvLayout, LayoutKind};

/// Which vLLM/AITER writer runs. Each backend names the one vLLM calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheWriter {
    /// HIP `reshape_and_cache` (§3.1): ROCM_ATTN's native x-packed path
    /// (block sizes 16/32, dense planes).
    ReshapeAndCache,
    /// HIP `reshape_and_cache_flash` (§3.2): ROCM_AITER_UNIFIED_ATTN and
    /// ROCM_AITER_FA without the shuffle layout.
    ReshapeAndCacheFlash,
    /// Triton `triton_reshape_and_cache_flash` (§3.3): TRITON_ATTN, and
    /// ROCM_ATTN's non-native path (head-major 5-D views = x-packed).
    TritonReshapeAndCacheFlash,
    /// Triton `reshape_and_cache_shuffle_triton` (§3.4): ROCM_AITER_FA with
    /// `VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1`.
    ReshapeAndCacheShuffleTriton,
}

impl CacheWriter {
    /// The kernel name as vLLM's trace shows it.
    pub fn kernel_name(self) -> &'static str {
        match self {
            CacheWriter::ReshapeAndCache => "reshape_and_cache",
            CacheWriter::ReshapeAndCacheFlash => "reshape_and_cache_flash",
            CacheWriter::TritonReshapeAndCacheFlash => "triton_reshape_and_cache_flash",
            CacheWriter::ReshapeAndCacheShuffleTriton => "reshape_and_cache_shuffle_triton",
        }
    }

    /// The destination layouts this writer's offset map covers.
    pub fn layouts(self) -> &'static [LayoutKind] {
        match self {
            CacheWriter::ReshapeAndCache => &[LayoutKind::RocmPaged],
            CacheWriter::ReshapeAndCacheFlash => &[LayoutKind::Nhd],
            CacheWriter::TritonReshapeAndCacheFlash => &[LayoutKind::Nhd, LayoutKind::RocmPaged],
            CacheWriter::ReshapeAndCacheShuffleTriton => &[LayoutKind::AiterShuffled],
        }
    }

    /// The launch as `attnlab trace` shows it: the step's `num_tokens` new
    /// K/V rows written into a cache of `layout`.
    pub fn kernel_call(self, layout: &KvLayout, num_tokens: usize) -> KernelCall {
        let row = vec![num_tokens, layout.num_kv_heads, layout.head_size];
        KernelCall::new(
            self.kernel_name(),
            &[
                ("key", row.clone()),
                ("value", row),
                ("key_cache", layout.k_shape()),
                ("value_cache", layout.v_shape()),
                ("slot_mapping", vec![num_tokens]),
            ],
        )
    }

    /// The block sizes the writer's launch admits: any (it addresses by
    /// slot). [`Fault::CacheWriterBlock1056`]: the Triton writers admit at
    /// most 1024 tokens per block, refusing the hybrid size 1056.
    pub fn check_block_size(self, block_size: usize, faults: FaultSet) -> Result<()> {
        let triton = matches!(
            self,
            CacheWriter::TritonReshapeAndCacheFlash | CacheWriter::ReshapeAndCacheShuffleTriton
        );
        if block_size == 0
            || (triton && block_size > 1024 && faults.has(Fault::CacheWriterBlock1056))
        {
            return Err(Error::unsupported(
                format!("{} with block size {block_size}", self.kernel_name()),
                "the writer admits block sizes 1..=1024",
            ));
        }
        Ok(())
    }

    /// HIP writers convert through `quant_utils.cuh` (fp16 double rounding).
    fn is_hip(self) -> bool {
        matches!(
            self,
            CacheWriter::ReshapeAndCache | CacheWriter::ReshapeAndCacheFlash
        )
    }

    /// The stored value of one element `x` (in `src` dtype) for a cache of
    /// dtype `cache` with per-tensor fp8 `scale`: the writer's one rounding point.
    #[inline]
    pub fn quantize(self, x: f32, src: DType, cache: DType, scale: f32) -> f32 {
        if !cache.is_fp8() {
            return cache.round(x);
        }
        let q = x / scale;
        let q = if self.is_hip() && src == DType::F16 {
            DType::F16.round(q)
        } else {
            q
        };
        cache.round(q)
    }
}

/// One cache write, validated once: the cache, the step's key/value rows
/// and slots agree (the checks listed at [`reshape_and_cache`]) and the cache
/// tensors hold its layout. The emulator ([`write_cache`]), both kernel
/// executors and the GPU launcher take it; the cache is borrowed mutably
/// and the rest immutably, so nothing changes between check and write.
#[derive(Debug)]
pub struct CacheWrite<'a> {
    writer: CacheWriter,
    cache: &'a mut KvCache,
    key: &'a [f32],
    value: &'a [f32],
    /// `slot_mapping[..num_tokens]`.
    slots: &'a [i64],
    cfg: &'a AttnConfig,
}

impl<'a> CacheWrite<'a> {
    pub fn new(
        writer: CacheWriter,
        cache: &'a mut KvCache,
        key: &'a [f32],
        value: &'a [f32],
        slot_mapping: &'a [i64],
        cfg: &'a AttnConfig,
    ) -> Result<Self> {
        let num_tokens = check_write(writer, cache, key, value, slot_mapping, cfg)?;
        Ok(CacheWrite {
            writer,
            cache,
            key,
            value,
            slots: &slot_mapping[..num_tokens],
            cfg,
        })
    }
    pub fn writer(&self) -> CacheWriter {
        self.writer
    }
    pub fn cache(&self) -> &KvCache {
        self.cache
    }
    /// The cache, to store the device's result into (its layout is fixed).
    pub fn cache_data(&mut self) -> (&mut Vec<f32>, &mut Vec<f32>) {
        (&mut self.cache.k, &mut self.cache.v)
    }
    /// `[T, Hkv, D]` in `cfg.dtype`.
    pub fn key(&self) -> &'a [f32] {
        self.key
    }
    pub fn value(&self) -> &'a [f32] {
        self.value
    }
    /// One slot per token (`T` of them); `< 0` is skipped.
    pub fn slots(&self) -> &'a [i64] {
        self.slots
    }
    pub fn cfg(&self) -> &'a AttnConfig {
        self.cfg
    }
}

/// Writes the step's new `key`/`value` (`[T, Hkv, D]` in `cfg.dtype`) into
/// `cache` at `slot_mapping[t]` for `t < T`, as `writer` does. Slots `< 0`
/// are skipped; `slot_mapping` may be longer than `T` (padded batch).
///
/// Errors (nothing is written then): the cache layout is not one `writer`
/// handles or does not match `cfg`; key/value lengths are not a whole number
/// of `Hkv * D` rows or differ; `slot_mapping` is shorter than `T`; a slot is
/// past the cache (the error names the token and the slot); the cache
/// tensors do not hold the layout.
pub fn reshape_and_cache(
    writer: CacheWriter,
    cache: &mut KvCache,
    key: &[f32],
    value: &[f32],
    slot_mapping: &[i64],
    cfg: &AttnConfig,
) -> Result<()> {
    write_cache(CacheWrite::new(
        writer,
        cache,
        key,
        value,
        slot_mapping,
        cfg,
    )?);
    Ok(())
}

/// [`reshape_and_cache`]'s checks; returns the number of tokens.
fn check_write(
    writer: CacheWriter,
    cache: &KvCache,
    key: &[f32],
    value: &[f32],
    slot_mapping: &[i64],
    cfg: &AttnConfig,
) -> Result<usize> {
    let layout = cache.layout;
    writer.check_block_size(layout.block_size, cfg.faults())?;
    if !writer.layouts().contains(&layout.kind) {
        let allowed: Vec<&str> = writer.layouts().iter().map(|k| k.name()).collect();
        return Err(Error::invalid(
            format!("cache layout for {}", writer.kernel_name()),
            layout.kind.name(),
            format!("this writer stores into: {}", allowed.join(", ")),
        ));
    }
    if layout.num_kv_heads != cfg.num_kv_heads()
        || layout.head_size != cfg.head_size()
        || layout.dtype != cfg.kv_dtype()
    {
        return Err(Error::invalid(
            "cache layout",
            format!(
                "{} kv heads x head size {} of {}",
                layout.num_kv_heads, layout.head_size, layout.dtype
            ),
            format!(
                "the layer has {} kv heads x head size {} with kv dtype {}",
                cfg.num_kv_heads(),
                cfg.head_size(),
                cfg.kv_dtype()
            ),
        ));
    }
    let row = cfg.num_kv_heads() * cfg.head_size();
    if !key.len().is_multiple_of(row) {
        return Err(Error::invalid(
            "key length",
            key.len(),
            format!("must be num_tokens * num_kv_heads * head_size (a multiple of {row})"),
        ));
    }
    if value.len() != key.len() {
        return Err(Error::invalid(
            "value length",
            value.len(),
            format!("must equal the key length {}", key.len()),
        ));
    }
    let num_tokens = key.len() / row;
    if slot_mapping.len() < num_tokens {
        return Err(Error::invalid(
            "slot_mapping length",
            slot_mapping.len(),
            format!("must cover all {num_tokens} tokens"),
        ));
    }
    let num_slots = (layout.num_blocks * layout.block_size) as i64;
    for (t, &slot) in slot_mapping[..num_tokens].iter().enumerate() {
        if slot >= num_slots {
            return Err(Error::invalid(
                format!("slot_mapping[{t}] (token {t})"),
                slot,
                format!("slots must be < 0 (skipped) or in [0, {num_slots}) = num_blocks {} x block_size {}", layout.num_blocks, layout.block_size),
            ));
        }
    }
    if cache.k.len() != layout.numel() || cache.v.len() != layout.numel() {
        return Err(Error::invalid(
            "cache tensors",
            format!("{} / {} elements", cache.k.len(), cache.v.len()),
            format!("layout holds {}", layout.numel()),
        ));
    }
    Ok(num_tokens)
}

/// The emulated writers over a validated [`CacheWrite`] (it cannot fail).
pub fn write_cache(args: CacheWrite) {
    let CacheWrite {
        writer,
        cache,
        key,
        value,
        slots,
        cfg,
    } = args;
    let layout = cache.layout;
    let (src, dst) = (cfg.dtype(), cfg.kv_dtype());
    for (t, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            continue; // PAD_SLOT_ID
        }
        let (b, n) = (
            slot as usize / layout.block_size,
            slot as usize % layout.block_size,
        );
        for h in 0..cfg.num_kv_heads() {
            let src_row = (t * cfg.num_kv_heads() + h) * cfg.head_size();
            for d in 0..cfg.head_size() {
                cache.k[layout.k_offset(b, n, h, d)] =
                    writer.quantize(key[src_row + d], src, dst, cfg.k_scale());
                cache.v[layout.v_offset(b, n, h, d)] =
                    writer.quantize(value[src_row + d], src, dst, cfg.v_scale());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dtype: DType, kv: DType) -> AttnConfig {
        crate::config::AttnConfigBuilder {
            kv_dtype: kv,
            k_scale: 0.5,
            v_scale: 2.0,
            ..AttnConfig::builder(4, 2, 16, dtype)
        }
        .build()
        .unwrap()
    }

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| DType::F16.round(((i as f32 * 0.37 + seed).sin()) * 3.0))
            .collect()
    }

    #[test]
    fn every_layout_stores_the_same_logical_cache() {
        let c = cfg(DType::F16, DType::F16);
        let (k, v) = (data(3 * 32, 0.1), data(3 * 32, 0.9));
        let slots = [5i64, -1, 17];
        let mut read_back = Vec::new();
        for (writer, kind) in [
            (CacheWriter::ReshapeAndCacheFlash, LayoutKind::Nhd),
            (CacheWriter::ReshapeAndCache, LayoutKind::RocmPaged),
            (
                CacheWriter::ReshapeAndCacheShuffleTriton,
                LayoutKind::AiterShuffled,
            ),
        ] {
            let layout = KvLayout::new(kind, 3, 8, 2, 16, DType::F16).unwrap();
            let mut cache = KvCache::zeros(layout);
            reshape_and_cache(writer, &mut cache, &k, &v, &slots, &c).unwrap();
            let logical: Vec<f32> = (0..3 * 8 * 2 * 16)
                .map(|i| (i / 256, (i / 32) % 8, (i / 16) % 2, i % 16))
                .flat_map(|(b, n, h, d)| [cache.k_at(b, n, h, d), cache.v_at(b, n, h, d)])
                .collect();
            read_back.push(logical);
        }
        assert_eq!(read_back[0], read_back[1]);
        assert_eq!(read_back[0], read_back[2]);
    }

    #[test]
    fn pad_slots_leave_the_cache_untouched() {
        let c = cfg(DType::Bf16, DType::Bf16);
        let layout = KvLayout::new(LayoutKind::Nhd, 2, 4, 2, 16, DType::Bf16).unwrap();
        let mut cache = KvCache {
            layout,
            k: vec![7.0; layout.numel()],
            v: vec![7.0; layout.numel()],
        };
        reshape_and_cache(
            CacheWriter::TritonReshapeAndCacheFlash,
            &mut cache,
            &data(64, 0.0),
            &data(64, 1.0),
            &[-1, -1],
            &c,
        )
        .unwrap();
        assert!(cache.k.iter().chain(&cache.v).all(|&x| x == 7.0));
    }

    #[test]
    fn fp8_store_divides_by_the_scale_then_rounds() {
        let c = cfg(DType::Bf16, DType::Fp8E4m3Fn);
        // 1.0625 / 0.5 = 2.125: halfway between fp8 2.0 (even) and 2.25 -> 2.0.
        let q = CacheWriter::TritonReshapeAndCacheFlash.quantize(
            1.0625,
            DType::Bf16,
            DType::Fp8E4m3Fn,
            c.k_scale(),
        );
        assert_eq!(q, 2.0);
        assert_eq!(
            CacheWriter::ReshapeAndCacheFlash.quantize(1e6, DType::Bf16, DType::Fp8E4m3Fn, 1.0),
            448.0
        );
        assert_eq!(
            CacheWriter::ReshapeAndCacheFlash.quantize(-1e6, DType::Bf16, DType::Fp8E4m3Fnuz, 1.0),
            -240.0
        );
    }

    #[test]
    fn hip_writer_double_rounds_fp16_through_fp16() {
        // An f16 key 0.01054382 with k_scale 0.1: the f32 quotient 0.10543823
        // lies just below the fp8 tie 0.10546875 (between 0.1015625 and the
        // even 0.109375), but rounds to f16 exactly onto the tie.
        let (x, scale) = (0.010_543_823_f32, 0.1f32);
        assert_eq!(DType::F16.round(x), x);
        assert_eq!(DType::F16.round(x / scale), 0.105_468_75);
        let hip = CacheWriter::ReshapeAndCache.quantize(x, DType::F16, DType::Fp8E4m3Fn, scale);
        let triton = CacheWriter::TritonReshapeAndCacheFlash.quantize(
            x,
            DType::F16,
            DType::Fp8E4m3Fn,
            scale,
        );
        assert_eq!(
            hip, 0.109_375,
            "f16 then fp8: the tie goes to the even code"
        );
        assert_eq!(
            triton, 0.101_562_5,
            "one rounding: below the tie rounds down"
        );
        // bf16 sources round once on every writer.
        assert_eq!(
            CacheWriter::ReshapeAndCacheFlash.quantize(x, DType::Bf16, DType::Fp8E4m3Fn, scale),
            0.101_562_5
        );
    }

    #[test]
    fn out_of_range_slot_is_rejected_naming_the_token() {
        let c = cfg(DType::F16, DType::F16);
        let layout = KvLayout::new(LayoutKind::Nhd, 2, 4, 2, 16, DType::F16).unwrap();
        let mut cache = KvCache::zeros(layout);
        let err = reshape_and_cache(
            CacheWriter::ReshapeAndCacheFlash,
            &mut cache,
            &data(64, 0.0),
            &data(64, 1.0),
            &[0, 8],
            &c,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("token 1") && err.contains('8') && err.contains("[0, 8)"),
            "{err}"
        );
        assert!(
            cache.k.iter().all(|&x| x == 0.0),
            "nothing written on error"
        );
    }

    #[test]
    fn mismatched_lengths_and_layouts_are_rejected() {
        let c = cfg(DType::F16, DType::F16);
        let layout = KvLayout::new(LayoutKind::Nhd, 2, 4, 2, 16, DType::F16).unwrap();
        let mut cache = KvCache::zeros(layout);
        let w = CacheWriter::ReshapeAndCacheFlash;
        assert!(
            reshape_and_cache(w, &mut cache, &data(63, 0.0), &data(63, 1.0), &[0, 1], &c)
                .unwrap_err()
                .to_string()
                .contains("key length")
        );
        assert!(
            reshape_and_cache(w, &mut cache, &data(64, 0.0), &data(32, 1.0), &[0, 1], &c)
                .unwrap_err()
                .to_string()
                .contains("value length")
        );
        assert!(
            reshape_and_cache(w, &mut cache, &data(64, 0.0), &data(64, 1.0), &[0], &c)
                .unwrap_err()
                .to_string()
                .contains("slot_mapping length")
        );
        let err = reshape_and_cache(
            CacheWriter::ReshapeAndCache,
            &mut cache,
            &data(64, 0.0),
            &data(64, 1.0),
            &[0, 1],
            &c,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nhd") && err.contains("rocm-paged"), "{err}");
    }
}
