"""Side-by-side decode/prefill speed: edgert vs llama.cpp (llama-cpp-python) on the same machine,
same threads, same prompt and generation lengths, interleaved runs, each in a fresh process of
this process tree. Prints a table with ratios and writes JSON.

    tools/setup.sh bench
    .venv/bin/python tools/bench_vs_llamacpp.py --gguf MODEL.gguf --peer-quant Q4_0 \\
        --edgert OUT.edgert -t 1,2 -p 128 -n 64 -r 5 [--json-out bench-results/x.json]

``--peer-quant`` re-quantizes the GGUF with llama.cpp's own quantizer (Q4_0, Q2_K, ...) into the
cache first; ``--edgert`` takes an artifact (or a model file: edgert's reference path).

``--emulate TARGET --memory SIZE`` runs both sides on the same emulated board (root): one cgroup
v1 memory limit of SIZE for each process, whatever it holds (interpreter, libraries, model, page
cache: what llama.cpp memory-maps counts), reads throttled to TARGET's flash bandwidth, the page
cache dropped before every run. llama.cpp runs with its default mmap; edgert with
``--dram-budget`` = SIZE less its own process baseline (the RSS of an interpreter that imported its
runtime) and a margin, so its plan fits the same SIZE. The table says what each side read from
the throttled disk. A comparison of streaming needs a model larger than SIZE; the tool says when
the model fits.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

FTYPES = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ4_XS": 30,
    "TQ1_0": 36,
    "TQ2_0": 37,
}


def peer_quantize(src: Path, qtype: str) -> Path:
    """``src`` re-quantized by llama.cpp to ``qtype`` (cached next to edgert's models)."""
    from edgert.format.artifact import sha256_file
    from edgert.settings import cache_dir

    key = sha256_file(src)[:16]
    dst = cache_dir() / "peer" / f"{src.stem}-{key}-{qtype}.gguf"
    if dst.exists():
        return dst
    import llama_cpp

    dst.parent.mkdir(parents=True, exist_ok=True)
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = FTYPES[qtype]
    p.allow_requantize = True
    p.nthread = os.cpu_count() or 1
    tmp = dst.with_suffix(".part")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(p)):
        raise SystemExit(f"llama.cpp could not quantize {src} to {qtype}")
    tmp.replace(dst)
    return dst


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX (Linux's /proc/cpuinfo flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_int8" in flags or " amx_tile" in flags


def peer_llama(path: str, repack: bool | None = None, **kw):
    """llama.cpp's ``Llama(path, **kw)``. ``repack``: its weights repacked into its extra buffer
    types (its default); None: repacked unless the CPU has AMX, where llama-cpp-python 0.3.36
    segfaults with them on the first evaluation, default options included (seen on a 2-core
    Intel Xeon); False: the weights as the file holds them."""
    import llama_cpp.llama_cpp as lib
    from llama_cpp import Llama

    if repack is None:
        repack = not cpu_has_amx()
    if repack:
        return Llama(path, **kw)
    defaults = lib.llama_model_default_params

    def no_repack():
        p = defaults()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = no_repack  # read by Llama() as it loads the model
    try:
        return Llama(path, **kw)
    finally:
        lib.llama_model_default_params = defaults


#: ``--kv-cache`` -> llama.cpp's cache type for keys and values (its ggml type names)
PEER_KV = {"f32": "F32", "f16": "F16", "q8": "Q8_0", "q4": "Q4_0"}


def peer_worker(
    model: str, threads: int, n_prompt: int, n_gen: int, depth: int = 0, repack: bool = True,
    kv: str | None = None,
) -> dict:  # fmt: skip
    """One llama.cpp measurement (runs in a child process): tg after a prompt of ``max(depth,
    1)`` random ids, as edgert bench's ``--depth``. ``repack=False``: without llama.cpp's CPU
    repacking (its extra buffer types copy the weights it can repack into anonymous memory at
    load), so the weights stay in the memory-mapped file. ``kv``: the cache type for keys and
    values (a :data:`PEER_KV` key; quantized ones need llama.cpp's flash attention, turned on for
    them); None: llama.cpp's default (float16)."""
    import random

    import llama_cpp.llama_cpp as lib

    from edgert.measure.bench import peak_rss_bytes

    cache = {}
    if kv is not None:
        ggml = getattr(lib, f"GGML_TYPE_{PEER_KV[kv]}")
        cache = {"type_k": ggml, "type_v": ggml, "flash_attn": kv in ("q8", "q4")}
    t0 = time.perf_counter()
    llm = peer_llama(
        model,
        repack,
        n_ctx=max(n_prompt, depth) + n_gen + 16,
        n_batch=max(n_prompt, 8),
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
        logits_all=False,
        **cache,
    )
    load_s = time.perf_counter() - t0
    vocab = llm.n_vocab()
    rng = random.Random(0)
    llm.eval([rng.randrange(vocab) for _ in range(8)])  # warm-up
    llm.reset()
    toks = [rng.randrange(vocab) for _ in range(n_prompt)]
    t0 = time.perf_counter()
    llm.eval(toks)
    pp = n_prompt / (time.perf_counter() - t0)
    llm.reset()
    llm.eval([rng.randrange(vocab) for _ in range(max(depth, 1))])
    gen = [rng.randrange(vocab) for _ in range(n_gen)]
    t0 = time.perf_counter()
    for t in gen:
        llm.eval([t])
    tg = n_gen / (time.perf_counter() - t0)
    return {
        "pp_tok_s": pp,
        "tg_tok_s": tg,
        "load_s": load_s,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def _run(cmd: list[str], em) -> tuple[subprocess.CompletedProcess, dict | None]:
    """``cmd`` as a child, under the emulated device's limits when ``em`` is given."""
    if em is None:
        return subprocess.run(cmd, capture_output=True, text=True, check=False), None
    from edgert.emulation.limits import run_emulated

    r = run_emulated(cmd, em, capture_output=True, text=True)
    return r, em.usage.to_dict()


def run_peer(
    model: Path, threads: int, n_prompt: int, n_gen: int, em=None, depth: int = 0,
    repack: bool = True, kv: str | None = None,
) -> dict:  # fmt: skip
    code = (
        f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import bench_vs_llamacpp as b; "
        f"print(json.dumps(b.peer_worker({str(model)!r}, {threads}, {n_prompt}, {n_gen}, "
        f"{depth}, {repack}, {kv!r})))"
    )
    r, usage = _run([sys.executable, "-c", code], em)
    if r.returncode:
        why = f"signal {-r.returncode}" if r.returncode < 0 else f"exit status {r.returncode}"
        hint = ""
        if repack:
            hint = " (its repacked weights have crashed it on CPUs with AMX: try --peer-no-repack)"
        raise SystemExit(f"llama.cpp run failed ({why}){hint}: {r.stderr.strip()[-500:]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "cgroup": usage}


def run_edgert(
    art: str, threads: int, n_prompt: int, n_gen: int, em=None, extra: tuple = ()
) -> dict:
    exe = Path(sys.executable).parent / "edgert"
    cmd = [
        str(exe) if exe.exists() else "edgert",
        "bench",
        art,
        "-t",
        str(threads),
        "-p",
        str(n_prompt),
        "-n",
        str(n_gen),
        "-r",
        "1",
        "--json",
        *extra,
    ]
    r, usage = _run(cmd, em)
    if r.returncode == 2 and "below the minimum" in r.stderr:  # the board is too small for it
        return {"killed": r.stderr.strip().splitlines()[-1]}
    if r.returncode:
        raise SystemExit(f"edgert bench failed: {r.stderr.strip()[-500:]}")
    return {**json.loads(r.stdout), "cgroup": usage}


def weight_bytes_per_token(art_path: str) -> int | None:
    """Bytes of weights one decode step reads: every tensor, less the embedding table when the
    head is a separate tensor (a lookup reads one row of it); a mixture's top-k experts per
    layer, not all of them. None for a model file."""
    from edgert.format.artifact import Artifact, ArtifactError

    try:
        art = Artifact.open(art_path, verify_resident=False)
    except ArtifactError:  # a GGUF or HF model run by edgert's reference path
        return None
    cfg = art.config()
    if cfg.is_moe:
        from edgert.runtime.open import moe_plan

        return moe_plan(art, cfg, max_ctx=1, budget=None).weight_bytes_per_token
    head = art.manifest.get("plan", {}).get("head", "output.weight")
    total = art.nbytes()
    if head != "token_embd.weight" and "token_embd.weight" in art.tensors:
        total -= art.tensors["token_embd.weight"]["nbytes"]
    return total


#: what an edgert process may hold besides its plan's bytes, above its measured baseline (the
#: interpreter, the runtime's libraries and the model's tokenizer): the allocator's slack, the
#: kernels' and readers' thread stacks, the kernel's objects for the process, the benchmark's own
#: sampling noise. (With a Qwen3-30B-A3B-shaped model's 8.4 GB plan wholly resident, 16 MiB was
#: too little: killed at 8 570 MB of anonymous memory, 17 MB of mapped files and 17 MB of page
#: tables in an 8 590 MB limit.)
EDGERT_SLACK = 48 << 20
#: page tables: 8 bytes for each 4 KiB page of the plan's memory, counted in the memory limit
PAGE_TABLES = 512


def edgert_baseline(art: Path) -> int:
    """RSS of an edgert process before its plan: the runtime and ``art``'s tokenizer loaded."""
    from edgert.emulation.limits import baseline_rss

    return baseline_rss(
        "import edgert.runtime.engine, edgert.runtime.streamer\n"
        "from edgert.format.artifact import Artifact\n"
        "from edgert.runtime.tokenizer import Tokenizer\n"
        # the artifact stays open, as in a run (its manifest: 52 MB for a 30B MoE's)
        f"art = Artifact.open({str(art)!r}, verify_resident=False)\n"
        "tok = Tokenizer.of_artifact(art)"
    )


def one_limit(target: str, memory: str | None, art: Path, peer: Path):
    """The emulated board both engines run on: ``(emulation, edgert's --dram-budget)``. One
    memory limit, ``memory``, for either process; edgert plans its weights, KV cache and scratch
    into that limit less its own baseline, a slack and the page tables of the plan."""
    from edgert.emulation.limits import block_device, emulation
    from edgert.format.target import load_target
    from edgert.plan.sizes import parse_size

    if not memory:
        raise SystemExit("--emulate needs --memory (the board's memory for each engine)")
    limit = parse_size(memory)
    base = edgert_baseline(art)
    budget = (limit - base - EDGERT_SLACK) * PAGE_TABLES // (PAGE_TABLES + 1)
    if budget <= 0:
        raise SystemExit(
            f"--memory {memory}: edgert's process alone takes {(base + EDGERT_SLACK) / 1e6:.1f} MB"
        )
    em = emulation(load_target(target), budget=budget, model_path=art, overhead=limit - budget)
    if block_device(peer) != em.device:
        raise SystemExit(f"{peer} and {art} must be on the same disk (one throttle)")
    size = peer.stat().st_size
    if size <= limit:
        print(
            f"note: llama.cpp's model ({size / 1e6:.1f} MB) is not larger than --memory "
            f"({limit / 1e6:.1f} MB): the comparison is meant for models that do not fit",
            file=sys.stderr,
        )
    return em, budget


def _or_killed(run, *args) -> dict:
    """``run(*args)``, or ``{"killed": why}`` where the emulated device's memory limit killed it
    (the side cannot run on that device; the other side's runs go on)."""
    from edgert.emulation.limits import EmulationError

    try:
        return run(*args)
    except EmulationError as e:
        return {"killed": str(e)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "killed" if v is None else f"{v:.{digits}f}{unit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gguf", default=None, help="source GGUF (default: smollm2-135m)")
    ap.add_argument(
        "--peer-quant", default=None, help="re-quantize for llama.cpp (Q4_0, Q2_K, ...)"
    )
    ap.add_argument("--edgert", required=True, help="artifact (or model file) for edgert")
    ap.add_argument("-t", "--threads", default="1,2")
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument(
        "--peer-no-repack", action="store_true",
        help="llama.cpp without its CPU weight repacking, which copies the weights into anonymous "
        "memory at load: with it a model larger than --memory cannot load at all (always off "
        "on CPUs with AMX, where it crashes)",
    )  # fmt: skip
    ap.add_argument(
        "-d", "--depth", type=int, default=0,
        help="tokens in the cache before each tg run, both engines (decode at that context)",
    )  # fmt: skip
    ap.add_argument(
        "--kv-cache", default=None, choices=sorted(PEER_KV),
        help="both engines' KV cache type: edgert --kv-cache TYPE, llama.cpp the same type "
        "(q8: Q8_0, q4: Q4_0, with its flash attention, which they need); default: each "
        "engine's own (edgert f32, llama.cpp f16)",
    )  # fmt: skip
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--emulate", default=None, metavar="TARGET", help="device limits (root)")
    ap.add_argument(
        "--memory", default=None, metavar="SIZE",
        help="with --emulate: the board's memory, one limit for both engines (overheads included)",
    )  # fmt: skip
    ap.add_argument(
        "--edgert-args", default="", help="more `edgert bench` options, e.g. '--no-prefetch'"
    )
    a = ap.parse_args()
    from edgert.device.hub import pull

    src = Path(a.gguf) if a.gguf else pull("smollm2-135m")
    peer = peer_quantize(src, a.peer_quant) if a.peer_quant else src
    em = None
    extra = tuple(a.edgert_args.split()) + (("--depth", str(a.depth)) if a.depth else ())
    extra += ("--kv-cache", a.kv_cache) if a.kv_cache else ()
    repack = not a.peer_no_repack and not cpu_has_amx()  # llama.cpp crashes repacked on AMX
    if a.emulate:
        em, budget = one_limit(a.emulate, a.memory, Path(a.edgert), peer)
        extra += ("--dram-budget", str(budget))
    rows = []
    per_token = weight_bytes_per_token(a.edgert)
    if per_token:  # one buffer for every round's read probe
        from edgert.measure.kernels import dram_read_gbs, probe_buffer

        probe = probe_buffer()
    for threads in [int(x) for x in a.threads.split(",")]:
        ours, theirs, dram = [], [], []
        for _ in range(a.repetitions):  # interleaved: noise hits both sides alike
            theirs.append(
                _or_killed(
                    run_peer,
                    peer,
                    threads,
                    a.n_prompt,
                    a.n_gen,
                    em,
                    a.depth,
                    repack,
                    a.kv_cache,
                )
            )
            mine = extra
            if per_token:  # the read bandwidth of this round's machine state (it moves on a VM),
                # for the roofline and edgert's prediction, measured outside any memory limit
                dram.append(dram_read_gbs(threads, buf=probe))
                mine += ("--dram-gbs", str(dram[-1]))
            ours.append(_or_killed(run_edgert, a.edgert, threads, a.n_prompt, a.n_gen, em, mine))

        for x in ours + theirs:
            x["cgroup_read"] = (x.get("cgroup") or {}).get("disk_read_bytes", 0)
            x["cgroup_peak"] = (x.get("cgroup") or {}).get("memory_peak_bytes", 0)

        def med(xs, k):
            """Median over the runs that finished; None where every run was killed."""
            vals = [x[k] for x in xs if "killed" not in x]
            return statistics.median(vals) if vals else None

        row = {
            "threads": threads,
            "peer_model": peer.name,
            "depth": a.depth,
            "kv_cache": a.kv_cache,
            "peer_repack": repack,
            "edgert": a.edgert,
            "edgert_pp": med(ours, "pp_tok_s"),
            "edgert_tg": med(ours, "tg_tok_s"),
            "llama_pp": med(theirs, "pp_tok_s"),
            "llama_tg": med(theirs, "tg_tok_s"),
            "edgert_rss": med(ours, "peak_rss_bytes"),
            "llama_rss": med(theirs, "peak_rss_bytes"),
            "samples": {"edgert": ours, "llama_cpp": theirs},
            "emulation": {**em.to_dict(), "usage": None} if em else None,
        }
        if em:  # bytes each side read from the throttled disk per run (load included)
            row["edgert_disk_read"] = med(ours, "cgroup_read")
            row["llama_disk_read"] = med(theirs, "cgroup_read")
            row["edgert_cgroup_peak"] = med(ours, "cgroup_peak")
            row["llama_cgroup_peak"] = med(theirs, "cgroup_peak")
        row["tg_ratio"] = _ratio(row["edgert_tg"], row["llama_tg"])
        if per_token:  # medians over the rounds; the fraction is the median of per-round ones
            row["dram_read_gbs"] = statistics.median(dram)
            row["roofline_tg"] = row["dram_read_gbs"] * 1e9 / per_token
            of = [
                x["tg_tok_s"] / (g * 1e9 / per_token)
                for x, g in zip(ours, dram)
                if "killed" not in x
            ]
            row["tg_of_roofline"] = statistics.median(of) if of else None
        row["pp_ratio"] = _ratio(row["edgert_pp"], row["llama_pp"])
        rows.append(row)
    print(f"| threads | test | llama.cpp ({peer.name}) t/s | edgert t/s | edgert / llama.cpp |")
    print("|---|---|---|---|---|")
    for r in rows:
        tg = f"tg{a.n_gen}" + (f" @ d{a.depth}" if a.depth else "")
        for test, k in ((f"pp{a.n_prompt}", "pp"), (tg, "tg")):
            print(
                f"| {r['threads']} | {test} | {_fmt(r['llama_' + k])} | {_fmt(r['edgert_' + k])} "
                f"| {_fmt(r[k + '_ratio'], 'x')} |"
            )
        for side, xs in r["samples"].items():
            for x in xs:
                if "killed" in x:
                    print(f"{side}, {r['threads']} thread(s): {x['killed']}")
    print(f"(medians of {a.repetitions} interleaved runs; edgert artifact {a.edgert})")
    if not repack and not a.peer_no_repack:
        print("llama.cpp without its weight repacking: this CPU has AMX, where it crashes with it")
    if em:
        print(
            f"emulated {em.target}: one memory limit of {em.memory_limit_bytes / 1e6:.1f} MB for "
            f"each engine's process, page cache included (edgert plans {em.budget_bytes / 1e6:.1f}"
            f" MB of it, --dram-budget); reads throttled to {em.flash_read_bps / 1e6:.0f} MB/s"
        )
        for r in rows:
            mb = {k: _fmt(r[k + "_disk_read"] and r[k + "_disk_read"] / 1e6, " MB", 1)
                  for k in ("llama", "edgert")}  # fmt: skip
            pk = {k: _fmt(r[k + "_cgroup_peak"] and r[k + "_cgroup_peak"] / 1e6, " MB", 1)
                  for k in ("llama", "edgert")}  # fmt: skip
            print(
                f"disk reads per run, {r['threads']} thread(s): llama.cpp {mb['llama']}, "
                f"edgert {mb['edgert']}; memory peak (cgroup, page cache included): llama.cpp "
                f"{pk['llama']}, edgert {pk['edgert']}"
            )
    for r in rows:
        rss = {
            k: _fmt(r[k + "_rss"] and r[k + "_rss"] / 2**20, " MiB", 1) for k in ("edgert", "llama")
        }
        print(
            f"peak RSS, {r['threads']} thread(s): edgert {rss['edgert']}, llama.cpp {rss['llama']}"
        )
    for r in rows:
        if r.get("tg_of_roofline") is not None:
            print(
                f"roofline, {r['threads']} thread(s): {r['dram_read_gbs']:.1f} GB/s DRAM read / "
                f"{per_token / 1e6:.1f} MB weights per token = {r['roofline_tg']:.1f} t/s; "
                f"edgert decode at {100 * r['tg_of_roofline']:.0f}%"
            )
    if a.json_out:
        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
