"""Checks a case before any kernel sees it.

Every failure is a FixtureError whose message names the file, the tensor (or
metadata key) and the allowed range, so a bad case is fixed from the message
alone. Plain Python only: this runs where numpy and torch are absent.
"""

from __future__ import annotations

import math

from .fixture import FIXTURE_DTYPES, FORMAT_V2, Case, FixtureError

OPS = ("paged_attention", "merge_attn_states", "mla_decode")
KV_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e4m3fnuz")
BACKENDS = (
    "TRITON_ATTN",
    "ROCM_ATTN",
    "ROCM_AITER_FA",
    "ROCM_AITER_UNIFIED_ATTN",
    "FLEX_ATTENTION",
    "TRITON_MLA",
    "ROCM_AITER_MLA",
    "ROCM_AITER_TRITON_MLA",
)
PATHS = {
    "paged_attention": (
        "unified_attention",
        "unified_attention_2d",
        "unified_attention_3d",
        "chunked_prefill_paged_decode",
    ),
    "merge_attn_states": ("merge_attn_states",),
    "mla_decode": ("decode_attention_fwd",),
}
# tensor sizes beyond this are refused before any allocation on the device
MAX_ELEMENTS = 1 << 31


def _fail(case: Case, msg: str):
    raise FixtureError(case.path, msg)


def _meta_int(case, key, lo=1, hi=1 << 20):
    v = case.meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(case, f"metadata {key} = {v!r} is not an integer in [{lo}, {hi}]")
    if not lo <= v <= hi:
        _fail(case, f"metadata {key} = {v} is outside [{lo}, {hi}]")
    return v


def _meta_num(case, key, positive=False, optional=False):
    v = case.meta.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        _fail(case, f"metadata {key} = {v!r} is not a finite number")
    if positive and v <= 0:
        _fail(case, f"metadata {key} = {v} must be > 0")
    return float(v)


def _tensor(case, name, dtype, shape, optional=False):
    t = case.tensors.get(name)
    if t is None:
        if optional:
            return None
        _fail(case, f"tensor {name} is missing (expected {dtype} {list(shape)})")
    if t.dtype != dtype:
        extra = ""
        if name in ("seq_lens", "query_start_loc", "block_table") and t.dtype.startswith("F"):
            try:
                if any(math.isnan(v) for v in t.values()):
                    extra = " and holds NaN"
            except TypeError:
                pass
        _fail(case, f"tensor {name} has dtype {t.dtype}{extra}; expected {dtype}")
    if tuple(t.shape) != tuple(shape):
        _fail(case, f"tensor {name} has shape {list(t.shape)}; expected {list(shape)}")
    return t


def _rank(case, name, rank):
    t = case.tensors.get(name)
    if t is None:
        _fail(case, f"tensor {name} is missing")
    if len(t.shape) != rank:
        _fail(case, f"tensor {name} has shape {list(t.shape)}; expected rank {rank}")
    if t.numel > MAX_ELEMENTS:
        _fail(case, f"tensor {name} has {t.numel} elements; at most {MAX_ELEMENTS} are accepted")
    return t


def validate_case(case: Case) -> None:
    """Raise FixtureError naming file, tensor and allowed range on the first problem."""
    m = case.meta
    op = m.get("op")
    if op not in OPS:
        _fail(case, f"metadata op = {op!r} is not one of {', '.join(OPS)}")
    dtype = m.get("dtype")
    if dtype not in FIXTURE_DTYPES:
        _fail(case, f"metadata dtype = {dtype!r} is not one of {', '.join(FIXTURE_DTYPES)}")
    if m.get("format") == FORMAT_V2:
        backend = m.get("backend")
        if backend is not None and backend not in BACKENDS:
            _fail(case, f"metadata backend = {backend!r} is not null or one of {', '.join(BACKENDS)}")
        path = m.get("path")
        if path is not None and path not in PATHS[op]:
            _fail(case, f"metadata path = {path!r} is not one of {', '.join(PATHS[op])} for op {op}")
    _meta_num(case, "atol", optional=True)
    _meta_num(case, "rtol", optional=True)
    {"paged_attention": _validate_paged, "merge_attn_states": _validate_merge, "mla_decode": _validate_mla}[op](
        case, FIXTURE_DTYPES[dtype]
    )
    out = case.tensors.get("output")
    if out is not None and out.dtype != FIXTURE_DTYPES[dtype]:
        _fail(case, f"tensor output has dtype {out.dtype}; expected {FIXTURE_DTYPES[dtype]}")


