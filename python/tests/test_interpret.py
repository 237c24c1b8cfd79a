"""vLLM's own Triton kernels on the CPU through Triton's interpreter (TRITON_INTERPRET=1).

The capture CLI runs in a subprocess (the interpreter is chosen when the
kernels are defined) on a vLLM source tree (tests/conftest.py finds or fetches
it), over small cases made by gen_cases. The outputs are checked against a
float64 reference with the case's tolerance, and the recorded launch against
what TRITON_ATTN's 2D/3D rule says for the batch. bf16 is left out: Triton's
interpreter computes bf16 dots wrongly on the CPU (GPU captures cover it).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_gen
from gen_cases import merge_case, mla_case, paged_case

from attnlab_capture.fixture import read_case

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

PKG_ROOT = Path(__file__).resolve().parents[1]

CASES = {
    # TRITON_ATTN, one decode sequence, 2 KV heads: threshold 64 -> split-KV 3D
    "ua_default_decode": dict(maker=paged_case, kw=dict(seed=1, query_lens=(1,), seq_lens=(37,), num_heads=4, num_kv_heads=2)),
    # forced 2D, mixed batch with window, sinks and soft-cap, f32
    "ua_2d_mix": dict(
        maker=paged_case,
        kw=dict(seed=2, dtype="float32", path="unified_attention_2d", query_lens=(3, 1), seq_lens=(19, 30),
                sliding_window=7, sinks=True, softcap=5.0),
    ),
    # forced 3D on decodes with a GQA ratio of 3
    "ua_3d_gqa3": dict(maker=paged_case, kw=dict(seed=3, path="unified_attention_3d", num_heads=6, num_kv_heads=2, query_lens=(1, 1), seq_lens=(40, 17))),
    # 32 KV heads: the threshold is 128 // 32 = 4 sequences; 5 decodes run 2D, 4 run 3D
    "ua_5_decodes_2d": dict(maker=paged_case, kw=dict(seed=4, num_heads=32, num_kv_heads=32, head_size=16, query_lens=(1,) * 5, seq_lens=(3, 5, 2, 4, 6))),
    "ua_4_decodes_3d": dict(maker=paged_case, kw=dict(seed=5, num_heads=32, num_kv_heads=32, head_size=16, query_lens=(1,) * 4, seq_lens=(3, 5, 2, 4))),
    # forced 3D on a 12-token prefill: vLLM's launcher runs 2D, so the capture records an error
    "ua_3d_impossible": dict(maker=paged_case, kw=dict(seed=6, path="unified_attention_3d", query_lens=(12,), seq_lens=(12,))),
    # ROCM_ATTN's Triton path: prefix_prefill for the extend, paged decode for the decode
    "rocm_mix": dict(
        maker=paged_case,
        kw=dict(seed=7, backend="ROCM_ATTN", path="chunked_prefill_paged_decode", head_size=64, query_lens=(4, 1),
                seq_lens=(21, 18), sliding_window=9),
    ),
    # fp8 (OCP e4m3fn) caches with per-tensor scales, on both paged paths
    "ua_fp8": dict(maker=paged_case, kw=dict(seed=10, kv_cache_dtype="fp8_e4m3", query_lens=(1, 2), seq_lens=(30, 9))),
    "rocm_fp8": dict(
        maker=paged_case,
        kw=dict(seed=11, kv_cache_dtype="fp8_e4m3", backend="ROCM_ATTN", path="chunked_prefill_paged_decode", query_lens=(3, 1), seq_lens=(30, 9)),
    ),
    "merge_inf": dict(maker=merge_case, kw=dict(seed=8, dtype="float32", inf_lse=True)),
    "mla": dict(maker=mla_case, kw=dict(seed=9, seq_lens=(5, 40))),
}


@pytest.fixture(scope="module")
def captured(tmp_path_factory, vllm_src):
    cases = tmp_path_factory.mktemp("cases")
    out = tmp_path_factory.mktemp("out")
    refs = {}
    for name, spec in CASES.items():
        meta, tensors, ref = spec["maker"](**spec["kw"])
        write_gen(cases, name, (meta, tensors))
        refs[name] = ref
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(PKG_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "attnlab_capture", str(cases), "--out", str(out), "--vllm-src", str(vllm_src), "--json"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    return out, refs, summary


def _output(out, name):
    case = read_case(out / f"{name}.safetensors")
    from attnlab_capture.tensors import to_torch

    return case, to_torch(case.tensors["output"], "cpu").double().numpy() if "output" in case.tensors else None


def _within_tolerance(case, got, ref):
    tol = case.meta["atol"] + case.meta["rtol"] * np.abs(ref)
    return np.abs(got - ref) <= tol


def test_summary_counts_every_case(captured):
    _, _, s = captured
    assert s["cases"] == len(CASES)
    assert s["captured"] == len(CASES) - 1
    assert s["capture_errors"] == 1
    assert s["environment"]["vllm_source"].startswith("source tree")


@pytest.mark.parametrize(
    "name",
    ["ua_default_decode", "ua_2d_mix", "ua_3d_gqa3", "ua_5_decodes_2d", "ua_4_decodes_3d", "rocm_mix", "ua_fp8", "rocm_fp8", "merge_inf", "mla"],
)
def test_vllm_kernel_output_matches_float64_within_the_case_tolerance(captured, name):
    out, refs, _ = captured
    case, got = _output(out, name)
    assert got is not None, case.meta.get("capture_error")
    ok = _within_tolerance(case, got, refs[name])
    assert ok.all(), f"{(~ok).sum()} elements outside tolerance, max diff {np.abs(got - refs[name]).max()}"


@pytest.mark.parametrize(
    "name,grid,segments",
    [("ua_default_decode", "3d", 16), ("ua_2d_mix", "2d", 1), ("ua_3d_gqa3", "3d", 16), ("ua_5_decodes_2d", "2d", 1), ("ua_4_decodes_3d", "3d", 16)],
)
def test_launch_records_the_grid_vllm_chose(captured, name, grid, segments):
    out, _, _ = captured
    case, _ = _output(out, name)
    launch = case.meta["launch"]
    assert launch["kernel"] == "unified_attention"
    assert (launch["grid"], launch["num_segments"]) == (grid, segments)
    assert launch["reduce_segments"] == (grid == "3d")
    assert case.meta["capture"]["adapter"] == "vllm.unified_attention"
    assert case.meta["producer"].startswith("vllm.v1.attention.ops.triton_unified_attention.unified_attention (vllm 0.34")


def test_threshold_follows_the_kv_head_count(captured):
    out, _, _ = captured
    case, _ = _output(out, "ua_5_decodes_2d")
    assert case.meta["launch"]["seq_threshold_3d"] == 4


def test_impossible_forced_3d_is_a_capture_error_naming_the_reason(captured):
    out, _, _ = captured
    case, got = _output(out, "ua_3d_impossible")
    assert got is None
    assert case.meta["capture_error"].startswith("CaptureFailure: path unified_attention_3d, but vLLM's launcher ran 2D (max_seqlen_q=12")


def test_rocm_path_records_prefill_and_decode_kernels(captured):
    out, _, _ = captured
    case, _ = _output(out, "rocm_mix")
    launch = case.meta["launch"]
    assert launch["kernel"] == "chunked_prefill_paged_decode"
    assert launch["prefill"] == "_fwd_kernel"
    assert launch["decode"] == "kernel_paged_attention_2d"


def test_merge_writes_output_lse(captured):
    out, _, _ = captured
    case = read_case(out / "merge_inf.safetensors")
    assert case.tensors["output_lse"].dtype == "F32"
    assert case.tensors["output_lse"].shape == case.tensors["prefix_lse"].shape
    pl = case.tensors["prefix_lse"].numpy_view().astype(np.float64)
    sl = case.tensors["suffix_lse"].numpy_view().astype(np.float64)
    pl = np.where(np.isposinf(pl), -np.inf, pl)
    sl = np.where(np.isposinf(sl), -np.inf, sl)
    want = np.logaddexp(pl, sl)
    got = case.tensors["output_lse"].numpy_view()
    assert np.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_mla_records_vllm_split_rule(captured):
    out, _, _ = captured
    case = read_case(out / "mla.safetensors")
    assert case.meta["launch"]["num_kv_splits"] == 1  # max seq 40 < 1024: one split
    assert case.meta["num_kv_splits"] == 1
    assert case.tensors["output_lse"].shape == (16, 2)


def test_parallel_shards_write_the_same_fixtures(captured, tmp_path, vllm_src):
    out, _, _ = captured
    cases = tmp_path / "cases"
    cases.mkdir()
    for name, spec in CASES.items():
        if name.startswith("ua_"):
            write_gen(cases, name, spec["maker"](**spec["kw"]))
    par = tmp_path / "par"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(PKG_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "attnlab_capture", str(cases), "--out", str(par), "--vllm-src", str(vllm_src), "--jobs", "2", "--json"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["jobs"] == 2
    assert (summary["captured"], summary["capture_errors"]) == (6, 1)
    for f in sorted(par.iterdir()):
        a, b = read_case(f), read_case(out / f.name)
        assert a.tensors.get("output") == b.tensors.get("output"), f.name
        assert a.meta["launch"] == b.meta["launch"]


def test_device_script_captures_and_bundles_in_interpreter_mode(tmp_path, vllm_src):
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("ua_default_decode", "merge_inf"):
        spec = CASES[name]
        write_gen(cases, name, spec["maker"](**spec["kw"]))
    out = tmp_path / "out"
    env = dict(os.environ, ATTNLAB_CAPTURE_CPU="1", PYTHON=sys.executable, ATTNLAB_CAPTURE_WORK=str(tmp_path / "work"))
    proc = subprocess.run(
        ["bash", str(PKG_ROOT / "scripts" / "capture_on_device.sh"), "--cases", str(cases), "--vllm-src", str(vllm_src),
         "--out", str(out), "--jobs", "2", "--max-seconds", "300"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "capture.log", "captures-000.xz", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["captured"] == 2
    from attnlab_capture.bundle import apply

    assert apply(cases, [out / "captures-000.xz"]) == {"applied": 2, "errors": []}
    assert read_case(cases / "merge_inf.safetensors").has_output()


def test_cache_writers_reproduce_the_case_caches(tmp_path, vllm_src):
    """--check-cache-writer: vLLM's writer, fed the new tokens, rebuilds the case's cache bytes."""
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("ua_default_decode", "ua_2d_mix", "rocm_mix", "ua_fp8"):
        spec = CASES[name]
        write_gen(cases, name, spec["maker"](**spec["kw"]))
    out = tmp_path / "out"
    # the writer asks torch.cuda for the capability when it picks its tile; the interpreter has no GPU
    driver = (
        "import sys, torch\n"
        "torch.cuda.get_device_capability = lambda *a, **k: (9, 0)\n"
        "from attnlab_capture.__main__ import main\n"
        f"sys.exit(main([{str(cases)!r}, '--out', {str(out)!r}, '--vllm-src', {str(vllm_src)!r}, '--check-cache-writer']))\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(PKG_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    writers = {f.stem: read_case(f).meta["launch"]["cache_writer"] for f in out.iterdir()}
    for name in ("ua_default_decode", "ua_2d_mix", "rocm_mix"):
        assert writers[name]["kernel"] == "triton_reshape_and_cache_flash", writers[name]
        assert writers[name]["mismatched_bytes"] == 0, writers[name]
    assert writers["rocm_mix"]["layout"] == "ROCM_ATTN 5D K / 4D V"
    assert writers["ua_2d_mix"]["slots"] == 4
    # fp8: the writer re-quantizes dequantized values; what differs is reported, not judged
    assert writers["ua_fp8"]["mismatched_bytes"] >= 0
