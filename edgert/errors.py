"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations

from typing import Any


class EdgertError(Exception):
    """A problem with the user's input or environment, with a remedy.

    Parameters
    ----------
    message:
        What is wrong, naming the file / option / value involved.
    fix:
        What the user can do about it (optional).
    """

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


class ModelFormatError(EdgertError):
    """A model file is malformed, truncated, or uses something we do not support."""


class UnsupportedError(EdgertError):
    """A valid input that edgert does not handle (architecture, quant type, ...)."""


def show(value: Any, limit: int = 60) -> str:
    """``value`` as an error message quotes it: its repr, cut to ``limit`` characters (a value
    from a corrupt file or a hostile request can be huge)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."
