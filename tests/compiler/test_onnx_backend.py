"""The ONNX backend test suite (``onnx.backend.test``, shipped with the ``onnx`` package) against
edgert as an ONNX backend: every case edgert passed on the recorded sweep
(``onnx_backend_pass.txt``, written by ``tools/onnx_backend_suite.py --pass-list``) is run by
onnx's own runner, ``BackendTest``, which compiles the case's graph for the host, runs it on the
case's inputs and compares with the case's outputs at the case's tolerances. Cases edgert cannot
compile are refused with one line naming the operator, never with a traceback and never with
wrong numbers."""

import json
import subprocess
import sys
import unittest
from pathlib import Path

import numpy as np
import onnx
import onnx.backend.test
import pytest
from edgert.compiler.onnx.backend import EdgertBackend, classify, load_case

from edgert.errors import EdgertError

REPO = Path(__file__).resolve().parents[2]
PASS_LIST = Path(__file__).with_name("onnx_backend_pass.txt")


def _recorded():
    """(onnx version the list was made with, case names) of ``onnx_backend_pass.txt``."""
    text = PASS_LIST.read_text().splitlines()
    version = text[0].split("(onnx ")[1].split(")")[0]
    names = [n for n in text if n and not n.startswith("#") and not n.startswith("light_")]
    return version, names


RECORDED_ONNX, PASSING = _recorded()


@pytest.fixture(scope="module")
def runner_tests():
    """name -> a ``unittest.TestCase`` of onnx's runner for each recorded case, on the CPU."""
    bt = onnx.backend.test.BackendTest(EdgertBackend, __name__)
    for name in PASSING:
        bt.include(rf"^{name}_cpu$")
    out = {}
    loader = unittest.TestLoader()
    for cls in bt.test_cases.values():
        for method in loader.getTestCaseNames(cls):
            if not getattr(getattr(cls, method), "__unittest_skip__", False):
                out[method.removesuffix("_cpu")] = cls(method)
    return out


def test_pass_list_matches_installed_suite(runner_tests):
    """The list is of this onnx release's cases: every name is one the runner knows (an onnx
    upgrade renames and adds cases; the list is then remade with the tool)."""
    assert onnx.__version__ == RECORDED_ONNX, (
        f"the pass list is for onnx {RECORDED_ONNX}, this is {onnx.__version__}: remake it with "
        "tools/onnx_backend_suite.py --pass-list tests/compiler/onnx_backend_pass.txt"
    )
    assert len(PASSING) > 800
    assert sorted(runner_tests) == sorted(PASSING)


@pytest.mark.parametrize("name", PASSING)
def test_backend_suite_case(runner_tests, name):
    """One case through onnx's own runner (``debug()`` raises what the runner asserts)."""
    runner_tests[name].debug()


def _case(name):
    from onnx.backend.test import loader

    kinds = [loader.load_node_model_tests()] + [
        loader.load_model_tests(kind=k) for k in ("simple", "pytorch-converted")
    ]
    return next(c for cases in kinds for c in cases if c.name == name)


@pytest.mark.parametrize(
    "name, names",
    [
        # TVM's importer would compute these wrongly (each gave outputs differing from the case's)
        ("test_isinf_negative", "IsInf (node #0): detect_negative"),
        ("test_batchnorm_epsilon_training_mode", "BatchNormalization (node #0): training_mode"),
        ("test_convtranspose_output_shape", "ConvTranspose (node #0): its output_shape"),
        ("test_dropout_default_mask", "Dropout (node #0): its mask output is not computed"),
        ("test_split_to_sequence_nokeepdims", "graph output seq: a sequence"),
        # ... or fail to build (internal errors from TVM's build)
        ("test_nonmaxsuppression_single_box", "NonMaxSuppression (node #0)"),
        ("test_pow_types_int64_int64", "Pow (node #0): an integer base (INT64)"),
        ("test_cast_FLOAT_to_FLOAT4E2M1", "element type FLOAT4E2M1"),
        ("test_reduce_max_bool_inputs", "ReduceMax (node #0): boolean inputs do not build"),
        ("test_reduce_min_empty_set", "ReduceMin (node #0): an empty input"),
        ("test_split_zero_size_splits_opset18", "Split (node #0): parts of size 0"),
        ("test_top_k_uint64", "TopK (node #0): uint64 inputs"),
        # Resize: TVM maps output to input pixels by the sizes' ratio, in float32
        ("test_resize_downsample_scales_linear", "Resize (node #0): scales that do not give"),
        ("test_resize_upsample_sizes_nearest", "Resize (node #0): output pixels halfway"),
        ("test_resize_downsample_sizes_linear_antialias", "Resize (node #0): antialias"),
        # ... or refuse while importing: the node is named
        ("test_resize_downsample_sizes_nearest_not_larger", "at Resize (node #0)"),
        # operators TVM's importer does not know at all
        ("test_lstm_defaults", "operators edgert cannot compile: LSTM (node #0)"),
    ],
)
def test_refusals_name_the_node(name, names):
    r = classify(EdgertBackend, _case(name), (EdgertError,))
    assert r.outcome == "refused", r
    assert names in r.detail and "\n" not in r.detail


