#!/usr/bin/env bash
# The tensor-core unified attention's device call (docs/src/matrix-cores.md,
# "unified_attention_tc"): the 1000-case diff (within --max-seconds), our prefill
# rows (bf16 32/8 d128 causal, 4K and 16K tokens) with flash_attn_varlen_tc's
# beside them, vLLM 0.34's Triton unified_attention on the same shapes in the
# same call, then compute-sanitizer memcheck and racecheck on 2 cases; about
# 180 s. Run in the repository root of the GPU machine, with .vllm-src/
# (python3 -m attnlab_capture.vllm_src) and python3 holding torch + triton.
# usage: gpu/tc-unified-on-device.sh [BIN] [OUTDIR]   (defaults: target/release/attnlab, $OUT or ./tc-out)
BIN="${1:-target/release/attnlab}"
OUTDIR="${2:-${OUT:-./tc-out}}"
mkdir -p "$OUTDIR"
export PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null | tee "$OUTDIR/device.txt"
echo "== diff"
"$BIN" diff --device cuda --backend unified_attention_tc --cases 1000 --seed 1 --max-seconds 60 >"$OUTDIR/diff.txt" 2>&1
tail -2 "$OUTDIR/diff.txt"
echo "== bench"
F="unified_attention_tc,block_n 64, 64 rows) b1 ctx4096 ,block_n 64, 64 rows) b1 ctx16384 "
"$BIN" bench --gpu --device cuda --filter "$F" --repeats 10 --json >"$OUTDIR/ours.json" 2>"$OUTDIR/bench.err"
tail -2 "$OUTDIR/bench.err"
python3 -c "
import json, sys
d = json.load(open(sys.argv[1])); d = d.get('gpu', d)
print('copy GB/s', round(d.get('copy_gbps', 0)))
for r in d['rows']:
    print(f\"{r['kernel']:<72} T={r['context']:>6} {r['median_ms']:9.3f} ms {r['tflops']:7.1f} TFLOP/s\")
" "$OUTDIR/ours.json"
echo "== vLLM"
timeout 50 python3 python/scripts/bench_vllm_prefill.py --vllm-src .vllm-src --tokens 4096,16384 \
    --out "$OUTDIR/vllm.json" --ours "$OUTDIR/ours.json" >"$OUTDIR/vllm.txt" 2>&1
tail -12 "$OUTDIR/vllm.txt"
if command -v compute-sanitizer >/dev/null 2>&1; then
    for t in memcheck racecheck; do
        timeout 25 compute-sanitizer --tool "$t" "$BIN" diff --device cuda --backend unified_attention_tc --cases 2 --seed 9 \
            >"$OUTDIR/san-$t.txt" 2>&1
        echo "$t exit $?"
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|bit-exact" "$OUTDIR/san-$t.txt" | tail -2
    done
fi
