#!/usr/bin/env bash
# Issue 5's validation run on a machine with a GPU, in one call:
#   1. `attnlab diff` for every kernel family and backend (`diff --list`),
#      JOBS families at a time (the sim side is CPU work; the device has
#      cores to spare), each with its own JSON report;
#   2. compute-sanitizer memcheck and racecheck over a few cases of all of
#      them (skipped when compute-sanitizer is absent, e.g. on ROCm);
#   3. `attnlab bench --gpu` (table, JSON and SVG).
# Everything lands in OUTDIR as at most 8 files (the device tool's limit):
#   diff.txt, diff.json (one report per family, as a JSON array),
#   sanitizer.txt, bench.txt, bench-gpu.json, bench-gpu.svg, summary.txt
#
# Usage: gpu/validate-on-device.sh BIN OUTDIR [CASES] [SEED] [STEPS]
#   STEPS: any of "diff sanitizer bench" (default: all three); the family
#   list can be narrowed with FAMILIES="a b c".
# MAX_SECONDS=S makes each family stop drawing cases after S seconds and
# report the ones that ran (prefer it); FAMILY_TIMEOUT=SECONDS kills a family
# that runs longer (its rc is then 124, no report, the others still count).
# DEVICE=hip|cuda|host names the device; by default the GPU present (HIP first), and
# without one the run stops (`diff --device auto` would fall back to the
# host device, which is not what this script measures).
# Exit status: 1 when any family mismatches or fails, else 0.
set -u
BIN=${1:?usage: validate-on-device.sh BIN OUTDIR [CASES] [SEED] [STEPS]}
OUT=${2:?usage: validate-on-device.sh BIN OUTDIR [CASES] [SEED] [STEPS]}
CASES=${3:-1000}
SEED=${4:-1}
STEPS=${5:-diff sanitizer bench}
JOBS=${JOBS:-4}
mkdir -p "$OUT"
work=$(mktemp -d)
status=0
{
    echo "device: $(nvidia-smi -L 2>/dev/null | head -1)"
    echo "cases $CASES seed $SEED steps: $STEPS"
} >"$OUT/summary.txt"

if [ -z "${DEVICE:-}" ]; then
    for d in hip cuda; do
        if "$BIN" diff --device "$d" --backend contract --cases 0 2>/dev/null | grep -q '^device:'; then
            DEVICE=$d
            break
        fi
    done
fi
if [ -z "${DEVICE:-}" ]; then
    echo "no GPU: $("$BIN" diff --device hip --backend contract --cases 0 2>&1 | head -1); $("$BIN" diff --device cuda --backend contract --cases 0 2>&1 | head -1)" | tee -a "$OUT/summary.txt"
    exit 1
fi
echo "attnlab device: $DEVICE" >>"$OUT/summary.txt"

# Every diff family (`diff --list`) unless FAMILIES narrows them.
families=${FAMILIES:-$("$BIN" diff --list)}

if [[ " $STEPS " == *" diff "* ]]; then
    if [ -z "$families" ]; then
        echo "diff: no families (did \`$BIN diff --list\` fail?)" | tee -a "$OUT/summary.txt" >"$OUT/diff.txt"
        status=1
    fi
    start=$(date +%s)
    # One process per family, JOBS at a time, each with its share of the cores.
    threads=$(( $(nproc) / JOBS )); (( threads < 1 )) && threads=1
    printf '%s\n' $families | RAYON_NUM_THREADS=$threads xargs -P "$JOBS" -I{} sh -c \
        's=$(date +%s); timeout "${FAMILY_TIMEOUT:-0}" "$0" diff --device "$4" --backend {} --cases "$1" --seed "$2" ${MAX_SECONDS:+--max-seconds $MAX_SECONDS} --json >"$3/{}.json" 2>"$3/{}.err"; echo $? >"$3/{}.rc"; echo $(( $(date +%s) - s )) >"$3/{}.secs"' \
        "$BIN" "$CASES" "$SEED" "$work" "$DEVICE"
    echo "[" >"$OUT/diff.json"
    sep=""
    for f in $families; do
        rc=$(cat "$work/$f.rc" 2>/dev/null || echo missing)
        [ "$rc" = 0 ] || status=1
        printf '%s' "$sep" >>"$OUT/diff.json"; sep=","
        if [ -s "$work/$f.json" ]; then cat "$work/$f.json" >>"$OUT/diff.json"; else echo "{\"family\":\"$f\",\"rc\":\"$rc\"}" >>"$OUT/diff.json"; fi
        python3 - "$work/$f.json" "$f" "$rc" "$(cat "$work/$f.secs" 2>/dev/null)" >>"$OUT/diff.txt" <<'PY'
