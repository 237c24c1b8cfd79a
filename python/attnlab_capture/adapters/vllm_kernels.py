"""Adapters for vLLM's own kernel entry points, called as vLLM's backends call them.

The module names below are vLLM's; the package imports them from the user's
vLLM (installed, or a source tree through `vllm_src`). The arguments and the
launch policy (2D vs 3D threshold, split-KV scratch, segment and split counts,
cache layouts) follow the backends of vLLM 0.34 (triton_attn.py, rocm_attn.py,
mla/triton_mla.py, merge_attn_states.py); each adapter records in `launch` what
actually ran, observed by wrapping the kernels in their modules.
"""

from __future__ import annotations

import importlib

from .. import tensors as T
from .base import Adapter, CaptureFailure, LaunchRecorder, Result, import_or_reason

UA_MODULE = "vllm.v1.attention.ops.triton_unified_attention"
CPPD_MODULE = "vllm.v1.attention.ops.chunked_prefill_paged_decode"
PREFIX_MODULE = "vllm.v1.attention.ops.prefix_prefill"
MERGE_TRITON_MODULE = "vllm.v1.attention.ops.triton_merge_attn_states"
DECODE_MODULE = "vllm.v1.attention.ops.triton_decode_attention"
CACHE_WRITER_MODULE = "vllm.v1.attention.ops.triton_reshape_and_cache_flash"

# triton_attn.py: MIN_LAUNCH_GRID_SIZE_2D and NUM_PAR_SOFTMAX_SEGMENTS
MIN_LAUNCH_GRID_SIZE_2D = 128
NUM_PAR_SOFTMAX_SEGMENTS = 16
MAX_3D_QUERY_LEN = 8


def _platform():
    return importlib.import_module("vllm.platforms").current_platform


def check_fp8_flavour(kv_cache_dtype):
    """The case's fp8 encoding must be the one this platform's vLLM reads."""
    if kv_cache_dtype == "auto":
        return
    want = T.fp8_torch_dtype(kv_cache_dtype)
    have = _platform().fp8_dtype()
    if want != have:
        raise CaptureFailure(
            f"kv_cache_dtype {kv_cache_dtype} stores {str(want).replace('torch.', '')} bits, but vLLM on this "
            f"platform reads fp8 caches as {str(have).replace('torch.', '')}"
        )


class PagedInputs:
    """A paged_attention case as torch tensors on the device, with the backend-facing scalars."""

    def __init__(self, case, ctx):
        import torch

        m = case.meta
        dev = ctx.device
        self.dtype = T.torch_dtype(m["dtype"])
        self.kv_cache_dtype = m.get("kv_cache_dtype", "auto") or "auto"
        self.query = T.to_torch(case.tensors["query"], dev)
        self.key_cache = T.to_torch(case.tensors["key_cache"], dev)
        self.value_cache = T.to_torch(case.tensors["value_cache"], dev)
        self.block_table = T.to_torch(case.tensors["block_table"], dev)
        self.seq_lens = T.to_torch(case.tensors["seq_lens"], dev)
        self.query_start_loc = T.to_torch(case.tensors["query_start_loc"], dev)
        self.seq_lens_host = [int(x) for x in case.tensors["seq_lens"].values()]
        qsl = [int(x) for x in case.tensors["query_start_loc"].values()]
        self.query_lens_host = [qsl[i + 1] - qsl[i] for i in range(len(qsl) - 1)]
        self.max_seqlen_q = max(self.query_lens_host) if self.query_lens_host else 0
        self.max_seqlen_k = max(self.seq_lens_host) if self.seq_lens_host else 0
        self.num_tokens = self.query.shape[0]
        self.num_heads = m["num_heads"]
        self.num_kv_heads = m["num_kv_heads"]
        self.head_size = m["head_size"]
        self.block_size = m["block_size"]
        self.scale = float(m["scale"])
        self.sliding_window = m.get("sliding_window")  # None or window length in tokens
        self.softcap = float(m["softcap"]) if m.get("softcap") else 0.0
        self.causal = bool(m.get("causal", True))
        self.sinks = T.to_torch(case.tensors["sinks"], dev) if "sinks" in case.tensors else None
        self.alibi_slopes = T.to_torch(case.tensors["alibi_slopes"], dev) if "alibi_slopes" in case.tensors else None
        ones = torch.ones(1, dtype=torch.float32, device=dev)
        self.k_scale = T.to_torch(case.tensors["k_scale"], dev) if "k_scale" in case.tensors else ones
        self.v_scale = T.to_torch(case.tensors["v_scale"], dev) if "v_scale" in case.tensors else ones.clone()

    @property
    def fp8(self):
        return self.kv_cache_dtype != "auto"

    def cache_for_kernel(self, cache_u8_or_dtype):
        """What the kernel reads: the dtype cache, or the fp8 view of the raw bits."""
        if self.fp8:
            return cache_u8_or_dtype.view(_platform().fp8_dtype())
        return cache_u8_or_dtype

    def new_key_value(self):
        """The new tokens' K/V as the backend receives them (in the model dtype).

        For an fp8 cache the original values are not in the case; they are the
        cache entries dequantized (bits * scale), which is what the cache holds.
        """
        k = T.gather_new_tokens(self.key_cache, self.block_table, self.seq_lens, self.query_start_loc)
        v = T.gather_new_tokens(self.value_cache, self.block_table, self.seq_lens, self.query_start_loc)
        if self.fp8:
            k = T.dequant_cache(k, self.kv_cache_dtype, self.k_scale, self.dtype)
            v = T.dequant_cache(v, self.kv_cache_dtype, self.v_scale, self.dtype)
        return k, v


