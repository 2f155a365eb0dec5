"""The pure-Python tokenizer (edgert.runtime.bpe), which a device without the `tokenizers` wheel
(Termux on Android) reads tokenizer.json with, against `tokenizers` itself: the same ids, the
same decoded text, the same vocabulary answers, for every component it reads; anything else
refused by name; a generation with `tokenizers` unimportable equal to one with it.

Random text is drawn from characters Python's unicodedata assigns: where it is older than the
Rust library's tables (Python 3.11: Unicode 14; the wheel's Oniguruma: newer), a character
assigned since counts as unassigned here and would be split from its neighbours differently.
"""

import copy
import json
import os
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from conftest import compile_synthetic
from edgert.compiler.frontends.gguf_tokenizer import PRE_TOKENIZERS, tokenizer_from_gguf
from edgert.compiler.quant.scheme import QuantScheme
from tokenizers import (
    AddedToken,
    Regex,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from tokenizers import Tokenizer as HFTokenizer

from edgert.errors import EdgertError, ModelFormatError
from edgert.runtime import bpe
from edgert.runtime.bpe import PyTokenizer
from edgert.runtime.tokenizer import Tokenizer, backend

ROOT = Path(__file__).resolve().parents[2]
GPL = (ROOT / "tests" / "data" / "gpl-3.0.txt").read_text()

#: multilingual text, code, whitespace runs, emoji, digits, special tokens, control characters
TEXTS = [
    "", " ", "  ", "\n", "\n\n\n", "\t\t", " \n \n", "\r\n", "Hello world", " Hello world",
    "Hello  world   ", "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll say it's 'quoted' -- isn't it? DON'T SHOUT, we'RE fine 'S 'ſ",
    "Привет, как дела? Всё хорошо.", "Γειά σου Κόσμε ΣΑΣ", "مرحبا بالعالم", "שלום עולם",
    "नमस्ते दुनिया क्षत्रिय", "こんにちは世界、カタカナ", "你好，世界！我们在2024年。", "안녕하세요 세계",
    "Tiếng Việt có dấu: ẩm thực", "Ünïcödé çåfé naïve façade straße İstanbul",
    "e\u0301 vs \u00e9 (NFD/NFC)", "ﬁ ligature Ⅻ ² ½ ⑦ ℃ ㎏", "Ⓐⓑ 🄰 circled",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * 3.14f; }\n",
    '<html><body class="x">&amp;&lt;</body></html>', "SELECT * FROM t WHERE id=42;",
    "    indented\n        more\n\t\ttabs \r\n windows\r\n   \n",
    "emoji 😀😃 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇩🇪 ❤️ ✨🤖", "digits 0 12 123 1234 12345 3.14159 1,000,000",
    "٣٤٥ ४५६ 1e-9 0x1F 007 ①②", "spaces\u00a0nbsp\u3000ideographic\u2009thin\u200bzero\u200cwidth",
    "\u1680ogham\u2028line\u2029para\u0085nel\x1cfs\x1f", "<|im_start|>user\nHi there<|im_end|>\n",
    "<|im_start|>assistant\n", "<|endoftext|><|endoftext|>a<|im_end|>b", "<s>[INST] hi [/INST]</s>",
    "‘curly’ “quotes” — dashes – … «guillemets»", "\x00\x01\x1b[31mred\x1b[0m\x7f",
    "a" * 300, "ab " * 120, "1" * 40, " " * 33 + "x", "\u2581hello \u2581\u2581world",
    "<0x41><unk>\ufffd", "The GNU General Public License is a free, copyleft license.",
]  # fmt: skip


def assigned_chars() -> list[str]:
    """Every code point Python's unicodedata assigns (surrogates left out)."""
    return [
        chr(c)
        for c in range(0x110000)
        if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn"
    ]


POOL = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3
        + list(" \t\n\r\x0b\x0c\x1c\x85\xa0\u1680\u2000\u2028\u3000\u200b\u200d\ufeff")
        + list("'\"’`.,;:!?-_/\\()[]{}<>@#$%^&*+=|~") + ["'s", "'S", "'ll", "'RE", "'ſ"]
        + list("éüößçñÅØæİ") + ["e\u0301", "\u0915\u094d\u0937"] + list("日本語中文한국어")
        + list("٣४²½Ⅻ") + list("Ωπ∑√€") + ["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "Ⓐ"]
        + list("абвгдαβγ") + ["ﬁ", "\u00ad", "\u2581", "<0x41>", "<unk>", "\ufffd"])  # fmt: skip


