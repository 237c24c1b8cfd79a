//! Replays `attn-fixture/1` cases (see [`crate::fixture`]) through the
//! emulator and compares with what vLLM's kernels returned.
//!
//! - `paged_attention`: every MHA backend of [`mha_backends`] that accepts
//!   the case (`check` fails -> "skipped" with vLLM's reason). The fixture's
//!   canonical NHD cache is re-blocked to the backend's kernel block size
//!   ([`KernelBlockSplit`]: NHD memory is the same, the table expands) and
//!   laid into the backend's own layout ([`KvCache::from_nhd`]); then
//!   `forward`. Our f64 [`reference`] is reported too, as a sanity check of
//!   the oracle against vLLM's kernels.
//! - `merge_attn_states`: the merge kernel (Triton flavour, the one the
//!   fixtures were captured with), and the f64 reference merge.
//! - `mla_decode`: the f64 reference, and every MLA backend of
//!   [`mla_backends`] (`check` fails -> "skipped" with vLLM's reason).
//!
//! A result passes when it is within the fixture's `atol`/`rtol` of the
//! file's `output` and, when the file carries a `reference`, of that too.

use crate::backends::mla::{self, mla_backends};
use crate::backends::{mha_backends, AttentionBackend};
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::fixture::{self, Case, Fixture, MergeCase, PagedCase};
use crate::kernels::merge_attn_states::{merge_attn_states, MergeKernel};
use crate::kernels::softmax::OutLse;
use crate::reference::{self, compare, Comparison, Tolerance};
use attnlab_shared::block_table::{block_table_tensor, KernelBlockSplit};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::AttentionMetadata;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Backend name of the rows produced by our f64 reference.
pub const REFERENCE: &str = "reference(f64)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
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
}

/// Which backends to replay: `None` = all.
pub fn replay_paths(paths: &[PathBuf], backend: Option<&str>) -> Result<Vec<ReplayResult>> {
    replay_paths_with(paths, backend, |_, _| {})
}

