#!/usr/bin/env bash
# The device call of the tensor-core prefix prefill and FlexAttention
# (docs/src/matrix-cores.md, "prefix_prefill_tc" and "flex_attention_tc"):
# each kernel's 1000-case diff and its backend's tensor-core flavour end to
# end (ROCM_ATTN, FLEX_ATTENTION; 1000 cases each, within --max-seconds),
# then compute-sanitizer memcheck and racecheck on 2 cases of each kernel.
# Run in the repository root of the GPU machine after `cargo build --release`.
# usage: gpu/tc-prefix-on-device.sh [BIN] [OUTDIR]   (defaults: target/release/attnlab, $OUT or ./tc-out)
BIN="${1:-target/release/attnlab}"
OUTDIR="${2:-${OUT:-./tc-out}}"
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null | tee "$OUTDIR/device.txt"
for b in prefix_prefill_tc flex_attention_tc; do
    echo "== diff $b"
    "$BIN" diff --device cuda --backend "$b" --cases 1000 --seed 1 --max-seconds 90 >"$OUTDIR/diff-$b.txt" 2>&1
    echo "exit $?"; tail -2 "$OUTDIR/diff-$b.txt"
done
for b in ROCM_ATTN FLEX_ATTENTION; do
    echo "== diff $b --flavour tc"
    "$BIN" diff --device cuda --backend "$b" --flavour tc --cases 1000 --seed 1 --max-seconds 90 >"$OUTDIR/diff-$b.txt" 2>&1
    echo "exit $?"; tail -2 "$OUTDIR/diff-$b.txt"
done
if command -v compute-sanitizer >/dev/null 2>&1; then
    for b in prefix_prefill_tc flex_attention_tc; do
        for t in memcheck racecheck; do
            timeout 60 compute-sanitizer --tool "$t" "$BIN" diff --device cuda --backend "$b" --cases 2 --seed 9 \
                >"$OUTDIR/san-$b-$t.txt" 2>&1
            echo "$b $t exit $?"
            grep -E "ERROR SUMMARY|RACECHECK SUMMARY|bit-exact" "$OUTDIR/san-$b-$t.txt" | tail -2
        done
    done
fi
