"""The C forward pass (kernels_neon/forward.c) against the numpy reference on float32 weights:
every option a dense layer has (q/k/v biases, q/k norms, neox and partial rotary, grouped-query
attention) and every mixture of experts the reference runs, prefill then decode, at short and long
contexts; experts fetched per layer; results independent of the thread count; refused arguments."""

import numpy as np
import pytest

from edgert.errors import EdgertError
from edgert.format import kvcache
from edgert.format.model import ModelConfig, ModelGraph, TensorInfo
from edgert.runtime import rope
from edgert.runtime.build import build_shared
from edgert.runtime.forward import NativeForward
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import ModelGraphSource

REL_TOL = 1e-4  # max |native - reference| / max |reference|, float32 on both sides

CONFIGS = {
    "llama": dict(),
    "bias-qknorm-neox": dict(qkv_bias=True, qk_norm=True, rope_style="neox"),
    "partial-rope-mha": dict(rope_dim=8, n_kv_heads=4),
}


def random_model(**over) -> ModelGraph:
    kw = dict(
        arch="llama",
        n_layers=3,
        dim=64,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        ffn_dim=96,
        vocab_size=80,
        rms_eps=1e-5,
    )
    kw.update(over)
    cfg = ModelConfig(**kw)
    rng = np.random.default_rng(3)
    qd, kd = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes = {"token_embd.weight": (cfg.vocab_size, cfg.dim), "output_norm.weight": (cfg.dim,)}
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        shapes.update(
            {
                p + "attn_norm.weight": (cfg.dim,),
                p + "ffn_norm.weight": (cfg.dim,),
                p + "attn_q.weight": (qd, cfg.dim),
                p + "attn_k.weight": (kd, cfg.dim),
                p + "attn_v.weight": (kd, cfg.dim),
                p + "attn_output.weight": (cfg.dim, qd),
                p + "ffn_gate.weight": (cfg.ffn_dim, cfg.dim),
                p + "ffn_up.weight": (cfg.ffn_dim, cfg.dim),
                p + "ffn_down.weight": (cfg.dim, cfg.ffn_dim),
            }
        )
        if cfg.qkv_bias:
            shapes.update(
                {p + "attn_q.bias": (qd,), p + "attn_k.bias": (kd,), p + "attn_v.bias": (kd,)}
            )
        if cfg.qk_norm:
            shapes.update({p + "attn_q_norm.weight": (qd,), p + "attn_k_norm.weight": (kd,)})
    data = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            data[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            data[name] = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    infos = [TensorInfo(n, s, "F32") for n, s in shapes.items()]
    return ModelGraph(cfg, infos, data.__getitem__)


def native_for(model: ModelGraph, max_ctx: int = 32, batch: int = 512, kv: str = "f32"):
    src = ModelGraphSource(model)
    nf = NativeForward.load(str(build_shared()), model.config, src.weight, "token_embd.weight",
                            max_ctx, batch, kv=kvcache.parse(kv))  # fmt: skip
    assert nf is not None
    return nf, src


def tables(model: ModelGraph, positions, max_ctx: int = 32):
    """The rotary tables the engine would give the C side."""
    name = rope.factors_name(model.config, max_ctx)
    return rope.tables(model.config, positions, model.tensor(name) if name else None)


def embed(src, cfg, toks):
    return src.embedding(toks) * np.float32(cfg.embed_scale)


def run(nf, src, model, chunks, threads, max_ctx: int = 32):
    out, pos = [], 0
    for toks in chunks:
        toks = np.asarray(toks)
        cos, sin = tables(model, np.arange(pos, pos + len(toks)), max_ctx)
        x = embed(src, model.config, toks)
        out.append(nf.forward(x, pos, cos, sin, last_only=False, threads=threads))
        pos += len(toks)
    return np.concatenate(out)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_and_decode_equal_reference(name):
    model = random_model(**CONFIGS[name])
    nf, src = native_for(model)
    chunks = [[1, 5, 9, 2, 7], [3], [11], [4, 4], [60]]
    got = run(nf, src, model, chunks, threads=2)
    ref = ReferenceEngine(model, max_ctx=32)
    want = np.concatenate([ref.forward(c) for c in chunks])
    assert np.max(np.abs(got - want)) <= REL_TOL * np.max(np.abs(want))
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_results_do_not_depend_on_threads():
    model = random_model()
    got = []
    for threads in (1, 2, 3):
        nf, src = native_for(model)
        got.append(run(nf, src, model, [[1, 2, 3, 4, 5, 6, 7, 8], [9], [10]], threads))
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])


