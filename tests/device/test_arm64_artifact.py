"""rpi5 artifacts of every architecture executed on arm64: the emulated device (an arm64 Debian
root under qemu-user, tools/arm64_root.py) loads the artifact's aarch64 library with ctypes and
runs the C forward pass on the NEON kernels; one layer and the whole model's greedy tokens must
match the reference forward on the same dequantized weights computed on this host, and the greedy
tokens of a host artifact of the same model. Two GGUFs compiled with --bits keep (3 bit-planes in
groups of 16, 5 bit-planes) take the same checks."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from arm64_root import ensure_root, run_python
from conftest import PREFILL_TOL, compile_synthetic, greedy_divergence
from edgert.compiler.compile import compile_model
from edgert.compiler.quant.scheme import QuantScheme
from make_synthetic_gguf import make_synthetic_gguf

from edgert.format import names
from edgert.format.artifact import Artifact
from edgert.runtime.generate import Sampler, generate
from edgert.runtime.open import open_artifact_engine
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import reference_model

pytestmark = pytest.mark.device
PROMPTS = ["the cat sat on", "hello world", "a b c d e"]
#: max abs, float32 on both sides: 1e-3, or 2e-3 of the stream's scale where it is larger
#: (Gemma's embeddings are scaled by sqrt(dim); the kernels' activations err relatively), or
#: the int8 prefill path's error where the prompt has 8 tokens or more (conftest.PREFILL_TOL)
LAYER_TOL, LAYER_REL_TOL = 1e-3, PREFILL_TOL
LOGIT_TOL = 1e-2
#: every architecture, each in one of the weight formats
ARCHS = {
    "llama": QuantScheme("uniform", 2, 32),
    "qwen2moe": QuantScheme("hlq", 3, 64),
    "mixtral": QuantScheme("uniform", 4, 32),
    "olmoe": QuantScheme("hlq", 4, 32),
    "llama3": QuantScheme("uniform", 4, 32),
    "qwen2": QuantScheme("uniform", 4, 32),
    "qwen3": QuantScheme("hlq", 2, 32),
    "qwen3moe": QuantScheme("uniform", 4, 32),
    "gemma3": QuantScheme("uniform", 4, 32),
    "phi3": QuantScheme("uniform", 3, 32),
    "smollm3": QuantScheme("uniform", 4, 32),
}
#: deep enough for the layer patterns: gemma3's global 6th layer, smollm3's RoPE-less 4th
LAYERS = {"gemma3": 6, "smollm3": 4}
#: GGUFs compiled with --bits keep: Q3_K's 3 planes in groups of 16, Q5_1's 5 planes
KEPT = {"llama-Q3_K": "Q3_K", "llama-Q5_1": "Q5_1"}
#: rows whole K-quant super-blocks
KEPT_SHAPE = {"dim": 256, "ffn": 512, "heads": 4, "kv_heads": 2, "vocab": 512, "layers": 2}

DEVICE_SCRIPT = r"""
import json, platform
import numpy as np
from edgert.runtime.generate import Sampler, generate
from edgert.runtime import rope
from edgert.runtime.open import open_artifact_engine
out = {"machine": platform.machine()}
prompts = json.load(open("/tmp/prompts.json"))
for name in json.load(open("/tmp/names.json")):
    eng = open_artifact_engine(f"/tmp/{name}.edgert", max_ctx=64)
    out[name] = {"greedy": [generate(eng, prompt=p, n_predict=32, sampler=Sampler(temp=0),
                                     stop_at_eos=False).tokens for p in prompts]}
    ids = eng.tokenizer.encode("the quick brown fox")
    x = eng.source.embedding(np.asarray(ids)) * np.float32(eng.cfg.embed_scale)
    cos, sin = rope.tables(eng.cfg, np.arange(len(ids)), eng._rope_factors)
    eng.native.forward(x, 0, cos, sin, threads=0, logits=False, layers=(0, 1))
    np.save(f"/tmp/{name}-layer0.npy", eng.native.last_x)
    eng.reset()
    np.save(f"/tmp/{name}-logits.npy", eng.forward(ids))
print(json.dumps(out))
"""


def kept_args(name: str) -> dict:
    """compile_model's arguments for artifact ``name``: its scheme, or --bits keep."""
    return {"scheme": QuantScheme(), "keep": True} if name in KEPT else {"scheme": ARCHS[name]}


