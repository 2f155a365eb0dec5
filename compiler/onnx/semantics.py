"""What edgert does to an ONNX graph before TVM's importer sees it, and where that importer would
compute something other than what ONNX specifies.

TVM 0.27's importer converts some nodes without complaint but ignores an attribute or an output
that changes the result (the ONNX backend test suite shows each one: outputs that differ from the
reference), or converts them into something its build then fails on with an internal error.
``unfaithful_nodes`` finds them and ``unsupported_values`` the values it cannot hold, so that
``load_onnx`` refuses the model naming the node and the reason instead of compiling wrong numbers.

Graphs the importer refuses only for their form are rewritten into forms it takes:
``upgrade_opset`` (graphs older than opset 13, through onnx's version converter),
``fix_legacy_prelu`` (pre-opset-7 channel slopes), ``expand_functions`` (operators ONNX defines
as a function of others, where TVM has no converter or a wrong one), ``rewrite_forms``
(LpNormalization, Pow with an integer exponent, Resize with ``axes``), ``float16_in_float32``,
``fold_static_shapes`` (``Constant`` nodes written as ``value_float`` / ``value_ints`` / ...,
``Shape`` and ``Size`` of tensors whose shapes the pinned inputs fix) and ``fold_constants``
(every node computed from constants only, evaluated with onnx's reference implementation).
``value_inputs`` finds the graph inputs the importer needs as constants (``--input-value``).

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


def default_opset(proto, missing: int = 0) -> int:
    """The version of the default ONNX domain ``proto`` (a model or a function) imports."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), missing)


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
            return _constant_value(n)
    t = _initializer(proto, name)
    return numpy_helper.to_array(t) if t is not None else None


def _constant_value(node) -> np.ndarray | None:
    """The tensor a ``Constant`` node holds in its ``value`` form (None in the others)."""
    from onnx import numpy_helper

    a = node.attribute[0] if node.attribute else None
    return numpy_helper.to_array(a.t) if a is not None and a.name == "value" else None


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
    used = _used_values(proto)
    bad: list[str] = []
    for i, node in enumerate(proto.graph.node):
        why = _unfaithful(proto, node, types, used)
        if why:
            bad.append(f"{node.op_type} (node {node.name or f'#{i}'}): {why}")
    return bad


def _used_values(proto) -> set[str]:
    return {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}


def _unfaithful(proto, node, types, used: set[str]) -> str | None:
    """Why TVM's importer would get ``node`` wrong (None where it would not)."""
    op, a = node.op_type, _attrs(node)

    def out_used(k: int) -> bool:
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
            _is_false_constant(proto, node.input[2]) or (ratio and _is_false_constant(proto, ratio))
        ):
            why = "training mode (random dropping) is not computed"
    elif op == "IsInf" and (a.get("detect_negative", 1) == 0 or a.get("detect_positive", 1) == 0):
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
        why = "an empty input: ONNX gives -inf / +inf, TVM's build leaves the output unwritten"
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
    return why


#: operators TVM's importer has a converter for under another operator's name: the default
#: domain's Attention (opset 23) is converted as com.microsoft's, whose attributes it lacks
MISREAD_OPS = {"Attention"}


def _function_body(node, opset: int, types):
    """The ONNX function defining ``node``'s operator at ``opset`` (a ``FunctionProto``; for
    context-dependent functions, built for this node's attributes and input types), or None."""
    import onnx
    from onnx import defs

    try:
        schema = defs.get_schema(node.op_type, opset, node.domain)
    except Exception:  # noqa: BLE001 - no schema: nothing to expand into
        return None
    plain = [v for v in schema.function_opset_versions if v <= opset]
    ctx = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if ctx:
        if any(x and x not in types for x in node.input):
            return None  # the function depends on input types not known here
        tys = [types[x].SerializeToString() for x in node.input if x]
        try:
            body = schema.get_context_dependent_function_with_opset_version(
                max(ctx), node.SerializeToString(), tys
            )
        except Exception:  # noqa: BLE001 - the schema cannot build it for these inputs
            return None
        return onnx.FunctionProto.FromString(body) if isinstance(body, bytes) else body
    if plain:
        body = schema.get_function_with_opset_version(max(plain))
        return onnx.FunctionProto.FromString(body) if isinstance(body, bytes) else body
    return None