import json, sys
path, fam, rc, secs = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception:
    print(f"{fam:<26} rc {rc}: no report"); sys.exit()
for k in r.get("kernels", []):
    ok = "bit-exact" if k["elements"] == k["bit_exact"] else "MISMATCH"
    print(f"{k['kernel']:<26} {k['cases']:>6} cases {k['elements']:>12} elements {k['bit_exact']:>12} exact  {ok}  ({secs} s)")
    if k.get("first_mismatch"): print("    first mismatch:", json.dumps(k["first_mismatch"]))
for e in r.get("errors", []): print(f"    error: {e}")
PY
        [ -s "$work/$f.err" ] && sed 's/^/    stderr: /' "$work/$f.err" | tail -5 >>"$OUT/diff.txt"
    done
    echo "]" >>"$OUT/diff.json"
    echo "diff: $(( $(date +%s) - start )) s wall, exit status ${status}" >>"$OUT/diff.txt"
    python3 - "$OUT/diff.json" >>"$OUT/summary.txt" <<'PY'
import json, sys
rs = json.load(open(sys.argv[1]))
ks = [k for r in rs for k in r.get("kernels", [])]
el = sum(k["elements"] for k in ks); ex = sum(k["bit_exact"] for k in ks)
bad = [k["kernel"] for k in ks if k["elements"] != k["bit_exact"]]
errs = sum(len(r.get("errors", [])) for r in rs)
print(f"diff: {len(ks)} kernels/backends, {el} elements, {ex} bit-exact, mismatching: {bad or 'none'}, errors: {errs}")
PY
fi

if [[ " $STEPS " == *" sanitizer "* ]]; then
    if command -v compute-sanitizer >/dev/null 2>&1; then
        # Every family under memcheck and racecheck, SAN_CASES cases each (seed
        # 5 / 6), JOBS processes at a time; each run's SUMMARY line is kept.
        for tool in memcheck racecheck; do
            seed=$([ $tool = memcheck ] && echo 5 || echo 6)
            echo "== compute-sanitizer --tool $tool $BIN diff --backend F --cases ${SAN_CASES:-2} --seed $seed, F in: $(echo $families)" >>"$OUT/sanitizer.txt"
            printf '%s\n' $families | xargs -P "$JOBS" -I{} sh -c \
                'timeout "${SAN_TIMEOUT:-300}" compute-sanitizer --tool "$1" "$0" diff --device cuda --backend {} --cases "$2" --seed "$3" >"$4/san-$1-{}.txt" 2>&1; echo "exit $?" >>"$4/san-$1-{}.txt"' \
                "$BIN" "$tool" "${SAN_CASES:-2}" "$seed" "$work"
            for f in $families; do
                log="$work/san-$tool-$f.txt"
                summary=$(grep -E "SUMMARY" "$log" | tail -1)
                verdict=$(grep -E "all bit-exact|MISMATCH|no device" "$log" | tail -1)
                echo "$tool $f: ${summary:-no SUMMARY line} | ${verdict:-no diff verdict} | $(tail -1 "$log")" >>"$OUT/sanitizer.txt"
                grep -E "^========= (Invalid|Race|Error|Warning)" "$log" | head -3 | sed 's/^/    /' >>"$OUT/sanitizer.txt"
            done
            clean=$(grep -cE "^$tool .*(ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: 0 hazards)" "$OUT/sanitizer.txt")
            echo "sanitizer $tool: $clean of $(echo $families | wc -w) families report 0 errors/hazards" >>"$OUT/summary.txt"
        done
    else
        echo "compute-sanitizer not found: skipped" | tee -a "$OUT/summary.txt" >"$OUT/sanitizer.txt"
    fi
fi

if [[ " $STEPS " == *" bench "* ]]; then
    ATTNLAB_BENCH_DIR="$OUT" timeout 300 "$BIN" bench --gpu --device "$DEVICE" --repeats 5 >"$OUT/bench.txt" 2>&1
    echo "bench: exit $?" >>"$OUT/summary.txt"
fi
cat "$OUT/summary.txt"
rm -rf "$work"
exit $status
