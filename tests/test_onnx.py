"""ONNX controllers (`backup onnx`, `policy onnx`): the graph read with `onnx` and mapped onto a
float64 chain of affine layers and per-layer activations, compared with a plain numpy float64
evaluation of the graph (1e-12) and with onnxruntime where it runs the file (1e-6, float32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import helper

from scpo_spec.dtype import DTYPE
from scpo_spec.language.source import Span
from scpo_spec.policies import onnx_graph
from scpo_spec.policies.onnx_graph import OnnxFileError, load_onnx, read_onnx
from tests.numerics import assert_close_across_paths
from tests.onnx_graphs import (arch_acc, build, conv_flatten, f32, matlab_conv, matmul_add,
                               numpy_eval, tora_mixed)

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


@pytest.mark.parametrize("opset", [9, 15])
def test_batch_normalization_and_dropout_as_inference_computes_them(opset):
    """torch.onnx's export of nn.BatchNorm1d and nn.Dropout in eval mode: affine, identity."""
    rng = np.random.default_rng(16)
    inits = {"W": f32(rng, 3, 5), "b": f32(rng, 5), "scale": f32(rng, 5), "B": f32(rng, 5),
             "mean": f32(rng, 5), "var": np.abs(f32(rng, 5)) + np.float32(0.1),
             "W2": f32(rng, 5, 2)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]),
             helper.make_node("Add", ["a", "b"], ["h"]),
             helper.make_node("BatchNormalization", ["h", "scale", "B", "mean", "var"], ["n"],
                              epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Dropout", ["r"], ["d"]),
             helper.make_node("MatMul", ["d", "W2"], ["y"])]
    data = build(nodes, inits, [1, 3], [1, 2], opset)
    net = read_onnx(data, "policy", "p.onnx")
    assert net.shapes == [(5, 3), (2, 5)] and net.activations == ["relu", "identity"]
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
    inits = {"W": f32(rng, 2, 4, 2, 2)}  # a 2×2 kernel sliding over a 3×3 input
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[2, 2])]
    with pytest.raises(OnnxFileError, match=r"kernel \[2, 2\] on a value of shape \[1, 4, 3, 3\]"
                       r".*only a Conv used as a dense layer"):
        read_onnx(build(nodes, inits, [1, 4, 3, 3], [1, 2, 2, 2], 11), "policy", "p.onnx")


@pytest.mark.parametrize("opset", [6, 9])
def test_a_conv_whose_kernel_covers_its_input_is_a_dense_layer(opset):
    """The MATLAB exports of ARCH-COMP (TORA, unicycle, VCAS): Conv with kernel [1, k] on a
    [1, 1, 1, k] input, then 1×1 Convs."""
    rng = np.random.default_rng(14)
    data = matlab_conv(rng, opset)
    net = read_onnx(data, "backup", "controllerTora.onnx")
    assert net.shapes == [(10, 4), (10, 10), (1, 10)]
    assert net.activations == ["relu", "relu", "identity"]
    xs, got = check(data, 4, [1, 1, 1, 4], rng)
    np.testing.assert_allclose(got, runtime(data, xs, [1, 1, 1, 4]), rtol=1e-6, atol=1e-6)


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


# ---- scpo verify: per-layer and parametrised activations are bounded soundly ----
@pytest.mark.parametrize("name,evaluated", [
    ("leaky_relu:0.2", lambda z: torch.nn.functional.leaky_relu(z, 0.2)),
    ("leaky_relu:0.01", lambda z: torch.nn.functional.leaky_relu(z, 0.01)),
    ("elu:0.5", lambda z: torch.nn.functional.elu(z, 0.5)),
    ("relu", torch.relu)])
