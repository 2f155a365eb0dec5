"""A `tokenizers` tokenizer from GGUF metadata (GPT-2 byte-level BPE or SentencePiece)."""

from __future__ import annotations

import logging
from typing import Any

from edgert.errors import UnsupportedError
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
    tok = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False))
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
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


def tokenizer_from_gguf(meta: dict[str, Any], source: str = "") -> Tokenizer:
    from tokenizers import AddedToken

    kind = meta.get("tokenizer.ggml.model")
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise UnsupportedError(f"{source}: GGUF tokenizer has no tokens")
    if kind == "gpt2":
        tok = _gpt2_bpe(meta, tokens)
        default_add_bos = False
    elif kind == "llama":
        tok = _spm_bpe(meta, tokens)
        default_add_bos = True
    else:
        raise UnsupportedError(
            f"{source}: unsupported tokenizer model {kind!r}",
            "edgert reads GPT-2 BPE ('gpt2') and SentencePiece ('llama') vocabularies",
        )
    specials = _special_tokens(tokens, meta.get("tokenizer.ggml.token_type"))
    if specials:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for _, t in specials])

    def opt_id(key: str) -> int | None:
        v = meta.get(key)
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

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
