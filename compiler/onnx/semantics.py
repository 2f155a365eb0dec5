"""What edgert does to an ONNX graph before TVM's importer sees it, and where that importer would
compute something other than what ONNX specifies.

TVM 0.27's importer converts some nodes without complaint but ignores an attribute or an output
that changes the result (the ONNX backend test suite shows each one: outputs that differ from the
reference), or converts them into something its build then fails on with an internal error.
``unfaithful_nodes`` finds them and ``unsupported_values`` the values it cannot hold, so that
``load_onnx`` refuses the model naming the node and the reason instead of compiling wrong numbers.

Graphs the importer refuses only for their form are rewritten into forms it takes:
``upgrade_opset`` (graphs older than opset 13, through onnx's version converter),
``fix_legacy_prelu`` (pre-opset-7 channel slopes), ``fold_static_shapes`` (``Constant`` nodes
written as ``value_float`` / ``value_ints`` / ..., ``Shape`` and ``Size`` of tensors whose shapes
the pinned inputs fix) and ``fold_constants`` (every node computed from constants only, evaluated
with onnx's reference implementation).

``node_being_imported`` tells which node the importer was converting when it raised, so its
refusals name the operator too.
"""

from __future__ import annotations

import contextlib
import logging
import math

import numpy as np

log = logging.getLogger(__name__)

#: element types TVM cannot build (sub-byte integers, 4/8-bit floats)
EXOTIC_TYPES = {
    "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0",
    "FLOAT4E2M1", "INT4", "UINT4", "INT2", "UINT2",
}  # fmt: skip
INTEGER_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _type_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type)


def infer_types(proto):
    """name -> TypeProto of every value shape inference can type (graph inputs, outputs,
    initializers and intermediates); empty when inference itself fails."""
    import onnx

    try:
        inf = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - checks needing types are then skipped
        return {}
    g = inf.graph
    types = {v.name: v.type for v in list(g.input) + list(g.value_info) + list(g.output)}
    for t in g.initializer:
        tp = onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims))
        types.setdefault(t.name, tp)
    return types


def _elem(types, name: str) -> str | None:
    t = types.get(name)
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.elem_type:
        return None
    return _type_name(t.tensor_type.elem_type)


def _rank(types, name: str) -> int | None:
    t = types.get(name)
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return len(t.tensor_type.shape.dim)


def _initializer(proto, name: str):
    return next((t for t in proto.graph.initializer if t.name == name), None)


def _is_false_constant(proto, name: str) -> bool:
    from onnx import numpy_helper

    t = _initializer(proto, name)
    return t is not None and not numpy_helper.to_array(t).any()


def unsupported_values(proto, types) -> list[str]:
    """Graph inputs and outputs that are not tensors (sequences, maps, optionals), and the first
    value of an element type TVM cannot compute with, each as ``"what: why"``."""
    bad: list[str] = []
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for v in values:
            which = v.type.WhichOneof("value")
            if which not in (None, "tensor_type"):
                kind_name = which.replace("_type", "")
                bad.append(f"graph {kind} {v.name}: a {kind_name}, not a tensor")
    for name, t in types.items():
        if t.HasField("tensor_type") and t.tensor_type.elem_type:
            tn = _type_name(t.tensor_type.elem_type)
            if tn in EXOTIC_TYPES:
                bad.append(f"value {name}: element type {tn}, which TVM cannot compute with")
                break
    return bad


def _shape(types, name: str) -> list[int] | None:
    t = types.get(name)
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    return [d.dim_value for d in dims] if all(d.HasField("dim_value") for d in dims) else None


def _output_shape_implied(node, a: dict, types) -> bool:
    """Whether a ConvTranspose's ``output_shape`` equals what its pads and output_padding give
    anyway (what TVM computes), as far as the shapes are known."""
    x, w = _shape(types, node.input[0]), _shape(types, node.input[1])
    if x is None or w is None or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return False
    n = len(x) - 2
    kernel = list(a.get("kernel_shape", w[2:]))
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    pads = list(a.get("pads", [0] * 2 * n))
    outpad = list(a.get("output_padding", [0] * n))
    got = [
        strides[i] * (x[2 + i] - 1)
        + outpad[i]
        + (kernel[i] - 1) * dil[i]
        + 1
        - pads[i]
        - pads[n + i]
        for i in range(n)
    ]
    return got == list(a["output_shape"])[-n:]


