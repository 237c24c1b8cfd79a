//! Every hostile input found against 0abd852 (issue 15), by name: each ends
//! in a clear error (exit 1, naming the value, the limit and how to raise
//! it) or a bounded run, under `ulimit -v` (tests/common). And the CLI's
//! conventions (docs/src/cli.md): exit statuses, `--json` errors, backend
//! names in any case, no device as its own status.

mod common;

use common::{attnlab, attnlab_env, fixture, Fixture, Outcome};
use std::time::Duration;

const U64_MAX: &str = "18446744073709551615";

/// Exit 1 with one `error:` line naming every one of `needles`, no crash.
fn assert_refused(o: &Outcome, needles: &[&str]) {
    assert!(!o.crashed() && !o.timed_out, "{o:?}");
    assert_eq!(o.code, Some(1), "{o:?}");
    for n in needles {
        assert!(o.stderr.contains(n), "{n:?} not in {:?}", o.stderr);
    }
}

/// Refused over the named limit, naming its override variable.
fn assert_over_limit(args: &[&str], flag: &str, limit: &str) {
    let o = attnlab(args);
    let env = format!("ATTNLAB_{}=", limit.to_ascii_uppercase());
    assert_refused(&o, &[flag, limit, &env]);
    // The same with --json: the error object, type "limit".
    let o = attnlab(&[args, &["--json"]].concat());
    let (kind, msg) = o.json_error().unwrap_or_else(|| panic!("{o:?}"));
    assert_eq!((o.code, kind.as_str()), (Some(1), "limit"), "{o:?}");
    assert!(msg.contains(limit), "{msg}");
}

#[test]
fn run_with_u64_max_requests_is_refused_over_max_requests() {
    assert_over_limit(
        &["run", "--requests", U64_MAX],
        "--requests",
        "max_requests",
    );
}

#[test]
fn run_with_a_million_requests_is_refused_over_max_requests() {
    assert_over_limit(
        &["run", "--requests", "1000000"],
        "--requests",
        "max_requests",
    );
}

#[test]
fn run_with_a_terabyte_block_size_is_refused_over_max_block_size() {
    assert_over_limit(
        &["run", "--block-size", "1000000000000", "--requests", "1"],
        "--block-size",
        "max_block_size",
    );
}

#[test]
fn bench_cpu_with_u64_max_sizes_is_refused_for_each_flag() {
    for (flag, limit) in [
        ("--prefill-tokens", "max_seq_len"),
        ("--decode-batch", "max_requests"),
        ("--decode-ctx", "max_seq_len"),
        ("--repeats", "max_repeats"),
    ] {
        assert_over_limit(&["bench", "--cpu", flag, U64_MAX], flag, limit);
    }
}

#[test]
fn bench_cpu_with_a_trillion_prefill_tokens_or_ten_million_context_is_refused() {
    assert_over_limit(
        &["bench", "--cpu", "--prefill-tokens", "1000000000000"],
        "--prefill-tokens",
        "max_seq_len",
    );
    assert_over_limit(
        &["bench", "--cpu", "--decode-ctx", "10000000"],
        "--decode-ctx",
        "max_seq_len",
    );
}

#[test]
fn bench_cpu_within_the_limits_but_over_the_memory_budget_is_refused_before_allocating() {
    let o = attnlab_env(
        &[
            "bench",
            "--cpu",
            "--prefill-tokens",
            "1048576",
            "--repeats",
            "1",
        ],
        &[("ATTNLAB_MAX_MEMORY", "256M")],
        Duration::from_secs(60),
    );
    assert_refused(&o, &["prefill", "max_memory", "ATTNLAB_MAX_MEMORY="]);
}

#[test]
fn diff_with_max_seconds_1e308_is_refused_before_any_device_work() {
    assert_over_limit(
        &["diff", "--device", "host", "--max-seconds", "1e308"],
        "--max-seconds",
        "max_seconds",
    );
}

#[test]
fn trace_with_i32_max_blocks_is_refused_over_max_num_blocks() {
    assert_over_limit(
        &[
            "trace",
            "--backend",
            "TRITON_ATTN",
            "--prompt-len",
            "10",
            "--num-blocks",
            "2147483647",
        ],
        "--num-blocks",
        "max_num_blocks",
    );
}

