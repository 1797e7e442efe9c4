"""Elementwise expressions → torch closures: the one implementation of the expression language's
arithmetic and functions, shared by the metric compiler (compile/signals.py, over rollout
traces) and declared dynamics (systems/declared.py, over states and inputs).

A subclass says what a name is (`name`), how a number becomes a value (`constant`) and how
operands meet (`combine`: a trace's values align their steps first; plain tensors just
broadcast); everything else — `+ − * / ^`, unary minus, the elementwise functions and n-ary
`min`/`max` — lives here once.  Sub-expressions that read no signal are folded once, at compile
time (`2 * dt` is one number, not a multiplication per step).

Function semantics (language/functions.py's, whose numpy implementations agree): `sign(0) = 0`;
`atan2(y, x)` is torch.atan2; `clip(e, lo, hi)` is `min(max(e, lo), hi)` elementwise, so `hi`
wins when `lo > hi` (numpy.clip's rule); `log` of a negative number is NaN (unsafe, like any
non-finite value).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Sequence, TypeVar

import numpy as np
import torch

from scpo_spec.language import expr as E
from scpo_spec.language.functions import FUNCTIONS

V = TypeVar("V")


def _clip(e: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(e, lo), hi)


# The torch implementation of each function of language/functions.py that is computed
# elementwise (or pairwise, min/max of several arguments), keyed by its name; what is not
# elementwise (norm, quad, lyapunov, min/max of one vector) each compiler's `special` builds.
TORCH_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "abs": torch.abs, "sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log,
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "tanh": torch.tanh,
    "atan": torch.atan, "sign": torch.sign, "atan2": torch.atan2, "clip": _clip,
    "min": torch.minimum, "max": torch.maximum,
}
# name → (number of arguments, torch function), the arity the language's registry gives
ELEMENTWISE: dict[str, tuple[int, Callable[..., torch.Tensor]]] = {
    f.name: (f.arity, TORCH_FUNCTIONS[f.name]) for f in FUNCTIONS if f.shape == "elementwise"}
BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div, "^": torch.pow}
PAIRWISE = {f.name: TORCH_FUNCTIONS[f.name] for f in FUNCTIONS  # min(a, b, …) / max(a, b, …)
            if f.shape == "reduce"}
_ARITHMETIC = (torch.add, torch.sub, torch.mul, torch.div, torch.pow)


class Constant:
    """A compiled sub-expression that reads no signal: its value, computed once."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __call__(self, ctx: Any):
        return self.value


def _scalar(fn: Callable, c):
    """A number operand of arithmetic as a Python float (the same float64, but torch's scalar
    path: no tensor type promotion per call); tensors elsewhere (torch.atan2 needs them)."""
    if fn in _ARITHMETIC and isinstance(c, torch.Tensor) and c.ndim == 0:
        return c.item()
    return c


def _direct(fn: Callable, parts: Sequence[Callable]) -> Callable:
    """ctx ↦ fn(*operands), with constant operands bound once (numbers as Python floats where
    the result is bitwise the same: c + b, c · b, c − b as rsub; not c / b, whose Python form
    multiplies by a reciprocal)."""
    if len(parts) == 1:
        a = parts[0]
        return lambda ctx: fn(a(ctx))
    if len(parts) == 2:
        a, b = parts
        if isinstance(a, Constant):
            ca = a.value
            if fn in (torch.add, torch.mul) and ca.ndim == 0:
                ca = ca.item()
                return lambda ctx: fn(b(ctx), ca)
            if fn is torch.sub and ca.ndim == 0:
                ca = ca.item()
                return lambda ctx: torch.rsub(b(ctx), ca)
            return lambda ctx: fn(ca, b(ctx))
        if isinstance(b, Constant):
            cb = _scalar(fn, b.value)
            return lambda ctx: fn(a(ctx), cb)
        return lambda ctx: fn(a(ctx), b(ctx))
    return lambda ctx: fn(*[p(ctx) for p in parts])


class ElementwiseCompiler(Generic[V]):
    """Expression tree → closure ctx ↦ V.  Subclasses implement `name`, `constant`, `combine`
    and, for what is not elementwise (norm, quad, one-argument min/max, vectors), `special`."""

    def value(self, e: E.Node) -> Callable[[Any], V]:
        if isinstance(e, E.Num):
            return Constant(self.constant(np.float64(e.value)))
        if isinstance(e, E.Name):
            return self.name(e)
        if isinstance(e, E.Unary):
            return self.apply(torch.neg, [self.value(e.arg)])
        if isinstance(e, E.Binary):
            return self.apply(BINARY[e.op], [self.value(e.left), self.value(e.right)])
        if isinstance(e, E.Call) and e.func in ELEMENTWISE:
            arity, fn = ELEMENTWISE[e.func]
            if len(e.args) != arity:
                raise self.error(f"{e.func} takes {arity} argument{'s' * (arity != 1)}, got "
                                 f"{len(e.args)}", e)
            return self.apply(fn, [self.value(a) for a in e.args])
        if isinstance(e, E.Call) and e.func in PAIRWISE and len(e.args) > 1:
            parts = [self.value(a) for a in e.args]
            out = parts[0]
            for p in parts[1:]:
                out = self.apply(PAIRWISE[e.func], [out, p])
            return out
        return self.special(e)

    # values are plain tensors that meet by broadcasting: `fn(a, b)` is called directly, one
    # Python call less per operation on the hot path (declared dynamics)
    plain = False

    def apply(self, fn: Callable, parts: Sequence[Callable[[Any], V]]) -> Callable[[Any], V]:
        """fn over the operands' values; folded now when every operand is a constant."""
        combine = self.combine
        if all(isinstance(p, Constant) for p in parts):
            return Constant(combine(fn, [p.value for p in parts]))
        if self.plain:
            return _direct(fn, parts)
        if len(parts) == 1:
            a = parts[0]
            return lambda ctx: combine(fn, (a(ctx),))
        if len(parts) == 2:
            a, b = parts
            return lambda ctx: combine(fn, (a(ctx), b(ctx)))
        return lambda ctx: combine(fn, [p(ctx) for p in parts])

    # ---- what a subclass says ----
    def name(self, e: E.Name) -> Callable[[Any], V]:
        raise NotImplementedError

    def constant(self, value: np.ndarray) -> V:
        raise NotImplementedError

    def combine(self, fn: Callable, values: Sequence[V]) -> V:
        raise NotImplementedError

    def special(self, e: E.Node) -> Callable[[Any], V]:
        raise self.error(f"'{E.unparse(e)}' is not an elementwise expression", e)

    def error(self, message: str, e: E.Node) -> Exception:
        return TypeError(message)
