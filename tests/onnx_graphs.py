"""ONNX graphs in the shapes of the ARCH-COMP controllers, built with onnx.helper, and a plain
numpy float64 evaluation of a graph node by node (the oracle the ONNX reader is compared with:
it interprets the file's operators directly, without folding anything)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(nodes, inits: dict, input_shape, output_shape, opset: int, *,
          constants: bool = False) -> bytes:
    """The serialized model; weights as initializers, or as `Constant` nodes (`constants`)."""
    if constants:
        nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k))
                 for k, v in inits.items()] + list(nodes)
        initializers = []
    else:
        initializers = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    graph = helper.make_graph(
        nodes, "controller",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tests")
    model.ir_version = 3 if opset < 8 else 4 if opset < 10 else 7
    return model.SerializeToString()


def f32(rng, *shape, scale=0.5):
    return (rng.normal(size=shape) * scale).astype(np.float32)


def arch_acc(rng, opset: int = 6, constants: bool = False) -> bytes:
    """ACC-shaped: input [1, 1, 1, 5], `Sub` (and `Div`) normalisation with the legacy
    broadcast, Gemm(transB) + Relu ×2, a last Gemm; 5 → 20 → 20 → 1."""
    legacy = {"broadcast": 1} if opset < 7 else {}
    inits = {"mean": f32(rng, 5), "std": np.abs(f32(rng, 5)) + np.float32(0.5),
             "W1": f32(rng, 20, 5), "b1": f32(rng, 20), "W2": f32(rng, 20, 20),
             "b2": f32(rng, 20), "W3": f32(rng, 1, 20), "b3": f32(rng, 1)}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"], **legacy),
             helper.make_node("Div", ["s", "std"], ["d"], **legacy),
             helper.make_node("Gemm", ["d", "W1", "b1"], ["h1"], transB=1),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "W2", "b2"], ["h2"], transB=1),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "W3", "b3"], ["y"], transB=1)]
    return build(nodes, inits, [1, 1, 1, 5], [1, 1], opset, constants=constants)


def conv_flatten(rng, opset: int = 8) -> bytes:
    """1×1 Conv layers on a [1, 4, 1, 1] input, Tanh between, Flatten at the end."""
    inits = {"W1": f32(rng, 16, 4, 1, 1), "b1": f32(rng, 16), "W2": f32(rng, 2, 16, 1, 1),
             "b2": f32(rng, 2)}
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["h1"], kernel_shape=[1, 1]),
             helper.make_node("Tanh", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "b2"], ["h2"], kernel_shape=[1, 1]),
             helper.make_node("Flatten", ["h2"], ["y"], axis=1)]
    return build(nodes, inits, [1, 4, 1, 1], [1, 2], opset)


def matlab_conv(rng, opset: int = 6) -> bytes:
    """ARCH-COMP's MATLAB exports (TORA's controllerTora.onnx): a [1, 1, 1, 4] input, a first
    Conv whose kernel [1, 4] covers it (a dense layer), then 1×1 Convs, ReLU between."""
    inits = {"W1": f32(rng, 10, 1, 1, 4), "b1": f32(rng, 10), "W2": f32(rng, 10, 10, 1, 1),
             "b2": f32(rng, 10), "W3": f32(rng, 1, 10, 1, 1), "b3": f32(rng, 1)}
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["h1"], kernel_shape=[1, 4]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "b2"], ["h2"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Conv", ["r2", "W3", "b3"], ["h3"], kernel_shape=[1, 1]),
             helper.make_node("Flatten", ["h3"], ["y"], axis=1)]
    return build(nodes, inits, [1, 1, 1, 4], [1, 1], opset)


def tora_mixed(rng, opset: int = 9, scale: float = 11.0) -> bytes:
    """TORA-shaped: 4 → 20 (ReLU) → 20 (ReLU) → 1 (tanh), the output multiplied by `scale`."""
    inits = {"W1": f32(rng, 4, 20), "b1": f32(rng, 20), "W2": f32(rng, 20, 20),
             "b2": f32(rng, 20), "W3": f32(rng, 20, 1), "b3": f32(rng, 1),
             "k": np.array([scale], np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "W2", "b2"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "W3", "b3"], ["h3"]),
             helper.make_node("Tanh", ["h3"], ["t"]),
             helper.make_node("Mul", ["t", "k"], ["y"])]
    return build(nodes, inits, [1, 4], [1, 1], opset)


def matmul_add(rng, activation: str = "Tanh", opset: int = 13, attrs: dict | None = None,
               last: str | None = None, n: int = 3, width: int = 6, m: int = 2) -> bytes:
    """MatMul + Add layers on a [N, n] input: n → width (activation) → m (`last` after it)."""
    inits = {"W1": f32(rng, n, width), "b1": f32(rng, width), "W2": f32(rng, width, m),
             "b2": f32(rng, m)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a1"]),
             helper.make_node("Add", ["a1", "b1"], ["h1"]),
             helper.make_node(activation, ["h1"], ["r1"], **(attrs or {})),
             helper.make_node("MatMul", ["r1", "W2"], ["a2"]),
             helper.make_node("Add", ["a2", "b2"], ["h2" if last else "y"])]
    if last:
        nodes.append(helper.make_node(last, ["h2"], ["y"],
                                      **((attrs or {}) if last == activation else {})))
    return build(nodes, inits, ["N", n], ["N", m], opset)


# ---- the numpy oracle ----
def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def numpy_eval(data: bytes, x: np.ndarray) -> np.ndarray:
    """The graph on one sample x (flat), in float64, node by node; the output flattened."""
    model = onnx.load_model_from_string(data)
    g = model.graph
    opset = model.opset_import[0].version
    env = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in g.initializer}
    shape = [d.dim_value if d.HasField("dim_value") else 1
             for d in g.input[0].type.tensor_type.shape.dim]
    env[g.input[0].name] = np.asarray(x, np.float64).reshape(shape)
    for node in g.node:
        a, op = _attrs(node), node.op_type
        ins = [env[i] for i in node.input if i]
        if op == "Constant":
            out = numpy_helper.to_array(a["value"]).astype(np.float64)
        elif op == "Gemm":
            A, B = ins[0].reshape(1, -1) if ins[0].ndim != 2 else ins[0], ins[1]
            A = A.T if a.get("transA", 0) else A
            B = B.T if a.get("transB", 0) else B
            out = a.get("alpha", 1.0) * (A @ B)
            if len(ins) > 2:
                out = out + a.get("beta", 1.0) * ins[2]
        elif op == "MatMul":
            out = ins[0] @ ins[1]
        elif op == "Conv":  # 2-D, stride 1, no padding: every output pixel a dot product
            X, Wc = ins[0], ins[1]
            kh, kw = Wc.shape[2:]
            oh, ow = X.shape[2] - kh + 1, X.shape[3] - kw + 1
            out = np.zeros((1, Wc.shape[0], oh, ow))
            for i in range(oh):
                for j in range(ow):
                    patch = X[0, :, i:i + kh, j:j + kw]
                    out[0, :, i, j] = (Wc * patch).sum(axis=(1, 2, 3))
            if len(ins) > 2:
                out = out + ins[2].reshape(1, -1, 1, 1)
        elif op in ("Add", "Sub", "Mul", "Div"):
            l, r = ins
            if opset < 7 and a.get("broadcast") and "axis" in a:
                r = r.reshape((1,) * a["axis"] + r.shape + (1,) * (l.ndim - a["axis"] - r.ndim))
            out = {"Add": l + r, "Sub": l - r, "Mul": l * r, "Div": l / r}[op]
        elif op == "Flatten":
            ax = a.get("axis", 1)
            out = ins[0].reshape(int(np.prod(ins[0].shape[:ax])), -1)
        elif op == "Reshape":
            out = ins[0].reshape([int(v) for v in ins[1]])
        elif op == "Unsqueeze":
            out = np.expand_dims(ins[0], tuple(a["axes"]))
        elif op == "Squeeze":
            out = np.squeeze(ins[0], tuple(a["axes"]))
        elif op == "Relu":
            out = np.maximum(ins[0], 0)
        elif op == "Tanh":
            out = np.tanh(ins[0])
        elif op == "Sigmoid":
            out = 1 / (1 + np.exp(-ins[0]))
        elif op == "Softplus":
            out = np.log1p(np.exp(ins[0]))
        elif op == "Elu":
            al = a.get("alpha", 1.0)
            out = np.where(ins[0] > 0, ins[0], al * np.expm1(np.minimum(ins[0], 0)))
        elif op == "LeakyRelu":
            out = np.where(ins[0] > 0, ins[0], a.get("alpha", 0.01) * ins[0])
        elif op in ("Identity", "Dropout"):
            out = ins[0]
        elif op == "BatchNormalization":
            shape = (1, -1) + (1,) * (ins[0].ndim - 2)
            scale, b, mean, var = (v.reshape(shape) for v in ins[1:5])
            out = (ins[0] - mean) / np.sqrt(var + a.get("epsilon", 1e-5)) * scale + b
        else:
            raise NotImplementedError(op)
        env[node.output[0]] = out
    return env[g.output[0].name].reshape(-1)
