"""Compiled ONNX networks on the device: load a ``kind: "onnx"`` artifact and run it on arrays
(timing it: edgert.measure.onnx).

Needs numpy and the TVM runtime only: the weights come from the artifact (checksums verified at
load), the compute from its ``lib/model.so``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgert.errors import EdgertError
from edgert.runtime.cpu import cpu_features

log = logging.getLogger(__name__)

ONNX_KIND = "onnx"


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, static shape and numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], tuple(int(x) for x in d["shape"]), d["dtype"])

    def describe(self) -> str:
        return f"{self.name} {format_shape(self.shape)} {self.dtype}"


def format_shape(shape: Iterable) -> str:
    parts = [str(d) for d in shape]
    return "x".join(parts) if parts else "scalar"


def format_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def is_dnn_artifact(path: str | Path) -> bool:
    """True for an artifact directory compiled from an ONNX model (no checks beyond the kind)."""
    import json

    mf = Path(path).expanduser() / "manifest.json"
    try:
        m = json.loads(mf.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("kind") == ONNX_KIND  # the rest is Artifact.open's


def tvm_runtime():
    """(tvm, the Relax VirtualMachine class) with TVM's runtime library alone: where this process
    has not imported TVM yet, ``TVM_USE_RUNTIME_LIB=1`` keeps its compiler library (259 MB) out."""
    import os
    import sys

    set_here = "tvm" not in sys.modules and "TVM_USE_RUNTIME_LIB" not in os.environ
    if set_here:
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    try:
        import tvm
        from tvm.runtime.vm import VirtualMachine
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EdgertError(
            "running compiled ONNX models needs the TVM runtime", "pip install 'edgert[runtime]'"
        ) from e
    finally:
        if set_here:  # the mode is chosen at import; children start as they would have
            del os.environ["TVM_USE_RUNTIME_LIB"]
    return tvm, VirtualMachine


class DnnEngine:
    """``run({name: array}) -> {name: array}`` over a compiled ONNX artifact."""

    def __init__(self, art):
        tvm, VirtualMachine = tvm_runtime()
        self._tvm = tvm
        self.art = art
        g = art.manifest["graph"]
        self.inputs = [TensorSpec.from_dict(d) for d in g["inputs"]]
        #: inputs compiled in as constants (``--input-value``) -> the value they were pinned to
        self.pinned = {
            d["name"]: np.asarray(d["value"], dtype=d["dtype"]).reshape(d["shape"])
            for d in g.get("pinned", [])
        }
        self.outputs = [TensorSpec.from_dict(d) for d in g["outputs"]]
        lib = art.library()
        self.vm = VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
        self._main = self.vm["main"]
        self._params = [tvm.runtime.tensor(art.read_buffer(name, "data")) for name in g["params"]]

    @property
    def weight_bytes(self) -> int:
        return self.art.nbytes()

    def check_inputs(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The inputs in graph order, each checked against the compiled shape and dtype (a pinned
        input may be fed too, with the value it was compiled for)."""
        names = [s.name for s in self.inputs]
        for name in set(feeds) & set(self.pinned):
            a, want = np.asarray(feeds[name]), self.pinned[name]
            if a.shape != want.shape or not np.array_equal(
                a, want, equal_nan=want.dtype.kind == "f"
            ):
                raise EdgertError(
                    f"input {name} was compiled in as {want.tolist()}; this run gives "
                    f"{np.array2string(a, threshold=16)}",
                    f"recompile with --input-value {name}=... for that value",
                )
        feeds = {k: v for k, v in feeds.items() if k not in self.pinned}
        extra = sorted(set(feeds) - set(names))
        if extra:
            raise EdgertError(
                f"the model has no input {', '.join(extra)}", f"its inputs are {', '.join(names)}"
            )
        out = []
        for s in self.inputs:
            if s.name not in feeds:
                raise EdgertError(
                    f"input {s.describe()} is missing", f"pass --input {s.name}=FILE.npy"
                )
            a = np.asarray(feeds[s.name])
            if tuple(a.shape) != s.shape:
                raise EdgertError(
                    f"input {s.name} has shape {format_shape(a.shape)}, the artifact was compiled "
                    f"for {format_shape(s.shape)}",
                    f"reshape the input, or recompile with --input-shape "
                    f"{s.name}:{format_shape(a.shape)}",
                )
            want = np.dtype(s.dtype)
            if a.dtype != want:
                if not np.can_cast(a.dtype, want, casting="same_kind"):
                    raise EdgertError(
                        f"input {s.name} is {a.dtype}, the model takes {want}",
                        f"save the array as {want}",
                    )
                a = a.astype(want)
            out.append(np.require(a, requirements="C"))
        return out

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self.check_inputs(feeds)
        res = self._main(*[self._tvm.runtime.tensor(a) for a in arrays], *self._params)
        outs = list(res) if len(self.outputs) > 1 else [res]
        return {s.name: o.numpy() for s, o in zip(self.outputs, outs)}

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs of the compiled shapes and dtypes (normal floats, small integers, booleans)."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for s in self.inputs:
            dt = np.dtype(s.dtype)
            if dt.kind == "f":
                feeds[s.name] = rng.standard_normal(s.shape).astype(dt)
            elif dt.kind == "b":
                feeds[s.name] = rng.integers(0, 2, s.shape).astype(dt)
            else:
                feeds[s.name] = rng.integers(0, 8, s.shape).astype(dt)
        return feeds


def open_dnn(path: str | Path) -> DnnEngine:
    """Open a compiled ONNX artifact (schema, target and weight checksums verified)."""
    from edgert.format.artifact import Artifact, ArtifactError

    art = Artifact.open(path)
    if art.manifest.get("kind") != ONNX_KIND:
        raise ArtifactError(
            f"{art.path} is a language-model artifact, not a compiled ONNX model",
            "use `edgert generate ART -p PROMPT` or `edgert run ART -p PROMPT`",
        )
    art.check_target(features=cpu_features())  # before its library is loaded
    return DnnEngine(art)


# -- files in, files out ------------------------------------------------------------------------
def load_inputs(specs: list[str], inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """``--input`` values: ``FILE.npy`` (the only input), ``NAME=FILE.npy``, or one ``.npz`` whose
    keys are input names."""
    feeds: dict[str, np.ndarray] = {}
    for s in specs:
        name, sep, file = s.partition("=")
        if not sep:
            name, file = "", s
        p = Path(file).expanduser()
        if not p.is_file():
            raise EdgertError(f"no such input file: {p}", "pass an existing .npy or .npz file")
        try:
            data = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise EdgertError(f"{p} is not a numpy .npy/.npz file ({e})") from e
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                for k in data.files:
                    feeds[k] = data[k]
            continue
        if not name:
            if len(inputs) != 1:
                raise EdgertError(
                    f"the model has {len(inputs)} inputs; {p.name} does not say which it is",
                    "write --input NAME=FILE.npy for each, or pass one .npz",
                )
            name = inputs[0].name
        feeds[name] = data
    return feeds


def save_outputs(outputs: dict[str, np.ndarray], path: str | Path) -> Path:
    """One output to ``.npy``; several (or any, if the name ends in ``.npz``) to ``.npz``."""
    p = Path(path).expanduser()
    if p.suffix == ".npz" or len(outputs) > 1:
        if p.suffix != ".npz":
            raise EdgertError(
                f"the model has {len(outputs)} outputs; {p.name} is a single-array .npy name",
                "use an .npz output file",
            )
        np.savez(p, **outputs)
    else:
        np.save(p, next(iter(outputs.values())))
    return p
