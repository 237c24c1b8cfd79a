//! Launchers for `kernels/paged_decode_tc.hip`, mirroring
//! `attnlab_sim::kernels::paged_decode_tc::paged_decode_tc`: the split
//! kernel (one wave per split of a (sequence, kv head, head group)) then the
//! reduce. Rows that are not decode rows keep the contents of `out`.

use super::paged_decode::{upload, Inputs};
use super::unified_attention::to_u32;
use crate::diff::bits_from_bytes;
use crate::kernels::{qkv_defines, Gpu};
use crate::runtime::{Arg, ArgStruct, Buffer, LaunchDims, Result, Target};
use attnlab_shared::error::Error;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::paged_decode_tc::{num_splits, validate_tc, ROWS, STEP};
use attnlab_sim::numerics::mma::MatrixTarget;
use attnlab_sim::numerics::softmax_scale_log2;

/// Waves per split-kernel block (`TC_WAVES`).
const WAVES: usize = 4;
/// Threads of the reduce block (one per dim, head size <= 128).
const REDUCE_THREADS: u32 = 128;
/// The smallest split the automatic choice makes (keys).
pub const MIN_AUTO_SPLIT: usize = 32;
/// Waves the automatic split size aims to launch per multiprocessor
/// (about two rounds of the waves one multiprocessor holds at once).
pub const AUTO_WAVES_PER_SM: usize = 24;

/// The matrix-core model the device's kernels run: the GPU's own (sm_90 on
/// NVIDIA, gfx942 on AMD), on the host device the one its wave selects.
pub fn device_target(gpu: &Gpu) -> Result<MatrixTarget> {
    match &gpu.dev.info().target {
        Target::Cuda { sm } if *sm >= 90 => Ok(MatrixTarget::Sm90),
        Target::Cuda { sm } => Err(Error::unsupported(
            "paged_decode_tc",
            format!("sm_{sm}: only Hopper's mma.sync (sm_90) has a model"),
        )
        .into()),
        Target::Amd { gfx } => match MatrixTarget::parse(gfx)? {
            MatrixTarget::Gfx942 => Ok(MatrixTarget::Gfx942),
            other => Err(Error::unsupported(
                "paged_decode_tc",
                format!("{}: only CDNA3 (gfx942) is built", other.name()),
            )
            .into()),
        },
        Target::Host { wave: 32 } => Ok(MatrixTarget::Sm90),
        Target::Host { .. } => Ok(MatrixTarget::Gfx942),
    }
}

fn host_target_code(t: MatrixTarget) -> i32 {
    match t {
        MatrixTarget::Sm90 => 0,
        MatrixTarget::Gfx90a => 1,
        MatrixTarget::Gfx942 => 2,
    }
}

/// The split size the launcher picks when none is given: enough waves for
/// [`AUTO_WAVES_PER_SM`] per multiprocessor over the batch's (sequence, kv
/// head, head group) programs, at least [`MIN_AUTO_SPLIT`] keys, a multiple
/// of 16. `ATTNLAB_TC_WAVES_PER_SM` overrides the aim (tuning).
pub fn auto_split_size(gpu: &Gpu, meta: &AttentionMetadata, cfg: &AttnConfig) -> usize {
    let sms = (gpu.dev.info().multiprocessors as usize).max(1);
    let per_sm = std::env::var("ATTNLAB_TC_WAVES_PER_SM")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(AUTO_WAVES_PER_SM);
    let groups = cfg.queries_per_kv().div_ceil(ROWS);
    let programs = (meta.num_reqs() * cfg.num_kv_heads * groups).max(1);
    let splits = (sms * per_sm).div_ceil(programs).max(1);
    meta.max_seq_len
        .div_ceil(splits)
        .next_multiple_of(STEP)
        .max(MIN_AUTO_SPLIT)
}

/// The (m, l, acc) partials of every split: `[num_reqs, max_splits, Hq]`
/// f32 (acc: `[.., head_size]`).
pub(crate) struct TcScratch<'d> {
    pub m: Buffer<'d>,
    pub l: Buffer<'d>,
    pub acc: Buffer<'d>,
    max_splits: usize,
}

impl<'d> TcScratch<'d> {
    pub fn new(
        gpu: &'d Gpu,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        split_size: usize,
    ) -> Result<Self> {
        let dev = gpu.dev.as_ref();
        let max_splits = num_splits(meta.max_seq_len, split_size);
        let rows = (meta.num_reqs() * max_splits * cfg.num_heads).max(1);
        Ok(TcScratch {
            m: Buffer::zeroed(dev, rows * 4)?,
            l: Buffer::zeroed(dev, rows * 4)?,
            acc: Buffer::zeroed(dev, rows * cfg.head_size * 4)?,
            max_splits,
        })
    }
}

