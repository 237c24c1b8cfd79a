//! Random attention cases shared by the attention-kernel diffs: a mixed batch
//! (decode, extend, prefill rows), a paged cache in a chosen layout whose
//! block table is a random permutation (non-contiguous), and a layer config
//! drawn over GQA ratios, head sizes, dtypes (incl. fp8 caches with scales),
//! sliding windows, soft-cap, sinks and ALiBi.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// What a kernel under test accepts; the generator draws inside it.
#[derive(Debug, Clone)]
pub struct CaseSpace {
    pub layouts: &'static [LayoutKind],
    pub block_sizes: &'static [usize],
    pub head_sizes: &'static [usize],
    pub max_reqs: usize,
    /// Longest query of a row (1 for decode-only kernels).
    pub max_query_len: usize,
    pub max_context: usize,
    pub sinks: bool,
    pub alibi: bool,
    pub non_causal: bool,
}

#[derive(Debug, Clone)]
pub struct AttnCase {
    pub cfg: AttnConfig,
    pub meta: AttentionMetadata,
    pub cache: KvCache,
    /// `[T, Hq, D]`, exact in `cfg.dtype`.
    pub query: Vec<f32>,
}

impl AttnCase {
    /// One line that identifies the case in a mismatch report.
    pub fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "{} q/{} kv heads x {}, {} -> cache {} ({} bs {}), scales {}/{}, window {:?}, softcap {:?}, sinks {}, alibi {}, causal {}, query_start_loc {:?}, seq_lens {:?}",
            c.num_heads,
            c.num_kv_heads,
            c.head_size,
            c.dtype,
            c.kv_dtype,
            self.cache.layout.kind.name(),
            self.meta.block_size,
            c.k_scale,
            c.v_scale,
            c.sliding_window,
            c.softcap,
            c.sinks.is_some(),
            c.alibi_slopes.is_some(),
            self.meta.causal,
            self.meta.query_start_loc,
            self.meta.seq_lens
        )
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    *xs.choose(rng).expect("non-empty choice")
}

/// Draws one case; `None` when the draw is not a shape the layout accepts
/// (the caller draws again).
pub fn draw(rng: &mut ChaCha8Rng, space: &CaseSpace) -> Option<AttnCase> {
    let kind = pick(rng, space.layouts);
    let block_size = pick(rng, space.block_sizes);
    let head_size = pick(rng, space.head_sizes);
    let num_kv_heads = pick(rng, &[1usize, 2, 4]);
    let qpk = pick(rng, &[1usize, 2, 4, 8]);
    let dtype = pick(rng, &[DType::F16, DType::Bf16]);
    let kv_dtype = pick(rng, &[dtype, dtype, DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn]);
    let mut cfg = AttnConfig::new(num_kv_heads * qpk, num_kv_heads, head_size, dtype);
    cfg.kv_dtype = kv_dtype;
    if kv_dtype.is_fp8() {
        cfg.k_scale = rng.gen_range(0.005f32..0.05);
        cfg.v_scale = rng.gen_range(0.005f32..0.05);
    }
    if rng.gen_bool(0.3) {
        cfg.sliding_window = Some(rng.gen_range(1..64));
    }
    if rng.gen_bool(0.3) {
        cfg.softcap = Some(rng.gen_range(5.0f32..50.0));
    }
    if space.sinks && rng.gen_bool(0.25) {
        cfg.sinks = Some(
            (0..cfg.num_heads)
                .map(|_| rng.gen_range(-3.0f32..3.0))
                .collect(),
        );
    }
    if space.alibi && rng.gen_bool(0.15) {
        cfg.alibi_slopes = Some(
            (0..cfg.num_heads)
                .map(|h| 2f32.powi(-(h as i32 % 8) - 1))
                .collect(),
        );
    }
    let causal = !(space.non_causal && rng.gen_bool(0.2));

    // Rows: decode (1 token on a context), extend (a few on a context),
    // prefill (no context).
    let num_reqs = rng.gen_range(1..=space.max_reqs);
    let mut qsl = vec![0i32];
    let mut seq_lens = Vec::new();
    for _ in 0..num_reqs {
        let (ctx, q) = match rng.gen_range(0..3) {
            0 => (rng.gen_range(1..=space.max_context), 1),
            1 => (
                rng.gen_range(1..=space.max_context),
                rng.gen_range(1..=space.max_query_len),
            ),
            _ => (0, rng.gen_range(1..=space.max_query_len)),
        };
        qsl.push(qsl.last().copied().unwrap_or(0) + q as i32);
        seq_lens.push((ctx + q) as i32);
    }
    let blocks_per_req: Vec<usize> = seq_lens
        .iter()
        .map(|&s| (s as usize).div_ceil(block_size))
        .collect();
    let num_blocks = blocks_per_req.iter().sum::<usize>() + rng.gen_range(0..3);
    let layout = KvLayout::new(
        kind,
        num_blocks,
        block_size,
        num_kv_heads,
        head_size,
        kv_dtype,
    )
    .ok()?;
    let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
    ids.shuffle(rng);
    let mut next = ids.into_iter();
    let rows: Vec<Vec<i32>> = blocks_per_req
        .iter()
        .map(|&n| next.by_ref().take(n).collect())
        .collect();
    let table = BlockTableTensor::from_rows(&rows);
    let mut slot_mapping = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let (q, s) = ((qsl[i + 1] - qsl[i]) as usize, seq_lens[i] as usize);
        for pos in s - q..s {
            slot_mapping
                .push(row[pos / block_size] as i64 * block_size as i64 + (pos % block_size) as i64);
        }
    }
    let meta = AttentionMetadata::new(
        block_size,
        num_blocks,
        qsl,
        seq_lens,
        table,
        slot_mapping,
        causal,
    )
    .ok()?;
    // fp8 caches hold values around 1/scale so that dequantized K/V are O(1).
    let spread = if kv_dtype.is_fp8() { 200.0 } else { 2.0 };
    let mut values = |n: usize, dt: DType| -> Vec<f32> {
        (0..n)
            .map(|_| dt.round(rng.gen_range(-spread..spread)))
            .collect()
    };
    let cache = KvCache {
        layout,
        k: values(layout.numel(), kv_dtype),
        v: values(layout.numel(), kv_dtype),
    };
    let query: Vec<f32> = (0..meta.num_actual_tokens * cfg.num_heads * head_size)
        .map(|_| dtype.round(rng.gen_range(-2.0f32..2.0)))
        .collect();
    Some(AttnCase {
        cfg,
        meta,
        cache,
        query,
    })
}