def random_texts(n: int, seed: int, extra: list[str], chars: list[str]) -> list[str]:
    """``n`` strings mixing :data:`POOL`, runs of spaces, any assigned character and
    ``extra`` (special and added tokens)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randrange(0, 40)):
            r = rng.random()
            if r < 0.06 and extra:
                parts.append(rng.choice(extra))
            elif r < 0.12:
                parts.append(rng.choice(chars))
            elif r < 0.17:
                parts.append(" " * rng.randrange(1, 6))
            else:
                parts.append(rng.choice(POOL))
        out.append("".join(parts))
    return out


def assert_same(ref: HFTokenizer, py: PyTokenizer, texts: list[str], seed: int = 0) -> int:
    """Every text encodes to the same ids (with and without the post-processor's special
    tokens) and decodes back to the same text (special tokens skipped or not); random id runs
    (partial UTF-8, special tokens, unknown ids) decode the same; the vocabulary answers the
    same. Returns the number of texts compared."""
    rng = random.Random(seed)
    n = ref.get_vocab_size(with_added_tokens=True)
    assert py.get_vocab_size(with_added_tokens=True) == n
    assert py.get_vocab_size(with_added_tokens=False) == ref.get_vocab_size(with_added_tokens=False)
    for i in range(n + 5):
        assert py.id_to_token(i) == ref.id_to_token(i), i
    for tok in list(ref.get_vocab(with_added_tokens=True))[:3000] + ["<nope>", ""]:
        assert py.token_to_id(tok) == ref.token_to_id(tok), tok
    for text in texts:
        want = ref.encode(text, add_special_tokens=False).ids
        assert py.encode(text, add_special_tokens=False).ids == want, text
        assert (
            py.encode(text, add_special_tokens=True).ids
            == ref.encode(text, add_special_tokens=True).ids
        ), text
        noise = [rng.randrange(n + 3) for _ in range(rng.randrange(1, 8))]
        for ids in (want, noise, want[: len(want) // 2]):
            for skip in (True, False):
                assert py.decode(ids, skip_special_tokens=skip) == ref.decode(
                    ids, skip_special_tokens=skip
                ), (text, ids, skip)
    return len(texts)


def compare(ref: HFTokenizer, n_random: int = 150, seed: int = 0, extra=()) -> int:
    """:func:`assert_same` on :data:`TEXTS` and random text, the pure tokenizer read from what
    `tokenizers` writes for ``ref``."""
    py = PyTokenizer.from_str(ref.to_str())
    added = [t.content for t in ref.get_added_tokens_decoder().values()]
    texts = TEXTS + list(extra) + random_texts(n_random, seed, added + list(extra), CHARS)
    return assert_same(ref, py, texts, seed)


CHARS = assigned_chars()


# -- vocabularies trained here, dressed as each tokenizer family does -------------------------
def corpus() -> list[str]:
    return GPL.splitlines() + TEXTS * 3


@pytest.fixture(scope="module")
def byte_level() -> str:
    """A byte-level BPE trained on the GPL and :data:`TEXTS` (GPT-2's alphabet)."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        corpus(),
        trainers.BpeTrainer(
            vocab_size=1500,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            show_progress=False,
        ),
    )
    return tok.to_str()


@pytest.fixture(scope="module")
def sentencepiece() -> dict:
    """A SentencePiece-style BPE ("▁" for spaces): a small alphabet, so most characters are
    unknown, plus the 256 ``<0xXX>`` byte tokens for byte fallback."""
    tok = HFTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(
        corpus(),
        trainers.BpeTrainer(
            vocab_size=1200, limit_alphabet=120, special_tokens=["<unk>", "<s>", "</s>"],
            show_progress=False,
        ),
    )  # fmt: skip
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    return d


def with_model(base: str | dict, **model) -> HFTokenizer:
    d = json.loads(base) if isinstance(base, str) else copy.deepcopy(base)
    d["model"].update(model)
    return HFTokenizer.from_str(json.dumps(d))


def split(regex: str, behavior: str = "isolated", invert: bool = False):
    return pre_tokenizers.Split(Regex(regex), behavior, invert=invert)


def bl_pre(*splits) -> pre_tokenizers.PreTokenizer:
    """Split regexes then the byte-level map, as Llama 3 / Qwen / the GGUF frontend do."""
    return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(False, use_regex=False)])


