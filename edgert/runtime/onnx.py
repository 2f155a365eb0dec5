"""Compiled ONNX networks on the device: load a ``kind: "onnx"`` artifact, run it on arrays,
time it (TFLite ``benchmark_model`` style: init, first inference, avg ± std over runs).

Needs numpy and the TVM runtime only: the weights come from the artifact (checksums verified at
load), the compute from its ``lib/model.so``.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgert.errors import EdgertError

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
        return json.loads(mf.read_text()).get("kind") == ONNX_KIND
    except (OSError, ValueError):
        return False


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
        self.outputs = [TensorSpec.from_dict(d) for d in g["outputs"]]
        lib = art.path / art.manifest["libs"]["model"]
        self.vm = VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
        self._main = self.vm["main"]
        self._params = [tvm.runtime.tensor(art.read_buffer(name, "data")) for name in g["params"]]

    @property
    def weight_bytes(self) -> int:
        return self.art.nbytes()

    def check_inputs(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The inputs in graph order, each checked against the compiled shape and dtype."""
        names = [s.name for s in self.inputs]
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
    art.check_target()
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


# -- latency benchmark ------------------------------------------------------------------------
@dataclass
class DnnBenchResult:
    model: str
    target: str
    weights: str
    size_bytes: int
    threads: int
    runs: int
    warmup: int
    init_s: float
    first_ms: float
    latency_ms: float
    latency_ms_std: float
    latency_ms_median: float
    latency_ms_min: float
    peak_rss_bytes: int
    samples: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [
            ("model", "size", "weights", "threads", "test", "ms"),
            (
                self.model,
                format_bytes(self.size_bytes),
                self.weights,
                str(self.threads),
                f"infer x{self.runs}",
                f"{self.latency_ms:.3f} ± {self.latency_ms_std:.3f}",
            ),
        ]
        from edgert.measure.bench import markdown_table

        lines = markdown_table(rows)
        lines.append(
            f"init {self.init_s * 1e3:.1f} ms, first inference {self.first_ms:.3f} ms, "
            f"median {self.latency_ms_median:.3f} ms, min {self.latency_ms_min:.3f} ms, "
            f"peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB"
        )
        return "\n".join(lines)


def bench_dnn(
    path: str | Path, *, threads: int, runs: int = 50, warmup: int = 3, seed: int = 0
) -> DnnBenchResult:
    """Open ``path`` (timed as init), run it once (first inference), ``warmup`` more times, then
    ``runs`` timed inferences on random inputs of the compiled shapes."""
    from edgert.measure.bench import peak_rss_bytes

    if runs < 1 or warmup < 0:
        raise EdgertError("-r must be >= 1 and --warmup >= 0")
    t0 = time.perf_counter()
    eng = open_dnn(path)
    init_s = time.perf_counter() - t0
    feeds = eng.random_inputs(seed)
    t = time.perf_counter()
    eng.run(feeds)
    first_ms = (time.perf_counter() - t) * 1e3
    for _ in range(warmup):
        eng.run(feeds)
    lat = []
    for _ in range(runs):
        t = time.perf_counter()
        eng.run(feeds)
        lat.append((time.perf_counter() - t) * 1e3)
    return DnnBenchResult(
        model=Path(path).name,
        target=eng.art.target.get("name", "?"),
        weights=eng.art.manifest.get("quant", {}).get("weights", "f32"),
        size_bytes=eng.weight_bytes,
        threads=threads,
        runs=runs,
        warmup=warmup,
        init_s=init_s,
        first_ms=first_ms,
        latency_ms=statistics.mean(lat),
        latency_ms_std=statistics.stdev(lat) if len(lat) > 1 else 0.0,
        latency_ms_median=statistics.median(lat),
        latency_ms_min=min(lat),
        peak_rss_bytes=peak_rss_bytes(),
        samples={"latency_ms": lat},
    )
