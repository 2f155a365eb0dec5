"""``edgert deploy ART DEVICE``: copy an artifact to a device through its agent.

Files go to ``ROOT/staging/NAME`` in checksummed chunks (a chunk the line corrupted is refused
by its checksum and sent again, see edgert.device.client); a deploy that is interrupted resumes
where the device's copy stops matching (``file.stat`` gives its size and checksum); only when
every file has arrived does ``file.commit`` verify the artifact's checksums on the device and
switch it into ``ROOT/artifacts/NAME`` atomically, so the previous version keeps running until
then.

What may go to a device depends on its platform (edgert.device.sysinfo.platform_info): an
Android phone (Termux) has Python and numpy built against bionic, so it is sent no manylinux
(glibc) wheel and no ONNX artifact (the TVM runtime has no bionic build), and a library linked
against one C library is refused on a device with the other, before anything is sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgert.errors import EdgertError
from edgert.progress import Progress

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: seconds an SFTP request to the device may go unanswered before the transfer fails
SFTP_TIMEOUT = 300
#: what a device needs to run language-model artifacts (edgert's own wheel goes with them):
#: numpy and the tokenizer, as wheels for the device's platform; the artifact brings its library
RUNTIME_WHEELS = ["numpy", "tokenizers", "jinja2", "threadpoolctl"]
#: and what compiled ONNX models need besides: the TVM runtime (the wheel also holds TVM's
#: compiler library, which edgert.runtime.onnx never loads)
ONNX_WHEELS = ["apache-tvm==0.27.0.post1", "typing_extensions"]
#: the DT_NEEDED names that tell a library's C library: Android's bionic has unversioned sonames
#: (``libc.so``), glibc versioned ones; a library linked for one does not load with the other
BIONIC_NEEDED = frozenset({"libc.so", "libm.so", "libdl.so"})
GLIBC_NEEDED = frozenset({"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1"})
#: what an SSH device's runtime was installed from: the source digest, then "onnx" (the TVM
#: runtime is in the venv) and "android" (the Termux flavour), as words
STAMP = "~/.edgert/venv/edgert-source"


@dataclass
class DeployResult:
    device: str
    name: str
    files: int
    bytes_total: int
    bytes_sent: int
    resumed_bytes: int
    #: what the device reported: "linux" or "android"
    platform: str = "linux"

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def artifact_name(path: str | Path) -> str:
    return Path(path).expanduser().resolve().name


def elf_needed(path: Path) -> list[str] | None:
    """The DT_NEEDED names of a shared library, in order (None: not a 64-bit ELF file, or
    unreadable); read here, so no binutils for the device's architecture are needed."""
    import struct

    from edgert.format.elf import read_elf

    try:
        return read_elf(path).needed
    except (EdgertError, OSError, struct.error, IndexError, ValueError, UnicodeDecodeError):
        return None


def library_libc(art) -> str | None:
    """Which C library the artifact's libraries were linked against: "bionic" (Android's
    unversioned ``libc.so``...), "glibc" (``libc.so.6``...), or None (no library, or neither
    name: nothing to check)."""
    kinds = set()
    for rel in (art.manifest.get("libs") or {}).values():
        needed = set(elf_needed(art.path / rel) or ())
        if needed & BIONIC_NEEDED:
            kinds.add("bionic")
        if needed & GLIBC_NEEDED:
            kinds.add("glibc")
    return kinds.pop() if len(kinds) == 1 else None


def onnx_on_android(where: str) -> EdgertError:
    """The refusal of a compiled ONNX model (and of the TVM runtime) on an Android device."""
    return EdgertError(
        f"{where} is android: ONNX artifacts need the TVM runtime, which is not built for bionic",
        "run ONNX models on a Linux device; a phone runs language models compiled with "
        "--target android-arm64",
    )


