"""Hugging Face ``tokenizer.json`` in pure Python: the part of the format edgert's artifacts use,
for devices that cannot install the `tokenizers` wheel.

Why: on an Android phone the device side runs in Termux's Python, which has numpy but takes no
manylinux wheels, so no `tokenizers` (Rust). :class:`PyTokenizer` reads the same file and gives
the same ids and the same decoded text: each step below follows `tokenizers`' own code (0.23:
``added_vocabulary.rs``, ``normalizer.rs``, ``pre_tokenizers/``, ``models/bpe/``,
``decoders/``), its quirks included (tests/unit/test_tokenizer_python.py and
tests/parity/test_tokenizer_vocabs.py compare the two). Anything outside that subset is refused
with a :class:`ModelFormatError` naming the component, never approximated.

What it reads (what the GGUF frontend writes, compiler/frontends/gguf_tokenizer.py, and what
the supported Hugging Face families ship):

====================  =======================================================================
``model``             BPE: merges ranked by position, ``byte_fallback``, ``ignore_merges``,
                      ``unk_token`` with ``fuse_unk``, ``continuing_subword_prefix``,
                      ``end_of_word_suffix`` (``dropout`` only 0: it is random)
``normalizer``        NFC, NFD, NFKC, NFKD, Lowercase, Strip, Prepend, Replace, ByteLevel,
                      Sequence
``pre_tokenizer``     ByteLevel, Split, Digits, Metaspace, Sequence
``decoder``           ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence
``post_processor``    TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing,
                      Sequence (edgert encodes without them: its Tokenizer adds BOS itself)
``added_tokens``      special or not, normalized or not, ``lstrip``, ``rstrip``,
                      ``single_word``; split out of the text before anything else
====================  =======================================================================

Regexes are Oniguruma's, which `tokenizers` compiles them with. Python's ``re`` has no
``\\p{L}`` and reads ``\\s``, ``^`` and ``$`` differently, so each pattern is translated into one
with explicit character classes built from :mod:`unicodedata` (once per process, when the first
tokenizer that needs them loads: 0.1 s). Those classes are of Python's Unicode version: a
character assigned after it (Python 3.11 has Unicode 14; `tokenizers` 0.23's tables are newer)
counts as unassigned here (so not a letter for ``\\p{L}``) where `tokenizers` may know it.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
import threading
import unicodedata
from pathlib import Path
from typing import Any

from edgert.errors import ModelFormatError, show

#: what to do when the pure-Python tokenizer cannot read a file
FIX = "install the `tokenizers` wheel (pip install tokenizers) and leave EDGERT_TOKENIZER unset"

# -- Unicode classes --------------------------------------------------------------------------
Ranges = list[tuple[int, int]]
_lock = threading.Lock()
_categories: dict[str, Ranges] | None = None

#: code points whose general category needs no lookup: planes 4-13 are unassigned in every
#: Unicode version so far, planes 15-16 private use with two noncharacters each (stable by
#: Unicode policy); skipping them makes the table three times faster to build
#: (test_tokenizer_python checks this against a scan of every code point)
_FIXED = ((0x40000, 0xDFFFF, "Cn"), (0xF0000, 0xFFFFD, "Co"), (0xFFFFE, 0xFFFFF, "Cn"),
          (0x100000, 0x10FFFD, "Co"), (0x10FFFE, 0x10FFFF, "Cn"))  # fmt: skip
_SCANNED = ((0, 0x3FFFF), (0xE0000, 0xEFFFF))


def scan_categories(full: bool = False) -> dict[str, Ranges]:
    """General category -> sorted code point ranges, from :mod:`unicodedata` (``full``: every
    code point looked up, none taken from :data:`_FIXED`)."""
    spans: list[tuple[int, int, str | None]] = (
        [(0, 0x10FFFF, None)]
        if full
        else sorted([(a, b, None) for a, b in _SCANNED] + list(_FIXED))
    )
    out: dict[str, Ranges] = {}

    def add(cat: str, a: int, b: int) -> None:
        r = out.setdefault(cat, [])
        if r and r[-1][1] + 1 == a:
            r[-1] = (r[-1][0], b)
        else:
            r.append((a, b))

    for a, b, fixed in spans:
        if fixed is not None:
            add(fixed, a, b)
            continue
        pos = a
        for cat, run in itertools.groupby(map(unicodedata.category, map(chr, range(a, b + 1)))):
            n = sum(1 for _ in run)
            add(cat, pos, pos + n - 1)
            pos += n
    return out


def categories() -> dict[str, Ranges]:
    """:func:`scan_categories`, built on first use and kept for the process."""
    global _categories
    if _categories is None:
        with _lock:
            if _categories is None:
                _categories = scan_categories()
    return _categories


def _union(*parts: Ranges) -> Ranges:
    out: Ranges = []
    for a, b in sorted(r for p in parts for r in p):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _complement(r: Ranges) -> Ranges:
    out: Ranges = []
    nxt = 0
    for a, b in r:
        if a > nxt:
            out.append((nxt, a - 1))
        nxt = b + 1
    if nxt <= 0x10FFFF:
        out.append((nxt, 0x10FFFF))
    return out


#: Oniguruma's \s, Rust's char::is_whitespace and its regex crate's \s: the White_Space
#: property (Python's \s and str.isspace() also take U+001C..U+001F)
WHITE_SPACE: Ranges = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
                       (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                       (0x3000, 0x3000)]  # fmt: skip
WHITE_SPACE_CHARS = "".join(chr(c) for a, b in WHITE_SPACE for c in range(a, b + 1))
_HEX_DIGIT: Ranges = [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)]

#: general category groups, as \p{..} names them
_GROUPS = {
    "L": ("Lu", "Ll", "Lt", "Lm", "Lo"),
    "LC": ("Lu", "Ll", "Lt"),
    "M": ("Mn", "Mc", "Me"),
    "N": ("Nd", "Nl", "No"),
    "P": ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"),
    "S": ("Sm", "Sc", "Sk", "So"),
    "Z": ("Zs", "Zl", "Zp"),
    "C": ("Cc", "Cf", "Cs", "Co", "Cn"),
}
_LONG_NAMES = {
    "letter": "L", "casedletter": "LC", "l&": "LC", "uppercaseletter": "Lu",
    "lowercaseletter": "Ll", "titlecaseletter": "Lt", "modifierletter": "Lm",
    "otherletter": "Lo", "mark": "M", "combiningmark": "M", "nonspacingmark": "Mn",
    "spacingmark": "Mc", "enclosingmark": "Me", "number": "N", "decimalnumber": "Nd",
    "letternumber": "Nl", "othernumber": "No", "punctuation": "P", "connectorpunctuation": "Pc",
    "dashpunctuation": "Pd", "openpunctuation": "Ps", "closepunctuation": "Pe",
    "initialpunctuation": "Pi", "finalpunctuation": "Pf", "otherpunctuation": "Po",
    "symbol": "S", "mathsymbol": "Sm", "currencysymbol": "Sc", "modifiersymbol": "Sk",
    "othersymbol": "So", "separator": "Z", "spaceseparator": "Zs", "lineseparator": "Zl",
    "paragraphseparator": "Zp", "other": "C", "control": "Cc", "format": "Cf",
    "surrogate": "Cs", "privateuse": "Co", "unassigned": "Cn",
}  # fmt: skip
_SHORT_NAMES = {k.lower(): k for k in list(_GROUPS) + [c for g in _GROUPS.values() for c in g]}


def category_ranges(name: str) -> Ranges | None:
    """Code points of the general category (or group) ``name`` as Oniguruma spells it (case,
    spaces, ``_`` and ``-`` ignored; ``Any``); None for a name that is not one."""
    key = re.sub(r"[\s_-]", "", name).lower()
    if key == "any":
        return [(0, 0x10FFFF)]
    short = _SHORT_NAMES.get(key) or _LONG_NAMES.get(key)
    if short is None:
        return None
    cats = categories()
    return _union(*(cats.get(c, []) for c in _GROUPS.get(short, (short,))))


def word_ranges() -> Ranges:
    """Rust's regex \\w (what `tokenizers` tests ``single_word`` added tokens with): Alphabetic,
    marks, decimal digits, connector punctuation, Join_Control. Alphabetic is the letters, the
    letter numbers and Other_Alphabetic; the members of Other_Alphabetic that are not marks are
    the circled and squared Latin letters listed here."""
    other_alphabetic = [(0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169),
                        (0x1F170, 0x1F189)]  # fmt: skip
    cats = categories()
    names = ("Lu", "Ll", "Lt", "Lm", "Lo", "Nl", "Mn", "Mc", "Me", "Nd", "Pc")
    return _union(*(cats.get(c, []) for c in names), other_alphabetic, [(0x200C, 0x200D)])


def _class_body(r: Ranges) -> str:
    """``r`` as the inside of a Python character class."""
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in r)


# -- Oniguruma -> Python regexes ----------------------------------------------------------------
_compiled: dict[str, re.Pattern] = {}
_SIMPLE_ESCAPES = {"n": "\\n", "t": "\\t", "r": "\\r", "f": "\\f", "v": "\\v", "a": "\\a",
                   "e": "\\x1b"}  # fmt: skip


class _Unsupported(Exception):
    pass


def _escape_set(p: str, i: int) -> tuple[Ranges | None, bool, int]:
    """The set a class escape at ``p[i]`` (after the backslash) stands for: (ranges, negated,
    next index); ranges None where the escape is not a set."""
    c = p[i]
    if c in "pP":
        neg = c == "P"
        end = p.find("}", i + 2) if p.startswith("{", i + 1) else -1
        if end < 0:  # Oniguruma reads a \\p without braces as the letter p
            raise _Unsupported(f"\\{c} without {{name}} at {i}")
        name, nxt = p[i + 2 : end], end + 1
        if name.startswith("^"):
            neg, name = not neg, name[1:]
        r = category_ranges(name)
        if r is None:
            raise _Unsupported(
                f"\\{c}{{{name}}}: only general categories (L, Lu, N, P, ...) are translated, "
                "not scripts or binary properties"
            )
        return r, neg, nxt
    if c in "sS":
        return WHITE_SPACE, c == "S", i + 1
    if c in "dD":
        return categories().get("Nd", []), c == "D", i + 1
    if c in "hH":
        return _HEX_DIGIT, c == "H", i + 1
    if c in "wWbBGKRXkgNOyY":
        raise _Unsupported(
            f"\\{c} (its Oniguruma meaning needs Unicode properties unicodedata lacks, or has no "
            "Python equivalent)"
        )
    return None, False, i


def _escape_char(p: str, i: int) -> tuple[str, int]:
    """A single-character escape at ``p[i]`` (after the backslash), as Python reads it."""
    c = p[i]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 1
    if c == "x":
        if p.startswith("{", i + 1):
            end = p.find("}", i + 2)
            if end < 0:
                raise _Unsupported(f"unterminated \\x{{ at {i}")
            return f"\\U{int(p[i + 2 : end], 16):08x}", end + 1
        m = re.match(r"[0-9a-fA-F]{1,2}", p[i + 1 :])
        if not m:
            raise _Unsupported(f"\\x without hex digits at {i}")
        return f"\\x{int(m.group(), 16):02x}", i + 1 + m.end()
    if c == "u":
        m = re.match(r"[0-9a-fA-F]{4}", p[i + 1 :])
        if not m:
            raise _Unsupported(f"\\u without four hex digits at {i}")
        return f"\\u{m.group()}", i + 5
    if c.isascii() and c.isalnum():
        raise _Unsupported(f"the escape \\{c}")
    return "\\" + c, i + 1


def _translate_class(p: str, i: int) -> tuple[str, int]:
    """The bracket expression at ``p[i] == '['`` as a Python class; returns (class, next)."""
    j = i + 1
    neg = j < len(p) and p[j] == "^"
    if neg:
        j += 1
    parts: list[str] = []
    first = after_set = True
    while True:
        if j >= len(p):
            raise _Unsupported(f"unterminated [ at {i}")
        c = p[j]
        if c == "]" and not first:
            j += 1
            break
        if c == "[":
            raise _Unsupported(f"a nested class or POSIX bracket at {j}")
        if p.startswith("&&", j):
            raise _Unsupported(f"class intersection && at {j}")
        if c == "\\":
            if j + 1 >= len(p):
                raise _Unsupported("a backslash at the end")
            r, rneg, nxt = _escape_set(p, j + 1)
            if r is not None:
                parts.append(_class_body(_complement(r) if rneg else r))
            else:
                esc, nxt = _escape_char(p, j + 1)
                parts.append(esc)
            j, first, after_set = nxt, False, r is not None
            continue
        if c in "]^" or (c == "-" and after_set):  # literal here ("]" first, "^" not first,
            parts.append("\\" + c)  # "-" after a set: not a range from its last character)
        else:
            parts.append(c)
        j, first, after_set = j + 1, False, False
    return ("[^" if neg else "[") + "".join(parts) + "]", j


def translate(pattern: str) -> str:
    """An Oniguruma pattern (Ruby syntax, as `tokenizers` compiles it) as a Python pattern to
    compile with :data:`re.MULTILINE` (Oniguruma's ``^``/``$`` are line anchors). Raises
    :class:`_Unsupported` for a construct whose meaning would change."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise _Unsupported("a backslash at the end")
            nc = pattern[i + 1]
            if nc == "A":
                out.append("\\A")
                i += 2
                continue
            if nc == "z":
                out.append("\\Z")
                i += 2
                continue
            if nc == "Z":
                out.append("(?=\\n?\\Z)")
                i += 2
                continue
            r, rneg, nxt = _escape_set(pattern, i + 1)
            if r is not None:
                out.append(("[^" if rneg else "[") + _class_body(r) + "]")
            else:
                esc, nxt = _escape_char(pattern, i + 1)
                out.append(esc)
            i = nxt
        elif c == "[":
            cls, i = _translate_class(pattern, i)
            out.append(cls)
        elif c == "^":  # Oniguruma: not after a newline that ends the text
            out.append("(?:\\A|(?<=\\n)(?!\\Z))")
            i += 1
        elif c == "(" and pattern.startswith("(?", i):
            m = re.match(r"\(\?(?:[:=!>#]|<[=!]|<([A-Za-z_]\w*)>|([imx]*)(?:-([imx]*))?([:)]))",
                         pattern[i:])  # fmt: skip
            if not m:
                raise _Unsupported(f"the group {pattern[i : i + 6]!r}")
            if m.group(1):  # named group
                out.append(f"(?P<{m.group(1)}>")
            elif m.group(4):  # flags
                if "m" in (m.group(2) or "") + (m.group(3) or ""):
                    raise _Unsupported("the flag m (dot matches newline in Oniguruma)")
                out.append(m.group())
            else:
                out.append(m.group())
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def compile_onig(pattern: str, where: str) -> re.Pattern:
    """:func:`translate` then compile, cached for the process; ``where`` names the component
    in the error a pattern that cannot be translated gives."""
    rx = _compiled.get(pattern)
    if rx is None:
        try:
            rx = re.compile(translate(pattern), re.MULTILINE)
        except (_Unsupported, re.error, ValueError) as e:
            raise ModelFormatError(
                f"{where}: the regex {show(pattern)} cannot be read without `tokenizers`: {e}",
                FIX,
            ) from e
        _compiled[pattern] = rx
    return rx


def _literal(text: str) -> re.Pattern:
    """A literal pattern (an empty one matches the empty string everywhere, as there)."""
    key = "\x00literal:" + text
    rx = _compiled.get(key)
    if rx is None:
        rx = _compiled[key] = re.compile(re.escape(text))
    return rx


def _char_class(ranges: Ranges) -> re.Pattern:
    key = "\x00class:" + _class_body(ranges)
    rx = _compiled.get(key)
    if rx is None:
        rx = _compiled[key] = re.compile("[" + _class_body(ranges) + "]")
    return rx


def find_iter(rx: re.Pattern, s: str) -> list[tuple[int, int]]:
    """The matches of ``rx`` in ``s`` as the onig crate's ``find_iter`` walks them: after an
    empty match the search moves one character on, and an empty match right after a non-empty
    one is dropped (Python's finditer keeps it)."""
    out = []
    last_end, skip_next_empty, n = 0, False, len(s)
    search = rx.search
    while last_end <= n:
        m = search(s, last_end)
        if m is None:
            break
        a, b = m.span()
        last_end = b
        if a == b:
            last_end += 1
            if skip_next_empty:
                skip_next_empty = False
                continue
        else:
            skip_next_empty = True
        out.append((a, b))
    return out


def find_matches(rx: re.Pattern, s: str) -> list[tuple[int, int, bool]]:
    """``s`` cut into (start, end, is_match) pieces covering it (``Pattern::find_matches``)."""
    if not s:
        return [(0, 0, False)]
    out, prev = [], 0
    for a, b in find_iter(rx, s):
        if prev != a:
            out.append((prev, a, False))
        out.append((a, b, True))
        prev = b
    if prev != len(s):
        out.append((prev, len(s), False))
    return out


BEHAVIORS = ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")


def split_spans(matches: list[tuple[int, int, bool]], behavior: str) -> list[tuple[int, int]]:
    """The non-empty pieces ``NormalizedString::split`` makes of ``matches`` for ``behavior``
    (empty ones are dropped, as ``PreTokenizedString::split`` drops them)."""
    acc: list[tuple[int, int]]
    if behavior == "Isolated":
        acc = [(a, b) for a, b, _ in matches]
    elif behavior == "Removed":
        acc = [(a, b) for a, b, m in matches if not m]
    elif behavior == "Contiguous":
        acc, prev = [], False
        for a, b, m in matches:
            if m == prev and acc:
                acc[-1] = (acc[-1][0], b)
            else:
                acc.append((a, b))
            prev = m
    elif behavior == "MergedWithPrevious":
        acc, prev = [], False
        for a, b, m in matches:
            if m and not prev and acc:
                acc[-1] = (acc[-1][0], b)
            else:
                acc.append((a, b))
            prev = m
    else:  # MergedWithNext
        acc, prev = [], False
        for a, b, m in reversed(matches):
            if m and not prev and acc:
                acc[-1] = (a, acc[-1][1])
            else:
                acc.append((a, b))
            prev = m
        acc.reverse()
    return [(a, b) for a, b in acc if b > a]


# -- byte-level alphabet ----------------------------------------------------------------------
def _bytes_char() -> dict[int, str]:
    """GPT-2's byte -> printable character map (``bytes_char`` in byte_level.rs; the synthetic
    models' vocabularies use it too, tools/make_synthetic_gguf.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTES_CHAR = _bytes_char()
CHAR_BYTES = {c: b for b, c in BYTES_CHAR.items()}
_BYTE_TABLE = [BYTES_CHAR[b] for b in range(256)]


def to_byte_level(s: str) -> str:
    return "".join([_BYTE_TABLE[b] for b in s.encode("utf-8")])


# -- components -------------------------------------------------------------------------------
def _pattern(spec: Any, where: str) -> re.Pattern:
    """A ``{"String": ...}`` or ``{"Regex": ...}`` pattern (both compiled by Oniguruma there;
    a string is escaped first)."""
    if isinstance(spec, dict) and len(spec) == 1:
        ((kind, value),) = spec.items()
        if kind == "String" and isinstance(value, str):
            return _literal(value)
        if kind == "Regex" and isinstance(value, str):
            return compile_onig(value, where)
    raise ModelFormatError(f"{where}: pattern {show(spec)}, expected {{String|Regex: text}}")


def _replace_all(rx: re.Pattern, s: str, content: str) -> str:
    return "".join(content if m else s[a:b] for a, b, m in find_matches(rx, s))


class _Component:
    """What every reader of a JSON component needs: its type and the file it came from."""

    kind = "component"

    def __init__(self, spec: dict, source: str):
        self.spec = spec
        self.where = f"{source}: {self.kind} {spec.get('type')!r}"

    def get(self, key: str, default: Any = None, types: type | tuple = object) -> Any:
        v = self.spec.get(key, default)
        if v is None:
            v = default
        if v is not None and not isinstance(v, types):
            raise ModelFormatError(f"{self.where}: {key} = {show(v)}")
        return v


# normalizers: str -> str
class Normalizer(_Component):
    kind = "normalizer"

    def __init__(self, spec: dict, source: str):
        super().__init__(spec, source)
        t = spec.get("type")
        self.parts: list[Normalizer] = []
        if t in ("NFC", "NFD", "NFKC", "NFKD"):
            form = t
            self.fn = lambda s: unicodedata.normalize(form, s)
        elif t == "Lowercase":
            # char by char, as Rust's char::to_lowercase (no final-sigma rule)
            self.fn = lambda s: s.lower() if s.isascii() else "".join([c.lower() for c in s])
        elif t == "Strip":
            left, right = self.get("strip_left", False, bool), self.get("strip_right", False, bool)

            def strip(s: str) -> str:  # Rust's char::is_whitespace, not str.isspace()
                if left:
                    s = s.lstrip(WHITE_SPACE_CHARS)
                return s.rstrip(WHITE_SPACE_CHARS) if right else s

            self.fn = strip
        elif t == "Prepend":
            pre = self.get("prepend", "", str)
            self.fn = lambda s: pre + s if s else s
        elif t == "Replace":
            rx, content = _pattern(spec.get("pattern"), self.where), self.get("content", "", str)
            self.fn = lambda s: _replace_all(rx, s, content)
        elif t == "ByteLevel":
            self.fn = to_byte_level
        elif t == "Sequence":
            self.parts = [Normalizer(x, source) for x in self.get("normalizers", [], list)]
            self.fn = self._sequence
        else:
            raise unsupported(self.kind, t, source)

    def _sequence(self, s: str) -> str:
        for p in self.parts:
            s = p.fn(s)
        return s


# pre-tokenizers: [(piece, starts the input)] -> same
Pieces = list[tuple[str, bool]]


class PreTokenizer(_Component):
    kind = "pre_tokenizer"

    def __init__(self, spec: dict, source: str):
        super().__init__(spec, source)
        t = spec.get("type")
        if t == "ByteLevel":
            self.add_prefix_space = self.get("add_prefix_space", True, bool)
            use_regex = self.get("use_regex", True, bool)
            self.rx = compile_onig(BYTE_LEVEL_REGEX, self.where) if use_regex else None
            self.fn = self._byte_level
        elif t == "Split":
            self.rx = _pattern(spec.get("pattern"), self.where)
            self.behavior = self.get("behavior", None, str)
            if self.behavior not in BEHAVIORS:
                raise ModelFormatError(f"{self.where}: behavior {show(self.behavior)}")
            self.invert = self.get("invert", False, bool)
            self.fn = self._split
        elif t == "Digits":
            self.rx = _char_class(category_ranges("N") or [])  # Rust's char::is_numeric
            individual = self.get("individual_digits", False, bool)
            self.behavior = "Isolated" if individual else "Contiguous"
            self.invert = False
            self.fn = self._split
        elif t == "Metaspace":
            self.repl = self.get("replacement", "\u2581", str)
            if len(self.repl) != 1:
                raise ModelFormatError(f"{self.where}: replacement {show(self.repl)}")
            self.scheme = metaspace_scheme(self, spec)
            self.rx = re.compile(re.escape(self.repl)) if self.get("split", True, bool) else None
            self.fn = self._metaspace
        elif t == "Sequence":
            self.parts = [PreTokenizer(x, source) for x in self.get("pretokenizers", [], list)]
            self.fn = self._sequence
        else:
            raise unsupported(self.kind, t, source)

    def _split(self, pieces: Pieces) -> Pieces:
        out: Pieces = []
        for s, first in pieces:
            m = find_matches(self.rx, s)
            if self.invert:
                m = [(a, b, not x) for a, b, x in m]
            out.extend((s[a:b], first and a == 0) for a, b in split_spans(m, self.behavior))
        return out

    def _byte_level(self, pieces: Pieces) -> Pieces:
        out: Pieces = []
        for s, first in pieces:
            if self.add_prefix_space and not s.startswith(" "):
                s = " " + s
            spans = split_spans(find_matches(self.rx, s), "Isolated") if self.rx else [(0, len(s))]
            out.extend((to_byte_level(s[a:b]), first and a == 0) for a, b in spans)
        return out

    def _metaspace(self, pieces: Pieces) -> Pieces:
        out: Pieces = []
        r = self.repl
        for s, first in pieces:
            s = s.replace(" ", r)
            # "first": only where the piece starts the original text (offsets_original().0 == 0;
            # tracked here through splits as "starts at 0 of a piece that did")
            if not s.startswith(r) and (
                self.scheme == "always" or (self.scheme == "first" and first)
            ):
                s = r + s
            if self.rx is None:
                out.append((s, first))
                continue
            spans = split_spans(find_matches(self.rx, s), "MergedWithNext")
            out.extend((s[a:b], first and a == 0) for a, b in spans)
        return out

    def _sequence(self, pieces: Pieces) -> Pieces:
        for p in self.parts:
            pieces = p.fn(pieces)
        return pieces


#: the split the ByteLevel pre-tokenizer applies when use_regex is on (byte_level.rs)
BYTE_LEVEL_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def metaspace_scheme(c: _Component, spec: dict) -> str:
    """Metaspace's prepend_scheme as its deserializer settles it (``add_prefix_space: false``
    means "never", and contradicts any other scheme)."""
    scheme = c.get("prepend_scheme", "always", str)
    if scheme not in ("always", "first", "never"):
        raise ModelFormatError(f"{c.where}: prepend_scheme {show(scheme)}")
    if spec.get("add_prefix_space") is False and scheme != "never":
        raise ModelFormatError(
            f"{c.where}: add_prefix_space does not match declared prepend_scheme"
        )
    return scheme


# decoders: [token] -> [token]
class Decoder(_Component):
    kind = "decoder"

    def __init__(self, spec: dict, source: str):
        super().__init__(spec, source)
        t = spec.get("type")
        if t == "ByteLevel":
            self.fn = _decode_byte_level
        elif t == "ByteFallback":
            self.fn = _decode_byte_fallback
        elif t == "Fuse":
            self.fn = lambda toks: ["".join(toks)]
        elif t == "Replace":
            rx, content = _pattern(spec.get("pattern"), self.where), self.get("content", "", str)
            self.fn = lambda toks: [_replace_all(rx, t, content) for t in toks]
        elif t == "Strip":
            content = self.get("content", " ", str)
            start, stop = self.get("start", 0, int), self.get("stop", 0, int)
            if len(content) != 1 or start < 0 or stop < 0:
                raise ModelFormatError(f"{self.where}: {show(spec)}")
            self.fn = lambda toks: [_strip(t, content, start, stop) for t in toks]
        elif t == "Metaspace":
            repl = self.get("replacement", "\u2581", str)
            scheme = metaspace_scheme(self, spec)
            self.fn = lambda toks: [
                t.replace(repl, "") if i == 0 and scheme != "never" else t.replace(repl, " ")
                for i, t in enumerate(toks)
            ]
        elif t == "Sequence":
            parts = [Decoder(x, source) for x in self.get("decoders", [], list)]

            def seq(toks: list[str]) -> list[str]:
                for p in parts:
                    toks = p.fn(toks)
                return toks

            self.fn = seq
        else:
            raise unsupported(self.kind, t, source)


def _decode_byte_level(tokens: list[str]) -> list[str]:
    """Each token's characters back to bytes (a token with a character outside the map keeps
    its UTF-8), then the bytes as text with U+FFFD for invalid UTF-8 (from_utf8_lossy)."""
    out = bytearray()
    for t in tokens:
        try:
            out.extend([CHAR_BYTES[c] for c in t])
        except KeyError:
            out.extend(t.encode("utf-8"))
    return [out.decode("utf-8", "replace")]


_BYTE_TOKEN = re.compile(r"<0x(\+[0-9A-Fa-f]|[0-9A-Fa-f]{2})>")


def _decode_byte_fallback(tokens: list[str]) -> list[str]:
    """Runs of ``<0xXX>`` tokens become their text, or one U+FFFD per byte where the run is not
    valid UTF-8 (byte_fallback.rs)."""
    out: list[str] = []
    pending = bytearray()

    def flush() -> None:
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                out.extend(["\ufffd"] * len(pending))
            pending.clear()

    for t in tokens:
        m = _BYTE_TOKEN.fullmatch(t) if len(t) == 6 else None
        if m:
            pending.append(int(m.group(1), 16))
        else:
            flush()
            out.append(t)
    flush()
    return out


def _strip(t: str, content: str, start: int, stop: int) -> str:
    """Up to ``start`` leading and ``stop`` trailing ``content`` characters off (strip.rs;
    where that panics, stop > the token's length or the cuts crossing, this gives "")."""
    a = 0
    for i, c in enumerate(t[:start]):
        if c != content:
            break
        a = i + 1
    b = len(t)
    for i in range(min(stop, len(t))):
        if t[len(t) - i - 1] != content:
            break
        b = len(t) - i - 1
    return t[a:b]


# post-processors: ids -> ids, for one sequence
class PostProcessor(_Component):
    kind = "post_processor"

    def __init__(self, spec: dict, source: str):
        super().__init__(spec, source)
        t = spec.get("type")
        self.before: list[int] = []
        self.after: list[int] = []
        self.parts: list[PostProcessor] = []
        if t == "ByteLevel":
            pass  # offsets only
        elif t in ("RobertaProcessing", "BertProcessing"):
            cls, sep = spec.get("cls"), spec.get("sep")
            for v in (cls, sep):
                if not (isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)):
                    raise ModelFormatError(f"{self.where}: cls/sep {show(v)}")
            self.before, self.after = [cls[1]], [sep[1]]
        elif t == "TemplateProcessing":
            specials = self.get("special_tokens", {}, dict)
            seen_a = False
            for piece in self.get("single", [], list):
                if not isinstance(piece, dict) or len(piece) != 1:
                    raise ModelFormatError(f"{self.where}: single {show(piece)}")
                ((k, v),) = piece.items()
                if k == "Sequence":
                    seen_a = True
                elif k == "SpecialToken" and isinstance(v, dict) and v.get("id") in specials:
                    ids = specials[v["id"]].get("ids")
                    if not (isinstance(ids, list) and all(isinstance(x, int) for x in ids)):
                        raise ModelFormatError(f"{self.where}: special token {show(v)}")
                    (self.after if seen_a else self.before).extend(ids)
                else:
                    raise ModelFormatError(f"{self.where}: single {show(piece)}")
        elif t == "Sequence":
            self.parts = [PostProcessor(x, source) for x in self.get("processors", [], list)]
        else:
            raise unsupported(self.kind, t, source)

    def process(self, ids: list[int], add_special_tokens: bool) -> list[int]:
        for p in self.parts:
            ids = p.process(ids, add_special_tokens)
        if add_special_tokens and (self.before or self.after):
            ids = self.before + ids + self.after
        return ids


