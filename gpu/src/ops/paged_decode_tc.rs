//! Launchers for `kernels/paged_decode_tc.hip`, mirroring
//! `attnlab_sim::kernels::paged_decode_tc::paged_decode_tc`: the split
//! kernel (one wave per split of a (sequence, kv head, head group)) then the
//! reduce, either as a second launch or fused into the split kernel
//! ([`TcReduce`]; the same bits). Rows that are not decode rows keep the
//! contents of `out`.

use super::paged_decode::{upload, Inputs};
use super::unified_attention::to_u32;
use crate::kernels::{qkv_defines, Gpu};
use crate::runtime::bytes::bits_from_bytes;
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Arg, Buffer, LaunchDims, Result, Target};
use attnlab_shared::error::Error;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_sim::backends::flavour::{decode_split_size, TC_DECODE_MIN_SPLIT};
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::paged_decode_tc::{num_splits, DecodeTcArgs, ROWS, STEP};
use attnlab_sim::numerics::mma::MatrixTarget;
use attnlab_sim::numerics::softmax_scale_log2;

param_block! {
    /// `TcArgs` of `kernels/paged_decode_tc.hip`.
    pub struct TcParams as "TcArgs" {
        num_heads: i64,
        num_kv_heads: i64,
        head_size: i64,
        block_size: i64,
        max_blocks: i64,
        split_size: i64,
        max_splits: i64,
        qpk: i32,
        host_target: i32,
        fuse: i32,
        scale: f32,
        scale_log2: f32,
        softcap: f32,
    }
}

/// Waves per split-kernel block (`TC_WAVES`).
const WAVES: usize = 4;
/// Threads of the reduce block (`TC_REDUCE_THREADS`: one per dim, head size <= 128).
const REDUCE_THREADS: u32 = 128;
/// The smallest split the automatic choice makes (keys).
pub const MIN_AUTO_SPLIT: usize = TC_DECODE_MIN_SPLIT;

/// Which build of the split kernel runs. Every one computes the same bits
/// (the same order of operations); they differ in how loads overlap and in
/// the registers they may use. The non-default ones exist for d128 groups
/// of at most 8 heads (others run the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcVariant {
    /// Each step's K and V loaded at its start (194 registers on sm_90:
    /// 2 resident blocks, 8 waves, per multiprocessor).
    Default,
    /// The next step's K and V loaded while a step computes (254 registers,
    /// as many resident blocks).
    Prefetch,
    /// Held to 3 resident blocks per multiprocessor (168 registers, a few spilled).
    ThreeBlocks,
    /// With L2 prefetch hints for the rows two steps ahead.
    L2Hints,
}

impl TcVariant {
    pub const ALL: [TcVariant; 4] = [
        TcVariant::Default,
        TcVariant::Prefetch,
        TcVariant::ThreeBlocks,
        TcVariant::L2Hints,
    ];

    /// Waves of the split kernel resident per multiprocessor on an H100
    /// (from the registers above): what the automatic split size fills.
    pub fn resident_waves_per_sm(self) -> usize {
        match self {
            TcVariant::ThreeBlocks => 3 * WAVES,
            _ => 2 * WAVES,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TcVariant::Default => "default",
            TcVariant::Prefetch => "prefetch",
            TcVariant::ThreeBlocks => "3 blocks/SM",
            TcVariant::L2Hints => "L2 hints",
        }
    }
}

/// Where the splits of a (sequence, kv head, head group) are combined. Both
/// run the reduce's formula in ascending split order, so they give the same
/// bits; they differ in launches and in the bytes of partials moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcReduce {
    /// A second launch, `paged_decode_tc_reduce` (one block per head and
    /// sequence).
    Separate,
    /// In the split kernel: each split's wave counts its arrival in a
    /// per-group counter; the last one reduces (and resets the counter),
    /// and a sequence of one split writes its output directly. One launch.
    Fused,
}

/// The most splits per sequence [`TcReduce::auto`] fuses: the fused reduce
/// is one wave's walk over `splits x heads` partials (a few L2 round trips
/// per pair of heads and 4 splits), fast for a few splits, slower than the
/// separate launch (one block per head) for many. Measured on an H100
/// (2026-12-07, the 23-cell decode grid, fused and separate in one call):
/// fused wins at 1, 2 and 4 splits (32/8 b256 1K 354 vs 393 us, b64 1K 102
/// vs 109 us; 8/1 b256 even), loses at 16 and 32 (32/8 b1 1K 33.8 vs 16.3
/// us, 8/1 b64 1K 51.5 vs 31.5 us).
pub const FUSE_MAX_SPLITS: usize = 4;

impl TcReduce {
    pub const ALL: [TcReduce; 2] = [TcReduce::Separate, TcReduce::Fused];

