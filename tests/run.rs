//! `attnlab run`'s engine through the library and the binary: a tiny
//! scheduled workload through every emulated backend (MHA, and MLA for
//! deepseek-r1), checked against the f64 reference and across backends,
//! reproducible across thread counts; bad flag combinations exit 1.

use attnlab_shared::model::preset;
use attnlab_sim::backends::mla::MlaConfig;
use attnlab_sim::mla_workload::run_mla_workload;
use attnlab_sim::replay::Status;
use attnlab_sim::workload::{run_workload, schedule, WorkloadKind, WorkloadReport, WorkloadSpec};
use serde_json::Value;
use std::process::{Command, Output};

fn spec(kind: WorkloadKind, requests: usize, backend: Option<&str>) -> WorkloadSpec {
    WorkloadSpec {
        model: preset("llama-3.1-8b").unwrap(),
        kind,
        requests,
        seed: 11,
        backend: backend.map(|b| attnlab_sim::backends::parse(b).unwrap()),
        block_size: None,
    }
}

fn with_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap()
        .install(f)
}

/// Every backend's errors, to the bit.
fn assert_same_bits(one: &WorkloadReport, two: &WorkloadReport) {
    for (a, b) in one.backends.iter().zip(&two.backends) {
        assert_eq!(
            a.max_abs_err_vs_ref.to_bits(),
            b.max_abs_err_vs_ref.to_bits(),
            "{}",
            a.backend
        );
        assert_eq!(
            a.max_diff_vs_others.to_bits(),
            b.max_diff_vs_others.to_bits(),
            "{}",
            a.backend
        );
    }
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
    assert_same_bits(&one, &two);
}

#[test]
fn long_extend_schedules_chunked_prefill_steps() {
    let (cfg, steps) = schedule(&spec(WorkloadKind::LongExtend, 1, None)).unwrap();
    let prompt = WorkloadKind::LongExtend.requests(1, 11)[0].prompt_len;
    assert!(
        steps.len() > prompt / cfg.max_num_batched_tokens,
        "{} steps for a {prompt}-token prompt",
        steps.len()
    );
}

#[test]
fn bad_inputs_are_errors_naming_the_value() {
    let e = run_workload(&spec(WorkloadKind::Decode, 0, None), |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("requests 0"), "{e}");
    // A backend name becomes a BackendName at the edge, naming the bad one.
    let e = attnlab_sim::backends::parse("NOPE")
        .unwrap_err()
        .to_string();
    assert!(e.contains("'NOPE'"), "{e}");
    let mla = WorkloadSpec {
        model: preset("deepseek-r1").unwrap(),
        ..spec(WorkloadKind::Decode, 1, None)
    };
    let e = run_workload(&mla, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("deepseek-r1") && e.contains("MLA"), "{e}");
}

fn mla_spec(block_size: Option<usize>) -> WorkloadSpec {
    WorkloadSpec {
        model: preset("deepseek-r1").unwrap(),
        block_size,
        ..spec(WorkloadKind::Decode, 1, None)
    }
}

fn attnlab_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .arg("run")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `attnlab run ARGS` is bad input: exit 1, and the error names every one of `needles`.
fn assert_bad_input(args: &[&str], needles: &[&str]) {
    let o = attnlab_run(args);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
    for n in needles {
        assert!(e.contains(n), "{args:?}: {e:?} does not name {n:?}");
    }
}

#[test]
fn deepseek_r1_json_run_passes_on_every_mla_backend() {
    let o = attnlab_run(&[
        "--model",
        "deepseek-r1",
        "--workload",
        "decode",
        "--requests",
        "1",
        "--tp",
        "2",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["backends"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["TRITON_MLA", "ROCM_AITER_MLA", "ROCM_AITER_TRITON_MLA"]
    );
    assert!(
        rows.iter()
            .all(|b| b["status"] == "pass" && b["steps"] == v["steps"]),
        "{rows:#?}"
    );
    // Scaled down by default: 16 heads on each of the 2 ranks.
    assert_eq!(v["mla"]["heads_per_rank"], 16);
    assert_eq!(
        (v["mla"]["tp"].as_u64(), v["mla"]["scaled_down"].as_bool()),
        (Some(2), Some(true))
    );
}

#[test]
fn a_backend_of_the_other_family_exits_1_naming_the_allowed_ones() {
    let allowed = "TRITON_MLA, ROCM_AITER_MLA, ROCM_AITER_TRITON_MLA";
    assert_bad_input(
        &["--model", "deepseek-r1", "--backend", "TRITON_ATTN"],
        &["'TRITON_ATTN'", allowed],
    );
    let o = attnlab_run(&["--backend", "rocm_aiter_mla", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("'ROCM_AITER_MLA'")
            && msg.contains("llama-3.1-8b")
            && msg.contains("TRITON_ATTN"),
        "{msg}"
    );
}

#[test]
fn tp_must_divide_the_heads_and_shapes_mla_models_only() {
    assert_bad_input(
        &["--model", "deepseek-r1", "--tp", "3"],
        &["--tp 3", "allowed: 1, 2, 4, 8, 16, 32, 64, 128"],
    );
    assert_bad_input(&["--model", "deepseek-r1", "--tp", "0"], &["--tp 0"]);
    assert_bad_input(&["--tp", "2"], &["--tp 2", "llama-3.1-8b", "deepseek-r1"]);
    assert_bad_input(&["--scale-down"], &["--scale-down", "llama-3.1-8b"]);
    assert_bad_input(&["--full-size"], &["--full-size", "llama-3.1-8b"]);
}

#[test]
fn triton_mla_skips_block_size_1_with_vllms_message_and_aiter_mla_runs_it() {
    let r = run_mla_workload(
        &mla_spec(Some(1)),
        &MlaConfig::deepseek_r1(1).scaled_down(),
        |_, _| {},
    )
    .unwrap();
    assert!(r.passed(), "{r:#?}");
    let triton = r
        .backends
        .iter()
        .find(|b| b.backend == "TRITON_MLA")
        .unwrap();
    assert_eq!(triton.status, Status::Skipped);
    assert!(
        triton
            .reason
            .as_deref()
            .unwrap()
            .contains("does not support block size 1"),
        "{triton:?}"
    );
    let aiter = r
        .backends
        .iter()
        .find(|b| b.backend == "ROCM_AITER_MLA")
        .unwrap();
    assert_eq!(
        (aiter.status, aiter.steps, aiter.kernel_block_size),
        (Status::Pass, r.steps, Some(1))
    );
    // Asked for by name, the same rejection is bad input.
    let args = [
        "--model",
        "deepseek-r1",
        "--backend",
        "TRITON_MLA",
        "--block-size",
        "1",
    ];
    assert_bad_input(&args, &["does not support block size 1"]);
}

#[test]
fn a_configuration_no_backend_runs_exits_1_with_every_reason() {
    // tp 16 leaves 8 heads per rank (AITER needs 16 or 128); TRITON_MLA refuses block size 1.
    let args = ["--model", "deepseek-r1", "--tp", "16", "--block-size", "1"];
    assert_bad_input(&args, &["does not support block size 1", "16 or 128"]);
}

#[test]
fn an_mla_run_is_bit_identical_across_thread_counts() {
    let run = || {
        run_mla_workload(
            &mla_spec(None),
            &MlaConfig::deepseek_r1(2).scaled_down(),
            |_, _| {},
        )
        .unwrap()
    };
    let (one, two) = (with_threads(1, run), with_threads(2, run));
    assert!(one.passed(), "{one:#?}");
    assert_same_bits(&one, &two);
}