@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
    root = ensure_root()
    d = tmp_path_factory.mktemp("rpi5")
    arts = {}
    for arch, scheme in ARCHS.items():
        s = compile_synthetic(d, arch, scheme, target="rpi5", layers=LAYERS.get(arch))
        dst = root / "tmp" / f"{arch}.edgert"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(s.out, dst)
        arts[arch] = s.out
    for name, qtype in KEPT.items():
        g = make_synthetic_gguf(out=d / f"{name}.gguf", arch="llama", qtype=qtype,
                                progress=False, **KEPT_SHAPE)  # fmt: skip
        s = compile_model(model=g, target="rpi5", out=d / f"{name}.edgert", **kept_args(name))
        dst = root / "tmp" / f"{name}.edgert"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(s.out, dst)
        arts[name] = s.out
    (root / "tmp" / "names.json").write_text(json.dumps(list(arts)))
    (root / "tmp" / "prompts.json").write_text(json.dumps(PROMPTS))
    out = json.loads(run_python(root, DEVICE_SCRIPT).strip().splitlines()[-1])
    return root, arts, out


def test_runs_on_aarch64(device_run):
    _, _, out = device_run
    assert out["machine"] == "aarch64"


@pytest.mark.parametrize("arch", [*ARCHS, *KEPT])
def test_matches_host_artifact(device_run, arch, tmp_path):
    """The host artifact of the same model and scheme (AVX kernels here, NEON there): the same
    greedy tokens, or a parting only where the reference decides by less than the kernels'
    error."""
    _, arts, out = device_run
    src = Path(arts[arch]).parent / f"{arch}.gguf"  # what compile_synthetic wrote
    host = compile_model(model=src, target="host", out=tmp_path / "h.edgert", **kept_args(arch))
    eng = open_artifact_engine(host.out, max_ctx=64)
    ref = ReferenceEngine(reference_model(Artifact.open(arts[arch])), max_ctx=64)
    ties = 0
    for p, toks in zip(PROMPTS, out[arch]["greedy"]):
        got = generate(eng, prompt=p, n_predict=32, sampler=Sampler(temp=0), stop_at_eos=False)
        ties += greedy_divergence(ref, ref.tokenizer, p, toks, got.tokens)
    assert ties <= 1


@pytest.mark.parametrize("arch", [*ARCHS, *KEPT])
def test_matches_host_reference(device_run, arch):
    root, arts, out = device_run
    art = Artifact.open(arts[arch])
    assert art.target["name"] == "rpi5"
    model = reference_model(art)
    ref = ReferenceEngine(model, max_ctx=64)
    ties = 0
    for p, toks in zip(PROMPTS, out[arch]["greedy"]):
        want = generate(ref, prompt=p, n_predict=32, sampler=Sampler(temp=0), stop_at_eos=False)
        ties += greedy_divergence(ref, model.tokenizer, p, toks, want.tokens)
    # every parting is at a near tie (greedy_divergence asserts it); the kept Q3_K model parts
    # so on 2 of its 3 prompts (the other models on at most 1)
    assert ties <= (2 if arch in KEPT else 1)
    ids = model.tokenizer.encode("the quick brown fox")
    x = model.tensor(names.EMBEDDING)[ids] * np.float32(model.config.embed_scale)
    ref.reset()
    layer = ref.run_layers(x, 0, 1)  # attention and FFN of layer 0
    got = np.load(root / "tmp" / f"{arch}-layer0.npy")
    tol = max(LAYER_TOL, LAYER_REL_TOL * np.max(np.abs(layer)))
    err = np.max(np.abs(got - layer), axis=1)  # per token
    # a mixture may route one token otherwise on a near tie of its router (qwen3moe: one token
    # of 15 at 6% of the largest value, the others at 0.4-0.7%)
    assert np.sum(err >= tol) <= (1 if model.config.n_experts else 0), (err, tol)
    ref.reset()
    logits = np.load(root / "tmp" / f"{arch}-logits.npy")
    want = ref.forward(ids)
    tol = max(LOGIT_TOL, PREFILL_TOL * np.max(np.abs(want)))
    err = np.max(np.abs(logits - want), axis=-1).reshape(-1)  # per token (the routed one too)
    assert np.sum(err >= tol) <= (1 if model.config.n_experts else 0), (err, tol)
