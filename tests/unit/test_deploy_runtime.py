"""What `edgert deploy` installs on an SSH device: numpy and the tokenizer for a language model,
the TVM runtime only for a compiled ONNX model; an update keeps what the device had; a device
already current is left alone. An Android device (Termux) is recognised as the agent recognises
it, gets edgert's pure-Python wheel into a venv that uses its own numpy and no manylinux wheel,
and is refused ONNX artifacts and libraries linked against glibc, before anything is sent."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgert.device import deploy
from edgert.device.sysinfo import platform_info
from edgert.errors import EdgertError


class FakeSFTP:
    def __init__(self, sent):
        self.sent = sent

    def get_channel(self):  # deploy sets its timeout
        return self

    def settimeout(self, _):
        pass

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
    """An SSH device: records the commands it runs and the files it is sent. ``platform``,
    ``python`` and ``numpy`` are what its python3 reports to deploy's probe."""

    def __init__(self, stamp: str = "", *, platform="linux", python="3.11", numpy="1.26.4"):
        self.stamp, self.commands, self.sent = stamp, [], []
        self.name = "ssh://fake"
        self.probe = {"platform": platform, "machine": "aarch64", "python": python}
        if platform == "android":
            self.probe.update(android_release="14", android_sdk=34, numpy=numpy)

    def exec(self, argv, timeout=600):
        cmd = " ".join(argv)
        self.commands.append(cmd)
        if "cat ~/.edgert/venv/edgert-source" in cmd:
            return (0, self.stamp, "") if self.stamp else (1, "", "")
        if "def platform_info" in cmd:  # deploy.probe_device's script
            return 0, json.dumps(self.probe) + "\n", ""
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


# -- the device's platform ---------------------------------------------------------------------
def test_platform_is_linux_without_androids_signs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no getprop
    assert platform_info(system=str(tmp_path / "system")) == {"platform": "linux"}


def test_platform_android_from_getprop(tmp_path, monkeypatch):
    """getprop on PATH: android, with the version it answers (build.prop may be unreadable)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    getprop = bin_ / "getprop"
    getprop.write_text('#!/bin/sh\ncase "$1" in ro.build.version.release) echo 13 ;; '
                       'ro.build.version.sdk) echo 33 ;; *) echo ;; esac\n')  # fmt: skip
    getprop.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}/usr/bin{os.pathsep}/bin")
    got = platform_info(system=str(tmp_path / "no-system"))
    assert got == {"platform": "android", "android_release": "13", "android_sdk": 33}


def test_platform_android_from_build_prop(tmp_path, monkeypatch):
    """/system/build.prop alone (getprop not on PATH): android, the version read from it."""
    system = tmp_path / "system"
    system.mkdir()
    (system / "build.prop").write_text(
        "# comment=not a property\nro.build.version.release=14\nro.build.version.sdk=34\n"
    )
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    got = platform_info(system=str(system))
    assert got == {"platform": "android", "android_release": "14", "android_sdk": 34}
    # an unreadable build.prop (Android 10+, to apps) still says android, version unknown
    (system / "build.prop").unlink()
    (system / "build.prop").mkdir()
    assert platform_info(system=str(system))["platform"] == "android"


def test_device_info_reports_the_platform(tmp_path):
    from edgert.device.sysinfo import device_info

    info = device_info(tmp_path)
    assert info["platform"] == ("android" if shutil.which("getprop") else "linux")


def test_probe_runs_on_a_bare_python(tmp_path):
    """The probe deploy sends is self-contained: it runs where edgert is not importable (python
    -I -S: no site-packages), as on a device before its first deploy."""

    class Local:
        name = "local-python"

        def exec(self, argv, timeout=600):
            assert argv[0] == "python3"
            r = subprocess.run([sys.executable, "-I", "-S", *argv[1:]], capture_output=True,
                               text=True, cwd=tmp_path, check=False)  # fmt: skip
            return r.returncode, r.stdout, r.stderr

    got = deploy.probe_device(Local())
    assert got["machine"] == os.uname().machine
    assert got["python"] == "{}.{}".format(*sys.version_info[:2])
    assert got["platform"] == platform_info()["platform"]


# -- installing on an Android device -----------------------------------------------------------
@pytest.fixture
def pure_wheels(monkeypatch, tmp_path):
    """download_android_wheels without the package index: edgert's own wheel, and tomli's where
    the device's Python asks for it."""
    asked = []

    def fake(python, dest):
        asked.append((python, dest.name))
        out = []
        for n in ["edgert", *deploy.android_wheels(python)]:
            p = tmp_path / f"{n}-1.0-py3-none-any.whl"
            p.write_bytes(b"w")
            out.append(p)
        return out

    monkeypatch.setattr(deploy, "download_android_wheels", fake)
    return asked


