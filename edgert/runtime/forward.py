"""The C forward pass (``kernels_neon/forward.c``) bound with ctypes: every layer of a model
(dense, or a mixture of experts) and its head in one call per step, on the weights an artifact
holds in DRAM; experts that stream come from an :class:`edgert.runtime.experts.ExpertCache` through a
callback per layer.

The symbol lives in the artifact's own ``lib/model.so`` (the kernels are linked into it for the
target), so the device needs no compiler. Weights are described to C by address; this object keeps
the arrays alive.
"""

from __future__ import annotations

import ctypes

import numpy as np

from edgert.errors import EdgertError
from edgert.format import kvcache, names
from edgert.format.lut import FMT_CODE, kernel_format
from edgert.format.model import ModelConfig
from edgert.plan.sizes import MAX_BATCH, kv_positions
from edgert.runtime import rope
from edgert.runtime.memory import zeros

W_LUT, W_Q8, W_F32 = 0, 1, 2
_P = ctypes.c_void_p
_I32 = ctypes.c_int32
_I64 = ctypes.c_int64


class _Weight(ctypes.Structure):
    _fields_ = [
        ("kind", _I32),
        ("bits", _I32),
        ("group", _I32),
        ("fmt", _I32),
        ("m", _I64),
        ("k", _I64),
        ("p0", _P),
        ("p1", _P),
        ("p2", _P),
    ]


#: the layer struct's projection fields, in the order of names.PROJECTIONS
_PROJ = ("wq", "wk", "wv", "wo", "gate", "up", "down")
_VECS = (
    "attn_norm", "ffn_norm", "bq", "bk", "bv", "q_norm", "k_norm", "post_attn_norm", "post_ffn_norm"
)  # fmt: skip


#: edgert_forward_abi() of modules whose structs match these
FORWARD_ABI = 8
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}
ROUTE_PROBS, ROUTE_NORM, ROUTE_UNIT = 0, 1, 2


class _Sparse(ctypes.Structure):
    _fields_ = [
        ("threshold", ctypes.c_float),
        ("bits", _I32),
        ("group", _I32),
        ("dim_pad", _I64),
        ("fetch", _P),
        ("ctx", _P),
        ("down_group", _I64),
        ("down_scale", _P),
        ("down_zero", _P),
    ]


_EXPERTS_FN = ctypes.CFUNCTYPE(
    _I32,
    _P,
    _I32,
    ctypes.POINTER(_I32),
    _I64,
    ctypes.POINTER(_I32),
    _I64,
    _P,
)


class _Moe(ctypes.Structure):
    _fields_ = [
        ("n_experts", _I32),
        ("n_used", _I32),
        ("weighting", _I32),
        ("predict", _I32),
        ("expert_ffn_dim", _I64),
        ("shared_ffn_dim", _I64),
        ("router", _Weight),
        ("experts", ctypes.POINTER(_Weight)),
        ("fetch", _P),
        ("ctx", _P),
        ("shared", _Weight * 3),
        ("sh_inp", _P),
        ("counts", _P),
    ]


class _Layer(ctypes.Structure):
    _fields_ = (
        [(p, _Weight) for p in _PROJ]
        + [(v, _P) for v in _VECS]
        + [("sparse", ctypes.POINTER(_Sparse)), ("moe", ctypes.POINTER(_Moe))]
        + [("k_cache", _P), ("v_cache", _P), ("k_stride", _I64), ("v_stride", _I64)]
        + [("kv_cap", _I64), ("k_tail", _P)]
        + [("rope", _I32), ("window", _I32)]
    )


class _Model(ctypes.Structure):
    _fields_ = [
        ("n_layers", _I32),
        ("dim", _I32),
        ("n_heads", _I32),
        ("n_kv_heads", _I32),
        ("head_dim", _I32),
        ("ffn_dim", _I32),
        ("rope_dim", _I32),
        ("rope_neox", _I32),
        ("n_rope", _I32),
        ("qk_norm_head", _I32),
        ("act", _I32),
        ("k_type", _I32),
        ("v_type", _I32),
        ("max_ctx", _I64),
        ("rms_eps", ctypes.c_float),
        ("attn_scale", ctypes.c_float),
        ("layers", ctypes.POINTER(_Layer)),
        ("output_norm", _P),
        ("head", _Weight),
    ]


