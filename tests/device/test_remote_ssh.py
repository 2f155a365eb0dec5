"""Deploy and run over SSH against the emulated arm64 device (`edgert emulator up`: a real arm64
sshd under qemu-user on a loopback port): the same greedy tokens as the host reference on the same
weights; unknown host keys refused; remote arguments passed literally; an interrupted deploy
leaves the previous version running and the rerun completes."""

import json
import os

import pytest
from conftest import compile_synthetic, need_root_and_cgroup_v1, reference_tokens, run_cli
from edgert.compiler.quant.scheme import QuantScheme

from edgert.device.client import Device
from edgert.device.deploy import deploy
from edgert.device.transport_ssh import SSHTransport
from edgert.emulation import arm64 as emulator
from edgert.errors import EdgertError

pytestmark = pytest.mark.device
PROMPTS = ["the cat sat on", "a b c d e"]


@pytest.fixture(scope="module")
def device(emulated_device):
    return emulated_device


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    da, db = tmp_path_factory.mktemp("ssh-a"), tmp_path_factory.mktemp("ssh-b")
    # 4 layers: under the minimum budget some of them stream
    a = compile_synthetic(da, "llama", QuantScheme("uniform", 4, 32), target="rpi5", layers=4).out
    b = compile_synthetic(db, "llama", QuantScheme("uniform", 2, 32), target="rpi5").out
    return a, b


