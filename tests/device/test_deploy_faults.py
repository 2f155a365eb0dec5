"""An agent killed (SIGKILL, as a crash or power cut would) in the middle of a deploy: halfway
through writing a chunk, after the commit verified the upload, in the middle of the commit (the
new version in place, the link not yet switched) and just after the switch. Afterwards the
device runs a complete version -- the previous one, or the new one when the switch happened --
the next agent tidies what the killed one left, and the next deploy completes (resuming from the
staged files where they survived).

The kill comes from the agent's test hook, ``EDGERT_AGENT_FAULT=POINT[@N]`` (edgert.device.agent
FAULT_ENV). Over the local transport the agent is a child process of this machine; over SSH it
runs on the emulated arm64 device (`edgert emulator up`, root), where these tests are marked
``device``. Timing, measured on 2 shared cores: local, 50 s for the two artifacts (compiled and
run here) and 2-5 s per test, 70 s in all; over SSH, 50 s to start the emulator and compile for
rpi5, 13-19 s per test (agents under qemu-user), 2 minutes in all."""

import shlex
from pathlib import Path

import pytest
from conftest import compile_synthetic, reference_tokens
from edgert.compiler.quant.scheme import QuantScheme

from edgert.device.agent import FAULT_ENV
from edgert.device.client import Device, DeviceError
from edgert.device.deploy import deploy
from edgert.device.transport_ssh import SSHTransport
from edgert.emulation import arm64 as emulator

PROMPT = "the cat sat on"
N = 8
CHUNK = 16 << 10

#: where the agent dies, and which version runs afterwards: the switch of the artifacts/ link is
#: the commit's one step that changes what runs
POINTS = [
    ("put:mid_write@3", "a"),
    ("commit:before_rename", "a"),
    ("commit:before_switch", "a"),  # the new version in versions/, the link made, not switched
    ("commit:after_switch", "b"),  # switched; the previous version not yet removed
]


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    da, db = tmp_path_factory.mktemp("fault-a"), tmp_path_factory.mktemp("fault-b")
    a = compile_synthetic(da, "llama", QuantScheme("uniform", 4, 32), layers=2).out
    b = compile_synthetic(db, "llama", QuantScheme("uniform", 2, 32), layers=2).out
    return {"a": a, "b": b}


@pytest.fixture(scope="module")
def want(arts):
    """Each version's greedy tokens, run here."""
    from edgert.runtime.generate import Sampler, generate
    from edgert.runtime.open import open_artifact_engine

    out = {}
    for k, p in arts.items():
        eng = open_artifact_engine(p)
        out[k] = generate(eng, prompt=PROMPT, n_predict=N, sampler=Sampler(temp=0)).tokens
    assert out["a"] != out["b"]  # the tests tell the versions apart by their tokens
    return out


def device_tokens(url: str) -> list[int]:
    with Device(url) as dev:
        dev.call("artifact.load", {"name": "model"})
        hdr, _ = dev.call("run.generate", {"name": "model", "prompt": PROMPT, "n_predict": N})
    return hdr["result"]["tokens"]


def leftovers(root) -> dict:
    """What a tidy root has one of (versions) or none of (links, moved-aside directories)."""
    arts = root / "artifacts"
    return {
        "versions": sorted(p.name for p in (root / "versions").iterdir()),
        "hidden": sorted(p.name for p in arts.iterdir() if p.name.startswith(".")),
        "linked": (arts / "model").resolve().name,
    }


@pytest.mark.parametrize("point,runs", POINTS)
def test_agent_killed_during_deploy(arts, want, tmp_path, monkeypatch, point, runs):
    root = tmp_path / "device"
    url = f"local://{root}"
    with Device(url) as dev:
        deploy(arts["a"], dev, name="model", chunk=CHUNK, progress=False)
    monkeypatch.setenv(FAULT_ENV, point)  # the next agent started kills itself there
    with Device(url) as dev, pytest.raises(DeviceError, match="closed the connection"):
        deploy(arts["b"], dev, name="model", chunk=CHUNK, progress=False)
    monkeypatch.delenv(FAULT_ENV)
    assert device_tokens(url) == want[runs]
    tidy = leftovers(root)  # after an agent started since the kill
    assert tidy["hidden"] == [] and tidy["versions"] == [tidy["linked"]], tidy
    with Device(url) as dev:
        r = deploy(arts["b"], dev, name="model", chunk=CHUNK, progress=False)
    if point.startswith("put:"):  # the chunks before the kill were kept
        assert 0 < r.resumed_bytes < r.bytes_total
    elif point == "commit:before_rename":  # the whole upload was kept: nothing sent again
        assert r.resumed_bytes == r.bytes_total and r.bytes_sent == 0
    assert device_tokens(url) == want["b"]
    tidy = leftovers(root)
    assert tidy["hidden"] == [] and tidy["versions"] == [tidy["linked"]], tidy
    assert not (root / "staging" / "model").exists()


