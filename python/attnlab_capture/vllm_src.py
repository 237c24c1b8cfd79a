"""Import vLLM's pure-Triton kernel modules from an extracted source tree.

A vLLM source distribution (or a copy of its `vllm/**/*.py`) has the Triton
kernels the attention backends call, but importing them normally runs
`vllm/__init__.py`, which pulls in the whole engine and the compiled `_C`
extension. `install(src)` instead registers a bare `vllm` package whose
`__path__` is `src/vllm`, so `vllm.v1.attention.ops.<kernel>` loads straight
from the source, and puts small stand-ins in `sys.modules` for the few engine
modules those kernel files import at module level:

- `vllm.logger`: `init_logger` with the `*_once` helpers;
- `vllm.platforms` (+ `.rocm`): `current_platform` answering from torch's view
  of the GPU (CUDA capability, SM count, the platform fp8 dtype); on a machine
  without a GPU (Triton's interpreter) it answers as an sm_90 device would;
- `vllm.triton_utils`: `triton` and `tl` themselves;
- `vllm.v1.kv_cache_interface`, `...quantization.utils.quant_utils`: the
  definitions the kernels use (`KVQuantMode`, `get_fp8_min_max`) are read from
  the source tree itself (evaluated from its text, not copied here);
- `vllm._custom_ops`: empty; compiled ops are not in a source tree, so callers
  that need them report it.

Nothing of vLLM is copied into this package: every kernel and every definition
comes from the tree the user points at. Use only on machines without an
installed vLLM (the real package is always preferred by the capture).
"""

from __future__ import annotations

import ast
import enum
import logging
import sys
import types
from pathlib import Path

KERNEL_MODULES = (
    "vllm/v1/attention/ops/triton_unified_attention.py",
    "vllm/v1/attention/ops/triton_attention_helpers.py",
    "vllm/v1/attention/ops/chunked_prefill_paged_decode.py",
    "vllm/v1/attention/ops/prefix_prefill.py",
    "vllm/v1/attention/ops/triton_merge_attn_states.py",
    "vllm/v1/attention/ops/merge_attn_states.py",
    "vllm/v1/attention/ops/triton_decode_attention.py",
    "vllm/v1/attention/ops/triton_reshape_and_cache_flash.py",
)
# files whose definitions the stand-ins evaluate
DEFINITION_SOURCES = (
    "vllm/v1/kv_cache_interface.py",
    "vllm/model_executor/layers/quantization/utils/quant_utils.py",
    "vllm/envs.py",  # loaded as is (standard library only)
)
# package __init__ files on the way to the kernels (all empty in vLLM's tree)
PACKAGE_INITS = (
    "vllm/v1/__init__.py",
    "vllm/v1/attention/__init__.py",
    "vllm/v1/attention/ops/__init__.py",
)
VERSION_SOURCES = ("vllm/_version.py", "PKG-INFO")


def needed_files() -> list:
    """Paths (relative to the source root) that `install` reads."""
    return list(KERNEL_MODULES + DEFINITION_SOURCES + PACKAGE_INITS + VERSION_SOURCES)


class VllmSourceError(Exception):
    pass


_installed_root = None


def installed_root():
    return _installed_root


def _src_version(root: Path) -> str:
    vfile = root / "vllm" / "_version.py"
    if vfile.is_file():
        for node in ast.parse(vfile.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in ("__version__", "version") for t in node.targets
            ):
                if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                    return node.value.value
    pkg = root / "PKG-INFO"
    if pkg.is_file():
        for line in pkg.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _eval_definitions(path: Path, names, namespace: dict) -> dict:
    """Evaluate the top-level classes/functions/assignments `names` of a source file.

    Only the named definitions run, in `namespace` (which supplies what they
    reference), so a module with heavy imports can still lend one enum or helper.
    """
    if not path.is_file():
        raise VllmSourceError(f"{path} is missing from the vLLM source tree")
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = set(names)
    picked = []
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in wanted:
            picked.append(node)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in wanted for t in node.targets):
            picked.append(node)
    found = {n.name if hasattr(n, "name") else n.targets[0].id for n in picked}
    missing = wanted - found
    if missing:
        raise VllmSourceError(f"{path} defines no {', '.join(sorted(missing))} (is this vLLM's tree?)")
    mod = ast.Module(body=picked, type_ignores=[])
    exec(compile(mod, str(path), "exec"), namespace)
    return namespace


