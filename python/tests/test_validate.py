import numpy as np
import pytest
from conftest import write_gen
from gen_cases import merge_case, mla_case, paged_case, raw

from attnlab_capture.fixture import FixtureError, read_case
from attnlab_capture.validate import validate_case


def _roundtrip(tmp_path, meta, tensors, name="bad"):
    return read_case(write_gen(tmp_path, name, (meta, tensors)))


def _expect(tmp_path, meta, tensors, *fragments):
    case = _roundtrip(tmp_path, meta, tensors)
    with pytest.raises(FixtureError) as err:
        validate_case(case)
    msg = str(err.value)
    assert "bad.safetensors" in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_missing_tensor_is_named_with_its_expected_shape(tmp_path):
    meta, tensors, _ = paged_case()
    del tensors["value_cache"]
    _expect(tmp_path, meta, tensors, "tensor value_cache is missing", "F16")


def test_wrong_shape_names_the_tensor_and_the_expected_shape(tmp_path):
    meta, tensors, _ = paged_case(num_heads=4, head_size=64)
    q = tensors["query"].numpy_view()[:, :3, :]
    tensors["query"] = raw(q, "F16")
    _expect(tmp_path, meta, tensors, "tensor query has shape [4, 3, 64]", "expected [4, 4, 64]")


def test_out_of_range_block_id_names_the_entry_and_the_allowed_range(tmp_path):
    meta, tensors, _ = paged_case(seq_lens=(20, 9), block_size=16)
    table = np.array(tensors["block_table"].numpy_view())
    nb = tensors["key_cache"].shape[0]
    table[0, 1] = nb + 5
    tensors["block_table"] = raw(table, "I32")
    _expect(tmp_path, meta, tensors, f"block_table[0][1] = {nb + 5}", f"[0, {nb - 1}]")


def test_negative_block_id_is_refused(tmp_path):
    meta, tensors, _ = paged_case()
    table = np.array(tensors["block_table"].numpy_view())
    table[1, 0] = -1
    tensors["block_table"] = raw(table, "I32")
    _expect(tmp_path, meta, tensors, "block_table[1][0] = -1")


def test_seq_len_beyond_the_block_table_names_the_capacity(tmp_path):
    meta, tensors, _ = paged_case(seq_lens=(20, 9), block_size=16)
    tensors["seq_lens"] = raw(np.array([40, 9], dtype=np.int32), "I32")
    _expect(tmp_path, meta, tensors, "seq_lens[0] = 40 is outside [0, 32]", "2 blocks of 16 tokens")


def test_nan_lengths_are_refused_with_the_dtype_and_the_nan(tmp_path):
    meta, tensors, _ = paged_case()
    tensors["seq_lens"] = raw(np.array([np.nan, 9.0], dtype=np.float32), "F32")
    _expect(tmp_path, meta, tensors, "tensor seq_lens has dtype F32 and holds NaN", "expected I32")


def test_query_longer_than_its_sequence_is_refused(tmp_path):
    meta, tensors, _ = paged_case(query_lens=(1, 3), seq_lens=(20, 2))
    _expect(tmp_path, meta, tensors, "3 query tokens", "seq_lens[1] = 2")


def test_query_start_loc_must_end_at_the_query_rows(tmp_path):
    meta, tensors, _ = paged_case(query_lens=(1, 3))
    tensors["query_start_loc"] = raw(np.array([0, 1, 3], dtype=np.int32), "I32")
    _expect(tmp_path, meta, tensors, "query_start_loc[-1] = 3", "4 query rows")


def test_unknown_path_lists_the_paths_of_the_op(tmp_path):
    meta, tensors, _ = paged_case(path="flash_attn")
    _expect(tmp_path, meta, tensors, "path = 'flash_attn'", "unified_attention_3d", "chunked_prefill_paged_decode")


def test_unknown_backend_lists_the_backends(tmp_path):
    meta, tensors, _ = paged_case(backend="CUDNN")
    _expect(tmp_path, meta, tensors, "backend = 'CUDNN'", "TRITON_ATTN")


def test_fp8_case_needs_its_scales(tmp_path):
    meta, tensors, _ = paged_case()
    meta["kv_cache_dtype"] = "fp8_e4m3"
    for name in ("key_cache", "value_cache"):
        t = tensors[name]
        tensors[name] = raw(np.zeros(t.shape, dtype=np.uint8), "U8")
    _expect(tmp_path, meta, tensors, "tensor k_scale is missing", "F32 [1]")


def test_heads_must_divide(tmp_path):
    meta, tensors, _ = paged_case(num_heads=4, num_kv_heads=2)
    meta["num_kv_heads"] = 3
    _expect(tmp_path, meta, tensors, "num_heads = 4 is not a multiple of num_kv_heads = 3")


def test_merge_lse_shape_is_heads_by_tokens(tmp_path):
    meta, tensors, _ = merge_case(num_tokens=5, num_heads=2)
    lse = tensors["suffix_lse"].numpy_view().T.copy()
    tensors["suffix_lse"] = raw(lse, "F32")
    _expect(tmp_path, meta, tensors, "tensor suffix_lse has shape [5, 2]", "expected [2, 5]")


def test_mla_block_table_needs_one_row_per_query(tmp_path):
    meta, tensors, _ = mla_case(seq_lens=(5, 33))
    tensors["block_table"] = raw(tensors["block_table"].numpy_view()[:1].copy(), "I32")
    _expect(tmp_path, meta, tensors, "block_table has 1 rows; expected one per query row (2)")


def test_well_formed_cases_of_every_op_validate(tmp_path):
    for i, made in enumerate([paged_case(), paged_case(dtype="bfloat16", sinks=True, sliding_window=5), merge_case(inf_lse=True), mla_case()]):
        validate_case(_roundtrip(tmp_path, made[0], made[1], name=f"ok{i}"))
