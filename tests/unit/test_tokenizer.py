"""Tokenizers from GGUF metadata: SentencePiece vocab (scores, byte fallback), chat templates."""

import pytest
from edgert.compiler.frontends.gguf_tokenizer import tokenizer_from_gguf

from edgert.errors import EdgertError, ModelFormatError
from edgert.runtime.tokenizer import Tokenizer

NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def spm_meta(extra: dict[str, float]) -> dict:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(tokens)
    for ch in ["\u2581", "a", "b", "c", "d"]:
        tokens.append(ch)
        types.append(NORMAL)
        scores.append(-10.0)
    for piece, score in extra.items():
        tokens.append(piece)
        types.append(NORMAL)
        scores.append(score)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.chat_template": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}",
    }


def pieces(tok, text):
    return [tok.tok.id_to_token(i) for i in tok.encode(text, add_bos=False)]


def test_spm_merges_follow_scores():
    a = tokenizer_from_gguf(spm_meta({"\u2581a": -1.0, "ab": -2.0}))
    assert pieces(a, "ab") == ["\u2581a", "b"]
    b = tokenizer_from_gguf(spm_meta({"\u2581a": -1.0, "ab": -0.5}))
    assert pieces(b, "ab") == ["\u2581", "ab"]


def test_spm_space_prefix_bos_and_roundtrip():
    tok = tokenizer_from_gguf(spm_meta({"\u2581a": -1.0, "\u2581ab": -1.5, "ab": -2.0}))
    ids = tok.encode("ab abc")
    assert ids[0] == 1  # llama vocabularies add BOS by default
    assert pieces(tok, "ab abc") == ["\u2581ab", "\u2581ab", "c"]
    assert tok.decode(ids) == "ab abc"


def test_spm_byte_fallback_for_unknown_characters():
    tok = tokenizer_from_gguf(spm_meta({}))
    ps = pieces(tok, "a\u00e9")  # é = C3 A9 in UTF-8
    assert ps[-2:] == ["<0xC3>", "<0xA9>"]
    assert tok.decode(tok.encode("a\u00e9")) == "a\u00e9"


def test_chat_template_renders():
    tok = tokenizer_from_gguf(spm_meta({}))
    s = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert s == "[user] hi\n[assistant] "


def test_missing_chat_template_is_a_clear_error():
    meta = spm_meta({})
    del meta["tokenizer.chat_template"]
    with pytest.raises(ModelFormatError, match="no chat template"):
        tokenizer_from_gguf(meta).apply_chat_template([{"role": "user", "content": "x"}])


def test_unknown_tokenizer_model():
    meta = spm_meta({})
    meta["tokenizer.ggml.model"] = "rwkv"
    with pytest.raises(EdgertError, match="rwkv"):
        tokenizer_from_gguf(meta)


def test_save_and_load(tmp_path):
    tok = tokenizer_from_gguf(spm_meta({"\u2581a": -1.0}))
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.encode("ab a") == tok.encode("ab a")
    assert again.meta == tok.meta
