"""Argument helpers shared by several commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def resolve_model(arg: str) -> Path:
    """A path as given, or a known model name (pulled on first use)."""
    p = Path(arg).expanduser()
    if p.exists():
        return p
    from edgert.device.hub import KNOWN_MODELS, pull

    if arg in KNOWN_MODELS or arg.startswith("hf:"):
        return pull(arg)
    return p  # open_engine reports the missing file


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=None, default=float)
    sys.stdout.write("\n")
    sys.stdout.flush()


def add_dram_budget(p, *, experts: bool = True) -> None:
    p.add_argument(
        "--dram-budget",
        default=None,
        metavar="SIZE",
        help="artifacts: keep weights + KV cache + scratch within SIZE (300M, 1.5G); "
        "layers that do not fit stream from flash each step (default: the budget the artifact "
        "was compiled for; off: none)",
    )
    if experts:
        add_expert_options(p)
    add_ffn_options(p)


def add_kv_cache(p) -> None:
    p.add_argument(
        "--kv-cache", default=None, metavar="TYPE",
        help="how the KV cache holds keys and values: f32, f16, q8 or q4 (blocks of 32 values "
        "of a head, rotated, with float16 scales; q4 keys per channel over groups of 64 "
        "positions, the newest in float16), or KEYS,VALUES such as q8,q4 (default: f32)",
    )  # fmt: skip


def add_ffn_options(p) -> None:
    """FFN sparsity (artifacts compiled with --sparse-ffn)."""
    p.add_argument(
        "--sparsity", type=float, default=None, metavar="S",
        help="dense artifacts compiled with --sparse-ffn: compute only the FFN neurons above "
        "the threshold calibrated for this fraction off (e.g. 0.5); their bundles are read from "
        "flash into a window cache (changes results; default: dense)",
    )  # fmt: skip
    p.add_argument(
        "--window", type=int, default=0, metavar="K",
        help="with --sparsity: drop neurons from the cache once idle K tokens (0: keep them "
        "while the budget has room)",
    )  # fmt: skip


def ffn_options(args) -> dict | None:
    from edgert.errors import EdgertError

    if args.sparsity is None:
        if args.window:
            raise EdgertError("--window goes with --sparsity")
        return None
    if not 0 <= args.sparsity < 1 or args.window < 0:
        raise EdgertError("--sparsity is a fraction in [0, 1), --window a count >= 0")
    return {"sparsity": args.sparsity, "window": args.window}


def add_expert_options(p) -> None:
    """How a mixture of experts under --dram-budget caches and reads ahead its experts."""
    from edgert.plan.moe import POLICIES
    from edgert.plan.stats import PREDICTORS

    p.add_argument(
        "--expert-cache", choices=POLICIES, default="lru",
        help="mixtures of experts under --dram-budget: which cached expert to evict (lru)",
    )  # fmt: skip
    p.add_argument(
        "--expert-predictor", choices=PREDICTORS, default="router",
        help="how the next layer's experts are guessed for reading ahead: its router on the "
        "current hidden state, or a co-activation table learned as the model runs (router)",
    )  # fmt: skip
    p.add_argument(
        "--no-prefetch", action="store_true",
        help="read experts only when a layer needs them (no reading ahead)",
    )  # fmt: skip


def expert_options(args) -> dict:
    return {
        "policy": args.expert_cache,
        "predictor": args.expert_predictor,
        "prefetch": not args.no_prefetch,
    }


def dram_budget(args) -> int | None:
    from edgert.plan.sizes import parse_size

    if args.dram_budget is None:
        return None
    if args.dram_budget.strip().lower() == "off":
        return 0  # not the artifact's compiled budget either
    return parse_size(args.dram_budget)
