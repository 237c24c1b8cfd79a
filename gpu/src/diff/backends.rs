//! Backend-level diff: a whole emulated backend step (`write_kv` then
//! `forward`, sim/src/backends/*) on the emulator and the same step with
//! every kernel launch on the GPU, comparing the final output bits.
//!
//! Both sides run the backend's own routing (`write_kv_with` /
//! `forward_with`), once with the sim's `Cpu` executor and once with
//! [`GpuExecutor`]: nothing of the routing is restated here. Each case is a
//! random mixed batch (decode, extend, prefill rows over a non-contiguous
//! block table) whose old context is random cache contents in the backend's
//! own layout; draws the backend rejects (`check`, kernel block size) are
//! drawn again.
//!
//! `opts.flavour` picks the kernel flavour both executors run (the
//! tensor-core one on the device's matrix target); in the tensor-core
//! flavour only draws the flavour admits (`flavour::admits`, the executors'
//! own checks) are run, and a backend whose launches have no tensor-core
//! kernel reports the refusal.
//!
//! The MLA backends ([`run_mla`]) are diffed the same way (in the
//! tensor-core flavour over the draws `flavour::admits_mla` admits) through
//! `backends::mla::run_mla_step_with` (latent cache write, absorbed decode,
//! chunked non-absorbed prefill, every TP rank): DeepSeek-shaped steps
//! scaled down (576- or 320-wide latents, small nope / v heads, few heads per
//! rank, tiny chunked-context workspaces so contexts split and merge), with
//! the emulator's work per case bounded so a thousand cases stay quick.

use super::cases::{draw, CaseSpace};
use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::exec::{device_matrix_target, GpuExecutor};
use crate::kernels::Gpu;
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_shared::model::MlaDims;
use attnlab_shared::registry::BackendName;
use attnlab_shared::selection::Profile;
use attnlab_sim::backends::by_name;
use attnlab_sim::backends::exec::Cpu;
use attnlab_sim::backends::flavour::{admits, admits_mla, Flavour, FlavourChoice};
use attnlab_sim::backends::mla::{self, run_mla_step_with, MlaBackend, MlaConfig, MlaStep};
use attnlab_sim::cache::KvCache;
use attnlab_sim::kernels::mla_cache::LatentCache;
use attnlab_sim::kernels::mla_proj::MlaWeights;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd],
    block_sizes: &[16, 32, 64],
    head_sizes: &[64, 128],
    max_reqs: 5,
    max_query_len: 24,
    max_context: 300,
    sinks: true,
    alibi: false,
    non_causal: false,
};

/// Draws accepted per case before giving up on a backend (a space it
/// rejects entirely would otherwise loop forever).
const MAX_DRAWS_PER_CASE: usize = 200;

/// Fails once `draws` exceed [`MAX_DRAWS_PER_CASE`] per case run so far +
/// 1, with the last refusal of the flavour when there was one.
fn check_draw_budget(
    draws: usize,
    cases_done: usize,
    what: &str,
    name: &str,
    refusal: Option<&Error>,
) -> Result<()> {
    if draws > MAX_DRAWS_PER_CASE * (cases_done + 1) {
        if let Some(e) = refusal {
            return Err(e.clone().into());
        }
        return Err(Error::invalid(
            what,
            name,
            "a space the backend accepts (it rejected every draw)",
        )
        .into());
    }
    Ok(())
}

/// The flavour `choice` resolves to for `backend` on this device's matrix
/// target (the fma flavour needs none).
pub fn device_flavour(gpu: &Gpu, backend: BackendName, choice: FlavourChoice) -> Result<Flavour> {
    Ok(match choice {
        FlavourChoice::Fma => Flavour::Fma,
        c => c.resolve(backend, device_matrix_target(gpu)?),
    })
}

/// The report's name: the backend's, with its flavour when not fma.
fn report_name(name: &str, flavour: Flavour) -> String {
    match flavour {
        Flavour::Fma => name.to_string(),
        f => format!("{name} [{f}]"),
    }
}

