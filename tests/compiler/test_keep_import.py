"""`compile --bits keep`: a GGUF's quantized tensors in the artifact as the file stores them.
Synthetic models written in each type (tools/make_synthetic_gguf.py; K-quants by edgert's own
writer, read back by the gguf package's dequantization): the artifact's weights equal the GGUF's
dequantized ones, the C forward pass on them gives the float reference's logits on the GGUF,
the manifest and `inspect` say what was kept, and what cannot be kept is refused in one line.
llama.cpp's own files of these types: tests/parity/test_keep_parity.py."""

import json

import numpy as np
import pytest
from conftest import PREFILL_TOL, greedy_divergence, greedy_tokens, run_cli
from edgert.compiler.compile import compile_model
from edgert.compiler.frontends import load_model
from edgert.compiler.quant.scheme import QuantScheme
from make_synthetic_gguf import make_synthetic_gguf

from edgert.format.artifact import Artifact
from edgert.runtime.open import open_artifact_engine
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import reference_model

#: rows a multiple of 256 (the K-quants' super-block)
SHAPE = {"dim": 256, "ffn": 512, "heads": 4, "kv_heads": 2, "vocab": 512, "layers": 2}
#: type -> (stored width, group) of its linear weights in the artifact
KINDS = {"Q4_0": (4, 32), "Q4_1": (4, 32), "Q4_K": (4, 32), "Q3_K": (3, 16), "Q2_K": (2, 16),
         "Q5_0": (5, 32), "Q5_1": (5, 32), "TQ2_0": (2, 128), "TQ1_0": (2, 128),
         "Q8_0": (8, None)}  # fmt: skip
#: types whose offset is a fixed multiple of the scale (w = d (q - 8), Q3_K's q - 4, the ternary
#: types' t = q - 1): one zero for every group
SYMMETRIC = ("Q4_0", "Q5_0", "Q3_K", "TQ1_0", "TQ2_0")
TOKENS = [5, 100, 7, 300, 42, 9, 11, 200, 17, 64, 3, 250]


def keep(tmp_path, kind: str, arch: str = "llama", **shape):
    g = make_synthetic_gguf(out=tmp_path / f"{arch}-{kind}.gguf", arch=arch, qtype=kind,
                            progress=False, **{**SHAPE, **shape})  # fmt: skip
    s = compile_model(model=g, target="host", out=tmp_path / f"{arch}-{kind}.edgert",
                      scheme=QuantScheme(), keep=True)  # fmt: skip
    return g, s


@pytest.mark.parametrize("kind", list(KINDS))
def test_weights_and_logits_are_the_files(tmp_path, kind):
    g, s = keep(tmp_path, kind)
    src = load_model(g)
    art = Artifact.open(s.out)
    ours = reference_model(art)
    bits, group = KINDS[kind]
    for name in src.names():
        if src.infos[name].source_type != kind or name == "token_embd.weight":
            continue
        e = art.tensors[name]
        assert (e.get("bits", 8), e.get("group_size")) == (bits, group), (name, e)
        want, got = src.tensor(name), ours.tensor(name)
        # within float16 rounding of the composed group parameters (2^-11 of |scale| code and of
        # |offset|, each up to twice the largest weight); a misplaced code is off by a whole step
        # (1/63 of its group's range or more)
        assert np.abs(got - want).max() <= 2.0**-9 * np.abs(want).max(), name
        if kind in ("Q4_0", "Q5_0", "Q8_0", "TQ1_0", "TQ2_0"):
            assert np.array_equal(got, want), name
        if e["format"] == "uniform":  # symmetric types' one zero (Q4_0's 8) is stored once
            zero = art.read_tensor(name)["zero"]
            assert (zero.size == 32) == (kind in SYMMETRIC), (name, zero.shape)
    # rows of the head read alone (compile's quality measure goes through a head a slice at a
    # time): a LUT head's from the row tiles that hold them, the whole head's rows
    fresh = reference_model(art)
    fresh.cache_limit = 0  # nothing is loaded whole
    rows = fresh.part("output.weight", slice(5, 77))
    assert "output.weight" not in fresh._cache
    assert np.array_equal(rows, ours.tensor("output.weight")[5:77])
    # the linear weights and the output head, and the embedding table where 8-bit rows hold it
    n = 7 * SHAPE["layers"] + 1 + (kind in ("Q4_0", "Q5_0", "Q8_0"))
    assert s.method == "keep" and s.tensors_by_method[kind] == n
    q = art.manifest["quant"]
    assert q["method"] == "keep" and q["group_sizes"] == ([group] if group else [])
    assert q["quality"]["kl"] < 1e-4
    # the C forward pass on the kept weights: the float reference's logits on the GGUF
    ref = ReferenceEngine(src, max_ctx=64).forward(TOKENS)
    eng = open_artifact_engine(s.out, max_ctx=64)
    got = eng.forward(TOKENS)
    assert np.abs(got - ref).max() <= PREFILL_TOL * np.abs(ref).max()
    want = greedy_tokens(ReferenceEngine(src, max_ctx=64), ["hello world"], 12)[0]
    tokens = greedy_tokens(eng, ["hello world"], 12)[0]
    greedy_divergence(ReferenceEngine(src, max_ctx=64), src.tokenizer, "hello world", tokens, want)


