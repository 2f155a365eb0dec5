"""A model larger than the compiling machine's memory: `compile` goes through it layer by layer with
a bounded set of float32 tensors loaded (ModelGraph.cache_limit). Forced here on a small mixture by
lowering the threshold, the artifact must be the one a compile holding the whole model writes:
the same weights byte for byte, the same routing trace and the same measured quality. Also the
synthetic maker's clustered router (tools/make_synthetic_gguf.py, the scale benchmarks' models)."""

import json
from pathlib import Path

import numpy as np
import pytest
from edgert.compiler import compile as cc
from edgert.compiler.compile import compile_model
from edgert.compiler.frontends import load_model
from edgert.compiler.quant.scheme import QuantScheme
from edgert.compiler.transform.calibrate import routing_trace
from make_synthetic_gguf import Clusters, make_synthetic_gguf, resolve_shape

from edgert.format import names
from edgert.format.artifact import Artifact

SHAPE = {"dim": 256, "ffn": 256, "heads": 4, "kv_heads": 2, "vocab": 512, "layers": 3,
         "experts": 16, "top_k": 2}  # fmt: skip
CALIB = "tests/data/gpl-3.0.txt"


def test_model_graph_cache_evicts_least_recently_used(tmp_path):
    g = make_synthetic_gguf(out=tmp_path / "m.gguf", arch="llama", qtype="Q8_0", progress=False,
                            dim=256, ffn=512, heads=4, kv_heads=2, vocab=512, layers=2)  # fmt: skip
    whole = load_model(g)
    m = load_model(g)
    one = 256 * 512 * 4  # bytes of an FFN matrix
    m.cache_limit = 2 * one
    a, b, c = (names.weight(0, p) for p in ("ffn_gate", "ffn_up", "ffn_down"))
    for n in (a, b, a, c):  # a used again after b: b is the least recently used when c comes
        m.tensor(n)
    assert list(m._cache) == [a, c]
    assert sum(t.nbytes for t in m._cache.values()) <= 2 * one
    m.cache_limit = 1
    m.tensor(names.EMBEDDING)  # larger than the limit: kept alone, the one just asked for
    assert list(m._cache) == [names.EMBEDDING]
    for n in (a, b, c, names.EMBEDDING):  # loaded again: the same values
        np.testing.assert_array_equal(m.tensor(n), whole.tensor(n))