    /// The launcher's choice for a batch whose longest sequence has
    /// `max_splits` splits: fused up to [`FUSE_MAX_SPLITS`] (for tuning,
    /// the environment variable `ATTNLAB_TC_FUSE_MAX_SPLITS` overrides it;
    /// 0 never fuses).
    pub fn auto(max_splits: usize) -> TcReduce {
        let limit = std::env::var("ATTNLAB_TC_FUSE_MAX_SPLITS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(FUSE_MAX_SPLITS);
        if max_splits <= limit {
            TcReduce::Fused
        } else {
            TcReduce::Separate
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TcReduce::Separate => "reduce launch",
            TcReduce::Fused => "fused reduce",
        }
    }
}

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

/// The split size the launcher picks when none is given: as many waves as
/// the multiprocessors hold at once ([`TcVariant::resident_waves_per_sm`]),
/// never more, spread over the batch's (sequence, kv head, head group)
/// programs (one split each when there are more programs than that), at
/// least [`MIN_AUTO_SPLIT`] keys and at least the sim's `balanced_split`
/// (fewer, longer splits where the reduce's chain would cost more), a multiple of 16. One round of equal
/// waves leaves no tail; a second partial round would. For tuning, the
/// environment variables `ATTNLAB_TC_WAVES_PER_SM` and
/// `ATTNLAB_TC_MIN_SPLIT` (rounded up to 16) override the two numbers.
pub fn auto_split_size(
    gpu: &Gpu,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    variant: TcVariant,
) -> usize {
    let sms = (gpu.dev.info().multiprocessors as usize).max(1);
    let per_sm = std::env::var("ATTNLAB_TC_WAVES_PER_SM")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| variant.resident_waves_per_sm());
    let min_split = std::env::var("ATTNLAB_TC_MIN_SPLIT")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map_or(MIN_AUTO_SPLIT, |n| n.next_multiple_of(STEP));
    decode_split_size(sms, per_sm, min_split, meta, cfg)
}

/// The (m, l, acc) partials of every split: `[num_reqs, max_splits, Hq]`
/// f32 (acc: `[.., head_size]`), and the fused reduce's arrival counters
/// (`[num_reqs, Hkv * head groups]` u32, zero between launches: the
/// reducing wave resets its own).
pub(crate) struct TcScratch<'d> {
    pub m: Buffer<'d>,
    pub l: Buffer<'d>,
    pub acc: Buffer<'d>,
    pub counters: Buffer<'d>,
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
        let max_splits = num_splits(meta.max_seq_len(), split_size);
        let rows = (meta.num_reqs() * max_splits * cfg.num_heads()).max(1);
        let programs = meta.num_reqs() * cfg.num_kv_heads() * cfg.queries_per_kv().div_ceil(ROWS);
        Ok(TcScratch {
            m: Buffer::zeroed(dev, rows * 4)?,
            l: Buffer::zeroed(dev, rows * 4)?,
            acc: Buffer::zeroed(dev, rows * cfg.head_size() * 4)?,
            counters: Buffer::zeroed(dev, programs.max(1) * 4)?,
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
    reduce: TcReduce,
) -> Arg {
    TcParams {
        num_heads: cfg.num_heads() as i64,
        num_kv_heads: cfg.num_kv_heads() as i64,
        head_size: cfg.head_size() as i64,
        block_size: meta.block_size() as i64,
        max_blocks: meta.block_table().max_blocks as i64,
        split_size: split_size as i64,
        max_splits: max_splits as i64,
        qpk: cfg.queries_per_kv() as i32,
        host_target: host_target_code(target),
        fuse: i32::from(reduce == TcReduce::Fused),
        scale: cfg.scale(),
        scale_log2: softmax_scale_log2(cfg.scale()),
        softcap: cfg.softcap().unwrap_or(0.0),
    }
    .arg()
}

/// The split kernel's entry for a head size, group (`r16`: more than 8
/// query heads per kv head) and variant.
fn entry(head_size: usize, r16: bool, variant: TcVariant) -> &'static str {
    match (head_size, r16, variant) {
        (64, false, _) => "paged_decode_tc_d64",
        (64, true, _) => "paged_decode_tc_d64_r16",
        (_, true, _) => "paged_decode_tc_d128_r16",
        (_, false, TcVariant::Default) => "paged_decode_tc_d128",
        (_, false, TcVariant::Prefetch) => "paged_decode_tc_d128_prefetch",
        (_, false, TcVariant::ThreeBlocks) => "paged_decode_tc_d128_b3",
        (_, false, TcVariant::L2Hints) => "paged_decode_tc_d128_l2",
    }
}

/// The tensor-core paged decode on the device, over arguments the sim
/// validated ([`DecodeTcArgs`]: their target must be the device's, see
/// [`device_target`]; their split size may come from [`auto_split_size`]);
/// returns the whole `[T, Hq, D]` output's bits in `cfg.dtype`.
pub fn paged_decode_tc(
    gpu: &Gpu,
    args: &DecodeTcArgs,
    variant: TcVariant,
    reduce: TcReduce,
    out: &[f32],
) -> Result<Vec<u32>> {
    let target = device_target(gpu)?;
    if args.target() != target {
        return Err(Error::invalid(
            "matrix-core target",
            args.target().name(),
            format!("this device runs {}'s instruction", target.name()),
        )
        .into());
    }
    let i = args.inputs();
    let (meta, cfg, split) = (i.meta(), i.cfg(), args.split_size());
    let inp = upload(gpu, i, out)?;
    let scratch = TcScratch::new(gpu, meta, cfg, split)?;
    launch(gpu, &inp, &scratch, meta, cfg, split, variant, reduce)?;
    Ok(bits_from_bytes(&inp.out.to_bytes()?, cfg.dtype()))
}

