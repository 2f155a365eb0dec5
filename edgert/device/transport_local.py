"""The local transport: the agent as a child process on this machine (``edgert agent --stdio``),
spoken to over its stdin/stdout. Same actions as the SSH and serial transports; used by tests of
the plumbing and to run artifacts through the agent without a board."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class LocalTransport:
    scheme = "local"

    def __init__(self, root: str | None = None):
        self.root = root
        self.proc: subprocess.Popen | None = None

    @classmethod
    def from_url(cls, url: str, **_opts) -> "LocalTransport":
        from urllib.parse import urlparse

        return cls(root=(urlparse(url).path or None) if "://" in url else None)

    @property
    def name(self) -> str:
        return f"local://{self.root or ''}"

    def open(self):
        """Start the agent; returns (readable, writable) byte streams."""
        cmd = [sys.executable, "-m", "edgert", "agent", "--stdio"]
        if self.root:
            cmd += ["--root", str(Path(self.root).expanduser())]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        return self.proc.stdout, self.proc.stdin

    def close(self) -> None:
        if self.proc is None:
            return
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
