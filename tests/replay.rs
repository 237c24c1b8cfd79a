//! Replay of the shipped vLLM fixtures, and the fixture reader's handling of
//! malformed files: every corruption is an error naming the file, the tensor
//! and the problem, never a panic.

use attnlab_sim::fixture::{self, Case, FixtureError};
use attnlab_sim::replay::{replay_file, replay_fixture, replay_paths, Status, REFERENCE};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(format!("{name}.safetensors"))).unwrap()
}

/// A safetensors file split into its JSON header and data section, edited, and
/// written back (the header length prefix recomputed).
struct Edit {
    header: serde_json::Map<String, Value>,
    data: Vec<u8>,
}

impl Edit {
    fn of(bytes: &[u8]) -> Self {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        Edit {
            header: serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
            data: bytes[8 + n..].to_vec(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let h = serde_json::to_vec(&self.header).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(&self.data);
        out
    }

    fn case(&mut self, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> &mut Self {
        let meta = self.header["__metadata__"].as_object_mut().unwrap();
        let mut case: serde_json::Map<String, Value> =
            serde_json::from_str(meta["case"].as_str().unwrap()).unwrap();
        f(&mut case);
        meta["case"] = Value::String(serde_json::to_string(&case).unwrap());
        self
    }

    /// The bytes of one tensor, to patch in place.
    fn tensor(&mut self, name: &str) -> &mut [u8] {
        let off = &self.header[name]["data_offsets"];
        let (a, b) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        &mut self.data[a..b]
    }

    fn info(&mut self, name: &str) -> &mut serde_json::Map<String, Value> {
        self.header.get_mut(name).unwrap().as_object_mut().unwrap()
    }

    fn parse(&self) -> Result<fixture::Fixture, FixtureError> {
        fixture::parse("bad.safetensors", &self.bytes())
    }
}

const PAGED: &str = "rocm_mix_f16_h128_g8x2_b16";

fn err_of(e: &mut Edit) -> FixtureError {
    let err = e.parse().expect_err("a corrupted fixture must be rejected");
    assert_eq!(err.file, "bad.safetensors");
    err
}

#[test]
fn every_shipped_fixture_replays_green_or_skips_with_a_reason() {
    let results = replay_paths(&[fixtures_dir()], None).unwrap();
    let files: std::collections::BTreeSet<&str> = results.iter().map(|r| r.file.as_str()).collect();
    assert_eq!(files.len(), 24, "fixtures/ ships 24 cases");
    for r in &results {
        assert_ne!(
            r.status,
            Status::Fail,
            "{} / {}: {:?}",
            r.file,
            r.backend,
            r.reason
        );
        if r.status == Status::Skipped {
            assert!(
                r.reason.as_deref().is_some_and(|s| !s.is_empty()),
                "{} / {} skipped without a reason",
                r.file,
                r.backend
            );
        }
    }
    // The oracle itself agrees with every vLLM kernel output, in every op.
    for file in files {
        assert!(
            results
                .iter()
                .any(|r| r.file == file && r.backend == REFERENCE && r.status == Status::Pass),
            "{file}"
        );
    }
}

#[test]
fn paged_fixture_runs_every_backend_that_accepts_it() {
    let f = fixture::load(&fixtures_dir().join(format!("{PAGED}.safetensors"))).unwrap();
    let results = replay_fixture(&f, None);
    let ran = results
        .iter()
        .filter(|r| r.backend != REFERENCE && r.status == Status::Pass)
        .count();
    assert!(ran >= 1, "{results:#?}");
}

#[test]
fn json_rows_have_the_documented_keys() {
    let results = replay_file(
        &fixtures_dir().join("merge_f32_t7_h2_d128_inf.safetensors"),
        None,
    );
    let v = serde_json::to_value(&results).unwrap();
    for row in v.as_array().unwrap() {
        let keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        for k in [
            "file",
            "op",
            "backend",
            "status",
            "reason",
            "max_abs_err",
            "max_rel_err",
            "mismatches",
        ] {
            assert!(keys.contains(&k), "missing {k} in {row}");
        }
        assert!(["pass", "fail", "skipped"].contains(&row["status"].as_str().unwrap()));
    }
}

#[test]
fn a_perturbed_output_fails_and_names_the_first_bad_element() {
    let mut e = Edit::of(&read(PAGED));
    let out = e.tensor("output");
    out[10..12].copy_from_slice(&half::f16::from_f32(100.0).to_le_bytes()); // element 5
    let f = e.parse().unwrap();
    let rows = replay_fixture(&f, None);
    let r = rows.iter().find(|r| r.backend == REFERENCE).unwrap();
    assert_eq!((r.status, r.mismatches), (Status::Fail, Some(1)));
    assert!(
        r.reason.as_deref().unwrap().contains("flat index 5"),
        "{:?}",
        r.reason
    );
}

#[test]
fn unknown_backend_is_an_error_naming_the_emulated_ones() {
    let e = replay_paths(&[fixtures_dir()], Some("FLASH_ATTN_9"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'FLASH_ATTN_9'") && e.contains("TRITON_ATTN"),
        "{e}"
    );
}

#[test]
fn unreadable_file_is_one_failed_row_naming_it() {
    let rows = replay_file(Path::new("no/such/file.safetensors"), None);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, Status::Fail);
    assert!(rows[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("no/such/file.safetensors"));
}

#[test]
fn truncated_fixture_names_the_file_and_the_cut_tensor() {
    let bytes = read(PAGED);
    for cut in [1, 100, bytes.len() / 2] {
        let err = fixture::parse("bad.safetensors", &bytes[..bytes.len() - cut]).unwrap_err();
        assert_eq!(err.file, "bad.safetensors");
        assert!(err.problem.contains("truncated"), "{err}");
        assert!(!["header", "file"].contains(&err.tensor.as_str()), "{err}");
    }
    for cut in [0, 7, 30] {
        let err = fixture::parse("bad.safetensors", &bytes[..cut]).unwrap_err();
        assert_eq!(err.tensor, "header", "{err}");
    }
}

#[test]
fn wrong_shape_is_rejected_naming_the_tensor() {
    let mut e = Edit::of(&read(PAGED));
    e.info("query")
        .insert("shape".into(), serde_json::json!([12, 128, 8])); // same element count
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "query");
    assert!(
        err.problem.contains("[12, 128, 8]") && err.problem.contains("[12, 8, 128]"),
        "{err}"
    );
}

#[test]
fn wrong_tensor_dtype_is_rejected() {
    let mut e = Edit::of(&read(PAGED));
    e.info("block_table").insert("dtype".into(), "F32".into());
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "block_table");
    assert!(err.problem.contains("I32"), "{err}");
}

#[test]
fn out_of_range_block_id_is_rejected_naming_the_entry() {
    let mut e = Edit::of(&read(PAGED));
    e.tensor("block_table")[..4].copy_from_slice(&999i32.to_le_bytes());
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "block_table");
    assert!(
        err.problem.contains("block_table[0][0]")
            && err.problem.contains("999")
            && err.problem.contains("[0, 9)"),
        "{err}"
    );
}

#[test]
fn seq_len_beyond_the_block_table_is_rejected() {
    let mut e = Edit::of(&read(PAGED));
    e.tensor("seq_lens")[..4].copy_from_slice(&5000i32.to_le_bytes());
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "seq_lens");
    assert!(
        err.problem.contains("seq_lens[0]") && err.problem.contains("5000"),
        "{err}"
    );
}

