"""Flash reads under faults (edgert.runtime.flash, the reader of the layer streamer, the expert
cache and the neuron cache): failed, empty, short and over-long reads are retried a bounded
number of times, then reported naming the file, the offset and the length -- the buffer is
either exactly the file's bytes or an error is raised, never something in between."""

import errno
import os
import sys

import numpy as np
import pytest

from edgert.errors import EdgertError
from edgert.format.artifact import PAGE
from edgert.runtime import flash
from edgert.runtime.flash import FlashError, FlashReader
from edgert.runtime.memory import aligned_buffer

SIZE = 8 * PAGE


@pytest.fixture
def data_file(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8)
    f = tmp_path / "w.bin"
    f.write_bytes(data.tobytes())
    return f, data


def faulty_preadv(monkeypatch, *, eio: int = 0, short: int | None = None, over: bool = False):
    """os.preadv as flash.py sees it: ``eio`` calls raise EIO first; then each call reads at most
    ``short`` bytes; ``over``: it claims one byte more than it read."""
    real = os.preadv
    state = {"eio": eio, "calls": 0}

    def fake(fd, bufs, offset):
        state["calls"] += 1
        if state["eio"]:
            state["eio"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        view = bufs[0] if short is None else bufs[0][:short]
        n = real(fd, [view], offset)
        return n + 1 if over else n

    monkeypatch.setattr(flash.os, "preadv", fake)
    return state


def test_transient_eio_is_retried(data_file, monkeypatch):
    f, data = data_file
    faulty_preadv(monkeypatch, eio=2)
    r = FlashReader(f, direct=False, chunk=PAGE)
    buf = aligned_buffer(SIZE)
    r.read_into(buf, 0, SIZE)
    assert np.array_equal(buf[:SIZE], data) and r.stats.retries == 2


def test_short_reads_continue_to_the_right_bytes(data_file, monkeypatch):
    f, data = data_file
    state = faulty_preadv(monkeypatch, short=1000)  # never a whole page at once
    r = FlashReader(f, direct=False)
    buf = aligned_buffer(4 * PAGE)
    r.read_into(buf, 2 * PAGE, 4 * PAGE)
    assert np.array_equal(buf[: 4 * PAGE], data[2 * PAGE : 6 * PAGE])
    assert state["calls"] >= 4 * PAGE // 1000 and r.stats.retries == 0


def test_persistent_eio_names_file_offset_and_length(data_file, monkeypatch):
    f, _ = data_file
    faulty_preadv(monkeypatch, eio=100)
    r = FlashReader(f, direct=False)
    with pytest.raises(FlashError) as e:
        r.read_into(aligned_buffer(2 * PAGE), 3 * PAGE, 2 * PAGE)
    msg = str(e.value)
    assert isinstance(e.value, EdgertError)
    assert str(f) in msg and f"offset {3 * PAGE}" in msg and f"{2 * PAGE} bytes" in msg
    assert "after 3 retries" in msg and "Input/output error" in msg


def test_truncated_file_is_an_error(data_file):
    f, _ = data_file
    r = FlashReader(f, direct=False)
    with pytest.raises(FlashError, match=rf"{2 * PAGE} bytes at offset {7 * PAGE}"):
        r.read_into(aligned_buffer(2 * PAGE), 7 * PAGE, 2 * PAGE)  # one page past the end


def test_a_read_claiming_more_than_it_read_is_not_trusted(data_file, monkeypatch):
    """A count larger than the request would end the loop with the rest of the buffer unread
    (stale bytes: wrong tokens); it is a failed read."""
    f, _ = data_file
    faulty_preadv(monkeypatch, short=PAGE, over=True)
    r = FlashReader(f, direct=False, chunk=2 * PAGE)
    buf = aligned_buffer(2 * PAGE)
    with pytest.raises(FlashError, match=r"after 3 retries.*were asked for"):
        r.read_into(buf, 0, 2 * PAGE)


def test_fatal_errors_are_reported_at_once(data_file, monkeypatch):
    f, _ = data_file

    def bad(fd, bufs, offset):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(flash.os, "preadv", bad)
    with pytest.raises(FlashError, match=rf"at offset {PAGE} failed: Bad file descriptor \(a read "
                       rf"of {PAGE} bytes at offset {PAGE}\)"):  # fmt: skip
        FlashReader(f, direct=False).read_into(aligned_buffer(PAGE), PAGE, PAGE)


def test_short_direct_reads_stay_page_aligned(data_file, monkeypatch):
    """With O_DIRECT, a short read that stops inside a page must not go on from there (the
    kernel refuses unaligned direct reads): the partial page is read again."""
    f, data = data_file
    real = os.preadv
    sizes = iter([PAGE + 100, 50, 3 * PAGE])  # then whole requests

    def direct_like(fd, bufs, offset):
        view = bufs[0]
        addr = np.frombuffer(view, np.uint8).ctypes.data
        if offset % PAGE or addr % PAGE:
            raise OSError(errno.EINVAL, "Invalid argument")
        n = next(sizes, len(view))
        return real(fd, [view[:n]], offset)

    monkeypatch.setattr(flash.os, "preadv", direct_like)
    r = FlashReader(f, direct=False)
    r.direct = True  # as on a filesystem that took O_DIRECT (the reads above check alignment)
    buf = aligned_buffer(6 * PAGE)
    r.read_into(buf, PAGE, 6 * PAGE)
    assert np.array_equal(buf[: 6 * PAGE], data[PAGE : 7 * PAGE])
    assert r.stats.retries == 1  # the 50-byte read made no progress


def test_direct_reads_that_never_fill_a_page_end(data_file, monkeypatch):
    f, _ = data_file
    real = os.preadv
    monkeypatch.setattr(flash.os, "preadv", lambda fd, bufs, off: real(fd, [bufs[0][:10]], off))
    r = FlashReader(f, direct=False)
    r.direct = True
    with pytest.raises(FlashError, match=rf"less than a page \(a read of {PAGE} bytes at offset 0"):
        r.read_into(aligned_buffer(PAGE), 0, PAGE)


def test_populated_buffer_is_mapped_before_it_is_written():
    """``populate``: the pages are resident (zeroed) as the buffer is made, not on first write
    (the expert cache's slots, taken before reads fill them)."""
    from edgert.measure.bench import rss_bytes

    n = 64 << 20
    before = rss_bytes()
    a = aligned_buffer(n, populate=True)
    assert rss_bytes() - before >= n * 0.9 and a.nbytes == n and not a[::PAGE].any()
    before = rss_bytes()
    b = aligned_buffer(n)  # by default: pages held once written
    assert rss_bytes() - before < n // 4 and b.nbytes == n
    with pytest.raises(ValueError):
        aligned_buffer(PAGE, huge=True, populate=True)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim: Linux only")
def test_free_heap_is_given_back():
    """Freed C heap between live blocks (what a tokenizer.json's parse leaves) stays resident
    until :func:`release_free_heap` returns it to the OS."""
    import ctypes
    import ctypes.util

    from edgert.measure.bench import rss_bytes
    from edgert.runtime.memory import release_free_heap

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, n = 64 << 10, 1024  # 64 MiB in blocks below glibc's mmap threshold: on the heap
    blocks = [libc.malloc(size) for _ in range(n)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for i, b in enumerate(blocks):  # every 16th block kept: the freed ones cannot shrink the top
        if i % 16:
            libc.free(b)
    held = rss_bytes()
    assert release_free_heap()
    given = held - rss_bytes()
    for b in blocks[::16]:
        libc.free(b)
    assert given > 0.8 * size * n * 15 / 16, given
