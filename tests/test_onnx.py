"""ONNX controllers (`backup onnx`, `policy onnx`): the graph read with `onnx` and mapped onto a
float64 chain of affine layers and per-layer activations, compared with a plain numpy float64
evaluation of the graph (1e-12) and with onnxruntime where it runs the file (1e-6, float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from scpo_spec.dtype import DTYPE
from scpo_spec.language.source import Span
from scpo_spec.policies import onnx_graph
from scpo_spec.policies.onnx_graph import OnnxFileError, load_onnx, read_onnx
from tests.numerics import assert_close_across_paths
from tests.onnx_graphs import (arch_acc, build, conv_flatten, f32, matmul_add, numpy_eval,
                               tora_mixed)

SAMPLES = 16


def ours(data: bytes, xs: np.ndarray) -> np.ndarray:
    net = read_onnx(data, "backup", "c.onnx")
    with torch.no_grad():
        return net.module()(torch.as_tensor(xs, dtype=DTYPE)).numpy()


def oracle(data: bytes, xs: np.ndarray) -> np.ndarray:
    return np.stack([numpy_eval(data, x) for x in xs])


def runtime(data: bytes, xs: np.ndarray, input_shape) -> np.ndarray:
    """onnxruntime on each sample (float32), or a skip saying why it refuses the file."""
    ort = pytest.importorskip("onnxruntime")
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return np.stack([session.run(None, {"x": x.astype(np.float32).reshape(input_shape)})[0]
                         .reshape(-1) for x in xs]).astype(np.float64)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own refusal, e.g. Gemm on rank 4
        pytest.skip(f"onnxruntime refuses this file: {str(e).splitlines()[0][:160]}")


def check(data: bytes, n: int, input_shape, rng, scale: float = 2.0) -> np.ndarray:
    xs = rng.uniform(-scale, scale, size=(SAMPLES, n))
    got = ours(data, xs)
    assert_close_across_paths(got, oracle(data, xs), "ours vs the numpy evaluation")
    return xs, got


# ---- the ARCH-COMP shapes ----
@pytest.mark.parametrize("constants", [False, True], ids=["initializers", "Constant-nodes"])
def test_opset6_sub_gemm_relu_on_a_rank4_input(constants):
    rng = np.random.default_rng(1)
    data = arch_acc(rng, opset=6, constants=constants)
    net = read_onnx(data, "backup", "acc.onnx")
    assert net.shapes == [(20, 5), (20, 20), (1, 20)]  # Sub and Div folded into the first layer
    assert net.activations == ["relu", "relu", "identity"]
    xs, got = check(data, 5, [1, 1, 1, 5], rng)
    assert np.ptp(got) > 0.1  # not a constant network: the comparison means something
    expected = runtime(data, xs, [1, 1, 1, 5])  # onnxruntime refuses Gemm on rank 4: skipped
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_opset7_same_network_on_a_row_runs_in_onnxruntime_too():
    rng = np.random.default_rng(2)
    data = arch_acc(rng, opset=7)
    import onnx
    model = onnx.load_model_from_string(data)
    del model.graph.input[0].type.tensor_type.shape.dim[1:3]
    data = model.SerializeToString()
    xs, got = check(data, 5, [1, 5], rng)
    np.testing.assert_allclose(got, runtime(data, xs, [1, 5]), rtol=1e-6, atol=1e-6)


def test_opset8_conv_1x1_and_flatten():
    rng = np.random.default_rng(3)
    data = conv_flatten(rng, opset=8)
    net = read_onnx(data, "backup", "c.onnx")
    assert net.shapes == [(16, 4), (2, 16)] and net.activations == ["tanh", "identity"]
    xs, got = check(data, 4, [1, 4, 1, 1], rng)
    np.testing.assert_allclose(got, runtime(data, xs, [1, 4, 1, 1]), rtol=1e-6, atol=1e-6)


def test_mixed_relu_tanh_with_an_output_scale():
    rng = np.random.default_rng(4)
    data = tora_mixed(rng, opset=9, scale=11.0)
    net = read_onnx(data, "backup", "tora.onnx")
    # the scale after the last tanh is a layer of its own: 11·tanh(…) is not affine in h
    assert net.activations == ["relu", "relu", "tanh", "identity"]
    assert net.shapes[-1] == (1, 1) and net.layers[-1][0][0, 0] == 11.0
    xs, got = check(data, 4, [1, 4], rng)
    assert np.abs(got).max() > 1.0  # the scale is applied (tanh alone stays below 1)
    np.testing.assert_allclose(got, runtime(data, xs, [1, 4]), rtol=1e-6, atol=1e-6)


ACTIVATIONS = [("Relu", {}, "relu"), ("Tanh", {}, "tanh"), ("Sigmoid", {}, "sigmoid"),
               ("Softplus", {}, "softplus"), ("Elu", {}, "elu"),
               ("Elu", {"alpha": 0.7}, f"elu:{float(np.float32(0.7))!r}"),  # the file's float32
               ("LeakyRelu", {}, "leaky_relu:0.01"),
               ("LeakyRelu", {"alpha": 0.2}, f"leaky_relu:{float(np.float32(0.2))!r}")]


@pytest.mark.parametrize("op,attrs,name", ACTIVATIONS,
                         ids=[f"{a[0]}{a[1].get('alpha', '')}" for a in ACTIVATIONS])
def test_each_activation_matmul_add(op, attrs, name):
    rng = np.random.default_rng(5)
    data = matmul_add(rng, op, attrs=attrs, last=op if op != "Elu" else "Sigmoid")
    net = read_onnx(data, "policy", "p.onnx")
    assert net.activations == [name, name if op != "Elu" else "sigmoid"]
    xs, got = check(data, 3, [1, 3], rng)
    np.testing.assert_allclose(got, runtime(data, xs, [1, 3]), rtol=1e-6, atol=1e-6)


def test_identity_nodes_and_reshapes_are_transparent():
    rng = np.random.default_rng(6)
    inits = {"W": f32(rng, 3, 4), "b": f32(rng, 4), "shape": np.array([1, 4], np.int64)}
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Unsqueeze", ["i"], ["u"], axes=[0]),
             helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
             helper.make_node("MatMul", ["s", "W"], ["a"]),
             helper.make_node("Add", ["a", "b"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    data = build(nodes, inits, [1, 3], [1, 4], 11)
    net = read_onnx(data, "policy", "p.onnx")
    assert net.shapes == [(4, 3)] and net.activations == ["relu"]  # activation after the last
    xs, got = check(data, 3, [1, 3], rng)
    np.testing.assert_allclose(got, runtime(data, xs, [1, 3]), rtol=1e-6, atol=1e-6)


def test_theta_is_the_families_layout():
    rng = np.random.default_rng(7)
    net = read_onnx(tora_mixed(rng), "policy", "p.onnx")
    theta = net.theta()
    assert theta.size == 4 * 20 + 20 + 20 * 20 + 20 + 20 + 1 + 1 + 1
    W1, b1 = net.layers[0]
    np.testing.assert_array_equal(theta[:80], W1.reshape(-1))
    np.testing.assert_array_equal(theta[80:100], b1)


# ---- refusals ----
def _with(op_node, inits=None, opset=13) -> bytes:
    rng = np.random.default_rng(8)
    inits = {"W": f32(rng, 3, 3), **(inits or {})}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), op_node]
    return build(nodes, inits, [1, 3], [1, 3], opset)


@pytest.mark.parametrize("node", [
    helper.make_node("Softmax", ["h"], ["y"], name="probabilities"),
    helper.make_node("LSTM", ["h", "W", "W"], ["y"], name="memory", hidden_size=3)],
    ids=["Softmax", "LSTM"])
def test_an_unsupported_operator_is_a_located_error_naming_it(tmp_path, node):
    path = tmp_path / "c.onnx"
    path.write_bytes(_with(node))
    span = Span(file="spec.scpo", line=4, column=20, end_line=4, end_column=29)
    with pytest.raises(OnnxFileError) as err:
        load_onnx(path, "backup", "c.onnx", span)
    e = err.value
    assert e.span == span and str(e).startswith("spec.scpo:4:20")
    assert node.op_type in e.message and f"node 1 '{node.name}'" in e.message
    assert "Gemm" in e.message  # the supported set is named


def test_a_skip_connection_is_refused():
    rng = np.random.default_rng(9)
    inits = {"W": f32(rng, 3, 3)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["y"])]
    with pytest.raises(OnnxFileError, match="not a chain"):
        read_onnx(build(nodes, inits, [1, 3], [1, 3], 13), "policy", "p.onnx")


def test_a_conv_that_is_not_dense_is_refused():
    rng = np.random.default_rng(10)
    inits = {"W": f32(rng, 2, 4, 3, 3)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3])]
    with pytest.raises(OnnxFileError, match=r"kernel \[3, 3\].*only a 1×1 Conv"):
        read_onnx(build(nodes, inits, [1, 4, 3, 3], [1, 2, 1, 1], 11), "policy", "p.onnx")


def test_a_product_of_two_signals_is_refused():
    nodes = [helper.make_node("Mul", ["x", "x"], ["y"])]
    with pytest.raises(OnnxFileError, match="two values computed from the input"):
        read_onnx(build(nodes, {}, [1, 3], [1, 3], 13), "policy", "p.onnx")


@pytest.mark.parametrize("mangle", [lambda d: d[: len(d) // 2], lambda d: b"\x00garbage" * 9,
                                    lambda d: b""],
                         ids=["truncated", "garbage", "empty"])
def test_a_corrupt_file_is_a_clear_error(tmp_path, mangle):
    path = tmp_path / "c.onnx"
    path.write_bytes(mangle(arch_acc(np.random.default_rng(11))))
    with pytest.raises(OnnxFileError) as err:
        load_onnx(path, "backup", "c.onnx", None)
    assert err.value.message.startswith("backup file 'c.onnx' is not an ONNX model")


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(OnnxFileError, match="not found"):
        load_onnx(tmp_path / "nope.onnx", "policy", "nope.onnx", None)


def test_resource_limits(tmp_path, monkeypatch):
    data = arch_acc(np.random.default_rng(12))
    path = tmp_path / "c.onnx"
    path.write_bytes(data)
    monkeypatch.setattr(onnx_graph, "MAX_FILE_BYTES", len(data) - 1)
    with pytest.raises(OnnxFileError, match="bytes .at most"):
        load_onnx(path, "backup", "c.onnx", None)
    with pytest.raises(OnnxFileError, match="bytes .at most"):
        read_onnx(data, "backup", "c.onnx")
    monkeypatch.setattr(onnx_graph, "MAX_FILE_BYTES", 1 << 30)
    monkeypatch.setattr(onnx_graph, "MAX_NODES", 3)
    with pytest.raises(OnnxFileError, match="7 nodes .at most 3"):
        read_onnx(data, "backup", "c.onnx")
