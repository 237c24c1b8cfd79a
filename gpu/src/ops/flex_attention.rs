//! Launcher for `kernels/flex_attention.hip`, mirroring
//! `attnlab_sim::kernels::flex_attention::flex_attention`. The block mask
//! and the partial blocks' `mask_mod` values come from the sim's own
//! `BlockMask::build` / `FlexMask::keep`, so both sides walk the same
//! block-sparse structure.

use super::unified_attention::{to_u32, SHARED_MEMORY_LIMIT};
use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i32};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Buffer, LaunchDims, Result};
use attnlab_shared::error::Error;
use attnlab_sim::kernels::flex_attention::{
    flex_block_n, BlockMask, FlexArgs, FlexMask, SPARSE_Q_BLOCK_SIZE,
};
use attnlab_sim::numerics::softmax_scale_log2;

param_block! {
    /// `FlexArgs` of `kernels/flex_attention.hip`.
    pub struct FlexParams as "FlexArgs" {
        num_tokens: i64,
        num_heads: i64,
        num_kv_heads: i64,
        head_size: i64,
        block_size: i64,
        block_n: i64,
        q_block: i64,
        scale: f32,
        scale_log2: f32,
    }
}

/// FlexAttention's output `[T, Hq, D]` on the device, as bits in `cfg.dtype`,
/// for the [`FlexArgs`] the emulator takes (validated where they were
/// built; only the device's shared memory is checked here).
pub fn flex_attention(gpu: &Gpu, args: &FlexArgs) -> Result<Vec<u32>> {
    let (query, cache, meta, cfg) = (args.query(), args.cache(), args.meta(), args.cfg());
    let (hq, d, bs) = (cfg.num_heads(), cfg.head_size(), meta.block_size());
    let bn = flex_block_n(cfg.dtype(), bs);
    let t = meta.num_actual_tokens();
    let qb_rows = SPARSE_Q_BLOCK_SIZE;
    let shared = (qb_rows * bn + qb_rows * d + 3 * qb_rows) * 4;
    if shared > SHARED_MEMORY_LIMIT {
        return Err(Error::invalid(
            "shared memory of one program",
            shared,
            format!(
                "at most {SHARED_MEMORY_LIMIT} bytes: {qb_rows} x (BLOCK_N + head_size + 3) f32"
            ),
        )
        .into());
    }
    let dev = gpu.dev.as_ref();
    if t == 0 {
        return Ok(Vec::new());
    }
    let out = Buffer::zeroed(dev, t * hq * d * cfg.dtype().size_bytes())?;
    let mask = MaskBuffers::upload(gpu, args)?;
    let num_q_blocks = mask.num_q_blocks;
    let q = Buffer::from_bytes(dev, &bytes_of(query, cfg.dtype()))?;
    let k = Buffer::from_bytes(dev, &bytes_of(&cache.k, cfg.dtype()))?;
    let v = Buffer::from_bytes(dev, &bytes_of(&cache.v, cfg.dtype()))?;
    let a = FlexParams {
        num_tokens: t as i64,
        num_heads: hq as i64,
        num_kv_heads: cfg.num_kv_heads() as i64,
        head_size: d as i64,
        block_size: bs as i64,
        block_n: bn as i64,
        q_block: qb_rows as i64,
        scale: cfg.scale(),
        scale_log2: softmax_scale_log2(cfg.scale()),
    }
    .arg();
    let f = gpu.function(
        "flex_attention",
        &[dtype_define("DTYPE", cfg.dtype())],
        "flex_attention",
    )?;
    let dims = LaunchDims {
        grid: [to_u32(num_q_blocks, "q blocks")?, to_u32(hq, "heads")?, 1],
        block: [128, 1, 1],
        shared_bytes: shared as u32,
    };
    let call = [
        q.arg(),
        k.arg(),
        v.arg(),
        mask.blocks.arg(),
        mask.start.arg(),
        mask.partial.arg(),
        mask.keep.arg(),
        out.arg(),
        a,
    ];
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe { dev.launch(f, dims, &call) }?;
    Ok(bits_from_bytes(&out.to_bytes()?, cfg.dtype()))
}

/// The BlockMask on the device, flattened: per q block its partial then its
/// full blocks (`blocks[start[qb] .. start[qb + 1]]`, the first
/// `partial[qb]` partial), and `keep[(entry * 16 + row) * block_size +
/// slot]`: `mask_mod` of every (row, slot) of a partial block. Built with
/// the sim's own `BlockMask::build` / `FlexMask::keep`; the fma and the
/// tensor-core kernels read it alike.
pub(crate) struct MaskBuffers<'d> {
    pub num_q_blocks: usize,
    pub blocks: Buffer<'d>,
    pub start: Buffer<'d>,
    pub partial: Buffer<'d>,
    pub keep: Buffer<'d>,
}

impl<'d> MaskBuffers<'d> {
    pub(crate) fn upload(gpu: &'d Gpu, args: &FlexArgs) -> Result<MaskBuffers<'d>> {
        let (meta, cfg) = (args.meta(), args.cfg());
        let (t, bs, qb_rows) = (
            meta.num_actual_tokens(),
            meta.block_size(),
            SPARSE_Q_BLOCK_SIZE,
        );
        let mask = FlexMask::new(meta, cfg.sliding_window());
        let bm = BlockMask::build(&mask);
        let (mut blocks, mut start, mut partial, mut keep) = (vec![], vec![0i32], vec![], vec![]);
        for (qb, (parts, fulls)) in bm.kv_indices.iter().zip(&bm.full_kv_indices).enumerate() {
            for (&b, is_partial) in parts
                .iter()
                .map(|b| (b, true))
                .chain(fulls.iter().map(|b| (b, false)))
            {
                blocks.push(b as i32);
                for r in qb * qb_rows..(qb + 1) * qb_rows {
                    keep.extend(
                        (0..bs).map(|j| (is_partial && r < t && mask.keep(r, b * bs + j)) as u8),
                    );
                }
            }
            start.push(blocks.len() as i32);
            partial.push(parts.len() as i32);
        }
        let dev = gpu.dev.as_ref();
        let up =
            |v: &[i32]| Buffer::from_bytes(dev, &bytes_of_i32(if v.is_empty() { &[0] } else { v }));
        Ok(MaskBuffers {
            num_q_blocks: partial.len(),
            blocks: up(&blocks)?,
            start: up(&start)?,
            partial: up(&partial)?,
            keep: Buffer::from_bytes(dev, if keep.is_empty() { &[0u8] } else { &keep })?,
        })
    }
}
