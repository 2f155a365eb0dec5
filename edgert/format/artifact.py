"""The artifact: ``NAME.edgert/`` — manifest.json, lib/, page-aligned weights/, tokenizer.

Written by the compiler through :class:`ArtifactWriter` (into a temporary directory, renamed into
place only when complete), read on the device by :class:`Artifact`, which verifies the schema,
the target and checksums (resident data at load, streamed data on first read).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgert import __version__
from edgert.errors import EdgertError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PAGE = 4096
MANIFEST = "manifest.json"
RESIDENCIES = ("resident", "streamed")


class ArtifactError(EdgertError):
    """A missing, corrupt or mismatched artifact."""


def crc32(buf: np.ndarray | bytes | memoryview) -> str:
    return f"{zlib.crc32(memoryview(buf).cast('B')) & 0xFFFFFFFF:08x}"


def crc32_file(path: str | Path, n: int) -> str:
    """:func:`crc32` of the first ``n`` bytes of a file (fewer if it is shorter), read in pieces."""
    crc, left = 0, n
    with open(path, "rb") as f:
        while left:
            piece = f.read(min(left, 1 << 20))
            if not piece:
                break
            crc = zlib.crc32(piece, crc)
            left -= len(piece)
    return f"{crc & 0xFFFFFFFF:08x}"


def _align(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


class ArtifactWriter:
    """Build an artifact atomically.

    ``with ArtifactWriter(out) as w: w.add_tensor(...); w.manifest[...] = ...`` — on a clean exit
    the manifest is written and the temporary directory renamed to ``out``; on an exception it is
    removed, so a failed compile never leaves a valid-looking artifact.
    """

    def __init__(self, out: str | Path, *, force: bool = False):
        self.out = Path(out)
        if self.out.exists() and not force:
            raise ArtifactError(f"{self.out} already exists", "choose another -o or pass --force")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        (self.tmp / "weights").mkdir()
        (self.tmp / "lib").mkdir()
        self.force = force
        self._files: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "edgert_version": __version__,
            "tensors": {},
            "libs": {},
        }

    @property
    def path(self) -> Path:
        """Where files go while the artifact is being written."""
        return self.tmp

    def __enter__(self) -> "ArtifactWriter":
        return self

    def _fh(self, rel: str):
        f = self._files.get(rel)
        if f is None:
            f = open(self.tmp / rel, "wb")
            self._files[rel] = f
        return f

    def add_tensor(
        self,
        name: str,
        buffers: dict[str, np.ndarray],
        *,
        meta: dict[str, Any] | None = None,
        residency: str = "resident",
        file: str | None = None,
    ) -> None:
        """Append ``buffers`` (each page-aligned) to a weights file and index them as ``name``."""
        if residency not in RESIDENCIES:
            raise ValueError(f"residency {residency!r}")
        if name in self.manifest["tensors"]:
            raise ValueError(f"tensor {name} added twice")
        rel = file or f"weights/{residency}.bin"
        f = self._fh(rel)
        entry: dict[str, Any] = {"file": rel, "residency": residency, **(meta or {}), "buffers": {}}
        for part, arr in buffers.items():
            arr = np.require(arr, requirements="C")  # keeps 0-d arrays 0-d
            off = f.tell()
            pad = _align(off) - off
            if pad:
                f.write(b"\0" * pad)
                off += pad
            f.write(memoryview(arr).cast("B"))
            entry["buffers"][part] = {
                "offset": off,
                "nbytes": int(arr.nbytes),
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "crc32": crc32(arr),
            }
        entry["nbytes"] = int(sum(b["nbytes"] for b in entry["buffers"].values()))
        self.manifest["tensors"][name] = entry

    def add_file(self, src: str | Path, rel: str) -> None:
        dst = self.tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)

    def __exit__(self, exc_type, exc, tb) -> None:
        for f in self._files.values():
            f.close()
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            for rel in self._files:  # pad weight files to a page so O_DIRECT reads stay in bounds
                p = self.tmp / rel
                size = p.stat().st_size
                with open(p, "ab") as f:
                    f.write(b"\0" * (_align(size) - size))
            (self.tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=1))
            os.chmod(self.tmp, 0o755)  # mkdtemp made it private
            if self.out.exists():
                shutil.rmtree(self.out)
            os.replace(self.tmp, self.out)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


@dataclass
class TensorEntry:
    name: str
    info: dict[str, Any]

    @property
    def residency(self) -> str:
        return self.info["residency"]


class Artifact:
    """A compiled model on disk. ``Artifact.open(path)`` verifies it before anything runs."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self._verified: set[str] = set()

    @classmethod
    def open(cls, path: str | Path, *, verify_resident: bool = True) -> "Artifact":
        p = Path(path).expanduser()
        if not p.is_dir():
            raise ArtifactError(f"no artifact at {p}", "compile one with `edgert compile`")
        mf = p / MANIFEST
        try:
            manifest = json.loads(mf.read_text())
        except FileNotFoundError as e:
            raise ArtifactError(f"{p} has no {MANIFEST}: not an edgert artifact") from e
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{mf} is corrupt: {e}", "compile the artifact again") from e
        schema = manifest.get("schema")
        if schema != SCHEMA_VERSION:
            raise ArtifactError(
                f"{p} has artifact schema {schema}, this edgert reads schema {SCHEMA_VERSION}",
                "recompile it with this edgert version",
            )
        art = cls(p, manifest)
        if verify_resident:
            art.verify(residency="resident")
        return art

    # -- description ---------------------------------------------------------------------------
    @property
    def target(self) -> dict[str, Any]:
        return self.manifest.get("target", {})

    @property
    def tensors(self) -> dict[str, dict[str, Any]]:
        return self.manifest["tensors"]

    def config(self):
        from edgert.format.model import ModelConfig

        return ModelConfig.from_dict(self.manifest["model"])

    def check_target(self, machine: str | None = None) -> None:
        """Refuse an artifact built for another CPU architecture, naming both."""
        machine = machine or platform.machine()
        want = self.target.get("arch")
        norm = {"arm64": "aarch64", "amd64": "x86_64"}
        if want and norm.get(machine.lower(), machine.lower()) != want:
            raise ArtifactError(
                f"{self.path} was compiled for target {self.target.get('name')} ({want}); "
                f"this machine is {machine}",
                f"compile with --target matching this device, or run it on a {want} device",
            )

    # -- data ----------------------------------------------------------------------------------
    def read_buffer(self, name: str, part: str, *, verify: bool = True) -> np.ndarray:
        """One buffer of tensor ``name`` (read with pread; checksum verified on first read)."""
        try:
            e = self.tensors[name]
            b = e["buffers"][part]
        except KeyError as err:
            raise ArtifactError(f"{self.path}: no tensor buffer {name}/{part}") from err
        fpath = self.path / e["file"]
        arr = np.empty(b["shape"], dtype=np.dtype(b["dtype"]))
        view = memoryview(arr).cast("B")
        try:
            fd = os.open(fpath, os.O_RDONLY)
        except OSError as err:
            raise ArtifactError(f"{self.path}: cannot open {e['file']}: {err.strerror}") from err
        try:
            got = 0
            while got < b["nbytes"]:
                n = os.preadv(fd, [view[got:]], b["offset"] + got)
                if n <= 0:
                    raise ArtifactError(
                        f"{self.path}: tensor {name} is truncated ({e['file']} ends early)",
                        "copy or compile the artifact again",
                    )
                got += n
        finally:
            os.close(fd)
        key = f"{name}/{part}"
        if verify and key not in self._verified:
            if crc32(arr) != b["crc32"]:
                raise ArtifactError(
                    f"{self.path}: tensor {name} fails its checksum ({e['file']} is corrupt)",
                    "copy or compile the artifact again",
                )
            self._verified.add(key)
        return arr

    def read_tensor(self, name: str, *, verify: bool = True) -> dict[str, np.ndarray]:
        return {p: self.read_buffer(name, p, verify=verify) for p in self.tensors[name]["buffers"]}

    def record(self, name: str) -> dict[str, np.ndarray] | None:
        """A record the compiler stored beside the model (a routing or activity trace, the
        bundle index), or None where this artifact has none."""
        return self.read_tensor(name) if name in self.tensors else None

    def verify(self, *, residency: str | None = None, skip=()) -> None:
        """Check every buffer's checksum (buffers already read and checked, and tensors in
        ``skip``, are not read)."""
        for name, e in self.tensors.items():
            if (residency is None or e["residency"] == residency) and name not in skip:
                for part in e["buffers"]:
                    if f"{name}/{part}" not in self._verified:
                        self.read_buffer(name, part)

    def nbytes(self, residency: str | None = None) -> int:
        return sum(
            e["nbytes"]
            for e in self.tensors.values()
            if residency is None or e["residency"] == residency
        )
