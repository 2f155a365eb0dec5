"""edgert as an ONNX backend (``onnx.backend.base.Backend``), so the ONNX backend test suite that
ships with the ``onnx`` package runs against it: ``prepare`` compiles the model for the host target
(``compile_onnx``, as ``edgert compile`` does) into a temporary artifact, and ``run`` feeds it
through the artifact's executor (``edgert.runtime.onnx.DnnEngine``). Inputs that set shapes, axes
or counts (which edgert compiles as constants) are pinned to the values the first run feeds, as
``edgert compile --input-value`` pins them, and the model is compiled again for other values.

``classify`` runs one suite case through any backend and says what came of it: ``pass``,
``fail`` (outputs differ beyond the case's tolerances), ``refused`` (an ``EdgertError`` or the
backend's own "not supported": a one-line error naming the problem) or ``error`` (anything else: a
traceback, which for edgert is a defect). ``tools/onnx_backend_suite.py`` tabulates it for every
case, next to onnxruntime.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgert.errors import EdgertError


def _feeds(inputs, names: list[str]) -> dict:
    """``run``'s inputs (in graph order, or by name) as ``{name: array}``."""
    if isinstance(inputs, dict):
        return dict(inputs)
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if len(inputs) != len(names):
        raise EdgertError(
            f"{len(inputs)} inputs given, the model takes {len(names)}",
            f"its inputs are {', '.join(names) or 'none'}",
        )
    return dict(zip(names, inputs))


class EdgertRep:
    """A compiled model (``onnx.backend.base.BackendRep``'s interface): ``run(inputs)`` with the
    inputs in graph order (or by name) returns the outputs in graph order."""

    def __init__(self, engine, workdir: Path):
        self.engine = engine
        self._workdir = workdir

    def run(self, inputs, **kwargs) -> tuple[np.ndarray, ...]:
        feeds = _feeds(inputs, [s.name for s in self.engine.inputs])
        return tuple(self.engine.run(feeds).values())

    def __del__(self):
        shutil.rmtree(self._workdir, ignore_errors=True)


class PinnedRep:
    """A model with inputs the importer needs constant (a reduction's axes fed at run time,
    Reshape's shape, TopK's k, ...: ``semantics.VALUE_INPUTS``): edgert compiles static shapes,
    so it is compiled at its first run with those inputs pinned to the values fed
    (``--input-value``), and again for any other values a later run feeds."""

    def __init__(self, path: Path, names: list[str], pinned: list[str], workdir: Path):
        self._path, self._names, self._pinned, self._workdir = path, names, pinned, workdir
        self._compiled: dict[tuple, object] = {}

    def run(self, inputs, **kwargs) -> tuple[np.ndarray, ...]:
        feeds = _feeds(inputs, self._names)
        missing = [n for n in self._pinned if n not in feeds]
        if missing:
            raise EdgertError(f"input {', '.join(missing)} is missing")
        values = {n: np.asarray(feeds[n]) for n in self._pinned}
        key = tuple((n, a.dtype.str, a.shape, a.tobytes()) for n, a in values.items())
        if key not in self._compiled:
            out = self._workdir / f"model-{len(self._compiled)}.edgert"
            self._compiled[key] = _compile(self._path, out, values)
        return tuple(self._compiled[key].run(feeds).values())

    def __del__(self):
        shutil.rmtree(self._workdir, ignore_errors=True)


def _compile(path: Path, out: Path, values: dict | None = None):
    """The ONNX file ``path`` compiled for the host into ``out``, opened."""
    from edgert.compiler.onnx.compile import compile_onnx

    from edgert.runtime.onnx import open_dnn

    return open_dnn(compile_onnx(model=path, target="host", out=out, input_values=values).out)


