"""Environment settings, read in one place."""

from __future__ import annotations

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
    env = os.environ.get("EDGERT_THREADS")
    if env:
        return max(1, int(env))
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


def set_threads(threads: int) -> None:
    """Size every thread pool; call before numpy's BLAS or the TVM runtime first runs."""
    for var in THREAD_VARS:
        os.environ[var] = str(int(threads))
