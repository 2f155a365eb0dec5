"""Compiled ONNX models on arm64: rpi5 artifacts run inside the emulated device (an arm64 Debian
root under qemu-user, tools/arm64_root.py, with numpy and the TVM runtime only: no onnx, no
compiler) and their outputs match onnxruntime on this host for the same inputs."""

import json
import shutil

import numpy as np
import onnx
import pytest
from arm64_root import ensure_root, run_python
from conftest import (
    F32_TOL,
    QDQ_STEPS,
    SHAPES,
    feeds_for,
    make_test_onnx_models,
    ort_run,
    rel_err,
)
from edgert.compiler.onnx.backend import LIGHT_ATOL, LIGHT_RTOL, light_data, light_models
from edgert.compiler.onnx.compile import compile_onnx
from edgert.compiler.onnx.frontend import load_onnx, quantize_weights_int8

pytestmark = pytest.mark.device

#: (model, bits) compiled for rpi5 and run on the device
CASES = [
    ("convnet", None),
    ("mlp", 8),
    ("attention", None),
    ("attention", 8),
    ("sklearn_mlp", None),
    ("convnet_qdq", None),
]
#: float32 on aarch64 (NEON FMA contraction) vs onnxruntime on x86-64: relative max abs
ARM_F32_TOL = 10 * F32_TOL

DEVICE_SCRIPT = r"""
import json, platform, sys
import numpy as np
from edgert.runtime.onnx import open_dnn
assert "onnx" not in sys.modules
out = {"machine": platform.machine()}
for name in json.load(open("/tmp/onnx_cases.json")):
    eng = open_dnn(f"/tmp/onnx/{name}.edgert")
    with np.load(f"/tmp/onnx/{name}-in.npz") as f:
        feeds = {k: f[k] for k in f.files}
    np.savez(f"/tmp/onnx/{name}-out.npz", **eng.run(feeds))
    out[name] = [o.name for o in eng.outputs]
out["compiler_loaded"] = any(m.startswith("edgert.compiler") or m == "onnx" for m in sys.modules)
print(json.dumps(out))
"""


def case_name(name: str, bits) -> str:
    return f"{name}-{bits or 32}"


@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
    root = ensure_root()
    d = tmp_path_factory.mktemp("onnx-rpi5")
    models = make_test_onnx_models(d)
    dev = root / "tmp" / "onnx"
    shutil.rmtree(dev, ignore_errors=True)
    dev.mkdir(parents=True)
    feeds = {}
    for name, bits in CASES:
        cn = case_name(name, bits)
        s = compile_onnx(
            model=models[name],
            target="rpi5",
            out=d / f"{cn}.edgert",
            bits=bits,
            input_shapes=SHAPES[name],
        )
        shutil.copytree(s.out, dev / f"{cn}.edgert")
        feeds[cn] = feeds_for(name, np.random.default_rng(len(feeds)))
        np.savez(dev / f"{cn}-in.npz", **feeds[cn])
    (root / "tmp" / "onnx_cases.json").write_text(json.dumps(list(feeds)))
    out = json.loads(run_python(root, DEVICE_SCRIPT).strip().splitlines()[-1])
    return dev, models, feeds, out


def test_runs_on_aarch64_without_the_compiler(device_run):
    _, _, _, out = device_run
    assert out["machine"] == "aarch64"
    assert out["compiler_loaded"] is False


@pytest.mark.parametrize("name,bits", CASES, ids=[case_name(*c) for c in CASES])
def test_matches_onnxruntime(device_run, name, bits):
    dev, models, feeds, out = device_run
    cn = case_name(name, bits)
    model = onnx.load(models[name])
    if bits == 8:  # the same int8 graph, run as written
        model = quantize_weights_int8(load_onnx(models[name], input_shapes=SHAPES[name])).proto
    refs = ort_run(model, feeds[cn], optimize=bits != 8 and name != "convnet_qdq")
    assert out[cn] == [o.name for o in onnx.load(models[name]).graph.output]
    with np.load(dev / f"{cn}-out.npz") as got:
        for k, ref in zip(out[cn], refs):
            g = got[k]
            assert g.shape == ref.shape and g.dtype == ref.dtype
            if name == "convnet_qdq":  # quantized outputs: at most one level apart
                dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"][-1]
                inits = {t.name: t for t in model.graph.initializer}
                step = float(onnx.numpy_helper.to_array(inits[dq.input[1]]))
                assert np.max(np.abs(g - ref)) <= QDQ_STEPS * step * 1.001
            else:
                assert rel_err(g, ref) < ARM_F32_TOL, (cn, k, rel_err(g, ref))


#: the model-zoo graphs the onnx package ships for backend testing (IR 3, opset 9 or older)
LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
         "shufflenet", "squeezenet", "vgg19", "zfnet512"]  # fmt: skip

LIGHT_SCRIPT = r"""
import json, sys
import numpy as np
from edgert.runtime.onnx import open_dnn
for name in json.load(open("/tmp/light_cases.json")):
    eng = open_dnn(f"/tmp/light/{name}.edgert")
    (spec,) = eng.inputs
    n = int(np.prod(spec.shape))
    x = (np.arange(n).reshape(spec.shape) / n).astype(np.float32)  # as onnx's runner makes it
    (y,) = eng.run({spec.name: x}).values()
    np.save(f"/tmp/light/{name}-out.npy", y)
print(json.dumps({"compiler_loaded": any(m.startswith("edgert.compiler") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def light_run(tmp_path_factory):
    """Every light model compiled for rpi5 and run once on the emulated device."""
    root = ensure_root()
    d = tmp_path_factory.mktemp("light-rpi5")
    dev = root / "tmp" / "light"
    shutil.rmtree(dev, ignore_errors=True)
    dev.mkdir(parents=True)
    for name in LIGHT:
        s = compile_onnx(model=light_models()[name], target="rpi5", out=d / f"{name}.edgert")
        shutil.copytree(s.out, dev / f"{name}.edgert")
    (root / "tmp" / "light_cases.json").write_text(json.dumps(LIGHT))
    out = json.loads(run_python(root, LIGHT_SCRIPT).strip().splitlines()[-1])
    assert out["compiler_loaded"] is False
    return dev


@pytest.mark.parametrize("name", LIGHT)
def test_light_models_on_arm64(light_run, name):
    """Each model-zoo graph, compiled for rpi5 and run on arm64, gives the reference output shipped
    with it (at onnx's runner tolerances) and onnxruntime's on this host."""
    model, [([x], [ref])] = light_data(light_models()[name])
    got = np.load(light_run / f"{name}-out.npy")
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_allclose(got, ref, rtol=LIGHT_RTOL, atol=LIGHT_ATOL)
    inits = {t.name for t in model.graph.initializer}
    (spec,) = [i for i in model.graph.input if i.name not in inits]
    (ort_out,) = ort_run(model, {spec.name: x})
    assert rel_err(got, ort_out) < ARM_F32_TOL
