"""The capture loop: read cases, pick adapters, run the kernels, write fixtures."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .adapters import all_adapters, case_path, select_adapter
from .adapters.base import CaptureFailure, CompileClock
from .fixture import FORMAT_V2, FixtureError, list_case_files, read_case, write_case
from .validate import validate_case


@dataclass
class Options:
    out_dir: Path | None = None  # None: rewrite the case files in place
    backends: list = field(default_factory=list)  # only cases whose `backend` is one of these
    adapter: str | None = None  # force an adapter by name
    max_seconds: float | None = None  # stop starting cases after this many seconds
    policy: dict = field(default_factory=dict)  # vLLM configuration the launch plans follow
    check_cache_writer: bool = False
    progress_seconds: float = 5.0
    device: str | None = None  # "cuda" / "cpu"; default: cuda if present
    files: list | None = None  # run exactly these case files (a shard); None: every file under the directory


class Context:
    """What adapters get besides the case: the device and the vLLM configuration."""

    def __init__(self, device, policy):
        self.device = device
        self.policy = policy


def _first_line(e: BaseException, limit=600):
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    msg = f"{type(e).__name__}: {line}" if line else type(e).__name__
    return msg[:limit]


def environment(device):
    """Versions, GPU name and arch for `capture` and `producer`."""
    info = {"attnlab_capture": __version__}
    try:
        import torch

        info["torch"] = torch.__version__
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            info["gpu"] = props.name
            if getattr(torch.version, "hip", None):
                info["arch"] = getattr(props, "gcnArchName", "gfx?").split(":")[0]
                info["rocm"] = torch.version.hip
            else:
                info["arch"] = f"sm_{props.major}{props.minor}"
                info["cuda"] = torch.version.cuda
        else:
            info["gpu"] = "cpu"
            info["arch"] = "triton-interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "cpu"
    except Exception:
        info["torch"] = None
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    vllm = sys.modules.get("vllm")
    if vllm is None:
        try:
            import vllm  # noqa: F401

            vllm = sys.modules.get("vllm")
        except Exception:
            vllm = None
    if vllm is not None:
        info["vllm"] = getattr(vllm, "__version__", "unknown")
        src = getattr(vllm, "__attnlab_src__", None)
        info["vllm_source"] = f"source tree {src}" if src else "installed"
        try:
            vt = getattr(sys.modules.get("vllm._version"), "__version_tuple__", None)
            if vt and len(vt) > 3:
                info["vllm_commit"] = str(vt[3])
        except Exception:
            pass
    aiter = sys.modules.get("aiter")
    if aiter is not None:
        info["aiter"] = getattr(aiter, "__version__", "unknown")
    return info


def order_key(case, adapter_name):
    """Cases sharing Triton constexprs run back to back, so each variant compiles once."""
    m = case.meta
    t = case.tensors
    return (
        adapter_name,
        case_path(case),
        m.get("dtype", ""),
        m.get("kv_cache_dtype") or "auto",
        m.get("head_size") or m.get("kv_lora_rank") or 0,
        m.get("num_heads", 0),
        m.get("num_kv_heads", 0),
        m.get("block_size", 0),
        m.get("sliding_window") or 0,
        bool(m.get("softcap")),
        "sinks" in t,
        "alibi_slopes" in t,
        bool(m.get("causal", True)),
        str(case.path),
    )


def _resolve_device(opts):
    import torch

    if opts.device:
        return torch.device(opts.device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _out_path(case_file: Path, root: Path, opts: Options) -> Path:
    if opts.out_dir is None:
        return case_file
    rel = case_file.relative_to(root) if root.is_dir() else Path(case_file.name)
    dest = opts.out_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def _write_error(case, dest, message, env, adapter_name=None):
    meta = dict(case.meta)
    meta["format"] = FORMAT_V2
    meta["capture_error"] = message
    meta["capture"] = {**_capture_meta(env), "adapter": adapter_name}
    meta.setdefault("launch", None)
    tensors = {k: v for k, v in case.tensors.items() if k not in ("output", "output_lse")}
    write_case(dest, meta, tensors)


def _capture_meta(env):
    keys = ("vllm", "vllm_commit", "vllm_source", "aiter", "torch", "triton", "gpu", "arch", "attnlab_capture")
    return {k: env[k] for k in keys if env.get(k) is not None}


def run_capture(case_dir, opts: Options, adapters=None, log=None):
    """Capture every case under `case_dir`; returns the summary dict (see README of the chapter)."""
    prefix = f"[shard {os.environ['ATTNLAB_SHARD']}] " if os.environ.get("ATTNLAB_SHARD") else ""
    log = log or (lambda msg: print(prefix + msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    root = Path(case_dir)
    summary = _empty_summary()
    files = [Path(f) for f in opts.files] if opts.files is not None else list_case_files(root)
    summary["cases"] = len(files)
    return _run(files, root, opts, adapters, log, t_start, summary)


def _empty_summary():
    return {
        "cases": 0,
        "captured": 0,
        "capture_errors": 0,
        "invalid": 0,
        "skipped": 0,
        "not_run_time_budget": 0,
        "filtered_out": 0,
        "skip_reasons": {},
        "errors": [],
        "by_adapter": {},
        "launch_grids": {},
        "compile_seconds": None,
        "compiles": None,
        "kernel_seconds": 0.0,
        "wall_seconds": 0.0,
        "unfinished": [],
    }


def _run(files, root, opts, adapters, log, t_start, summary):
    adapters = all_adapters() if adapters is None else adapters
    try:
        import torch  # noqa: F401
    except Exception as e:
        reason = f"torch is not importable ({_first_line(e)})"
        summary["skipped"] = len(files)
        summary["skip_reasons"][reason] = len(files)
        log(f"skip all {len(files)} cases: {reason}")
        summary["wall_seconds"] = time.perf_counter() - t_start
        return summary

    device = _resolve_device(opts)
    ctx = Context(device, opts.policy)
    env = environment(device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        reason = "no GPU: Triton kernels need one (or TRITON_INTERPRET=1 to run them on the CPU)"
        summary["skipped"] = len(files)
        summary["skip_reasons"][reason] = len(files)
        log(f"skip all {len(files)} cases: {reason}")
        summary["wall_seconds"] = time.perf_counter() - t_start
        return summary

    work = _plan(files, root, opts, adapters, ctx, env, summary, log)
    _execute(work, root, opts, ctx, env, summary, log, t_start)
    summary["environment"] = env
    return summary


def _plan(files, root, opts, adapters, ctx, env, summary, log):
    """Read, validate and pick an adapter for each file; the runnable cases in run order."""
    work = []
    availability = {}
    for f in files:
        try:
            case = read_case(f)
        except FixtureError as e:
            summary["invalid"] += 1
            summary["errors"].append({"file": str(f), "error": str(e)})
            log(f"invalid: {e}")
            continue
        if opts.backends and (case.meta.get("backend") or "null") not in opts.backends:
            summary["filtered_out"] += 1
            continue
        try:
            validate_case(case)
        except FixtureError as e:
            summary["invalid"] += 1
            summary["errors"].append({"file": str(f), "error": str(e)})
            log(f"invalid: {e}")
            _write_error(case, _out_path(f, root, opts), f"invalid case: {e.detail}", env)
            continue
        adapter, reason = select_adapter(case, adapters, opts.adapter)
        if adapter is not None:
            if adapter.name not in availability:
                availability[adapter.name] = adapter.availability(ctx)
                if availability[adapter.name]:
                    log(f"adapter {adapter.name} skipped: {availability[adapter.name]}")
            reason = availability[adapter.name]
            if reason:
                reason = f"{adapter.name}: {reason}"
        if reason:
            summary["skipped"] += 1
            summary["skip_reasons"][reason] = summary["skip_reasons"].get(reason, 0) + 1
            continue
        work.append((order_key(case, adapter.name), case, adapter))
    work.sort(key=lambda w: w[0])
    return work


def _execute(work, root, opts, ctx, env, summary, log, t_start):
    device = ctx.device

    writer_check = None
    if opts.check_cache_writer:
        from .adapters.vllm_kernels import VllmCacheWriterCheck

        writer_check = VllmCacheWriterCheck()
        r = writer_check.availability(ctx)
        if r:
            log(f"cache-writer check skipped: {r}")
            writer_check = None

    # 2. run
    clock = CompileClock()
    clock.install()
    last_progress = time.perf_counter()
    total = len(work)
    try:
        for i, (_, case, adapter) in enumerate(work):
            now = time.perf_counter()
            if opts.max_seconds is not None and now - t_start > opts.max_seconds:
                summary["not_run_time_budget"] = total - i
                log(f"time budget of {opts.max_seconds:.0f} s spent: {total - i} cases not run")
                break
            dest = _out_path(case.path, root, opts)
            stats = summary["by_adapter"].setdefault(adapter.name, {"captured": 0, "capture_errors": 0})
            t0 = time.perf_counter()
            compiled_before = clock.seconds
            try:
                result = adapter.run(case, ctx)
                if device.type == "cuda":
                    import torch

                    torch.cuda.synchronize(device)
                if writer_check is not None and case.op == "paged_attention":
                    try:
                        result.launch["cache_writer"] = writer_check.check(case, ctx)
                    except Exception as e:  # the check is information; the capture stands
                        result.launch["cache_writer"] = {"error": _first_line(e)}
            except Exception as e:
                msg = _first_line(e)
                if not isinstance(e, CaptureFailure):
                    msg = f"{adapter.name} raised {msg}"
                summary["capture_errors"] += 1
                stats["capture_errors"] += 1
                if len(summary["errors"]) < 200:
                    summary["errors"].append({"file": str(case.path), "error": msg})
                _write_error(case, dest, msg, env, adapter.name)
                if device.type == "cuda" and not _device_healthy(device):
                    # a sticky error (illegal address, ...) poisons this process's
                    # context: the rest must run in a fresh process (--jobs respawns)
                    rest = [str(w[1].path) for w in work[i + 1 :]]
                    summary["unfinished"] = rest
                    log(f"the GPU context is broken after {case.path.name} ({msg}); {len(rest)} cases left for a fresh process")
                    break
            else:
                _write_result(case, dest, adapter, result, env)
                summary["captured"] += 1
                stats["captured"] += 1
                g = result.launch.get("grid")
                if g:
                    key = f"{adapter.name}:{g}"
                    summary["launch_grids"][key] = summary["launch_grids"].get(key, 0) + 1
            dt = time.perf_counter() - t0
            summary["kernel_seconds"] += max(0.0, dt - (clock.seconds - compiled_before))
            if time.perf_counter() - last_progress >= opts.progress_seconds or i + 1 == total:
                last_progress = time.perf_counter()
                comp = f"{clock.seconds:.1f} s in {clock.compiles} compiles" if clock.available else "compile time unknown"
                log(
                    f"[{i + 1}/{total}] captured {summary['captured']}, errors {summary['capture_errors']}, "
                    f"{time.perf_counter() - t_start:.1f} s ({comp})"
                )
    finally:
        clock.uninstall()
    if clock.available:
        summary["compile_seconds"] = round(clock.seconds, 3)
        summary["compiles"] = clock.compiles
    summary["kernel_seconds"] = round(summary["kernel_seconds"], 3)
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 3)


def _device_healthy(device) -> bool:
    import torch

    try:
        torch.cuda.synchronize(device)
        torch.zeros(1, device=device).add_(1).item()
        return True
    except Exception:
        return False


def _write_result(case, dest, adapter, result, env):
    from .tensors import from_torch

    meta = dict(case.meta)
    meta["format"] = FORMAT_V2
    meta.pop("capture_error", None)
    meta.update(result.meta_updates)
    meta["launch"] = result.launch
    meta["capture"] = {**_capture_meta(env), "adapter": adapter.name}
    vllm = env.get("vllm_commit") or env.get("vllm")
    meta["producer"] = f"{adapter.kernel} (vllm {vllm}) on {env.get('gpu')} {env.get('arch')}"
    tensors = {k: v for k, v in case.tensors.items() if k not in ("output", "output_lse")}
    for name, t in result.outputs.items():
        tensors[name] = from_torch(t)
    write_case(dest, meta, tensors)


def plan_only(case_dir, opts: Options, adapters=None, log=None):
    """The selection pass alone (no kernel runs): (summary, [case files in run order]).

    Used by --jobs to split the runnable cases into contiguous shards of the run
    order, so that cases sharing kernel constants stay in one process.
    """
    import torch

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    root = Path(case_dir)
    summary = _empty_summary()
    files = list_case_files(root)
    summary["cases"] = len(files)
    ctx = Context(torch.device("cpu"), opts.policy)
    env = environment(torch.device("cpu"))
    # invalid cases get their capture_error here; the shards never see them
    work = _plan(files, root, opts, all_adapters() if adapters is None else adapters, ctx, env, summary, log)
    return summary, [str(w[1].path) for w in work]


def merge_summaries(base, parts):
    """Add the shards' counts to the planning pass's summary."""
    for part in parts:
        for k in ("captured", "capture_errors", "not_run_time_budget", "kernel_seconds"):
            base[k] = round(base[k] + part.get(k, 0), 3)
        for k in ("compile_seconds", "compiles"):
            if part.get(k) is not None:
                base[k] = round((base.get(k) or 0) + part[k], 3)
        for k in ("launch_grids", "skip_reasons"):
            for key, n in part.get(k, {}).items():
                base[k][key] = base[k].get(key, 0) + n
        for name, st in part.get("by_adapter", {}).items():
            dst = base["by_adapter"].setdefault(name, {"captured": 0, "capture_errors": 0})
            for kk, n in st.items():
                dst[kk] = dst.get(kk, 0) + n
        base["errors"].extend(part.get("errors", [])[:200])
        base["unfinished"].extend(part.get("unfinished", []))
        base["skipped"] += part.get("skipped", 0)
        base["invalid"] += part.get("invalid", 0)
        if "environment" in part:
            base["environment"] = part["environment"]
    return base
