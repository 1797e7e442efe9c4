"""ONNX files named by a spec (`backup onnx { file }`, `policy onnx { file }`), read with the
`onnx` package and mapped onto a float64 feed-forward chain: affine layers (W, b), each followed
by its own activation (the last one's may be `identity`).

onnxruntime is never needed: the graph is interpreted symbolically.  Every value the network's
input flows into is an affine map A·h + c of the chain's current vector h (the input, or the
output of the last activation); constants are numpy arrays; linear nodes compose into A and c,
and an activation closes the current layer (W = A, b = c) and starts the next.  Input
normalisation (`Sub`/`Div` by a constant) is thereby folded into the first layer, and an output
scale (`Mul` after the last activation) becomes a last layer of its own.  Values are per sample:
fixed batch axes (the ARCH-COMP input shape [1, 1, 1, 5]) and symbolic ones are read as one
sample, and only reshapes that keep the elements' order are accepted.

Supported (LANGUAGE-v3): Gemm (transA/transB/alpha/beta), MatMul, a Conv used as a dense
layer (a 1×1 kernel, or one that covers its input: MATLAB's export, e.g. ARCH-COMP's TORA),
Add/Sub/Mul/Div by a constant, BatchNormalization and Dropout as inference computes them (affine;
the identity), Flatten/Reshape/Squeeze/Unsqueeze, Constant, Identity, and the
activations Relu, Tanh, Sigmoid, Softplus, Elu, LeakyRelu — opsets 6 and later (the legacy
`broadcast`/`axis` attributes of opsets < 7 included).  Anything else raises OnnxFileError naming the operator and
the node, located at the spec's `file = "…"` string; so does a file that is too large, corrupt,
or a graph that is not a chain (a skip connection).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scpo_spec.errors import ScpoError
from scpo_spec.language.diagnostics import Diagnostic
from scpo_spec.language.model import Spec, Text
from scpo_spec.language.source import Span

MAX_FILE_BYTES = 64 * 1024 * 1024   # the file is user input: refused above this before parsing
MAX_NODES = 10_000
MAX_WIDTH = 65_536                  # elements of any value the input flows into
MAX_MATRIX = 50_000_000             # entries of any composed affine map (400 MB in float64)

ACTIVATION_OPS = ("Relu", "Tanh", "Sigmoid", "Softplus", "Elu", "LeakyRelu")
LINEAR_OPS = ("Gemm", "MatMul", "Conv", "Add", "Sub", "Mul", "Div", "BatchNormalization")
SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Constant")
SUPPORTED_OPS = LINEAR_OPS + SHAPE_OPS + ACTIVATION_OPS


class OnnxFileError(ScpoError):
    """An ONNX file named by a spec cannot be used; `span` is the `file = "…"` string."""

    def __init__(self, message: str, span: Span | None = None):
        super().__init__(f"{span}: {message}" if span is not None else message)
        self.message, self.span = message, span


@dataclass
class OnnxNetwork:
    """The file's network: x (n,) ↦ h_L with h_i = act_i(W_i h_{i−1} + b_i), float64."""

    layers: list[tuple[np.ndarray, np.ndarray]]   # (W (out, in), b (out,)) per layer
    activations: list[str]                        # one per layer (policies.activations names)
    sha256: str = ""

    @property
    def n_in(self) -> int:
        return int(self.layers[0][0].shape[1])

    @property
    def n_out(self) -> int:
        return int(self.layers[-1][0].shape[0])

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(int(W.shape[0]), int(W.shape[1])) for W, _ in self.layers]

    def theta(self) -> np.ndarray:
        """The weights flat, per layer W row-major then b (the policy families' layout)."""
        return np.concatenate([np.concatenate([W.reshape(-1), b]) for W, b in self.layers])

    def module(self):
        """The network as a float64 torch nn.Sequential (Linear, activation, …), frozen, eval
        mode; TorchScript-able (what `scpo export` writes for an ONNX backup)."""
        import torch
        from scpo_spec.dtype import DTYPE
        from scpo_spec.policies import activations
        parts = []
        for (W, b), act in zip(self.layers, self.activations):
            linear = torch.nn.Linear(W.shape[1], W.shape[0], dtype=DTYPE)
            with torch.no_grad():
                linear.weight.copy_(torch.as_tensor(W, dtype=DTYPE))
                linear.bias.copy_(torch.as_tensor(b, dtype=DTYPE))
            parts.append(linear)
            if act != "identity":
                parts.append(activations.module(act))
        net = torch.nn.Sequential(*parts).to(DTYPE).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net


