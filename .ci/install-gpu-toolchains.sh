#!/usr/bin/env bash
# Installs the GPU compilers `attnlab gpu compile` needs on a machine with no
# GPU: hipcc + libamdhip64-dev (Debian 12: HIP 5.2, clang 15) for gfx90a and
# gfx940, and NVRTC from PyPI for sm_90 (loaded at run time by cudarc).
#
# Source it (`. .ci/install-gpu-toolchains.sh`) so that ATTNLAB_NVRTC_DIR and
# LD_LIBRARY_PATH reach the caller; running it as a script installs only.
set -euo pipefail

if ! command -v hipcc >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends hipcc libamdhip64-dev >/dev/null
fi

nvrtc_dir() {
    python3 - <<'PY' 2>/dev/null
import glob, os, site
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for d in glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib")):
        print(d); raise SystemExit
PY
}
if [ -z "$(nvrtc_dir)" ]; then
    python3 -m pip install -q --disable-pip-version-check "nvidia-cuda-nvrtc-cu12==12.8.*"
fi
ATTNLAB_NVRTC_DIR="$(nvrtc_dir)"
export ATTNLAB_NVRTC_DIR
export LD_LIBRARY_PATH="${ATTNLAB_NVRTC_DIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
set +euo pipefail