def cudagraph_capture_sizes(max_num_seqs, family100=False):
    """vLLM's default capture sizes without speculative decoding (config/vllm.py)."""
    max_graph = min(max_num_seqs * 2, 1024 if family100 else 512)
    return [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, max_graph + 1, 16))


def triton_attn_split_kv_plan(num_kv_heads, path, num_tokens, num_seqs, policy, platform):
    """seq_threshold_3D, segments and scratch rows as TritonAttentionMetadataBuilder sets them.

    `path` unified_attention follows the backend; unified_attention_2d passes no
    threshold (vLLM's launcher then always runs 2D); unified_attention_3d lifts
    the threshold and sizes the scratch so that the launcher's own 3D rule
    decides (it still runs 2D where it must, which the capture reports).
    """
    if path == "unified_attention_2d":
        return {"seq_threshold_3D": None, "num_par_softmax_segments": None, "scratch_rows": 0, "policy": "forced 2d"}
    if path == "unified_attention_3d":
        return {
            "seq_threshold_3D": 1 << 30,
            "num_par_softmax_segments": NUM_PAR_SOFTMAX_SEGMENTS,
            "scratch_rows": max(num_tokens, 1),
            "policy": "forced 3d",
        }
    threshold = MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads
    if policy.get("cudagraph", True):
        sizes = cudagraph_capture_sizes(policy.get("max_num_seqs", 256), platform.is_device_capability_family(100))
        threshold = min(sizes, key=lambda x: abs(x - threshold))
    segments = NUM_PAR_SOFTMAX_SEGMENTS
    spec = int(policy.get("num_speculative_tokens", 0))
    max_q_3d = min(1 + spec, MAX_3D_QUERY_LEN) if spec else 1
    max_seqs_3d = min(threshold, policy.get("max_num_seqs", 256))
    rows = max_seqs_3d * max_q_3d
    note = "TRITON_ATTN default"
    max_seqs_64 = 0
    if platform.is_cuda() and platform.is_device_capability((12, 0)):
        max_seqs_64 = (platform.num_compute_units() - 1) // (NUM_PAR_SOFTMAX_SEGMENTS * num_kv_heads)
    if max_seqs_64 > 0:
        segments = 64
        rows = max(min(max_seqs_64, max_seqs_3d) * max_q_3d, -(-rows // (segments // NUM_PAR_SOFTMAX_SEGMENTS)))
        note = "TRITON_ATTN sm_120 64-segment scratch"
        if max_seqs_64 < num_seqs or rows < num_tokens:
            # build(): same scratch re-viewed with 16 segments and 4x the rows
            rows = rows * (segments // NUM_PAR_SOFTMAX_SEGMENTS)
            segments = NUM_PAR_SOFTMAX_SEGMENTS
            note = "TRITON_ATTN sm_120 scratch re-viewed at 16 segments"
    return {
        "seq_threshold_3D": threshold,
        "num_par_softmax_segments": segments,
        "scratch_rows": rows,
        "policy": note + (", cudagraph capture-size threshold" if policy.get("cudagraph", True) else ", eager"),
    }


class VllmUnifiedAttention(Adapter):
    name = "vllm.unified_attention"
    op = "paged_attention"
    paths = ("unified_attention", "unified_attention_2d", "unified_attention_3d")
    backends = ("TRITON_ATTN", None)
    kernel = f"{UA_MODULE}.unified_attention"

    def availability(self, ctx):
        return import_or_reason(UA_MODULE)[1]

    def run(self, case, ctx):
        import torch

        mod = importlib.import_module(UA_MODULE)
        p = PagedInputs(case, ctx)
        check_fp8_flavour(p.kv_cache_dtype)
        path = case.meta.get("path") or "unified_attention"
        plat = _platform()
        num_seqs = len(p.seq_lens_host)
        plan = triton_attn_split_kv_plan(p.num_kv_heads, path, p.num_tokens, num_seqs, ctx.policy, plat)
        k_view, v_view, _ = T.triton_attn_cache_views(p.key_cache, p.value_cache)
        k_view, v_view = p.cache_for_kernel(k_view), p.cache_for_kernel(v_view)
        out = torch.empty_like(p.query)
        window_size = (p.sliding_window - 1, 0) if p.sliding_window is not None else (-1, -1)
        descale_shape = (num_seqs, p.num_kv_heads)
        kwargs = dict(
            q=p.query,
            k=k_view,
            v=v_view,
            out=out,
            cu_seqlens_q=p.query_start_loc,
            max_seqlen_q=p.max_seqlen_q,
            seqused_k=p.seq_lens,
            max_seqlen_k=p.max_seqlen_k,
            softmax_scale=p.scale,
            causal=p.causal,
            alibi_slopes=p.alibi_slopes,
            window_size=window_size,
            block_table=p.block_table,
            softcap=p.softcap,
            q_descale=None,
            k_descale=p.k_scale.expand(descale_shape),
            v_descale=p.v_scale.expand(descale_shape),
            sinks=p.sinks,
        )
        kvq = importlib.import_module("vllm.v1.kv_cache_interface")
        kwargs["kv_quant_mode"] = kvq.KVQuantMode.FP8_PER_TENSOR if p.fp8 else kvq.KVQuantMode.NONE
        if plan["seq_threshold_3D"] is not None:
            rows, segs = plan["scratch_rows"], plan["num_par_softmax_segments"]
            hp = 1 << max(0, (p.head_size - 1).bit_length())
            f32 = dict(dtype=torch.float32, device=ctx.device)
            kwargs.update(
                seq_threshold_3D=plan["seq_threshold_3D"],
                num_par_softmax_segments=segs,
                softmax_segm_output=torch.empty((rows, p.num_heads, segs, hp), **f32),
                softmax_segm_max=torch.empty((rows, p.num_heads, segs), **f32),
                softmax_segm_expsum=torch.empty((rows, p.num_heads, segs), **f32),
            )
        with LaunchRecorder([(mod, "kernel_unified_attention", "kernel"), (mod, "reduce_segments", "kernel")]) as rec:
            mod.unified_attention(**kwargs)
        ka = [e for e in rec.kernels() if e["kernel"] == "kernel_unified_attention"]
        if not ka:
            raise CaptureFailure("unified_attention returned without launching kernel_unified_attention")
        main = ka[0]
        grid = "3d" if main.get("IS_3D") else "2d"
        launch = {
            "kernel": "unified_attention",
            "grid": grid,
            "num_segments": main.get("NUM_SEGMENTS_PER_SEQ", 1) if grid == "3d" else 1,
            "seq_threshold_3d": plan["seq_threshold_3D"],
            "scratch_rows": plan["scratch_rows"],
            "policy": plan["policy"],
            "tile_size": main.get("TILE_SIZE"),
            "block_m": main.get("BLOCK_M"),
            "block_q": main.get("BLOCK_Q"),
            "launch_grid": main["grid"],
            "reduce_segments": any(e["kernel"] == "reduce_segments" for e in rec.kernels()),
            "kv_layout": "TRITON_ATTN: K/V views of one [blocks, block_size, kv_heads, 2*head_size] cache",
        }
        if path == "unified_attention_3d" and grid != "3d":
            raise CaptureFailure(
                f"path unified_attention_3d, but vLLM's launcher ran 2D (max_seqlen_q={p.max_seqlen_q}, "
                f"causal={p.causal}; 3D needs max_seqlen_q <= {MAX_3D_QUERY_LEN} and causal masking)"
            )
        return Result({"output": out}, launch)


class VllmChunkedPrefillPagedDecode(Adapter):
    name = "vllm.chunked_prefill_paged_decode"
    op = "paged_attention"
    paths = ("chunked_prefill_paged_decode",)
    backends = ("ROCM_ATTN", None)
    kernel = f"{CPPD_MODULE}.chunked_prefill_paged_decode"

    def availability(self, ctx):
        return import_or_reason(CPPD_MODULE)[1]

    def run(self, case, ctx):
        import torch

        mod = importlib.import_module(CPPD_MODULE)
        pre = importlib.import_module(PREFIX_MODULE)
        p = PagedInputs(case, ctx)
        check_fp8_flavour(p.kv_cache_dtype)
        key, value = p.new_key_value()
        k5, v4, _ = T.rocm_attn_cache_views(p.key_cache, p.value_cache)
        # rocm_attn.py views a quantized cache as the platform fp8 type before the call
        k5, v4 = p.cache_for_kernel(k5), p.cache_for_kernel(v4)
        out = torch.empty_like(p.query)
        targets = [
            (mod, "kernel_paged_attention_2d", "kernel"),
            (mod, "context_attention_fwd", "call"),
            (pre, "_fwd_kernel", "kernel"),
            (pre, "_fwd_kernel_alibi", "kernel"),
        ]
        ops = getattr(mod, "ops", None)
        if ops is not None and hasattr(ops, "paged_attention_rocm"):
            targets.append((ops, "paged_attention_rocm", "call"))
        with LaunchRecorder(targets) as rec:
            mod.chunked_prefill_paged_decode(
                query=p.query,
                key=key,
                value=value,
                output=out,
                # the cache tensors carry the raw fp8 bits as uint8, as vLLM's do
                kv_cache_dtype="fp8_e4m3" if p.fp8 else "auto",
                key_cache=k5,
                value_cache=v4,
                block_table=p.block_table,
                query_start_loc=p.query_start_loc,
                seq_lens=p.seq_lens,
                max_seq_len=p.max_seqlen_k,
                max_query_len=p.max_seqlen_q,
                k_scale=p.k_scale,
                v_scale=p.v_scale,
                alibi_slopes=p.alibi_slopes,
                sliding_window=p.sliding_window if p.sliding_window is not None else 0,
                sm_scale=p.scale,
                sinks=p.sinks,
                causal=p.causal,
            )
        names = [e.get("kernel") or e.get("call") for e in rec.log]
        # attn-fixture/2 names of the decode kernel (attnlab's replay reads them):
        # vLLM's HIP custom op `paged_attention_rocm` is the "ll4mi" kernel.
        decode = (
            "paged_attention_ll4mi"
            if "paged_attention_rocm" in names
            else "kernel_paged_attention_2d"
            if "kernel_paged_attention_2d" in names
            else None
        )
        pa2d = next((e for e in rec.log if e.get("kernel") == "kernel_paged_attention_2d"), {})
        fwd = next((e for e in rec.log if e.get("kernel") in ("_fwd_kernel", "_fwd_kernel_alibi")), {})
        launch = {
            "kernel": "chunked_prefill_paged_decode",
            "grid": "2d",
            "prefill": (fwd.get("kernel") or "context_attention_fwd") if "context_attention_fwd" in names else None,
            "prefill_block": fwd.get("BLOCK_M"),
            "decode": decode,
            "decode_block_size": pa2d.get("BLOCK_SIZE"),
            "new_kv_source": "cache rows of the new tokens" + (" dequantized (bits * scale)" if p.fp8 else ""),
            "kv_layout": "ROCM_ATTN: K [blocks, kv_heads, head_size/x, block_size, x], V [blocks, kv_heads, head_size, block_size]",
            "softcap_applied": False,
        }
        if p.softcap:
            launch["note"] = "chunked_prefill_paged_decode takes no soft-cap (ROCM_ATTN drops it): the kernel ran without it"
        return Result({"output": out}, launch)


def _merge_uses_compiled_op(prefix_output):
    """merge_attn_states.py's dispatch: the compiled op on CUDA and CDNA3+ for
    f32/f16/bf16 with head_size a multiple of the 16-byte pack."""
    import torch

    plat = _platform()
    if plat.is_cuda():
        platform_ok = True
    elif plat.is_rocm():
        try:
            platform_ok = importlib.import_module("vllm.platforms.rocm").get_cdna_version() >= 3
        except Exception:
            platform_ok = False
    else:
        platform_ok = False
    d = prefix_output.shape[2]
    dtype_ok = prefix_output.dtype in (torch.float32, torch.float16, torch.bfloat16)
    head_ok = d % (4 if prefix_output.dtype == torch.float32 else 8) == 0
    return platform_ok and dtype_ok and head_ok


def _merge_inputs(case, ctx):
    import torch

    dev = ctx.device
    po = T.to_torch(case.tensors["prefix_output"], dev)
    so = T.to_torch(case.tensors["suffix_output"], dev)
    pl = T.to_torch(case.tensors["prefix_lse"], dev)
    sl = T.to_torch(case.tensors["suffix_lse"], dev)
    out = torch.empty_like(po)
    out_lse = torch.empty_like(pl)
    return po, so, pl, sl, out, out_lse


class VllmMergeAttnStates(Adapter):
    """merge_attn_states as vLLM dispatches it: the compiled op where vLLM would
    use it and `_C` is importable, else the Triton kernel."""

    name = "vllm.merge_attn_states"
    op = "merge_attn_states"
    paths = ("merge_attn_states",)
    backends = (None, "TRITON_ATTN", "ROCM_ATTN", "ROCM_AITER_FA", "ROCM_AITER_UNIFIED_ATTN", "TRITON_MLA", "ROCM_AITER_MLA", "ROCM_AITER_TRITON_MLA", "FLEX_ATTENTION")
    kernel = "vllm.v1.attention.ops.merge_attn_states.merge_attn_states"

    def availability(self, ctx):
        return import_or_reason(MERGE_TRITON_MODULE)[1]

    def run(self, case, ctx):
        po, so, pl, sl, out, out_lse = _merge_inputs(case, ctx)
        launch = {"kernel": "merge_attn_states"}
        compiled_wanted = _merge_uses_compiled_op(po)
        compiled = None
        if compiled_wanted:
            ops, reason = import_or_reason("vllm._custom_ops")
            compiled = getattr(ops, "merge_attn_states", None) if ops is not None else None
            if compiled is None or not _has_compiled_extension():
                compiled = None
                launch["dispatch_note"] = "vLLM would run its compiled merge here; vllm._C is not importable, so the Triton kernel ran"
        if compiled is not None:
            compiled(out, po, pl, so, sl, out_lse, None, None)
            launch["impl"] = "_C.merge_attn_states (compiled)"
        else:
            mod = importlib.import_module(MERGE_TRITON_MODULE)
            with LaunchRecorder([(mod, "merge_attn_states_kernel", "kernel")]) as rec:
                mod.merge_attn_states(out, po, pl, so, sl, out_lse)
            k = rec.kernels()
            launch["impl"] = "triton merge_attn_states_kernel"
            launch["launch_grid"] = k[0]["grid"] if k else None
        return Result({"output": out, "output_lse": out_lse}, launch)


class VllmMergeAttnStatesTriton(Adapter):
    """The Triton merge kernel, whatever vLLM's dispatch would pick (select with --adapter)."""

    name = "vllm.merge_attn_states_triton"
    op = "merge_attn_states"
    paths = ("merge_attn_states",)
    backends = ()
    kernel = f"{MERGE_TRITON_MODULE}.merge_attn_states"

    def availability(self, ctx):
        return import_or_reason(MERGE_TRITON_MODULE)[1]

    def run(self, case, ctx):
        mod = importlib.import_module(MERGE_TRITON_MODULE)
        po, so, pl, sl, out, out_lse = _merge_inputs(case, ctx)
        with LaunchRecorder([(mod, "merge_attn_states_kernel", "kernel")]) as rec:
            mod.merge_attn_states(out, po, pl, so, sl, out_lse)
        k = rec.kernels()
        return Result(
            {"output": out, "output_lse": out_lse},
            {"kernel": "merge_attn_states", "impl": "triton merge_attn_states_kernel", "launch_grid": k[0]["grid"] if k else None},
        )


def _has_compiled_extension():
    mod, _ = import_or_reason("vllm._C")
    return mod is not None


class VllmMergeAttnStatesCompiled(Adapter):
    """vLLM's compiled (CUDA/HIP) merge op (select with --adapter)."""

    name = "vllm.merge_attn_states_compiled"
    op = "merge_attn_states"
    paths = ("merge_attn_states",)
    backends = ()
    kernel = "vllm._custom_ops.merge_attn_states"

    def availability(self, ctx):
        if not _has_compiled_extension():
            return "vllm._C is not importable (a source tree has no compiled ops)"
        ops, reason = import_or_reason("vllm._custom_ops")
        if reason:
            return reason
        if not hasattr(ops, "merge_attn_states"):
            return "vllm._custom_ops has no merge_attn_states"
        return None

    def run(self, case, ctx):
        ops = importlib.import_module("vllm._custom_ops")
        po, so, pl, sl, out, out_lse = _merge_inputs(case, ctx)
        ops.merge_attn_states(out, po, pl, so, sl, out_lse, None, None)
        return Result({"output": out, "output_lse": out_lse}, {"kernel": "merge_attn_states", "impl": "_C.merge_attn_states (compiled)"})


# mla/triton_mla.py
_MIN_WORK_PER_SPLIT = 512
_SPLIT_OCCUPANCY_MULTIPLIER = 2


def triton_mla_num_kv_splits(max_seq_len, sm_count):
    ideal = 1 << max(0, (max(1, max_seq_len // _MIN_WORK_PER_SPLIT) - 1).bit_length())
    return min(ideal, sm_count * _SPLIT_OCCUPANCY_MULTIPLIER)


class VllmTritonMlaDecode(Adapter):
    name = "vllm.decode_attention_fwd"
    op = "mla_decode"
    paths = ("decode_attention_fwd",)
    backends = ("TRITON_MLA", None)
    kernel = f"{DECODE_MODULE}.decode_attention_fwd"

    def availability(self, ctx):
        return import_or_reason(DECODE_MODULE)[1]

    def run(self, case, ctx):
        import torch

        mod = importlib.import_module(DECODE_MODULE)
        m = case.meta
        dev = ctx.device
        q = T.to_torch(case.tensors["query"], dev)
        kv = T.to_torch(case.tensors["kv_cache"], dev)
        bt = T.to_torch(case.tensors["block_table"], dev)
        sl = T.to_torch(case.tensors["seq_lens"], dev)
        rank = m["kv_lora_rank"]
        B, H = q.shape[0], q.shape[1]
        max_seq = max(int(x) for x in case.tensors["seq_lens"].values()) if B else 0
        sm_count = _platform().num_compute_units()
        mode = ctx.policy.get("mla_num_kv_splits", "auto")
        if mode == "case" and isinstance(m.get("num_kv_splits"), int) and m["num_kv_splits"] >= 1:
            splits, how = m["num_kv_splits"], "from the case"
        else:
            splits, how = triton_mla_num_kv_splits(max_seq, sm_count), f"TRITON_MLA rule (sm_count {sm_count})"
        o = torch.zeros(B, H, rank, dtype=q.dtype, device=dev)
        lse = torch.zeros(B, H, dtype=q.dtype, device=dev)
        attn_logits = torch.empty((B, H, splits, rank + 1), dtype=torch.float32, device=dev)
        kv4 = kv.unsqueeze(2)
        one = torch.ones(1, dtype=torch.float32, device=dev)
        targets = [(mod, n, "kernel") for n in ("_fwd_kernel_stage1", "_fwd_grouped_kernel_stage1", "_fwd_kernel_stage2")]
        with LaunchRecorder(targets) as rec:
            mod.decode_attention_fwd(
                q, kv4, kv4[..., :rank], o, lse, bt, sl, attn_logits, splits, float(m["scale"]), kv4.size(1),
                k_scale=one, v_scale=one, is_mla=True, sliding_window=None,
            )
        stage1 = next((e for e in rec.kernels() if "stage1" in e["kernel"]), {})
        launch = {
            "kernel": "decode_attention_fwd",
            "num_kv_splits": splits,
            "num_kv_splits_from": how,
            "stage1": stage1.get("kernel"),
            "block_n": stage1.get("BLOCK_N"),
            "block_h": stage1.get("BLOCK_H"),
            "page_size": int(kv4.size(1)),
        }
        # lse comes back in the query dtype ([seqs, heads]); stored as F32 [heads, seqs] like merge's
        return Result({"output": o, "output_lse": lse.float().t().contiguous()}, launch, {"num_kv_splits": splits})


class VllmCacheWriterCheck:
    """Rewrites the new tokens' K/V with the cache writer the case's backend uses.

    Not an adapter of its own (the format has no cache-writer op): with
    --check-cache-writer each paged case also gets `launch.cache_writer` =
    {kernel, layout, slots, mismatched_bytes}. The new tokens' slots are zeroed
    in the backend's cache layout, written by vLLM's writer from the tokens'
    values (fp8: the dequantized cache entries, re-quantized by the writer), and
    the bytes compared with the case's cache. Writers as the backends pick them:
    TRITON_ATTN: triton_reshape_and_cache_flash on its NHD views; ROCM_ATTN:
    the compiled reshape_and_cache for block sizes 16/32 where vllm._C imports,
    else triton_reshape_and_cache_flash on the 5D/4D layout.
    """

    name = "vllm.cache_writers"

    def availability(self, ctx):
        return import_or_reason(CACHE_WRITER_MODULE)[1]

    def check(self, case, ctx):
        import torch

        from . import case_path

        mod = importlib.import_module(CACHE_WRITER_MODULE)
        p = PagedInputs(case, ctx)
        key, value = p.new_key_value()
        slots = T.slot_mapping_for_new_tokens(p.block_table, p.seq_lens, p.query_start_loc, p.block_size)
        slot_t = torch.tensor(slots, dtype=torch.int64, device=ctx.device)
        kc = p.key_cache.clone()
        vc = p.value_cache.clone()
        kc.view(-1, p.num_kv_heads, p.head_size)[slot_t] = 0
        vc.view(-1, p.num_kv_heads, p.head_size)[slot_t] = 0
        kv_dtype = "fp8_e4m3" if p.fp8 else "auto"
        if case_path(case) == "chunked_prefill_paged_decode":
            k5, v4, _ = T.rocm_attn_cache_views(kc, vc)
            kw, vw = p.cache_for_kernel(k5), p.cache_for_kernel(v4)
            ops = None
            if p.block_size in (16, 32) and _has_compiled_extension():
                ops, _ = import_or_reason("vllm._custom_ops")
            if ops is not None and hasattr(ops, "reshape_and_cache"):
                ops.reshape_and_cache(key, value, kw, vw, slot_t, kv_dtype, p.k_scale, p.v_scale, False)
                kernel = "_C.reshape_and_cache"
            else:
                mod.triton_reshape_and_cache_flash(key, value, kw, vw, slot_t, kv_dtype, p.k_scale, p.v_scale, 0)
                kernel = "triton_reshape_and_cache_flash"
            nb, hkv, dx, bs, x = k5.shape
            k_back = k5.permute(0, 3, 1, 2, 4).reshape(nb, bs, hkv, dx * x)
            v_back = v4.permute(0, 3, 1, 2)
            layout = "ROCM_ATTN 5D K / 4D V"
        else:
            k_view, v_view, _ = T.triton_attn_cache_views(kc, vc)
            mod.triton_reshape_and_cache_flash(
                key, value, p.cache_for_kernel(k_view), p.cache_for_kernel(v_view), slot_t, kv_dtype, p.k_scale, p.v_scale
            )
            kernel = "triton_reshape_and_cache_flash"
            k_back, v_back = k_view, v_view
            layout = "TRITON_ATTN NHD views"
        ku8 = k_back.contiguous().view(torch.uint8)
        vu8 = v_back.contiguous().view(torch.uint8)
        mism = int((ku8 != p.key_cache.view(torch.uint8)).sum() + (vu8 != p.value_cache.view(torch.uint8)).sum())
        return {"kernel": kernel, "layout": layout, "slots": len(slots), "mismatched_bytes": mism}


ADAPTERS = [
    VllmUnifiedAttention(),
    VllmChunkedPrefillPagedDecode(),
    VllmMergeAttnStates(),
    VllmMergeAttnStatesTriton(),
    VllmMergeAttnStatesCompiled(),
    VllmTritonMlaDecode(),
]
