"""A dense model within a DRAM budget at run time: the C forward pass runs layer range by layer
range, a streamed layer's weights swapped in from a staging buffer that an I/O thread filled
while the layers before it computed (the plan: edgert.plan.dram). Streaming changes speed, never
results: the bytes are the artifact's (checksums verified on a layer's first read)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from edgert.format.artifact import ArtifactError
from edgert.format.spans import layer_spans
from edgert.plan.dram import DramPlan
from edgert.plan.stats import StreamStats
from edgert.runtime.flash import FlashReader, read_span
from edgert.runtime.memory import aligned_buffer


class LayerStreamer:
    """Runs the C forward pass with the plan's streamed layers read from flash."""

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
        read_span(self.reader, self.spans[layer], buf, self._verified)

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
