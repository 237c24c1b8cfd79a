#!/usr/bin/env bash
# The tensor-core decode's device call (docs/src/matrix-cores.md, "paged_decode_tc"):
# vLLM 0.34's Triton decode timed on the decode grid, our bench beside it in the
# same call (the launcher's choice of fused or separate reduce, then the reduce
# as a second launch everywhere), then the 1000-case diff (both reduce modes
# drawn per case) and compute-sanitizer within what is left of a ~200 s limit.
# Run in the repository root of the GPU machine, with .vllm-src/
# (python3 -m attnlab_capture.vllm_src) and python3 holding torch + triton.
# usage: gpu/tc-decode-on-device.sh [BIN] [OUTDIR]   (defaults: target/release/attnlab, $OUT or ./tc-out)
BIN="${1:-target/release/attnlab}"
OUTDIR="${2:-${OUT:-./tc-out}}"
mkdir -p "$OUTDIR"
export PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH}
START=$SECONDS
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null
python3 python/scripts/vllm_decode_bench.py --out "$OUTDIR/vllm.json" --vllm-src .vllm-src >"$OUTDIR/vllm.txt" 2>&1
tail -1 "$OUTDIR/vllm.txt"
ATTNLAB_BENCH_DIR="$OUTDIR" "$BIN" bench --gpu --filter "paged_decode_tc b,(L2 hints) b,(prefetch) b" --repeats 20 \
    --vllm "$OUTDIR/vllm.json" >"$OUTDIR/bench.txt" 2>&1
head -1 "$OUTDIR/bench.txt"
grep -A100 "^  ours" "$OUTDIR/bench.txt" | grep -v "(prefetch)" | cut -c1-28,56-150
# The same grid with the reduce as a second launch (no fusion), in this call.
ATTNLAB_TC_FUSE_MAX_SPLITS=0 "$BIN" bench --gpu --filter "paged_decode_tc b" --repeats 20 \
    --vllm "$OUTDIR/vllm.json" >"$OUTDIR/bench-2launch.txt" 2>&1
echo "reduce as a second launch (ATTNLAB_TC_FUSE_MAX_SPLITS=0):"
grep -A100 "^  ours" "$OUTDIR/bench-2launch.txt" | cut -c1-28,56-150
LEFT=$((160 - (SECONDS - START) - 30))
[ "$LEFT" -lt 10 ] && LEFT=10
echo "diff budget ${LEFT}s"
"$BIN" diff --device cuda --backend paged_decode_tc --cases 1000 --seed 1 --max-seconds "$LEFT" >"$OUTDIR/diff.txt" 2>&1
tail -2 "$OUTDIR/diff.txt"
if command -v compute-sanitizer >/dev/null 2>&1; then
    for t in memcheck racecheck; do
        timeout 25 compute-sanitizer --tool "$t" "$BIN" diff --device cuda --backend paged_decode_tc --cases 6 --seed 2 \
            >"$OUTDIR/san-$t.txt" 2>&1
        echo "$t exit $?"
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|bit-exact" "$OUTDIR/san-$t.txt" | tail -2
    done
fi
