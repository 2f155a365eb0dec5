"""Compile synthetic models of every architecture for the host and run the artifact: greedy
tokens equal the reference forward on the same (dequantized) weights; bit allocation and HLQ
produce what they say; a corrupted or truncated artifact is refused naming the tensor."""

import json

import numpy as np
import pytest
from conftest import NEAR_TIE, compile_synthetic, greedy_divergence
from edgert.compiler.quant.scheme import QuantScheme

from edgert.format.artifact import Artifact, ArtifactError
from edgert.runtime.generate import Sampler, generate
from edgert.runtime.open import open_artifact_engine
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import reference_model

PROMPTS = ["the cat sat on", "hello world", "a b c d e"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("art")
    out = {}
    for arch, scheme in [
        ("llama", QuantScheme("uniform", 4, 32)),
        ("mixtral", QuantScheme("uniform", 2, 32)),
        ("qwen2moe", QuantScheme("hlq", 3, 64)),
        ("olmoe", QuantScheme("uniform", 3, 32)),
    ]:
        out[arch] = compile_synthetic(d, arch, scheme)
    return out


@pytest.mark.parametrize("arch", ["llama", "mixtral", "qwen2moe", "olmoe"])
def test_greedy_tokens_equal_reference_on_same_weights(artifacts, arch):
    """Greedy tokens equal the reference's, except after a step the reference itself decides by
    less than the kernels' error (then they agree up to that step)."""
    path = artifacts[arch].out
    eng = open_artifact_engine(path, max_ctx=64)
    ref = ReferenceEngine(reference_model(Artifact.open(path)), max_ctx=64)
    ties = 0
    for p in PROMPTS:
        a = generate(eng, prompt=p, n_predict=32, sampler=Sampler(temp=0), stop_at_eos=False)
        b = generate(ref, prompt=p, n_predict=32, sampler=Sampler(temp=0), stop_at_eos=False)
        ties += greedy_divergence(ref, eng.tokenizer, p, a.tokens, b.tokens)
    # near-ties are rare: the other prompts agree on all 32 tokens (a mixture's routers add their
    # own near ties: each divergence above was checked to follow one)
    assert ties <= (2 if ref.cfg.is_moe else 1)
    ids = eng.tokenizer.encode("the quick brown fox")
    eng.reset()
    ref.reset()
    assert np.max(np.abs(eng.forward(ids) - ref.forward(ids))) < 1e-2


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_decode_steps_follow_the_reference(artifacts, arch):
    """Dense and MoE models decode through the C forward pass; step by step, after a prompt, its
    logits stay within the kernels' error of the reference on the same dequantized weights."""
    path = artifacts[arch].out
    eng = open_artifact_engine(path, max_ctx=64)
    ref = ReferenceEngine(reference_model(Artifact.open(path)), max_ctx=64)
    ids = eng.tokenizer.encode("the quick brown fox")
    a, b = eng.forward(ids, last_only=True), ref.forward(ids, last_only=True)
    for _ in range(8):
        # activations are rounded into the kernels' tables: within NEAR_TIE of the largest logit
        assert np.max(np.abs(a - b)) <= NEAR_TIE * np.max(np.abs(b))
        nxt = int(np.argmax(b))
        a, b = eng.forward([nxt], last_only=True), ref.forward([nxt], last_only=True)
    assert np.array_equal(eng.expert_counts, ref.expert_counts)


@pytest.mark.parametrize("arch", ["llama", "olmoe"])
def test_perplexity_through_runtime_within_half_percent(artifacts, arch):
    from edgert.runtime.perplexity import perplexity

    path = artifacts[arch].out
    eng = open_artifact_engine(path, max_ctx=64)
    ref = ReferenceEngine(reference_model(Artifact.open(path)), max_ctx=64)
    toks = eng.tokenizer.encode(" ".join(PROMPTS * 12))
    got = perplexity(eng, tokens=toks, ctx=32, max_chunks=3).ppl
    want = perplexity(ref, tokens=toks, ctx=32, max_chunks=3).ppl
    assert np.isfinite(want) and abs(got / want - 1) < 0.005, (got, want)


def test_manifest_and_formats(artifacts):
    art = Artifact.open(artifacts["qwen2moe"].out)
    m = art.manifest
    assert m["target"]["name"] == "host" and m["tvm_version"]
    assert m["quant"]["format"] == "hlq"
    e = art.tensors["blk.0.attn_q.weight"]
    assert e["format"] == "hlq" and e["bits"] == 3 and e["residency"] == "resident"
    assert art.tensors["blk.1.ffn_down_exps.7.weight"]["format"] == "hlq"
    assert art.tensors["token_embd.weight"]["format"] == "q8"
    for e in art.tensors.values():
        assert all(b["offset"] % 4096 == 0 for b in e["buffers"].values())


def test_bits_budget_allocates_per_expert(tmp_path):
    # stored bits at group 32: 2-bit 3.0, 3-bit 4.0, 4-bit 5.0 per weight
    s = compile_synthetic(tmp_path, "mixtral", QuantScheme("uniform", 4, 32), bits_budget=3.5)
    assert s.bits_per_weight <= 3.5 + 1e-9 and 2 < s.avg_bits <= 2.5 + 1e-9
    assert len(set(s.bits_per_unit.values())) > 1  # not one width for everything
    assert any(".expert." in u for u in s.bits_per_unit)
    plan = Artifact.open(s.out).manifest["plan"]
    assert len(plan["expert_variants"]) == 2 and len(plan["expert_variants"][0]) == 4
    eng = open_artifact_engine(s.out, max_ctx=32)
    ref = ReferenceEngine(reference_model(Artifact.open(s.out)), max_ctx=32)
    ids = eng.tokenizer.encode("one two three")
    assert np.array_equal(eng.forward(ids).argmax(-1), ref.forward(ids).argmax(-1))


def test_corrupt_and_truncated_artifacts_are_refused(artifacts, tmp_path):
    import shutil

    src = artifacts["llama"].out
    bad = tmp_path / "bad.edgert"
    shutil.copytree(src, bad)
    man = json.loads((bad / "manifest.json").read_text())
    off = man["tensors"]["blk.1.ffn_up.weight"]["buffers"]["planes"]["offset"]
    f = bad / "weights" / "resident.bin"
    data = bytearray(f.read_bytes())
    data[off + 10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="blk.1.ffn_up.weight fails its checksum"):
        open_artifact_engine(bad)
    f.write_bytes(bytes(data[: off + 5]))
    with pytest.raises(ArtifactError, match="truncated"):
        open_artifact_engine(bad)


def test_head_in_four_bits(tmp_path):
    """--head-bits 4: the (tied) head gets its own 4-bit LUT tensor, the embedding table stays
    8-bit; one token at a time (the LUT path) the logits are the reference's on those weights,
    and a step reads fewer bytes than with the 8-bit head."""
    from edgert.errors import EdgertError
    from edgert.format import names
    from edgert.plan.sizes import resident_besides, touched_per_step

    scheme = QuantScheme("uniform", 4, 32)
    for d in ("h8", "h4", "bad"):
        (tmp_path / d).mkdir()
    s8 = compile_synthetic(tmp_path / "h8", "llama", scheme)
    s4 = compile_synthetic(tmp_path / "h4", "llama", scheme, head_bits=4)
    a8, a4 = Artifact.open(s8.out), Artifact.open(s4.out)
    assert a4.manifest["plan"]["head"] == names.OUTPUT
    assert a4.tensors[names.OUTPUT]["format"] == "uniform"
    assert a4.tensors[names.OUTPUT]["bits"] == 4
    assert a4.tensors[names.EMBEDDING]["format"] == "q8"
    touched = [touched_per_step(a, resident_besides(a, ())) for a in (a8, a4)]
    assert touched[1] < touched[0]
    eng = open_artifact_engine(s4.out, max_ctx=64)
    ref = ReferenceEngine(reference_model(a4), max_ctx=64)
    ids = eng.tokenizer.encode("the cat sat on the mat")
    got = np.concatenate([eng.forward([t]) for t in ids])
    want = ref.forward(ids)
    assert np.max(np.abs(got - want)) <= NEAR_TIE * np.max(np.abs(want))
    with pytest.raises(EdgertError, match="--head-bits"):
        compile_synthetic(tmp_path / "bad", "llama", scheme, head_bits=5)
