"""Deploy and run through the agent over the local transport (the agent as a child process):
the same results as running the artifact directly, for a compiled ONNX model and a language
model; an interrupted deploy leaves the previous version running and resumes."""

import json

import numpy as np
import onnx
import pytest
from conftest import compile_synthetic, run_cli
from edgert.compiler.onnx.compile import compile_onnx
from edgert.compiler.quant.scheme import QuantScheme
from make_onnx_models import mlp

from edgert.device.client import Device, DeviceError
from edgert.device.deploy import deploy
from edgert.runtime.generate import Sampler, generate
from edgert.runtime.onnx import open_dnn
from edgert.runtime.open import open_artifact_engine


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    d = tmp_path_factory.mktemp("dev")
    onnx.save(mlp(), d / "mlp.onnx")
    dnn = compile_onnx(model=d / "mlp.onnx", target="host", out=d / "mlp.edgert",
                       input_shapes={"x": (2, 64)}).out  # fmt: skip
    dnn8 = compile_onnx(model=d / "mlp.onnx", target="host", out=d / "mlp8" / "mlp.edgert",
                        bits=8, input_shapes={"x": (2, 64)}).out  # fmt: skip
    llm = compile_synthetic(d, "llama", QuantScheme("uniform", 4, 32)).out
    return {"dnn": dnn, "dnn8": dnn8, "llm": llm}


def test_deploy_and_run_match_local(arts, tmp_path):
    url = f"local://{tmp_path / 'device'}"
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for key in ("dnn", "llm"):
        r = run_cli("deploy", str(arts[key]), url, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["bytes_sent"] > 0
    r = run_cli("run", str(arts["dnn"]), "--device", url, "-i", str(tmp_path / "x.npy"),
                "-o", str(tmp_path / "y.npy"), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    want = open_dnn(arts["dnn"]).run({"x": x})["y"]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)
    assert json.loads(r.stdout)["device"] == url
    r = run_cli("run", str(arts["llm"]), "--device", url, "-p", "the cat sat", "-n", "16",
                "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    eng = open_artifact_engine(arts["llm"])
    want = generate(eng, prompt="the cat sat", n_predict=16, sampler=Sampler(temp=0))
    assert json.loads(r.stdout)["tokens"] == want.tokens
    with Device(url) as dev:
        listed = {a["name"]: a for a in dev.call("artifact.list")[0]["artifacts"]}
        assert listed["mlp.edgert"]["kind"] == "onnx" and listed["llama.edgert"]["kind"] == "llm"
        info = dev.call("device.info")[0]["info"]
        assert info["cores"] >= 1 and info["dram_total_bytes"] > 0
        b = dev.call("run.bench", {"name": "mlp.edgert", "runs": 3, "threads": 1})[0]["bench"]
        assert len(b["samples"]["latency_ms"]) == 3


def test_run_needs_deploy_and_known_device(arts, tmp_path):
    r = run_cli("run", str(arts["llm"]), "--device", f"local://{tmp_path}", "-p", "x")
    assert r.returncode == 2 and "deploy it first" in r.stderr
    r = run_cli("deploy", str(arts["llm"]), "bluetooth://pi")
    assert r.returncode == 2 and "unknown device" in r.stderr and "Traceback" not in r.stderr


class Interrupted(Exception):
    pass


class FlakyDevice:
    """A device whose connection dies after ``puts`` chunk uploads."""

    def __init__(self, dev, puts):
        self.dev, self.left, self.url = dev, puts, dev.url

    def call(self, action, args=None, payload=b"", **kw):
        if action == "file.put":
            if self.left == 0:
                self.dev.close()
                raise Interrupted
            self.left -= 1
        return self.dev.call(action, args, payload, **kw)


def test_interrupted_deploy_keeps_previous_version(arts, tmp_path):
    url = f"local://{tmp_path / 'device'}"
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    with Device(url) as dev:
        deploy(arts["dnn"], dev, progress=False)  # version 1: float32 weights
    v1 = open_dnn(arts["dnn"]).run({"x": x})["y"]
    with Device(url) as dev, pytest.raises(Interrupted):
        deploy(arts["dnn8"], FlakyDevice(dev, 2), chunk=4096, progress=False)  # version 2 dies
    with Device(url) as dev:  # version 1 still runs
        import io

        buf = io.BytesIO()
        np.savez(buf, x=x)
        dev.call("artifact.load", {"name": "mlp.edgert"})
        _, out = dev.call("run.infer", {"name": "mlp.edgert"}, buf.getvalue())
        np.testing.assert_array_equal(np.load(io.BytesIO(out))["y"], v1)
        r = deploy(arts["dnn8"], dev, chunk=4096, progress=False)  # the rerun resumes
        assert r.resumed_bytes >= 2 * 4096 and r.bytes_sent < r.bytes_total
        dev.call("artifact.load", {"name": "mlp.edgert"})
        _, out = dev.call("run.infer", {"name": "mlp.edgert"}, buf.getvalue())
        np.testing.assert_array_equal(np.load(io.BytesIO(out))["y"],
                                      open_dnn(arts["dnn8"]).run({"x": x})["y"])  # fmt: skip
        # inputs that unpack to more than the model takes (a zip bomb) are refused unopened
        bomb = io.BytesIO()
        np.savez_compressed(bomb, x=np.zeros((4096, 4096), np.float32))  # 64 MiB in 66 KB
        with pytest.raises(DeviceError, match="unpack to 67108992 bytes"):
            dev.call("run.infer", {"name": "mlp.edgert"}, bomb.getvalue())
    with pytest.raises(DeviceError, match="leaves the agent root"), Device(url) as dev:
        dev.call("file.stat", {"path": "../../etc/passwd"})
