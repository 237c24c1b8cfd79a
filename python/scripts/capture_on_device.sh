#!/usr/bin/env bash
# Capture vLLM's Triton kernels on the GPU of this machine, for attnlab's replay.
#
# Runs in the repository root of a machine with a GPU and a python3 holding
# torch + triton (no vLLM install needed: the kernels come from the vLLM source
# files in .vllm-src/, see `python3 -m attnlab_capture.vllm_src`). It
#   1. takes cases (--cases DIR) or draws them with `attnlab cases`
#      (--attnlab BIN, default target/release/attnlab; --backend all|A,B,..,
#      --count per backend, --seed, --edge),
#   2. runs the capture with --jobs parallel processes, bounded by --max-seconds,
#      printing progress, recording per-case errors in the fixtures,
#   3. packs the captured outputs into at most 4 xz chunks of <= 15 MiB
#      (captures-NNN.xz) that `python3 -m attnlab_capture.bundle apply` writes
#      into the same cases regenerated elsewhere.
# Everything it returns goes to --out (default $OUT, else ./capture-out):
# summary.json, capture.log, bundle.json, captures-NNN.xz, and regenerate.sh
# (the `attnlab cases` commands that redraw the same cases elsewhere).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
CASES=""
ATTNLAB="$ROOT/target/release/attnlab"
COUNT=2000
SEED=1
EDGE=""
BACKEND="all"
SRC="$ROOT/.vllm-src"
JOBS=12
MAX_SECONDS=360
DEST="${OUT:-$ROOT/capture-out}"
WORK="${ATTNLAB_CAPTURE_WORK:-/tmp/attnlab-capture}"
EXTRA=()

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo "options: --cases DIR | --attnlab BIN --count N --seed S [--edge] [--backend NAME]"
    echo "         --vllm-src DIR --jobs N --max-seconds T --out DIR [-- extra capture options]"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --cases) CASES="$2"; shift 2 ;;
        --attnlab) ATTNLAB="$2"; shift 2 ;;
        --count) COUNT="$2"; shift 2 ;;
        --seed) SEED="$2"; shift 2 ;;
        --edge) EDGE="--edge"; shift ;;
        --backend) BACKEND="$2"; shift 2 ;;
        --vllm-src) SRC="$2"; shift 2 ;;
        --jobs) JOBS="$2"; shift 2 ;;
        --max-seconds) MAX_SECONDS="$2"; shift 2 ;;
        --out) DEST="$2"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "capture_on_device.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$DEST" "$WORK"
LOG="$DEST/capture.log"
: > "$LOG"
say() { echo "capture_on_device: $*" | tee -a "$LOG" >&2; }
t0=$(date +%s)

if [ "${ATTNLAB_CAPTURE_CPU:-}" = 1 ]; then
    # a dry run of this script without a GPU: Triton's interpreter on the CPU
    export TRITON_INTERPRET=1 PYTHONWARNINGS=ignore
    say "ATTNLAB_CAPTURE_CPU=1: running the kernels in Triton's interpreter on the CPU"
elif ! "$PY" -c 'import torch, triton, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>>"$LOG"; then
    say "python3 ($PY) has no torch+triton seeing a GPU; nothing captured"
    exit 1
else
    "$PY" -c 'import torch, triton; p = torch.cuda.get_device_properties(0); print(f"gpu {p.name}, torch {torch.__version__}, triton {triton.__version__}, {p.multi_processor_count} SMs")' 2>&1 | tee -a "$LOG" >&2
fi

if [ ! -f "$SRC/vllm/v1/attention/ops/triton_unified_attention.py" ]; then
    say "no vLLM sources at $SRC (make them with: python3 -m attnlab_capture.vllm_src <vllm source tree> $SRC)"
    exit 1
fi

if [ -z "$CASES" ]; then
    if [ ! -x "$ATTNLAB" ]; then
        say "no cases: pass --cases DIR or an attnlab binary (--attnlab, default $ATTNLAB)"
        exit 1
    fi
    CASES="$WORK/cases"
    rm -rf "$CASES"
    # --backend A,B,C draws --count cases of each into cases/A, cases/B, ...
    IFS=',' read -r -a backends <<<"$BACKEND"
    {
        echo "#!/usr/bin/env bash"
        echo "# regenerate here the cases captured on the GPU machine, then apply the bundle:"
        echo "#   bash regenerate.sh ATTNLAB_BINARY CASES_DIR && python3 -m attnlab_capture.bundle apply CASES_DIR captures-*.xz"
        echo 'set -e; A="${1:?attnlab binary}"; C="${2:?cases dir}"'
    } >"$DEST/regenerate.sh"
    for b in "${backends[@]}"; do
        dir="$CASES"
        sub=""
        [ "${#backends[@]}" -gt 1 ] && dir="$CASES/$b" && sub="/$b"
        echo "\"\$A\" cases --backend $b --count $COUNT --seed $SEED $EDGE --out \"\$C$sub\"" >>"$DEST/regenerate.sh"
        say "drawing cases: attnlab cases --backend $b --count $COUNT --seed $SEED $EDGE"
        if ! "$ATTNLAB" cases --backend "$b" --count "$COUNT" --seed "$SEED" $EDGE --out "$dir" >>"$LOG" 2>&1; then
            say "attnlab cases --backend $b failed (see capture.log)"
            exit 1
        fi
    done
fi
ncases=$(find "$CASES" -name '*.safetensors' | wc -l)
say "$ncases cases in $CASES ($(( $(date +%s) - t0 )) s so far)"

FIXTURES="$WORK/fixtures"
rm -rf "$FIXTURES"
say "capturing with $JOBS processes, at most $MAX_SECONDS s"
"$PY" -m attnlab_capture "$CASES" --out "$FIXTURES" --vllm-src "$SRC" --jobs "$JOBS" \
    --max-seconds "$MAX_SECONDS" --json "${EXTRA[@]}" >"$DEST/summary.json" 2> >(tee -a "$LOG" >&2)
rc=$?
say "capture exited $rc ($(( $(date +%s) - t0 )) s so far)"

"$PY" -m attnlab_capture.bundle pack "$FIXTURES" "$DEST" --chunk-mib 15 --max-chunks 4 >"$DEST/bundle.json" 2>>"$LOG"
"$PY" - "$DEST/summary.json" "$DEST/bundle.json" <<'PYEOF' 2>&1 | tee -a "$LOG" >&2
import json, sys
s = json.load(open(sys.argv[1]))
b = json.load(open(sys.argv[2]))
print(f"cases {s['cases']}: captured {s['captured']}, capture errors {s['capture_errors']}, invalid {s['invalid']}, "
      f"skipped {s['skipped']}, not run (time) {s['not_run_time_budget']}")
print(f"compile {s['compile_seconds']} s in {s['compiles']} compiles (summed over processes), "
      f"kernels {s['kernel_seconds']} s, wall {s['wall_seconds']} s, jobs {s.get('jobs', 1)}")
for k, n in sorted(s["launch_grids"].items()):
    print(f"  launch {k}: {n}")
for r, n in s["skip_reasons"].items():
    print(f"  skipped {n}: {r}")
for e in s["errors"][:10]:
    print(f"  error {e['file']}: {e['error']}")
print(f"bundle: {b['entries']} captures in {len(b['chunks'])} chunks, {len(b['left_out'])} left out")
PYEOF
say "done in $(( $(date +%s) - t0 )) s"
exit 0
