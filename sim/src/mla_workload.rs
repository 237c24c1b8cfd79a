//! A scheduled workload through the emulated MLA backends, every step checked
//! against the f64 reference and the backends against each other: what
//! `attnlab run --model deepseek-r1` does. The MLA counterpart of
//! [`crate::workload`] (same specs, schedule and report).
//!
//! ```text
//! steps     = crate::workload::schedule(spec)      (decodes first in every step)
//! weights   = seeded kv_b_proj [N * (P + V), Lkv]
//! per backend: its own latent cache [nb, bs, Lkv + R]
//! for each step:
//!     q [T, N, P + R], kv_c [T, Lkv], k_pe [T, R] ~ seeded U(-1, 1), rounded
//!     reference: latent cache as one MQA head of width Lkv + R; q absorbed in f64
//!                (q_nope @ W_UK_T); reference::paged_attention; first Lkv
//!                channels @ W_UV in f64        (the absorption identity, exact)
//!     per backend: run_mla_step (write + forward, every TP rank), concatenate
//!                  the ranks' heads; |out - ref| <= tol(dtype); pairwise too
//! ```

use crate::backends::mla::{by_name, mla_backends, run_mla_step, MlaBackend, MlaConfig, MlaStep};
use crate::cache::KvCache;
use crate::config::{AttnConfig, AttnConfigBuilder};
use crate::kernels::mla_cache::{concat_and_cache_mla, LatentCache};
use crate::kernels::mla_proj::MlaWeights;
use crate::reference::{self, Tolerance};
use crate::replay::{catch_panic, Status};
use crate::tensor::Flat;
use crate::workload::{
    check_cache_memory, draw, schedule, score_step, BackendRun, WorkloadReport, WorkloadSpec,
};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_shared::layout::{KvLayout, LayoutKind};
use attnlab_shared::metadata::AttentionMetadata;
use ndarray::{s, Array3, ArrayView3, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Runs `spec` (whose model must be an MLA preset) under `cfg` (e.g.
/// `MlaConfig::deepseek_r1(tp)`, optionally `.scaled_down()`);
/// `on_step(done, total)` is called after every step.
pub fn run_mla_workload(
    spec: &WorkloadSpec,
    cfg: &MlaConfig,
    mut on_step: impl FnMut(usize, usize),
) -> Result<WorkloadReport> {
    if !spec.model.is_mla() {
        return Err(Error::invalid(
            "model",
            spec.model.name,
            "run_mla_workload needs an MLA preset (deepseek-r1)",
        ));
    }
    cfg.validate()?;
    let (sched_cfg, steps) = schedule(spec)?;
    let (bs, nb) = (
        sched_cfg.block_size,
        steps.first().map_or(1, |s| s.num_blocks),
    );
    let cfg = MlaConfig {
        max_num_seqs: sched_cfg.max_num_seqs,
        decode_threshold: sched_cfg.decode_threshold.max(1),
        ..cfg.clone()
    };
    let tol = Tolerance::for_dtype(cfg.dtype);
    let backends: Vec<Box<dyn MlaBackend>> = match &spec.backend {
        Some(name) => vec![by_name(*name)?],
        None => mla_backends(),
    };
    check_cache_memory(nb, bs, cfg.dims.latent_width(), backends.len())?;
    let layout = MlaLayout::for_dims(&cfg.dims, nb, bs, cfg.kv_dtype)?;
    let mut lanes: Vec<(Box<dyn MlaBackend>, LatentCache, BackendRun)> = Vec::new();
    let mut skipped = Vec::new();
    for b in backends {
        match b.check(&cfg, bs) {
            Err(e) => skipped.push(BackendRun::new(
                b.name().name(),
                Status::Skipped,
                Some(e.to_string()),
            )),
            Ok(()) => {
                let mut row = BackendRun::new(b.name().name(), Status::Pass, None);
                (row.kernel_block_size, row.layout) = (Some(bs), Some("mla-latent"));
                lanes.push((b, LatentCache::zeros(layout), row));
            }
        }
    }
    let weights = MlaWeights::random(cfg.num_heads, cfg.dims, cfg.dtype, spec.seed)?;
    let mut canonical = LatentCache::zeros(layout);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x001a_7e47);
    // With every backend skipped there is nothing to compare: the report
    // (skips and their reasons) needs no reference.
    let live = if lanes.is_empty() {
        &steps[..0]
    } else {
        &steps[..]
    };
    for (done, sstep) in live.iter().enumerate() {
        let t = sstep.num_tokens();
        let (d, n) = (cfg.dims, cfg.num_heads);
        let q = draw(
            &mut rng,
            t * n * (d.qk_nope_head_dim + d.qk_rope_head_dim),
            cfg.dtype,
        );
        let kv_c = draw(&mut rng, t * d.kv_lora_rank, cfg.dtype);
        let k_pe = draw(&mut rng, t * d.qk_rope_head_dim, cfg.dtype);
        let meta = sstep.metadata(bs)?;
        concat_and_cache_mla(
            &mut canonical,
            &kv_c,
            &k_pe,
            meta.slot_mapping(),
            cfg.k_scale,
        )?;
        let want = reference_step(&q, &canonical, &meta, &weights, &cfg)?;
        let step = MlaStep {
            q: &q,
            kv_c: &kv_c,
            k_pe: &k_pe,
            meta: &meta,
        };
        let outs: Vec<Option<Result<Vec<f32>>>> = lanes
            .iter_mut()
            .map(|(b, cache, row)| {
                (row.status != Status::Fail).then(|| {
                    catch_panic(b.name().name(), || {
                        let ranks = run_mla_step(b.as_ref(), &step, cache, &weights, &cfg)?;
                        Ok(merge_ranks(
                            &ranks.iter().map(|r| r.out.as_slice()).collect::<Vec<_>>(),
                            t,
                        ))
                    })
                })
            })
            .collect();
        let mut rows: Vec<&mut BackendRun> = lanes.iter_mut().map(|l| &mut l.2).collect();
        score_step(&mut rows, outs, &want.flat(), sstep.index, t, tol)?;
        on_step(done + 1, steps.len());
    }
    let rows = lanes.into_iter().map(|l| l.2).chain(skipped).collect();
    Ok(WorkloadReport::new(spec, bs, &steps, tol, rows))
}

/// `[T, h_r, V]` per rank -> `[T, N, V]` (rank r's heads are `r*h..(r+1)*h`).
fn merge_ranks(ranks: &[&[f32]], t: usize) -> Vec<f32> {
    let per_tok: Vec<usize> = ranks.iter().map(|r| r.len() / t.max(1)).collect();
    (0..t)
        .flat_map(|i| {
            ranks
                .iter()
                .zip(&per_tok)
                .flat_map(move |(r, &n)| r[i * n..(i + 1) * n].iter().copied())
        })
        .collect()
}

/// The f64 reference of one step (module doc): absorbed query in f64 (never
/// rounded), the latent as one MQA head, `W_UV` in f64. `q` is
/// `[token, head, p + r]` flat; returns `[token, head, v]` (axes:
/// [`crate::tensor`], `p`/`r`/`v` the nope, rope and value channels).
///
/// Both projections are `dot`s (blocked sums): no test pins this
/// reference's bits, only tolerances.
pub fn reference_step(
    q: &[f32],
    cache: &LatentCache,
    meta: &AttentionMetadata,
    w: &MlaWeights,
    cfg: &MlaConfig,
) -> Result<Array3<f64>> {
    let (d, n, l) = (cfg.dims, cfg.num_heads, cache.layout);
    let (pn, r, lkv, vd, wd) = (
        d.qk_nope_head_dim,
        d.qk_rope_head_dim,
        d.kv_lora_rank,
        d.v_head_dim,
        d.latent_width(),
    );
    let shape_err = |what: &str, len: usize, e: ndarray::ShapeError| {
        Error::invalid(what, len, format!("must fit the MLA dims: {e}"))
    };
    let t = q.len() / (n * (pn + r)).max(1);
    let q = ArrayView3::from_shape((t, n, pn + r), q)
        .map_err(|e| shape_err("MLA query length", q.len(), e))?
        .mapv(f64::from);
    // kv_b_proj as [head, p + v, c]: W_UK = [.., ..p, ..], W_UV = [.., p.., ..].
    let kv_b = ArrayView3::from_shape((n, pn + vd, lkv), w.kv_b_proj())
        .map_err(|e| shape_err("kv_b_proj length", w.kv_b_proj().len(), e))?
        .mapv(f64::from);
    let (w_uk, w_uv) = (kv_b.slice(s![.., ..pn, ..]), kv_b.slice(s![.., pn.., ..]));
    // q_abs [token, head, c + r] = (q_nope[:, h] @ W_UK[h], q_rope).
    let mut q_abs = Array3::zeros((t, n, wd));
    for h in 0..n {
        let nope = q.slice(s![.., h, ..pn]).dot(&w_uk.index_axis(Axis(0), h));
        q_abs.slice_mut(s![.., h, ..lkv]).assign(&nope);
    }
    q_abs
        .slice_mut(s![.., .., lkv..])
        .assign(&q.slice(s![.., .., pn..]));
    let latent: Vec<f32> = cache
        .data
        .iter()
        .map(|&x| crate::kernels::mla_cache::load_latent(x, l.dtype, cfg.k_scale, DType::F32))
        .collect();
    let mqa = KvCache {
        layout: KvLayout::new(
            LayoutKind::Nhd,
            l.num_blocks,
            l.block_size,
            1,
            wd,
            DType::F32,
        )?,
        k: latent.clone(),
        v: latent,
    };
    let acfg = AttnConfigBuilder {
        scale: cfg.scale,
        ..AttnConfig::builder(n, 1, wd, DType::F32)
    }
    .build()?;
    let o = reference::paged_attention_shaped(q_abs.view(), &mqa, meta, &acfg)?.out;
    // out [token, head, v] = o[:, h, ..c] @ W_UV[h]^T.
    let mut out = Array3::zeros((t, n, vd));
    for h in 0..n {
        let v = o
            .slice(s![.., h, ..lkv])
            .dot(&w_uv.index_axis(Axis(0), h).t());
        out.slice_mut(s![.., h, ..]).assign(&v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WorkloadKind;
    use attnlab_shared::model::preset;

    #[test]
    fn scaled_down_deepseek_decode_workload_passes_on_every_mla_backend() {
        // Prefill steps (non-absorbed, no context) then decode steps (absorbed).
        let spec = WorkloadSpec {
            model: preset("deepseek-r1").unwrap(),
            kind: WorkloadKind::Decode,
            requests: 1,
            seed: 1,
            backend: None,
            block_size: None,
        };
        let report =
            run_mla_workload(&spec, &MlaConfig::deepseek_r1(1).scaled_down(), |_, _| {}).unwrap();
        assert!(report.passed(), "{:#?}", report.backends);
        assert_eq!(
            report
                .backends
                .iter()
                .filter(|b| b.status == Status::Pass)
                .count(),
            3
        );
        assert!(report.backends.iter().all(|b| b.steps == report.steps));
    }

    #[test]
    fn mha_models_are_refused_by_name() {
        let spec = WorkloadSpec {
            model: preset("llama-3.1-8b").unwrap(),
            kind: WorkloadKind::Decode,
            requests: 1,
            seed: 1,
            backend: None,
            block_size: None,
        };
        let e = run_mla_workload(&spec, &MlaConfig::deepseek_r1(1), |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("llama-3.1-8b") && e.contains("deepseek-r1"),
            "{e}"
        );
    }
}
