"""Shared test setup: the case generator on sys.path, the repository's fixtures, and
(for the interpreter tests) a vLLM source tree."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

REPO = HERE.parents[1]
REPO_FIXTURES = REPO / "fixtures"
VLLM_VERSION = "0.34.0"


def write_gen(directory: Path, name: str, made):
    from attnlab_capture.fixture import write_case

    meta, tensors = made[0], made[1]
    path = directory / f"{name}.safetensors"
    write_case(path, meta, tensors)
    return path


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attnlab" / f"vllm-{VLLM_VERSION}"


def _download_vllm_py_sources(dest: Path) -> str | None:
    """Fetch vLLM's sdist from PyPI's JSON API and keep only vllm/**/*.py and PKG-INFO.

    (pip download of an sdist runs vLLM's metadata build; reading the archive
    directly avoids that.) Returns None on success, else the reason.
    """
    try:
        with urllib.request.urlopen("https://pypi.org/pypi/vllm/json", timeout=30) as r:
            info = json.load(r)
            base = r.geturl()
        files = info["releases"].get(VLLM_VERSION, [])
        sdist = next((f for f in files if f["packagetype"] == "sdist"), None)
        if sdist is None:
            return f"PyPI lists no sdist of vllm {VLLM_VERSION}"
        # a mirror may answer with a relative address
        with urllib.request.urlopen(urllib.parse.urljoin(base, sdist["url"]), timeout=300) as r:
            blob = r.read()
    except Exception as e:  # no network, proxy, ...
        return f"cannot download vllm {VLLM_VERSION}'s sdist: {e}"
    tmp = dest.with_name(dest.name + ".partial")
    prefix = f"vllm-{VLLM_VERSION}/"
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m in tar.getmembers():
            name = m.name
            if not m.isfile() or not name.startswith(prefix) or ".." in Path(name).parts:
                continue
            rel = name[len(prefix) :]
            if rel == "PKG-INFO" or (rel.startswith("vllm/") and rel.endswith(".py")):
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(m).read())
    tmp.rename(dest)
    return None


def find_vllm_src():
    """(path, None) or (None, reason): $ATTNLAB_VLLM_SRC, the cache, else a download."""
    env = os.environ.get("ATTNLAB_VLLM_SRC")
    if env:
        p = Path(env)
        if (p / "vllm/v1/attention/ops/triton_unified_attention.py").is_file():
            return p, None
        return None, f"ATTNLAB_VLLM_SRC={env} holds no vllm/v1/attention/ops/triton_unified_attention.py"
    cached = _cache_dir()
    if (cached / "vllm/v1/attention/ops/triton_unified_attention.py").is_file():
        return cached, None
    if os.environ.get("ATTNLAB_NO_DOWNLOAD"):
        return None, "no vLLM source tree (ATTNLAB_VLLM_SRC unset, nothing cached, downloads disabled)"
    cached.parent.mkdir(parents=True, exist_ok=True)
    reason = _download_vllm_py_sources(cached)
    if reason:
        return None, reason
    return cached, None


@pytest.fixture(scope="session")
def vllm_src():
    path, reason = find_vllm_src()
    if path is None:
        pytest.skip(reason)
    return path
