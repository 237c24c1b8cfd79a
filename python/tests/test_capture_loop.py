"""The capture loop with stand-in adapters: errors per case, skips, invalid input, time budget."""

import pytest
from conftest import write_gen
from gen_cases import merge_case, paged_case

from attnlab_capture.adapters.base import Adapter, CaptureFailure, Result
from attnlab_capture.capture import Options, run_capture
from attnlab_capture.fixture import FORMAT_V2, read_case

torch = pytest.importorskip("torch")


class EchoQuery(Adapter):
    """Returns the query as output; raises on the seeds it is told to."""

    name = "test.echo"
    op = "paged_attention"
    paths = ("unified_attention",)
    backends = ("TRITON_ATTN",)
    kernel = "tests.echo"

    def __init__(self, fail_seeds=(), crash_seeds=()):
        self.fail_seeds = set(fail_seeds)
        self.crash_seeds = set(crash_seeds)
        self.ran = []

    def availability(self, ctx):
        return None

    def run(self, case, ctx):
        seed = case.meta["seed"]
        self.ran.append(seed)
        if seed in self.fail_seeds:
            raise CaptureFailure("the kernel refused this case")
        if seed in self.crash_seeds:
            raise RuntimeError("illegal memory access\nsecond line")
        from attnlab_capture.tensors import to_torch

        q = to_torch(case.tensors["query"], ctx.device)
        return Result({"output": q.clone()}, {"kernel": "echo", "grid": "2d"}, {"note": "echoed"})


class Missing(Adapter):
    name = "test.missing"
    op = "merge_attn_states"
    paths = ("merge_attn_states",)
    backends = (None,)
    kernel = "tests.missing"

    def availability(self, ctx):
        return "cannot import some_module: No module named 'some_module'"

    def run(self, case, ctx):  # pragma: no cover - never called
        raise AssertionError("a skipped adapter ran")


@pytest.fixture
def cpu_interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _opts(tmp_path, **kw):
    return Options(out_dir=tmp_path / "out", device="cpu", progress_seconds=1e9, **kw)


def test_failure_of_one_case_is_recorded_and_the_rest_are_captured(tmp_path, cpu_interpret):
    cases = tmp_path / "cases"
    cases.mkdir()
    for seed in (1, 2, 3, 4):
        write_gen(cases, f"c{seed}", paged_case(seed=seed))
    adapter = EchoQuery(fail_seeds={2}, crash_seeds={3})
    s = run_capture(cases, _opts(tmp_path), adapters=[adapter], log=lambda m: None)
    assert sorted(adapter.ran) == [1, 2, 3, 4]
    assert (s["captured"], s["capture_errors"], s["invalid"], s["skipped"]) == (2, 2, 0, 0)
    out = tmp_path / "out"
    ok = read_case(out / "c1.safetensors")
    assert ok.meta["format"] == FORMAT_V2
    assert ok.tensors["output"].data == ok.tensors["query"].data
    assert ok.meta["launch"] == {"kernel": "echo", "grid": "2d"}
    assert ok.meta["capture"]["adapter"] == "test.echo"
    assert ok.meta["note"] == "echoed"
    assert "capture_error" not in ok.meta
    refused = read_case(out / "c2.safetensors")
    assert refused.meta["capture_error"] == "CaptureFailure: the kernel refused this case"
    assert "output" not in refused.tensors
    crashed = read_case(out / "c3.safetensors")
    assert crashed.meta["capture_error"] == "test.echo raised RuntimeError: illegal memory access"
    assert s["launch_grids"] == {"test.echo:2d": 2}
    assert {e["file"].rsplit("/", 1)[-1] for e in s["errors"]} == {"c2.safetensors", "c3.safetensors"}


def test_capture_in_place_replaces_an_earlier_error(tmp_path, cpu_interpret):
    cases = tmp_path / "cases"
    cases.mkdir()
    meta, tensors, _ = paged_case(seed=9)
    meta["capture_error"] = "old"
    write_gen(cases, "c", (meta, tensors))
    s = run_capture(cases, Options(device="cpu", progress_seconds=1e9), adapters=[EchoQuery()], log=lambda m: None)
    assert s["captured"] == 1
    back = read_case(cases / "c.safetensors")
    assert "capture_error" not in back.meta and back.has_output()