def _attribute_defaults(node, opset: int) -> dict:
    """Attribute name -> default ``AttributeProto`` of ``node``'s operator at ``opset``."""
    from onnx import defs

    schema = defs.get_schema(node.op_type, opset, node.domain)
    return {
        name: a.default_value
        for name, a in schema.attributes.items()
        if a.default_value.type  # set: has a default
    }


def _same_semantics(fn, opset: int) -> bool:
    """Whether every node of ``fn`` (written for the opsets it imports) means the same at the
    model's ``opset`` (no operator in it changed between the two)."""
    from onnx import defs

    fn_opset = default_opset(fn, opset)
    if fn_opset == opset:
        return True
    try:
        return all(
            defs.get_schema(n.op_type, fn_opset, n.domain).since_version
            == defs.get_schema(n.op_type, opset, n.domain).since_version
            for n in fn.node
        )
    except Exception:  # noqa: BLE001 - an operator unknown at one of them
        return False


def _inline(node, fn, prefix: str, schema_defaults: dict) -> list:
    """``fn``'s nodes wired to ``node``'s inputs and outputs, its own values renamed with
    ``prefix``, attribute references resolved from ``node``'s attributes (or the defaults, the
    function's own or its operator's: ``schema_defaults``)."""
    from onnx import AttributeProto, NodeProto

    names = dict(zip(fn.input, list(node.input) + [""] * len(fn.input)))
    names.update({o: x for o, x in zip(fn.output, node.output) if x})
    given = {a.name: a for a in node.attribute}
    defaults = {**schema_defaults, **{a.name: a for a in fn.attribute_proto}}

    def rename(x: str) -> str:
        return "" if x == "" else names.get(x, prefix + x)

    out = []
    for k, n in enumerate(fn.node):
        m = NodeProto()
        m.CopyFrom(n)
        m.name = f"{prefix}{n.name or k}"
        del m.input[:], m.output[:], m.attribute[:]
        m.input.extend(rename(x) for x in n.input)
        m.output.extend(rename(x) for x in n.output)
        for a in n.attribute:
            if a.ref_attr_name:
                src = given.get(a.ref_attr_name) or defaults.get(a.ref_attr_name)
                if src is None:
                    continue  # not given and no default: the attribute is left out
                b = AttributeProto()
                b.CopyFrom(src)
                b.name = a.name
                m.attribute.append(b)
            else:
                m.attribute.append(a)
        out.append(m)
    return out


def expand_functions(proto, opset: int, known: set[str]) -> int:
    """Nodes of operators TVM's importer does not convert (not in ``known``), converts as
    another operator (``MISREAD_OPS``) or would get wrong (``unfaithful_nodes``), and which ONNX
    defines by a function of other operators, are replaced by that function's nodes (again
    inside them, a few levels deep). Returns how many nodes were expanded."""
    done = 0
    for _ in range(4):
        types, used = infer_types(proto), _used_values(proto)
        nodes, changed = [], 0
        for i, node in enumerate(proto.graph.node):
            wanted = (
                node.op_type not in known
                or node.op_type in MISREAD_OPS
                or _unfaithful(proto, node, types, used)
            )
            plain = not any(a.HasField("g") or len(a.graphs) for a in node.attribute)
            fn = None
            if node.domain in ("", "ai.onnx") and plain and wanted:
                fn = _function_body(node, opset, types)
            if fn is None or not _same_semantics(fn, opset):
                nodes.append(node)
                continue
            prefix = f"{node.name or node.op_type}__{i}__"
            nodes.extend(_inline(node, fn, prefix, _attribute_defaults(node, opset)))
            changed += 1
        if not changed:
            break
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        done += changed
    return done


