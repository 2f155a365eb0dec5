"""What the device side loads: `edgert run` on a language-model artifact (dense, dense with layers
streaming under a budget, a mixture with its experts streaming) imports neither the compiler nor
TVM — an import hook fails the run if anything tries; an ONNX artifact runs on TVM's runtime
library without its compiler library."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import compile_synthetic
from edgert.compiler.onnx.compile import compile_onnx
from edgert.compiler.quant.scheme import QuantScheme
from make_onnx_models import mlp

from edgert.format.artifact import Artifact
from edgert.runtime.open import dense_plan, moe_plan

#: run `edgert ARGS` with every import of the compiler or TVM failing; then report what the
#: process loaded
HOOK = r"""
import json, sys
from importlib.abc import MetaPathFinder

class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tvm" or name.startswith(("tvm.", "edgert.compiler")):
            raise ImportError(f"the device side imported {name}")
        return None

if sys.argv[1] == "refuse":
    sys.meta_path.insert(0, Refuse())
from edgert.cli import main
rc = main(sys.argv[2:])
maps = open("/proc/self/maps").read()
print(json.dumps({"rc": rc, "modules": sorted(m for m in sys.modules
                                              if m.split(".")[0] in ("tvm", "edgert")),
                  "libs": sorted({l.split("/")[-1] for l in maps.splitlines() if "libtvm" in l})}))
"""


def run(mode: str, *args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", HOOK, mode, *args],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    d = tmp_path_factory.mktemp("imports")
    onnx.save(mlp(), d / "mlp.onnx")
    dnn = compile_onnx(model=d / "mlp.onnx", target="host", out=d / "mlp.edgert",
                       input_shapes={"x": (2, 64)}).out  # fmt: skip
    np.save(d / "x.npy", np.ones((2, 64), np.float32))
    dense = compile_synthetic(d, "llama", QuantScheme("uniform", 4, 32)).out
    moe = compile_synthetic(d, "mixtral", QuantScheme("uniform", 2, 32)).out
    return {"dense": dense, "moe": moe, "onnx": dnn, "x": d / "x.npy"}


def budget_args(arts, kind: str) -> list[str]:
    """--dram-budget at the minimum: every layer (every expert but two layers') streams."""
    a = Artifact.open(arts[kind])
    plan = dense_plan if kind == "dense" else moe_plan
    p = plan(a, a.config(), max_ctx=64, budget=None)
    return ["--dram-budget", str(p.minimum), "--ctx", "64"]


@pytest.mark.parametrize("case", ["dense", "dense-streaming", "moe-streaming"])
def test_language_model_run_imports_neither_compiler_nor_tvm(arts, case):
    kind = case.split("-")[0]
    extra = budget_args(arts, kind) if case.endswith("streaming") else []
    out = run("refuse", "run", str(arts[kind]), "-p", "the cat sat", "-n", "8", "--json", *extra)
    assert out["rc"] == 0
    assert not [m for m in out["modules"] if m.startswith(("tvm", "edgert.compiler"))]
    assert out["libs"] == []
    assert "edgert.runtime.engine" in out["modules"]  # the run did go through the executor


def test_the_hook_catches_an_import(arts):
    """The same hook on a command that needs the compiler: the import fails, so does the run."""
    r = subprocess.run(
        [sys.executable, "-c", HOOK, "refuse", "compile", str(arts["x"]), "--target", "host",
         "-o", str(arts["x"].parent / "never.edgert")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode != 0 and "the device side imported" in r.stderr + r.stdout


def test_onnx_run_loads_the_tvm_runtime_library_only(arts):
    out = run("allow", "run", str(arts["onnx"]), "--input", str(arts["x"]), "--json")
    assert out["rc"] == 0
    assert any(lib.startswith("libtvm_runtime") for lib in out["libs"])
    assert not any("compiler" in lib for lib in out["libs"]), out["libs"]
    assert "tvm.relax" not in out["modules"]