def _symbol(lib_path: str):
    from edgert.runtime.kernels import check_cpu

    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as e:
        raise EdgertError(
            f"cannot load {lib_path}: {e}",
            "compile the artifact for this device's target (`edgert targets`; an android-arm64 "
            "library needs Android's libc.so)",
        ) from e
    check_cpu(lib, lib_path)  # before anything in it runs
    try:
        fn = lib.edgert_forward
        abi = lib.edgert_forward_abi
    except (OSError, AttributeError):
        return None
    abi.restype = _I32
    if abi() != FORWARD_ABI:
        return None
    fn.argtypes = [ctypes.POINTER(_Model), _P, _I64, _I64, _P, _P, _I32, _P, _P, _I32]
    fn.restype = ctypes.c_int
    return fn


class NativeForward:
    """``forward(x, pos, cos, sin, ...)`` for a dense model whose weights come from ``weight``:
    a function of a tensor name returning ``(format, meta, [arrays])`` (see
    :meth:`edgert.runtime.engine.ArtifactSource.weight`)."""

    def __init__(
        self, fn, cfg: ModelConfig, weight, head_name: str, max_ctx: int, batch: int = MAX_BATCH,
        kv: tuple[str, str] = kvcache.DEFAULT,
    ):  # fmt: skip
        self._fn = fn
        # layer by layer, on 4 KiB pages held as written: a run at position p holds p positions
        # of each layer, not max_ctx (SmolLM2 decode at 1 / 2 threads, 10 rounds: 111 / 150
        # tok/s; on 2 MiB pages 108 / 147; position by position on 2 MiB pages 104 / 142).
        # A sliding-window layer holds a ring of its window and one call's tokens.
        self.batch = int(batch)
        caps = [kv_positions(cfg, i, int(max_ctx), self.batch, kv) for i in range(cfg.n_layers)]
        # each position's row of n_kv_heads * head_dim values in the cache's types
        # (edgert.format.kvcache), as bytes; q4 keys: groups of positions in their rows, and
        # each layer's float16 rows of the group not yet complete
        kvcache.check_heads(kv, cfg.head_dim)
        self.kv = kv
        row = cfg.n_kv_heads * cfg.head_dim
        k_row, v_row = kvcache.key_row_bytes(kv[0], row), kvcache.row_bytes(kv[1], row)
        self.k_cache = k_cache = zeros((sum(caps), k_row), np.uint8)
        self.v_cache = v_cache = zeros((sum(caps), v_row), np.uint8)
        tail = kvcache.key_tail_bytes(kv[0], row)
        self.k_tail = k_tail = zeros((cfg.n_layers, tail), np.uint8) if tail else None
        starts = np.concatenate([[0], np.cumsum(caps)])
        self._keep: list[np.ndarray] = []
        #: (format, meta) of each layer's projections, for weights swapped in per step
        self._formats: dict[tuple[int, str], tuple[str, dict]] = {}
        #: the residual stream after the last call (forward updates x in place)
        self.last_x: np.ndarray | None = None
        #: what a failed fetch callback reports (set_sparse's or set_experts's cache)
        self._fetcher = None
        c = cfg
        self.cfg = cfg
        layers = (_Layer * c.n_layers)()
        ropes = rope.layer_index(c)
        #: tokens routed to each expert, (n_layers, n_experts), counted by the C side
        self.expert_counts = np.zeros((c.n_layers, max(c.n_experts, 1)), np.int64)
        self._moe: list[_Moe] = []
        for i in range(c.n_layers):
            for proj, name in zip(_PROJ, names.PROJECTIONS):
                if c.is_moe and name in names.FFN_PROJECTIONS:
                    continue  # the layer's experts stand in for them
                w = weight(names.weight(i, name))
                self._formats[(i, name)] = w[:2]
                setattr(layers[i], proj, self._weight(w))
            if c.is_moe:
                self._moe.append(self._moe_layer(i, weight))
                layers[i].moe = ctypes.pointer(self._moe[-1])
            layers[i].attn_norm = self._vec(weight(names.attn_norm(i)))
            layers[i].ffn_norm = self._vec(weight(names.ffn_norm(i)))
            if c.qkv_bias:
                for field, proj in zip(("bq", "bk", "bv"), names.BIASES):
                    setattr(layers[i], field, self._vec(weight(names.bias(i, proj))))
            if c.qk_norm or c.qk_norm_per_head:
                layers[i].q_norm = self._vec(weight(names.q_norm(i)))
                layers[i].k_norm = self._vec(weight(names.k_norm(i)))
            if c.post_norms:
                layers[i].post_attn_norm = self._vec(weight(names.post_attn_norm(i)))
                layers[i].post_ffn_norm = self._vec(weight(names.post_ffn_norm(i)))
            layers[i].k_cache = k_cache[starts[i]].ctypes.data
            layers[i].v_cache = v_cache[starts[i]].ctypes.data
            layers[i].k_stride, layers[i].v_stride = k_row, v_row
            layers[i].kv_cap = caps[i]
            if k_tail is not None:
                layers[i].k_tail = k_tail[i].ctypes.data
            layers[i].rope = ropes[i]
            layers[i].window = c.window(i)
        self._layers = layers
        self.model = _Model(
            n_layers=c.n_layers,
            dim=c.dim,
            n_heads=c.n_heads,
            n_kv_heads=c.n_kv_heads,
            head_dim=c.head_dim,
            ffn_dim=c.ffn_dim,
            rope_dim=c.rope_dim,
            rope_neox=int(c.rope_style == "neox"),
            n_rope=len(rope.KINDS),
            qk_norm_head=int(c.qk_norm_per_head),
            act=ACTIVATIONS[c.activation],
            k_type=kvcache.TYPES[kv[0]],
            v_type=kvcache.TYPES[kv[1]],
            max_ctx=int(max_ctx),
            rms_eps=c.rms_eps,
            attn_scale=c.attn_scale,
            layers=layers,
            output_norm=self._vec(weight(names.OUTPUT_NORM)),
            head=self._weight(weight(head_name)),
        )

    def _moe_layer(self, i: int, weight) -> _Moe:
        """Layer ``i``'s router and experts; experts that stream (described without data) are
        asked for per step (set_experts)."""
        c = self.cfg
        weighting = (
            ROUTE_UNIT if c.expert_weights_unit else ROUTE_NORM if c.expert_weights_norm
            else ROUTE_PROBS
        )  # fmt: skip
        moe = _Moe(
            n_experts=c.n_experts,
            n_used=c.n_experts_used,
            weighting=weighting,
            predict=1,
            expert_ffn_dim=c.expert_ffn_dim,
            shared_ffn_dim=c.shared_expert_ffn_dim,
            router=self._weight(weight(names.router(i))),
            counts=self.expert_counts[i].ctypes.data,
        )
        table = (_Weight * (3 * c.n_experts))()
        resident = True
        for e in range(c.n_experts):
            for j, name in enumerate(names.expert_tensors(i, e)):
                w = weight(name)
                self._formats[(i, name)] = w[:2]
                resident = resident and w[2] is not None
                table[3 * e + j] = self._weight(w)
        if resident:
            self._keep.append(table)
            moe.experts = table
        if c.shared_expert_ffn_dim:
            for j, proj in enumerate(names.EXPERT_PROJECTIONS):
                moe.shared[j] = self._weight(weight(names.shared(i, proj)))
            moe.sh_inp = self._vec(weight(names.shared_gate(i)))
        return moe

    def expert_weights(self, key: tuple[int, int], arrays: dict[str, list[np.ndarray]]):
        """The C description of expert ``key`` = (layer, expert) from its buffers (tensor name
        -> buffers, as edgert.format.spans.Span.arrays gives them): (gate, up, down), and the arrays
        it points into (keep both together)."""
        ws = (_Weight * 3)()
        for j, name in enumerate(names.expert_tensors(*key)):
            fmt, meta = self._formats[(key[0], name)]
            ws[j] = self._weight((fmt, meta, arrays[name]), hold=False)
        return ws, arrays

    def set_experts(self, cache) -> None:
        """Fetch every layer's experts from ``cache`` (an edgert.runtime.experts.ExpertCache whose
        entries are :meth:`expert_weights`) as the forward pass routes to them."""
        k = self.cfg.n_experts_used
        size = 3 * ctypes.sizeof(_Weight)

        def fetch(_ctx, layer, experts_p, count, next_p, n, out) -> int:
            try:  # per layer and step: plain ctypes reads and copies, no array wrapping
                chosen = experts_p[:count]
                nxt = None
                if next_p:
                    flat = next_p[: n * k]
                    nxt = [flat[t * k : (t + 1) * k] for t in range(n)]
                got = cache.fetch(layer, chosen, nxt)
                for c, e in enumerate(chosen):
                    ctypes.memmove(out + c * size, ctypes.addressof(got[e][0]), size)
                return 0
            except BaseException as e:  # noqa: BLE001 - reported by the forward pass's caller
                cache.error = e
                return 1

        self._fetcher = cache
        self._experts_fn = _EXPERTS_FN(fetch)
        for moe in self._moe:  # the layers point at these structs
            moe.experts = None
            moe.fetch = ctypes.cast(self._experts_fn, _P)

    @classmethod
    def load(
        cls, lib_path: str, cfg: ModelConfig, weight, head_name, max_ctx: int,
        batch: int = MAX_BATCH, kv: tuple[str, str] = kvcache.DEFAULT,
    ):  # fmt: skip
        """The fast path for this model, or None where it does not apply (a module compiled
        before the C forward pass, or before this layout of its structs)."""
        fn = _symbol(lib_path)
        if fn is None:
            return None
        return cls(fn, cfg, weight, head_name, max_ctx, batch, kv)

    def _hold(self, a: np.ndarray) -> int:
        if not a.flags.c_contiguous:
            raise EdgertError("weight buffers must be contiguous")
        self._keep.append(a)
        return a.ctypes.data

    def _vec(self, w) -> int:
        fmt, _meta, arrays = w
        if fmt != "f32":
            raise EdgertError(f"a norm or bias weight is stored as {fmt}, expected f32")
        return self._hold(np.ascontiguousarray(arrays[0], dtype=np.float32))

    def set_layer(self, i: int, arrays: dict[str, list[np.ndarray]] | None) -> None:
        """Point layer ``i``'s projections at ``arrays`` (tensor name -> buffers, kept alive by
        the caller until the next call), or at nothing (None): weights streamed per step."""
        layer = self._layers[i]
        for proj, name in zip(_PROJ, names.PROJECTIONS):
            fmt, meta = self._formats[(i, name)]
            a = None if arrays is None else arrays[names.weight(i, name)]
            setattr(layer, proj, self._weight((fmt, meta, a), hold=False))

    def set_sparse(self, cache) -> None:
        """Run every layer's FFN on its active neurons, bundles from ``cache``
        (an edgert.runtime.neurons.NeuronCache)."""
        fmt = cache.fmt
        self._fetcher = cache
        self._sparse = [
            _Sparse(
                float(t),
                fmt.bits,
                fmt.group,
                fmt.dim_pad,
                ctypes.cast(cache.callback, _P),
                None,
                fmt.down_group,
                cache.down_scale[i].ctypes.data,
                cache.down_zero[i].ctypes.data,
            )
            for i, t in enumerate(cache.thresholds)
        ]
        for i, sp in enumerate(self._sparse):
            self._layers[i].sparse = ctypes.pointer(sp)

    def _weight(self, w, *, hold: bool = True) -> _Weight:
        """The C description of a weight; arrays None: its shape only (no data yet)."""
        fmt, meta, arrays = w
        m, k = meta["m"], meta["k"]
        if arrays is None:
            return _Weight(-1, 0, 0, 0, m, k, None, None, None)
        if not hold:  # the caller keeps them alive: a contiguous copy here would dangle
            if not all(a.flags.c_contiguous for a in arrays):
                raise EdgertError("weight buffers must be contiguous")
            return self._described(fmt, meta, arrays, [a.ctypes.data for a in arrays])
        return self._described(fmt, meta, arrays, [self._hold(a) for a in arrays])

    def _described(self, fmt: str, meta: dict, arrays, ptrs: list[int]) -> _Weight:
        m, k = meta["m"], meta["k"]
        if fmt in FMT_CODE:
            planes, scale, zero = ptrs
            return _Weight(
                W_LUT,
                meta["bits"],
                meta["group_size"],
                kernel_format(fmt, arrays[2]),
                m,
                k,
                planes,
                scale,
                zero,
            )
        if fmt == "q8":
            q, scale = ptrs
            return _Weight(W_Q8, 8, 32, 0, m, k, q, scale, None)
        if fmt == "f32":
            return _Weight(W_F32, 32, 0, 0, m, k, ptrs[0], None, None)
        raise EdgertError(f"weight format {fmt!r} has no native path")

    def forward(
        self,
        x: np.ndarray,
        pos: int,
        cos: np.ndarray,
        sin: np.ndarray,
        *,
        threads: int,
        last_only: bool = False,
        logits: bool = True,
        times: np.ndarray | None = None,
        layers: tuple[int, int] | None = None,
    ) -> np.ndarray | None:
        """Logits for the tokens whose embeddings are ``x`` (n, dim), at positions pos.. (of the
        last only with ``last_only``; none with ``logits=False``); the KV cache is written.
        cos/sin: (len(rope.KINDS), n, rope_dim / 2), edgert.runtime.rope.tables.
        ``times`` (n_layers + 1, 2) float64 accumulates seconds. ``layers=(a, b)`` runs layers
        a .. b-1 only (x: the residual stream entering layer a; logits only when b is the
        last layer); the stream leaving them is :attr:`last_x`."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.last_x = x
        model = self.model
        if layers is not None and layers != (0, model.n_layers):
            a, b = layers
            if not 0 <= a < b <= model.n_layers:
                raise EdgertError(f"layer range {layers} outside 0..{model.n_layers}")
            model = _Model.from_buffer_copy(self.model)
            model.n_layers = b - a
            model.layers = ctypes.cast(
                ctypes.byref(self._layers, a * ctypes.sizeof(_Layer)), ctypes.POINTER(_Layer)
            )
            logits = logits and b == self.model.n_layers
            if times is not None:
                times = times[a:]
        n = x.shape[0]
        cos = np.ascontiguousarray(cos, dtype=np.float32)
        sin = np.ascontiguousarray(sin, dtype=np.float32)
        rows = 1 if last_only else n
        out = np.empty((rows, self.model.head.m), np.float32) if logits else None
        rc = self._fn(
            ctypes.byref(model),
            x.ctypes.data,
            n,
            pos,
            cos.ctypes.data,
            sin.ctypes.data,
            int(last_only),
            None if out is None else out.ctypes.data,
            None if times is None else times.ctypes.data,
            threads,
        )
        if rc == -2:  # libraries whose forward pass allocated per call
            raise EdgertError("out of memory in the forward pass")
        if rc == -3:
            err, self._fetcher.error = self._fetcher.error, None
            if isinstance(err, EdgertError):
                raise err
            raise EdgertError(f"reading weights from flash failed: {err}") from err
        if rc:
            raise EdgertError(
                f"the forward pass refused its arguments ({n} tokens at position {pos}, "
                f"context {self.model.max_ctx}; or model and weights disagree)"
            )
        return out