def rewrite_forms(proto, opset: int) -> int:
    """Nodes the importer refuses in one form, rewritten into an equivalent form it takes:
    LpNormalization (not converted) as ``x / ReduceL1|L2(x)`` (0 where the norm is 0); Pow of a
    float base with an integer exponent as Pow of two floats (exact: such exponents are small);
    OneHot with integer indices, a scalar integer depth and a cast to its values' type; Resize
    with an ``axes`` attribute (scales or sizes for some axes only) with scales or sizes for
    every axis. Returns how many nodes were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    types = infer_types(proto)
    g = proto.graph
    nodes, done = [], 0
    for i, node in enumerate(g.node):
        a = _attrs(node)
        tag = f"{node.name or node.op_type}__{i}"
        if node.op_type == "LpNormalization" and a.get("p", 2) in (1, 2):
            reduce = "ReduceL1" if a.get("p", 2) == 1 else "ReduceL2"
            axis, norm = int(a.get("axis", -1)), f"{tag}__norm"
            if opset >= 18:
                axes = f"{tag}__axes"
                t = numpy_helper.from_array(np.array([axis], np.int64), "value")
                nodes.append(helper.make_node("Constant", [], [axes], value=t))
                nodes.append(helper.make_node(reduce, [node.input[0], axes], [norm], keepdims=1))
            else:
                nodes.append(
                    helper.make_node(reduce, [node.input[0]], [norm], axes=[axis], keepdims=1)
                )
            x, zero, f0 = node.input[0], f"{tag}__zero", f"{tag}__zero_f32"
            t0 = numpy_helper.from_array(np.array(0.0, np.float32), "value")
            nodes += [  # a zero norm gives 0, not 0 / 0 (ONNX's reference)
                helper.make_node("Constant", [], [f0], value=t0),
                helper.make_node("CastLike", [f0, x], [zero]),
                helper.make_node("Equal", [norm, zero], [f"{tag}__is_zero"]),
                helper.make_node("Div", [x, norm], [f"{tag}__quotient"]),
                helper.make_node(
                    "Where", [f"{tag}__is_zero", zero, f"{tag}__quotient"], list(node.output)
                ),
            ]
            done += 1
            continue
        if node.op_type == "Pow" and len(node.input) == 2:
            base, exp = _elem(types, node.input[0]), _elem(types, node.input[1])
            if base in ("FLOAT", "DOUBLE", "FLOAT16") and exp in INTEGER_TYPES:
                as_float = f"{tag}__exponent"
                to = getattr(onnx.TensorProto, base)
                nodes.append(helper.make_node("Cast", [node.input[1]], [as_float], to=to))
                node.input[1] = as_float
                done += 1
        depth = _constant(proto, node.input[1]) if node.op_type == "OneHot" else None
        kind = _elem(types, node.input[2]) if node.op_type == "OneHot" else None
        if depth is not None and depth.size == 1 and kind is not None:
            # TVM takes integer indices and a scalar integer depth, and makes its output's type
            # from Python numbers (float64 / int64): cast in front, and back to the values' type
            rank = _rank(types, node.input[0])
            t = numpy_helper.from_array(np.array(int(depth.flat[0]), np.int64), "value")
            nodes.append(helper.make_node("Constant", [], [f"{tag}__depth"], value=t))
            node.input[1] = f"{tag}__depth"
            if _elem(types, node.input[0]) not in INTEGER_TYPES:
                i64 = onnx.TensorProto.INT64
                nodes.append(helper.make_node("Cast", [node.input[0]], [f"{tag}__ix"], to=i64))
                node.input[0] = f"{tag}__ix"
            for attr in node.attribute:  # TVM builds only axis -1 or >= 0
                if attr.name == "axis" and attr.i < -1 and rank is not None:
                    attr.i += rank + 1
            out, to = node.output[0], getattr(onnx.TensorProto, kind)
            node.output[0] = f"{tag}__onehot"
            nodes.append(node)
            nodes.append(helper.make_node("Cast", [node.output[0]], [out], to=to))
            done += 1
            continue
        if node.op_type == "Resize" and "axes" in a:
            made = _resize_full_rank(proto, node, a, types)
            nodes.extend(made)
            done += bool(made)
        nodes.append(node)
    if done:
        del g.node[:]
        g.node.extend(nodes)
    return done


def _resize_full_rank(proto, node, a: dict, types) -> list:
    """``node`` (a Resize with ``axes``) given scales or sizes for every axis instead, where its
    input's shape and those values are known and the aspect-ratio policy is ``stretch``:
    returns the ``Constant`` nodes holding them (none where nothing was rewritten)."""
    from onnx import helper, numpy_helper

    x = _shape(types, node.input[0])
    if x is None or _text(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        return []
    rank = len(x)
    axes = [int(v) % rank for v in a["axes"]]
    ins = list(node.input) + [""] * (4 - len(node.input))
    roi, scales, sizes = (_constant(proto, n) if n else None for n in ins[1:4])
    if (ins[1] and roi is None) or (ins[2] and scales is None) or (ins[3] and sizes is None):
        return []
    new = {}
    if roi is not None and roi.size:
        full = np.concatenate([np.zeros(rank), np.ones(rank)]).astype(roi.dtype)
        for j, ax in enumerate(axes):
            full[ax], full[rank + ax] = roi[j], roi[len(axes) + j]
        new[1] = full
    if scales is not None and scales.size:
        full = np.ones(rank, scales.dtype)
        full[axes] = scales
        new[2] = full
    if sizes is not None and sizes.size:
        full = np.array(x, sizes.dtype)
        full[axes] = sizes
        new[3] = full
    made = []
    for k, value in new.items():
        name = f"{node.name or 'Resize'}__{k}__full"
        t = numpy_helper.from_array(value, "value")
        made.append(helper.make_node("Constant", [], [name], value=t))
        ins[k] = name
    if not made:
        return []
    while ins and not ins[-1]:
        ins.pop()
    node.input[:] = ins
    for j, attr in enumerate(node.attribute):
        if attr.name == "axes":
            del node.attribute[j]
            break
    return made


#: attributes that name an element type of what a node makes
TYPE_ATTRIBUTES = {"to", "dtype", "output_datatype"}


def float16_in_float32(proto) -> int:
    """float16 graphs computed in float32 (as onnxruntime's CPU kernels do; TVM's float16
    arithmetic, accumulations included, drifts by several float16 steps over a softmax or a
    long dot product): float16 inputs are cast up on entry and outputs down on exit, float16
    weights and constants become float32, and wherever the graph itself rounds to float16 (a
    Cast or CastLike to it) the value is rounded to float16 and cast back up, so the graph's
    own roundings are kept. Graphs with subgraphs are left as they are. Returns how many values
    were changed."""
    import onnx
    from onnx import helper, numpy_helper

    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    g = proto.graph
    if any(a.HasField("g") or len(a.graphs) for n in g.node for a in n.attribute):
        return 0
    types = infer_types(proto)

    def f16(name: str) -> bool:
        t = types.get(name)
        return t is not None and t.HasField("tensor_type") and t.tensor_type.elem_type == F16

    inits = {t.name for t in g.initializer}
    ins = [i for i in g.input if i.name not in inits and i.type.tensor_type.elem_type == F16]
    outs = [o for o in g.output if o.type.tensor_type.elem_type == F16]
    consts = [t for t in g.initializer if t.data_type == F16]
    const_nodes = [
        n
        for n in g.node
        if n.op_type in ("Constant", "ConstantOfShape")
        and any(a.name == "value" and a.t.data_type == F16 for a in n.attribute)
    ]
    rounding = [
        n
        for n in g.node
        if (n.op_type == "Cast" and any(a.name == "to" and a.i == F16 for a in n.attribute))
        or (n.op_type == "CastLike" and f16(n.input[1]))
    ]
    typed = [
        n
        for n in g.node
        if n.op_type != "Cast"
        and any(a.name in TYPE_ATTRIBUTES and a.i == F16 for a in n.attribute)
    ]
    if not (ins or outs or consts or const_nodes or rounding or typed) or any(
        o.name in {i.name for i in g.input} for o in outs
    ):
        return 0
    renamed = {i.name: f"{i.name}__f32" for i in ins}
    for n in g.node:
        n.input[:] = [renamed.get(x, x) for x in n.input]
    head = [helper.make_node("Cast", [i.name], [renamed[i.name]], to=F32) for i in ins]
    for t in consts:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for n in const_nodes:
        for a in n.attribute:
            if a.name == "value" and a.t.data_type == F16:
                v = numpy_helper.to_array(a.t).astype(np.float32)
                a.t.CopyFrom(numpy_helper.from_array(v, a.t.name))
    for n in typed:
        for a in n.attribute:
            if a.name in TYPE_ATTRIBUTES and a.i == F16:
                a.i = F32
    out_names = {o.name: f"{o.name}__f32" for o in outs}
    for n in g.node:
        n.output[:] = [out_names.get(x, x) for x in n.output]
        n.input[:] = [out_names.get(x, x) for x in n.input]
    after: dict[str, list] = {}  # value rounded to float16 -> the cast back up
    for n in rounding:  # round to float16 as the graph says, then go on in float32
        rounded = f"{n.output[0]}__f16"
        up = helper.make_node("Cast", [rounded], [n.output[0]], to=F32)
        if n.op_type == "CastLike":
            n.CopyFrom(helper.make_node("Cast", [n.input[0]], [rounded], name=n.name, to=F16))
        else:
            n.output[0] = rounded
        after[rounded] = [up]
    tail = [helper.make_node("Cast", [out_names[o.name]], [o.name], to=F16) for o in outs]
    nodes = head + [m for n in g.node for m in [n, *after.get(n.output[0], [])]] + tail
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return len(ins) + len(outs) + len(consts) + len(const_nodes) + len(rounding) + len(typed)


def empty_constants(proto) -> list[str]:
    """``"OpType (node X): why"`` for each node computing with an empty tensor known at compile
    time (after folding: a ``Constant``, or ``ConstantOfShape`` of a shape with a 0): TVM builds
    it into the executable as an empty constant, which its loader then rejects. (Shapes and
    axes, ``VALUE_INPUTS``, are read by the importer, not built in.)"""
    empty = set()
    for node in proto.graph.node:
        if node.op_type == "Constant":
            value = _constant_value(node)
            if value is not None and value.size == 0:
                empty.add(node.output[0])
        elif node.op_type == "ConstantOfShape" and node.input:
            shape = _constant(proto, node.input[0])
            if shape is not None and 0 in shape.tolist():
                empty.add(node.output[0])
    bad = []
    for i, node in enumerate(proto.graph.node):
        read = VALUE_INPUTS.get(node.op_type, {})  # ConstantOfShape's shape among them
        for k, x in enumerate(node.input):
            if x in empty and k not in read:
                where = f"{node.op_type} (node {node.name or f'#{i}'})"
                bad.append(f"{where}: an empty constant input, which TVM's executable cannot hold")
                break
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
    "TopK": {1: "k"}, "CumSum": {1: "axis"}, "CumProd": {1: "axis"},
    "OneHot": {1: "depth", 2: "values"},
    "ReduceSum": _AXES, "ReduceMean": _AXES, "ReduceMax": _AXES, "ReduceMin": _AXES,
    "ReduceProd": _AXES, "ReduceL1": _AXES, "ReduceL2": _AXES, "ReduceLogSum": _AXES,
    "ReduceLogSumExp": _AXES, "ReduceSumSquare": _AXES,
    "AffineGrid": {1: "size"}, "Col2Im": {1: "image_shape", 2: "block_shape"},
    "Trilu": {1: "k"}, "Dropout": {1: "ratio", 2: "training_mode"},
    "HannWindow": {0: "size"}, "HammingWindow": {0: "size"}, "BlackmanWindow": {0: "size"},
}  # fmt: skip


#: operator -> the inputs of which it reads only the shape or the element type
SHAPE_OR_TYPE_ONLY = {
    "Shape": (0,), "Size": (0,), "CastLike": (1,), "EyeLike": (0,),
    "RandomNormalLike": (0,), "RandomUniformLike": (0,),
}  # fmt: skip


def value_inputs(proto) -> dict[str, str]:
    """Graph input -> ``"OpType (node N) axes"`` for each graph input whose value the importer
    needs constant (``VALUE_INPUTS``), directly or through what is computed from it (not through
    inputs read for their shape or type only: ``SHAPE_OR_TYPE_ONLY``), its first such use
    named."""
    graph_inputs = {i.name for i in proto.graph.input} - {t.name for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    out: dict[str, str] = {}
    for i, node in enumerate(proto.graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        for k, what in VALUE_INPUTS.get(node.op_type, {}).items():
            if k >= len(node.input) or not node.input[k]:
                continue
            where = f"{node.op_type} (node {node.name or f'#{i}'}) {what}"
            todo, seen = [node.input[k]], set()
            while todo:
                x = todo.pop()
                if x in seen or not x:
                    continue
                seen.add(x)
                if x in graph_inputs:
                    out.setdefault(x, where)
                p = producer.get(x)
                if p is not None:
                    skip = SHAPE_OR_TYPE_ONLY.get(p.op_type, ())
                    todo.extend(v for j, v in enumerate(p.input) if j not in skip)
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
    nodes, so that ``fold_constants`` can compute what depends on them (the importer takes a
    shape only where an operator expects one: a shape divided, compared or cast to float, as in
    the attention functions' scale, would stop it). Returns how many nodes were rewritten."""
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
    for i, node in enumerate(proto.graph.node):
        if node.op_type not in ("Shape", "Size") or not node.input:
            continue
        shape = _shape(types, node.input[0])
        if shape is None:
            continue
        out = node.output[0]
        if node.op_type == "Shape":
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