def _constant(proto, name: str) -> np.ndarray | None:
    """The value of ``name`` where a ``Constant`` node or an initializer gives it."""
    from onnx import numpy_helper

    if not name:
        return None
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            a = n.attribute[0] if n.attribute else None
            return numpy_helper.to_array(a.t) if a is not None and a.name == "value" else None
    t = _initializer(proto, name)
    return numpy_helper.to_array(t) if t is not None else None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _resize_problem(proto, node, a: dict, types) -> str | None:
    """Why TVM's Resize would differ from ONNX's for this node (None where it would not, or
    where the shapes are not known)."""
    from fractions import Fraction

    coord = _text(a.get("coordinate_transformation_mode", "half_pixel"))
    if a.get("antialias", 0):
        return "antialias is ignored"
    if coord == "half_pixel_symmetric":
        return "coordinate_transformation_mode=half_pixel_symmetric is not implemented"
    x = _shape(types, node.input[0])
    if x is None or "axes" in a:
        return None
    scales = _constant(proto, node.input[2]) if len(node.input) > 2 else None
    sizes = _constant(proto, node.input[3]) if len(node.input) > 3 else None
    if scales is not None and scales.size == len(x):
        if any(Fraction(float(s)) * d != int(float(s) * d) for s, d in zip(scales, x)):
            return "scales that do not give whole sizes: TVM maps coordinates by the sizes' ratio"
        out = [int(float(s) * d) for s, d in zip(scales, x)]
    elif sizes is not None and sizes.size == len(x):
        out = [int(v) for v in sizes]
    else:
        return None
    for d_in, d_out in list(zip(x, out))[2:]:
        if d_out == 1 and coord == "align_corners" and d_in != 1:
            return "align_corners with an output size of 1 divides by zero"
    nearest = _text(a.get("nearest_mode", "round_prefer_floor"))
    if _text(a.get("mode", "nearest")) != "nearest" or not nearest.startswith("round_prefer"):
        return None
    half, f32, f64 = Fraction(1, 2), np.float32, np.float64

    def index(c):  # TVM's nearest index from float32 coordinates
        return np.ceil(c - f32(0.5)) if nearest == "round_prefer_floor" else np.floor(c + f32(0.5))

    for d_in, d_out in list(zip(x, out))[2:]:  # TVM's coordinates against exact ones
        i = np.arange(d_out, dtype=f32)
        if coord == "align_corners":
            r = Fraction(d_in - 1, max(d_out - 1, 1))
            s = f32(d_in - 1) / f32(max(d_out - 1, 1))
            plain = fused = s * i
        else:
            r, s = Fraction(d_in, d_out), f32(d_in) / f32(d_out)
            if coord == "asymmetric":
                plain = fused = s * i
            elif coord == "tf_half_pixel_for_nn":
                plain = fused = (i + f32(0.5)) * s
            else:  # half_pixel, pytorch_half_pixel: LLVM may fuse the multiply-subtract
                plain = (i + f32(0.5)) * s - f32(0.5)
                fused = (f64(i + f32(0.5)) * f64(s) - 0.5).astype(f32)
        for k in range(d_out):
            at = r * k if coord in ("align_corners", "asymmetric") else r * (k + half)
            at -= half if coord in ("half_pixel", "pytorch_half_pixel") else 0
            want = (
                math.ceil(at - half) if nearest == "round_prefer_floor" else math.floor(at + half)
            )
            if int(index(plain[k])) != want or int(index(fused[k])) != want:
                return (
                    f"output pixels halfway between two input pixels, which {nearest} rounds one "
                    "way and TVM's float32 coordinates may round the other"
                )
    return None


