"""An arm64 Debian root entered through qemu-user binfmt, with edgert's device-side dependencies
(numpy, the TVM runtime, tokenizers) installed from aarch64 wheels: runs the device side of
edgert as an ARM board would, for tests. Built once (about 4 minutes) and cached under
~/.cache/edgert/arm64/<key>, keyed by its package list and wheel requirements.

    python tools/arm64_root.py            # build (or reuse) the root, print its path
    python tools/arm64_root.py -- uname -m
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["python3", "python3-venv", "ca-certificates"]
WHEELS = [
    "apache-tvm==0.27.0.post1",
    "numpy",
    "tokenizers",
    "jinja2",
    "threadpoolctl",
    "typing_extensions",
]
VERSION = 1
REPO = Path(__file__).resolve().parents[1]


CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


class RigError(RuntimeError):
    pass


def cache_root() -> Path:
    from edgert.settings import cache_dir

    return cache_dir() / "arm64"


def key() -> str:
    h = hashlib.sha256(repr((VERSION, SUITE, PACKAGES, WHEELS)).encode()).hexdigest()
    return h[:12]


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise RigError(f"{tool} is missing: apt-get install {package}")


def ensure_binfmt() -> None:
    """qemu-aarch64 registered with binfmt_misc (F flag: works inside a chroot)."""
    _need("qemu-aarch64-static", "qemu-user-static")
    bm = Path("/proc/sys/fs/binfmt_misc")
    if not (bm / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(bm)], check=True)
    entry = bm / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        _need("update-binfmts", "binfmt-support")
        subprocess.run(
            ["update-binfmts", "--enable", "qemu-aarch64"], check=True, capture_output=True
        )
    if not entry.exists() or "F" not in entry.read_text().split("flags:")[1].split()[0]:
        raise RigError(
            "qemu-aarch64 is not registered with binfmt_misc (flag F): "
            "apt-get install qemu-user-static binfmt-support"
        )


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _wheels(dest: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--only-binary=:all:",
        "--platform",
        "manylinux_2_28_aarch64",
        "--platform",
        "manylinux2014_aarch64",
        "--python-version",
        "3.11",
        "-d",
        str(dest),
        *WHEELS,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RigError(f"downloading aarch64 wheels failed: {r.stderr.strip()[-500:]}")


def ensure_root() -> Path:
    """The cached root (built when missing; a failed build resumes after the bootstrap)."""
    ensure_binfmt()
    root = cache_root() / f"root-{key()}"
    with _lock(cache_root() / f".lock-{key()}"):
        if (root / ".edgert-ready").exists():
            return root
        if not (root / ".bootstrapped").exists():
            _need("mmdebstrap", "mmdebstrap")
            tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".build-"))
            try:
                r = subprocess.run(
                    [
                        "mmdebstrap",
                        "--arch=arm64",
                        "--variant=apt",
                        f"--include={','.join(PACKAGES)}",
                        SUITE,
                        str(tmp / "root"),
                        MIRROR,
                    ],
                    capture_output=True,
                    text=True,
                )
                if r.returncode:
                    raise RigError(f"mmdebstrap failed: {r.stderr.strip()[-800:]}")
                (tmp / "root" / ".bootstrapped").write_text(key())
                if root.exists():
                    shutil.rmtree(root)
                (tmp / "root").rename(root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        wheels_dir = root / "opt" / "wheels"
        _wheels(wheels_dir)
        if not (root / "opt" / "venv" / "bin" / "python").exists():
            _chroot(root, ["/usr/bin/python3", "-m", "venv", "/opt/venv"])
        wheels = [f"/opt/wheels/{w.name}" for w in wheels_dir.glob("*.whl")]
        _chroot(root, ["/opt/venv/bin/pip", "install", "-q", "--no-index", "--no-deps", *wheels])
        (root / ".edgert-ready").write_text(key())
    return root


def _chroot(
    root: Path, cmd: list[str], *, env: dict | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess:
    proc = root / "proc"
    proc.mkdir(exist_ok=True)
    mounted = not os.path.ismount(proc)
    if mounted:
        subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        e = {
            "PATH": "/opt/venv/bin:/usr/bin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            **(env or {}),
        }
        r = subprocess.run(
            [CHROOT, str(root), *cmd], capture_output=True, text=True, env=e, timeout=timeout
        )
    finally:
        if mounted:
            subprocess.run(["umount", str(proc)], check=False)
    if r.returncode:
        raise RigError(
            f"{' '.join(cmd)} failed in the arm64 root: {(r.stderr or r.stdout)[-1500:]}"
        )
    return r


def install_edgert(root: Path) -> None:
    """The device side of edgert (the edgert package, no compiler) copied into the root."""
    dst = root / "opt" / "edgert-src" / "edgert"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(REPO / "edgert", dst, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    tdst = root / "opt" / "edgert-src" / "targets"
    shutil.rmtree(tdst, ignore_errors=True)
    shutil.copytree(REPO / "targets", tdst)


def run_python(root: Path, script: str, *, timeout: float = 900) -> str:
    """Run a Python script inside the arm64 root with edgert importable; returns stdout."""
    install_edgert(root)
    (root / "tmp").mkdir(exist_ok=True)
    f = root / "tmp" / "edgert_script.py"
    f.write_text(script)
    r = _chroot(
        root,
        ["/opt/venv/bin/python", "/tmp/edgert_script.py"],
        env={"PYTHONPATH": "/opt/edgert-src", "EDGERT_CACHE": "/root/.cache/edgert"},
        timeout=timeout,
    )
    return r.stdout


def main() -> None:
    root = ensure_root()
    if "--" in sys.argv:
        cmd = sys.argv[sys.argv.index("--") + 1 :]
        print(_chroot(root, cmd).stdout, end="")
    else:
        print(root)


if __name__ == "__main__":
    main()
