"""ONNX frontend: a ``.onnx`` file in, a checked graph with every input shape pinned out.

Everything a user can get wrong is reported here, before any compilation work: a file that is not
ONNX (or is truncated), operators TVM's ONNX importer does not handle (listed by name with the
nodes that use them), nodes it would compute wrongly (``semantics.py``), dynamic input dimensions
nobody pinned, ``--input-shape`` values that do not fit the model. Graphs older than opset 13 are
upgraded, and with the input shapes pinned, shape computations are folded to constants. The graph then goes through TVM's Relax importer with the weights as function
parameters (never constants), so the artifact stores them as checksummed buffers.

``--bits 8`` quantizes weights to int8 here, in the ONNX graph itself: each Conv / ConvTranspose /
Gemm / MatMul weight becomes an int8 initializer with one float scale per output channel followed
by a standard ``DequantizeLinear`` node. TVM lowers that node like any other, and onnxruntime can
run the rewritten graph too, which is what the tests compare with.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from edgert.compiler.onnx.semantics import (
    convert_opset,
    default_opset,
    empty_constants,
    expand_functions,
    fix_legacy_prelu,
    float16_in_float32,
    fold_constants,
    fold_static_shapes,
    infer_types,
    node_being_imported,
    rewrite_forms,
    unfaithful_nodes,
    unsupported_values,
    upgrade_opset,
    value_inputs,
)

from edgert.errors import EdgertError, ModelFormatError, UnsupportedError
from edgert.runtime.onnx import TensorSpec, format_shape

log = logging.getLogger(__name__)

#: per-axis DequantizeLinear (int8 weight-only quantization) needs this default-domain opset
MIN_OPSET_INT8 = 13
#: op type -> index of its weight input and the output-channel axis of that weight
WEIGHT_INPUTS = {"Conv": (1, 0), "ConvTranspose": (1, 1), "Gemm": (1, None), "MatMul": (1, -1)}
#: weights smaller than this stay float32 (scales would cost more than they save)
MIN_QUANT_ELEMENTS = 256


@dataclass
class OnnxModel:
    """A loaded, checked ONNX model whose inputs all have static shapes."""

    path: Path
    proto: object  # onnx.ModelProto
    inputs: list[TensorSpec]
    opset: int  # of the graph as compiled (older graphs are upgraded to MIN_IMPORT_OPSET)
    sha256: str
    quantized: list[str] = field(default_factory=list)  # weights rewritten to int8
    source_opset: int = 0  # of the file as given
    #: inputs compiled as constants (``--input-value``): each with the value it was pinned to
    pinned: list[tuple[TensorSpec, np.ndarray]] = field(default_factory=list)

    @property
    def ops(self) -> dict[str, int]:
        """Operator type -> node count of the graph as it is now."""
        return dict(sorted(Counter(n.op_type for n in self.proto.graph.node).items()))

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.proto.graph.output]


def _onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EdgertError(
            "compiling ONNX models needs the onnx package", "pip install 'edgert[compiler]'"
        ) from e
    return onnx


def parse_input_shapes(specs: list[str] | None) -> dict[str | None, tuple[int, ...]]:
    """``--input-shape`` values: ``NAME:1x3x224x224`` (or ``NAME:1,3,224,224``), or just the dims
    when the model has one input (key ``None``)."""
    out: dict[str | None, tuple[int, ...]] = {}
    for s in specs or []:
        name, sep, dims = s.rpartition(":")
        key = name if sep else None
        try:
            shape = tuple(int(d) for d in re.split(r"[x,]", dims.strip()) if d != "")
        except ValueError:
            shape = ()
        if not shape or any(d <= 0 for d in shape):
            raise EdgertError(
                f"--input-shape {s!r} is not NAME:DIMS with positive dimensions",
                "write e.g. --input-shape input:1x3x224x224",
            )
        if key in out:
            raise EdgertError(f"--input-shape names {key or 'the input'} twice")
        out[key] = shape
    return out


def parse_input_values(specs: list[str] | None) -> dict[str, str | np.ndarray]:
    """``--input-value`` values: ``NAME=V[,V...]`` (numbers, read in ``load_onnx`` against the
    input's declared type and shape) or ``NAME=FILE.npy``."""
    out: dict[str, str | np.ndarray] = {}
    for s in specs or []:
        name, sep, val = s.partition("=")
        if not sep or not name or not val.strip():
            raise EdgertError(
                f"--input-value {s!r} is not NAME=VALUES",
                "write e.g. --input-value axes=0,2 or --input-value shape=shape.npy",
            )
        if name in out:
            raise EdgertError(f"--input-value names {name} twice")
        if val.endswith(".npy"):
            p = Path(val).expanduser()
            if not p.is_file():
                raise EdgertError(f"no such file: {p} (--input-value {name})", "check the path")
            try:
                out[name] = np.load(p, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise EdgertError(f"{p} is not a numpy .npy file ({e})") from e
        else:
            out[name] = val
    return out


def known_ops() -> set[str]:
    """The operators TVM's ONNX importer has a converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return set(_get_convert_map())


def unsupported_ops(proto) -> dict[str, list[str]]:
    """Operators TVM's ONNX importer cannot convert -> the names of the nodes using them."""
    known = known_ops()
    bad: dict[str, list[str]] = {}

    def walk(graph) -> None:
        for i, node in enumerate(graph.node):
            if node.op_type not in known:
                bad.setdefault(node.op_type, []).append(node.name or f"#{i}")
            for a in node.attribute:  # subgraphs of control flow (if the op itself is known)
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(g)

    walk(proto.graph)
    return bad


def _describe_unsupported(bad: dict[str, list[str]]) -> str:
    parts = []
    for op, nodes in sorted(bad.items()):
        shown = ", ".join(nodes[:5]) + (f", ... ({len(nodes)} nodes)" if len(nodes) > 5 else "")
        parts.append(f"{op} (node{'s' if len(nodes) > 1 else ''} {shown})")
    return "; ".join(parts)


def _dims(value_info) -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _pin_inputs(proto, path: Path, shapes: dict[str | None, tuple[int, ...]]) -> list[TensorSpec]:
    onnx = _onnx()
    inits = {i.name for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in inits]
    names = [i.name for i in graph_inputs]
    if None in shapes:
        if len(graph_inputs) != 1:
            raise EdgertError(
                f"{path.name} has {len(names)} inputs ({', '.join(names)}); "
                "an --input-shape without a name is ambiguous",
                "write --input-shape NAME:DIMS for each",
            )
        shapes = {names[0]: shapes.pop(None), **shapes}
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise EdgertError(
            f"--input-shape names {', '.join(unknown)}, which {path.name} has no input called",
            f"its inputs are {', '.join(names) or 'none'}",
        )
    specs = []
    for vi in graph_inputs:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise UnsupportedError(f"{path.name}: input {vi.name} is not a tensor")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        dims = _dims(vi)
        given = shapes.get(vi.name)
        if given is not None:
            if dims and len(dims) != len(given):
                raise EdgertError(
                    f"--input-shape {vi.name}:{format_shape(given)} has rank {len(given)}, but "
                    f"{path.name} declares {vi.name} as {format_shape(d or '?' for d in dims)} "
                    f"(rank {len(dims)})",
                    "give one dimension per axis",
                )
            for ax, (want, got) in enumerate(zip(dims, given)):
                if isinstance(want, int) and want > 0 and want != got:
                    raise EdgertError(
                        f"--input-shape {vi.name}:{format_shape(given)} conflicts with the "
                        f"model: axis {ax} of {vi.name} is fixed at {want}",
                        "change only the dynamic axes",
                    )
            shape = tuple(given)
        else:
            if not tt.HasField("shape"):
                raise EdgertError(
                    f"input {vi.name} of {path.name} has no declared shape",
                    f"pin it with --input-shape {vi.name}:DIMS",
                )
            if any(not isinstance(d, int) for d in dims):  # a declared 0 is an empty axis
                shown = format_shape("?" if d is None else d for d in dims)
                raise EdgertError(
                    f"input {vi.name} of {path.name} has dynamic dimensions ({shown})",
                    f"pin them with --input-shape {vi.name}:"
                    + "x".join(str(d) if isinstance(d, int) else "N" for d in dims),
                )
            shape = tuple(int(d) for d in dims)
        specs.append(TensorSpec(vi.name, shape, dtype))
    return specs


def _value_array(name: str, given, dtype: np.dtype, dims: list) -> np.ndarray:
    """``--input-value``'s value for input ``name`` as an array of its declared type and shape
    (numbers given as text fill the declared shape, or make a 1-D array where it is unknown)."""
    static = bool(dims) and all(isinstance(d, int) for d in dims)
    if isinstance(given, str):
        try:
            arr = np.array([float(v) for v in re.split(r"[,\s]+", given.strip()) if v])
        except ValueError:
            raise EdgertError(
                f"--input-value {name}={given}: not a list of numbers",
                "write numbers separated by commas, or NAME=FILE.npy",
            ) from None
        if dtype.kind in "iub" and not np.array_equal(arr, np.round(arr)):
            raise EdgertError(f"--input-value {name}={given}: {name} holds {dtype} values")
        if static and int(np.prod(dims)) == arr.size:
            arr = arr.reshape(dims)
        elif not dims and arr.size == 1:
            arr = arr.reshape(())
        return arr.astype(dtype)
    arr = np.asarray(given)
    if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
        raise EdgertError(
            f"--input-value {name}: the array is {arr.dtype}, {name} is {dtype}",
            f"save it as {dtype}",
        )
    return arr.astype(dtype)


def _pin_values(proto, path: Path, values: dict) -> list[tuple[TensorSpec, np.ndarray]]:
    """Graph inputs given a value (``--input-value``) become ``Constant`` nodes: compiled into
    the model, no longer inputs of it. Returns each with its value."""
    if not values:
        return []
    onnx = _onnx()
    from onnx import helper, numpy_helper

    inits = {t.name for t in proto.graph.initializer}
    graph_inputs = {i.name: i for i in proto.graph.input if i.name not in inits}
    unknown = sorted(set(values) - set(graph_inputs))
    if unknown:
        raise EdgertError(
            f"--input-value names {', '.join(unknown)}, which {path.name} has no input called",
            f"its inputs are {', '.join(graph_inputs) or 'none'}",
        )
    pinned, nodes = [], []
    for name, given in values.items():
        vi = graph_inputs[name]
        if not vi.type.HasField("tensor_type"):
            raise UnsupportedError(f"{path.name}: input {name} is not a tensor")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        dims = _dims(vi)
        arr = _value_array(name, given, dtype, dims)
        if vi.type.tensor_type.HasField("shape") and (
            len(dims) != arr.ndim
            or any(isinstance(d, int) and d != n for d, n in zip(dims, arr.shape))
        ):
            raise EdgertError(
                f"--input-value {name}: a value of shape {format_shape(arr.shape)}, but "
                f"{path.name} declares {name} as {format_shape(d or '?' for d in dims)}",
                "give one value per element, or a .npy file of that shape",
            )
        tensor = numpy_helper.from_array(arr, "value")
        nodes.append(helper.make_node("Constant", [], [name], name=f"{name}__pinned", value=tensor))
        pinned.append((TensorSpec(name, tuple(arr.shape), dtype.name), arr))
    keep = [i for i in proto.graph.input if i.name not in values]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    for i, node in enumerate(proto.graph.node):  # errors name unnamed nodes as the file has them
        node.name = node.name or f"#{i}"
    rest = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes + rest)
    return pinned


def _drop_initializer_inputs(proto) -> int:
    """Graph inputs that are also initializers (IR version 3 exports list every weight as an input
    with the initializer as its default) become plain weights: edgert compiles them into the
    artifact, as onnxruntime does unless the caller overrides them. Returns how many."""
    inits = {t.name for t in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in inits]
    dropped = len(proto.graph.input) - len(keep)
    if dropped:
        del proto.graph.input[:]
        proto.graph.input.extend(keep)
        proto.ir_version = max(proto.ir_version, 4)  # IR 4: initializers need not be inputs
    return dropped


def _refuse_wrong(path: Path, wrong: list[str]) -> None:
    """Refuse the model if TVM would compute any node wrongly (``"OpType (node X): why"``)."""
    if wrong:
        more = f"; ... ({len(wrong)} in all)" if len(wrong) > 3 else ""
        raise UnsupportedError(
            f"{path.name} has nodes edgert would compute wrongly: {'; '.join(wrong[:3])}{more}",
            "re-export the model for inference without them",
        )


def inputs_to_pin(proto) -> list[str]:
    """The graph inputs ``load_onnx`` asks ``--input-value`` for (``value_inputs`` once the
    functions are expanded), computed on a copy of ``proto``."""
    onnx = _onnx()
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    expand_functions(probe, default_opset(probe), known_ops())
    return list(value_inputs(probe))


def load_onnx(
    path: str | Path, *, input_shapes: dict | None = None, input_values: dict | None = None
) -> OnnxModel:
    """Read and check ``path``; pin its input shapes, and the values of the inputs in
    ``input_values`` (name -> array or ``--input-value`` text); refuse unsupported operators and
    inputs the importer needs constant by name."""
    onnx = _onnx()
    p = Path(path).expanduser()
    if not p.is_file():
        raise EdgertError(f"no such file: {p}", "check the path")
    data = p.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ModelFormatError(
            f"{p} is not a valid ONNX file ({type(e).__name__}: {str(e)[:120] or 'parse error'})",
            "check the file is a complete .onnx export",
        ) from e
    if not proto.graph.node and not proto.graph.output:
        raise ModelFormatError(f"{p} holds no ONNX graph", "check the file is a .onnx export")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        try:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(proto, str(p.parent))
        except (OSError, onnx.checker.ValidationError) as e:  # onnx >= 1.17 checks the file
            raise ModelFormatError(
                f"{p}: its external weight data cannot be read ({e})",
                "keep the .onnx file next to its data files",
            ) from e
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
        raise ModelFormatError(
            f"{p} is not a valid ONNX model: {first[:200]}", "re-export the model"
        ) from e
    _drop_initializer_inputs(proto)
    pinned = _pin_values(proto, p, dict(input_values or {}))
    opset = default_opset(proto)
    expand_functions(proto, opset, known_ops())
    rewrite_forms(proto, opset)
    bad = unsupported_ops(proto)
    if bad:
        raise UnsupportedError(
            f"{p.name} uses operators edgert cannot compile: {_describe_unsupported(bad)}",
            "re-export without them (for quantized models: QDQ format rather than integer ops)",
        )
    fix_legacy_prelu(proto, opset)
    source_opset = opset
    proto, opset = upgrade_opset(proto, opset)
    float16_in_float32(proto)
    types = infer_types(proto)
    values = unsupported_values(proto, types)
    if values:
        raise UnsupportedError(
            f"{p.name} has values edgert cannot compile: {'; '.join(values[:3])}",
            "re-export with tensors of standard element types (float, int8..int64, bool)",
        )
    _refuse_wrong(p, unfaithful_nodes(proto, types))
    need = value_inputs(proto)
    if need:
        name, where = next(iter(need.items()))
        more = f" (and {', '.join(list(need)[1:])})" if len(need) > 1 else ""
        raise UnsupportedError(
            f"input {name} of {p.name} sets {where}{more}, which edgert compiles as a constant",
            f"pin its value: --input-value {name}=V[,V...] (or {name}=FILE.npy)",
        )
    inputs = _pin_inputs(proto, p, dict(input_shapes or {}))
    shapes = {s.name: s.shape for s in inputs}
    for _ in range(8):  # a folded shape can fix the shape of what follows: again until none
        if not fold_static_shapes(proto, shapes) + fold_constants(proto):
            break
    _refuse_wrong(p, empty_constants(proto))
    return OnnxModel(
        path=p,
        proto=proto,
        inputs=inputs,
        opset=int(opset),
        sha256=hashlib.sha256(data).hexdigest(),
        source_opset=int(source_opset),
        pinned=pinned,
    )


def fold_batch_norms(model: OnnxModel) -> int:
    """Fold each inference-mode BatchNormalization that directly follows a Conv into the Conv's
    weights and bias (exact up to float rounding) when the Conv feeds only that node and every
    parameter is an initializer. Weights are function parameters, not constants, so otherwise
    the normalisation (a square root and a division per output element) would be recomputed on
    every inference. Returns how many were folded."""
    from onnx import helper, numpy_helper

    g = model.proto.graph
    inits = {t.name: t for t in g.initializer}
    uses = Counter(i for n in g.node for i in n.input)
    graph_outputs = {o.name for o in g.output}
    producer = {o: n for n in g.node for o in n.output}

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    n_folded = 0
    for bn in list(g.node):
        if bn.op_type != "BatchNormalization" or len(bn.input) != 5 or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or conv.output[0] in graph_outputs:
            continue
        w_name = conv.input[1]
        b_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if uses[conv.output[0]] != 1 or w_name not in inits or uses[w_name] != 1:
            continue
        if (b_name and (b_name not in inits or uses[b_name] != 1)) or not all(
            x in inits for x in bn.input[1:]
        ):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (arr(x) for x in bn.input[1:])
        w = arr(w_name)
        b = arr(b_name) if b_name else np.zeros(w.shape[0])
        k = gamma / np.sqrt(var + eps)
        w_new = (w * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        b_new = ((b - mean) * k + beta).astype(np.float32)
        new_b_name = f"{w_name}__bn_bias"
        g.initializer.remove(inits[w_name])
        if b_name:
            g.initializer.remove(inits[b_name])
        g.initializer.extend(
            [numpy_helper.from_array(w_new, w_name), numpy_helper.from_array(b_new, new_b_name)]
        )
        inits = {t.name: t for t in g.initializer}
        fused = helper.make_node(
            "Conv", [conv.input[0], w_name, new_b_name], list(bn.output), name=conv.name
        )
        fused.attribute.extend(conv.attribute)
        idx = list(g.node).index(conv)
        g.node.remove(conv)
        g.node.insert(idx, fused)
        g.node.remove(bn)
        n_folded += 1
    if n_folded:
        used = {i for n in g.node for i in n.input} | graph_outputs
        for t in [t for t in g.initializer if t.name not in used]:
            g.initializer.remove(t)  # the normalisation's own parameters
    return n_folded


def quantize_weights_int8(model: OnnxModel) -> OnnxModel:
    """Rewrite float32 weights of Conv / ConvTranspose / Gemm / MatMul to int8 with a per-output-
    channel scale and a ``DequantizeLinear`` in front (symmetric, round to nearest)."""
    onnx = _onnx()
    from onnx import helper, numpy_helper

    if model.opset < MIN_OPSET_INT8:  # load_onnx could not upgrade it: why, in the error
        try:
            proto = convert_opset(model.proto, MIN_OPSET_INT8)
        except Exception as e:  # the converter raises RuntimeError and friends
            raise UnsupportedError(
                f"--bits 8 needs ONNX opset >= {MIN_OPSET_INT8} (per-channel DequantizeLinear); "
                f"{model.path.name} uses opset {model.opset}, and onnx's version converter "
                f"cannot upgrade it ({type(e).__name__}: {str(e).strip()[:160]})",
                "convert it with onnx.version_converter yourself, or compile without --bits",
            ) from e
        log.info(
            "%s: opset %d upgraded to %d for --bits 8", model.path.name, model.opset, MIN_OPSET_INT8
        )
        model.proto, model.opset = proto, MIN_OPSET_INT8
    g = model.proto.graph
    inits = {t.name: t for t in g.initializer}
    axes: dict[str, int] = {}
    for node in g.node:
        spec = WEIGHT_INPUTS.get(node.op_type)
        if spec is None or len(node.input) <= spec[0]:
            continue
        name = node.input[spec[0]]
        t = inits.get(name)
        if t is None or t.data_type != onnx.TensorProto.FLOAT or len(t.dims) < 2:
            continue
        axis = spec[1]
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        axes.setdefault(name, axis % len(t.dims))
    new_nodes, quantized = [], []
    for name, axis in axes.items():
        t = inits[name]
        w = numpy_helper.to_array(t).astype(np.float32)
        if w.size < MIN_QUANT_ELEMENTS:
            continue
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=red)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        bshape = [1] * w.ndim
        bshape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(bshape)), -127, 127).astype(np.int8)
        g.initializer.remove(t)
        g.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}__q8"),
                numpy_helper.from_array(scale, f"{name}__scale"),
            ]
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}__q8", f"{name}__scale"],  # symmetric: no zero point
                [name],
                name=f"{name}__dequantize",
                axis=axis,
            )
        )
        quantized.append(name)
    # dequantize nodes first: the graph stays topologically sorted
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + nodes)
    model.quantized = sorted(quantized)
    return model


