"""A `tokenizers` tokenizer from GGUF metadata: GPT-2 byte-level BPE (``gpt2``), SentencePiece
(``llama``), or Gemma 4's BPE over raw UTF-8 with spaces as "▁" (``gemma4``). Checked against
llama.cpp's own tokenizer cases (tests/parity/test_tokenizer_vocabs.py)."""

from __future__ import annotations

import logging
from typing import Any

from edgert.errors import ModelFormatError, UnsupportedError
from edgert.format.model import is_int
from edgert.runtime.tokenizer import Tokenizer, TokenizerMeta

log = logging.getLogger(__name__)

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)"
)
_QWEN35 = (  # Qwen2's, with combining marks (\p{M}) kept inside words
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+"
    r"|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
#: DeepSeek LLM (v1, a llama model): Latin-like letters, ASCII and full-width punctuation, CJK runs
#: and digit runs split apart, newlines alone
_DEEPSEEK_LLM = [
    r"[\r\n]",
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    _CJK,
    r"\p{N}+",
]
#: DeepSeek Coder (v1, a llama model): letters, punctuation, CJK runs and single digits apart
_DEEPSEEK_CODER = [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"]
#: tokenizer.ggml.pre values whose words found whole in the vocabulary are not merged (llama.cpp's
#: ignore_merges: Llama 3's tokenizer)
IGNORE_MERGES = ("llama3", "llama-v3", "llama-bpe")
#: tokenizer.ggml.pre -> list of split regexes applied in order (as llama.cpp's llama-vocab does)
PRE_TOKENIZERS = {
    "default": [_GPT2],
    "gpt2": [_GPT2],
    "gpt-2": [_GPT2],
    "olmo": [_GPT2],
    "smollm": [r"\p{N}", _GPT2],
    "starcoder": [r"\p{N}", _GPT2],
    "llama3": [_LLAMA3],
    "llama-bpe": [_LLAMA3],
    "qwen2": [_QWEN2],
    "qwen35": [_QWEN35],
    "deepseek-llm": _DEEPSEEK_LLM,
    "deepseek-coder": _DEEPSEEK_CODER,
}

CONTROL, USER_DEFINED, BYTE = 3, 4, 6


def _special_tokens(tokens: list[str], types: list[int] | None) -> list[tuple[int, str]]:
    if not types:
        return []
    return [(i, t) for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)]


def _gpt2_bpe(meta: dict[str, Any], tokens: list[str]):
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    tok = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=pre in IGNORE_MERGES))
    regexes = PRE_TOKENIZERS.get(pre)
    if regexes is None:
        log.warning("unknown GGUF pre-tokenizer %r; using the GPT-2 split", pre)
        regexes = [_GPT2]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _spm_bpe(meta: dict[str, Any], tokens: list[str]):
    """SentencePiece BPE vocab (llama/mistral): merges ranked by the merged piece's score."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers

    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, i in vocab.items():
        if types[i] not in (1,) or len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((-float(scores[i]), vocab[left], vocab[right], left, right))
    merges.sort()
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    tok = HFTokenizer(
        models.BPE(
            vocab,
            [(m[3], m[4]) for m in merges],
            unk_token=tokens[unk] if unk is not None else None,
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    norm = [normalizers.Replace(" ", "\u2581")]
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        norm.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(norm)
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    return tok


def _gemma4_bpe(meta: dict[str, Any], tokens: list[str]):
    """Gemma 4: spaces become "▁", the text splits into runs of newlines and runs of anything
    else, BPE merges each run over raw UTF-8 (no byte-level map), and a piece not in the
    vocabulary falls back to its ``<0xXX>`` byte tokens."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|\n+"), behavior="isolated")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return tok


def _check_lists(meta: dict[str, Any], source: str) -> None:
    """The tokenizer's arrays have the element types and lengths the builders index them by."""
    n = None
    for key, types, per_token in (
        ("tokenizer.ggml.tokens", (str,), True),
        ("tokenizer.ggml.merges", (str,), False),
        ("tokenizer.ggml.token_type", (int,), True),
        ("tokenizer.ggml.scores", (int, float), True),
    ):
        v = meta.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or not all(
            isinstance(x, types) and not isinstance(x, bool) for x in v
        ):
            raise ModelFormatError(
                f"{source}: {key} = {v!r:.40}, expected a list of {types[-1].__name__}"
            )
        n = len(v) if n is None else n  # the tokens come first
        if per_token and len(v) != n:
            raise ModelFormatError(
                f"{source}: {key} has {len(v)} entries, expected one per token ({n})"
            )
    if not isinstance(meta.get("tokenizer.chat_template", ""), str):
        raise ModelFormatError(f"{source}: tokenizer.chat_template is not a string")


def tokenizer_from_gguf(meta: dict[str, Any], source: str = "") -> Tokenizer:
    from tokenizers import AddedToken

    kind = meta.get("tokenizer.ggml.model")
    if not meta.get("tokenizer.ggml.tokens"):
        raise UnsupportedError(f"{source}: GGUF tokenizer has no tokens")
    _check_lists(meta, source)
    tokens = list(meta["tokenizer.ggml.tokens"])

    def opt_id(key: str) -> int | None:
        v = meta.get(key)
        ok = is_int(v) and 0 <= v < len(tokens)
        return v if ok else None

    builders = {
        "gpt2": (_gpt2_bpe, False),
        "llama": (_spm_bpe, True),
        "gemma4": (_gemma4_bpe, True),
    }
    if not isinstance(kind, str) or kind not in builders:
        raise UnsupportedError(
            f"{source}: unsupported tokenizer model {kind!r:.40}",
            "edgert reads GPT-2 BPE ('gpt2'), SentencePiece ('llama') and Gemma 4 ('gemma4') "
            "vocabularies",
        )
    build, default_add_bos = builders[kind]
    specials = _special_tokens(tokens, meta.get("tokenizer.ggml.token_type"))
    try:
        tok = build(
            {**meta, "tokenizer.ggml.unknown_token_id": opt_id("tokenizer.ggml.unknown_token_id")},
            tokens,
        )
        if specials:
            tok.add_special_tokens(
                [AddedToken(t, special=True, normalized=False) for _, t in specials]
            )
    except Exception as e:  # `tokenizers` reports a vocabulary it cannot build as Exception
        why = " ".join(str(e).split())[:200]  # one line, whatever the library says
        raise ModelFormatError(f"{source}: unusable GGUF tokenizer: {why}") from e

    stop = [
        i
        for i in (opt_id("tokenizer.ggml.eot_token_id"), opt_id("tokenizer.ggml.eom_token_id"))
        if i is not None
    ]
    tmeta = TokenizerMeta(
        bos_id=opt_id("tokenizer.ggml.bos_token_id"),
        eos_id=opt_id("tokenizer.ggml.eos_token_id"),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos)),
        stop_ids=stop,
        chat_template=meta.get("tokenizer.chat_template"),
    )
    return Tokenizer(tok, tmeta)
