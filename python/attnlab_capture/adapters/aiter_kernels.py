"""Adapters for AITER's kernels on ROCm, called as vLLM 0.34's ROCm backends call them.

UNTESTED: written against vLLM 0.34's call sites (vllm/_aiter_ops.py,
v1/attention/backends/rocm_aiter_fa.py, rocm_aiter_unified_attn.py,
mla/rocm_aiter_mla.py) and AITER's public entry points; no MI300 was available
where they were written. Each needs a ROCm torch, `aiter`, and (for the ops
vLLM wraps) an installed vLLM; without them it skips with the reason.
"""

from __future__ import annotations

import importlib

from .. import tensors as T
from .base import Adapter, CaptureFailure, Result, import_or_reason
from .vllm_kernels import PagedInputs, check_fp8_flavour

_PARTITION_SIZE_ROCM = 256  # rocm_aiter_fa.py


def _rocm_reason(ctx):
    try:
        import torch
    except Exception:
        return "torch is not importable"
    if getattr(torch.version, "hip", None) is None or not torch.cuda.is_available():
        return "needs a ROCm GPU (torch.version.hip with a visible device)"
    return None


def _aiter_reason(ctx, *modules):
    r = _rocm_reason(ctx)
    if r:
        return r
    for m in ("aiter",) + modules:
        _, reason = import_or_reason(m)
        if reason:
            return reason
    return None


def _aiter_ops():
    return importlib.import_module("vllm._aiter_ops").rocm_aiter_ops


def _window(p):
    return (p.sliding_window - 1, 0) if p.sliding_window is not None else (-1, -1)


def _gather_all_kv(p, ctx):
    """Each sequence's whole K/V (context + new) gathered with vLLM's cp_mha_gather_cache."""
    import torch

    fa = importlib.import_module("vllm.v1.attention.backends.rocm_aiter_fa")
    dev = ctx.device
    seq = p.seq_lens_host
    total = sum(seq)
    cu = [0]
    for s in seq:
        cu.append(cu[-1] + s)
    token_to_batch = torch.tensor([i for i, s in enumerate(seq) for _ in range(s)], dtype=torch.int32, device=dev)
    key = torch.empty((total, p.num_kv_heads, p.head_size), dtype=p.dtype, device=dev)
    value = torch.empty_like(key)
    fa.cp_mha_gather_cache(
        key_cache=p.cache_for_kernel(p.key_cache),
        value_cache=p.cache_for_kernel(p.value_cache),
        key=key,
        value=value,
        block_tables=p.block_table,
        k_scales=p.k_scale,
        v_scales=p.v_scale,
        cu_seqlens_kv=torch.tensor(cu, dtype=torch.int32, device=dev),
        token_to_batch=token_to_batch,
        seq_starts=torch.zeros(len(seq), dtype=torch.int32, device=dev),
        dequant=p.fp8,
        kv_cache_layout="NHD",
        total_tokens=total,
    )
    return key, value, cu


