"""GGUF frontend: metadata -> ModelConfig, tensors dequantized on demand, tokenizer."""

from __future__ import annotations

import logging
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
from edgert.compiler.frontends.archs import (
    GGUF_ARCHS,
    ArchSpec,
    embed_scale,
    fused_blocks,
    no_rope_layers,
    supported_gguf,
    swa_layers,
)

from edgert.errors import ModelFormatError, UnsupportedError
from edgert.format import names
from edgert.format.model import (
    LIMITS,
    ModelConfig,
    ModelGraph,
    TensorInfo,
    float_field,
    int_field,
    printable,
)

log = logging.getLogger(__name__)

#: GGML tensor types the frontend dequantizes
SUPPORTED_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
    "TQ1_0",
    "TQ2_0",
)


#: GGUF value type -> size of one value in bytes (gguf.GGUFValueType; 8 is a string, 9 an array)
_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
GGUF_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 1 << 16  # bytes of a key or tensor name (GGUF keys are at most 65535)
MAX_ALIGNMENT = 1 << 20
#: values a quantized tensor is dequantized at a time (16 MiB of float32)
DEQUANT_CHUNK = 1 << 22
#: bytes of the mapped file read before its pages are dropped from the process (MADV_DONTNEED:
#: the kernel keeps them in its page cache; a view still in use faults them back): without it a
#: compile's RSS grows by the whole file it reads
MAPPED_BYTES = 256 << 20


class _MappedPages:
    """Drops the mapped file's pages from the process each :data:`MAPPED_BYTES` read."""

    def __init__(self, memmap):
        self.mm = getattr(memmap, "_mmap", None)  # numpy.memmap's mmap.mmap
        self.read = 0

    def touched(self, nbytes: int) -> None:
        self.read += nbytes
        if self.read < MAPPED_BYTES or self.mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        self.read = 0
        self.mm.madvise(mmap.MADV_DONTNEED)


class _Cursor:
    """Reads a GGUF header field by field, refusing any read past the end of the file."""

    def __init__(self, buf, src: str, order: str):
        self.buf, self.src, self.order, self.pos, self.size = buf, src, order, 0, len(buf)

    def take(self, n: int, what: str) -> int:
        if n > self.size - self.pos:
            raise ModelFormatError(
                f"{self.src}: truncated GGUF file: {what} at byte {self.pos} needs {n} bytes, "
                f"the file has {self.size}",
                "download or convert the model again",
            )
        at = self.pos
        self.pos += n
        return at

    def num(self, fmt: str, what: str) -> int:
        return struct.unpack_from(
            self.order + fmt, self.buf, self.take(struct.calcsize(fmt), what)
        )[0]

    def count(self, what: str, each: int) -> int:
        """A u64 count of items at least ``each`` bytes long, bounded by the bytes left."""
        n = self.num("Q", what)
        if n * each > self.size - self.pos:
            raise ModelFormatError(
                f"{self.src}: GGUF {what} = {n}, more than the {self.size - self.pos} bytes left "
                "can hold",
                "the file is corrupt; download or convert the model again",
            )
        return n

    def string(self, what: str, limit: int | None = None) -> bytes:
        n = self.num("Q", f"{what} length")
        if limit is not None and n > limit:
            raise ModelFormatError(
                f"{self.src}: GGUF {what} length = {n}, expected at most {limit}"
            )
        at = self.take(n, what)
        return bytes(self.buf[at : at + n])

    def name(self, what: str) -> str:
        raw = self.string(what, MAX_NAME)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFormatError(f"{self.src}: GGUF {what} {raw[:40]!r} is not UTF-8") from None


