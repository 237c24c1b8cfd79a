//! Launcher for `kernels/reshape_and_cache.hip`, mirroring
//! `attnlab_sim::kernels::reshape_and_cache::reshape_and_cache`.

use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i64};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::error::Error;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::reshape_and_cache::CacheWriter;

/// `LAYOUT_*` code of portable.h.
pub fn layout_code(kind: LayoutKind) -> i32 {
    match kind {
        LayoutKind::Nhd => 0,
        LayoutKind::RocmPaged => 1,
        LayoutKind::AiterShuffled => 2,
    }
}

/// Writes `key`/`value` (`[T, Hkv, D]` in `cfg.dtype`) into `cache` at
/// `slot_mapping` on the device, as `writer` does; `cache` is uploaded,
/// written and downloaded back. Validated on the host first: the layout
/// matches the writer and `cfg`, lengths agree, every slot is < 0 or inside
/// the cache, and no slot repeats (the GPU's token order would be a race).
pub fn reshape_and_cache(
    gpu: &Gpu,
    writer: CacheWriter,
    cache: &mut KvCache,
    key: &[f32],
    value: &[f32],
    slot_mapping: &[i64],
    cfg: &AttnConfig,
) -> Result<()> {
    cfg.validate()?;
    let layout = cache.layout;
    if !writer.layouts().contains(&layout.kind) {
        return Err(Error::invalid(
            format!("cache layout for {}", writer.kernel_name()),
            layout.kind.name(),
            "a layout this writer stores into",
        )
        .into());
    }
    if (layout.num_kv_heads, layout.head_size, layout.dtype)
        != (cfg.num_kv_heads, cfg.head_size, cfg.kv_dtype)
    {
        return Err(Error::invalid(
            "cache layout",
            format!("{:?}", layout),
            "num_kv_heads, head_size and kv dtype of the layer",
        )
        .into());
    }
    let row = cfg.num_kv_heads * cfg.head_size;
    if !key.len().is_multiple_of(row) || value.len() != key.len() {
        return Err(Error::invalid(
            "key/value lengths",
            format!("{} / {}", key.len(), value.len()),
            format!("equal multiples of {row}"),
        )
        .into());
    }
    let num_tokens = key.len() / row;
    if slot_mapping.len() < num_tokens {
        return Err(Error::invalid(
            "slot_mapping length",
            slot_mapping.len(),
            format!(">= {num_tokens} tokens"),
        )
        .into());
    }
    let slots = &slot_mapping[..num_tokens];
    let num_slots = (layout.num_blocks * layout.block_size) as i64;
    let mut seen = std::collections::HashSet::new();
    for (t, &s) in slots.iter().enumerate() {
        if s >= num_slots {
            return Err(Error::invalid(
                format!("slot_mapping[{t}]"),
                s,
                format!("< 0 or in [0, {num_slots})"),
            )
            .into());
        }
        if s >= 0 && !seen.insert(s) {
            return Err(Error::invalid(
                format!("slot_mapping[{t}]"),
                s,
                "a slot no earlier token uses",
            )
            .into());
        }
    }
    if num_tokens == 0 {
        return Ok(());
    }
    let dev = gpu.dev.as_ref();
    let defines = [
        dtype_define("SRC_DTYPE", cfg.dtype),
        dtype_define("CACHE_DTYPE", cfg.kv_dtype),
    ];
    let f = gpu.function("reshape_and_cache", &defines, "reshape_and_cache")?;
    let (kd, vd) = (
        Buffer::from_bytes(dev, &bytes_of(key, cfg.dtype))?,
        Buffer::from_bytes(dev, &bytes_of(value, cfg.dtype))?,
    );
    let kc = Buffer::from_bytes(dev, &bytes_of(&cache.k, cfg.kv_dtype))?;
    let vc = Buffer::from_bytes(dev, &bytes_of(&cache.v, cfg.kv_dtype))?;
    let sm = Buffer::from_bytes(dev, &bytes_of_i64(slots))?;
    let hip_writer = matches!(
        writer,
        CacheWriter::ReshapeAndCache | CacheWriter::ReshapeAndCacheFlash
    );
    let dims = LaunchDims {
        grid: [num_tokens as u32, 1, 1],
        block: [row.min(256) as u32, 1, 1],
        shared_bytes: 0,
    };
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe {
        dev.launch(
            f,
            dims,
            &[
                kd.arg(),
                vd.arg(),
                kc.arg(),
                vc.arg(),
                sm.arg(),
                Arg::I32(layout_code(layout.kind)),
                Arg::I64(layout.block_size as i64),
                Arg::I64(layout.num_kv_heads as i64),
                Arg::I64(layout.head_size as i64),
                Arg::I64(layout.x() as i64),
                Arg::F32(cfg.k_scale),
                Arg::F32(cfg.v_scale),
                Arg::I32(hip_writer as i32),
            ],
        )
    }?;
    for (dst, buf) in [(&mut cache.k, &kc), (&mut cache.v, &vc)] {
        let bits = bits_from_bytes(&buf.to_bytes()?, cfg.kv_dtype);
        for (d, b) in dst.iter_mut().zip(bits) {
            *d = cfg.kv_dtype.from_bits(b);
        }
    }
    Ok(())
}
