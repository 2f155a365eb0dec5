"""Reading weights from flash: page-aligned spans of an artifact's weight file with ``pread``
(``O_DIRECT`` where the filesystem allows it, so streamed weights do not pile up in the page
cache), retrying short reads and I/O errors a bounded number of times, then failing with the
file and offset — never returning a partly filled buffer; and the page-aligned buffers they
are read into."""

from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np

from edgert.format.artifact import PAGE, ArtifactError
from edgert.plan.sizes import READ_CHUNK
from edgert.plan.stats import FlashStats

RETRIES = 3


class FlashError(ArtifactError):
    """A streamed read that failed after its retries."""


class FlashReader:
    """Whole-span reads from one file; thread-safe (``pread`` has no shared offset)."""

    def __init__(
        self, path, *, direct: bool = True, retries: int = RETRIES, chunk: int = READ_CHUNK
    ):
        self.path = str(path)
        self.retries = retries
        self.chunk = chunk
        self.stats = FlashStats()
        self._lock = threading.Lock()
        self.direct = False
        fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
                self.direct = True
            except OSError:  # tmpfs and some others refuse O_DIRECT: buffered reads then
                fd = -1
        if fd < 0:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise FlashError(f"cannot open {self.path}: {e.strerror}") from e
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _pread(self, view: memoryview, offset: int) -> int:
        return os.preadv(self.fd, [view], offset)

    def read_into(self, buf: np.ndarray, offset: int, nbytes: int) -> None:
        """Fill ``buf[:nbytes]`` from ``offset`` (both page-aligned for O_DIRECT). A read that
        fails (EIO, EAGAIN), comes back empty or claims more than it was asked for is retried up
        to ``retries`` times, then raises :class:`FlashError` naming the file, the offset and the
        length; a short read continues where it stopped. ``buf`` is never left partly filled
        without an error."""
        if self.direct and (offset % PAGE or nbytes % PAGE or buf.ctypes.data % PAGE):
            raise ValueError("O_DIRECT reads need page-aligned offset, size and buffer")
        view = memoryview(buf).cast("B")[:nbytes]
        t0, got, retries = time.perf_counter(), 0, 0
        while got < nbytes:
            piece = view[got : min(nbytes, got + self.chunk)]
            try:
                n = self._pread(piece, offset + got)
                if n <= 0:
                    raise OSError(errno.EIO, "the file ends early (truncated?)")
                if n > len(piece):  # a reader that claims bytes it did not place
                    raise OSError(errno.EIO, f"{n} bytes read where {len(piece)} were asked for")
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EINTR, errno.EAGAIN, None):
                    raise FlashError(
                        f"reading {self.path} at offset {offset + got} failed: {e.strerror} "
                        f"(a read of {nbytes} bytes at offset {offset})",
                        "check the storage, or copy the artifact again",
                    ) from e
                retries += 1
                if retries > self.retries:
                    raise FlashError(
                        f"reading {self.path} at offset {offset + got} failed after "
                        f"{self.retries} retries: {e.strerror or e} (a read of {nbytes} bytes at "
                        f"offset {offset})",
                        "check the storage, or copy the artifact again",
                    ) from e
                time.sleep(0.001 * retries)
                continue
            got += n  # a short read continues where it stopped
            if self.direct and got % PAGE and got < nbytes:
                # O_DIRECT reads only whole pages: read the partial one again (no progress at
                # all counts as a failed read, so this ends)
                if got // PAGE * PAGE == got - n:
                    retries += 1
                    if retries > self.retries:
                        raise FlashError(
                            f"reading {self.path} at offset {offset + got - n} failed after "
                            f"{self.retries} retries: short reads of less than a page (a read of "
                            f"{nbytes} bytes at offset {offset})",
                            "check the storage, or copy the artifact again",
                        )
                got = got // PAGE * PAGE
        if not self.direct:  # keep the page cache from holding what was streamed
            os.posix_fadvise(self.fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        with self._lock:
            s = self.stats
            s.bytes += nbytes
            s.reads += 1
            s.retries += retries
            s.seconds += time.perf_counter() - t0


def read_span(reader: FlashReader, span, buf: np.ndarray, verified: set) -> None:
    """Read ``span`` (edgert.format.spans.Span) into ``buf``; on its first read (key not in
    ``verified``), check the artifact's checksums of every buffer."""
    reader.read_into(buf, span.offset, span.nbytes)
    if span.key not in verified:
        span.check(buf, reader.path)
        verified.add(span.key)
