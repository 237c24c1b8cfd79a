#!/usr/bin/env bash
# The tensor-core prefix prefill's device call (docs/src/matrix-cores.md,
# "prefix_prefill_tc"): the 1000-case kernel diff and ROCM_ATTN's
# tensor-core flavour end to end (1000 cases each, within --max-seconds),
# then compute-sanitizer memcheck and racecheck on 2 cases of the kernel.
# Run in the repository root of the GPU machine after `cargo build --release`.
# usage: gpu/tc-prefix-on-device.sh [BIN] [OUTDIR]   (defaults: target/release/attnlab, $OUT or ./tc-out)
BIN="${1:-target/release/attnlab}"
OUTDIR="${2:-${OUT:-./tc-out}}"
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null | tee "$OUTDIR/device.txt"
echo "== diff prefix_prefill_tc"
"$BIN" diff --device cuda --backend prefix_prefill_tc --cases 1000 --seed 1 --max-seconds 120 >"$OUTDIR/diff-kernel.txt" 2>&1
echo "exit $?"; tail -2 "$OUTDIR/diff-kernel.txt"
echo "== diff ROCM_ATTN --flavour tc"
"$BIN" diff --device cuda --backend ROCM_ATTN --flavour tc --cases 1000 --seed 1 --max-seconds 120 >"$OUTDIR/diff-rocm-attn.txt" 2>&1
echo "exit $?"; tail -2 "$OUTDIR/diff-rocm-attn.txt"
if command -v compute-sanitizer >/dev/null 2>&1; then
    for t in memcheck racecheck; do
        timeout 60 compute-sanitizer --tool "$t" "$BIN" diff --device cuda --backend prefix_prefill_tc --cases 2 --seed 9 \
            >"$OUTDIR/san-$t.txt" 2>&1
        echo "$t exit $?"
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|bit-exact" "$OUTDIR/san-$t.txt" | tail -2
    done
fi
