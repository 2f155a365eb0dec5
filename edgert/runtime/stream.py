"""Running a dense model within a DRAM budget: layers that do not fit stay on flash and are read,
one layer's projections per read, into a few staging buffers while the layers before them compute.

- :func:`parse_size` reads ``--dram-budget`` values (``300M``, ``1.5GiB``, bytes).
- :class:`FlashReader` reads page-aligned spans of an artifact's weight file with ``pread``
  (``O_DIRECT`` where the filesystem allows it, so streamed weights do not pile up in the page
  cache), retrying short reads and I/O errors a bounded number of times, then failing with the
  file and offset — never returning a partly filled buffer.
- :func:`plan_dram` decides which layers stream under a budget (resident tensors + KV cache +
  scratch + staging buffers <= budget) and refuses a budget below the minimum, naming it.
- :class:`LayerStreamer` runs the C forward pass layer range by layer range, swapping a streamed
  layer's weights in from a staging buffer; the next streamed layer is read on an I/O thread
  while the current ones compute. Streaming changes speed, never results: the bytes are the
  artifact's (checksums verified on a layer's first read).
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from edgert.format.artifact import PAGE, ArtifactError, crc32
from edgert.errors import EdgertError
from edgert.runtime.forward import PROJECTIONS  # a layer's projections stream together

READ_CHUNK = 4 << 20
RETRIES = 3
#: tokens per forward call under a budget (the scratch for a batch of 512 would be most of a
#: small model's budget; prompts run in more calls instead)
BUDGET_BATCH = 64


def read_chunk(flash_mbs: float, latency_us: float) -> int:
    """The read request size for a flash: the smallest power of two whose transfer takes 20x the
    per-request latency (latency then costs <= 5% of bandwidth), between 256 KiB and 8 MiB."""
    want = 20 * flash_mbs * 1e6 * latency_us * 1e-6
    chunk = 256 << 10
    while chunk < want and chunk < (8 << 20):
        chunk *= 2
    return chunk


def _flash(art) -> tuple[float, float] | None:
    """(read MB/s, latency us) of the flash of the device ``art`` was compiled for (its target
    file), None where that file is not on this machine."""
    from edgert.format.target import load_target

    try:
        t = load_target(art.target["name"])
    except (EdgertError, KeyError):
        return None
    return t.flash_read_mbs, t.flash_latency_us


def target_chunk(art) -> int:
    """The read size for the target's flash, or :data:`READ_CHUNK` where it is not known."""
    f = _flash(art)
    return READ_CHUNK if f is None else read_chunk(*f)


def target_gap(art) -> int:
    """Bytes the target's flash transfers in one request latency: a gap between two wanted
    ranges shorter than this costs less to read through than to skip with a second request."""
    f = _flash(art)
    return 0 if f is None else int(f[0] * f[1])


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
}