def check_platform(art, platform: str, *, where: str) -> None:
    """Refuse, in one line and before anything is sent, an artifact that cannot run on a device
    of ``platform`` ("android" or "linux", as edgert.device.sysinfo.platform_info reports it):

    - a compiled ONNX model on Android: it needs the TVM runtime, whose wheels are glibc builds;
    - a library linked against bionic (``--target android-arm64``: DT_NEEDED ``libc.so``,
      ``libm.so``, ``libdl.so``) on a Linux device: glibc has no such sonames (``libc.so`` is at
      most a linker script there), so it would fail at load, deep in the runtime;
    - a library linked against glibc (``libc.so.6``) on Android: bionic has no ``libc.so.6``.
    """
    from edgert.runtime.onnx import is_dnn_artifact

    target = art.target.get("name")
    if platform == "android" and is_dnn_artifact(art.path):
        raise onnx_on_android(where)
    libc = library_libc(art)
    if libc == "bionic" and platform != "android":
        raise EdgertError(
            f"{art.path.name} (target {target}) is linked against Android's bionic (libc.so); "
            f"{where} is {platform} (glibc)",
            "compile it for that device's target (edgert targets), or deploy it to an Android "
            "device (`edgert emulator up --android` emulates one)",
        )
    if libc == "glibc" and platform == "android":
        raise EdgertError(
            f"{art.path.name} (target {target}) is linked against glibc (libc.so.6); {where} "
            "is android (bionic)",
            "compile it with --target android-arm64",
        )


def deploy(art_path: str | Path, device, *, name: str | None = None, chunk: int = CHUNK,
           progress: bool | None = None) -> DeployResult:  # fmt: skip
    """Send the artifact at ``art_path`` to ``device`` (an open-able :class:`Device`)."""
    from edgert.format.artifact import Artifact, crc32, crc32_file

    art = Artifact.open(art_path)  # refuse to ship a corrupt artifact
    name = name or artifact_name(art.path)
    info = device.call("device.info")[0]["info"]
    # the same architecture is not enough: an Armv8.2-A+dotprod build dies of SIGILL on an
    # Armv8.0 core; what the device reports (edgert.device.sysinfo.device_info) decides
    art.check_target(info["machine"], info.get("cpu_features"), where=f"device {device.url}")
    # an agent older than the platform field runs on Linux
    check_platform(art, info.get("platform", "linux"), where=f"device {device.url}")
    files = sorted(p for p in art.path.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    sent = resumed = 0
    with Progress(total, f"deploy {name}", enabled=progress, unit="B") as bar:
        for f in files:
            rel = f"staging/{name}/{f.relative_to(art.path).as_posix()}"
            size = f.stat().st_size
            st, _ = device.call("file.stat", {"path": rel})
            offset = 0
            if st["exists"] and st["size"] <= size and st["crc32"] == crc32_file(f, st["size"]):
                offset = st["size"]  # resume after what already arrived intact
                resumed += offset
                bar.update(offset)
            if size == 0 and not st["exists"]:  # an empty file still has to exist there
                device.call(
                    "file.put", {"path": rel, "offset": 0, "crc32": crc32(b""), "size": 0}, b""
                )
            with open(f, "rb") as fh:
                fh.seek(offset)
                while offset < size:
                    data = fh.read(chunk)
                    if not data:  # the file shrank under us: commit's checksums will say so
                        break
                    # the file's size lets the device refuse it at once if it cannot hold it
                    put = {"path": rel, "offset": offset, "crc32": crc32(data), "size": size}
                    device.call("file.put", put, data)
                    offset += len(data)
                    sent += len(data)
                    bar.update(len(data))
    device.call("file.commit", {"staging": f"staging/{name}", "name": name})
    return DeployResult(
        device=device.url,
        name=name,
        files=len(files),
        bytes_total=total,
        bytes_sent=sent,
        resumed_bytes=resumed,
        platform=info.get("platform", "linux"),
    )


# -- the edgert runtime on an SSH device ---------------------------------------------------------
def source_digest() -> str | None:
    """A digest of this edgert's device-side source (None when not run from a source tree)."""
    import hashlib

    repo = Path(__file__).resolve().parents[2]
    if not (repo / "pyproject.toml").exists():
        return None
    h = hashlib.sha256((repo / "pyproject.toml").read_bytes())
    for f in sorted((repo / "edgert").rglob("*.py")) + sorted((repo / "targets").glob("*.toml")):
        h.update(f.relative_to(repo).as_posix().encode() + f.read_bytes())
    return h.hexdigest()[:16]


def download_runtime_wheels(machine: str, python: str, dest: Path, *, onnx: bool = False) -> None:
    """RUNTIME_WHEELS (with ``onnx``, ONNX_WHEELS too) and what they need for a Linux device —
    ``machine`` aarch64/x86_64, ``python`` "3.11" — fetched into ``dest`` on this host (devices
    are often offline)."""
    import subprocess
    import sys

    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
           "--platform", f"manylinux_2_28_{machine}", "--platform", f"manylinux2014_{machine}",
           "--python-version", python, "-d", str(dest), *runtime_wheels(onnx)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        raise EdgertError(
            f"cannot download the {machine} runtime wheels: {r.stderr.strip()[-400:]}",
            "this host needs access to the package index (the device does not)",
        )


def runtime_wheels(onnx: bool) -> list[str]:
    return RUNTIME_WHEELS + (ONNX_WHEELS if onnx else [])


def own_wheel(dest: Path) -> Path:
    """edgert's own wheel, alone in ``dest``: built from this source tree, or downloaded. Pure
    Python (py3-none-any; the kernels ship as C sources), so one wheel serves every device."""
    import shutil
    import subprocess
    import sys

    if dest.exists():
        shutil.rmtree(dest)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists():
        r = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
             "-w", str(dest), str(repo)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    else:
        from edgert import __version__

        r = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest),
             f"edgert=={__version__}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if r.returncode:
        raise EdgertError(f"cannot build edgert's wheel: {r.stderr.strip()[-400:]}")
    return max(dest.glob("edgert-*.whl"))


