//! Launchers for `kernels/mla_decode.hip`, mirroring
//! `attnlab_sim::kernels::mla_decode::decode_attention_fwd` (stage 1 +
//! stage 2) for any `KvSplits` (Triton's even splits, AITER's granules).

use super::unified_attention::{to_u32, SHARED_MEMORY_LIMIT};
use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i32, bytes_of_i64};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::error::Error;
use attnlab_sim::kernels::mla_decode::{KvRow, KvSplits, MlaDecodeArgs, BLOCK_H, BLOCK_N};
use attnlab_sim::numerics::softmax_scale_log2;

param_block! {
    /// `MlaArgs` of `kernels/mla_decode.hip` (both stages).
    pub struct MlaParams as "MlaArgs" {
        num_rows: i64,
        num_heads: i64,
        kv_lora_rank: i64,
        width: i64,
        num_kv_splits: i64,
        granularity: i64,
        granular: i32,
        pad: i32,
        scale: f32,
        scale_log2: f32,
        kv_scale: f32,
    }
}

/// Output and LSE bits: `o [rows, H, Lkv]` in `out_dtype`, `lse [rows, H]` in `lse_dtype`.
pub struct MlaDecodeBits {
    pub out: Vec<u32>,
    pub lse: Vec<u32>,
}

/// Stage 1 + stage 2 on the device for absorbed queries `q [rows, H, W]`.
/// The [`MlaDecodeArgs`] the emulator takes, validated where they were
/// built; only the device's shared memory and index widths are checked here.
pub fn decode_attention_fwd(gpu: &Gpu, args: &MlaDecodeArgs) -> Result<MlaDecodeBits> {
    let (rows, cache, p) = (args.rows(), args.cache(), args.params());
    let splits = args.splits();
    let (h, lkv) = (p.num_heads, cache.layout.kv_lora_rank);
    let s = splits.num_kv_splits();
    let shared = (BLOCK_H * BLOCK_N + BLOCK_H * lkv + 3 * BLOCK_H) * 4;
    if shared > SHARED_MEMORY_LIMIT {
        return Err(Error::invalid(
            "kv_lora_rank",
            lkv,
            format!(
                "BLOCK_H x kv_lora_rank f32 must fit {SHARED_MEMORY_LIMIT} bytes of shared memory"
            ),
        )
        .into());
    }
    if rows.is_empty() {
        return Ok(MlaDecodeBits {
            out: Vec::new(),
            lse: Vec::new(),
        });
    }
    let dev = gpu.dev.as_ref();
    let inputs = Stage1Inputs::upload(gpu, args)?;
    let a = mla_params(args).arg();
    let defines = mla_defines(args);
    let nrows = to_u32(rows.len(), "query rows")?;
    let stage1 = gpu.function("mla_decode", &defines, "mla_decode_stage1")?;
    let dims = LaunchDims {
        grid: [
            nrows,
            to_u32(h.div_ceil(BLOCK_H), "head blocks")?,
            to_u32(s, "kv splits")?,
        ],
        block: [128, 1, 1],
        shared_bytes: shared as u32,
    };
    let call = inputs.args(a);
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe { dev.launch(stage1, dims, &call) }?;
    stage2(gpu, args, &inputs.att, &inputs.rows)
}

/// Stage 1's device inputs, the same for the fma and the tensor-core
/// kernels: `q [rows, H, W]`, the latent cache, the rows' buffers and the
/// zeroed partials `att [rows, H, S, Lkv + 1]` f32 that stage 2 reads.
pub(crate) struct Stage1Inputs<'d> {
    q: Buffer<'d>,
    cache: Buffer<'d>,
    pub rows: RowBuffers<'d>,
    pub att: Buffer<'d>,
}

impl<'d> Stage1Inputs<'d> {
    pub(crate) fn upload(gpu: &'d Gpu, args: &MlaDecodeArgs) -> Result<Self> {
        let (q, rows, cache, p) = (args.q(), args.rows(), args.cache(), args.params());
        let (h, lkv) = (p.num_heads, cache.layout.kv_lora_rank);
        let s = args.splits().num_kv_splits();
        let dev = gpu.dev.as_ref();
        Ok(Stage1Inputs {
            rows: RowBuffers::upload(gpu, rows)?,
            q: Buffer::from_bytes(dev, &bytes_of(q, p.q_dtype))?,
            cache: Buffer::from_bytes(dev, &bytes_of(&cache.data, cache.layout.dtype))?,
            att: Buffer::zeroed(dev, rows.len() * h * s * (lkv + 1) * 4)?,
        })
    }

    /// Stage 1's parameter list: q, cache, the five row buffers, att, then
    /// the kernel's by-value `params`.
    pub(crate) fn args(&self, params: Arg) -> Vec<Arg> {
        let mut call = vec![self.q.arg(), self.cache.arg()];
        call.extend(self.rows.args());
        call.extend([self.att.arg(), params]);
        call
    }
}

