"""The device agent: ``edgert agent --stdio`` (or ``--serial PORT``) serves one client over a byte
stream with the framed protocol of :mod:`edgert.device.protocol`.

Actions (``REQUEST`` header ``{"id": N, "action": NAME, "args": {...}}``; the answer is a
``REPLY`` with the same id, ``EVENT`` frames before it for streamed output, or an ``ERROR``):

- ``device.info``: CPU model and features, cores, DRAM total/free, storage, temperature and
  frequency governor where the device exposes them, machine, Python and edgert versions.
- ``artifact.list`` / ``artifact.load`` / ``artifact.unload``: artifacts under ``ROOT/artifacts``.
  ``artifact.load`` takes ``ctx``, ``dram_budget`` (bytes; 0: none), ``experts``, ``ffn`` and
  ``kv_cache`` (the options of ``edgert run``): the engine runs within that budget, streaming
  from flash.
- ``run.generate``: a language-model artifact on a prompt; one EVENT per piece of text.
- ``run.infer``: a compiled ONNX model on the arrays of an ``.npz`` payload; outputs as ``.npz``.
- ``run.bench``: ``edgert bench`` figures for a deployed artifact.
- ``run.profile``: bench figures plus per-layer time, RSS over time, temperature and frequency
  (:mod:`edgert.measure.profile`).
- ``file.stat`` / ``file.put`` / ``file.commit``: checksummed chunked upload into
  ``ROOT/staging/NAME`` (resumable: ``file.stat`` says how much of a file already arrived; a put
  that would leave less than DISK_MARGIN free is refused), then an atomic switch of
  ``ROOT/artifacts/NAME`` (a link to ``ROOT/versions/NAME.N``) once every checksum of the
  artifact verifies.
- ``agent.shutdown``.

Every request is checked against its action's schema (:data:`SCHEMAS`: required fields, types,
ranges, the paths it may name, header and payload sizes) before it runs: files are written under
``ROOT/staging`` only, so nothing reaches ``artifacts/`` or ``versions/`` but a verified commit. A
malformed frame or request gets an ERROR reply naming the field, its value and what was expected,
and the agent keeps serving.

Crash safety: a commit fsyncs the staged files, renames them into ``versions/`` and then switches
the ``artifacts/NAME`` link, the one step that changes what runs; an agent killed anywhere before
that leaves the previous version in place, and the next agent to start removes what an
interrupted commit left (:meth:`Agent.recover`). Staged files stay, so the next deploy resumes.
"""

from __future__ import annotations

import io
import logging
import math
import os
import platform
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from edgert import __version__
from edgert.device.protocol import (
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Code,
    Frame,
    FrameError,
    FrameReader,
    StreamClosed,
    encode,
)
from edgert.device.sysinfo import device_info
from edgert.errors import EdgertError, show
from edgert.format.artifact import crc32, crc32_file
from edgert.format.model import is_int
from edgert.plan.moe import POLICIES
from edgert.plan.stats import PREDICTORS
from edgert.settings import init_threads, request_threads

log = logging.getLogger(__name__)

CAPABILITIES = ("info", "artifacts", "generate", "infer", "files")
# (always fullmatch: a `$` alone would also match before a final newline)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: one component of a staged file's path: no "..", no hidden names, nothing a shell would expand
PART = r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}"
STAGED_DIR_RE = re.compile(rf"^staging/{NAME_RE.pattern[1:-1]}$")
STAGED_FILE_RE = re.compile(rf"^staging/{NAME_RE.pattern[1:-1]}(/{PART}){{1,16}}$")
#: free bytes a put leaves on the device's storage: its system keeps working, and a deploy that
#: does not fit is refused before it fills the disk rather than when it has
DISK_MARGIN = 64 << 20
#: the largest file (and so offset) a put takes
MAX_FILE = 1 << 40
#: a request's JSON header: the arguments of any action but run.generate (whose prompt may be
#: long) fit in far less
MAX_REQUEST_HEADER = 64 << 10
#: a staging directory no deploy touched for this long is an abandoned one: removed at start
STAGING_TTL = 7 * 86400
#: test hook (tests/device/test_deploy_faults.py): ``POINT[@N]`` makes the agent kill itself with
#: SIGKILL the Nth time (default: the first) it reaches POINT, as a crash of the process there
#: would (the page cache survives it: a power cut's loss of unsynced data is not reproduced)
#: (points: put:mid_write, commit:before_rename, commit:before_switch, commit:after_switch)
FAULT_ENV = "EDGERT_AGENT_FAULT"


