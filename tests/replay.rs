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

    /// Removes a tensor: its bytes leave the data section, later offsets move down.
    fn remove(&mut self, name: &str) {
        let off = &self.header[name]["data_offsets"];
        let (a, b) = (off[0].as_u64().unwrap(), off[1].as_u64().unwrap());
        self.data.drain(a as usize..b as usize);
        self.header.remove(name);
        for (k, v) in self.header.iter_mut() {
            if k == "__metadata__" {
                continue;
            }
            let o = v["data_offsets"].as_array_mut().unwrap();
            for x in o.iter_mut() {
                let n = x.as_u64().unwrap();
                if n >= b {
                    *x = (n - (b - a)).into();
                }
            }
        }
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
    let cases: [(&str, Value, &str); 6] = [
        (
            "format",
            "attn-fixture/3".into(),
            "attn-fixture/1, attn-fixture/2",
        ),
        ("op", "flash_decode".into(), "merge_attn_states"),
        ("dtype", "float64".into(), "bfloat16"),
        ("num_kv_heads", 3.into(), "divide"),
        ("scale", (-1.0).into(), "> 0"),
        // found by sim/tests/fixture_fuzz.rs: the kernels' p < t + window overflowed
        ("sliding_window", i64::MAX.into(), "max_seq_len"),
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
    assert_eq!(m.meta.seq_lens(), vec![1, 17, 60]);
}

// ---- attn-fixture/2: cases written by `attnlab cases`, and their bad inputs ----

use attnlab_sim::cases::{draw_case, rng_for, Target};

/// A written /2 case of `target` for which `want` holds (the first drawn).
fn v2_case(target: Target, want: impl Fn(&fixture::Fixture) -> bool) -> Vec<u8> {
    let mut rng = rng_for(target, 3);
    let f = (0..5000)
        .filter_map(|_| draw_case(target, &mut rng, None, 3))
        .find(|f| want(f))
        .expect("some drawn case has the property");
    fixture::write(&f).unwrap()
}

fn is_fp8(f: &fixture::Fixture) -> bool {
    matches!(&f.case, Case::Paged(p) if p.cfg.kv_dtype().is_fp8())
}

fn has_alibi(f: &fixture::Fixture) -> bool {
    matches!(&f.case, Case::Paged(p) if p.cfg.alibi_slopes().is_some())
}

#[test]
fn v2_fp8_cases_load_as_u8_caches_with_their_scales() {
    let f = Edit::of(&v2_case(Target::TritonAttn, is_fp8))
        .parse()
        .unwrap();
    let Case::Paged(p) = &f.case else { panic!() };
    assert_eq!(p.cfg.kv_dtype().name(), "float8_e4m3fn");
    assert!(p.cfg.k_scale() > 0.0 && p.cfg.v_scale() > 0.0);
    assert_eq!(f.header.path.as_deref(), Some("unified_attention"));
    assert_eq!(f.header.backend.as_deref(), Some("TRITON_ATTN"));
}

#[test]
fn v2_missing_fp8_scale_names_the_tensor() {
    let mut e = Edit::of(&v2_case(Target::TritonAttn, is_fp8));
    e.remove("k_scale");
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "k_scale", "{err}");
    assert!(err.problem.contains("missing"), "{err}");
}

#[test]
fn v2_nonpositive_fp8_scale_names_the_allowed_range() {
    let mut e = Edit::of(&v2_case(Target::TritonAttn, is_fp8));
    e.tensor("v_scale")
        .copy_from_slice(&(-1.0f32).to_le_bytes());
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "v_scale", "{err}");
    assert!(err.problem.contains("> 0"), "{err}");
}

#[test]
fn v2_fp8_nan_code_in_a_cache_is_rejected_with_its_index() {
    let mut e = Edit::of(&v2_case(Target::TritonAttn, is_fp8));
    e.tensor("key_cache")[3] = 0x7f; // e4m3fn NaN
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "key_cache", "{err}");
    assert!(
        err.problem.contains("NaN") && err.problem.contains("flat index 3"),
        "{err}"
    );
}