def unsupported(kind: str, t: Any, source: str) -> ModelFormatError:
    return ModelFormatError(
        f"{source}: the {kind} {show(t)} is not one the pure-Python tokenizer implements "
        "(edgert.runtime.bpe)",
        FIX,
    )


# -- the BPE model --------------------------------------------------------------------------
class BPE:
    """``models/bpe``: each character a symbol (or its ``<0xXX>`` bytes, or the unknown
    token), then the ranked merges applied lowest rank first, leftmost first, from a heap — as
    ``Word::merge_all`` does, so ties and merges whose parts were themselves merged later come
    out the same."""

    #: pieces remembered per tokenizer (tokenizers: 10 000, pieces under 256 bytes)
    CACHE_SIZE, CACHE_LEN = 10_000, 256

    def __init__(self, spec: dict, source: str):
        where = f"{source}: model {spec.get('type', 'BPE')!r}"
        vocab, merges = spec.get("vocab"), spec.get("merges")
        if not isinstance(vocab, dict) or not isinstance(merges, list):
            raise ModelFormatError(f"{where}: missing vocab/merges")
        if not all(isinstance(i, int) and 0 <= i < 1 << 32 for i in vocab.values()):
            raise ModelFormatError(f"{where}: vocabulary ids must be integers from 0")
        dropout = spec.get("dropout")
        if dropout not in (None, 0, 0.0):
            raise ModelFormatError(
                f"{where}: dropout {show(dropout)} makes encoding random; edgert encodes "
                "deterministically"
            )
        opt: dict[str, Any] = {}
        for key, types in (("unk_token", str), ("continuing_subword_prefix", str),
                           ("end_of_word_suffix", str), ("fuse_unk", bool),
                           ("byte_fallback", bool), ("ignore_merges", bool)):  # fmt: skip
            v = spec.get(key)
            if v is not None and not isinstance(v, types):
                raise ModelFormatError(f"{where}: {key} = {show(v)}")
            opt[key] = v
        self.vocab: dict[str, int] = vocab
        top = max(vocab.values(), default=-1)
        #: id -> token: a list where the ids are dense (every vocabulary seen), else a dict
        self.vocab_r: list[str | None] | dict[int, str]
        if top < 2 * len(vocab) + 1024:
            self.vocab_r = [None] * (top + 1)
            for t, i in vocab.items():
                self.vocab_r[i] = t
        else:
            self.vocab_r = {i: t for t, i in vocab.items()}
        self.unk: str | None = opt["unk_token"]
        self.prefix: str | None = opt["continuing_subword_prefix"]
        self.suffix: str | None = opt["end_of_word_suffix"]
        self.fuse_unk = bool(opt["fuse_unk"])
        self.byte_fallback = bool(opt["byte_fallback"])
        self.ignore_merges = bool(opt["ignore_merges"])
        self.byte_ids: list[int | None] = [vocab.get(f"<0x{b:02X}>") for b in range(256)]
        cut = len(self.prefix) if self.prefix else 0
        #: (left id << 32 | right id) -> (rank << 32 | merged id): one int each, not tuples
        table: dict[int, int] = {}
        for rank, m in enumerate(merges):  # hot: 500 000 merges in the largest vocabularies
            try:
                a, b = m.split(" ") if m.__class__ is str else m
                table[vocab[a] << 32 | vocab[b]] = rank << 32 | vocab[a + b[cut:]]
            except (KeyError, ValueError, TypeError, AttributeError):
                raise self._bad_merge(where, rank, m, vocab) from None
            # (a pair listed twice keeps its last rank, as collecting into a HashMap does)
        self.merges = table
        self.cache: dict[str, list[int]] = {}

    def id_to_token(self, i: int) -> str | None:
        r = self.vocab_r
        if isinstance(r, dict):
            return r.get(i)
        return r[i] if 0 <= i < len(r) else None

    def _bad_merge(self, where: str, rank: int, m: Any, vocab: dict) -> ModelFormatError:
        parts = m.split(" ") if isinstance(m, str) else m
        if not (
            isinstance(parts, list) and len(parts) == 2 and all(isinstance(x, str) for x in parts)
        ):
            return ModelFormatError(f"{where}: merge {rank} ({show(m)}) is not a pair of tokens")
        cut = len(self.prefix) if self.prefix else 0
        missing = next(t for t in (parts[0], parts[1], parts[0] + parts[1][cut:]) if t not in vocab)
        return ModelFormatError(
            f"{where}: merge {rank} ({show(m)}): {show(missing)} is not in the vocabulary"
        )

    def tokenize(self, s: str) -> list[int]:
        if not s:
            return []
        if self.ignore_merges:
            i = self.vocab.get(s)
            if i is not None:
                return [i]
        ids = self.cache.get(s)
        if ids is None:
            ids = self._merge_word(s)
            if len(s.encode("utf-8")) < self.CACHE_LEN and len(self.cache) < self.CACHE_SIZE:
                self.cache[s] = ids
        return list(ids)

    def _symbols(self, w: str) -> list[int]:
        vocab, out = self.vocab, []
        unk: int | None = None  # the pending unknown token (tokenizers keeps its length too)
        last = len(w) - 1
        for i, ch in enumerate(w):
            s = ch
            if i and self.prefix is not None:
                s = self.prefix + s
            if i == last and self.suffix is not None:
                s = s + self.suffix
            t = vocab.get(s)
            if t is not None:
                if unk is not None:
                    out.append(unk)
                    unk = None
                out.append(t)
                continue
            if self.byte_fallback:
                bids = [self.byte_ids[b] for b in s.encode("utf-8")]
                if None not in bids:
                    out.extend(bids)  # type: ignore[arg-type]
                    continue  # (a pending unknown token stays pending, as there)
            if self.unk is not None:
                uid = vocab.get(self.unk)
                if uid is None:
                    raise ModelFormatError(
                        f"the unknown token {show(self.unk)} is not in the vocabulary"
                    )
                if unk is not None and not self.fuse_unk:
                    out.append(unk)
                unk = uid
        if unk is not None:
            out.append(unk)
        return out

    def _merge_word(self, w: str) -> list[int]:
        c = self._symbols(w)
        n = len(c)
        if n < 2:
            return c
        merges = self.merges
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        alive = [True] * n
        heap = []
        for i in range(n - 1):
            m = merges.get(c[i] << 32 | c[i + 1])
            if m is not None:
                heap.append((m >> 32, i, m & 0xFFFFFFFF))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            _, pos, new_id = pop(heap)
            if not alive[pos]:
                continue
            right = nxt[pos]
            if right == -1:
                continue
            m = merges.get(c[pos] << 32 | c[right])
            if m is None or m & 0xFFFFFFFF != new_id:
                continue  # an expired entry
            c[pos] = new_id
            alive[right] = False
            nxt[pos] = nxt[right]
            if nxt[right] != -1:
                prev[nxt[right]] = pos
            p = prev[pos]
            if p >= 0:
                m = merges.get(c[p] << 32 | new_id)
                if m is not None:
                    push(heap, (m >> 32, p, m & 0xFFFFFFFF))
            q = nxt[pos]
            if q != -1:
                m = merges.get(new_id << 32 | c[q])
                if m is not None:
                    push(heap, (m >> 32, pos, m & 0xFFFFFFFF))
        return [x for x, a in zip(c, alive) if a]


