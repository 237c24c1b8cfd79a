//! The real-bug zoo (issue 14): each [`Fault`] is run against the property
//! that should catch it, with proptest generating (and shrinking) the
//! inputs, and the outcome says whether it was caught, how long the first
//! failing case took, and the smallest counterexample shrinking found.
//!
//! Seven properties cover the 21 faults; each is a specification that holds
//! for the emulator as it is (the zoo's tests check that too) and names what
//! it compares:
//!
//! | property | what it checks | generator |
//! |---|---|---|
//! | `backend_matches_reference` | an MHA backend's output against the f64 reference | [`crate::draw::draw_with`] over a backend's layouts, blocks, heads, GQA ratios, windows, fp8 caches |
//! | `admitted_block_sizes_run` | a manager block size the backend admits splits into a kernel block size its kernels and cache writer run | multiples of 16 and the hybrid sizes 272/544/784/1056 |
//! | `launch_choice_is_per_rank` | the 2D/3D choice does not change with the TP size (the config's heads are this rank's) | [`crate::draw::draw_with`] decode-heavy batches, TP 1..8 |
//! | `merge_matches_reference` | `merge_attn_states` (HIP) against the f64 merge, empty sides included | LSEs finite, -inf or +inf per side and element |
//! | `varlen_lse_matches_reference` | the LSE `flash_attn_varlen` returns against f64, rows with no key included | varlen batches with causal, windowed and key-less rows |
//! | `mla_step_matches_reference` | one MLA step (decode and chunked prefill) against the f64 MLA reference | requests, block and page sizes, heads per rank, fp8 latents |
//! | `kernel_index_arithmetic_is_exact` | every kernel addresses the last element of a cache where it is ([`crate::addressing`]) | virtual caches of up to 2^26 blocks, never allocated |
//!
//! Deterministic: the proptest seed of every batch of cases is derived from
//! the fault's index and the batch number.

use crate::addressing::{check_extent, AddressedKernel, CacheExtent};
use crate::backends::mla::common::{run_mla_step, MlaStep};
use crate::backends::mla::rocm_aiter_mla::RocmAiterMla;
use crate::backends::mla::triton_mla::TritonMla;
use crate::backends::mla::{MlaBackend, MlaConfig};
use crate::backends::rocm_attn::{RocmAttn, RocmAttnProfile};
use crate::backends::{by_name, AttentionBackend};
use crate::draw::{draw_with, AttnCase, CaseSpace, Edge, Regimes};
use crate::kernels::flash_varlen::{flash_attn_varlen, VarlenParams, VarlenParamsBuilder};
use crate::kernels::merge_attn_states::{merge_attn_states_with, MergeKernel};
use crate::kernels::mla_cache::{concat_and_cache_mla, LatentCache};
use crate::kernels::mla_proj::MlaWeights;
use crate::kernels::softmax::OutLse;
use crate::kernels::unified_attention::{UnifiedLaunch, VllmLaunchOptions};
use crate::mla_workload::reference_step;
use crate::reference::{self, compare, Tolerance};
use crate::tensor::Flat;
use attnlab_shared::block_table::common_block_size_with;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::{Fault, FaultSet};
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use attnlab_shared::model::MlaDims;
use attnlab_shared::registry::{Capabilities, ROCM_AITER_FA, TRITON_ATTN};
use attnlab_shared::selection::Profile;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cell::Cell;
use std::fmt::Debug;
use std::time::{Duration, Instant};

/// Longest budget one fault may be given (`--budget-seconds`).
pub const MAX_BUDGET_SECONDS: f64 = 3600.0;
/// The default budget of one fault: the target.
pub const DEFAULT_BUDGET_SECONDS: f64 = 60.0;
/// Cases per proptest batch; the budget is checked between batches.
const CASES_PER_BATCH: u32 = 8;
/// Most time shrinking may take after a failure.
const MAX_SHRINK: Duration = Duration::from_secs(30);

/// The properties, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum Property {
    BackendMatchesReference,
    AdmittedBlockSizesRun,
    LaunchChoiceIsPerRank,
    MergeMatchesReference,
    VarlenLseMatchesReference,
    MlaStepMatchesReference,
    KernelIndexArithmeticIsExact,
}

impl Property {
    pub const ALL: [Property; 7] = [
        Property::BackendMatchesReference,
        Property::AdmittedBlockSizesRun,
        Property::LaunchChoiceIsPerRank,
        Property::MergeMatchesReference,
        Property::VarlenLseMatchesReference,
        Property::MlaStepMatchesReference,
        Property::KernelIndexArithmeticIsExact,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Property::BackendMatchesReference => "backend_matches_reference",
            Property::AdmittedBlockSizesRun => "admitted_block_sizes_run",
            Property::LaunchChoiceIsPerRank => "launch_choice_is_per_rank",
            Property::MergeMatchesReference => "merge_matches_reference",
            Property::VarlenLseMatchesReference => "varlen_lse_matches_reference",
            Property::MlaStepMatchesReference => "mla_step_matches_reference",
            Property::KernelIndexArithmeticIsExact => "kernel_index_arithmetic_is_exact",
        }
    }
}

impl From<Property> for &'static str {
    fn from(p: Property) -> &'static str {
        p.name()
    }
}

/// Which property (and, for the backend properties, which backend) is
/// aimed at each fault: the code path its real bug lived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Mha(MhaTarget),
    BlockSizes,
    PerRank,
    Merge,
    VarlenLse,
    Mla(MlaTarget),
    IndexArithmetic,
}