#[test]
fn v2_u8_cache_under_kv_cache_dtype_auto_is_a_dtype_error() {
    let mut e = Edit::of(&v2_case(Target::TritonAttn, is_fp8));
    e.case(|c| {
        c.insert("kv_cache_dtype".into(), "auto".into());
    });
    let err = err_of(&mut e);
    assert!(
        err.tensor == "key_cache" || err.tensor == "value_cache",
        "{err}"
    );
    assert!(
        err.problem.contains("U8") && err.problem.contains("must be"),
        "{err}"
    );
}

#[test]
fn v2_alibi_slopes_of_the_wrong_length_name_the_shape() {
    let mut e = Edit::of(&v2_case(Target::TritonAttn, has_alibi));
    let shape = e.info("alibi_slopes")["shape"].clone();
    let n = shape[0].as_u64().unwrap();
    e.info("alibi_slopes")["shape"] = serde_json::json!([1, n]);
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "alibi_slopes", "{err}");
    assert!(err.problem.contains(&format!("must be [{n}]")), "{err}");
}

#[test]
fn v2_bad_metadata_values_name_the_key_and_the_allowed_values() {
    let cases: [(&str, Value, &str, &str); 8] = [
        (
            "kv_cache_dtype",
            "fp8_e5m2".into(),
            "kv_cache_dtype",
            "fp8_e4m3fnuz",
        ),
        ("backend", "FLASH_ATTN".into(), "backend", "TRITON_ATTN"),
        (
            "path",
            "paged_attention_v2".into(),
            "path",
            "chunked_prefill_paged_decode",
        ),
        (
            "launch",
            serde_json::json!({"grid": "4d"}),
            "launch.grid",
            "\"3d\"",
        ),
        (
            "launch",
            serde_json::json!({"num_segments": 0}),
            "launch.num_segments",
            "[1, 1024]",
        ),
        ("launch", "3d".into(), "launch", "object"),
        (
            "tags",
            serde_json::json!(["edge:window_1", 7]),
            "tags",
            "strings",
        ),
        ("capture_error", 3.into(), "capture_error", "string"),
    ];
    let bytes = v2_case(Target::TritonAttn, |_| true);
    for (key, value, named, allowed) in cases {
        let mut e = Edit::of(&bytes);
        e.case(|c| {
            c.insert(key.into(), value.clone());
        });
        let err = err_of(&mut e);
        assert_eq!(err.tensor, format!("metadata.{named}"), "{err}");
        assert!(err.problem.contains(allowed), "{key}: {err}");
    }
}

#[test]
fn v2_out_of_range_block_id_names_the_entry_and_the_range() {
    let mut e = Edit::of(&v2_case(Target::TritonAttn, |_| true));
    let nb = e.info("key_cache")["shape"][0].as_u64().unwrap() as i32;
    e.tensor("block_table")[..4].copy_from_slice(&(nb + 5).to_le_bytes());
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "block_table", "{err}");
    assert!(err.problem.contains(&format!("[0, {nb})")), "{err}");
}

#[test]
fn v2_seq_lens_beyond_the_table_name_the_length_and_the_limit() {
    let mut e = Edit::of(&v2_case(Target::TritonMla, |_| true));
    e.tensor("seq_lens")[..4].copy_from_slice(&100_000i32.to_le_bytes());
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "seq_lens", "{err}");
    assert!(
        err.problem.contains("100000") && err.problem.contains("max"),
        "{err}"
    );
}

#[test]
fn v2_float_lengths_with_nan_are_a_dtype_error_naming_i32() {
    let mut e = Edit::of(&v2_case(Target::TritonAttn, |_| true));
    e.info("seq_lens")["dtype"] = "F32".into();
    let n = e.tensor("seq_lens").len() / 4;
    for i in 0..n {
        e.tensor("seq_lens")[4 * i..4 * i + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "seq_lens", "{err}");
    assert!(err.problem.contains("must be I32"), "{err}");
}

#[test]
fn v1_files_still_need_their_output_and_v2_cases_do_not() {
    let mut e = Edit::of(&read(PAGED));
    e.remove("output");
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "output", "{err}");
    e.case(|c| {
        c.insert("format".into(), "attn-fixture/2".into());
    });
    let f = e.parse().unwrap();
    assert!(f.case.output().is_none());
    let rows = replay_fixture(&f, None);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, Status::NoOutput);
}

