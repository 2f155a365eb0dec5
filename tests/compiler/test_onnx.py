"""ONNX models through the compiler: every model compiled for the host runs and matches
onnxruntime on the same inputs; int8 weight-only matches onnxruntime on the same int8 graph exactly
(float order aside) and the float model within a stated NMSE; rpi5 builds are aarch64 ELF."""

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import (
    F32_TOL,
    INT8_NMSE,
    QDQ_STEPS,
    SHAPES,
    feeds_for,
    make_test_onnx_models,
    nmse,
    ort_run,
    rel_err,
    run_cli,
)
from edgert.compiler.onnx.backend import LIGHT_ATOL, LIGHT_RTOL, light_data, light_models
from edgert.compiler.onnx.compile import compile_onnx, fuse_dequantize_matmul
from edgert.compiler.onnx.frontend import (
    fold_batch_norms,
    load_onnx,
    parse_input_shapes,
    quantize_weights_int8,
    to_relax,
)

from edgert.errors import EdgertError
from edgert.runtime.onnx import load_inputs, open_dnn, save_outputs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_test_onnx_models(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def compiled(models, tmp_path_factory):
    """Host artifacts: (model, bits) -> artifact path."""
    d = tmp_path_factory.mktemp("onnx-art")
    out = {}
    for name in SHAPES:
        for bits in (None, 8) if name != "convnet_qdq" else (None,):
            s = compile_onnx(
                model=models[name],
                target="host",
                out=d / f"{name}-{bits or 32}.edgert",
                bits=bits,
                input_shapes=SHAPES[name],
            )
            out[name, bits] = s.out
    return out


@pytest.mark.parametrize("name", ["convnet", "mlp", "attention", "sklearn_mlp"])
def test_f32_matches_onnxruntime(models, compiled, name):
    rng = np.random.default_rng(0)
    feeds = feeds_for(name, rng)
    eng = open_dnn(compiled[name, None])
    got = eng.run(feeds)
    ref = ort_run(onnx.load(models[name]), feeds)
    assert [o.name for o in eng.outputs] == [o.name for o in onnx.load(models[name]).graph.output]
    for (k, g), r in zip(got.items(), ref):
        assert g.shape == r.shape and g.dtype == r.dtype, k
        assert rel_err(g, r) < F32_TOL, (name, k, rel_err(g, r))


@pytest.mark.parametrize("name", ["convnet", "mlp", "attention", "sklearn_mlp"])
def test_int8_weights(models, compiled, name):
    """int8 artifacts equal onnxruntime on the same rewritten graph (float order aside), stay
    within INT8_NMSE of the float model, and store the quantized weights as int8."""
    rng = np.random.default_rng(1)
    feeds = feeds_for(name, rng)
    m = load_onnx(models[name], input_shapes=SHAPES[name])
    q = quantize_weights_int8(m)
    assert q.quantized, "no weight was quantized"
    eng = open_dnn(compiled[name, 8])
    got = eng.run(feeds)
    same_graph = ort_run(q.proto, feeds, optimize=False)
    float_model = ort_run(onnx.load(models[name]), feeds)
    for (k, g), r, f in zip(got.items(), same_graph, float_model):
        assert rel_err(g, r) < F32_TOL, (name, k, rel_err(g, r))
        assert nmse(g, f) < INT8_NMSE, (name, k, nmse(g, f))
    tensors = eng.art.tensors
    for w in q.quantized:
        assert tensors[f"{w}__q8"]["buffers"]["data"]["dtype"] == "|i1"
    f32 = open_dnn(compiled[name, None])
    assert eng.weight_bytes < 0.5 * f32.weight_bytes


def test_int8_matmuls_read_int8(models):
    """Each MatMul / Gemm on an int8 weight becomes one computation reading the int8 weight (no
    float32 copy of the weight per inference); test_int8_weights checks its results."""
    for name, n in (("mlp", 3), ("attention", 6)):
        m = quantize_weights_int8(load_onnx(models[name], input_shapes=SHAPES[name]))
        mod, _, _ = to_relax(m)
        assert mod["main"].script().count("R.dequantize") == n
        fused = fuse_dequantize_matmul(mod)
        assert "R.dequantize" not in fused["main"].script()
        assert fused["main"].script().count("matmul_int8") == n


def test_onnxruntime_qdq_model(models, compiled):
    """A model quantized by onnxruntime (static, QDQ, per channel) compiles with int8 weights
    and matches onnxruntime running that same model."""
    feeds = feeds_for("convnet_qdq", np.random.default_rng(2))
    eng = open_dnn(compiled["convnet_qdq", None])
    got = eng.run(feeds)["probs"]
    model = onnx.load(models["convnet_qdq"])
    last_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"][-1]
    inits = {t.name: t for t in model.graph.initializer}
    step = float(onnx.numpy_helper.to_array(inits[last_dq.input[1]]))
    for optimize in (False, True):  # as written, and with onnxruntime's integer kernels
        ref = ort_run(model, feeds, optimize=optimize)[0]
        assert np.max(np.abs(got - ref)) <= QDQ_STEPS * step * 1.001, optimize
    assert any(t["buffers"]["data"]["dtype"] == "|i1" for t in eng.art.tensors.values())


def test_rpi5_cross_compile(models, tmp_path):
    s = compile_onnx(
        model=models["mlp"],
        target="rpi5",
        out=tmp_path / "mlp.edgert",
        bits=8,
        input_shapes={"x": (1, 64)},
    )
    info = subprocess.run(
        ["file", f"{s.out}/lib/model.so"], capture_output=True, text=True, check=True
    )
    assert "ARM aarch64" in info.stdout
    man = json.loads((tmp_path / "mlp.edgert" / "manifest.json").read_text())
    assert man["kind"] == "onnx" and man["target"]["name"] == "rpi5"
    with pytest.raises(EdgertError, match="compiled for target rpi5"):
        open_dnn(s.out)


def test_unsupported_operators_named_before_compiling(models, tmp_path):
    """onnxruntime's dynamic quantization emits ConvInteger, which TVM cannot import: refused
    with the operator and every node using it, and no artifact left behind."""
    out = tmp_path / "dyn.edgert"
    with pytest.raises(EdgertError) as e:
        compile_onnx(model=models["convnet_dyn"], target="host", out=out)
    msg = str(e.value)
    assert "ConvInteger" in msg
    for node in ("conv1_quant", "depthwise_quant", "pointwise_quant"):
        assert node in msg
    assert not out.exists()


def test_batch_norm_folded_into_conv(models, compiled):
    """Conv + BatchNormalization becomes one Conv with rescaled weights: same outputs."""
    m = load_onnx(models["convnet"], input_shapes=SHAPES["convnet"])
    assert m.ops["BatchNormalization"] == 1
    assert fold_batch_norms(m) == 1
    assert "BatchNormalization" not in m.ops
    feeds = feeds_for("convnet", np.random.default_rng(4))
    folded = ort_run(m.proto, feeds)[0]
    assert rel_err(folded, ort_run(onnx.load(models["convnet"]), feeds)[0]) < F32_TOL
    man = json.loads((Path(compiled["convnet", None]) / "manifest.json").read_text())
    assert man["rewrites"]["batch_norms_folded"] == 1
    assert "bn.mean" not in man["tensors"]


def test_input_shape_parsing():
    assert parse_input_shapes(["x:1x3x32x32", "mask:4,4"]) == {
        "x": (1, 3, 32, 32),
        "mask": (4, 4),
    }
    assert parse_input_shapes(["1x64"]) == {None: (1, 64)}
    assert parse_input_shapes(["a:b:2x2"]) == {"a:b": (2, 2)}  # names may hold colons
    for bad in ["x:", "x:1xax2", "x:0x3", "x:-1x2"]:
        with pytest.raises(EdgertError, match="--input-shape"):
            parse_input_shapes([bad])
    with pytest.raises(EdgertError, match="twice"):
        parse_input_shapes(["x:1", "x:2"])


def test_input_shape_checked_against_model(models):
    with pytest.raises(EdgertError, match="dynamic dimensions"):
        load_onnx(models["convnet"])
    with pytest.raises(EdgertError, match="axis 1 of image is fixed at 3"):
        load_onnx(models["convnet"], input_shapes={"image": (1, 4, 32, 32)})
    with pytest.raises(EdgertError, match="rank 3"):
        load_onnx(models["convnet"], input_shapes={"image": (1, 3, 32)})
    with pytest.raises(EdgertError, match="no input called"):
        load_onnx(models["convnet"], input_shapes={"img": (1, 3, 32, 32)})
    with pytest.raises(EdgertError, match="ambiguous"):
        load_onnx(models["attention"], input_shapes={None: (1, 16, 64)})
    assert load_onnx(models["convnet"], input_shapes={None: (4, 3, 32, 32)}).inputs[0].shape == (
        4,
        3,
        32,
        32,
    )


def test_engine_checks_inputs(compiled):
    eng = open_dnn(compiled["convnet", None])
    good = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(EdgertError, match="compiled for 2x3x32x32"):
        eng.run({"image": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(EdgertError, match="no input img"):
        eng.run({"image": good, "img": good})
    with pytest.raises(EdgertError, match="missing"):
        eng.run({})
    with pytest.raises(EdgertError, match="takes float32"):
        eng.run({"image": good.astype(np.complex64)})
    # float64 is accepted and cast (same kind)
    assert eng.run({"image": good.astype(np.float64)})["probs"].shape == (2, 10)


def test_io_files(tmp_path):
    from edgert.runtime.onnx import TensorSpec

    one = [TensorSpec("x", (2,), "float32")]
    np.save(tmp_path / "a.npy", np.ones(2, np.float32))
    assert list(load_inputs([str(tmp_path / "a.npy")], one)) == ["x"]
    two = one + [TensorSpec("m", (2,), "float32")]
    with pytest.raises(EdgertError, match="does not say which"):
        load_inputs([str(tmp_path / "a.npy")], two)
    np.savez(tmp_path / "b.npz", x=np.ones(2), m=np.zeros(2))
    assert sorted(load_inputs([str(tmp_path / "b.npz")], two)) == ["m", "x"]
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(EdgertError, match="not a numpy"):
        load_inputs([str(tmp_path / "bad.npy")], one)
    with pytest.raises(EdgertError, match="no such input"):
        load_inputs([str(tmp_path / "none.npy")], one)
    with pytest.raises(EdgertError, match=".npz"):
        save_outputs({"a": np.ones(1), "b": np.ones(1)}, tmp_path / "o.npy")
    p = save_outputs({"a": np.ones(3)}, tmp_path / "o.npy")
    assert np.load(p).shape == (3,)


# -- the command line -----------------------------------------------------------------------
def test_cli_compile_run_inspect_bench(models, tmp_path):
    art = tmp_path / "attn.edgert"
    r = run_cli(
        "compile",
        str(models["attention"]),
        "--target",
        "host",
        "--bits",
        "8",
        "-o",
        str(art),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["weights"] == "int8" and s["quantized_tensors"] == 6
    feeds = feeds_for("attention", np.random.default_rng(3))
    np.savez(tmp_path / "in.npz", **feeds)
    r = run_cli(
        "run",
        str(art),
        "--input",
        str(tmp_path / "in.npz"),
        "-o",
        str(tmp_path / "out.npz"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    with np.load(tmp_path / "out.npz") as saved:
        y = saved["y"]
        np.testing.assert_array_equal(np.asarray(out["outputs"]["y"]["values"], np.float32), y)
    ref = ort_run(
        quantize_weights_int8(load_onnx(models["attention"])).proto, feeds, optimize=False
    )[0]
    assert rel_err(y, ref) < F32_TOL
    # one .npy per named input gives the same result
    np.save(tmp_path / "x.npy", feeds["x"])
    np.save(tmp_path / "mask.npy", feeds["mask"])
    r = run_cli(
        "run",
        str(art),
        "-i",
        f"x={tmp_path / 'x.npy'}",
        "-i",
        f"mask={tmp_path / 'mask.npy'}",
        "-o",
        str(tmp_path / "o2.npz"),
    )
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "o2.npz") as saved:
        np.testing.assert_array_equal(saved["y"], y)
    r = run_cli("inspect", str(art), "--json")
    info = json.loads(r.stdout)
    assert info["kind"] == "onnx" and info["weights"] == "int8"
    assert [i["name"] for i in info["inputs"]] == ["x", "mask"]
    assert info["ops"]["MatMul"] == 8
    r = run_cli("inspect", str(art))
    assert r.returncode == 0 and "input      x 1x16x64 float32" in r.stdout
    r = run_cli("bench", str(art), "-r", "5", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert b["runs"] == 5 and len(b["samples"]["latency_ms"]) == 5 and b["threads"] == 1
    for key in ("init_s", "first_ms", "latency_ms", "latency_ms_std", "peak_rss_bytes"):
        assert b[key] > 0, key
    assert b["latency_ms_min"] <= b["latency_ms_median"] <= max(b["samples"]["latency_ms"])
    r = run_cli("bench", str(art), "-r", "3")
    assert r.returncode == 0 and "infer x3" in r.stdout and "first inference" in r.stdout


def one_error_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_cli_bad_input(models, compiled, tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xfe" * 20)
    assert "not a valid ONNX" in one_error_line(
        run_cli("compile", str(bad), "--target", "host", "-o", str(tmp_path / "a.edgert"))
    )
    whole = models["mlp"].read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(whole[: len(whole) // 2])
    assert "not a valid ONNX" in one_error_line(
        run_cli("compile", str(cut), "--target", "rpi5", "-o", str(tmp_path / "b.edgert"))
    )
    line = one_error_line(
        run_cli(
            "compile",
            str(models["convnet_dyn"]),
            "--target",
            "host",
            "-o",
            str(tmp_path / "c.edgert"),
        )
    )
    assert "ConvInteger" in line and "conv1_quant" in line
    line = one_error_line(
        run_cli(
            "compile", str(models["convnet"]), "--target", "host", "-o", str(tmp_path / "d.edgert")
        )
    )
    assert "dynamic dimensions" in line and "--input-shape image:Nx3x32x32" in line
    assert "--bits 4 is not available" in one_error_line(
        run_cli(
            "compile",
            str(models["mlp"]),
            "--target",
            "host",
            "--bits",
            "4",
            "--input-shape",
            "x:1x64",
            "-o",
            str(tmp_path / "e.edgert"),
        )
    )
    assert not any(p.name.endswith(".edgert") for p in tmp_path.iterdir())
    # running: a wrong input shape, a prompt for an ONNX model, an ONNX model to `generate`
    art = compiled["convnet", None]
    np.save(tmp_path / "small.npy", np.zeros((1, 3, 16, 16), np.float32))
    line = one_error_line(run_cli("run", art, "--input", str(tmp_path / "small.npy")))
    assert "shape 1x3x16x16" in line and "compiled for 2x3x32x32" in line
    assert "takes arrays" in one_error_line(run_cli("run", art, "-p", "hello"))
    assert "compiled ONNX model" in one_error_line(run_cli("generate", art, "-p", "hello"))
    assert "no --input" in one_error_line(run_cli("run", art))


def custom_op_model():
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="ok"),
            helper.make_node("FancyNorm", ["r"], ["y"], name="my_norm", domain="com.example"),
        ],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )


def test_custom_operator_listed(tmp_path):
    p = tmp_path / "custom.onnx"
    onnx.save(custom_op_model(), p)
    with pytest.raises(EdgertError, match=r"FancyNorm \(node my_norm\)"):
        load_onnx(p)


def test_corrupt_weights_refused(compiled, tmp_path):
    import shutil

    art = tmp_path / "mlp.edgert"
    shutil.copytree(compiled["mlp", None], art)
    man = json.loads((art / "manifest.json").read_text())
    buf = man["tensors"]["w2"]["buffers"]["data"]
    f = art / man["tensors"]["w2"]["file"]
    data = bytearray(f.read_bytes())
    data[buf["offset"] + 17] ^= 0x40
    f.write_bytes(bytes(data))
    with pytest.raises(EdgertError, match="tensor w2 fails its checksum"):
        open_dnn(art)


def test_initializers_listed_as_inputs(tmp_path):
    """IR-3 exports (the onnx package's model-zoo graphs) list every weight among the graph inputs;
    they compile with the weights inside the artifact, and the result equals the reference output
    shipped with the graph (input as onnx's backend runner makes it) and onnxruntime's."""
    path = light_models()["squeezenet"]
    proto = onnx.load(path)
    inits = {t.name for t in proto.graph.initializer}
    assert proto.ir_version == 3 and inits & {i.name for i in proto.graph.input}
    m = load_onnx(path)
    assert [s.name for s in m.inputs] == ["data_0"]
    art = compile_onnx(model=path, target="host", out=tmp_path / "sq.edgert").out
    _, [([x], [ref])] = light_data(path)
    assert x.shape == m.inputs[0].shape
    feeds = {"data_0": x}
    (got,) = open_dnn(art).run(feeds).values()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=LIGHT_RTOL, atol=LIGHT_ATOL)
    (ort,) = ort_run(proto, feeds)
    assert rel_err(got, ort) < F32_TOL


def test_opsets_7_to_newest(tmp_path):
    """One graph at every opset from 7 to the newest the onnx package knows (written at 7,
    converted by onnx's version converter): each compiles and matches onnxruntime. Graphs older
    than opset 13 are upgraded before import (TVM's importer reads Slice, Pad, Clip, Squeeze and
    the reductions in their newer form only)."""
    from make_onnx_models import legacy
    from onnx import version_converter

    base = legacy()
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    newest = onnx.defs.onnx_opset_version()
    assert newest >= 23
    for v in range(7, newest + 1):
        m = base if v == 7 else version_converter.convert_version(base, v)
        m.ir_version = max(m.ir_version, 3 if v == 7 else 7)
        p = tmp_path / f"op{v}.onnx"
        onnx.save(m, p)
        art = compile_onnx(model=p, target="host", out=tmp_path / f"op{v}.edgert").out
        got = open_dnn(art).run({"x": x})["y"]
        (ref,) = ort_run(m, {"x": x})
        assert rel_err(got, ref) < F32_TOL, v


def test_old_opset_int8(tmp_path):
    """--bits 8 writes per-channel DequantizeLinear (opset 13): an opset-7 graph is upgraded
    first, and its outputs stay within the int8 bound of the float model's."""
    from make_onnx_models import legacy

    p = tmp_path / "legacy.onnx"
    onnx.save(legacy(), p)
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    art = compile_onnx(model=p, target="host", out=tmp_path / "l8.edgert", bits=8).out
    eng = open_dnn(art)
    assert any(t["buffers"]["data"]["dtype"] == "|i1" for t in eng.art.tensors.values())
    assert json.loads((Path(art) / "manifest.json").read_text())["source"]["opset"] == 7
    (ref,) = ort_run(onnx.load(p), {"x": x})
    assert nmse(eng.run({"x": x})["y"], ref) < INT8_NMSE


def test_external_data(tmp_path):
    """Weights in a separate file (``save_as_external_data``, as exporters write models over
    2 GB): read from beside the graph; without that file the compile is refused in one line."""
    from make_onnx_models import mlp

    d = tmp_path / "ext"
    d.mkdir()
    onnx.save(mlp(), d / "mlp.onnx", save_as_external_data=True, location="mlp.bin",
              size_threshold=0)  # fmt: skip
    assert (d / "mlp.bin").stat().st_size > (d / "mlp.onnx").stat().st_size
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    art = compile_onnx(model=d / "mlp.onnx", target="host", out=tmp_path / "e.edgert",
                       input_shapes={"x": (3, 64)}).out  # fmt: skip
    (ref,) = ort_run(onnx.load(d / "mlp.onnx"), {"x": x})
    assert rel_err(open_dnn(art).run({"x": x})["y"], ref) < F32_TOL
    (d / "mlp.bin").unlink()
    with pytest.raises(EdgertError, match="external weight data cannot be read"):
        compile_onnx(model=d / "mlp.onnx", target="host", out=tmp_path / "f.edgert",
                     input_shapes={"x": (3, 64)})  # fmt: skip


def _value_input_model(path: Path) -> Path:
    """y = reshape(reduce_sum(x, axes), shape): two inputs that set an axis and a shape."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["r"], keepdims=0, name="sum"),
            helper.make_node("Reshape", ["r", "shape"], ["y"], name="flat"),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
            helper.make_tensor_value_info("axes", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_input_value_pins_shape_inputs(tmp_path):
    """Inputs that set an axis or a shape are compiled in as constants with --input-value (the
    compiler says so when they are not); the artifact takes the other inputs, accepts a pinned
    one fed with its value and refuses another value."""
    model = _value_input_model(tmp_path / "m.onnx")
    line = one_error_line(
        run_cli("compile", str(model), "--target", "host", "-o", str(tmp_path / "a.edgert"))
    )
    assert "input axes" in line and "ReduceSum (node sum) axes" in line
    assert "--input-value axes=" in line
    np.save(tmp_path / "shape.npy", np.array([8], np.int64))
    art = tmp_path / "m.edgert"
    r = run_cli(
        "compile", str(model), "--target", "host", "-o", str(art), "--json",
        "--input-value", "axes=1", "--input-value", f"shape={tmp_path / 'shape.npy'}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert [i["name"] for i in s["inputs"]] == ["x"]
    assert {i["name"]: i["value"] for i in s["pinned"]} == {"axes": [1], "shape": [8]}
    eng = open_dnn(art)
    assert [i.name for i in eng.inputs] == ["x"]
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    want = x.sum(axis=1).reshape(8)
    np.testing.assert_allclose(eng.run({"x": x})["y"], want, rtol=1e-6)
    np.testing.assert_allclose(
        eng.run({"x": x, "axes": np.array([1])})["y"], want, rtol=1e-6
    )  # the value it was compiled for: accepted
    with pytest.raises(EdgertError, match=r"input axes was compiled in as \[1\]"):
        eng.run({"x": x, "axes": np.array([0])})
    r = run_cli("inspect", str(art))
    assert "input      axes 1 int64 compiled in as [1]" in r.stdout, r.stdout
    for bad, why in [
        ("axes=a,b", "not a list of numbers"),
        ("axes=1.5", "holds int64 values"),
        ("axes=1,2", "a value of shape 2, but m.onnx declares axes as 1"),
        ("nope=1", "which m.onnx has no input called"),
        ("axes", "is not NAME=VALUES"),
    ]:
        r = run_cli(
            "compile", str(model), "--target", "host", "-o", str(tmp_path / "b.edgert"),
            "--input-value", bad, "--input-value", "shape=8",
        )  # fmt: skip
        assert why in one_error_line(r), bad
    assert not (tmp_path / "b.edgert").exists()
