//! `--flavour` at the command line (docs/src/matrix-cores.md, "Backends in
//! the tensor-core flavour"): `trace` lists the tensor-core family each
//! matrix-product launch runs, `run` runs the backends the flavour admits
//! and skips the others with the refusal, and a launch or a family with no
//! tensor-core kernel is an error naming it (exit 1), never the fma kernels.

mod common;

use common::attnlab;

#[test]
fn trace_in_the_tensor_core_flavour_names_the_family_of_each_launch() {
    let o = attnlab(&[
        "trace",
        "--backend",
        "rocm_aiter_fa",
        "--prompt-len",
        "40",
        "--output-len",
        "2",
        "--flavour",
        "tc",
        "--target",
        "sm_90",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    for want in [
        "tensor-core flavour (sm_90): flash_attn_varlen_func -> flash_varlen_tc (block_n 64)",
        "tensor-core flavour (sm_90): paged_attention_ll4mi -> paged_decode_tc",
    ] {
        assert!(o.stdout.contains(want), "{want:?} not in {}", o.stdout);
    }
    // The fma flavour lists no family.
    let o = attnlab(&["trace", "--backend", "ROCM_AITER_FA", "--prompt-len", "40"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(!o.stdout.contains("tensor-core"), "{}", o.stdout);
}

#[test]
fn a_launch_without_a_tensor_core_kernel_is_an_error_naming_it() {
    // ROCM_AITER_MLA's decode is AITER's asm kernel: no tensor-core kernel.
    let o = attnlab(&[
        "trace",
        "--backend",
        "ROCM_AITER_MLA",
        "--model",
        "deepseek-r1",
        "--prompt-len",
        "40",
        "--output-len",
        "2",
        "--flavour",
        "auto",
    ]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr
            .contains("mla_decode_fwd (AITER asm) in the tensor-core flavour (gfx942)")
            && o.stderr.contains("asm kernel")
            && o.stderr.contains("flavours: fma"),
        "{}",
        o.stderr
    );
    // TRITON_MLA's decode is vLLM's Triton kernel: mla_decode_tc; its
    // prefill (192 / 128 heads) flash_varlen_tc; the projections the same GEMM.
    let o = attnlab(&[
        "trace",
        "--backend",
        "TRITON_MLA",
        "--model",
        "deepseek-r1",
        "--prompt-len",
        "40",
        "--output-len",
        "2",
        "--flavour",
        "auto",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    for want in [
        "decode_attention_fwd (MLA) -> mla_decode_tc",
        "flash_attn_varlen_func -> flash_varlen_tc (block_n 64)",
        "the MLA projections -> mla_proj (the same GEMM in both flavours)",
    ] {
        assert!(o.stdout.contains(want), "{want:?} not in {}", o.stdout);
    }
    // FLEX_ATTENTION's flex_attention has one: flex_attention_tc.
    let o = attnlab(&[
        "trace",
        "--backend",
        "FLEX_ATTENTION",
        "--prompt-len",
        "40",
        "--output-len",
        "2",
        "--flavour",
        "auto",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout
            .contains("tensor-core flavour (gfx942): flex_attention -> flex_attention_tc"),
        "{}",
        o.stdout
    );
    // ROCM_ATTN's prefix prefill has one (prefix_prefill_tc); its decode
    // launch beside a prefill-only step computes nothing, and a decode step
    // runs paged_decode_2d_tc on the x-packed cache.
    let rocm = |output_len: &str| {
        attnlab(&[
            "trace",
            "--backend",
            "ROCM_ATTN",
            "--prompt-len",
            "40",
            "--output-len",
            output_len,
            "--flavour",
            "auto",
        ])
    };
    let o = rocm("1");
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout
            .contains("tensor-core flavour (gfx942): context_attention_fwd -> prefix_prefill_tc"),
        "{}",
        o.stdout
    );
    let o = rocm("2");
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("-> paged_decode_2d_tc"), "{}", o.stdout);
    // TRITON_ATTN's unified_attention has one: unified_attention_tc.
    let o = attnlab(&[
        "trace",
        "--backend",
        "TRITON_ATTN",
        "--prompt-len",
        "40",
        "--flavour",
        "auto",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout
            .contains("tensor-core flavour (gfx942): unified_attention -> unified_attention_tc"),
        "{}",
        o.stdout
    );
    // `run` compares the MLA backends in the fma kernels only.
    let o = attnlab(&["run", "--model", "deepseek-r1", "--flavour", "tc"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.contains("MLA workload runner") && o.stderr.contains("TRITON_MLA --flavour tc"),
        "{}",
        o.stderr
    );
    // A kernel family is its own flavour.
    let o = attnlab(&[
        "diff",
        "--device",
        "host",
        "--backend",
        "flash_varlen",
        "--flavour",
        "tc",
    ]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr
            .contains("invalid --flavour tc for --backend flash_varlen"),
        "{}",
        o.stderr
    );
    // An unknown target names the known ones.
    let o = attnlab(&[
        "trace",
        "--backend",
        "ROCM_AITER_FA",
        "--prompt-len",
        "40",
        "--flavour",
        "tc",
        "--target",
        "gfx1100",
    ]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.contains("'gfx1100'") && o.stderr.contains("gfx942"),
        "{}",
        o.stderr
    );
}

#[test]
fn run_skips_the_backends_the_flavour_refuses_and_runs_the_others() {
    let o = attnlab(&[
        "run",
        "--backend",
        "all",
        "--flavour",
        "tc",
        "--target",
        "gfx942",
        "--requests",
        "2",
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON");
    let rows = v["backends"].as_array().expect("rows");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["backend"] == name)
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    // Every MHA backend runs llama-3.1-8b's mixed steps, ROCM_ATTN's decode
    // rows on paged_decode_2d_tc over its x-packed cache included.
    for b in ["ROCM_AITER_FA", "ROCM_ATTN"] {
        let r = row(b);
        assert_eq!(r["status"], "pass", "{r}");
        assert_eq!(r["flavour"], "tensor-core (gfx942)", "{r}");
        assert!(r["steps"].as_u64().unwrap() > 0, "{r}");
    }
    // qwen3-next's head size 256: ROCM_AITER_FA's NHD decode family
    // (paged_decode_tc: 64 or 128) refuses it, ROCM_ATTN's takes it.
    let o = attnlab(&[
        "run",
        "--model",
        "qwen3-next",
        "--backend",
        "all",
        "--flavour",
        "tc",
        "--target",
        "sm_90",
        "--requests",
        "2",
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON");
    let rows = v["backends"].as_array().expect("rows");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["backend"] == name)
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    let fa = row("ROCM_AITER_FA");
    assert_eq!(fa["status"], "skipped", "{fa}");
    let why = fa["reason"].as_str().unwrap();
    assert!(
        why.contains("paged_decode_tc") && why.contains("256"),
        "{fa}"
    );
    assert_eq!(row("ROCM_ATTN")["status"], "pass");
}
