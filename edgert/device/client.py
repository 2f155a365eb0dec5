"""Talking to a device: ``Device(url)`` opens a transport lazily (as a context manager), checks
the agent's HELLO, then sends requests and collects replies and streamed events.

Device URLs: ``ssh://user@host[:port][?key=PATH]`` (the agent on an SSH exec channel),
``serial:///dev/ttyUSB0?baud=115200`` (the agent on a serial line), ``local`` or
``local:///AGENT/ROOT`` (the agent as a child process on this machine); or a name from the
inventory ``~/.config/edgert/devices.toml``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgert.device.protocol import (
    PROTOCOL_VERSION,
    Code,
    FrameError,
    FrameReader,
    StreamClosed,
    encode,
)
from edgert.errors import EdgertError

log = logging.getLogger(__name__)

#: transports by URL scheme -> module and class (one file each: transport_<scheme>.py)
TRANSPORTS = {
    "local": ("edgert.device.transport_local", "LocalTransport"),
    "ssh": ("edgert.device.transport_ssh", "SSHTransport"),
    "serial": ("edgert.device.transport_serial", "SerialTransport"),
}
OPEN_ATTEMPTS = 3
#: sends of one idempotent request whose request or reply the line garbled
LINE_RETRIES = 5
#: requests that can be sent twice with the same effect
IDEMPOTENT = frozenset(
    {"device.info", "artifact.list", "artifact.load", "artifact.unload", "file.stat",
     "file.put", "run.infer"}
)  # fmt: skip


class DeviceError(EdgertError):
    """A device that cannot be reached, or that refused a request."""


def inventory_file() -> Path:
    return Path.home() / ".config" / "edgert" / "devices.toml"


def resolve(name_or_url: str) -> str:
    """A device URL, or the name of one in the inventory (``~/.config/edgert/devices.toml``:
    ``[devices.NAME]`` tables with a ``url`` key)."""
    if "://" in name_or_url or name_or_url in TRANSPORTS:
        return name_or_url
    f = inventory_file()
    devices = {}
    if f.exists():
        import sys

        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        try:
            devices = tomllib.loads(f.read_text()).get("devices", {})
        except (OSError, ValueError) as e:
            raise DeviceError(f"{f} is not valid TOML: {e}") from e
    if not isinstance(devices, dict):
        raise DeviceError(f"{f}: devices must be tables ([devices.NAME] with url = \"...\")")
    entry = devices.get(name_or_url)
    if isinstance(entry, dict) and not isinstance(entry.get("url", ""), str):
        raise DeviceError(f"{f}: devices.{name_or_url}.url must be a string, not {entry['url']!r}")
    if not isinstance(entry, dict) or "url" not in entry:
        known = ", ".join(sorted(devices)) or "none"
        raise DeviceError(
            f"unknown device {name_or_url!r}",
            f"give a URL (ssh://user@host[:port], local) or a name from {f} (known: {known})",
        )
    return str(entry["url"])


def transport_for(url: str, **opts):
    """The transport a device URL names (``scheme://...``; a bare scheme is allowed)."""
    import importlib

    url = resolve(url)
    forms = (
        "device URLs: ssh://user@host[:port][?key=PATH], serial:///dev/ttyX?baud=N, "
        "local[://AGENT_ROOT]"
    )
    try:  # urllib's own refusals (a port out of range or not a number, a broken [IPv6])
        scheme = urlparse(url).scheme if "://" in url else url
        if scheme not in TRANSPORTS:
            raise DeviceError(f"unknown device {url!r}", forms)
        modname, cls = TRANSPORTS[scheme]
        return getattr(importlib.import_module(modname), cls).from_url(url, **opts)
    except ValueError as e:
        raise DeviceError(f"cannot read the device URL {url!r}: {e}", forms) from e


class Device:
    def __init__(self, url: str, *, transport=None, accept_new_host_key: bool = False):
        self.url = resolve(url) if transport is None else url
        self.transport = transport or transport_for(url, accept_new_host_key=accept_new_host_key)
        self._reader: FrameReader | None = None
        self._w = None
        self._next_id = 0
        self.hello: dict[str, Any] | None = None

    def __enter__(self) -> Device:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        if self._reader is not None:
            return
        last: Exception | None = None
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            try:
                r, self._w = self.transport.open()
                self._reader = FrameReader(r)
                if getattr(self.transport, "needs_hello", False):  # agent already running
                    self._w.write(encode(Code.HELLO, {"protocol": PROTOCOL_VERSION}))
                    self._w.flush()
                frame = self._first_hello()
                break
            except EdgertError:
                self.transport.close()
                raise  # host key refused, no edgert on the device: retrying will not help
            except (OSError, StreamClosed, FrameError) as e:
                last = e
                log.debug("opening %s failed (attempt %d): %s", self.url, attempt, e)
                self.transport.close()
                self._reader = None
        else:
            raise DeviceError(
                f"cannot reach device {self.url}: {last}",
                "check the device URL and that edgert is installed there",
            )
        if frame.code != Code.HELLO or frame.header.get("protocol") != PROTOCOL_VERSION:
            self.close()
            raise DeviceError(
                f"device {self.url} speaks protocol {frame.header.get('protocol')}, "
                f"this edgert speaks {PROTOCOL_VERSION}",
                "install the same edgert version on both sides",
            )
        self.hello = frame.header

    def _first_hello(self):
        """The agent's HELLO (line noise or a previous session's late frames before it are
        skipped, a bounded number of times)."""
        for _ in range(64):
            try:
                f = self._reader.read()
            except FrameError:
                continue
            if f.code == Code.HELLO:
                return f
        raise StreamClosed("no HELLO from the agent")

    def close(self) -> None:
        if self._w is not None:
            try:
                self._w.write(encode(Code.BYE, {}))
                self._w.flush()
            except OSError:
                pass
        self.transport.close()
        self._reader = self._w = None

    def call(
        self,
        action: str,
        args: dict | None = None,
        payload: bytes = b"",
        *,
        on_event: Callable[[dict], None] | None = None,
    ) -> tuple[dict, bytes]:
        """Send one request; returns the reply's header and payload. A request or reply the line
        garbled is sent again (bounded) when the action is idempotent. Errors name the device."""
        attempts = LINE_RETRIES if action in IDEMPOTENT else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._call_once(action, args, payload, on_event)
            except _Garbled as e:
                if attempt == attempts:
                    raise DeviceError(f"device {self.url}: {action}: {e} ({attempt} tries)") from e
                log.info("%s garbled on the line (%s); sending again", action, e)
        raise AssertionError("unreachable")

    # -- the actions a run on a device takes ----------------------------------------------------
    def load(self, name: str, *, local: str | None = None, **options) -> None:
        """Load deployed artifact ``name`` (``options``: ``ctx``, ``dram_budget``, ``experts``,
        ``ffn``, as ``edgert run`` takes them; None values are left out); refused, naming the
        deploy command, where it is not on the device (``local``: the artifact's path here)."""
        have = [a["name"] for a in self.call("artifact.list")[0]["artifacts"]]
        if name not in have:
            raise DeviceError(
                f"{name} is not on device {self.url}",
                f"deploy it first: edgert deploy {local or name} {self.url}",
            )
        self.call("artifact.load", {"name": name, **{k: v for k, v in options.items()
                                                     if v is not None}})  # fmt: skip

    def generate(
        self,
        name: str,
        prompt: str,
        *,
        n_predict: int,
        temp: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        ignore_eos: bool = False,
        threads: int | None = None,
        on_text=None,
    ) -> dict:
        """Generate with loaded artifact ``name`` (sampled as ``edgert generate`` samples; None:
        the agent's default; ``threads``: the device's cores when None); ``on_text(piece)`` as
        text streams back. Returns the run's result
        (edgert.runtime.generate.GenerateResult.to_dict)."""
        args = {"name": name, "prompt": prompt, "n_predict": n_predict, "temp": temp}
        opts = {"top_k": top_k, "top_p": top_p, "seed": seed, "threads": threads}
        args.update({k: v for k, v in opts.items() if v is not None})
        if ignore_eos:
            args["ignore_eos"] = True
        hdr, _ = self.call(
            "run.generate", args,
            on_event=None if on_text is None else lambda e: on_text(e.get("text", "")),
        )  # fmt: skip
        return hdr["result"]

    def infer(self, name: str, feeds: dict, *, threads: int | None = None) -> tuple[dict, float]:
        """Run loaded ONNX artifact ``name`` on ``feeds`` (name -> array): (outputs, ms);
        ``threads``: the device's cores when None."""
        import io

        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, **feeds)
        args = {"name": name, **({"threads": threads} if threads is not None else {})}
        hdr, payload = self.call("run.infer", args, buf.getvalue())
        with np.load(io.BytesIO(payload)) as f:
            outs = {k: f[k] for k in f.files}
        return outs, hdr["run_ms"]

    def _call_once(self, action, args, payload, on_event) -> tuple[dict, bytes]:
        self.open()
        self._next_id += 1
        rid = self._next_id
        try:
            req = {"id": rid, "action": action, "args": args or {}}
            self._w.write(encode(Code.REQUEST, req, payload))
            self._w.flush()
            while True:
                try:
                    f = self._reader.read()
                except FrameError as e:
                    raise _Garbled(f"garbled reply: {e}") from e
                if f.header.get("id") not in (rid, None):
                    continue  # a late answer to an earlier request
                if f.code == Code.EVENT and on_event:
                    on_event(f.header)
                elif f.code == Code.REPLY:
                    return f.header, f.payload
                elif f.code == Code.ERROR:
                    err = str(f.header.get("error"))
                    if f.header.get("id") is None or "checksum" in err:
                        raise _Garbled(err)  # the agent got our request garbled
                    raise DeviceError(f"device {self.url}: {action}: {err}")
        except (OSError, StreamClosed) as e:
            self.close()
            raise DeviceError(
                f"device {self.url} closed the connection during {action} ({e})"
            ) from e


class _Garbled(Exception):
    """A frame damaged on the line (either direction)."""
