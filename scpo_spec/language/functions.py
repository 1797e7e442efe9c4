"""The functions of the expression language: name, arity, shape rule, usage, what hover says, and
the numpy implementation — the one table the checker's typing, the numpy evaluator
(evaluate.py), `describe`, the language server and the torch compilers read.  The torch
implementations are systems/expressions.py's `TORCH_FUNCTIONS`, keyed by the same names (a test
holds the two to each other on random inputs).

A new elementwise function is one row here and one entry there.

Semantics every evaluator follows (compile/signals.py and systems/declared.py in torch too):
  abs sqrt exp log sin cos tan tanh atan sign: elementwise; sign(0) = 0; log, sqrt outside their
    domain (log x ≤ 0, sqrt x < 0) are errors here and −inf/NaN in a torch rollout
  atan2(y, x): elementwise, the angle of (x, y) in (−π, π]; atan2(0, 0) = 0
  clip(e, lo, hi) = min(max(e, lo), hi) elementwise (lo > hi gives hi, as numpy and torch do)
  min, max of one argument: over its components; of several: elementwise
  norm(v): Euclidean norm; quad(P, v) = vᵀ P v
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

MAX_SIZE = 1000  # the largest vector length or matrix side a spec may build

# How a call's type follows from its arguments' (the checker's typing, check_formulas.py):
#   elementwise: `arity` arguments broadcast against each other, the result their shape
#   reduce:      min/max — one argument: over its components; several: elementwise
#   norm:        one vector → one number
#   quad, lyapunov: a constant matrix with a vector (or `backup`), each typed on its own
#   matrix:      numbers only (diag, eye): not a signal function
Shape = Literal["elementwise", "reduce", "norm", "quad", "lyapunov", "matrix"]


class ArgumentError(ValueError):
    """A numpy implementation refusing its arguments; the evaluator locates it at the call and
    says it after the function's name ("takes exactly one argument" → "abs takes …")."""


@dataclass(frozen=True)
class Function:
    name: str
    arity: int | None        # None: any number (min, max, diag)
    shape: Shape
    usage: str               # how it is written, e.g. "atan2(y, x)"
    doc: str                 # what it means, one line (hover, completion)
    numpy: Callable[[list[np.ndarray]], np.ndarray] | None  # None: no value in a number

    @property
    def in_formulas(self) -> bool:
        """Usable on signals (formulas, lets, declared equations), not only in numbers."""
        return self.shape != "matrix"


def _elementwise(fn):
    def apply(args):
        if len(args) != 1:
            raise ArgumentError("takes exactly one argument")
        return fn(np.asarray(args[0], dtype=np.float64))
    return apply


def _reduce(fn):
    def apply(args):
        if not args:
            raise ArgumentError("needs at least one argument")
        if len(args) == 1:
            return fn(np.asarray(args[0], dtype=np.float64))
        try:
            return fn(np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in args]),
                      axis=0)
        except ValueError:
            raise ArgumentError("arguments have different shapes") from None
    return apply


def _broadcast(fn, arity: int, usage: str):
    """A function of `arity` arguments applied elementwise, numbers broadcast against vectors."""
    def apply(args):
        if len(args) != arity:
            raise ArgumentError(f"takes {arity} arguments: {usage}")
        try:
            values = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in args])
        except ValueError:
            raise ArgumentError("arguments have different shapes") from None
        return fn(*values)
    return apply


def _norm(args):
    if len(args) != 1:
        raise ArgumentError("takes exactly one argument")
    return np.sqrt(np.sum(np.square(np.asarray(args[0], dtype=np.float64))))


def _quad(args):
    if len(args) != 2:
        raise ArgumentError("takes a matrix and a vector: quad(P, x)")
    P, x = (np.asarray(a, dtype=np.float64) for a in args)
    if P.ndim == 0 and x.ndim == 0:
        return P * x * x
    if x.ndim != 1 or P.shape != (x.shape[0], x.shape[0]):
        raise ArgumentError(f"needs a {x.size}×{x.size} matrix for a vector of {x.size}")
    return x @ P @ x


