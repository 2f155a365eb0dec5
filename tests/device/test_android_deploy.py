"""Deploying to a phone, on the emulated device's android flavour (`edgert emulator up
--android`: the cached arm64 root seen through an overlay as an Android phone with Termux:
/system/build.prop, getprop, bionic's library names in /system/lib64 on every session's library
path, numpy from the system Python, and a pip that takes no manylinux wheel). The flavour
presents those signs and leaves the cached root as it was; `edgert deploy` sees android and
installs edgert's pure-Python wheel into a venv over the system numpy, sending no manylinux
wheel; an ONNX artifact and a glibc-linked library are refused in one line before anything is
sent; SmolLM2 compiled for android-arm64 runs there through the agent with the host's greedy
tokens."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import compile_synthetic, greedy_divergence, run_cli, trust_emulator
from edgert.compiler.quant.scheme import QuantScheme

from edgert.device.client import Device
from edgert.device.deploy import deploy, ensure_runtime, library_libc, probe_device
from edgert.device.transport_ssh import SSHTransport
from edgert.emulation import arm64 as emulator
from edgert.format.artifact import Artifact

pytestmark = pytest.mark.device
PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """``(url, env, state)`` of the emulator running as its android flavour, with no edgert
    runtime on it yet (the overlay keeps what earlier runs installed: it is removed first), and
    a HOME for CLI subprocesses whose known_hosts trusts it. A Linux-flavour emulator running
    for other modules (conftest's ``emulated_device``) is stopped for this module and started
    again after it on the same port with the same host key, so its URL stays valid."""
    from edgert.device import transport_ssh
    from edgert.settings import cache_dir

    before = emulator.status()
    if before["running"] and before["flavour"] != "android":
        emulator.down()
    st = emulator.up(android=True)
    home, saved = trust_emulator(tmp_path_factory, st, "home-android")
    try:
        t = SSHTransport(st["url"])
        try:
            assert t.exec(["sh", "-c", "rm -rf ~/.edgert"])[0] == 0
        finally:
            t.close()
        yield st["url"], {"HOME": str(home), "EDGERT_CACHE": str(cache_dir())}, st
    finally:
        transport_ssh.KNOWN_HOSTS = saved
        emulator.down()
        if before["running"] and before["flavour"] != "android":
            emulator.up(target=before["target"], port=before["port"])


@pytest.fixture(scope="module")
def runtime(phone):
    """edgert's runtime installed on the phone by ensure_runtime (what `edgert deploy` runs):
    (first answer, second answer). The source digest is read once: the tree may change under
    a long session, which would rightly make the second answer "installed"."""
    from edgert.device import deploy

    url, _, _ = phone
    digest = deploy.source_digest()
    t = SSHTransport(url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deploy, "source_digest", lambda: digest)
        try:
            return ensure_runtime(t, progress=False), ensure_runtime(t, progress=False)
        finally:
            t.close()


def sh(url: str, script: str) -> tuple[int, str, str]:
    t = SSHTransport(url)
    try:
        return t.exec(["sh", "-c", script])
    finally:
        t.close()


def test_the_flavour_presents_androids_signs(phone):
    """What deploy and the agent decide from, as a phone with Termux shows it: build.prop and
    getprop (Android 14, SDK 34), bionic's sonames in /system/lib64 on the sessions' library
    path, numpy in the system Python. The cached root itself is left as it was."""
    url, _, st = phone
    assert st["flavour"] == "android" and emulator.status()["flavour"] == "android"
    assert st["target"] == "android-arm64"
    status, out, err = sh(url, "command -v getprop && getprop ro.build.version.release && "
                          "getprop ro.build.version.sdk && test -f /system/build.prop && "
                          "echo \"$LD_LIBRARY_PATH\" && readlink -f /system/lib64/libc.so "
                          "/system/lib64/libm.so /system/lib64/libdl.so")  # fmt: skip
    assert status == 0, err
    assert out.split() == [
        "/usr/local/bin/getprop", "14", "34", "/system/lib64",
        "/usr/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib/aarch64-linux-gnu/libdl.so.2",
    ]  # fmt: skip
    t = SSHTransport(url)
    try:
        probe = probe_device(t)
    finally:
        t.close()
    assert probe["platform"] == "android" and probe["machine"] == "aarch64"
    assert (probe["android_release"], probe["android_sdk"]) == ("14", 34)
    assert probe["numpy"]  # Debian's python3-numpy, standing in for Termux's python-numpy
    # the cached root is the Linux flavour's, untouched: everything above lives in the overlay
    base = Path(st["base_root"])
    assert not (base / "system").exists() and not (base / "usr/local/bin/getprop").exists()
    assert not list((base / "usr" / "lib").glob("python3*/_manylinux.py"))
    cfg = base / "etc" / "ssh" / "sshd_config.edgert"
    assert not cfg.exists() or "SetEnv" not in cfg.read_text()


def test_pip_takes_no_manylinux_wheel_there(phone, runtime):
    """pip on the phone refuses a manylinux wheel (its _manylinux module says no, PEP 600), as
    on a phone whose Python is a bionic build: what the runtime needs must come otherwise."""
    url, _, st = phone
    wheels = Path(st["base_root"]) / "opt" / "wheels"  # the Linux flavour's, hidden from the phone
    wheel = next(wheels.glob("numpy-*manylinux*.whl"))
    shutil.copy(wheel, Path(st["root"]) / "tmp" / wheel.name)
    status, out, err = sh(url, "~/.edgert/venv/bin/python -c 'from pip._vendor.packaging import "
                          "tags; print(sum(\"manylinux\" in str(t) for t in tags.sys_tags()))' "
                          "&& ~/.edgert/venv/bin/pip install --no-index --no-deps "
                          f"/tmp/{wheel.name}")  # fmt: skip
    assert out.splitlines()[0] == "0"
    assert status != 0 and "is not a supported wheel on this platform" in err, (out, err)


def test_runtime_installs_without_manylinux_wheels(phone, runtime):
    """ensure_runtime on the phone: only pure-Python wheels sent (edgert's own), installed with
    --no-deps into a venv that takes numpy from the system; no tokenizers, jinja2 or TVM; the
    stamp records the flavour, so a second deploy leaves it alone; the agent reports android."""
    url, _, _ = phone
    assert runtime == ("installed", "present")
    status, out, err = sh(url, "ls ~/.edgert/wheels; echo ---; cat ~/.edgert/venv/edgert-source; "
                          "~/.edgert/venv/bin/python -c 'import numpy, importlib.util as u; "
                          "print(numpy.__file__); "
                          "print([m for m in (\"tokenizers\", \"jinja2\", \"tvm\") "
                          "if u.find_spec(m)])'")  # fmt: skip
    assert status == 0, err
    sent, rest = out.split("---")
    sent = sent.split()
    assert sent and all(w.endswith("-none-any.whl") for w in sent), sent
    assert [w for w in sent if w.startswith("edgert-")]
    stamp, numpy_file, missing = rest.strip().splitlines()
    assert stamp.split()[1:] == ["android"]
    assert numpy_file.startswith("/usr/lib/python3/dist-packages/numpy/")  # the system's numpy
    assert missing == "[]"
    with Device(url) as dev:
        info = dev.call("device.info")[0]["info"]
    assert info["platform"] == "android" and info["machine"] == "aarch64"
    assert (info["android_release"], info["android_sdk"]) == ("14", 34)


def test_onnx_artifact_refused_in_one_line(phone, tmp_path):
    """`edgert deploy` of a compiled ONNX model to the phone: one line naming the device and
    why, exit status 2, and nothing sent (no staging folder there)."""
    import onnx
    from edgert.compiler.onnx.compile import compile_onnx
    from make_onnx_models import mlp

    url, env, _ = phone
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    art = compile_onnx(model=tmp_path / "mlp.onnx", target="rpi5", out=tmp_path / "mlp.edgert",
                       input_shapes={"x": (3, 64)}).out  # fmt: skip
    r = run_cli("deploy", str(art), url, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert ("is android: ONNX artifacts need the TVM runtime, which is not built for bionic"
            in r.stderr)  # fmt: skip
    assert sh(url, "test -e ~/.edgert/staging/mlp.edgert")[0] != 0


def test_glibc_library_refused_in_one_line(phone, tmp_path):
    """An rpi5 artifact (its library linked against glibc: libc.so.6, which bionic has not) is
    refused on the phone before anything is sent."""
    url, env, _ = phone
    art = compile_synthetic(tmp_path, "llama", QuantScheme("uniform", 4, 32), target="rpi5",
                            layers=2).out  # fmt: skip
    r = run_cli("deploy", str(art), url, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "is linked against glibc (libc.so.6)" in r.stderr and "is android" in r.stderr
    assert sh(url, f"test -e ~/.edgert/staging/{Path(art).name}")[0] != 0


def test_bionic_library_loads_in_the_phones_sessions(phone, runtime, tmp_path):
    """An android-arm64 artifact's library (DT_NEEDED libc.so, libm.so: bionic's names) is
    deployed, and loads in a process of the phone's sshd, whose library path holds the flavour's
    /system/lib64 (as Android's loader searches /system/lib64); without that path it cannot, so
    the names are the ones the flavour provides, not glibc's."""
    url, _, _ = phone
    art = Path(compile_synthetic(tmp_path, "llama", QuantScheme("uniform", 4, 32),
                                 target="android-arm64", layers=2).out)  # fmt: skip
    assert library_libc(Artifact.open(art)) == "bionic"
    with Device(url) as dev:
        assert deploy(art, dev, name="bionic", progress=False).platform == "android"
    load = ("python3 -c 'import ctypes, os; ctypes.CDLL(os.path.expanduser("
            "\"~/.edgert/artifacts/bionic/lib/model.so\")); print(\"loaded\")'")  # fmt: skip
    status, out, err = sh(url, load)
    assert status == 0 and out.strip() == "loaded", err
    status, out, err = sh(url, "env -u LD_LIBRARY_PATH " + load)
    assert status != 0 and "libc.so: cannot open shared object file" in err


@pytest.fixture(scope="module")
def smollm2_android(smollm2_path, tmp_path_factory):
    """SmolLM2-135M compiled for android-arm64 as conftest's ``smollm2_q4`` is for the host
    (4 bits, uniform, group 32, rounded to nearest)."""
    from conftest import ROOT
    from edgert.compiler.compile import compile_model

    out = tmp_path_factory.mktemp("smollm2-android") / "smollm2-android.edgert"
    compile_model(model=smollm2_path, target="android-arm64", out=out,
                  scheme=QuantScheme("uniform", 4, 32), quant_method="rtn",
                  calib=str(ROOT / "tests" / "data" / "gpl-3.0.txt"))  # fmt: skip
    return out


def test_smollm2_runs_on_the_phone_as_on_the_host(phone, smollm2_android, smollm2_q4):
    """SmolLM2 for android-arm64 (its library needs bionic's libc.so, libm.so, libdl.so: the
    flavour's /system/lib64), deployed with `edgert deploy` and run with `edgert run --device`
    through the agent (numpy from the system, no `tokenizers` there): the greedy tokens of the
    host artifact, or a parting only where the reference decides by less than the kernels'
    error."""
    from edgert.runtime.generate import Sampler, generate
    from edgert.runtime.open import open_artifact_engine
    from edgert.runtime.reference import ReferenceEngine
    from edgert.runtime.weights import reference_model

    url, env, _ = phone
    assert library_libc(Artifact.open(smollm2_android)) == "bionic"
    r = run_cli("deploy", str(smollm2_android), url, "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["platform"] == "android" and out["runtime"] in ("installed", "present")
    r = run_cli("run", str(smollm2_android), "--device", url, "-p", PROMPT, "-n", "16",
                "--ctx", "128", "--ignore-eos", "--json", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["tokens"]
    eng = open_artifact_engine(smollm2_q4, max_ctx=128)
    want = generate(eng, prompt=PROMPT, n_predict=16, sampler=Sampler(temp=0),
                    stop_at_eos=False).tokens  # fmt: skip
    assert len(got) == 16
    if got != want:
        ref = ReferenceEngine(reference_model(Artifact.open(smollm2_android)), max_ctx=128)
        assert greedy_divergence(ref, ref.tokenizer, PROMPT, got, want)