def _mapped_rss(path) -> int:
    """Bytes of ``path``'s mappings resident in this process (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and ":" not in line.split(" ", 1)[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_read_file_pages_are_dropped_from_the_process(tmp_path, monkeypatch):
    """A GGUF's memory-mapped pages leave the process as the compile reads on (MADV_DONTNEED
    each MAPPED_BYTES read): RSS does not grow by the file. Tensors and stored blocks read
    after their pages were dropped, or kept as views across it, have the same values."""
    from edgert.compiler.frontends import gguf as gg

    g = make_synthetic_gguf(out=tmp_path / "m.gguf", arch="llama", qtype="Q4_0", progress=False,
                            dim=256, ffn=2048, heads=4, kv_heads=2, vocab=4096, layers=4)  # fmt: skip
    size = g.stat().st_size
    kept = load_model(g)
    want = {n: kept.tensor(n).copy() for n in kept.infos}
    assert _mapped_rss(g) > size // 2  # every page read stays mapped without dropping
    monkeypatch.setattr(gg, "MAPPED_BYTES", 1)  # drop before every read
    m = load_model(g)
    base = _mapped_rss(g)  # the first load's mapping, and the second's header
    ffn = names.weight(0, "ffn_up")
    view = m.stored_blocks(ffn)  # a view into the mapping, kept across the drops
    before = view.copy()
    for n in m.infos:
        np.testing.assert_array_equal(m.tensor(n), want[n])
        m._cache.clear()
    largest = max(int(np.prod(i.shape)) for i in m.infos.values()) * 4
    assert _mapped_rss(g) - base <= largest  # at most the last tensor's pages
    np.testing.assert_array_equal(view, before)  # faulted back from the page cache
    del kept


@pytest.fixture(scope="module")
def two_compiles(tmp_path_factory):
    """The two compiles, and the tensors the bounded one loaded whole (ModelGraph.tensor)."""
    from edgert.compiler.frontends import gguf as gg

    from edgert.format.model import ModelGraph

    loaded = []
    real = ModelGraph.tensor

    def tensor(self, name):
        if name not in self._cache:
            loaded.append(name)
        return real(self, name)

    d = tmp_path_factory.mktemp("bounded")
    g = make_synthetic_gguf(out=d / "moe.gguf", arch="qwen3moe", qtype="Q4_0", progress=False,
                            router="clustered", **SHAPE)  # fmt: skip
    out = {}
    for kind, limit in (("whole", cc.MATERIALIZE_BYTES), ("bounded", 0)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cc, "MATERIALIZE_BYTES", limit)
            mp.setattr(cc, "COMPILE_CACHE_BYTES", 200_000)  # less than one expert stack
            if kind == "bounded":  # the file's pages dropped before every read
                mp.setattr(gg, "MAPPED_BYTES", 1)
                mp.setattr(ModelGraph, "tensor", tensor)
            out[kind] = compile_model(model=g, target="host", out=d / f"{kind}.edgert",
                                      scheme=QuantScheme("uniform", 4, 32), calib=CALIB,
                                      quant_method="rtn")  # fmt: skip
    return g, {k: Artifact.open(s.out) for k, s in out.items()}, loaded


def test_bounded_compile_writes_the_same_artifact(two_compiles):
    _, arts, _ = two_compiles
    whole, bounded = arts["whole"], arts["bounded"]
    assert whole.tensors.keys() == bounded.tensors.keys()
    for name in whole.tensors:
        if name == names.ROUTING_TRACE:
            continue
        for part, a in whole.read_tensor(name).items():
            np.testing.assert_array_equal(bounded.read_tensor(name)[part], a, err_msg=name)
    tw, tb = whole.record(names.ROUTING_TRACE), bounded.record(names.ROUTING_TRACE)
    for k in ("route", "guess"):
        np.testing.assert_allclose(tb[k], tw[k], rtol=1e-4, atol=1e-4)
    qw, qb = (a.manifest["quant"]["quality"] for a in (whole, bounded))
    assert qw["tokens"] == qb["tokens"] == 511 and qw["top1"] == qb["top1"]
    assert qb["kl"] == pytest.approx(qw["kl"], rel=1e-4)
    json.dumps(qb)  # stored as plain numbers


def test_bounded_compile_reads_experts_one_at_a_time(two_compiles):
    """No expert stack (larger than the cache limit) is loaded whole by the bounded compile:
    quantizing, calibrating and measuring quality read each expert alone (ModelGraph.part),
    from the GGUF's blocks and from the written artifact, with the values a whole load gives;
    the same for slices of rows of the embedding table (8-bit rows, the quality's head)."""
    from edgert.runtime.weights import reference_model

    g, arts, loaded = two_compiles
    stacks = {names.experts(i, p) for i in range(SHAPE["layers"])
              for p in names.EXPERT_PROJECTIONS}  # fmt: skip
    assert loaded and not stacks & set(loaded)
    for whole, m in ((load_model(g), load_model(g)),
                     (reference_model(arts["bounded"]), reference_model(arts["bounded"]))):  # fmt: skip
        m.cache_limit = 200_000
        for name in sorted(stacks):
            for e in (0, 9, SHAPE["experts"] - 1):
                np.testing.assert_array_equal(m.part(name, e), whole.tensor(name)[e])
        rows = slice(100, 300)  # rows of the 8-bit table (the head): read alone as well
        np.testing.assert_array_equal(
            m.part(names.EMBEDDING, rows), whole.tensor(names.EMBEDDING)[rows]
        )
        np.testing.assert_array_equal(
            m.rows(names.EMBEDDING)[rows], whole.tensor(names.EMBEDDING)[rows]
        )
        assert not m._cache  # read alone, nothing cached
        m.cache_limit = None  # a stack within the limit: loaded whole once, then sliced
        m.part(name, 3)
        assert list(m._cache) == [name]


def test_routing_trace_is_what_step_by_step_decoding_routes(two_compiles):
    """The trace comes from one causal forward over all the tokens; decoding them one at a time
    gives each the same router logits."""
    from edgert.runtime.reference import ReferenceEngine

    g, _, _ = two_compiles
    m = load_model(g)
    toks = [5, 100, 7, 300, 42, 9, 11, 200, 17, 64]
    tr = routing_trace(m, toks, 4)
    seen = []

    class Step(ReferenceEngine):
        def _ffn(self, i, x):
            seen.append(self._mm(x, names.router(i))[-1])
            return super()._ffn(i, x)

    eng = Step(m, max_ctx=len(toks))
    eng.forward(toks[:4], last_only=True)
    seen.clear()
    for t in toks[4:]:
        eng.forward([t], last_only=True)
    step = np.asarray(seen).reshape(len(toks) - 4, SHAPE["layers"], SHAPE["experts"])
    np.testing.assert_allclose(tr["route"], step, rtol=1e-4, atol=1e-4)


def test_clustered_router_sends_a_cluster_to_its_experts(two_compiles):
    """In the first layer a token's top-k experts are its cluster's; the random router's pick
    is its cluster's only by chance (2 top-k of the experts)."""
    g, _, _ = two_compiles
    s = resolve_shape("qwen3moe", "tiny", **SHAPE)
    cl = Clusters.make(s, 0)
    toks = list(range(10, 74))
    tr = routing_trace(load_model(g), [1, *toks], 1)
    top = np.argsort(-tr["route"][:, 0], -1)[:, : s.top_k]
    share = (cl.of_experts(0)[top] == cl.token[np.asarray(toks)][:, None]).mean()
    assert share > 0.9, share
    d = g.parent / "random.gguf"
    make_synthetic_gguf(out=d, arch="qwen3moe", qtype="Q4_0", progress=False, **SHAPE)
    tr = routing_trace(load_model(d), [1, *toks], 1)
    top = np.argsort(-tr["route"][:, 0], -1)[:, : s.top_k]
    share = (cl.of_experts(0)[top] == cl.token[np.asarray(toks)][:, None]).mean()
    assert share < 0.5, share


def test_clustered_router_needs_experts(tmp_path):
    with pytest.raises(ValueError, match="needs a mixture of experts"):
        make_synthetic_gguf(out=tmp_path / "d.gguf", arch="llama", router="clustered",
                            progress=False)  # fmt: skip