def unfaithful_nodes(proto, types) -> list[str]:
    """``"OpType (node X): why"`` for each node TVM's importer would get wrong (``types`` from
    ``infer_types``)."""
    graph_outputs = {o.name for o in proto.graph.output}
    used = {i for n in proto.graph.node for i in n.input} | graph_outputs
    bad: list[str] = []
    for i, node in enumerate(proto.graph.node):
        op, a = node.op_type, _attrs(node)
        where = f"{op} (node {node.name or f'#{i}'})"

        def out_used(k: int, node=node) -> bool:
            return len(node.output) > k and node.output[k] != "" and node.output[k] in used

        why = None
        if op == "BatchNormalization" and a.get("training_mode", 0):
            why = "training_mode=1 (batch statistics) is not computed"
        elif op == "ConvTranspose" and "output_shape" in a:
            if not _output_shape_implied(node, a, types):
                why = "its output_shape attribute is ignored (give pads and output_padding instead)"
        elif op == "Dropout" and out_used(1):
            why = "its mask output is not computed"
        elif op == "Dropout" and len(node.input) > 2 and node.input[2]:
            ratio = node.input[1] if len(node.input) > 1 else ""
            if not (
                _is_false_constant(proto, node.input[2])
                or (ratio and _is_false_constant(proto, ratio))
            ):
                why = "training mode (random dropping) is not computed"
        elif op == "IsInf" and (
            a.get("detect_negative", 1) == 0 or a.get("detect_positive", 1) == 0
        ):
            why = "detect_negative / detect_positive are ignored"
        elif op == "LayerNormalization" and (out_used(1) or out_used(2)):
            why = "its Mean and InvStdDev outputs are not computed"
        elif op == "SpaceToDepth" and a.get("mode", b"DCR") not in (b"DCR", "DCR"):
            why = "mode=CRD is ignored"
        elif op == "RoiAlign" and a.get("mode", b"avg") not in (b"avg", "avg"):
            why = "mode=max is computed as avg"
        elif op == "NonMaxSuppression":
            why = "TVM imports it but cannot build it"
        elif op == "Pow" and _elem(types, node.input[0]) in INTEGER_TYPES:
            why = f"an integer base ({_elem(types, node.input[0])}): TVM computes powers of floats only"
        elif op == "Resize":
            why = _resize_problem(proto, node, a, types)
        elif op in ("ReduceMax", "ReduceMin") and _elem(types, node.input[0]) == "BOOL":
            why = "boolean inputs do not build"
        elif op in ("ReduceMax", "ReduceMin") and 0 in (_shape(types, node.input[0]) or ()):
            why = "an empty input: ONNX gives the identity (-inf / +inf), TVM does not"
        elif op == "TopK" and _elem(types, node.input[0]) == "UINT64":
            why = "uint64 inputs do not build"
        elif op == "Split" and len(node.input) > 1:
            split = _constant(proto, node.input[1])
            if split is not None and 0 in split.tolist():
                why = "parts of size 0 do not build"
        elif op == "RMSNormalization":
            rank = _rank(types, node.input[0])
            axis = a.get("axis", -1)
            if rank is not None and axis % rank == 0:
                why = "normalizing over every axis (axis 0) does not build"
        if why:
            bad.append(f"{where}: {why}")
    return bad


def fix_legacy_prelu(proto, opset: int) -> int:
    """Before opset 7, PRelu's 1-D slope of C values applies along axis 1 (the channels); TVM
    applies a 1-D slope along the last axis, as broadcasting does from opset 7 on. Reshapes such
    slopes (initializers) to (C, 1, ..., 1), which means the same under both rules. Returns how
    many were rewritten."""
    from onnx import numpy_helper

    if opset >= 7:
        return 0
    types = infer_types(proto)
    done = 0
    for node in proto.graph.node:
        if node.op_type != "PRelu" or len(node.input) < 2:
            continue
        t, rank = _initializer(proto, node.input[1]), _rank(types, node.input[0])
        if t is None or rank is None or rank < 3 or len(t.dims) != 1 or t.dims[0] == 1:
            continue
        arr = numpy_helper.to_array(t).reshape((int(t.dims[0]),) + (1,) * (rank - 2))
        t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), t.name))
        done += 1
    return done


