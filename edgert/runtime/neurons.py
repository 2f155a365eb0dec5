"""A dense model's FFN on its active neurons at run time (``--sparsity S``): the window cache of
neuron bundles in DRAM and the flash reads that fill it. What is cached and which page runs a
layer reads is :class:`edgert.plan.sparse.WindowPolicy`'s; this adds the buffers, the reads (on
I/O threads) and the checksums (verified on a bundle's first read). :attr:`NeuronCache.callback`
is what the C forward pass calls per sparse layer (see edgert_forward.h).

Sparsity changes results (the skipped neurons' contribution is dropped; the bundles hold the
artifact's own quantization of the FFN, so sparsity 0 computes the dense FFN); the cache size
never does.
"""

from __future__ import annotations

import ctypes
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgert.format import names
from edgert.format.artifact import PAGE, ArtifactError
from edgert.format.bundles import SparseSpec
from edgert.plan.sparse import SparsePlan, WindowPolicy, bundle_offsets
from edgert.runtime.flash import FlashReader
from edgert.runtime.memory import aligned_buffer

_FETCH = ctypes.CFUNCTYPE(
    ctypes.c_int32,
    ctypes.c_void_p,
    ctypes.c_int32,
    ctypes.POINTER(ctypes.c_int32),
    ctypes.c_int64,
    ctypes.POINTER(ctypes.c_uint64),
)


#: bundles copied from the staging area into the cache per step of :meth:`NeuronCache._store`
STORE_ROWS = 256


class NeuronCache(WindowPolicy):
    """The window cache of ``plan`` over ``art``'s bundles, read with ``workers`` I/O threads
    (page runs closer than ``plan.gap_bytes`` in one read)."""

    def __init__(self, art, cfg, plan: SparsePlan, *, workers: int = 2):
        spec = SparseSpec.of(art)
        self.fmt = spec.fmt
        self.thresholds = spec.thresholds_for(plan.sparsity)
        index = art.read_tensor(names.BUNDLE_INDEX)
        L = cfg.n_layers
        super().__init__(cfg, plan, self.fmt.nbytes, index["order"], bundle_offsets(art, L))
        self.crc = index["crc"]  # (L, f) by file position
        # (L, groups of neurons, dim) float16 bits: the down columns' scales and zeros
        self.down_scale = np.ascontiguousarray(index["down_scale"])
        self.down_zero = np.ascontiguousarray(index["down_zero"])
        files = {art.tensors[names.bundles(i)]["file"] for i in range(L)}
        if len(files) != 1:
            raise ArtifactError(f"{art.path}: neuron bundles span several files")
        self.reader = FlashReader(art.path / files.pop(), chunk=plan.chunk)
        self.stats.flash = self.reader.stats
        self.staging = aligned_buffer(plan.staging)
        self.staging_base = self.staging.ctypes.data
        self.cache = aligned_buffer(max(1, self.slots) * self.B)
        self.base = self.cache.ctypes.data
        self._cache_rows = self.cache[: self.slots * self.B].reshape(self.slots, self.B)
        self.verified = np.zeros((L, cfg.ffn_dim), bool)
        self.error: BaseException | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgert-neurons")
        self.workers = workers
        self.callback = _FETCH(self._fetch)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.reader.close()

    def _fetch(self, _ctx, layer, neurons_p, count, out_p) -> int:
        try:
            self.fetch(int(layer), np.ctypeslib.as_array(neurons_p, (int(count),)),
                       np.ctypeslib.as_array(out_p, (int(count),)))  # fmt: skip
            return 0
        except BaseException as e:  # noqa: BLE001 - reported by the forward pass's caller
            self.error = e
            return 1

    def _read_pages(self, layer: int, runs: list[tuple[int, int]]) -> None:
        """Read the page runs into the staging area (on the I/O threads); the forward pass
        waits for them."""
        first = self.offsets[layer] // PAGE * PAGE
        t0 = time.perf_counter()

        def read(part):
            for a, b in part:
                self.reader.read_into(
                    self.staging[a * PAGE : (b + 1) * PAGE], first + a * PAGE, (b - a + 1) * PAGE
                )

        try:
            if len(runs) == 1 or self.workers == 1:
                read(runs)
            else:
                parts = [runs[i :: self.workers] for i in range(self.workers)]
                for fut in [self._pool.submit(read, p) for p in parts if p]:
                    fut.result()
        finally:
            self.stats.stall_seconds += time.perf_counter() - t0

    def _store(self, layer: int, slots: np.ndarray, pos: np.ndarray) -> None:
        first = self.offsets[layer] % PAGE
        rows = np.lib.stride_tricks.as_strided(  # the layer's bundles as rows (read ones used)
            self.staging[first:], shape=(self.cfg.ffn_dim, self.B), strides=(self.B, 1)
        )
        # a few rows at a time: a layer's misses at once would be a temporary copy the plan
        # does not count (65 MB per layer at Llama-3-8B size and sparsity 0.5)
        for i in range(0, len(pos), STORE_ROWS):
            self._cache_rows[slots[i : i + STORE_ROWS]] = rows[pos[i : i + STORE_ROWS]]

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