# ---- the symbolic values ----
@dataclass
class _Signal:
    """A value the input flows into: flat(value) = A @ h + c, h the chain's current vector."""

    A: np.ndarray       # (size, width of h)
    c: np.ndarray       # (size,)
    shape: tuple[int, ...]
    gen: int            # the number of layers closed when h was current
    eye: bool = False   # A is the identity (a layer's W is then used as it is, not W @ I)


class _Reader:
    def __init__(self, model, what: str, name: str):
        self.what, self.name = what, name
        self.opset = next((int(o.version) for o in model.opset_import
                           if o.domain in ("", "ai.onnx")), 1)
        self.graph = model.graph
        self.values: dict[str, object] = {}
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        self.activations: list[str] = []
        self.node = ""

    def fail(self, message: str) -> OnnxFileError:
        where = f", {self.node}" if self.node else ""
        return OnnxFileError(f"{self.what} file '{self.name}'{where}: {message}")

    # ---- reading ----
    def run(self) -> OnnxNetwork:
        from onnx import numpy_helper
        g = self.graph
        if len(g.node) > MAX_NODES:
            raise self.fail(f"its graph has {len(g.node)} nodes (at most {MAX_NODES})")
        for init in g.initializer:
            if init.data_location == 1:  # EXTERNAL: a path the file names; never followed
                raise self.fail(f"the initializer '{init.name}' is stored in an external file "
                                "(save the model with its weights inside)")
            self.values[init.name] = self._const(numpy_helper.to_array(init))
        inputs = [i for i in g.input if i.name not in self.values]
        if len(inputs) != 1:
            raise self.fail(f"the graph has {len(inputs)} inputs besides its weights "
                            f"({', '.join(i.name for i in inputs) or 'none'}); a controller "
                            "takes one")
        if len(g.output) != 1:
            raise self.fail(f"the graph has {len(g.output)} outputs; a controller has one")
        shape = self._input_shape(inputs[0])
        n = int(np.prod(shape)) if shape else 1
        self._check_width(n)
        self.values[inputs[0].name] = _Signal(np.eye(n), np.zeros(n), shape, 0, eye=True)
        for index, node in enumerate(g.node):
            label = f"'{node.name}' " if node.name else ""
            self.node = f"node {index} {label}({node.op_type})"
            if node.domain not in ("", "ai.onnx"):
                raise self.fail(f"the operator {node.domain}.{node.op_type} is not supported "
                                f"(supported: {', '.join(SUPPORTED_OPS)})")
            if node.op_type not in SUPPORTED_OPS:
                raise self.fail(f"the operator {node.op_type} is not supported (a feed-forward "
                                f"controller may use {', '.join(SUPPORTED_OPS)})")
            outs = self._apply(node)
            for name, value in zip(node.output, outs):
                if name:
                    self.values[name] = value
        self.node = ""
        out = self.values.get(g.output[0].name)
        if not isinstance(out, _Signal):
            raise self.fail(f"its output '{g.output[0].name}' does not depend on its input")
        self._current(out)
        k = out.A.shape[1]
        if not self.layers or not (np.array_equal(out.A, np.eye(k)) and not out.c.any()):
            self._close(out, "identity")
        return OnnxNetwork(self.layers, self.activations)

    def _input_shape(self, value) -> tuple[int, ...]:
        t = value.type.tensor_type
        if not value.type.HasField("tensor_type") or t.elem_type not in (1, 10, 11, 16):
            raise self.fail(f"its input '{value.name}' is not a float tensor")
        if not t.HasField("shape"):
            raise self.fail(f"its input '{value.name}' has no shape")
        # a symbolic dimension (a batch axis 'N') is one sample
        return tuple(int(d.dim_value) if d.HasField("dim_value") else 1 for d in t.shape.dim)

    def _const(self, array: np.ndarray) -> np.ndarray:
        if array.dtype.kind == "f":
            array = array.astype(np.float64)
        if array.size > MAX_MATRIX:
            raise self.fail(f"a tensor of {array.size} elements (at most {MAX_MATRIX})")
        return array

    def _check_width(self, size: int) -> None:
        if size > MAX_WIDTH:
            raise self.fail(f"a value of {size} elements (at most {MAX_WIDTH})")

    def _inputs(self, node) -> list:
        got = []
        for name in node.input:
            if not name:
                got.append(None)
                continue
            if name not in self.values:
                raise self.fail(f"its input '{name}' is not computed before it (the graph is "
                                "not in topological order, or reads a missing tensor)")
            got.append(self.values[name])
        return got

    def _current(self, s: _Signal) -> _Signal:
        if s.gen != len(self.layers):
            raise self.fail("the graph is not a chain: it reads a value from before an earlier "
                            "activation (a skip connection); only feed-forward chains are "
                            "supported")
        return s

    def _close(self, s: _Signal, activation: str) -> _Signal:
        """The layer (A, c) with its activation; the activation's output is the next h."""
        self.layers.append((s.A, s.c))
        self.activations.append(activation)
        k = s.A.shape[0]
        return _Signal(np.eye(k), np.zeros(k), s.shape, len(self.layers), eye=True)

    def _affine(self, s: _Signal, W: np.ndarray, b: np.ndarray, shape) -> _Signal:
        """flat(out) = W flat(s) + b."""
        if W.shape[0] * s.A.shape[1] > MAX_MATRIX:
            raise self.fail(f"a map of {W.shape[0]}×{s.A.shape[1]} entries (at most "
                            f"{MAX_MATRIX})")
        self._check_width(W.shape[0])
        A = W.copy() if s.eye else W @ s.A
        return _Signal(A, W @ s.c + b, tuple(int(d) for d in shape), s.gen)

    def attrs(self, node) -> dict:
        from onnx import helper
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # ---- the operators ----
    def _apply(self, node) -> list:
        op, attrs = node.op_type, self.attrs(node)
        if op == "Constant":
            return [self._constant(attrs)]
        args = self._inputs(node)
        signals = [a for a in args if isinstance(a, _Signal)]
        for s in signals:
            self._current(s)
        if op == "Identity":
            return [args[0]]
        if op == "Dropout":  # inference: the identity (a training-mode flag must be false)
            mode = args[2] if len(args) > 2 else None
            if mode is not None and (isinstance(mode, _Signal) or np.any(mode)):
                raise self.fail("a Dropout in training mode (export the network in eval mode)")
            return [args[0]]
        if op in ACTIVATION_OPS:
            if not signals:
                raise self.fail("an activation of a constant (fold it before export)")
            return [self._close(args[0], self._activation(op, attrs))]
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            return [self._reshape(op, args, attrs)]
        if not signals:  # constants only: computed here
            return [self._fold(op, args, attrs)]
        if op == "Gemm":
            return [self._gemm(args, attrs)]
        if op == "MatMul":
            return [self._matmul(args)]
        if op == "Conv":
            return [self._conv(args, attrs)]
        if op == "BatchNormalization":
            return [self._batch_norm(args, attrs)]
        return [self._elementwise(op, args, attrs)]

    def _constant(self, attrs: dict) -> np.ndarray:
        from onnx import numpy_helper
        if "value" in attrs:
            return self._const(numpy_helper.to_array(attrs["value"]))
        for key in ("value_float", "value_floats", "value_int", "value_ints"):
            if key in attrs:
                return self._const(np.asarray(attrs[key],
                                              dtype=np.float64 if "float" in key else np.int64))
        raise self.fail(f"a Constant with {', '.join(attrs) or 'no value'} (supported: value, "
                        "value_float(s), value_int(s))")

    def _activation(self, op: str, attrs: dict) -> str:
        if op == "LeakyRelu":
            return f"leaky_relu:{float(attrs.get('alpha', 0.01))!r}"
        if op == "Elu":
            alpha = float(attrs.get("alpha", 1.0))
            return "elu" if alpha == 1.0 else f"elu:{alpha!r}"
        return op.lower()

    def _shape_arg(self, value, what: str) -> list[int]:
        if not isinstance(value, np.ndarray):
            raise self.fail(f"its {what} is computed from the input (only constant {what}s "
                            "are supported)")
        return [int(v) for v in np.asarray(value).reshape(-1)]

    def _reshape(self, op: str, args: list, attrs: dict):
        x = args[0]
        shape = x.shape if isinstance(x, _Signal) else tuple(np.shape(x))
        size = int(np.prod(shape)) if shape else 1
        if op == "Flatten":
            axis = int(attrs.get("axis", 1))
            axis = axis + len(shape) if axis < 0 else axis
            new = (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))
        elif op == "Reshape":
            target = (attrs["shape"] if "shape" in attrs and len(args) < 2
                      else self._shape_arg(args[1] if len(args) > 1 else None, "shape"))
            new = [shape[i] if d == 0 and not attrs.get("allowzero", 0) else d
                   for i, d in enumerate(target)]
            if new.count(-1) > 1:
                raise self.fail(f"a Reshape to {list(target)} with more than one -1")
            if -1 in new:
                rest = int(np.prod([d for d in new if d != -1]))
                new[new.index(-1)] = size // rest if rest else 0
            new = tuple(int(d) for d in new)
        elif op == "Squeeze":
            axes = attrs.get("axes") if len(args) < 2 or args[1] is None else \
                self._shape_arg(args[1], "axes")
            rank = len(shape)
            if axes is None:
                axes = [i for i, d in enumerate(shape) if d == 1]
            axes = [a + rank if a < 0 else a for a in axes]
            if any(not 0 <= a < rank or shape[a] != 1 for a in axes):
                raise self.fail(f"a Squeeze of axes {axes} of a value of shape {list(shape)}")
            new = tuple(d for i, d in enumerate(shape) if i not in axes)
        else:  # Unsqueeze
            axes = attrs.get("axes") if len(args) < 2 else self._shape_arg(args[1], "axes")
            if axes is None:
                raise self.fail("an Unsqueeze without axes")
            rank = len(shape) + len(axes)
            axes = sorted(a + rank if a < 0 else a for a in axes)
            new = list(shape)
            for a in axes:
                new.insert(a, 1)
            new = tuple(new)
        if int(np.prod(new)) != size:
            raise self.fail(f"reshapes {list(shape)} to {list(new)}, which does not keep the "
                            "number of elements")
        if isinstance(x, _Signal):
            return _Signal(x.A, x.c, new, x.gen, x.eye)
        return np.reshape(x, new)

    def _fold(self, op: str, args: list, attrs: dict):
        a, b = (args + [None, None])[:2]
        if op in ("Add", "Sub", "Mul", "Div"):
            b = self._legacy_broadcast(b, np.shape(a), attrs)
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                    "Div": np.divide}[op](a, b)
        raise self.fail(f"a {op} of constants only (fold it before export)")

    def _legacy_broadcast(self, k, shape, attrs: dict):
        """Opsets < 7: `broadcast = 1` aligns the second operand at `axis` (default: its
        trailing dimensions, numpy's rule)."""
        if self.opset < 7 and attrs.get("broadcast", 0) and "axis" in attrs and k is not None:
            k = np.asarray(k)
            axis = int(attrs["axis"]) % max(len(shape), 1)
            k = k.reshape((1,) * axis + k.shape + (1,) * (len(shape) - axis - k.ndim))
        return k

    def _elementwise(self, op: str, args: list, attrs: dict) -> _Signal:
        a, b = args[0], args[1] if len(args) > 1 else None
        if isinstance(a, _Signal) and isinstance(b, _Signal):
            if op not in ("Add", "Sub") or a.shape != b.shape:
                raise self.fail(f"a {op} of two values computed from the input (only a "
                                "constant may multiply, divide or broadcast)")
            sign = 1.0 if op == "Add" else -1.0
            return _Signal(a.A + sign * b.A, a.c + sign * b.c, a.shape, a.gen)
        s, k, left = (a, b, True) if isinstance(a, _Signal) else (b, a, False)
        if left:
            k = self._legacy_broadcast(k, s.shape, attrs)
        k = np.asarray(k, dtype=np.float64)
        try:
            full = np.broadcast_shapes(s.shape, k.shape)
        except ValueError:
            raise self.fail(f"a constant of shape {list(k.shape)} does not broadcast to the "
                            f"value's shape {list(s.shape)}") from None
        if tuple(full) != s.shape and int(np.prod(full)) != int(np.prod(s.shape)):
            raise self.fail(f"a constant of shape {list(k.shape)} broadcasts the value of shape "
                            f"{list(s.shape)} to {list(full)}")
        kb = np.broadcast_to(k, full).reshape(-1)
        if op == "Add":
            return _Signal(s.A, s.c + kb, tuple(full), s.gen)
        if op == "Sub":
            if left:
                return _Signal(s.A, s.c - kb, tuple(full), s.gen)
            return _Signal(-s.A, kb - s.c, tuple(full), s.gen)
        if op == "Mul":
            return _Signal(kb[:, None] * s.A, kb * s.c, tuple(full), s.gen)
        if not left:
            raise self.fail("a constant divided by a value computed from the input (not affine)")
        if not np.all(kb != 0):
            raise self.fail("a division by a constant that has a zero")
        return _Signal(s.A / kb[:, None], s.c / kb, tuple(full), s.gen)

    def _matrix(self, value, what: str) -> np.ndarray:
        if not isinstance(value, np.ndarray) or value.ndim != 2:
            got = "a value computed from the input" if isinstance(value, _Signal) else \
                f"shape {list(np.shape(value))}"
            raise self.fail(f"its {what} must be a constant matrix (got {got})")
        return value.astype(np.float64)

    def _gemm(self, args: list, attrs: dict) -> _Signal:
        a, b = args[0], args[1]
        c = args[2] if len(args) > 2 else None
        if not isinstance(a, _Signal):
            raise self.fail("a Gemm whose first operand is a constant and whose second is the "
                            "network's value (export it as x·Wᵀ: Gemm(x, W, transB=1))")
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        B = self._matrix(b, "second operand")
        B = B.T if attrs.get("transB", 0) else B          # (k, out)
        k, out = B.shape
        size = int(np.prod(a.shape)) if a.shape else 1
        lead = a.shape[:-1] if not attrs.get("transA", 0) else a.shape[1:]
        # (1, k) as the opset says, or the ARCH-COMP [1, 1, 1, k] read as one sample's row
        if size != k or any(d != 1 for d in lead):
            raise self.fail(f"a Gemm of a value of shape {list(a.shape)} by a {k}×{out} matrix "
                            f"(transA={attrs.get('transA', 0)}): one sample's row of {k} "
                            "elements is supported")
        bias = np.zeros(out)
        if c is not None:
            if isinstance(c, _Signal):
                raise self.fail("a Gemm whose C is computed from the input")
            try:
                bias = np.broadcast_to(np.asarray(c, dtype=np.float64), (1, out)).reshape(-1)
            except ValueError:
                raise self.fail(f"a Gemm bias of shape {list(np.shape(c))} for {out} "
                                "outputs") from None
        return self._affine(a, alpha * B.T, beta * bias, (1, out))

    def _matmul(self, args: list) -> _Signal:
        a, b = args
        if isinstance(a, _Signal):  # x (…, k) @ W (k, out): per row of x
            W = self._matrix(b, "second operand")
            k, out = W.shape
            if not a.shape or a.shape[-1] != k:
                raise self.fail(f"a MatMul of shape {list(a.shape)} by {k}×{out}")
            rows = int(np.prod(a.shape[:-1]))
            M = W.T if rows == 1 else np.kron(np.eye(rows), W.T)
            return self._affine(a, M, np.zeros(M.shape[0]), a.shape[:-1] + (out,))
        W = self._matrix(a, "first operand")   # W (r, k) @ x (k,) or (k, j)
        r, k = W.shape
        if len(b.shape) not in (1, 2) or b.shape[0] != k:
            raise self.fail(f"a MatMul of {r}×{k} by a value of shape {list(b.shape)}")
        j = b.shape[1] if len(b.shape) == 2 else 1
        M = W if j == 1 else np.kron(W, np.eye(j))
        return self._affine(b, M, np.zeros(M.shape[0]), (r,) + tuple(b.shape[1:]))

    def _batch_norm(self, args: list, attrs: dict) -> _Signal:
        """Inference: y = scale·(x − mean)/√(var + ε) + B per channel (axis 1), affine."""
        x = args[0]
        stats = args[1:5]
        if len(stats) != 4 or not all(isinstance(a, np.ndarray) for a in stats):
            raise self.fail("a BatchNormalization without constant scale, B, mean and var")
        if attrs.get("training_mode", 0):  # (opsets < 7's is_test: inference is what runs)
            raise self.fail("a BatchNormalization in training mode (export in eval mode)")
        if len(x.shape) < 2:
            raise self.fail(f"a BatchNormalization of a value of shape {list(x.shape)}")
        scale, bias, mean, var = (np.asarray(a, np.float64).reshape(-1) for a in stats)
        channels = x.shape[1]
        if any(v.size != channels for v in (scale, bias, mean, var)):
            raise self.fail(f"a BatchNormalization with statistics for other than "
                            f"{channels} channels")
        eps = float(attrs.get("epsilon", 1e-5))
        per = int(np.prod(x.shape[2:]))  # the elements of one channel (row-major: contiguous)
        g = np.repeat(scale / np.sqrt(var + eps), per)
        shift = np.repeat(bias - mean * scale / np.sqrt(var + eps), per)
        return _Signal(g[:, None] * x.A, g * x.c + shift, x.shape, x.gen)

    def _conv(self, args: list, attrs: dict) -> _Signal:
        x, w = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        if not isinstance(w, np.ndarray) or (bias is not None and not isinstance(bias, np.ndarray)):
            raise self.fail("a Conv whose weights are computed from the input")
        if len(x.shape) < 3 or x.shape[0] != 1 or w.ndim != len(x.shape):
            raise self.fail(f"a Conv of a value of shape {list(x.shape)} by weights of shape "
                            f"{list(w.shape)}")
        spatial, kernel = tuple(x.shape[2:]), tuple(int(d) for d in w.shape[2:])
        settings = (attrs.get("group", 1) == 1 and w.shape[1] == x.shape[1]
                    and all(d == 1 for d in attrs.get("dilations", [1]))
                    and not any(attrs.get("pads", [0]))
                    and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID", "NOTSET",
                                                             "VALID"))
        per_pixel = all(d == 1 for d in kernel) and all(s == 1 for s in attrs.get("strides", [1]))
        whole = kernel == spatial  # the kernel covers the input: one output pixel (MATLAB's
        #                            export of a fully connected layer on a [1, C, 1, k] input)
        if not settings or not (per_pixel or whole):
            raise self.fail(f"a Conv with kernel {list(kernel)} on a value of shape "
                            f"{list(x.shape)}, group {attrs.get('group', 1)}, strides "
                            f"{attrs.get('strides', [1])}, pads {attrs.get('pads', [0])}: only a "
                            "Conv used as a dense layer is supported (a 1×1 kernel with stride "
                            "1, or a kernel as large as its input; group 1, no padding)")
        out_channels = int(w.shape[0])
        b = np.zeros(out_channels) if bias is None else np.asarray(bias, np.float64).reshape(-1)
        if whole:  # out[m] = Σ_{c, pixel} w[m, c, pixel] x[c, pixel] + b[m]
            M = w.reshape(out_channels, -1).astype(np.float64)
            return self._affine(x, M, b, (1, out_channels) + (1,) * len(spatial))
        W = w.reshape(out_channels, w.shape[1]).astype(np.float64)
        pixels = int(np.prod(spatial))
        M = W if pixels == 1 else np.kron(W, np.eye(pixels))
        return self._affine(x, M, np.repeat(b, pixels), (1, out_channels) + spatial)