@pytest.mark.parametrize(
    ("window", "kv"),
    [
        (0, "f32"),
        (300, "f32"),
        (0, "f16"),
        (300, "q8,f16"),
        (0, "f16,q8"),
        (0, "q4,f16"),
        (300, "q4,f16"),
    ],
)
def test_long_context_attention_in_chunks(window, kv):
    """Beyond one chunk of keys (attention.c's ATTN_CHUNK, 256 positions): a 600-token prompt,
    decode steps (their keys split into chunks over the threads and combined) and a 9-token call;
    the reference's logits (its cache rounded as the C side's), with and without a sliding window
    cutting the chunks, float, float16 (read from the cache as it is), q8 keys (dequantized into
    a buffer, rotated: scored against rotated queries) beside float16 values and float16 keys
    beside q8 values (their weighted sum rotated back), q4 keys (by groups of 64 positions: the
    complete ones quantized, the rest float16); the same bits at 1, 2 and 3 threads."""
    over = {"sliding_window": window, "swa_layers": (0, 2)} if window else {}
    # head_dim 64: decode's attention then splits over the threads; 8 heads on 2 KV heads (groups
    # of 4: wider than a tile of scores)
    model = random_model(head_dim=64, n_heads=8, **over)
    rng = np.random.default_rng(5)
    chunks = [rng.integers(0, 80, 600), [7], [3], [1, 2], rng.integers(0, 80, 9), [4]]
    ctx = 640
    got = []
    for threads in (1, 2, 3):
        nf, src = native_for(model, max_ctx=ctx, kv=kv)
        got.append(run(nf, src, model, chunks, threads, max_ctx=ctx))
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])
    ref = ReferenceEngine(model, max_ctx=ctx, kv_cache=kv)
    want = np.concatenate([ref.forward(np.asarray(c)) for c in chunks])
    # a rounding boundary crossed moves a cached value: by a 4-bit step of its channel's range
    # over 64 positions for q4 keys (2.3e-3 here, against 9.5e-2 that the groups' rounding
    # itself moves the logits: layer 0's groups are the reference's byte for byte)
    tol = REL_TOL if kv == "f32" else 5e-3 if kv.startswith("q4") else 1e-3
    assert np.max(np.abs(got[0] - want)) <= tol * np.max(np.abs(want))
    if kv == "f32":
        assert (got[0].argmax(-1) == want.argmax(-1)).all()


def test_bad_arguments_are_refused():
    model = random_model()
    nf, src = native_for(model, max_ctx=4)
    cos, sin = tables(model, np.arange(4, 6))
    with pytest.raises(EdgertError, match="refused"):
        nf.forward(src.embedding(np.array([1, 2])), 4, cos, sin, last_only=True, threads=1)


MOE_CHUNKS = [[3, 17, 42, 8, 8], [0], [49], [21, 5], [30]]


def arch_model(name: str) -> ModelGraph:
    from test_reference_archs import CONFIGS as ARCHS
    from test_reference_archs import random_model as make

    return make(ARCHS[name], seed=len(name))


def _arch_names() -> list[str]:
    from test_reference_archs import CONFIGS as ARCHS

    return list(ARCHS)


@pytest.mark.parametrize("name", _arch_names())
def test_every_architecture_prefill_and_decode_equal_reference(name):
    """Every architecture the reference runs (dense, partial neox rotary; routing renormalised,
    raw or unit top-k, the experts, the shared expert behind its gate), on float32 weights: the
    same logits and the same tokens per expert as the reference, through a prompt, decode steps
    and a last-token-only call."""
    model = arch_model(name)
    nf, src = native_for(model)
    got = run(nf, src, model, MOE_CHUNKS, threads=2)
    ref = ReferenceEngine(model, max_ctx=32)
    want = np.concatenate([ref.forward(c) for c in MOE_CHUNKS])
    assert np.max(np.abs(got - want)) <= REL_TOL * np.max(np.abs(want))
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert np.array_equal(nf.expert_counts, ref.expert_counts)
    toks = np.asarray(MOE_CHUNKS[0][:3])
    nf, src = native_for(model)
    cos, sin = tables(model, np.arange(3))
    last = nf.forward(embed(src, model.config, toks), 0, cos, sin, last_only=True, threads=1)
    ref.reset()
    assert np.max(np.abs(last[0] - ref.forward(toks, last_only=True))) <= REL_TOL * np.max(
        np.abs(want)
    )


class ListCache:
    """Experts from the model's arrays, asked for one layer at a time (what an ExpertCache
    does, without flash)."""

    def __init__(self, nf, src, fail_layer=None):
        from edgert.format import names

        self.nf, self.src, self.fail_layer, self.error = nf, src, fail_layer, None
        self.names, self.asked = names.expert_tensors, []

    def fetch(self, layer, experts, next_experts):
        self.asked.append((layer, list(experts), next_experts))
        if layer == self.fail_layer:
            raise OSError(5, "Input/output error")
        return {
            int(e): self.nf.expert_weights(
                (layer, int(e)), {n: self.src.weight(n)[2] for n in self.names(layer, int(e))}
            )
            for e in experts
        }


def test_moe_experts_fetched_per_layer():
    """Experts asked for through the callback: the same logits as resident experts, each layer
    asks for exactly the experts its tokens chose, with the next router's top-k per token (none
    on the last layer); a failed fetch is an error naming the cause, not wrong logits."""
    model = arch_model("mixtral")
    c = model.config
    nf, src = native_for(model)
    want = run(nf, src, model, MOE_CHUNKS, threads=2)
    nf2, src2 = native_for(model)
    cache = ListCache(nf2, src2)
    nf2.set_experts(cache)
    got = run(nf2, src2, model, MOE_CHUNKS, threads=2)
    assert np.array_equal(got, want)
    assert np.array_equal(nf2.expert_counts, nf.expert_counts)
    assert len(cache.asked) == c.n_layers * len(MOE_CHUNKS)
    for j, (layer, experts, nxt) in enumerate(cache.asked):
        n = len(MOE_CHUNKS[j // c.n_layers])
        assert layer == j % c.n_layers
        assert experts == sorted(set(experts)) and c.n_experts_used <= len(experts) <= c.n_experts
        if layer + 1 < c.n_layers:  # top-k distinct experts per token
            assert len(nxt) == n
            assert all(len(set(g)) == c.n_experts_used <= c.n_experts for g in nxt)
            assert all(0 <= e < c.n_experts for g in nxt for e in g)
        else:
            assert nxt is None
    nf3, src3 = native_for(model)
    nf3.set_experts(ListCache(nf3, src3, fail_layer=1))
    with pytest.raises(EdgertError, match="reading weights from flash failed: .*Input/output"):
        run(nf3, src3, model, MOE_CHUNKS[:1], threads=1)
