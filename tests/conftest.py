import contextlib
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # tools/ modules (synthetic model maker) are importable
sys.path.insert(0, str(ROOT / "tests" / "unit"))  # shared model builders (test_reference_archs)

# progress bars off in tests
os.environ.setdefault("EDGERT_NO_PROGRESS", "1")

#: a test's setup, call or teardown running longer than this many seconds is hung: the stacks of
#: every thread are printed and that phase fails, so one stuck test costs minutes, not the run
HANG_S = float(os.environ.get("EDGERT_TEST_HANG_S", "1200"))


@contextlib.contextmanager
def alarm_after(seconds: float, handler):
    """``handler(signum, frame)`` runs (in the main thread) if the block is still running after
    ``seconds``; the previous SIGALRM handler comes back after it."""
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Hung(Exception):
    pass


class HangGuard:
    """SIGALRM around each phase of each test (a test that sets its own alarm, as the fuzz
    tests do, has no guard for the rest of that phase)."""

    @staticmethod
    def _alarm(signum, frame):
        import faulthandler

        faulthandler.dump_traceback(all_threads=True)
        raise Hung(f"still running after {HANG_S:.0f} s (EDGERT_TEST_HANG_S): hung; the "
                   "stacks of every thread are printed above")  # fmt: skip

    def _guard(self):
        return alarm_after(HANG_S, self._alarm)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        with self._guard():
            yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        with self._guard():
            yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item, nextitem):
        with self._guard():
            yield


