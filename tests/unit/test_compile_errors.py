"""`edgert compile` refuses bad input with one line and exit 2, before doing any work, and leaves
nothing behind."""

import os

import pytest
from conftest import run_cli
from test_cli_errors import assert_one_line_error, write_gguf


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--target", "pi9"], ["unknown target 'pi9'", "rpi5"]),
        (["--target", "rpi5", "--bits", "7"], ["--bits 7", "1, 2, 3, 4"]),
        (["--target", "rpi5", "--format", "hlq", "--bits", "1"], ["--bits 1", "hlq"]),
        (["--target", "rpi5", "--format", "nf4"], ["unknown format 'nf4'"]),
        (["--target", "rpi5", "--group-size", "48"], ["--group-size 48"]),
        (["--target", "rpi5", "--kv-cache", "q8"], ["--kv-cache goes with --dram-budget"]),
    ],
)
def test_bad_options(tmp_path, args, needles):
    r = run_cli("compile", str(tmp_path / "m.gguf"), *args, "-o", str(tmp_path / "o.edgert"))
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "o.edgert").exists()


def test_missing_cross_toolchain_names_the_package(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a PATH without the aarch64 cross compilers (python itself stays reachable via sys.executable)
    env = {"PATH": str(bin_dir)}
    r = run_cli("compile", str(tmp_path / "m.gguf"), "--target", "rpi5", env=env)
    assert_one_line_error(r, "aarch64-linux-gnu-gcc", "apt-get install gcc-aarch64-linux-gnu")


def test_existing_output(tmp_path):
    out = tmp_path / "o.edgert"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    write_gguf(tmp_path / "m.gguf")
    r = run_cli("compile", str(tmp_path / "m.gguf"), "--target", "host", "-o", str(out))
    assert_one_line_error(r, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "x"


def test_unsupported_architecture(tmp_path):
    write_gguf(tmp_path / "g.gguf", arch="gpt2")
    r = run_cli(
        "compile", str(tmp_path / "g.gguf"), "--target", "host", "-o", str(tmp_path / "o.edgert")
    )
    assert_one_line_error(r, "unsupported architecture 'gpt2'")
    assert os.listdir(tmp_path) == ["g.gguf"]


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("llama.attention.head_count", 0, "llama.attention.head_count = 0, expected an integer"),
        ("llama.embedding_length", (1 << 32) - 1, "llama.embedding_length = 4294967295, expected"),
        ("llama.embedding_length", 96, "token_embd.weight has shape (512, 64), expected (512, 96)"),
    ],
)
def test_corrupt_gguf_metadata(tmp_path, key, value, needle):
    """Metadata that cannot be right (no attention heads, a dimension the tensors do not have)
    is refused naming the field, before anything is written."""
    import gguf
    from make_synthetic_gguf import make_synthetic_gguf

    p = make_synthetic_gguf(
        out=tmp_path / "m.gguf", arch="llama", qtype="F32", progress=False, layers=1, dim=64
    )
    g = gguf.GGUFReader(str(p), "r+")
    g.fields[key].parts[g.fields[key].data[0]][0] = value
    g.data.flush()
    del g
    r = run_cli("compile", str(p), "--target", "host", "-o", str(tmp_path / "o.edgert"))
    assert_one_line_error(r, "m.gguf", needle)
    assert os.listdir(tmp_path) == ["m.gguf"]


def test_onnx_for_a_phone_is_refused(tmp_path):
    """ONNX artifacts need the TVM runtime, which is not built for bionic: refused before any
    work, naming why (a language model for the same target compiles: tests/device/
    test_android_lib.py)."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    onnx.save(helper.make_model(g), tmp_path / "m.onnx")
    r = run_cli("compile", str(tmp_path / "m.onnx"), "--target", "android-arm64",
                "-o", str(tmp_path / "o.edgert"))  # fmt: skip
    assert_one_line_error(r, "android-arm64", "TVM runtime", "bionic")
    assert not (tmp_path / "o.edgert").exists()
