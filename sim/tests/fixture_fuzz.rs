//! The fixture loader fuzzed in-process: mutations of the shipped fixtures
//! (byte flips, truncations, hostile header lengths) and hostile headers
//! (case metadata replaced by extremes, tensor shapes, dtypes and offsets
//! rewritten). The property: `fixture::parse` returns (never panics, and
//! under the test profile's overflow checks no arithmetic overflows), and a
//! case it accepts replays with no backend panicking, within the work the
//! file justifies (`max_kv_reuse`, `max_kv_splits`, the memory budget).
//!
//! `cargo test` runs `ATTNLAB_FUZZ_CASES` mutations (default 3000); the
//! ignored `fixture_fuzz_deep` runs 20,000. `fuzz/` holds the cargo-fuzz
//! targets for longer runs.

use attnlab_sim::fixture;
use attnlab_sim::replay::replay_fixture;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

fn shipped() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// JSON values a hostile header puts in place of a number or string.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(1),
            json!(2),
            json!(350_000),
            json!(262_144),
            json!(i32::MAX),
            json!(i32::MAX as i64 + 1),
            json!(u32::MAX),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1e308),
            json!(-1e308),
            json!(0.5),
            json!(null),
            json!(true),
            json!("float16"),
            json!("attn-fixture/1"),
            json!("paged_attention"),
            json!("mla_decode"),
            json!("merge_attn_states"),
            json!(""),
            json!([]),
            json!({}),
        ]),
        any::<i64>().prop_map(|v| json!(v)),
        (0u32..40).prop_map(|s| json!(1u64 << s)),
    ]
}

fn hostile_dim() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0u64,
            1,
            2,
            3,
            16,
            128,
            262_144,
            1 << 31,
            1 << 40,
            u64::MAX
        ]),
        0u64..300,
    ]
}

/// One way to damage a file.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Vec<(usize, u8)>),
    Truncate(usize),
    HeaderLen(u64),
    CaseValue(usize, Value),
    CaseDrop(usize),
    Shape(usize, Vec<u64>),
    Dtype(usize, &'static str),
    Offsets(usize, u64, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(Mutation::Flip),
        any::<usize>().prop_map(Mutation::Truncate),
        prop::sample::select(vec![
            0u64,
            1,
            7,
            8,
            100,
            1 << 20,
            1 << 40,
            u64::MAX - 7,
            u64::MAX
        ])
        .prop_map(Mutation::HeaderLen),
        (any::<usize>(), hostile_value()).prop_map(|(k, v)| Mutation::CaseValue(k, v)),
        any::<usize>().prop_map(Mutation::CaseDrop),
        (any::<usize>(), prop::collection::vec(hostile_dim(), 0..5))
            .prop_map(|(t, s)| Mutation::Shape(t, s)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "F16", "BF16", "F32", "I32", "I64", "U8", "F64", "BOOL"
            ])
        )
            .prop_map(|(t, d)| Mutation::Dtype(t, d)),
        (any::<usize>(), hostile_dim(), hostile_dim())
            .prop_map(|(t, a, b)| Mutation::Offsets(t, a, b)),
    ]
}

/// The header as JSON and the data section, when the file has a readable one.
fn split(bytes: &[u8]) -> Option<(Map<String, Value>, Vec<u8>)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    Some((header, bytes[8 + n..].to_vec()))
}