def pytest_configure(config):
    config.pluginmanager.register(HangGuard(), "edgert-hang-guard")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M GGUF (pulled into the cache on first use, then verified)."""
    from edgert.device.hub import pull

    return pull("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    from edgert.compiler.frontends import load_model

    m = load_model(smollm2_path)
    m.materialize(progress=False)
    return m


@pytest.fixture(scope="session")
def smollm2_q4(smollm2_path, tmp_path_factory) -> Path:
    """SmolLM2-135M compiled for this machine (the host target) at 4 bits, uniform, group 32.
    Rounded to nearest: the compiled forward pass is what its tests check, not calibration, and
    rounding needs no statistics; the compiler's quality check reads tests/data's license text
    rather than writing text with the model first."""
    from edgert.compiler.compile import compile_model
    from edgert.compiler.quant.scheme import QuantScheme

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-q4.edgert"
    compile_model(model=smollm2_path, target="host", out=out, scheme=QuantScheme("uniform", 4, 32),
                  quant_method="rtn", calib=str(ROOT / "tests" / "data" / "gpl-3.0.txt"))  # fmt: skip
    return out


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marks
def pytest_collection_modifyitems(items):
    # the tests on the real SmolLM2 are the `slow` ones: what needs its file downloads it on
    # first use and runs a 135M-parameter model
    for item in items:
        if "smollm2_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def need_root_and_cgroup_v1(*controllers: str) -> None:
    """Skip the calling test, saying what is missing, unless this process is root and each
    cgroup v1 controller in ``controllers`` is mounted (``blkio`` with read throttling)."""
    why = None if os.geteuid() == 0 else "this process is not root"
    for c in controllers:
        root = Path("/sys/fs/cgroup") / c
        if why is None and not (root / "cgroup.procs").exists():
            why = f"the cgroup v1 {c} controller is not mounted at {root}"
        if why is None and c == "blkio" and not (root / "blkio.throttle.read_bps_device").exists():
            why = f"{root} has no read throttling (blkio.throttle.*)"
    if why:
        pytest.skip(f"needs root and cgroup v1: {why}")


@pytest.fixture
def device_emulation():
    """For tests that run under a device's DRAM and flash emulated here (edgert.emulation.limits:
    cgroup v1 memory and blkio groups, the page cache dropped): skipped where that cannot run."""
    need_root_and_cgroup_v1("memory", "blkio")


def pytest_runtest_setup(item):
    # the device tier chroots into an arm64 root and mounts /proc and /dev there
    if item.get_closest_marker("device"):
        need_root_and_cgroup_v1()


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


#: what a process under --dram-budget may hold beyond its baseline (Python, numpy and the runtime
#: imported) and its plan: the tokenizer (30 MiB for SmolLM2's vocabulary), the library, thread
#: stacks, allocator slack; the streaming, sliding-window and soak tests hold peak RSS to it
FIXED_OVERHEAD = 64 << 20

#: shapes of the small synthetic models the compiler and device tiers compile
SMALL_MODEL = dict(dim=128, ffn=256, heads=4, kv_heads=2, vocab=512)


def compile_synthetic(
    out_dir: Path, arch: str, scheme, *, target: str = "host", layers: int | None = None, **kw
):
    """A small random-weight model of ``arch`` (``layers`` deep; the generator's default if
    None) compiled for ``target``; returns the summary."""
    from edgert.compiler.compile import compile_model
    from make_synthetic_gguf import make_synthetic_gguf

    shape = {**SMALL_MODEL, **({"layers": layers} if layers else {})}
    g = make_synthetic_gguf(
        out=out_dir / f"{arch}.gguf", arch=arch, qtype="F32", progress=False, **shape
    )
    return compile_model(
        model=g, target=target, out=out_dir / f"{arch}.edgert", scheme=scheme, **kw
    )


# -- ONNX models (compiler and device tiers) ---------------------------------------------------
#: max |edgert - onnxruntime| / max(1, max |onnxruntime|): float32 on both sides, same graph
F32_TOL = 1e-5
#: NMSE of int8 weight-only outputs against the float32 model (per-channel symmetric int8)
INT8_NMSE = 1e-3
#: onnxruntime's QDQ models: outputs are quantized; a value may round to the neighbouring
#: level when float order differs, so the bound is this many output quantization steps
QDQ_STEPS = 1


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref)) / max(1.0, np.max(np.abs(ref))))


def nmse(got: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.mean((got - ref) ** 2) / np.mean(ref**2))


def ort_run(model, feeds: dict, *, optimize: bool = True) -> list[np.ndarray]:
    """onnxruntime's outputs. ``optimize=False`` keeps its graph as written: with optimizations
    on, it turns DequantizeLinear + MatMul into an integer kernel that also quantizes the
    activations, which is not the computation the graph states."""
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def feeds_for(name: str, rng) -> dict:
    """Inputs for each test model, at the shapes in SHAPES."""
    from make_onnx_models import causal_mask, digits_sample

    return {
        "convnet": lambda: {"image": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)},
        "mlp": lambda: {"x": rng.standard_normal((3, 64)).astype(np.float32)},
        "attention": lambda: {
            "x": rng.standard_normal((1, 16, 64)).astype(np.float32),
            "mask": causal_mask(16),
        },
        "sklearn_mlp": lambda: {"X": digits_sample(5)},
        "convnet_qdq": lambda: {"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)},
    }[name]()


#: model -> --input-shape values it is compiled with
SHAPES = {
    "convnet": {"image": (2, 3, 32, 32)},
    "mlp": {"x": (3, 64)},
    "attention": {},
    "sklearn_mlp": {"X": (5, 64)},
    "convnet_qdq": {},
}


def make_test_onnx_models(d: Path) -> dict[str, Path]:
    """The ONNX test models as files in ``d``: built with onnx.helper, exported by skl2onnx, and
    quantized by onnxruntime's static (QDQ) and dynamic (integer ops) quantizers."""
    import onnx
    from make_onnx_models import attention, convnet, mlp, ort_quantized, sklearn_mlp

    paths = {}
    for name, m in [
        ("convnet", convnet()),
        ("mlp", mlp()),
        ("attention", attention()),
        ("sklearn_mlp", sklearn_mlp()),
    ]:
        paths[name] = d / f"{name}.onnx"
        onnx.save(m, paths[name])
    one = convnet()
    one.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    rng = np.random.default_rng(5)
    calib = [{"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    paths["convnet_qdq"] = ort_quantized(one, d / "convnet_qdq.onnx", static=True, calib=calib)
    paths["convnet_dyn"] = ort_quantized(one, d / "convnet_dyn.onnx", static=False)
    return paths


def greedy_tokens(engine, prompts: list[str], n: int) -> list[list[int]]:
    """``n`` greedy tokens after each prompt (the engine reset before each; no stop at EOS)."""
    from edgert.runtime.generate import Sampler, generate

    out = []
    for p in prompts:
        engine.reset()
        r = generate(engine, prompt=p, n_predict=n, sampler=Sampler(temp=0), stop_at_eos=False)
        out.append(r.tokens)
    return out


#: the C engine's logit error relative to the largest logit on the synthetic artifacts: prompts
#: of 8 tokens and more go through the int8 prefill path (kernels_neon/i8_gemm.c: activations
#: rounded to int8 per weight group, as llama.cpp rounds them), up to 1.7e-2 of the largest
#: logit (Gemma 3's six layers; the LUT kernels' 16-bit tables alone: 5.6e-4)
PREFILL_TOL = 2.5e-2
#: a greedy step whose top two reference logits are closer than the kernels' error may go
#: either way
NEAR_TIE = PREFILL_TOL


def greedy_divergence(ref, tokenizer, prompt: str, got: list[int], want: list[int]) -> bool:
    """Whether greedy tokens ``got`` part from the reference's ``want`` (asserting that they
    part only after a step the reference decides by less than the kernels' error, or, in a
    mixture of experts, after a token whose experts its router chose that narrowly)."""
    if got == want:
        return False
    i = next(j for j, (x, y) in enumerate(zip(got, want)) if x != y)
    ref.reset()
    ids = tokenizer.encode(prompt) + want[:i]
    logits = ref.forward(ids, last_only=True)
    top2 = np.sort(logits)[-2:]
    if not top2[1] - top2[0] < NEAR_TIE * np.abs(logits).max():
        assert routing_near_tie(ref, ids), (prompt, i, top2)
    return True


def routing_near_tie(ref, tokens: list[int]) -> bool:
    """Whether the reference's routers, on some token of ``tokens`` and some layer, rank their
    last chosen expert above the first one left out by less than the kernels' error."""
    from edgert.format import names

    c = ref.cfg
    if not c.is_moe:
        return False
    routers = {names.router(i) for i in range(c.n_layers)}
    close = []
    mm = ref._mm

    def recording(x, name):
        y = mm(x, name)
        if name in routers:
            s = np.sort(y, axis=-1)
            k = c.n_experts_used
            close.append(bool(((s[:, -k] - s[:, -k - 1]) < NEAR_TIE * np.abs(y).max(-1)).any()))
        return y

    ref._mm = recording
    try:
        ref.reset()
        ref.forward(tokens)
    finally:
        del ref._mm
    return any(close)


def bundle_weights(art) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, the (up (ffn, dim), down (dim, ffn)) an artifact's neuron bundles hold, in
    neuron order (bundles are stored hot-first)."""
    from edgert.format import names
    from edgert.format.bundles import SparseSpec, unpack_bundles

    spec = SparseSpec.of(art)
    ix = art.read_tensor(names.BUNDLE_INDEX)
    return [
        unpack_bundles(art.read_tensor(names.bundles(i))["data"], spec.fmt, ix["order"][i],
                       ix["down_scale"][i], ix["down_zero"][i])
        for i in range(art.config().n_layers)
    ]  # fmt: skip


def sparse_reference(model, thresholds, weights, **kw):
    """The numpy forward on ``model`` with each FFN's up/down from ``weights``
    (:func:`bundle_weights`) and the neurons whose |act(gate x)| is at most ``thresholds[i]``
    dropped (-1: every neuron kept)."""
    from edgert.format import names
    from edgert.runtime.reference import ACTIVATION, ReferenceEngine

    class SparseReference(ReferenceEngine):
        def _ffn(self, i, x):
            g = ACTIVATION[self.cfg.activation](self._mm(x, names.weight(i, "ffn_gate")))
            up, down = weights[i]
            return ((g * (np.abs(g) > thresholds[i])) * (x @ up.T)) @ down.T

    return SparseReference(model, **kw)


def reference_tokens(art_path, prompt: str, n: int = 16) -> list[int]:
    """Greedy tokens of the reference forward on an artifact's own (dequantized) weights."""
    from edgert.format.artifact import Artifact
    from edgert.runtime.generate import Sampler, generate
    from edgert.runtime.reference import ReferenceEngine
    from edgert.runtime.weights import reference_model

    ref = ReferenceEngine(reference_model(Artifact.open(art_path)), max_ctx=64)
    return generate(ref, prompt=prompt, n_predict=n, sampler=Sampler(temp=0)).tokens


# -- the emulated arm64 device (device tier) ------------------------------------------------------
def trust_emulator(tmp_path_factory, st: dict, name: str):
    """``(home, saved)``: a HOME for CLI subprocesses whose known_hosts trusts the running
    emulator ``st``, which in-process clients trust too from now (``saved``: the known_hosts
    path to put back into edgert.device.transport_ssh.KNOWN_HOSTS afterwards)."""
    from edgert.device import transport_ssh

    home = tmp_path_factory.mktemp(name)
    kh = home / ".config" / "edgert" / "known_hosts"
    kh.parent.mkdir(parents=True)
    kh.write_text(st["host_key"] + "\n")
    saved = transport_ssh.KNOWN_HOSTS
    transport_ssh.KNOWN_HOSTS = kh
    return home, saved


@pytest.fixture(scope="session")
def emulated_device(tmp_path_factory):
    """``(url, env)`` of the running emulator (`edgert emulator up`), with edgert's runtime
    installed there, and a HOME for CLI subprocesses whose known_hosts trusts it (in-process
    clients trust it too, without touching ~/.config). Stopped at the end of the session."""
    from edgert.device import transport_ssh
    from edgert.device.deploy import ensure_runtime
    from edgert.emulation import arm64 as emulator
    from edgert.settings import cache_dir

    st = emulator.up(target="rpi5")
    home, saved = trust_emulator(tmp_path_factory, st, "home")
    t = transport_ssh.SSHTransport(st["url"])
    try:
        ensure_runtime(t, progress=False)
    finally:
        t.close()
    yield st["url"], {"HOME": str(home), "EDGERT_CACHE": str(cache_dir())}
    transport_ssh.KNOWN_HOSTS = saved
    emulator.down()
