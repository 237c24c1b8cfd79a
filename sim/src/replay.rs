//! Replays `attn-fixture/1` and `/2` files (see [`crate::fixture`]) through
//! the emulator and compares with what vLLM's kernels returned.
//!
//! - `paged_attention`: every MHA backend of [`mha_backends`] that accepts
//!   the case (`check` fails -> "skipped" with vLLM's reason). The fixture's
//!   canonical NHD cache is re-blocked to the backend's kernel block size
//!   ([`KernelBlockSplit`]: NHD memory is the same, the table expands) and
//!   laid into the backend's own layout ([`KvCache::from_nhd`]); then
//!   `forward`. Our f64 [`reference`](mod@crate::reference) is reported too, as a sanity check of
//!   the oracle against vLLM's kernels. TRITON_ATTN follows a /2 file's
//!   recorded `launch` (2D or 3D, segment count) or forced `path`
//!   (`unified_attention_2d`/`_3d`) instead of vLLM's launch rule.
//! - `merge_attn_states`: the merge kernel (Triton flavour, the one the
//!   fixtures were captured with), and the f64 reference merge; `output_lse`
//!   is compared too when the file has it.
//! - `mla_decode`: the f64 reference, and every MLA backend of
//!   [`mla_backends`] (`check` fails -> "skipped" with vLLM's reason).
//!
//! A result passes when it is within the fixture's `atol`/`rtol` of the
//! file's `output` and, when the file carries a `reference`, of that too.
//! A backend whose vLLM code knowingly computes something else than the
//! captured kernel (e.g. ROCM_ATTN drops `logits_soft_cap`; ROCM_AITER_FA
//! drops it on prefill and extend) is a `divergence` with that reason, not a
//! pass or fail. A file whose capture failed (`capture_error`) is one
//! `error` row; a case without `output` one `no_output` row.
//!
//! Beside pass/fail every row carries [`fidelity`] numbers: ULP statistics
//! of its result against the kernel's output, the same for the f64
//! reference rounded to the output dtype, and their ratio.

use crate::backends::exec::{Arithmetic, Cpu, KernelExecutor};
use crate::backends::flavour::{admits_mla, tc_step, Flavour, FlavourChoice};
use crate::backends::mla::{self, mla_backends};
use crate::backends::rocm_attn::{DecodeKernel, RocmAttn};
use crate::backends::steps::{Paged, Step};
use crate::backends::{mha_backends, AttentionBackend};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::fidelity::{self, UlpStats, BUCKETS};
use crate::fixture::LaunchGrid;
use crate::fixture::{self, Case, Fixture, MergeCase, MlaCase, PagedCase};
use crate::kernels::merge_attn_states::{merge_attn_states, MergeKernel};
use crate::kernels::mla_cache::LatentCache;
use crate::kernels::softmax::OutLse;
use crate::kernels::unified_attention::{
    Grid, UnifiedArgs, UnifiedLaunch, VllmLaunchOptions, NUM_PAR_SOFTMAX_SEGMENTS, TILE_SIZE_2D,
    TILE_SIZE_3D,
};
use crate::numerics::mma::MatrixTarget;
use crate::profile::VllmProfile;
use crate::reference::{self, compare, Comparison, Tolerance};
use crate::tensor::Flat;
use attnlab_shared::block_table::{block_table_tensor, KernelBlockSplit};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_shared::model::MlaDims;
use attnlab_shared::registry::BackendName;
use ndarray::{Array2, Array3};
use serde::Serialize;
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// Backend name of the rows produced by our f64 reference.
pub const REFERENCE: &str = "reference(f64)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
    /// vLLM's backend knowingly computes something else than the captured kernel.
    Divergence,
    /// The capture failed on this case (`capture_error`).
    Error,
    /// A case without `output`: nothing to compare with yet.
    NoOutput,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pass,
        Status::Fail,
        Status::Skipped,
        Status::Divergence,
        Status::Error,
        Status::NoOutput,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
            Status::Divergence => "divergence",
            Status::Error => "error",
            Status::NoOutput => "no_output",
        }
    }
}

/// One (file, backend) row of the replay table; the `--json` schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayResult {
    pub file: String,
    pub op: String,
    pub backend: String,
    pub status: Status,
    pub reason: Option<String>,
    /// Against the file's `output` (null when skipped or on error).
    pub max_abs_err: Option<f64>,
    pub max_rel_err: Option<f64>,
    pub mismatches: Option<usize>,
    /// The output dtype (`float16`, `bfloat16`, `float32`).
    pub dtype: String,
    /// paged_attention: the KV cache's `kv_cache_dtype` (`auto`, `fp8_e4m3`, `fp8_e4m3fnuz`).
    pub kv_cache_dtype: Option<String>,
    /// This row's result against the kernel's output, in output-dtype ULPs.
    pub ulp: Option<UlpStats>,
    /// The f64 reference rounded to the output dtype, against the kernel's output.
    pub reference_ulp: Option<UlpStats>,
    /// `mean_ulp(reference) / mean_ulp(this row)` ([`fidelity::fidelity_ratio`]);
    /// null when both are bit-exact or when the row is bit-exact and the reference is not
    /// (`fidelity_exact` says which).
    pub fidelity: Option<f64>,
    /// True when this row is bit-exact on every element and the reference is not.
    pub fidelity_exact: bool,
    /// merge_attn_states: this row's LSE against the file's `output_lse` (f32 ULPs).
    pub lse_ulp: Option<UlpStats>,
    /// The launch this row ran when it followed the file's record (e.g. `3d, 16 segments (recorded)`).
    pub launch: Option<String>,
}

/// Which backends to replay: `None` = all.
pub fn replay_paths(paths: &[PathBuf], backend: Option<&str>) -> Result<Vec<ReplayResult>> {
    replay_paths_with(paths, backend, |_, _| {})
}

