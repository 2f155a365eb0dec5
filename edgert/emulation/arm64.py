"""The emulated device: an arm64 Debian root entered through qemu-user binfmt, with edgert's
device-side dependencies (numpy, tokenizers, and the TVM runtime for ONNX artifacts) installed
from aarch64 wheels into /opt/venv (the tests' runtime; a deploy installs its own), and
its own arm64 OpenSSH server on a loopback port. It runs the device side of edgert as an ARM
board would, for tests and for anyone without a board (``edgert emulator up``). The root is built
once (about 4 minutes) and cached under ~/.cache/edgert/arm64/<key>, keyed by its package list
and wheel requirements. Needs root (chroot, mounts).

    python tools/arm64_root.py            # build (or reuse) the root, print its path
    python tools/arm64_root.py -- uname -m
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgert.device.deploy import download_runtime_wheels, runtime_wheels
from edgert.errors import EdgertError

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["python3", "python3-venv", "ca-certificates", "openssh-server", "openssh-client",
            # musl, a C library that is not glibc: android libraries are load-tested with it
            # (tests/device/test_android_lib.py); numpy as a phone's Python has it (Termux's
            # python-numpy), outside any venv, for the android flavour
            "musl", "musl-dev", "python3-numpy"]
VERSION = 1
REPO = Path(__file__).resolve().parents[2]  # a source checkout (tests copy edgert from it)


CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


class RigError(EdgertError):
    """The emulated device cannot be built or started (the message says why)."""


def cache_root() -> Path:
    from edgert.settings import cache_dir

    return cache_dir() / "arm64"


def key() -> str:
    # the test venv in the root runs ONNX artifacts too: the TVM runtime is in it
    h = hashlib.sha256(
        repr((VERSION, SUITE, PACKAGES, sorted(runtime_wheels(onnx=True)))).encode()
    ).hexdigest()
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
        download_runtime_wheels("aarch64", "3.11", wheels_dir, onnx=True)
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


def run_python(root: Path, script: str, *, timeout: float = 900, env: dict | None = None) -> str:
    """Run a Python script inside the arm64 root with edgert importable; returns stdout.
    ``env``: more environment (``QEMU_CPU``, which qemu-user reads when the process starts,
    runs it on another CPU model)."""
    install_edgert(root)
    (root / "tmp").mkdir(exist_ok=True)
    f = root / "tmp" / "edgert_script.py"
    f.write_text(script)
    r = _chroot(
        root,
        ["/opt/venv/bin/python", "/tmp/edgert_script.py"],
        env={"PYTHONPATH": "/opt/edgert-src", "EDGERT_CACHE": "/root/.cache/edgert", **(env or {})},
        timeout=timeout,
    )
    return r.stdout


# -- the running device: arm64 sshd on a loopback port ----------------------------------------
SSHD_CONFIG = """Port {port}
ListenAddress 127.0.0.1
HostKey /etc/ssh/edgert_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile /root/.ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile /run/sshd-edgert.pid
Subsystem sftp internal-sftp
"""
CGROUP = "edgert-emulator"


def state_file() -> Path:
    return cache_root() / "emulator" / "state.json"


def _keygen(path: Path) -> None:
    if not path.exists():
        _need("ssh-keygen", "openssh-client")
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgert-emulator", "-f",
             str(path)],
            check=True,
        )  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _mount(root: Path) -> None:
    for sub, cmd in (
        ("proc", ["mount", "-t", "proc", "proc"]),
        ("dev", ["mount", "--rbind", "/dev"]),  # with /dev/pts: serial lines are ptys
    ):
        p = root / sub
        p.mkdir(exist_ok=True)
        if not os.path.ismount(p):
            subprocess.run([*cmd, str(p)], check=True)


def _umount(root: Path) -> None:
    for sub in ("dev", "proc"):
        p = root / sub
        if os.path.ismount(p):
            subprocess.run(["umount", "-R", "-l", str(p)], check=False)


def sshd_argv(root: Path, procs: str | None) -> list[str]:
    """The command (run as root) that starts the device's sshd in ``root``, first joining the
    memory cgroup whose ``cgroup.procs`` is ``procs`` (a shell: the group must hold the process
    before it execs). Every path is quoted: ``root`` lies under $EDGERT_CACHE, which may hold
    spaces or shell syntax."""
    q = shlex.quote
    join = f"echo $$ > {q(procs)} && " if procs else ""
    sshd = "/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config.edgert"
    return ["sh", "-c", f"{join}exec {q(CHROOT)} {q(str(root))} {sshd}"]


def _dram_limit(limit: int | None) -> str | None:
    """A cgroup v1 memory limit for everything the emulated device runs (page cache included)."""
    from edgert.emulation.limits import MEMORY_ROOT, Cgroups

    if not limit or not MEMORY_ROOT.exists():
        return None
    return Cgroups(CGROUP, memory_bytes=limit).create().procs


def status() -> dict:
    """The running emulator's description (``running: False`` when there is none)."""
    import json

    f = state_file()
    if not f.exists():
        return {"running": False}
    st = json.loads(f.read_text())
    st.setdefault("flavour", "linux")  # a state written before the android flavour existed
    alive = True
    try:
        os.kill(st["pid"], 0)
    except OSError:
        alive = False
    st["running"] = alive and _port_open(st["port"])
    return st