def download_wheels(machine: str, python: str, dest: Path, *, onnx: bool = False) -> list[Path]:
    """The runtime's wheels plus edgert's own (built from this source tree, or downloaded)."""
    download_runtime_wheels(machine, python, dest, onnx=onnx)
    return sorted(dest.glob("*.whl")) + [own_wheel(dest / "edgert-own")]


def android_wheels(python: str) -> list[str]:
    """What an Android device (Termux) is sent besides edgert's own wheel: pure-Python
    (py3-none-any) wheels only, for its Python ``python`` ("3.12"). Termux's own packages give
    Python and numpy (``pkg install python python-numpy``: bionic builds; manylinux wheels are
    glibc builds and do not load there). Not sent: ``tokenizers`` (compiled Rust; the runtime's
    pure-Python tokenizer serves where it cannot be imported), jinja2 (its MarkupSafe has no pure
    wheel, and chat templates are rendered on the host: the agent takes a prompt), threadpoolctl
    (only ``bench-kernels`` uses it). tomli on a Python without tomllib (target files)."""
    major, minor = (int(x) for x in python.split(".")[:2])
    return ["tomli"] if (major, minor) < (3, 11) else []


def download_android_wheels(python: str, dest: Path) -> list[Path]:
    """:func:`android_wheels` for Python ``python`` and edgert's own wheel, fetched into ``dest``
    on this host (pip is asked for platform ``any`` only), each checked to be py3-none-any."""
    import subprocess
    import sys

    dest.mkdir(parents=True, exist_ok=True)
    reqs = android_wheels(python)
    if reqs:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps",
               "--platform", "any", "--implementation", "py", "--abi", "none",
               "--python-version", python, "-d", str(dest), *reqs]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode:
            raise EdgertError(
                f"cannot download the pure-Python runtime wheels: {r.stderr.strip()[-400:]}",
                "this host needs access to the package index (the device does not)",
            )
    want = {r.lower().replace("-", "_") for r in reqs}
    wheels = [w for w in sorted(dest.glob("*.whl")) if w.name.split("-")[0].lower() in want]
    wheels.append(own_wheel(dest / "edgert-own"))
    compiled = [w.name for w in wheels if not w.name.endswith("-none-any.whl")]
    if compiled:
        raise EdgertError(f"not pure-Python wheels, for an Android device: {', '.join(compiled)}")
    return wheels