O200K = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)  # Phi-4-mini's (o200k)


def bl_config(name: str, base: str) -> HFTokenizer:
    """The byte-level vocabulary as family ``name`` wraps it."""
    tok = HFTokenizer.from_str(base)
    tok.decoder = decoders.ByteLevel()
    if name == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    elif name == "roberta":  # the prefix space on every piece, <s> ... </s> around
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.post_processor = processors.RobertaProcessing(("<|im_end|>", 2), ("<|im_start|>", 1))
    elif name == "bert-processing":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.post_processor = processors.BertProcessing(("<|im_end|>", 2), ("<|im_start|>", 1))
    elif name == "llama3":  # whole words found in the vocabulary skip the merges
        vocab = json.loads(base)["model"]["vocab"]
        unmerged = {t: len(vocab) + i for i, t in enumerate(("qzx", "Ġqzx"))}
        tok = with_model(base, ignore_merges=True, vocab={**vocab, **unmerged})
        tok.decoder = decoders.ByteLevel()
        tok.pre_tokenizer = bl_pre(split(PRE_TOKENIZERS["llama3"][0]))
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|endoftext|> $A <|im_end|>",
                special_tokens=[("<|endoftext|>", 0), ("<|im_end|>", 2)],
            ),
        ])  # fmt: skip
    elif name == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = bl_pre(split(PRE_TOKENIZERS["qwen2"][0]))
    elif name == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False)]
        )
    elif name == "digits-contiguous":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.ByteLevel(False)]
        )
    elif name == "o200k":
        tok.pre_tokenizer = bl_pre(split(O200K))
    elif name.startswith("gguf-"):  # each split the GGUF frontend knows
        tok.pre_tokenizer = bl_pre(*(split(r) for r in PRE_TOKENIZERS[name[5:]]))
    elif name.startswith("split-"):
        _, behavior, inv = name.split("-")
        tok.pre_tokenizer = bl_pre(split(r"[\s,.;]+|(?=[A-Z])", behavior, inv == "inverted"))
    elif name == "normalizers":
        tok.normalizer = normalizers.Sequence([
            normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip(),
            normalizers.Replace(Regex(r"\s{2,}"), " "), normalizers.Replace("ß", "ss"),
            normalizers.Prepend("#"),
        ])  # fmt: skip
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif name == "nfd-nfkd":
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFD(), normalizers.Strip(left=False), normalizers.NFKD()]
        )
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    elif name == "byte-level-normalizer":  # the map as a normalizer, no pre-tokenizer
        tok.normalizer = normalizers.ByteLevel()
    elif name == "no-decoder":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = None
    elif name == "decoder-chain":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.Sequence([
            decoders.Replace("Ġ", "_"), decoders.ByteLevel(), decoders.Strip("_", 2, 0),
            decoders.Replace(Regex(r"\s+"), " "),
        ])  # fmt: skip
    else:
        raise AssertionError(name)
    return tok


BL_CONFIGS = [
    "gpt2", "roberta", "bert-processing", "llama3", "qwen2", "smollm", "digits-contiguous",
    "o200k", "normalizers", "nfd-nfkd", "byte-level-normalizer", "no-decoder", "decoder-chain",
    *(f"gguf-{k}" for k in sorted(PRE_TOKENIZERS)),
    *(f"split-{b}-{i}" for b in ("removed", "isolated", "merged_with_previous",
                                 "merged_with_next", "contiguous") for i in ("plain", "inverted")),
]  # fmt: skip


@pytest.mark.parametrize("name", BL_CONFIGS)
def test_byte_level_families_equal_tokenizers(byte_level, name):
    extra = ["qzx", " qzx", "a qzx. qzxqzx", "Ġqzx"]  # whole in the vocabulary, not by merges
    assert compare(bl_config(name, byte_level), seed=len(name), extra=extra) > 100


