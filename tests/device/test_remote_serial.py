"""The serial transport against the emulated arm64 device: the agent runs there on one end of a
pseudo-terminal line (`edgert agent --serial /dev/pts/N`), the host on the other, with a relay
in between that corrupts bytes in both directions. Deploy (put-file in checksummed chunks) still
completes, the corrupted chunks being refused and resent, and the greedy tokens equal the host
reference; an interrupted transfer resumes."""

import json
import os
import threading
import time
import tty

import pytest
from conftest import compile_synthetic, reference_tokens, run_cli
from edgert.compiler.quant.scheme import QuantScheme

from edgert.device.client import Device
from edgert.device.deploy import deploy
from edgert.emulation import arm64 as emulator

pytestmark = pytest.mark.device
#: byte offsets flipped on the line, host -> device and device -> host
CORRUPT_TO_DEVICE = (3_000, 40_000, 90_000)
CORRUPT_TO_HOST = (700,)


class CorruptingLine:
    """Two pseudo-terminals joined by relay threads that flip one byte at each given offset of
    each direction's stream (the serial line's noise)."""

    def __init__(self, to_device=(), to_host=()):
        self.m_host, self.s_host = os.openpty()
        self.m_dev, self.s_dev = os.openpty()
        for fd in (self.s_host, self.s_dev):
            tty.setraw(fd)
        self.host_port = os.ttyname(self.s_host)
        self.device_port = os.ttyname(self.s_dev)
        self.flipped = {"to_device": 0, "to_host": 0}
        self._stop = False
        for src, dst, offsets, key in (
            (self.m_host, self.m_dev, sorted(to_device), "to_device"),
            (self.m_dev, self.m_host, sorted(to_host), "to_host"),
        ):
            threading.Thread(target=self._pump, args=(src, dst, offsets, key), daemon=True).start()

    def _pump(self, src, dst, offsets, key):
        seen = 0
        while not self._stop:
            try:
                data = bytearray(os.read(src, 65536))
            except OSError:
                time.sleep(0.01)
                continue
            for off in offsets:
                if seen <= off < seen + len(data):
                    data[off - seen] ^= 0x5A
                    self.flipped[key] += 1
            seen += len(data)
            view = memoryview(data)
            while view:
                n = os.write(dst, view)
                view = view[n:]

    def close(self):
        self._stop = True


@pytest.fixture(scope="module")
def serial_device(emulated_device, tmp_path_factory):
    line = CorruptingLine(CORRUPT_TO_DEVICE, CORRUPT_TO_HOST)
    log = tmp_path_factory.mktemp("serial") / "agent.log"
    agent = emulator.spawn(
        ["/root/.edgert/venv/bin/edgert", "agent", "--serial", line.device_port], log_path=log
    )
    yield f"serial://{line.host_port}?baud=115200", line, emulated_device[1]
    agent.terminate()
    agent.wait(timeout=30)
    line.close()


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    da, db = tmp_path_factory.mktemp("ser-a"), tmp_path_factory.mktemp("ser-b")
    a = compile_synthetic(da, "llama", QuantScheme("uniform", 4, 32), target="rpi5").out
    b = compile_synthetic(db, "qwen2moe", QuantScheme("uniform", 2, 32), target="rpi5").out
    return a, b


def test_deploy_and_run_over_a_noisy_serial_line(serial_device, arts):
    url, line, env = serial_device
    with Device(url) as dev:
        assert dev.call("device.info")[0]["info"]["machine"] == "aarch64"
        r = deploy(arts[0], dev, chunk=16384, progress=False)
    assert r.bytes_sent >= r.bytes_total
    assert line.flipped["to_device"] == len(CORRUPT_TO_DEVICE)
    assert line.flipped["to_host"] == len(CORRUPT_TO_HOST)
    r = run_cli("run", str(arts[0]), "--device", url, "-p", "the cat sat on", "-n", "16",
                "--json", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokens"] == reference_tokens(arts[0], "the cat sat on")


def test_serial_transfer_resumes(serial_device, arts):
    url, _, _ = serial_device

    class Cut:
        def __init__(self, dev):
            self.dev, self.url, self.left = dev, dev.url, 4

        def call(self, action, args=None, payload=b"", **kw):
            if action == "file.put":
                if self.left == 0:
                    raise OSError("cable pulled")
                self.left -= 1
            return self.dev.call(action, args, payload, **kw)

    with Device(url) as dev, pytest.raises(OSError):
        deploy(arts[1], Cut(dev), name="moe", chunk=8192, progress=False)
    with Device(url) as dev:
        r = deploy(arts[1], dev, name="moe", chunk=8192, progress=False)
        assert r.resumed_bytes >= 4 * 8192
        dev.call("artifact.load", {"name": "moe"})
        got = dev.call("run.generate", {"name": "moe", "prompt": "hello world", "n_predict": 8})
    assert got[0]["result"]["tokens"] == reference_tokens(arts[1], "hello world", n=8)


def test_emulator_serial_mode(emulated_device, arts, tmp_path):
    """`edgert emulator up --serial` serves the agent on a socat pty pair as well."""
    _, env = emulated_device
    r = run_cli("emulator", "up", "--serial", "--json", env=env)
    assert r.returncode == 0, r.stderr
    serial_url = json.loads(r.stdout)["serial_url"]
    with Device(serial_url) as dev:
        assert dev.call("device.info")[0]["info"]["machine"] == "aarch64"
    r = run_cli("deploy", str(arts[0]), serial_url, env=env)
    assert r.returncode == 0, r.stderr
    host = compile_synthetic(tmp_path, "llama", QuantScheme("uniform", 4, 32)).out
    r = run_cli("deploy", str(host), serial_url, env=env)
    assert r.returncode == 2 and "compiled for target host" in r.stderr
