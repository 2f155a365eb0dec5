"""An artifact needs more of a CPU than its architecture: an Armv8.2-A+dotprod build (rpi5,
android-arm64) dies of SIGILL on an Armv8.0 core (rpi4). Deploy and load compare the CPU
features the artifact's target needs (recorded in its manifest) with the CPU's, and refuse with
one line naming the missing ones and the target. (A host artifact compiled and loaded here:
tests/compiler/test_hardening_run.py.)"""

import numpy as np
import pytest

from edgert.errors import EdgertError
from edgert.format.artifact import Artifact, ArtifactWriter
from edgert.format.target import flag_features, load_target
from edgert.runtime import cpu

RPI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
RPI4_FEATURES = ["fp", "asimd", "evtstrm", "crc32", "cpuid"]
RPI5_FEATURES = ["fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics",
                 "fphp", "asimdhp", "cpuid", "asimdrdm", "lrcpc", "dcpop", "asimddp"]  # fmt: skip
#: /proc/cpuinfo of an arm64 process under qemu-user 7.2: the x86 host's
QEMU_CPUINFO = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f\n"


def artifact(path, name: str, *, record: bool = True):
    """A minimal artifact for target ``name`` (its manifest's target entry as the compiler writes
    it; ``record=False``: as written before the features were recorded)."""
    with ArtifactWriter(path) as w:
        w.add_tensor("a", {"data": np.zeros(4, np.float32)})
        entry = load_target(name).manifest_entry()
        if not record:
            entry.pop("cpu_features", None)
        w.manifest["target"] = entry
    return path


class FakeDevice:
    """Answers device.info with ``features`` and takes uploads."""

    def __init__(self, features, machine="aarch64"):
        self.url = "ssh://pi@fake"
        self.info = {"machine": machine, "cpu_features": features}
        self.calls = []

    def call(self, action, args=None, payload=b""):
        self.calls.append(action)
        if action == "device.info":
            return {"info": self.info}, b""
        if action == "file.stat":
            return {"exists": False, "size": 0, "crc32": 0}, b""
        return {}, b""


def test_cpuinfo_and_hwcaps():
    assert cpu.cpu_features(cpuinfo=RPI4_CPUINFO, machine="aarch64") == RPI4_FEATURES
    assert cpu.parse_cpuinfo(RPI4_CPUINFO)[0] == "0xd08"
    # qemu-user shows the host's x86 flags: not an arm64 feature list
    assert cpu.cpu_features(cpuinfo=QEMU_CPUINFO, machine="aarch64") == []
    assert cpu.cpu_features(cpuinfo=QEMU_CPUINFO, machine="x86_64")[-1] == "avx512f"
    # AT_HWCAP of qemu-user's default arm64 CPU (no evtstrm), and AT_HWCAP2's i8mm bit
    caps = cpu.decode_hwcaps(0xECFFFFFB, 1 << 13)
    assert {"fp", "asimd", "atomics", "asimddp", "i8mm"} <= set(caps) and "evtstrm" not in caps
    assert cpu.decode_hwcaps(0b10000011) == ["fp", "asimd", "crc32"]


def test_targets_record_what_their_flags_enable():
    from edgert.format.target import flag_features

    assert load_target("rpi4").required_features() == ["asimd", "fp"]
    rpi5 = load_target("rpi5").manifest_entry()["cpu_features"]
    assert {"asimddp", "atomics"} <= set(rpi5) and "i8mm" not in rpi5
    # a phone's library is built for Armv8.0-A and picks its int8 kernels at load
    assert load_target("android-arm64").required_features() == ["asimd", "fp"]
    # a host artifact's kernels also take the building machine's SIMD flags: recorded too
    host = load_target("host").manifest_entry(["-mavx512f", "-mavx512vnni"])["cpu_features"]
    assert {"avx2", "fma", "f16c", "avx512f", "avx512_vnni"} <= set(host)
    assert flag_features("aarch64", ["-march=armv8.2-a+dotprod+nofp16"]) >= {"asimddp"}
    with pytest.raises(EdgertError, match="-mcpu=cortex-a76"):
        flag_features("aarch64", ["-mcpu=cortex-a76"])