#: ops TVM's importer takes a shape (``Shape``'s output) as an input of, as of 0.27
SHAPE_CONSUMERS = {
    "Reshape", "Resize", "ConstantOfShape", "Gather", "Slice", "Shape", "Expand", "Concat",
    "Equal", "Where", "Cast", "CastLike", "Squeeze",
}  # fmt: skip
#: operator -> {input index: what it sets} for the inputs TVM's importer needs constant: shapes,
#: axes, sizes and counts that fix an output's shape or the computation itself (only the forms of
#: an operator that take them as inputs have these indices). A graph input there can be compiled
#: only with its value pinned (``--input-value``).
_AXES = {1: "axes"}
VALUE_INPUTS = {
    "Reshape": {1: "shape"}, "Expand": {1: "shape"}, "Tile": {1: "repeats"},
    "ConstantOfShape": {0: "shape"}, "CenterCropPad": {1: "shape"},
    "Range": {0: "start", 1: "limit", 2: "delta"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"},
    "Squeeze": _AXES, "Unsqueeze": _AXES, "Split": {1: "split"},
    "Pad": {1: "pads", 2: "constant_value", 3: "axes"},
    "Resize": {1: "roi", 2: "scales", 3: "sizes"}, "Upsample": {1: "scales"},
    "TopK": {1: "k"}, "CumSum": {1: "axis"}, "CumProd": {1: "axis"}, "OneHot": {1: "depth"},
    "ReduceSum": _AXES, "ReduceMean": _AXES, "ReduceMax": _AXES, "ReduceMin": _AXES,
    "ReduceProd": _AXES, "ReduceL1": _AXES, "ReduceL2": _AXES, "ReduceLogSum": _AXES,
    "ReduceLogSumExp": _AXES, "ReduceSumSquare": _AXES,
    "AffineGrid": {1: "size"}, "Col2Im": {1: "image_shape", 2: "block_shape"},
    "Trilu": {1: "k"}, "Dropout": {1: "ratio", 2: "training_mode"},
}  # fmt: skip


def value_inputs(proto) -> dict[str, str]:
    """Graph input -> ``"OpType (node N) axes"`` for each graph input the importer needs
    constant (``VALUE_INPUTS``), its first such use named."""
    graph_inputs = {i.name for i in proto.graph.input} - {t.name for t in proto.graph.initializer}
    out: dict[str, str] = {}
    for i, node in enumerate(proto.graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        for k, what in VALUE_INPUTS.get(node.op_type, {}).items():
            if k < len(node.input) and node.input[k] in graph_inputs:
                where = f"{node.op_type} (node {node.name or f'#{i}'}) {what}"
                out.setdefault(node.input[k], where)
    return out


#: Constant's attribute forms other than ``value``, and the tensor each makes
CONSTANT_FORMS = {
    "value_float": ("FLOAT", False),
    "value_floats": ("FLOAT", True),
    "value_int": ("INT64", False),
    "value_ints": ("INT64", True),
}


def fold_static_shapes(proto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Rewrites, in place, what TVM's importer refuses for its form only: ``Constant`` nodes
    written as ``value_float(s)`` / ``value_int(s)`` get a ``value`` tensor, and ``Shape`` /
    ``Size`` of tensors whose shape ``shapes`` (the pinned graph inputs) fixes become ``Constant``
    nodes, where a shape would reach an operator that cannot take one or leave the graph. Returns
    how many nodes were rewritten."""
    import onnx
    from onnx import helper

    done = 0
    for node in proto.graph.node:
        if node.op_type != "Constant" or not node.attribute:
            continue
        a = node.attribute[0]
        if a.name in CONSTANT_FORMS:
            kind, is_list = CONSTANT_FORMS[a.name]
            value = onnx.helper.get_attribute_value(a)
            dims = [len(value)] if is_list else []
            vals = list(value) if is_list else [value]
            t = helper.make_tensor("value", getattr(onnx.TensorProto, kind), dims, vals)
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", t))
            done += 1

    if not any(n.op_type in ("Shape", "Size") for n in proto.graph.node):
        return done
    for vi in proto.graph.input:  # the pinned shapes are the ones compiled for
        if vi.name in shapes and vi.type.HasField("tensor_type"):
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)
    types = infer_types(proto)
    consumers: dict[str, set[str]] = {}
    for n in proto.graph.node:
        for x in n.input:
            consumers.setdefault(x, set()).add(n.op_type)
    outputs = {o.name for o in proto.graph.output}
    for i, node in enumerate(proto.graph.node):
        if node.op_type not in ("Shape", "Size") or not node.input:
            continue
        shape = _shape(types, node.input[0])
        if shape is None:
            continue
        out = node.output[0]
        if node.op_type == "Shape":
            if consumers.get(out, set()) <= SHAPE_CONSUMERS and out not in outputs:
                continue  # the importer takes it as a shape
            a = _attrs(node)
            r = len(shape)
            start, end = a.get("start", 0), a.get("end", r)
            start, end = (max(0, min(r, v + r if v < 0 else v)) for v in (start, end))
            vals, dims = shape[start:end], [max(0, end - start)]
        else:
            vals, dims = [int(np.prod(shape, dtype=np.int64))], []
        t = helper.make_tensor("value", onnx.TensorProto.INT64, dims, vals)
        proto.graph.node[i].CopyFrom(
            helper.make_node("Constant", [], [out], name=node.name, value=t)
        )
        done += 1
    return done


#: operators never evaluated at compile time (their result differs per run)
NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}  # fmt: skip
#: a folded value larger than this stays computed (it would be a weight, not a shape)
MAX_FOLDED_ELEMENTS = 1 << 16


def fold_constants(proto) -> int:
    """Nodes of the default domain whose inputs are all ``Constant`` outputs (or small integer
    initializers: shapes and axes) are evaluated with onnx's reference implementation and become
    ``Constant`` nodes, so that shapes computed from the pinned input shapes reach the importer as
    constants. Returns how many nodes were folded."""
    import onnx
    from onnx import helper, numpy_helper

    try:
        from onnx.reference import ReferenceEvaluator
    except ImportError:  # onnx < 1.13
        return 0
    known = {}
    for t in proto.graph.initializer:
        if (
            t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
            and np.prod(t.dims) <= 64
        ):
            known[t.name] = numpy_helper.to_array(t)
    done = 0
    for i, node in enumerate(proto.graph.node):
        if node.op_type == "Constant":
            a = node.attribute[0] if node.attribute else None
            if a is not None and a.name == "value":
                known[node.output[0]] = numpy_helper.to_array(a.t)
            continue
        ins = list(dict.fromkeys(x for x in node.input if x))
        if (
            node.domain not in ("", "ai.onnx")
            or node.op_type in NONDETERMINISTIC
            or not ins
            or len(node.output) != 1
            or any(x not in known for x in ins)
            or any(a.HasField("g") or len(a.graphs) for a in node.attribute)
        ):
            continue
        vis = [
            helper.make_tensor_value_info(
                x, helper.np_dtype_to_tensor_dtype(known[x].dtype), known[x].shape
            )
            for x in ins
        ]
        out = node.output[0]
        g = helper.make_graph([node], "fold", vis, [helper.make_empty_tensor_value_info(out)])
        m = helper.make_model(g, opset_imports=list(proto.opset_import))
        try:
            (value,) = ReferenceEvaluator(m).run(None, {x: known[x] for x in ins})
        except Exception:  # noqa: BLE001, S112 - left to the importer, which says what it thinks
            continue
        value = np.asarray(value)
        if value.dtype == object or value.size > MAX_FOLDED_ELEMENTS:
            continue
        t = numpy_helper.from_array(value, "value")
        proto.graph.node[i].CopyFrom(
            helper.make_node("Constant", [], [out], name=node.name, value=t)
        )
        known[out] = value
        done += 1
    return done


#: graphs of older opsets are upgraded to this one before import: TVM's importer picks, for an
#: old opset, the oldest converter it has, which for Slice, Pad, Clip, Squeeze, Split, the
#: reductions and others is written for the operator's newer form (inputs instead of attributes)
MIN_IMPORT_OPSET = 13


def convert_opset(proto, opset: int):
    """``proto`` at ``opset`` through onnx's version converter (the same graph: each operator's
    form at that opset), checked; raises what the converter or the checker raise."""
    import onnx
    from onnx import version_converter

    up = version_converter.convert_version(proto, opset)
    up.ir_version = max(up.ir_version, 7)  # initializers need not be inputs
    onnx.checker.check_model(up)
    return up


def upgrade_opset(proto, opset: int):
    """``(proto, opset)`` at ``MIN_IMPORT_OPSET`` or newer; unchanged where the converter
    cannot upgrade it."""
    if not opset or opset >= MIN_IMPORT_OPSET:
        return proto, opset
    try:
        return convert_opset(proto, MIN_IMPORT_OPSET), MIN_IMPORT_OPSET
    except Exception as e:  # noqa: BLE001 - the importer then gets the graph as written
        log.info("opset %d kept (the version converter failed: %s)", opset, str(e)[:200])
        return proto, opset


@contextlib.contextmanager
def node_being_imported():
    """Yields a list holding the node TVM's importer converts last (empty before the first):
    after an exception from ``from_onnx`` it names the node that raised it."""
    from tvm.relax.frontend.onnx import onnx_frontend

    seen: list = []
    cls = getattr(onnx_frontend, "ONNXGraphImporter", None)
    orig = getattr(cls, "_parse_value_proto", None)
    if orig is None:  # another TVM: refusals then name no node
        yield seen
        return

    def parse(self, value_proto):
        if hasattr(value_proto, "op_type"):
            seen[:] = [value_proto]
        return orig(self, value_proto)

    cls._parse_value_proto = parse
    try:
        yield seen
    finally:
        cls._parse_value_proto = orig
