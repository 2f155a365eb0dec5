"""Page-aligned anonymous memory: ``O_DIRECT`` read targets, the KV cache, and buffers on
transparent huge pages for streams through the kernels.

numpy advises its own large arrays for huge pages, so a 94 MB KV cache of which a run writes a
few positions per layer would take a 2 MiB page per layer where it writes; an anonymous mapping
without that advice holds only the 4 KiB pages written."""

from __future__ import annotations

import mmap

import numpy as np

from edgert.format.artifact import PAGE

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


def zeros(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A zero-filled array on its own anonymous mapping: pages are held once written."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    return aligned_buffer(n)[:n].view(dt).reshape(shape)
