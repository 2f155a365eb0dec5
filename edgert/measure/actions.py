"""The agent's measuring actions, served beside its core ones (``edgert agent`` adds them):

- ``run.bench``: ``edgert bench`` figures for a deployed artifact;
- ``run.profile``: bench figures plus per-layer time, RSS over time, temperature and frequency
  (:mod:`edgert.measure.profile`).
"""

from __future__ import annotations

from edgert.device.sysinfo import device_info
from edgert.settings import default_threads


def _bench(agent, rid, args, payload):
    name = args.get("name")
    path = agent.deployed(name)
    threads = int(args.get("threads") or default_threads())
    from edgert.runtime.onnx import is_dnn_artifact

    if is_dnn_artifact(path):
        from edgert.measure.onnx import bench_dnn

        r = bench_dnn(path, threads=threads, runs=int(args.get("runs", 50)))
        return {"bench": r.to_dict()}, b""
    from edgert.measure.bench import bench_model

    agent.loaded.pop(name, None)
    r, _ = bench_model(
        path,
        threads=threads,
        n_prompt=int(args.get("n_prompt", 128)),
        n_gen=int(args.get("n_gen", 64)),
        reps=int(args.get("reps", 3)),
        name=name,
    )
    return {"bench": r.to_dict()}, b""


def _profile(agent, rid, args, payload):
    from edgert.measure.profile import profile_artifact

    path = agent.deployed(args.get("name"))
    agent.loaded.pop(args.get("name"), None)
    p = profile_artifact(
        path,
        threads=int(args.get("threads") or default_threads()),
        n_prompt=int(args.get("n_prompt", 64)),
        n_gen=int(args.get("n_gen", 32)),
        reps=int(args.get("reps", 3)),
        # the options `edgert profile` sends (their types checked by the agent's schema)
        dram_budget=args.get("dram_budget"),
        experts=args.get("experts"),
        ffn=args.get("ffn"),
        kv_cache=args.get("kv_cache"),
    )
    p["artifact"] = args.get("name")
    p["device_info"] = device_info(agent.root)
    return {"profile": p}, b""


#: action -> handler, and the capabilities they add to the agent's HELLO
ACTIONS = {"run.bench": _bench, "run.profile": _profile}
CAPABILITIES = ("bench", "profile")
