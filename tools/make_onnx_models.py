"""Small ONNX models for tests and benchmarks: networks built with ``onnx.helper`` (a conv net, an
MLP, a transformer block with attention) and exports from real tools (scikit-learn through
skl2onnx; onnxruntime's own static and dynamic quantizers). Random weights with a fixed seed.

    python tools/make_onnx_models.py OUT_DIR [--names convnet,mlp] [--size small|bench]

``small`` shapes keep the test suite fast; ``bench`` shapes are what BENCHMARKS.md times (a
224x224 conv net, a 1024-wide MLP, a 128-token transformer block).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OPSET = 17
SIZES = {
    "small": {"hw": 32, "c": 16, "mlp": (64, 128), "seq": 16, "d": 64, "heads": 4},
    "bench": {"hw": 224, "c": 32, "mlp": (1024, 2048), "seq": 128, "d": 256, "heads": 8},
}


def _h():
    from onnx import TensorProto, helper, numpy_helper

    return helper, TensorProto, numpy_helper


def _model(nodes, inputs, outputs, inits, name: str):
    import onnx

    helper, _, numpy_helper = _h()
    g = helper.make_graph(
        nodes, name, inputs, outputs, initializer=[numpy_helper.from_array(a, n) for n, a in inits]
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgert")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def convnet(size: str = "small", seed: int = 0):
    """Conv+BN+ReLU, max-pool, depthwise conv, pointwise conv, global pool, Gemm, softmax.
    Input ``image`` (N, 3, H, W) with a dynamic batch axis."""
    helper, TP, _ = _h()
    s = SIZES[size]
    c, hw = s["c"], s["hw"]
    rng = np.random.default_rng(seed)

    def w(*shape, fan):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan)).astype(np.float32)

    inits = [
        ("conv1.w", w(c, 3, 3, 3, fan=27)),
        ("bn.scale", (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)),
        ("bn.bias", (0.1 * rng.standard_normal(c)).astype(np.float32)),
        ("bn.mean", (0.1 * rng.standard_normal(c)).astype(np.float32)),
        ("bn.var", (1 + 0.1 * rng.random(c)).astype(np.float32)),
        ("dw.w", w(c, 1, 3, 3, fan=9)),
        ("dw.b", (0.1 * rng.standard_normal(c)).astype(np.float32)),
        ("pw.w", w(2 * c, c, 1, 1, fan=c)),
        ("pw.b", (0.1 * rng.standard_normal(2 * c)).astype(np.float32)),
        ("fc.w", w(10, 2 * c, fan=2 * c)),
        ("fc.b", (0.1 * rng.standard_normal(10)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv1.w"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node(
            "BatchNormalization",
            ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
            ["b1"],
            name="bn1",
        ),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"
        ),
        helper.make_node(
            "Conv", ["p1", "dw.w", "dw.b"], ["d1"], pads=[1, 1, 1, 1], group=c, name="depthwise"
        ),
        helper.make_node("Relu", ["d1"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "pw.w", "pw.b"], ["c2"], name="pointwise"),
        helper.make_node("Relu", ["c2"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    x = helper.make_tensor_value_info("image", TP.FLOAT, ["N", 3, hw, hw])
    y = helper.make_tensor_value_info("probs", TP.FLOAT, ["N", 10])
    return _model(nodes, [x], [y], inits, "convnet")


def mlp(size: str = "small", seed: int = 1):
    """Two hidden layers (MatMul + Add, tanh-GELU and ReLU), LayerNorm, 10 outputs."""
    helper, TP, _ = _h()
    d_in, d_h = SIZES[size]["mlp"]
    rng = np.random.default_rng(seed)
    inits = [
        ("w1", (rng.standard_normal((d_in, d_h)) / np.sqrt(d_in)).astype(np.float32)),
        ("b1", (0.1 * rng.standard_normal(d_h)).astype(np.float32)),
        ("ln.g", (1 + 0.1 * rng.standard_normal(d_h)).astype(np.float32)),
        ("ln.b", (0.1 * rng.standard_normal(d_h)).astype(np.float32)),
        ("w2", (rng.standard_normal((d_h, d_h)) / np.sqrt(d_h)).astype(np.float32)),
        ("b2", (0.1 * rng.standard_normal(d_h)).astype(np.float32)),
        ("w3", (rng.standard_normal((d_h, 10)) / np.sqrt(d_h)).astype(np.float32)),
        ("half", np.array(0.5, np.float32)),
        ("one", np.array(1.0, np.float32)),
        ("inv_sqrt2", np.array(1 / np.sqrt(2), np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
        # exact GELU: 0.5 x (1 + erf(x / sqrt 2))
        helper.make_node("Mul", ["h1b", "inv_sqrt2"], ["gs"], name="gelu_scale"),
        helper.make_node("Erf", ["gs"], ["ge"], name="gelu_erf"),
        helper.make_node("Add", ["ge", "one"], ["g1"], name="gelu_add"),
        helper.make_node("Mul", ["h1b", "g1"], ["g2"], name="gelu_mul"),
        helper.make_node("Mul", ["g2", "half"], ["a1"], name="gelu_half"),
        helper.make_node(
            "LayerNormalization", ["a1", "ln.g", "ln.b"], ["n1"], axis=-1, epsilon=1e-5, name="ln"
        ),
        helper.make_node("MatMul", ["n1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Add", ["h2", "b2"], ["h2b"], name="fc2_bias"),
        helper.make_node("Relu", ["h2b"], ["a2"], name="relu"),
        helper.make_node("MatMul", ["a2", "w3"], ["y"], name="fc3"),
    ]
    x = helper.make_tensor_value_info("x", TP.FLOAT, ["batch", d_in])
    y = helper.make_tensor_value_info("y", TP.FLOAT, ["batch", 10])
    return _model(nodes, [x], [y], inits, "mlp")


def attention(size: str = "small", seed: int = 2):
    """A pre-norm transformer block: LayerNorm, multi-head self-attention with an additive mask
    input, residual, LayerNorm, ReLU FFN, residual. Inputs ``x`` (1, T, d) and ``mask`` (T, T);
    outputs ``y`` (1, T, d) and ``attn`` (1, heads, T, T), the attention probabilities."""
    helper, TP, _ = _h()
    s = SIZES[size]
    t, d, nh = s["seq"], s["d"], s["heads"]
    hd = d // nh
    rng = np.random.default_rng(seed)

    def w(a, b):
        return (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)

    inits = [
        ("ln1.g", np.ones(d, np.float32)),
        ("ln1.b", np.zeros(d, np.float32)),
        ("wq", w(d, d)),
        ("wk", w(d, d)),
        ("wv", w(d, d)),
        ("wo", w(d, d)),
        ("ln2.g", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)),
        ("ln2.b", (0.1 * rng.standard_normal(d)).astype(np.float32)),
        ("w_up", w(d, 4 * d)),
        ("w_down", w(4 * d, d)),
        ("heads_shape", np.array([1, t, nh, hd], np.int64)),
        ("model_shape", np.array([1, t, d], np.int64)),
        ("scale", np.array(1 / np.sqrt(hd), np.float32)),
    ]
    mk = helper.make_node
    nodes = [
        mk("LayerNormalization", ["x", "ln1.g", "ln1.b"], ["h"], axis=-1, name="ln1"),
        mk("MatMul", ["h", "wq"], ["q0"], name="q_proj"),
        mk("MatMul", ["h", "wk"], ["k0"], name="k_proj"),
        mk("MatMul", ["h", "wv"], ["v0"], name="v_proj"),
        mk("Reshape", ["q0", "heads_shape"], ["q1"], name="q_split"),
        mk("Reshape", ["k0", "heads_shape"], ["k1"], name="k_split"),
        mk("Reshape", ["v0", "heads_shape"], ["v1"], name="v_split"),
        mk("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3], name="q_heads"),
        mk("Transpose", ["k1"], ["kt"], perm=[0, 2, 3, 1], name="k_heads_t"),
        mk("Transpose", ["v1"], ["v"], perm=[0, 2, 1, 3], name="v_heads"),
        mk("MatMul", ["q", "kt"], ["s0"], name="scores"),
        mk("Mul", ["s0", "scale"], ["s1"], name="scale_scores"),
        mk("Add", ["s1", "mask"], ["s2"], name="add_mask"),
        mk("Softmax", ["s2"], ["attn"], axis=-1, name="softmax"),
        mk("MatMul", ["attn", "v"], ["o0"], name="attend"),
        mk("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3], name="merge_t"),
        mk("Reshape", ["o1", "model_shape"], ["o2"], name="merge"),
        mk("MatMul", ["o2", "wo"], ["o"], name="o_proj"),
        mk("Add", ["x", "o"], ["r1"], name="residual1"),
        mk("LayerNormalization", ["r1", "ln2.g", "ln2.b"], ["h2"], axis=-1, name="ln2"),
        mk("MatMul", ["h2", "w_up"], ["u"], name="ffn_up"),
        mk("Relu", ["u"], ["ua"], name="ffn_act"),
        mk("MatMul", ["ua", "w_down"], ["dn"], name="ffn_down"),
        mk("Add", ["r1", "dn"], ["y"], name="residual2"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TP.FLOAT, [1, t, d]),
        helper.make_tensor_value_info("mask", TP.FLOAT, [t, t]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TP.FLOAT, [1, t, d]),
        helper.make_tensor_value_info("attn", TP.FLOAT, [1, nh, t, t]),
    ]
    return _model(nodes, inputs, outputs, inits, "attention")


def causal_mask(t: int) -> np.ndarray:
    return np.triu(np.full((t, t), -1e9, np.float32), 1)


def sklearn_mlp(seed: int = 0, *, classifier: bool = False):
    """scikit-learn's MLPRegressor (the digit as a number) trained on its bundled 8x8 digits,
    exported with skl2onnx. ``classifier=True`` exports an MLPClassifier instead, whose label
    output uses the ai.onnx.ml ArrayFeatureExtractor operator (an unsupported-operator case)."""
    import warnings

    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if classifier:
            est = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=30, random_state=seed)
            est.fit(x, y)
            m = to_onnx(est, x[:1], options={id(est): {"zipmap": False}}, target_opset=OPSET)
        else:
            est = MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=60, random_state=seed)
            est.fit(x, y.astype(np.float32))
            m = to_onnx(est, x[:1], target_opset=OPSET)
    m.graph.name = "sklearn_mlp"
    return m


def digits_sample(n: int = 4) -> np.ndarray:
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    return (x[:n] / 16.0).astype(np.float32)


def ort_quantized(model, out: Path, *, static: bool, calib: list[dict] | None = None) -> Path:
    """``model`` quantized by onnxruntime's own tool: static QDQ (per channel, calibrated on
    ``calib``) or dynamic (ConvInteger / MatMulInteger)."""
    import logging

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice on pre-processing
    src = out.with_suffix(".fp32.onnx")
    onnx.save(model, src)
    if static:

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(calib or [])

            def get_next(self):
                return next(self.it, None)

        quantize_static(
            str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True
        )
    else:
        quantize_dynamic(str(src), str(out))
    src.unlink()
    return out


def legacy(seed: int = 3):
    """An opset-7, IR-3 graph (weights listed among the inputs, as exporters of that time wrote
    them) of the operators whose form changed since: Clip, Pad and Slice with attributes that
    later became inputs, ReduceMean, Split, Squeeze and Unsqueeze with attribute axes, BatchNorm
    with ``spatial``. ``onnx.version_converter`` takes it to every later opset."""
    import onnx

    helper, T, numpy_helper = _h()
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = [
        ("w", w(8, 3, 3, 3)), ("b", w(8)), ("gamma", w(8, scale=0.1) + 1), ("beta", w(8)),
        ("mean", w(8)), ("var", np.abs(w(8)) + 0.5), ("fc", w(32, 10)),
        ("shape", np.array([1, -1], np.int64)),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Clip", ["bn"], ["r"], min=0.0, max=6.0),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Pad", ["p"], ["pp"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.0),
        helper.make_node("Slice", ["pp"], ["s"], axes=[2, 3], starts=[1, 1], ends=[5, 5]),
        helper.make_node("ReduceMean", ["s"], ["m"], axes=[2], keepdims=0),
        helper.make_node("Split", ["m"], ["m1", "m2"], axis=1, split=[4, 4]),
        helper.make_node("Concat", ["m2", "m1"], ["mc"], axis=1),
        helper.make_node("Unsqueeze", ["mc"], ["u"], axes=[0]),
        helper.make_node("Squeeze", ["u"], ["sq"], axes=[0]),
        helper.make_node("Transpose", ["sq"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["mm"]),
        helper.make_node("Softmax", ["mm"], ["y"], axis=1),
    ]
    listed = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in inits]  # fmt: skip
    g = helper.make_graph(
        nodes,
        "legacy",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])] + listed,
        [helper.make_tensor_value_info("y", T.FLOAT, [1, 10])],
        [numpy_helper.from_array(a, n) for n, a in inits],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 7)], producer_name="edgert")
    m.ir_version = 3
    onnx.checker.check_model(m)
    return m


BUILDERS = {"convnet": convnet, "mlp": mlp, "attention": attention}


def main() -> None:
    import onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--names", default=",".join(BUILDERS))
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.names.split(","):
        if name == "sklearn_mlp":
            m = sklearn_mlp()
        else:
            m = BUILDERS[name](a.size)
        p = a.out / f"{name}.onnx"
        onnx.save(m, p)
        print(p)


if __name__ == "__main__":
    main()
