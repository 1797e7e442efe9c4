"""Fold numeric expressions (numbers, vectors, matrices, constants) to values, in float64."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from scpo_spec.errors import ScpoError
from scpo_spec.language import expr as E
from scpo_spec.language.source import Span

BUILTIN_CONSTANTS = {"pi": math.pi}
MAX_SIZE = 1000  # the largest vector length or matrix side a spec may build


class EvalError(ScpoError):
    """Why an expression has no value; `unknown` is the name it could not resolve, if that was
    the reason (read by the builder for its "did you mean", never parsed from the message)."""

    def __init__(self, message: str, span: Span | None, hint: str | None = None,
                 unknown: str | None = None):
        super().__init__(message)
        self.message, self.span, self.hint, self.unknown = message, span, hint, unknown


def _scalar(x: np.ndarray, what: str, span) -> float:
    if x.ndim != 0:
        raise EvalError(f"{what} needs a number, got a {_shape_words(x)}", span)
    return float(x)


def _shape_words(x: np.ndarray) -> str:
    if x.ndim == 0:
        return "number"
    if x.ndim == 1:
        return f"vector of length {x.shape[0]}"
    return f"{x.shape[0]}×{x.shape[1]} matrix"


def _diag(args, span):
    values = [np.asarray(a) for a in args]
    if len(values) == 1 and values[0].ndim == 1:
        if values[0].shape[0] > MAX_SIZE:
            raise EvalError(f"diag of more than {MAX_SIZE} numbers", span)
        return np.diag(values[0])
    if any(v.ndim != 0 for v in values):
        raise EvalError("diag takes numbers, diag(1, 2), or one vector, diag([1, 2])", span)
    if not values:
        raise EvalError("diag needs at least one number", span)
    if len(values) > MAX_SIZE:
        raise EvalError(f"diag of more than {MAX_SIZE} numbers", span)
    return np.diag(np.array(values, dtype=np.float64))


def _eye(args, span):
    if len(args) != 1 or np.asarray(args[0]).ndim != 0:
        raise EvalError("eye takes one size, eye(2)", span)
    n = float(args[0])
    if n != int(n) or not 1 <= n <= MAX_SIZE:
        raise EvalError(f"eye needs a whole size between 1 and {MAX_SIZE}, got {n:g}", span)
    return np.eye(int(n))


def _elementwise(fn):
    def apply(args, span):
        if len(args) != 1:
            raise EvalError("takes exactly one argument", span)
        return fn(np.asarray(args[0], dtype=np.float64))
    return apply


def _reduce(fn):
    def apply(args, span):
        if not args:
            raise EvalError("needs at least one argument", span)
        if len(args) == 1:
            return fn(np.asarray(args[0], dtype=np.float64))
        try:
            return fn(np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in args]),
                      axis=0)
        except ValueError:
            raise EvalError("arguments have different shapes", span) from None
    return apply


def _broadcast(fn, arity: int, usage: str):
    """A function of `arity` arguments applied elementwise, numbers broadcast against vectors."""
    def apply(args, span):
        if len(args) != arity:
            raise EvalError(f"takes {arity} arguments: {usage}", span)
        try:
            values = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in args])
        except ValueError:
            raise EvalError("arguments have different shapes", span) from None
        return fn(*values)
    return apply


def _norm(args, span):
    if len(args) != 1:
        raise EvalError("takes exactly one argument", span)
    return np.sqrt(np.sum(np.square(np.asarray(args[0], dtype=np.float64))))


def _quad(args, span):
    if len(args) != 2:
        raise EvalError("takes a matrix and a vector: quad(P, x)", span)
    P, x = (np.asarray(a, dtype=np.float64) for a in args)
    if P.ndim == 0 and x.ndim == 0:
        return P * x * x
    if x.ndim != 1 or P.shape != (x.shape[0], x.shape[0]):
        raise EvalError(f"needs a {x.size}×{x.size} matrix for a vector of {x.size}", span)
    return x @ P @ x


# The semantics every evaluator of the language follows (compile/signals.py in torch too):
#   abs sqrt exp log sin cos tan tanh sign: elementwise; sign(0) = 0; log, sqrt outside their
#     domain (log x ≤ 0, sqrt x < 0) are errors here and −inf/NaN in a torch rollout
#   atan2(y, x): elementwise, the angle of (x, y) in (−π, π]; atan2(0, 0) = 0
#   clip(e, lo, hi) = min(max(e, lo), hi) elementwise (lo > hi gives hi, as numpy and torch do)
#   min, max of one argument: over its components; of several: elementwise
#   norm(v): Euclidean norm; quad(P, v) = vᵀ P v
NUMERIC_FUNCTIONS = {
    "abs": _elementwise(np.abs), "sqrt": _elementwise(np.sqrt), "exp": _elementwise(np.exp),
    "log": _elementwise(np.log), "sin": _elementwise(np.sin), "cos": _elementwise(np.cos),
    "tan": _elementwise(np.tan), "tanh": _elementwise(np.tanh), "sign": _elementwise(np.sign),
    "atan2": _broadcast(np.arctan2, 2, "atan2(y, x)"),
    "clip": _broadcast(lambda e, lo, hi: np.minimum(np.maximum(e, lo), hi), 3,
                       "clip(e, lo, hi)"),
    "min": _reduce(np.min), "max": _reduce(np.max), "norm": _norm, "quad": _quad,
    "diag": _diag, "eye": _eye,
}


def evaluate(e: E.Node, consts: dict[str, Any]) -> np.ndarray:
    """The value of a numeric expression; raises EvalError with the offending sub-expression."""
    with np.errstate(all="raise"):
        try:
            value = _eval(e, consts)
        except FloatingPointError as err:
            raise EvalError(f"arithmetic error: {err}", e.span) from None
        except OverflowError:
            raise EvalError("number too large", e.span) from None
    if not np.all(np.isfinite(value)):
        raise EvalError("the value is not a finite number", e.span)
    return value


def _eval(e: E.Node, consts: dict[str, Any]) -> np.ndarray:
    if isinstance(e, E.Num):
        return np.float64(e.value)
    if isinstance(e, E.Name):
        if e.id in consts:
            return np.asarray(consts[e.id], dtype=np.float64)
        if e.id in BUILTIN_CONSTANTS:
            return np.float64(BUILTIN_CONSTANTS[e.id])
        raise EvalError(f"unknown constant '{e.id}'", e.span, unknown=e.id)
    if isinstance(e, E.Unary):
        return -_eval(e.arg, consts)
    if isinstance(e, E.Binary):
        a, b = _eval(e.left, consts), _eval(e.right, consts)
        if a.ndim and b.ndim and a.shape != b.shape:
            raise EvalError(f"cannot combine a {_shape_words(a)} and a {_shape_words(b)} "
                            f"with '{e.op}'", e.span)
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if e.op == "/":
            if np.any(b == 0):
                raise EvalError("division by zero", e.right.span)
            return a / b
        if b.ndim:
            raise EvalError("the exponent must be a number", e.right.span)
        if np.any(a < 0) and float(b) != int(float(b)):
            raise EvalError("a negative number to a fractional power", e.span)
        if np.any(a == 0) and float(b) < 0:
            raise EvalError("zero to a negative power", e.span)
        return np.power(a, b)
    if isinstance(e, E.Vector):
        items = [_eval(i, consts) for i in e.items]
        if not items:
            raise EvalError("empty vector", e.span)
        shapes = {i.shape for i in items}
        if len(shapes) > 1:
            what = "rows" if any(i.ndim for i in items) else "entries"
            raise EvalError(f"the {what} of this matrix have different shapes", e.span,
                            hint="every row of a matrix needs the same number of entries")
        if items[0].ndim > 1:
            raise EvalError("only numbers, vectors and matrices are supported", e.span)
        return np.array(items, dtype=np.float64)
    if isinstance(e, E.Call):
        fn = NUMERIC_FUNCTIONS.get(e.func)
        if fn is None:
            raise EvalError(f"unknown function '{e.func}' in a number", e.span)
        args = [_eval(a, consts) for a in e.args]
        try:
            return np.asarray(fn(args, e.span), dtype=np.float64)
        except FloatingPointError as err:  # located at the call (log(0), sqrt(-1), …)
            raise EvalError(f"arithmetic error: {err}", e.span) from None
        except EvalError as err:
            if err.message.startswith(("takes", "needs", "arguments")):
                err.message = f"{e.func} {err.message}"
            raise
    if isinstance(e, E.Str):
        raise EvalError("expected a number, got a string", e.span)
    raise EvalError("expected a number, got a formula", e.span)


def to_plain(value: np.ndarray) -> Any:
    """A float, or nested lists of floats: what the model stores."""
    return float(value) if np.ndim(value) == 0 else np.asarray(value, dtype=np.float64).tolist()