/// [`replay_paths`], calling `on_file(done, total)` after each file. A file
/// that does not load is that file's "fail" row; the others still run.
/// The backend column of a merge fixture's emulator row, and `--backend`'s
/// name for it.
pub const MERGE_ROW: &str = "merge_attn_states";

pub fn replay_paths_with(
    paths: &[PathBuf],
    backend: Option<&str>,
    on_file: impl FnMut(usize, usize),
) -> Result<Vec<ReplayResult>> {
    replay_paths_in(paths, backend, FlavourChoice::Fma, on_file)
}

/// [`replay_paths_with`] with the MHA backends in the kernel flavour
/// `choice` resolves to on each file's capture target (its `capture.arch`:
/// `auto` on an H100 capture is the sm_90 tensor-core flavour, what vLLM's
/// Triton kernels computed there). A backend the flavour refuses (a launch
/// with no tensor-core kernel, an option its kernel lacks), and every MLA
/// backend outside the fma flavour, is a skipped row saying why.
pub fn replay_paths_in(
    paths: &[PathBuf],
    backend: Option<&str>,
    choice: FlavourChoice,
    mut on_file: impl FnMut(usize, usize),
) -> Result<Vec<ReplayResult>> {
    if let Some(name) = backend {
        // An unknown name is an error up front, naming the emulated MHA and MLA backends.
        // `merge_attn_states` (the kernel several backends call) names its rows too.
        let known: Vec<&'static str> = mha_backends()
            .iter()
            .map(|b| b.name().name())
            .chain(mla_backends().iter().map(|b| b.name().name()))
            .chain([MERGE_ROW])
            .collect();
        if !known.contains(&name) {
            return Err(Error::invalid(
                "backend",
                format!("'{name}'"),
                format!("emulated backends: {}", known.join(", ")),
            ));
        }
    }
    let mut out = Vec::new();
    let files = expand(paths)?;
    for (done, path) in files.iter().enumerate() {
        out.extend(replay_file_in(path, backend, choice));
        on_file(done + 1, files.len());
    }
    Ok(out)
}

/// Directories expand to their `*.safetensors` files, sorted.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| {
                Error::invalid(
                    "fixture directory",
                    p.display(),
                    format!("cannot be read: {e}"),
                )
            })?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            v.sort();
            files.extend(v);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Replays one file. A file that does not load is one "fail" row whose
/// reason is the loader's error (file, tensor, problem).
pub fn replay_file(path: &Path, backend: Option<&str>) -> Vec<ReplayResult> {
    replay_file_in(path, backend, FlavourChoice::Fma)
}

/// [`replay_file`] in a kernel flavour ([`replay_paths_in`]).
pub fn replay_file_in(
    path: &Path,
    backend: Option<&str>,
    choice: FlavourChoice,
) -> Vec<ReplayResult> {
    match fixture::load(path) {
        Ok(f) => replay_fixture_in(&f, backend, choice),
        Err(e) => vec![Row::new(&path.display().to_string(), "?", None, "(load)")
            .status(Status::Fail, Some(e.to_string()))],
    }
}

/// What one replayed computation produced: the output and, for merges, the LSE.
struct Outcome {
    out: Vec<f32>,
    lse: Option<Vec<f32>>,
}

impl Outcome {
    fn out(out: Vec<f32>) -> Self {
        Outcome { out, lse: None }
    }
}

/// The kernel's side of a fixture, flat (row-major) with its shapes, and
/// the f64 reference's ULP numbers.
struct Kernel<'a> {
    /// `[token, head, d]` (MLA `[seq, head, c]`), shape `shape`.
    out: Cow<'a, [f32]>,
    shape: Vec<usize>,
    /// `[head, token]` and its shape.
    lse: Option<(Cow<'a, [f32]>, Vec<usize>)>,
    /// The file's own reference, shaped like `out`.
    reference: Option<Cow<'a, [f32]>>,
    reference_ulp: Option<UlpStats>,
}

/// Replays an already loaded fixture.
pub fn replay_fixture(f: &Fixture, backend: Option<&str>) -> Vec<ReplayResult> {
    replay_fixture_in(f, backend, FlavourChoice::Fma)
}

/// The flavour `choice` resolves to for `backend` on the target a fixture
/// was captured on (`capture.arch`).
pub fn fixture_flavour(
    choice: FlavourChoice,
    backend: BackendName,
    header: &fixture::Header,
) -> Result<Flavour> {
    if choice == FlavourChoice::Fma {
        return Ok(Flavour::Fma);
    }
    let arch = header
        .capture
        .as_ref()
        .and_then(|c| c.get("arch"))
        .and_then(|a| a.as_str());
    let target = arch.map(MatrixTarget::parse).transpose()?.ok_or_else(|| {
        Error::invalid(
            "fixture capture.arch",
            "none",
            format!(
                "the capture's matrix-core target (sm_90, gfx90a, gfx942) for --flavour {}",
                choice.name()
            ),
        )
    })?;
    Ok(choice.resolve(backend, target))
}

/// Why `flavour` refuses to run backend `b` on a paged case (the route it
/// would run, or the recorded `launch`), or None. Errors outside the
/// flavour's checks are left to the run itself.
fn flavour_refusal(
    b: &dyn AttentionBackend,
    p: &PagedCase,
    cfg: &AttnConfig,
    launch: Option<&Forced>,
    flavour: Flavour,
) -> Option<String> {
    let Flavour::TensorCore(target) = flavour else {
        return None;
    };
    let meta = reblock(&p.meta, b.kernel_block_size(p.meta.block_size()).ok()?).ok()?;
    let steps: Vec<Step> = match launch {
        Some(Forced::Unified(l)) => vec![Step::Paged(Paged::Unified(*l))],
        Some(Forced::RocmDecode(d)) => RocmAttn::route_with_decode(&meta, *d)
            .into_iter()
            .flat_map(|s| s.steps)
            .collect(),
        None => b
            .route(&meta, cfg)
            .ok()?
            .into_iter()
            .flat_map(|s| s.steps)
            .collect(),
    };
    let kcfg = match b.kernel_config(cfg) {
        Ok(k) => k,
        Err(e) => return Some(e.to_string()),
    };
    steps
        .iter()
        .find_map(|s| tc_step(s, &kcfg, &meta, b.layout_kind(), target).err())
        .map(|e| e.to_string())
}

