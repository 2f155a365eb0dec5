"""A mixture of experts within a DRAM budget at run time: experts read from flash on activation
(or ahead, as the next layer's predicted experts) into a bounded cache, on I/O threads that
overlap compute. What to cache, read and evict is :class:`edgert.plan.moe.ExpertPolicy`'s; this
adds the reads. Checksums are verified on an expert's first read.

The cache's memory is one mapping of ``plan.slots`` slots, taken and written once when the cache
opens: a read goes into a free slot, and an evicted expert's slot is free again once no read
writes it. (Reading into a new mapping each time made the kernel zero and map 1.5 MB of pages
per expert read while decoding: a Qwen3-30B-A3B-shaped model's 27 MB of reads per token cost
about a third of its step on 2 cores; BENCHMARKS.md.)"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from edgert.errors import EdgertError
from edgert.format.spans import expert_spans
from edgert.plan.moe import ExpertPolicy, MoePlan
from edgert.runtime.flash import FlashReader, read_span
from edgert.runtime.memory import aligned_buffer


class ExpertCache(ExpertPolicy):
    """Experts by (layer, expert), read from flash on a miss (or ahead, by :meth:`prefetch`)
    into at most ``plan.slots`` cached experts; ``convert(key, arrays)`` makes what the engine
    computes with from an expert's buffers (tensor name -> views of the read)."""

    def __init__(
        self,
        art,
        cfg,
        plan: MoePlan,
        convert,
        *,
        policy: str = "lru",
        predictor: str = "router",
        prefetch: bool = True,
        reader: FlashReader | None = None,
    ):
        self.spans = expert_spans(art, cfg)
        sizes = {k: s.nbytes for k, s in self.spans.items()}
        super().__init__(cfg, plan, sizes, policy=policy, predictor=predictor, prefetch=prefetch)
        files = {s.file for s in self.spans.values()}
        if len(files) > 1:
            raise EdgertError(f"{art.path}: experts span several files")
        self.reader = reader or FlashReader(art.path / files.pop(), chunk=plan.chunk)
        self._convert = convert
        #: what made the last fetch from the forward pass fail (edgert.runtime.forward reports it)
        self.error: BaseException | None = None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgert-experts")
        self._verified: set[tuple[int, int]] = set()
        self._slot_bytes = plan.expert_bytes  # the largest span: whole pages
        # every page mapped now, not as reads arrive
        self._slab = aligned_buffer(plan.slots * self._slot_bytes, populate=True)
        self._free = list(range(plan.slots - 1, -1, -1))
        #: the slot each cached expert was read into and its read (None: a buffer of its own,
        #: read while every slot was held: the cache briefly over its slots, or an evicted
        #: expert's read still running)
        self._slot_of: dict[tuple[int, int], tuple[int | None, Future]] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.reader.close()

    # -- reads -------------------------------------------------------------------------------
    def _read(self, key: tuple[int, int], slot: int | None) -> list:
        s = self.spans[key]
        if slot is None:
            buf = aligned_buffer(s.nbytes)
        else:
            buf = self._slab[slot * self._slot_bytes : slot * self._slot_bytes + s.nbytes]
        read_span(self.reader, s, buf, self._verified)
        return self._convert(key, s.arrays(buf))  # zero-copy views of the read buffer

    def _submit(self, key: tuple[int, int]) -> Future:
        slot = self._free.pop() if self._free else None
        fut = self._pool.submit(self._read, key, slot)
        self._slot_of[key] = (slot, fut)
        return fut

    def _drop(self, key: tuple[int, int]):
        """As :meth:`ExpertPolicy._drop`; the expert's slot is free once its read is done or
        withdrawn (a read still running keeps it until it ends)."""
        ent = super()._drop(key)
        slot, fut = self._slot_of.pop(key)
        if slot is not None:
            fut.add_done_callback(lambda _f, slot=slot: self._free.append(slot))
        return ent

    def _cancel(self, handle: Future) -> bool:
        return handle.cancel()

    # -- the engine's side ---------------------------------------------------------------------
    def fetch(self, layer: int, experts, next_experts) -> dict[int, object]:
        """As :meth:`ExpertPolicy.fetch`, then the experts once read."""
        super().fetch(layer, experts, next_experts)
        return self.tensors(layer, experts)

    def tensors(self, layer: int, experts) -> dict[int, list]:
        """What the engine computes with for ``experts`` (wanted before), waiting for reads."""
        out = {}
        for e in experts:
            k = (layer, int(e))
            ent = self._entries[k]
            if ent.tensors is None:
                t0 = time.perf_counter()
                try:
                    ent.tensors = ent.handle.result()
                except BaseException:
                    if k in self._entries:
                        self._drop(k)
                    raise
                finally:
                    self.stats.stall_seconds += time.perf_counter() - t0
                ent.handle = None
            out[int(e)] = ent.tensors
        return out