class AiterFlashAttnVarlen(Adapter):
    """ROCM_AITER_FA prefill/extend: K/V gathered by cp_mha_gather_cache, then
    AITER's flash_attn_varlen_func (through vLLM's rocm_aiter_ops wrapper)."""

    name = "aiter.flash_attn_varlen_func"
    op = "paged_attention"
    paths = ()
    backends = ("ROCM_AITER_FA",)
    kernel = "aiter.flash_attn_varlen_func"

    def availability(self, ctx):
        return _aiter_reason(ctx, "vllm._aiter_ops", "vllm.v1.attention.backends.rocm_aiter_fa")

    def run(self, case, ctx):
        import torch

        p = PagedInputs(case, ctx)
        check_fp8_flavour(p.kv_cache_dtype)
        if p.max_seqlen_q <= 1:
            return self._decode(case, ctx, p)
        if min(p.query_lens_host) <= 1 and max(p.query_lens_host) > 1:
            raise CaptureFailure(
                "ROCM_AITER_FA splits a batch with decodes and prefills into separate launches; "
                "this adapter runs all-decode or all-prefill/extend batches (split the case)"
            )
        key, value, cu_k = _gather_all_kv(p, ctx)
        out, lse = _aiter_ops().flash_attn_varlen_func(
            q=p.query,
            k=key,
            v=value,
            cu_seqlens_q=p.query_start_loc,
            cu_seqlens_k=torch.tensor(cu_k, dtype=torch.int32, device=ctx.device),
            max_seqlen_q=p.max_seqlen_q,
            max_seqlen_k=p.max_seqlen_k,
            min_seqlen_q=min(p.query_lens_host),
            dropout_p=0.0,
            softmax_scale=p.scale,
            causal=True,
            window_size=_window(p),
            alibi_slopes=p.alibi_slopes,
            return_lse=True,
            sink_ptr=p.sinks,
        )
        launch = {
            "kernel": "aiter.flash_attn_varlen_func",
            "grid": "varlen",
            "route": "cp_mha_gather_cache + one flash_attn_varlen_func (vLLM's sliding-window extend route; "
            "vLLM's full-attention extend merges per-context-chunk results instead)",
            "softcap_applied": False,
        }
        return Result({"output": out}, launch)


    def _decode(self, case, ctx, p):
        """ROCM_AITER_FA's decode routes (rocm_aiter_fa.py): AITER's Triton unified
        attention for sliding windows and sinks (vLLM's paged sliding-window route
        needs metadata a case does not carry) and for head sizes below 64; else
        paged attention on the NHD cache, or on the shuffled layout with
        VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1 (--aiter-shuffle-kv)."""
        import torch

        if p.sliding_window is not None or p.sinks is not None or p.head_size < 64:
            if ctx.policy.get("aiter_shuffle_kv"):
                raise CaptureFailure("vLLM refuses the shuffled KV layout with sliding windows, sinks or head sizes below 64")
            mod = importlib.import_module("aiter.ops.triton.unified_attention")
            num_seqs = len(p.seq_lens_host)
            kc, vc, _ = T.triton_attn_cache_views(p.key_cache, p.value_cache)
            descale = (num_seqs, p.num_kv_heads)
            out = torch.empty_like(p.query)
            kwargs = dict(
                q=p.query,
                k=p.cache_for_kernel(kc),
                v=p.cache_for_kernel(vc),
                out=out,
                cu_seqlens_q=p.query_start_loc,
                max_seqlen_q=1,
                seqused_k=p.seq_lens,
                max_seqlen_k=p.max_seqlen_k,
                softmax_scale=p.scale,
                causal=True,
                alibi_slopes=p.alibi_slopes,
                window_size=_window(p),
                block_table=p.block_table,
                softcap=p.softcap,
                q_descale=None,
                k_descale=p.k_scale.expand(descale) if p.fp8 else None,
                v_descale=p.v_scale.expand(descale) if p.fp8 else None,
            )
            if p.sliding_window is not None or p.sinks is not None:
                kwargs["sinks"] = p.sinks
                route = "unified_attention (sliding window / sinks decode)"
            else:
                route = "unified_attention (head_size < 64 decode)"
            mod.unified_attention(**kwargs)
            return Result({"output": out}, {"kernel": "aiter.unified_attention", "grid": "decode", "route": route})
        decode = AiterPagedAttentionShuffle() if ctx.policy.get("aiter_shuffle_kv") else AiterPagedAttentionV1()
        return decode.run(case, ctx)


class AiterPagedAttentionV1(Adapter):
    """ROCM_AITER_FA decode on vLLM's default NHD cache: torch.ops.aiter.paged_attention_v1."""

    name = "aiter.paged_attention_v1"
    op = "paged_attention"
    paths = ()
    backends = ()
    kernel = "torch.ops.aiter.paged_attention_v1"

    def availability(self, ctx):
        return _aiter_reason(ctx)

    def run(self, case, ctx):
        import torch

        importlib.import_module("aiter")  # registers torch.ops.aiter
        p = PagedInputs(case, ctx)
        check_fp8_flavour(p.kv_cache_dtype)
        if p.max_seqlen_q > 1:
            raise CaptureFailure("paged_attention_v1 is ROCM_AITER_FA's decode kernel: every query length must be 1")
        out = torch.empty_like(p.query)
        num_seqs = len(p.seq_lens_host)
        parts = (p.max_seqlen_k + _PARTITION_SIZE_ROCM - 1) // _PARTITION_SIZE_ROCM
        nbytes = torch.finfo(p.dtype).bits // 8
        workspace = torch.empty(
            num_seqs * p.num_heads * parts * p.head_size * nbytes + 2 * num_seqs * p.num_heads * parts * 4,
            dtype=torch.uint8,
            device=ctx.device,
        )
        k_view, v_view, _ = T.triton_attn_cache_views(p.key_cache, p.value_cache)
        torch.ops.aiter.paged_attention_v1(
            out,
            workspace,
            p.query,
            p.cache_for_kernel(k_view),
            p.cache_for_kernel(v_view),
            p.scale,
            p.block_table,
            p.query_start_loc[:num_seqs],
            p.seq_lens,
            p.max_seqlen_k,
            p.alibi_slopes,
            "fp8" if p.fp8 else "auto",
            "NHD",
            p.softcap,
            p.k_scale,
            p.v_scale,
            None,
            _PARTITION_SIZE_ROCM,
            1,
            _window(p)[0] + 1,
        )
        return Result({"output": out}, {"kernel": "aiter.paged_attention_v1", "kv_layout": "NHD", "partition_size": _PARTITION_SIZE_ROCM})


