"""The device agent: ``edgert agent --stdio`` (or ``--serial PORT``) serves one client over a byte
stream with the framed protocol of :mod:`edgert.device.protocol`.

Actions (``REQUEST`` header ``{"id": N, "action": NAME, "args": {...}}``; the answer is a
``REPLY`` with the same id, ``EVENT`` frames before it for streamed output, or an ``ERROR``):

- ``device.info``: CPU model and features, cores, DRAM total/free, storage, temperature and
  frequency governor where the device exposes them, machine, Python and edgert versions.
- ``artifact.list`` / ``artifact.load`` / ``artifact.unload``: artifacts under ``ROOT/artifacts``.
  ``artifact.load`` takes ``ctx``, ``dram_budget`` (bytes; 0: none), ``experts`` and ``ffn``
  (the options of ``edgert run``): the engine runs within that budget, streaming from flash.
- ``run.generate``: a language-model artifact on a prompt; one EVENT per piece of text.
- ``run.infer``: a compiled ONNX model on the arrays of an ``.npz`` payload; outputs as ``.npz``.
- ``run.bench``: ``edgert bench`` figures for a deployed artifact.
- ``run.profile``: bench figures plus per-layer time, RSS over time, temperature and frequency
  (:mod:`edgert.measure.profile`).
- ``file.stat`` / ``file.put`` / ``file.commit``: checksummed chunked upload into a staging
  directory (resumable: ``file.stat`` says how much of a file already arrived), then an atomic
  switch of ``ROOT/artifacts/NAME`` (a link to ``ROOT/versions/NAME.N``) once every checksum of
  the artifact verifies.
- ``agent.shutdown``.

Every path a client names stays inside ``ROOT``. A malformed frame or request gets an ERROR reply
and the agent keeps serving.
"""

from __future__ import annotations

import io
import logging
import os
import platform
import re
import shutil
import sys
from pathlib import Path
from typing import Any, BinaryIO

from edgert import __version__
from edgert.device.protocol import (
    PROTOCOL_VERSION,
    Code,
    Frame,
    FrameError,
    FrameReader,
    StreamClosed,
    encode,
)
from edgert.device.sysinfo import device_info
from edgert.errors import EdgertError
from edgert.format.artifact import crc32, crc32_file

log = logging.getLogger(__name__)

CAPABILITIES = ("info", "artifacts", "generate", "infer", "files")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RequestError(Exception):
    """A request the agent refuses (bad arguments, unknown artifact, ...): sent back as ERROR."""


def default_root() -> Path:
    return Path(os.environ.get("EDGERT_AGENT_ROOT", Path.home() / ".edgert")).expanduser()


class Agent:
    """Serves requests read from ``rfile`` and writes frames to ``wfile`` until BYE, shutdown or
    the end of the stream. ``extra``: (actions, capabilities) served beside :data:`ACTIONS` (the
    measuring ones, edgert.measure.actions, which ``edgert agent`` adds)."""

    def __init__(
        self,
        rfile: BinaryIO,
        wfile: BinaryIO,
        *,
        root: Path | None = None,
        extra: tuple[dict, tuple] | None = None,
    ):
        self.reader = FrameReader(rfile)
        self.wfile = wfile
        self.root = Path(root or default_root())
        self.loaded: dict[str, Any] = {}
        actions, caps = extra or ({}, ())
        self.actions = {**ACTIONS, **actions}
        self.capabilities = (*CAPABILITIES, *caps)

    # -- plumbing -------------------------------------------------------------------------------
    def send(self, code: Code, header: dict, payload: bytes = b"") -> None:
        self.wfile.write(encode(code, header, payload))
        self.wfile.flush()

    def hello(self) -> dict:
        return {
            "protocol": PROTOCOL_VERSION,
            "edgert_version": __version__,
            "capabilities": list(self.capabilities),
            "machine": platform.machine(),
        }

    def serve(self, *, greet: bool = True) -> str | None:
        """Serve until BYE or the end of the stream (None), or ``agent.shutdown``."""
        if greet:
            self.send(Code.HELLO, self.hello())
        while True:
            try:
                frame = self.reader.read()
            except StreamClosed:
                return None
            except FrameError as e:
                self.send(Code.ERROR, {"id": None, "error": f"bad frame: {e}"})
                continue
            if frame.code == Code.BYE:
                return None
            if frame.code == Code.HELLO:
                self.send(Code.HELLO, self.hello())
                continue
            if frame.code != Code.REQUEST:
                self.send(Code.ERROR, {"id": None, "error": f"unexpected {frame.code.name}"})
                continue
            if self.handle(frame) == "shutdown":
                return "shutdown"

    def handle(self, frame: Frame) -> str | None:
        rid = frame.header.get("id")
        action = frame.header.get("action")
        args = frame.header.get("args", {})
        fn = self.actions.get(action) if isinstance(action, str) else None
        try:
            if fn is None:
                known = ", ".join(self.actions)
                raise RequestError(f"unknown action {action!r}; known: {known}")
            if not isinstance(args, dict):
                raise RequestError("args must be a JSON object")
            header, payload = fn(self, rid, args, frame.payload)
        except (RequestError, EdgertError) as e:
            self.send(Code.ERROR, {"id": rid, "error": str(e)})
            return None
        except Exception as e:
            log.exception("action %s failed", action)
            self.send(Code.ERROR, {"id": rid, "error": f"{type(e).__name__}: {e}"})
            return None
        self.send(Code.REPLY, {"id": rid, **header}, payload)
        return "shutdown" if action == "agent.shutdown" else None

    def event(self, rid, **fields) -> None:
        self.send(Code.EVENT, {"id": rid, **fields})

    # -- paths --------------------------------------------------------------------------------
    def inside(self, rel: Any) -> Path:
        """``ROOT/rel``, refusing anything that would leave ROOT."""
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise RequestError("path must be a non-empty string")
        p = (self.root / rel).resolve()
        root = self.root.resolve()
        if p != root and root not in p.parents:
            raise RequestError(f"path {rel!r} leaves the agent root")
        return p

    def artifact_dir(self, name: Any) -> Path:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise RequestError(f"bad artifact name {name!r}")
        return self.root / "artifacts" / name

    def deployed(self, name: Any) -> Path:
        """The directory of the current version of artifact ``name`` (its own path: see
        ``_commit``), refusing a name that is not deployed."""
        path = self.artifact_dir(name).resolve()
        if not (path / "manifest.json").exists():
            raise RequestError(f"no artifact {name!r} on this device (deploy it first)")
        return path

    def engine(self, name: Any):
        if name not in self.loaded:
            _load(self, None, {"name": name}, b"")
        return self.loaded[name]