def spm_config(name: str, base: dict) -> HFTokenizer:
    """The SentencePiece-style vocabulary as family ``name`` wraps it."""
    d = copy.deepcopy(base)
    d["model"].update(byte_fallback=True, fuse_unk=True)
    d["normalizer"] = d["pre_tokenizer"] = d["decoder"] = d["post_processor"] = None
    if name == "nofallback-unfused":
        d["model"].update(byte_fallback=False, fuse_unk=False)
    elif name == "nofallback-fused":
        d["model"].update(byte_fallback=False)
    elif name == "no-unk":  # unknown characters dropped
        d["model"].update(byte_fallback=False, unk_token=None)
    elif name == "missing-bytes":  # 4-byte characters fall back to <unk> (kept pending)
        for b in range(0xF0, 0xF5):
            del d["model"]["vocab"][f"<0x{b:02X}>"]
    tok = HFTokenizer.from_str(json.dumps(d))
    meta = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if name.startswith("metaspace-"):
        _, scheme, sp = name.split("-")
        tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", scheme, split=sp == "split")
        tok.decoder = decoders.Sequence(
            [decoders.ByteFallback(), decoders.Metaspace("▁", scheme, split=sp == "split")]
        )
    elif name == "gemma":
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Sequence(meta)
    elif name == "gemma4":
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|\n+"), "isolated")
        tok.decoder = decoders.Sequence(meta)
    else:  # Llama 2 / Mistral / Phi-3 ("legacy"): a "▁" before every piece
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        tok.decoder = decoders.Sequence([*meta, decoders.Strip(" ", 1, 0)])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
    # Phi-3's chat tokens strip the whitespace after them
    tok.add_special_tokens([AddedToken("<|user|>", rstrip=True, normalized=False)])
    return tok


SPM_CONFIGS = [
    "llama2", "nofallback-unfused", "nofallback-fused", "no-unk", "missing-bytes", "gemma",
    "gemma4", *(f"metaspace-{s}-{p}" for s in ("always", "first", "never")
                for p in ("split", "nosplit")),
]  # fmt: skip


@pytest.mark.parametrize("name", SPM_CONFIGS)
def test_sentencepiece_families_equal_tokenizers(sentencepiece, name):
    # an unknown 4-byte character then byte-fallback ones: the <unk> stays pending behind them
    extra = ["<|user|>  hi", "x<s>y", " <|user|>\n\n<s>", "<s> a", "😀ẩ", "👍ẩ😀x", "a😀😀ẩẩb"]
    assert compare(spm_config(name, sentencepiece), seed=len(name), extra=extra) > 100


def test_bpe_word_prefix_and_suffix_equal_tokenizers():
    """``continuing_subword_prefix`` and ``end_of_word_suffix`` (WordPiece-style BPE), unknown
    characters unfused, and no decoder (tokens joined by spaces)."""
    tok = HFTokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##",
                                 end_of_word_suffix="</w>"))  # fmt: skip
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [split(r"\s+", "removed"), split(r"[^\s\p{L}\p{N}]", "isolated")]
    )
    tok.train_from_iterator(
        corpus(),
        trainers.BpeTrainer(vocab_size=1000, limit_alphabet=100, special_tokens=["[UNK]"],
                            continuing_subword_prefix="##", end_of_word_suffix="</w>",
                            show_progress=False),
    )  # fmt: skip
    assert compare(tok) > 100


def added_config(base: str) -> HFTokenizer:
    """Added tokens of every kind under a lowercasing normalizer: stripping whitespace left or
    right, whole words only, matched before or after normalizing, special or not, one that is
    already in the vocabulary, one added twice."""
    tok = HFTokenizer.from_str(base)
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([
        AddedToken("<mask>", lstrip=True, normalized=False),
        AddedToken("[SEP]", rstrip=True, normalized=False),
        AddedToken("x", lstrip=True, rstrip=True, single_word=True, normalized=False),
    ])  # fmt: skip
    tok.add_tokens([
        AddedToken("hello", single_word=True),
        AddedToken("WORLD", normalized=True),
        AddedToken("  ", normalized=True),
        AddedToken("the", normalized=False),
        AddedToken("Ⓐb", single_word=True, normalized=False),
        AddedToken("hello", single_word=False, special=True),
    ])  # fmt: skip
    return tok


def test_added_tokens_equal_tokenizers(byte_level):
    extra = ["a hello b", "ahello", "hello,", "<mask> x", "  <mask>", "[SEP]   next",
             "Ⓐhello", "WORLD world World", "x  x  xx x", "the theme", "Ⓐb Ⓐbc aⒶb",
             "x\u3000x", "\u00a0<mask>\u00a0", "hello_", "hello\u0301", "\x1c\x1d <mask>",
             "[SEP]\x1f\x1c y", "a\x1cx\x1fb"]  # fmt: skip
    assert compare(added_config(byte_level), n_random=300, extra=extra) > 300