def _sanitize(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.:/-]", "_", name) or "param"
    out, k = base, 1
    while out in taken:
        k += 1
        out = f"{base}~{k}"
    taken.add(out)
    return out


def to_relax(model: OnnxModel):
    """Import into Relax with weights as parameters.

    Returns ``(mod, params, outputs)``: the IRModule (``main(inputs..., params...)``), a list of
    ``(name, ndarray)`` in parameter order, and the output TensorSpecs.
    """
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    shape_dict = {s.name: list(s.shape) for s in model.inputs}
    dtype_dict = {s.name: s.dtype for s in model.inputs}
    with node_being_imported() as node:
        try:
            mod = from_onnx(
                model.proto, shape_dict=shape_dict, dtype_dict=dtype_dict, keep_params_in_input=True
            )
            mod, params = relax.frontend.detach_params(mod)
        except Exception as e:
            msg = str(e).strip().splitlines()
            at = (
                f" at {node[0].op_type} (node {node[0].name or _node_index(model, node[0])})"
                if node
                else ""
            )
            raise UnsupportedError(
                f"TVM could not import {model.path.name}{at}: {type(e).__name__}: "
                f"{(msg[-1] if msg else '')[:300]}",
                "check the operators and their attributes against TVM's ONNX frontend",
            ) from e
    fn = mod["main"]
    n_in = len(model.inputs)
    pvars = list(fn.params)[n_in:]
    arrays = [p.numpy() for p in params.get("main", [])]
    if len(pvars) != len(arrays):  # pragma: no cover - TVM invariant
        raise RuntimeError("parameter count mismatch after detach_params")
    taken: set[str] = set()
    named = [(_sanitize(_var_name(v), taken), a) for v, a in zip(pvars, arrays)]
    outputs = _output_specs(_ret_type(fn), model.output_names)
    return mod, named, outputs