#[test]
fn a_v2_rewrite_of_a_shipped_fixture_replays_identically() {
    for name in [PAGED, "merge_bf16_t20_h6_d96_inf", "mla_f16_h16_b16_s4"] {
        let f = fixture::parse(name, &read(name)).unwrap();
        let g = fixture::parse(name, &fixture::write(&f).unwrap()).unwrap();
        assert_eq!((&g.case, g.header.version), (&f.case, 2), "{name}");
        assert_eq!(replay_fixture(&f, None), replay_fixture(&g, None), "{name}");
    }
}

#[test]
fn a_recorded_launch_is_followed_and_reported() {
    let mut e = Edit::of(&read("ua_dec3d_f16_h64_g8x1_b16_single"));
    e.case(|c| {
        c.insert("format".into(), "attn-fixture/2".into());
        c.insert("path".into(), "unified_attention".into());
        c.insert(
            "launch".into(),
            serde_json::json!({"kernel": "unified_attention", "grid": "2d"}),
        );
    });
    let rows = replay_fixture(&e.parse().unwrap(), Some("TRITON_ATTN"));
    let r = rows.iter().find(|r| r.backend == "TRITON_ATTN").unwrap();
    assert_eq!(
        r.launch.as_deref(),
        Some("2d (recorded), profile seed"),
        "{r:?}"
    );
    assert_eq!(r.status, Status::Pass, "{r:?}");
    // Without a record, vLLM's own rule runs (3D for this single decode).
    let f = fixture::load(&fixtures_dir().join("ua_dec3d_f16_h64_g8x1_b16_single.safetensors"))
        .unwrap();
    let rows = replay_fixture(&f, Some("TRITON_ATTN"));
    assert_eq!(
        rows.iter()
            .find(|r| r.backend == "TRITON_ATTN")
            .unwrap()
            .launch,
        None
    );
}

#[test]
fn rocm_attn_dropping_softcap_is_a_divergence_not_a_skip() {
    let f = fixture::load(&fixtures_dir().join("ua_pre_bf16_h80_g8x8_b16_softcap.safetensors"));
    let rows = replay_fixture(&f.unwrap(), None);
    let r = rows.iter().find(|r| r.backend == "ROCM_ATTN").unwrap();
    assert_eq!(r.status, Status::Divergence, "{r:?}");
    assert!(
        r.reason.as_deref().unwrap().contains("logits_soft_cap"),
        "{r:?}"
    );
}

#[test]
fn a_recorded_3d_launch_uses_its_segment_count() {
    let mut e = Edit::of(&read("ua_dec2d_bf16_h64_g8x1_b64_sinks"));
    e.case(|c| {
        c.insert("format".into(), "attn-fixture/2".into());
        c.insert(
            "launch".into(),
            serde_json::json!({"grid": "3d", "num_segments": 4}),
        );
    });
    let rows = replay_fixture(&e.parse().unwrap(), Some("TRITON_ATTN"));
    let r = rows.iter().find(|r| r.backend == "TRITON_ATTN").unwrap();
    assert_eq!(
        r.launch.as_deref(),
        Some("3d, 4 segments (recorded), profile seed"),
        "{r:?}"
    );
    assert_eq!(r.status, Status::Pass, "{r:?}");
}

