"""Tokenizer: a tokenizer.json reader plus the special ids and chat template the model carries.

Frontends build it (from GGUF metadata or tokenizer.json); artifacts store it as
``tokenizer.json`` + ``tokenizer_meta.json``. The device reads that file with the `tokenizers`
wheel, or, where the wheel cannot be installed (Termux on an Android phone: no manylinux wheels),
with edgert's pure-Python reading of the same format (:mod:`edgert.runtime.bpe`: same ids, same
text). ``EDGERT_TOKENIZER`` chooses: ``python`` or ``tokenizers``; unset (or ``auto``), the
wheel where it imports, else Python. The chat template needs jinja2 only when it is rendered.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from edgert.errors import EdgertError, ModelFormatError
from edgert.runtime.memory import release_free_heap

#: EDGERT_TOKENIZER's values -> the implementation each asks for
BACKENDS = {"": "auto", "auto": "auto", "python": "python", "tokenizers": "tokenizers"}


def backend() -> str:
    """``"tokenizers"`` or ``"python"``: which implementation reads tokenizer.json here, as
    EDGERT_TOKENIZER asks (``auto``: the wheel where it imports). Forcing ``python`` never
    imports `tokenizers`."""
    asked = BACKENDS.get(os.environ.get("EDGERT_TOKENIZER", "").strip().lower())
    if asked is None:
        raise EdgertError(
            f"EDGERT_TOKENIZER={os.environ['EDGERT_TOKENIZER']!r:.40}",
            "use python, tokenizers or auto (or leave it unset)",
        )
    if asked != "auto":
        return asked
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return "python"
    return "tokenizers"


def read_tokenizer_json(path: str | Path) -> Any:
    """A tokenizer.json as :func:`backend` reads it: a ``tokenizers.Tokenizer`` or an
    :class:`edgert.runtime.bpe.PyTokenizer` (the methods edgert calls are the same)."""
    if backend() == "python":
        from edgert.runtime.bpe import PyTokenizer

        return PyTokenizer.from_file(path)
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError as e:
        raise EdgertError(
            f"EDGERT_TOKENIZER=tokenizers, but the `tokenizers` wheel does not import: {e}",
            "pip install tokenizers, or set EDGERT_TOKENIZER=python",
        ) from e
    return HFTokenizer.from_file(str(path))


@dataclass
class TokenizerMeta:
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = False
    stop_ids: list[int] = field(default_factory=list)  # eos + end-of-turn tokens
    chat_template: str | None = None


class Tokenizer:
    def __init__(self, tok: Any, meta: TokenizerMeta):
        self.tok = tok
        self.meta = meta

    # -- encode / decode -------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; special tokens in the text (``<|im_start|>``) are parsed."""
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if add_bos is None:
            add_bos = self.meta.add_bos
        if add_bos and self.meta.bos_id is not None:
            ids = [self.meta.bos_id] + ids
        return ids

    def decode(self, ids: list[int], *, skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    @property
    def stop_ids(self) -> set[int]:
        s = set(self.meta.stop_ids)
        if self.meta.eos_id is not None:
            s.add(self.meta.eos_id)
        return s

    # -- chat -------------------------------------------------------------------------------
    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt=True
    ) -> str:
        """Render the model's chat template (jinja2, sandboxed) for ``messages``. jinja2 (and
        its markupsafe) is imported here, not before: a device without them still encodes,
        decodes and generates from plain prompts."""
        if not self.meta.chat_template:
            raise ModelFormatError(
                "this model carries no chat template", "pass the prompt without --chat"
            )
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:
            raise EdgertError(
                f"rendering the chat template needs jinja2 (and markupsafe), which do not "
                f"import here: {e}",
                "pip install jinja2, or pass the prompt without --chat",
            ) from e

        def raise_exception(msg: str) -> None:
            raise ModelFormatError(f"chat template: {msg}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        # today's date, as transformers gives templates (Llama 3.1/3.2 print it)
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        tpl = env.from_string(self.meta.chat_template)

        def tok_str(i: int | None) -> str:
            return self.tok.id_to_token(i) if i is not None else ""

        return tpl.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=tok_str(self.meta.bos_id),
            eos_token=tok_str(self.meta.eos_id),
        )

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        self.tok.save(str(d / "tokenizer.json"))
        (d / "tokenizer_meta.json").write_text(json.dumps(asdict(self.meta), indent=1))

    @classmethod
    def of_artifact(cls, art) -> Tokenizer | None:
        """An artifact's tokenizer, None where it was compiled without one."""
        return cls.load(art.path) if art.manifest.get("tokenizer") else None

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """The tokenizer saved in ``directory``, read by :func:`backend`'s implementation."""
        d = Path(directory)
        try:
            tok = read_tokenizer_json(d / "tokenizer.json")
            meta = TokenizerMeta(**json.loads((d / "tokenizer_meta.json").read_text()))
        except EdgertError:
            raise  # names the file, the component and the fix already
        except Exception as e:  # `tokenizers` reports a file it cannot read as Exception
            raise ModelFormatError(f"cannot read the tokenizer in {d}: {e}") from e
        release_free_heap()  # what parsing the file took and freed (79 MB for Qwen3's)
        return cls(tok, meta)