impl Probe {
    pub fn of(fault: Fault) -> Probe {
        use Fault::*;
        match fault {
            AiterMlaPageSizeIgnored | KvIndicesPerBlock | AiterMlaFp8Heads => {
                Probe::Mla(MlaTarget::AiterMla)
            }
            ChunkedMlaPrefillLse => Probe::Mla(MlaTarget::TritonMla),
            AiterPageAddressMul32 | TritonMlaPageStrideI32 | FlexPagedOffsetI32 | BlockIdU16 => {
                Probe::IndexArithmetic
            }
            MergeNegInfNan => Probe::Merge,
            EmptyRowPlusInfLse | ChunkedPrefillLse => Probe::VarlenLse,
            SplitUnmaskedUnion => Probe::Mha(MhaTarget::AiterUnified),
            WindowConventionMixed => Probe::Mha(MhaTarget::AiterFa),
            RocmAttnWindowOffByOne | Ll4miHeadSize32 => Probe::Mha(MhaTarget::RocmAttn),
            BlockQTimesQpkNonPow2 | Fp8KvDtypeMismatch => Probe::Mha(MhaTarget::TritonAttn),
            CacheWriterBlock1056 | AnyBlockSizeClaim | HybridBlockSizeValidation => {
                Probe::BlockSizes
            }
            ThresholdModelKvHeads => Probe::PerRank,
        }
    }

    pub fn property(self) -> Property {
        match self {
            Probe::Mha(_) => Property::BackendMatchesReference,
            Probe::BlockSizes => Property::AdmittedBlockSizesRun,
            Probe::PerRank => Property::LaunchChoiceIsPerRank,
            Probe::Merge => Property::MergeMatchesReference,
            Probe::VarlenLse => Property::VarlenLseMatchesReference,
            Probe::Mla(_) => Property::MlaStepMatchesReference,
            Probe::IndexArithmetic => Property::KernelIndexArithmeticIsExact,
        }
    }

    /// Every distinct probe (for the baseline: each must hold with no fault).
    pub fn all() -> Vec<Probe> {
        let mut v: Vec<Probe> = Vec::new();
        for &f in Fault::ALL {
            let p = Probe::of(f);
            if !v.contains(&p) {
                v.push(p);
            }
        }
        v
    }

    /// A short label: the property and its backend.
    pub fn label(self) -> String {
        match self {
            Probe::Mha(t) => format!("{} [{}]", self.property().name(), t.space().name),
            Probe::Mla(t) => format!("{} [{}]", self.property().name(), t.name()),
            _ => self.property().name().to_string(),
        }
    }
}

/// The smallest failing input shrinking found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counterexample {
    /// The input's size: KV tokens for attention cases, elements for merges,
    /// the block size or block count for the shape properties.
    pub size: usize,
    /// The input (shapes and, where short, values).
    pub input: String,
    /// What the property saw.
    pub failure: String,
}

/// One fault's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub fault: Fault,
    pub tracker: &'static str,
    pub root_cause: &'static str,
    pub property: Property,
    pub probe: String,
    pub caught: bool,
    /// Seconds from the start to the first failing case (shrinking excluded).
    pub seconds_to_failure: Option<f64>,
    /// Cases checked (rejected draws not counted) up to and including the
    /// first failure, or in all.
    pub cases: u64,
    pub counterexample: Option<Counterexample>,
    pub budget_seconds: f64,
}

/// An input the zoo generates: shrinkable by proptest, with a size.
trait ZooInput: Debug + Clone {
    fn size(&self) -> usize;
}

/// How a counterexample is reported: its size and a description.
fn shown<V: ZooInput>(v: &V) -> (usize, String) {
    (v.size(), format!("{v:?}"))
}

/// When a hunt stops if no case fails: after `budget` of wall time or once
/// `cases` cases have run (checked between batches of [`CASES_PER_BATCH`]),
/// whichever comes first.
#[derive(Debug, Clone, Copy)]
struct Stop {
    budget: Duration,
    cases: u64,
}

/// Runs `check` over `strategy` in batches until a case fails or `stop`
/// says so; shrinks the first failure.
fn hunt<S>(
    strategy: S,
    check: impl Fn(&S::Value) -> std::result::Result<(), String>,
    show: impl Fn(&S::Value) -> (usize, String),
    seed: u64,
    stop: Stop,
) -> (Option<(f64, Counterexample)>, u64)
where
    S: Strategy,
    S::Value: ZooInput,
{
    let start = Instant::now();
    let first = Cell::new(None::<f64>);
    let cases = Cell::new(0u64);
    let mut batch = 0u64;
    while start.elapsed() < stop.budget && cases.get() < stop.cases {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..16].copy_from_slice(&batch.to_le_bytes());
        let config = Config {
            cases: CASES_PER_BATCH,
            max_shrink_time: MAX_SHRINK.as_millis() as u32,
            max_shrink_iters: 4096,
            max_global_rejects: 100_000,
            max_local_rejects: 100_000,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
        let result = runner.run(&strategy, |input| {
            let verdict = check(&input);
            // Rejected inputs (not of this property) are not counted.
            let counted = !matches!(&verdict, Err(why) if why.starts_with(REJECT));
            if counted && first.get().is_none() {
                cases.set(cases.get() + 1);
            }
            match verdict {
                Ok(()) => Ok(()),
                Err(why) if why.starts_with(REJECT) => Err(TestCaseError::reject(why)),
                Err(why) => {
                    if first.get().is_none() {
                        first.set(Some(start.elapsed().as_secs_f64()));
                    }
                    Err(TestCaseError::fail(why))
                }
            }
        });
        match result {
            Ok(()) => batch += 1,
            Err(TestError::Fail(why, input)) => {
                let (size, described) = show(&input);
                let cx = Counterexample {
                    size,
                    input: described,
                    failure: why.to_string(),
                };
                return (first.get().map(|s| (s, cx)), cases.get());
            }
            // Too many rejects: a new batch draws again.
            Err(TestError::Abort(_)) => batch += 1,
        }
    }
    (None, cases.get())
}

