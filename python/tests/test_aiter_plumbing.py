"""The AITER adapters' plumbing, with recording fakes in place of AITER and vLLM's ROCm wrappers.

No MI300 is at hand: these tests only check that each adapter builds the
arguments vLLM 0.34's ROCm backends pass (window, causal, lengths, layouts,
indices) and writes what the call returns. Whether AITER computes the right
thing is for the first capture on a real MI300.
"""

import sys
import types

import numpy as np
import pytest
from conftest import write_gen
from gen_cases import mla_case, paged_case

from attnlab_capture.fixture import read_case

torch = pytest.importorskip("torch")


class Recorder:
    def __init__(self):
        self.calls = []

    def fn(self, name, result=None):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return result(*args, **kwargs) if result else None

        return call


@pytest.fixture
def fake_rocm(monkeypatch):
    rec = Recorder()

    def varlen(**kw):
        q = kw["q"]
        return torch.full_like(q, 0.5), torch.zeros(q.shape[1], q.shape[0])

    def gather(**kw):
        kw["key"].fill_(1.0)
        kw["value"].fill_(2.0)

    def unified(**kw):
        kw["out"].fill_(0.25)

    def mla_lse(q, kv, o, *rest, **kw):
        o.fill_(0.75)
        return torch.zeros(q.shape[0], q.shape[1])

    ops = types.SimpleNamespace(
        flash_attn_varlen_func=rec.fn("flash_attn_varlen_func", varlen),
        paged_attention_common=rec.fn("paged_attention_common"),
        mla_decode_fwd_lse=rec.fn("mla_decode_fwd_lse", mla_lse),
    )
    fa_backend = types.ModuleType("vllm.v1.attention.backends.rocm_aiter_fa")
    fa_backend.cp_mha_gather_cache = rec.fn("cp_mha_gather_cache", gather)
    fa_backend.reshape_and_cache_shuffle_triton = rec.fn("reshape_and_cache_shuffle_triton")
    modules = {
        "aiter": types.ModuleType("aiter"),
        "aiter.mla": types.ModuleType("aiter.mla"),
        "aiter.ops": types.ModuleType("aiter.ops"),
        "aiter.ops.triton": types.ModuleType("aiter.ops.triton"),
        "aiter.ops.triton.unified_attention": types.ModuleType("aiter.ops.triton.unified_attention"),
        "vllm": types.ModuleType("vllm"),
        "vllm._aiter_ops": types.ModuleType("vllm._aiter_ops"),
        "vllm.v1.attention.backends.rocm_aiter_fa": fa_backend,
    }
    modules["aiter.ops.triton.unified_attention"].unified_attention = rec.fn("unified_attention", unified)
    modules["vllm._aiter_ops"].rocm_aiter_ops = ops
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(torch.version, "hip", "6.4", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops, "aiter", types.SimpleNamespace(paged_attention_v1=rec.fn("paged_attention_v1")), raising=False)
    return rec


class Ctx:
    device = torch.device("cpu")

    def __init__(self, **policy):
        self.policy = policy


def _case(tmp_path, made, name="c"):
    return read_case(write_gen(tmp_path, name, made))


def _adapter(name):
    from attnlab_capture.adapters import all_adapters

    return next(a for a in all_adapters() if a.name == name)


def test_aiter_adapters_are_available_once_aiter_imports_on_rocm(fake_rocm):
    from attnlab_capture.adapters import all_adapters

    for a in all_adapters():
        if a.name.startswith("aiter."):
            assert a.availability(Ctx()) is None, a.name


def test_prefill_gathers_the_whole_kv_and_calls_varlen_flash_attention(fake_rocm, tmp_path):
    case = _case(tmp_path, paged_case(backend="ROCM_AITER_FA", query_lens=(5, 3), seq_lens=(12, 3), sliding_window=4, sinks=True))
    r = _adapter("aiter.flash_attn_varlen_func").run(case, Ctx())
    names = [c[0] for c in fake_rocm.calls]
    assert names == ["cp_mha_gather_cache", "flash_attn_varlen_func"]
    g = fake_rocm.calls[0][2]
    assert g["total_tokens"] == 15 and g["kv_cache_layout"] == "NHD" and g["dequant"] is False
    assert g["cu_seqlens_kv"].tolist() == [0, 12, 15]
    assert g["token_to_batch"].tolist() == [0] * 12 + [1] * 3
    f = fake_rocm.calls[1][2]
    assert f["causal"] is True and f["window_size"] == (3, 0) and f["return_lse"] is True
    assert f["k"].shape == (15, 2, 64) and float(f["k"][0, 0, 0]) == 1.0
    assert f["cu_seqlens_k"].tolist() == [0, 12, 15] and f["max_seqlen_k"] == 12 and f["min_seqlen_q"] == 3
    assert f["sink_ptr"] is not None
    assert r.launch["softcap_applied"] is False
    assert float(r.outputs["output"][0, 0, 0]) == 0.5


