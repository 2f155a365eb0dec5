"""The C forward pass (kernels_neon/forward.c) against the numpy reference on float32 weights:
every option a dense layer has (q/k/v biases, q/k norms, neox and partial rotary, grouped-query
attention), prefill then decode; results independent of the thread count; refused arguments."""

import numpy as np
import pytest

from edgert.errors import EdgertError
from edgert.kernels import build_shared
from edgert.model import ModelConfig, ModelGraph, TensorInfo
from edgert.native import NativeForward
from edgert.reference import ReferenceEngine, rope_tables
from edgert.runtime import ModelGraphSource

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


def native_for(model: ModelGraph, max_ctx: int = 32):
    c = model.config
    shape = (c.n_layers, max_ctx, c.n_kv_heads, c.head_dim)
    kc, vc = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    src = ModelGraphSource(model)
    nf = NativeForward.load(str(build_shared()), c, src.weight, "token_embd.weight", kc, vc)
    assert nf is not None
    return nf, src


def run(nf, src, cfg, chunks, threads):
    out, pos = [], 0
    for toks in chunks:
        toks = np.asarray(toks)
        cos, sin = rope_tables(cfg, np.arange(pos, pos + len(toks)))
        out.append(nf.forward(src.embedding(toks), pos, cos, sin, last_only=False, threads=threads))
        pos += len(toks)
    return np.concatenate(out)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_and_decode_equal_reference(name):
    model = random_model(**CONFIGS[name])
    nf, src = native_for(model)
    chunks = [[1, 5, 9, 2, 7], [3], [11], [4, 4], [60]]
    got = run(nf, src, model.config, chunks, threads=2)
    ref = ReferenceEngine(model, max_ctx=32)
    want = np.concatenate([ref.forward(c) for c in chunks])
    assert np.max(np.abs(got - want)) <= REL_TOL * np.max(np.abs(want))
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_results_do_not_depend_on_threads():
    model = random_model()
    got = []
    for threads in (1, 2, 3):
        nf, src = native_for(model)
        got.append(run(nf, src, model.config, [[1, 2, 3, 4, 5, 6, 7, 8], [9], [10]], threads))
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])


def test_bad_arguments_are_refused():
    model = random_model()
    nf, src = native_for(model, max_ctx=4)
    cos, sin = rope_tables(model.config, np.arange(4, 6))
    with pytest.raises(EdgertError, match="refused"):
        nf.forward(src.embedding(np.array([1, 2])), 4, cos, sin, last_only=True, threads=1)


def test_moe_models_have_no_native_path():
    cfg = ModelConfig(
        arch="qwen2moe",
        n_layers=1,
        dim=8,
        n_heads=2,
        n_kv_heads=2,
        head_dim=4,
        ffn_dim=8,
        vocab_size=10,
        n_experts=4,
        n_experts_used=2,
        expert_ffn_dim=8,
    )
    z = np.zeros((1, 4, 2, 4), np.float32)
    assert NativeForward.load(str(build_shared()), cfg, None, "output.weight", z, z) is None
