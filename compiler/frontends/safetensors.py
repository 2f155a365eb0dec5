"""A small safetensors reader (header JSON + raw little-endian data), memory-mapped."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from edgert.errors import ModelFormatError, UnsupportedError

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


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
                if hlen > size - 8 or hlen > 100 << 20:
                    raise ModelFormatError(f"{self.path}: corrupt safetensors header length")
                header = json.loads(f.read(hlen))
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"{self.path}: unreadable safetensors file: {e}") from e
        self.meta = header.pop("__metadata__", {}) or {}
        self.header = header
        self.data_start = 8 + hlen
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if self.data_start + end > size:
            raise ModelFormatError(
                f"{self.path}: truncated ({size} bytes, tensors need {self.data_start + end})"
            )
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r") if header else None

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