/// Prefix of a check's `Err` that means "not an input of this property".
const REJECT: &str = "reject: ";

fn reject<T>(why: impl std::fmt::Display) -> std::result::Result<T, String> {
    Err(format!("{REJECT}{why}"))
}

/// Runs `fault` (or, with `None`, the probe with no fault: the baseline)
/// against its property for at most `budget`.
pub fn run_probe(
    probe: Probe,
    faults: FaultSet,
    budget: Duration,
    seed: u64,
) -> (Option<(f64, Counterexample)>, u64) {
    hunt_probe(
        probe,
        faults,
        seed,
        Stop {
            budget,
            cases: u64::MAX,
        },
    )
}

/// [`run_probe`] for a number of cases instead of a time budget: the probe
/// runs until a case fails or at least `cases` counted cases have run (the
/// last batch of `CASES_PER_BATCH` is run whole), the same cases on every
/// machine for one seed.
pub fn run_probe_cases(
    probe: Probe,
    faults: FaultSet,
    cases: u64,
    seed: u64,
) -> (Option<(f64, Counterexample)>, u64) {
    hunt_probe(
        probe,
        faults,
        seed,
        Stop {
            budget: Duration::MAX,
            cases,
        },
    )
}

fn hunt_probe(
    probe: Probe,
    faults: FaultSet,
    seed: u64,
    budget: Stop,
) -> (Option<(f64, Counterexample)>, u64) {
    match probe {
        Probe::Mha(t) => hunt(
            paged_input(t),
            |i| check_backend(t, i, faults),
            |i| show_paged(&t.space(), i),
            seed,
            budget,
        ),
        Probe::BlockSizes => hunt(
            block_size_input(),
            |i| check_block_sizes(i, faults),
            shown,
            seed,
            budget,
        ),
        Probe::PerRank => hunt(
            per_rank_input(),
            |i| check_per_rank(i, faults),
            |i| show_paged(&MhaTarget::TritonAttn.space(), i),
            seed,
            budget,
        ),
        Probe::Merge => hunt(
            merge_input(),
            |i| check_merge(i, faults),
            shown,
            seed,
            budget,
        ),
        Probe::VarlenLse => hunt(
            varlen_input(),
            |i| check_varlen(i, faults),
            shown,
            seed,
            budget,
        ),
        Probe::Mla(t) => hunt(
            mla_input(t),
            |i| check_mla(t, i, faults),
            shown,
            seed,
            budget,
        ),
        Probe::IndexArithmetic => hunt(
            extent_input(),
            |i| check_extents(i, faults),
            shown,
            seed,
            budget,
        ),
    }
}

/// Runs one fault for at most `budget_seconds` (0 < s <= [`MAX_BUDGET_SECONDS`]).
pub fn run_fault(fault: Fault, budget_seconds: f64) -> Result<Outcome> {
    if !(budget_seconds > 0.0 && budget_seconds <= MAX_BUDGET_SECONDS) {
        return Err(Error::invalid(
            "budget seconds",
            budget_seconds,
            format!("allowed range is (0, {MAX_BUDGET_SECONDS}]"),
        ));
    }
    let probe = Probe::of(fault);
    let seed = 0x200_0000 + fault as u64;
    let (found, cases) = run_probe(
        probe,
        FaultSet::only(fault),
        Duration::from_secs_f64(budget_seconds),
        seed,
    );
    let (seconds_to_failure, counterexample) = match found {
        Some((s, cx)) => (Some(s), Some(cx)),
        None => (None, None),
    };
    Ok(Outcome {
        fault,
        tracker: fault.tracker(),
        root_cause: fault.root_cause(),
        property: probe.property(),
        probe: probe.label(),
        caught: counterexample.is_some(),
        seconds_to_failure,
        cases,
        counterexample,
        budget_seconds,
    })
}

// ---------------------------------------------------------------------------
// backend_matches_reference

/// The MHA backends the zoo aims at, each with the space its kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MhaTarget {
    TritonAttn,
    /// ROCM_ATTN with vLLM 0.33's window (the seed era's is the bug itself).
    RocmAttn,
    AiterFa,
    AiterUnified,
}

/// What one backend's cases draw from.
pub struct MhaSpace {
    pub name: &'static str,
    pub layout: &'static [LayoutKind],
    pub blocks: &'static [usize],
    pub heads: &'static [usize],
    pub dtypes: &'static [DType],
    pub qpk: &'static [usize],
    pub fp8: &'static [DType],
}

const NHD: &[LayoutKind] = &[LayoutKind::Nhd];
const HALF: &[DType] = &[DType::Bf16, DType::F16];
const HKV: &[usize] = &[1, 2, 4];
const NO_FP8: &[DType] = &[];
/// Window edges a case may be drawn in (index 0: none).
const EDGES: [Option<Edge>; 4] = [
    None,
    Some(Edge::Window1),
    Some(Edge::WindowAtBlockEdge),
    Some(Edge::MaskedFirstTile),
];

