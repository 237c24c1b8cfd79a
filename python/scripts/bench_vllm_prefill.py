#!/usr/bin/env python3
"""Time vLLM's Triton `unified_attention` on the prefill shapes of `attnlab bench --gpu`.

Runs on the GPU machine, in the same device call as `attnlab bench --gpu`, so
the two sets of numbers come from one card. vLLM's kernel file is imported
from an extracted vLLM source tree (`--vllm-src`, default `.vllm-src`) the way
the capture does (`attnlab_capture.vllm_src.install`): no vLLM install needed,
nothing of vLLM copied here.

Shapes (attnlab's tensor-core prefill rows): one sequence of T tokens, causal,
32 query / 8 KV heads, head size 128, bf16, the paged cache of TRITON_ATTN
(block size 16, K and V as the two halves of one [blocks, 16, heads, 2 * 128]
allocation), T in --tokens. Each size: --warmup launches, then --repeats
launches each timed with CUDA events, the median reported.

Output: a JSON list of rows with `attnlab bench`'s BenchRow meanings
(gpu/src/bench.rs): {"kernel": "vllm:unified_attention (prefill, causal)",
"batch": 1, "context": T, "q_heads": 32, "kv_heads": 8, "median_ms", "gbps",
"tflops", "label"}; FLOPs = 4 * d * Hq * T (T + 1) / 2 (QK^T and PV over the
visible pairs), bytes = K + V + Q + out, each once.

With --ours FILE (the `attnlab bench --gpu --json` output of the same call),
also prints each of our prefill rows of the same T beside vLLM's, with the
ratio ours / vLLM in TFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

HQ, HKV, D, BLOCK = 32, 8, 128, 16
KERNEL = "vllm:unified_attention (prefill, causal)"


def row_label(kernel: str, batch: int, context: int, hq: int, hkv: int) -> str:
    """gpu/src/bench.rs row_label."""
    return f"{kernel} b{batch} ctx{context} {hq}/{hkv}"


def time_one(tokens: int, warmup: int, repeats: int, seed: int) -> dict:
    import torch

    from vllm.v1.attention.ops import triton_unified_attention as ua

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(seed)
    bf16 = torch.bfloat16
    blocks = (tokens + BLOCK - 1) // BLOCK
    q = torch.randn((tokens, HQ, D), generator=g, device=dev, dtype=torch.float32).to(bf16)
    both = torch.randn((blocks, BLOCK, HKV, 2 * D), generator=g, device=dev, dtype=torch.float32).to(bf16)
    k, v = both[..., :D], both[..., D:]
    out = torch.empty_like(q)
    i32 = dict(dtype=torch.int32, device=dev)
    cu_q = torch.tensor([0, tokens], **i32)
    seqused_k = torch.tensor([tokens], **i32)
    block_table = torch.arange(blocks, **i32).reshape(1, blocks)
    ones = torch.ones((1, 1), dtype=torch.float32, device=dev).expand((1, HKV))

    def launch():
        ua.unified_attention(
            q=q,
            k=k,
            v=v,
            out=out,
            cu_seqlens_q=cu_q,
            max_seqlen_q=tokens,
            seqused_k=seqused_k,
            max_seqlen_k=tokens,
            softmax_scale=D**-0.5,
            causal=True,
            window_size=(-1, -1),
            block_table=block_table,
            softcap=0,
            q_descale=None,
            k_descale=ones,
            v_descale=ones,
        )

    for _ in range(max(warmup, 1)):
        launch()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(repeats, 1)):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        launch()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    ms = statistics.median(times)
    t = float(tokens)
    flops = 4.0 * D * HQ * t * (t + 1.0) / 2.0
    moved = 2 * blocks * BLOCK * HKV * D * 2 + 2 * tokens * HQ * D * 2
    if not torch.isfinite(out.float()).all():
        raise SystemExit(f"vLLM's unified_attention returned non-finite values at T={tokens}")
    return {
        "kernel": KERNEL,
        "batch": 1,
        "context": tokens,
        "q_heads": HQ,
        "kv_heads": HKV,
        "median_ms": ms,
        "gbps": moved / (ms * 1e-3) / 1e9,
        "tflops": flops / (ms * 1e-3) / 1e12,
        "label": row_label(KERNEL, 1, tokens, HQ, HKV),
        "device": torch.cuda.get_device_name(dev),
    }


def ratio_table(rows: list, ours_file: Path) -> str:
    doc = json.loads(ours_file.read_text())
    ours = doc.get("gpu", doc).get("rows", [])
    lines = [f"{'ours':<58} {'T':>6} {'ours TFLOP/s':>12} {'vLLM TFLOP/s':>12} {'ours/vLLM':>9}"]
    for r in ours:
        if r.get("tflops") is None:
            continue
        for v in rows:
            if v["context"] == r["context"] and (v["q_heads"], v["kv_heads"]) == (r["q_heads"], r["kv_heads"]):
                lines.append(
                    f"{r['kernel']:<58} {r['context']:>6} {r['tflops']:>12.1f} {v['tflops']:>12.1f} "
                    f"{r['tflops'] / v['tflops']:>9.2f}"
                )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm-src", default=str(ROOT / ".vllm-src"))
    ap.add_argument("--tokens", default="4096,8192,16384,32768")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write the rows here as JSON (else stdout)")
    ap.add_argument("--ours", help="attnlab bench --gpu --json output to compare with")
    args = ap.parse_args()

    from attnlab_capture import vllm_src

    version = vllm_src.install(args.vllm_src)
    rows = []
    for t in (int(x) for x in args.tokens.split(",") if x):
        r = time_one(t, args.warmup, args.repeats, args.seed)
        r["vllm"] = version
        rows.append(r)
        print(f"{r['label']}: {r['median_ms']:.3f} ms, {r['tflops']:.1f} TFLOP/s ({r['device']}, vLLM {version})",
              file=sys.stderr)
    text = json.dumps(rows, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    if args.ours:
        print(ratio_table(rows, Path(args.ours)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
