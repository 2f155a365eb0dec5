"""On a compiled artifact: the CPU features it needs are recorded and this machine has them; a run
on a device samples as asked; profile reports the weight cache's hit rate and temperatures over
the run; inspect says why it has no prediction and lets a failing one fail."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import compile_synthetic, run_cli
from edgert.compiler.quant.scheme import QuantScheme

from edgert.errors import EdgertError
from edgert.runtime.cpu import host_flags


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A small dense model with neuron bundles (a window cache under --sparsity)."""
    d = tmp_path_factory.mktemp("hardening")
    return Path(compile_synthetic(d, "llama", QuantScheme("uniform", 4, 32), sparse_ffn=True).out)


def test_host_artifact_records_its_features_and_loads_here(art):
    from edgert.runtime.cpu import cpu_features
    from edgert.runtime.open import open_artifact_engine

    need = json.loads((art / "manifest.json").read_text())["target"]["cpu_features"]
    assert {"avx2", "fma"} <= set(need) <= set(cpu_features())
    # the AVX-512 flags this machine gave the kernels are recorded with them
    assert ("avx512_vnni" in need) == ("-mavx512vnni" in host_flags())
    eng = open_artifact_engine(art, max_ctx=16)
    assert eng.forward([1, 2, 3], last_only=True).shape == (eng.cfg.vocab_size,)
    # a context past the model's (an agent's artifact.load takes one from the wire) is refused
    # before a KV cache is sized by it
    with pytest.raises(EdgertError, match=f"this model's context is {eng.cfg.context_length}"):
        open_artifact_engine(art, max_ctx=eng.cfg.context_length + 1)


def test_run_on_device_samples_as_asked(art, tmp_path):
    dev = f"local://{tmp_path / 'dev'}"
    r = run_cli("deploy", str(art), dev)
    assert r.returncode == 0, r.stderr
    sampled = ["-p", "one two", "-n", "12", "--temp", "1.5", "--top-k", "0", "--top-p", "1",
               "--seed", "5", "--ignore-eos", "--json"]  # fmt: skip

    def tokens(*args):
        r = run_cli("run", str(art), *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["tokens"]

    here = tokens(*sampled)
    assert len(here) == 12
    assert tokens(*sampled, "--device", dev, "-t", "1") == here
    assert tokens("-p", "one two", "-n", "12", "--ignore-eos", "--json", "--device", dev) != here


def test_profile_reports_the_cache_hit_rate_and_temperature(art):
    def profile(*args):
        r = run_cli("profile", str(art), "-p", "8", "-n", "8", "-r", "1", "--json", *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["profiles"]["local"]

    p = profile("--sparsity", "0.5", "--kv-cache", "f16")
    assert p["options"]["kv_cache"] == "f16"
    c = p["cache"]
    assert c["kind"] == "neurons" and c["tokens"] == 8 and c["lookups"] > 0
    assert p["cache_hit_rate"] == c["hits"] / c["lookups"] and 0 <= c["hits"] <= c["lookups"]
    assert p["options"]["ffn"] == {"sparsity": 0.5, "window": 0}
    assert len(p["thermal_samples"]) >= 2 and p["thermal"]["samples"] >= 2
    p = profile()
    assert p["cache"] is None and p["cache_hit_rate"] is None
    assert "every weight is resident" in p["cache_note"]


def test_inspect_lets_a_failing_prediction_fail(art, tmp_path, monkeypatch):
    import dataclasses

    from edgert.errors import EdgertError
    from edgert.format import target
    from edgert.measure.inspect import inspect_artifact

    assert inspect_artifact(art)["prediction"]["roofline_tok_s"] > 0
    real = target.parse_target

    def bad_figures(path):  # a bug: a figure of the wrong type reaches the prediction
        return dataclasses.replace(real(path), dram_bandwidth_gbs="fast")

    monkeypatch.setattr(target, "parse_target", bad_figures)
    with pytest.raises(TypeError):
        inspect_artifact(art)
    monkeypatch.undo()
    # a broken target file is the user's to fix, not a reason to drop the prediction quietly
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "host.toml").write_text('name = "host"\n')
    monkeypatch.setenv("EDGERT_TARGETS", str(tmp_path / "targets"))
    with pytest.raises(EdgertError, match="host.toml: missing key"):
        inspect_artifact(art)
    monkeypatch.delenv("EDGERT_TARGETS")
    # a target not defined here: no prediction, and inspect says why
    other = tmp_path / "other.edgert"
    shutil.copytree(art, other)
    m = json.loads((other / "manifest.json").read_text())
    m["target"]["name"] = "my-board"
    (other / "manifest.json").write_text(json.dumps(m))
    info = inspect_artifact(other)
    assert info["prediction"] is None and "my-board is not defined" in info["no_prediction"]
    r = run_cli("inspect", str(other))
    assert r.returncode == 0, r.stderr
    assert "predicted  none: target my-board is not defined on this machine" in r.stdout
