"""The serial transport: ``serial:///dev/ttyUSB0?baud=115200``. The device runs
``edgert agent --serial /dev/ttyS0`` (or a USB gadget port); frames travel over the raw line.
Line noise costs single frames: checksums catch it, the reader resynchronises, and uploads resend
the chunk (see edgert.device.deploy)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from edgert.errors import EdgertError

DEFAULT_BAUD = 115200
#: seconds without a byte before a read gives up (the link is then treated as closed)
READ_TIMEOUT = 60.0


class SerialTransport:
    scheme = "serial"

    def __init__(self, port: str, baud: int = DEFAULT_BAUD):
        self.port = port
        self.baud = baud
        self.ser = None

    @classmethod
    def from_url(cls, url: str, **_opts) -> SerialTransport:
        u = urlparse(url)
        if not u.path:
            raise EdgertError(f"no port in {url!r}", "write serial:///dev/ttyUSB0?baud=115200")
        q = parse_qs(u.query)
        try:
            baud = int(q.get("baud", [DEFAULT_BAUD])[0])
        except ValueError:
            baud = 0
        if baud <= 0:
            raise EdgertError(f"bad baud rate in {url!r}", "write ?baud=115200 (or leave it out)")
        return cls(u.path, baud)

    @property
    def name(self) -> str:
        return f"serial://{self.port}?baud={self.baud}"

    #: the agent was started before we connected: ask for its HELLO
    needs_hello = True

    def open(self):
        try:
            import serial
        except ImportError as e:  # pragma: no cover - depends on the install
            raise EdgertError("serial devices need pyserial", "pip install 'edgert[remote]'") from e
        try:
            self.ser = serial.Serial(self.port, self.baud, timeout=READ_TIMEOUT)
        except (serial.SerialException, OSError) as e:
            raise EdgertError(f"{self.name}: cannot open the port: {e}") from e
        self.ser.reset_input_buffer()
        return self.ser, self.ser

    def close(self) -> None:
        if self.ser is not None:
            try:
                self.ser.close()
            except OSError:
                pass
            self.ser = None
