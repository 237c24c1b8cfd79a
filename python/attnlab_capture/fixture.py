"""Reading and writing attn-fixture/1 and /2 files (one case per .safetensors file).

The safetensors container is small enough to read and write here without torch:
an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw bytes. Keeping this layer torch-free lets the
validation and the CLI's error reporting run (and be tested) on machines without
a GPU stack. Tensors stay raw bytes; `numpy_view` gives integer and float views
where numpy has the dtype (bf16 and fp8 stay raw).
"""

from __future__ import annotations

import array
import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_V1 = "attn-fixture/1"
FORMAT_V2 = "attn-fixture/2"
FORMATS = (FORMAT_V1, FORMAT_V2)

# safetensors dtype tag -> bytes per element
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}

# the fixture's `dtype` metadata -> safetensors tag of query/caches/output
FIXTURE_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}

# refuse headers beyond this: a fixture header is a few KiB
MAX_HEADER_BYTES = 16 * 1024 * 1024


class FixtureError(Exception):
    """A case/fixture file that cannot be used, with the file named in the message."""

    def __init__(self, path, message: str):
        self.path = str(path)
        self.detail = message
        super().__init__(f"{self.path}: {message}")


@dataclass
class RawTensor:
    dtype: str
    shape: tuple
    data: bytes

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def values(self) -> list:
        """The elements as a flat Python list (integer and f32/f64 dtypes), without numpy."""
        codes = {"I32": "i", "I64": "q", "I16": "h", "I8": "b", "U8": "B", "F32": "f", "F64": "d"}
        if self.dtype not in codes:
            raise TypeError(f"no flat list for safetensors {self.dtype}")
        a = array.array(codes[self.dtype])
        a.frombytes(self.data)
        if sys.byteorder != "little":
            a.byteswap()
        return a.tolist()

    def numpy_view(self):
        """A read-only numpy array for dtypes numpy has (not BF16/F8)."""
        import numpy as np

        np_dtypes = {
            "F64": np.float64,
            "F32": np.float32,
            "F16": np.float16,
            "I64": np.int64,
            "I32": np.int32,
            "I16": np.int16,
            "I8": np.int8,
            "U8": np.uint8,
            "BOOL": np.bool_,
        }
        if self.dtype not in np_dtypes:
            raise TypeError(f"numpy has no dtype for safetensors {self.dtype}")
        return np.frombuffer(self.data, dtype=np_dtypes[self.dtype]).reshape(self.shape)


@dataclass
class Case:
    """One case: its metadata (the `case` JSON object) and its tensors."""

    path: Path
    meta: dict
    tensors: dict = field(default_factory=dict)

    @property
    def op(self) -> str:
        return self.meta.get("op", "")

    @property
    def format(self) -> str:
        return self.meta.get("format", "")

    def has_output(self) -> bool:
        return "output" in self.tensors


def read_case(path) -> Case:
    """Read one fixture/case file; FixtureError on anything malformed."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise FixtureError(path, f"cannot read: {e.strerror or e}") from None
    if len(blob) < 8:
        raise FixtureError(path, f"file is {len(blob)} bytes; a safetensors file starts with an 8-byte header length")
    (hlen,) = struct.unpack("<Q", blob[:8])
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(blob):
        raise FixtureError(
            path,
            f"header length {hlen} is beyond the file ({len(blob)} bytes) or the limit {MAX_HEADER_BYTES}",
        )
    try:
        header = json.loads(blob[8 : 8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FixtureError(path, f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise FixtureError(path, "header is not a JSON object")
    meta_map = header.pop("__metadata__", None) or {}
    if "case" not in meta_map:
        raise FixtureError(path, "no __metadata__['case'] (an attn-fixture file keeps its case JSON there)")
    try:
        meta = json.loads(meta_map["case"])
    except (TypeError, json.JSONDecodeError) as e:
        raise FixtureError(path, f"__metadata__['case'] is not JSON: {e}") from None
    if not isinstance(meta, dict):
        raise FixtureError(path, "__metadata__['case'] is not a JSON object")
    fmt = meta.get("format")
    if fmt not in FORMATS:
        raise FixtureError(path, f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    body = memoryview(blob)[8 + hlen :]
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise FixtureError(path, f"tensor {name}: header entry is not an object")
        dtype = info.get("dtype")
        shape = info.get("shape")
        offs = info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise FixtureError(path, f"tensor {name}: dtype {dtype!r} is not one of {', '.join(DTYPE_SIZES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise FixtureError(path, f"tensor {name}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            raise FixtureError(path, f"tensor {name}: data_offsets {offs!r} is not [begin, end]")
        begin, end = offs
        n = 1
        for d in shape:
            n *= d
        want = n * DTYPE_SIZES[dtype]
        if not (0 <= begin <= end <= len(body)) or end - begin != want:
            raise FixtureError(
                path,
                f"tensor {name}: bytes [{begin}, {end}) do not hold {dtype} {shape} ({want} bytes) "
                f"within the {len(body)}-byte body",
            )
        tensors[name] = RawTensor(dtype, tuple(shape), bytes(body[begin:end]))
    return Case(path=path, meta=meta, tensors=tensors)


def encode_case(meta: dict, tensors: dict) -> bytes:
    """The safetensors bytes of a case (tensors sorted by name, 8-byte aligned header)."""
    header = {"__metadata__": {"case": json.dumps(meta, sort_keys=True)}}
    offset = 0
    chunks = []
    for name in sorted(tensors):
        t = tensors[name]
        size = len(t.data)
        expect = t.numel * DTYPE_SIZES[t.dtype]
        if size != expect:
            raise ValueError(f"tensor {name}: {size} bytes for {t.dtype} {list(t.shape)} (expected {expect})")
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        chunks.append(t.data)
        offset += size
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    return struct.pack("<Q", len(hbytes)) + hbytes + b"".join(chunks)


def write_case(path, meta: dict, tensors: dict) -> None:
    """Write atomically (temp file + rename) so an interrupted capture leaves the old file."""
    path = Path(path)
    data = encode_case(meta, tensors)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def list_case_files(directory) -> list:
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        raise FixtureError(directory, "is neither a directory of cases nor a case file")
    return sorted(p for p in directory.rglob("*.safetensors") if p.is_file())