/// [`replay_fixture`] in a kernel flavour ([`replay_paths_in`]).
pub fn replay_fixture_in(
    f: &Fixture,
    backend: Option<&str>,
    choice: FlavourChoice,
) -> Vec<ReplayResult> {
    let tol = Tolerance::new(f.header.atol, f.header.rtol);
    let op = f.header.op.name();
    let dtype = f.header.dtype;
    let mut base = Row::new(&f.file, op, Some(dtype), "");
    if let Case::Paged(p) = &f.case {
        base.kv_cache_dtype = Some(fixture::fp8_name(p.cfg.kv_dtype()));
    }
    if let Some(e) = &f.header.capture_error {
        return vec![Row {
            backend: "(capture)".into(),
            ..base
        }
        .status(Status::Error, Some(format!("the capture failed: {e}")))];
    }
    let Some(output) = f.case.output() else {
        return vec![Row {
            backend: "(capture)".into(),
            ..base
        }
        .status(
            Status::NoOutput,
            Some("no output: a case not captured yet (run the capture on it)".into()),
        )];
    };
    let mut rows = Vec::new();
    let at = |name: &str| Row {
        backend: name.to_string(),
        ..base.clone()
    };
    match &f.case {
        Case::Paged(p) => {
            let r = reference::paged_attention(&p.query.flat(), &nhd_cache(p), &p.meta, &p.cfg);
            let f64_out = r.as_ref().ok().map(|r| &r.out);
            let kernel = Kernel::new(output, None, p.reference.as_ref(), dtype, f64_out);
            rows.push(at(REFERENCE).judge(
                r.map(|r| Outcome::out(to_f32(&r.out))),
                &kernel,
                tol,
                dtype,
            ));
            for b in mha_backends()
                .iter()
                .filter(|b| backend.is_none_or(|n| n == b.name().name()))
            {
                let cfg = match b.fixture_config(&p.cfg) {
                    Ok(cfg) => cfg,
                    // What vLLM's backend drops is a divergence only where it would run the case.
                    Err(reason) => {
                        rows.push(match b.check(&p.cfg, p.meta.block_size()) {
                            Err(e) => {
                                at(b.name().name()).status(Status::Skipped, Some(e.to_string()))
                            }
                            Ok(()) => at(b.name().name()).status(Status::Divergence, Some(reason)),
                        });
                        continue;
                    }
                };
                if let Err(e) = b.check(&cfg, p.meta.block_size()) {
                    rows.push(at(b.name().name()).status(Status::Skipped, Some(e.to_string())));
                    continue;
                }
                let launch = match recorded_launch(b.name().name(), &f.header, p, &cfg) {
                    Ok(l) => l,
                    Err(e) => {
                        rows.push(at(b.name().name()).status(Status::Fail, Some(e.to_string())));
                        continue;
                    }
                };
                let forced = launch.as_ref().map(|l| &l.0);
                let flavour = match fixture_flavour(choice, b.name(), &f.header) {
                    Ok(fl) => fl,
                    Err(e) => {
                        rows.push(at(b.name().name()).status(Status::Skipped, Some(e.to_string())));
                        continue;
                    }
                };
                if let Some(why) = flavour_refusal(b.as_ref(), p, &cfg, forced, flavour) {
                    rows.push(at(b.name().name()).status(Status::Skipped, Some(why)));
                    continue;
                }
                let got = run_backend(b.as_ref(), p, &cfg, forced, flavour);
                let overflow = got
                    .as_ref()
                    .is_ok_and(|o| nonfinite_where_finite(o, &kernel.out[..]));
                let mut row = at(b.name().name());
                row.launch = launch.map(|l| l.1);
                let mut r = row.judge(got.map(Outcome::out), &kernel, tol, dtype);
                let why = documented_divergence(b.name().name(), &cfg, &p.meta).or_else(|| {
                    (r.status == Status::Fail && overflow)
                        .then(|| softcap_overflow_divergence(b.name().name(), &cfg))
                        .flatten()
                });
                if let Some(why) = why {
                    r.status = Status::Divergence;
                    r.reason = Some(why);
                }
                rows.push(r);
            }
        }
        Case::Merge(m) => {
            let r = reference::merge_attn_states(
                &m.prefix_output.flat(),
                &m.prefix_lse.flat(),
                &m.suffix_output.flat(),
                &m.suffix_lse.flat(),
                m.num_heads,
                m.head_size,
            );
            let f64_out = r.as_ref().ok().map(|r| &r.out);
            let kernel = Kernel::new(output, m.output_lse.as_ref(), None, dtype, f64_out);
            rows.push(at(REFERENCE).judge(
                r.map(|r| Outcome {
                    out: to_f32(&r.out),
                    lse: Some(to_f32(&r.lse)),
                }),
                &kernel,
                tol,
                dtype,
            ));
            if backend.is_none_or(|b| b == MERGE_ROW) {
                rows.push(at(MERGE_ROW).judge(run_merge(m, dtype), &kernel, tol, dtype));
            }
        }
        Case::Mla(m) => {
            let r = reference::mla_decode(
                &m.query.flat(),
                &m.kv_cache.flat(),
                m.meta.block_table(),
                m.meta.seq_lens(),
                m.num_heads,
                m.kv_lora_rank,
                m.meta.block_size(),
                m.scale,
            );
            let kernel = Kernel::new(output, None, m.reference.as_ref(), dtype, r.as_ref().ok());
            rows.push(at(REFERENCE).judge(
                r.map(|o| Outcome::out(to_f32(&o))),
                &kernel,
                tol,
                dtype,
            ));
            for b in mla_backends()
                .iter()
                .filter(|b| backend.is_none_or(|n| n == b.name().name()))
            {
                let cfg = replay_config(m, dtype);
                // In the tensor-core flavour: TRITON_MLA's decode on
                // mla_decode_tc; AITER's asm decode is refused (skipped).
                let flavour = fixture_flavour(choice, b.name(), &f.header)
                    .and_then(|fl| admits_mla(b.as_ref(), fl, &m.meta, &cfg).map(|()| fl));
                let flavour = match flavour {
                    Ok(fl) => fl,
                    Err(why) => {
                        rows.push(
                            at(b.name().name()).status(Status::Skipped, Some(why.to_string())),
                        );
                        continue;
                    }
                };
                match b.check(&cfg, m.meta.block_size()) {
                    Err(e) => {
                        rows.push(at(b.name().name()).status(Status::Skipped, Some(e.to_string())))
                    }
                    Ok(()) => rows.push(
                        at(b.name().name()).judge(
                            catch_panic(b.name().name(), || {
                                replay_mla_decode(b.as_ref(), m, &cfg, flavour)
                            })
                            .map(Outcome::out),
                            &kernel,
                            tol,
                            dtype,
                        ),
                    ),
                }
            }
        }
    }
    rows
}

