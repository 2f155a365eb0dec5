"""Flags that were silently ignored are used or refused; what a command promises it prints; a
device's strings cannot inject into a report. (Artifact-level runs: tests/compiler/
test_hardening_run.py.)"""

import hashlib
import io
import json
import time
from typing import ClassVar

import numpy as np
import pytest
from conftest import run_cli
from test_cli_errors import assert_one_line_error

from edgert.cli import main
from edgert.device.client import Device
from edgert.format.artifact import ArtifactWriter
from edgert.settings import THREAD_VARS


@pytest.fixture
def env(monkeypatch):
    """In-process commands size thread pools through the environment: restored after."""
    for var in THREAD_VARS:
        monkeypatch.setenv(var, "1")
    return monkeypatch


def tiny_artifact(path, kind=None):
    with ArtifactWriter(path) as w:
        w.add_tensor("a", {"data": np.zeros(4, np.float32)})
        w.manifest["target"] = {"name": "host", "arch": "x86_64"}
        if kind:
            w.manifest["kind"] = kind
            w.manifest["graph"] = {"inputs": [{"name": "x", "shape": [2], "dtype": "float32"}]}
    return path


class FakeDevice(Device):
    """Stands in for a Device (its own load, generate and infer): records each request,
    answers as an agent where the artifact is deployed; ``profile`` is what run.profile
    returns."""

    requests: ClassVar[list] = []
    profile: ClassVar[dict] = {}

    def __init__(self, url, **kw):
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def call(self, action, args=None, payload=b"", *, on_event=None):
        FakeDevice.requests.append((action, dict(args or {})))
        if action == "artifact.list":
            return {"artifacts": [{"name": "m.edgert"}, {"name": "o.edgert"}]}, b""
        if action == "run.generate":
            on_event and on_event({"text": " ok"})
            return {"result": {"prompt_tokens": 1, "pp_tok_s": 1.0, "tokens": [5],
                               "tg_tok_s": 1.0}}, b""  # fmt: skip
        if action == "run.infer":
            buf = io.BytesIO()
            np.savez(buf, y=np.ones(2, np.float32))
            return {"run_ms": 1.0}, buf.getvalue()
        if action == "run.profile":
            return {"profile": FakeDevice.profile}, b""
        return {}, b""


@pytest.fixture
def fake_device(monkeypatch):
    from edgert.device import client

    monkeypatch.setattr(client, "Device", FakeDevice)
    FakeDevice.requests = []
    return FakeDevice


