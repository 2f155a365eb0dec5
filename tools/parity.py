"""Parity of edgert's reference path with llama.cpp (llama-cpp-python) on the same GGUF and text.

Measures, with llama.cpp's perplexity convention (chunks of --ctx, second half scored):
  - tokenization equality over the whole text,
  - perplexity of both and their relative difference,
  - top-1 next-token agreement under teacher forcing (every position of every chunk),
  - llama.cpp's agreement with itself (batched prefill vs token-by-token), the noise floor of its
    quantized dot products,
  - with --f32: the same model converted to F32 by llama.cpp's own quantizer, F32 KV cache —
    where both sides compute in float32, so differences are summation order only.

Either the numpy reference or (--engine c) the C forward pass on the model's float weights (the
kernels library built for this host) is compared; or (--keep) the model compiled for this host
with `--bits keep`, its quantized tensors imported as they are: the LUT kernels and 8-bit rows on
llama.cpp's own blocks. --peer-quant TYPE first has llama.cpp re-quantize the model to TYPE (a
Q4_K_M, Q3_K_M, Q2_K ... file of the same weights, cached).

    python tools/parity.py [--model PATH] [--text FILE] [--ctx 512] [--f32] [--engine c]
                           [--f32-kv] [--peer-quant TYPE] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_vs_llamacpp import FTYPES, peer_llama, peer_quantize  # tools/ is on sys.path

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "gpl-3.0.txt"


VOCAB_SEP = "\n__ggml_vocab_test__\n"


def llama_cpp_models_dir() -> Path:
    """llama.cpp's tokenizer test files (``ggml-vocab-*.gguf`` with ``.inp``/``.out`` cases) and,
    in ``templates/``, the chat templates of the model families it knows (``*.jinja``), from the
    source distribution of the installed llama-cpp-python (``pip download --no-binary``), cached
    under ``~/.cache/edgert/llama-cpp-models/<version>-<sdist sha256>``."""
    import hashlib
    import subprocess
    import sys
    import tarfile
    from importlib.metadata import version

    from edgert import settings

    ver = version("llama-cpp-python")
    root = settings.cache_dir() / "llama-cpp-models"
    done = sorted(root.glob(f"{ver}-*/models"))
    if done:
        return done[0]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={ver}", "-d", tmp],
            check=True,
        )  # fmt: skip
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()[:16]
        dst = root / f"{ver}-{digest}" / "models"
        part = dst.with_name("models.part")
        (part / "templates").mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                name = Path(m.name).name
                if m.name.endswith(f"/vendor/llama.cpp/models/{name}") and name.startswith(
                    "ggml-vocab-"
                ):
                    where = part / name
                elif m.name.endswith(f"/vendor/llama.cpp/models/templates/{name}") and (
                    name.endswith(".jinja")
                ):
                    where = part / "templates" / name
                else:
                    continue
                f = tf.extractfile(m)
                if f is not None:
                    where.write_bytes(f.read())
        part.rename(dst)
    return dst


def vocab_cases(vocab: Path) -> list[tuple[str, list[int]]]:
    """A vocabulary file's cases: (text, llama.cpp's token ids without BOS)."""
    texts = Path(f"{vocab}.inp").read_text(encoding="utf-8").split(VOCAB_SEP)
    ids = Path(f"{vocab}.out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, ids)]


def _llama(path: str, ctx: int, threads: int, f32_kv: bool = False):
    kw = {"type_k": 0, "type_v": 0} if f32_kv else {}
    return peer_llama(
        path, n_ctx=ctx, n_batch=ctx, logits_all=True, verbose=False, n_threads=threads, **kw
    )


def _nll(logits: np.ndarray, chunk: list[int], first: int) -> np.ndarray:
    from edgert.runtime.perplexity import log_softmax

    lp = log_softmax(logits[first:-1])
    tgt = np.asarray(chunk[first + 1 :])
    return -lp[np.arange(len(tgt)), tgt]


def to_f32_gguf(src: Path, dst: Path) -> None:
    """Convert with llama.cpp's own quantizer (ftype ALL_F32)."""
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = 0
    p.allow_requantize = True
    p.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)):
        raise RuntimeError(f"llama.cpp could not convert {src} to F32")


def c_engine(m, max_ctx: int):
    """The C forward pass (kernels library built for this host) on model ``m``'s float32
    weights, as the runtime drives it."""
    from edgert.format import names
    from edgert.runtime.build import build_shared
    from edgert.runtime.engine import CompiledEngine
    from edgert.runtime.weights import ModelGraphSource

    head = names.OUTPUT if names.OUTPUT in m else names.EMBEDDING
    return CompiledEngine(
        str(build_shared()), m.config, ModelGraphSource(m), tokenizer=m.tokenizer,
        max_ctx=max_ctx, head_name=head,
    )  # fmt: skip