impl<'a> Kernel<'a> {
    /// `f64_out`: our reference's output, for the ULP numbers.
    fn new(
        out: &'a Array3<f32>,
        lse: Option<&'a Array2<f32>>,
        reference: Option<&'a Array3<f32>>,
        dtype: DType,
        f64_out: Option<&Array3<f64>>,
    ) -> Self {
        let (shape, out) = (out.shape().to_vec(), out.flat());
        let reference_ulp = f64_out.and_then(|r| {
            let rounded: Vec<f32> = r.iter().map(|&x| fidelity::round_f64(x, dtype)).collect();
            UlpStats::measure(&rounded, &out, dtype, &shape)
        });
        Kernel {
            out,
            shape,
            lse: lse.map(|l| (l.flat(), l.shape().to_vec())),
            reference: reference.map(|r| r.flat()),
            reference_ulp,
        }
    }
}

/// Where vLLM's backend knowingly computes something else than the captured
/// kernel although our emulation of that backend runs the case.
pub fn documented_divergence(
    backend: &str,
    cfg: &AttnConfig,
    meta: &AttentionMetadata,
) -> Option<String> {
    let multi_token = meta.query_start_loc().windows(2).any(|w| w[1] - w[0] > 1);
    match backend {
        "ROCM_AITER_FA" if cfg.softcap().is_some() && multi_token => Some(
            "ROCM_AITER_FA drops logits_soft_cap on prefill and extend (flash_attn_varlen_func gets no soft-cap); only its decode path applies it".into(),
        ),
        "ROCM_ATTN" if cfg.alibi_slopes().is_some() && cfg.sliding_window().is_some() && multi_token => Some(
            "ROCM_ATTN's prefix-prefill kernel has no sliding-window mask in its ALiBi variant: with ALiBi, rows with more than one query token see the whole context".into(),
        ),
        _ => None,
    }
}

/// Whether `got` holds an inf or NaN where the capture's output is finite.
fn nonfinite_where_finite(got: &[f32], want: &[f32]) -> bool {
    got.iter()
        .zip(want)
        .any(|(g, w)| !g.is_finite() && w.is_finite())
}

/// Where a backend's own soft-cap formula ([`crate::numerics::SoftcapFormula`]) overflows
/// to inf/NaN on scores the captured kernel's formula saturates: a
/// divergence of vLLM's backend, established by evidence (our emulation of
/// it produced non-finite outputs where the capture has finite ones), not
/// by the configuration alone.
pub fn softcap_overflow_divergence(backend: &str, cfg: &AttnConfig) -> Option<String> {
    let cap = cfg.softcap()?;
    match backend {
        "ROCM_AITER_UNIFIED_ATTN" => Some(format!(
            "ROCM_AITER_UNIFIED_ATTN's kernel (AITER's unified_attention) spells the soft-cap's tanh with two exp2 \
             (c*(p1-p2)/(p1+p2), p1 = exp2(s*log2e/c)): it overflows to inf/NaN once |s|*log2e/c >= 128 \
             (|s| >= {:.1} with c = {cap}), where the captured kernel saturates at +-c",
            128.0 * cap / std::f32::consts::LOG2_E
        )),
        _ => None,
    }
}

/// A launch replay imposes instead of the backend's own choice.
enum Forced {
    /// TRITON_ATTN's unified kernel with this grid.
    Unified(UnifiedLaunch),
    /// ROCM_ATTN with this kernel for its decode rows.
    RocmDecode(DecodeKernel),
}