def _diag(args):
    values = [np.asarray(a) for a in args]
    if len(values) == 1 and values[0].ndim == 1:
        if values[0].shape[0] > MAX_SIZE:
            raise ArgumentError(f"of more than {MAX_SIZE} numbers")
        return np.diag(values[0])
    if any(v.ndim != 0 for v in values):
        raise ArgumentError("takes numbers, diag(1, 2), or one vector, diag([1, 2])")
    if not values:
        raise ArgumentError("needs at least one number")
    if len(values) > MAX_SIZE:
        raise ArgumentError(f"of more than {MAX_SIZE} numbers")
    return np.diag(np.array(values, dtype=np.float64))


def _eye(args):
    if len(args) != 1 or np.asarray(args[0]).ndim != 0:
        raise ArgumentError("takes one size, eye(2)")
    n = float(args[0])
    if n != int(n) or not 1 <= n <= MAX_SIZE:
        raise ArgumentError(f"needs a whole size between 1 and {MAX_SIZE}, got {n:g}")
    return np.eye(int(n))


def _unary(name: str, fn, doc: str) -> Function:
    return Function(name, 1, "elementwise", f"{name}(e)", doc, _elementwise(fn))


def _nary(name: str, arity: int, fn, usage: str, doc: str) -> Function:
    return Function(name, arity, "elementwise", usage, doc, _broadcast(fn, arity, usage))


FUNCTIONS: tuple[Function, ...] = (
    _unary("abs", np.abs, "|e|, elementwise"),
    Function("norm", 1, "norm", "norm(v)", "the Euclidean norm of a vector", _norm),
    Function("min", None, "reduce", "min(a, b, …)",
             "of one argument: its smallest component; of several: elementwise", _reduce(np.min)),
    Function("max", None, "reduce", "max(a, b, …)",
             "of one argument: its largest component; of several: elementwise", _reduce(np.max)),
    _unary("sqrt", np.sqrt, "√e, elementwise"),
    _unary("exp", np.exp, "eᵉ, elementwise"),
    _unary("log", np.log, "the natural logarithm, elementwise"),
    _unary("sin", np.sin, "sine (radians), elementwise"),
    _unary("cos", np.cos, "cosine (radians), elementwise"),
    _unary("tan", np.tan, "tangent (radians), elementwise"),
    _unary("tanh", np.tanh, "hyperbolic tangent, elementwise"),
    _unary("atan", np.arctan, "the angle whose tangent is e, in (−π/2, π/2), elementwise; "
                              "atan(e) = atan2(e, 1)"),
    _nary("atan2", 2, np.arctan2, "atan2(y, x)",
          "the angle of the point (x, y) in (−π, π], elementwise; atan2(0, 0) = 0"),
    _nary("clip", 3, lambda e, lo, hi: np.minimum(np.maximum(e, lo), hi), "clip(e, lo, hi)",
          "min(max(e, lo), hi), elementwise"),
    _unary("sign", np.sign, "−1, 0 or 1, elementwise; sign(0) = 0"),
    Function("quad", 2, "quad", "quad(P, v)", "vᵀ P v, with P a constant matrix", _quad),
    Function("lyapunov", 1, "lyapunov", "lyapunov(backup)",
             "V(x_t)/V(x₀) with V(x) = xᵀPx (P: the lqr backup's Riccati matrix, or a constant "
             "matrix)", None),
    Function("diag", None, "matrix", "diag(1, 2)", "a diagonal matrix (numbers only)", _diag),
    Function("eye", 1, "matrix", "eye(n)", "the n×n identity matrix (numbers only)", _eye),
)

BY_NAME = {f.name: f for f in FUNCTIONS}
# what a formula, a let or an equation may call
SIGNAL_FUNCTIONS = tuple(f.name for f in FUNCTIONS if f.in_formulas)
# what a number (`const`, a matrix entry, a range) may call
NUMERIC_FUNCTIONS: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {
    f.name: f.numpy for f in FUNCTIONS if f.numpy is not None}