def read_onnx(data: bytes, what: str, name: str) -> OnnxNetwork:
    """The network in an ONNX file's bytes; OnnxFileError (without a span) otherwise."""
    if len(data) > MAX_FILE_BYTES:
        raise OnnxFileError(f"{what} file '{name}' has {len(data)} bytes (at most "
                            f"{MAX_FILE_BYTES}: a controller's network is far smaller)")
    import onnx
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else \
            type(e).__name__
        raise OnnxFileError(f"{what} file '{name}' is not an ONNX model (it cannot be decoded: "
                            f"{why})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxFileError(f"{what} file '{name}' is not an ONNX model (it holds no graph)")
    try:
        network = _Reader(model, what, name).run()
    except OnnxFileError:
        raise
    except Exception as e:  # noqa: BLE001 - malformed attributes, shapes numpy refuses
        why = str(e).splitlines()[0][:200] if str(e) else ""
        raise OnnxFileError(f"{what} file '{name}' cannot be read as a feed-forward network "
                            f"({type(e).__name__}: {why})") from None
    if not all(np.isfinite(W).all() and np.isfinite(b).all() for W, b in network.layers):
        raise OnnxFileError(f"{what} file '{name}' has non-finite weights")
    network.sha256 = hashlib.sha256(data).hexdigest()
    return network


def _as_recorded(path: Path, data: bytes, what: str, name: str) -> None:
    """While a run is read (`code.expecting`), its ONNX files must hold the bytes it recorded:
    the network is data, not code, but it is the controller the certificate is about.  What was
    read is noted in `code.EXECUTED`, so `ran_as_recorded` can say each file was the run's."""
    from scpo_spec.usercode.loader import EXECUTED, EXPECTED
    key, sha = str(path.resolve()), hashlib.sha256(data).hexdigest()
    want = EXPECTED.get(key)
    if want is not None and want[1] != sha:
        raise OnnxFileError(f"{what} file '{name}' ({path}) is not the file the run was trained "
                            f"with: its SHA-256 is {sha[:16]}…, the run recorded "
                            f"{str(want[1])[:16]}…; refusing to read the run's policy with it")
    EXECUTED[key] = want if want is not None else (key, sha)


def load_onnx(path: Path, what: str, name: str, span: Span | None = None) -> OnnxNetwork:
    """read_onnx of the file at `path`, every error located at `span`."""
    try:
        if not path.is_file():
            raise OnnxFileError(f"{what} file '{name}' not found ({path})")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise OnnxFileError(f"{what} file '{name}' has {path.stat().st_size} bytes (at most "
                                f"{MAX_FILE_BYTES}: a controller's network is far smaller)")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise OnnxFileError(f"{what} file '{name}' cannot be read: {e.strerror or e}") \
                from None
        _as_recorded(path, data, what, name)
        return read_onnx(data, what, name)
    except OnnxFileError as e:
        raise OnnxFileError(e.message, span) from None


# ---- the spec's `backup onnx { file }` / `policy onnx { file }` ----
def load_network(file: Text, base_dir: Path | None, what: str,
                 spec: Spec | None = None) -> OnnxNetwork:
    """The network of a spec's `file = "…"` (relative to the spec's directory), OnnxFileError
    located at the string otherwise."""
    from scpo_spec.policies.torch_file import resolve
    return load_onnx(resolve(file, base_dir, spec), what, file.value, file.span)


def expected_sizes(spec: Spec, node) -> tuple[int, str, int, str]:
    """The network's input and output sizes the spec implies, and what they are: the `observe`
    list's length (when the node has one) or the number of states; the number of inputs."""
    n, m = len(spec.system.states), len(spec.system.inputs)
    observe = getattr(node, "observe", None)
    if observe:
        return len(observe), f"its `observe` list has {len(observe)} values", m, \
            f"the spec has {m} input{'s' * (m != 1)}"
    return n, f"the spec has {n} state{'s' * (n != 1)}", m, \
        f"the spec has {m} input{'s' * (m != 1)}"


def load_sized(spec: Spec, node, base_dir: Path | None, what: str) -> OnnxNetwork:
    """load_network, and the sizes checked against the spec (OnnxFileError at the file)."""
    network = load_network(node.file, base_dir, what, spec)
    n, n_why, m, m_why = expected_sizes(spec, node)
    if network.n_in != n:
        raise OnnxFileError(f"{what} file '{node.file.value}' takes {network.n_in} values; "
                            f"{n_why}", node.file.span)
    if network.n_out != m:
        raise OnnxFileError(f"{what} file '{node.file.value}' returns {network.n_out} values; "
                            f"{m_why}", node.file.span)
    return network


def check_files(spec: Spec, base_dir: Path | None) -> list[Diagnostic]:
    """Located errors for the spec's ONNX files (none when it names none).  Reading a file
    runs nothing: the graph is data, interpreted here."""
    diagnostics = []
    if spec.system is None:
        return diagnostics
    for what, node in (("backup", spec.backup), ("policy", spec.policy)):
        if getattr(node, "kind", None) != "onnx" or getattr(node, "file", None) is None:
            continue
        try:
            load_sized(spec, node, base_dir, what)
        except OnnxFileError as e:
            hint = None
            if "is not supported" in e.message:
                hint = ("export the controller as a feed-forward chain (Gemm/MatMul layers "
                        "with elementwise activations), or write it as `" + what + " torch`")
            elif "takes" in e.message and "values" in e.message:
                hint = ("the network's input is the state (x − x*) unless `observe = […]` "
                        "lists what it sees")
            diagnostics.append(Diagnostic(message=e.message, span=e.span, hint=hint))
    return diagnostics