impl MhaTarget {
    pub fn space(self) -> MhaSpace {
        match self {
            MhaTarget::TritonAttn => MhaSpace {
                name: "TRITON_ATTN",
                layout: NHD,
                blocks: &[16, 32, 64],
                heads: &[64, 128],
                dtypes: HALF,
                qpk: &[1, 2, 3, 4, 5, 6, 8],
                fp8: &[DType::Fp8E4m3Fnuz, DType::Fp8E4m3Fn],
            },
            MhaTarget::RocmAttn => MhaSpace {
                name: "ROCM_ATTN",
                layout: &[LayoutKind::RocmPaged],
                blocks: &[16, 32],
                heads: &[64, 128, 32],
                dtypes: HALF,
                qpk: &[1, 2, 4, 8],
                fp8: NO_FP8,
            },
            MhaTarget::AiterFa => MhaSpace {
                name: "ROCM_AITER_FA",
                layout: NHD,
                blocks: &[16, 32],
                heads: &[64, 128],
                dtypes: HALF,
                qpk: &[1, 2, 4, 8],
                fp8: NO_FP8,
            },
            MhaTarget::AiterUnified => MhaSpace {
                name: "ROCM_AITER_UNIFIED_ATTN",
                layout: NHD,
                blocks: &[16, 32, 64],
                heads: &[64, 128],
                dtypes: HALF,
                qpk: &[1, 2, 4, 8],
                fp8: NO_FP8,
            },
        }
    }

    fn backend(self) -> Box<dyn AttentionBackend> {
        match self {
            MhaTarget::RocmAttn => Box::new(RocmAttn {
                profile: RocmAttnProfile::V0_33,
            }),
            t => crate::backends::parse(t.space().name)
                .and_then(by_name)
                .expect("a registered backend"),
        }
    }
}

/// A paged case as indices into a backend's lists plus the sizes
/// [`draw_with`] draws below; every field shrinks toward the simplest case.
#[derive(Debug, Clone)]
pub struct PagedInput {
    pub seed: u64,
    pub block: usize,
    pub head: usize,
    pub dtype: usize,
    pub hkv: usize,
    pub qpk: usize,
    pub reqs: usize,
    pub context: usize,
    pub query: usize,
    pub window: bool,
    pub fp8: bool,
    pub edge: usize,
    /// The tensor-parallel size (only `launch_choice_is_per_rank` reads it).
    pub tp: usize,
}

fn paged_input(t: MhaTarget) -> impl Strategy<Value = PagedInput> {
    let s = t.space();
    (
        any::<u64>(),
        (
            0..s.blocks.len(),
            0..s.heads.len(),
            0..s.dtypes.len(),
            0..HKV.len(),
            0..s.qpk.len(),
        ),
        (1usize..=4, 1usize..=160, 1usize..=24),
        (any::<bool>(), any::<bool>(), 0..EDGES.len()),
    )
        .prop_map(
            |(
                seed,
                (block, head, dtype, hkv, qpk),
                (reqs, context, query),
                (window, fp8, edge),
            )| {
                PagedInput {
                    seed,
                    block,
                    head,
                    dtype,
                    hkv,
                    qpk,
                    reqs,
                    context,
                    query,
                    window,
                    fp8,
                    edge,
                    tp: 1,
                }
            },
        )
}

impl ZooInput for PagedInput {
    fn size(&self) -> usize {
        self.reqs * (self.context + self.query)
    }
}

/// A paged counterexample as the case it draws: its KV tokens and shapes.
fn show_paged(space: &MhaSpace, input: &PagedInput) -> (usize, String) {
    match draw_paged_case(space, input) {
        Some(c) => {
            let tp = if input.tp > 1 {
                format!("TP {}, ", input.tp)
            } else {
                String::new()
            };
            (
                c.meta.seq_lens().iter().map(|&x| x as usize).sum(),
                format!("{tp}{}", c.describe()),
            )
        }
        None => shown(input),
    }
}

/// The case `input` stands for in `space` (`None`: a shape the layout refuses).
fn draw_paged_case(space: &MhaSpace, input: &PagedInput) -> Option<AttnCase> {
    let one = |xs: &'static [usize], i: usize| std::slice::from_ref(&xs[i.min(xs.len() - 1)]);
    let case_space = CaseSpace {
        layouts: space.layout,
        block_sizes: one(space.blocks, input.block),
        head_sizes: one(space.heads, input.head),
        max_reqs: input.reqs,
        max_query_len: input.query,
        max_context: input.context,
        sinks: false,
        alibi: false,
        non_causal: false,
    };
    let dtype = std::slice::from_ref(&space.dtypes[input.dtype.min(space.dtypes.len() - 1)]);
    let regimes = Regimes {
        dtypes: dtype,
        fp8_kv: if input.fp8 { space.fp8 } else { NO_FP8 },
        num_kv_heads: one(HKV, input.hkv),
        queries_per_kv: one(space.qpk, input.qpk),
        softcap: false,
        window: input.window,
        zero_len_queries: false,
        null_block: true,
        max_cache_bytes: Some(4 << 20),
        edge: if input.window {
            EDGES[input.edge.min(EDGES.len() - 1)]
        } else {
            None
        },
    };
    draw_with(
        &mut ChaCha8Rng::seed_from_u64(input.seed),
        &case_space,
        &regimes,
    )
}

