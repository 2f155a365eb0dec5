"""An android-arm64 artifact's library as Android's loader would see it, checked without a phone.

1. ELF checks (edgert.format.elf.android_problems): only bionic's library names needed, no
   glibc symbol versions, no TLS, no text relocations, both hash tables, 16 KiB segments; an
   rpi5 library (glibc-linked) fails them, so the check can fail.
2. A load test: the library dlopen'ed by a C driver linked against musl (not glibc, as bionic is
   not) in the emulated arm64 device, running SmolLM2's forward pass on the artifact's weights;
   its greedy tokens are the host reference's.
3. One artifact on every feature level: the same driver under qemu's cortex-a53 (Armv8.0),
   cortex-a76 (dot product) and max (int8 matrix multiply) picks its int8 tile kernel per CPU
   and gives the same logits, bit for bit.
4. An rpi5 artifact (Armv8.2-A+dotprod) on a cortex-a53 is refused in one line, not SIGILL.
"""

import ctypes
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from arm64_root import _chroot, ensure_root, run_python
from conftest import compile_synthetic, greedy_divergence
from edgert.compiler.compile import compile_model
from edgert.compiler.lower.android import BIONIC
from edgert.format.elf import ANDROID_NEEDED, android_problems, read_elf
from edgert.compiler.quant.scheme import QuantScheme

from edgert.format import names
from edgert.format.artifact import Artifact
from edgert.runtime import forward as fw
from edgert.runtime import rope
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import ArtifactSource, reference_model

pytestmark = pytest.mark.device
HERE = Path(__file__).parent
ROOT = HERE.parents[1]
PROMPT = "The three primary colors are"
N_PREDICT = 16
#: qemu CPU models -> the int8 tile kernel the library must pick there
CPUS = {"cortex-a53": "neon", "cortex-a76": "neon-dotprod", "max": "neon-i8mm"}


@pytest.fixture(scope="module")
def android_art(smollm2_path, tmp_path_factory):
    """SmolLM2 for a phone at 4 bits (rounded to nearest, as tests/conftest.py's smollm2_q4:
    the library is what is tested here, not calibration)."""
    out = tmp_path_factory.mktemp("android") / "smollm2-android.edgert"
    compile_model(model=smollm2_path, target="android-arm64", out=out,
                  scheme=QuantScheme("uniform", 4, 32), quant_method="rtn",
                  calib=str(ROOT / "tests" / "data" / "gpl-3.0.txt"))  # fmt: skip
    return Artifact.open(out)


def test_android_library_passes_the_elf_checks(android_art):
    lib = android_art.library("model")
    info = read_elf(lib)
    assert android_problems(info, BIONIC) == []
    assert set(info.needed) <= set(ANDROID_NEEDED) and "libc.so" in info.needed
    assert not info.verneed and not any(v for v in info.imports.values())
    assert info.has_hash and info.has_gnu_hash and not info.textrel
    assert not info.tls_segment and info.tls_relocs == 0
    assert min(info.load_aligns) >= 16384
    # the manifest asks only Armv8.0 of the CPU: the rest is chosen at load
    assert android_art.target["cpu_features"] == ["asimd", "fp"]


def test_glibc_library_fails_the_elf_checks(tmp_path):
    """The same kernels linked for a board: every way it differs is named."""
    s = compile_synthetic(tmp_path, "llama", QuantScheme("uniform", 4, 32), target="rpi5")
    problems = android_problems(read_elf(Artifact.open(s.out).library("model")), BIONIC)
    text = "\n".join(problems)
    assert "needs libc.so.6" in text, text
    assert "GLIBC_2.17" in text, text
    assert "imports" in text and "__cxa_finalize" in text, text


# -- the forward image: the C forward pass's structs and weights in one relocatable file ------
_HEADER = [
    "relocs",
    "model",
    "x",
    "cos",
    "sin",
    "tokens",
    "prefill",
    "dim",
    "vocab",
    "ropes",
    "half",
    "data",
]


