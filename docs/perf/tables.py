#!/usr/bin/env python3
"""Fills docs/src/performance.md's generated sections from `attnlab bench --gpu --json`.

    attnlab bench --gpu --json > docs/perf/h100-bench.json     # on the GPU machine
    python3 docs/perf/tables.py docs/perf/h100-bench.json      # rewrites the tables and the chart
    python3 docs/perf/tables.py --check docs/perf/h100-bench.json   # exit 1 if the page is stale

Each generated block sits between `<!-- gen:NAME -->` and `<!-- /gen:NAME -->`
in the page; everything else is prose and is left alone. MI300X columns are
models computed from the published peaks the book states (5.3 TB/s HBM,
about 1300 dense bf16 TFLOP/s), never measurements, and say so.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "src" / "performance.md"
CHART = ROOT / "src" / "figures" / "perf-decode.svg"

MI300X_HBM_TBPS = 5.3  # published peak, stated in docs/src/mla.md
MI300X_BF16_TFLOPS = 1300.0  # dense bf16 matrix peak, stated in docs/src/mla.md


def load(path):
    rep = json.loads(Path(path).read_text())
    if "gpu" in rep:  # `bench --cpu --gpu --json` nests it
        rep = rep["gpu"]
    for key in ("device", "copy_gbps", "f32_peak_tflops", "rows"):
        if key not in rep:
            sys.exit(f"{path}: not an `attnlab bench --gpu --json` report (no '{key}')")
    return rep


def ctx_label(c):
    return f"{c // 1024}K" if c % 1024 == 0 else str(c)


def decode_table(rep):
    rows = [r for r in rep["rows"] if r["kernel"].startswith("paged_attention")]
    keys = []
    by = {}
    for r in rows:
        k = (r["batch"], r["context"], r["q_heads"], r["kv_heads"])
        if k not in by:
            keys.append(k)
        by.setdefault(k, {})[r["kernel"]] = r
    out = [
        "| batch | context | heads q/kv | ll4mi ms | ll4mi GB/s | ll4mi vs copy | 2D ms | 2D GB/s | 2D vs copy "
        "| MI300X bound, µs (model) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in keys:
        cells = [str(k[0]), str(k[1]), f"{k[2]}/{k[3]}"]
        moved = None
        for name in ("paged_attention_ll4mi", "paged_attention_2d"):
            r = by[k].get(name)
            if r is None:
                cells += ["—"] * 3
                continue
            cells += [f"{r['median_ms']:.3f}", f"{r['gbps']:.0f}", f"{100 * r['vs_copy']:.1f}%"]
            moved = r["gbps"] * 1e9 * r["median_ms"] * 1e-3  # bytes the row counts
        cells.append(f"{moved / (MI300X_HBM_TBPS * 1e12) * 1e6:.1f}" if moved else "—")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def prefill_table(rep):
    out = [
        "| kernel | tokens | heads q/kv | median ms | TFLOP/s | of f32 peak |",
        "|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        if r.get("tflops") is None:
            continue
        out.append(
            f"| {r['kernel']} | {r['context']} | {r['q_heads']}/{r['kv_heads']} | {r['median_ms']:.3f} "
            f"| {r['tflops']:.2f} | {100 * r['vs_f32_peak']:.0f}% |"
        )
    return "\n".join(out)


KNOWN = ("paged_attention_ll4mi", "paged_attention_2d", "unified_attention_2d (prefill)", "flash_attn_varlen (prefill")


def other_rows(rep):
    """Every row of a kernel the tables above do not cover (e.g. the tensor-core
    kernels and vLLM's own kernels timed in the same run), as the JSON gives it."""
    rows = [r for r in rep["rows"] if not r["kernel"].startswith(KNOWN)]
    if not rows:
        return "_(no other kernel rows in this run's JSON)_"

    def cell(v, fmt):
        return "—" if v is None else fmt.format(v)

    out = [
        "| kernel | batch | context | heads q/kv | median ms | GB/s | vs copy | TFLOP/s | vs f32 peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['kernel']} | {r['batch']} | {r['context']} | {r['q_heads']}/{r['kv_heads']} "
            f"| {r['median_ms']:.3f} | {cell(r.get('gbps'), '{:.0f}')} "
            f"| {cell(r.get('vs_copy') and 100 * r['vs_copy'], '{:.1f}%')} | {cell(r.get('tflops'), '{:.2f}')} "
            f"| {cell(r.get('vs_f32_peak') and 100 * r['vs_f32_peak'], '{:.0f}%')} |"
        )
    return "\n".join(out)


def yardsticks(rep):
    dev = rep["device"].get("name", "?")
    skipped = "; ".join(rep.get("skipped", [])) or "none"
    return (
        f"| device | copy (read + write) | f32 peak (non-tensor) | skipped rows |\n|---|---|---|---|\n"
        f"| {dev} | {rep['copy_gbps']:.0f} GB/s | {rep['f32_peak_tflops']:.1f} TFLOP/s | {skipped} |\n"
        f"| AMD MI300X (model, published peaks: not measured) | {MI300X_HBM_TBPS * 1000:.0f} GB/s HBM | "
        f"{MI300X_BF16_TFLOPS:.0f} TFLOP/s dense bf16 (matrix cores) | — |"
    )


def mla_model():
    """Absorbed MLA decode of DeepSeek-R1, per the FLOP and byte counts of docs/src/mla.md."""
    out = [
        "| sequences x context | heads sharing a row | GFLOP | KV MB read | FLOP/byte | MI300X compute bound, µs | "
        "MI300X memory bound, µs | bound by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b, ctx, h in [(1, 4096, 16), (32, 4096, 16), (32, 4096, 128), (128, 8192, 128)]:
        flops = b * ctx * h * 2 * (576 + 512)
        bytes_ = b * ctx * 576 * 2
        tc = flops / (MI300X_BF16_TFLOPS * 1e12) * 1e6
        tm = bytes_ / (MI300X_HBM_TBPS * 1e12) * 1e6
        out.append(
            f"| {b} x {ctx} | {h} | {flops / 1e9:.2f} | {bytes_ / 1e6:.1f} | {flops / bytes_:.0f} | {tc:.1f} | {tm:.1f} "
            f"| {'compute' if tc > tm else 'memory'} |"
        )
    return "\n".join(out)


def chart(rep):
    rows = [r for r in rep["rows"] if r["kernel"].startswith("paged_attention")]
    keys = []
    for r in rows:
        k = (r["batch"], r["context"], r["q_heads"], r["kv_heads"])
        if k not in keys:
            keys.append(k)
    val = {(r["batch"], r["context"], r["q_heads"], r["kv_heads"], r["kernel"]): r["vs_copy"] for r in rows}
    w, h, x0, y0, ph = 1200, 460, 60, 50, 300
    step = (w - x0 - 20) / max(len(keys), 1)
    s = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">',
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>',
        f'<text x="{x0}" y="22" font-size="14">attnlab bench --gpu: paged decode, % of the copy bandwidth '
        f'({rep["copy_gbps"]:.0f} GB/s) on {rep["device"].get("name", "?")}</text>',
        f'<rect x="{x0}" y="30" width="12" height="10" fill="#d62728"/><text x="{x0 + 16}" y="39" font-size="11">'
        f'paged_attention_ll4mi</text>',
        f'<rect x="{x0 + 180}" y="30" width="12" height="10" fill="#1f77b4"/><text x="{x0 + 196}" y="39" '
        f'font-size="11">paged_attention_2d</text>',
    ]
    for pct in (0, 25, 50, 75, 100):
        y = y0 + ph - ph * pct / 100
        s.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{w - 20}" y2="{y:.1f}" stroke="#ddd"/>')
        s.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{pct}%</text>')
    for i, k in enumerate(keys):
        x = x0 + i * step
        for j, (name, colour) in enumerate((("paged_attention_ll4mi", "#d62728"), ("paged_attention_2d", "#1f77b4"))):
            v = val.get(k + (name,))
            if v is None:
                continue
            bh = ph * v
            s.append(
                f'<rect x="{x + 2 + j * step * 0.42:.1f}" y="{y0 + ph - bh:.1f}" width="{step * 0.4:.1f}" '
                f'height="{bh:.1f}" fill="{colour}"/>'
            )
        lx, ly = x + step / 2, y0 + ph + 8
        s.append(
            f'<text transform="translate({lx:.1f},{ly:.1f}) rotate(60)" font-size="10">'
            f'b{k[0]} {ctx_label(k[1])} {k[2]}/{k[3]}</text>'
        )
    s.append("</svg>")
    return "\n".join(s) + "\n"


def render(page, rep):
    blocks = {
        "yardsticks": yardsticks(rep),
        "mha-decode": decode_table(rep),
        "mha-prefill": prefill_table(rep),
        "mla-model": mla_model(),
        "other-rows": other_rows(rep),
    }
    for name, body in blocks.items():
        pat = re.compile(rf"(<!-- gen:{name} -->\n)(?:.*?\n)?(<!-- /gen:{name} -->)", re.S)
        if not pat.search(page):
            sys.exit(f"{PAGE}: no <!-- gen:{name} --> block")
        page = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), page)
    return page


def main(argv):
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    if len(args) != 1:
        sys.exit(__doc__)
    rep = load(args[0])
    page, svg = render(PAGE.read_text(), rep), chart(rep)
    if check:
        stale = [str(p) for p, want in ((PAGE, page), (CHART, svg)) if not p.exists() or p.read_text() != want]
        if stale:
            sys.exit(f"stale (rerun docs/perf/tables.py {args[0]}): {', '.join(stale)}")
        return
    PAGE.write_text(page)
    CHART.parent.mkdir(parents=True, exist_ok=True)
    CHART.write_text(svg)


if __name__ == "__main__":
    main(sys.argv[1:])