def test_each_parametrised_relaxation_holds_the_activation(name, evaluated):
    """For z = c + r·ε: |act(z) − (c′ + λ r ε)| ≤ β (the fresh generator) on dense z over
    wide, narrow, one-sided and off-centre intervals."""
    from scpo_spec.verify.zonotope import Zono, activation as relax
    intervals = torch.tensor([[-3.0, 2.0], [-1.0, 4.0], [0.3, 0.3000001], [-8.0, -2.0],
                              [1.0, 6.0], [-0.01, 0.02], [-40.0, 40.0]], dtype=DTYPE)
    z = Zono.box(intervals[:, :1], intervals[:, 1:])
    out = relax(z, name)
    lam_r, beta = out.G[:, 0, 0], out.G[:, 1, 0]
    eps = torch.linspace(-1, 1, 20001, dtype=DTYPE)
    points = z.c + z.G[:, 0, :] * eps
    points = torch.minimum(torch.maximum(points, intervals[:, :1]), intervals[:, 1:])
    eps = (points - z.c) / z.G[:, 0, :]
    residual = evaluated(points) - (out.c + lam_r[:, None] * eps)
    assert (residual.abs() <= beta[:, None]).all(), (residual.abs().amax(1), beta)
    assert (beta < 0.6 * (intervals[:, 1] - intervals[:, 0]) + 1e-9).all()  # not vacuous


def test_relaxations_refuse_a_slope_above_one():
    from scpo_spec.verify.zonotope import relaxable
    assert relaxable("leaky_relu:0.3") and relaxable("elu:1.0") and relaxable("elu")
    assert not relaxable("leaky_relu:1.5") and not relaxable("elu:2.0")
    assert not relaxable("gelu")


def test_a_per_layer_torch_policy_is_enclosed_by_the_reach_sets(tmp_path):
    """A `policy torch` with mixed activations and one after its last layer: every sampled
    trajectory inside the reach sets (the verifier follows the per-layer activations)."""
    from torch import nn
    from scpo_spec.compile.problem import compile_spec
    from tests.test_torch_policies import save, with_policy
    from tests.test_verify import _box, _check_enclosed
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(2, 6), nn.LeakyReLU(0.2), nn.Linear(6, 6), nn.Tanh(),
                        nn.Linear(6, 1), nn.ELU(0.5))
    save(net, tmp_path / "policy.pt")
    compiled = compile_spec(with_policy(tmp_path), tmp_path)
    assert compiled.family.per_layer == ["leaky_relu:0.2", "tanh", "elu:0.5"]
    lo, hi = _box(compiled)
    reach, X = _check_enclosed(compiled, compiled.family.theta0, lo, hi, 5_000)
    U = compiled.evaluator.rollout(compiled.family.theta0[None], X[:, 0])[1][0]
    assert (U > -0.5).all()  # ELU(α = 0.5) after the last layer: the rollout applies it


# ---- the spec's `backup onnx` / `policy onnx`: check, compile, verify, train ----
LQR_DI = None


def _lqr_gain(tmp_path) -> np.ndarray:
    global LQR_DI
    if LQR_DI is None:
        from tests.test_torch_policies import lqr_gain
        LQR_DI = lqr_gain(tmp_path)
    return LQR_DI


def saturated(K: np.ndarray, limit: float = 3.5, activation: str = "Tanh",
              attrs: dict | None = None) -> bytes:
    """u = limit·act(K x / limit): the double integrator's LQR gain, saturated (opset 9)."""
    inits = {"W": (K / limit).astype(np.float32), "k": np.array([limit], np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1),
             helper.make_node(activation, ["h"], ["t"], **(attrs or {})),
             helper.make_node("Mul", ["t", "k"], ["y"])]
    return build(nodes, inits, [1, K.shape[1]], [1, K.shape[0]], 9)


def _spec(tmp_path, backup: str = 'backup onnx { file = "c.onnx" }',
          policy: str | None = None, steps: int = 3) -> Path:
    from tests.engine_specs import small_di
    text = small_di(steps=steps).replace("backup lqr { Q = diag(1, 1)  R = diag(1) }", backup)
    if policy is not None:
        text = text.replace(
            "policy mlp { hidden = [8]  activation = tanh  residual = backup  seed = 0 }", policy)
    path = tmp_path / "spec.scpo"
    path.write_text(text, encoding="utf-8")
    return path


def _cli(*args):
    from typer.testing import CliRunner
    from scpo_spec.cli import app
    return CliRunner().invoke(app, [str(a) for a in args])


def _softmax_file() -> bytes:
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1),
             helper.make_node("Softmax", ["h"], ["y"], name="probabilities")]
    return build(nodes, {"W": np.ones((1, 2), np.float32)}, [1, 2], [1, 1], 9)