def test_android_device_gets_no_manylinux_wheel(wheels, pure_wheels):
    dev = FakeSSH(platform="android")
    assert deploy.ensure_runtime(dev, progress=False) == "installed"
    assert wheels == []  # the manylinux set was never even fetched
    assert pure_wheels == [("3.11", "android-py3.11")]
    assert dev.sent == ["edgert-1.0-py3-none-any.whl"]
    cmds = "\n".join(dev.commands)
    for absent in ("tokenizers", "jinja2", "numpy-", "manylinux", "--find-links", "apache-tvm"):
        assert absent not in cmds, absent
    pip = next(c for c in dev.commands if "/bin/pip install" in c)
    assert "--no-index" in pip and "--no-deps" in pip and "edgert-1.0-py3-none-any.whl" in pip
    assert "python3 -m venv --system-site-packages ~/.edgert/venv" in cmds  # Termux's numpy
    assert "import numpy, edgert.device.agent" in cmds  # checked before the stamp is written
    assert dev.commands[-1].endswith("echo abc123 android > ~/.edgert/venv/edgert-source")
    # the same device, already current: nothing to do
    assert deploy.ensure_runtime(FakeSSH("abc123 android\n", platform="android")) == "present"


def test_android_python_without_tomllib_gets_pure_tomli(wheels, pure_wheels):
    dev = FakeSSH(platform="android", python="3.10")
    deploy.ensure_runtime(dev, progress=False)
    assert sorted(dev.sent) == ["edgert-1.0-py3-none-any.whl", "tomli-1.0-py3-none-any.whl"]
    assert deploy.android_wheels("3.12") == [] and deploy.android_wheels("3.10") == ["tomli"]


def test_android_without_numpy_is_told_what_to_install(wheels, pure_wheels):
    dev = FakeSSH(platform="android", numpy=None)
    with pytest.raises(EdgertError, match="pkg install python python-numpy"):
        deploy.ensure_runtime(dev, progress=False)
    assert dev.sent == [] and pure_wheels == []
    assert not any("venv" in c and "cat " not in c for c in dev.commands)


def test_android_refuses_the_onnx_runtime(wheels, pure_wheels):
    dev = FakeSSH(platform="android")
    with pytest.raises(EdgertError) as e:
        deploy.ensure_runtime(dev, onnx=True, progress=False)
    assert "is android: ONNX artifacts need the TVM runtime" in str(e.value)
    assert "\n" not in str(e.value)
    assert dev.sent == [] and wheels == [] and pure_wheels == []


def test_switching_flavour_makes_a_new_venv(wheels, pure_wheels):
    """A runtime installed for the other flavour is replaced: the Linux flavour's venv (glibc
    wheels, no system site-packages) on an Android device, and the reverse; TVM is not carried
    over to Android."""
    to_android = FakeSSH("abc123 onnx\n", platform="android")
    assert deploy.ensure_runtime(to_android, progress=False) == "installed"
    venv = next(c for c in to_android.commands if "pyvenv.cfg" in c)
    assert "include-system-site-packages = true" in venv and "rm -rf ~/.edgert/venv" in venv
    assert to_android.commands[-1].endswith("echo abc123 android > ~/.edgert/venv/edgert-source")
    to_linux = FakeSSH("abc123 android\n")
    assert deploy.ensure_runtime(to_linux, progress=False) == "installed"
    i = next(i for i, c in enumerate(to_linux.commands) if c == "sh -c rm -rf ~/.edgert/venv")
    assert i < next(i for i, c in enumerate(to_linux.commands) if "python3 -m venv" in c)
    assert "apache-tvm" not in installs(to_linux)
    assert to_linux.commands[-1].endswith("echo abc123 > ~/.edgert/venv/edgert-source")
    # a Linux device updated in its own flavour keeps its venv
    same = FakeSSH("older\n")
    deploy.ensure_runtime(same, progress=False)
    assert not any("rm -rf" in c for c in same.commands)