def test_unavailable_adapter_skips_its_cases_with_the_reason_and_leaves_them(tmp_path, cpu_interpret):
    cases = tmp_path / "cases"
    cases.mkdir()
    write_gen(cases, "m", merge_case(seed=1))
    write_gen(cases, "p", paged_case(seed=1))
    s = run_capture(cases, _opts(tmp_path), adapters=[EchoQuery(), Missing()], log=lambda m: None)
    assert s["captured"] == 1 and s["skipped"] == 1
    assert s["skip_reasons"] == {"test.missing: cannot import some_module: No module named 'some_module'": 1}
    assert not (tmp_path / "out" / "m.safetensors").exists()


def test_invalid_case_is_reported_with_file_and_tensor_and_recorded(tmp_path, cpu_interpret):
    cases = tmp_path / "cases"
    cases.mkdir()
    meta, tensors, _ = paged_case(seed=5)
    del tensors["block_table"]
    write_gen(cases, "broken", (meta, tensors))
    write_gen(cases, "fine", paged_case(seed=6))
    (cases / "garbage.safetensors").write_bytes(b"\x00")
    logs = []
    s = run_capture(cases, _opts(tmp_path), adapters=[EchoQuery()], log=logs.append)
    assert (s["captured"], s["invalid"]) == (1, 2)
    broken = read_case(tmp_path / "out" / "broken.safetensors")
    assert broken.meta["capture_error"].startswith("invalid case: tensor block_table is missing")
    assert any("broken.safetensors: tensor block_table is missing" in m for m in logs)
    assert any("garbage.safetensors" in e["file"] for e in s["errors"])


def test_backend_filter_keeps_only_the_named_backends(tmp_path, cpu_interpret):
    cases = tmp_path / "cases"
    cases.mkdir()
    write_gen(cases, "t", paged_case(seed=1, backend="TRITON_ATTN"))
    write_gen(cases, "r", paged_case(seed=2, backend="ROCM_ATTN", path="chunked_prefill_paged_decode"))
    s = run_capture(cases, _opts(tmp_path, backends=["TRITON_ATTN"]), adapters=[EchoQuery()], log=lambda m: None)
    assert (s["captured"], s["filtered_out"]) == (1, 1)


def test_time_budget_stops_starting_cases(tmp_path, cpu_interpret):
    cases = tmp_path / "cases"
    cases.mkdir()
    for seed in range(3):
        write_gen(cases, f"c{seed}", paged_case(seed=seed))
    adapter = EchoQuery()
    s = run_capture(cases, _opts(tmp_path, max_seconds=0.0), adapters=[adapter], log=lambda m: None)
    assert adapter.ran == []
    assert s["not_run_time_budget"] == 3


def test_without_gpu_or_interpreter_every_case_is_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cases = tmp_path / "cases"
    cases.mkdir()
    write_gen(cases, "c", paged_case(seed=1))
    s = run_capture(cases, _opts(tmp_path), adapters=[EchoQuery()], log=lambda m: None)
    assert s["skipped"] == 1
    assert list(s["skip_reasons"]) == ["no GPU: Triton kernels need one (or TRITON_INTERPRET=1 to run them on the CPU)"]


def test_cases_sharing_kernel_constants_run_back_to_back(tmp_path, cpu_interpret):
    cases = tmp_path / "cases"
    cases.mkdir()
    # names interleave head sizes; the run order groups them
    for i, d in enumerate([64, 128, 64, 128]):
        write_gen(cases, f"c{i}", paged_case(seed=i, head_size=d))
    adapter = EchoQuery()
    run_capture(cases, _opts(tmp_path), adapters=[adapter], log=lambda m: None)
    assert adapter.ran == [0, 2, 1, 3]


def test_a_broken_gpu_context_stops_the_process_and_lists_the_rest(tmp_path, monkeypatch):
    import attnlab_capture.capture as capture

    monkeypatch.setattr(capture, "_device_healthy", lambda device: False)
    cases = tmp_path / "cases"
    cases.mkdir()
    for seed in range(3):
        write_gen(cases, f"c{seed}", paged_case(seed=seed))
    adapter = EchoQuery(crash_seeds={0, 1, 2})
    s = run_capture(cases, Options(out_dir=tmp_path / "out", device="cuda", progress_seconds=1e9), adapters=[adapter], log=lambda m: None)
    assert adapter.ran == [0]
    assert s["capture_errors"] == 1
    assert [p.rsplit("/", 1)[-1] for p in s["unfinished"]] == ["c1.safetensors", "c2.safetensors"]
    assert read_case(tmp_path / "out" / "c0.safetensors").meta["capture_error"].startswith("test.echo raised RuntimeError")
