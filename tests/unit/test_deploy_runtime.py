"""What `edgert deploy` installs on an SSH device: numpy and the tokenizer for a language model,
the TVM runtime only for a compiled ONNX model; an update keeps what the device had; a device
already current is left alone."""

from pathlib import Path

import pytest

from edgert.device import deploy


class FakeSFTP:
    def __init__(self, sent):
        self.sent = sent

    def normalize(self, _):
        return "/home/dev"

    def mkdir(self, _):
        pass

    def stat(self, _):
        raise OSError("absent")

    def put(self, local, remote):
        self.sent.append(Path(local).name)

    def close(self):
        pass


class FakeSSH:
    """An SSH device: records the commands it runs and the files it is sent."""

    def __init__(self, stamp: str = ""):
        self.stamp, self.commands, self.sent = stamp, [], []
        self.name = "ssh://fake"

    def exec(self, argv, timeout=600):
        cmd = " ".join(argv)
        self.commands.append(cmd)
        if "cat ~/.edgert/venv/edgert-source" in cmd:
            return (0, self.stamp, "") if self.stamp else (1, "", "")
        if "platform.machine()" in cmd:
            return 0, "aarch64 3.11\n", ""
        return 0, "", ""

    def connect(self):
        sent = self.sent

        class Client:
            def open_sftp(self):
                return FakeSFTP(sent)

        return Client()


@pytest.fixture
def wheels(monkeypatch, tmp_path):
    """download_wheels without the package index: one file per requirement, and edgert's."""
    asked = []

    def fake(machine, python, dest, *, onnx=False):
        asked.append((dest.name, onnx))
        names = [r.split("=")[0] for r in deploy.runtime_wheels(onnx)] + ["edgert"]
        out = []
        for n in names:
            p = tmp_path / f"{n}-1.0-py3-none-any.whl"
            p.write_bytes(b"w")
            out.append(p)
        return out

    monkeypatch.setattr(deploy, "download_wheels", fake)
    monkeypatch.setattr(deploy, "source_digest", lambda: "abc123")
    return asked


def installs(dev: FakeSSH) -> str:
    return next(c for c in dev.commands if "pip install -q --no-index --find-links" in c)


def test_language_model_device_gets_no_tvm(wheels):
    dev = FakeSSH()
    assert deploy.ensure_runtime(dev, progress=False) == "installed"
    assert "apache-tvm" not in installs(dev) and "numpy" in installs(dev)
    assert not any("tvm" in w for w in dev.sent)
    assert any("echo abc123 >" in c for c in dev.commands)
    folder, onnx = wheels[0]
    assert not onnx and folder.startswith("aarch64-py3.11-")


def test_onnx_device_gets_the_tvm_runtime_and_keeps_it(wheels):
    dev = FakeSSH()
    deploy.ensure_runtime(dev, onnx=True, progress=False)
    assert "apache-tvm==" in installs(dev) and any("apache-tvm" in w for w in dev.sent)
    assert any("echo abc123 onnx >" in c for c in dev.commands)
    deploy.ensure_runtime(FakeSSH(), progress=False)
    (onnx_folder, _), (lm_folder, _) = wheels[0], wheels[-1]
    assert onnx_folder != lm_folder  # a language-model device is never sent the ONNX set
    # already current, with TVM: nothing to do, for either kind of artifact
    for onnx in (False, True):
        assert deploy.ensure_runtime(FakeSSH("abc123 onnx\n"), onnx=onnx) == "present"
    # a language-model device asked for ONNX gets TVM; an update keeps TVM where it was
    assert deploy.ensure_runtime(FakeSSH("abc123\n"), onnx=True) == "installed"
    old = FakeSSH("older onnx\n")
    deploy.ensure_runtime(old, progress=False)
    assert "apache-tvm==" in installs(old)
