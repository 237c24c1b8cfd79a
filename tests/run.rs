//! `attnlab run`'s engine through the library: a tiny scheduled workload
//! through every emulated backend, checked against the f64 reference and
//! across backends, reproducible across thread counts.

use attnlab_shared::model::preset;
use attnlab_sim::replay::Status;
use attnlab_sim::workload::{run_workload, schedule, WorkloadKind, WorkloadReport, WorkloadSpec};

fn spec(kind: WorkloadKind, requests: usize, backend: Option<&str>) -> WorkloadSpec {
    WorkloadSpec { model: preset("llama-3.1-8b").unwrap(), kind, requests, seed: 11, backend: backend.map(str::to_string) }
}

fn with_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap().install(f)
}

#[test]
fn tiny_mixed_workload_passes_on_every_backend() {
    let mut calls = 0;
    let r = run_workload(&spec(WorkloadKind::Mixed, 2, None), |done, total| {
        calls += 1;
        assert!(done <= total);
    })
    .unwrap();
    assert_eq!(calls, r.steps);
    assert!(r.steps >= 2 && r.tokens > 0);
    assert!(r.passed(), "{r:#?}");
    for b in r.backends.iter().filter(|b| b.status == Status::Pass) {
        assert_eq!((b.steps, b.tokens), (r.steps, r.tokens), "{}", b.backend);
        assert!(b.max_abs_err_vs_ref <= r.tolerance.atol, "{b:?}");
    }
}

#[test]
fn a_run_is_bit_identical_across_thread_counts() {
    let run = || run_workload(&spec(WorkloadKind::Decode, 2, None), |_, _| {}).unwrap();
    let (one, two): (WorkloadReport, WorkloadReport) = (with_threads(1, run), with_threads(2, run));
    for (a, b) in one.backends.iter().zip(&two.backends) {
        assert_eq!(a.max_abs_err_vs_ref.to_bits(), b.max_abs_err_vs_ref.to_bits(), "{}", a.backend);
        assert_eq!(a.max_diff_vs_others.to_bits(), b.max_diff_vs_others.to_bits(), "{}", a.backend);
    }
}

#[test]
fn long_extend_schedules_chunked_prefill_steps() {
    let (cfg, steps) = schedule(&spec(WorkloadKind::LongExtend, 1, None)).unwrap();
    let prompt = WorkloadKind::LongExtend.requests(1, 11)[0].prompt_len;
    assert!(steps.len() > prompt / cfg.max_num_batched_tokens, "{} steps for a {prompt}-token prompt", steps.len());
}

#[test]
fn bad_inputs_are_errors_naming_the_value() {
    let e = run_workload(&spec(WorkloadKind::Decode, 0, None), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("requests 0"), "{e}");
    let e = run_workload(&spec(WorkloadKind::Decode, 1, Some("NOPE")), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("'NOPE'"), "{e}");
    let mla = WorkloadSpec { model: preset("deepseek-r1").unwrap(), ..spec(WorkloadKind::Decode, 1, None) };
    let e = run_workload(&mla, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("deepseek-r1") && e.contains("MLA"), "{e}");
}
