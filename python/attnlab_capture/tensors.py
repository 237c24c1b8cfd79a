"""Case tensors <-> torch tensors, and the cache layouts vLLM's backends hand their kernels."""

from __future__ import annotations

from .fixture import RawTensor

_TAG_TO_TORCH = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_TORCH_TO_TAG = {v: k for k, v in _TAG_TO_TORCH.items()}


def to_torch(raw: RawTensor, device):
    import torch

    dtype = getattr(torch, _TAG_TO_TORCH[raw.dtype])
    if raw.numel == 0:
        return torch.empty(raw.shape, dtype=dtype, device=device)
    flat = torch.frombuffer(bytearray(raw.data), dtype=torch.uint8)
    return flat.view(dtype).reshape(raw.shape).to(device)


def from_torch(t) -> RawTensor:
    name = str(t.dtype).replace("torch.", "")
    if name not in _TORCH_TO_TAG:
        raise TypeError(f"cannot store torch dtype {t.dtype} in a fixture")
    import ctypes

    cpu = t.detach().contiguous().cpu()
    # bytes straight from the storage: no numpy needed
    data = ctypes.string_at(cpu.data_ptr(), cpu.numel() * cpu.element_size()) if cpu.numel() else b""
    return RawTensor(_TORCH_TO_TAG[name], tuple(cpu.shape), data)


def torch_dtype(fixture_dtype: str):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[fixture_dtype]


def fp8_torch_dtype(kv_cache_dtype: str):
    import torch

    return {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e4m3fnuz": torch.float8_e4m3fnuz}[kv_cache_dtype]


def dequant_cache(cache_u8, kv_cache_dtype, scale, dtype):
    """Raw fp8 bits (U8) -> values in `dtype`, as `x * scale` in f32 then rounded."""
    import torch

    return (cache_u8.view(fp8_torch_dtype(kv_cache_dtype)).to(torch.float32) * scale.to(torch.float32)).to(dtype)


def gather_new_tokens(cache_nhd, block_table, seq_lens, query_start_loc):
    """K or V rows of each sequence's new (query) tokens, [num_tokens, heads, head_size].

    The case's caches already hold the new tokens (the producer ran after
    reshape_and_cache), so the `key`/`value` a backend receives for them are the
    cache rows at positions seq_len - q_len .. seq_len - 1.
    """
    import torch

    bs = cache_nhd.shape[1]
    rows = []
    qsl = query_start_loc.tolist()
    sl = seq_lens.tolist()
    bt = block_table.cpu().tolist()
    for i in range(len(sl)):
        q = qsl[i + 1] - qsl[i]
        for pos in range(sl[i] - q, sl[i]):
            rows.append((int(bt[i][pos // bs]), pos % bs))
    if not rows:
        return cache_nhd.new_empty((0,) + tuple(cache_nhd.shape[2:]))
    blocks = torch.tensor([r[0] for r in rows], device=cache_nhd.device)
    offs = torch.tensor([r[1] for r in rows], device=cache_nhd.device)
    return cache_nhd[blocks, offs]


def slot_mapping_for_new_tokens(block_table, seq_lens, query_start_loc, block_size):
    """vLLM's slot_mapping (block * block_size + offset) of the new tokens."""
    qsl = query_start_loc.tolist()
    sl = seq_lens.tolist()
    bt = block_table.cpu().tolist()
    slots = []
    for i in range(len(sl)):
        q = qsl[i + 1] - qsl[i]
        for pos in range(sl[i] - q, sl[i]):
            slots.append(int(bt[i][pos // block_size]) * block_size + pos % block_size)
    return slots


def triton_attn_cache_views(key_nhd, value_nhd):
    """TRITON_ATTN's caches: one [blocks, block_size, kv_heads, 2 * head_size] allocation
    (vLLM's default NHD layout of the logical (B, H, N, 2*hs) cache), split into K and V
    views, as `kv_cache.transpose(1, 2).split(head_size, dim=-1)` gives them."""
    import torch

    nb, bs, hkv, d = key_nhd.shape
    both = torch.empty((nb, bs, hkv, 2 * d), dtype=key_nhd.dtype, device=key_nhd.device)
    both[..., :d] = key_nhd
    both[..., d:] = value_nhd
    return both[..., :d], both[..., d:], both


def rocm_attn_cache_views(key_nhd, value_nhd):
    """ROCM_ATTN's caches (PagedAttention.split_kv_cache): K as
    [blocks, kv_heads, head_size / x, block_size, x] and V as
    [blocks, kv_heads, head_size, block_size], x = 16 bytes / element size,
    each side a dense plane of one [2, blocks, ...] allocation."""
    import torch

    nb, bs, hkv, d = key_nhd.shape
    x = 16 // key_nhd.element_size()
    if d % x:
        raise ValueError(f"head_size {d} is not a multiple of x = {x} (16 bytes / element) that ROCM_ATTN's key layout needs")
    planes = torch.empty((2, nb, bs * hkv * d), dtype=key_nhd.dtype, device=key_nhd.device)
    k5 = planes[0].view(nb, hkv, d // x, bs, x)
    v4 = planes[1].view(nb, hkv, d, bs)
    k5.copy_(key_nhd.reshape(nb, bs, hkv, d // x, x).permute(0, 2, 3, 1, 4))
    v4.copy_(value_nhd.permute(0, 2, 3, 1))
    return k5, v4, planes
