"""What every adapter shares: its interface, the launch recorder and the Triton compile clock."""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field


class AdapterUnavailable(Exception):
    """The adapter cannot run here; the message is the one-line reason."""


class CaptureFailure(Exception):
    """The kernel ran (or was asked to) but the case cannot be captured as stated."""


@dataclass
class Result:
    outputs: dict  # tensor name -> torch tensor (output, output_lse)
    launch: dict
    meta_updates: dict = field(default_factory=dict)


class Adapter:
    """One kernel entry point of vLLM or AITER.

    `name` is what --adapter takes and what `capture.adapter` records; `op`,
    `paths` and `backends` say which cases it serves (a backend of None serves
    cases whose `backend` is null); `kernel` names the entry point for `producer`.
    """

    name = ""
    op = ""
    paths: tuple = ()
    backends: tuple = ()
    kernel = ""

    def availability(self, ctx):
        """None when usable, else a one-line reason (module missing, wrong platform)."""
        raise NotImplementedError

    def run(self, case, ctx) -> Result:
        raise NotImplementedError


def import_or_reason(module: str):
    """(module, None) or (None, one-line reason)."""
    try:
        return importlib.import_module(module), None
    except Exception as e:  # ImportError, or a module that fails while importing
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"cannot import {module}: {first}"


_CONSTEXPR_TYPES = (bool, int, str, type(None))


class _KernelProxy:
    """Stands in for a Triton kernel object in its module; records each launch."""

    def __init__(self, name, kernel, log):
        self._name = name
        self._kernel = kernel
        self._log = log

    def __getitem__(self, grid):
        launcher = self._kernel[grid]

        def launch(*args, **kwargs):
            entry = {"kernel": self._name}
            entry["grid"] = list(grid) if isinstance(grid, (tuple, list)) else "callable"
            for k, v in kwargs.items():
                if k.isupper() or k.startswith("num_") or k in ("x", "filter_by_query_len", "kv_group_num"):
                    if isinstance(v, _CONSTEXPR_TYPES) or hasattr(v, "value"):
                        entry[k] = v if isinstance(v, _CONSTEXPR_TYPES) else int(v)
            self._log.append(entry)
            return launcher(*args, **kwargs)

        return launch

    def __getattr__(self, item):
        return getattr(self._kernel, item)


class _CallProxy:
    """Stands in for a Python function/op in its module; records that it was called."""

    def __init__(self, name, fn, log):
        self._name = name
        self._fn = fn
        self._log = log

    def __call__(self, *args, **kwargs):
        self._log.append({"call": self._name})
        return self._fn(*args, **kwargs)

    def __getattr__(self, item):
        return getattr(self._fn, item)


class LaunchRecorder:
    """Context manager: wrap module attributes (Triton kernels or functions) to log launches.

    The wrapped attribute is looked up by the entry point at call time (a module
    global), so the log says what really ran: which kernels, their grids and the
    constexprs that select 2D vs 3D, tile and segment counts.
    """

    def __init__(self, targets):
        # targets: list of (module, attribute name, "kernel" | "call")
        self.targets = targets
        self.log = []
        self._saved = []

    def __enter__(self):
        for mod, attr, kind in self.targets:
            if not hasattr(mod, attr):
                continue
            orig = getattr(mod, attr)
            proxy = _KernelProxy(attr, orig, self.log) if kind == "kernel" else _CallProxy(attr, orig, self.log)
            self._saved.append((mod, attr, orig))
            setattr(mod, attr, proxy)
        return self

    def __exit__(self, *exc):
        for mod, attr, orig in reversed(self._saved):
            setattr(mod, attr, orig)
        self._saved.clear()
        return False

    def kernels(self):
        return [e for e in self.log if "kernel" in e]


class CompileClock:
    """Seconds spent in Triton compiles, from Triton's jit cache/post-compile hooks.

    Works with Triton's `knobs.runtime` hooks (3.4+) and the older
    `JITFunction.cache_hook`; where neither exists `available` is False and the
    capture reports compile time as unknown.
    """

    def __init__(self):
        self.seconds = 0.0
        self.compiles = 0
        self._start = []
        self.available = False
        self._restore = None

    def _pre(self, *args, **kwargs):
        self._start.append(time.perf_counter())
        return False  # never skip the compile

    def _post(self, *args, **kwargs):
        if self._start:
            self.seconds += time.perf_counter() - self._start.pop()
        self.compiles += 1
        return False

    def install(self):
        try:
            from triton import knobs

            rt = knobs.runtime
            old = (rt.jit_cache_hook, rt.jit_post_compile_hook)
            rt.jit_cache_hook = self._pre
            rt.jit_post_compile_hook = self._post

            def restore():
                rt.jit_cache_hook, rt.jit_post_compile_hook = old

            self._restore = restore
            self.available = True
            return
        except Exception:
            pass
        try:
            from triton.runtime.jit import JITFunction

            old = JITFunction.cache_hook
            JITFunction.cache_hook = self._pre

            def restore():
                JITFunction.cache_hook = old

            self._restore = restore
            self.available = True
        except Exception:
            self.available = False

    def uninstall(self):
        if self._restore:
            self._restore()
            self._restore = None