def check_header(path: Path, src: str) -> None:
    """Walk a GGUF file's header before gguf's reader does: every count, length, type, dimension
    and offset is checked against the file (a corrupt count must not make us loop or allocate
    for 2**64 items, a tensor must lie inside the file), so that what the reader then builds is
    bounded by the file's size."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        order = "<"
        (version,) = struct.unpack_from("<I", buf, 4) if len(buf) >= 8 else (None,)
        if version is not None and version & 0xFFFF == 0:  # written on a big-endian machine
            order = ">"
        c = _Cursor(buf, src, order)
        c.take(4, "magic")
        version = c.num("I", "version")
        if version not in GGUF_VERSIONS:
            raise UnsupportedError(
                f"{src}: GGUF version {version}",
                f"edgert reads GGUF versions {' and '.join(map(str, GGUF_VERSIONS))}; "
                "convert the model again",
            )
        n_tensors = c.num("Q", "tensor count")
        n_kv = c.count("metadata count", 8 + 4 + 1)  # key length, type, smallest value
        if n_tensors * (8 + 4 + 8 + 4 + 8) > c.size - c.pos:  # name length, dims, dim, type, offset
            raise ModelFormatError(
                f"{src}: GGUF tensor count = {n_tensors}, more than the header can hold",
                "the file is corrupt; download or convert the model again",
            )
        alignment = 32
        keys: set[str] = set()
        for _ in range(n_kv):
            key = c.name("metadata key")
            k = printable(key)
            if key in keys:
                raise ModelFormatError(f"{src}: GGUF metadata key {k} appears twice")
            keys.add(key)
            vtype = c.num("I", f"type of {k}")
            if key == "general.alignment":
                value = c.num("I", key) if vtype == _UINT32 else None
                if value is None or value < 1 or value & (value - 1) or value > MAX_ALIGNMENT:
                    raise ModelFormatError(
                        f"{src}: general.alignment = {value} (type {vtype}), expected a power of "
                        f"two up to {MAX_ALIGNMENT} stored as uint32"
                    )
                alignment = value
                continue
            if vtype == _ARRAY:
                itype = c.num("I", f"element type of {k}")
                if itype not in _VALUE_SIZES and itype != _STRING:
                    raise ModelFormatError(
                        f"{src}: GGUF metadata {k} is an array of type {itype}, "
                        "expected an array of numbers, booleans or strings"
                    )
                each = _VALUE_SIZES.get(itype, 8)
                n = c.count(f"length of {k}", each)
                if itype == _STRING:
                    for _ in range(n):
                        c.string(f"element of {k}")
                else:
                    c.take(n * each, k)
            elif vtype == _STRING:
                c.string(k)
            elif vtype in _VALUE_SIZES:
                c.take(_VALUE_SIZES[vtype], k)
            else:
                raise ModelFormatError(f"{src}: GGUF metadata {k} has unknown type {vtype}")
        tensors: list[tuple[str, int, int]] = []
        seen: set[str] = set()
        for _ in range(n_tensors):
            raw_name = c.name("tensor name")
            name = printable(raw_name)
            if raw_name in seen:
                raise ModelFormatError(f"{src}: GGUF tensor {name} appears twice")
            seen.add(raw_name)
            n_dims = c.num("I", f"dimension count of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise ModelFormatError(
                    f"{src}: tensor {name} has {n_dims} dimensions, expected 1..{MAX_DIMS}"
                )
            dims = [c.num("Q", f"dimensions of {name}") for _ in range(n_dims)]
            raw_type = c.num("I", f"type of {name}")
            offset = c.num("Q", f"offset of {name}")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(raw_type)]
            except ValueError:
                raise ModelFormatError(
                    f"{src}: tensor {name} has unknown GGML type {raw_type}",
                    "the file is corrupt, or newer than the gguf package installed",
                ) from None
            if min(dims) < 1 or dims[0] % block:
                raise ModelFormatError(
                    f"{src}: tensor {name} has dimensions {dims}, expected each >= 1 and the "
                    f"first a multiple of {block} (its type's block)"
                )
            if offset % alignment:
                raise ModelFormatError(
                    f"{src}: tensor {name} at offset {offset}, expected a multiple of the "
                    f"alignment {alignment}"
                )
            n = 1
            for d in dims:
                n *= d
            tensors.append((name, offset, n // block * type_size))
        start = (c.pos + alignment - 1) // alignment * alignment
        for name, offset, nbytes in tensors:
            if start + offset + nbytes > c.size:
                raise ModelFormatError(
                    f"{src}: truncated GGUF file: tensor {name} needs bytes {start + offset}.."
                    f"{start + offset + nbytes}, the file has {c.size}",
                    "download or convert the model again",
                )


def _import_gguf():
    try:
        import gguf  # noqa: F401
        import gguf.quants  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ModelFormatError(
            "reading GGUF files needs the `gguf` package", "pip install 'edgert[compiler]'"
        ) from e
    return gguf


def read_metadata(reader) -> dict[str, Any]:
    """All key/value fields of a GGUF file as Python values."""
    meta: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = f.contents()
        except Exception as e:  # a field we cannot decode is kept out, not fatal
            log.debug("GGUF field %s unreadable: %s", key, e)
    return meta


def _spec(meta: dict[str, Any], source: str) -> tuple[str, ArchSpec]:
    arch_name = meta.get("general.architecture")
    if arch_name is None:
        raise ModelFormatError(f"{source}: GGUF file has no general.architecture")
    if not isinstance(arch_name, str):
        raise ModelFormatError(
            f"{source}: general.architecture = {arch_name!r:.40}, expected a string"
        )
    spec = GGUF_ARCHS.get(arch_name)
    if spec is None:
        raise UnsupportedError(
            f"{source}: unsupported architecture {arch_name!r}",
            f"edgert runs these GGUF architectures: {supported_gguf()}",
        )
    return arch_name, spec


def config_from_metadata(
    meta: dict[str, Any], source: str, embd_rows: int | None, tensor_names: set[str] = frozenset()
) -> ModelConfig:
    arch_name, spec = _spec(meta, source)

    def get(key: str, default: Any = KeyError) -> Any:
        full = f"{arch_name}.{key}"
        if full in meta:
            return meta[full]
        if default is KeyError:
            raise ModelFormatError(f"{source}: GGUF metadata lacks {full}")
        return default

    # each value checked where it is read, so that an error names the GGUF key
    def get_int(key: str, field: str, default: Any = KeyError) -> int:
        return int_field(f"{source}: {arch_name}.{key}", get(key, default), *LIMITS[field])

    def get_float(key: str, default: float, *, zero: bool = False) -> float:
        return float_field(f"{source}: {arch_name}.{key}", get(key, default), zero=zero)

    dim = get_int("embedding_length", "dim")
    n_heads = get_int("attention.head_count", "n_heads")
    n_experts = get_int("expert_count", "n_experts", 0)
    ffn = get_int("feed_forward_length", "ffn_dim", 0)
    n_layers = get_int("block_count", "n_layers")
    vocab_key = f"{arch_name}.vocab_size"
    vocab = meta.get(vocab_key)
    if vocab is None:
        vocab_key = "tokenizer.ggml.tokens (its length)"
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, list) else embd_rows
    if vocab is None:
        raise ModelFormatError(f"{source}: cannot tell the vocabulary size")
    vocab = int_field(f"{source}: {vocab_key}", vocab, *LIMITS["vocab_size"])
    if f"{arch_name}.attention.key_length" in meta:
        head_dim = get_int("attention.key_length", "head_dim")
    elif dim % n_heads:
        raise ModelFormatError(
            f"{source}: {arch_name}.embedding_length = {dim} is not a multiple of "
            f"{arch_name}.attention.head_count = {n_heads} (and no attention.key_length)"
        )
    else:
        head_dim = dim // n_heads
    scaling = get("rope.scaling.type", "linear")
    if scaling not in ("linear", "none", "longrope", "su"):
        raise UnsupportedError(
            f"{source}: rope scaling {scaling!r:.40}", "edgert applies linear, llama3 and LongRoPE"
        )
    factor = get_float("rope.scaling.factor", 0.0, zero=True) or get_float(
        "rope.scale_linear", 0.0, zero=True
    )
    if get_float("final_logit_softcapping", 0.0, zero=True):
        raise UnsupportedError(f"{source}: final logit soft-capping is not implemented")
    extra: dict[str, Any] = {}
    if names.ROPE_FREQS in tensor_names:
        extra["rope_factors"] = "freqs"
    elif names.ROPE_FACTORS_LONG in tensor_names:
        extra.update(
            rope_factors="longrope",
            rope_orig_ctx=get_int("rope.scaling.original_context_length", "rope_orig_ctx", 0),
            rope_attn_factor=get_float("rope.scaling.attn_factor", 1.0),
        )
    window = get_int("attention.sliding_window", "sliding_window", 0) if spec.swa_pattern else 0
    if window:
        pattern = get("attention.sliding_window_pattern", spec.swa_pattern)
        if isinstance(pattern, (list, tuple)):  # per layer: does it slide
            swa = [i for i, slides in enumerate(pattern[:n_layers]) if slides]
        else:
            what = f"{source}: {arch_name}.attention.sliding_window_pattern"
            swa = swa_layers(n_layers, int_field(what, pattern, 1, LIMITS["n_layers"][1]))
        extra.update(
            sliding_window=window,
            swa_layers=swa,
            rope_theta_swa=get_float("rope.freq_base_swa", 10000.0),
        )
    if spec.no_rope_every:
        extra["no_rope_layers"] = no_rope_layers(n_layers, spec.no_rope_every)
    if spec.arch == "gemma3" and n_layers == 62:  # Gemma 3 27B scales by dim / heads
        extra["attn_scale"] = 1.0 / float(np.sqrt(dim // n_heads))
    return ModelConfig.of_source(
        source,
        arch=spec.arch,
        name=str(meta.get("general.name", "")),
        n_layers=n_layers,
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=get_int("attention.head_count_kv", "n_kv_heads", n_heads),
        head_dim=head_dim,
        ffn_dim=ffn,
        vocab_size=vocab,
        rope_theta=get_float("rope.freq_base", 10000.0),
        rope_dim=get_int("rope.dimension_count", "rope_dim", 0),
        rope_style=spec.rope_style,
        rms_eps=get_float("attention.layer_norm_rms_epsilon", 1e-5),
        context_length=get_int("context_length", "context_length", 2048),
        n_experts=n_experts,
        n_experts_used=get_int("expert_used_count", "n_experts_used", 0),
        expert_ffn_dim=get_int("expert_feed_forward_length", "expert_ffn_dim", ffn)
        if n_experts
        else 0,
        shared_expert_ffn_dim=get_int(
            "expert_shared_feed_forward_length", "shared_expert_ffn_dim", 0
        ),
        expert_weights_norm=bool(get("expert_weights_norm", spec.expert_weights_norm)),
        qkv_bias=spec.qkv_bias,
        qk_norm=spec.qk_norm,
        qk_norm_per_head=spec.qk_norm_per_head,
        post_norms=spec.post_norms,
        activation=spec.activation,
        embed_scale=embed_scale(spec, dim),
        rope_scale=1.0 / factor if factor else 1.0,
        **extra,
    )


def _fused_views(
    spec: ArchSpec, cfg: ModelConfig, tensors, source: str
) -> dict[str, tuple[str, int, int]]:
    """Phi-3 stores q|k|v as ``attn_qkv`` and gate|up as ``ffn_up`` (2 x ffn rows): edgert's name
    -> (stored name, first row, end row) of its part."""
    if not spec.fused:
        return {}
    views = {}
    for i in range(cfg.n_layers):
        qkv, up = names.weight(i, "attn_qkv"), names.weight(i, "ffn_up")
        stored = {"qkv": qkv in tensors,
                  "gate_up": up in tensors and names.weight(i, "ffn_gate") not in tensors}  # fmt: skip
        for kind, src in (("qkv", qkv), ("gate_up", up)):
            if stored[kind]:
                blocks = fused_blocks(cfg, kind)
                rows = int(tensors[src].shape[-1])
                if rows != blocks[-1][2]:
                    raise ModelFormatError(
                        f"{source}: tensor {src} has {rows} rows, expected {blocks[-1][2]} from "
                        "the config"
                    )
                for p, a, b in blocks:
                    views[names.weight(i, p)] = (src, a, b)
    return views


def load_gguf(path: str | Path, *, with_tokenizer: bool = True) -> ModelGraph:
    """Open a GGUF file. Tensors are memory-mapped and dequantized to float32 on first use."""
    gguf = _import_gguf()
    from gguf.quants import dequantize

    path = Path(path)
    src = str(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFormatError(f"cannot read {src}: {e.strerror}") from e
    if magic != b"GGUF":
        raise ModelFormatError(f"{src} is not a GGUF file (magic {magic!r})")
    check_header(path, src)
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:
        raise ModelFormatError(
            f"{src}: corrupt or truncated GGUF file ({type(e).__name__}: {e})",
            "download or convert the model again",
        ) from e
    meta = read_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    pages = _MappedPages(reader.data)
    for t in reader.tensors:
        tname = t.tensor_type.name
        if tname not in SUPPORTED_TYPES:
            raise UnsupportedError(
                f"{src}: tensor {printable(t.name)} uses quant type {tname}",
                f"edgert reads {', '.join(SUPPORTED_TYPES)}; re-quantize the model to one of them",
            )
    embd = tensors.get(names.EMBEDDING)
    embd_rows = int(embd.shape[-1]) if embd is not None else None
    config = config_from_metadata(meta, src, embd_rows, set(tensors))
    views = _fused_views(GGUF_ARCHS[meta["general.architecture"]], config, tensors, src)
    split = {stored for stored, _, _ in views.values()}  # read only through their parts
    infos = [
        TensorInfo(t.name, tuple(int(d) for d in reversed(t.shape.tolist())), t.tensor_type.name)
        for t in reader.tensors
        if t.name not in views and t.name not in split
    ]
    for name, (stored, a, b) in views.items():
        t = tensors[stored]
        infos.append(TensorInfo(name, (b - a, int(t.shape[0])), t.tensor_type.name))

    def loader(name: str) -> np.ndarray:
        if name in views:
            stored, a, b = views[name]
            return read(stored)[a:b]
        return read(name)

    def blocks(name: str) -> np.ndarray:
        if name in views:
            stored, a, b = views[name]
            return blocks(stored)[a:b]
        t = tensors[name]
        pages.touched(int(t.n_bytes))
        data = np.asarray(t.data)
        return data.reshape(-1, data.shape[-1]).view(np.uint8)

    def read(name: str) -> np.ndarray:
        t = tensors[name]
        return rows_f32(t, 0, None).reshape(tuple(int(d) for d in reversed(t.shape.tolist())))

    def part(name: str, i: int | slice) -> np.ndarray | None:
        """Matrix ``i`` of stacked tensor ``name`` (one expert), or rows ``i`` (a slice) of a
        matrix, read and dequantized alone."""
        stored, a, b = views.get(name, (name, 0, None))
        t = tensors[stored]
        if isinstance(i, slice) and len(t.shape) == 2:
            r0, r1, step = i.indices((b if b is not None else int(t.shape[1])) - a)
            return rows_f32(t, a + r0, a + r1) if step == 1 else None
        if not isinstance(i, slice) and len(t.shape) == 3 and name not in views:
            per, i = int(t.shape[1]), int(i)  # rows per matrix; i may be a numpy integer
            return rows_f32(t, i * per, (i + 1) * per)
        return None

    def rows_f32(t, r0: int, r1: int | None) -> np.ndarray:
        """Rows r0:r1 (numpy order: of the tensor seen as rows of its last dimension) in
        float32; quantized rows in chunks, so the dequantizer's temporaries stay small."""
        data = np.asarray(t.data)
        rows = data.reshape(-1, data.shape[-1])[r0:r1]
        pages.touched(int(rows.nbytes))
        if t.tensor_type.name in ("F32", "F16"):  # F32: the mapped file's pages, not a copy
            return np.asarray(rows, dtype=np.float32)
        a = np.empty((len(rows), int(t.shape[0])), np.float32)
        step = max(1, DEQUANT_CHUNK // a.shape[1])
        for r in range(0, len(rows), step):
            a[r : r + step] = dequantize(rows[r : r + step], t.tensor_type)
        return a

    tokenizer = None
    if with_tokenizer and "tokenizer.ggml.model" in meta:
        from edgert.compiler.frontends.gguf_tokenizer import tokenizer_from_gguf

        tokenizer = tokenizer_from_gguf(meta, src)
    model = ModelGraph(
        config, infos, loader, tokenizer=tokenizer, source=src, blocks=blocks, parts=part
    )
    model.validate()
    model.metadata = meta
    return model