pub fn run(gpu: &Gpu, backend_name: BackendName, opts: DiffOptions) -> Result<KernelReport> {
    let backend = by_name(backend_name)?;
    let name = backend_name.name();
    let flavour = device_flavour(gpu, backend_name, opts.flavour)?;
    let (cpu, gx) = (Cpu::new(flavour), GpuExecutor::with_flavour(gpu, flavour)?);
    let mut rng = rng_for(name, opts.seed);
    let mut tally = Tally::new(&report_name(name, flavour));
    let (mut draws, mut refusal) = (0usize, None);
    while opts.more(tally.cases()) {
        draws += 1;
        let why = refusal.as_ref();
        check_draw_budget(draws, tally.cases(), "backend diff case space", name, why)?;
        let Some(case) = draw(&mut rng, &SPACE) else {
            continue;
        };
        let (cfg, meta) = (&case.cfg, &case.meta);
        let bs = meta.block_size();
        if backend.check(cfg, bs).is_err() || backend.kernel_block_size(bs).ok() != Some(bs) {
            continue;
        }
        let Ok(layout) = backend.cache_layout(cfg, case.cache.layout.num_blocks, bs) else {
            continue;
        };
        // The old context: random contents in the backend's layout.
        let spread = if cfg.kv_dtype().is_fp8() { 200.0 } else { 2.0 };
        let mut fill = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| cfg.kv_dtype().round(rng.gen_range(-spread..spread)))
                .collect()
        };
        let init = KvCache {
            layout,
            k: fill(layout.numel()),
            v: fill(layout.numel()),
        };
        let n_kv = meta.num_actual_tokens() * cfg.num_kv_heads() * cfg.head_size();
        let mut step = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| cfg.dtype().round(rng.gen_range(-2.0f32..2.0)))
                .collect()
        };
        let (key, value) = (step(n_kv), step(n_kv));
        if let Err(e) = admits(backend.as_ref(), flavour, meta, cfg, layout.kind) {
            refusal = Some(e);
            continue;
        }
        let (mut sim_cache, mut gpu_cache) = (init.clone(), init);
        backend.write_kv_with(&cpu, &mut sim_cache, &key, &value, meta.slot_mapping(), cfg)?;
        backend.write_kv_with(&gx, &mut gpu_cache, &key, &value, meta.slot_mapping(), cfg)?;
        let sim = backend.forward_with(&cpu, &case.query, &sim_cache, meta, cfg)?;
        let dev = backend.forward_with(&gx, &case.query, &gpu_cache, meta, cfg)?;
        let dev_bits: Vec<u32> = dev.iter().map(|&x| cfg.dtype().to_bits(x)).collect();
        let desc = || format!("{name}: {}", case.describe());
        let shape = [meta.num_actual_tokens(), cfg.num_heads(), cfg.head_size()];
        tally.compare_values(&desc, "output", &shape, cfg.dtype(), &sim, &dev_bits);
        tally.case_done();
    }
    Ok(tally.finish())
}

/// `attnlab diff` entries, one per emulated MHA backend.
pub fn triton_attn(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run(gpu, BackendName::TritonAttn, opts)
}
pub fn rocm_attn(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run(gpu, BackendName::RocmAttn, opts)
}
pub fn rocm_aiter_fa(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run(gpu, BackendName::RocmAiterFa, opts)
}
pub fn rocm_aiter_unified_attn(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run(gpu, BackendName::RocmAiterUnifiedAttn, opts)
}
pub fn flex_attention(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run(gpu, BackendName::FlexAttention, opts)
}

/// Emulator fmas one MLA case may cost (projections dominate): a few ms.
const MLA_WORK_PER_CASE: usize = 1 << 23;
/// Bound on `num_heads * (P + V)` (the `kv_b_proj` rows of the whole model),
/// which sizes the random weight and every up-projection.
const MLA_MAX_PROJ_ROWS: usize = 4096;

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    *xs.choose(rng).expect("non-empty choice")
}

/// One MLA step: configuration, weights, the cache before the step, inputs.
struct MlaCase {
    cfg: MlaConfig,
    weights: MlaWeights,
    cache: LatentCache,
    meta: AttentionMetadata,
    q: Vec<f32>,
    kv_c: Vec<f32>,
    k_pe: Vec<f32>,
    /// (query_len, context_len) per request, decodes first.
    reqs: Vec<(usize, usize)>,
}

