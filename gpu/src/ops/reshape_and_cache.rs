//! Launcher for `kernels/reshape_and_cache.hip`, mirroring
//! `attnlab_sim::kernels::reshape_and_cache::reshape_and_cache`.

use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i64};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::error::Error;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::kernels::reshape_and_cache::{CacheWrite, CacheWriter};

/// `LAYOUT_*` code of portable.h.
pub fn layout_code(kind: LayoutKind) -> i32 {
    match kind {
        LayoutKind::Nhd => 0,
        LayoutKind::RocmPaged => 1,
        LayoutKind::AiterShuffled => 2,
    }
}

/// Writes the [`CacheWrite`]'s key/value rows into its cache on the device,
/// as its writer does (validated where it was built): the cache is uploaded,
/// written and downloaded back. One check is the device's own: no slot may
/// repeat (the GPU's token order would be a race; the emulator writes them
/// in order).
pub fn reshape_and_cache(gpu: &Gpu, mut args: CacheWrite) -> Result<()> {
    let (writer, key, value, slots, cfg) = (
        args.writer(),
        args.key(),
        args.value(),
        args.slots(),
        args.cfg(),
    );
    let (layout, num_tokens) = (args.cache().layout, slots.len());
    let row = cfg.num_kv_heads() * cfg.head_size();
    let mut seen = std::collections::HashSet::new();
    for (t, &s) in slots.iter().enumerate() {
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
        dtype_define("SRC_DTYPE", cfg.dtype()),
        dtype_define("CACHE_DTYPE", cfg.kv_dtype()),
    ];
    let f = gpu.function("reshape_and_cache", &defines, "reshape_and_cache")?;
    let (kd, vd) = (
        Buffer::from_bytes(dev, &bytes_of(key, cfg.dtype()))?,
        Buffer::from_bytes(dev, &bytes_of(value, cfg.dtype()))?,
    );
    let kc = Buffer::from_bytes(dev, &bytes_of(&args.cache().k, cfg.kv_dtype()))?;
    let vc = Buffer::from_bytes(dev, &bytes_of(&args.cache().v, cfg.kv_dtype()))?;
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
                Arg::F32(cfg.k_scale()),
                Arg::F32(cfg.v_scale()),
                Arg::I32(hip_writer as i32),
            ],
        )
    }?;
    let (k, v) = args.cache_data();
    for (dst, buf) in [(k, &kc), (v, &vc)] {
        let bits = bits_from_bytes(&buf.to_bytes()?, cfg.kv_dtype());
        for (d, b) in dst.iter_mut().zip(bits) {
            *d = cfg.kv_dtype().from_bits(b);
        }
    }
    Ok(())
}