# -- actions: (agent, request id, args, payload) -> (reply header, reply payload) --------------
def _info(agent: Agent, rid, args, payload):
    return {"info": device_info(agent.root)}, b""


def _list(agent: Agent, rid, args, payload):
    import json

    out = []
    for d in sorted((agent.root / "artifacts").glob("*/manifest.json")):
        try:
            m = json.loads(d.read_text())
        except (OSError, ValueError):
            continue
        size = sum(f.stat().st_size for f in d.parent.rglob("*") if f.is_file())
        out.append(
            {
                "name": d.parent.name,
                "kind": m.get("kind", "llm"),
                "target": m.get("target", {}).get("name"),
                "bytes": size,
                "loaded": d.parent.name in agent.loaded,
            }
        )
    return {"artifacts": out}, b""


def _load(agent: Agent, rid, args, payload):
    name = args.get("name")
    path = agent.deployed(name)
    from edgert.runtime.onnx import is_dnn_artifact

    if is_dnn_artifact(path):
        from edgert.runtime.onnx import open_dnn

        agent.loaded[name] = open_dnn(path)
    else:
        from edgert.runtime.open import open_artifact_engine

        budget = args.get("dram_budget")  # bytes; 0: none; absent: the compiled budget
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise RequestError("dram_budget must be a number of bytes (0: no budget)")
        opts = {k: args.get(k) for k in ("experts", "ffn")}  # as `edgert run` takes them
        if any(v is not None and not isinstance(v, dict) for v in opts.values()):
            raise RequestError("experts and ffn must be JSON objects")
        agent.loaded[name] = open_artifact_engine(
            path, max_ctx=args.get("ctx"), dram_budget=budget, **opts
        )
    return {"loaded": name}, b""


def _unload(agent: Agent, rid, args, payload):
    return {"unloaded": agent.loaded.pop(args.get("name"), None) is not None}, b""


def _generate(agent: Agent, rid, args, payload):
    from edgert.runtime.generate import Sampler, generate

    eng = agent.engine(args.get("name"))
    if not hasattr(eng, "tokenizer"):
        raise RequestError(f"{args.get('name')} is a compiled ONNX model: use run.infer")
    eng.reset()
    res = generate(
        eng,
        prompt=str(args.get("prompt", "")),
        n_predict=int(args.get("n_predict", 64)),
        sampler=Sampler(
            temp=float(args.get("temp", 0.0)),
            top_k=int(args.get("top_k", 40)),
            top_p=float(args.get("top_p", 0.95)),
            seed=args.get("seed"),
        ),
        on_text=lambda piece: agent.event(rid, text=piece),
        stop_at_eos=not args.get("ignore_eos", False),
    )
    return {"result": res.to_dict(eng)}, b""


