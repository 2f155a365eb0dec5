"""Every architecture against llama.cpp on synthetic F32 GGUFs (tools/make_synthetic_gguf.py):
the numpy reference and the C forward pass, both on the file's float weights, give llama.cpp's
logits, tokens and perplexity (which checks routing conventions, q/k norms, rope variants,
sliding windows and post norms against the peer); the text is tokenized identically; a 4-bit
artifact's perplexity stays near the reference's on the artifact's own dequantized weights; and
`edgert perplexity MODEL.gguf` prints the reference's figure."""

import json
import subprocess
import sys

import numpy as np
import pytest
from bench_vs_llamacpp import peer_llama
from edgert.compiler.frontends import load_model
from make_synthetic_gguf import ARCHS, make_synthetic_gguf
from parity import DEFAULT_TEXT, compare

from edgert.runtime.reference import ReferenceEngine

pytestmark = pytest.mark.parity
LOGIT_TOL = 1e-5  # max abs, both sides float32 with an F32 KV cache
#: llama.cpp's CPU GELU reads a float16 table (x rounded to half precision): Gemma's GeGLU
#: differs from the exact tanh form by up to ~1e-4 in these logits
GELU_LOGIT_TOL = 3e-4
PPL_REL_TOL = 5e-4  # perplexity within 0.05% of llama.cpp's
QUANT_PPL_REL_TOL = 5e-3  # a 4-bit artifact within 0.5% of the reference on its own weights
CTX = 512  # positions compared per architecture (top-1 at each, perplexity over the second half)
#: deep enough for each layer pattern (gemma3: five sliding layers, then a global one; smollm3:
#: every 4th layer without RoPE)
LAYERS = {"gemma3": 6, "smollm3": 4}


def synthetic(tmp_path, arch):
    return make_synthetic_gguf(
        out=tmp_path / f"{arch}.gguf", arch=arch, qtype="F32", progress=False,
        layers=LAYERS.get(arch, 3),
    )  # fmt: skip


def tol(arch):
    return GELU_LOGIT_TOL if arch == "gemma3" else LOGIT_TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_llama_cpp(tmp_path, arch):
    path = synthetic(tmp_path, arch)
    tokens = [5, 100, 7, 300, 42, 9, 11, 200, 17, 64]
    ours = ReferenceEngine(load_model(path), max_ctx=64).forward(tokens)
    llm = peer_llama(str(path), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(tokens)
    theirs = np.array(llm.scores[: len(tokens)])
    assert np.max(np.abs(ours - theirs)) < tol(arch)
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize("engine", ["reference", "c"])
@pytest.mark.parametrize("arch", ARCHS)
def test_text_top1_and_perplexity_equal_llama_cpp(tmp_path, arch, engine):
    text = DEFAULT_TEXT.read_text()
    r = compare(synthetic(tmp_path, arch), text, ctx=CTX, max_chunks=1, f32_kv=True,
                self_check=False, engine=engine)  # fmt: skip
    assert r["tokenization_equal"]
    assert r["chunks"] == 1 and r["scored"] == CTX // 2 - 1
    assert r["top1_agreement"] == 1.0, r
    assert r["ppl_rel_diff"] < PPL_REL_TOL, r
    assert r["logit_max_abs_diff"] < 10 * tol(arch), r


@pytest.mark.parametrize("arch", ARCHS)
def test_4bit_artifact_perplexity(tmp_path, arch):
    """The compiled path (LUT kernels, 8-bit head) against the reference on the artifact's own
    dequantized weights, and `edgert perplexity` on the GGUF against the reference."""
    from edgert.compiler.compile import compile_model
    from edgert.compiler.quant.scheme import QuantScheme

    from edgert.format.artifact import Artifact
    from edgert.runtime.open import open_artifact_engine
    from edgert.runtime.perplexity import perplexity
    from edgert.runtime.weights import reference_model

    g = synthetic(tmp_path, arch)
    s = compile_model(model=g, target="host", out=tmp_path / "a.edgert",
                      scheme=QuantScheme("uniform", 4, 32))  # fmt: skip
    m = load_model(g)
    tokens = m.tokenizer.encode(DEFAULT_TEXT.read_text())[: 2 * CTX]
    art = Artifact.open(s.out)
    ref = perplexity(ReferenceEngine(reference_model(art), max_ctx=CTX), tokens=tokens, ctx=CTX)
    got = perplexity(open_artifact_engine(s.out, max_ctx=CTX), tokens=tokens, ctx=CTX)
    assert got.scored == ref.scored >= CTX // 2
    assert abs(got.ppl - ref.ppl) / ref.ppl < QUANT_PPL_REL_TOL
    text = tmp_path / "t.txt"
    text.write_text(m.tokenizer.decode(tokens))
    out = subprocess.run(
        [sys.executable, "-m", "edgert", "perplexity", str(g), "-f", str(text), "-c", str(CTX),
         "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    cli = json.loads(out.stdout)
    want = perplexity(ReferenceEngine(m, max_ctx=CTX), tokens=m.tokenizer.encode(text.read_text()),
                      ctx=CTX)  # fmt: skip
    assert cli["ppl"] == pytest.approx(want.ppl, rel=1e-6)
