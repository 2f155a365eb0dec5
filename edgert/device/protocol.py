"""The agent protocol: framed messages over any byte stream (an SSH channel, a serial line, a
pipe).

A frame is a fixed 24-byte head, a JSON header and an optional binary payload::

    magic  b"EDRT"        4 bytes
    version               1 byte   (PROTOCOL_VERSION)
    code                  1 byte   (Code)
    reserved              2 bytes  (zero)
    header length         4 bytes  little-endian, <= MAX_HEADER
    payload length        4 bytes  little-endian, <= MAX_PAYLOAD
    body crc32            4 bytes  of header + payload
    head crc32            4 bytes  of the 20 bytes before it (a corrupted length is caught
                                   before the reader waits for a body that never comes)
    header                JSON object, UTF-8
    payload               raw bytes (array data, file chunks)

The session opens with a HELLO from each side (protocol version, edgert version, capabilities).
A reader that meets bad bytes (line noise, a bad checksum, a length over the limits) reports a
:class:`FrameError` and resynchronises on the next magic, so one corrupted frame costs that frame
only; the agent answers it with an ERROR frame and keeps serving. A header that passes its
checksum but is not a JSON object, or nests deeper than MAX_DEPTH, is a FrameError too (the
checksum says the bytes arrived as sent, not that the sender is friendly).
"""

from __future__ import annotations

import enum
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAGIC = b"EDRT"
PROTOCOL_VERSION = 1
HEAD = struct.Struct("<4sBBHIIII")
MAX_HEADER = 1 << 20  # 1 MiB of JSON
MAX_PAYLOAD = 64 << 20  # 64 MiB per frame (files travel in chunks)
#: nesting of a header's arrays and objects; edgert's own headers use a handful of levels, and a
#: bound far below the interpreter's recursion limit keeps every later walk of a header safe
MAX_DEPTH = 32


class Code(enum.IntEnum):
    HELLO = 1
    REQUEST = 2
    REPLY = 3
    EVENT = 4  # streamed progress for a request (tokens, bench samples)
    ERROR = 5
    BYE = 6


class FrameError(Exception):
    """A frame that could not be read: bad magic, version, checksum or size."""


class StreamClosed(Exception):
    """The other side closed the stream."""


@dataclass
class Frame:
    code: Code
    header: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""
    header_bytes: int = 0  # length of the header's JSON as it arrived (0: built here)

    def encode(self) -> bytes:
        return encode(self.code, self.header, self.payload)


def encode(code: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
    hdr = json.dumps(header, separators=(",", ":"), default=str).encode()
    if len(hdr) > MAX_HEADER or len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame too large ({len(hdr)} header, {len(payload)} payload bytes)")
    body_crc = zlib.crc32(payload, zlib.crc32(hdr)) & 0xFFFFFFFF
    head20 = HEAD.pack(MAGIC, PROTOCOL_VERSION, int(code), 0, len(hdr), len(payload), body_crc, 0)
    head20 = head20[:20]
    return head20 + struct.pack("<I", zlib.crc32(head20) & 0xFFFFFFFF) + hdr + payload


class FrameReader:
    """Reads frames from ``stream`` (anything with ``read(n)`` returning b"" at the end).

    ``read()`` returns the next good frame, raises :class:`FrameError` once per bad one (after
    which it searches for the next magic), and :class:`StreamClosed` at the end of the stream.
    """

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self._buf = bytearray()
        self._resync = False

    def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = self.stream.read(max(n - len(self._buf), 1))
            if not chunk:
                raise StreamClosed("stream closed")
            self._buf += chunk

    def _skip_to_magic(self) -> None:
        """Drop bytes up to the next possible frame start (keeping a partial magic at the end)."""
        while True:
            i = self._buf.find(MAGIC)
            if i >= 0:
                del self._buf[:i]
                return
            keep = next(
                (k for k in range(3, 0, -1) if self._buf.endswith(MAGIC[:k])), 0
            )  # a magic split across reads
            del self._buf[: len(self._buf) - keep]
            self._fill(len(self._buf) + 1)

    def read(self) -> Frame:
        if self._resync:
            self._skip_to_magic()
            self._resync = False
        self._fill(HEAD.size)
        head = bytes(self._buf[: HEAD.size])
        magic, version, code, _res, hlen, plen, body_crc, head_crc = HEAD.unpack(head)
        problem = None
        if magic != MAGIC:
            problem = "bad magic (not an edgert frame)"
        elif zlib.crc32(head[:20]) & 0xFFFFFFFF != head_crc:
            problem = "checksum mismatch in the frame head (corrupted frame)"
        elif version != PROTOCOL_VERSION:
            problem = f"protocol version {version}, this side speaks {PROTOCOL_VERSION}"
        elif hlen > MAX_HEADER or plen > MAX_PAYLOAD:
            problem = f"frame of {hlen} + {plen} bytes exceeds the limits"
        elif code not in Code._value2member_map_:
            problem = f"unknown frame code {code}"
        if problem:
            del self._buf[:1]  # whatever starts here is not a frame: look past it
            self._resync = True
            raise FrameError(problem)
        total = HEAD.size + hlen + plen
        self._fill(total)
        body = bytes(self._buf[HEAD.size : total])
        if zlib.crc32(body) & 0xFFFFFFFF != body_crc:
            del self._buf[:1]
            self._resync = True
            raise FrameError("checksum mismatch (corrupted frame)")
        del self._buf[:total]
        try:
            header = json.loads(body[:hlen] or b"{}")
        except (UnicodeDecodeError, ValueError) as e:  # ValueError: also integers of > 4300 digits
            raise FrameError(f"header is not JSON: {str(e)[:200]}") from e
        except RecursionError as e:  # nesting deep enough to exhaust the parser's stack
            raise FrameError(f"header nests deeper than {MAX_DEPTH} levels") from e
        if not isinstance(header, dict):
            raise FrameError("header is not a JSON object")
        if depth(header) > MAX_DEPTH:
            raise FrameError(f"header nests deeper than {MAX_DEPTH} levels")
        return Frame(Code(code), header, body[hlen:], hlen)


def depth(value: Any) -> int:
    """How deeply ``value``'s lists and dicts nest (a scalar: 0), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in v if isinstance(x, (list, dict)))
    return deepest