impl MlaCase {
    fn describe(&self) -> String {
        let (c, d) = (&self.cfg, self.cfg.dims);
        format!(
            "{} heads tp {} ({:?}), latent {}+{} nope {} v {}, {} / cache {} (k_scale {}), block {}, splits {:?}, decode_threshold {}, workspace from max_model_len {} max_num_seqs {}, requests (q, ctx) {:?}",
            c.num_heads, c.tp, c.profile, d.kv_lora_rank, d.qk_rope_head_dim, d.qk_nope_head_dim,
            d.v_head_dim, c.dtype, c.kv_dtype, c.k_scale, self.meta.block_size(), c.num_kv_splits,
            c.decode_threshold, c.max_model_len, c.max_num_seqs, self.reqs
        )
    }
}

/// A step `backend` accepts, or None (drawn again) where it rejects the
/// configuration or the batch.
fn draw_mla(rng: &mut ChaCha8Rng, backend: &dyn MlaBackend) -> Result<Option<MlaCase>> {
    let dtype = pick(rng, &[DType::Bf16, DType::F16]);
    let kv_dtype = pick(rng, &[dtype, dtype, DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn]);
    let (kv_lora_rank, qk_rope_head_dim) = pick(rng, &[(512usize, 64usize), (512, 64), (256, 64)]);
    // TP shards of at most 128 model heads; DeepSeek's 128 + 128 nope / v
    // heads only with few heads (MLA_MAX_PROJ_ROWS), else narrow ones.
    let per_rank = pick(rng, &[16usize, 16, 16, 1, 4, 20, 128]);
    let tp = pick(rng, &[1usize, 1, 2, 4]).min(128 / per_rank);
    let (mut qk_nope_head_dim, mut v_head_dim) =
        pick(rng, &[(128usize, 128usize), (32, 32), (16, 16), (48, 24)]);
    if tp * per_rank * (qk_nope_head_dim + v_head_dim) > MLA_MAX_PROJ_ROWS {
        (qk_nope_head_dim, v_head_dim) = (16, 16);
    }
    let dims = MlaDims {
        kv_lora_rank,
        qk_rope_head_dim,
        qk_nope_head_dim,
        v_head_dim,
    };
    let mscale = 0.1 * 40f32.ln() + 1.0;
    let base = MlaConfig::deepseek_r1(tp);
    let cfg = MlaConfig {
        num_heads: per_rank * tp,
        dims,
        scale: ((qk_nope_head_dim + qk_rope_head_dim) as f32).powf(-0.5) * mscale * mscale,
        dtype,
        kv_dtype,
        k_scale: if kv_dtype.is_fp8() {
            rng.gen_range(0.01f32..0.05)
        } else {
            1.0
        },
        num_kv_splits: pick(rng, &[None, None, Some(1), Some(3), Some(8)]),
        decode_threshold: pick(rng, &[1usize, 1, 2, 4]),
        max_model_len: pick(rng, &[8usize, 32, 4096]),
        max_num_seqs: pick(rng, &[1usize, 4, 256]),
        profile: pick(rng, &[Profile::Pr26980, Profile::Latest]),
        ..base
    };
    let block_size = pick(rng, &[1usize, 16, 16, 64]);
    if backend.check(&cfg, block_size).is_err() {
        return Ok(None);
    }
    // Prefill / context tokens the per-case work bound allows (every rank
    // up-projects every prefill and context token).
    let per_token = tp * per_rank * (qk_nope_head_dim + v_head_dim) * kv_lora_rank;
    let max_tokens = (MLA_WORK_PER_CASE / per_token).clamp(8, 400);
    let thr = cfg.decode_threshold;
    let num_decodes = rng.gen_range(0..=3usize);
    let num_prefills = rng.gen_range(usize::from(num_decodes == 0)..=3usize);
    let uniform_q = rng.gen_range(1..=thr);
    // Decode contexts: every rank scores and sums every (row, key, head) over the latent.
    let max_decode_ctx =
        (MLA_WORK_PER_CASE / (tp * per_rank * thr * 2 * kv_lora_rank)).clamp(1, 300);
    let mut reqs = Vec::new();
    for _ in 0..num_decodes {
        // Uniform decode lengths half the time (TRITON_MLA needs them).
        let q = if rng.gen_bool(0.5) {
            uniform_q
        } else {
            rng.gen_range(1..=thr)
        };
        reqs.push((q, rng.gen_range(0..=max_decode_ctx)));
    }
    let mut budget = max_tokens;
    for _ in 0..num_prefills {
        let q = rng.gen_range(thr + 1..=(thr + 24).min(budget.max(thr + 1)));
        let c = if rng.gen_bool(0.3) {
            0
        } else {
            rng.gen_range(0..=budget.saturating_sub(q))
        };
        budget = budget.saturating_sub(q + c).max(thr + 1);
        reqs.push((q, c));
    }
    let per_req: Vec<usize> = reqs
        .iter()
        .map(|&(q, c)| (q + c).div_ceil(block_size))
        .collect();
    let num_blocks = per_req.iter().sum::<usize>() + rng.gen_range(1..4);
    let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
    ids.shuffle(rng);
    let mut next = ids.into_iter();
    let rows: Vec<Vec<i32>> = per_req
        .iter()
        .map(|&n| next.by_ref().take(n).collect())
        .collect();
    let (mut qsl, mut slots) = (vec![0i32], Vec::new());
    for (i, &(q, c)) in reqs.iter().enumerate() {
        slots.extend(
            (c..c + q).map(|t| {
                rows[i][t / block_size] as i64 * block_size as i64 + (t % block_size) as i64
            }),
        );
        qsl.push(qsl[i] + q as i32);
    }
    let seq_lens = reqs.iter().map(|&(q, c)| (q + c) as i32).collect();
    let meta = AttentionMetadata::new(
        block_size,
        num_blocks,
        qsl,
        seq_lens,
        BlockTableTensor::from_rows(&rows),
        slots,
        true,
    )?;
    if mla::common::num_decodes(backend, &meta, &cfg).is_err() {
        return Ok(None);
    }
    // The old context: random stored latents in every slot.
    let layout = MlaLayout::for_dims(&dims, num_blocks, block_size, kv_dtype)?;
    let spread = if kv_dtype.is_fp8() { 100.0 } else { 2.0 };
    let data = (0..layout.numel())
        .map(|_| kv_dtype.round(rng.gen_range(-spread..spread)))
        .collect();
    let cache = LatentCache::from_tensor(layout, data)?;
    let t = meta.num_actual_tokens();
    let mut values = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| dtype.round(rng.gen_range(-2.0f32..2.0)))
            .collect()
    };
    let q = values(t * cfg.num_heads * (qk_nope_head_dim + qk_rope_head_dim));
    let kv_c = values(t * kv_lora_rank);
    let k_pe = values(t * qk_rope_head_dim);
    let weights = MlaWeights::random(cfg.num_heads, dims, dtype, rng.gen())?;
    Ok(Some(MlaCase {
        cfg,
        weights,
        cache,
        meta,
        q,
        kv_c,
        k_pe,
        reqs,
    }))
}