fn args(
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    split_size: usize,
    max_splits: usize,
    target: MatrixTarget,
) -> Arg {
    ArgStruct::default()
        .i64(cfg.num_heads as i64)
        .i64(cfg.num_kv_heads as i64)
        .i64(cfg.head_size as i64)
        .i64(meta.block_size as i64)
        .i64(meta.block_table.max_blocks as i64)
        .i64(split_size as i64)
        .i64(max_splits as i64)
        .i32(cfg.queries_per_kv() as i32)
        .i32(host_target_code(target))
        .f32(cfg.scale)
        .f32(softmax_scale_log2(cfg.scale))
        .f32(cfg.softcap.unwrap_or(0.0))
        .arg()
}

/// The split kernel's entry for a head size and group (`r16`: more than 8
/// query heads per kv head; `pipelined`: the next step's K and V loaded
/// while a step computes; the unpipelined entry exists for d128 groups of
/// at most 8 heads, for the bench's comparison).
fn entry(head_size: usize, r16: bool, pipelined: bool) -> &'static str {
    match (head_size, r16, pipelined) {
        (64, false, _) => "paged_decode_tc_d64",
        (64, true, _) => "paged_decode_tc_d64_r16",
        (_, true, _) => "paged_decode_tc_d128_r16",
        (_, false, true) => "paged_decode_tc_d128",
        (_, false, false) => "paged_decode_tc_d128_nopipe",
    }
}

/// The tensor-core paged decode on the device at `split_size` (None: the
/// [`auto_split_size`]); returns the whole `[T, Hq, D]` output's bits in
/// `cfg.dtype` and the split size used.
pub fn paged_decode_tc(
    gpu: &Gpu,
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    split_size: Option<usize>,
    out: &[f32],
) -> Result<(Vec<u32>, usize)> {
    let target = device_target(gpu)?;
    let split = split_size.unwrap_or_else(|| auto_split_size(gpu, meta, cfg));
    validate_tc(query, cache, meta, cfg, target, split, out)?;
    let inp = upload(gpu, query, cache, meta, cfg, out)?;
    let scratch = TcScratch::new(gpu, meta, cfg, split)?;
    launch(gpu, &inp, &scratch, meta, cfg, split, true)?;
    Ok((bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype), split))
}

/// Launches the split kernel then the reduce on uploaded inputs (what
/// [`paged_decode_tc`] and `attnlab bench --gpu` both run). `scratch` comes
/// from [`TcScratch::new`] with the same metadata and split size.
pub(crate) fn launch(
    gpu: &Gpu,
    inp: &Inputs,
    scratch: &TcScratch,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    split_size: usize,
    pipelined: bool,
) -> Result<()> {
    let target = device_target(gpu)?;
    let max_splits = num_splits(meta.max_seq_len, split_size);
    if meta.num_reqs() == 0 || max_splits == 0 {
        return Ok(());
    }
    if max_splits != scratch.max_splits {
        return Err(Error::invalid(
            "paged_decode_tc scratch",
            scratch.max_splits,
            format!("{max_splits} splits (made for another split size or batch)"),
        )
        .into());
    }
    let wave = gpu.dev.info().target.wave_size();
    let defines = qkv_defines(cfg.dtype, cfg.kv_dtype);
    let a = args(meta, cfg, split_size, max_splits, target);
    let f = gpu.function("paged_decode_tc", &defines, entry(cfg.head_size, cfg.queries_per_kv() > 8, pipelined))?;
    let groups = cfg.queries_per_kv().div_ceil(ROWS);
    let dims = LaunchDims {
        grid: [
            to_u32(max_splits.div_ceil(WAVES), "split blocks")?,
            to_u32(cfg.num_kv_heads * groups, "kv heads x head groups")?,
            to_u32(meta.num_reqs(), "sequences")?,
        ],
        block: [WAVES as u32 * wave, 1, 1],
        shared_bytes: 0,
    };
    let (i, s) = (inp, scratch);
    let call = [
        i.q.arg(),
        i.k.arg(),
        i.v.arg(),
        i.bt.arg(),
        i.qsl.arg(),
        i.sl.arg(),
        s.m.arg(),
        s.l.arg(),
        s.acc.arg(),
        a.clone(),
    ];
    gpu.dev.launch(f, dims, &call)?;
    let reduce = gpu.function("paged_decode_tc", &defines, "paged_decode_tc_reduce")?;
    let dims = LaunchDims {
        grid: [
            to_u32(cfg.num_heads, "heads")?,
            to_u32(meta.num_reqs(), "sequences")?,
            1,
        ],
        block: [REDUCE_THREADS, 1, 1],
        shared_bytes: 0,
    };
    let call = [
        s.m.arg(),
        s.l.arg(),
        s.acc.arg(),
        i.qsl.arg(),
        i.sl.arg(),
        i.out.arg(),
        a,
    ];
    gpu.dev.launch(reduce, dims, &call)?;
    Ok(())
}