def parse_size(text: str | int) -> int:
    """Bytes from ``123``, ``300M`` / ``300MB`` (10^6), ``1.5GiB`` (2^30)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise EdgertError(
            f"cannot read the size {text!r}", "write it as bytes or with a unit: 300M, 1.5G, 512MiB"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def fmt_size(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


#: a transparent huge page (x86-64 and arm64 with 4 KiB base pages)
HUGE_PAGE = 2 << 20


def aligned_buffer(nbytes: int, *, huge: bool = False) -> np.ndarray:
    """A page-aligned uint8 buffer (anonymous mapping) for O_DIRECT reads, ``nbytes`` rounded up
    to whole pages. With ``huge`` it starts on a :data:`HUGE_PAGE` boundary and is advised for
    transparent huge pages where the OS has them: a stream through it then takes a TLB miss every
    2 MiB instead of every 4 KiB (a 64 MiB fp32 BLAS GEMV reads about 5% faster, the 2-bit LUT
    kernel about 1%; BENCHMARKS.md)."""
    size = max(PAGE, (nbytes + PAGE - 1) // PAGE * PAGE)
    if not huge:
        return np.frombuffer(mmap.mmap(-1, size), np.uint8)
    # private: the OS backs shared anonymous mappings with shmem, which it keeps on 4 KiB pages
    mm = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no transparent huge pages here: 4 KiB pages
        pass
    a = np.frombuffer(mm, np.uint8)
    start = -a.ctypes.data % HUGE_PAGE
    return a[start : start + size]


class FlashError(ArtifactError):
    """A streamed read that failed after its retries."""


@dataclass
class FlashStats:
    bytes: int = 0
    reads: int = 0
    retries: int = 0
    seconds: float = 0.0


class FlashReader:
    """Whole-span reads from one file; thread-safe (``pread`` has no shared offset)."""

    def __init__(
        self, path, *, direct: bool = True, retries: int = RETRIES, chunk: int = READ_CHUNK
    ):
        self.path = str(path)
        self.retries = retries
        self.chunk = chunk
        self.stats = FlashStats()
        self._lock = threading.Lock()
        self.direct = False
        fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
                self.direct = True
            except OSError:  # tmpfs and some others refuse O_DIRECT: buffered reads then
                fd = -1
        if fd < 0:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise FlashError(f"cannot open {self.path}: {e.strerror}") from e
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _pread(self, view: memoryview, offset: int) -> int:
        return os.preadv(self.fd, [view], offset)

    def read_into(self, buf: np.ndarray, offset: int, nbytes: int) -> None:
        """Fill ``buf[:nbytes]`` from ``offset`` (both page-aligned for O_DIRECT)."""
        if self.direct and (offset % PAGE or nbytes % PAGE or buf.ctypes.data % PAGE):
            raise ValueError("O_DIRECT reads need page-aligned offset, size and buffer")
        view = memoryview(buf).cast("B")[:nbytes]
        t0, got, retries = time.perf_counter(), 0, 0
        while got < nbytes:
            piece = view[got : min(nbytes, got + self.chunk)]
            try:
                n = self._pread(piece, offset + got)
                if n <= 0:
                    raise OSError(errno.EIO, "the file ends early (truncated?)")
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EINTR, errno.EAGAIN, None):
                    raise FlashError(
                        f"reading {self.path} at offset {offset + got} failed: {e.strerror}"
                    ) from e
                retries += 1
                if retries > self.retries:
                    raise FlashError(
                        f"reading {self.path} at offset {offset + got} failed after "
                        f"{self.retries} retries: {e.strerror or e}",
                        "check the storage, or copy the artifact again",
                    ) from e
                time.sleep(0.001 * retries)
                continue
            got += n  # a short read continues where it stopped
        if not self.direct:  # keep the page cache from holding what was streamed
            os.posix_fadvise(self.fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        with self._lock:
            s = self.stats
            s.bytes += nbytes
            s.reads += 1
            s.retries += retries
            s.seconds += time.perf_counter() - t0


@dataclass
class Span:
    """Where tensors stored together (a layer's projections, an expert's) lie in a weight file:
    [offset, offset + nbytes), page aligned; each buffer's place relative to offset."""

    key: object  # a layer, or (layer, expert)
    file: str
    offset: int
    nbytes: int
    buffers: dict = field(
        default_factory=dict
    )  # tensor -> part -> (rel, nbytes, dtype, shape, crc)

    def arrays(self, buf: np.ndarray) -> dict[str, list[np.ndarray]]:
        """Each tensor's buffers as views of ``buf`` (the span read into it)."""
        return {
            name: [
                buf[rel : rel + nb].view(np.dtype(dt)).reshape(shape)
                for rel, nb, dt, shape, _crc in parts.values()
            ]
            for name, parts in self.buffers.items()
        }

    def read(self, reader: FlashReader, buf: np.ndarray, verified: set) -> None:
        """Read the span into ``buf``; on its first read (key not in ``verified``), check the
        artifact's checksums of every buffer."""
        reader.read_into(buf, self.offset, self.nbytes)
        if self.key in verified:
            return
        for name, parts in self.buffers.items():
            for rel, nb, _dt, _shape, crc in parts.values():
                if crc32(buf[rel : rel + nb]) != crc:
                    raise ArtifactError(
                        f"{reader.path}: tensor {name} fails its checksum "
                        "(the weight file is corrupt)",
                        "copy or compile the artifact again",
                    )
        verified.add(self.key)