class RequestError(Exception):
    """A request the agent refuses (bad arguments, unknown artifact, ...): sent back as ERROR."""


# -- request schemas -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Int:
    lo: int = 0
    hi: int = MAX_FILE
    required: bool = False
    null: bool = False  # JSON null allowed (the action's default)

    @property
    def expected(self) -> str:
        return f"an integer in [{self.lo}, {self.hi}]"

    def ok(self, v: Any) -> bool:
        return is_int(v) and self.lo <= v <= self.hi


@dataclass(frozen=True)
class Num:
    lo: float = 0.0
    hi: float = 1e6
    required: bool = False
    null: bool = False
    #: the bounds themselves excluded (top_p > 0, sparsity < 1: as the CLI and Sampler say)
    open_lo: bool = False
    open_hi: bool = False

    @property
    def expected(self) -> str:
        left, right = "(" if self.open_lo else "[", ")" if self.open_hi else "]"
        return f"a number in {left}{self.lo:g}, {self.hi:g}{right}"

    def ok(self, v: Any) -> bool:
        return (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and (self.lo < v if self.open_lo else self.lo <= v)
            and (v < self.hi if self.open_hi else v <= self.hi)
        )


@dataclass(frozen=True)
class Str:
    expected: str = "a string"
    pattern: re.Pattern | None = None
    choices: tuple = ()
    max_len: int | None = 4096  # None: the frame's own header limit bounds it
    required: bool = False
    null: bool = False

    def ok(self, v: Any) -> bool:
        return (
            isinstance(v, str)
            and (self.max_len is None or len(v) <= self.max_len)
            and (self.pattern is None or self.pattern.fullmatch(v) is not None)
            and (not self.choices or v in self.choices)
        )


@dataclass(frozen=True)
class StagedPath(Str):
    """A path under ``staging/``: files are written there only, so nothing reaches
    ``artifacts/`` or ``versions/`` but a verified commit."""

    def why(self, v: Any) -> str:
        if not isinstance(v, str):
            return ""
        parts = v.split("/")
        if v.startswith("/") or ".." in parts:
            return " leaves the agent root"
        return "" if parts[0] == "staging" else " is outside the staging area"


@dataclass(frozen=True)
class Bool:
    required: bool = False
    null: bool = False
    expected: str = "true or false"

    def ok(self, v: Any) -> bool:
        return isinstance(v, bool)


@dataclass(frozen=True)
class Obj:
    """A nested object; its keys become keyword arguments downstream, so unknown ones are
    refused."""

    fields: dict = field(default_factory=dict)
    required: bool = False
    null: bool = False

    @property
    def expected(self) -> str:
        return f"an object with keys among {', '.join(self.fields)}"

    def ok(self, v: Any) -> bool:
        return isinstance(v, dict) and set(v) <= set(self.fields)


@dataclass(frozen=True)
class Schema:
    """An action's arguments (keys not named here are ignored: a newer client may send more),
    and the largest JSON header and payload its request may carry."""

    fields: dict = field(default_factory=dict)
    payload: int = 0
    header: int | None = MAX_REQUEST_HEADER  # None: the frame reader's own limit


