//! Launcher for `kernels/gather_cache.hip`, mirroring
//! `attnlab_sim::kernels::gather_cache::cp_mha_gather_cache`.

use super::unified_attention::to_u32;
use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i32, bytes_of_i64};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::kernels::gather_cache::{CacheFormat, GatherArgs};

/// K and V workspaces `[total_tokens, Hkv, D]` as bits of `dst_dtype`, for
/// the [`GatherArgs`] the emulator takes (validated where they were built).
pub fn cp_mha_gather_cache(gpu: &Gpu, args: &GatherArgs) -> Result<(Vec<u32>, Vec<u32>)> {
    let (cache, block_rows, chunk) = (args.cache(), args.block_rows(), args.chunk());
    let (format, (k_scale, v_scale), dst_dtype) = (args.format(), args.scales(), args.dst_dtype());
    let l = cache.layout;
    let total = chunk.total_tokens();
    let n = total * l.num_kv_heads * l.head_size;
    if n == 0 {
        return Ok((vec![], vec![]));
    }
    let max_blocks = block_rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let mut table = vec![0i32; block_rows.len() * max_blocks];
    for (b, row) in block_rows.iter().enumerate() {
        table[b * max_blocks..b * max_blocks + row.len()].copy_from_slice(row);
    }
    let dev = gpu.dev.as_ref();
    let defines = [
        dtype_define("KV_DTYPE", l.dtype),
        dtype_define("DST_DTYPE", dst_dtype),
    ];
    let f = gpu.function("gather_cache", &defines, "cp_mha_gather_cache")?;
    let kc = Buffer::from_bytes(dev, &bytes_of(&cache.k, l.dtype))?;
    let vc = Buffer::from_bytes(dev, &bytes_of(&cache.v, l.dtype))?;
    let (ko, vo) = (
        Buffer::zeroed(dev, n * dst_dtype.size_bytes())?,
        Buffer::zeroed(dev, n * dst_dtype.size_bytes())?,
    );
    let bt = Buffer::from_bytes(dev, &bytes_of_i32(&table))?;
    let cu = Buffer::from_bytes(dev, &bytes_of_i32(&chunk.cu_seqlens))?;
    let t2b = Buffer::from_bytes(dev, &bytes_of_i32(&chunk.token_to_batch))?;
    let starts: Vec<i64> = chunk.seq_starts.iter().map(|&s| s as i64).collect();
    let ss = Buffer::from_bytes(dev, &bytes_of_i64(&starts))?;
    let kind = match format {
        CacheFormat::Nhd => LayoutKind::Nhd,
        CacheFormat::Shuffle => LayoutKind::AiterShuffled,
    };
    let dims = LaunchDims {
        grid: [
            to_u32(total, "tokens")?,
            to_u32(l.num_kv_heads, "kv heads")?,
            1,
        ],
        block: [l.head_size.min(128) as u32, 1, 1],
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
                kc.arg(),
                vc.arg(),
                ko.arg(),
                vo.arg(),
                bt.arg(),
                cu.arg(),
                t2b.arg(),
                ss.arg(),
                Arg::I64(max_blocks as i64),
                Arg::I32(super::reshape_and_cache::layout_code(kind)),
                Arg::I64(l.block_size as i64),
                Arg::I64(l.num_kv_heads as i64),
                Arg::I64(l.head_size as i64),
                Arg::F32(k_scale),
                Arg::F32(v_scale),
            ],
        )
    }?;
    Ok((
        bits_from_bytes(&ko.to_bytes()?, dst_dtype),
        bits_from_bytes(&vo.to_bytes()?, dst_dtype),
    ))
}
