"""`edgert compile` with calibrated quantizers: the artifact records its method, stored bits per
weight and the quality measured on held-back tokens; error feedback keeps more of the model than
rounding at 2 bits; the quality recorded is the one of the weights the artifact computes with."""

import json

import numpy as np
import pytest
from conftest import compile_synthetic, run_cli
from edgert.compiler.frontends import load_model
from edgert.compiler.quant.quality import measure_quality
from edgert.compiler.quant.scheme import QuantScheme

from edgert.format.artifact import Artifact
from edgert.runtime.weights import reference_model


@pytest.fixture(scope="module")
def two_bit(tmp_path_factory):
    d = tmp_path_factory.mktemp("calibrated")
    scheme = QuantScheme("uniform", 2, 64)
    out = {}
    for m in ("rtn", "imatrix", "gptq"):
        (d / m).mkdir()
        out[m] = compile_synthetic(d / m, "llama", scheme, quant_method=m, calib_tokens=1024)
    return out


def test_manifest_records_method_bits_and_quality(two_bit):
    for method, s in two_bit.items():
        q = Artifact.open(s.out).manifest["quant"]
        assert q["method"] == method == s.method
        assert q["bits_per_weight"] == s.bits_per_weight == 2.5  # 2 + 2 x 16 / 64
        assert q["calib_tokens"] == (0 if method == "rtn" else 1024)
        assert q["quality"]["tokens"] == 511 and 0 <= q["quality"]["top1"] <= 1
        assert q["quality"]["kl"] > 0
        used = q["tensors_by_method"]
        assert used == ({"rtn": 14} if method == "rtn" else {method: 14})


def test_calibration_keeps_more_of_the_model(two_bit):
    kl = {m: Artifact.open(s.out).manifest["quant"]["quality"]["kl"] for m, s in two_bit.items()}
    # random weights give error feedback little to work with (SmolLM2's figures: BENCHMARKS)
    assert kl["gptq"] < kl["imatrix"] < kl["rtn"], kl


def test_recorded_quality_is_the_artifacts(two_bit):
    """Measured again from the artifact's own dequantized weights: the same numbers."""
    s = two_bit["gptq"]
    art = Artifact.open(s.out)
    src = load_model(art.manifest["source"]["path"])
    from edgert.compiler.compile import QUALITY_TOKENS
    from edgert.compiler.transform.calibrate import calibration_tokens

    held = calibration_tokens(src, n_tokens=1024 + QUALITY_TOKENS)[1024:]
    q = measure_quality(src, reference_model(art), held)
    want = art.manifest["quant"]["quality"]
    assert q["kl"] == pytest.approx(want["kl"], rel=1e-6)
    assert q["top1"] == want["top1"]


def test_inspect_and_json_show_stored_bits_and_quality(two_bit):
    out = two_bit["gptq"].out
    r = run_cli("inspect", str(out))
    assert r.returncode == 0, r.stderr
    assert "2.50 bits/weight stored (nominal 2.00)" in r.stdout and "gptq" in r.stdout
    assert "quality    KL" in r.stdout and "top-1 agreement" in r.stdout
    j = json.loads(run_cli("inspect", str(out), "--json").stdout)
    assert j["bits_per_weight"] == 2.5 and j["quality"]["tokens"] == 511


def test_calib_file_is_used(tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"word{i % 97} token{i % 13}." for i in range(3000)))
    s = compile_synthetic(
        tmp_path, "llama", QuantScheme("uniform", 3, 64), calib=str(text), calib_tokens=256
    )
    q = Artifact.open(s.out).manifest["quant"]
    assert q["calib_tokens"] == 256 and q["method"] == "gptq"
    short = tmp_path / "short.txt"
    short.write_text("too short")
    r = run_cli(
        "compile", str(tmp_path / "llama.gguf"), "--target", "host", "--calib", str(short),
        "-o", str(tmp_path / "x.edgert"),
    )  # fmt: skip
    assert r.returncode != 0 and "calibration needs" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.edgert").exists()


def test_scheme_heavier_than_a_wider_one_is_refused(tmp_path):
    r = run_cli(
        "compile", "nonexistent.gguf", "--target", "host", "--format", "hlq", "--bits", "3",
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "as much as uniform 4-bit" in r.stderr and "--group-size 64" in r.stderr
    assert "Traceback" not in r.stderr
    assert np.isclose(QuantScheme("hlq", 2, 32).bpw, 3.5)


def test_budget_allocates_per_projection_and_reuses_its_fits(tmp_path):
    """Dense layers: each projection its own width within the stored-bits budget; the fits made
    while measuring sensitivity are the ones written (3 widths x 14 projections, no refit); the
    runtime computes what the reference does on the artifact's weights."""
    from conftest import greedy_divergence, greedy_tokens

    from edgert.runtime.open import open_artifact_engine
    from edgert.runtime.reference import ReferenceEngine

    s = compile_synthetic(
        tmp_path, "llama", QuantScheme("uniform", 4, 64), bits_budget=3.0, calib_tokens=512
    )
    assert s.bits_per_weight <= 3.0 + 1e-9
    art = Artifact.open(s.out)
    assert sum(art.manifest["quant"]["tensors_by_method"].values()) == 3 * 14
    per_tensor = {n: e["bits"] for n, e in art.tensors.items() if e["format"] == "uniform"}
    assert len(set(per_tensor.values())) > 1
    assert set(s.bits_per_unit) == set(per_tensor)
    assert all(s.bits_per_unit[n] == b for n, b in per_tensor.items())
    variants = art.manifest["plan"]["layer_variants"]
    assert any("-" in v for v in variants), variants
    eng = open_artifact_engine(s.out, max_ctx=48)
    ref = ReferenceEngine(reference_model(art), max_ctx=48)
    prompts = ["one two three", "the cat sat on"]
    ties = sum(
        greedy_divergence(ref, ref.tokenizer, p, g, w)
        for p, g, w in zip(
            prompts, greedy_tokens(eng, prompts, 12), greedy_tokens(ref, prompts, 12)
        )
    )
    assert ties <= 1
