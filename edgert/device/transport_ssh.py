"""The SSH transport: ``ssh://user@host[:port]``. The agent runs as ``edgert agent --stdio`` on
an exec channel (paramiko); its stdin/stdout carry the frames.

Security: the host key is checked against ``~/.ssh/known_hosts`` (and edgert's own
``~/.config/edgert/known_hosts``); an unknown host is refused unless the caller opts in to accept
it (``--accept-new-host-key``), which records it. Authentication uses the SSH agent or the usual
key files (or ``?key=PATH`` in the URL). Every argument of a remote command is quoted.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from edgert.errors import EdgertError

log = logging.getLogger(__name__)

#: where edgert keeps the host keys it was told to accept
KNOWN_HOSTS = Path.home() / ".config" / "edgert" / "known_hosts"
#: the agent command tried on the device, in order: the venv `edgert deploy` installs, then PATH
AGENT_COMMANDS = ("~/.edgert/venv/bin/edgert", "edgert")
CONNECT_TIMEOUT = 20.0
#: seconds between keepalive messages on an open connection
KEEPALIVE = 15


class SSHTransport:
    scheme = "ssh"

    def __init__(self, url: str, *, accept_new_host_key: bool = False, root: str | None = None):
        u = urlparse(url)
        if u.scheme != "ssh" or not u.hostname:
            raise EdgertError(f"not an SSH device URL: {url!r}", "write ssh://user@host[:port]")
        self.url = url
        self.host = u.hostname
        self.port = u.port or 22  # urllib refuses ports past 65535 or not numbers (ValueError)
        self.user = u.username or "root"
        q = parse_qs(u.query, keep_blank_values=True)
        self.key = q.get("key", [None])[0]
        if self.key == "":
            raise EdgertError(f"{url!r}: key= names no file", "write ?key=PATH or leave it out")
        self.root = q.get("root", [root])[0]
        self.accept_new = accept_new_host_key
        self.client = None
        self.channel = None

    @classmethod
    def from_url(cls, url: str, *, accept_new_host_key: bool = False, **_opts) -> "SSHTransport":
        return cls(url, accept_new_host_key=accept_new_host_key)

    @property
    def name(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"

    def connect(self):
        """An authenticated paramiko client (host key verified)."""
        try:
            import paramiko
        except ImportError as e:  # pragma: no cover - depends on the install
            raise EdgertError("SSH devices need paramiko", "pip install 'edgert[remote]'") from e
        if self.client is not None:
            return self.client
        c = paramiko.SSHClient()
        c.load_system_host_keys()
        if KNOWN_HOSTS.exists():
            c.load_host_keys(str(KNOWN_HOSTS))
        if self.accept_new:
            KNOWN_HOSTS.parent.mkdir(parents=True, exist_ok=True)
            KNOWN_HOSTS.touch(exist_ok=True)
            c.load_host_keys(str(KNOWN_HOSTS))  # new keys are saved here
            c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            c.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            c.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=str(Path(self.key).expanduser()) if self.key else None,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
            )
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e):
                raise EdgertError(
                    f"{self.name}: unknown host key",
                    "verify the device, then pass --accept-new-host-key once",
                ) from e
            raise EdgertError(f"{self.name}: SSH failed: {e}") from e
        except OSError as e:
            raise EdgertError(f"{self.name}: cannot connect: {e}") from e
        # a device that vanishes (power cut, cable) ends the connection instead of leaving a
        # read waiting on it for ever
        c.get_transport().set_keepalive(KEEPALIVE)
        return c

    def exec(self, argv: list[str], *, timeout: float = 600) -> tuple[int, str, str]:
        """Run a command on the device (each argument quoted); returns (status, out, err).

        Its output is read while it runs (a command writing more than the channel's window
        would otherwise never finish), and a command still running after ``timeout`` seconds
        is abandoned with an error naming it."""
        import time

        self.client = self.connect()
        cmd = " ".join(_quote(a) for a in argv)
        chan = self.client.get_transport().open_session()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            chan.exec_command(cmd)
            ended = None  # when the command's exit status came
            while not (chan.exit_status_ready() and chan.eof_received):
                if ended is None and chan.exit_status_ready():
                    ended = time.monotonic()
                if chan.recv_ready():
                    out += chan.recv(1 << 16)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                elif chan.closed or (ended is not None and time.monotonic() - ended > 5):
                    break  # gone, or exited with a child of its own still holding its output
                elif time.monotonic() > deadline:
                    raise EdgertError(
                        f"{self.name}: `{cmd}` did not finish within {timeout:.0f} s",
                        "the device may be overloaded or the command stuck; its output so far: "
                        + (bytes(err) or bytes(out))[-400:].decode(errors="replace"),
                    )
                elif ended is None:
                    chan.status_event.wait(0.02)
                else:
                    time.sleep(0.01)
            while chan.recv_ready():
                out += chan.recv(1 << 16)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(1 << 16)
            status = chan.recv_exit_status() if chan.exit_status_ready() else -1
        finally:
            chan.close()
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def agent_command(self) -> str:
        for cand in AGENT_COMMANDS:
            status, _, _ = self.exec(["sh", "-c", f"command -v {cand} >/dev/null 2>&1 || "
                                     f"test -x {cand}"])  # fmt: skip
            if status == 0:
                return cand
        raise EdgertError(
            f"{self.name}: edgert is not installed on the device",
            f"run `edgert deploy ART {self.url}` (it installs the runtime) or pip install edgert",
        )

    def open(self):
        self.client = self.connect()
        agent = self.agent_command()
        argv = [agent, "agent", "--stdio"] + (["--root", self.root] if self.root else [])
        self.channel = self.client.get_transport().open_session()
        self.channel.exec_command(" ".join(_quote(a) for a in argv))
        return self.channel.makefile("rb", -1), self.channel.makefile_stdin("wb", -1)

    def close(self) -> None:
        for x in (self.channel, self.client):
            if x is not None:
                try:
                    x.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    log.debug("close failed", exc_info=True)
        self.channel = self.client = None


def _quote(arg: str) -> str:
    """Shell-quote one argument, keeping a leading ``~/`` expandable."""
    if arg.startswith("~/"):
        return "~/" + shlex.quote(arg[2:])
    return shlex.quote(arg)


def trust_host_key(line: str) -> None:
    """Record ``[host]:port TYPE BASE64`` in edgert's known_hosts (the emulator's own key)."""
    KNOWN_HOSTS.parent.mkdir(parents=True, exist_ok=True)
    host = line.split()[0]
    old = KNOWN_HOSTS.read_text().splitlines() if KNOWN_HOSTS.exists() else []
    keep = [x for x in old if x.split() and x.split()[0] != host]
    KNOWN_HOSTS.write_text("\n".join([*keep, line]) + "\n")