def up(
    *, target: str | None = None, port: int | None = None, wait: float = 120, android: bool = False
) -> dict:
    """Start the emulated device (building its root on first use) and return its description:
    ``url`` is what ``edgert deploy`` / ``run`` / ``profile`` take. ``android``: the same root
    presented as an Android phone with Termux (:func:`android_root`); ``target`` defaults to
    android-arm64 then, else rpi5. ``flavour`` in the description says which is running."""
    import json
    import time

    from edgert.format.target import load_target

    flavour = "android" if android else "linux"
    st = status()
    if st["running"]:
        if st["flavour"] != flavour:
            raise RigError(
                f"the emulator is already running, as the {st['flavour']} flavour",
                "stop it first: edgert emulator down",
            )
        return st
    target = target or ("android-arm64" if android else "rpi5")
    tgt = load_target(target)
    if tgt.arch != "aarch64":
        raise RigError(f"the emulator runs arm64 targets; {target} is {tgt.arch}")
    base = ensure_root()
    # the android flavour writes nothing into the shared root: everything it changes lands in
    # an overlay's upper layer in the emulator's state folder
    root = android_root(base) if android else base
    d = state_file().parent
    host_key, client_key = d / "host_ed25519", d / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    port = port or _free_port()
    shutil.copyfile(host_key, root / "etc" / "ssh" / "edgert_host_ed25519_key")
    os.chmod(root / "etc" / "ssh" / "edgert_host_ed25519_key", 0o600)
    (root / "etc" / "ssh" / "sshd_config.edgert").write_text(
        SSHD_CONFIG.format(port=port) + (ANDROID_SSHD if android else "")
    )
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text((d / "client_ed25519.pub").read_text())
    (root / "run" / "sshd").mkdir(parents=True, exist_ok=True)
    _mount(root)
    procs = _dram_limit(tgt.dram_bytes)
    log_path = d / "sshd.log"
    proc = _daemon(sshd_argv(root, procs), log_path)
    t0 = time.monotonic()
    while not _port_open(port):
        if proc.poll() is not None or time.monotonic() - t0 > wait:
            proc.kill()
            _umount(root)
            if android:
                _unmount_overlay(root)
            tail = log_path.read_text(errors="replace")[-800:]
            raise RigError(f"the emulated device's sshd did not start: {tail}")
        time.sleep(0.5)
    pub = (d / "host_ed25519.pub").read_text().split()
    st = {
        "pid": proc.pid,
        "port": port,
        "root": str(root),
        "flavour": flavour,
        **({"base_root": str(base)} if android else {}),
        "target": tgt.name,
        "dram_limit_bytes": tgt.dram_bytes if procs else None,
        "host_key": f"[127.0.0.1]:{port} {pub[0]} {pub[1]}",
        "key": str(client_key),
        "url": f"ssh://root@127.0.0.1:{port}?key={client_key}",
    }
    state_file().write_text(json.dumps(st, indent=1))
    return {**st, "running": True}


def down() -> dict:
    """Stop the emulated device (its root stays cached)."""
    import signal

    st = status()
    if "pid" in st:
        for pid in [st["pid"], *st.get("serial_pids", [])]:
            try:
                os.killpg(pid, signal.SIGTERM)
            except OSError:
                pass
        _umount(Path(st["root"]))
        if st.get("flavour") == "android":
            _unmount_overlay(Path(st["root"]))
        state_file().unlink(missing_ok=True)
    elif os.path.ismount(android_dir() / "merged"):  # an android start that failed half-way
        _unmount_overlay(android_dir() / "merged")
    return {"running": False, "stopped": st.get("running", False)}