def test_first_deploy_killed_leaves_no_artifact(arts, want, tmp_path, monkeypatch):
    url = f"local://{tmp_path / 'device'}"
    monkeypatch.setenv(FAULT_ENV, "commit:before_switch")
    with Device(url) as dev, pytest.raises(DeviceError, match="closed the connection"):
        deploy(arts["a"], dev, name="model", chunk=CHUNK, progress=False)
    monkeypatch.delenv(FAULT_ENV)
    with Device(url) as dev:
        assert dev.call("artifact.list")[0]["artifacts"] == []
        with pytest.raises(DeviceError, match="no artifact 'model'"):
            dev.call("artifact.load", {"name": "model"})
        deploy(arts["a"], dev, name="model", chunk=CHUNK, progress=False)
    assert device_tokens(url) == want["a"]
    tidy = leftovers(tmp_path / "device")
    assert tidy["hidden"] == [] and tidy["versions"] == [tidy["linked"]], tidy


# -- over SSH, on the emulated arm64 device ----------------------------------------------------
class FaultySSH(SSHTransport):
    """The SSH transport with the fault hook set in the agent's environment on the device."""

    def __init__(self, url: str, point: str):
        super().__init__(url)
        self.point = point

    def open(self):
        self.client = self.connect()
        agent = self.agent_command()
        self.channel = self.client.get_transport().open_session()
        env = f"{FAULT_ENV}={shlex.quote(self.point)}"
        self.channel.exec_command(f"{env} {agent} agent --stdio")
        return self.channel.makefile("rb", -1), self.channel.makefile_stdin("wb", -1)


@pytest.fixture(scope="module")
def arm_arts(tmp_path_factory):
    da, db = tmp_path_factory.mktemp("fault-ssh-a"), tmp_path_factory.mktemp("fault-ssh-b")
    a = compile_synthetic(da, "llama", QuantScheme("uniform", 4, 32), target="rpi5", layers=2)
    b = compile_synthetic(db, "llama", QuantScheme("uniform", 2, 32), target="rpi5", layers=2)
    return {"a": a.out, "b": b.out}


@pytest.mark.device
@pytest.mark.parametrize("point,runs", POINTS)
def test_agent_killed_during_deploy_over_ssh(emulated_device, arm_arts, point, runs):
    url, _ = emulated_device
    want = {k: reference_tokens(p, PROMPT, N) for k, p in arm_arts.items()}
    name = f"faults-{point.split('@')[0].replace(':', '-').replace('_', '-')}"

    def tokens() -> list[int]:
        with Device(url) as dev:
            dev.call("artifact.load", {"name": name})
            hdr, _ = dev.call("run.generate", {"name": name, "prompt": PROMPT, "n_predict": N})
        return hdr["result"]["tokens"]

    with Device(url) as dev:
        deploy(arm_arts["a"], dev, name=name, chunk=CHUNK, progress=False)
    with Device(url, transport=FaultySSH(url, point)) as dev, pytest.raises(DeviceError):
        deploy(arm_arts["b"], dev, name=name, chunk=CHUNK, progress=False)
    assert tokens() == want[runs]
    # the device's agent root, seen from here (the emulated device's root is a directory)
    droot = Path(emulator.status()["root"]) / "root" / ".edgert"

    def tidy() -> None:
        versions = sorted(p.name for p in (droot / "versions").glob(f"{name}.*"))
        assert versions == [(droot / "artifacts" / name).resolve().name], versions
        assert not (droot / "artifacts" / f".{name}.link").is_symlink()

    tidy()  # the agents started since the kill tidied what it left
    with Device(url) as dev:
        r = deploy(arm_arts["b"], dev, name=name, chunk=CHUNK, progress=False)
    if point.startswith("put:"):
        assert 0 < r.resumed_bytes < r.bytes_total
    assert tokens() == want["b"]
    tidy()
