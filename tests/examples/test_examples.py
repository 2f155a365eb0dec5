"""Every script in examples/ runs as a user would run it (edgert on PATH, an output folder), and
produces what it says: tokens within the DRAM budget, a mixture streaming its experts, an ONNX
network's outputs and its aarch64 build, a run and a profile on the emulated device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(name: str, out: Path, **env: str) -> str:
    bindir = Path(sys.executable).parent
    e = {
        **os.environ,
        "EDGERT": str(bindir / "edgert"),
        "PYTHON": sys.executable,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        **env,
    }
    r = subprocess.run(
        ["bash", str(EXAMPLES / name), str(out)],
        capture_output=True, text=True, env=e, timeout=1800, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def test_every_example_has_a_test():
    here = Path(__file__).read_text()
    for script in EXAMPLES.glob("*.sh"):
        assert f'"{script.name}"' in here, script.name


def test_compile_and_generate(tmp_path):
    log = run_example("compile_and_generate.sh", tmp_path)
    assert "The three primary colors are" in log and "predicted" in log
    res = json.loads((tmp_path / "budget.json").read_text())
    assert len(res["tokens"]) == 24 and res["text"]
    assert res["dram"]["budget"] == 80_000_000 and res["dram"]["planned"] <= 80_000_000
    assert res["dram"]["streamed"]  # layers stream from flash within 80 MB


def test_moe_under_dram_budget(tmp_path):
    log = run_example("moe_under_dram_budget.sh", tmp_path)
    res = json.loads((tmp_path / "moe-run.json").read_text())
    assert len(res["tokens"]) == 32
    d, s = res["dram"], res["stream"]
    assert d["streams"] and d["slots"] < d["n_experts"] and d["planned"] <= 6_000_000
    assert s["lookups"] > 0 and 0 < s["hit_rate"] < 1 and s["read_bytes"] > 0
    assert "predicted on host" in log  # bench: measured beside the cost model


def test_onnx(tmp_path):
    run_example("onnx.sh", tmp_path)
    assert np.load(tmp_path / "y.npy").shape[0] == 1
    so = tmp_path / "convnet-rpi5.edgert" / "lib" / "model.so"
    assert "ARM aarch64" in subprocess.run(["file", str(so)], capture_output=True,
                                           text=True).stdout  # fmt: skip


@pytest.mark.device
def test_deploy_to_emulated_device(tmp_path):
    """On a small random-weight model (MODEL=) so the emulated run stays short."""
    from make_synthetic_gguf import make_synthetic_gguf

    model = make_synthetic_gguf(out=tmp_path / "tiny.gguf", arch="llama", qtype="F32",
                                progress=False)  # fmt: skip
    run_example("deploy_to_emulated_device.sh", tmp_path, MODEL=str(model))
    res = json.loads((tmp_path / "device-run.json").read_text())
    assert len(res["tokens"]) == 8
    html = (tmp_path / "profile.html").read_text()
    assert "<svg" in html and "model-rpi5.edgert" in html
