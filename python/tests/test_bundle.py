import numpy as np
from conftest import write_gen
from gen_cases import merge_case, paged_case, raw

from attnlab_capture.bundle import apply, inputs_digest, pack
from attnlab_capture.fixture import FORMAT_V2, read_case


def _captured_copy(cases, fixtures, name, made, seed):
    """A case, and a 'captured' fixture of it with an output and capture metadata."""
    meta, tensors = made[0], made[1]
    write_gen(cases, name, (meta, tensors))
    fx = dict(tensors)
    q = tensors["query"] if "query" in tensors else tensors["prefix_output"]
    fx["output"] = q
    if meta["op"] == "merge_attn_states":
        fx["output_lse"] = raw(np.full(tensors["prefix_lse"].shape, float(seed), dtype=np.float32), "F32")
    m = dict(meta, format=FORMAT_V2, launch={"grid": "3d", "num_segments": 16}, capture={"adapter": "a", "gpu": "g"})
    m["producer"] = "kernel on g"
    return write_gen(fixtures, name, (m, fx))


def test_pack_then_apply_reproduces_the_captured_fixtures(tmp_path):
    cases, fixtures, bundles = tmp_path / "cases", tmp_path / "fx", tmp_path / "b"
    cases.mkdir()
    fixtures.mkdir()
    for i in range(3):
        _captured_copy(cases, fixtures, f"p{i}", paged_case(seed=i), i)
    _captured_copy(cases, fixtures, "m", merge_case(seed=7), 7)
    r = pack(fixtures, bundles)
    assert r["entries"] == 4 and r["left_out"] == [] and len(r["chunks"]) == 1
    out = apply(cases, r["chunks"])
    assert out == {"applied": 4, "errors": []}
    for f in fixtures.iterdir():
        assert (cases / f.name).read_bytes() == f.read_bytes()


def test_apply_refuses_a_case_whose_inputs_changed(tmp_path):
    cases, fixtures = tmp_path / "cases", tmp_path / "fx"
    cases.mkdir()
    fixtures.mkdir()
    _captured_copy(cases, fixtures, "p", paged_case(seed=1), 1)
    r = pack(fixtures, tmp_path / "b")
    write_gen(cases, "p", paged_case(seed=2))  # regenerated with another seed
    before = (cases / "p.safetensors").read_bytes()
    out = apply(cases, r["chunks"])
    assert out["applied"] == 0
    assert out["errors"][0].endswith("its inputs differ from the captured case's (regenerate the cases with the same `attnlab cases` command and seed as on the GPU machine)")
    assert (cases / "p.safetensors").read_bytes() == before


def test_chunks_are_bounded_and_what_does_not_fit_is_listed(tmp_path):
    cases, fixtures = tmp_path / "cases", tmp_path / "fx"
    cases.mkdir()
    fixtures.mkdir()
    for i in range(5):
        _captured_copy(cases, fixtures, f"p{i}", paged_case(seed=i, query_lens=(8,), seq_lens=(8,)), i)
    one = len(read_case(fixtures / "p0.safetensors").tensors["output"].data)
    r = pack(fixtures, tmp_path / "b", chunk_bytes=2 * (one + 2048), max_chunks=2)
    assert len(r["chunks"]) == 2
    assert r["entries"] == 4
    assert r["left_out"] == ["p4.safetensors"]
    from pathlib import Path

    assert all(Path(c).stat().st_size <= 2 * (one + 2048) for c in r["chunks"])


def test_inputs_digest_ignores_outputs_and_sees_inputs(tmp_path):
    meta, tensors, _ = paged_case(seed=3)
    a = read_case(write_gen(tmp_path, "a", (meta, tensors)))
    with_out = dict(tensors, output=tensors["query"])
    b = read_case(write_gen(tmp_path, "b", (meta, with_out)))
    assert inputs_digest(a) == inputs_digest(b)
    other = dict(tensors, seq_lens=raw(np.array([19, 9], dtype=np.int32), "I32"))
    c = read_case(write_gen(tmp_path, "c", (meta, other)))
    assert inputs_digest(c) != inputs_digest(a)
