#!/usr/bin/env bash
# Installs the GPU compilers `attnlab gpu compile` needs on a machine with no
# GPU: hipcc + libamdhip64-dev (Debian 12: HIP 5.2, clang 15) for gfx90a and
# gfx940 (its headers also serve gpu/tests/hip_headers.rs), clang-22 +
# lld-22 (Debian 12, LLVM 22.1) for gfx942 and gfx950, which clang 15 does
# not know, and NVRTC from PyPI for sm_90 (cudarc loads libnvrtc at run time).
#
# Meant to be sourced (`. .ci/install-gpu-toolchains.sh`) so that
# ATTNLAB_NVRTC_DIR and LD_LIBRARY_PATH reach the caller. It leaves the
# caller's shell options alone (no set -e here): each step checks itself,
# and a failure returns (or exits, when run as a script) with status 1.

_attnlab_nvrtc_dir() {
    python3 - <<'PY' 2>/dev/null
import glob, os, site
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for d in glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib")):
        print(d); raise SystemExit
PY
}

_attnlab_install_gpu_toolchains() {
    local want=""
    command -v hipcc >/dev/null 2>&1 || want="hipcc libamdhip64-dev"
    command -v clang++-22 >/dev/null 2>&1 || want="$want clang-22 lld-22"
    if [ -n "$want" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $want >/dev/null || return 1
    fi
    if [ -z "$(_attnlab_nvrtc_dir)" ]; then
        python3 -m pip install -q --disable-pip-version-check "nvidia-cuda-nvrtc-cu12==12.8.*" || return 1
    fi
    ATTNLAB_NVRTC_DIR="$(_attnlab_nvrtc_dir)"
    [ -n "$ATTNLAB_NVRTC_DIR" ] || return 1
    export ATTNLAB_NVRTC_DIR
    export LD_LIBRARY_PATH="${ATTNLAB_NVRTC_DIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

if ! _attnlab_install_gpu_toolchains; then
    echo "install-gpu-toolchains: could not install hipcc/libamdhip64-dev, clang-22/lld-22 or NVRTC" >&2
    return 1 2>/dev/null || exit 1
fi