def test_experts_are_kept_one_by_one(tmp_path):
    """Stacked expert tensors: each expert's rows of the stored blocks."""
    g, s = keep(tmp_path, "Q4_K", arch="qwen3moe", experts=4, top_k=2, expert_ffn=256)
    src, ours = load_model(g), reference_model(Artifact.open(s.out))
    name = "blk.1.ffn_down_exps.weight"
    want, got = src.tensor(name), ours.tensor(name)
    assert got.shape == want.shape == (4, 256, 256)
    assert np.abs(got - want).max() <= 2.0**-9 * np.abs(want).max()
    assert s.tensors_by_method["Q4_K"] > 3 * 4 * SHAPE["layers"]


def test_cli_and_inspect_say_what_was_kept(tmp_path):
    g = make_synthetic_gguf(out=tmp_path / "m.gguf", arch="llama", qtype="Q2_K", progress=False,
                            **SHAPE)  # fmt: skip
    out = tmp_path / "m.edgert"
    r = run_cli("compile", str(g), "--target", "host", "--bits", "keep", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    # every linear weight and the head Q2_K, the embedding table 8-bit rows rounded from its Q2_K
    # values (the table is read by rows)
    assert summary["tensors_by_method"] == {"Q2_K": 15, "Q2_K -> 8-bit": 1}
    assert summary["bits_per_weight"] == pytest.approx(4.0)  # 2-bit codes + float16 pairs per 16
    r = run_cli("inspect", str(out))
    assert r.returncode == 0, r.stderr
    assert "uniform g16, keep (Q2_K x15, Q2_K -> 8-bit x1)" in r.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--bits-budget", "3"], "--bits-budget would change it"),
        (["--quant-method", "rtn"], "--quant-method would change it"),
        (["--head-bits", "4"], "--head-bits would change it"),
        (["--format", "hlq"], "--format hlq would change it"),
        (["--group-size", "64"], "each tensor's own group size"),
    ],
)
def test_keep_refuses_what_would_requantize(tmp_path, args, message):
    g = make_synthetic_gguf(out=tmp_path / "m.gguf", arch="llama", qtype="Q4_K", progress=False,
                            **SHAPE)  # fmt: skip
    r = run_cli("compile", str(g), "--target", "host", "--bits", "keep", *args,
                "-o", str(tmp_path / "x.edgert"))  # fmt: skip
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "x.edgert").exists()


def test_keep_refuses_float_models(tmp_path):
    g = make_synthetic_gguf(out=tmp_path / "f.gguf", arch="llama", qtype="F32", progress=False,
                            **SHAPE)  # fmt: skip
    r = run_cli("compile", str(g), "--target", "host", "--bits", "keep", "-o",
                str(tmp_path / "x.edgert"))  # fmt: skip
    assert r.returncode == 2 and "its linear weights are F32" in r.stderr, r.stderr
    assert "use --bits N" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("compile", str(g), "--target", "host", "--bits", "three")
    assert r.returncode == 2 and "'three' is not a bit width or 'keep'" in r.stderr


def test_kept_q8_layers_stream_under_a_budget(tmp_path):
    """Linear weights kept as 8-bit rows stream from flash like LUT ones: same tokens."""
    _, s = keep(tmp_path, "Q8_0", layers=4)
    want = greedy_tokens(open_artifact_engine(s.out, max_ctx=64), ["hello world"], 10)
    eng = open_artifact_engine(s.out, max_ctx=64, dram_budget=3 << 20)
    assert eng.dram_plan.streamed
    assert greedy_tokens(eng, ["hello world"], 10) == want
