"""A dense model's FFN on its active neurons only, with the rest on flash ("LLM in a flash").

At compile time (``edgert compile --sparse-ffn``) each layer's FFN is also written as neuron
bundles: neuron j's up-projection row and down-projection column side by side (one read brings
both), quantized per group along the model dimension (:func:`pack_bundles`), in order of how often
calibration text activated them (hot neurons share pages). Per layer and per target sparsity the
compiler records the threshold on |silu(gate x)| that leaves that fraction of neurons off.

At run time (``--sparsity S``) the gate projection stays resident; the C forward pass computes it,
picks the neurons above the layer's threshold, and asks :class:`NeuronCache` for their bundles:
those used recently are in DRAM (the window cache: least recently active neurons are evicted when
the budget's slots run out, or once they were idle ``window`` tokens), the rest are read from flash
in page runs (runs closer than a flash latency's worth of bytes are read as one). Bundles are
verified against their checksums on first read.

Sparsity changes results (the skipped neurons' contribution is dropped; the bundles are their own
quantization of the same weights); the cache size never does.
"""

from __future__ import annotations

import ctypes
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from edgert.format.artifact import PAGE, ArtifactError
from edgert.errors import EdgertError
from edgert.runtime.stream import (
    READ_CHUNK,
    FlashReader,
    StreamStats,
    aligned_buffer,
    fixed_memory,
    fmt_size,
    target_chunk,
    target_gap,
)

BUNDLE_BITS = (2, 4, 8)
#: target sparsities the compiler calibrates thresholds for (0: every neuron, through the bundles)
SPARSITIES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


def bundle_name(layer: int) -> str:
    return f"blk.{layer}.ffn_bundles"


def ffn_tensors(cfg) -> set[str]:
    """The dense up/down projections the bundles stand in for (never loaded under --sparsity)."""
    return {f"blk.{i}.ffn_{p}.weight" for i in range(cfg.n_layers) for p in ("up", "down")}


INDEX = "ffn_bundle_index"  # resident: per layer and file position, the neuron and its crc32
#: the compiler's record of the neurons decode activates (edgert.compiler.transform.sparsify.calibrate),
#: replayed by the planner through the window cache to predict its reads
ACTIVITY = "ffn_activity_trace"


