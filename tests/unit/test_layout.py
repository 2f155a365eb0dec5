"""The layout's rules, checked on the source: no import cycle among edgert's modules, imports
one way between layers (tools/check_imports.py), and the checker itself catches both."""

from pathlib import Path

import check_imports


def test_source_tree_has_no_cycle_and_imports_run_one_way():
    edges, problems = check_imports.check()
    assert problems == []
    assert len(edges) > 50  # it read the whole tree
    # the edges the rules are about exist where expected
    assert "edgert.format.model" in edges["edgert.runtime.engine"] | edges["edgert.runtime.open"]
    assert not any(d.startswith("edgert.runtime") for d in edges["edgert.plan.moe"])


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_checker_reports_a_cycle_and_a_layer_violation(tmp_path):
    root = _tree(
        tmp_path,
        {
            "edgert/__init__.py": "",
            "edgert/format/__init__.py": "",
            "edgert/format/a.py": "def f():\n    from edgert.runtime import b\n",
            "edgert/runtime/__init__.py": "",
            "edgert/runtime/b.py": "from edgert.format import a\n",
            "edgert/plan/__init__.py": "",
            "edgert/plan/c.py": "import tvm\n",
            "compiler/__init__.py": "",
        },
    )
    _edges, problems = check_imports.check(root)
    text = "\n".join(problems)
    assert "edgert.format.a (format) imports edgert.runtime.b (runtime)" in text
    assert "import cycle among edgert.format.a, edgert.runtime.b" in text
    assert "edgert.plan.c imports tvm at module level" in text
    assert len(problems) == 3


def test_kernel_files_stay_small():
    """The kernels split by ISA: no C file of kernels_neon over 600 lines."""
    src = Path(check_imports.ROOT) / "kernels_neon"
    sizes = {f.name: len(f.read_text().splitlines()) for f in src.glob("*.c")}
    assert {"lut_ref.c", "lut_neon.c", "lut_x86.c", "threadpool.c", "forward.c"} <= set(sizes)
    assert max(sizes.values()) <= 600, sizes
