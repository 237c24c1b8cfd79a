//! A whole scheduled workload through the emulated backends, every step
//! checked against the f64 [`reference`](mod@crate::reference) and the backends against each
//! other: what `attnlab run` does.
//!
//! ```text
//! requests  = seeded draw for the workload kind (prompt/output lengths)
//! steps     = Scheduler (shared::scheduler) run to completion
//! per backend: its own cache, in its own layout and kernel block size
//! canonical = NHD cache in manager blocks, written by reshape_and_cache_flash
//! for each step:
//!     q [T, Hq, D], k, v [T, Hkv, D] ~ seeded U(-1, 1), rounded to the dtype
//!     canonical <- k, v;  ref = reference::paged_attention(q, canonical)
//!     for each backend: write_kv; out = forward; |out - ref| <= tol(dtype)
//!     for each pair of backends: |out_a - out_b| <= tol(dtype)
//! ```
//! Randomness comes from one ChaCha8 stream per seed, so a run is
//! reproducible on any machine and thread count.

use crate::backends::exec::Cpu;
use crate::backends::flavour::{admits, Flavour, FlavourChoice};
use crate::backends::{by_name, mha_backends, AttentionBackend};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::kernels::reshape_and_cache::{reshape_and_cache, CacheWriter};
use crate::numerics::mma::MatrixTarget;
use crate::reference::{self, compare, Tolerance};
use crate::replay::{catch_panic, Status};
use crate::tensor::Flat;
use attnlab_shared::block_table::KernelBlockSplit;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::model::ModelPreset;
use attnlab_shared::registry::BackendName;
use attnlab_shared::scheduler::{Request, ScheduledStep, Scheduler, SchedulerConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The request mixes `attnlab run --workload` offers. Lengths are scaled down
/// so the default run finishes in seconds; the scheduler's token budget is
/// set so each kind exercises its path (decode steps, whole prefills,
/// chunked prefill mixing extends with decodes, long chunked extends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    Decode,
    Prefill,
    Mixed,
    LongExtend,
}