def _infer(agent: Agent, rid, args, payload):
    import time

    import numpy as np

    eng = agent.engine(args.get("name"))
    if not hasattr(eng, "inputs"):
        raise RequestError(f"{args.get('name')} is a language model: use run.generate")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as f:
            feeds = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError) as e:
        raise RequestError(f"payload is not an .npz of inputs: {e}") from e
    t = time.perf_counter()
    outs = eng.run(feeds)
    run_ms = (time.perf_counter() - t) * 1e3
    buf = io.BytesIO()
    np.savez(buf, **outs)
    return {"outputs": list(outs), "run_ms": run_ms}, buf.getvalue()


def _stat(agent: Agent, rid, args, payload):
    p = agent.inside(args.get("path"))
    if not p.is_file():
        return {"exists": False, "size": 0, "crc32": crc32(b"")}, b""
    size = p.stat().st_size
    return {"exists": True, "size": size, "crc32": crc32_file(p, size)}, b""


def _put(agent: Agent, rid, args, payload):
    p = agent.inside(args.get("path"))
    offset = args.get("offset")
    want = args.get("crc32")
    if not isinstance(offset, int) or offset < 0:
        raise RequestError("offset must be a non-negative integer")
    if want != crc32(payload):
        raise RequestError(f"chunk at {offset} of {args.get('path')} fails its checksum; resend")
    p.parent.mkdir(parents=True, exist_ok=True)
    size = p.stat().st_size if p.exists() else 0
    if offset > size:
        raise RequestError(f"offset {offset} is past the {size} bytes received; resume at {size}")
    with open(p, "r+b" if p.exists() else "wb") as f:
        f.seek(offset)
        f.write(payload)
        f.truncate(offset + len(payload))
    return {"size": offset + len(payload)}, b""


def _commit(agent: Agent, rid, args, payload):
    """Verify a staged artifact completely, then switch it into place atomically.

    ``ROOT/artifacts/NAME`` is a symbolic link to ``ROOT/versions/NAME.N``: the switch is one
    rename of a link, and each version keeps its own path, so a process that loaded an earlier
    version's library (which the dynamic loader caches by path) loads the new one afresh."""
    import time

    from edgert.format.artifact import Artifact

    staging = agent.inside(args.get("staging"))
    dest = agent.artifact_dir(args.get("name"))
    art = Artifact.open(staging)  # schema + resident checksums
    art.verify()  # every buffer, streamed ones too
    versions = agent.root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    version = versions / f"{dest.name}.{time.time_ns()}"
    os.replace(staging, version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    previous = dest.resolve() if dest.is_symlink() else None
    link = dest.with_name(f".{dest.name}.link")
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(version, dest.parent))
    if dest.exists() and not dest.is_symlink():  # a plain directory from elsewhere
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(link, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(link, dest)
    if previous is not None and previous != version:
        shutil.rmtree(previous, ignore_errors=True)  # open files of a loaded copy stay valid
    agent.loaded.pop(args.get("name"), None)
    return {"committed": dest.name, "bytes": art.nbytes()}, b""


def _shutdown(agent: Agent, rid, args, payload):
    return {"bye": True}, b""


ACTIONS = {
    "device.info": _info,
    "artifact.list": _list,
    "artifact.load": _load,
    "artifact.unload": _unload,
    "run.generate": _generate,
    "run.infer": _infer,
    "file.stat": _stat,
    "file.put": _put,
    "file.commit": _commit,
    "agent.shutdown": _shutdown,
}


def serve_stdio(root: Path | None = None, extra: tuple[dict, tuple] | None = None) -> None:
    """Serve on this process's stdin/stdout (what the SSH and local transports start)."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the frame stream
    Agent(sys.stdin.buffer, out, root=root, extra=extra).serve()


def open_tty(port: str):
    """A serial port as (readable, writable) raw byte streams (termios: no extra package)."""
    import termios
    import tty

    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    except OSError as e:
        raise EdgertError(f"cannot open serial port {port}: {e.strerror}") from e
    if os.isatty(fd):
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return os.fdopen(fd, "rb", buffering=0), os.fdopen(os.dup(fd), "wb")


def serve_serial(
    port: str, root: Path | None = None, extra: tuple[dict, tuple] | None = None
) -> None:
    """Serve sessions on a serial line until ``agent.shutdown``: a client that goes away (BYE,
    or silence) leaves the agent waiting for the next one's HELLO."""
    rfile, wfile = open_tty(port)
    agent = Agent(rfile, wfile, root=root, extra=extra)
    while True:
        try:
            if agent.serve(greet=False) == "shutdown":
                return
        except OSError:  # the other end of a pty closed: wait for it to reopen
            import time

            time.sleep(0.2)
            rfile, wfile = open_tty(port)
            agent = Agent(rfile, wfile, root=root, extra=extra)