#[test]
fn non_monotone_query_start_loc_is_rejected() {
    let mut e = Edit::of(&read(PAGED));
    e.tensor("query_start_loc")[4..8].copy_from_slice(&20i32.to_le_bytes()); // [0, 20, 7, ..]
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "query_start_loc");
    assert!(err.problem.contains("monotone"), "{err}");
}

#[test]
fn nan_in_an_input_is_rejected_with_its_index() {
    let mut e = Edit::of(&read(PAGED));
    e.tensor("value_cache")[2..4].copy_from_slice(&half::f16::NAN.to_le_bytes());
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "value_cache");
    assert!(
        err.problem.contains("NaN") && err.problem.contains("flat index 1"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_rejected() {
    let mut e = Edit::of(&read(PAGED));
    let info = e.header.remove("value_cache").unwrap();
    e.header.insert("value_cachX".into(), info);
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "value_cache");
    assert!(err.problem.contains("missing"), "{err}");
}

#[test]
fn bad_metadata_values_name_the_key_and_the_allowed_values() {
    let cases: [(&str, Value, &str); 5] = [
        (
            "format",
            "attn-fixture/3".into(),
            "attn-fixture/1, attn-fixture/2",
        ),
        ("op", "flash_decode".into(), "merge_attn_states"),
        ("dtype", "float64".into(), "bfloat16"),
        ("num_kv_heads", 3.into(), "divide"),
        ("scale", (-1.0).into(), "> 0"),
    ];
    for (key, value, allowed) in cases {
        let mut e = Edit::of(&read(PAGED));
        e.case(|c| {
            c.insert(key.into(), value.clone());
        });
        let err = err_of(&mut e);
        assert_eq!(err.tensor, format!("metadata.{key}"), "{err}");
        assert!(err.problem.contains(allowed), "{key}: {err}");
    }
}

#[test]
fn merge_and_mla_fixtures_load_into_typed_cases() {
    let f = fixture::load(&fixtures_dir().join("merge_bf16_t20_h6_d96_inf.safetensors")).unwrap();
    let Case::Merge(m) = f.case else {
        panic!("expected a merge case")
    };
    assert_eq!((m.num_tokens, m.num_heads, m.head_size), (20, 6, 96));
    assert!(m
        .prefix_lse
        .iter()
        .chain(&m.suffix_lse)
        .any(|x| x.is_infinite()));
    let f = fixture::load(&fixtures_dir().join("mla_f16_h16_b16_s4.safetensors")).unwrap();
    let Case::Mla(m) = f.case else {
        panic!("expected an MLA case")
    };
    assert_eq!(
        (
            m.num_heads,
            m.kv_lora_rank,
            m.qk_rope_head_dim,
            m.num_kv_splits
        ),
        (16, 512, 64, 4)
    );
    assert_eq!(m.meta.seq_lens, vec![1, 17, 60]);
}
