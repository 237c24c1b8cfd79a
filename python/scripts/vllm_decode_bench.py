#!/usr/bin/env python3
"""Time vLLM 0.34's Triton decode kernel on attnlab's decode grid.

What TRITON_ATTN runs for decode in vLLM 0.34 is `unified_attention`
(vllm/v1/attention/ops/triton_unified_attention.py), 2D or 3D (split-KV over
16 softmax segments) as its own launcher picks: the backend passes
`seq_threshold_3D = 128 // num_kv_heads` (MIN_LAUNCH_GRID_SIZE_2D //
kv heads, triton_attn.py, without CUDA graphs) and scratch for that many
sequences, and the launcher takes 3D when the batch has at most that many
sequences. The kernels are imported from vLLM's source files (`.vllm-src/`,
laid out by `python3 -m attnlab_capture.vllm_src`, as the capture does), no
vLLM install needed.

Grid (the same cells as `attnlab bench --gpu`): batch {1, 8, 64, 256} x
context {1K, 8K, 32K} x heads 32/8 and 8/1, head size 128, block size 16,
bf16, NHD cache [blocks, 16, kv heads, 128] with contiguous block tables.
Inputs are random (never zeros). Each cell: warm-up, then the median of
--repeats launches timed with CUDA events. GB/s counts the bytes attnlab's
bench counts: K and V of every context token plus Q and O. The reported
median_ms is the launch captured in a CUDA graph and replayed (as vLLM
serves decode with CUDA graphs, so Python's launch path is not timed);
median_ms_eager, the plain launches, is kept beside it.

Writes {"device", "rows": [{"kernel", "batch", "context", "q_heads",
"kv_heads", "median_ms", "gbps", "tflops", "launch"}]} to --out, which
`attnlab bench --gpu --vllm FILE` prints beside its own rows.

usage: python3 python/scripts/vllm_decode_bench.py --out vllm-decode.json
       [--vllm-src .vllm-src] [--repeats 20] [--max-kv-gib 24] [--filter b64]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BATCHES = (1, 8, 64, 256)
CONTEXTS = (1024, 8192, 32768)
HEADS = ((32, 8), (8, 1))
HEAD_SIZE = 128
BLOCK = 16
MIN_LAUNCH_GRID_SIZE_2D = 128  # vllm/v1/attention/backends/triton_attn.py
NUM_PAR_SOFTMAX_SEGMENTS = 16


def label(kernel, batch, context, hq, hkv):
    """attnlab_gpu::bench::row_label."""
    return f"{kernel} b{batch} ctx{context} {hq}/{hkv}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--vllm-src", default=str(ROOT / ".vllm-src"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-kv-gib", type=float, default=24.0)
    ap.add_argument("--filter", default=None, help="only cells whose label contains one of these (comma-separated)")
    ap.add_argument("--contexts", default=None, help="comma-separated contexts instead of 1K,8K,32K (smoke tests)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run on the CPU through Triton's interpreter (set TRITON_INTERPRET=1): checks the call, times nothing useful")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "python"))
    import torch
    from attnlab_capture import vllm_src

    version = vllm_src.install(args.vllm_src)
    from vllm.v1.attention.ops.triton_unified_attention import unified_attention

    if args.cpu_smoke:
        dev = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("vllm_decode_bench: no CUDA device", file=sys.stderr)
        return 3
    else:
        dev = torch.device("cuda")
    # Triton 3.6's CPU interpreter mis-computes bf16 (garbage outputs): the smoke test runs f16.
    dtype = torch.float16 if args.cpu_smoke else torch.bfloat16
    contexts = tuple(int(c) for c in args.contexts.split(",")) if args.contexts else CONTEXTS
    torch.manual_seed(0)
    rows = []
    kernel = "vllm:unified_attention"
    for hq, hkv in HEADS:
        for batch in BATCHES:
            for ctx in contexts:
                name = label(kernel, batch, ctx, hq, hkv)
                if args.filter and not any(f in name for f in args.filter.split(",")):
                    continue
                kv_bytes = batch * ctx * hkv * HEAD_SIZE * 2 * 2
                if kv_bytes > args.max_kv_gib * (1 << 30):
                    print(f"skipped {name}: K+V {kv_bytes / (1 << 30):.0f} GiB over the cap", flush=True)
                    continue
                per = math.ceil(ctx / BLOCK)
                nblocks = batch * per
                k = torch.empty((nblocks, BLOCK, hkv, HEAD_SIZE), dtype=dtype, device=dev).uniform_(-1, 1)
                v = torch.empty_like(k).uniform_(-1, 1)
                q = torch.empty((batch, hq, HEAD_SIZE), dtype=dtype, device=dev).uniform_(-1, 1)
                out = torch.full_like(q, float("nan"))
                block_table = torch.arange(nblocks, dtype=torch.int32, device=dev).view(batch, per)
                cu_q = torch.arange(batch + 1, dtype=torch.int32, device=dev)
                seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
                threshold = MIN_LAUNCH_GRID_SIZE_2D // hkv
                rows_3d = threshold  # scratch rows: min(threshold, max_num_seqs), query len 1
                segm_out = torch.empty((rows_3d, hq, NUM_PAR_SOFTMAX_SEGMENTS, HEAD_SIZE), dtype=torch.float32, device=dev)
                segm_max = torch.empty((rows_3d, hq, NUM_PAR_SOFTMAX_SEGMENTS), dtype=torch.float32, device=dev)
                segm_sum = torch.empty_like(segm_max)
                scale_one = torch.ones((), dtype=torch.float32, device=dev)
                descale = scale_one.expand((batch, hkv))

                def launch():
                    unified_attention(
                        q=q, k=k, v=v, out=out, cu_seqlens_q=cu_q, max_seqlen_q=1, seqused_k=seq_lens,
                        max_seqlen_k=ctx, softmax_scale=1.0 / math.sqrt(HEAD_SIZE), causal=True,
                        window_size=(-1, -1), block_table=block_table, softcap=0, q_descale=None,
                        k_descale=descale, v_descale=descale, seq_threshold_3D=threshold,
                        num_par_softmax_segments=NUM_PAR_SOFTMAX_SEGMENTS, softmax_segm_output=segm_out,
                        softmax_segm_max=segm_max, softmax_segm_expsum=segm_sum,
                    )

                if args.cpu_smoke:
                    import time

                    t = time.perf_counter()
                    launch()
                    times = [(time.perf_counter() - t) * 1e3]
                    ref = torch.nn.functional.scaled_dot_product_attention(
                        q.float().unsqueeze(2),
                        k.float().view(batch, per * BLOCK, hkv, HEAD_SIZE)[:, :ctx].transpose(1, 2).repeat_interleave(hq // hkv, 1),
                        v.float().view(batch, per * BLOCK, hkv, HEAD_SIZE)[:, :ctx].transpose(1, 2).repeat_interleave(hq // hkv, 1),
                    ).squeeze(2)
                    err = ((out.float() - ref).norm() / ref.norm()).item()
                    print(f"{name}: relative error vs torch {err:.2e}", flush=True)
                    if not err < 1e-2:
                        return 1
                else:
                    for _ in range(args.warmup):
                        launch()
                    torch.cuda.synchronize()

                    def timed(run):
                        ts = []
                        for _ in range(args.repeats):
                            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                            a.record()
                            run()
                            b.record()
                            b.synchronize()
                            ts.append(a.elapsed_time(b))
                        return ts

                    eager = timed(launch)
                    # As vLLM serves decode: the launch captured in a CUDA graph and
                    # replayed, so the times are the kernels', not Python's launch path.
                    try:
                        graph = torch.cuda.CUDAGraph()
                        side = torch.cuda.Stream()
                        side.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(side):
                            launch()
                        torch.cuda.current_stream().wait_stream(side)
                        with torch.cuda.graph(graph):
                            launch()
                        graph.replay()
                        torch.cuda.synchronize()
                        times, timing = timed(graph.replay), "cuda graph"
                    except Exception as e:  # noqa: BLE001 - report and keep the eager times
                        print(f"{name}: graph capture failed ({e}); eager times", flush=True)
                        times, timing = eager, "eager"
                ms = statistics.median(times)
                moved = kv_bytes + 2 * batch * hq * HEAD_SIZE * 2
                launch_kind = "3d" if batch <= threshold else "2d"
                row = {
                    "kernel": kernel, "batch": batch, "context": ctx, "q_heads": hq, "kv_heads": hkv,
                    "median_ms": ms, "gbps": moved / (ms * 1e-3) / 1e9, "tflops": None, "launch": launch_kind,
                }
                if not args.cpu_smoke:
                    row["timing"] = timing
                    row["median_ms_eager"] = statistics.median(eager)
                rows.append(row)
                extra = f" (eager {row['median_ms_eager']:.4f} ms)" if "median_ms_eager" in row else ""
                print(f"{name} ({launch_kind}): {ms:.4f} ms {row['gbps']:.0f} GB/s{extra}", flush=True)
                del k, v, q, out, segm_out, segm_max, segm_sum
                if not args.cpu_smoke:
                    torch.cuda.empty_cache()
    report = {"device": "cpu (smoke)" if args.cpu_smoke else torch.cuda.get_device_name(0), "vllm": version, "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