/// [`replay_paths`], calling `on_file(done, total)` after each file. A file
/// that does not load is that file's "fail" row; the others still run.
pub fn replay_paths_with(
    paths: &[PathBuf],
    backend: Option<&str>,
    mut on_file: impl FnMut(usize, usize),
) -> Result<Vec<ReplayResult>> {
    if let Some(name) = backend {
        // An unknown name is an error up front, naming the emulated MHA and MLA backends.
        let known: Vec<&'static str> = mha_backends()
            .iter()
            .map(|b| b.name())
            .chain(mla_backends().iter().map(|b| b.name()))
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
        out.extend(replay_file(path, backend));
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
    match fixture::load(path) {
        Ok(f) => replay_fixture(&f, backend),
        Err(e) => vec![row(
            &path.display().to_string(),
            "?",
            "(load)",
            Status::Fail,
            Some(e.to_string()),
            None,
        )],
    }
}

/// Replays an already loaded fixture.
pub fn replay_fixture(f: &Fixture, backend: Option<&str>) -> Vec<ReplayResult> {
    let tol = Tolerance::new(f.header.atol, f.header.rtol);
    let op = f.header.op.name();
    let dtype = f.header.dtype;
    let mut rows = Vec::new();
    let judged =
        |name: &str, got: Result<Vec<f32>>, expected: &[f32], reference: Option<&[f32]>| {
            judge(&f.file, op, name, got, expected, reference, tol)
        };
    match &f.case {
        Case::Paged(p) => {
            let r = reference::paged_attention(&p.query, &nhd_cache(p, dtype), &p.meta, &p.cfg)
                .map(|r| to_f32(&r.out));
            rows.push(judged(REFERENCE, r, &p.output, p.reference.as_deref()));
            for b in mha_backends()
                .iter()
                .filter(|b| backend.is_none_or(|n| n == b.name()))
            {
                let cfg = match b.fixture_config(&p.cfg) {
                    Ok(cfg) => cfg,
                    Err(reason) => {
                        rows.push(row(
                            &f.file,
                            op,
                            b.name(),
                            Status::Skipped,
                            Some(reason),
                            None,
                        ));
                        continue;
                    }
                };
                match b.check(&cfg, p.meta.block_size) {
                    Err(e) => rows.push(row(
                        &f.file,
                        op,
                        b.name(),
                        Status::Skipped,
                        Some(e.to_string()),
                        None,
                    )),
                    Ok(()) => rows.push(judged(
                        b.name(),
                        run_backend(b.as_ref(), p, &cfg, dtype),
                        &p.output,
                        p.reference.as_deref(),
                    )),
                }
            }
        }
        Case::Merge(m) => {
            let r = reference::merge_attn_states(
                &m.prefix_output,
                &m.prefix_lse,
                &m.suffix_output,
                &m.suffix_lse,
                m.num_heads,
                m.head_size,
            );
            rows.push(judged(
                REFERENCE,
                r.map(|r| to_f32(&r.out)),
                &m.output,
                None,
            ));
            if backend.is_none() {
                rows.push(judged(
                    "merge_attn_states",
                    run_merge(m, dtype),
                    &m.output,
                    None,
                ));
            }
        }
        Case::Mla(m) => {
            let r = reference::mla_decode(
                &m.query,
                &m.kv_cache,
                &m.meta.block_table,
                &m.meta.seq_lens,
                m.num_heads,
                m.kv_lora_rank,
                m.meta.block_size,
                m.scale,
            );
            rows.push(judged(
                REFERENCE,
                r.map(|o| to_f32(&o)),
                &m.output,
                m.reference.as_deref(),
            ));
            for b in mla_backends()
                .iter()
                .filter(|b| backend.is_none_or(|n| n == b.name()))
            {
                let cfg = mla::replay_config(m, dtype);
                match b.check(&cfg, m.meta.block_size) {
                    Err(e) => rows.push(row(
                        &f.file,
                        op,
                        b.name(),
                        Status::Skipped,
                        Some(e.to_string()),
                        None,
                    )),
                    Ok(()) => rows.push(judged(
                        b.name(),
                        catch_panic(b.name(), || mla::replay_mla_decode(b.as_ref(), m, &cfg)),
                        &m.output,
                        m.reference.as_deref(),
                    )),
                }
            }
        }
    }
    rows
}

/// The fixture's canonical NHD cache as a [`KvCache`].
fn nhd_cache(p: &PagedCase, dtype: DType) -> KvCache {
    let layout = KvLayout {
        kind: LayoutKind::Nhd,
        num_blocks: p.meta.num_blocks,
        block_size: p.meta.block_size,
        num_kv_heads: p.cfg.num_kv_heads,
        head_size: p.cfg.head_size,
        dtype,
    };
    KvCache {
        layout,
        k: p.key_cache.clone(),
        v: p.value_cache.clone(),
    }
}

/// One backend on one paged case: re-block, lay out, forward.
/// Runs backend `b` on the case with `cfg` (its [`AttentionBackend::fixture_config`]).
fn run_backend(
    b: &dyn AttentionBackend,
    p: &PagedCase,
    cfg: &AttnConfig,
    dtype: DType,
) -> Result<Vec<f32>> {
    let kb = b.kernel_block_size(p.meta.block_size)?;
    let meta = reblock(&p.meta, kb)?;
    let layout = b.cache_layout(cfg, meta.num_blocks, kb)?;
    if layout.dtype != dtype {
        return Err(Error::invalid(
            "backend cache dtype",
            layout.dtype,
            format!("replay needs the fixture's {dtype}"),
        ));
    }
    let cache = KvCache::from_nhd(&p.key_cache, &p.value_cache, layout)?;
    catch_panic(b.name(), || b.forward(&p.query, &cache, &meta, cfg))
}

/// The same batch with manager blocks cut into kernel blocks of `kb`: NHD
/// memory `[nb, bs, h, d]` is `[nb * r, kb, h, d]`, and slot numbers are
/// unchanged.
pub fn reblock(meta: &AttentionMetadata, kb: usize) -> Result<AttentionMetadata> {
    if kb == meta.block_size {
        return Ok(meta.clone());
    }
    let split = KernelBlockSplit::new(meta.block_size, kb)?;
    let rows: Vec<Vec<usize>> = (0..meta.block_table.num_rows)
        .map(|i| {
            meta.block_table
                .row(i)
                .iter()
                .map(|&b| b.max(0) as usize)
                .collect()
        })
        .collect();
    let refs: Vec<&[usize]> = rows.iter().map(|r| r.as_slice()).collect();
    AttentionMetadata::new(
        kb,
        split.num_kernel_blocks(meta.num_blocks),
        meta.query_start_loc.clone(),
        meta.seq_lens.clone(),
        block_table_tensor(&refs, split)?,
        meta.slot_mapping.clone(),
        meta.causal,
    )
}

fn run_merge(m: &MergeCase, dtype: DType) -> Result<Vec<f32>> {
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
        side(&m.prefix_output, &m.prefix_lse)?,
        side(&m.suffix_output, &m.suffix_lse)?,
    );
    catch_panic("merge_attn_states", || {
        Ok(merge_attn_states(&prefix, &suffix, dtype, MergeKernel::Triton)?.out)
    })
}