# -- added tokens -----------------------------------------------------------------------------
class AddedToken:
    __slots__ = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")

    def __init__(self, spec: dict, where: str):
        self.content = spec.get("content")
        if not isinstance(self.content, str):
            raise ModelFormatError(f"{where}: added token {show(spec)} has no content")
        for k, default in (("single_word", False), ("lstrip", False), ("rstrip", False),
                           ("normalized", True), ("special", False)):  # fmt: skip
            v = spec.get(k, default)
            if not isinstance(v, bool):
                raise ModelFormatError(f"{where}: added token {show(spec)}: {k} = {show(v)}")
            setattr(self, k, v)

    def key(self) -> tuple:
        return tuple(getattr(self, k) for k in self.__slots__)


class _Matcher:
    """Leftmost-longest search for a set of literal strings (the Aho-Corasick automaton
    `tokenizers` builds, MatchKind::LeftmostLongest): a regex finds where a candidate may
    start, then the longest pattern there wins."""

    def __init__(self, patterns: dict[str, int]):
        self.patterns = patterns
        firsts: dict[str, set[int]] = {}
        for p in patterns:
            firsts.setdefault(p[0], set()).add(len(p))
        self.lengths = {c: sorted(v, reverse=True) for c, v in firsts.items()}
        self.start = re.compile("[" + "".join(re.escape(c) for c in sorted(firsts)) + "]")

    def find(self, s: str) -> list[tuple[int, int, int]]:
        out = []
        pos = 0
        pats, lengths, search = self.patterns, self.lengths, self.start.search
        while True:
            m = search(s, pos)
            if m is None:
                return out
            i = m.start()
            for n in lengths[s[i]]:
                tid = pats.get(s[i : i + n])
                if tid is not None:
                    out.append((i, i + n, tid))
                    pos = i + n
                    break
            else:
                pos = i + 1


