"""A mixture of experts within a DRAM budget: everything but the experts stays resident; experts
are read from flash on activation into a bounded cache, and the experts the next layer will want
are predicted while the current layer computes and read ahead.

- :func:`plan_moe`: how many experts the budget caches (resident tensors + KV cache + scratch +
  cached experts <= budget); below the minimum (two layers' worth of active experts: the
  current layer's and the next one's, read ahead) the budget is refused, naming it.
- :class:`ExpertPolicy`: the cache's decisions, without reads (the run's cache,
  edgert.runtime.experts, adds them). Policies (measured, not assumed): ``lru`` evicts the
  expert used longest ago, ``lfu`` the one used least often (frequency-aware; ties to the least
  recent). Predictors of the next layer's experts: ``router`` runs the next layer's router on
  the current hidden state (the residual stream changes little between layers), ``coact`` looks
  up a co-activation table (which next-layer experts followed these experts so far). A run
  prefetches with one and scores both, so the report says which predicts better.
- :func:`replay_trace`: the compiler's record of how the mixture routes while decoding, through
  the policy, for the hit rate and flash reads the cost model uses.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np

from edgert.errors import EdgertError
from edgert.format.kvcache import DEFAULT as DEFAULT_KV
from edgert.format.routing import route
from edgert.format.spans import expert_spans, span_names
from edgert.plan.sizes import BUDGET_HINT, READ_CHUNK, fixed_memory, fmt_size
from edgert.plan.stats import PREDICTORS, ExpertStats

POLICIES = ("lru", "lfu")
#: the compiler's routing trace (edgert.compiler.transform.calibrate.routing_trace): a prompt of
#: this many tokens, then this many decode steps
TRACE_PROMPT_TOKENS = 16
TRACE_TOKENS = 96
#: replayed steps that warm the cache before hits and reads are counted (a run's decode starts
#: after its prompt has filled the cache)
TRACE_WARMUP = 16


@dataclass
class MoePlan:
    """Bytes: ``fixed`` = every tensor but the experts + KV cache + scratch; ``slots`` experts
    of at most ``expert_bytes`` each are cached (all of them: nothing streams)."""

    budget: int | None
    fixed: int
    kv: int
    scratch: int
    expert_bytes: int
    n_experts: int  # over all layers
    slots: int
    minimum: int
    chunk: int = READ_CHUNK
    max_ctx: int = 0
    #: resident weights a decode step reads (attention, routers, norms, head)
    head_bytes: int = 0
    n_layers: int = 0
    top_k: int = 0
    #: tokens per forward call the scratch is sized for (longer prompts run in several calls)
    batch: int = 0
    #: the compiler's routing trace replayed through the cache (:func:`replay_trace`): hits
    #: per lookup and experts read from flash per decode step; None: no trace (uniform routing
    #: assumed)
    replayed: dict | None = None

    @property
    def streams(self) -> bool:
        return self.slots < self.n_experts

    @property
    def expected_hit_rate(self) -> float:
        """The cache hit rate the cost model assumes: the replayed trace's, else the cached share
        of the experts (what an LRU cache hits when routing is uniform)."""
        if not self.streams:
            return 1.0
        if self.replayed is not None:
            return self.replayed["hit_rate"]
        return self.slots / self.n_experts

    @property
    def weight_bytes_per_token(self) -> int:
        """Weight bytes a decode step reads from DRAM: the resident part and top-k experts per
        layer."""
        return self.head_bytes + self.n_layers * self.top_k * self.expert_bytes

    @property
    def misses_per_token(self) -> float:
        """Experts a decode step is expected to read from flash (with the trace: its misses and
        what it read ahead)."""
        if not self.streams:
            return 0.0
        if self.replayed is not None:
            return self.replayed["reads_per_token"]
        return self.n_layers * self.top_k * (1.0 - self.expected_hit_rate)

    @property
    def streamed_bytes_per_token(self) -> int:
        """Expected flash bytes per decode step: the experts the cache misses."""
        return int(self.misses_per_token * self.expert_bytes)

    def flash_reads_per_token(self) -> int:
        return round(self.misses_per_token * -(-self.expert_bytes // self.chunk))

    @property
    def planned(self) -> int:
        return self.fixed + self.slots * self.expert_bytes

    def describe(self) -> str:
        return (
            f"dram budget {fmt_size(self.budget)}: plan {fmt_size(self.planned)}, "
            f"{self.slots} of {self.n_experts} experts cached"
        )

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "planned": self.planned,
            "streams": self.streams,
            "expected_hit_rate": self.expected_hit_rate,
            "weight_bytes_per_token": self.weight_bytes_per_token,
            "streamed_bytes_per_token": self.streamed_bytes_per_token,
        }


def plan_moe(
    art,
    cfg,
    *,
    max_ctx: int,
    budget: int | None,
    chunk: int = READ_CHUNK,
    n_batch: int | None = None,
    cache: dict | None = None,
    trace: dict | None = None,
    kv=DEFAULT_KV,
) -> MoePlan:
    """How many experts ``budget`` caches; refuses a budget below the minimum (two layers' active
    experts). Under a budget, prompts run :data:`edgert.plan.sizes.BUDGET_BATCH` tokens per call.
    Where experts stream and ``trace`` (the artifact's routing trace) is given, it is replayed
    through an :class:`ExpertPolicy` with ``cache``'s options for the expected hits and reads."""
    spans = expert_spans(art, cfg)
    f = fixed_memory(
        art,
        cfg,
        span_names(spans.values()),
        max_ctx=max_ctx,
        budget=budget,
        n_batch=n_batch,
        kv=kv,
    )
    never, kv, scratch, fixed = f.never, f.kv, f.scratch, f.total
    size = max(s.nbytes for s in spans.values())
    minimum = f.least + 2 * cfg.n_experts_used * size  # under a budget: the table read by rows
    n = len(spans)
    shape = {
        "max_ctx": max_ctx,
        "head_bytes": f.touched,
        "n_layers": cfg.n_layers,
        "top_k": cfg.n_experts_used,
        "batch": f.batch,
    }
    if budget is None or fixed + n * size <= budget:
        return MoePlan(budget, fixed, kv, scratch, size, n, n, minimum, chunk, **shape)
    if budget < minimum:
        raise EdgertError(
            f"--dram-budget {fmt_size(budget)} is below the minimum this artifact needs: "
            f"{fmt_size(minimum)} (tensors other than experts {fmt_size(never)}, KV cache for "
            f"{max_ctx} tokens {fmt_size(kv)}, scratch {fmt_size(scratch)}, "
            f"{2 * cfg.n_experts_used} experts of {fmt_size(size)}: this layer's and the next's)",
            BUDGET_HINT,
        )
    slots = (budget - fixed) // size
    plan = MoePlan(budget, fixed, kv, scratch, size, n, slots, minimum, chunk, **shape)
    if trace is not None:
        sizes = {k: s.nbytes for k, s in spans.items()}
        plan.replayed = replay_trace(cfg, plan, trace, sizes, **(cache or {}))
    return plan


class _Entry:
    __slots__ = ("handle", "last", "prefetched", "tensors", "used")

    def __init__(self, handle, prefetched: bool):
        self.handle = handle  # the read in flight (None: done, or no reads at all)
        self.tensors: list | None = None
        self.last = 0
        self.prefetched, self.used = prefetched, False


class ExpertPolicy:
    """The expert cache's decisions: which experts of which layer are cached in at most
    ``plan.slots`` slots, which to read (on a miss, or ahead by the predictor's guess), which to
    evict, and the counters of all that (:class:`ExpertStats`). ``sizes``: bytes per expert,
    by (layer, expert).

    Reads are a subclass's: :meth:`_submit` starts one and returns its handle, :meth:`_cancel`
    withdraws one not started yet. Here every read completes at once (the replay).

    A layer's lookups cost O(top-k) (an engine asks once per layer and step): the entries are
    kept in eviction order, those read ahead and not used yet apart (LRU evicts them first,
    oldest first, then the least recently used)."""

    def __init__(
        self,
        cfg,
        plan: MoePlan,
        sizes: dict[tuple[int, int], int],
        *,
        policy: str = "lru",
        predictor: str = "router",
        prefetch: bool = True,
    ):
        if policy not in POLICIES:
            raise EdgertError(f"unknown expert cache policy {policy!r}", f"one of {POLICIES}")
        if predictor not in PREDICTORS:
            raise EdgertError(f"unknown expert predictor {predictor!r}", f"one of {PREDICTORS}")
        self.cfg, self.plan, self.policy, self.predictor = cfg, plan, policy, predictor
        self.prefetch_on = prefetch
        self.sizes = sizes
        self._entries: dict[tuple[int, int], _Entry] = {}
        #: eviction order: entries read ahead and not used yet (by insertion), the others by use
        self._unused: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._recent: OrderedDict[tuple[int, int], None] = OrderedDict()
        #: per layer, the entries read ahead and not used yet (a wrong guess is cancelled)
        self._pending: list[set[tuple[int, int]]] = [set() for _ in range(cfg.n_layers)]
        self._clock = 0
        n = cfg.n_experts
        # (layer, e at i, e at i+1): which next-layer experts followed these
        self._coact = [[[0] * n for _ in range(n)] for _ in range(cfg.n_layers)]
        self._freq: dict[tuple[int, int], int] = dict.fromkeys(sizes, 0)
        self._guess: dict[str, tuple[int, set[int]]] = {}
        self._prev: tuple[int, set[int]] | None = None  # the last layer's experts
        self.stats = ExpertStats()

    # -- reads: none here ----------------------------------------------------------------------
    def _submit(self, key: tuple[int, int]):
        """Start reading expert ``key``; its handle (None: read)."""
        return

    def _cancel(self, handle) -> bool:
        """Withdraw a read not started yet; whether it was withdrawn."""
        return False

    # -- bookkeeping -------------------------------------------------------------------------
    def _drop(self, key: tuple[int, int]) -> _Entry:
        ent = self._entries.pop(key)
        self._unused.pop(key, None)
        self._recent.pop(key, None)
        self._pending[key[0]].discard(key)
        return ent

    def _victim(self, keep: set) -> tuple[int, int] | None:
        if self.policy == "lru":
            for order in (self._unused, self._recent):
                for k in order:
                    if k not in keep:
                        return k
            return None
        victims = [k for k in self._entries if k not in keep]
        if not victims:
            return None
        # frequency over the whole run, not just while cached; ties to the least recent
        return min(victims, key=lambda k: (self._freq[k], self._entries[k].last))

    def _evict_for(self, n_new: int, keep: set) -> None:
        while len(self._entries) + n_new > self.plan.slots:
            victim = self._victim(keep)
            if victim is None:
                return  # everything cached is wanted now: briefly over (the plan's minimum)
            ent = self._drop(victim)
            if ent.handle is not None:
                self._cancel(ent.handle)
            self.stats.evictions += 1

    def _start(self, key: tuple[int, int], *, prefetched: bool) -> None:
        self._entries[key] = _Entry(self._submit(key), prefetched)
        self._unused[key] = None
        if prefetched:
            self._pending[key[0]].add(key)
        self.stats.read_bytes += self.sizes[key]

    # -- an engine's side: fetch(i), or want(i) -> predict_next(i) ------------------------------
    def fetch(self, layer: int, experts, next_experts) -> None:
        """``layer`` computes ``experts``: read the missing ones, and read ahead the next layer's
        (``next_experts``: per token, the experts the next layer's router picks on this hidden
        state, or None)."""
        self.want(layer, experts)
        if layer + 1 < self.cfg.n_layers:
            guess = [] if next_experts is None else self.router_guess(next_experts)
            self.predict_next(layer, experts, guess)

    def router_guess(self, next_experts) -> list[int]:
        """What to read ahead from the next router's picks per token: most picked first, at
        most the top-k per token (or a quarter of the cache)."""
        if len(next_experts) == 1:  # one token: its picks, most probable first
            return [int(e) for e in next_experts[0]]
        e, n = np.unique(np.asarray(next_experts), return_counts=True)
        cap = max(self.cfg.n_experts_used, self.plan.slots // 4)
        return e[np.argsort(-n, kind="stable")][:cap].tolist()

    def want(self, layer: int, experts) -> None:
        """``layer`` will compute ``experts``: start reading those not cached nor read ahead."""
        keys = [(layer, int(e)) for e in experts]
        used = {k[1] for k in keys}
        self._score(layer, used)
        entries, st = self._entries, self.stats
        for k in [k for k in self._pending[layer] if k[1] not in used]:
            ent = entries[k]
            # a wrong guess still queued: cancelled, its bandwidth freed
            if ent.handle is not None and self._cancel(ent.handle):
                self._drop(k)
                st.prefetch_cancelled += 1
                st.read_bytes -= self.sizes[k]
        missing = [k for k in keys if k not in entries]
        if missing or len(entries) > self.plan.slots:
            self._evict_for(len(missing), set(keys))
            for k in missing:
                self._start(k, prefetched=False)
        for k in keys:
            ent = entries[k]
            self._clock += 1
            self._freq[k] += 1
            ent.last = self._clock
            self._unused.pop(k, None)
            self._recent[k] = None
            self._recent.move_to_end(k)
            st.lookups += 1
            if k not in missing:
                st.hits += 1
            if ent.prefetched and not ent.used:
                st.prefetch_used += 1
                self._pending[layer].discard(k)
            ent.used = True
        self._prev = (layer, used)

    def predict_next(self, layer: int, experts, router_guess) -> None:
        """After ``layer`` routed to ``experts``: guess layer+1's experts with both predictors
        (``router_guess``: the next router's choice on this hidden state) and read the chosen
        predictor's guess ahead."""
        if layer + 1 >= self.cfg.n_layers:
            return
        rows = [self._coact[layer][int(e)] for e in set(experts)]
        counts = [sum(c) for c in zip(*rows)]
        coact = set()
        if any(counts):  # the top-k by count (a stable sort: ties to the lower index)
            order = sorted(range(len(counts)), key=lambda j: -counts[j])
            coact = set(order[: self.cfg.n_experts_used])
        guesses = {"router": {int(e) for e in router_guess}, "coact": coact}
        self._guess = {name: (layer + 1, g) for name, g in guesses.items()}
        if self.prefetch_on:
            now = {(layer, int(e)) for e in experts}
            self.prefetch(layer + 1, guesses[self.predictor], keep=now)

    def prefetch(self, layer: int, experts, *, keep: set = frozenset()) -> None:
        """Start reading ``experts`` of ``layer`` (as many as the cache holds besides
        ``keep``)."""
        want = [(layer, int(e)) for e in experts]
        new = [k for k in want if k not in self._entries]
        if not new and len(self._entries) <= self.plan.slots:
            return
        keep = set(keep) | set(want)
        held = sum(k in self._entries for k in keep)
        new = new[: max(self.plan.slots - held, 0)]
        self._evict_for(len(new), keep)
        for key in new:
            self._start(key, prefetched=True)
            self.stats.prefetched += 1

    def _score(self, layer: int, used: set[int]) -> None:
        """Score the guesses made for ``layer``; learn co-activation from the layer before."""
        for name, (at, g) in self._guess.items():
            if at == layer:
                self.stats.predicted[name] += len(g)
                self.stats.predicted_right[name] += len(g & used)
        self._guess = {}
        prev = self._prev
        if prev is not None and prev[0] == layer - 1:
            table = self._coact[layer - 1]
            for a in prev[1]:
                row = table[a]
                for b in used:
                    row[b] += 1


def replay_trace(cfg, plan: MoePlan, trace: dict, sizes: dict, **cache) -> dict:
    """The routing trace (``route`` and ``guess`` router logits per decode step and layer, as a
    run decodes) through an :class:`ExpertPolicy` of ``plan.slots`` with ``cache``'s options,
    counted after :data:`TRACE_WARMUP` steps: the hit rate, the experts read from flash per step
    (on a miss, or ahead), those read on a miss (``demand_per_token``: the layer waits for
    them), and how many a layer's call reads ahead for the next layer (``ahead_per_call[a]``: the
    share of calls that read ``a``)."""
    n_steps, L, E = trace["route"].shape
    # the top-k of every step and layer at once: (steps, layers, k)
    picks, guesses = (
        route(cfg, trace[k].reshape(-1, E))[0].reshape(n_steps, L, -1) for k in ("route", "guess")
    )
    rc = ExpertPolicy(cfg, plan, sizes, **cache)
    ahead: list[int] = []
    for step in range(n_steps):
        if step == TRACE_WARMUP:
            rc.stats = ExpertStats()
        for i in range(L):
            nxt = guesses[step, i][None] if i + 1 < L else None
            before = rc.stats.prefetched
            rc.fetch(i, np.unique(picks[step, i]), nxt)
            if step >= TRACE_WARMUP:
                a = rc.stats.prefetched - before
                ahead += [0] * (a + 1 - len(ahead))
                ahead[a] += 1
    st, steps = rc.stats, max(n_steps - TRACE_WARMUP, 1)
    calls = max(sum(ahead), 1)
    return {
        "steps": steps,
        "hit_rate": st.hit_rate,
        "reads_per_token": st.read_bytes / plan.expert_bytes / steps,
        "demand_per_token": (st.lookups - st.hits) / steps,
        "ahead_per_call": [n / calls for n in ahead],
        "prefetch_accuracy": st.prefetch_accuracy,
    }
