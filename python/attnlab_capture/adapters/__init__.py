"""Kernel adapters and the rule that picks one for a case."""

from __future__ import annotations

from .base import Adapter, AdapterUnavailable, CaptureFailure, Result  # noqa: F401

DEFAULT_PATH = {
    "paged_attention": "unified_attention",
    "merge_attn_states": "merge_attn_states",
    "mla_decode": "decode_attention_fwd",
}


def all_adapters():
    from . import aiter_kernels, vllm_kernels

    return list(vllm_kernels.ADAPTERS) + list(aiter_kernels.ADAPTERS)


def case_path(case):
    """The case's `path`; an attn-fixture/1 file has none, so its producer names the
    kernel (ROCM_ATTN's fixtures say chunked_prefill_paged_decode), else the op's default."""
    path = case.meta.get("path")
    if path:
        return path
    if case.op == "paged_attention" and "chunked_prefill_paged_decode" in str(case.meta.get("producer", "")):
        return "chunked_prefill_paged_decode"
    return DEFAULT_PATH.get(case.op, "")


def select_adapter(case, adapters, forced=None):
    """(adapter, None) or (None, one-line reason) for a case.

    A case names its kernel entry point with `path` and its vLLM backend with
    `backend` (attn-fixture/2; /1 files have neither: the op's default path and
    a null backend). The first adapter serving that op, path and backend wins;
    `forced` (--adapter) picks one by name if it serves the op.
    """
    op = case.op
    if forced is not None:
        for a in adapters:
            if a.name == forced:
                if a.op != op:
                    return None, f"adapter {forced} runs {a.op}, not {op}"
                return a, None
        return None, f"no adapter named {forced} (known: {', '.join(a.name for a in adapters)})"
    path = case_path(case)
    backend = case.meta.get("backend")
    for a in adapters:
        if a.op == op and (not a.paths or path in a.paths) and backend in a.backends:
            return a, None
    return None, f"no adapter runs op {op} path {path} for backend {backend}"
