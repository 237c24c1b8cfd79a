"""python -m attnlab_capture DIR [--backend NAME ...] [--out DIR2] [--json] ..."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .fixture import FixtureError


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m attnlab_capture",
        description="Run vLLM's (and AITER's) kernels on attnlab cases and write their outputs into the files.",
    )
    ap.add_argument("cases", type=Path, help="a directory of case files (.safetensors, searched recursively) or one file")
    ap.add_argument("--backend", nargs="+", default=[], metavar="NAME", help="only cases whose backend is one of these (null: cases without one)")
    ap.add_argument("--out", type=Path, default=None, help="write fixtures here (same relative names); default: in place")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    ap.add_argument("--adapter", default=None, help="force one adapter by name (see --list-adapters)")
    ap.add_argument("--list-adapters", action="store_true", help="list the adapters with their availability and exit")
    ap.add_argument("--vllm-src", type=Path, default=None,
                    help="import vLLM's Triton kernels from this source tree (holding vllm/) instead of an installed vLLM; "
                    "default: $ATTNLAB_VLLM_SRC when vllm is not installed")
    ap.add_argument("--max-seconds", type=float, default=None, help="start no case after this many seconds")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu with TRITON_INTERPRET=1)")
    ap.add_argument("--eager", action="store_true",
                    help="model vLLM without CUDA graphs (TRITON_ATTN's 2D/3D threshold is then 128 // kv_heads, "
                    "not the nearest capture size)")
    ap.add_argument("--max-num-seqs", type=int, default=256, help="vLLM's max_num_seqs (sizes the split-KV scratch)")
    ap.add_argument("--num-speculative-tokens", type=int, default=0, help="vLLM's speculative tokens (3D query length)")
    ap.add_argument("--mla-num-kv-splits", choices=("auto", "case"), default="auto",
                    help="TRITON_MLA splits: vLLM's rule (auto) or the case's num_kv_splits")
    ap.add_argument("--aiter-shuffle-kv", action="store_true",
                    help="model VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1 (AITER's shuffled KV layout)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="run N capture processes on the GPU at once, each on a contiguous shard of the run order "
                    "(Triton compiles in parallel; cases sharing kernel constants stay in one shard)")
    ap.add_argument("--shard-list", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--check-cache-writer", action="store_true",
                    help="also rewrite each paged case's new tokens with vLLM's triton_reshape_and_cache_flash "
                    "and record in launch.cache_writer whether the bytes match")
    return ap.parse_args(argv)


def setup_vllm(src):
    """Use an installed vllm; else the source tree from --vllm-src / $ATTNLAB_VLLM_SRC. Returns a note."""
    if src is None and os.environ.get("ATTNLAB_VLLM_SRC"):
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            src = Path(os.environ["ATTNLAB_VLLM_SRC"])
    if src is None:
        return "vllm: installed package (if any)"
    from .vllm_src import VllmSourceError, install

    try:
        version = install(src)
    except VllmSourceError as e:
        raise SystemExit(f"error: {e}") from None
    return f"vllm {version}: kernels from source tree {src}"


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    note = setup_vllm(args.vllm_src)
    print(note, file=sys.stderr)
    policy = {
        "cudagraph": not args.eager,
        "max_num_seqs": args.max_num_seqs,
        "num_speculative_tokens": args.num_speculative_tokens,
        "mla_num_kv_splits": args.mla_num_kv_splits,
        "aiter_shuffle_kv": args.aiter_shuffle_kv,
    }
    if args.list_adapters:
        from .adapters import all_adapters
        from .capture import Context

        try:
            import torch

            dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except Exception:
            dev = None
        ctx = Context(dev, policy)
        for a in all_adapters():
            reason = a.availability(ctx) if dev is not None else "torch is not importable"
            print(f"{a.name:36s} {a.op:18s} {'ok' if not reason else 'skip: ' + reason}")
        return 0
    from .capture import Options, run_capture

    files = None
    if args.shard_list is not None:
        files = [line for line in args.shard_list.read_text().splitlines() if line]
    opts = Options(
        out_dir=args.out,
        backends=args.backend,
        adapter=args.adapter,
        max_seconds=args.max_seconds,
        policy=policy,
        check_cache_writer=args.check_cache_writer,
        device=args.device,
        files=files,
    )
    try:
        if args.jobs > 1 and files is None:
            summary = run_parallel(args, opts, sys.argv[1:] if argv is None else argv)
        else:
            summary = run_capture(args.cases, opts)
    except FixtureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary["vllm_note"] = note
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        print(
            f"{summary['cases']} cases: {summary['captured']} captured, {summary['capture_errors']} capture errors, "
            f"{summary['invalid']} invalid, {summary['skipped']} skipped, {summary['not_run_time_budget']} not run "
            f"(time budget), {summary['filtered_out']} filtered out; compile {summary['compile_seconds']} s, "
            f"kernels {summary['kernel_seconds']} s, wall {summary['wall_seconds']} s"
        )
        if summary.get("unfinished"):
            print(f"  {len(summary['unfinished'])} cases unfinished: the GPU context broke (rerun them, or use --jobs)")
        for reason, n in summary["skip_reasons"].items():
            print(f"  skipped {n}: {reason}")
        for key, n in sorted(summary["launch_grids"].items()):
            print(f"  launch {key}: {n}")
    return 1 if summary["invalid"] else 0


def run_parallel(args, opts, argv):
    """Plan here, then run --jobs child captures on contiguous shards of the run order."""
    import subprocess
    import tempfile
    import time

    from .capture import merge_summaries, plan_only

    t0 = time.perf_counter()
    summary, files = plan_only(args.cases, opts)
    jobs = max(1, min(args.jobs, len(files)))
    shards = [files[len(files) * i // jobs : len(files) * (i + 1) // jobs] for i in range(jobs)]
    # the child's arguments: ours without --jobs/--json/--max-seconds, plus its shard
    child_args, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        if a in ("--jobs", "--max-seconds"):
            skip = 1
            continue
        if a.startswith("--jobs=") or a.startswith("--max-seconds=") or a == "--json":
            continue
        child_args.append(a)
    tmp = Path(tempfile.mkdtemp(prefix="attnlab-shards-"))

    def start(tag, shard):
        lst = tmp / f"shard-{tag}.txt"
        lst.write_text("\n".join(shard) + "\n")
        cmd = [sys.executable, "-m", "attnlab_capture", *child_args, "--shard-list", str(lst), "--json"]
        if args.max_seconds is not None:
            cmd += ["--max-seconds", str(max(0.0, args.max_seconds - (time.perf_counter() - t0)))]
        out = open(tmp / f"shard-{tag}.json", "w")
        return subprocess.Popen(cmd, stdout=out, env=dict(os.environ, ATTNLAB_SHARD=str(tag))), out, tag, shard

    running = [start(str(i), shard) for i, shard in enumerate(shards)]
    parts, restarts = [], 0
    while running:
        proc, out, tag, shard = running.pop(0)
        rc = proc.wait()
        out.close()
        try:
            part = json.loads((tmp / f"shard-{tag}.json").read_text())
        except (OSError, json.JSONDecodeError):
            summary["errors"].append({"file": f"shard {tag}", "error": f"capture process exited {rc} without a summary"})
            continue
        parts.append(part)
        rest = part.get("unfinished") or []
        if rest and restarts < 4 * jobs:
            # the shard's GPU context broke on one case (recorded); the rest go on in a new process
            restarts += 1
            part["unfinished"] = []
            running.append(start(f"{tag}r{restarts}", rest))
    merge_summaries(summary, parts)
    summary["restarts"] = restarts
    summary["jobs"] = jobs
    summary["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return summary


if __name__ == "__main__":
    sys.exit(main())