@pytest.mark.parametrize("content,expected", [
    (_softmax_file(), "node 1 'probabilities' (Softmax): the operator Softmax is not supported"),
    (lambda K: saturated(np.hstack([K, K])), "takes 4 values; the spec has 2 states"),
    (lambda K: saturated(np.vstack([K, K])), "returns 2 values; the spec has 1 input"),
    (lambda K: saturated(K)[:57], "is not an ONNX model"),
    (None, "not found")], ids=["Softmax", "inputs", "outputs", "truncated", "missing"])
def test_scpo_check_locates_each_onnx_problem_at_the_file(tmp_path, content, expected):
    if content is not None:
        data = content(_lqr_gain(tmp_path)) if callable(content) else content
        (tmp_path / "c.onnx").write_bytes(data)
    spec = _spec(tmp_path)
    result = _cli("check", spec)
    assert result.exit_code == 1, result.output  # a spec error, not a crash
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    line = spec.read_text().splitlines().index('backup onnx { file = "c.onnx" }') + 1
    assert f"spec.scpo:{line}:22: error: backup file 'c.onnx'" in result.output
    assert expected in result.output


def test_an_onnx_backup_is_the_first_policy_and_verify_proves_it(tmp_path):
    K = _lqr_gain(tmp_path)
    (tmp_path / "c.onnx").write_bytes(saturated(K))
    assert _cli("check", _spec(tmp_path)).exit_code == 0
    from scpo_spec.compile.problem import compile_spec
    from tests.engine_specs import spec_of
    compiled = compile_spec(spec_of(_spec(tmp_path).read_text(), tmp_path), tmp_path)
    backup = compiled.backup
    assert backup.network is not None and backup.network.activations == ["tanh", "identity"]
    np.testing.assert_allclose(backup.K, K, rtol=1e-6)  # the Jacobian at 0: K (float32 file)
    x = torch.linspace(-2, 2, 40, dtype=DTYPE).reshape(20, 2)
    expected = np.stack([numpy_eval(saturated(K), xi) for xi in x.numpy()])
    u = compiled.family.forward(compiled.family.theta0[None], x[None])[0]
    assert_close_across_paths(u, expected, "θ₀ (residual at zero) = the ONNX backup")
    result = _cli("verify", _spec(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    import json
    out = json.loads(result.stdout)
    assert out["verdict"] == "PROVED"
    # |u| ≤ 3.5 (the tanh saturation), so force ≤ 4 holds with room: g = |u| − 4 ≤ −0.5
    assert out["constraints"]["force_limit"]["bound"] <= -0.5


def test_verify_finds_an_unsafe_onnx_backups_counterexample(tmp_path):
    """u = 6·tanh(−(10 p + 10 v)/6) demands more than the force limit 4 from the box's
    corners: a counterexample that the ordinary evaluator re-simulates to g > 0."""
    K = np.array([[-10.0, -10.0]])
    (tmp_path / "c.onnx").write_bytes(saturated(K, limit=6.0))
    result = _cli("verify", _spec(tmp_path), "--json")
    assert result.exit_code == 1, result.output
    import json
    out = json.loads(result.stdout)
    force = out["constraints"]["force_limit"]
    assert force["verdict"] == "COUNTEREXAMPLE" and force["counterexample"]["g"] > 0
    x0 = np.array(force["counterexample"]["x0"])
    assert ((x0 >= [-1, -0.5]) & (x0 <= [1, 0.5])).all()  # inside the initial box


def test_an_activation_without_a_sound_relaxation_is_undecided_with_the_reason(tmp_path):
    K = _lqr_gain(tmp_path)
    (tmp_path / "c.onnx").write_bytes(saturated(K, activation="LeakyRelu",
                                                attrs={"alpha": 2.0}))
    result = _cli("verify", _spec(tmp_path))
    assert result.exit_code == 3, result.output
    assert "leaky_relu:2.0" in result.output


def test_a_residual_policy_over_an_onnx_backup_is_enclosed_by_the_reach_sets(tmp_path):
    from scpo_spec.compile.problem import compile_spec
    from tests.engine_specs import spec_of
    from tests.test_verify import _box, _check_enclosed
    K = _lqr_gain(tmp_path)
    (tmp_path / "c.onnx").write_bytes(saturated(K, limit=1.5))
    compiled = compile_spec(spec_of(_spec(tmp_path).read_text(), tmp_path), tmp_path)
    assert compiled.family.backup.network is not None  # the residual is over the ONNX network
    theta = compiled.family.theta0.clone()
    theta[-9:] = torch.randn(9, generator=torch.Generator().manual_seed(0), dtype=DTYPE) * 0.5
    lo, hi = _box(compiled)
    reach, X = _check_enclosed(compiled, theta, lo, hi, 5_000)
    width = (reach.inputs_hi - reach.inputs_lo)[0, 0, 0]
    assert width < 6.0  # not vacuous: the saturated backup (±1.5) plus a small net


def test_policy_onnx_theta0_is_the_files_weights_and_it_trains(tmp_path):
    from scpo_spec.audit.verify import audit_run
    from scpo_spec.compile.problem import compile_spec
    from scpo_spec.engine.run import train
    from tests.engine_specs import spec_of
    K = _lqr_gain(tmp_path)
    data = saturated(K, limit=3.5)
    (tmp_path / "p.onnx").write_bytes(data)
    spec_path = _spec(tmp_path, backup="backup lqr { Q = diag(1, 1)  R = diag(1) }",
                      policy='policy onnx { file = "p.onnx" }')
    text = spec_path.read_text()
    spec = spec_of(text, tmp_path)
    family = compile_spec(spec, tmp_path).family
    net = read_onnx(data, "policy", "p.onnx")
    np.testing.assert_array_equal(family.theta0.numpy(), net.theta())
    assert family.per_layer == ["tanh", "identity"] and family.layers == [(1, 2), (1, 1)]
    x = torch.linspace(-2, 2, 40, dtype=DTYPE).reshape(20, 2)
    expected = np.stack([numpy_eval(data, xi) for xi in x.numpy()])
    assert_close_across_paths(family.forward(family.theta0[None], x[None])[0], expected)
    res = train(spec_path, spec, text, out=tmp_path / "run")
    a = audit_run(res.run_dir)
    assert a.ok and a.steps == 3 and a.accepted_violations == 0
    result = _cli("verify", spec_path)
    assert result.exit_code == 0, result.output
    # the trained run exported as ONNX reads back, through the same reader, to the same policy
    assert _cli("export", res.run_dir, "--format", "onnx", "-o", tmp_path / "out.onnx") \
        .exit_code == 0
    from scpo_spec.engine.trained import load_run
    back = read_onnx((tmp_path / "out.onnx").read_bytes(), "policy", "out.onnx")
    assert back.activations[-2:] == ["tanh", "identity"]
    with torch.no_grad():
        exported = back.module()(x).numpy()
    assert_close_across_paths(exported, load_run(res.run_dir).policy(x.numpy()))


# ---- benchmarks/arch/fetch_published.py: a local copy of the published controllers ----
def test_fetch_published_copies_acc_and_tora_from_a_checkout_and_a_bare_mirror(tmp_path):
    import importlib.util
    import json
    import subprocess
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "fetch_published", root / "benchmarks" / "arch" / "fetch_published.py")
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    repo = tmp_path / "ARCH-COMP"
    rng = np.random.default_rng(13)
    files = {"benchmarks/ACC/controller_5_20.onnx": arch_acc(rng),
             "benchmarks/Tora_Heterogeneous/nn_tora_relu_tanh.onnx": tora_mixed(rng),
             "benchmarks/Unicycle/controller.onnx": tora_mixed(rng),   # not wanted
             "benchmarks/ACC/README.md": b"acc\n"}
    for rel, data in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "benchmarks"], check=True)
    bare = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    for source in (repo, bare):
        out = tmp_path / f"published-{source.name}"
        assert fetch.main([str(source), "--out", str(out)]) == 0
        manifest = json.loads((out / "MANIFEST.json").read_text())
        assert len(manifest["commit"]) == 40
        got = {f["path"]: f for f in manifest["files"]}
        assert set(got) == {"benchmarks/ACC/controller_5_20.onnx",
                            "benchmarks/Tora_Heterogeneous/nn_tora_relu_tanh.onnx"}
        assert (out / "ACC" / "controller_5_20.onnx").read_bytes() == \
            files["benchmarks/ACC/controller_5_20.onnx"]
        assert got["benchmarks/Tora_Heterogeneous/nn_tora_relu_tanh.onnx"]["activations"] == \
            ["relu", "relu", "tanh", "identity"]
    assert fetch.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