def test_single_word_boundaries_equal_tokenizers(byte_level):
    """``single_word`` tests the characters around a match with Rust's \\w (Alphabetic, marks,
    digits, connector punctuation, Join_Control): each assigned character before and after."""
    tok = HFTokenizer.from_str(byte_level)
    tok.pre_tokenizer = tok.normalizer = None
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken("qz", single_word=True, normalized=False)])
    py = PyTokenizer.from_str(tok.to_str())
    before = "".join(c + "qz " for c in CHARS)
    after = "".join(" qz" + c for c in CHARS)
    for text in (before, after):
        assert py.encode(text).ids == tok.encode(text).ids


def test_gguf_built_tokenizers_read_back():
    """What the GGUF frontend builds (tests/unit/test_tokenizer.py's SentencePiece vocabulary),
    saved as an artifact saves it, read by the pure tokenizer: same ids, same text, same
    vocabulary size and tokens."""
    from test_tokenizer import spm_meta  # tests/unit is on the path (conftest)

    tok = tokenizer_from_gguf(spm_meta({"\u2581a": -1.0, "\u2581ab": -1.5, "ab": -2.0}))
    assert compare(tok.tok, n_random=100) > 100


def test_strip_decoder_equals_tokenizers():
    """Strip cuts up to ``start`` leading and ``stop`` trailing characters from each token
    (`tokenizers` panics where ``stop`` passes the start of a token: not compared)."""
    tokens = ["", "_", "__", "a", "_a", "__a__", "___a___", "a_b", "_a_b_", "_ _"]
    for start, stop in [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (3, 2)]:
        ours = bpe.Decoder({"type": "Strip", "content": "_", "start": start, "stop": stop}, "")
        for t in tokens:
            want = strip_decode(t, start, stop)
            assert want is None or "".join(ours.fn([t, "x"])) == want, (t, start, stop)


def strip_decode(token: str, start: int, stop: int) -> str | None:
    """`tokenizers`' Strip decoder on ``[token, "x"]``; None where it panics."""
    try:
        return decoders.Strip("_", start, stop).decode([token, "x"])
    except BaseException:  # noqa: BLE001 - pyo3's PanicException derives from BaseException
        return None


# -- regexes: Oniguruma's meaning, in Python's re ------------------------------------------------
def test_category_table_shortcut_equals_full_scan():
    """The planes taken as unassigned or private use without looking them up are exactly what
    unicodedata says."""
    assert bpe.scan_categories() == bpe.scan_categories(full=True)


CLASS_PATTERNS = [
    r"\p{L}+", r"\p{N}+", r"\p{P}+", r"\p{M}+", r"\p{S}+", r"\p{Z}+", r"\p{C}+", r"\p{Lu}",
    r"\p{Ll}+", r"\p{Lt}", r"\p{Lm}+", r"\p{Lo}+", r"\p{Nd}+", r"\s+", r"\S", r"\d+", r"\h+",
    r"[^\s\p{L}\p{N}]+", r"\P{L}+", r"[\p{L}\p{M}]+", r"\p{Letter}+", r"\p{^N}+", r"\p{Any}",
    r"[\r\n]|\s+$|^\s|\s*\z|\S\Z", r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|(?i:'s|'t|'re)",
]  # fmt: skip


@pytest.mark.parametrize("pattern", CLASS_PATTERNS)
def test_classes_and_anchors_equal_oniguruma(pattern):
    """Split on each pattern over every assigned character (newlines between runs, for the
    anchors): the same pieces as `tokenizers`' Oniguruma."""
    text = "\n".join("".join(CHARS[i : i + 5000]) for i in range(0, len(CHARS), 5000)) + "\n"
    want = [s for s, _ in split(pattern).pre_tokenize_str(text)]
    rx = bpe.compile_onig(pattern, "test")
    got = [text[a:b] for a, b in bpe.split_spans(bpe.find_matches(rx, text), "Isolated")]
    assert got == want


@pytest.mark.parametrize("pattern", [r"a*", r"\s*", r"(?=a)", r"x?", r"", r"a|", r"(?<=a)",
                                     r"b*|a", r"$", r"^", r"X*"])  # fmt: skip
def test_empty_matches_equal_oniguruma(pattern):
    """Patterns that match the empty string: onig's find_iter steps past them as `tokenizers`
    does (a Split with each behavior, and a Replace normalizer)."""
    texts = ["", "a", "aa", "baab", "ab ba", "  a  ", "xyz", "a\nb\n", "é日a", "aXbXXc"]
    names = {
        "removed": "Removed",
        "isolated": "Isolated",
        "contiguous": "Contiguous",
        "merged_with_previous": "MergedWithPrevious",
        "merged_with_next": "MergedWithNext",
    }
    for behavior, name in names.items():
        for invert in (False, True):
            spec = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": name,
                    "invert": invert}  # fmt: skip
            ours = bpe.PreTokenizer(spec, "test")
            for t in texts:
                want = [s for s, _ in split(pattern, behavior, invert).pre_tokenize_str(t)]
                assert [s for s, _ in ours.fn([(t, True)] if t else [])] == want, (t, name)
    ours = bpe.Normalizer({"type": "Replace", "pattern": {"Regex": pattern}, "content": "<>"}, "")
    for t in texts:
        assert ours.fn(t) == normalizers.Replace(Regex(pattern), "<>").normalize_str(t), t