def test_inputs_setting_axes_pinned_per_value():
    """A reduction's axes fed at run time: compiled with the axes pinned to the value the run
    feeds (edgert compiles them as constants), and again for another value."""
    model, _ = load_case(_case("test_reduce_sum_keepdims_random"))
    rep = EdgertBackend.prepare(model)
    x = np.random.default_rng(1).standard_normal((3, 2, 2)).astype(np.float32)
    for axes in ([1], [0], [1]):
        (y,) = rep.run([x, np.array(axes, np.int64)])
        np.testing.assert_allclose(y, x.sum(axis=tuple(axes), keepdims=True), rtol=1e-6)
    assert len(rep._compiled) == 2


@pytest.mark.parametrize(
    "name, why",
    [
        # the node's operator is defined by an ONNX function: compiled as that function's nodes
        ("test_layer_normalization_2d_axis0", "TVM leaves out its Mean and InvStdDev outputs"),
        ("test_attention_3d_gqa", "TVM converts Attention as com.microsoft's"),
        ("test_sce_mean", "TVM has no SoftmaxCrossEntropyLoss"),
        ("test_rotary_embedding", "TVM has no RotaryEmbedding"),
        # forms TVM refuses, rewritten
        ("test_l2normalization_axis_0", "LpNormalization as x / ReduceL2(x), 0 for a zero norm"),
        ("test_pow_types_float32_int64", "Pow with its integer exponent cast to float"),
        ("test_resize_upsample_scales_nearest_axes_2_3", "Resize with scales for every axis"),
        ("test_onehot_with_negative_axis", "OneHot: int indices, scalar depth, axis >= 0, cast"),
        # an input reaching a shape through computations: pinned
        ("test_blackmanwindow_expanded", "the window's size, through Cast, sets Range's limit"),
        # float16 computed in float32, rounded where the graph rounds
        ("test_attention_4d_fp16", "float16 softmax and dot products drift in TVM"),
        ("test_cast_FLOAT_to_FLOAT16", "the graph's own rounding is kept"),
        # a fully masked row: max over -inf is -inf (TVM's reduction starts at the lowest float)
        ("test_attention_23_boolmask_fullymasked_row_nan_robustness", "rows of -inf"),
    ],
)
def test_rewritten_cases_pass(name, why):
    assert classify(EdgertBackend, _case(name), (EdgertError,)).outcome == "pass", why


def test_function_expansion_and_float16(tmp_path):
    """What load_onnx does to such graphs: the function's nodes replace the operator's, and a
    float16 graph keeps float16 inputs and outputs around float32 arithmetic."""
    from edgert.compiler.onnx.frontend import load_onnx

    for name, gone, kept in [
        ("test_layer_normalization_2d_axis0", "LayerNormalization", "ReduceMean"),
        ("test_attention_4d_fp16", "Attention", "Softmax"),
    ]:
        model, _ = load_case(_case(name))
        onnx.save(model, tmp_path / f"{name}.onnx")
        m = load_onnx(tmp_path / f"{name}.onnx")
        assert gone not in m.ops and kept in m.ops, m.ops
    f16 = onnx.TensorProto.FLOAT16
    assert [s.dtype for s in m.inputs] == ["float16"] * 3
    assert all(o.type.tensor_type.elem_type == f16 for o in m.proto.graph.output)
    assert not any(t.data_type == f16 for t in m.proto.graph.initializer)
    casts = [n for n in m.proto.graph.node if n.op_type == "Cast"]
    assert {n.input[0] for n in casts[:3]} == {"Q", "K", "V"}


def test_legacy_prelu_slope_along_channels():
    """Before opset 7 a PRelu slope of C values applies to axis 1: onnxruntime refuses these
    cases, edgert matches their reference outputs (computed by PyTorch)."""
    case = _case("test_PReLU_2d_multiparam")
    model, _ = load_case(case)
    assert model.opset_import[0].version < 7
    assert classify(EdgertBackend, case, (EdgertError,)).outcome == "pass"


def test_suite_tool(tmp_path):
    """The sweep behind BENCHMARKS.md's table: outcomes per case for both backends, a table by
    operator, the pass list."""
    out, plist = tmp_path / "r.json", tmp_path / "pass.txt"
    r = subprocess.run(
        [sys.executable, "tools/onnx_backend_suite.py", "-k", "test_isinf", "--jobs", "2"]
        + ["--out", str(out), "--pass-list", str(plist)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {c["name"]: c for c in json.loads(out.read_text())["cases"]}
    assert set(rows) == {
        "test_isinf",
        "test_isinf_float16",
        "test_isinf_negative",
        "test_isinf_positive",
    }
    assert {n: c["edgert"] for n, c in rows.items() if c["edgert"] != "pass"} == {
        "test_isinf_negative": "refused",
        "test_isinf_positive": "refused",
    }
    assert all(c["ort"] == "pass" for c in rows.values())
    assert "| **all** | 4 | 2 | 0 | 2 | 0 | 4 |" in r.stdout
    assert "`IsInf` | 4 | 2 | 0 | 2 | 0 | 4 |" in r.stdout
    assert plist.read_text().splitlines()[2:] == ["test_isinf", "test_isinf_float16"]