/// One MLA backend's step on the emulator and through [`GpuExecutor`]:
/// every rank's output and the latent cache after the write, bit for bit.
pub fn run_mla(gpu: &Gpu, backend_name: BackendName, opts: DiffOptions) -> Result<KernelReport> {
    let backend = mla::by_name(backend_name)?;
    let name = backend_name.name();
    let flavour = device_flavour(gpu, backend_name, opts.flavour)?;
    let (cpu, gx) = (Cpu::new(flavour), GpuExecutor::with_flavour(gpu, flavour)?);
    let mut rng = rng_for(name, opts.seed);
    let mut tally = Tally::new(&report_name(name, flavour));
    let (mut draws, mut refusal) = (0usize, None);
    while opts.more(tally.cases()) {
        draws += 1;
        let why = refusal.as_ref();
        check_draw_budget(
            draws,
            tally.cases(),
            "MLA backend diff case space",
            name,
            why,
        )?;
        let Some(case) = draw_mla(&mut rng, backend.as_ref())? else {
            continue;
        };
        let cfg = &case.cfg;
        if let Err(e) = admits_mla(backend.as_ref(), flavour, &case.meta, cfg) {
            refusal = Some(e);
            continue;
        }
        let step = MlaStep {
            q: &case.q,
            kv_c: &case.kv_c,
            k_pe: &case.k_pe,
            meta: &case.meta,
        };
        let (mut sim_cache, mut gpu_cache) = (case.cache.clone(), case.cache.clone());
        let sim = run_mla_step_with(
            &cpu,
            backend.as_ref(),
            &step,
            &mut sim_cache,
            &case.weights,
            cfg,
        )?;
        let dev = run_mla_step_with(
            &gx,
            backend.as_ref(),
            &step,
            &mut gpu_cache,
            &case.weights,
            cfg,
        )?;
        let desc = || format!("{name}: {}", case.describe());
        let dev_cache: Vec<u32> = gpu_cache
            .data
            .iter()
            .map(|&x| cfg.kv_dtype.to_bits(x))
            .collect();
        tally.compare_values(
            &desc,
            "latent cache",
            &sim_cache.layout.shape(),
            cfg.kv_dtype,
            &sim_cache.data,
            &dev_cache,
        );
        for (s, d) in sim.iter().zip(&dev) {
            let dev_bits: Vec<u32> = d.out.iter().map(|&x| cfg.dtype.to_bits(x)).collect();
            let shape = [
                case.meta.num_actual_tokens(),
                s.heads.len(),
                cfg.dims.v_head_dim,
            ];
            tally.compare_values(
                &desc,
                &format!("rank {} output", s.rank),
                &shape,
                cfg.dtype,
                &s.out,
                &dev_bits,
            );
        }
        tally.case_done();
    }
    Ok(tally.finish())
}

