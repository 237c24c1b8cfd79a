//! Launcher for `kernels/mla_cache.hip`, mirroring
//! `attnlab_sim::kernels::mla_cache::concat_and_cache_mla`.

use super::unified_attention::to_u32;
use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i64};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_sim::kernels::mla_cache::LatentCache;

/// Writes `kv_c` `[T, kv_lora_rank]` and `k_pe` `[T, rope_dim]` (exact in
/// `src_dtype`) into `cache` at `slot_mapping` on the device; returns the
/// whole cache's bits in its dtype. Slots must be -1 or inside the cache,
/// and no slot may repeat.
pub fn concat_and_cache_mla(
    gpu: &Gpu,
    cache: &LatentCache,
    kv_c: &[f32],
    k_pe: &[f32],
    slot_mapping: &[i64],
    scale: f32,
    src_dtype: DType,
) -> Result<Vec<u32>> {
    let l = cache.layout;
    let t = slot_mapping.len();
    for (what, len, width) in [
        ("kv_c", kv_c.len(), l.kv_lora_rank),
        ("k_pe", k_pe.len(), l.rope_dim),
    ] {
        if len != t * width {
            return Err(Error::invalid(
                format!("{what} length"),
                len,
                format!("[{t} tokens, {width}] = {}", t * width),
            )
            .into());
        }
    }
    if cache.data.len() != l.numel() {
        return Err(Error::invalid(
            "latent cache length",
            cache.data.len(),
            format!("{}", l.numel()),
        )
        .into());
    }
    if l.dtype.is_fp8() && !(scale.is_finite() && scale > 0.0) {
        return Err(
            Error::invalid("k_scale", scale, "finite and > 0 for an fp8 latent cache").into(),
        );
    }
    let num_slots = (l.num_blocks * l.block_size) as i64;
    let mut seen = std::collections::HashSet::new();
    for (i, &s) in slot_mapping.iter().enumerate() {
        if s >= num_slots || s < -1 || (s >= 0 && !seen.insert(s)) {
            return Err(Error::invalid(
                format!("slot_mapping[{i}]"),
                s,
                format!("-1 or an unused slot in [0, {num_slots})"),
            )
            .into());
        }
    }
    let dev = gpu.dev.as_ref();
    let buf = Buffer::from_bytes(dev, &bytes_of(&cache.data, l.dtype))?;
    if t > 0 {
        let defines = [
            dtype_define("SRC_DTYPE", src_dtype),
            dtype_define("CACHE_DTYPE", l.dtype),
        ];
        let f = gpu.function("mla_cache", &defines, "concat_and_cache_mla")?;
        let (kc, kp) = (
            Buffer::from_bytes(dev, &bytes_of(kv_c, src_dtype))?,
            Buffer::from_bytes(dev, &bytes_of(k_pe, src_dtype))?,
        );
        let sm = Buffer::from_bytes(dev, &bytes_of_i64(slot_mapping))?;
        let dims = LaunchDims {
            grid: [to_u32(t, "tokens")?, 1, 1],
            block: [l.width().min(256) as u32, 1, 1],
            shared_bytes: 0,
        };
        let args = [
            kc.arg(),
            kp.arg(),
            buf.arg(),
            sm.arg(),
            Arg::I64(l.kv_lora_rank as i64),
            Arg::I64(l.rope_dim as i64),
            Arg::F32(scale),
        ];
        // SAFETY: the arguments are the kernel's parameter list in order (by-value
        // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
        // sized above for the shapes those scalars and this grid index.
        unsafe { dev.launch(f, dims, &args) }?;
    }
    Ok(bits_from_bytes(&buf.to_bytes()?, l.dtype))
}