PUBLISHED = Path(__file__).resolve().parent.parent / "benchmarks" / "arch" / "published"


@pytest.mark.skipif(not any(PUBLISHED.rglob("*.onnx")) if PUBLISHED.is_dir() else True,
                    reason="no local copy of ARCH-COMP's controllers (fetch_published.py)")
def test_the_published_arch_controllers_read_and_agree_with_onnxruntime():
    """Where benchmarks/arch/fetch_published.py has copied them: each file reads, and agrees
    with onnxruntime (float32) to 1e-6 relative to its output's size where it runs the file."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(15)
    for path in sorted(PUBLISHED.rglob("*.onnx")):
        data = path.read_bytes()
        net = read_onnx(data, "backup", path.name)
        xs = rng.uniform(-1, 1, size=(SAMPLES, net.n_in))
        got = ours(data, xs)
        try:
            session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - e.g. ACC: Gemm on a rank-4 input
            continue
        info = session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in info.shape]
        ref = np.stack([session.run(None, {info.name: x.astype(np.float32).reshape(shape)})[0]
                        .reshape(-1) for x in xs])
        scale = max(1.0, float(np.abs(ref).max()))
        assert np.abs(got - ref).max() <= 1e-6 * scale, path.name


@pytest.mark.slow
@pytest.mark.skipif(not (PUBLISHED / "Benchmark9-Tora" / "controllerTora.onnx").is_file(),
                    reason="no local copy of ARCH-COMP's TORA controller (fetch_published.py)")
def test_the_published_tora_controller_is_proved_on_its_box():
    """benchmarks/arch/tora_published.scpo: ARCH-COMP's own TORA network (4-100-100-100-1,
    ReLU after every layer, a [1, 1, 1, 4] Conv input) keeps every state in [−2, 2] for
    20 control periods from the benchmark's initial box (the rk4 model as written)."""
    result = _cli("verify", PUBLISHED.parent / "tora_published.scpo", "--json")
    assert result.exit_code == 0, result.output
    import json
    out = json.loads(result.stdout)
    assert out["verdict"] == "PROVED" and out["constraints"]["box"]["bound"] < 0


