"""Fold numeric expressions (numbers, vectors, matrices, constants) to values, in float64."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from scpo_spec.errors import ScpoError
from scpo_spec.language import expr as E
from scpo_spec.language.functions import NUMERIC_FUNCTIONS, ArgumentError
from scpo_spec.language.source import Span

BUILTIN_CONSTANTS = {"pi": math.pi}


class EvalError(ScpoError):
    """Why an expression has no value, with the reason as data (never parsed from the message):
    `unknown`, the name it could not resolve (the builder's "did you mean"); `arithmetic`, numpy
    refused the arithmetic (overflow, 0/0, log(0), …)."""

    def __init__(self, message: str, span: Span | None, hint: str | None = None,
                 unknown: str | None = None, arithmetic: bool = False):
        super().__init__(message)
        self.message, self.span, self.hint = message, span, hint
        self.unknown, self.arithmetic = unknown, arithmetic


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


def evaluate(e: E.Node, consts: dict[str, Any]) -> np.ndarray:
    """The value of a numeric expression; raises EvalError with the offending sub-expression."""
    with np.errstate(all="raise"):
        try:
            value = _eval(e, consts)
        except FloatingPointError as err:
            raise EvalError(f"arithmetic error: {err}", e.span, arithmetic=True) from None
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
            return np.asarray(fn(args), dtype=np.float64)
        except FloatingPointError as err:  # located at the call (log(0), sqrt(-1), …)
            raise EvalError(f"arithmetic error: {err}", e.span, arithmetic=True) from None
        except ArgumentError as err:
            raise EvalError(f"{e.func} {err}", e.span) from None
    if isinstance(e, E.Str):
        raise EvalError("expected a number, got a string", e.span)
    raise EvalError("expected a number, got a formula", e.span)


def to_plain(value: np.ndarray) -> Any:
    """A float, or nested lists of floats: what the model stores."""
    return float(value) if np.ndim(value) == 0 else np.asarray(value, dtype=np.float64).tolist()
