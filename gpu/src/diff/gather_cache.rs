//! Diff of `cp_mha_gather_cache`: NHD and shuffled caches (each read with
//! its own format, and a shuffled cache read as NHD, vLLM's window bug),
//! bf16/f16 and fp8 caches with scales, context chunks of random size and
//! start, non-contiguous block tables.

use super::cases::{draw, CaseSpace};
use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::gather_cache::cp_mha_gather_cache as gpu_gather;
use crate::runtime::Result;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::kernels::gather_cache::{
    gather as sim_gather, CacheFormat, GatherArgs, GatherChunk,
};
use rand::Rng;

const SPACE: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd, LayoutKind::AiterShuffled],
    block_sizes: &[16, 32, 1, 544],
    head_sizes: &[64, 128],
    max_reqs: 5,
    max_query_len: 8,
    max_context: 300,
    sinks: false,
    alibi: false,
    non_causal: false,
};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let mut rng = rng_for("gather_cache", opts.seed);
    let mut tally = Tally::new("gather_cache");
    while opts.more(tally.cases()) {
        let Some(case) = draw(&mut rng, &SPACE) else {
            continue;
        };
        let (meta, cfg) = (&case.meta, &case.cfg);
        let own = CacheFormat::of(case.cache.layout.kind)?;
        // A shuffled cache is sometimes read as NHD (vLLM's sliding-window path).
        let format = if own == CacheFormat::Shuffle && rng.gen_bool(0.2) {
            CacheFormat::Nhd
        } else {
            own
        };
        let rows: Vec<&[i32]> = (0..meta.num_reqs())
            .map(|i| &meta.block_table().row(i)[..meta.seq_len(i).div_ceil(meta.block_size())])
            .collect();
        // A chunk: per request a random [start, start + len) inside its sequence.
        let (mut starts, mut lens) = (Vec::new(), Vec::new());
        for i in 0..meta.num_reqs() {
            let s = meta.seq_len(i);
            let start = rng.gen_range(0..s);
            starts.push(start);
            lens.push(rng.gen_range(0..=s - start));
        }
        let chunk = GatherChunk::new(starts, &lens)?;
        let scales = (cfg.k_scale(), cfg.v_scale());
        let args = GatherArgs::new(&case.cache, &rows, &chunk, format, scales, cfg.dtype())?;
        let (sk, sv) = sim_gather(&args);
        let (gk, gv) = gpu_gather(gpu, &args)?;
        let desc = || {
            format!(
                "{} gather of chunk starts {:?} lens {lens:?}: {}",
                format.name(),
                chunk.seq_starts,
                case.describe()
            )
        };
        let shape = [chunk.total_tokens(), cfg.num_kv_heads(), cfg.head_size()];
        tally.compare_values(&desc, "key", &shape, cfg.dtype(), &sk, &gk);
        tally.compare_values(&desc, "value", &shape, cfg.dtype(), &sv, &gv);
        tally.case_done();
    }
    Ok(tally.finish())
}
