//! `attnlab cases` end to end: the files it writes load with the reader and
//! replay (as uncaptured cases), the same seed writes the same bytes, and bad
//! flags are exit-2 errors naming the allowed values.

use attnlab_sim::fixture;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn attnlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(args)
        .output()
        .expect("run attnlab")
}

/// A fresh empty directory under the target's tmp dir.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn cases_for_every_backend_load_and_replay_as_uncaptured() {
    let out = scratch("cases_all");
    let o = attnlab(&[
        "cases",
        "--backend",
        "all",
        "--count",
        "4",
        "--seed",
        "1",
        "--edge",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed = report["files"].as_array().unwrap();
    let written = files(&out);
    assert_eq!(
        (listed.len(), written.len()),
        (36, 36),
        "9 targets x 4 cases"
    );
    for p in &written {
        let f = fixture::load(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.header.version, 2);
        assert!(f.header.path.is_some());
    }
    let paths: std::collections::BTreeSet<&str> =
        listed.iter().map(|f| f["path"].as_str().unwrap()).collect();
    for p in [
        "unified_attention",
        "chunked_prefill_paged_decode",
        "merge_attn_states",
        "decode_attention_fwd",
    ] {
        assert!(paths.contains(p), "{paths:?}");
    }
    let o = attnlab(&["replay", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for r in rows.as_array().unwrap() {
        assert_eq!(r["status"], "no_output", "{r}");
    }
    let o = attnlab(&["replay", out.to_str().unwrap(), "--summary"]);
    assert!(o.status.success());
}

#[test]
fn the_same_seed_writes_the_same_bytes() {
    let (a, b) = (scratch("cases_seed_a"), scratch("cases_seed_b"));
    for d in [&a, &b] {
        let o = attnlab(&[
            "cases",
            "--backend",
            "TRITON_ATTN",
            "--count",
            "5",
            "--seed",
            "9",
            "--out",
            d.to_str().unwrap(),
        ]);
        assert!(o.status.success());
    }
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.len(), 5);
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(
            std::fs::read(x).unwrap(),
            std::fs::read(y).unwrap(),
            "{x:?}"
        );
    }
}

#[test]
fn bad_values_are_exit_1_naming_the_allowed_values() {
    let out = scratch("cases_bad");
    let dir = out.to_str().unwrap();
    for (args, want) in [
        (vec!["--backend", "FLASH_ATTN"], "allowed: TRITON_ATTN"),
        (vec!["--count", "0"], "allowed: 1..=10000"),
        (vec!["--count", "10001"], "allowed: 1..=10000"),
    ] {
        let mut all = vec!["cases", "--out", dir];
        all.extend(args.iter());
        let o = attnlab(&all);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let o = attnlab(&["cases", "--count", "0", "--json", "--out", dir]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("--count"),
        "{v}"
    );
}