/// What one case of an attention-kernel diff produced: the `output` tensor
/// `[tokens, Hq, D]` (values exact in the query dtype) on each side.
pub struct Outputs {
    /// What the case was, beyond [`AttnCase::describe`] (kernel options).
    pub options: String,
    pub sim: Vec<f32>,
    pub gpu: Vec<u32>,
}

/// The case loop every attention-kernel diff shares: draw from `space` with
/// the kernel's own stream ([`rng_for`]), let `one` make its choices with
/// the same stream and run both sides (`Ok(None)` rejects the draw: the
/// loop draws again), compare the outputs bit for bit, until `opts.cases`
/// cases ran.
pub fn attention_diff(
    kernel: &str,
    opts: DiffOptions,
    space: &CaseSpace,
    mut one: impl FnMut(&mut ChaCha8Rng, &mut AttnCase) -> Result<Option<Outputs>>,
) -> Result<KernelReport> {
    let mut rng = rng_for(kernel, opts.seed);
    let mut tally = Tally::new(kernel);
    while opts.more(tally.cases()) {
        let Some(mut case) = draw(&mut rng, space) else {
            continue;
        };
        let Some(out) = one(&mut rng, &mut case)? else {
            continue;
        };
        let desc = || {
            if out.options.is_empty() {
                case.describe()
            } else {
                format!("{}: {}", out.options, case.describe())
            }
        };
        let shape = [
            case.meta.num_actual_tokens,
            case.cfg.num_heads,
            case.cfg.head_size,
        ];
        tally.compare_values(&desc, "output", &shape, case.cfg.dtype, &out.sim, &out.gpu);
        tally.case_done();
    }
    Ok(tally.finish())
}

/// Random initial contents of an output tensor, exact in `dtype`, for
/// kernels that must leave some rows untouched: both sides start from them
/// and the untouched rows are compared too.
pub fn prefilled_output(rng: &mut ChaCha8Rng, n: usize, dtype: DType) -> Vec<f32> {
    (0..n)
        .map(|_| dtype.round(rng.gen_range(-1.0f32..1.0)))
        .collect()
}