def shuffled_views(p, ctx):
    """AITER's shuffled layout, written by vLLM's reshape_and_cache_shuffle_triton
    (every token of every sequence; blocks no sequence uses stay zero)."""
    import torch

    fa = importlib.import_module("vllm.v1.attention.backends.rocm_aiter_fa")
    kc = torch.zeros_like(p.key_cache)
    vc = torch.zeros_like(p.value_cache)
    slots = []
    for i, s in enumerate(p.seq_lens_host):
        for pos in range(s):
            slots.append(int(p.block_table[i, pos // p.block_size]) * p.block_size + pos % p.block_size)
    slot_t = torch.tensor(slots, dtype=torch.int64, device=ctx.device)
    fk = p.key_cache.view(-1, p.num_kv_heads, p.head_size)[slot_t]
    fv = p.value_cache.view(-1, p.num_kv_heads, p.head_size)[slot_t]
    if p.fp8:
        fk = T.dequant_cache(fk, p.kv_cache_dtype, p.k_scale, p.dtype)
        fv = T.dequant_cache(fv, p.kv_cache_dtype, p.v_scale, p.dtype)
    kview, vview = p.cache_for_kernel(kc), p.cache_for_kernel(vc)
    fa.reshape_and_cache_shuffle_triton(fk, fv, kview, vview, slot_t, "fp8" if p.fp8 else "auto", p.k_scale, p.v_scale)
    nb, bs, hkv, hd = kview.shape
    x = 16 // kview.element_size()
    return kview.reshape(nb, hkv, hd // x, bs, x), vview.reshape(nb, hkv, bs // x, hd, x)


class AiterPagedAttentionShuffle(Adapter):
    """ROCM_AITER_FA decode with VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1: aiter.paged_attention_common."""

    name = "aiter.paged_attention_common"
    op = "paged_attention"
    paths = ()
    backends = ()
    kernel = "aiter.paged_attention_common"

    def availability(self, ctx):
        return _aiter_reason(ctx, "vllm._aiter_ops", "vllm.v1.attention.backends.rocm_aiter_fa")

    def run(self, case, ctx):
        import torch

        p = PagedInputs(case, ctx)
        check_fp8_flavour(p.kv_cache_dtype)
        if p.max_seqlen_q > 1:
            raise CaptureFailure("paged attention on the shuffled layout is ROCM_AITER_FA's decode: every query length must be 1")
        k5, v5 = shuffled_views(p, ctx)
        num_seqs = len(p.seq_lens_host)
        parts = (p.max_seqlen_k + _PARTITION_SIZE_ROCM - 1) // _PARTITION_SIZE_ROCM
        tmp_out = torch.empty((num_seqs, p.num_heads, parts, p.head_size), dtype=p.dtype, device=ctx.device)
        exp_sums = torch.empty((num_seqs, p.num_heads, parts), dtype=torch.float32, device=ctx.device)
        max_logits = torch.empty_like(exp_sums)
        out = torch.empty_like(p.query)
        _aiter_ops().paged_attention_common(
            Q=p.query,
            K=k5,
            V=v5,
            tmp_out=tmp_out,
            max_logits=max_logits,
            exp_sums=exp_sums,
            max_seq_len=p.max_seqlen_k,
            block_tables=p.block_table,
            context_lens=p.seq_lens,
            block_tables_stride0=p.block_table.stride(0),
            scale=p.scale,
            K_QScale_hip=p.k_scale,
            V_QScale_hip=p.v_scale,
            K_QScale_asm=None,
            V_QScale_asm=None,
            out_=out,
            kv_cache_dtype="fp8" if p.fp8 else "auto",
        )
        return Result({"output": out}, {"kernel": "aiter.paged_attention_common", "kv_layout": "SHUFFLE"})


class AiterUnifiedAttention(Adapter):
    """ROCM_AITER_UNIFIED_ATTN: aiter.ops.triton.unified_attention.unified_attention."""

    name = "aiter.unified_attention"
    op = "paged_attention"
    paths = ()
    backends = ("ROCM_AITER_UNIFIED_ATTN",)
    kernel = "aiter.ops.triton.unified_attention.unified_attention"

    def availability(self, ctx):
        return _aiter_reason(ctx, "aiter.ops.triton.unified_attention")

    def run(self, case, ctx):
        import torch

        mod = importlib.import_module("aiter.ops.triton.unified_attention")
        p = PagedInputs(case, ctx)
        check_fp8_flavour(p.kv_cache_dtype)
        if not p.causal:
            raise CaptureFailure("AITER's unified attention is causal-only (vLLM falls back to its Triton kernel)")
        shuffle = bool(ctx.policy.get("aiter_shuffle_kv", False))
        if shuffle:
            kc, vc = shuffled_views(p, ctx)
        else:
            kc, vc, _ = T.triton_attn_cache_views(p.key_cache, p.value_cache)
            kc, vc = p.cache_for_kernel(kc), p.cache_for_kernel(vc)
        out = torch.empty_like(p.query)
        mod.unified_attention(
            q=p.query,
            k=kc,
            v=vc,
            out=out,
            cu_seqlens_q=p.query_start_loc,
            max_seqlen_q=p.max_seqlen_q,
            seqused_k=p.seq_lens,
            max_seqlen_k=p.max_seqlen_k,
            softmax_scale=p.scale,
            causal=True,
            alibi_slopes=p.alibi_slopes,
            window_size=_window(p),
            block_table=p.block_table,
            softcap=p.softcap,
            q_descale=None,
            k_descale=p.k_scale,
            v_descale=p.v_scale,
            sinks=p.sinks,
            output_scale=None,
            shuffled_kv_cache=shuffle,
        )
        return Result({"output": out}, {"kernel": "aiter.unified_attention", "kv_layout": "SHUFFLE" if shuffle else "NHD"})


class AiterMlaDecode(Adapter):
    """ROCM_AITER_MLA decode: aiter.mla.mla_decode_fwd through vLLM's wrapper
    (page size 1 over token indices, as vLLM views the cache)."""

    name = "aiter.mla_decode_fwd"
    op = "mla_decode"
    paths = ()
    backends = ("ROCM_AITER_MLA", "ROCM_AITER_TRITON_MLA")
    kernel = "aiter.mla.mla_decode_fwd"

    def availability(self, ctx):
        return _aiter_reason(ctx, "aiter.mla", "vllm._aiter_ops")

    def run(self, case, ctx):
        import torch

        m = case.meta
        dev = ctx.device
        q = T.to_torch(case.tensors["query"], dev)
        kv = T.to_torch(case.tensors["kv_cache"], dev)
        bt_flat = case.tensors["block_table"].values()
        bt_cols = case.tensors["block_table"].shape[1]
        seq = [int(s) for s in case.tensors["seq_lens"].values()]
        bs = m["block_size"]
        rank = m["kv_lora_rank"]
        indices = [int(bt_flat[i * bt_cols + t // bs]) * bs + t % bs for i, s in enumerate(seq) for t in range(s)]
        indptr = [0]
        for s in seq:
            indptr.append(indptr[-1] + s)
        i32 = dict(dtype=torch.int32, device=dev)
        B, H = q.shape[0], q.shape[1]
        o = torch.empty(B, H, rank, dtype=q.dtype, device=dev)
        lse = _aiter_ops().mla_decode_fwd_lse(
            q,
            kv,
            o,
            float(m["scale"]),
            torch.arange(B + 1, **i32),
            1,
            torch.tensor(indptr, **i32),
            torch.tensor(indices, **i32),
            torch.ones(B, **i32),
        )
        outputs = {"output": o}
        if lse is not None:
            outputs["output_lse"] = lse.float().reshape(B, H).t().contiguous()
        return Result(outputs, {"kernel": "aiter.mla_decode_fwd", "page_size": 1})


ADAPTERS = [
    AiterFlashAttnVarlen(),
    AiterPagedAttentionV1(),
    AiterPagedAttentionShuffle(),
    AiterUnifiedAttention(),
    AiterMlaDecode(),
]
