"""A dense model's FFN on its active neurons only, with the rest on flash ("LLM in a flash"):
the DRAM plan under ``--sparsity`` (the gate projection and everything but the FFN's up/down
projections resident; a window cache of neuron bundles in the rest of the budget), the window
cache's decisions (:class:`WindowPolicy`: which bundles are cached, which pages a layer reads),
and the replay of the compiler's activity trace through it for the cost model.

At run time (edgert.runtime.neurons) the C forward pass computes the gate, picks the neurons
above the layer's threshold, and asks the cache for their bundles: those used recently are in
DRAM (least recently active neurons are evicted when the budget's slots run out, or once they
were idle ``window`` tokens), the rest are read from flash in page runs (runs closer than a
flash latency's worth of bytes are read as one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgert.errors import EdgertError
from edgert.format import names
from edgert.format.artifact import PAGE
from edgert.format.bundles import SparseSpec
from edgert.format.kvcache import DEFAULT as DEFAULT_KV
from edgert.plan.moe import TRACE_WARMUP
from edgert.plan.sizes import BUDGET_HINT, READ_CHUNK, fixed_memory, fmt_size
from edgert.plan.stats import SparseStats


def ffn_tensors(cfg) -> set[str]:
    """The dense up/down projections the bundles stand in for (never loaded under --sparsity)."""
    return {names.weight(i, p) for i in range(cfg.n_layers) for p in ("ffn_up", "ffn_down")}


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
    #: reads of page runs closer than this are joined (what the flash moves in one latency)
    gap_bytes: int = 0
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
    chunk: int = READ_CHUNK,
    gap_bytes: int = 0,
    trace: dict | None = None,
    kv=DEFAULT_KV,
) -> SparsePlan:
    """The window cache the budget leaves room for; refuse a budget below the minimum (no cache).
    With ``trace`` (``levels``: the artifact's activity trace, ``order``: its bundles' file order
    per layer), what the cache will read is replayed (``chunk``, ``gap_bytes``: the flash's read
    size and the gap worth reading through, as the run's cache reads)."""
    spec = SparseSpec.of(art)
    spec.thresholds_for(sparsity)
    ffn = ffn_tensors(cfg)
    f = fixed_memory(
        art, cfg, ffn, max_ctx=max_ctx, budget=budget, n_batch=n_batch, sparse=True, kv=kv
    )
    never, touched, kv, scratch, batch = f.never, f.touched, f.kv, f.scratch, f.batch
    B = spec.fmt.nbytes
    staging = _layer_pages(cfg.ffn_dim, B) * PAGE
    fixed = f.total + staging
    neurons = cfg.n_layers * cfg.ffn_dim
    dense = sum(art.tensors[n]["nbytes"] for n in ffn if n in art.tensors)
    slots = neurons if not budget else max(0, min(neurons, (budget - fixed) // B))
    plan = SparsePlan(
        budget, sparsity, int(window), fixed, kv, scratch, staging, B, slots, neurons,
        max_ctx, dense, touched, batch, cfg.n_layers, chunk, int(gap_bytes),
    )  # fmt: skip
    if budget and budget < fixed:
        raise EdgertError(
            f"--dram-budget {fmt_size(budget)} is below the minimum for --sparsity: "
            f"{fmt_size(fixed)} (resident tensors {fmt_size(never)}, KV cache for {max_ctx} "
            f"tokens {fmt_size(kv)}, scratch {fmt_size(scratch)}, staging {fmt_size(staging)})",
            BUDGET_HINT,
        )
    if trace is not None:
        plan.replayed = replay_activity(art, cfg, plan, trace["levels"], trace["order"])
    return plan


def _layer_pages(ffn_dim: int, bundle_bytes: int) -> int:
    """Pages one layer's bundles span (each layer's start is page aligned)."""
    return -(-ffn_dim * bundle_bytes // PAGE) + 1


class WindowPolicy:
    """The window cache's decisions for bundles of ``bundle_bytes`` in ``plan.slots`` slots:
    which neurons are cached (a slot per neuron, least recently used evicted first, idle ones
    released after ``plan.window`` steps), and which page runs of a layer's bundles a step reads
    for those it misses (``order``: the neuron at each file position per layer; ``offsets``: where
    each layer's bundles start in the weight file; runs closer than ``plan.gap_bytes`` are
    joined).

    Reads are a subclass's (:meth:`_read_pages`, :meth:`_verify`, :meth:`_store`) and so are the
    addresses :meth:`fetch` hands out (``base``: the cache's, ``staging_base``: the staging
    area's); here nothing is read and the counters say what would be."""

    def __init__(self, cfg, plan: SparsePlan, bundle_bytes: int, order: np.ndarray, offsets):
        self.plan = plan
        self.cfg = cfg
        L, f, B = cfg.n_layers, cfg.ffn_dim, bundle_bytes
        order = np.asarray(order).astype(np.int64)  # (L, f): neuron at each file position
        self.pos_of = np.empty_like(order)
        rows = np.arange(L)[:, None]
        self.pos_of[rows, order] = np.arange(f)[None, :]
        self.offsets = list(offsets)
        self.gap_pages = max(0, plan.gap_bytes // PAGE)
        self.chunk = plan.chunk
        self.B = B
        self.slots = plan.slots
        self.base = self.staging_base = 0
        self.slot_of = np.full((L, f), -1, np.int64)
        self.owner = np.full(self.slots, -1, np.int64)  # layer * f + neuron
        self.last = np.full(self.slots, -1, np.int64)  # step the slot was last used
        self.free = np.arange(self.slots - 1, -1, -1, dtype=np.int64)
        self.n_free = self.slots
        self.step = 0
        self.stats = SparseStats(all_bytes=L * f * B, neurons=L * f)
        self.decoding = False

    # -- reads: none here ----------------------------------------------------------------------
    def _read_pages(self, layer: int, runs: list[tuple[int, int]]) -> None:
        """Read the page runs of ``layer``'s bundles into the staging area."""

    def _verify(self, layer: int, ids: np.ndarray, pos: np.ndarray, rel: np.ndarray) -> None:
        """Check the bundles just read against their checksums."""

    def _store(self, layer: int, slots: np.ndarray, pos: np.ndarray) -> None:
        """Copy the bundles at file positions ``pos`` from the staging area into ``slots``."""

    # -- the cache ---------------------------------------------------------------------------
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
            # read requests: a reader splits each run in chunks
            self.stats.decode_requests += sum(-(-(b - a + 1) * PAGE // self.chunk) for a, b in runs)
        self._read_pages(layer, runs)

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
            ids = neurons[miss].astype(np.int64)
            pos = self.pos_of[layer, ids]
            srt = np.argsort(pos, kind="stable")
            ids, pos, miss = ids[srt], pos[srt], miss[srt]
            self._read_runs(layer, self._runs(layer, pos))
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
            addr[miss[k:]] = self.staging_base + rel[k:]
        out[:] = addr.astype(np.uint64)


def bundle_offsets(art, n_layers: int) -> list[int]:
    """Where each layer's bundles start in their weight file."""
    return [art.tensors[names.bundles(i)]["buffers"]["data"]["offset"] for i in range(n_layers)]


def replay_activity(art, cfg, plan: SparsePlan, levels: np.ndarray, order: np.ndarray) -> dict:
    """The activity trace ``levels`` (steps, layers, ffn_dim: how many calibrated thresholds each
    neuron passes, one decode step per token, as a run decodes) through a window cache of
    ``plan``'s slots and window over bundles stored in file ``order``, counted after
    :data:`TRACE_WARMUP` steps: per step the active neurons, the share of them cached, and the
    bytes and read requests from flash."""
    spec = SparseSpec.of(art)
    k = spec.index_of(plan.sparsity)  # active at it: level > k
    offsets = bundle_offsets(art, cfg.n_layers)
    rc = WindowPolicy(cfg, plan, spec.fmt.nbytes, order, offsets)
    out = np.empty(cfg.ffn_dim, np.uint64)
    keys = ("decode_active", "decode_hits", "decode_bytes", "decode_requests")
    for step, lv in enumerate(levels):
        if step == TRACE_WARMUP:
            start = {n: getattr(rc.stats, n) for n in keys}
        rc.begin_step(1)
        for i in range(cfg.n_layers):
            ids = np.flatnonzero(lv[i] > k)
            rc.fetch(i, ids, out[: len(ids)])
    steps = len(levels) - TRACE_WARMUP
    if steps <= 0:
        raise EdgertError(f"{art.path}: the activity trace has only {len(levels)} steps")
    d = {n: (getattr(rc.stats, n) - start[n]) / steps for n in keys}
    return {
        "steps": steps,
        "active_per_token": d["decode_active"],
        "hit_rate": d["decode_hits"] / max(d["decode_active"], 1e-9),
        "bytes_per_token": d["decode_bytes"],
        "requests_per_token": d["decode_requests"],
    }