def test_deploy_refuses_an_rpi5_artifact_on_an_rpi4(tmp_path):
    from edgert.device.deploy import deploy

    art = artifact(tmp_path / "smol-rpi5.edgert", "rpi5")
    dev = FakeDevice(RPI4_FEATURES)
    with pytest.raises(EdgertError) as e:
        deploy(art, dev, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "smol-rpi5.edgert" in msg and "target rpi5" in msg
    assert "asimddp (dot product)" in msg and "atomics" in msg and "ssh://pi@fake" in msg
    assert "crc32" not in msg.split("lacks")[0]  # the Pi 4 has it
    assert "--target rpi4" in msg
    assert dev.calls == ["device.info"]  # nothing was sent
    # an artifact compiled before the features were recorded: its target file says
    old = artifact(tmp_path / "old-rpi5.edgert", "rpi5", record=False)
    with pytest.raises(EdgertError, match="asimddp"):
        deploy(old, FakeDevice(RPI4_FEATURES), progress=False)


def test_deploy_accepts_what_the_device_runs(tmp_path):
    from edgert.device.deploy import deploy

    for name, features in [("rpi4", RPI4_FEATURES), ("rpi5", RPI5_FEATURES)]:
        dev = FakeDevice(features)
        deploy(artifact(tmp_path / f"{name}.edgert", name), dev, progress=False)
        assert dev.calls[-1] == "file.commit"
    # a device that cannot say (an older agent, or qemu's x86 flags): only the architecture
    dev = FakeDevice(["fpu", "sse2", "avx2"])
    deploy(artifact(tmp_path / "any.edgert", "android-arm64"), dev, progress=False)
    assert dev.calls[-1] == "file.commit"


def test_load_refuses_before_the_library_is_loaded(tmp_path, monkeypatch, capsys):
    """On an rpi4 (faked: arm64, its /proc/cpuinfo), opening an rpi5 artifact fails with one
    line before any of its code runs."""
    import platform

    from edgert.cli import main
    from edgert.runtime.open import open_artifact_engine
    from edgert.settings import THREAD_VARS

    for var in THREAD_VARS:  # `edgert run` sizes the thread pools through the environment
        monkeypatch.setenv(var, "1")
    art = artifact(tmp_path / "smol-rpi5.edgert", "rpi5")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(cpu, "hwcap_features", lambda: None)
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: RPI4_CPUINFO)
    with pytest.raises(EdgertError, match=r"target rpi5\) needs the CPU features .*asimddp.*"
                       r"which this machine lacks"):  # fmt: skip
        open_artifact_engine(art)
    assert main(["run", str(art), "-p", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "asimddp" in err[0] and "rpi5" in err[0]
    from edgert.format.target import check_cpu_features

    assert check_cpu_features(Artifact.open(art).target, RPI5_FEATURES, what="x", where="y") is None


def test_tvm_code_needs_what_its_mcpu_enables():
    """An ONNX artifact's code comes from LLVM for the TVM target's mcpu, which enables more
    than the kernels' -march (rpi5: half-precision and RCpc loads; a Cortex-A715: SVE2); a
    language model's library is the C kernels alone."""
    rpi5 = load_target("rpi5")
    assert {"fphp", "asimdhp", "lrcpc"} <= set(rpi5.manifest_entry(tvm=True)["cpu_features"])
    assert "lrcpc" not in rpi5.manifest_entry()["cpu_features"]
    assert "sve2" in flag_features("aarch64", [], mcpu="cortex-a715")
    with pytest.raises(EdgertError, match="mcpu cortex-x9"):
        flag_features("aarch64", [], mcpu="cortex-x9")