def compare(
    model: Path,
    text: str,
    *,
    ctx: int = 512,
    max_chunks: int | None = None,
    threads: int = 2,
    f32_kv: bool = False,
    self_check: bool = True,
    engine: str = "reference",
    artifact: Path | None = None,
) -> dict:
    """``artifact``: edgert's side is that artifact (compiled from ``model``) through the
    runtime, instead of ``engine`` on the model's own weights."""
    from edgert.compiler.frontends import load_model

    from edgert.runtime.reference import ReferenceEngine

    m = load_model(model)
    if artifact is None:
        m.materialize(progress=False)
    ours_ids = m.tokenizer.encode(text)
    llm = _llama(str(model), ctx, threads, f32_kv)
    theirs_ids = llm.tokenize(text.encode(), add_bos=m.tokenizer.meta.add_bos, special=False)
    n_chunks = len(ours_ids) // ctx
    if max_chunks:
        n_chunks = min(n_chunks, max_chunks)
    if artifact is not None:
        from edgert.runtime.open import open_artifact_engine

        eng, engine = open_artifact_engine(artifact, max_ctx=ctx), f"artifact {artifact}"
    else:
        eng = c_engine(m, ctx) if engine == "c" else ReferenceEngine(m, max_ctx=ctx)
    first = ctx // 2
    nll_a, nll_b = [], []
    agree = self_agree = total = 0
    max_diff = 0.0
    sq = 0.0
    t_ours = t_theirs = 0.0
    for c in range(n_chunks):
        chunk = ours_ids[c * ctx : (c + 1) * ctx]
        eng.reset()
        t0 = time.perf_counter()
        la = eng.forward(chunk)
        t1 = time.perf_counter()
        llm.reset()
        llm.eval(chunk)
        lb = np.array(llm.scores[:ctx], dtype=np.float32)
        t_ours, t_theirs = t_ours + t1 - t0, t_theirs + time.perf_counter() - t1
        nll_a.append(_nll(la, chunk, first))
        nll_b.append(_nll(lb, chunk, first))
        agree += int(np.sum(la.argmax(-1) == lb.argmax(-1)))
        total += ctx
        max_diff = max(max_diff, float(np.abs(la - lb).max()))
        sq += float(((la - lb) ** 2).sum())
        if self_check:
            llm.reset()
            for t in chunk:
                llm.eval([t])
            lc = np.array(llm.scores[:ctx], dtype=np.float32)
            self_agree += int(np.sum(lc.argmax(-1) == lb.argmax(-1)))
    ppl_a = float(np.exp(np.concatenate(nll_a).mean()))
    ppl_b = float(np.exp(np.concatenate(nll_b).mean()))
    return {
        "model": str(model),
        "engine": engine,
        "tokens": len(ours_ids),
        "tokenization_equal": ours_ids == list(theirs_ids),
        "ctx": ctx,
        "chunks": n_chunks,
        "scored": int(sum(len(x) for x in nll_a)),
        "ppl_edgert": ppl_a,
        "ppl_llama_cpp": ppl_b,
        "ppl_rel_diff": abs(ppl_a - ppl_b) / ppl_b,
        "top1_agreement": agree / total,
        "llama_cpp_self_agreement": self_agree / total if self_check else None,
        "logit_max_abs_diff": max_diff,
        "logit_rms_diff": float(np.sqrt(sq / (total * la.shape[1]))),
        "edgert_prefill_tok_s": total / t_ours,
        "llama_cpp_prefill_tok_s": total / t_theirs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF (default: edgert pull smollm2-135m)")
    ap.add_argument("--text", default=str(DEFAULT_TEXT))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--f32", action="store_true", help="also compare on an F32 conversion")
    ap.add_argument("--engine", choices=("reference", "c"), default="reference")
    ap.add_argument(
        "--f32-kv", action="store_true", help="llama.cpp with an F32 KV cache (for F32 models)"
    )
    ap.add_argument("--peer-quant", choices=list(FTYPES), default=None,
                    help="compare on the model re-quantized by llama.cpp to this type")  # fmt: skip
    ap.add_argument("--keep", action="store_true",
                    help="edgert: the model compiled with --bits keep for this host")  # fmt: skip
    ap.add_argument("--no-self-check", action="store_true",
                    help="skip llama.cpp's token-by-token run (its noise floor)")  # fmt: skip
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from edgert.device.hub import pull

    model = Path(a.model) if a.model else pull("smollm2-135m")
    if a.peer_quant:
        model = peer_quantize(model, a.peer_quant)
    text = Path(a.text).read_text()
    with tempfile.TemporaryDirectory() as d:
        art, extra = None, {}
        if a.keep:
            from edgert.compiler.compile import compile_model
            from edgert.compiler.quant.scheme import QuantScheme

            from edgert.format.artifact import Artifact

            art = Path(d) / "keep.edgert"
            s = compile_model(model=model, target="host", out=art, scheme=QuantScheme(),
                              keep=True)  # fmt: skip
            extra = {"gguf_bytes": model.stat().st_size, "artifact_bytes": Artifact.open(art).nbytes(),
                     "bits_per_weight": s.bits_per_weight, "kept": s.tensors_by_method}  # fmt: skip
        r = compare(model, text, ctx=a.ctx, max_chunks=a.chunks, engine=a.engine,
                    f32_kv=a.f32_kv, self_check=not (a.f32_kv or a.no_self_check), artifact=art)  # fmt: skip
        rows = [("gguf", {**r, **extra})]
    if a.f32:
        with tempfile.TemporaryDirectory() as d:
            f32 = Path(d) / "f32.gguf"
            to_f32_gguf(model, f32)
            rows.append(
                (
                    "f32",
                    compare(
                        f32,
                        text,
                        ctx=a.ctx,
                        max_chunks=a.chunks,
                        f32_kv=True,
                        self_check=False,
                        engine=a.engine,
                    ),
                )
            )
    if a.json:
        print(json.dumps(dict(rows), indent=1))
        return
    for name, r in rows:
        print(f"[{name}] {r['model']}")
        for k, v in r.items():
            if k != "model":
                print(f"  {k:28s} {v:.6g}" if isinstance(v, float) else f"  {k:28s} {v}")


if __name__ == "__main__":
    main()
