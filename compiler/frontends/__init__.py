"""Model frontends: a file or directory in, an :class:`edgert.format.model.ModelGraph` out."""

from __future__ import annotations

from pathlib import Path

from edgert.errors import EdgertError
from edgert.format.model import ModelGraph


def load_model(path: str | Path) -> ModelGraph:
    """Open a GGUF file or a Hugging Face directory (config.json + *.safetensors)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EdgertError(
            f"no such file or directory: {p}", "check the path, or `edgert pull NAME`"
        )
    if p.is_dir():
        if (p / "manifest.json").exists():
            raise EdgertError(f"{p} is an edgert artifact, not a model file")
        if (p / "config.json").exists():
            from edgert.compiler.frontends.hf import load_hf

            return load_hf(p)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            p = ggufs[0]
        else:
            raise EdgertError(
                f"{p} holds neither config.json nor exactly one .gguf file",
                "pass a GGUF file or a Hugging Face model directory",
            )
    if p.suffix == ".onnx":
        raise EdgertError(f"{p} is an ONNX model", "ONNX models are compiled, not run directly")
    from edgert.compiler.frontends.gguf import load_gguf

    return load_gguf(p)