def probe_device(transport) -> dict:
    """What an SSH device is, asked of its own ``python3`` before anything is installed there:
    ``machine``, ``python`` ("3.11"), ``platform`` with the Android version where it is one
    (the agent's own rule, edgert.device.sysinfo.platform_info, sent as source), and on Android
    ``numpy``: the version its Python imports, or None."""
    import inspect
    import json

    from edgert.device.sysinfo import platform_info

    script = "\n".join([
        "from __future__ import annotations",  # the function's annotations name typing's Any
        "import json, platform, sys",
        inspect.getsource(platform_info),
        "out = platform_info()",
        "out.update(machine=platform.machine(), python='%d.%d' % sys.version_info[:2])",
        "if out['platform'] == 'android':",
        "    try:",
        "        import numpy",
        "        out['numpy'] = numpy.__version__",
        "    except Exception:",
        "        out['numpy'] = None",
        "print(json.dumps(out))",
    ])  # fmt: skip
    status, out, err = transport.exec(["python3", "-c", script])
    if status:
        not_android, _, _ = transport.exec(
            ["sh", "-c", ("test -e /system/build.prop || command -v getprop || "
                          "test -x /system/bin/getprop")]
        )  # fmt: skip
        raise EdgertError(
            f"{transport.name}: python3 does not run on the device ({err.strip()[-200:]})",
            "install Python 3.10+ there (e.g. apt-get install python3 python3-venv)"
            if not_android
            else "it is an Android device: in Termux, pkg install python python-numpy",
        )
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise EdgertError(f"{transport.name}: python3 answered {out.strip()[-200:]!r}") from e


def ensure_runtime(transport, *, onnx: bool = False, progress: bool | None = None,
                   probe: dict | None = None) -> str:  # fmt: skip
    """Install (or update) edgert and its runtime in ``~/.edgert/venv`` on an SSH device; with
    ``onnx``, the TVM runtime too (language models need numpy, the tokenizer and the artifact's
    own library only). ``probe``: :func:`probe_device`'s answer, where the caller has it.

    On Android (Termux) the venv sees the system site-packages (Termux's numpy) and gets
    edgert's wheel and pure-Python wheels only, with ``--no-deps``; an ONNX runtime is refused.
    The stamp ``~/.edgert/venv/edgert-source`` records the source digest, ``onnx`` and
    ``android``: a device already current is left alone, and a device whose runtime was
    installed for the other flavour gets a new venv. Returns "present" or "installed"."""
    digest = source_digest()
    probe = probe or probe_device(transport)
    android = probe.get("platform") == "android"
    if android and onnx:
        raise onnx_on_android(f"device {transport.name}")
    status, out, _ = transport.exec(["sh", "-c", f"cat {STAMP} 2>/dev/null"])
    have = out.split() if status == 0 else []  # [digest, "onnx"?, "android"?]
    if (digest and have[:1] == [digest] and ("android" in have) == android
            and (not onnx or "onnx" in have)):  # fmt: skip
        return "present"
    switch = bool(have) and ("android" in have) != android  # the venv is the other flavour's
    if android:
        return _install_android(transport, probe, digest, progress)
    onnx = onnx or ("onnx" in have and not switch)  # an update keeps what the device had
    machine, python = probe["machine"], probe["python"]
    # one folder per set of wheels (keyed by what it holds): a language-model device is sent
    # no TVM
    import hashlib

    from edgert.settings import cache_dir

    key = hashlib.sha256(" ".join(runtime_wheels(onnx)).encode()).hexdigest()[:12]
    wheels = download_wheels(
        machine, python, cache_dir() / "wheels" / f"{machine}-py{python}-{key}", onnx=onnx
    )
    _send_wheels(transport, wheels, progress)
    own = [w.name for w in wheels if w.name.startswith("edgert-")][-1]
    steps = [
        *([["sh", "-c", "rm -rf ~/.edgert/venv"]] if switch else []),
        ["sh", "-c", "test -x ~/.edgert/venv/bin/python || python3 -m venv ~/.edgert/venv"],
        ["sh", "-c", "~/.edgert/venv/bin/pip install -q --no-index --find-links ~/.edgert/wheels "
         + " ".join(_sh_quote(r) for r in runtime_wheels(onnx))],
        ["sh", "-c", ("~/.edgert/venv/bin/pip install -q --no-index --no-deps --force-reinstall "
                      f"~/.edgert/wheels/{_sh_quote(own)}")],
        ["sh", "-c", f"echo {digest or 'unknown'}{' onnx' if onnx else ''} > {STAMP}"],
    ]  # fmt: skip
    _run_steps(transport, steps)
    return "installed"