@pytest.mark.parametrize(
    "pattern", [r"\w+", r"\bx", r"\p{Han}+", r"\pL", r"(?m:a.b)", r"[[:alpha:]]", r"[a-z&&[^x]]",
                r"\Rx", r"(?<a>x)\k<a>"],
)  # fmt: skip
def test_untranslatable_regex_is_refused(byte_level, pattern):
    tok = HFTokenizer.from_str(byte_level)
    tok.pre_tokenizer = bl_pre(split(pattern))
    with pytest.raises(ModelFormatError) as e:
        PyTokenizer.from_str(tok.to_str())
    assert "pre_tokenizer 'Split'" in str(e.value) and "tokenizers" in str(e.value.fix)


# -- what is refused, and how -----------------------------------------------------------------
def refuse(byte_level: str, change) -> ModelFormatError:
    d = json.loads(byte_level)
    change(d)
    with pytest.raises(ModelFormatError) as e:
        PyTokenizer(d, "art/tokenizer.json")
    return e.value


@pytest.mark.parametrize(
    "key, spec, needle",
    [
        ("normalizer", {"type": "BertNormalizer"}, "normalizer 'BertNormalizer'"),
        ("normalizer", {"type": "Precompiled", "precompiled_charsmap": ""}, "'Precompiled'"),
        ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer 'Whitespace'"),
        ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [{"type": "Punctuation"}]},
         "pre_tokenizer 'Punctuation'"),
        ("decoder", {"type": "WordPiece", "prefix": "##"}, "decoder 'WordPiece'"),
        ("decoder", {"type": "CTC"}, "decoder 'CTC'"),
        ("post_processor", {"type": "Mystery"}, "post_processor 'Mystery'"),
    ],
)  # fmt: skip
def test_unsupported_component_is_named(byte_level, key, spec, needle):
    e = refuse(byte_level, lambda d: d.__setitem__(key, spec))
    assert needle in str(e) and "art/tokenizer.json" in str(e)
    assert "pip install tokenizers" in e.fix


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda d: d["model"].update(type="WordPiece"), "model 'WordPiece'"),
        (lambda d: d["model"].update(type="Unigram"), "model 'Unigram'"),
        (lambda d: d["model"].update(dropout=0.1), "dropout 0.1"),
        (lambda d: d.update(truncation={"max_length": 8}), "truncation"),
        (lambda d: d.update(padding={"strategy": "BatchLongest"}), "padding"),
        (lambda d: d.update(version="2.0"), "version '2.0'"),
        (lambda d: d["model"]["merges"].append(["zz", "qq"]), "'zz' is not in the vocabulary"),
        (lambda d: d["model"]["merges"].append("a b c"), "is not a pair"),
        (lambda d: d["model"].update(vocab=[1, 2]), "missing vocab/merges"),
    ],
)  # fmt: skip
def test_unreadable_model_is_named(byte_level, change, needle):
    assert needle in str(refuse(byte_level, change))