#[test]
fn an_nvidia_rocm_attn_capture_replays_its_decode_rows_through_the_triton_kernel() {
    let name = "rocm_mix_f16_h128_g8x2_b16"; // decode rows ran kernel_paged_attention_2d on an H200
    let f = fixture::load(&fixtures_dir().join(format!("{name}.safetensors"))).unwrap();
    let own = replay_fixture(&f, Some("ROCM_ATTN"));
    let mut e = Edit::of(&read(name));
    e.case(|c| {
        c.insert("format".into(), "attn-fixture/2".into());
        c.insert("path".into(), "chunked_prefill_paged_decode".into());
        c.insert(
            "capture".into(),
            serde_json::json!({"gpu": "NVIDIA H200", "arch": "sm_90"}),
        );
    });
    let rows = replay_fixture(&e.parse().unwrap(), Some("ROCM_ATTN"));
    let (a, b) = (
        own.iter().find(|r| r.backend == "ROCM_ATTN").unwrap(),
        rows.iter().find(|r| r.backend == "ROCM_ATTN").unwrap(),
    );
    assert_eq!(a.launch, None);
    assert_eq!(
        b.launch.as_deref(),
        Some("decode kernel_paged_attention_2d (NVIDIA capture)")
    );
    assert_eq!((a.status, b.status), (Status::Pass, Status::Pass));
    let exact = |r: &attnlab_sim::replay::ReplayResult| r.ulp.as_ref().unwrap().bit_exact;
    println!("bit-exact: own rule {} vs recorded {}", exact(a), exact(b));
    assert!(exact(b) >= exact(a), "{} < {}", exact(b), exact(a));
    // A recorded decode kernel that is not one of the two is a load error naming them.
    e.case(|c| {
        c.insert("launch".into(), serde_json::json!({"decode": "v2"}));
    });
    let err = err_of(&mut e);
    assert_eq!(err.tensor, "metadata.launch.decode", "{err}");
    assert!(err.problem.contains("paged_attention_ll4mi"), "{err}");
}

#[test]
fn a_merge_fixtures_output_lse_is_compared_and_measured() {
    let name = "merge_f16_t16_h4_d64_inf";
    let rows = replay_file(&fixtures_dir().join(format!("{name}.safetensors")), None);
    let kernel = rows
        .iter()
        .find(|r| r.backend == "merge_attn_states")
        .unwrap();
    assert_eq!(kernel.status, Status::Pass, "{kernel:?}");
    let lse = kernel.lse_ulp.as_ref().expect("output_lse measured");
    assert_eq!(lse.elements, 16 * 4);
    // A finite output_lse entry moved far away fails the row, naming output_lse.
    let mut e = Edit::of(&read(name));
    let bytes = e.tensor("output_lse");
    let i = (0..bytes.len() / 4)
        .find(|&i| f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()).is_finite())
        .unwrap();
    bytes[4 * i..4 * i + 4].copy_from_slice(&1000.0f32.to_le_bytes());
    let rows = replay_fixture(&e.parse().unwrap(), None);
    let kernel = rows
        .iter()
        .find(|r| r.backend == "merge_attn_states")
        .unwrap();
    assert_eq!(kernel.status, Status::Fail);
    assert!(
        kernel.reason.as_deref().unwrap().starts_with("output_lse"),
        "{kernel:?}"
    );
}

#[test]
fn json_rows_carry_the_fidelity_keys() {
    let results = replay_file(
        &fixtures_dir().join("ua_dec2d_bf16_h64_g8x1_b64_sinks.safetensors"),
        Some("TRITON_ATTN"),
    );
    let v = serde_json::to_value(&results).unwrap();
    for row in v.as_array().unwrap() {
        for k in [
            "dtype",
            "ulp",
            "reference_ulp",
            "fidelity",
            "fidelity_exact",
            "lse_ulp",
            "launch",
        ] {
            assert!(row.get(k).is_some(), "missing {k} in {row}");
        }
        let u = &row["ulp"];
        for k in [
            "elements",
            "bit_exact",
            "histogram",
            "capped_sum",
            "max_ulp",
            "max_at",
        ] {
            assert!(u.get(k).is_some(), "missing ulp.{k} in {row}");
        }
        assert_eq!(u["histogram"].as_array().unwrap().len(), 6);
        assert_eq!(
            u["max_at"].as_array().unwrap().len(),
            3,
            "[token, head, dim]"
        );
    }
}

#[test]
fn merge_attn_states_is_a_backend_filter_naming_the_merge_rows() {
    let path = fixtures_dir().join("merge_f32_t7_h2_d128_inf.safetensors");
    let rows = replay_paths(&[path], Some("merge_attn_states")).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.backend.as_str()).collect();
    assert_eq!(names, ["reference(f64)", "merge_attn_states"], "{rows:#?}");
    assert!(rows.iter().all(|r| r.status == Status::Pass), "{rows:#?}");
}