def _validate_lengths(case, num_seqs, max_blocks, block_size, num_blocks, num_tokens):
    seq_lens = _tensor(case, "seq_lens", "I32", (num_seqs,)).values()
    cap = max_blocks * block_size
    for i, s in enumerate(seq_lens):
        if not 0 <= s <= cap:
            _fail(
                case,
                f"tensor seq_lens[{i}] = {s} is outside [0, {cap}] "
                f"(block_table holds {max_blocks} blocks of {block_size} tokens)",
            )
    qsl = None
    if num_tokens is not None:
        qsl = _tensor(case, "query_start_loc", "I32", (num_seqs + 1,)).values()
        if qsl[0] != 0:
            _fail(case, f"tensor query_start_loc[0] = {qsl[0]}; it must be 0")
        for i in range(num_seqs):
            q = qsl[i + 1] - qsl[i]
            if q < 0:
                _fail(case, f"tensor query_start_loc is decreasing at {i + 1} ({qsl[i]} -> {qsl[i + 1]})")
            if q > seq_lens[i]:
                _fail(
                    case,
                    f"tensor query_start_loc gives sequence {i} {q} query tokens, more than "
                    f"seq_lens[{i}] = {seq_lens[i]} (allowed 0..{seq_lens[i]})",
                )
        if qsl[-1] != num_tokens:
            _fail(case, f"tensor query_start_loc[-1] = {qsl[-1]}; it must equal the {num_tokens} query rows")
    table = _tensor(case, "block_table", "I32", (num_seqs, max_blocks)).values()
    for i in range(num_seqs):
        used = -(-int(seq_lens[i]) // block_size)
        row = table[i * max_blocks : i * max_blocks + used]
        bad = [(j, int(b)) for j, b in enumerate(row) if not 0 <= b < num_blocks]
        if bad:
            j, b = bad[0]
            _fail(case, f"tensor block_table[{i}][{j}] = {b} is outside [0, {num_blocks - 1}] (the cache has {num_blocks} blocks)")
    return seq_lens, qsl


def _validate_paged(case, tag):
    m = case.meta
    H = _meta_int(case, "num_heads", 1, 1024)
    Hkv = _meta_int(case, "num_kv_heads", 1, 1024)
    D = _meta_int(case, "head_size", 1, 1024)
    bs = _meta_int(case, "block_size", 1, 1 << 16)
    if H % Hkv:
        _fail(case, f"metadata num_heads = {H} is not a multiple of num_kv_heads = {Hkv}")
    _meta_num(case, "scale", positive=True)
    sw = m.get("sliding_window")
    if sw is not None and (isinstance(sw, bool) or not isinstance(sw, int) or sw < 1):
        _fail(case, f"metadata sliding_window = {sw!r} is not null or an integer >= 1")
    sc = m.get("softcap")
    if sc is not None:
        _meta_num(case, "softcap", positive=True)
    if not isinstance(m.get("causal", True), bool):
        _fail(case, f"metadata causal = {m.get('causal')!r} is not a boolean")
    kvd = m.get("kv_cache_dtype", "auto")
    if kvd not in KV_CACHE_DTYPES:
        _fail(case, f"metadata kv_cache_dtype = {kvd!r} is not one of {', '.join(KV_CACHE_DTYPES)}")
    q = _rank(case, "query", 3)
    T = q.shape[0]
    _tensor(case, "query", tag, (T, H, D))
    kc = _rank(case, "key_cache", 4)
    NB = kc.shape[0]
    if NB < 1:
        _fail(case, "tensor key_cache has 0 blocks; at least 1 is needed")
    cache_tag = "U8" if kvd != "auto" else tag
    _tensor(case, "key_cache", cache_tag, (NB, bs, Hkv, D))
    _tensor(case, "value_cache", cache_tag, (NB, bs, Hkv, D))
    if kvd != "auto":
        for name in ("k_scale", "v_scale"):
            s = _tensor(case, name, "F32", (1,)).values()
            if not (math.isfinite(float(s[0])) and float(s[0]) > 0):
                _fail(case, f"tensor {name} = {float(s[0])} must be finite and > 0")
    bt = _rank(case, "block_table", 2)
    S = bt.shape[0]
    if S < 1:
        _fail(case, "tensor block_table has 0 sequences; at least 1 is needed")
    _validate_lengths(case, S, bt.shape[1], bs, NB, T)
    _tensor(case, "sinks", "F32", (H,), optional=True)
    _tensor(case, "alibi_slopes", "F32", (H,), optional=True)
    _tensor(case, "output", tag, (T, H, D), optional=True)


def _validate_merge(case, tag):
    H = _meta_int(case, "num_heads", 1, 1024)
    D = _meta_int(case, "head_size", 1, 1024)
    p = _rank(case, "prefix_output", 3)
    T = p.shape[0]
    for name in ("prefix_output", "suffix_output"):
        _tensor(case, name, tag, (T, H, D))
    for name in ("prefix_lse", "suffix_lse"):
        _tensor(case, name, "F32", (H, T))
    _tensor(case, "output", tag, (T, H, D), optional=True)
    _tensor(case, "output_lse", "F32", (H, T), optional=True)


def _validate_mla(case, tag):
    H = _meta_int(case, "num_heads", 1, 1024)
    R = _meta_int(case, "kv_lora_rank", 1, 4096)
    P = _meta_int(case, "qk_rope_head_dim", 0, 1024)
    bs = _meta_int(case, "block_size", 1, 1 << 16)
    _meta_num(case, "scale", positive=True)
    q = _rank(case, "query", 3)
    S = q.shape[0]
    _tensor(case, "query", tag, (S, H, R + P))
    kv = _rank(case, "kv_cache", 3)
    NB = kv.shape[0]
    if NB < 1:
        _fail(case, "tensor kv_cache has 0 blocks; at least 1 is needed")
    _tensor(case, "kv_cache", tag, (NB, bs, R + P))
    bt = _rank(case, "block_table", 2)
    if bt.shape[0] != S:
        _fail(case, f"tensor block_table has {bt.shape[0]} rows; expected one per query row ({S})")
    _validate_lengths(case, S, bt.shape[1], bs, NB, None)
    _tensor(case, "output", tag, (S, H, R), optional=True)
