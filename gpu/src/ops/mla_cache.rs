//! Launcher for `kernels/mla_cache.hip`, mirroring
//! `attnlab_sim::kernels::mla_cache::concat_and_cache_mla`.

use super::unified_attention::to_u32;
use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i64};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_sim::kernels::mla_cache::LatentWrite;

/// Writes the [`LatentWrite`]'s `kv_c` `[T, kv_lora_rank]` and `k_pe`
/// `[T, rope_dim]` (exact in `src_dtype`) into its cache on the device
/// (validated where it was built); returns the whole cache's bits in its
/// dtype. One check is the device's own: no slot may repeat (the GPU's token
/// order would be a race).
pub fn concat_and_cache_mla(gpu: &Gpu, args: &LatentWrite, src_dtype: DType) -> Result<Vec<u32>> {
    let (cache, kv_c, k_pe) = (args.cache(), args.kv_c(), args.k_pe());
    let (slot_mapping, scale) = (args.slot_mapping(), args.scale());
    let l = cache.layout;
    let t = slot_mapping.len();
    let mut seen = std::collections::HashSet::new();
    for (i, &s) in slot_mapping.iter().enumerate() {
        if s >= 0 && !seen.insert(s) {
            return Err(Error::invalid(
                format!("slot_mapping[{i}]"),
                s,
                "a slot no earlier token uses",
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
