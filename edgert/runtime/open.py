"""Open whatever the user points at (a model file, a HF directory, later an artifact) as an engine.

An engine has ``forward(tokens, last_only=False) -> logits``, ``reset()``, ``pos``,
``tokenizer``.
"""

from __future__ import annotations

from pathlib import Path

from edgert.errors import EdgertError


def open_engine(
    path: str | Path,
    *,
    max_ctx: int | None = None,
    dram_budget: int | None = None,
    experts: dict | None = None,
    ffn: dict | None = None,
):
    """An artifact's CompiledEngine, or a ReferenceEngine over a GGUF file / HF directory;
    ``dram_budget`` (bytes) applies to artifacts only."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EdgertError(
            f"no such file or directory: {p}", "check the path, or `edgert pull NAME`"
        )
    if p.is_dir() and (p / "manifest.json").exists():
        from edgert.runtime.engine import open_artifact_engine

        return open_artifact_engine(
            p, max_ctx=max_ctx, dram_budget=dram_budget, experts=experts, ffn=ffn
        )
    if dram_budget or ffn:
        raise EdgertError(
            "--dram-budget and --sparsity apply to compiled artifacts",
            f"compile {p.name} with `edgert compile`",
        )
    try:
        from edgert.compiler.frontends import load_model
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EdgertError(
            "running model files needs the compiler extra", "pip install 'edgert[compiler]'"
        ) from e
    from edgert.runtime.reference import ReferenceEngine

    model = load_model(p)
    model.materialize()
    return ReferenceEngine(model, max_ctx=max_ctx)