def test_deploy_and_run_over_ssh(device, arts):
    url, env = device
    r = run_cli("deploy", str(arts[0]), url, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runtime"] in ("installed", "present")
    for p in PROMPTS:
        r = run_cli("run", str(arts[0]), "--device", url, "-p", p, "-n", "16", "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["tokens"] == reference_tokens(arts[0], p)
    with Device(url) as dev:
        info = dev.call("device.info")[0]["info"]
        assert info["machine"] == "aarch64"
    # within a DRAM budget on the device: layers stream from its flash, same tokens
    from edgert.format.artifact import Artifact
    from edgert.plan.dram import plan_dram
    from edgert.plan.sizes import BUDGET_BATCH

    a = Artifact.open(arts[0])
    lo = plan_dram(a, a.config(), max_ctx=64, budget=None, n_batch=BUDGET_BATCH).minimum
    p = PROMPTS[0]
    r = run_cli("run", str(arts[0]), "--device", url, "-p", p, "-n", "16", "--ctx", "64",
                "--dram-budget", str(lo), "--json", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokens"] == reference_tokens(arts[0], p)
    assert out["dram"]["budget"] == lo and out["dram"]["streamed"]
    assert out["dram"]["planned"] <= lo and out["stream"]["flash_bytes"] > 0
    # a float32 cache asked for: refused below its plan's minimum (unasked, f16 would run)
    r = run_cli("run", str(arts[0]), "--device", url, "-p", p, "-n", "4", "--ctx", "64",
                "--dram-budget", str(lo - 1), "--kv-cache", "f32", env=env)  # fmt: skip
    assert r.returncode == 2 and "below the minimum" in r.stderr and "Traceback" not in r.stderr


def test_sparse_ffn_on_the_device(device, tmp_path_factory):
    """--sparsity on the device: bundles read from its flash (NEON bundle kernel) into a window
    cache that fits the budget, the activity trace replayed by its planner; the cache's size
    never changes the tokens."""
    from edgert.format.artifact import Artifact
    from edgert.plan.sparse import plan_sparse

    url, env = device
    d = tmp_path_factory.mktemp("ssh-sparse")
    scheme = QuantScheme("uniform", 4, 32)
    art = compile_synthetic(d, "llama", scheme, target="rpi5", layers=4, sparse_ffn=True).out
    r = run_cli("deploy", str(art), url, "--json", env=env)
    assert r.returncode == 0, r.stderr
    a = Artifact.open(art)
    lo = plan_sparse(a, a.config(), max_ctx=64, budget=1 << 40, sparsity=0.5).minimum
    outs = []
    for budget in ([], ["--dram-budget", str(lo)]):
        r = run_cli("run", str(art), "--device", url, "-p", PROMPTS[0], "-n", "12", "--ctx", "64",
                    "--sparsity", "0.5", *budget, "--json", env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert outs[0]["tokens"] == outs[1]["tokens"] and len(outs[0]["tokens"]) == 12
    plan, stream = outs[1]["dram"], outs[1]["stream"]
    assert plan["budget"] == lo and plan["slots"] == 0 and plan["planned"] <= lo
    assert plan["replayed"]["active_per_token"] > 0 and plan["replayed"]["hit_rate"] == 0
    assert stream["decode_calls"] > 0 and stream["decode_bytes"] > 0 and stream["decode_hits"] == 0


@pytest.mark.parametrize(
    "arch", ["llama3", "qwen2", "qwen3", "qwen3moe", "gemma3", "phi3", "smollm3"]
)
def test_every_architecture_runs_on_the_device(device, tmp_path_factory, arch):
    """`edgert run --device` of each architecture's rpi5 artifact: the host reference's greedy
    tokens on the same weights."""
    url, env = device
    d = tmp_path_factory.mktemp(f"ssh-{arch}")
    layers = {"gemma3": 6, "smollm3": 4}.get(arch, 2)
    art = compile_synthetic(d, arch, QuantScheme("uniform", 4, 32), target="rpi5", layers=layers)
    r = run_cli("deploy", str(art.out), url, "--json", env=env)
    assert r.returncode == 0, r.stderr
    p = PROMPTS[0]
    r = run_cli("run", str(art.out), "--device", url, "-p", p, "-n", "12", "--ctx", "64",
                "--json", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokens"] == reference_tokens(art.out, p, 12)


def test_unknown_host_key_refused(device, arts, tmp_path):
    url, env = device
    r = run_cli("deploy", str(arts[0]), url, env={**env, "HOME": str(tmp_path)})
    assert r.returncode == 2 and "unknown host key" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / ".config" / "edgert" / "known_hosts").exists()


def test_remote_arguments_are_literal(device):
    url, _ = device
    t = SSHTransport(url)
    try:
        args = ["a b", "c'd", 'e"f', "g;h", "$(id)", "`uname`", "i\\j"]
        status, out, _ = t.exec(["printf", "%s\\n", *args])
    finally:
        t.close()
    assert status == 0 and out.splitlines() == args


def test_interrupted_deploy_over_ssh(device, arts):
    url, _ = device
    a, b = arts

    class Flaky:
        def __init__(self, dev, puts):
            self.dev, self.left, self.url = dev, puts, dev.url

        def call(self, action, args=None, payload=b"", **kw):
            if action == "file.put":
                if self.left == 0:
                    self.dev.transport.close()  # the connection dies
                if self.left <= 0:
                    raise OSError("connection lost")
                self.left -= 1
            return self.dev.call(action, args, payload, **kw)

    with Device(url) as dev:
        deploy(a, dev, name="model", progress=False)
    with Device(url) as dev, pytest.raises((OSError, EdgertError)):
        deploy(b, Flaky(dev, 3), name="model", chunk=8192, progress=False)
    with Device(url) as dev:
        dev.call("artifact.load", {"name": "model"})
        got = dev.call("run.generate", {"name": "model", "prompt": PROMPTS[0], "n_predict": 16})
        assert got[0]["result"]["tokens"] == reference_tokens(a, PROMPTS[0])  # version a still runs
        r = deploy(b, dev, name="model", chunk=8192, progress=False)
        assert r.resumed_bytes >= 3 * 8192
        dev.call("artifact.load", {"name": "model"})
        got = dev.call("run.generate", {"name": "model", "prompt": PROMPTS[0], "n_predict": 16})
        assert got[0]["result"]["tokens"] == reference_tokens(b, PROMPTS[0])


def test_profile_over_ssh(device, arts, tmp_path):
    url, env = device
    report = tmp_path / "pi.html"
    r = run_cli("profile", str(arts[0]), "--device", url, "-p", "8", "-n", "4", "-r", "1",
                "--html", str(report), "--json", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)["profiles"][url]
    assert p["device_info"]["machine"] == "aarch64"
    assert p["bench"]["tg_tok_s"] > 0 and len(p["layers"]) == 4 + 1  # the layers and the head
    assert report.read_text().count("<svg") >= 2


def test_emulator_status(device):
    st = emulator.status()
    assert st["running"] and st["url"] == device[0]
    assert os.path.exists(st["key"])
    need_root_and_cgroup_v1("memory")  # without it the emulator runs with no DRAM limit
    assert st["dram_limit_bytes"] == 8 * 2**30  # rpi5's DRAM (targets/rpi5.toml)