NAME = Str(f"an artifact name matching {NAME_RE.pattern}", NAME_RE, max_len=128, required=True)
STAGED_FILE = StagedPath(
    "a file under staging/NAME/ (parts of letters, digits and ._+-)",
    STAGED_FILE_RE, max_len=2048, required=True,
)  # fmt: skip
STAGED_DIR = StagedPath("staging/NAME", STAGED_DIR_RE, max_len=160, required=True)
THREADS = Int(1, 1024, null=True)
DRAM_BUDGET = Int(0, 1 << 50, null=True)  # bytes; 0: none; null: the compiled one
EXPERTS = Obj(
    {"policy": Str(choices=POLICIES), "predictor": Str(choices=PREDICTORS), "prefetch": Bool()},
    null=True,
)
FFN = Obj(
    {
        "sparsity": Num(0.0, 1.0, null=True, open_hi=True),
        "window": Int(0, 1 << 31),
        "gap_bytes": Int(0, MAX_FILE, null=True),
    },
    null=True,
)
#: --kv-cache as `edgert run` takes it (its types checked when the artifact loads)
KV_CACHE = Str("a KV cache type, or KEYS,VALUES", re.compile(r"^[a-z0-9]{2,4}(,[a-z0-9]{2,4})?$"),
               null=True)  # fmt: skip
SCHEMAS: dict[str, Schema] = {
    "device.info": Schema(),
    "artifact.list": Schema(),
    "artifact.load": Schema(
        {
            "name": NAME,
            "ctx": Int(1, 1 << 24, null=True),
            "dram_budget": DRAM_BUDGET,
            "experts": EXPERTS,
            "ffn": FFN,
            "kv_cache": KV_CACHE,
        }
    ),
    "artifact.unload": Schema({"name": NAME}),
    "run.generate": Schema(
        {
            "name": NAME,
            "prompt": Str(max_len=None),
            "n_predict": Int(0, 1 << 20),
            "temp": Num(0.0, 1e6),
            "top_k": Int(0, 1 << 31),
            "top_p": Num(0.0, 1.0, open_lo=True),
            "seed": Int(0, (1 << 63) - 1, null=True),
            "ignore_eos": Bool(),
            "threads": THREADS,
        },
        header=None,  # a prompt may be long: the frame's own limit (MAX_HEADER) bounds it
    ),
    "run.infer": Schema({"name": NAME, "threads": THREADS}, payload=MAX_PAYLOAD),
    "run.bench": Schema(
        {
            "name": NAME,
            "threads": THREADS,
            "runs": Int(1, 1 << 20),
            "n_prompt": Int(1, 1 << 20),
            "n_gen": Int(0, 1 << 20),
            "reps": Int(1, 1000),
        }
    ),
    "run.profile": Schema(
        {
            "name": NAME,
            "threads": THREADS,
            "n_prompt": Int(1, 1 << 20),
            "n_gen": Int(0, 1 << 20),
            "reps": Int(1, 1000),
            "dram_budget": DRAM_BUDGET,
            "experts": EXPERTS,
            "ffn": FFN,
            "kv_cache": KV_CACHE,
        }
    ),
    "file.stat": Schema({"path": STAGED_FILE}),
    "file.put": Schema(
        {
            "path": STAGED_FILE,
            "offset": Int(0, MAX_FILE, required=True),
            "crc32": Str("8 lowercase hex digits", re.compile(r"^[0-9a-f]{8}$"), required=True),
            "size": Int(0, MAX_FILE),  # the whole file's, for the space check
        },
        payload=MAX_PAYLOAD,
    ),
    "file.commit": Schema({"staging": STAGED_DIR, "name": NAME}),
    "agent.shutdown": Schema(),
}


def check_fields(where: str, fields: dict, args: dict) -> None:
    """Refuse ``args`` unless each field of ``fields`` is absent (if optional) or as expected,
    naming the field, its value and what was expected."""
    for key, f in fields.items():
        if key not in args:
            if f.required:
                raise RequestError(f"{where}: missing field {key!r} ({f.expected})")
            continue
        v = args[key]
        if v is None and f.null:
            continue
        if not f.ok(v):
            why = f.why(v) if isinstance(f, StagedPath) else ""
            raise RequestError(f"{where}: field {key!r} = {show(v)}{why}: expected {f.expected}")
        if isinstance(f, Obj):
            check_fields(f"{where}.{key}", f.fields, v)


