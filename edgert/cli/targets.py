from __future__ import annotations

HELP = "list the device targets (targets/*.toml and ~/.config/edgert/targets)"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the targets as one JSON object")


def _provenance(t) -> str:
    """How many of the target's cost-model figures are measured, cited, assumed (or not
    labelled); `targets --json` gives each one's source."""
    from collections import Counter

    from edgert.format.target import FIGURES

    n = Counter(t.source(f).split(":")[0] for f in FIGURES)
    return ", ".join(f"{v} {k}" for k, v in sorted(n.items()))


def _cores(t) -> str:
    """The cores, with the clusters' counts and how many are big where they are of several
    kinds ("8 (1+2+2+3, 5 big)"); each cluster's kind and clock: `targets --json`."""
    if len(t.clusters) < 2:
        return str(t.cores)
    counts = "+".join(str(c["count"]) for c in t.clusters)
    return f"{t.cores} ({counts}, {t.big_cores} big)"


def run(args) -> int:
    from edgert.cli.common import print_json
    from edgert.format.target import FIGURES, list_targets

    targets = list_targets()
    if args.json:
        print_json(
            {
                n: {
                    **t.to_dict(),
                    "big_cores": t.big_cores,
                    "figure_sources": {f: t.source(f) for f in FIGURES},
                    "toolchain_installed": not t.toolchain_missing(),
                }
                for n, t in targets.items()
            }
        )
        return 0
    rows = [
        ("target", "arch", "cpu", "cores", "DRAM", "DRAM GB/s", "flash", "flash MB/s",
         "cost-model figures", "toolchain")
    ]  # fmt: skip
    for n, t in targets.items():
        rows.append(
            (
                n,
                t.arch,
                t.cpu_model,
                _cores(t),
                f"{t.dram_bytes / 2**30:.0f} GiB",
                f"{t.dram_bandwidth_gbs:g}",
                t.flash_kind,
                f"{t.flash_read_mbs:g}",
                _provenance(t),
                "ok" if not t.toolchain_missing() else "missing: " + " ".join(t.apt),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    return 0