class AddedVocabulary:
    """``added_vocabulary.rs``: ids assigned as ``add_tokens`` assigns them (a token already in
    the vocabulary keeps its id; others follow the model's vocabulary), non-normalized tokens
    split out of the raw text, normalized ones out of the normalized pieces."""

    def __init__(self, specs: list, model: BPE, normalizer: Normalizer | None, source: str):
        where = f"{source}: added_tokens"
        self.map: dict[str, int] = {}
        self.map_r: dict[int, AddedToken] = {}
        self.special: set[str] = set()
        self.normalized_cache: dict[int, str] = {}
        next_id = len(model.vocab)  # the map starts empty: model.get_vocab_size()
        for spec in specs:
            if not isinstance(spec, dict):
                raise ModelFormatError(f"{where}: {show(spec)}")
            tok = AddedToken(spec, where)
            if not tok.content:
                continue
            old = self.map.get(tok.content)
            if old is not None and old in self.map_r and self.map_r[old].key() == tok.key():
                continue
            new_id = self.map.get(tok.content, model.vocab.get(tok.content))
            if new_id is None:
                new_id, next_id = next_id, next_id + 1
            if tok.normalized and normalizer is not None:
                normed = normalizer.fn(tok.content)
                if normed != tok.content:
                    self.normalized_cache[new_id] = normed
            self.map[tok.content] = new_id
            if tok.special:
                self.special.add(tok.content)
            self.map_r[new_id] = tok
        raw: dict[str, int] = {}
        normed_pats: dict[str, int] = {}
        for i, tok in self.map_r.items():
            if tok.normalized:
                normed_pats.setdefault(self.normalized_cache.get(i, tok.content), i)
            else:
                raw.setdefault(tok.content, i)
        self.raw = _Matcher(raw) if raw else None
        self.normed = _Matcher(normed_pats) if normed_pats else None
        self._word: re.Pattern | None = None

    def id_to_token(self, i: int) -> str | None:
        tok = self.map_r.get(i)
        if tok is None:
            return None
        return self.normalized_cache.get(i, tok.content)

    def _is_word(self, c: str) -> bool:
        if self._word is None:
            self._word = _char_class(word_ranges())
        return self._word.match(c) is not None

    def split(self, s: str, matcher: _Matcher | None) -> list[tuple[int, int, int | None]]:
        """``find_matches``: (start, end, token id or None) covering ``s``."""
        if not s:
            return [(0, 0, None)]
        if matcher is None:
            return [(0, len(s), None)]
        out: list[tuple[int, int, int | None]] = []
        start_offset = 0
        for start, stop, tid in matcher.find(s):
            tok = self.map_r[tid]
            if tok.single_word:
                start_space = start == 0 or not self._is_word(s[start - 1])
                stop_space = stop == len(s) or not self._is_word(s[stop])
                if not (start_space and stop_space):
                    continue
            if tok.lstrip:
                head = s[:start]
                start = max(len(head.rstrip(WHITE_SPACE_CHARS)), start_offset)
            if tok.rstrip:
                tail = s[stop:]
                stop += len(tail) - len(tail.lstrip(WHITE_SPACE_CHARS))
            if start_offset < start:
                out.append((start_offset, start, None))
            out.append((start, stop, tid))
            start_offset = stop
        if start_offset != len(s):
            out.append((start_offset, len(s), None))
        return out


