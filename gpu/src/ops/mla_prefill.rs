//! Launcher for `kernels/mla_prefill.hip`, mirroring
//! `attnlab_sim::kernels::mla_prefill::gather_and_maybe_dequant_cache`
//! (the chunk planning, `plan_mla_context_chunks`, is host logic and stays
//! the sim's).

use super::unified_attention::to_u32;
use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i32, bytes_of_i64};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_sim::kernels::mla_prefill::LatentGather;

/// Workspace rows per GPU block (`GATHER_TOKS`).
const TOKS: usize = 4;
/// CUDA's limit on grid.y.
const GRID_Y_MAX: usize = 65535;

/// The dtype the gathered rows are stored in: the query dtype `to` for an
/// fp8 cache (dequantized), else the cache's own (the sim returns 16-bit
/// latents as they are stored).
pub fn gathered_dtype(cache: DType, to: DType) -> DType {
    if cache.is_fp8() {
        to
    } else {
        cache
    }
}

/// The chunk's latent rows `[toks, width]` as bits of [`gathered_dtype`],
/// for the [`LatentGather`] the emulator takes (validated where it was
/// built: rows, coverage and block ids; only the grid size is checked here).
pub fn gather_and_maybe_dequant_cache(gpu: &Gpu, args: &LatentGather) -> Result<Vec<u32>> {
    let (cache, block_tables, chunk) = (args.cache(), args.block_tables(), args.chunk());
    let (k_scale, to) = (args.k_scale(), args.to());
    let l = cache.layout;
    let (bs, w) = (l.block_size, l.width());
    let dst = gathered_dtype(l.dtype, to);
    let toks = chunk.total_tokens();
    if toks == 0 {
        return Ok(Vec::new());
    }
    let parts = chunk.parts.len();
    if parts > GRID_Y_MAX {
        return Err(Error::invalid(
            "chunk parts",
            parts,
            format!("at most {GRID_Y_MAX} per launch"),
        )
        .into());
    }
    let max_blocks = block_tables
        .iter()
        .map(|r| r.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut table = vec![0i32; block_tables.len() * max_blocks];
    for (b, row) in block_tables.iter().enumerate() {
        table[b * max_blocks..b * max_blocks + row.len()].copy_from_slice(row);
    }
    let reqs: Vec<i32> = chunk.parts.iter().map(|p| p.req as i32).collect();
    let starts: Vec<i64> = chunk.parts.iter().map(|p| p.start as i64).collect();
    let cu: Vec<i64> = chunk.cu_seq_lens().iter().map(|&x| x as i64).collect();
    let max_len = chunk.parts.iter().map(|p| p.len).max().unwrap_or(0);
    let dev = gpu.dev.as_ref();
    let cache_b = Buffer::from_bytes(dev, &bytes_of(&cache.data, l.dtype))?;
    let out = Buffer::zeroed(dev, toks * w * dst.size_bytes())?;
    let table_b = Buffer::from_bytes(dev, &bytes_of_i32(&table))?;
    let reqs_b = Buffer::from_bytes(dev, &bytes_of_i32(&reqs))?;
    let starts_b = Buffer::from_bytes(dev, &bytes_of_i64(&starts))?;
    let cu_b = Buffer::from_bytes(dev, &bytes_of_i64(&cu))?;
    let defines = [
        dtype_define("KV_DTYPE", l.dtype),
        dtype_define("DST_DTYPE", dst),
    ];
    let f = gpu.function("mla_prefill", &defines, "gather_and_maybe_dequant_cache")?;
    let dims = LaunchDims {
        grid: [
            to_u32(max_len.div_ceil(TOKS), "context rows")?,
            parts as u32,
            1,
        ],
        block: [w.min(256) as u32, 1, 1],
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
                cache_b.arg(),
                out.arg(),
                table_b.arg(),
                reqs_b.arg(),
                starts_b.arg(),
                cu_b.arg(),
                Arg::I64(max_blocks as i64),
                Arg::I64(bs as i64),
                Arg::I64(w as i64),
                Arg::F32(k_scale),
            ],
        )
    }?;
    Ok(bits_from_bytes(&out.to_bytes()?, dst))
}
