"""Environment settings, read in one place."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the cache (models, wheels, emulated device): $EDGERT_CACHE or ~/.cache/edgert."""
    env = os.environ.get("EDGERT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgert"


def models_dir() -> Path:
    return cache_dir() / "models"


def hf_endpoint() -> str:
    """Base URL of the Hugging Face hub (``$HF_ENDPOINT`` overrides it, e.g. a local mirror)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def default_threads() -> int:
    """The thread count when none is asked for: EDGERT_THREADS, else on a big.LITTLE machine
    its big cores (edgert.runtime.cpu.big_split: a thread on a little core holds every job up,
    each waiting for its slowest chunk), else every core this process may run on."""
    env = os.environ.get("EDGERT_THREADS")
    if env:
        return max(1, int(env))
    from edgert.runtime.cpu import topology

    big = topology()[1]
    if big:
        return len(big)
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


#: environment variables the thread pools (BLAS, TVM, the LUT kernels) read when they start
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TVM_NUM_THREADS",
    "EDGERT_THREADS",
)


def run_threads() -> int:
    """The thread count for the next forward pass: EDGERT_THREADS as it is now, 0 where unset
    (the kernels' pool then takes its own default). Read per call, so a long-lived process (a
    device's agent) can change it between requests with :func:`set_threads`: the pool fixes its
    default once, at its first job."""
    try:
        return max(0, int(os.environ.get("EDGERT_THREADS") or 0))
    except ValueError:
        return 0


@contextlib.contextmanager
def request_threads(threads: int | None):
    """Within the block, size the pools for ``threads`` (None: leave them as they are), then
    restore what was set before: one request's ``-t`` to a long-lived process (a device's agent)
    does not carry over to the next. The C forward pass reads it per call (:func:`run_threads`);
    TVM's pool (ONNX models) and BLAS keep the size of their first run."""
    if not threads:
        yield
        return
    before = {v: os.environ.get(v) for v in THREAD_VARS}
    set_threads(threads)
    try:
        yield
    finally:
        for v, old in before.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
        from edgert.runtime.cpu import topology

        big = topology()[1]
        if big:  # back where the process ran before the request
            _place(run_threads() or len(big))


def set_threads(threads: int) -> None:
    """Size every thread pool, and on a big.LITTLE machine place the process for that many
    threads (:func:`init_threads`); call before numpy's BLAS or the TVM runtime first runs."""
    for var in THREAD_VARS:
        os.environ[var] = str(int(threads))
    _place(int(threads))


_placed = False


def init_threads() -> None:
    """Once per process, before the kernels' pool starts (the runtime's entry points: opening
    an artifact, the device agent): on a big.LITTLE machine, size the pools for its big cores
    where no thread count was asked for (EDGERT_THREADS), and pin the process to its big cores,
    or to all its cores for a count beyond them (edgert.runtime.cpu.place_threads). The pool's
    workers inherit the mask of the thread that starts them; the pool, told no count, counts
    the cores itself, so the count is set here too. Nothing changes where the cores are alike
    (or cannot be read: the emulated device, which has no /sys)."""
    if _placed:  # set_threads (`-t`, or its default) placed it already
        return
    from edgert.runtime.cpu import topology

    asked = run_threads()
    if asked:
        _place(asked)
    elif topology()[1]:
        set_threads(default_threads())


def _place(threads: int) -> None:
    global _placed
    _placed = True
    from edgert.runtime.cpu import place_threads

    place_threads(threads)