impl WorkloadKind {
    pub const NAMES: [&'static str; 4] = ["decode", "prefill", "mixed", "long-extend"];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "decode" => WorkloadKind::Decode,
            "prefill" => WorkloadKind::Prefill,
            "mixed" => WorkloadKind::Mixed,
            "long-extend" => WorkloadKind::LongExtend,
            _ => {
                return Err(Error::invalid(
                    "workload",
                    format!("'{s}'"),
                    format!("allowed: {}", Self::NAMES.join(", ")),
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Requests when `--requests` is not given.
    pub fn default_requests(self) -> usize {
        match self {
            WorkloadKind::Decode | WorkloadKind::Mixed => 8,
            WorkloadKind::Prefill => 4,
            WorkloadKind::LongExtend => 2,
        }
    }

    /// (prompt range, output range, max_num_batched_tokens).
    fn shape(self) -> ((usize, usize), (usize, usize), usize) {
        match self {
            WorkloadKind::Decode => ((8, 48), (8, 16), 8192),
            WorkloadKind::Prefill => ((32, 160), (1, 1), 8192),
            WorkloadKind::Mixed => ((16, 160), (2, 12), 96),
            WorkloadKind::LongExtend => ((384, 640), (2, 3), 128),
        }
    }

    /// The seeded request list.
    pub fn requests(self, n: usize, seed: u64) -> Vec<Request> {
        let ((p0, p1), (o0, o1), _) = self.shape();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| Request {
                prompt_len: rng.gen_range(p0..=p1),
                output_len: rng.gen_range(o0..=o1),
            })
            .collect()
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    pub model: &'static ModelPreset,
    pub kind: WorkloadKind,
    pub requests: usize,
    pub seed: u64,
    /// One backend (a vLLM enum member), or `None` for every emulated one.
    pub backend: Option<BackendName>,
    /// Manager block size; `None`: the preset's, else the scheduler's default.
    pub block_size: Option<usize>,
}

/// One backend's row of the final table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendRun {
    pub backend: String,
    pub status: Status,
    pub reason: Option<String>,
    pub steps: usize,
    pub tokens: usize,
    pub max_abs_err_vs_ref: f64,
    /// Largest |out - other backend's out| over all steps and backends.
    pub max_diff_vs_others: f64,
    /// Elements outside tolerance (vs reference and vs other backends).
    pub mismatches: usize,
    pub kernel_block_size: Option<usize>,
    pub layout: Option<&'static str>,
    /// The kernel flavour it ran (`fma`, `tensor-core (gfx942)`).
    pub flavour: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadReport {
    pub model: &'static str,
    pub workload: WorkloadKind,
    pub requests: usize,
    pub seed: u64,
    pub block_size: usize,
    pub steps: usize,
    pub tokens: usize,
    pub tolerance: Tolerance,
    pub backends: Vec<BackendRun>,
}

impl WorkloadReport {
    pub fn passed(&self) -> bool {
        self.backends.iter().all(|b| b.status != Status::Fail)
    }
}

/// The attention config of a preset (MHA only: MLA models have their own path).
pub fn model_config(model: &ModelPreset) -> Result<AttnConfig> {
    if model.mla.is_some() {
        return Err(Error::unsupported(
            format!("model {}", model.name),
            "attnlab run emulates MHA backends; MLA models are not runnable here",
        ));
    }
    AttnConfig::new(
        model.num_heads,
        model.num_kv_heads,
        model.head_size,
        model.dtype,
    )
}

/// The scheduler's steps for a spec, computed up front (the scheduler is
/// deterministic) so the caller knows how many there will be.
pub fn schedule(spec: &WorkloadSpec) -> Result<(SchedulerConfig, Vec<ScheduledStep>)> {
    if spec.requests == 0 {
        return Err(Error::invalid("requests", 0, "must be >= 1"));
    }
    let (_, _, budget) = spec.kind.shape();
    let cfg = SchedulerConfig {
        block_size: spec
            .block_size
            .or(spec.model.block_size)
            .unwrap_or(attnlab_shared::scheduler::DEFAULT_BLOCK_SIZE),
        max_num_batched_tokens: budget,
        ..SchedulerConfig::default()
    };
    let mut sched = Scheduler::new(cfg.clone(), &spec.kind.requests(spec.requests, spec.seed))?;
    let mut steps = Vec::new();
    while !sched.is_finished() {
        let s = sched.step()?;
        if s.requests.is_empty() {
            return Err(Error::unsupported(
                "workload",
                format!("the scheduler made no progress at step {}", s.index),
            ));
        }
        steps.push(s);
    }
    Ok((cfg, steps))
}

/// Refuses a run whose KV caches (one per backend, plus the reference's;
/// `per_token` f32 values each) would exceed the memory budget.
pub fn check_cache_memory(
    num_blocks: usize,
    block_size: usize,
    per_token: usize,
    backends: usize,
) -> Result<()> {
    let bytes = [num_blocks, block_size, per_token, 4, backends + 1]
        .iter()
        .fold(1u128, |a, &x| a.saturating_mul(x as u128));
    attnlab_shared::limits::check_memory(
        &format!(
            "KV caches of {num_blocks} blocks of {block_size} tokens, for {backends} backend(s) and the reference,"
        ),
        bytes,
    )
}

/// `n` values ~ U(-1, 1) from `rng`, rounded to `dtype`: the Q/K/V of runs and benches.
pub fn draw(rng: &mut impl Rng, n: usize, dtype: DType) -> Vec<f32> {
    (0..n)
        .map(|_| dtype.round(rng.gen_range(-1.0f32..1.0)))
        .collect()
}

/// [`draw`] from a fresh ChaCha8 stream seeded with `seed`.
pub fn seeded_values(seed: u64, n: usize, dtype: DType) -> Vec<f32> {
    draw(&mut ChaCha8Rng::seed_from_u64(seed), n, dtype)
}

/// One backend's live state during a run.
struct Lane {
    backend: Box<dyn AttentionBackend>,
    flavour: Flavour,
    kernel_block_size: usize,
    cache: KvCache,
    row: BackendRun,
}

/// Runs the workload in the fma flavour; `on_step(done, total)` is called
/// after every step.
pub fn run_workload(
    spec: &WorkloadSpec,
    on_step: impl FnMut(usize, usize),
) -> Result<WorkloadReport> {
    run_workload_in(spec, FlavourChoice::Fma, MatrixTarget::Gfx942, on_step)
}

/// [`run_workload`] with each backend in the flavour `choice` resolves to
/// on `target` (`auto`: what vLLM's kernels use there). A backend whose
/// launches the flavour refuses (`flavour::admits`: a launch with no
/// tensor-core kernel, an option its kernel lacks) is skipped from that
/// step on, with the refusal as its reason.
pub fn run_workload_in(
    spec: &WorkloadSpec,
    choice: FlavourChoice,
    target: MatrixTarget,
    mut on_step: impl FnMut(usize, usize),
) -> Result<WorkloadReport> {
    let cfg = model_config(spec.model)?;
    let (sched_cfg, steps) = schedule(spec)?;
    let num_blocks = steps.first().map_or(1, |s| s.num_blocks);
    let bs = sched_cfg.block_size;
    let tol = Tolerance::for_dtype(cfg.dtype());
    let backends = match &spec.backend {
        Some(name) => vec![by_name(*name)?],
        None => mha_backends(),
    };
    check_cache_memory(
        num_blocks,
        bs,
        cfg.num_kv_heads() * cfg.head_size() * 2,
        backends.len(),
    )?;
    let mut skipped = Vec::new();
    let mut lanes = Vec::new();
    for b in backends {
        let setup = b.check(&cfg, bs).and_then(|()| {
            let kb = b.kernel_block_size(bs)?;
            let layout = b.cache_layout(
                &cfg,
                KernelBlockSplit::new(bs, kb)?.num_kernel_blocks(num_blocks),
                kb,
            )?;
            Ok((kb, layout))
        });
        match setup {
            Err(e) => skipped.push(BackendRun::new(
                b.name().name(),
                Status::Skipped,
                Some(e.to_string()),
            )),
            Ok((kb, layout)) => {
                let mut row = BackendRun::new(b.name().name(), Status::Pass, None);
                (row.kernel_block_size, row.layout) = (Some(kb), Some(layout.kind.name()));
                let flavour = choice.resolve(b.name(), target);
                row.flavour = flavour.to_string();
                lanes.push(Lane {
                    cache: KvCache::zeros(layout),
                    kernel_block_size: kb,
                    flavour,
                    backend: b,
                    row,
                });
            }
        }
    }

    let mut canonical = KvCache::zeros(KvLayout::new(
        LayoutKind::Nhd,
        num_blocks,
        bs,
        cfg.num_kv_heads(),
        cfg.head_size(),
        cfg.kv_dtype(),
    )?);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5eed_0fa7);
    // With every backend skipped there is nothing to compare: the report
    // (skips and their reasons) needs no reference.
    let live = if lanes.is_empty() {
        &steps[..0]
    } else {
        &steps[..]
    };
    for (done, step) in live.iter().enumerate() {
        let t = step.num_tokens();
        let q = draw(&mut rng, t * cfg.num_heads() * cfg.head_size(), cfg.dtype());
        let k = draw(
            &mut rng,
            t * cfg.num_kv_heads() * cfg.head_size(),
            cfg.dtype(),
        );
        let v = draw(
            &mut rng,
            t * cfg.num_kv_heads() * cfg.head_size(),
            cfg.dtype(),
        );
        let meta = step.metadata(bs)?;
        reshape_and_cache(
            CacheWriter::ReshapeAndCacheFlash,
            &mut canonical,
            &k,
            &v,
            meta.slot_mapping(),
            &cfg,
        )?;
        let reference = reference::paged_attention(&q, &canonical, &meta, &cfg)?.out;

        for lane in lanes.iter_mut().filter(|l| l.row.status == Status::Pass) {
            let m = step.metadata(lane.kernel_block_size)?;
            let kind = lane.cache.layout.kind;
            if let Err(e) = admits(lane.backend.as_ref(), lane.flavour, &m, &cfg, kind) {
                lane.row.status = Status::Skipped;
                lane.row.reason = Some(format!("step {}: {e}", step.index));
            }
        }
        let outs: Vec<Option<Result<Vec<f32>>>> = lanes
            .iter_mut()
            .map(|lane| {
                (lane.row.status == Status::Pass).then(|| run_step(lane, step, &q, &k, &v, &cfg))
            })
            .collect();
        score_step(
            &mut lanes.iter_mut().map(|l| &mut l.row).collect::<Vec<_>>(),
            outs,
            &reference.flat(),
            step.index,
            t,
            tol,
        )?;
        on_step(done + 1, steps.len());
    }
    let rows = lanes.into_iter().map(|l| l.row).chain(skipped).collect();
    Ok(WorkloadReport::new(spec, bs, &steps, tol, rows))
}

impl BackendRun {
    /// A backend's row before its first step.
    pub(crate) fn new(backend: &str, status: Status, reason: Option<String>) -> Self {
        BackendRun {
            backend: backend.to_string(),
            status,
            reason,
            steps: 0,
            tokens: 0,
            max_abs_err_vs_ref: 0.0,
            max_diff_vs_others: 0.0,
            mismatches: 0,
            kernel_block_size: None,
            layout: None,
            flavour: Flavour::Fma.to_string(),
        }
    }
}

impl WorkloadReport {
    /// The report of a finished run of `spec` over `steps` (`backends`: ran
    /// ones, then skipped ones).
    pub(crate) fn new(
        spec: &WorkloadSpec,
        block_size: usize,
        steps: &[ScheduledStep],
        tolerance: Tolerance,
        backends: Vec<BackendRun>,
    ) -> Self {
        WorkloadReport {
            model: spec.model.name,
            workload: spec.kind,
            requests: spec.requests,
            seed: spec.seed,
            block_size,
            steps: steps.len(),
            tokens: steps.iter().map(ScheduledStep::num_tokens).sum(),
            tolerance,
            backends,
        }
    }
}

/// Scores one step of `t` tokens, shared by the MHA and MLA runs: each lane's
/// output (`None`: the lane failed earlier and did not run) against the f64
/// `reference`, then every pair of outputs against each other. A lane fails
/// on its first error or mismatch, whose step and count become its reason;
/// its row keeps the largest errors seen.
pub(crate) fn score_step(
    rows: &mut [&mut BackendRun],
    outs: Vec<Option<Result<Vec<f32>>>>,
    reference: &[f64],
    step: usize,
    t: usize,
    tol: Tolerance,
) -> Result<()> {
    let mut ok: Vec<Option<Vec<f32>>> = Vec::with_capacity(outs.len());
    for (row, out) in rows.iter_mut().zip(outs) {
        ok.push(match out {
            None => None,
            Some(Err(e)) => {
                (row.status, row.reason) = (Status::Fail, Some(format!("step {step}: {e}")));
                None
            }
            Some(Ok(out)) => {
                let c = compare(&out, reference, tol)?;
                (row.steps, row.tokens) = (row.steps + 1, row.tokens + t);
                row.max_abs_err_vs_ref = row.max_abs_err_vs_ref.max(c.max_abs_err);
                if !c.passed() {
                    (row.status, row.mismatches) = (Status::Fail, row.mismatches + c.mismatches);
                    row.reason = Some(format!(
                        "step {step}: {} elements outside {tol:?} of the reference",
                        c.mismatches
                    ));
                }
                Some(out)
            }
        });
    }
    for a in 0..rows.len() {
        for b in (0..rows.len()).filter(|&b| b != a) {
            let (Some(oa), Some(ob)) = (&ok[a], &ok[b]) else {
                continue;
            };
            let c = compare(oa, ob, tol)?;
            let other = rows[b].backend.clone();
            let row = &mut rows[a];
            row.max_diff_vs_others = row.max_diff_vs_others.max(c.max_abs_err);
            if !c.passed() && row.status != Status::Fail {
                (row.status, row.mismatches) = (Status::Fail, row.mismatches + c.mismatches);
                row.reason = Some(format!(
                    "step {step}: {} elements differ from {other} beyond {tol:?}",
                    c.mismatches
                ));
            }
        }
    }
    Ok(())
}

/// One backend on one step: its metadata in its kernel blocks, write, forward.
fn run_step(
    lane: &mut Lane,
    step: &ScheduledStep,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cfg: &AttnConfig,
) -> Result<Vec<f32>> {
    let meta = step.metadata(lane.kernel_block_size)?;
    let (b, cache) = (&lane.backend, &mut lane.cache);
    let ex = Cpu::new(lane.flavour);
    catch_panic(b.name().name(), || {
        b.write_kv_with(&ex, cache, k, v, meta.slot_mapping(), cfg)?;
        b.forward_with(&ex, q, cache, &meta, cfg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_round_trip_and_unknown_is_rejected() {
        for n in WorkloadKind::NAMES {
            assert_eq!(WorkloadKind::parse(n).unwrap().name(), n);
        }
        let e = WorkloadKind::parse("burst").unwrap_err().to_string();
        assert!(e.contains("'burst'") && e.contains("long-extend"), "{e}");
    }

    #[test]
    fn requests_are_seeded_and_within_the_kind_ranges() {
        let a = WorkloadKind::Mixed.requests(16, 7);
        assert_eq!(a, WorkloadKind::Mixed.requests(16, 7));
        assert_ne!(a, WorkloadKind::Mixed.requests(16, 8));
        assert!(a
            .iter()
            .all(|r| (16..=160).contains(&r.prompt_len) && (2..=12).contains(&r.output_len)));
    }

    #[test]
    fn long_extend_is_chunked_into_extend_steps() {
        let spec = WorkloadSpec {
            model: attnlab_shared::model::preset("llama-3.1-8b").unwrap(),
            kind: WorkloadKind::LongExtend,
            requests: 1,
            seed: 0,
            backend: None,
            block_size: None,
        };
        let (_, steps) = schedule(&spec).unwrap();
        let extends = steps
            .iter()
            .filter(|s| {
                s.requests
                    .iter()
                    .any(|r| r.kind == attnlab_shared::metadata::RequestKind::Extend)
            })
            .count();
        assert!(extends >= 2, "{extends} extend steps");
    }
}
