"""Lowering with TVM: the model's compute as Relax functions, compiled for a target.

One IRModule per artifact with a few functions the runtime calls layer by layer; every weight is a
function input (never a constant), so the runtime may pass resident or freshly streamed buffers:

``attn``        x (n, d), cos/sin (n, rope_dim/2), mask (n, t+n), k_past/v_past (t, kv, hd),
                norm, q/k/v/o weights [, qkv biases] [, q/k norms]  -> (x + attention, k_new, v_new)
``ffn``         x (n, d), norm, gate/up/down weights -> x + SwiGLU(norm(x))          (dense models)
``ffn_norm``    x (n, d), norm -> norm(x)                                              (MoE models)
``router``      h (n, d), gate_inp -> logits (n, E)
``expert``      h (n, d), gate/up/down weights of one expert -> SwiGLU(h) (n, d)
``shared_expert`` h (n, d), gate_inp_shexp (d,), gate/up/down -> sigmoid(h . g) * SwiGLU(h)
``head``        x (n, d), output_norm, output weight -> logits (n, vocab)

How a linear layer reads its weight is the format's business (:mod:`edgert.compiler.lower.linear`):
float32 matrices are a Relax matmul; low-bit formats call the LUT kernels as extern functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgert.format.model import ModelConfig

FUNCTIONS_DENSE = ("attn", "ffn", "head")
FUNCTIONS_MOE = ("attn", "ffn_norm", "router", "expert", "head")


@dataclass(frozen=True)
class LinearSpec:
    """How one linear layer's weight arrives as function inputs: its format and buffer shapes."""

    out_features: int
    in_features: int
    fmt: str = "f32"  # "f32", "q8", or a LUT format handled by edgert.compiler.lower.linear
    buffers: tuple[tuple[str, tuple[int, ...], str], ...] = ()  # (part, shape, dtype) if not f32
    meta: tuple[tuple[str, object], ...] = ()

    def param_shapes(self) -> list[tuple[str, tuple[int, ...], str]]:
        if self.fmt == "f32":
            return [("w", (self.out_features, self.in_features), "float32")]
        return list(self.buffers)


def _te_linear(x, w):
    """y (n, m) = x (n, k) . w (m, k)^T with the reduction over contiguous k (no transpose copy:
    Relax's matmul + permute_dims would materialise w^T on every call)."""
    from tvm import te

    k = te.reduce_axis((0, x.shape[1]), "k")
    return te.compute(
        (x.shape[0], w.shape[0]), lambda i, j: te.sum(x[i, k] * w[j, k], axis=k), name="linear"
    )


def _linear(bb, x, params, spec: LinearSpec):

    if spec.fmt == "f32":
        return bb.emit(bb.call_te(_te_linear, x, params[0]))
    if spec.fmt == "q8":
        from edgert.compiler.lower.linear import emit_q8_linear

        return emit_q8_linear(bb, x, params, spec)
    from edgert.compiler.lower.linear import emit_lut_linear

    return emit_lut_linear(bb, x, params, spec)


def _rope(bb, x, cos, sin, n, heads, cfg: ModelConfig):
    """Rotate the first rope_dim dims of x (n, heads, hd); cos/sin (n, rope_dim/2)."""
    from tvm import relax
    from tvm.relax import op

    hd, rd = cfg.head_dim, cfg.rope_dim
    half = rd // 2
    c = op.expand_dims(cos, 1)  # (n, 1, half)
    s = op.expand_dims(sin, 1)
    rot = op.strided_slice(x, axes=[2], begin=[0], end=[rd]) if rd < hd else x
    if cfg.rope_style == "norm":
        pairs = op.reshape(rot, relax.ShapeExpr([n, heads, half, 2]))
        a = op.squeeze(op.strided_slice(pairs, axes=[3], begin=[0], end=[1]), [3])
        b = op.squeeze(op.strided_slice(pairs, axes=[3], begin=[1], end=[2]), [3])
        ra = op.subtract(op.multiply(a, c), op.multiply(b, s))
        rb = op.add(op.multiply(a, s), op.multiply(b, c))
        out = op.reshape(op.stack([ra, rb], axis=3), relax.ShapeExpr([n, heads, rd]))
    else:
        a = op.strided_slice(rot, axes=[2], begin=[0], end=[half])
        b = op.strided_slice(rot, axes=[2], begin=[half], end=[rd])
        out = op.concat(
            [
                op.subtract(op.multiply(a, c), op.multiply(b, s)),
                op.add(op.multiply(a, s), op.multiply(b, c)),
            ],
            axis=2,
        )
    if rd < hd:
        out = op.concat([out, op.strided_slice(x, axes=[2], begin=[rd], end=[hd])], axis=2)
    return bb.emit(out)


