#!/usr/bin/env bash
# Tuning sweep of one kernel family's compile-time knobs on a GPU, in one call:
# for each variant (a line of SPEC: `name KNOB=VALUE ...`), a copy of kernels/
# whose FAMILY.hip starts with those #defines (ATTNLAB_KERNELS_DIR), then
#   1. `attnlab diff --backend DIFF_BACKEND --cases CASES` (a variant that is
#      not bit-exact is reported and not timed; CASES=0 skips it, e.g. when
#      the knobs were checked on the host device: `diff --device host`);
#   2. `attnlab bench --gpu --filter FILTER` (rows and the copy yardstick of
#      the same run).
# Knobs are the #ifndef defaults of the family's source (e.g. LL4MI_VBATCH in
# paged_decode.hip). Writes OUTDIR/sweep.txt (one table) and the raw logs.
#
# Usage: gpu/sweep-variants.sh BIN OUTDIR FAMILY SPEC FILTER [DIFF_BACKEND] [CASES]
#   e.g. gpu/sweep-variants.sh attnlab out paged_decode gpu/variants/ll4mi.txt \
#        'll4mi b64 ctx8192 32/8,ll4mi b1 ctx32768 32/8'
set -u
BIN=${1:?usage: sweep-variants.sh BIN OUTDIR FAMILY SPEC FILTER [DIFF_BACKEND] [CASES]}
OUT=${2:?missing OUTDIR}
FAMILY=${3:?missing FAMILY}
SPEC=${4:?missing SPEC}
FILTER=${5:?missing FILTER}
DIFF_BACKEND=${6:-$FAMILY}
CASES=${7:-40}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
work=$(mktemp -d)
: >"$OUT/sweep-log.txt"
: >"$OUT/sweep.txt"
while read -r name knobs; do
    [ -z "$name" ] || [ "${name#\#}" != "$name" ] && continue
    dir="$work/$name"
    mkdir -p "$dir"
    cp "$here"/kernels/* "$dir/"
    {
        for k in $knobs; do echo "#define ${k%%=*} ${k#*=}"; done
        cat "$here/kernels/$FAMILY.hip"
    } >"$dir/$FAMILY.hip"
    echo "== $name: $knobs" | tee -a "$OUT/sweep-log.txt"
    if [ "$CASES" != 0 ] && ! ATTNLAB_KERNELS_DIR="$dir" "$BIN" diff --backend "$DIFF_BACKEND" --cases "$CASES" --seed 11 >"$work/diff.txt" 2>&1; then
        tail -5 "$work/diff.txt" | tee -a "$OUT/sweep-log.txt"
        echo "$name  NOT BIT-EXACT or failed ($knobs)" >>"$OUT/sweep.txt"
        continue
    fi
    [ "$CASES" != 0 ] && tail -2 "$work/diff.txt" >>"$OUT/sweep-log.txt"
    ATTNLAB_KERNELS_DIR="$dir" "$BIN" bench --gpu --repeats 5 --filter "$FILTER" >"$work/bench.txt" 2>&1
    cat "$work/bench.txt" >>"$OUT/sweep-log.txt"
    grep -E "vs copy|%" "$work/bench.txt" | grep -v "^device" | sed "s/^/$name  /" >>"$OUT/sweep.txt"
done <"$SPEC"
cat "$OUT/sweep.txt"
rm -rf "$work"