def _pointer_slots(ctype, base: int = 0):
    """Offsets of the pointer fields in a ctypes Structure / array type, nested ones included."""
    if issubclass(ctype, ctypes.Array):
        for i in range(ctype._length_):
            yield from _pointer_slots(ctype._type_, base + i * ctypes.sizeof(ctype._type_))
        return
    for name, t in ctype._fields_:
        off = base + getattr(ctype, name).offset
        if isinstance(t, type) and issubclass(t, (ctypes.Structure, ctypes.Array)):
            yield from _pointer_slots(t, off)
        elif t is ctypes.c_void_p or hasattr(t, "contents"):
            yield off


def forward_image(art: Artifact, tokens: list[int], n_prefill: int, max_ctx: int = 64) -> bytes:
    """The model's C structs (NativeForward's, built here without loading the library), every
    buffer they point to, and the tokens' embeddings and rotary tables, with each pointer turned
    into an offset into the data (tests/device/forward_image_driver.c turns them back)."""
    cfg = art.config()
    src = ArtifactSource(art)
    head = art.manifest.get("plan", {}).get("head") or names.OUTPUT
    nf = fw.NativeForward(None, cfg, src.weight, head, max_ctx)
    ids = np.asarray(tokens)
    x = np.ascontiguousarray(src.embedding(ids).astype(np.float32) * np.float32(cfg.embed_scale))
    cos, sin = (np.ascontiguousarray(t, np.float32) for t in rope.tables(cfg, np.arange(len(ids))))
    # (address, bytes, pointer slots) of every region
    regions = [(ctypes.addressof(nf.model), ctypes.string_at(ctypes.addressof(nf.model),
                ctypes.sizeof(nf.model)), list(_pointer_slots(type(nf.model))))]  # fmt: skip
    regions.append((ctypes.addressof(nf._layers), ctypes.string_at(ctypes.addressof(nf._layers),
                    ctypes.sizeof(nf._layers)), list(_pointer_slots(type(nf._layers)))))  # fmt: skip
    seen = set()
    for a in [*nf._keep, nf.k_cache, nf.v_cache, x, cos, sin]:
        if a.ctypes.data not in seen:
            seen.add(a.ctypes.data)
            regions.append((a.ctypes.data, a.tobytes(), []))
    offsets, pos = [], 0
    for _addr, data, _slots in regions:
        offsets.append(pos)
        pos += (len(data) + 63) // 64 * 64
    blob = bytearray(pos)
    relocs = []

    def image_offset(p: int) -> int:
        for (addr, data, _), off in zip(regions, offsets):
            if addr <= p < addr + len(data):
                return off + p - addr
        raise AssertionError(f"pointer {p:#x} outside every region")

    for (_addr, data, slots), off in zip(regions, offsets):
        blob[off : off + len(data)] = data
        for s in slots:
            (p,) = struct.unpack_from("<Q", blob, off + s)
            if p:
                struct.pack_into("<Q", blob, off + s, image_offset(p))
                relocs.append(off + s)
    fields = {
        "relocs": len(relocs), "model": offsets[0], "x": image_offset(x.ctypes.data),
        "cos": image_offset(cos.ctypes.data), "sin": image_offset(sin.ctypes.data),
        "tokens": len(ids), "prefill": n_prefill, "dim": cfg.dim, "vocab": nf.model.head.m,
        "ropes": cos.shape[0], "half": cos.shape[2],
    }  # fmt: skip
    head_bytes = 8 + 8 * len(_HEADER) + 8 * len(relocs)
    fields["data"] = (head_bytes + 63) // 64 * 64
    out = bytearray(b"EDGIMG01")
    out += struct.pack(f"<{len(_HEADER)}Q", *(fields[k] for k in _HEADER))
    out += struct.pack(f"<{len(relocs)}Q", *relocs)
    out += bytes(fields["data"] - len(out))
    return bytes(out + blob)