/// What a /2 file records about the launch, for the backend of the same
/// kernel: TRITON_ATTN follows `launch.grid`/`launch.num_segments` or a
/// forced path (`unified_attention_2d`/`_3d`); ROCM_ATTN on a
/// `chunked_prefill_paged_decode` capture follows `launch.decode`, or runs
/// Triton's decode kernel when the capture's `arch` is NVIDIA's (`sm_*`,
/// where vLLM never uses the custom paged attention). `None` = the
/// backend's own rule. Returns the launch and its description.
fn recorded_launch(
    backend: &str,
    h: &fixture::Header,
    p: &PagedCase,
    cfg: &AttnConfig,
) -> Result<Option<(Forced, String)>> {
    match backend {
        "TRITON_ATTN" => recorded_unified(h, p, cfg),
        "ROCM_ATTN" if h.path.as_deref() == Some("chunked_prefill_paged_decode") => {
            let recorded = h.launch.as_ref().and_then(|l| l.decode.as_deref());
            let nvidia = h
                .capture
                .as_ref()
                .and_then(|c| c.get("arch"))
                .and_then(|a| a.as_str())
                .is_some_and(|a| a.starts_with("sm_"));
            Ok(match (recorded, nvidia) {
                (Some("paged_attention_ll4mi"), _) => Some((
                    Forced::RocmDecode(DecodeKernel::Ll4mi),
                    "decode paged_attention_ll4mi (recorded)".into(),
                )),
                (Some(_), _) => Some((
                    Forced::RocmDecode(DecodeKernel::Triton2d),
                    "decode kernel_paged_attention_2d (recorded)".into(),
                )),
                (None, true) => Some((
                    Forced::RocmDecode(DecodeKernel::Triton2d),
                    "decode kernel_paged_attention_2d (NVIDIA capture)".into(),
                )),
                (None, false) => None,
            })
        }
        _ => Ok(None),
    }
}

/// TRITON_ATTN's recorded grid, if any.
fn recorded_unified(
    h: &fixture::Header,
    p: &PagedCase,
    cfg: &AttnConfig,
) -> Result<Option<(Forced, String)>> {
    let grid = match h.path.as_deref() {
        Some("unified_attention_2d") => Some(LaunchGrid::TwoD),
        Some("unified_attention_3d") => Some(LaunchGrid::ThreeD),
        None | Some("unified_attention") => h.launch.as_ref().and_then(|l| l.grid),
        Some(_) => None,
    };
    // The kernel of the vLLM that produced the capture (masked-row guard,
    // soft-cap formula, segment reduce: see `crate::profile`).
    let profile = VllmProfile::of_vllm_version(
        h.capture
            .as_ref()
            .and_then(|c| c.get("vllm"))
            .and_then(|v| v.as_str()),
    );
    let options = VllmLaunchOptions {
        profile,
        ..VllmLaunchOptions::default()
    };
    let base = UnifiedLaunch::vllm(&p.meta, cfg, options)?;
    let Some(grid) = grid else {
        return Ok((profile != VllmProfile::default()).then(|| {
            (
                Forced::Unified(base),
                format!("vLLM's rule, profile {}", profile.name()),
            )
        }));
    };
    let segments = h
        .launch
        .as_ref()
        .and_then(|l| l.num_segments)
        .unwrap_or(NUM_PAR_SOFTMAX_SEGMENTS);
    Ok(Some(match grid {
        LaunchGrid::TwoD => (
            Forced::Unified(UnifiedLaunch {
                grid: Grid::TwoD,
                tile_size: TILE_SIZE_2D,
                ..base
            }),
            format!("2d (recorded), profile {}", profile.name()),
        ),
        LaunchGrid::ThreeD => (
            Forced::Unified(UnifiedLaunch {
                grid: Grid::ThreeD {
                    num_segments: segments,
                },
                tile_size: TILE_SIZE_3D,
                ..base
            }),
            format!(
                "3d, {segments} segments (recorded), profile {}",
                profile.name()
            ),
        ),
    }))
}

/// The fixture's canonical NHD cache as a [`KvCache`] (of the cache dtype).
fn nhd_cache(p: &PagedCase) -> KvCache {
    let layout = KvLayout {
        kind: LayoutKind::Nhd,
        num_blocks: p.meta.num_blocks(),
        block_size: p.meta.block_size(),
        num_kv_heads: p.cfg.num_kv_heads(),
        head_size: p.cfg.head_size(),
        dtype: p.cfg.kv_dtype(),
    };
    KvCache {
        layout,
        k: p.key_cache.flat().into_owned(),
        v: p.value_cache.flat().into_owned(),
    }
}

/// Runs backend `b` on the case with `cfg` (its [`AttentionBackend::fixture_config`]):
/// re-block, lay out, forward; with `launch`, the unified kernel under that
/// launch instead of the backend's own choice.
fn run_backend(
    b: &dyn AttentionBackend,
    p: &PagedCase,
    cfg: &AttnConfig,
    launch: Option<&Forced>,
    flavour: Flavour,
) -> Result<Vec<f32>> {
    let ex = Cpu::new(flavour);
    let kb = b.kernel_block_size(p.meta.block_size())?;
    let meta = reblock(&p.meta, kb)?;
    let layout = b.cache_layout(cfg, meta.num_blocks(), kb)?;
    if layout.dtype != p.cfg.kv_dtype() {
        return Err(Error::invalid(
            "backend cache dtype",
            layout.dtype,
            format!("replay needs the fixture's {}", p.cfg.kv_dtype()),
        ));
    }
    let cache = KvCache::from_nhd(&p.key_cache.flat(), &p.value_cache.flat(), layout)?;
    let query = p.query.flat();
    match launch {
        Some(Forced::Unified(l)) => catch_panic(b.name().name(), || {
            ex.unified_attention(&UnifiedArgs::new(&query, &cache, &meta, cfg, l)?)
        }),
        Some(Forced::RocmDecode(d)) => catch_panic(b.name().name(), || {
            let route = RocmAttn::route_with_decode(&meta, *d);
            RocmAttn::default().forward_route(&ex, &route, &query, &cache, &meta, cfg)
        }),
        None => catch_panic(b.name().name(), || {
            b.forward_with(&ex, &query, &cache, &meta, cfg)
        }),
    }
}

