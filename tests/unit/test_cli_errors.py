"""Bad input gets one line on stderr naming the problem, exit status 2, and no traceback."""

import numpy as np
import pytest
from conftest import run_cli


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def write_gguf(path, arch="llama", qtype=None):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_head_count(4)
    w.add_feed_forward_length(64)
    if qtype is None:
        w.add_tensor("token_embd.weight", np.zeros((16, 32), np.float32))
    else:
        nbytes = gguf.quants.quant_shape_to_byte_shape((16, 256), qtype)
        w.add_tensor("token_embd.weight", np.zeros(nbytes, np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_missing_file(tmp_path):
    r = run_cli("generate", str(tmp_path / "nope.gguf"), "-p", "hi")
    assert_one_line_error(r, "no such file", "nope.gguf")


def test_unknown_model_name():
    assert_one_line_error(run_cli("pull", "llama-9000"), "unknown model", "smollm2-135m")


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"hello, not a model")
    assert_one_line_error(run_cli("generate", str(p), "-p", "hi"), "not a GGUF file")


def test_truncated_gguf(tmp_path, smollm2_path):
    p = tmp_path / "cut.gguf"
    with open(smollm2_path, "rb") as f:
        p.write_bytes(f.read(5_000_000))
    assert_one_line_error(run_cli("generate", str(p), "-p", "hi"), "truncated", "cut.gguf")


def test_unsupported_quant_type(tmp_path):
    import gguf

    p = tmp_path / "iq.gguf"
    write_gguf(p, qtype=gguf.GGMLQuantizationType.IQ2_XXS)
    assert_one_line_error(run_cli("generate", str(p), "-p", "hi"), "IQ2_XXS", "token_embd.weight")


def test_unknown_architecture(tmp_path):
    """The error names the architecture and lists exactly the ones edgert runs."""
    import re

    from edgert.compiler.frontends.archs import GGUF_ARCHS

    p = tmp_path / "gpt2.gguf"
    write_gguf(p, arch="gpt2")
    r = run_cli("generate", str(p), "-p", "hi")
    assert_one_line_error(r, "unsupported architecture", "gpt2")
    m = re.search(r"GGUF architectures: (.*) \(mixtral", r.stderr)
    assert m and m.group(1).split(", ") == sorted(GGUF_ARCHS)
    assert set(GGUF_ARCHS) >= {
        "llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "olmoe", "gemma3", "phi3", "smollm3"
    }  # fmt: skip


def test_missing_tensor(tmp_path):
    p = tmp_path / "partial.gguf"
    write_gguf(p)
    assert_one_line_error(
        run_cli("generate", str(p), "-p", "hi"), "missing tensor", "output_norm.weight"
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--temp", "-1"], "--temp"),
        (["--top-p", "2"], "--top-p"),
    ],
)
def test_bad_sampling_options(smollm2_path, args, needle):
    assert_one_line_error(run_cli("generate", str(smollm2_path), "-p", "hi", *args), needle)


def test_perplexity_missing_text(smollm2_path, tmp_path):
    r = run_cli("perplexity", str(smollm2_path), "-f", str(tmp_path / "none.txt"))
    assert_one_line_error(r, "no such text file")


def test_device_urls_and_inventory_are_checked(tmp_path, monkeypatch):
    """A device URL urllib cannot read (a port out of range or not a number, a broken IPv6
    address), an empty key, a bad baud rate or a malformed inventory: the project's error,
    naming the URL or the file, not a ValueError."""
    from edgert.device import client
    from edgert.errors import EdgertError

    for url, needle in (
        ("ssh://pi:99999", "Port out of range"),
        ("ssh://pi:abc", "Port could not be cast"),
        ("ssh://[::1", "Invalid IPv6 URL"),
        ("ssh://pi?key=", "key= names no file"),
        ("serial:///dev/ttyUSB0?baud=-5", "bad baud rate"),
    ):
        with pytest.raises(EdgertError, match=needle):
            client.Device(url)
    inv = tmp_path / "devices.toml"
    monkeypatch.setattr(client, "inventory_file", lambda: inv)
    for text, needle in (("devices = 3", "devices must be tables"),
                         ("[devices.pi]\nurl = 5", "devices.pi.url must be a string")):  # fmt: skip
        inv.write_text(text)
        with pytest.raises(EdgertError, match=needle):
            client.Device("pi")