/// The rows of a launch on the device: each row's pages (the ones it can
/// address) flattened with their start, and its page size, visible keys
/// and split length (`MlaRows` of both stages).
pub(crate) struct RowBuffers<'d> {
    pages: Buffer<'d>,
    page_start: Buffer<'d>,
    page_size: Buffer<'d>,
    kv_len: Buffer<'d>,
    split_len: Buffer<'d>,
}

impl<'d> RowBuffers<'d> {
    pub(crate) fn upload(gpu: &'d Gpu, rows: &[KvRow]) -> Result<Self> {
        let (mut pages, mut page_start) = (Vec::new(), Vec::new());
        for row in rows {
            page_start.push(pages.len() as i64);
            pages.extend_from_slice(&row.pages[..row.kv_len.div_ceil(row.page_size)]);
        }
        let ints = |f: &dyn Fn(&KvRow) -> usize| -> Result<Vec<i32>> {
            rows.iter()
                .map(|r| {
                    i32::try_from(f(r))
                        .map_err(|_| Error::invalid("row length", f(r), "at most 2^31 - 1").into())
                })
                .collect()
        };
        let dev = gpu.dev.as_ref();
        let up32 =
            |v: &[i32]| Buffer::from_bytes(dev, &bytes_of_i32(if v.is_empty() { &[0] } else { v }));
        Ok(RowBuffers {
            pages: up32(&pages)?,
            page_start: Buffer::from_bytes(dev, &bytes_of_i64(&page_start))?,
            page_size: up32(&ints(&|r| r.page_size)?)?,
            kv_len: up32(&ints(&|r| r.kv_len)?)?,
            split_len: up32(&ints(&|r| r.split_len)?)?,
        })
    }

    /// The five row arguments, in the kernels' parameter order.
    pub(crate) fn args(&self) -> [Arg; 5] {
        [
            self.pages.arg(),
            self.page_start.arg(),
            self.page_size.arg(),
            self.kv_len.arg(),
            self.split_len.arg(),
        ]
    }
}

/// The `MlaArgs` block of a launch (both stages of `mla_decode.hip`).
pub(crate) fn mla_params(args: &MlaDecodeArgs) -> MlaParams {
    let (cache, splits, p) = (args.cache(), args.splits(), args.params());
    let (granular, granularity) = match splits {
        KvSplits::Even { .. } => (0, 1),
        KvSplits::Granular { granularity, .. } => (1, granularity),
    };
    MlaParams {
        num_rows: args.rows().len() as i64,
        num_heads: p.num_heads as i64,
        kv_lora_rank: cache.layout.kv_lora_rank as i64,
        width: cache.layout.width() as i64,
        num_kv_splits: splits.num_kv_splits() as i64,
        granularity: granularity as i64,
        granular,
        pad: 0,
        scale: p.scale,
        scale_log2: softmax_scale_log2(p.scale),
        kv_scale: p.kv_scale,
    }
}

/// The defines of `mla_decode.hip` for a launch's dtypes.
pub(crate) fn mla_defines(args: &MlaDecodeArgs) -> [(String, String); 4] {
    let p = args.params();
    [
        dtype_define("Q_DTYPE", p.q_dtype),
        dtype_define("KV_DTYPE", args.cache().layout.dtype),
        dtype_define("OUT_DTYPE", p.out_dtype),
        dtype_define("LSE_DTYPE", p.lse_dtype),
    ]
}

/// Stage 2 (`mla_decode_stage2`) over stage 1's `att [rows, H, S, Lkv + 1]`:
/// the reduce both flavours share. `args` has at least one row.
pub(crate) fn stage2(
    gpu: &Gpu,
    args: &MlaDecodeArgs,
    att: &Buffer,
    rows: &RowBuffers,
) -> Result<MlaDecodeBits> {
    let (p, lkv) = (args.params(), args.cache().layout.kv_lora_rank);
    let (n, h) = (args.rows().len(), p.num_heads);
    let dev = gpu.dev.as_ref();
    let out = Buffer::zeroed(dev, n * h * lkv * p.out_dtype.size_bytes())?;
    let lse = Buffer::zeroed(dev, n * h * p.lse_dtype.size_bytes())?;
    let f = gpu.function("mla_decode", &mla_defines(args), "mla_decode_stage2")?;
    let dims = LaunchDims {
        grid: [to_u32(n, "query rows")?, to_u32(h, "heads")?, 1],
        block: [128, 1, 1],
        shared_bytes: 0,
    };
    let mut call = vec![att.arg()];
    call.extend(rows.args());
    call.extend([out.arg(), lse.arg(), mla_params(args).arg()]);
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs); `att` holds
    // [rows, H, S, Lkv + 1] f32 and out / lse were sized above for the grid.
    unsafe { dev.launch(f, dims, &call) }?;
    Ok(MlaDecodeBits {
        out: bits_from_bytes(&out.to_bytes()?, p.out_dtype),
        lse: bits_from_bytes(&lse.to_bytes()?, p.lse_dtype),
    })
}
