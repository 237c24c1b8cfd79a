"""Carry captured outputs back from a GPU machine in a few compressed files.

A capture of thousands of cases writes thousands of fixtures, mostly inputs
that `attnlab cases` regenerates from its seed anywhere. `pack` keeps only what
the capture added (output, output_lse and the metadata it wrote), keyed by the
case's relative path and a SHA-256 of its input tensors, in xz-compressed
chunks of bounded size; `apply` writes them into the regenerated cases here,
refusing any case whose inputs differ from the ones captured.

    python -m attnlab_capture.bundle pack FIXTURES OUTDIR [--chunk-mib 15] [--max-chunks 4]
    python -m attnlab_capture.bundle apply CASES BUNDLE... [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import struct
import sys
from pathlib import Path

from .fixture import Case, FixtureError, RawTensor, encode_case, list_case_files, read_case, write_case

OUTPUT_TENSORS = ("output", "output_lse")
CAPTURE_KEYS = ("format", "launch", "capture", "producer", "capture_error", "num_kv_splits")
BUNDLE_FORMAT = "attn-capture-bundle/1"


def inputs_digest(case: Case) -> str:
    """SHA-256 over the input tensors (name, dtype, shape, bytes), outputs excluded."""
    h = hashlib.sha256()
    for name in sorted(case.tensors):
        if name in OUTPUT_TENSORS:
            continue
        t = case.tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.data)
    return h.hexdigest()


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if root.is_dir() else path.name


def _encode_chunk(items):
    entries, tensors = [], {}
    for i, (rel, digest, meta, added) in enumerate(items):
        entries.append({"case": rel, "inputs_sha256": digest, "meta": meta, "tensors": {k: f"{i}.{k}" for k in added}})
        for k, t in added.items():
            tensors[f"{i}.{k}"] = t
    raw = encode_case({"format": BUNDLE_FORMAT, "entries": entries}, tensors)
    return raw, lzma.compress(raw, preset=3)


def pack(fixtures, out_dir, chunk_bytes=15 << 20, max_chunks=4):
    """Write captures-NNN.xz chunks of at most `chunk_bytes` (compressed) into out_dir.

    Returns {"chunks", "entries", "left_out"}: what did not fit in `max_chunks`
    chunks is listed by case path (rerun those cases, or pack with more chunks).
    """
    root = Path(fixtures)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for f in list_case_files(root):
        case = read_case(f)
        added = {k: v for k, v in case.tensors.items() if k in OUTPUT_TENSORS}
        meta = {k: case.meta[k] for k in CAPTURE_KEYS if k in case.meta}
        items.append((_rel(f, root), inputs_digest(case), meta, added))
    sizes = [sum(len(t.data) for t in it[3].values()) + 2048 for it in items]
    chunks, left_out, packed = [], [], 0
    ratio = 1.0  # compressed / raw, learned from the chunks written so far
    pos = 0
    while pos < len(items) and len(chunks) < max_chunks:
        budget = min(chunk_bytes / max(ratio, 0.05), 20 * chunk_bytes)
        count, total = 0, 0
        while pos + count < len(items) and (count == 0 or total + sizes[pos + count] <= budget):
            total += sizes[pos + count]
            count += 1
        while True:
            raw, blob = _encode_chunk(items[pos : pos + count])
            if len(blob) <= chunk_bytes or count == 1:
                break
            count = max(1, int(count * chunk_bytes / len(blob) * 0.95))
        if len(blob) > chunk_bytes:  # one capture alone is too big
            left_out.append(items[pos][0])
            pos += 1
            continue
        path = out_dir / f"captures-{len(chunks):03d}.xz"
        path.write_bytes(blob)
        chunks.append(str(path))
        ratio = len(blob) / max(len(raw), 1)
        packed += count
        pos += count
    left_out.extend(it[0] for it in items[pos:])
    return {"chunks": chunks, "entries": packed, "left_out": left_out}


def read_bundle(path):
    """(entries, tensors) of one bundle chunk."""
    try:
        blob = lzma.decompress(Path(path).read_bytes())
    except (OSError, lzma.LZMAError) as e:
        raise FixtureError(path, f"not a readable xz capture bundle: {e}") from None
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + hlen])
    meta = json.loads(header.pop("__metadata__")["case"])
    if meta.get("format") != BUNDLE_FORMAT:
        raise FixtureError(path, f"not a capture bundle (format {meta.get('format')!r}, expected {BUNDLE_FORMAT})")
    body = blob[8 + hlen :]
    tensors = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        tensors[name] = RawTensor(info["dtype"], tuple(info["shape"]), bytes(body[b:e]))
    return meta["entries"], tensors


def apply(cases_dir, bundles, out_dir=None):
    """Write each bundled capture into its case; returns {"applied", "errors"}."""
    root = Path(cases_dir)
    applied, errors = 0, []
    for b in bundles:
        entries, tensors = read_bundle(b)
        for e in entries:
            src = root / e["case"]
            try:
                case = read_case(src)
            except FixtureError as err:
                errors.append(str(err))
                continue
            if inputs_digest(case) != e["inputs_sha256"]:
                errors.append(
                    f"{src}: its inputs differ from the captured case's (regenerate the cases with the same "
                    f"`attnlab cases` command and seed as on the GPU machine)"
                )
                continue
            meta = dict(case.meta)
            meta.pop("capture_error", None)
            meta.update(e["meta"])
            new = {k: v for k, v in case.tensors.items() if k not in OUTPUT_TENSORS}
            for k, name in e["tensors"].items():
                new[k] = tensors[name]
            dest = src if out_dir is None else Path(out_dir) / e["case"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_case(dest, meta, new)
            applied += 1
    return {"applied": applied, "errors": errors}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m attnlab_capture.bundle", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="bundle the outputs of captured fixtures")
    p.add_argument("fixtures", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--chunk-mib", type=float, default=15.0)
    p.add_argument("--max-chunks", type=int, default=4)
    a = sub.add_parser("apply", help="write bundled outputs into regenerated cases")
    a.add_argument("cases", type=Path)
    a.add_argument("bundles", type=Path, nargs="+")
    a.add_argument("--out", type=Path, default=None, help="write fixtures here instead of into the cases")
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        r = pack(args.fixtures, args.out, int(args.chunk_mib * (1 << 20)), args.max_chunks)
        print(json.dumps(r, indent=1))
        if r["left_out"]:
            print(f"warning: {len(r['left_out'])} captures did not fit in {args.max_chunks} chunks", file=sys.stderr)
        return 0
    r = apply(args.cases, args.bundles, args.out)
    for e in r["errors"]:
        print(f"error: {e}", file=sys.stderr)
    print(f"applied {r['applied']} captures, {len(r['errors'])} errors")
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