fn join(header: &Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn apply(bytes: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in muts {
        match m {
            Mutation::Flip(flips) => {
                for &(i, x) in flips {
                    if !b.is_empty() {
                        let n = b.len();
                        b[i % n] ^= x;
                    }
                }
            }
            Mutation::Truncate(n) => b.truncate(n % (b.len() + 1)),
            Mutation::HeaderLen(n) if b.len() >= 8 => b[..8].copy_from_slice(&n.to_le_bytes()),
            Mutation::HeaderLen(_) => {}
            _ => {
                let Some((mut h, data)) = split(&b) else {
                    continue;
                };
                edit_header(&mut h, m);
                b = join(&h, &data);
            }
        }
    }
    b
}

fn edit_header(h: &mut Map<String, Value>, m: &Mutation) {
    let tensors: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let pick = |i: usize| tensors.get(i % tensors.len().max(1)).cloned();
    match m {
        Mutation::CaseValue(..) | Mutation::CaseDrop(_) => {
            let Some(meta) = h.get_mut("__metadata__").and_then(Value::as_object_mut) else {
                return;
            };
            let Some(mut case) = meta
                .get("case")
                .and_then(Value::as_str)
                .and_then(|c| serde_json::from_str::<Map<String, Value>>(c).ok())
            else {
                return;
            };
            let keys: Vec<String> = case.keys().cloned().collect();
            if keys.is_empty() {
                return;
            }
            match m {
                Mutation::CaseValue(k, v) => {
                    _ = case.insert(keys[k % keys.len()].clone(), v.clone())
                }
                Mutation::CaseDrop(k) => _ = case.remove(&keys[k % keys.len()]),
                _ => {}
            }
            meta.insert(
                "case".into(),
                Value::String(serde_json::to_string(&case).unwrap()),
            );
        }
        Mutation::Shape(t, s) => {
            if let Some(name) = pick(*t) {
                h[&name]["shape"] = json!(s);
            }
        }
        Mutation::Dtype(t, d) => {
            if let Some(name) = pick(*t) {
                h[&name]["dtype"] = json!(d);
            }
        }
        Mutation::Offsets(t, a, b) => {
            if let Some(name) = pick(*t) {
                h[&name]["data_offsets"] = json!([a, b]);
            }
        }
        _ => {}
    }
}

#[derive(Default, Debug)]
struct Counts {
    inputs: usize,
    accepted: usize,
    clean_errors: usize,
}

fn fuzz(cases: u32) {
    let files = shipped();
    assert!(!files.is_empty());
    let counts = Mutex::new(Counts::default());
    let start = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &(0..files.len(), prop::collection::vec(mutation(), 1..4)),
        |(f, muts)| {
            let (name, bytes) = &files[f];
            let bytes = apply(bytes, &muts);
            let parsed = std::panic::catch_unwind(|| fixture::parse(name, &bytes))
                .map_err(|_| TestCaseError::fail(format!("parse panicked on {name} {muts:?}")))?;
            let mut c = counts.lock().unwrap();
            c.inputs += 1;
            let fx = match parsed {
                Err(e) => {
                    // A clean error names the file and what was wrong.
                    prop_assert!(e.to_string().starts_with(name.as_str()), "{e}");
                    c.clean_errors += 1;
                    return Ok(());
                }
                Ok(fx) => fx,
            };
            c.accepted += 1;
            drop(c);
            let t = Instant::now();
            let rows = std::panic::catch_unwind(|| replay_fixture(&fx, None))
                .map_err(|_| TestCaseError::fail(format!("replay panicked on {name} {muts:?}")))?;
            for r in &rows {
                let reason = r.reason.as_deref().unwrap_or("");
                prop_assert!(
                    !reason.contains("panicked"),
                    "{name} {muts:?}: {} {reason}",
                    r.backend
                );
            }
            // Work bounded by the file: the shipped cases replay in well under a second each.
            prop_assert!(
                t.elapsed().as_secs_f64() < 30.0,
                "{name} {muts:?}: {:?}",
                t.elapsed()
            );
            Ok(())
        },
    );
    let c = counts.into_inner().unwrap();
    eprintln!(
        "fixture fuzz: {} inputs in {:.0} s: {} clean errors, {} accepted and replayed, 0 crashes",
        c.inputs,
        start.elapsed().as_secs_f64(),
        c.clean_errors,
        c.accepted
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn cases_or(default: u32) -> u32 {
    std::env::var("ATTNLAB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn mutated_fixtures_parse_to_a_case_or_a_clean_error_and_replay_without_panicking() {
    fuzz(cases_or(3000));
}

#[test]
#[ignore = "deep run: ATTNLAB_FUZZ_CASES mutations (default 20000)"]
fn fixture_fuzz_deep() {
    fuzz(cases_or(20_000));
}
