import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # tools/ modules (synthetic model maker) are importable
sys.path.insert(0, str(ROOT / "tests" / "unit"))  # shared model builders (test_reference_archs)

# progress bars off in tests
os.environ.setdefault("EDGERT_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M GGUF (pulled into the cache on first use, then verified)."""
    from edgert.hub import pull

    return pull("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    from edgert.compiler.frontends import load_model

    m = load_model(smollm2_path)
    m.materialize(progress=False)
    return m


def run_cli(*args: str, env: dict | None = None, cwd: str | None = None):
    """Run `python -m edgert ARGS` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edgert", *args],
        capture_output=True,
        text=True,
        env=e,
        cwd=cwd,
        timeout=600,
    )


#: shapes of the small synthetic models the compiler and device tiers compile
SMALL_MODEL = dict(dim=128, ffn=256, heads=4, kv_heads=2, vocab=512)


def compile_synthetic(out_dir: Path, arch: str, scheme, *, target: str = "host", **kw):
    """A small random-weight model of ``arch`` compiled for ``target``; returns the summary."""
    from edgert.compiler.compile import compile_model
    from make_synthetic_gguf import make_synthetic_gguf

    g = make_synthetic_gguf(
        out=out_dir / f"{arch}.gguf", arch=arch, qtype="F32", progress=False, **SMALL_MODEL
    )
    return compile_model(
        model=g, target=target, out=out_dir / f"{arch}.edgert", scheme=scheme, **kw
    )