fn check_backend(
    t: MhaTarget,
    input: &PagedInput,
    faults: FaultSet,
) -> std::result::Result<(), String> {
    let space = t.space();
    let Some(case) = draw_paged_case(&space, input) else {
        return reject("a shape the layout refuses");
    };
    let backend = t.backend();
    if let Err(e) = backend.check(&case.cfg, case.meta.block_size()) {
        return reject(e);
    }
    let cfg = case.cfg.clone().with_faults(faults);
    let out = backend
        .forward(&case.query, &case.cache, &case.meta, &cfg)
        .map_err(|e| format!("{} refused a case it admits: {e}", space.name))?;
    let want = reference::paged_attention(&case.query, &case.cache, &case.meta, &case.cfg)
        .map_err(|e| format!("reference: {e}"))?;
    let tol = if case.cfg.kv_dtype().is_fp8() {
        Tolerance::new(0.15, 0.15)
    } else {
        Tolerance::new(1.5e-2, 1.6e-2)
    };
    let c = compare(&out, &want.out, tol).map_err(|e| e.to_string())?;
    if c.passed() {
        return Ok(());
    }
    let i = c.first_mismatch.unwrap_or(0);
    let (t, h, d) = (
        i / (case.cfg.num_heads() * case.cfg.head_size()),
        i / case.cfg.head_size() % case.cfg.num_heads(),
        i % case.cfg.head_size(),
    );
    Err(format!(
        "{}: {} of {} elements outside atol {} / rtol {}; first at out[{t}, {h}, {d}]: {} vs f64 {}",
        space.name, c.mismatches, c.len, tol.atol, tol.rtol, out[i], want.out[[t, h, d]]
    ))
}

// ---------------------------------------------------------------------------
// admitted_block_sizes_run

/// A manager block size for one of two backends.
#[derive(Debug, Clone)]
pub struct BlockSizeInput {
    pub backend: usize,
    pub block_size: usize,
}

impl ZooInput for BlockSizeInput {
    fn size(&self) -> usize {
        self.block_size
    }
}

const BLOCK_SIZE_BACKENDS: [(&str, &Capabilities); 2] = [
    ("TRITON_ATTN", &TRITON_ATTN),
    ("ROCM_AITER_FA", &ROCM_AITER_FA),
];

fn block_size_input() -> impl Strategy<Value = BlockSizeInput> {
    (
        0..BLOCK_SIZE_BACKENDS.len(),
        prop_oneof![
            (1usize..=80).prop_map(|k| 16 * k),
            prop::sample::select(vec![272usize, 544, 784, 1056]),
        ],
    )
        .prop_map(|(backend, block_size)| BlockSizeInput {
            backend,
            block_size,
        })
}

/// Both backends admit every multiple of 16 (vLLM splits a block the
/// kernels cannot take into kernel blocks); the kernel block size chosen
/// must divide it, run in the decode kernel and be written by the cache writer.
fn check_block_sizes(input: &BlockSizeInput, faults: FaultSet) -> std::result::Result<(), String> {
    let (name, caps) = BLOCK_SIZE_BACKENDS[input.backend.min(1)];
    let m = input.block_size;
    let advertised = caps.kernel_block_sizes_with(faults);
    let kb = common_block_size_with(m, advertised, faults).ok_or_else(|| {
        format!("{name} refuses manager block size {m}: no kernel block size among {advertised:?}")
    })?;
    if !m.is_multiple_of(kb) {
        return Err(format!(
            "{name}: kernel block size {kb} does not divide {m}"
        ));
    }
    let backend = crate::backends::parse(name)
        .and_then(by_name)
        .map_err(|e| e.to_string())?;
    if name == "ROCM_AITER_FA" {
        crate::rules::aiter_pa_block_size(kb)
            .map_err(|e| format!("{name} admits block size {m} as kernel blocks of {kb}: {e}"))?;
    }
    backend
        .cache_writer(kb)
        .check_block_size(kb, faults)
        .map_err(|e| format!("{name} admits block size {m} (kernel blocks of {kb}): {e}"))
}

// ---------------------------------------------------------------------------
// launch_choice_is_per_rank

fn per_rank_input() -> impl Strategy<Value = PagedInput> {
    (
        any::<u64>(),
        0..HKV.len(),
        (1usize..=8, 1usize..=96, 1usize..=2),
        1usize..=8,
    )
        .prop_map(|(seed, hkv, (reqs, context, query), tp)| PagedInput {
            seed,
            block: 0,
            head: 0,
            dtype: 0,
            hkv,
            qpk: 0,
            reqs,
            context,
            query,
            window: false,
            fp8: false,
            edge: 0,
            tp,
        })
}

fn check_per_rank(input: &PagedInput, faults: FaultSet) -> std::result::Result<(), String> {
    let Some(case) = draw_paged_case(&MhaTarget::TritonAttn.space(), input) else {
        return reject("a shape the layout refuses");
    };
    let cfg = case.cfg.clone().with_faults(faults);
    let launch = |tp: usize| {
        let opts = VllmLaunchOptions {
            tensor_parallel_size: tp,
            ..VllmLaunchOptions::default()
        };
        UnifiedLaunch::vllm(&case.meta, &cfg, opts).map_err(|e| e.to_string())
    };
    let (one, at_tp) = (launch(1)?, launch(input.tp)?);
    if one == at_tp {
        return Ok(());
    }
    Err(format!(
        "TRITON_ATTN's launch changes with TP {}: {:?} at TP 1, {:?} at TP {} ({} kv heads per rank, {} requests, max query {})",
        input.tp, one.grid, at_tp.grid, input.tp, cfg.num_kv_heads(), case.meta.num_reqs(), case.meta.max_query_len()
    ))
}

// ---------------------------------------------------------------------------
// merge_matches_reference

/// Two partial results whose LSEs are finite, -inf or +inf per side and
/// element (a side with a non-finite LSE has output 0, as an empty FA
/// result has).
#[derive(Debug, Clone)]
pub struct MergeInput {
    pub tokens: usize,
    pub heads: usize,
    pub head_size: usize,
    /// Per `[head, token]`: (prefix, suffix) LSE class, 0 finite, 1 -inf, 2 +inf.
    pub classes: Vec<(u8, u8)>,
    pub seed: u64,
}

impl ZooInput for MergeInput {
    fn size(&self) -> usize {
        self.tokens * self.heads * self.head_size
    }
}