class _OnceLogger(logging.LoggerAdapter):
    _seen: set = set()

    def _once(self, level, msg, *args, **kwargs):
        kwargs.pop("scope", None)
        key = (level, msg, args)
        if key in self._seen:
            return
        self._seen.add(key)
        self.log(level, msg, *args, **kwargs)

    def debug_once(self, msg, *args, **kwargs):
        self._once(logging.DEBUG, msg, *args, **kwargs)

    def info_once(self, msg, *args, **kwargs):
        self._once(logging.INFO, msg, *args, **kwargs)

    def warning_once(self, msg, *args, **kwargs):
        self._once(logging.WARNING, msg, *args, **kwargs)


def _init_logger(name):
    return _OnceLogger(logging.getLogger(name), {})


class _Capability(tuple):
    """(major, minor) with vLLM's DeviceCapability helpers."""

    def __new__(cls, major, minor):
        return super().__new__(cls, (major, minor))

    @property
    def major(self):
        return self[0]

    @property
    def minor(self):
        return self[1]

    def to_int(self):
        return self[0] * 10 + self[1]

    def as_version_str(self):
        return f"{self[0]}.{self[1]}"


class Platform:
    """What the kernel modules ask `current_platform`, answered from torch."""

    def __init__(self):
        import torch

        self._torch = torch
        self._cuda = torch.cuda.is_available()
        self._hip = self._cuda and getattr(torch.version, "hip", None) is not None
        self._gcn = ""
        if self._hip:
            props = torch.cuda.get_device_properties(0)
            self._gcn = getattr(props, "gcnArchName", "").split(":")[0]

    # device kind
    def is_cuda(self):
        return self._cuda and not self._hip

    def is_rocm(self):
        return self._hip

    def is_xpu(self):
        return False

    def is_cpu(self):
        return False

    def is_cuda_alike(self):
        return self._cuda

    # capability (interpreter runs answer as an sm_90 device)
    def get_device_capability(self, device_id=0):
        if self._cuda and not self._hip:
            return _Capability(*self._torch.cuda.get_device_capability(device_id))
        if self._hip:
            return _Capability(*self._torch.cuda.get_device_capability(device_id))
        return _Capability(9, 0)

    def _as_cap(self, capability):
        if isinstance(capability, int):
            return _Capability(capability // 10, capability % 10)
        return _Capability(*capability)

    def has_device_capability(self, capability, device_id=0):
        return tuple(self.get_device_capability(device_id)) >= tuple(self._as_cap(capability))

    def is_device_capability(self, capability, device_id=0):
        return tuple(self.get_device_capability(device_id)) == tuple(self._as_cap(capability))

    def is_device_capability_family(self, capability, device_id=0):
        return self.get_device_capability(device_id).to_int() // 10 == capability // 10

    def get_device_name(self, device_id=0):
        if self._cuda:
            return self._torch.cuda.get_device_name(device_id)
        return "cpu (triton interpreter)"

    def num_compute_units(self, device_id=0):
        if self._cuda:
            return self._torch.cuda.get_device_properties(device_id).multi_processor_count
        return 132

    # fp8: OCP e4m3fn everywhere but gfx942 (MI300), which uses e4m3fnuz
    def is_fp8_fnuz(self):
        return self._hip and self._gcn.startswith("gfx94")

    def fp8_dtype(self):
        t = self._torch
        return t.float8_e4m3fnuz if self.is_fp8_fnuz() else t.float8_e4m3fn


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    m.__attnlab_stub__ = True
    return m


def _package(name, path):
    m = _module(name)
    m.__path__ = [str(path)] if path is not None else []
    return m


def install(src) -> str:
    """Make `import vllm.v1.attention.ops.<kernel>` load from `src`; returns the version.

    `src` is the directory holding `vllm/` (an extracted sdist, or a folder with
    only the files of `needed_files()`). Raises VllmSourceError naming the first
    missing file, or if a different vLLM is already imported.
    """
    global _installed_root
    root = Path(src).resolve()
    for rel in KERNEL_MODULES:
        if not (root / rel).is_file():
            raise VllmSourceError(f"{root / rel} is missing: not a vLLM source tree (set --vllm-src/ATTNLAB_VLLM_SRC to the folder holding vllm/)")
    if _installed_root is not None:
        if _installed_root == root:
            return sys.modules["vllm"].__version__
        raise VllmSourceError(f"vLLM sources from {_installed_root} are already in use; cannot switch to {root}")
    existing = sys.modules.get("vllm")
    if existing is not None and not getattr(existing, "__attnlab_stub__", False):
        raise VllmSourceError(f"an installed vllm ({getattr(existing, '__file__', '?')}) is already imported")
    import torch
    import triton
    import triton.language as tl

    version = _src_version(root)
    platform = Platform()
    vroot = root / "vllm"
    mods = {}
    mods["vllm"] = _package("vllm", vroot)
    mods["vllm"].__version__ = version
    mods["vllm"].__attnlab_src__ = str(root)
    mods["vllm.logger"] = _module("vllm.logger", init_logger=_init_logger)
    mods["vllm.platforms"] = _package("vllm.platforms", None)
    mods["vllm.platforms"].current_platform = platform
    false = lambda *a, **k: False  # noqa: E731
    mods["vllm.platforms.rocm"] = _module(
        "vllm.platforms.rocm",
        on_gfx1100=false,
        on_gfx1201=false,
        on_gfx11=false,
        on_gfx1x=false,
        on_gfx90a=false,
        on_gfx1250=false,
        on_rdna=false,
        on_cdna=false,
        # the custom HIP paged attention exists only in a ROCm build with _C
        use_rocm_custom_paged_attention=false,
        get_cdna_version=lambda: 0,
    )
    mods["vllm.triton_utils"] = _module("vllm.triton_utils", triton=triton, tl=tl, HAS_TRITON=True)
    mods["vllm._custom_ops"] = _module("vllm._custom_ops")

    # vllm/envs.py imports only the standard library: it loads from the tree as is.

    kv_ns = _eval_definitions(vroot / "v1/kv_cache_interface.py", ["KVQuantMode"], {"IntEnum": enum.IntEnum, "StrEnum": enum.StrEnum})
    KVQuantMode = kv_ns["KVQuantMode"]

    def get_kv_quant_mode(kv_cache_dtype: str):
        if kv_cache_dtype in ("auto", "float16", "bfloat16", "float32", "half", "float"):
            return KVQuantMode.NONE
        if kv_cache_dtype.startswith("fp8"):
            return KVQuantMode.FP8_PER_TENSOR
        raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r}: the source-tree shim knows auto and fp8* only")

    mods["vllm.v1"] = _package("vllm.v1", vroot / "v1")
    mods["vllm.v1.kv_cache_interface"] = _module(
        "vllm.v1.kv_cache_interface",
        KVQuantMode=KVQuantMode,
        get_kv_quant_mode=get_kv_quant_mode,
        is_quantized_kv_cache=lambda d: get_kv_quant_mode(d) != KVQuantMode.NONE,
    )
    qu_ns = _eval_definitions(
        vroot / "model_executor/layers/quantization/utils/quant_utils.py",
        ["get_fp8_min_max"],
        {"torch": torch, "current_platform": platform},
    )
    for pkg in ("model_executor", "model_executor.layers", "model_executor.layers.quantization", "model_executor.layers.quantization.utils"):
        mods[f"vllm.{pkg}"] = _package(f"vllm.{pkg}", None)
    mods["vllm.model_executor.layers.quantization.utils.quant_utils"] = _module(
        "vllm.model_executor.layers.quantization.utils.quant_utils",
        FP8_DTYPE=platform.fp8_dtype(),
        get_fp8_min_max=qu_ns["get_fp8_min_max"],
    )
    sys.modules.update(mods)
    _installed_root = root
    return version


def copy_needed(src, dest) -> list:
    """Copy the files `install` needs from a vLLM tree into `dest` (same relative paths)."""
    import shutil

    src, dest = Path(src), Path(dest)
    copied = []
    for rel in needed_files():
        s = src / rel
        if not s.is_file():
            if rel in VERSION_SOURCES:
                continue  # either one names the version
            raise VllmSourceError(f"{s} is missing")
        d = dest / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s, d)
        copied.append(rel)
    return copied


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m attnlab_capture.vllm_src",
        description="Copy the vLLM source files the capture's kernel shim needs (a few hundred KiB) into DEST.",
    )
    ap.add_argument("src", type=Path, help="an extracted vLLM source tree (holding vllm/)")
    ap.add_argument("dest", type=Path, help="where to put vllm/... (e.g. .vllm-src)")
    a = ap.parse_args()
    try:
        files = copy_needed(a.src, a.dest)
    except VllmSourceError as e:
        raise SystemExit(f"error: {e}") from None
    total = sum((a.dest / f).stat().st_size for f in files)
    for f in files:
        print(f)
    print(f"{len(files)} files, {total / 1024:.0f} KiB in {a.dest}", file=sys.stderr)
