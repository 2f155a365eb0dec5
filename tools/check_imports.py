"""The import graph of edgert and its compiler, read from the source (AST, no imports run):
every import between the project's modules, at module level or inside a function, is an edge.

Checks, and exits 1 naming each violation:
- no cycle among modules (a package's ``__init__`` counts as a module);
- imports run one way between the layers: ``format`` <- ``plan`` <- ``runtime`` <- ``device``
  <- ``measure`` <- ``cli``, with ``emulation`` beside them and the compiler above all but the
  CLI (:data:`ALLOWED` lists what each layer may import);
- nothing outside the compiler and the CLI imports the compiler or TVM at module level, and
  function-level imports of either happen only where :data:`LAZY` says why.

    python tools/check_imports.py [--graph]     # --graph prints every edge
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def packages(root: Path) -> dict[str, Path]:
    """Source folder of each package edgert installs (the compiler installs as edgert.compiler)."""
    return {"edgert": root / "edgert", "edgert.compiler": root / "compiler"}


#: layer -> the layers its modules may import (besides their own and the shared top level:
#: edgert, edgert.errors, edgert.settings, edgert.progress)
ALLOWED = {
    "format": set(),
    "plan": {"format"},
    "runtime": {"format", "plan"},
    "device": {"format", "plan", "runtime"},
    "emulation": {"format", "device"},
    "measure": {"format", "plan", "runtime", "device", "emulation"},
    "compiler": {"format", "plan", "runtime"},
    "cli": {"format", "plan", "runtime", "device", "measure", "emulation", "compiler"},
}
TOP = {"edgert", "edgert.__main__", "edgert.errors", "edgert.settings", "edgert.progress"}

#: (importing module, imported package): function-level imports allowed across the rules above,
#: each with its reason
LAZY = {
    ("edgert.runtime.open", "edgert.compiler"): "generate/perplexity/bench on a model file "
    "(not an artifact) run the reference on the frontends' weights: workstation only",
    ("edgert.runtime.onnx", "tvm"): "ONNX artifacts run on TVM's runtime library only",
}


def module_name(path: Path, pkgs: dict[str, Path]) -> str | None:
    for pkg, d in pkgs.items():
        if pkg == "edgert" and path.is_relative_to(pkgs["edgert.compiler"]):
            continue
        if path.is_relative_to(d):
            rel = path.relative_to(d).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            return ".".join([pkg, *parts]) if parts else pkg
    return None


def layer_of(mod: str) -> str | None:
    if mod in TOP:
        return None
    if mod.startswith("edgert.compiler"):
        return "compiler"
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def modules(root: Path) -> dict[str, Path]:
    pkgs = packages(root)
    out = {}
    for d in pkgs.values():
        for f in sorted(d.rglob("*.py")):
            name = module_name(f, pkgs)
            if name is not None:
                out[name] = f
    return out


def imports(path: Path, known: set[str]) -> list[tuple[str, bool, int]]:
    """(imported module, at module level?, line) for each import of a project module or TVM."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    for n in tree.body:  # `if TYPE_CHECKING:` / try blocks at module level count as module level
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]  # fmt: skip
        for name in names:
            if name == "tvm" or name.startswith("tvm."):
                out.append(("tvm", id(node) in top, node.lineno))
                continue
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.append((name, id(node) in top, node.lineno))
    return out


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """Every edge between the project's modules, and what breaks the rules above."""
    mods = modules(root)
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    problems = []
    for mod, path in mods.items():
        src = layer_of(mod)
        for dep, at_top, line in imports(path, known):
            where = f"{path.relative_to(root)}:{line}"
            if dep == "tvm" or dep.startswith("edgert.compiler"):
                pkg = "tvm" if dep == "tvm" else "edgert.compiler"
                if src not in ("compiler", "cli"):
                    if at_top:
                        problems.append(f"{where}: {mod} imports {dep} at module level")
                    elif (mod, pkg) not in LAZY:
                        problems.append(f"{where}: {mod} imports {dep} (not listed in LAZY)")
                if dep == "tvm":
                    continue
            if dep == mod:
                continue
            edges[mod].add(dep)
            dst = layer_of(dep)
            if src and dst and dst != src and dst not in ALLOWED[src]:
                if (mod, "edgert.compiler") in LAZY and dst == "compiler":
                    continue
                problems.append(f"{where}: {mod} ({src}) imports {dep} ({dst})")
    return edges, problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def check(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """The graph and every problem in it: rule violations, then cycles."""
    edges, problems = graph(root)
    problems += ["import cycle among " + ", ".join(comp) for comp in cycles(edges)]
    return edges, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", action="store_true", help="print every edge")
    ap.add_argument("--root", type=Path, default=ROOT, help="the source tree (this one)")
    a = ap.parse_args(argv)
    edges, problems = check(a.root)
    if a.graph:
        for m in sorted(edges):
            for d in sorted(edges[m]):
                print(f"{m} -> {d}")
    for p in problems:
        print(p)
    n = sum(len(d) for d in edges.values())
    print(f"{len(edges)} modules, {n} imports, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