fn merge_input() -> impl Strategy<Value = MergeInput> {
    (1usize..=4, 1usize..=4, 1usize..=8).prop_flat_map(|(t, h, d)| {
        (prop::collection::vec((0u8..3, 0u8..3), t * h), any::<u64>()).prop_map(
            move |(classes, seed)| MergeInput {
                tokens: t,
                heads: h,
                head_size: d,
                classes,
                seed,
            },
        )
    })
}

fn check_merge(input: &MergeInput, faults: FaultSet) -> std::result::Result<(), String> {
    let (t, h, d) = (input.tokens, input.heads, input.head_size);
    let mut rng = ChaCha8Rng::seed_from_u64(input.seed);
    let lse_of = |c: u8, rng: &mut ChaCha8Rng| match c {
        1 => f32::NEG_INFINITY,
        2 => f32::INFINITY,
        _ => rng.gen_range(-8.0f32..8.0),
    };
    let (mut pl, mut sl) = (vec![0.0; h * t], vec![0.0; h * t]);
    for (i, &(p, s)) in input.classes.iter().enumerate() {
        pl[i] = lse_of(p, &mut rng);
        sl[i] = lse_of(s, &mut rng);
    }
    let out = |lse: &[f32], rng: &mut ChaCha8Rng| -> Vec<f32> {
        let mut o = vec![0.0f32; t * h * d];
        for tok in 0..t {
            for hh in 0..h {
                if lse[hh * t + tok].is_finite() {
                    for x in &mut o[(tok * h + hh) * d..][..d] {
                        *x = rng.gen_range(-2.0f32..2.0);
                    }
                }
            }
        }
        o
    };
    let (po, so) = (out(&pl, &mut rng), out(&sl, &mut rng));
    let part = |o: Vec<f32>, l: Vec<f32>| OutLse::new(t, h, d, o, l).map_err(|e| e.to_string());
    let (p, s) = (part(po.clone(), pl.clone())?, part(so.clone(), sl.clone())?);
    let got = merge_attn_states_with(&p, &s, DType::F32, MergeKernel::Hip, faults)
        .map_err(|e| e.to_string())?;
    let want = reference::merge_attn_states(&po, &pl, &so, &sl, h, d).map_err(|e| e.to_string())?;
    let c = compare(got.out(), &want.out, Tolerance::new(1e-4, 1e-4)).map_err(|e| e.to_string())?;
    if !c.passed() {
        let i = c.first_mismatch.unwrap_or(0);
        let (tok, hh) = (i / d / h, i / d % h);
        return Err(format!(
            "merge_attn_states (HIP): out[{tok}, {hh}, {}] = {} vs f64 {} with prefix lse {} and suffix lse {}",
            i % d,
            got.out()[i],
            want.out[[tok, hh, i % d]],
            pl[hh * t + tok],
            sl[hh * t + tok]
        ));
    }
    for (i, (&a, &b)) in got.lse().iter().zip(&want.lse).enumerate() {
        let same =
            (a as f64 == b) || (b.is_finite() && (a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()));
        if !same {
            return Err(format!(
                "merge_attn_states (HIP): lse[{}, {}] = {a} vs f64 {b} with prefix lse {} and suffix lse {}",
                i / t,
                i % t,
                pl[i],
                sl[i]
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// varlen_lse_matches_reference

/// A varlen batch: per sequence (query rows, keys); `causal` is
/// bottom-right aligned, so rows above the diagonal of a short K see no key.
#[derive(Debug, Clone)]
pub struct VarlenInput {
    pub seqs: Vec<(usize, usize)>,
    pub heads: usize,
    pub head_size: usize,
    pub causal: bool,
    pub window: Option<usize>,
    pub seed: u64,
}

impl ZooInput for VarlenInput {
    fn size(&self) -> usize {
        self.seqs.iter().map(|&(q, k)| q + k).sum()
    }
}

fn varlen_input() -> impl Strategy<Value = VarlenInput> {
    (
        prop::collection::vec((1usize..=6, 0usize..=40), 1..=3),
        1usize..=2,
        prop::sample::select(vec![8usize, 16]),
        any::<bool>(),
        prop::option::of(1usize..=8),
        any::<u64>(),
    )
        .prop_map(
            |(seqs, heads, head_size, causal, window, seed)| VarlenInput {
                seqs,
                heads,
                head_size,
                causal,
                window,
                seed,
            },
        )
}

fn check_varlen(input: &VarlenInput, faults: FaultSet) -> std::result::Result<(), String> {
    let (h, d) = (input.heads, input.head_size);
    let mut rng = ChaCha8Rng::seed_from_u64(input.seed);
    let (mut cu_q, mut cu_k) = (vec![0i32], vec![0i32]);
    for &(q, k) in &input.seqs {
        cu_q.push(cu_q[cu_q.len() - 1] + q as i32);
        cu_k.push(cu_k[cu_k.len() - 1] + k as i32);
    }
    let (tq, tk) = (cu_q[cu_q.len() - 1] as usize, cu_k[cu_k.len() - 1] as usize);
    let mut vals = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect() };
    let (q, k, v) = (vals(tq * h * d), vals(tk * h * d), vals(tk * h * d));
    let scale = 1.0 / (d as f32).sqrt();
    let params = VarlenParamsBuilder {
        causal: input.causal,
        window: input.window,
        faults,
        ..VarlenParams::builder(h, h, d, DType::F32, scale)
    }
    .build()
    .map_err(|e| e.to_string())?;
    let got = flash_attn_varlen(&q, &k, &v, &cu_q, &cu_k, &params).map_err(|e| e.to_string())?;
    // f64 LSE with the kernel's mask: causal (or windowed) rows are
    // bottom-right aligned, a window keeps keys pos - t < W.
    let masked = input.causal || input.window.is_some();
    for (b, &(sq, sk)) in input.seqs.iter().enumerate() {
        for i in 0..sq {
            let pos = i as i64 + sk as i64 - sq as i64;
            for hh in 0..h {
                let qi = &q[((cu_q[b] as usize + i) * h + hh) * d..][..d];
                let mut scores = vec![];
                for t in 0..sk {
                    let seen = !masked
                        || (pos >= t as i64
                            && input.window.is_none_or(|w| pos - (t as i64) < w as i64));
                    if seen {
                        let kt = &k[((cu_k[b] as usize + t) * h + hh) * d..][..d];
                        let dot: f64 = qi.iter().zip(kt).map(|(&a, &c)| a as f64 * c as f64).sum();
                        scores.push(dot * scale as f64);
                    }
                }
                let want = if scores.is_empty() {
                    f64::NEG_INFINITY
                } else {
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln()
                };
                let gotv = got.lse()[hh * tq + cu_q[b] as usize + i] as f64;
                let ok = gotv == want
                    || (want.is_finite() && (gotv - want).abs() <= 1e-3 * (1.0 + want.abs()));
                if !ok {
                    return Err(format!(
                        "flash_attn_varlen: lse of sequence {b} row {i} head {hh} = {gotv} vs f64 {want} ({} visible keys of {sk}, {sq} query rows, causal {}, window {:?})",
                        scores.len(),
                        input.causal,
                        input.window
                    ));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// mla_step_matches_reference

/// The MLA backends the zoo aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MlaTarget {
    TritonMla,
    AiterMla,
}

impl MlaTarget {
    pub fn name(self) -> &'static str {
        match self {
            MlaTarget::TritonMla => "TRITON_MLA",
            MlaTarget::AiterMla => "ROCM_AITER_MLA",
        }
    }
}

/// The small MLA shape of attnlab's MLA tests: a 320-wide latent.
const MLA_DIMS: MlaDims = MlaDims {
    kv_lora_rank: 256,
    qk_rope_head_dim: 64,
    qk_nope_head_dim: 32,
    v_head_dim: 32,
};
const MLA_BLOCKS: [usize; 3] = [16, 1, 32];
const MLA_PAGES: [usize; 4] = [1, 2, 4, 16];
const MLA_HEADS: [usize; 4] = [16, 8, 24, 32];

/// One MLA step: requests `(query_len, context_len)` (decodes first),
/// block and AITER page size, heads per rank, an fp8 latent cache or not.
#[derive(Debug, Clone)]
pub struct MlaInput {
    pub reqs: Vec<(usize, usize)>,
    pub block: usize,
    pub page: usize,
    pub heads: usize,
    pub fp8: bool,
    pub seed: u64,
}

impl ZooInput for MlaInput {
    fn size(&self) -> usize {
        self.reqs.iter().map(|&(q, c)| q + c).sum()
    }
}

fn mla_input(_t: MlaTarget) -> impl Strategy<Value = MlaInput> {
    (
        prop::collection::vec((1usize..=4, 0usize..=48), 1..=3),
        0..MLA_BLOCKS.len(),
        0..MLA_PAGES.len(),
        0..MLA_HEADS.len(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(reqs, b, p, h, fp8, seed)| MlaInput {
            reqs,
            block: MLA_BLOCKS[b],
            page: MLA_PAGES[p],
            heads: MLA_HEADS[h],
            fp8,
            seed,
        })
}

fn check_mla(t: MlaTarget, input: &MlaInput, faults: FaultSet) -> std::result::Result<(), String> {
    let kv_dtype = if input.fp8 {
        DType::Fp8E4m3Fnuz
    } else {
        DType::Bf16
    };
    let cfg = MlaConfig {
        num_heads: input.heads,
        dims: MLA_DIMS,
        scale: 1.0 / 96f32.sqrt(),
        dtype: DType::Bf16,
        kv_dtype,
        k_scale: if input.fp8 { 0.02 } else { 1.0 },
        // A small workspace: contexts are gathered in several chunks.
        max_model_len: 4,
        max_num_seqs: 1,
        profile: Profile::Latest,
        faults,
        ..MlaConfig::deepseek_r1(1)
    };
    let backend: Box<dyn MlaBackend> = match t {
        MlaTarget::TritonMla => Box::new(TritonMla),
        MlaTarget::AiterMla => Box::new(RocmAiterMla {
            page_size: input.page,
        }),
    };
    if let Err(e) = backend.check(&cfg, input.block) {
        return reject(e);
    }
    // Decodes (one query token) first, as vLLM orders a batch.
    let mut reqs = input.reqs.clone();
    reqs.sort_by_key(|&(q, _)| q > 1);
    let step = mla_step(&reqs, &cfg, input.block, input.seed).map_err(|e| e.to_string())?;
    let weights = MlaWeights::random(cfg.num_heads, cfg.dims, cfg.dtype, input.seed ^ 7)
        .map_err(|e| e.to_string())?;
    let mut cache = step.cache.clone();
    let st = MlaStep {
        q: &step.q,
        kv_c: &step.kv_c,
        k_pe: &step.k_pe,
        meta: &step.meta,
    };
    let ranks = run_mla_step(backend.as_ref(), &st, &mut cache, &weights, &cfg).map_err(|e| {
        format!(
            "{} refused a step it admits: {e}\n  step: {}",
            t.name(),
            describe_mla(input, &cfg)
        )
    })?;
    let want =
        reference_step(&step.q, &cache, &step.meta, &weights, &cfg).map_err(|e| e.to_string())?;
    let got = &ranks[0].out;
    // fp8: the prefill path attends to the new tokens' unquantized latents,
    // the reference to the cache's (vLLM's own fp8 tolerance is 0.15).
    let tol = if input.fp8 { 0.15 } else { 2e-2 };
    let c = compare(got, &want, Tolerance::new(tol, tol)).map_err(|e| e.to_string())?;
    if c.passed() {
        return Ok(());
    }
    let i = c.first_mismatch.unwrap_or(0);
    Err(format!(
        "{}: {} of {} outputs outside {tol}; first at {i}: {} vs f64 {}\n  step: {}",
        t.name(),
        c.mismatches,
        c.len,
        got[i],
        want.flat()[i],
        describe_mla(input, &cfg)
    ))
}

fn describe_mla(input: &MlaInput, cfg: &MlaConfig) -> String {
    format!(
        "(query_len, context_len) {:?}, block {}, AITER page {}, {} heads, latent {}",
        input.reqs, input.block, input.page, cfg.num_heads, cfg.kv_dtype
    )
}

struct MlaCase {
    meta: AttentionMetadata,
    q: Vec<f32>,
    kv_c: Vec<f32>,
    k_pe: Vec<f32>,
    cache: LatentCache,
}

/// The step's batch: contexts already in a cache of shuffled blocks (random
/// junk elsewhere), new tokens' latents and queries drawn from `seed`.
fn mla_step(reqs: &[(usize, usize)], cfg: &MlaConfig, bs: usize, seed: u64) -> Result<MlaCase> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vals = |n: usize, dt: DType, rng: &mut ChaCha8Rng| -> Vec<f32> {
        let spread = if dt.is_fp8() { 40.0 } else { 1.0 };
        (0..n)
            .map(|_| dt.round(rng.gen_range(-spread..spread)))
            .collect()
    };
    let per_req: Vec<usize> = reqs.iter().map(|&(q, c)| (q + c).div_ceil(bs)).collect();
    let num_blocks = per_req.iter().sum::<usize>() + 2;
    let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
    ids.shuffle(&mut rng);
    let mut next = ids.into_iter();
    let rows: Vec<Vec<i32>> = per_req
        .iter()
        .map(|&n| next.by_ref().take(n).collect())
        .collect();
    let slot = |r: usize, t: usize| rows[r][t / bs] as i64 * bs as i64 + (t % bs) as i64;
    let mut cache = LatentCache::zeros(MlaLayout::for_dims(
        &cfg.dims,
        num_blocks,
        bs,
        cfg.kv_dtype,
    )?);
    cache.data = vals(cache.data.len(), cfg.kv_dtype, &mut rng);
    let (lkv, r) = (cfg.dims.kv_lora_rank, cfg.dims.qk_rope_head_dim);
    let (mut qsl, mut slots) = (vec![0i32], vec![]);
    for (i, &(q, c)) in reqs.iter().enumerate() {
        let ctx_slots: Vec<i64> = (0..c).map(|t| slot(i, t)).collect();
        let ckv = vals(c * lkv, cfg.dtype, &mut rng);
        let cpe = vals(c * r, cfg.dtype, &mut rng);
        concat_and_cache_mla(&mut cache, &ckv, &cpe, &ctx_slots, cfg.k_scale)?;
        slots.extend((c..c + q).map(|t| slot(i, t)));
        qsl.push(qsl[i] + q as i32);
    }
    let t = slots.len();
    let seq_lens = reqs.iter().map(|&(q, c)| (q + c) as i32).collect();
    let meta = AttentionMetadata::new(
        bs,
        num_blocks,
        qsl,
        seq_lens,
        BlockTableTensor::from_rows(&rows),
        slots,
        true,
    )?;
    let qw = cfg.dims.qk_nope_head_dim + r;
    Ok(MlaCase {
        q: vals(t * cfg.num_heads * qw, cfg.dtype, &mut rng),
        kv_c: vals(t * lkv, cfg.dtype, &mut rng),
        k_pe: vals(t * r, cfg.dtype, &mut rng),
        meta,
        cache,
    })
}

// ---------------------------------------------------------------------------
// kernel_index_arithmetic_is_exact

/// A virtual cache: sizes only.
#[derive(Debug, Clone)]
pub struct ExtentInput {
    pub num_blocks: usize,
    pub block_size: usize,
    pub row_elems: usize,
}

impl ZooInput for ExtentInput {
    fn size(&self) -> usize {
        self.num_blocks
    }
}

fn extent_input() -> impl Strategy<Value = ExtentInput> {
    (
        1usize..=1 << 26,
        prop::sample::select(vec![1usize, 16, 64]),
        prop::sample::select(vec![128usize, 576, 1024]),
    )
        .prop_map(|(num_blocks, block_size, row_elems)| ExtentInput {
            num_blocks,
            block_size,
            row_elems,
        })
}

fn check_extents(input: &ExtentInput, faults: FaultSet) -> std::result::Result<(), String> {
    let extent = CacheExtent {
        num_blocks: input.num_blocks,
        block_size: input.block_size,
        row_elems: input.row_elems,
    };
    for k in AddressedKernel::ALL {
        check_extent(k, extent, faults).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_has_a_probe_and_every_probe_a_fault() {
        let probes = Probe::all();
        assert_eq!(probes.len(), 11, "{probes:?}");
        for p in Property::ALL {
            assert!(
                probes.iter().any(|q| q.property() == p),
                "{p:?} catches nothing"
            );
        }
    }

    #[test]
    fn a_budget_outside_its_range_is_refused_naming_it() {
        let e = run_fault(Fault::MergeNegInfNan, 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("budget seconds 0") && e.contains("3600"), "{e}");
    }
}