#[test]
fn a_limit_is_raised_by_its_environment_variable() {
    let args = [
        "trace",
        "--backend",
        "triton_attn",
        "--prompt-len",
        "1",
        "--num-requests",
        "1025",
        "--json",
    ];
    assert_eq!(attnlab(&args).code, Some(1));
    let o = attnlab_env(
        &args,
        &[("ATTNLAB_MAX_REQUESTS", "2048")],
        Duration::from_secs(120),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
}

#[test]
fn a_malformed_limit_override_is_an_input_error_naming_the_variable() {
    for (var, value) in [
        ("ATTNLAB_MAX_MEMORY", "lots"),
        ("ATTNLAB_MAX_REQUESTS", "-5"),
    ] {
        let o = attnlab_env(
            &[
                "layout",
                "--layout",
                "nhd",
                "--block-size",
                "16",
                "--head-size",
                "64",
            ],
            &[(var, value)],
            Duration::from_secs(60),
        );
        assert_refused(&o, &[var, value]);
    }
}

#[test]
fn run_over_the_memory_budget_is_refused_naming_the_kv_caches() {
    let o = attnlab_env(
        &["run", "--requests", "64", "--json"],
        &[("ATTNLAB_MAX_MEMORY", "1M")],
        Duration::from_secs(60),
    );
    let (kind, msg) = o.json_error().unwrap_or_else(|| panic!("{o:?}"));
    assert_eq!((o.code, kind.as_str()), (Some(1), "limit"));
    assert!(
        msg.contains("KV caches") && msg.contains("ATTNLAB_MAX_MEMORY"),
        "{msg}"
    );
}

/// `replay --json FILE` under `env`: exit 1 within 20 s, no crash, and the
/// file's row fails with a reason naming every one of `needles`.
fn assert_replay_refuses(file: &str, env: &[(&str, &str)], needles: &[&str]) {
    let o = attnlab_env(&["replay", "--json", file], env, Duration::from_secs(20));
    assert!(!o.crashed() && !o.timed_out, "{o:?}");
    assert_eq!(o.code, Some(1), "{o:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["status"], "fail");
    let reason = rows[0]["reason"].as_str().unwrap();
    for n in needles {
        assert!(reason.contains(n), "{n:?} not in {reason}");
    }
}

#[test]
fn replay_of_dev_zero_is_that_files_error_without_reading_it() {
    assert_replay_refuses("/dev/zero", &[], &["/dev/zero", "not a regular file"]);
}

#[cfg(unix)]
#[test]
fn replay_of_a_named_pipe_is_that_files_error_without_waiting_for_a_writer() {
    let dir = std::env::temp_dir().join(format!("attnlab-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("case.safetensors");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    assert_replay_refuses(fifo.to_str().unwrap(), &[], &["not a regular file"]);
}

/// An mla_decode fixture claiming `num_kv_splits` (the real one says 4).
fn mla_with_splits(splits: u64) -> std::path::PathBuf {
    let mut f = Fixture::read("mla_f16_h16_b16_s4");
    f.case(|c| _ = c.insert("num_kv_splits".into(), splits.into()));
    f.write(&format!("mla_splits_{splits}"))
}

#[test]
fn an_mla_fixture_with_350000_kv_splits_fails_alone_and_the_other_files_still_replay() {
    let bad = mla_with_splits(350_000);
    let good = fixture("merge_bf16_t7_h2_d128");
    let o = attnlab(&["replay", "--json", bad.to_str().unwrap(), &good]);
    assert!(!o.crashed(), "{o:?}");
    assert_eq!(o.code, Some(1));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&o.stdout).unwrap();
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("num_kv_splits") && reason.contains("max_kv_splits"),
        "{reason}"
    );
    let others: Vec<&serde_json::Value> = rows[1..].iter().collect();
    assert!(
        !others.is_empty() && others.iter().all(|r| r["status"] == "pass"),
        "{rows:?}"
    );
}

#[test]
fn an_mla_fixture_with_splits_within_the_limit_but_over_the_memory_budget_is_refused() {
    assert_replay_refuses(
        mla_with_splits(1024).to_str().unwrap(),
        &[("ATTNLAB_MAX_MEMORY", "8M")],
        &[
            "num_kv_splits 1024",
            "split-KV partials",
            "max_memory",
            "ATTNLAB_MAX_MEMORY=",
        ],
    );
}

#[test]
fn a_fixture_repeating_one_block_262144_times_is_refused_over_max_kv_reuse() {
    // The real case: one sequence of 1 token in 2 blocks; the hostile one
    // attends to block 1 262,144 times over (a 1 MiB block table).
    let mut f = Fixture::read("ua_dec2d_bf16_h128_g16x2_b16_single");
    let cols = 262_144u64;
    f.set_i32("block_table", &[1, cols], &vec![1; cols as usize]);
    f.set_i32("seq_lens", &[1], &[(cols * 16) as i32]);
    let path = f.write("one_block_262144_times");
    assert_replay_refuses(
        path.to_str().unwrap(),
        &[],
        &[
            "seq_lens",
            "262144",
            "max_kv_reuse",
            "ATTNLAB_MAX_KV_REUSE=",
        ],
    );
}

#[test]
fn select_with_a_negative_block_size_is_a_bad_value_not_a_crash() {
    let o = attnlab(&["select", "--block-size", "-1"]);
    assert_refused(&o, &["'-1'", "--block-size"]);
    let o = attnlab(&["select", "--block-size", "-1", "--json"]);
    assert_eq!(o.json_error().map(|e| e.0), Some("invalid".into()), "{o:?}");
}

#[test]
fn layout_with_an_unknown_layout_names_the_allowed_ones() {
    let o = attnlab(&[
        "layout",
        "--layout",
        "nope",
        "--block-size",
        "16",
        "--head-size",
        "128",
    ]);
    assert_refused(&o, &["'nope'", "nhd, rocm-paged, aiter-shuffled, mla"]);
}

#[test]
fn usage_errors_exit_2_and_honour_json_on_every_subcommand() {
    for sub in [
        "select",
        "trace",
        "layout",
        "replay",
        "run",
        "diff",
        "bench",
        "gpu compile",
        "zoo",
    ] {
        let mut args: Vec<&str> = sub.split(' ').collect();
        args.extend(["--no-such-flag", "--json"]);
        let o = attnlab(&args);
        assert_eq!(o.code, Some(2), "{sub}: {o:?}");
        let (kind, msg) = o.json_error().unwrap_or_else(|| panic!("{sub}: {o:?}"));
        assert_eq!(kind, "usage", "{sub}");
        assert!(msg.contains("--no-such-flag"), "{sub}: {msg}");
    }
    let o = attnlab(&["bench", "--json"]);
    assert_eq!(
        (o.code, o.json_error().map(|e| e.0)),
        (Some(2), Some("usage".into()))
    );
    let o = attnlab(&["frobnicate"]);
    assert_eq!(o.code, Some(2));
}

#[test]
fn bad_values_exit_1_in_every_subcommand() {
    for args in [
        &["select", "--dtype", "int3"][..],
        &["trace", "--backend", "nope", "--prompt-len", "8"],
        &["trace", "--backend", "TRITON_ATTN", "--prompt-len", "0"],
        &[
            "layout",
            "--layout",
            "nhd",
            "--block-size",
            "0",
            "--head-size",
            "8",
        ],
        &["replay", "--backend", "nope", "/dev/null"],
        &["run", "--model", "gpt-5"],
        &["run", "--requests", "abc"],
        &["diff", "--backend", "nope"],
        &["diff", "--cases", "-1"],
        &["bench", "--cpu", "--backend", "nope"],
        &["gpu", "compile", "--target", "gfx1"],
        &[
            "gpu",
            "compile",
            "--target",
            "host32",
            "--dump",
            "/dev/null/x",
        ],
        &["zoo", "--fault", "nope"],
        &["zoo", "--budget-seconds", "0"],
        &["zoo", "--budget-seconds", "NaN"],
    ] {
        let o = attnlab(args);
        assert!(!o.crashed(), "{args:?}: {o:?}");
        assert_eq!(o.code, Some(1), "{args:?}: {o:?}");
        let o = attnlab(&[args, &["--json"]].concat());
        assert_eq!(o.code, Some(1), "{args:?} --json: {o:?}");
        assert!(o.json_error().is_some(), "{args:?} --json: {o:?}");
    }
}

#[test]
fn backend_names_are_case_insensitive_and_all_means_every_one() {
    let f = fixture("ua_dec2d_bf16_h128_g16x2_b16_single");
    for name in ["triton_attn", "Triton_Attn", "TRITON_ATTN"] {
        let o = attnlab(&["replay", "--json", "--backend", name, &f]);
        assert_eq!(o.code, Some(0), "{name}: {o:?}");
        assert!(o.stdout.contains("\"TRITON_ATTN\""), "{name}");
    }
    let o = attnlab(&["replay", "--json", "--backend", "ALL", &f]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("ROCM_ATTN") && o.stdout.contains("TRITON_ATTN"));
    for args in [
        &[
            "run",
            "--backend",
            "triton_attn",
            "--requests",
            "1",
            "--workload",
            "decode",
            "--json",
        ][..],
        &[
            "trace",
            "--backend",
            "rocm_aiter_fa",
            "--prompt-len",
            "8",
            "--json",
        ],
        &[
            "bench",
            "--cpu",
            "--backend",
            "rocm_attn",
            "--prefill-tokens",
            "16",
            "--decode-batch",
            "1",
            "--decode-ctx",
            "16",
            "--repeats",
            "1",
            "--torch",
            "off",
            "--json",
        ],
        &["diff", "--backend", "CONTRACT", "--list"],
    ] {
        let o = attnlab(args);
        assert_eq!(o.code, Some(0), "{args:?}: {o:?}");
    }
}

#[test]
fn trace_all_traces_every_backend_of_the_family_and_names_the_ones_that_refuse() {
    let o = attnlab(&["trace", "--backend", "all", "--prompt-len", "8", "--json"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let names: Vec<&str> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "TRITON_ATTN",
            "ROCM_ATTN",
            "ROCM_AITER_FA",
            "ROCM_AITER_UNIFIED_ATTN",
            "FLEX_ATTENTION"
        ]
    );
    let o = attnlab(&[
        "trace",
        "--backend",
        "ALL",
        "--prompt-len",
        "4",
        "--model",
        "deepseek-r1",
        "--block-size",
        "1",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout.contains("=== ROCM_AITER_MLA ===") && o.stdout.contains("skipped TRITON_MLA: "),
        "{}",
        o.stdout
    );
}

#[test]
fn fp8_is_spelled_as_vllm_spells_it_in_layout_and_select() {
    let o = attnlab(&[
        "layout",
        "--layout",
        "rocm-paged",
        "--block-size",
        "16",
        "--head-size",
        "128",
        "--dtype",
        "fp8",
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("\"float8_e4m3fnuz\""), "gfx942's fp8");
    let o = attnlab(&[
        "layout",
        "--layout",
        "rocm-paged",
        "--block-size",
        "16",
        "--head-size",
        "128",
        "--dtype",
        "FP8",
        "--arch",
        "gfx950",
        "--json",
    ]);
    assert!(o.stdout.contains("\"float8_e4m3fn\""), "{o:?}");
    let o = attnlab(&["select", "--kv-cache-dtype", "FP8", "--json"]);
    assert_eq!(o.code, Some(0), "{o:?}");
}

#[test]
fn no_device_is_exit_3_and_allow_no_device_makes_it_0() {
    // No AMD GPU on the machines the tests run on: --device hip finds no device
    // (libamdhip64 absent, or present with no driver: hipInit fails).
    let args = [
        "diff",
        "--device",
        "hip",
        "--backend",
        "contract",
        "--cases",
        "1",
    ];
    let o = attnlab(&args);
    assert_eq!(o.code, Some(3), "{o:?}");
    assert!(
        o.stderr.contains("no device") && o.stderr.contains("--allow-no-device"),
        "{o:?}"
    );
    let o = attnlab(&[&args[..], &["--json"]].concat());
    assert_eq!(
        o.json_error().map(|e| e.0),
        Some("no_device".into()),
        "{o:?}"
    );
    let o = attnlab(&[&args[..], &["--allow-no-device", "--json"]].concat());
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(
        v["device"].is_null()
            && v["skipped"]
                .as_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("hip"),
        "{v}"
    );
}

#[test]
fn bench_cpu_and_gpu_together_run_both() {
    let small = [
        "--prefill-tokens",
        "16",
        "--decode-batch",
        "1",
        "--decode-ctx",
        "16",
        "--repeats",
        "1",
        "--backend",
        "TRITON_ATTN",
        // With a GPU present: only the copy yardstick, no kernel rows.
        "--filter",
        "no-such-row",
    ];
    let dir = std::env::temp_dir().join(format!("attnlab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let o = attnlab_env(
        &[
            &[
                "bench",
                "--cpu",
                "--gpu",
                "--allow-no-device",
                "--torch",
                "off",
                "--json",
            ][..],
            &small,
        ]
        .concat(),
        &[("ATTNLAB_BENCH_DIR", dir.to_str().unwrap())],
        Duration::from_secs(120),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(
        v["cpu"]["results"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{v}"
    );
    assert!(v["gpu"].is_object(), "{v}");
}

#[test]
fn every_limit_is_documented_with_its_default_and_override() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/src/cli.md")).unwrap();
    for l in attnlab_shared::limits::LIMITS {
        let row = format!(
            "| `{}` | {} {} | `{}` |",
            l.name,
            l.default,
            l.unit,
            l.env_var()
        );
        assert!(
            page.contains(&row),
            "docs/src/cli.md lacks the row starting {row}"
        );
    }
    assert!(page.contains(attnlab_shared::limits::MEMORY_ENV));
}

#[test]
fn zoo_catches_a_fault_names_its_counterexample_and_lists_every_fault() {
    let o = attnlab(&[
        "zoo",
        "--fault",
        "MERGE-NEG-INF-NAN",
        "--budget-seconds",
        "30",
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    let row = &v[0];
    assert_eq!(row["fault"], "merge-neg-inf-nan");
    assert_eq!(row["caught"], true);
    assert_eq!(row["property"], "merge_matches_reference");
    assert!(
        row["counterexample"]["failure"]
            .as_str()
            .unwrap()
            .contains("NaN"),
        "{row}"
    );
    let o = attnlab(&["zoo", "--list", "--json"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v.as_array().map(|a| a.len()), Some(21), "{v}");
    let e = attnlab(&["zoo", "--fault", "nope"]);
    assert!(
        e.stderr.contains("'nope'") && e.stderr.contains("block-id-u16"),
        "{e:?}"
    );
}