# -- edgert run --device: sampling flags and -t reach the device ---------------------------------
def test_run_on_device_sends_sampling_and_threads(tmp_path, env, fake_device, capsys):
    art = tiny_artifact(tmp_path / "m.edgert")
    argv = ["run", str(art), "--device", "local", "-p", "hi", "-n", "7", "--temp", "0.7",
            "--top-k", "5", "--top-p", "0.9", "--seed", "3", "--ignore-eos", "-t", "1"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    ((_, args),) = [r for r in fake_device.requests if r[0] == "run.generate"]
    assert args == {
        "name": "m.edgert",
        "prompt": "hi",
        "n_predict": 7,
        "temp": 0.7,
        "top_k": 5,
        "top_p": 0.9,
        "seed": 3,
        "ignore_eos": True,
        "threads": 1,
    }
    # without flags: greedy, as a local `edgert run`, and the device's own cores
    fake_device.requests = []
    assert main(["run", str(art), "--device", "local", "-p", "hi"]) == 0
    ((_, args),) = [r for r in fake_device.requests if r[0] == "run.generate"]
    assert args["temp"] == 0.0 and "threads" not in args and "seed" not in args


def test_run_refuses_sampling_where_it_does_not_apply(tmp_path, env, fake_device, capsys):
    art = tiny_artifact(tmp_path / "m.edgert")
    assert main(["run", str(art), "--device", "local", "-p", "hi", "--top-p", "1.5"]) == 2
    assert "--top-p 1.5" in capsys.readouterr().err
    assert fake_device.requests == []  # refused before the device was asked anything
    onnx = tiny_artifact(tmp_path / "o.edgert", kind="onnx")
    np.save(tmp_path / "x.npy", np.zeros(2, np.float32))
    assert main(["run", str(onnx), "--input", str(tmp_path / "x.npy"), "--temp", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--temp" in err[0] and "ONNX" in err[0]
    assert main(["run", str(onnx), "--device", "local", "--input", str(tmp_path / "x.npy"),
                 "-t", "2"]) == 0  # fmt: skip
    assert ("run.infer", {"name": "o.edgert", "threads": 2}) in fake_device.requests


def test_agent_takes_sampling_and_threads(tmp_path, monkeypatch):
    """The agent samples as the request says and runs its forward passes on the request's
    threads, for that request only: the next one without -t gets the device's default again."""
    import os

    from test_protocol import read_all, replies

    from edgert.device.agent import Agent
    from edgert.device.protocol import Code, encode
    from edgert.runtime.generate import Sampler
    from edgert.settings import run_threads

    for var in THREAD_VARS:
        monkeypatch.setenv(var, "8")
    vocab, rng = 50, np.random.default_rng(0)
    table = rng.normal(size=(vocab, vocab)).astype(np.float32)
    seen = []

    class Tok:
        stop_ids: ClassVar[set] = {0}

        def encode(self, text):
            return [1, 2]

        def decode(self, ids):
            return "".join(f"<{i}>" for i in ids)

    class Engine:
        tokenizer = Tok()

        def reset(self):
            pass

        def forward(self, ids, last_only=False):
            seen.append(run_threads())  # what the C forward pass would be given
            return table[ids[-1]]

    args = {"name": "m", "prompt": "x", "n_predict": 6, "temp": 1.5, "top_k": 7,
            "top_p": 0.8, "seed": 11, "ignore_eos": True, "threads": 3}  # fmt: skip
    plain = {k: v for k, v in args.items() if k != "threads"}
    frames = b"".join(
        encode(Code.REQUEST, {"id": i, "action": "run.generate", "args": a})
        for i, a in ((1, args), (2, plain))
    )
    out = io.BytesIO()
    agent = Agent(io.BytesIO(frames), out, root=tmp_path)
    agent.loaded["m"] = Engine()
    agent.serve()
    got = replies(read_all(out.getvalue()))
    smp, want, logits = Sampler(temp=1.5, top_k=7, top_p=0.8, seed=11), [], table[2]
    for _ in range(6):
        want.append(smp(logits))
        logits = table[want[-1]]
    assert got[1].header["result"]["tokens"] == want == got[2].header["result"]["tokens"]
    assert seen == [3] * 6 + [8] * 6  # the prompt, then the 5 tokens fed back, per request
    assert os.environ["EDGERT_THREADS"] == "8" and os.environ["TVM_NUM_THREADS"] == "8"


# -- edgert pull --json: the sha256 it promises ---------------------------------------------------
def test_pull_json_prints_sha256(tmp_path, monkeypatch, capsys):
    from edgert.device import hub

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" * 1000)
    monkeypatch.setattr(hub, "pull", lambda name, force=False: f)
    assert main(["pull", "some-file", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"name": "some-file", "path": str(f),
                   "sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "size": 4000}  # fmt: skip
    d = tmp_path / "hf"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "w.safetensors").write_bytes(b"\0" * 10)
    monkeypatch.setattr(hub, "pull", lambda name, force=False: d)
    assert main(["pull", "hf:org/x", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    sums = {p: hashlib.sha256((d / p).read_bytes()).hexdigest()
            for p in ("config.json", "sub/w.safetensors")}  # fmt: skip
    listing = "".join(f"{sums[p]}  {p}\n" for p in sorted(sums))  # as `sha256sum` prints it
    assert out["sha256"] == hashlib.sha256(listing.encode()).hexdigest() and out["size"] == 12
    assert [(e["path"], e["sha256"]) for e in out["files"]] == sorted(sums.items())


# -- edgert compile: --calib-tokens where nothing would use it ----------------------------------
def test_rtn_refuses_calib_tokens(tmp_path):
    r = run_cli("compile", str(tmp_path / "m.gguf"), "--target", "host", "--bits", "4",
                "--quant-method", "rtn", "--calib-tokens", "2048", "-o", str(tmp_path / "o"))  # fmt: skip
    assert_one_line_error(r, "--calib-tokens", "rtn", "ignored")
    assert not (tmp_path / "o").exists()


# -- edgert profile ------------------------------------------------------------------------------
def test_thermal_is_sampled_during_the_run():
    from edgert.measure.profile import ThermalSampler

    readings = iter(range(10**6))

    def read():
        return {"temperature_c": [40.0 + next(readings)], "cpu_freq_khz": 1_500_000,
                "governor": "ondemand"}  # fmt: skip

    with ThermalSampler(interval=0.01, read=read) as s:
        time.sleep(0.2)
    assert len(s.samples) >= 5  # not only before and after
    assert s.summary()["max_temperature_c"] == s.samples[-1][1]["temperature_c"][0]
    assert s.summary()["min_cpu_freq_khz"] == 1_500_000


def test_weight_cache_hit_rate_over_decode():
    from edgert.measure.profile import weight_cache
    from edgert.plan.stats import ExpertStats, SparseStats

    class Eng:
        expert_cache = neurons = streamer = dram_plan = None
        stream_stats = None

    e = Eng()
    cache, note = weight_cache(e, None, 8)
    assert cache is None and "every weight is resident" in note
    e.expert_cache, e.stream_stats = object(), ExpertStats(lookups=30, hits=10)
    cache, note = weight_cache(e, ExpertStats(lookups=10, hits=0), 8)
    assert note is None and cache == {"kind": "experts", "hit_rate": 0.5, "hits": 10,
                                      "lookups": 20, "tokens": 8}  # fmt: skip
    e.expert_cache, e.neurons = None, object()
    e.stream_stats = SparseStats(decode_calls=9, decode_active=400, decode_hits=300)
    cache, _ = weight_cache(e, SparseStats(decode_calls=1, decode_active=100, decode_hits=0), 8)
    assert cache["kind"] == "neurons" and cache["hit_rate"] == 1.0 and cache["lookups"] == 300


def profile_from_device(**over):
    p = {
        "kind": "llm", "artifact": "m.edgert", "threads": 4, "peak_rss_bytes": 2**20,
        "rss_samples": [[0.0, 2**20], [0.1, 2**20]], "layers": [],
        "bench": {"pp_tok_s": 1.0, "pp_tok_s_std": 0.0, "tg_tok_s": 1.0, "tg_tok_s_std": 0.0,
                  "load_s": 0.1, "ttft_s": 0.1},
        "cache_hit_rate": None, "cache_note": "no weight cache",
        "thermal_samples": [[0.0, [50.0], 1_000_000], [0.5, [61.5], 800_000]],
        "thermal": {"samples": 2, "max_temperature_c": 61.5, "min_cpu_freq_khz": 800_000,
                    "max_cpu_freq_khz": 1_000_000},
        "thermal_after": {"governor": "<b>g</b>"},
        "device_info": {"machine": "<script>alert(1)</script>", "cpu_model": "<i>A76</i>",
                        "cores": "<u>4</u>"},
    }  # fmt: skip
    p.update(over)
    return p


def test_html_escapes_what_the_device_sent():
    from edgert.errors import EdgertError
    from edgert.measure.profile import html_report

    page = html_report({"ssh://pi": profile_from_device(kind="<img src=x>")})
    for raw in ("<script>", "<i>", "<u>", "<b>", "<img"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;u&gt;4&lt;/u&gt;" in page
    assert "temperature up to 61.5 °C" in page and "CPU MHz" in page
    # a profile of the wrong shape is refused naming the device, not a traceback
    for bad in ({"rss_samples": [["x", 1]]}, {"thermal_samples": [[0, ["hot"], 1]]},
                {"layers": [{"no": "layer"}]}):  # fmt: skip
        with pytest.raises(EdgertError, match="device ssh://pi sent a profile"):
            html_report({"ssh://pi": {**profile_from_device(), **bad}})


def test_profile_on_device_must_run_with_the_options(tmp_path, env, fake_device, capsys):
    art = tiny_artifact(tmp_path / "m.edgert")
    asked = {"dram_budget": 300_000_000, "ffn": {"sparsity": 0.5, "window": 0},
             "experts": {"policy": "lru", "predictor": "router", "prefetch": True},
             "kv_cache": "q8"}  # fmt: skip
    FakeDevice.profile = profile_from_device()  # an agent that does not pass them on
    argv = ["profile", str(art), "--device", "local", "--dram-budget", "300M",
            "--sparsity", "0.5", "--kv-cache", "q8", "--json"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "profiled without --dram-budget" in err[0]
    ((_, sent),) = fake_device.requests
    assert {k: sent[k] for k in asked} == asked
    FakeDevice.profile = profile_from_device(options=asked, cache_hit_rate=0.25, cache_note=None)
    assert main(argv) == 0
    p = json.loads(capsys.readouterr().out)["profiles"]["local"]
    assert p["cache_hit_rate"] == 0.25


def test_agent_profiles_with_the_options_it_was_sent(tmp_path, monkeypatch):
    """run.profile on the device passes --dram-budget, the expert cache and --sparsity on to the
    profile (the cache hit rate is that run's)."""
    import edgert.measure.profile as prof
    from edgert.measure import actions

    seen = {}

    def fake_profile(path, **kw):
        seen.update(kw)
        return {"options": {k: kw[k] for k in ("dram_budget", "experts", "ffn", "kv_cache")}}

    monkeypatch.setattr(prof, "profile_artifact", fake_profile)

    class Agent:
        root, loaded = tmp_path, {}

        def deployed(self, name):
            return tmp_path / name

    sent = {"name": "m", "n_prompt": 2, "n_gen": 2, "reps": 1, "dram_budget": 300_000_000,
            "experts": {"policy": "lru"}, "ffn": {"sparsity": 0.5, "window": 0},
            "kv_cache": "q8"}  # fmt: skip
    h, _ = actions._profile(Agent(), 1, sent, b"")
    keys = ("dram_budget", "experts", "ffn", "kv_cache")
    assert h["profile"]["options"] == {k: sent[k] for k in keys}
    assert seen["reps"] == 1