def _install_android(transport, probe: dict, digest: str | None, progress) -> str:
    """The Android flavour of :func:`ensure_runtime`: no manylinux wheel at all."""
    from edgert.settings import cache_dir

    if not probe.get("numpy"):
        raise EdgertError(
            f"device {transport.name} is android and its python3 cannot import numpy (a phone "
            "runs Termux's bionic build; manylinux wheels do not load there)",
            "in Termux: pkg install python python-numpy",
        )
    python = probe["python"]
    wheels = download_android_wheels(python, cache_dir() / "wheels" / f"android-py{python}")
    _send_wheels(transport, wheels, progress)
    files = " ".join(f"~/.edgert/wheels/{_sh_quote(w.name)}" for w in wheels)
    venv = "~/.edgert/venv"
    steps = [
        # a venv that sees the system site-packages (Termux's numpy); any other (the Linux
        # flavour's, an interrupted install's) is made again
        ["sh", "-c", (f"grep -qx 'include-system-site-packages = true' {venv}/pyvenv.cfg "
                      f"2>/dev/null || {{ rm -rf {venv} && "
                      f"python3 -m venv --system-site-packages {venv}; }}")],
        ["sh", "-c", (f"{venv}/bin/pip install -q --disable-pip-version-check --no-index "
                      f"--no-deps --force-reinstall {files}")],
        # what the agent imports, with numpy from the system: a broken runtime is said here,
        # not at the first request
        ["sh", "-c", f"{venv}/bin/python -c 'import numpy, edgert.device.agent'"],
        ["sh", "-c", f"echo {digest or 'unknown'} android > {STAMP}"],
    ]  # fmt: skip
    _run_steps(transport, steps)
    return "installed"


def _send_wheels(transport, wheels: list[Path], progress) -> None:
    """Copy ``wheels`` to ``~/.edgert/wheels`` on the device (SFTP), skipping those already
    there at the same size (a release's file does not change), except edgert's own: built
    from this tree, its name stays while its contents change."""
    client = transport.connect()
    sftp = client.open_sftp()
    sftp.get_channel().settimeout(SFTP_TIMEOUT)  # a stalled transfer is an error, not a hang
    try:
        home = sftp.normalize(".")
        for d in (".edgert", ".edgert/wheels"):
            try:
                sftp.mkdir(f"{home}/{d}")
            except OSError:
                pass
        with Progress(len(wheels), "runtime wheels", enabled=progress) as bar:
            for w in wheels:
                remote = f"{home}/.edgert/wheels/{w.name}"
                try:
                    same = sftp.stat(remote).st_size == w.stat().st_size
                except OSError:
                    same = False
                same = same and not w.name.startswith("edgert-")
                if not same:
                    sftp.put(str(w), remote)
                bar.update(1)
    finally:
        sftp.close()


def _run_steps(transport, steps: list[list[str]]) -> None:
    for argv in steps:
        status, out, err = transport.exec(argv, timeout=1800)
        if status:
            raise EdgertError(
                f"{transport.name}: installing the runtime failed: {(err or out).strip()[-400:]}"
            )


def _sh_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