# -- the android flavour: the same root presented as a phone with Termux ----------------------
#: its system properties (/system/build.prop), which its getprop answers: Android 14
ANDROID_PROPS = {
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.manufacturer": "edgert",
    "ro.product.model": "emulated phone",
}
#: getprop, answering as Android's does from /system/build.prop: a key's value (or the default
#: given, else an empty line), or with no key every property as ``[key]: [value]``
GETPROP = """#!/bin/sh
# getprop of the emulated Android device (edgert emulator up --android)
want="$1" found="" val=""
while IFS= read -r line; do
  case "$line" in '#'*) continue ;; *=*) ;; *) continue ;; esac
  k="${line%%=*}" v="${line#*=}"
  if [ -z "$want" ]; then printf '[%s]: [%s]\\n' "$k" "$v"
  elif [ "$k" = "$want" ]; then found=1 val="$v"; fi
done < /system/build.prop
if [ -n "$want" ]; then
  if [ -n "$found" ]; then printf '%s\\n' "$val"; else printf '%s\\n' "$2"; fi
fi
"""
#: on the system Python's path: pip takes no manylinux wheel there, as on a phone
MANYLINUX_REFUSED = '''"""The emulated Android device (edgert emulator up --android) takes no
manylinux wheel: a phone's Python is built against bionic, where glibc builds do not load. pip
asks this module before it installs one (PEP 600; PEP 513, 571 and 599 for the older tags)."""


def manylinux_compatible(tag_major, tag_minor, tag_arch):
    return False


manylinux1_compatible = manylinux2010_compatible = manylinux2014_compatible = False
'''
#: bionic's sonames, which libraries built for Android need (DT_NEEDED), as links to the root's
#: glibc: Android's loader searches /system/lib64, and so does every process of the flavour
BIONIC_LIBS = {"libc.so": "libc.so.6", "libm.so": "libm.so.6", "libdl.so": "libdl.so.2"}
GLIBC_DIR = "/usr/lib/aarch64-linux-gnu"
#: what every process its sshd starts has in its environment, as on a phone (OpenSSH's SetEnv,
#: 7.8 and later; bookworm has 9.2): the library path, and Android's own variables
ANDROID_ENV = {
    "LD_LIBRARY_PATH": "/system/lib64",
    "ANDROID_ROOT": "/system",
    "ANDROID_DATA": "/data",
}
ANDROID_SSHD = "SetEnv " + " ".join(f"{k}={v}" for k, v in ANDROID_ENV.items()) + "\n"
#: what the base root has and a phone has not, kept out of the flavour: edgert's runtime as the
#: Linux flavour installed it (glibc wheels), and /opt (the tests' venv and its wheels)
ANDROID_HIDDEN = ("root/.edgert", "opt")


def android_dir() -> Path:
    """The android flavour's own files (overlay upper and work layers, the merged view), per
    base root."""
    return state_file().parent / f"android-{key()}"


def android_root(base: Path) -> Path:
    """``base`` (the cached root, left untouched) seen through an overlay mount whose upper layer
    lives in :func:`android_dir` and persists between runs, as a phone keeps what was installed
    on it, presented as an Android phone: /system/build.prop, a getprop command on PATH,
    bionic's library names in /system/lib64, and a system Python that takes no manylinux wheel
    (``_manylinux.py``); the base root's edgert runtime and /opt are hidden. Returns the merged
    view (mounted; :func:`_unmount_overlay` undoes it)."""
    d = android_dir()
    upper, work, merged = d / "upper", d / "work", d / "merged"
    for p in (upper, work, merged):
        p.mkdir(parents=True, exist_ok=True)
    opts = {"lowerdir": base, "upperdir": upper, "workdir": work}
    odd = [str(v) for v in opts.values() if any(c in str(v) for c in ",:\\")]
    if odd:
        raise RigError(
            f"cannot mount the android flavour's overlay: {odd[0]} holds ',', ':' or '\\'",
            "set EDGERT_CACHE to a path without them",
        )
    if not os.path.ismount(merged):
        for rel in ANDROID_HIDDEN:
            _hide_in_overlay(base, upper, rel)
        r = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             ",".join(f"{k}={v}" for k, v in opts.items()), str(merged)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if r.returncode:
            raise RigError(
                f"cannot mount the android flavour's overlay on {merged}: {r.stderr.strip()}",
                "it needs root and overlayfs (modprobe overlay)",
            )
    try:
        _present_android(merged)
    except (OSError, RigError):
        _unmount_overlay(merged)
        raise
    return merged


