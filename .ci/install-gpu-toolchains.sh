#!/usr/bin/env bash
# Installs the GPU compilers `attnlab gpu compile` needs on a machine with no
# GPU: hipcc + libamdhip64-dev (Debian 12: HIP 5.2, clang 15) for gfx90a and
# gfx940, and NVRTC from PyPI for sm_90 (cudarc loads libnvrtc at run time).
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
    if ! command -v hipcc >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hipcc libamdhip64-dev >/dev/null || return 1
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
    echo "install-gpu-toolchains: could not install hipcc/libamdhip64-dev or NVRTC" >&2
    return 1 2>/dev/null || exit 1
fi
