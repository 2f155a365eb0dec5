"""Where TVM's ONNX importer would compute something other than what ONNX specifies.

TVM 0.27's importer converts these nodes without complaint, but ignores an attribute or an output
that changes the result (the ONNX backend test suite shows each one: outputs that differ from the
reference), or converts them into something its build then fails on with an internal error.
``unfaithful_nodes`` finds them, so that ``load_onnx`` refuses the model naming the node and the
reason instead of compiling wrong numbers. ``fix_legacy_prelu`` rewrites the one case that has an
exact equivalent the importer does handle.

``node_being_imported`` tells which node the importer was converting when it raised, so its
refusals name the operator too.
"""

from __future__ import annotations

import contextlib

import numpy as np

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