def test_loading_passes_the_named_error_through(tmp_path, byte_level, monkeypatch):
    d = json.loads(byte_level)
    d["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(d))
    (tmp_path / "tokenizer_meta.json").write_text("{}")
    monkeypatch.setenv("EDGERT_TOKENIZER", "python")
    with pytest.raises(ModelFormatError, match="pre_tokenizer 'Whitespace'") as e:
        Tokenizer.load(tmp_path)
    assert "pip install tokenizers" in str(e.value)


# -- choosing the implementation; what the device imports --------------------------------------
@pytest.fixture
def saved(tmp_path, byte_level) -> Path:
    tok = HFTokenizer.from_str(byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(str(tmp_path / "tokenizer.json"))
    meta = {"bos_id": 0, "add_bos": True, "chat_template": "{{ messages[0]['content'] }}!"}
    (tmp_path / "tokenizer_meta.json").write_text(json.dumps(meta))
    return tmp_path


def test_environment_chooses_the_implementation(saved, monkeypatch):
    monkeypatch.setenv("EDGERT_TOKENIZER", "python")
    py = Tokenizer.load(saved)
    assert isinstance(py.tok, PyTokenizer)
    monkeypatch.setenv("EDGERT_TOKENIZER", "tokenizers")
    hf = Tokenizer.load(saved)
    assert isinstance(hf.tok, HFTokenizer)
    for text in TEXTS:
        assert py.encode(text) == hf.encode(text)
        assert py.decode(hf.encode(text)) == hf.decode(hf.encode(text))
    assert py.vocab_size == hf.vocab_size
    assert py.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"
    monkeypatch.setenv("EDGERT_TOKENIZER", "rust")
    with pytest.raises(EdgertError, match="EDGERT_TOKENIZER='rust'"):
        Tokenizer.load(saved)


def test_without_the_wheel_python_is_chosen(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # every import of it fails
    monkeypatch.delenv("EDGERT_TOKENIZER", raising=False)
    assert backend() == "python"
    assert isinstance(Tokenizer.load(saved).tok, PyTokenizer)
    monkeypatch.setenv("EDGERT_TOKENIZER", "tokenizers")
    with pytest.raises(EdgertError, match="does not import") as e:
        Tokenizer.load(saved)
    assert "EDGERT_TOKENIZER=python" in e.value.fix


def test_save_writes_the_file_read(saved, tmp_path):
    py = PyTokenizer.from_file(saved / "tokenizer.json")
    py.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (saved / "tokenizer.json").read_bytes()


def test_without_jinja2_only_the_chat_template_fails(saved, monkeypatch):
    """jinja2 (and markupsafe) are imported when a chat template is rendered, not before."""
    monkeypatch.setenv("EDGERT_TOKENIZER", "python")
    monkeypatch.setitem(sys.modules, "jinja2", None)
    monkeypatch.setitem(sys.modules, "jinja2.sandbox", None)
    tok = Tokenizer.load(saved)
    assert tok.decode(tok.encode("plain prompt")) == "plain prompt"
    with pytest.raises(EdgertError, match="needs jinja2") as e:
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert "pip install jinja2" in e.value.fix


#: ``edgert ARGS`` in a process where importing `tokenizers` fails (``blocked``) and
#: EDGERT_TOKENIZER is ``python`` (or unset), or one left alone (``tokenizers``)
RUN = r"""
import json, os, sys
mode = sys.argv[1]
if mode != "tokenizers":
    sys.modules["tokenizers"] = None
os.environ.pop("EDGERT_TOKENIZER", None)
if mode == "python":
    os.environ["EDGERT_TOKENIZER"] = "python"
from edgert.cli import main
rc = main(sys.argv[2:])
print(json.dumps({"rc": rc, "tokenizers": sys.modules.get("tokenizers") is not None}))
"""


def run(mode: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", RUN, mode, *args], capture_output=True, text=True,
                       timeout=600, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    return {**json.loads(lines[-2]), **json.loads(lines[-1])}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A small compiled language model (one layer, the synthetic byte-level vocabulary with
    <|endoftext|> and <|im_end|>)."""
    d = tmp_path_factory.mktemp("art")
    return Path(compile_synthetic(d, "llama", QuantScheme("uniform", 4, 32), layers=1,
                                  quant_method="rtn").out)  # fmt: skip


def test_device_run_without_tokenizers_equals_run_with_it(artifact):
    """`edgert run` on an artifact with `tokenizers` unimportable — forced to Python, or left
    to choose — generates the same tokens and text as with the wheel."""
    args = ("run", str(artifact), "-p", "Hello <|im_end|> wörld 123 😀 it's", "-n", "16",
            "--temp", "0", "--json")  # fmt: skip
    want = run("tokenizers", *args)
    assert want["rc"] == 0 and want["tokenizers"]
    for mode in ("python", "auto"):
        got = run(mode, *args)
        assert got["rc"] == 0 and not got["tokenizers"], mode
        assert (got["tokens"], got["text"], got["prompt_tokens"]) == (
            want["tokens"], want["text"], want["prompt_tokens"],
        ), mode  # fmt: skip


# -- SmolLM2 (the real model: slow) -------------------------------------------------------------
def test_smollm2_tokenizer_equals_tokenizers(smollm2, tmp_path):
    """SmolLM2's vocabulary (from its GGUF, as an artifact stores it) on multilingual text,
    code, whitespace, emoji, digits, special tokens, its chat template and the GPL."""
    smollm2.tokenizer.save(tmp_path)
    ref = smollm2.tokenizer.tok
    py = PyTokenizer.from_file(tmp_path / "tokenizer.json")
    chat = smollm2.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo 👋 2+2?"}]
    )
    specials = [t.content for t in ref.get_added_tokens_decoder().values()]
    texts = TEXTS + [chat, GPL] + GPL.split("\n\n") + random_texts(1000, 7, specials, CHARS)
    assert assert_same(ref, py, texts) > 1000


#: SmolLM2 greedy on a chat prompt, in a process where importing `tokenizers` fails
SMOL = r"""
import json, os, sys
sys.modules["tokenizers"] = None
os.environ["EDGERT_TOKENIZER"] = "python"
from edgert.compiler.frontends.gguf import load_gguf
from edgert.runtime.generate import Sampler, generate
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.tokenizer import Tokenizer
m = load_gguf(sys.argv[1], with_tokenizer=False)
m.materialize(progress=False)
m.tokenizer = Tokenizer.load(sys.argv[2])
prompt = m.tokenizer.apply_chat_template([{"role": "user", "content": sys.argv[3]}])
r = generate(ReferenceEngine(m, max_ctx=256), prompt=prompt, n_predict=24,
             sampler=Sampler(temp=0), stop_at_eos=False)
print(json.dumps({"ids": m.tokenizer.encode(prompt), "tokens": r.tokens, "text": r.text,
                  "impl": type(m.tokenizer.tok).__name__,
                  "tokenizers": sys.modules.get("tokenizers") is not None}))
"""


def test_smollm2_generation_without_tokenizers_equals_with_it(smollm2, smollm2_path, tmp_path):
    from edgert.runtime.generate import Sampler, generate
    from edgert.runtime.reference import ReferenceEngine

    question = "Name three colours, in French: été, 1 2 3 😀"
    smollm2.tokenizer.save(tmp_path)
    r = subprocess.run([sys.executable, "-c", SMOL, str(smollm2_path), str(tmp_path), question],
                       capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["impl"] == "PyTokenizer" and not got["tokenizers"]
    tok = smollm2.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": question}])
    want = generate(ReferenceEngine(smollm2, max_ctx=256), prompt=prompt, n_predict=24,
                    sampler=Sampler(temp=0), stop_at_eos=False)  # fmt: skip
    assert got["ids"] == tok.encode(prompt)
    assert (got["tokens"], got["text"]) == (want.tokens, want.text)


#: load SmolLM2's tokenizer.json with the pure tokenizer in a fresh process (the Unicode tables
#: and regexes built there too) and encode 1000 words of the GPL
SPEED = r"""
import json, sys, time
t0 = time.perf_counter()
from edgert.runtime.bpe import PyTokenizer
tok = PyTokenizer.from_file(sys.argv[1])
t1 = time.perf_counter()
text = " ".join(open(sys.argv[2]).read().split()[:1000])
ids = tok.encode(text, add_special_tokens=False).ids
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "encode_s": t2 - t1, "tokens": len(ids)}))
"""


def test_smollm2_encodes_a_1000_word_prompt_well_under_a_second(smollm2, tmp_path):
    smollm2.tokenizer.save(tmp_path)
    gpl = ROOT / "tests" / "data" / "gpl-3.0.txt"
    r = subprocess.run([sys.executable, "-c", SPEED, str(tmp_path / "tokenizer.json"), str(gpl)],
                       capture_output=True, text=True, timeout=600, check=False,
                       env={**os.environ, "EDGERT_TOKENIZER": "python"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    t = json.loads(r.stdout)
    assert t["tokens"] > 1000
    # measured on the 2-core development machine: load 0.2 s, encode 0.01 s
    assert t["load_s"] < 3 and t["encode_s"] < 0.5, t