/// `attnlab diff` entries, one per emulated MLA backend.
pub fn triton_mla(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run_mla(gpu, BackendName::TritonMla, opts)
}
pub fn rocm_aiter_mla(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run_mla(gpu, BackendName::RocmAiterMla, opts)
}
pub fn rocm_aiter_triton_mla(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    run_mla(gpu, BackendName::RocmAiterTritonMla, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn accepted(name: BackendName, draws: usize) -> Vec<MlaCase> {
        let backend = mla::by_name(name).expect("an MLA backend");
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        (0..draws)
            .filter_map(|_| draw_mla(&mut rng, backend.as_ref()).expect("a valid draw"))
            .collect()
    }

    #[test]
    fn every_mla_backend_accepts_a_share_of_the_draws_with_decodes_and_chunked_prefills() {
        for b in mla::mla_backends() {
            let cases = accepted(b.name(), 80);
            assert!(
                cases.len() >= 15,
                "{}: {} of 80 accepted",
                b.name(),
                cases.len()
            );
            let thr = |c: &MlaCase| c.cfg.decode_threshold;
            assert!(
                cases.iter().any(|c| c.reqs.iter().any(|r| r.0 <= thr(c))),
                "{}: no decode",
                b.name()
            );
            assert!(
                cases
                    .iter()
                    .any(|c| c.reqs.iter().any(|r| r.0 > thr(c) && r.1 > 0)),
                "{}: no prefill with context",
                b.name()
            );
            assert!(
                cases.iter().any(|c| c.cfg.kv_dtype.is_fp8()),
                "{}: no fp8 cache",
                b.name()
            );
        }
    }

    /// The diff's emulator side: every draw runs through the backend's own
    /// routing (slow in debug builds: `cargo test --release -- --ignored`).
    #[test]
    #[ignore]
    fn mla_draws_run_on_the_emulator() {
        for b in mla::mla_backends() {
            let start = std::time::Instant::now();
            let cases = accepted(b.name(), 200);
            for c in &cases {
                let step = MlaStep {
                    q: &c.q,
                    kv_c: &c.kv_c,
                    k_pe: &c.k_pe,
                    meta: &c.meta,
                };
                let mut cache = c.cache.clone();
                run_mla_step_with(&Cpu::FMA, b.as_ref(), &step, &mut cache, &c.weights, &c.cfg)
                    .unwrap_or_else(|e| panic!("{}: {e}: {}", b.name(), c.describe()));
            }
            eprintln!(
                "{}: {} cases in {:?}",
                b.name(),
                cases.len(),
                start.elapsed()
            );
        }
    }
}