def check_request(action: str, args: dict, frame: Frame) -> None:
    schema = SCHEMAS.get(action)
    if schema is None:  # an extra action without a schema checks its own arguments
        return
    if schema.header is not None and frame.header_bytes > schema.header:
        raise RequestError(
            f"{action}: header of {frame.header_bytes} bytes: expected at most {schema.header}"
        )
    if len(frame.payload) > schema.payload:
        raise RequestError(
            f"{action}: payload of {len(frame.payload)} bytes: "
            + (f"expected at most {schema.payload}" if schema.payload else "expected none")
        )
    check_fields(action, schema.fields, args)


_faults: dict[str, int] = {}


def fault(point: str) -> None:
    """Test hook (see FAULT_ENV): kill this process at ``point`` when the environment asks."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want, _, nth = spec.partition("@")
    if want != point:
        return
    _faults[point] = _faults.get(point, 0) + 1
    if _faults[point] == (int(nth) if nth.isdigit() else 1):
        import signal

        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    """Write ``path``'s data (a file) or entries (a directory) through to the storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(top: Path) -> None:
    for d, _dirs, files in os.walk(top):
        for f in files:
            _fsync(Path(d) / f)
        _fsync(Path(d))


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
        try:
            self.recover()
        except OSError as e:  # a read-only or damaged root: serve what can be served
            log.warning("cannot tidy %s: %s", self.root, e)

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
        if not _valid_id(rid):  # it is echoed in every answer: nothing bigger or deeper
            why = f"request id {show(rid)}: expected {ID_EXPECTED}"
            self.send(Code.ERROR, {"id": None, "error": why})
            return None
        action = frame.header.get("action")
        args = frame.header.get("args", {})
        fn = self.actions.get(action) if isinstance(action, str) else None
        try:
            if fn is None:
                known = ", ".join(self.actions)
                raise RequestError(f"unknown action {show(action)}; known: {known}")
            if not isinstance(args, dict):
                raise RequestError(f"{action}: args = {show(args)}: expected a JSON object")
            check_request(action, args, frame)
            with request_threads(args.get("threads")):  # -t for this request only
                header, payload = fn(self, rid, args, frame.payload)
            reply = encode(Code.REPLY, {"id": rid, **header}, payload)
        except (RequestError, EdgertError) as e:
            self.send(Code.ERROR, {"id": rid, "error": _one_line(str(e))})
            return None
        except Exception as e:
            # a bug, not a bad request: logged with its traceback, answered, and the agent serves on
            log.exception("action %s failed", action)
            self.send(Code.ERROR, {"id": rid, "error": _one_line(f"{type(e).__name__}: {e}")})
            return None
        self.wfile.write(reply)
        self.wfile.flush()
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

    def staged(self, rel: str) -> Path:
        """``ROOT/rel`` for a path the schema let through (``staging/...``), refusing one that a
        link inside the staging area would lead out of it."""
        p = self.inside(rel)
        area = (self.root / "staging").resolve()
        if area not in p.parents:
            raise RequestError(f"path {rel!r} leaves the staging area")
        return p

    @contextmanager
    def lock(self):
        """Serialises commits and start-up tidying between agents sharing a root (an SSH and a
        serial session, two SSH sessions)."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def recover(self) -> None:
        """Remove what an agent killed in the middle of a commit left: the link it was about to
        switch in, a version it had moved into place but not switched to (or the previous one it
        had not yet removed), a plain directory it had moved aside (put back when nothing
        replaced it); and staging directories no deploy touched for STAGING_TTL. Other staged
        files stay: the next deploy resumes from them."""
        arts, versions = self.root / "artifacts", self.root / "versions"
        if not arts.is_dir() and not versions.is_dir() and not (self.root / "staging").is_dir():
            return
        with self.lock():
            if arts.is_dir():
                for p in arts.iterdir():
                    if p.name.startswith(".") and p.name.endswith(".link"):
                        p.unlink()
                    elif p.name.startswith(".") and p.name.endswith(".old"):
                        live = arts / p.name[1:-4]
                        if live.exists() or live.is_symlink():
                            shutil.rmtree(p, ignore_errors=True)
                        else:
                            os.replace(p, live)
            if versions.is_dir():
                used = {p.resolve() for p in arts.iterdir() if p.is_symlink()} if arts.is_dir() \
                    else set()  # fmt: skip
                for v in versions.iterdir():
                    if v.resolve() not in used:
                        shutil.rmtree(v, ignore_errors=True)
            staging = self.root / "staging"
            if staging.is_dir():
                now = time.time()
                for d in staging.iterdir():
                    if d.is_dir() and now - _newest_mtime(d) > STAGING_TTL:
                        shutil.rmtree(d, ignore_errors=True)

    def artifact_dir(self, name: Any) -> Path:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
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


ID_EXPECTED = "an integer in [0, 2**63) or a string of up to 64 characters"


def _valid_id(rid: Any) -> bool:
    if isinstance(rid, bool):
        return False
    return (
        rid is None
        or (isinstance(rid, int) and 0 <= rid < 1 << 63)
        or (isinstance(rid, str) and len(rid) <= 64)
    )


def _one_line(text: str) -> str:
    """An error as one line of bounded length (the reply must fit a frame's header)."""
    text = " ".join(text.split())
    return text if len(text) <= 4000 else text[:3997] + "..."


def _newest_mtime(top: Path) -> float:
    newest = top.stat().st_mtime
    for d, _dirs, files in os.walk(top):
        for f in files:
            try:
                newest = max(newest, (Path(d) / f).stat().st_mtime)
            except OSError:
                pass
    return newest


# -- actions: (agent, request id, args, payload) -> (reply header, reply payload) --------------
def _info(agent: Agent, rid, args, payload):
    return {"info": device_info(agent.root)}, b""


def _list(agent: Agent, rid, args, payload):
    import json

    out = []
    for d in sorted((agent.root / "artifacts").glob("*/manifest.json")):
        if d.parent.name.startswith("."):  # a commit's link before its switch
            continue
        try:
            m = json.loads(d.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(m, dict) or not isinstance(m.get("target", {}), dict):
            continue  # not a manifest this agent wrote (artifact.load would refuse it, naming why)
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
        # as `edgert run` takes them
        opts = {k: args.get(k) for k in ("experts", "ffn", "kv_cache")}
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
    import zipfile

    import numpy as np

    eng = agent.engine(args.get("name"))
    if not hasattr(eng, "inputs"):
        raise RequestError(f"{args.get('name')} is a language model: use run.generate")
    # what the inputs can take, arrays' headers aside: a compressed payload's members may say
    # they unpack to far more (a zip bomb), refused before anything is unpacked
    room = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in eng.inputs) + (1 << 20)
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as z:
            unpacked = sum(i.file_size for i in z.infolist())
        if unpacked > room:
            raise RequestError(
                f"run.infer: the inputs unpack to {unpacked} bytes: expected at most {room} "
                f"(the model's {len(eng.inputs)} inputs)"
            )
        with np.load(io.BytesIO(payload), allow_pickle=False) as f:
            feeds = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise RequestError(f"payload is not an .npz of inputs: {e}") from e
    t = time.perf_counter()
    outs = eng.run(feeds)
    run_ms = (time.perf_counter() - t) * 1e3
    buf = io.BytesIO()
    np.savez(buf, **outs)
    return {"outputs": list(outs), "run_ms": run_ms}, buf.getvalue()


def _stat(agent: Agent, rid, args, payload):
    p = agent.staged(args["path"])
    try:
        if not p.is_file():
            return {"exists": False, "size": 0, "crc32": crc32(b"")}, b""
        size = p.stat().st_size
        return {"exists": True, "size": size, "crc32": crc32_file(p, size)}, b""
    except OSError as e:
        raise RequestError(f"file.stat: cannot read {args['path']}: {e.strerror}") from e


def _put(agent: Agent, rid, args, payload):
    rel, offset, want = args["path"], args["offset"], args["crc32"]
    p = agent.staged(rel)
    if want != crc32(payload):
        raise RequestError(f"chunk at {offset} of {rel} fails its checksum; resend")
    end = offset + len(payload)
    size = args.get("size")
    if size is not None and end > size:
        raise RequestError(f"file.put: chunk of {rel} ends at {end}: expected at most the "
                           f"announced size {size}")  # fmt: skip
    try:
        have = p.stat().st_size if p.is_file() else 0
        if offset > have:
            raise RequestError(
                f"offset {offset} is past the {have} bytes received; resume at {have}"
            )
        p.parent.mkdir(parents=True, exist_ok=True)
        need = max((size if size is not None else end) - have, 0)
        free = shutil.disk_usage(p.parent).free
        if need and need + DISK_MARGIN > free:
            raise RequestError(
                f"no room on the device for {rel}: {need} more bytes and a "
                f"{DISK_MARGIN >> 20} MiB margin needed, {free} bytes free under {agent.root}"
            )
        with open(p, "r+b" if p.is_file() else "wb") as f:
            f.seek(offset)
            if FAULT_ENV in os.environ:  # the test hook: half a chunk on the storage, then killed
                f.write(payload[: len(payload) // 2])
                f.flush()
                fault("put:mid_write")
                f.write(payload[len(payload) // 2 :])
            else:
                f.write(payload)
            f.truncate(end)
    except OSError as e:
        raise RequestError(f"file.put: cannot write {rel}: {e.strerror or e}") from e
    return {"size": end}, b""


def _commit(agent: Agent, rid, args, payload):
    """Verify a staged artifact completely, then switch it into place atomically.

    ``ROOT/artifacts/NAME`` is a symbolic link to ``ROOT/versions/NAME.N``: the switch is one
    rename of a link, done last (after the files and the directories that name them are on the
    storage), so a crash at any point leaves either the previous version or the new one, never
    a mix; :meth:`Agent.recover` removes the rest. Each version keeps its own path, so a process
    that loaded an earlier version's library (which the dynamic loader caches by path) loads the
    new one afresh."""
    from edgert.format.artifact import Artifact

    staging = agent.staged(args["staging"])
    name = args["name"]
    dest = agent.artifact_dir(name)
    try:
        with agent.lock():
            if not staging.is_dir():
                raise RequestError(f"file.commit: nothing staged at {args['staging']}")
            fault("commit:before_rename")
            versions = agent.root / "versions"
            versions.mkdir(parents=True, exist_ok=True)
            version = versions / f"{dest.name}.{time.time_ns()}"
            # out of staging before it is verified: a put arriving now cannot change what runs
            os.replace(staging, version)
            try:
                art = Artifact.open(version)  # schema + resident checksums
                art.verify()  # every buffer, streamed ones too
            except (EdgertError, OSError) as e:  # an upload is not trusted to be well formed
                if staging.exists():
                    shutil.rmtree(version, ignore_errors=True)
                else:  # back where it was: the client can resume and fix it
                    os.replace(version, staging)
                raise RequestError(f"file.commit: {args['staging']}: {e}") from e
            _fsync_tree(version)  # the data on the storage before anything names it
            _fsync(versions)
            _fsync(staging.parent)
            dest.parent.mkdir(parents=True, exist_ok=True)
            previous = dest.resolve() if dest.is_symlink() else None
            link = dest.with_name(f".{dest.name}.link")
            link.unlink(missing_ok=True)
            link.symlink_to(os.path.relpath(version, dest.parent))
            _fsync(dest.parent)
            fault("commit:before_switch")
            if dest.exists() and not dest.is_symlink():  # a plain directory from elsewhere
                old = dest.with_name(f".{dest.name}.old")  # put back by recover() if need be
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dest, old)
                os.replace(link, dest)
                _fsync(dest.parent)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(link, dest)  # the switch
                _fsync(dest.parent)
            fault("commit:after_switch")
            if previous is not None and previous != version:
                shutil.rmtree(previous, ignore_errors=True)  # open files of a loaded copy stay
    except OSError as e:
        raise RequestError(f"file.commit: cannot switch {name} into place: {e}") from e
    agent.loaded.pop(name, None)
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
    init_threads()  # a big.LITTLE CPU: every request's threads on its big cores unless -t says
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
    init_threads()  # as serve_stdio
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
