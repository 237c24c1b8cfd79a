#!/usr/bin/env bash
# Builds and runs gpu/probes/ex2_approx.cu on an NVIDIA GPU (nvcc from the
# CUDA toolkit): the exhaustive comparison of ex2.approx.f32 with the
# contract's exp2c over [-150, 0]. Output on stdout (and in $OUT if set).
set -eu
cd "$(dirname "$0")"
arch=${ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}
out=${OUT:-/tmp}/ex2_approx.txt
nvcc -O2 -fmad=false -prec-div=true -arch=sm_$arch -o /tmp/ex2_approx ex2_approx.cu
/tmp/ex2_approx | tee "$out"
