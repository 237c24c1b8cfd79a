#!/usr/bin/env bash
# The device call of the tensor-core 2D decode (docs/src/matrix-cores.md,
# "paged_decode_2d_tc"): the family's 1000-case diff and ROCM_ATTN's
# tensor-core flavour end to end (its decode rows on paged_decode_2d_tc,
# 1000 cases; each within --max-seconds), then compute-sanitizer memcheck
# and racecheck on 2 cases of the family and of ROCM_ATTN --flavour tc.
# Run in the repository root of the GPU machine after `cargo build --release`.
# usage: gpu/tc-decode2d-on-device.sh [BIN] [OUTDIR]   (defaults: target/release/attnlab, $OUT or ./tc-out)
BIN="${1:-target/release/attnlab}"
OUTDIR="${2:-${OUT:-./tc-out}}"
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null | tee "$OUTDIR/device.txt"
echo "== diff paged_decode_2d_tc"
"$BIN" diff --device cuda --backend paged_decode_2d_tc --cases 1000 --seed 1 --max-seconds 200 \
    >"$OUTDIR/diff-paged_decode_2d_tc.txt" 2>&1
echo "exit $?"; tail -2 "$OUTDIR/diff-paged_decode_2d_tc.txt"
echo "== diff ROCM_ATTN --flavour tc"
"$BIN" diff --device cuda --backend ROCM_ATTN --flavour tc --cases 1000 --seed 1 --max-seconds 200 \
    >"$OUTDIR/diff-ROCM_ATTN-tc.txt" 2>&1
echo "exit $?"; tail -2 "$OUTDIR/diff-ROCM_ATTN-tc.txt"
if command -v compute-sanitizer >/dev/null 2>&1; then
    for b in paged_decode_2d_tc ROCM_ATTN; do
        flav=""; [ "$b" = ROCM_ATTN ] && flav="--flavour tc"
        for t in memcheck racecheck; do
            # shellcheck disable=SC2086
            timeout 120 compute-sanitizer --tool "$t" "$BIN" diff --device cuda --backend "$b" $flav --cases 2 --seed 2 \
                >"$OUTDIR/san-$b-$t.txt" 2>&1
            echo "$b $t exit $?"
            grep -E "ERROR SUMMARY|RACECHECK SUMMARY|bit-exact" "$OUTDIR/san-$b-$t.txt" | tail -2
        done
    done
fi
