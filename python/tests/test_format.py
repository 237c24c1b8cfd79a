import json
import struct

import numpy as np
import pytest
from conftest import REPO_FIXTURES, write_gen
from gen_cases import merge_case, mla_case, paged_case, raw

from attnlab_capture.fixture import FORMAT_V1, FORMAT_V2, FixtureError, encode_case, list_case_files, read_case, write_case
from attnlab_capture.validate import validate_case


def test_case_without_output_round_trips_metadata_and_tensors(tmp_path):
    meta, tensors, _ = paged_case(seed=3)
    path = write_gen(tmp_path, "c", (meta, tensors))
    back = read_case(path)
    assert back.meta == meta
    assert set(back.tensors) == set(tensors)
    for name, t in tensors.items():
        assert back.tensors[name].dtype == t.dtype
        assert back.tensors[name].shape == t.shape
        assert back.tensors[name].data == t.data
    assert not back.has_output()
    validate_case(back)


def test_fixture_with_output_round_trips_and_validates(tmp_path):
    meta, tensors, ref = merge_case(seed=1, dtype="bfloat16")
    tensors["output"] = tensors["prefix_output"]
    tensors["output_lse"] = tensors["prefix_lse"]
    meta["capture"] = {"adapter": "x", "gpu": "g"}
    path = write_gen(tmp_path, "m", (meta, tensors))
    back = read_case(path)
    assert back.has_output()
    assert back.tensors["output"].data == tensors["prefix_output"].data
    assert back.meta["capture"] == {"adapter": "x", "gpu": "g"}
    validate_case(back)


def test_format_1_files_are_read(tmp_path):
    meta, tensors, _ = mla_case(seed=2)
    meta["format"] = FORMAT_V1
    for key in ("backend", "path", "launch", "tags"):
        meta.pop(key)
    path = write_gen(tmp_path, "v1", (meta, tensors))
    back = read_case(path)
    assert back.format == FORMAT_V1
    validate_case(back)


@pytest.mark.skipif(not list(REPO_FIXTURES.glob("*.safetensors")), reason="the repository's fixtures/ is absent")
def test_repository_fixtures_read_and_validate():
    files = list_case_files(REPO_FIXTURES)
    assert len(files) >= 20
    for f in files:
        case = read_case(f)
        validate_case(case)
        # a capture either wrote the kernel's output or recorded why it could not
        assert case.has_output() or case.meta.get("capture_error"), f


def test_files_written_here_are_read_by_safetensors(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    meta, tensors, _ = paged_case(seed=4, dtype="float32")
    path = write_gen(tmp_path, "c", (meta, tensors))
    loaded = safetensors_numpy.load_file(str(path))
    assert np.array_equal(loaded["block_table"], tensors["block_table"].numpy_view())
    assert np.array_equal(loaded["query"], tensors["query"].numpy_view())
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert json.loads(f.metadata()["case"]) == meta


def test_files_written_by_safetensors_are_read_here(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    meta, tensors, _ = merge_case(seed=5, dtype="float32")
    arrays = {k: np.array(v.numpy_view()) for k, v in tensors.items()}
    path = tmp_path / "s.safetensors"
    safetensors_numpy.save_file(arrays, str(path), metadata={"case": json.dumps(meta)})
    back = read_case(path)
    assert back.meta == meta
    for k, a in arrays.items():
        assert np.array_equal(back.tensors[k].numpy_view(), a)


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    meta, tensors, _ = merge_case(seed=6)
    path = tmp_path / "a.safetensors"
    write_case(path, meta, tensors)
    write_case(path, meta, tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_encode_refuses_a_tensor_whose_bytes_do_not_match_its_shape():
    meta, tensors, _ = merge_case(seed=7)
    bad = dict(tensors)
    bad["prefix_lse"] = raw(np.zeros(3, dtype=np.float32), "F32")
    bad["prefix_lse"].shape = (5,)
    with pytest.raises(ValueError, match="prefix_lse"):
        encode_case(meta, bad)


def _header_file(tmp_path, header: dict, body=b""):
    hb = json.dumps(header).encode()
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", len(hb)) + hb + body)
    return p


def test_truncated_file_names_the_file(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x01\x02")
    with pytest.raises(FixtureError, match="short.safetensors.*8-byte header length"):
        read_case(p)


def test_header_length_past_the_end_is_refused(tmp_path):
    p = tmp_path / "long.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(FixtureError, match="header length .* beyond the file"):
        read_case(p)


def test_missing_case_metadata_is_refused(tmp_path):
    p = _header_file(tmp_path, {"__metadata__": {"other": "1"}})
    with pytest.raises(FixtureError, match=r"no __metadata__\['case'\]"):
        read_case(p)


def test_unknown_format_names_the_accepted_ones(tmp_path):
    p = _header_file(tmp_path, {"__metadata__": {"case": json.dumps({"format": "attn-fixture/9"})}})
    with pytest.raises(FixtureError, match="attn-fixture/9.*attn-fixture/1, attn-fixture/2"):
        read_case(p)


def test_tensor_bytes_outside_the_body_name_the_tensor(tmp_path):
    header = {
        "__metadata__": {"case": json.dumps({"format": FORMAT_V2})},
        "query": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
    }
    p = _header_file(tmp_path, header, body=b"\x00" * 8)
    with pytest.raises(FixtureError, match="tensor query: bytes \\[0, 16\\) do not hold F32 \\[4\\]"):
        read_case(p)


def test_unknown_dtype_names_the_tensor_and_the_known_ones(tmp_path):
    header = {
        "__metadata__": {"case": json.dumps({"format": FORMAT_V2})},
        "query": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]},
    }
    p = _header_file(tmp_path, header, body=b"\x00")
    with pytest.raises(FixtureError, match="tensor query: dtype 'Q7' is not one of F64"):
        read_case(p)