# ---- ONNX controllers around an operating point, with observations and output scales ----
def _tanh2(opset: int = 9) -> bytes:
    """net(o) = 2·tanh(o₁ − o₂)."""
    inits = {"W": np.array([[1.0, -1.0]], np.float32), "k": np.array([2.0], np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Mul", ["t", "k"], ["y"])]
    return build(nodes, inits, [1, 2], [1, 1], opset)


def _observed_policy() -> bytes:
    """3 observations → 4 (LeakyRelu 0.2) → 1 (tanh after the last layer)."""
    rng = np.random.default_rng(17)
    inits = {"W1": f32(rng, 3, 4), "b1": f32(rng, 4), "W2": f32(rng, 4, 1), "b2": f32(rng, 1)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a1"]),
             helper.make_node("Add", ["a1", "b1"], ["h1"]),
             helper.make_node("LeakyRelu", ["h1"], ["r1"], alpha=0.2),
             helper.make_node("MatMul", ["r1", "W2"], ["a2"]),
             helper.make_node("Add", ["a2", "b2"], ["h2"]),
             helper.make_node("Tanh", ["h2"], ["y"])]
    return build(nodes, inits, ["N", 3], ["N", 1], 13)


def _compiled_gravity(tmp_path, backup: str, policy: str):
    from scpo_spec.compile.problem import compile_spec
    from scpo_spec.language.load import check_text
    from tests.test_operating_point import gravity
    (tmp_path / "b.onnx").write_bytes(_tanh2())
    (tmp_path / "p.onnx").write_bytes(_observed_policy())
    text = gravity(backup, policy, lyapunov=False)
    path = tmp_path / "g.scpo"
    path.write_text(text)
    result = check_text(text, path=str(path), base_dir=tmp_path)
    assert result.ok, [d.headline() for d in result.diagnostics]
    from scpo_spec.compile.usercode import check_code
    assert check_code(result.spec, tmp_path) == []
    return compile_spec(result.spec, tmp_path)


def test_onnx_controllers_see_their_observations_around_u_star(tmp_path):
    compiled = _compiled_gravity(
        tmp_path, 'onnx { file = "b.onnx"  observe = [p - 1, v]  output_scale = [3] }',
        'onnx { file = "p.onnx"  observe = [p, v, p * v]  output_scale = [0.5] }')
    x = np.random.default_rng(1).uniform([0, -1], [2, 1], size=(20, 2))
    xt = torch.as_tensor(x, dtype=DTYPE)
    observed = np.stack([x[:, 0], x[:, 1], x[:, 0] * x[:, 1]], 1)
    net_p = np.stack([numpy_eval(_observed_policy(), o) for o in observed])
    with torch.no_grad():
        b = compiled.backup(xt).numpy()
        u = compiled.family.forward(compiled.family.theta0[None], xt[None])[0].numpy()
    np.testing.assert_allclose(b, 9.81 + 3 * 2 * np.tanh((x[:, :1] - 1) - x[:, 1:2]),
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(u, 9.81 + 0.5 * net_p, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(compiled.backup.K, [[6.0, -6.0]], rtol=1e-6)  # at x* = (1, 0)
    assert compiled.family.per_layer == [f"leaky_relu:{float(np.float32(0.2))!r}", "tanh"]


def test_onnx_sizes_are_checked_against_observe(tmp_path):
    from scpo_spec.language.load import check_text
    from scpo_spec.compile.usercode import check_code
    from tests.test_operating_point import gravity
    (tmp_path / "b.onnx").write_bytes(_tanh2())
    text = gravity('onnx { file = "b.onnx"  observe = [p - 1, v, p * v] }',
                   "mlp { hidden = [4]  residual = backup  seed = 0 }", lyapunov=False)
    result = check_text(text, path=str(tmp_path / "g.scpo"), base_dir=tmp_path)
    messages = [d.message for d in check_code(result.spec, tmp_path)]
    assert messages == ["backup file 'b.onnx' takes 2 values; its `observe` list has 3 values"]


def test_verify_encloses_a_residual_over_an_observed_scaled_onnx_backup_around_u_star(tmp_path):
    from tests.test_operating_point import _enclosed, _perturbed
    compiled = _compiled_gravity(
        tmp_path, 'onnx { file = "b.onnx"  observe = [p - 1, v]  output_scale = [3] }',
        "mlp { hidden = [6]  residual = backup  seed = 0\n"
        "      observe = [p - 1, v, 2 * p + v]  output_scale = [0.7] }")
    assert compiled.backup.network is not None and compiled.family.around is not None
    _enclosed(compiled, _perturbed(compiled))


def test_verify_encloses_an_observed_onnx_policy_around_u_star(tmp_path):
    from tests.test_operating_point import _enclosed
    compiled = _compiled_gravity(
        tmp_path, "lqr { Q = diag(1, 1)  R = diag(1) }",
        'onnx { file = "p.onnx"  observe = [p - 1, v, 2 * p + v]  output_scale = [2] }')
    _enclosed(compiled, compiled.family.theta0)


@pytest.mark.slow
@pytest.mark.skipif(not (PUBLISHED / "ACC" / "controller_5_20.onnx").is_file(),
                    reason="no local copy of ARCH-COMP's ACC controller (fetch_published.py)")
def test_the_published_acc_controller_is_proved_on_the_safe_distance():
    """benchmarks/arch/acc_published.scpo: ARCH-COMP's ACC network (opset 6, Sub + Gemm on a
    rank-4 input, which onnxruntime refuses; 5-20×5-1 ReLU) seeing (v_set, T_gap, v_ego, gap,
    relative speed) keeps x_lead − x_ego ≥ 10 + 1.4 v_ego for 5 s from the benchmark's box."""
    result = _cli("verify", PUBLISHED.parent / "acc_published.scpo", "--json")
    assert result.exit_code == 0, result.output
    import json
    out = json.loads(result.stdout)
    assert out["verdict"] == "PROVED" and out["constraints"]["safe_distance"]["bound"] < 0
