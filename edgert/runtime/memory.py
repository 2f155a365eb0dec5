"""Page-aligned anonymous memory: ``O_DIRECT`` read targets, the KV cache, and buffers on
transparent huge pages for streams through the kernels.

Held as written: an anonymous mapping without huge-page advice takes memory for the 4 KiB pages
a run writes. numpy advises its own large arrays for huge pages, so a KV cache there held a
2 MiB page per layer the moment one position was written (SmolLM2 at 4096 tokens of context:
120 MB for its first token)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap

import numpy as np

from edgert.format.artifact import PAGE

#: a transparent huge page (x86-64 and arm64 with 4 KiB base pages)
HUGE_PAGE = 2 << 20


def aligned_buffer(nbytes: int, *, huge: bool = False, populate: bool = False) -> np.ndarray:
    """A page-aligned uint8 buffer (anonymous mapping) for O_DIRECT reads, ``nbytes`` rounded up
    to whole pages. With ``huge`` it starts on a :data:`HUGE_PAGE` boundary and is advised for
    transparent huge pages where the OS has them: a stream through it then takes a TLB miss every
    2 MiB instead of every 4 KiB (a 64 MiB fp32 BLAS GEMV reads about 5% faster, the 2-bit LUT
    kernel about 1%; BENCHMARKS.md). With ``populate`` (4 KiB pages) every page is mapped now
    (zeroed by the OS) rather than on first write: a buffer that reads will fill, taken before
    they run (4 GiB in 1.1 s on the development VM, against 1.6-2.0 s touching each page and
    5.8 s on huge pages)."""
    size = max(PAGE, (nbytes + PAGE - 1) // PAGE * PAGE)
    # private: the OS backs shared anonymous mappings with shmem (SmolLM2's decode over a KV
    # cache there: median 116 tok/s against 121 over a private one, 1 thread, 12 rounds)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if populate:
        if huge:
            raise ValueError("populate maps 4 KiB pages")
        flags |= getattr(mmap, "MAP_POPULATE", 0)
        a = np.frombuffer(mmap.mmap(-1, size, flags=flags), np.uint8)
        if not hasattr(mmap, "MAP_POPULATE"):
            a[::PAGE] = 0
        return a
    if not huge:
        return np.frombuffer(mmap.mmap(-1, size, flags=flags), np.uint8)
    mm = mmap.mmap(-1, size + HUGE_PAGE, flags=flags)
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no transparent huge pages here: 4 KiB pages
        pass
    a = np.frombuffer(mm, np.uint8)
    start = -a.ctypes.data % HUGE_PAGE
    return a[start : start + size]


def zeros(shape: tuple[int, ...], dtype=np.float32, *, huge: bool = False) -> np.ndarray:
    """A zero-filled array on its own anonymous mapping: pages are held once written (with
    ``huge``, 2 MiB pages)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    return aligned_buffer(n, huge=huge)[:n].view(dt).reshape(shape)


def release_free_heap() -> bool:
    """Give the C heap's free memory back to the OS (glibc's ``malloc_trim``; False where the C
    library has none, as on Android). Loading a large tokenizer.json with the `tokenizers` wheel
    frees about as much as it keeps, and glibc holds the freed pages: a Qwen3 vocabulary's
    tokenizer leaves the process 79 MB larger than it needs to be (213 -> 134 MB of RSS after
    the runtime, the artifact and the tokenizer load, BENCHMARKS.md), memory a board's budget
    could give the weights."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