/// The same batch with manager blocks cut into kernel blocks of `kb`: NHD
/// memory `[nb, bs, h, d]` is `[nb * r, kb, h, d]`, and slot numbers are
/// unchanged.
pub fn reblock(meta: &AttentionMetadata, kb: usize) -> Result<AttentionMetadata> {
    if kb == meta.block_size() {
        return Ok(meta.clone());
    }
    let split = KernelBlockSplit::new(meta.block_size(), kb)?;
    let rows: Vec<Vec<usize>> = (0..meta.block_table().num_rows)
        .map(|i| {
            meta.block_table()
                .row(i)
                .iter()
                .map(|&b| b.max(0) as usize)
                .collect()
        })
        .collect();
    let refs: Vec<&[usize]> = rows.iter().map(|r| r.as_slice()).collect();
    AttentionMetadata::new(
        kb,
        split.num_kernel_blocks(meta.num_blocks()),
        meta.query_start_loc().to_vec(),
        meta.seq_lens().to_vec(),
        block_table_tensor(&refs, split)?,
        meta.slot_mapping().to_vec(),
        meta.causal(),
    )
}

fn run_merge(m: &MergeCase, dtype: DType) -> Result<Outcome> {
    let side = |o: &[f32], l: &[f32]| {
        OutLse::new(
            m.num_tokens,
            m.num_heads,
            m.head_size,
            o.to_vec(),
            l.to_vec(),
        )
    };
    let (prefix, suffix) = (
        side(&m.prefix_output.flat(), &m.prefix_lse.flat())?,
        side(&m.suffix_output.flat(), &m.suffix_lse.flat())?,
    );
    let mut lse = None;
    let out = catch_panic("merge_attn_states", || {
        let r = merge_attn_states(&prefix, &suffix, dtype, MergeKernel::Triton)?;
        let (out, l) = r.into_parts();
        lse = Some(l);
        Ok(out)
    })?;
    Ok(Outcome { out, lse })
}

/// A panicking emulator becomes a failed row, not an aborted replay.
pub(crate) fn catch_panic(what: &str, f: impl FnOnce() -> Result<Vec<f32>>) -> Result<Vec<f32>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::unsupported(what, "panicked (a bug: see stderr)")))
}

fn to_f32<'a>(x: impl IntoIterator<Item = &'a f64>) -> Vec<f32> {
    x.into_iter().map(|&v| v as f32).collect()
}

/// A row being built: who, and what ran.
#[derive(Debug, Clone)]
struct Row {
    file: String,
    op: String,
    dtype: Option<DType>,
    kv_cache_dtype: Option<&'static str>,
    backend: String,
    launch: Option<String>,
}

impl Row {
    fn new(file: &str, op: &str, dtype: Option<DType>, backend: &str) -> Self {
        Row {
            file: file.to_string(),
            op: op.to_string(),
            dtype,
            kv_cache_dtype: None,
            backend: backend.to_string(),
            launch: None,
        }
    }

    /// A row without numbers.
    fn status(self, status: Status, reason: Option<String>) -> ReplayResult {
        self.finish(status, reason, None)
    }

    fn finish(
        self,
        status: Status,
        reason: Option<String>,
        c: Option<&Comparison>,
    ) -> ReplayResult {
        ReplayResult {
            file: self.file,
            op: self.op,
            backend: self.backend,
            status,
            reason,
            max_abs_err: c.map(|c| c.max_abs_err),
            max_rel_err: c.map(|c| c.max_rel_err),
            mismatches: c.map(|c| c.mismatches),
            dtype: self.dtype.map_or("?", |d| d.name()).to_string(),
            kv_cache_dtype: self.kv_cache_dtype.map(str::to_string),
            ulp: None,
            reference_ulp: None,
            fidelity: None,
            fidelity_exact: false,
            lse_ulp: None,
            launch: self.launch,
        }
    }

    /// Pass iff within tolerance of the kernel's output (and LSE, when the
    /// file has one) and of the file's `reference` (when present); with the
    /// ULP numbers either way.
    fn judge(self, got: Result<Outcome>, k: &Kernel, tol: Tolerance, dtype: DType) -> ReplayResult {
        let got = match got {
            Ok(g) => g,
            Err(e) => return self.status(Status::Fail, Some(e.to_string())),
        };
        let c = match compare(&got.out, &k.out[..], tol) {
            Ok(c) => c,
            Err(e) => return self.status(Status::Fail, Some(e.to_string())),
        };
        let mut lse_bad = None;
        let mut lse_ulp = None;
        if let (Some((want, lse_shape)), Some(have)) = (&k.lse, got.lse.as_deref()) {
            lse_ulp = UlpStats::measure(have, want, DType::F32, lse_shape);
            match compare(have, &want[..], tol) {
                Ok(lc) if lc.passed() => {}
                Ok(lc) => {
                    lse_bad = Some(format!(
                        "output_lse: {} of {} elements outside atol {} + rtol {} (first at flat index {})",
                        lc.mismatches,
                        lc.len,
                        tol.atol,
                        tol.rtol,
                        lc.first_mismatch.unwrap_or(0)
                    ))
                }
                Err(e) => lse_bad = Some(format!("output_lse: {e}")),
            }
        }
        let (status, reason) = if !c.passed() {
            (
                Status::Fail,
                Some(format!(
                    "{} of {} elements outside atol {} + rtol {} (first at flat index {})",
                    c.mismatches,
                    c.len,
                    tol.atol,
                    tol.rtol,
                    c.first_mismatch.unwrap_or(0)
                )),
            )
        } else if let Some(why) = lse_bad {
            (Status::Fail, Some(why))
        } else {
            match k.reference.as_deref().map(|r| compare(&got.out, r, tol)) {
                Some(Ok(rc)) if !rc.passed() => (
                    Status::Fail,
                    Some(format!(
                        "matches output but {} elements are outside tolerance of the file's reference (max abs err {:.3e})",
                        rc.mismatches, rc.max_abs_err
                    )),
                ),
                Some(Err(e)) => (Status::Fail, Some(e.to_string())),
                _ => (Status::Pass, None),
            }
        };
        // The reference row's own numbers are measured from f64 (one rounding), not from f32.
        let is_reference = self.backend == REFERENCE;
        let mut r = self.finish(status, reason, Some(&c));
        r.reference_ulp = k.reference_ulp.clone();
        r.ulp = if is_reference {
            k.reference_ulp.clone()
        } else {
            UlpStats::measure(&got.out, &k.out, dtype, &k.shape)
        };
        r.lse_ulp = lse_ulp;
        if let (Some(u), Some(ru)) = (&r.ulp, &r.reference_ulp) {
            r.fidelity = fidelity::fidelity_ratio(u, ru).filter(|x| x.is_finite());
            r.fidelity_exact = u.capped_sum == 0 && ru.capped_sum > 0;
        }
        r
    }
}