# -- the tokenizer ----------------------------------------------------------------------------
class Encoding:
    """What ``encode`` returns: ``ids`` (and ``tokens``), as `tokenizers`' Encoding has them."""

    __slots__ = ("ids", "tokens")

    def __init__(self, ids: list[int], tokens: list[str]):
        self.ids = ids
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.ids)


class PyTokenizer:
    """A ``tokenizer.json`` read without `tokenizers`; the methods edgert calls on
    ``tokenizers.Tokenizer``, with its signatures and results."""

    def __init__(self, data: dict, source: str = "tokenizer.json"):
        if not isinstance(data, dict):
            raise ModelFormatError(f"{source} is not a JSON object")
        #: what save() writes: the file read (its path; the parsed JSON is not kept, it can
        #: take more memory than the tokenizer itself), or the JSON given
        self._path: Path | None = None
        self._raw: bytes | None = None
        self.source = source
        if data.get("version", "1.0") != "1.0":
            raise ModelFormatError(f"{source}: unknown tokenizer version {show(data['version'])}")
        for key in ("truncation", "padding"):
            if data.get(key) is not None:
                raise ModelFormatError(
                    f"{source}: {key} is set; the pure-Python tokenizer encodes without it", FIX
                )
        model = data.get("model")
        if not isinstance(model, dict):
            raise ModelFormatError(f"{source}: no model")
        if model.get("type", "BPE") != "BPE":
            raise unsupported("model", model.get("type"), source)
        self.model = BPE(model, source)

        def part(cls, key):
            spec = data.get(key)
            if spec is None:
                return None
            if not isinstance(spec, dict):
                raise ModelFormatError(f"{source}: {key} = {show(spec)}")
            return cls(spec, source)

        self.normalizer: Normalizer | None = part(Normalizer, "normalizer")
        self.pre_tokenizer: PreTokenizer | None = part(PreTokenizer, "pre_tokenizer")
        self.decoder: Decoder | None = part(Decoder, "decoder")
        self.post_processor: PostProcessor | None = part(PostProcessor, "post_processor")
        added = data.get("added_tokens") or []
        if not isinstance(added, list):
            raise ModelFormatError(f"{source}: added_tokens = {show(added)}")
        self.added = AddedVocabulary(added, self.model, self.normalizer, source)

    @classmethod
    def from_file(cls, path: str | Path) -> PyTokenizer:
        p = Path(path)
        try:
            data = json.loads(p.read_bytes())
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"cannot read {p}: {e}") from e
        tok = cls(data, str(p))
        tok._path = p
        return tok

    @classmethod
    def from_str(cls, text: str) -> PyTokenizer:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ModelFormatError(f"tokenizer JSON: {e}") from e
        tok = cls(data)
        tok._raw = text.encode("utf-8")
        return tok

    # -- encode ---------------------------------------------------------------------------
    def _pieces(self, text: str) -> list[tuple[str, int | None, bool]]:
        """``extract_and_normalize`` then the pre-tokenizer: (piece, added token id or None,
        starts the text)."""
        added, norm = self.added, self.normalizer
        out: list[tuple[str, int | None, bool]] = []
        for a, b, tid in added.split(text, added.raw):
            if b == a:
                continue
            if tid is not None:
                out.append((text[a:b], tid, a == 0))
                continue
            s = text[a:b]
            if norm is not None:
                s = norm.fn(s)
            for c, d, tid2 in added.split(s, added.normed):
                if d > c:
                    out.append((s[c:d], tid2, a == 0 and c == 0))
        if self.pre_tokenizer is None:
            return out
        result: list[tuple[str, int | None, bool]] = []
        run: Pieces = []
        for s, tid, first in out:
            if tid is None:
                run.append((s, first))
                continue
            if run:
                result.extend((x, None, f) for x, f in self.pre_tokenizer.fn(run))
                run = []
            result.append((s, tid, first))
        if run:
            result.extend((x, None, f) for x, f in self.pre_tokenizer.fn(run))
        return result

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoding:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__}")
        ids: list[int] = []
        for s, tid, _ in self._pieces(text):
            if tid is not None:
                ids.append(tid)
            else:
                ids.extend(self.model.tokenize(s))
        if self.post_processor is not None:
            ids = self.post_processor.process(ids, add_special_tokens)
        return Encoding(ids, [self.id_to_token(i) or "" for i in ids])

    # -- decode ---------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        tokens = []
        special = self.added.special
        for i in ids:
            t = self.id_to_token(int(i))
            if t is None or (skip_special_tokens and t in special):
                continue
            tokens.append(t)
        if self.decoder is None:
            return " ".join(tokens)
        return "".join(self.decoder.fn(tokens))

    # -- vocabulary -----------------------------------------------------------------------
    def id_to_token(self, i: int) -> str | None:
        t = self.added.id_to_token(i)
        return t if t is not None else self.model.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        i = self.added.map.get(token)
        return i if i is not None else self.model.vocab.get(token)

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        v = dict(self.model.vocab)
        if with_added_tokens:
            v.update(self.added.map)
        return v

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        if not with_added_tokens:
            return len(self.model.vocab)
        return len(self.model.vocab) + sum(1 for t in self.added.map if t not in self.model.vocab)

    def save(self, path: str | Path, pretty: bool = True) -> None:
        """The JSON this tokenizer was read from, unchanged (nothing here changes it)."""
        raw = self._raw
        if raw is None:
            if self._path is None:
                raise ModelFormatError("this tokenizer was built from a dict; nothing to save")
            raw = self._path.read_bytes()
        Path(path).write_bytes(raw)
