import subprocess
import sys
from pathlib import Path

from conftest import write_gen
from gen_cases import merge_case, mla_case, paged_case

from attnlab_capture.adapters import all_adapters, case_path, select_adapter
from attnlab_capture.adapters.base import import_or_reason
from attnlab_capture.fixture import FORMAT_V1, read_case

PKG_ROOT = Path(__file__).resolve().parents[1]


def _case(tmp_path, made, name="c"):
    return read_case(write_gen(tmp_path, name, made))


def _pick(case, forced=None):
    adapter, reason = select_adapter(case, all_adapters(), forced)
    return (adapter.name if adapter else None), reason


def test_triton_attn_unified_paths_select_vllm_unified_attention(tmp_path):
    for path in ("unified_attention", "unified_attention_2d", "unified_attention_3d"):
        case = _case(tmp_path, paged_case(path=path, backend="TRITON_ATTN"), path)
        assert _pick(case) == ("vllm.unified_attention", None)


def test_rocm_attn_selects_chunked_prefill_paged_decode(tmp_path):
    case = _case(tmp_path, paged_case(path="chunked_prefill_paged_decode", backend="ROCM_ATTN"))
    assert _pick(case) == ("vllm.chunked_prefill_paged_decode", None)


def test_aiter_backends_select_aiter_adapters(tmp_path):
    fa = _case(tmp_path, paged_case(backend="ROCM_AITER_FA"), "fa")
    ua = _case(tmp_path, paged_case(backend="ROCM_AITER_UNIFIED_ATTN"), "ua")
    meta, tensors, ref = mla_case()
    meta["backend"] = "ROCM_AITER_MLA"
    mla = _case(tmp_path, (meta, tensors), "mla")
    assert _pick(fa)[0] == "aiter.flash_attn_varlen_func"
    assert _pick(ua)[0] == "aiter.unified_attention"
    assert _pick(mla)[0] == "aiter.mla_decode_fwd"


def test_merge_and_triton_mla_select_vllm_adapters(tmp_path):
    assert _pick(_case(tmp_path, merge_case(), "m")) == ("vllm.merge_attn_states", None)
    assert _pick(_case(tmp_path, mla_case(), "d")) == ("vllm.decode_attention_fwd", None)


def test_backend_without_an_adapter_gets_a_reason(tmp_path):
    case = _case(tmp_path, paged_case(backend="FLEX_ATTENTION"))
    name, reason = _pick(case)
    assert name is None
    assert reason == "no adapter runs op paged_attention path unified_attention for backend FLEX_ATTENTION"


def test_forced_adapter_must_serve_the_op(tmp_path):
    case = _case(tmp_path, merge_case())
    assert _pick(case, "vllm.merge_attn_states_triton") == ("vllm.merge_attn_states_triton", None)
    name, reason = _pick(case, "vllm.unified_attention")
    assert name is None and reason == "adapter vllm.unified_attention runs paged_attention, not merge_attn_states"
    name, reason = _pick(case, "nope")
    assert name is None and reason.startswith("no adapter named nope (known: vllm.unified_attention")


def test_format_1_fixture_takes_its_path_from_the_producer(tmp_path):
    meta, tensors, _ = paged_case()
    meta["format"] = FORMAT_V1
    for key in ("backend", "path", "launch", "tags", "kv_cache_dtype"):
        meta.pop(key)
    meta["producer"] = "vllm:chunked_prefill_paged_decode.py@abc on NVIDIA H200"
    case = _case(tmp_path, (meta, tensors))
    assert case_path(case) == "chunked_prefill_paged_decode"
    assert _pick(case) == ("vllm.chunked_prefill_paged_decode", None)
    meta["producer"] = "vllm:triton_unified_attention.py@abc"
    case = _case(tmp_path, (meta, tensors), "u")
    assert case_path(case) == "unified_attention"


def test_missing_module_gives_a_one_line_reason():
    mod, reason = import_or_reason("attnlab_no_such_module.sub")
    assert mod is None
    assert reason == "cannot import attnlab_no_such_module.sub: No module named 'attnlab_no_such_module'"
    assert "\n" not in reason


def test_every_adapter_skips_with_a_one_line_reason_without_vllm_or_aiter():
    # a fresh interpreter, so no test's vLLM source shim is in sys.modules
    code = (
        "import sys; sys.modules['vllm'] = None; sys.modules['aiter'] = None\n"
        "from attnlab_capture.adapters import all_adapters\n"
        "for a in all_adapters():\n"
        "    print(a.name + '|' + str(a.availability(None)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PKG_ROOT, capture_output=True, text=True, check=True).stdout
    reasons = dict(line.split("|", 1) for line in out.strip().splitlines())
    assert len(reasons) == len(all_adapters())
    for name, reason in reasons.items():
        assert reason != "None", name
        assert "\n" not in reason
    assert reasons["vllm.unified_attention"].startswith("cannot import vllm.v1.attention.ops.triton_unified_attention")
    assert reasons["vllm.merge_attn_states_compiled"] == "vllm._C is not importable (a source tree has no compiled ops)"
    for name in ("aiter.flash_attn_varlen_func", "aiter.unified_attention", "aiter.mla_decode_fwd"):
        assert reasons[name] in ("needs a ROCm GPU (torch.version.hip with a visible device)", "torch is not importable") or reasons[
            name
        ].startswith("cannot import aiter")
