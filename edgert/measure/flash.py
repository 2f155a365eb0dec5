"""This machine's flash, measured: read bandwidth (4 MB ``O_DIRECT`` reads, as the flash reader
makes them) and the latency of a 4 KiB read, on the disk holding a file."""

from __future__ import annotations

import os
import random
import time

from edgert.errors import EdgertError
from edgert.plan.sizes import READ_CHUNK
from edgert.runtime.flash import FlashReader
from edgert.runtime.memory import aligned_buffer


def measure_flash(path, *, nbytes: int = 256 << 20, latency_reads: int = 64) -> tuple[float, float]:
    """This machine's read bandwidth (MB/s, 4 MB O_DIRECT reads) and 4 KiB read latency (us) on
    the disk holding ``path`` (a file of at least a few MB)."""
    size = os.path.getsize(path)
    chunk = min(READ_CHUNK, size // 4096 * 4096)
    if chunk == 0:
        raise EdgertError(f"{path} is too small to measure reads with")
    r = FlashReader(path)
    try:
        buf = aligned_buffer(chunk)
        span = max(chunk, min(nbytes, size) // chunk * chunk)
        # this file's cached pages only (buffered fallback); O_DIRECT reads bypass them anyway
        os.posix_fadvise(r.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        for off in range(0, span, chunk):
            r.read_into(buf, off, chunk)
        mbs = span / (time.perf_counter() - t0) / 1e6
        rng = random.Random(0)
        t0 = time.perf_counter()
        for _ in range(latency_reads):
            r.read_into(buf, rng.randrange(0, max(size - 4096, 1)) // 4096 * 4096, 4096)
        lat = (time.perf_counter() - t0) / latency_reads * 1e6
    finally:
        r.close()
    return mbs, lat
