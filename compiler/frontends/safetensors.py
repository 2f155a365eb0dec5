"""A small safetensors reader (header JSON + raw little-endian data), memory-mapped."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edgert.errors import ModelFormatError, UnsupportedError
from edgert.format.model import is_int, printable

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
#: bytes per value of every safetensors dtype, read or not (a header's sizes are checked for all)
_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
    "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER = 100 << 20
MAX_DIMS = 8


class SafetensorsFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise ModelFormatError(f"{self.path}: truncated safetensors file")
                (hlen,) = struct.unpack("<Q", raw)
                size = self.path.stat().st_size
                if hlen > size - 8 or hlen > MAX_HEADER:
                    raise ModelFormatError(f"{self.path}: corrupt safetensors header length")
                header = json.loads(f.read(hlen))
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"{self.path}: unreadable safetensors file: {e}") from e
        if not isinstance(header, dict):
            raise ModelFormatError(f"{self.path}: safetensors header is not a JSON object")
        self.meta = header.pop("__metadata__", {}) or {}
        if not isinstance(self.meta, dict):
            raise ModelFormatError(f"{self.path}: safetensors __metadata__ is not a JSON object")
        self.header = header
        self.data_start = 8 + hlen
        for name, info in header.items():
            self._check(name, info, size - self.data_start)
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r") if header else None

    def _check(self, name: str, info: Any, data_size: int) -> None:
        """One header entry: dtype, shape and offsets consistent, its bytes inside the file."""

        def bad(what: str) -> ModelFormatError:
            return ModelFormatError(f"{self.path}: tensor {printable(name)} {what}")

        if not isinstance(info, dict):
            raise bad(f"has header entry {info!r:.40}, expected an object")
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _SIZES:
            raise bad(f"has dtype {dtype!r:.40}, expected one of {', '.join(_SIZES)}")
        if not (
            isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_uint(d) for d in shape)
        ):
            raise bad(f"has shape {shape!r:.60}, expected up to {MAX_DIMS} sizes >= 0")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_uint(o) for o in offs)):
            raise bad(f"has data_offsets {offs!r:.60}, expected [begin, end]")
        a, b = offs
        if a > b:
            raise bad(f"has data_offsets [{a}, {b}], expected begin <= end")
        if b > data_size:
            raise ModelFormatError(
                f"{self.path}: truncated ({self.data_start + data_size} bytes, tensor "
                f"{printable(name)} needs {self.data_start + b})"
            )
        if b - a != math.prod(shape) * _SIZES[dtype]:
            raise bad(f"has {b - a} bytes, expected {math.prod(shape) * _SIZES[dtype]} for {shape}")

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> str:
        return self.header[name]["dtype"]

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32."""
        info = self.header[name]
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise UnsupportedError(
                f"{self.path}: tensor {name} has dtype {info['dtype']}",
                "edgert reads F32, F16 and BF16 safetensors",
            )
        a, b = info["data_offsets"]
        buf = self._mm[self.data_start + a : self.data_start + b].view(dt).reshape(info["shape"])
        if info["dtype"] == "BF16":
            return (buf.astype(np.uint32) << 16).view(np.float32)
        return buf.astype(np.float32)


def _uint(v: Any) -> bool:
    return is_int(v) and v >= 0
