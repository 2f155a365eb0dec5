"""Progress bars on stderr for long work; silent when stderr is not a terminal or when disabled."""

from __future__ import annotations

import os
import sys
import time


class Progress:
    """A minimal progress bar: ``with Progress(total, "loading") as p: p.update(1)``."""

    def __init__(
        self, total: int | None, desc: str, *, enabled: bool | None = None, unit: str = ""
    ):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("EDGERT_NO_PROGRESS")
        self.enabled = enabled
        self._t0 = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> "Progress":
        return self

    def update(self, k: int = 1) -> None:
        self.n += k
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and (self.total is None or self.n < self.total):
            return
        self._last = now
        elapsed = now - self._t0
        if self.total:
            frac = min(1.0, self.n / self.total)
            bar = "#" * int(frac * 30)
            line = f"\r{self.desc} [{bar:<30}] {self.n}/{self.total}{self.unit} {elapsed:5.1f}s"
        else:
            line = f"\r{self.desc} {self.n}{self.unit} {elapsed:5.1f}s"
        sys.stderr.write(line)
        sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