/// A panicking emulator becomes a failed row, not an aborted replay.
pub(crate) fn catch_panic(what: &str, f: impl FnOnce() -> Result<Vec<f32>>) -> Result<Vec<f32>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::unsupported(what, "panicked (a bug: see stderr)")))
}

fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

fn row(
    file: &str,
    op: &str,
    backend: &str,
    status: Status,
    reason: Option<String>,
    c: Option<&Comparison>,
) -> ReplayResult {
    ReplayResult {
        file: file.to_string(),
        op: op.to_string(),
        backend: backend.to_string(),
        status,
        reason,
        max_abs_err: c.map(|c| c.max_abs_err),
        max_rel_err: c.map(|c| c.max_rel_err),
        mismatches: c.map(|c| c.mismatches),
    }
}

/// Pass iff within tolerance of `expected` and of `reference` (when present).
fn judge(
    file: &str,
    op: &str,
    backend: &str,
    got: Result<Vec<f32>>,
    expected: &[f32],
    reference: Option<&[f32]>,
    tol: Tolerance,
) -> ReplayResult {
    let got = match got {
        Ok(g) => g,
        Err(e) => return row(file, op, backend, Status::Fail, Some(e.to_string()), None),
    };
    let c = match compare(&got, expected, tol) {
        Ok(c) => c,
        Err(e) => return row(file, op, backend, Status::Fail, Some(e.to_string()), None),
    };
    if !c.passed() {
        let reason = format!(
            "{} of {} elements outside atol {} + rtol {} (first at flat index {})",
            c.mismatches,
            c.len,
            tol.atol,
            tol.rtol,
            c.first_mismatch.unwrap_or(0)
        );
        return row(file, op, backend, Status::Fail, Some(reason), Some(&c));
    }
    if let Some(r) = reference {
        match compare(&got, r, tol) {
            Ok(rc) if rc.passed() => {}
            Ok(rc) => {
                let reason = format!(
                    "matches output but {} elements are outside tolerance of the file's reference (max abs err {:.3e})",
                    rc.mismatches, rc.max_abs_err
                );
                return row(file, op, backend, Status::Fail, Some(reason), Some(&c));
            }
            Err(e) => {
                return row(
                    file,
                    op,
                    backend,
                    Status::Fail,
                    Some(e.to_string()),
                    Some(&c),
                )
            }
        }
    }
    row(file, op, backend, Status::Pass, None, Some(&c))
}

/// The human table: one line per row, aligned, then a count per status.
pub fn format_table(results: &[ReplayResult]) -> String {
    let name = |r: &ReplayResult| {
        Path::new(&r.file)
            .file_stem()
            .map_or(r.file.clone(), |s| s.to_string_lossy().into_owned())
    };
    let w_file = results
        .iter()
        .map(|r| name(r).len())
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
        "{:<w_file$}  {:<17}  {:<w_be$}  {:<7}  {:>10}  {:>10}  {:>5}  reason\n",
        "file", "op", "backend", "status", "max_abs", "max_rel", "bad"
    );
    let num = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3e}"));
    for r in results {
        s += &format!(
            "{:<w_file$}  {:<17}  {:<w_be$}  {:<7}  {:>10}  {:>10}  {:>5}  {}\n",
            name(r),
            r.op,
            r.backend,
            r.status.name(),
            num(r.max_abs_err),
            num(r.max_rel_err),
            r.mismatches.map_or("-".into(), |m| m.to_string()),
            r.reason.as_deref().unwrap_or("")
        );
    }
    let count = |st: Status| results.iter().filter(|r| r.status == st).count();
    s += &format!(
        "{} pass, {} fail, {} skipped\n",
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skipped)
    );
    s
}
