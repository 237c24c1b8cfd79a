#!/usr/bin/env bash
# Draws the book's figures (docs/figures.txt) into docs/src/figures/ with
# `attnlab layout --svg` / `attnlab trace --svg`, and the performance page's
# tables and chart from docs/perf/h100-bench.json.
#   docs/gen-figures.sh           regenerate
#   docs/gen-figures.sh --check   exit 1 if a committed figure or table differs from what the code draws now
# ATTNLAB=path/to/attnlab overrides the binary (default: target/release/attnlab, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${ATTNLAB:-target/release/attnlab}
[ -x "$bin" ] || cargo build --release
check=0
[ "${1:-}" = --check ] && check=1
out=docs/src/figures
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stale=0
while read -r file args; do
    case "$file" in ''|'#'*) continue ;; esac
    # shellcheck disable=SC2086
    "$bin" $args --svg "$tmp/$file"
    if [ "$check" = 1 ]; then
        if ! cmp -s "$tmp/$file" "$out/$file"; then
            echo "stale: $out/$file (run docs/gen-figures.sh)" >&2
            stale=1
        fi
    else
        cp "$tmp/$file" "$out/$file"
    fi
done < docs/figures.txt
if [ "$check" = 1 ]; then
    python3 docs/perf/tables.py --check docs/perf/h100-bench.json || stale=1
    exit "$stale"
fi
python3 docs/perf/tables.py docs/perf/h100-bench.json
echo "figures written to $out"