class EdgertBackend:
    """``onnx.backend.base.Backend``'s class interface (``prepare``, ``run_model``,
    ``run_node``, ``supports_device``), for the host CPU."""

    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        return cls.supports_device(device)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return str(device).upper() == "CPU"

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs):
        """An ``EdgertRep`` of the model compiled now, or a ``PinnedRep`` compiling it at its
        first run where inputs the importer needs constant are fed at run time."""
        import onnx
        from edgert.compiler.onnx.frontend import inputs_to_pin

        if not cls.supports_device(device):
            raise EdgertError(f"device {device} is not supported", "use CPU")
        work = Path(tempfile.mkdtemp(prefix="edgert-onnx-"))
        try:
            path = work / "model.onnx"
            if isinstance(model, (str, Path)):
                shutil.copyfile(model, path)
                model = onnx.load(path)
            else:
                onnx.save(model, path)
            pinned = inputs_to_pin(model)
            if pinned:
                inits = {t.name for t in model.graph.initializer}
                names = [i.name for i in model.graph.input if i.name not in inits]
                return PinnedRep(path, names, pinned, work)
            return EdgertRep(_compile(path, work / "model.edgert"), work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        raise EdgertError(
            "edgert compiles whole graphs, not single nodes", "wrap the node in a model"
        )


#: outcomes of one suite case
OUTCOMES = ("pass", "fail", "refused", "error")


@dataclass
class CaseResult:
    name: str
    outcome: str  # one of OUTCOMES
    detail: str = ""


def _matches(ref: np.ndarray, out: np.ndarray, rtol: float, atol: float) -> str:
    """Why ``out`` is not ``ref`` as onnx's own runner judges it (empty when it is)."""
    out = np.asarray(out)
    ref = np.asarray(ref)
    if ref.dtype == object or out.dtype == object:
        return "non-tensor output"
    if out.shape != ref.shape:
        return f"shape {out.shape} instead of {ref.shape}"
    if out.dtype != ref.dtype:
        return f"dtype {out.dtype} instead of {ref.dtype}"
    if ref.dtype.name == "bfloat16":  # as the onnx runner: in float32, two bfloat16 ulps
        ref, out, rtol = ref.astype(np.float32), out.astype(np.float32), max(rtol, 2**-6)
    elif ref.dtype.kind == "V":  # other ml_dtypes types (float8, int4, ...)
        ref, out = ref.astype(np.float32), out.astype(np.float32)
    if ref.dtype.kind in "fc":
        if not np.allclose(out, ref, rtol=rtol, atol=atol, equal_nan=True):
            with np.errstate(all="ignore"):
                worst = float(np.nanmax(np.abs(out.astype(np.float64) - ref)))
            return f"max abs difference {worst:.3g}"
        return ""
    return "" if np.array_equal(out, ref) else "values differ"


def classify(backend, case, refusals: tuple[type, ...] = (EdgertError,), load=None) -> CaseResult:
    """One case of ``onnx.backend.test`` (a ``TestCase`` with ``model`` and ``data_sets``, or a
    ``model_dir`` with ``test_data_set_*``; ``load(case) -> (model, data_sets)`` for others)
    through ``backend``; ``refusals`` are the exception types that count as a stated refusal
    rather than an error."""
    try:
        model, data_sets = (load or load_case)(case)
    except Exception as e:  # noqa: BLE001 - a case this onnx cannot load is nobody's result
        return CaseResult(case.name, "error", f"case unreadable: {type(e).__name__}: {e}"[:300])
    try:
        rep = backend.prepare(model, "CPU")
        for inputs, refs in data_sets:
            outs = rep.run(inputs)
            if len(outs) != len(refs):
                return CaseResult(case.name, "fail", f"{len(outs)} outputs, expected {len(refs)}")
            for i, (r, o) in enumerate(zip(refs, outs)):
                why = _matches(r, o, case.rtol, case.atol)
                if why:
                    return CaseResult(case.name, "fail", f"output {i}: {why}")
    except refusals as e:
        return CaseResult(case.name, "refused", str(e).splitlines()[0][:300])
    except Exception as e:  # noqa: BLE001 - an unstated failure is this case's result
        msg = str(e).strip().splitlines()
        return CaseResult(case.name, "error", f"{type(e).__name__}: {(msg or [''])[-1][:300]}")
    return CaseResult(case.name, "pass")


def load_case(case):
    """``(model, [(inputs, outputs), ...])`` of a suite case, generated in memory or on disk."""
    import glob
    import os

    import onnx
    from onnx import numpy_helper

    def array(x):  # the runner's normalization: TensorProto -> ndarray, anything else as is
        return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x

    if case.model is not None:
        sets = [([array(x) for x in i], [array(x) for x in o]) for i, o in case.data_sets or []]
        return case.model, sets
    d = case.model_dir
    model = onnx.load(os.path.join(d, "model.onnx"))

    def read(ds: str, kind: str) -> list:
        n = len(glob.glob(os.path.join(ds, f"{kind}_*.pb")))
        return [
            numpy_helper.to_array(onnx.load_tensor(os.path.join(ds, f"{kind}_{i}.pb")))
            for i in range(n)
        ]

    sets = [
        (read(ds, "input"), read(ds, "output"))
        for ds in sorted(glob.glob(os.path.join(d, "test_data_set_*")))
    ]
    return model, sets


#: the model-zoo graphs' tolerances in onnx's backend runner (seven to a hundred convolutions
#: summed in another order)
LIGHT_RTOL, LIGHT_ATOL = 1e-3, 1e-5


def light_models() -> dict[str, Path]:
    """name (``resnet50``) -> path of the model-zoo graphs the onnx package ships for backend
    testing (``light_*.onnx``: no test data sets, a reference output beside each graph)."""
    import onnx

    d = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return {p.stem.removeprefix("light_"): p for p in sorted(d.glob("light_*.onnx"))}


def runner_input(shape) -> np.ndarray:
    """An input as onnx's backend runner makes one for the light models: ``arange(n) / n``."""
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def light_data(path):
    """``(model, [(inputs, outputs)])`` of a light model: its inputs made as onnx's runner makes
    them (dynamic axes as 1), its outputs the ``*_output_{i}.pb`` shipped beside it."""
    import onnx
    from onnx import numpy_helper

    path = str(path)
    model = onnx.load(path)
    inits = {t.name for t in model.graph.initializer}
    inputs = [
        runner_input(
            tuple(
                d.dim_value if d.HasField("dim_value") else 1 for d in x.type.tensor_type.shape.dim
            )
        )
        for x in model.graph.input
        if x.name not in inits
    ]
    refs = [
        numpy_helper.to_array(onnx.load_tensor(path[: -len(".onnx")] + f"_output_{i}.pb"))
        for i in range(len(model.graph.output))
    ]
    return model, [(inputs, refs)]
