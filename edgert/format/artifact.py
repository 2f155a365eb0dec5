"""The artifact: ``NAME.edgert/`` — manifest.json, lib/, page-aligned weights/, tokenizer.

Written by the compiler through :class:`ArtifactWriter` (into a temporary directory, renamed into
place only when complete), read on the device by :class:`Artifact`, which verifies the manifest
(:func:`validate_manifest`: its schema, every path inside the artifact, every buffer's size
inside its file, the libraries' sha256), the target and checksums (resident data at load,
streamed data on first read).

The manifest's ``schema`` changes whenever a reader could misread an older one, and a reader
takes only its own: schema 2 added the libraries' sha256 (``lib_sha256``), so a schema 1
artifact, whose native code cannot be checked, is refused with a request to recompile it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import stat
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgert import __version__
from edgert.errors import EdgertError, show
from edgert.format.model import is_int, printable

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
PAGE = 4096
MANIFEST = "manifest.json"
RESIDENCIES = ("resident", "streamed")
#: the dtypes a buffer may have: plain little-endian numbers, what the writers store
DTYPES = frozenset(
    np.dtype(t).newbyteorder("<").str
    for t in (np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
              np.uint64, np.float16, np.float32, np.float64)
)  # fmt: skip
MAX_NDIM = 32  # numpy's own limit in 1.x


class ArtifactError(EdgertError):
    """A missing, corrupt or mismatched artifact."""


def crc32(buf: np.ndarray | bytes | memoryview) -> str:
    return f"{zlib.crc32(memoryview(buf).cast('B')) & 0xFFFFFFFF:08x}"


def crc32_file(path: str | Path, n: int, offset: int = 0) -> str:
    """:func:`crc32` of ``n`` bytes of a file from ``offset`` (fewer if it is shorter), read in
    pieces."""
    crc, left = 0, n
    with open(path, "rb") as f:
        f.seek(offset)
        while left:
            piece = f.read(min(left, 1 << 20))
            if not piece:
                break
            crc = zlib.crc32(piece, crc)
            left -= len(piece)
    return f"{crc & 0xFFFFFFFF:08x}"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


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

    def flush(self) -> None:
        """Write what was added through to the files (to read tensors back before the end)."""
        for f in self._files.values():
            f.flush()

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
            # a library is verified at load like the weights are (validate_manifest)
            self.manifest["lib_sha256"] = {
                k: sha256_file(self.tmp / rel) for k, rel in self.manifest["libs"].items()
            }
            (self.tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=1))
            os.chmod(self.tmp, 0o755)  # mkdtemp made it private
            if self.out.exists():
                shutil.rmtree(self.out)
            os.replace(self.tmp, self.out)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


def validate_manifest(manifest: Any, root: str | Path) -> None:
    """Check a manifest read from artifact ``root`` before anything uses it: the schema, the keys
    and types readers rely on, every path confined to ``root`` (relative, no ``..``, no symbolic
    link leading out), every buffer a known dtype whose shape fills its ``nbytes`` and lies
    inside its file (so nothing allocated from the manifest is larger than the artifact), the
    model config, and each library against its sha256. Raises ArtifactError naming the key, its
    value and what was expected."""
    root = Path(root)
    where = root / MANIFEST
    fix = "copy or compile the artifact again"

    def bad(key: str, value: Any, want: str) -> ArtifactError:
        return ArtifactError(f"{where}: {key} = {show(value)}, expected {want}", fix)

    if not isinstance(manifest, dict):
        raise bad("the manifest", manifest, "a JSON object")
    schema = manifest.get("schema")
    if schema != SCHEMA_VERSION:
        raise ArtifactError(
            f"{root} has artifact schema {show(schema)}, this edgert reads schema {SCHEMA_VERSION}",
            "recompile it with this edgert version",
        )
    for key, kind in (("tensors", dict), ("libs", dict), ("lib_sha256", dict)):
        if key not in manifest:
            raise ArtifactError(f"{where} lacks {key!r}", fix)
        if not isinstance(manifest[key], kind):
            raise bad(key, manifest[key], "a JSON object")
    for key in ("target", "model", "plan", "dram", "quant", "graph", "sparse_ffn", "source"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise bad(key, manifest[key], "a JSON object")
    for key in ("kind", "tokenizer"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise bad(key, manifest[key], "a string")
    for key in ("name", "arch"):
        v = (manifest.get("target") or {}).get(key)
        if v is not None and not isinstance(v, str):
            raise bad(f"target.{key}", v, "a string")
    real_root = root.resolve()

    def inside(key: str, rel: Any) -> Path:
        """``root/rel``, refusing a path that is not plainly inside the artifact."""
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise bad(key, rel, "a relative path inside the artifact")
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts:
            raise bad(key, rel, "a relative path inside the artifact")
        p = (root / rel).resolve()
        if real_root not in p.parents:
            raise bad(key, rel, "a path inside the artifact (it leads out through a link)")
        return p

    if manifest.get("tokenizer"):
        inside("tokenizer", manifest["tokenizer"])
    sha = manifest["lib_sha256"]
    for name, rel in manifest["libs"].items():
        p = inside(f"libs.{printable(name)}", rel)
        want = sha.get(name)
        if not isinstance(want, str) or len(want) != 64:
            raise bad(f"lib_sha256.{printable(name)}", want, "its sha256 (64 hex digits)")
        try:
            got = sha256_file(p)
        except OSError as e:
            raise ArtifactError(f"{root}: cannot read {printable(rel)}: {e.strerror}", fix) from e
        if got != want.lower():
            raise ArtifactError(
                f"{root}: {printable(rel)} fails its sha256 checksum (it is corrupt)", fix
            )
    sizes: dict[str, int] = {}  # file -> bytes
    for name, e in manifest["tensors"].items():
        tn = printable(name)
        t = f"tensors.{tn}"
        if not isinstance(e, dict):
            raise bad(t, e, "a JSON object")
        rel = e.get("file")
        p = inside(f"{t}.file", rel)
        if rel not in sizes:
            try:
                st = p.stat()
            except OSError as err:
                raise ArtifactError(
                    f"{root}: tensor {tn}: cannot read {printable(rel)}: {err.strerror}",
                    fix,
                ) from err
            if not stat.S_ISREG(st.st_mode):
                raise bad(f"{t}.file", rel, "a weight file, not a directory or device")
            sizes[rel] = st.st_size
        if e.get("residency") not in RESIDENCIES:
            raise bad(f"{t}.residency", e.get("residency"), " or ".join(RESIDENCIES))
        bufs = e.get("buffers")
        if not isinstance(bufs, dict):
            raise bad(f"{t}.buffers", bufs, "a JSON object")
        total = 0
        for part, b in bufs.items():
            k = f"{t}.buffers.{printable(part)}"
            if not isinstance(b, dict):
                raise bad(k, b, "a JSON object")
            for field in ("offset", "nbytes"):
                if not is_int(b.get(field)) or b[field] < 0:
                    raise bad(f"{k}.{field}", b.get(field), "an integer >= 0")
            if not isinstance(b.get("dtype"), str) or b["dtype"] not in DTYPES:
                raise bad(f"{k}.dtype", b.get("dtype"), f"one of {', '.join(sorted(DTYPES))}")
            shape = b.get("shape")
            if not (
                isinstance(shape, list)
                and len(shape) <= MAX_NDIM
                and all(is_int(d) and d >= 0 for d in shape)
            ):
                raise bad(f"{k}.shape", shape, f"a list of up to {MAX_NDIM} sizes >= 0")
            n = math.prod(shape) * np.dtype(b["dtype"]).itemsize
            if n != b["nbytes"]:
                raise bad(f"{k}.nbytes", b["nbytes"], f"{n} (shape {shape} of {b['dtype']})")
            if not isinstance(b.get("crc32"), str):
                raise bad(f"{k}.crc32", b.get("crc32"), "a checksum string")
            if b["offset"] + n > sizes[rel]:
                raise ArtifactError(
                    f"{root}: tensor {tn} is truncated ({printable(rel)} has {sizes[rel]} bytes, "
                    f"its {printable(part)} ends at {b['offset'] + n})",
                    fix,
                )
            total += n
        if e.get("nbytes") != total:
            raise bad(f"{t}.nbytes", e.get("nbytes"), f"{total}, the sum of its buffers")
    if manifest.get("model") is not None:
        from edgert.format.model import ModelConfig

        try:
            ModelConfig.from_dict(manifest["model"])
        except EdgertError as err:
            raise ArtifactError(f"{where}: model: {err.message}", fix) from None
    dram = manifest.get("dram")
    if dram is not None:
        for key, lo in (("budget", 0), ("ctx", 1)):
            if not is_int(dram.get(key)) or dram[key] < lo:
                raise bad(f"dram.{key}", dram.get(key), f"an integer >= {lo}")


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
        validate_manifest(manifest, p)
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

        if not isinstance(self.manifest.get("model"), dict):
            raise ArtifactError(f"{self.path} holds no language model (its manifest has no model)")
        return ModelConfig.from_dict(self.manifest["model"])

    def library(self, name: str = "model") -> Path:
        """The path of native library ``name`` (its sha256 was checked by :meth:`open`: a file
        replaced between the open and the load is not caught)."""
        rel = self.manifest["libs"].get(name)
        if rel is None:
            raise ArtifactError(f"{self.path} has no library {name!r}", "compile it again")
        return self.path / rel

    def check_target(
        self, machine: str | None = None, features=None, *, where: str = "this machine"
    ) -> None:
        """Refuse an artifact built for another CPU architecture than ``machine`` (default:
        this one's), naming both, or for CPU ``features`` it lacks (its code would stop with
        SIGILL; None: not known, not checked): a device's as it reports them, or this machine's
        (edgert.runtime.cpu.cpu_features) before a library loads."""
        from edgert.format.target import check_cpu_features

        machine = machine or platform.machine()
        want = self.target.get("arch")
        norm = {"arm64": "aarch64", "amd64": "x86_64"}
        if want and norm.get(machine.lower(), machine.lower()) != want:
            raise ArtifactError(
                f"{self.path} was compiled for target {self.target.get('name')} ({want}); "
                f"{where} is {machine}",
                f"compile with --target matching this device, or run it on a {want} device",
            )
        check_cpu_features(self.target, features, what=self.path.name, where=where)

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
                    raise self._damaged(name, "is truncated", "ends early")
                got += n
        finally:
            os.close(fd)
        key = f"{name}/{part}"
        if verify and key not in self._verified:
            if crc32(arr) != b["crc32"]:
                raise self._damaged(name, "fails its checksum", "is corrupt")
            self._verified.add(key)
        return arr

    def _damaged(self, name: str, what: str, file_state: str) -> ArtifactError:
        """The error for tensor ``name`` whose bytes on disk are not what the manifest says."""
        f = self.tensors[name]["file"]
        return ArtifactError(
            f"{self.path}: tensor {name} {what} ({f} {file_state})",
            "copy or compile the artifact again",
        )

    def read_tensor(self, name: str, *, verify: bool = True) -> dict[str, np.ndarray]:
        return {p: self.read_buffer(name, p, verify=verify) for p in self.tensors[name]["buffers"]}

    def read_rows(self, name: str, rows, fd: int) -> dict[str, np.ndarray]:
        """Rows ``rows`` of every buffer of tensor ``name`` (a buffer's first axis is the row, as
        in an embedding table), read from ``fd`` (its file, opened by the caller) with one pread
        per row and buffer; the buffers' checksums are :meth:`check_buffer`'s."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        e = self.tensors[name]
        out = {}
        for part, b in e["buffers"].items():
            n_rows = b["shape"][0]
            bad = rows[(rows < 0) | (rows >= n_rows)]
            if bad.size:
                raise ArtifactError(f"{self.path}: row {int(bad[0])} of {name} out of range")
            arr = np.empty((rows.size, *b["shape"][1:]), dtype=np.dtype(b["dtype"]))
            step = b["nbytes"] // n_rows
            view = memoryview(arr).cast("B")
            for j, r in enumerate(rows.tolist()):
                got = os.preadv(fd, [view[j * step : (j + 1) * step]], b["offset"] + r * step)
                if got != step:
                    raise self._damaged(name, "is truncated", "ends early")
            out[part] = arr
        return out

    def check_buffer(self, name: str, part: str) -> None:
        """Check one buffer's checksum reading its file in pieces (never held whole)."""
        e = self.tensors[name]
        b = e["buffers"][part]
        if crc32_file(self.path / e["file"], b["nbytes"], b["offset"]) != b["crc32"]:
            raise self._damaged(name, "fails its checksum", "is corrupt")
        self._verified.add(f"{name}/{part}")

    def record(self, name: str) -> dict[str, np.ndarray] | None:
        """A record the compiler stored beside the model (a routing or activity trace, the
        bundle index), or None where this artifact has none."""
        return self.read_tensor(name) if name in self.tensors else None

    def verify(self, *, residency: str | None = None, skip=(), pieces=()) -> None:
        """Check every buffer's checksum (buffers already read and checked, and tensors in
        ``skip``, are not read; tensors in ``pieces`` are read a piece at a time, never held)."""
        for name, e in self.tensors.items():
            if (residency is None or e["residency"] == residency) and name not in skip:
                for part in e["buffers"]:
                    if f"{name}/{part}" not in self._verified:
                        if name in pieces:
                            self.check_buffer(name, part)
                        else:
                            self.read_buffer(name, part)

    def nbytes(self, residency: str | None = None) -> int:
        return sum(
            e["nbytes"]
            for e in self.tensors.values()
            if residency is None or e["residency"] == residency
        )
