"""A tiny case generator for the tests (numpy only), following attn-fixture/2.

The real cases come from `attnlab cases`; this one only makes small,
fixture-shaped files to exercise the reader, the validation and the capture
loop, plus float64 references to check what a kernel returned.
"""

from __future__ import annotations

import numpy as np

from attnlab_capture.fixture import FORMAT_V2, RawTensor

TAG = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


def f32_to_bf16_bits(x):
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_bits_to_f32(u):
    return (np.asarray(u, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def raw(arr, tag):
    arr = np.ascontiguousarray(arr)
    return RawTensor(tag, tuple(arr.shape), arr.tobytes())


def raw_float(x, dtype):
    """float array -> RawTensor of the fixture dtype, plus the values it holds (f64)."""
    if dtype == "bfloat16":
        bits = f32_to_bf16_bits(x)
        return raw(bits, "BF16"), bf16_bits_to_f32(bits).astype(np.float64)
    npd = {"float16": np.float16, "float32": np.float32}[dtype]
    a = np.asarray(x).astype(npd)
    return raw(a, TAG[dtype]), a.astype(np.float64)


def e4m3fn_to_f64(bits):
    """OCP float8 e4m3fn bits -> values (no NaN codes expected)."""
    b = np.asarray(bits, dtype=np.int64)
    sign = np.where(b >> 7, -1.0, 1.0)
    e = (b >> 3) & 0xF
    m = (b & 7).astype(np.float64)
    mag = np.where(e == 0, m / 8.0 * 2.0**-6, (1.0 + m / 8.0) * np.exp2(e - 7.0))
    return sign * mag


def paged_case(
    *,
    seed=0,
    dtype="float16",
    num_heads=4,
    num_kv_heads=2,
    head_size=64,
    block_size=16,
    query_lens=(1, 3),
    seq_lens=(20, 9),
    sliding_window=None,
    softcap=None,
    sinks=False,
    causal=True,
    path="unified_attention",
    backend="TRITON_ATTN",
    unused_blocks=1,
    kv_cache_dtype="auto",
    kv_scales=(0.02, 0.03),
):
    rng = np.random.default_rng(seed)
    S = len(seq_lens)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    max_blocks = max(max(blocks_per_seq), 1)
    nb = 1 + sum(blocks_per_seq) + unused_blocks
    perm = rng.permutation(np.arange(1, nb))
    table = np.zeros((S, max_blocks), dtype=np.int32)
    k = 0
    for i, n in enumerate(blocks_per_seq):
        table[i, :n] = perm[k : k + n]
        k += n
    T = sum(query_lens)
    qsl = np.concatenate([[0], np.cumsum(query_lens)]).astype(np.int32)
    q_raw, q = raw_float(rng.standard_normal((T, num_heads, head_size)), dtype)
    cache_shape = (nb, block_size, num_kv_heads, head_size)
    if kv_cache_dtype == "auto":
        k_raw, kc = raw_float(rng.standard_normal(cache_shape), dtype)
        v_raw, vc = raw_float(rng.standard_normal(cache_shape), dtype)
    else:
        # raw OCP e4m3fn bits (NaN codes 0x7f/0xff left out); values = bits * scale
        kb = rng.integers(0, 0x7F, cache_shape, dtype=np.uint8) | (rng.integers(0, 2, cache_shape, dtype=np.uint8) << 7)
        vb = rng.integers(0, 0x7F, cache_shape, dtype=np.uint8) | (rng.integers(0, 2, cache_shape, dtype=np.uint8) << 7)
        k_raw, v_raw = raw(kb, "U8"), raw(vb, "U8")
        kc = e4m3fn_to_f64(kb) * kv_scales[0]
        vc = e4m3fn_to_f64(vb) * kv_scales[1]
    meta = {
        "format": FORMAT_V2,
        "op": "paged_attention",
        "dtype": dtype,
        "producer": "attnlab tests gen_cases",
        "atol": 1.5e-2,
        "rtol": 1e-2,
        "seed": seed,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_size": head_size,
        "block_size": block_size,
        "scale": head_size**-0.5,
        "causal": causal,
        "sliding_window": sliding_window,
        "softcap": softcap,
        "backend": backend,
        "path": path,
        "launch": None,
        "kv_cache_dtype": kv_cache_dtype,
        "tags": [],
    }
    tensors = {
        "query": q_raw,
        "key_cache": k_raw,
        "value_cache": v_raw,
        "block_table": raw(table, "I32"),
        "seq_lens": raw(np.asarray(seq_lens, dtype=np.int32), "I32"),
        "query_start_loc": raw(qsl, "I32"),
    }
    if kv_cache_dtype != "auto":
        tensors["k_scale"] = raw(np.array([kv_scales[0]], dtype=np.float32), "F32")
        tensors["v_scale"] = raw(np.array([kv_scales[1]], dtype=np.float32), "F32")
    sink_vals = None
    if sinks:
        sink_vals = rng.standard_normal(num_heads).astype(np.float32)
        tensors["sinks"] = raw(sink_vals, "F32")
    ref = reference_paged(meta, q, kc, vc, table, seq_lens, qsl, sink_vals)
    return meta, tensors, ref


def reference_paged(meta, q, kc, vc, table, seq_lens, qsl, sinks):
    H, Hkv, bs = meta["num_heads"], meta["num_kv_heads"], meta["block_size"]
    g = H // Hkv
    out = np.zeros(q.shape, dtype=np.float64)
    for i, L in enumerate(seq_lens):
        nq = qsl[i + 1] - qsl[i]
        pos = np.arange(L)
        K = kc[table[i, pos // bs], pos % bs]  # [L, Hkv, D]
        V = vc[table[i, pos // bs], pos % bs]
        for t in range(nq):
            p = L - nq + t
            allowed = np.ones(L, dtype=bool)
            if meta["causal"]:
                allowed &= pos <= p
            if meta["sliding_window"]:
                allowed &= pos > p - meta["sliding_window"]
            for h in range(H):
                s = K[:, h // g] @ q[qsl[i] + t, h] * meta["scale"]
                if meta["softcap"]:
                    s = meta["softcap"] * np.tanh(s / meta["softcap"])
                s = np.where(allowed, s, -np.inf)
                mx = s.max() if allowed.any() else 0.0
                if sinks is not None:
                    mx = max(mx, float(sinks[h]))
                w = np.exp(s - mx)
                den = w.sum() + (np.exp(float(sinks[h]) - mx) if sinks is not None else 0.0)
                out[qsl[i] + t, h] = (w @ V[:, h // g]) / den if den > 0 else 0.0
    return out


def merge_case(*, seed=0, dtype="float16", num_tokens=5, num_heads=2, head_size=64, inf_lse=False):
    rng = np.random.default_rng(seed)
    p_raw, po = raw_float(rng.standard_normal((num_tokens, num_heads, head_size)), dtype)
    s_raw, so = raw_float(rng.standard_normal((num_tokens, num_heads, head_size)), dtype)
    pl = rng.standard_normal((num_heads, num_tokens)).astype(np.float32) * 3
    sl = rng.standard_normal((num_heads, num_tokens)).astype(np.float32) * 3
    if inf_lse:
        pl[0, 0] = np.inf
        sl[-1, -1] = -np.inf
    meta = {
        "format": FORMAT_V2,
        "op": "merge_attn_states",
        "dtype": dtype,
        "producer": "attnlab tests gen_cases",
        "atol": 1e-3,
        "rtol": 1e-2 if dtype == "bfloat16" else 1e-3,
        "seed": seed,
        "num_heads": num_heads,
        "head_size": head_size,
        "backend": None,
        "path": "merge_attn_states",
        "launch": None,
        "tags": ["edge:inf_lse"] if inf_lse else [],
    }
    tensors = {
        "prefix_output": p_raw,
        "suffix_output": s_raw,
        "prefix_lse": raw(pl, "F32"),
        "suffix_lse": raw(sl, "F32"),
    }
    a = np.where(np.isposinf(pl), -np.inf, pl).astype(np.float64)
    b = np.where(np.isposinf(sl), -np.inf, sl).astype(np.float64)
    m = np.maximum(a, b)
    wa, wb = np.exp(a - m), np.exp(b - m)
    ref = (po * (wa / (wa + wb)).T[:, :, None]) + (so * (wb / (wa + wb)).T[:, :, None])
    return meta, tensors, ref


def mla_case(*, seed=0, dtype="float16", num_heads=16, kv_lora_rank=512, rope=64, block_size=16, seq_lens=(5, 33)):
    rng = np.random.default_rng(seed)
    S = len(seq_lens)
    per = [-(-s // block_size) for s in seq_lens]
    nb = 1 + sum(per)
    table = np.zeros((S, max(per)), dtype=np.int32)
    perm = rng.permutation(np.arange(1, nb))
    k = 0
    for i, n in enumerate(per):
        table[i, :n] = perm[k : k + n]
        k += n
    width = kv_lora_rank + rope
    q_raw, q = raw_float(rng.standard_normal((S, num_heads, width)) * 0.3, dtype)
    kv_raw, kv = raw_float(rng.standard_normal((nb, block_size, width)) * 0.3, dtype)
    scale = 1.0 / np.sqrt(192.0)
    meta = {
        "format": FORMAT_V2,
        "op": "mla_decode",
        "dtype": dtype,
        "producer": "attnlab tests gen_cases",
        "atol": 2e-2,
        "rtol": 2e-2,
        "seed": seed,
        "num_heads": num_heads,
        "kv_lora_rank": kv_lora_rank,
        "qk_rope_head_dim": rope,
        "block_size": block_size,
        "scale": scale,
        "num_kv_splits": None,
        "backend": "TRITON_MLA",
        "path": "decode_attention_fwd",
        "launch": None,
        "tags": [],
    }
    tensors = {
        "query": q_raw,
        "kv_cache": kv_raw,
        "block_table": raw(table, "I32"),
        "seq_lens": raw(np.asarray(seq_lens, dtype=np.int32), "I32"),
    }
    ref = np.zeros((S, num_heads, kv_lora_rank))
    for i, L in enumerate(seq_lens):
        pos = np.arange(L)
        KV = kv[table[i, pos // block_size], pos % block_size]
        for h in range(num_heads):
            s = KV @ q[i, h] * scale
            w = np.exp(s - s.max())
            ref[i, h] = (w @ KV[:, :kv_lora_rank]) / w.sum()
    return meta, tensors, ref