def build_musl_driver(root: Path, out: Path) -> None:
    """The driver, cross-compiled here against the device's musl (Debian's musl-dev arm64)."""
    musl = root / "usr" / "lib" / "aarch64-linux-musl"
    gcc_inc = subprocess.run(["aarch64-linux-gnu-gcc", "-print-file-name=include"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    subprocess.run(
        ["aarch64-linux-gnu-gcc", "-O2", "-nostdinc", "-isystem",
         str(root / "usr" / "include" / "aarch64-linux-musl"), "-isystem", gcc_inc, "-nostdlib",
         "-Wl,-dynamic-linker,/lib/ld-musl-aarch64.so.1", "-o", str(out), str(musl / "crt1.o"),
         str(musl / "crti.o"), str(HERE / "forward_image_driver.c"), f"-L{musl}", "-lc", "-lgcc",
         str(musl / "crtn.o")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    info = read_elf(out)
    assert info.needed == ["libc.so"], info.needed  # musl's: glibc is not in the process


@pytest.fixture(scope="module")
def musl_run(android_art, tmp_path_factory):
    """Runs the musl driver on the android library in the emulated device, per qemu CPU model:
    cpu -> (logits, stdout)."""
    root = ensure_root()
    ref = ReferenceEngine(reference_model(android_art), max_ctx=64)
    prompt_ids = ref.tokenizer.encode(PROMPT)
    from edgert.runtime.generate import Sampler, generate

    want = generate(ref, prompt=PROMPT, n_predict=N_PREDICT, sampler=Sampler(temp=0),
                    stop_at_eos=False).tokens  # fmt: skip
    tokens = prompt_ids + want[:-1]  # teacher-forced: position i's logits give token i + 1
    d = root / "tmp" / "android-lib"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    shutil.copy(android_art.library("model"), d / "model.so")
    (d / "model.img").write_bytes(forward_image(android_art, tokens, len(prompt_ids)))
    build_musl_driver(root, d / "driver")
    runs = {}
    for cpu in CPUS:
        r = _chroot(root, ["/tmp/android-lib/driver", "/tmp/android-lib/model.so",
                           "/tmp/android-lib/model.img", f"/tmp/android-lib/{cpu}.bin", "2"],
                    env={"QEMU_CPU": cpu})  # fmt: skip
        logits = np.fromfile(d / f"{cpu}.bin", np.float32).reshape(len(tokens), -1)
        runs[cpu] = (logits, r.stdout)
    return ref, prompt_ids, want, runs


def test_musl_load_gives_the_host_greedy_tokens(musl_run):
    ref, prompt_ids, want, runs = musl_run
    logits, _ = runs["cortex-a76"]
    got = [int(t) for t in logits[len(prompt_ids) - 1 :].argmax(-1)]
    assert len(got) == N_PREDICT
    # the kernels' error may only flip a step the reference decides by less than it
    greedy_divergence(ref, ref.tokenizer, PROMPT, got, want)
    assert sum(g != w for g, w in zip(got, want)) <= 1, (got, want)


@pytest.mark.parametrize("cpu", list(CPUS))
def test_one_artifact_on_every_feature_level(musl_run, cpu):
    _, _, _, runs = musl_run
    logits, out = runs[cpu]
    assert f"i8 {CPUS[cpu]}\nok" in out, out
    # integer sums are exact and the epilogue is shared: every level gives the same bits
    assert np.array_equal(logits, runs["cortex-a53"][0])


def test_rpi5_artifact_on_cortex_a53_is_refused_in_one_line(tmp_path):
    root = ensure_root()
    s = compile_synthetic(tmp_path, "llama", QuantScheme("uniform", 4, 32), target="rpi5")
    dst = root / "tmp" / "rpi5-on-a53.edgert"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(s.out, dst)
    script = """
import json, sys
from edgert.errors import EdgertError
from edgert.runtime.open import open_artifact_engine
from edgert.runtime.kernels import check_cpu
import ctypes
out = {}
try:
    open_artifact_engine("/tmp/rpi5-on-a53.edgert", max_ctx=32)
except EdgertError as e:
    out["open"] = str(e)
# the library's own check, whatever the manifest says (one edited, or from an older edgert)
try:
    check_cpu(ctypes.CDLL("/tmp/rpi5-on-a53.edgert/lib/model.so"), "model.so")
except EdgertError as e:
    out["library"] = str(e)
print(json.dumps(out))
"""
    out = json.loads(run_python(root, script, env={"QEMU_CPU": "cortex-a53"}).splitlines()[-1])
    for key in ("open", "library"):
        assert key in out, out
        msg = out[key]
        assert "\n" not in msg and "asimddp (dot product)" in msg, msg
        assert "illegal instruction" in msg, msg