def _params(prefix: str, spec: LinearSpec):
    from tvm import relax

    return [
        relax.Var(f"{prefix}_{part}", relax.TensorType(shape, dtype))
        for part, shape, dtype in spec.param_shapes()
    ]


def build_module(cfg: ModelConfig, variants: dict[str, dict[str, LinearSpec]]):
    """The IRModule for ``cfg``.

    ``variants`` maps a variant name to the linear specs of layers compiled that way (layers with
    different bit widths take differently shaped buffers). Each spec dict maps a role (q, k, v, o,
    gate, up, down, and for MoE: router, e_gate, e_up, e_down, s_gate, s_up, s_down; plus head in
    the first variant) to how its weight arrives. Functions are named ``attn__<variant>`` etc.;
    ``head`` and ``ffn_norm`` exist once.
    """
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    first = True
    for name, linears in variants.items():
        _emit(bb, cfg, linears, f"__{name}", first)
        first = False
    mod = bb.get()
    return tvm.ir.IRModule(mod.functions)


def _emit(bb, cfg: ModelConfig, linears: dict[str, LinearSpec], sfx: str, shared: bool) -> None:
    from tvm import relax, tirx
    from tvm.relax import op

    f32 = "float32"
    d, hd = cfg.dim, cfg.head_dim
    n = tirx.Var("n", "int64")
    t = tirx.Var("t", "int64")

    def tensor(name, shape):
        return relax.Var(name, relax.TensorType(shape, f32))

    def norm(x, w):
        return bb.emit(op.nn.rms_norm(x, w, axes=[-1], epsilon=cfg.rms_eps))

    def swiglu(h, g, u, dn, spec_g, spec_u, spec_d):
        a = _linear(bb, h, g, spec_g)
        b = _linear(bb, h, u, spec_u)
        return _linear(bb, bb.emit(op.multiply(op.nn.silu(a), b)), dn, spec_d)

    # ---- attention block ------------------------------------------------------------------
    x = tensor("x", [n, d])
    cos = tensor("cos", [n, cfg.rope_dim // 2])
    sin = tensor("sin", [n, cfg.rope_dim // 2])
    mask = tensor("mask", [n, t + n])
    k_past = tensor("k_past", [t, cfg.n_kv_heads, hd])
    v_past = tensor("v_past", [t, cfg.n_kv_heads, hd])
    attn_norm = tensor("attn_norm", [d])
    wq, wk, wv, wo = (_params(r, linears[r]) for r in ("q", "k", "v", "o"))
    extra = []
    if cfg.qkv_bias:
        bq, bk, bv = (tensor(f"b{r}", [linears[r].out_features]) for r in "qkv")
        extra += [bq, bk, bv]
    if cfg.qk_norm:
        qn = tensor("q_norm", [cfg.n_heads * hd])
        kn = tensor("k_norm", [cfg.n_kv_heads * hd])
        extra += [qn, kn]
    params = [x, cos, sin, mask, k_past, v_past, attn_norm, *wq, *wk, *wv, *wo, *extra]
    with bb.function("attn" + sfx, params):
        with bb.dataflow():
            h = norm(x, attn_norm)
            q = _linear(bb, h, wq, linears["q"])
            k = _linear(bb, h, wk, linears["k"])
            v = _linear(bb, h, wv, linears["v"])
            if cfg.qkv_bias:
                q, k, v = (bb.emit(op.add(a, b)) for a, b in ((q, bq), (k, bk), (v, bv)))
            if cfg.qk_norm:
                q, k = norm(q, qn), norm(k, kn)
            q = _rope(
                bb,
                bb.emit(op.reshape(q, relax.ShapeExpr([n, cfg.n_heads, hd]))),
                cos,
                sin,
                n,
                cfg.n_heads,
                cfg,
            )
            k_new = _rope(
                bb,
                bb.emit(op.reshape(k, relax.ShapeExpr([n, cfg.n_kv_heads, hd]))),
                cos,
                sin,
                n,
                cfg.n_kv_heads,
                cfg,
            )
            v_new = bb.emit(op.reshape(v, relax.ShapeExpr([n, cfg.n_kv_heads, hd])))
            keys = bb.emit(op.concat([k_past, k_new], axis=0))  # (T, kv, hd)
            vals = bb.emit(op.concat([v_past, v_new], axis=0))
            group = cfg.n_heads // cfg.n_kv_heads
            # q (n, kv*group, hd) -> (kv, group*n, hd)
            qg = op.permute_dims(
                op.reshape(q, relax.ShapeExpr([n, cfg.n_kv_heads, group, hd])), [1, 2, 0, 3]
            )
            qg = bb.emit(op.reshape(qg, relax.ShapeExpr([cfg.n_kv_heads, group * n, hd])))
            kt = bb.emit(op.permute_dims(keys, [1, 2, 0]))  # (kv, hd, T)
            scores = bb.emit(op.multiply(op.matmul(qg, kt), relax.const(hd**-0.5, f32)))
            scores = op.reshape(scores, relax.ShapeExpr([cfg.n_kv_heads, group, n, t + n]))
            probs = bb.emit(op.nn.softmax(op.add(scores, mask), axis=-1))
            probs = bb.emit(op.reshape(probs, relax.ShapeExpr([cfg.n_kv_heads, group * n, t + n])))
            ctx = bb.emit(op.matmul(probs, op.permute_dims(vals, [1, 0, 2])))  # (kv, g*n, hd)
            ctx = op.permute_dims(
                op.reshape(ctx, relax.ShapeExpr([cfg.n_kv_heads, group, n, hd])), [2, 0, 1, 3]
            )
            ctx = bb.emit(op.reshape(ctx, relax.ShapeExpr([n, cfg.n_heads * hd])))
            out = bb.emit(op.add(x, _linear(bb, ctx, wo, linears["o"])))
            res = bb.emit_output(relax.Tuple([out, k_new, v_new]))
        bb.emit_func_output(res)

    # ---- feed-forward ---------------------------------------------------------------------
    x = tensor("x", [n, d])
    ffn_norm = tensor("ffn_norm", [d])
    if not cfg.is_moe:
        wg, wu, wd = (_params(r, linears[r]) for r in ("gate", "up", "down"))
        with bb.function("ffn" + sfx, [x, ffn_norm, *wg, *wu, *wd]):
            with bb.dataflow():
                y = swiglu(
                    norm(x, ffn_norm), wg, wu, wd, linears["gate"], linears["up"], linears["down"]
                )
                res = bb.emit_output(op.add(x, y))
            bb.emit_func_output(res)
    else:
        if shared:
            with bb.function("ffn_norm", [x, ffn_norm]):
                with bb.dataflow():
                    res = bb.emit_output(
                        op.nn.rms_norm(x, ffn_norm, axes=[-1], epsilon=cfg.rms_eps)
                    )
                bb.emit_func_output(res)
        h = tensor("h", [n, d])
        wr = _params("router", linears["router"])
        with bb.function("router" + sfx, [h, *wr]):
            with bb.dataflow():
                res = bb.emit_output(_linear(bb, h, wr, linears["router"]))
            bb.emit_func_output(res)
        h = tensor("h", [n, d])
        eg, eu, ed = (_params(r, linears[r]) for r in ("e_gate", "e_up", "e_down"))
        with bb.function("expert" + sfx, [h, *eg, *eu, *ed]):
            with bb.dataflow():
                res = bb.emit_output(
                    swiglu(h, eg, eu, ed, linears["e_gate"], linears["e_up"], linears["e_down"])
                )
            bb.emit_func_output(res)
        if cfg.shared_expert_ffn_dim:
            h = tensor("h", [n, d])
            sgate = tensor("shared_gate", [d])
            sg, su, sd = (_params(r, linears[r]) for r in ("s_gate", "s_up", "s_down"))
            with bb.function("shared_expert" + sfx, [h, sgate, *sg, *su, *sd]):
                with bb.dataflow():
                    y = swiglu(h, sg, su, sd, linears["s_gate"], linears["s_up"], linears["s_down"])
                    g = op.sigmoid(op.sum(op.multiply(h, sgate), axis=[-1], keepdims=True))
                    res = bb.emit_output(op.multiply(y, g))
                bb.emit_func_output(res)

    # ---- output head ----------------------------------------------------------------------
    if not shared:
        return
    x = tensor("x", [n, d])
    out_norm = tensor("output_norm", [d])
    wh = _params("head", linears["head"])
    with bb.function("head", [x, out_norm, *wh]):
        with bb.dataflow():
            res = bb.emit_output(_linear(bb, norm(x, out_norm), wh, linears["head"]))
        bb.emit_func_output(res)


def f32_linears(cfg: ModelConfig) -> dict[str, LinearSpec]:
    """Every linear layer as float32 weights (the unquantized lowering)."""
    hd = cfg.head_dim
    sp = {
        "q": LinearSpec(cfg.n_heads * hd, cfg.dim),
        "k": LinearSpec(cfg.n_kv_heads * hd, cfg.dim),
        "v": LinearSpec(cfg.n_kv_heads * hd, cfg.dim),
        "o": LinearSpec(cfg.dim, cfg.n_heads * hd),
        "head": LinearSpec(cfg.vocab_size, cfg.dim),
    }
    if cfg.is_moe:
        f = cfg.expert_ffn_dim
        sp.update(
            router=LinearSpec(cfg.n_experts, cfg.dim),
            e_gate=LinearSpec(f, cfg.dim),
            e_up=LinearSpec(f, cfg.dim),
            e_down=LinearSpec(cfg.dim, f),
        )
        if cfg.shared_expert_ffn_dim:
            sf = cfg.shared_expert_ffn_dim
            sp.update(
                s_gate=LinearSpec(sf, cfg.dim),
                s_up=LinearSpec(sf, cfg.dim),
                s_down=LinearSpec(cfg.dim, sf),
            )
    else:
        sp.update(
            gate=LinearSpec(cfg.ffn_dim, cfg.dim),
            up=LinearSpec(cfg.ffn_dim, cfg.dim),
            down=LinearSpec(cfg.dim, cfg.ffn_dim),
        )
    return sp


def cpu_pipeline(target, *, parallel_fallback: bool = False):
    """TVM's CPU pipeline with dlight's CPU schedules (GEMV, reductions) applied after fusion;
    ``parallel_fallback`` adds :mod:`edgert.compiler.lower.schedule`'s rule for every other operator."""
    import tvm
    import tvm.relax.backend.cpu_generic.pipeline as cg
    import tvm.s_tir.dlight as dl

    rules = [dl.cpu.GEMV(), dl.cpu.Reduction()]
    if parallel_fallback:
        from edgert.compiler.lower.schedule import default_cpu_rules

        rules = default_cpu_rules()

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            passes = (
                cg.library_dispatch_passes(target)
                + cg.legalize_passes(target)
                + [dl.ApplyDefaultSchedule(*rules)]
                + cg.dataflow_lower_passes(target)
                + cg.finalize_passes(target)
            )
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def compile_module(
    mod,
    tvm_target: dict,
    *,
    out_so: str,
    cxx: str | None = None,
    addons: list[str] | None = None,
    parallel_fallback: bool = False,
) -> None:
    """Compile ``mod`` for ``tvm_target`` and link it (with ``addons`` objects) into ``out_so``."""
    import tvm
    from tvm import relax

    target = tvm.target.Target(tvm_target)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    pipeline = cpu_pipeline(target, parallel_fallback=parallel_fallback)
    ex = tvm.compile(mod, target=target, relax_pipeline=pipeline)
    kw = {}
    if cxx:
        from tvm.support import cc

        kw["fcompile"] = cc.cross_compiler(cxx)
    ex.export_library(out_so, addons=addons or [], **kw)