def span_of(art, names: list[str], key) -> Span:
    es = [art.tensors[n] for n in names]
    files = {e["file"] for e in es}
    if len(files) != 1:
        raise ArtifactError(f"{art.path}: {', '.join(names)} span several files")
    lo = min(b["offset"] for e in es for b in e["buffers"].values())
    hi = max(b["offset"] + b["nbytes"] for e in es for b in e["buffers"].values())
    lo -= lo % PAGE
    hi = (hi + PAGE - 1) // PAGE * PAGE
    bufs = {
        n: {
            part: (b["offset"] - lo, b["nbytes"], b["dtype"], tuple(b["shape"]), b["crc32"])
            for part, b in e["buffers"].items()
        }
        for n, e in zip(names, es)
    }
    return Span(key, files.pop(), lo, hi - lo, bufs)


def layer_spans(art, n_layers: int) -> list[Span]:
    """Each layer's projections (written one after another by the compiler)."""
    return [span_of(art, [f"blk.{i}.{p}.weight" for p in PROJECTIONS], i) for i in range(n_layers)]


@dataclass
class DramPlan:
    """What a budget keeps in DRAM. Bytes: ``fixed`` = tensors that never stream (embeddings,
    head, norms) + KV cache + scratch; each layer's projections either resident or streamed
    through ``slots`` staging buffers of the largest streamed span."""

    budget: int | None
    fixed: int
    kv: int
    scratch: int
    layer_bytes: list[int]
    streamed: list[int]
    slots: int
    minimum: int
    max_ctx: int = 0
    #: bytes per flash read request (edgert.runtime.stream.read_chunk of the device's flash)
    chunk: int = READ_CHUNK
    #: never-streamed weights read every token (the head and the norms; not the embedding
    #: table, of which a token reads one row, unless the head shares it)
    head_bytes: int = 0
    #: tokens per forward call the scratch is sized for (longer prompts run in several calls)
    batch: int = 0

    @property
    def staging(self) -> int:
        return self.slots * max((self.layer_bytes[i] for i in self.streamed), default=0)

    @property
    def resident_layers(self) -> int:
        streamed = set(self.streamed)
        return sum(b for i, b in enumerate(self.layer_bytes) if i not in streamed)

    @property
    def planned(self) -> int:
        """Bytes the plan uses (<= budget)."""
        return self.fixed + self.resident_layers + self.staging

    @property
    def streamed_bytes_per_token(self) -> int:
        return sum(self.layer_bytes[i] for i in self.streamed)

    @property
    def weight_bytes_per_token(self) -> int:
        """Weight bytes a decode step reads from DRAM (streamed layers from their staging
        buffers), whatever the budget."""
        return self.head_bytes + sum(self.layer_bytes)

    def flash_reads_per_token(self) -> int:
        return sum(-(-self.layer_bytes[i] // self.chunk) for i in self.streamed)

    def describe(self) -> str:
        return (
            f"dram budget {fmt_size(self.budget)}: plan {fmt_size(self.planned)}, "
            f"{len(self.streamed)} of {len(self.layer_bytes)} layers stream"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            planned=self.planned,
            staging=self.staging,
            streamed_bytes_per_token=self.streamed_bytes_per_token,
            weight_bytes_per_token=self.weight_bytes_per_token,
        )
        return d


def kv_cache_bytes(cfg, max_ctx: int) -> int:
    """The float32 K and V caches of every layer for ``max_ctx`` tokens."""
    return 2 * cfg.n_layers * max_ctx * cfg.n_kv_heads * cfg.head_dim * 4


def resident_besides(art, names) -> dict[str, int]:
    """Bytes of each tensor but ``names`` that a run loads (tensors stored for streaming only,
    like neuron bundles, are never loaded)."""
    return {
        n: e["nbytes"]
        for n, e in art.tensors.items()
        if n not in names and e["residency"] != "streamed"
    }


def touched_per_step(art, resident: dict[str, int]) -> int:
    """Bytes of ``resident`` a step reads: all but the embedding table (a token reads one row),
    unless the head shares it."""
    head = art.manifest.get("plan", {}).get("head") or "output.weight"
    return sum(b for n, b in resident.items() if n == head or n != "token_embd.weight")


def scratch_bytes(cfg, n_batch: int, n_logits: int = 1) -> int:
    """The forward pass's working memory for ``n_batch`` tokens per call: its activation buffers,
    the LUT tables (8 bytes per activation), the embeddings in and ``n_logits`` rows of logits
    out (generation keeps the last row; scoring every position needs n_batch rows)."""
    d, qd, kd, f = cfg.dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_dim
    acts = n_batch * (3 * d + 2 * qd + 2 * kd + 2 * f) * 4
    tables = n_batch * max(d, f) * 8
    return acts + tables + n_logits * cfg.vocab_size * 4


@dataclass
class Fixed:
    """What a plan holds whatever streams: the tensors that never stream (``never`` bytes, of
    which a step reads ``touched``), the KV cache, and the scratch for ``batch`` tokens per call."""

    never: int
    touched: int
    kv: int
    scratch: int
    batch: int

    @property
    def total(self) -> int:
        return self.never + self.kv + self.scratch


def fixed_memory(
    art, cfg, streamed, *, max_ctx: int, budget: int | None, n_batch: int | None = None
) -> Fixed:
    """:class:`Fixed` for a plan that streams the tensors named in ``streamed``."""
    resident = resident_besides(art, streamed)
    batch = budget_batch(budget, n_batch)
    return Fixed(
        never=sum(resident.values()),
        touched=touched_per_step(art, resident),
        kv=kv_cache_bytes(cfg, max_ctx),
        scratch=scratch_bytes(cfg, batch),
        batch=batch,
    )


def span_names(spans) -> set[str]:
    """The tensors ``spans`` hold."""
    return {n for s in spans for n in s.buffers}


def budget_batch(budget: int | None, n_batch: int | None = None) -> int:
    """Tokens per forward call: ``n_batch`` if given, else :data:`BUDGET_BATCH` under a budget and
    the kernels' largest batch without one."""
    from edgert.runtime.kernels import MAX_BATCH

    return n_batch or (BUDGET_BATCH if budget else MAX_BATCH)


def plan_dram(
    art,
    cfg,
    *,
    max_ctx: int,
    budget: int | None,
    n_batch: int | None = None,
    slots: int = 2,
    chunk: int = READ_CHUNK,
) -> DramPlan:
    """Stream the fewest layers that make the budget (spread evenly over the depth, so reads
    overlap resident layers' compute); refuse a budget below the minimum (every layer streamed).
    Under a budget, prompts run :data:`BUDGET_BATCH` tokens per call."""
    spans = layer_spans(art, cfg.n_layers)
    f = fixed_memory(art, cfg, span_names(spans), max_ctx=max_ctx, budget=budget, n_batch=n_batch)
    never, kv, scratch, fixed = f.never, f.kv, f.scratch, f.total
    sizes = [s.nbytes for s in spans]
    minimum = fixed + slots * max(sizes)
    plan = DramPlan(
        budget, fixed, kv, scratch, sizes, [], slots, minimum, max_ctx, chunk, f.touched, f.batch
    )
    if budget is None or fixed + sum(sizes) <= budget:
        return plan
    if budget < minimum:
        raise EdgertError(
            f"--dram-budget {fmt_size(budget)} is below the minimum this artifact needs: "
            f"{fmt_size(minimum)} (tensors that never stream {fmt_size(never)}, KV cache for "
            f"{max_ctx} tokens {fmt_size(kv)}, scratch {fmt_size(scratch)}, {slots} staging "
            f"buffers of {fmt_size(max(sizes))})",
            "raise the budget, or lower the context with --ctx",
        )
    n = cfg.n_layers
    for k in range(1, n + 1):
        streamed = sorted({(j * n) // k + (n // k) // 2 for j in range(k)})
        resident = sum(b for i, b in enumerate(sizes) if i not in streamed)
        if fixed + resident + slots * max(sizes[i] for i in streamed) <= budget:
            plan.streamed = streamed
            return plan
    raise AssertionError("unreachable: the minimum streams every layer")


@dataclass
class StreamStats:
    """Since load: forward calls (a call reads each streamed layer once, so in decode the flash
    bytes per call are the bytes per token), tokens, seconds waiting for reads."""

    calls: int = 0
    tokens: int = 0
    stall_seconds: float = 0.0
    flash: FlashStats = field(default_factory=FlashStats)

    @property
    def bytes_per_call(self) -> float:
        return self.flash.bytes / max(self.calls, 1)

    def describe(self) -> str:
        return (
            f"{fmt_size(self.bytes_per_call)} read from flash per step, "
            f"{self.stall_seconds:.2f} s waiting for reads"
        )

    def to_dict(self) -> dict:
        d = {"calls": self.calls, "tokens": self.tokens, "stall_seconds": self.stall_seconds}
        d.update({f"flash_{k}": v for k, v in asdict(self.flash).items()})
        d["flash_bytes_per_call"] = self.bytes_per_call
        return d


class LayerStreamer:
    """Runs the native forward pass with the plan's streamed layers read from flash."""

    def __init__(self, art, plan: DramPlan, native, *, reader: FlashReader | None = None):
        self.plan = plan
        self.native = native
        self.spans = {s.key: s for s in layer_spans(art, len(plan.layer_bytes))}
        files = {self.spans[i].file for i in plan.streamed}
        if len(files) > 1:
            raise ArtifactError(f"{art.path}: streamed layers span several files")
        self.reader = reader or FlashReader(art.path / files.pop(), chunk=plan.chunk)
        size = max(self.spans[i].nbytes for i in plan.streamed)
        self._free = [aligned_buffer(size) for _ in range(plan.slots)]
        # one read in flight per staging buffer
        self._pool = ThreadPoolExecutor(max_workers=plan.slots, thread_name_prefix="edgert-flash")
        self._pending: dict[int, tuple[Future, np.ndarray]] = {}
        self._order = list(plan.streamed)
        self._next = 0  # index into _order of the next layer to submit
        self._verified: set[int] = set()
        self.stats = StreamStats(flash=self.reader.stats)
        self._fill()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.reader.close()

    def _read(self, layer: int, buf: np.ndarray) -> None:
        self.spans[layer].read(self.reader, buf, self._verified)

    def _fill(self) -> None:
        """Submit reads, in execution order (wrapping to the next step), while buffers are free."""
        while self._free and self._order:
            layer = self._order[self._next]
            if layer in self._pending:
                return
            buf = self._free.pop()
            self._pending[layer] = (self._pool.submit(self._read, layer, buf), buf)
            self._next = (self._next + 1) % len(self._order)

    def forward(self, x, pos, cos, sin, *, threads, last_only, logits, times):
        n_layers = len(self.plan.layer_bytes)
        streamed = set(self.plan.streamed)
        out, i = None, 0
        while i < n_layers:
            if i in streamed:
                t0 = time.perf_counter()
                fut, buf = self._pending.pop(i)
                try:
                    fut.result()
                except BaseException:
                    self._free.append(buf)
                    raise
                self.stats.stall_seconds += time.perf_counter() - t0
                self.native.set_layer(i, self.spans[i].arrays(buf))
                j = i + 1
            else:
                buf, j = None, i
                while j < n_layers and j not in streamed:
                    j += 1
            try:
                out = self.native.forward(
                    x,
                    pos,
                    cos,
                    sin,
                    threads=threads,
                    last_only=last_only,
                    logits=logits and j == n_layers,
                    times=times,
                    layers=(i, j),
                )
            finally:
                if buf is not None:
                    self.native.set_layer(i, None)
                    self._free.append(buf)
                    self._fill()
            x = self.native.last_x
            i = j
        self.stats.calls += 1
        self.stats.tokens += x.shape[0]
        return out
