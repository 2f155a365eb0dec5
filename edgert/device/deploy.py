"""``edgert deploy ART DEVICE``: copy an artifact to a device through its agent.

Files go to ``ROOT/staging/NAME`` in checksummed chunks (a chunk the line corrupted is refused
by its checksum and sent again, see edgert.device.client); a deploy that is interrupted resumes
where the device's copy stops matching (``file.stat`` gives its size and checksum); only when
every file has arrived does ``file.commit`` verify the artifact's checksums on the device and
switch it into ``ROOT/artifacts/NAME`` atomically, so the previous version keeps running until
then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgert.errors import EdgertError
from edgert.progress import Progress

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: what a device needs to run language-model artifacts (edgert's own wheel goes with them):
#: numpy and the tokenizer, as wheels for the device's platform; the artifact brings its library
RUNTIME_WHEELS = ["numpy", "tokenizers", "jinja2", "threadpoolctl"]
#: and what compiled ONNX models need besides: the TVM runtime (the wheel also holds TVM's
#: compiler library, which edgert.runtime.onnx never loads)
ONNX_WHEELS = ["apache-tvm==0.27.0.post1", "typing_extensions"]


@dataclass
class DeployResult:
    device: str
    name: str
    files: int
    bytes_total: int
    bytes_sent: int
    resumed_bytes: int

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def artifact_name(path: str | Path) -> str:
    return Path(path).expanduser().resolve().name


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


def download_wheels(machine: str, python: str, dest: Path, *, onnx: bool = False) -> list[Path]:
    """The runtime's wheels plus edgert's own (built from this source tree, or downloaded)."""
    import subprocess
    import sys

    download_runtime_wheels(machine, python, dest, onnx=onnx)
    own = dest / "edgert-own"
    if own.exists():
        import shutil

        shutil.rmtree(own)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists():
        r = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
             "-w", str(own), str(repo)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    else:
        from edgert import __version__

        r = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(own),
             f"edgert=={__version__}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if r.returncode:
        raise EdgertError(f"cannot build edgert's wheel: {r.stderr.strip()[-400:]}")
    return sorted(dest.glob("*.whl")) + sorted(own.glob("*.whl"))


def ensure_runtime(transport, *, onnx: bool = False, progress: bool | None = None) -> str:
    """Install (or update) edgert and its runtime in ``~/.edgert/venv`` on an SSH device; with
    ``onnx``, the TVM runtime too (language models need numpy, the tokenizer and the artifact's
    own library only). Returns what was done: "present" or "installed"."""
    from edgert.settings import cache_dir

    digest = source_digest()
    stamp = "~/.edgert/venv/edgert-source"
    status, out, _ = transport.exec(["sh", "-c", f"cat {stamp} 2>/dev/null"])
    have = out.split() if status == 0 else []  # [digest] or [digest, "onnx"]
    if digest and have[:1] == [digest] and (not onnx or "onnx" in have):
        return "present"
    onnx = onnx or "onnx" in have  # an update keeps what the device had
    status, out, err = transport.exec(
        ["python3", "-c", "import platform, sys; print(platform.machine(), "
         "'%d.%d' % sys.version_info[:2])"]
    )  # fmt: skip
    if status:
        raise EdgertError(
            f"{transport.name}: no python3 on the device ({err.strip()[-200:]})",
            "install Python 3.10+ there (e.g. apt-get install python3 python3-venv)",
        )
    machine, python = out.split()
    # one folder per set of wheels (keyed by what it holds): a language-model device is sent
    # no TVM
    import hashlib

    key = hashlib.sha256(" ".join(runtime_wheels(onnx)).encode()).hexdigest()[:12]
    wheels = download_wheels(
        machine, python, cache_dir() / "wheels" / f"{machine}-py{python}-{key}", onnx=onnx
    )
    client = transport.connect()
    sftp = client.open_sftp()
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
                if not same:
                    sftp.put(str(w), remote)
                bar.update(1)
    finally:
        sftp.close()
    own = [w.name for w in wheels if w.name.startswith("edgert-")][-1]
    steps = [
        ["sh", "-c", "test -x ~/.edgert/venv/bin/python || python3 -m venv ~/.edgert/venv"],
        ["sh", "-c", "~/.edgert/venv/bin/pip install -q --no-index --find-links ~/.edgert/wheels "
         + " ".join(_sh_quote(r) for r in runtime_wheels(onnx))],
        ["sh", "-c", "~/.edgert/venv/bin/pip install -q --no-index --no-deps --force-reinstall "
         f"~/.edgert/wheels/{_sh_quote(own)}"],
        ["sh", "-c", f"echo {digest or 'unknown'}{' onnx' if onnx else ''} > {stamp}"],
    ]  # fmt: skip
    for argv in steps:
        status, out, err = transport.exec(argv, timeout=1800)
        if status:
            raise EdgertError(
                f"{transport.name}: installing the runtime failed: {(err or out).strip()[-400:]}"
            )
    return "installed"


def _sh_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
