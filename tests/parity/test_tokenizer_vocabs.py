"""llama.cpp's own tokenizer cases (``ggml-vocab-*.gguf`` with ``.inp``/``.out``, from the
llama-cpp-python source distribution; tools/parity.py fetches and caches them): every vocabulary
of a model family edgert runs tokenizes every case to llama.cpp's ids — with `tokenizers`, and
with the pure-Python tokenizer a device without that wheel reads the artifact's tokenizer.json
with (edgert.runtime.bpe), which also decodes every case to the same text as `tokenizers`."""

import gguf
import pytest
from edgert.compiler.frontends.archs import GGUF_ARCHS
from edgert.compiler.frontends.gguf import read_metadata
from edgert.compiler.frontends.gguf_tokenizer import tokenizer_from_gguf
from parity import llama_cpp_models_dir, vocab_cases

from edgert.runtime.tokenizer import Tokenizer

pytestmark = pytest.mark.parity
#: vocabularies checked besides those whose architecture edgert runs: Gemma's (the suite ships
#: Gemma 4's) and GPT-2's split (what edgert's synthetic models use)
ALSO = ("gemma-4", "gpt-2")
#: at least these must be among them (a suite that lost its files must not pass empty)
EXPECTED = {
    "llama-spm", "llama-bpe", "qwen2", "qwen35", "phi-3", "gemma-4", "gpt-2", "deepseek-coder",
    "deepseek-llm",
}  # fmt: skip


def _vocabs() -> dict[str, object]:
    out = {}
    for f in sorted(llama_cpp_models_dir().glob("ggml-vocab-*.gguf")):
        name = f.name[len("ggml-vocab-") : -len(".gguf")]
        if not f.with_name(f.name + ".inp").exists():
            continue
        meta = read_metadata(gguf.GGUFReader(str(f)))
        if meta.get("general.architecture") in GGUF_ARCHS or name in ALSO:
            out[name] = (f, meta)
    return out


@pytest.fixture(scope="module")
def vocabs():
    try:
        v = _vocabs()
    except Exception as e:  # noqa: BLE001 - reported as a failure with its cause
        pytest.fail(f"llama.cpp's tokenizer files could not be fetched: {e}")
    assert EXPECTED <= set(v), sorted(v)
    return v


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_case_equals_llama_cpp(vocabs, name):
    f, meta = vocabs[name]
    tok = tokenizer_from_gguf(meta, f.name)
    cases = vocab_cases(f)
    assert len(cases) >= 40
    bad = [(t, tok.encode(t, add_bos=False), want) for t, want in cases
           if tok.encode(t, add_bos=False) != want]  # fmt: skip
    assert not bad, f"{len(bad)} of {len(cases)} differ; first: {bad[0]!r}"


def python_tokenizer(tok: Tokenizer, where, monkeypatch) -> Tokenizer:
    """``tok`` saved as an artifact saves it, read back by the pure-Python tokenizer."""
    where.mkdir(parents=True, exist_ok=True)
    tok.save(where)
    monkeypatch.setenv("EDGERT_TOKENIZER", "python")
    py = Tokenizer.load(where)
    assert type(py.tok).__name__ == "PyTokenizer"
    return py


def differences(tok: Tokenizer, py: Tokenizer, cases) -> list:
    """The cases where the pure tokenizer's ids differ from llama.cpp's or `tokenizers`', or
    its text from `tokenizers`' (special tokens skipped or kept)."""
    bad = []
    for text, want in cases:
        ids = py.encode(text, add_bos=False)
        if ids != want or ids != tok.encode(text, add_bos=False):
            bad.append((text, ids, want))
        for skip in (True, False):
            if py.decode(want, skip_special=skip) != tok.decode(want, skip_special=skip):
                bad.append((text, py.decode(want, skip_special=skip), skip))
    return bad


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_python_tokenizer_equals_llama_cpp_and_tokenizers(vocabs, name, tmp_path, monkeypatch):
    f, meta = vocabs[name]
    tok = tokenizer_from_gguf(meta, f.name)
    py = python_tokenizer(tok, tmp_path, monkeypatch)
    cases = vocab_cases(f)
    assert len(cases) >= 40
    assert py.vocab_size == tok.vocab_size
    bad = differences(tok, py, cases)
    assert not bad, f"{len(bad)} of {len(cases)} differ; first: {bad[0]!r}"


def test_no_other_supported_vocabulary_left_out(vocabs, tmp_path, monkeypatch):
    """A vocabulary of a supported architecture the suite gains later is checked too."""
    for name, (f, meta) in vocabs.items():
        tok = tokenizer_from_gguf(meta, f.name)
        cases = vocab_cases(f)
        bad = [t for t, want in cases if tok.encode(t, add_bos=False) != want]
        assert not bad, (name, bad[:3])
        py = python_tokenizer(tok, tmp_path / name, monkeypatch)
        assert not differences(tok, py, cases), name