def test_mixed_decode_and_prefill_batch_is_refused_with_the_reason(fake_rocm, tmp_path):
    from attnlab_capture.adapters.base import CaptureFailure

    case = _case(tmp_path, paged_case(backend="ROCM_AITER_FA", query_lens=(1, 3), seq_lens=(12, 9)))
    with pytest.raises(CaptureFailure, match="splits a batch with decodes and prefills"):
        _adapter("aiter.flash_attn_varlen_func").run(case, Ctx())


def test_plain_decode_runs_paged_attention_v1_on_the_nhd_cache(fake_rocm, tmp_path):
    case = _case(tmp_path, paged_case(backend="ROCM_AITER_FA", query_lens=(1, 1), seq_lens=(300, 9), head_size=64, block_size=16))
    r = _adapter("aiter.flash_attn_varlen_func").run(case, Ctx())
    name, args, _ = fake_rocm.calls[-1]
    assert name == "paged_attention_v1"
    assert args[3].shape == (case.tensors["key_cache"].shape)  # NHD view of the combined cache
    assert args[9] == 300 and args[11] == "auto" and args[12] == "NHD" and args[17] == 256 and args[19] == 0
    assert r.launch["kernel"] == "aiter.paged_attention_v1"


def test_decode_with_sinks_or_small_heads_takes_unified_attention(fake_rocm, tmp_path):
    case = _case(tmp_path, paged_case(backend="ROCM_AITER_FA", query_lens=(1,), seq_lens=(30,), sinks=True), "s")
    r = _adapter("aiter.flash_attn_varlen_func").run(case, Ctx())
    assert fake_rocm.calls[-1][0] == "unified_attention" and fake_rocm.calls[-1][2]["sinks"] is not None
    assert r.launch["route"].startswith("unified_attention (sliding window / sinks")
    small = _case(tmp_path, paged_case(backend="ROCM_AITER_FA", query_lens=(1,), seq_lens=(30,), head_size=32), "h")
    r = _adapter("aiter.flash_attn_varlen_func").run(small, Ctx())
    assert "sinks" not in fake_rocm.calls[-1][2]
    assert r.launch["route"] == "unified_attention (head_size < 64 decode)"


def test_shuffled_decode_writes_the_cache_with_vllms_shuffle_writer(fake_rocm, tmp_path):
    case = _case(tmp_path, paged_case(backend="ROCM_AITER_FA", query_lens=(1, 1), seq_lens=(20, 9), block_size=16))
    r = _adapter("aiter.flash_attn_varlen_func").run(case, Ctx(aiter_shuffle_kv=True))
    names = [c[0] for c in fake_rocm.calls]
    assert names == ["reshape_and_cache_shuffle_triton", "paged_attention_common"]
    w = fake_rocm.calls[0][1]
    assert w[4].numel() == 29  # every token of both sequences
    kw = fake_rocm.calls[1][2]
    assert kw["K"].shape == (case.tensors["key_cache"].shape[0], 2, 64 // 8, 16, 8)
    assert kw["V"].shape == (case.tensors["key_cache"].shape[0], 2, 16 // 8, 64, 8)
    assert r.launch["kv_layout"] == "SHUFFLE"


def test_aiter_unified_attention_gets_vllms_arguments(fake_rocm, tmp_path):
    case = _case(tmp_path, paged_case(backend="ROCM_AITER_UNIFIED_ATTN", query_lens=(2, 1), seq_lens=(9, 30), softcap=10.0))
    r = _adapter("aiter.unified_attention").run(case, Ctx())
    kw = fake_rocm.calls[-1][2]
    assert kw["causal"] is True and kw["softcap"] == 10.0 and kw["shuffled_kv_cache"] is False
    assert kw["max_seqlen_q"] == 2 and kw["max_seqlen_k"] == 30
    assert float(r.outputs["output"][0, 0, 0]) == 0.25


def test_aiter_mla_uses_token_indices_with_page_size_one(fake_rocm, tmp_path):
    meta, tensors, _ = mla_case(seq_lens=(5, 18), block_size=16)
    meta["backend"] = "ROCM_AITER_MLA"
    case = _case(tmp_path, (meta, tensors))
    r = _adapter("aiter.mla_decode_fwd").run(case, Ctx())
    args = fake_rocm.calls[-1][1]
    table = np.array(tensors["block_table"].numpy_view())
    want = [table[0, t // 16] * 16 + t % 16 for t in range(5)] + [table[1, t // 16] * 16 + t % 16 for t in range(18)]
    assert args[4].tolist() == [0, 1, 2] and args[5] == 1
    assert args[6].tolist() == [0, 5, 23] and args[7].tolist() == want and args[8].tolist() == [1, 1]
    assert r.outputs["output_lse"].shape == (16, 2)