def _hide_in_overlay(base: Path, upper: Path, rel: str) -> None:
    """Keep ``base``'s ``rel`` out of the merged view (before mounting): an overlay whiteout
    where the upper layer has nothing there yet, and where it has a folder of its own (made in
    the merged view since), that folder marked opaque, so that what the base root gains there
    later stays out too."""
    import stat

    for parent in reversed(Path(rel).parents[:-1]):  # the upper layer's folders above it keep
        if not (upper / parent).exists() and (base / parent).is_dir():  # the base's modes
            (upper / parent).mkdir()  # (/root is 0700)
            shutil.copystat(base / parent, upper / parent)
    p = upper / rel
    if p.is_dir() and not p.is_symlink():
        os.setxattr(p, "trusted.overlay.opaque", b"y")
    elif not os.path.lexists(p):
        os.mknod(p, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def _present_android(merged: Path) -> None:
    """What makes the merged root look like a phone with Termux (written each start; all of it
    lands in the upper layer)."""
    system = merged / "system"
    (system / "bin").mkdir(parents=True, exist_ok=True)
    (system / "lib64").mkdir(parents=True, exist_ok=True)
    (merged / "data").mkdir(exist_ok=True)
    (system / "build.prop").write_text(
        "# edgert emulator up --android\n" + "".join(f"{k}={v}\n" for k, v in ANDROID_PROPS.items())
    )
    getprop = system / "bin" / "getprop"
    getprop.write_text(GETPROP)
    getprop.chmod(0o755)
    link = merged / "usr" / "local" / "bin" / "getprop"  # on every session's PATH
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.unlink(missing_ok=True)
        link.symlink_to("/system/bin/getprop")
    for name, glibc in BIONIC_LIBS.items():
        if not (merged / GLIBC_DIR.lstrip("/") / glibc).exists():
            raise RigError(f"the arm64 root has no {GLIBC_DIR}/{glibc} to stand for {name}")
        lib = system / "lib64" / name
        if lib.is_symlink() or lib.exists():
            lib.unlink()
        lib.symlink_to(f"{GLIBC_DIR}/{glibc}")
    stdlib = sorted((merged / "usr" / "lib").glob("python3.*/os.py"))
    if not stdlib:
        raise RigError("the arm64 root has no Python 3 standard library in /usr/lib")
    # the standard library's folder: on the path of the system Python and of every venv
    (stdlib[-1].parent / "_manylinux.py").write_text(MANYLINUX_REFUSED)


def _unmount_overlay(merged: Path) -> None:
    """Unmount the android flavour's merged view (and what is mounted inside it)."""
    _umount(merged)
    if os.path.ismount(merged):
        r = subprocess.run(["umount", str(merged)], capture_output=True, check=False)
        if r.returncode:  # still busy (a process holding a file): detach it
            subprocess.run(["umount", "-l", str(merged)], capture_output=True, check=False)


def _daemon(argv: list[str], log_path: Path | None, env: dict | None = None) -> subprocess.Popen:
    """A process in a session of its own (stopped with its group), output appended to
    ``log_path``."""
    if log_path is None:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)  # fmt: skip
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip


def spawn(cmd: list[str], *, log_path: Path | None = None) -> subprocess.Popen:
    """Start a long-running command inside the running emulator (e.g. an agent on a serial
    line); the caller stops it."""
    st = status()
    if not st.get("running"):
        raise RigError("the emulator is not running", "start it with `edgert emulator up`")
    env = {"PATH": "/root/.edgert/venv/bin:/opt/venv/bin:/usr/bin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8"}  # fmt: skip
    if st.get("flavour") == "android":  # what its sshd gives its sessions (ANDROID_SSHD)
        env.update(ANDROID_ENV)
    return _daemon([CHROOT, st["root"], *cmd], log_path, env)


def serial_up(*, wait: float = 30) -> dict:
    """Expose the agent on a pseudo-terminal pair (socat): the agent serves one end inside the
    running emulator, the other end is this machine's serial device. Returns ``serial_url``."""
    import json
    import re
    import time

    st = status()
    if not st.get("running"):
        raise RigError("the emulator is not running", "start it with `edgert emulator up`")
    if st.get("serial_url") and _alive(st.get("serial_pids", [])):
        return st
    _need("socat", "socat")
    d = state_file().parent
    log_path = d / "socat.log"
    log_path.write_text("")
    socat = _daemon(["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"], log_path)
    t0 = time.monotonic()
    ptys: list[str] = []
    while len(ptys) < 2:
        if socat.poll() is not None or time.monotonic() - t0 > wait:
            socat.kill()
            raise RigError(f"socat did not open its ptys: {log_path.read_text()[-400:]}")
        time.sleep(0.1)
        ptys = re.findall(r"PTY is (/dev/pts/\d+)", log_path.read_text())
    agent_cmd = ["sh", "-c", "exec $(command -v edgert || echo /root/.edgert/venv/bin/edgert) "
                 f"agent --serial {shlex.quote(ptys[1])}"]  # fmt: skip
    agent = spawn(agent_cmd, log_path=d / "serial-agent.log")
    st.update(
        {
            "serial_url": f"serial://{ptys[0]}?baud=115200",
            "serial_pids": [socat.pid, agent.pid],
        }
    )
    st.pop("running", None)
    state_file().write_text(json.dumps(st, indent=1))
    return {**st, "running": True}


def _alive(pids: list[int]) -> bool:
    try:
        for pid in pids:
            os.kill(pid, 0)
    except OSError:
        return False
    return bool(pids)