def _node_index(model: OnnxModel, node) -> str:
    """``#i`` of an unnamed node in the main graph (``in a subgraph`` otherwise)."""
    for i, n in enumerate(model.proto.graph.node):
        if n is node or n == node:
            return f"#{i}"
    return "in a subgraph"


def _var_name(v) -> str:
    return str(getattr(v, "name", None) or getattr(v, "name_hint", "param"))


def _ret_type(fn):
    """The function's return type (``ret_ty`` in TVM 0.27, ``ret_struct_info`` before)."""
    return getattr(fn, "ret_ty", None) or fn.ret_struct_info


def _output_specs(rtype, names: list[str]) -> list[TensorSpec]:
    fields = list(rtype.fields) if hasattr(rtype, "fields") else [rtype]
    out = []
    for i, f in enumerate(fields):
        name = names[i] if i < len(names) else f"output_{i}"
        shape_expr = getattr(f, "shape", None)
        if shape_expr is None or not hasattr(shape_expr, "values"):
            raise UnsupportedError(
                f"output {name} is not a tensor of static shape ({f})",
                "pin the inputs with --input-shape so every output shape is known",
            )
        try:
            shape = tuple(int(d) for d in shape_expr.values)
        except (TypeError, ValueError) as e:
            raise UnsupportedError(
                f"output {name} has a data-dependent shape ({shape_expr}); edgert compiles "
                "static shapes only",
                "pin the inputs with --input-shape so every output shape is known",
            ) from e
        out.append(TensorSpec(name, shape, str(f.dtype)))
    return out