@dataclass(frozen=True)
class BundleFormat:
    """Neuron j's bundle: up row then down column, ``dim_pad`` ``bits``-bit codes each, then per
    group a float16 scale and minimum for each (w = scale * q + min); see edgert_forward.h."""

    dim: int
    bits: int
    group: int

    @property
    def dim_pad(self) -> int:
        return -(-self.dim // self.group) * self.group

    @property
    def groups(self) -> int:
        return self.dim_pad // self.group

    @property
    def code_bytes(self) -> int:
        return self.dim_pad * self.bits // 8

    @property
    def nbytes(self) -> int:
        return 2 * self.code_bytes + 8 * self.groups

    @classmethod
    def for_layer_bits(cls, dim: int, bits: int, group: int) -> BundleFormat:
        """The bundle width for layers of ``bits`` (1 -> 2, 3 -> 4: codes stay whole per byte)."""
        return cls(dim, next(b for b in BUNDLE_BITS if b >= bits), group)


def _quantize_rows(w: np.ndarray, fmt: BundleFormat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w (r, dim) -> codes (r, dim_pad) uint8, scale and min (r, groups) float16."""
    r = w.shape[0]
    wp = np.zeros((r, fmt.dim_pad), np.float32)
    wp[:, : fmt.dim] = w
    g = wp.reshape(r, fmt.groups, fmt.group)
    lo, hi = g.min(axis=2), g.max(axis=2)
    top = (1 << fmt.bits) - 1
    scale = ((hi - lo) / top).astype(np.float16)
    mn = lo.astype(np.float16)
    s32 = scale.astype(np.float32)
    safe = np.where(s32 > 0, s32, 1.0)
    q = np.rint((g - mn.astype(np.float32)[..., None]) / safe[..., None])
    codes = np.clip(q, 0, top).astype(np.uint8).reshape(r, fmt.dim_pad)
    return codes, scale, mn


def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    c = codes.reshape(codes.shape[0], -1, per).astype(np.uint16)
    out = np.zeros(c.shape[:2], np.uint16)
    for j in range(per):
        out |= c[..., j] << (bits * j)
    return out.astype(np.uint8)


def _unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * j)) & mask for j in range(per)]
    return np.stack(parts, axis=-1).reshape(packed.shape[0], -1)


def pack_bundles(up: np.ndarray, down: np.ndarray, fmt: BundleFormat) -> np.ndarray:
    """up (f, dim), down (dim, f) float -> (f, fmt.nbytes) uint8 bundles."""
    uc, us, um = _quantize_rows(np.asarray(up, np.float32), fmt)
    dc, ds, dm = _quantize_rows(np.asarray(down, np.float32).T, fmt)
    parts = [_pack_codes(uc, fmt.bits), _pack_codes(dc, fmt.bits)]
    parts += [a.view(np.uint8) for a in (us, um, ds, dm)]
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def unpack_bundles(b: np.ndarray, fmt: BundleFormat) -> tuple[np.ndarray, np.ndarray]:
    """The float weights bundles hold: up (f, dim), down (dim, f)."""
    cb, g = fmt.code_bytes, fmt.groups
    f16 = b[:, 2 * cb :].view(np.float16).astype(np.float32)
    out = []
    for i in range(2):
        codes = _unpack_codes(b[:, i * cb : (i + 1) * cb], fmt.bits).astype(np.float32)
        scale, mn = f16[:, 2 * i * g : (2 * i + 1) * g], f16[:, (2 * i + 1) * g : (2 * i + 2) * g]
        w = codes.reshape(-1, g, fmt.group) * scale[..., None] + mn[..., None]
        out.append(w.reshape(-1, fmt.dim_pad)[:, : fmt.dim])
    return out[0], np.ascontiguousarray(out[1].T)


@dataclass
class SparseSpec:
    """What the compiler wrote (the manifest's ``sparse_ffn``)."""

    fmt: BundleFormat
    sparsities: list[float]
    thresholds: list[list[float]]  # [sparsity][layer]
    calib_tokens: int = 0

    @classmethod
    def of(cls, art) -> SparseSpec:
        d = art.manifest.get("sparse_ffn")
        if not d:
            raise EdgertError(
                f"{art.path} has no neuron bundles for --sparsity",
                "compile it with `edgert compile ... --sparse-ffn`",
            )
        fmt = BundleFormat(d["dim"], d["bits"], d["group"])
        return cls(fmt, list(d["sparsities"]), d["thresholds"], d.get("calib_tokens", 0))

    def thresholds_for(self, sparsity: float) -> list[float]:
        return self.thresholds[self.index_of(sparsity)]

    def index_of(self, sparsity: float) -> int:
        """Where ``sparsity`` is among the calibrated ones (an error naming them if nowhere)."""
        for k, s in enumerate(self.sparsities):
            if abs(s - sparsity) < 1e-9:
                return k
        have = ", ".join(f"{s:g}" for s in self.sparsities)
        raise EdgertError(
            f"--sparsity {sparsity:g} was not calibrated for this artifact (it has {have})",
            "pick one of those",
        )


@dataclass
class SparsePlan:
    """DRAM under --sparsity: ``fixed`` = every tensor but the FFN up/down projections + KV cache
    + scratch + a staging area of one layer's bundles; the rest of the budget caches bundles
    (``slots`` of them; all of them without a budget)."""

    budget: int | None
    sparsity: float
    window: int
    fixed: int
    kv: int
    scratch: int
    staging: int
    bundle_bytes: int
    slots: int
    neurons: int  # bundles in all (layers x ffn_dim)
    max_ctx: int = 0
    #: FFN up/down bytes of the dense layers (what streaming whole layers would read)
    dense_ffn_bytes: int = 0
    #: weights a step reads from DRAM besides bundles (attention, gate, head, norms)
    resident_touched: int = 0
    #: tokens per forward call (the scratch is sized for it)
    batch: int = 0
    n_layers: int = 0
    chunk: int = READ_CHUNK
    #: the compiler's activity trace replayed through the window cache
    #: (:func:`replay_activity`): per decode step, the active neurons, the bytes and requests
    #: read from flash; None: no trace (a share 1 - sparsity active, the cache hitting as often
    #: as it holds a neuron, is assumed)
    replayed: dict | None = None
    #: a layer's reads wait for its gate (which picks the neurons): nothing overlaps compute
    reads_wait = True

    @property
    def minimum(self) -> int:
        """The plan with no cache: every active neuron read each step."""
        return self.fixed

    @property
    def active_per_token(self) -> float:
        """Neurons a decode step computes (over all layers)."""
        if self.replayed is not None:
            return self.replayed["active_per_token"]
        return self.neurons * (1.0 - self.sparsity)

    @property
    def weight_bytes_per_token(self) -> int:
        """Weight bytes a decode step reads from DRAM: resident ones and the active bundles."""
        return self.resident_touched + int(self.active_per_token * self.bundle_bytes)

    @property
    def streamed_bytes_per_token(self) -> int:
        """Expected flash bytes per decode step (whole pages)."""
        if self.replayed is not None:
            return int(self.replayed["bytes_per_token"])
        miss = 1.0 - min(1.0, self.slots / max(self.neurons, 1))
        return int(self.active_per_token * miss * self.bundle_bytes)

    def flash_reads_per_token(self) -> int:
        if self.replayed is not None:
            return round(self.replayed["requests_per_token"])
        per_layer = self.streamed_bytes_per_token / max(self.n_layers, 1)
        return self.n_layers * -(-int(per_layer) // self.chunk)

    @property
    def planned(self) -> int:
        return self.fixed + self.slots * self.bundle_bytes

    @property
    def all_bundle_bytes(self) -> int:
        return self.neurons * self.bundle_bytes

    def describe(self) -> str:
        b = "no budget" if not self.budget else f"dram budget {fmt_size(self.budget)}"
        return (
            f"{b}: sparsity {self.sparsity:g}, FFN neuron bundles on flash "
            f"({fmt_size(self.all_bundle_bytes)}), window cache of {self.slots} of "
            f"{self.neurons} neurons ({fmt_size(self.slots * self.bundle_bytes)})"
            + (f", idle after {self.window} tokens" if self.window else "")
            + f"; plan {fmt_size(self.planned)}"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(planned=self.planned, minimum=self.minimum, all_bundle_bytes=self.all_bundle_bytes)
        return d


def plan_sparse(
    art,
    cfg,
    *,
    max_ctx: int,
    budget: int | None,
    sparsity: float,
    window: int = 0,
    n_batch: int | None = None,
    gap_bytes: int | None = None,
) -> SparsePlan:
    """The window cache the budget leaves room for; refuse a budget below the minimum (no cache).
    With the artifact's activity trace, what the cache will read is replayed (``gap_bytes``: as
    :class:`NeuronCache` joins reads; the target's by default)."""
    spec = SparseSpec.of(art)
    spec.thresholds_for(sparsity)
    ffn = ffn_tensors(cfg)
    f = fixed_memory(art, cfg, ffn, max_ctx=max_ctx, budget=budget, n_batch=n_batch)
    never, touched, kv, scratch, batch = f.never, f.touched, f.kv, f.scratch, f.batch
    B = spec.fmt.nbytes
    staging = _layer_pages(cfg.ffn_dim, B) * PAGE
    fixed = f.total + staging
    neurons = cfg.n_layers * cfg.ffn_dim
    dense = sum(art.tensors[n]["nbytes"] for n in ffn if n in art.tensors)
    slots = neurons if not budget else max(0, min(neurons, (budget - fixed) // B))
    plan = SparsePlan(
        budget, sparsity, int(window), fixed, kv, scratch, staging, B, slots, neurons,
        max_ctx, dense, touched, batch, cfg.n_layers, target_chunk(art),
    )  # fmt: skip
    if budget and budget < fixed:
        raise EdgertError(
            f"--dram-budget {fmt_size(budget)} is below the minimum for --sparsity: "
            f"{fmt_size(fixed)} (resident tensors {fmt_size(never)}, KV cache for {max_ctx} "
            f"tokens {fmt_size(kv)}, scratch {fmt_size(scratch)}, staging {fmt_size(staging)})",
            "raise the budget, or lower the context with --ctx",
        )
    if ACTIVITY in art.tensors:
        gap = target_gap(art) if gap_bytes is None else int(gap_bytes)
        plan.replayed = replay_activity(art, cfg, plan, gap_bytes=gap)
    return plan


def _layer_pages(ffn_dim: int, bundle_bytes: int) -> int:
    """Pages one layer's bundles span (each layer's start is page aligned)."""
    return -(-ffn_dim * bundle_bytes // PAGE) + 1


@dataclass
class SparseStats(StreamStats):
    """What :class:`edgert.runtime.stream.StreamStats` counts, and: neurons asked for (summed over
    layers), how many of them the window cache held; ``decode_*`` count the single-token calls
    only (prompts read more: a batch's tokens activate more neurons)."""

    active: int = 0
    hits: int = 0
    layer_calls: int = 0
    decode_calls: int = 0
    decode_active: int = 0
    decode_hits: int = 0
    decode_bytes: int = 0
    decode_requests: int = 0
    #: bytes of every bundle (reading all neurons of every layer), and their number
    all_bytes: int = 0
    neurons: int = 0

    @property
    def bytes_per_call(self) -> float:
        """Flash bytes per decode step (per call when nothing was decoded yet)."""
        if self.decode_calls:
            return self.decode_bytes / self.decode_calls
        return super().bytes_per_call

    @property
    def hit_rate(self) -> float:
        if self.decode_calls:
            return self.decode_hits / max(self.decode_active, 1)
        return self.hits / max(self.active, 1)

    @property
    def active_fraction(self) -> float:
        """Active neurons per layer and token over ffn_dim, decode steps."""
        return self.decode_active / max(self.decode_calls * self.neurons, 1)

    @property
    def flash_fraction(self) -> float:
        """Flash bytes per decode step over all bundles' bytes."""
        return self.bytes_per_call / self.all_bytes if self.all_bytes else 0.0

    def describe(self) -> str:
        return (
            f"{fmt_size(self.bytes_per_call)} read from flash per token "
            f"({100 * self.flash_fraction:.1f}% of the bundles), "
            f"{100 * self.active_fraction:.0f}% of neurons active, "
            f"{100 * self.hit_rate:.1f}% of them in the window cache, "
            f"{self.stall_seconds:.2f} s waiting for reads"
        )

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update({k: v for k, v in asdict(self).items() if k != "flash"})
        d.update(
            neuron_hit_rate=self.hit_rate,
            active_fraction=self.active_fraction,
            flash_fraction=self.flash_fraction,
        )
        return d


_FETCH = ctypes.CFUNCTYPE(
    ctypes.c_int32,
    ctypes.c_void_p,
    ctypes.c_int32,
    ctypes.POINTER(ctypes.c_int32),
    ctypes.c_int64,
    ctypes.POINTER(ctypes.c_uint64),
)


class NeuronCache:
    """The window cache of neuron bundles and the flash reads that fill it; ``callback`` is what
    the C forward pass calls per sparse layer (see edgert_forward.h)."""

    def __init__(self, art, cfg, plan: SparsePlan, *, workers: int = 2, gap_bytes: int = 0):
        self.plan = plan
        self.cfg = cfg
        spec = SparseSpec.of(art)
        self.fmt = spec.fmt
        self.thresholds = spec.thresholds_for(plan.sparsity)
        L, f, B = cfg.n_layers, cfg.ffn_dim, self.fmt.nbytes
        index = art.read_tensor(INDEX)
        order = index["order"].astype(np.int64)  # (L, f): neuron at each file position
        self.crc = index["crc"]  # (L, f) by file position
        self.pos_of = np.empty_like(order)
        rows = np.arange(L)[:, None]
        self.pos_of[rows, order] = np.arange(f)[None, :]
        files = {art.tensors[bundle_name(i)]["file"] for i in range(L)}
        if len(files) != 1:
            raise ArtifactError(f"{art.path}: neuron bundles span several files")
        self.offsets = [art.tensors[bundle_name(i)]["buffers"]["data"]["offset"] for i in range(L)]
        self.reader = FlashReader(art.path / files.pop(), chunk=target_chunk(art))
        self.gap_pages = max(0, gap_bytes // PAGE)
        self.B = B
        self.staging = aligned_buffer(plan.staging)
        self.slots = plan.slots
        self.cache = aligned_buffer(max(1, self.slots) * B)
        self.base = self.cache.ctypes.data
        self._cache_rows = self.cache[: self.slots * B].reshape(self.slots, B)
        self.slot_of = np.full((L, f), -1, np.int64)
        self.owner = np.full(self.slots, -1, np.int64)  # layer * f + neuron
        self.last = np.full(self.slots, -1, np.int64)  # step the slot was last used
        self.free = np.arange(self.slots - 1, -1, -1, dtype=np.int64)
        self.n_free = self.slots
        self.verified = np.zeros((L, f), bool)
        self.step = 0
        self.stats = SparseStats(flash=self.reader.stats, all_bytes=L * f * B, neurons=L * f)
        self.decoding = False
        self.error: BaseException | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgert-neurons")
        self.workers = workers
        self.callback = _FETCH(self._fetch)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.reader.close()

    def begin_step(self, n_tokens: int) -> None:
        """A forward call starts: neurons idle for ``window`` steps leave the cache."""
        self.step += 1
        self.stats.calls += 1
        self.stats.tokens += n_tokens
        self.decoding = n_tokens == 1
        self.stats.decode_calls += self.decoding
        w = self.plan.window
        if w and self.slots:
            old = np.flatnonzero((self.owner >= 0) & (self.last <= self.step - w))
            self._release(old)

    def _release(self, slots: np.ndarray) -> None:
        if not len(slots):
            return
        f = self.cfg.ffn_dim
        own = self.owner[slots]
        self.slot_of[own // f, own % f] = -1
        self.owner[slots] = -1
        self.free[self.n_free : self.n_free + len(slots)] = slots
        self.n_free += len(slots)

    def _take(self, m: int) -> np.ndarray:
        """Up to m slots, evicting the least recently used that this step has not used."""
        if self.n_free < m:
            old = np.flatnonzero((self.owner >= 0) & (self.last < self.step))
            want = min(len(old), max(m - self.n_free, self.slots // 16))
            if want < len(old):
                old = old[np.argpartition(self.last[old], want - 1)[:want]]
            self._release(old)
        k = min(m, self.n_free)
        got = self.free[self.n_free - k : self.n_free].copy()
        self.n_free -= k
        return got

    def _runs(self, layer: int, pos: np.ndarray) -> list[tuple[int, int]]:
        """Page runs [first, last] (relative to the layer's first page) holding the bundles at
        file positions ``pos`` (sorted), joined across gaps of up to gap_pages."""
        start = self.offsets[layer]
        first_page = start // PAGE
        lo = (start + pos * self.B) // PAGE - first_page
        hi = (start + (pos + 1) * self.B - 1) // PAGE - first_page  # sorted too
        # a run ends where the next bundle starts more than gap_pages past its last page
        cut = np.flatnonzero(lo[1:] > hi[:-1] + 1 + self.gap_pages)
        return list(zip(lo[np.r_[0, cut + 1]].tolist(), hi[np.r_[cut, len(hi) - 1]].tolist()))

    def _read_runs(self, layer: int, runs: list[tuple[int, int]]) -> None:
        """Count a decode step's reads (bytes, requests), then read."""
        if self.decoding:
            self.stats.decode_bytes += sum(b - a + 1 for a, b in runs) * PAGE
            # read requests: the reader splits each run in chunks
            self.stats.decode_requests += sum(
                -(-(b - a + 1) * PAGE // self.reader.chunk) for a, b in runs
            )
        self._read_pages(layer, runs)

    def _read_pages(self, layer: int, runs: list[tuple[int, int]]) -> None:
        """Read the page runs into the staging area (on the I/O threads)."""
        first = self.offsets[layer] // PAGE * PAGE

        def read(part):
            for a, b in part:
                self.reader.read_into(
                    self.staging[a * PAGE : (b + 1) * PAGE], first + a * PAGE, (b - a + 1) * PAGE
                )

        if len(runs) == 1 or self.workers == 1:
            read(runs)
            return
        parts = [runs[i :: self.workers] for i in range(self.workers)]
        for fut in [self._pool.submit(read, p) for p in parts if p]:
            fut.result()

    def _store(self, layer: int, slots: np.ndarray, pos: np.ndarray) -> None:
        """Copy the bundles at file positions ``pos`` from the staging area into ``slots``."""
        first = self.offsets[layer] % PAGE
        rows = np.lib.stride_tricks.as_strided(  # the layer's bundles as rows (read ones used)
            self.staging[first:], shape=(self.cfg.ffn_dim, self.B), strides=(self.B, 1)
        )
        self._cache_rows[slots] = rows[pos]

    def _fetch(self, _ctx, layer, neurons_p, count, out_p) -> int:
        try:
            self.fetch(int(layer), np.ctypeslib.as_array(neurons_p, (int(count),)),
                       np.ctypeslib.as_array(out_p, (int(count),)))  # fmt: skip
            return 0
        except BaseException as e:  # noqa: BLE001 - reported by the forward pass's caller
            self.error = e
            return 1

    def fetch(self, layer: int, neurons: np.ndarray, out: np.ndarray) -> None:
        """Bundle addresses of ``neurons`` (layer's neuron ids) into ``out`` (uint64)."""
        st = self.stats
        st.layer_calls += 1
        st.active += len(neurons)
        slots = self.slot_of[layer, neurons]
        hit = slots >= 0
        n_hit = int(hit.sum())
        st.hits += n_hit
        if self.decoding:
            st.decode_active += len(neurons)
            st.decode_hits += n_hit
        self.last[slots[hit]] = self.step
        addr = self.base + slots * self.B
        miss = np.flatnonzero(~hit)
        if len(miss):
            t0 = time.perf_counter()
            ids = neurons[miss].astype(np.int64)
            pos = self.pos_of[layer, ids]
            srt = np.argsort(pos, kind="stable")
            ids, pos, miss = ids[srt], pos[srt], miss[srt]
            self._read_runs(layer, self._runs(layer, pos))
            st.stall_seconds += time.perf_counter() - t0
            rel = self.offsets[layer] % PAGE + pos * self.B
            self._verify(layer, ids, pos, rel)
            got = self._take(len(ids))
            k = len(got)
            if k:
                self._store(layer, got, pos[:k])
                self.slot_of[layer, ids[:k]] = got
                self.owner[got] = layer * self.cfg.ffn_dim + ids[:k]
                self.last[got] = self.step
                addr[miss[:k]] = self.base + got * self.B
            # what does not fit is used from the staging area (valid until the next layer)
            addr[miss[k:]] = self.staging.ctypes.data + rel[k:]
        out[:] = addr.astype(np.uint64)

    def _verify(self, layer: int, ids: np.ndarray, pos: np.ndarray, rel: np.ndarray) -> None:
        todo = np.flatnonzero(~self.verified[layer, ids])
        for i in todo.tolist():
            r = int(rel[i])
            got = zlib.crc32(self.staging[r : r + self.B])
            if got != int(self.crc[layer, pos[i]]):
                raise ArtifactError(
                    f"{self.reader.path}: neuron {int(ids[i])} of layer {layer} fails its "
                    "checksum (the weight file is corrupt)",
                    "copy or compile the artifact again",
                )
        self.verified[layer, ids[todo]] = True


class _ReplayNeuronCache(NeuronCache):
    """The window cache's policy without reads: what a run would read is counted."""

    def _read_pages(self, layer: int, runs: list[tuple[int, int]]) -> None:
        pass

    def _verify(self, layer: int, ids: np.ndarray, pos: np.ndarray, rel: np.ndarray) -> None:
        pass

    def _store(self, layer: int, slots: np.ndarray, pos: np.ndarray) -> None:
        pass


def replay_activity(art, cfg, plan: SparsePlan, *, gap_bytes: int) -> dict:
    """The artifact's activity trace (one decode step per token, as a run decodes) through a
    window cache of ``plan``'s slots and window, counted after :data:`TRACE_WARMUP` steps: per
    step the active neurons, the share of them cached, and the bytes and read requests from
    flash."""
    from edgert.runtime.experts import TRACE_WARMUP

    levels = art.read_tensor(ACTIVITY)["levels"]  # (steps, layers, ffn_dim)
    k = SparseSpec.of(art).index_of(plan.sparsity)  # active at it: level > k
    rc = _ReplayNeuronCache(art, cfg, plan, workers=1, gap_bytes=gap_bytes)
    out = np.empty(cfg.ffn_dim, np.uint64)
    keys = ("decode_active", "decode_hits", "decode_bytes", "decode_requests")
    try:
        for step, lv in enumerate(levels):
            if step == TRACE_WARMUP:
                start = {n: getattr(rc.stats, n) for n in keys}
            rc.begin_step(1)
            for i in range(cfg.n_layers):
                ids = np.flatnonzero(lv[i] > k)
                rc.fetch(i, ids, out[: len(ids)])
    finally:
        rc.close()
    steps = len(levels) - TRACE_WARMUP
    if steps <= 0:
        raise ArtifactError(f"{art.path}: the activity trace has only {len(levels)} steps")
    d = {n: (getattr(rc.stats, n) - start[n]) / steps for n in keys}
    return {
        "steps": steps,
        "active_per_token": d["decode_active"],
        "hit_rate": d["decode_hits"] / max(d["decode_active"], 1e-9),
        "bytes_per_token": d["decode_bytes"],
        "requests_per_token": d["decode_requests"],
    }