/// File name without directory and extension.
fn stem(file: &str) -> String {
    Path::new(file)
        .file_stem()
        .map_or(file.to_string(), |s| s.to_string_lossy().into_owned())
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// The fidelity figure as the tables print it: `inf` (bit-exact where the
/// reference is not), `-` (undefined), or the ratio.
fn fid(r: Option<f64>, exact: bool) -> String {
    match (r, exact) {
        (_, true) => "inf".into(),
        (Some(x), _) => format!("{x:.2}"),
        (None, _) => "-".into(),
    }
}

/// The human table: one line per row, aligned, then a count per status.
/// `exact%` is the bit-identical fraction of this row's output, `ref%` the
/// same for the f64 reference rounded to the output dtype, `max_ulp` the
/// largest ULP distance (`nan` when NaN meets a number) and `fid` the
/// fidelity ratio.
pub fn format_table(results: &[ReplayResult]) -> String {
    let w_file = results
        .iter()
        .map(|r| stem(&r.file).len())
        .max()
        .unwrap_or(4)
        .max(4);
    let w_be = results
        .iter()
        .map(|r| r.backend.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut s = format!(
        "{:<w_file$}  {:<17}  {:<w_be$}  {:<10}  {:>10}  {:>10}  {:>5}  {:>6}  {:>6}  {:>7}  {:>6}  reason\n",
        "file", "op", "backend", "status", "max_abs", "max_rel", "bad", "exact%", "ref%", "max_ulp", "fid"
    );
    let num = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3e}"));
    for r in results {
        let exact = r
            .ulp
            .as_ref()
            .map_or("-".into(), |u| pct(u.bit_exact_fraction()));
        let ref_exact = r
            .reference_ulp
            .as_ref()
            .map_or("-".into(), |u| pct(u.bit_exact_fraction()));
        let max_ulp = r.ulp.as_ref().map_or("-".into(), |u| {
            u.max_ulp.map_or("nan".into(), |m| m.to_string())
        });
        let mut reason = r.reason.clone().unwrap_or_default();
        if let Some(l) = &r.launch {
            reason = if reason.is_empty() {
                format!("launch {l}")
            } else {
                format!("launch {l}; {reason}")
            };
        }
        s += &format!(
            "{:<w_file$}  {:<17}  {:<w_be$}  {:<10}  {:>10}  {:>10}  {:>5}  {:>6}  {:>6}  {:>7}  {:>6}  {}\n",
            stem(&r.file),
            r.op,
            r.backend,
            r.status.name(),
            num(r.max_abs_err),
            num(r.max_rel_err),
            r.mismatches.map_or("-".into(), |m| m.to_string()),
            exact,
            ref_exact,
            max_ulp,
            fid(r.fidelity, r.fidelity_exact),
            reason
        );
    }
    s += &status_counts(results);
    s
}

/// `N pass, N fail, N skipped` and the other statuses that occur.
fn status_counts(results: &[ReplayResult]) -> String {
    let count = |st: Status| results.iter().filter(|r| r.status == st).count();
    let mut parts = vec![
        format!("{} pass", count(Status::Pass)),
        format!("{} fail", count(Status::Fail)),
        format!("{} skipped", count(Status::Skipped)),
    ];
    for st in [Status::Divergence, Status::Error, Status::NoOutput] {
        if count(st) > 0 {
            parts.push(format!("{} {}", count(st), st.name()));
        }
    }
    parts.join(", ") + "\n"
}

/// One (backend, op, dtype) group of a replay: the closing note's table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    pub backend: String,
    pub op: String,
    /// The output dtype, with `+<kv_cache_dtype>` for an fp8 KV cache
    /// (e.g. `bfloat16+fp8_e4m3`).
    pub dtype: String,
    /// Rows of this group (one per file).
    pub cases: usize,
    pub pass: usize,
    pub fail: usize,
    pub skipped: usize,
    pub divergence: usize,
    /// Pooled over the compared rows (pass, fail, divergence).
    pub ulp: UlpStats,
    pub reference_ulp: UlpStats,
    /// Pooled `mean_ulp(reference) / mean_ulp(this backend)`; null when
    /// undefined or infinite (`fidelity_exact` says which).
    pub fidelity: Option<f64>,
    pub fidelity_exact: bool,
}

/// A summary group's dtype label: the output dtype, `+kv` for fp8 caches.
fn group_dtype(r: &ReplayResult) -> String {
    match r.kv_cache_dtype.as_deref() {
        Some(kv) if kv != "auto" => format!("{}+{kv}", r.dtype),
        _ => r.dtype.clone(),
    }
}