/// Launches the split kernel then the reduce (a second launch or fused, as
/// `reduce` says) on uploaded inputs (what [`paged_decode_tc`] and `attnlab
/// bench --gpu` both run). `scratch` comes from [`TcScratch::new`] with the
/// same metadata and split size.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch(
    gpu: &Gpu,
    inp: &Inputs,
    scratch: &TcScratch,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    split_size: usize,
    variant: TcVariant,
    reduce: TcReduce,
) -> Result<()> {
    let target = device_target(gpu)?;
    let max_splits = num_splits(meta.max_seq_len(), split_size);
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
    let defines = qkv_defines(cfg.dtype(), cfg.kv_dtype());
    let a = args(meta, cfg, split_size, max_splits, target, reduce);
    let r16 = cfg.queries_per_kv() > 8;
    let f = gpu.function(
        "paged_decode_tc",
        &defines,
        entry(cfg.head_size(), r16, variant),
    )?;
    let groups = cfg.queries_per_kv().div_ceil(ROWS);
    let waves = cfg.num_kv_heads() * groups * max_splits;
    let dims = LaunchDims {
        grid: [
            to_u32(waves.div_ceil(WAVES), "split blocks")?,
            to_u32(meta.num_reqs(), "sequences")?,
            1,
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
        i.out.arg(),
        s.counters.arg(),
        a.clone(),
    ];
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe { gpu.dev.launch(f, dims, &call) }?;
    if reduce == TcReduce::Fused {
        return Ok(());
    }
    let reduce = gpu.function("paged_decode_tc", &defines, "paged_decode_tc_reduce")?;
    let dims = LaunchDims {
        grid: [
            to_u32(cfg.num_heads(), "heads")?,
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
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe { gpu.dev.launch(reduce, dims, &call) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::paged_decode_tc::SPACE;
    use attnlab_shared::dtype::DType;
    use attnlab_sim::config::AttnConfigBuilder;
    use attnlab_sim::draw::draw;
    use attnlab_sim::kernels::paged_decode::PagedInputs;
    use attnlab_sim::kernels::paged_decode_tc::decode_tc;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Each fused launch must leave every arrival counter at zero: a second
    /// launch on the same scratch (fresh output) then reduces every group
    /// again and gives the emulator's bits, at both wave widths, with splits
    /// of one step (many arrivals) and of 64 keys.
    #[test]
    fn a_fused_launch_resets_its_counters_so_the_next_one_on_the_same_scratch_is_bit_exact() {
        for wave in [32, 64] {
            let gpu = match Gpu::open_host(wave) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("skipped (no host device at wave {wave}: {e})");
                    return;
                }
            };
            let target = device_target(&gpu).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(13);
            let mut ran = 0;
            while ran < 4 {
                let Some(case) = draw(&mut rng, &SPACE) else {
                    continue;
                };
                let dt = case.cfg.dtype();
                if !matches!(dt, DType::Bf16 | DType::F16) || case.cfg.kv_dtype() != dt {
                    continue;
                }
                let cfg = AttnConfigBuilder {
                    sliding_window: None,
                    ..case.cfg.to_builder()
                }
                .build()
                .unwrap();
                let (meta, split) = (&case.meta, [16, 64][ran % 2]);
                let inputs = PagedInputs::new(&case.query, &case.cache, meta, &cfg).unwrap();
                let args = DecodeTcArgs::new(inputs, target, split).unwrap();
                let init = vec![0.5f32; case.query.len()];
                let mut sim = init.clone();
                decode_tc(&args, &mut sim).unwrap();
                let want = bits_from_bytes(&crate::runtime::bytes::bytes_of(&sim, dt), dt);
                let scratch = TcScratch::new(&gpu, meta, &cfg, split).unwrap();
                for launch_no in 0..2 {
                    let inp = upload(&gpu, args.inputs(), &init).unwrap();
                    let r = launch(
                        &gpu,
                        &inp,
                        &scratch,
                        meta,
                        &cfg,
                        split,
                        TcVariant::Default,
                        TcReduce::Fused,
                    );
                    r.unwrap();
                    let got = bits_from_bytes(&inp.out.to_bytes().unwrap(), dt);
                    assert!(
                        got == want,
                        "wave {wave} launch {launch_no}: {}",
                        case.describe()
                    );
                    let counters = scratch.counters.to_bytes().unwrap();
                    assert!(
                        counters.iter().all(|&b| b == 0),
                        "wave {wave}: a counter left non-zero"
                    );
                }
                ran += 1;
            }
        }
    }
}