# -- what each platform may be sent --------------------------------------------------------------
def _lib(tmp_path: Path, libc: str) -> Path:
    """A shared library whose DT_NEEDED names ``libc`` (glibc's libc.so.6, or bionic's libc.so,
    linked against a stand-in of that soname), built with this host's compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler")
    d = tmp_path / libc
    d.mkdir()
    (d / "f.c").write_text("int f(int x) { return x + 1; }\n")
    if libc == "libc.so.6":
        cmd = [cc, "-shared", "-fPIC", "-Wl,--no-as-needed", "-o", "model.so", "f.c"]
    else:
        (d / "s.c").write_text("int g(void) { return 0; }\n")
        for name in ("libc.so", "libm.so", "libdl.so"):  # bionic's sonames, as stand-ins
            subprocess.run([cc, "-shared", "-fPIC", "-nostdlib", f"-Wl,-soname,{name}", "-o",
                            f"stub-{name}", "s.c"], cwd=d, check=True)  # fmt: skip
        cmd = [cc, "-shared", "-fPIC", "-nostdlib", "-Wl,--no-as-needed", "-o", "model.so", "f.c",
               "stub-libc.so", "stub-libm.so", "stub-libdl.so"]  # fmt: skip
    subprocess.run(cmd, cwd=d, check=True)
    return d / "model.so"


def _art(tmp_path: Path, *, kind: str | None = None, lib: Path | None = None):
    """What check_platform reads of an artifact: its folder, manifest and target."""
    d = tmp_path / f"a-{kind}-{lib.parent.name if lib else None}.edgert"
    (d / "lib").mkdir(parents=True)
    manifest = {"libs": {}, "target": {"name": "android-arm64", "arch": "aarch64"}}
    if kind:
        manifest["kind"] = kind
    if lib:
        shutil.copy(lib, d / "lib" / "model.so")
        manifest["libs"]["model"] = "lib/model.so"
    (d / "manifest.json").write_text(json.dumps(manifest))
    return SimpleNamespace(path=d, manifest=manifest, target=manifest["target"])


def test_elf_needed_reads_the_libraries_names(tmp_path):
    assert "libc.so.6" in deploy.elf_needed(_lib(tmp_path, "libc.so.6"))
    assert deploy.elf_needed(_lib(tmp_path, "libc.so")) == ["libc.so", "libm.so", "libdl.so"]
    (tmp_path / "x").write_bytes(b"not an ELF")
    assert deploy.elf_needed(tmp_path / "x") is None
    assert deploy.elf_needed(tmp_path / "absent") is None


def test_each_platform_is_refused_what_it_cannot_run(tmp_path):
    glibc = _art(tmp_path, lib=_lib(tmp_path, "libc.so.6"))
    bionic = _art(tmp_path, lib=_lib(tmp_path, "libc.so"))
    onnx = _art(tmp_path, kind="onnx")
    assert deploy.library_libc(glibc) == "glibc" and deploy.library_libc(bionic) == "bionic"
    assert deploy.library_libc(onnx) is None
    deploy.check_platform(bionic, "android", where="device p")
    deploy.check_platform(glibc, "linux", where="device p")
    deploy.check_platform(onnx, "linux", where="device p")
    for art, platform, says in [
        (onnx, "android", ("device p is android: ONNX artifacts need the TVM runtime, which "
                           "is not built for bionic")),
        (bionic, "linux", "is linked against Android's bionic (libc.so); device p is linux"),
        (glibc, "android", "is linked against glibc (libc.so.6); device p is android"),
    ]:  # fmt: skip
        with pytest.raises(EdgertError) as e:
            deploy.check_platform(art, platform, where="device p")
        assert says in str(e.value) and "\n" not in str(e.value)


def test_deploy_refuses_onnx_on_android_before_sending(tmp_path, monkeypatch):
    """Through the agent (any transport): the device's ``platform`` decides, before a file is
    stat'ed or sent."""
    from edgert.format import artifact

    art = _art(tmp_path, kind="onnx")
    art.check_target = lambda *a, **k: None
    monkeypatch.setattr(artifact.Artifact, "open", classmethod(lambda cls, p: art))

    class Phone:
        url = "ssh://u0_a123@phone:8022"

        def __init__(self):
            self.calls = []

        def call(self, action, args=None, payload=b""):
            self.calls.append(action)
            info = {"machine": "aarch64", "cpu_features": None, "platform": "android"}
            return {"info": info}, b""

    phone = Phone()
    with pytest.raises(EdgertError, match="is android: ONNX artifacts need the TVM runtime"):
        deploy.deploy(art.path, phone, progress=False)
    assert phone.calls == ["device.info"]