/// Groups rows by (backend, op, dtype), in first-seen order; files that did
/// not replay (load failures, capture errors, cases without output) are not
/// in any group.
pub fn summarize(results: &[ReplayResult]) -> Vec<SummaryRow> {
    let mut out: Vec<SummaryRow> = Vec::new();
    for r in results {
        if matches!(r.status, Status::Error | Status::NoOutput) || r.op == "?" {
            continue;
        }
        let i = match out
            .iter()
            .position(|g| g.backend == r.backend && g.op == r.op && g.dtype == group_dtype(r))
        {
            Some(i) => i,
            None => {
                let mut empty = UlpStats::empty();
                empty.max_ulp = Some(0);
                out.push(SummaryRow {
                    backend: r.backend.clone(),
                    op: r.op.clone(),
                    dtype: group_dtype(r),
                    cases: 0,
                    pass: 0,
                    fail: 0,
                    skipped: 0,
                    divergence: 0,
                    ulp: empty.clone(),
                    reference_ulp: empty,
                    fidelity: None,
                    fidelity_exact: false,
                });
                out.len() - 1
            }
        };
        let g = &mut out[i];
        g.cases += 1;
        match r.status {
            Status::Pass => g.pass += 1,
            Status::Fail => g.fail += 1,
            Status::Skipped => g.skipped += 1,
            Status::Divergence => g.divergence += 1,
            Status::Error | Status::NoOutput => {}
        }
        if let (Some(u), Some(ru)) = (&r.ulp, &r.reference_ulp) {
            g.ulp.add(u);
            g.reference_ulp.add(ru);
        }
    }
    for g in &mut out {
        g.ulp.max_at = None;
        g.reference_ulp.max_at = None;
        let ratio = fidelity::fidelity_ratio(&g.ulp, &g.reference_ulp);
        g.fidelity = ratio.filter(|x| x.is_finite());
        g.fidelity_exact = g.ulp.capped_sum == 0 && g.reference_ulp.capped_sum > 0;
    }
    out
}

/// The summary as a table: per (backend, op, dtype) the case count, pass,
/// fail, skipped and divergence counts, the bit-exact percentage of the
/// emulator and of the rounded f64 reference, the emulator's ULP histogram
/// (0 | 1 | 2-4 | 5-16 | 17-256 | more, as percentages of elements), its
/// maximum ULP distance, and the fidelity ratio.
pub fn format_summary(rows: &[SummaryRow]) -> String {
    let w_be = rows
        .iter()
        .map(|r| r.backend.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let w_dt = rows.iter().map(|r| r.dtype.len()).max().unwrap_or(8).max(8);
    let hist_head = BUCKETS.map(|b| format!("{b:>6}")).join(" ");
    let mut s = format!(
        "{:<w_be$}  {:<17}  {:<w_dt$}  {:>5}  {:>5}  {:>5}  {:>5}  {:>5}  {:>7}  {:>6}  {}  {:>7}  {:>6}\n",
        "backend", "op", "dtype", "cases", "pass", "fail", "skip", "div", "exact%", "ref%", hist_head, "max_ulp", "fid"
    );
    for r in rows {
        let hist = r
            .ulp
            .histogram
            .map(|n| {
                if r.ulp.elements == 0 {
                    format!("{:>6}", "-")
                } else {
                    format!("{:>6}", pct(n as f64 / r.ulp.elements as f64))
                }
            })
            .join(" ");
        let compared = r.ulp.elements > 0;
        s += &format!(
            "{:<w_be$}  {:<17}  {:<w_dt$}  {:>5}  {:>5}  {:>5}  {:>5}  {:>5}  {:>7}  {:>6}  {}  {:>7}  {:>6}\n",
            r.backend,
            r.op,
            r.dtype,
            r.cases,
            r.pass,
            r.fail,
            r.skipped,
            r.divergence,
            if compared { pct(r.ulp.bit_exact_fraction()) } else { "-".into() },
            if r.reference_ulp.elements > 0 { pct(r.reference_ulp.bit_exact_fraction()) } else { "-".into() },
            hist,
            if compared { r.ulp.max_ulp.map_or("nan".into(), |m| m.to_string()) } else { "-".into() },
            fid(r.fidelity, r.fidelity_exact)
        );
    }
    s
}

/// The configuration an `mla_decode` fixture describes: its heads, latent
/// widths, scale and dtype, and the producer's split count.
pub fn replay_config(case: &MlaCase, dtype: DType) -> mla::MlaConfig {
    let dims = MlaDims {
        kv_lora_rank: case.kv_lora_rank,
        qk_rope_head_dim: case.qk_rope_head_dim,
        ..mla::MlaConfig::deepseek_r1(1).dims
    };
    mla::MlaConfig {
        num_heads: case.num_heads,
        dims,
        scale: case.scale,
        dtype,
        kv_dtype: dtype,
        num_kv_splits: Some(case.num_kv_splits),
        ..mla::MlaConfig::deepseek_r1(1)
    }
}

/// Runs an `mla_decode` fixture (absorbed queries, one token per sequence)
/// through `backend`'s `forward_mqa` under `cfg` ([`replay_config`]):
/// `[num_seqs, num_heads, kv_lora_rank]` in `cfg.dtype`. `check` runs
/// first, so TRITON_MLA refuses a block-size-1 case as vLLM would.
pub fn replay_mla_decode(
    backend: &dyn mla::MlaBackend,
    case: &MlaCase,
    cfg: &mla::MlaConfig,
    flavour: Flavour,
) -> Result<Vec<f32>> {
    backend.check(cfg, case.meta.block_size())?;
    let layout = MlaLayout::new(
        case.meta.num_blocks(),
        case.meta.block_size(),
        case.kv_lora_rank,
        case.qk_rope_head_dim,
        cfg.dtype,
    )?;
    let cache = LatentCache::from_tensor(layout, case.kv_cache.flat().into_owned())?;
    let batch = mla::MlaDecodeBatch {
        meta: &case.meta,
        num_decodes: case.meta.num_reqs(),
    };
    Ok(backend
        .forward_mqa_with(
            // vLLM's own arithmetic where the emulator models it (sm_90:
            // its softmax through the measured ex2.approx).
            &Cpu::new(flavour).with_arithmetic(Arithmetic::Vendor),
            &case.query.flat(),
            case.num_heads,
            &cache,
            &batch,
            cfg,
        )?
        .out)
}
