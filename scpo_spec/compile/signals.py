"""Compile signal expressions and formulas into batched torch functions of a rollout trace.

A trace holds the states x_0 … x_T (C, S, T+1, n) and inputs u_0 … u_{T−1} (C, S, T, m) of C
candidates on S scenarios.  Every sub-expression evaluates to a `Val`: a tensor (C, S, L, K) with
L the steps it is read at (T+1 over states, T once it reads an input: arithmetic mixing the two
keeps the common steps t = 0 … T−1, as LANGUAGE.md says) or L = 1 when it does not depend on
time, and K its components.  Atoms joined by `and`/`or` each keep their own steps: at t = T only
the state atoms have a value and decide alone, and `at final` reads each atom at its last step.  Formulas follow the robustness semantics: an atom is its violation, `and`/
`always`/components take the max, `or`/`eventually` the min.  With `aggregate smooth(τ)` every
max becomes τ·logsumexp(·/τ), an upper bound of the max, so a certified smooth metric certifies
the hard one (the mins stay hard: a min of upper bounds is an upper bound of the min).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from scpo_spec.language import expr as E
from scpo_spec.language.evaluate import evaluate

from scpo_spec.dtype import DTYPE
LYAPUNOV_FLOOR = 1e-12  # V(x_0) below this counts as this (a scenario starting at the origin)


@dataclass
class Val:
    t: torch.Tensor      # (C|1, S|1, L, K)
    timed: bool          # depends on the step (L is T+1 or T), else L = 1

    @property
    def steps(self) -> int:
        return self.t.shape[2]


@dataclass
class Trace:
    """What an expression may read: the rollout, plus per-candidate quantities."""

    states: torch.Tensor                      # (C, S, T+1, n)
    inputs: torch.Tensor                      # (C, S, T, m)
    spectral_radius: torch.Tensor | None = None   # (C,)


class Reducer:
    """max and min over an axis; max is smooth (an upper bound) under `aggregate smooth(τ)`."""

    def __init__(self, tau: float | None = None):
        self.tau = tau

    def max(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.tau is None or x.shape[dim] == 1:
            return x.amax(dim=dim, keepdim=True)
        return self.tau * torch.logsumexp(x / self.tau, dim=dim, keepdim=True)

    @staticmethod
    def min(x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.amin(dim=dim, keepdim=True)


Compiled = Callable[[Trace], Val]


class ExpressionCompiler:
    """Turns the expression tree of a checked spec into closures over a Trace."""

    def __init__(self, states: list[str], inputs: list[str], consts: dict,
                 lyapunov_backup: np.ndarray | None, reducer: Reducer):
        self.states, self.inputs, self.consts = states, inputs, consts
        self.lyapunov_backup = lyapunov_backup
        self.reduce = reducer

    # ---- formulas: → a violation per candidate and scenario, (C, S, 1, 1) ----
    def formula(self, e: E.Node) -> Compiled:
        """A metric body: formula → per-scenario violation; untimed atoms mean every step."""
        body = self.bool(e)
        reduce = self.reduce

        def per_scenario(trace: Trace) -> Val:
            v = body(trace)
            if v.timed:  # no temporal operator: the atom must hold at every step
                return Val(reduce.max(v.t, 2), False)
            return v
        return per_scenario

    def bool(self, e: E.Node) -> Compiled:
        reduce = self.reduce
        if isinstance(e, E.Compare):
            left, right = self.value(e.left), self.value(e.right)
            upper = e.op in ("<=", "<")

            def compare(trace):
                a, b = left(trace), right(trace)
                t = _align(a, b)
                h = (t[0] - t[1]) if upper else (t[1] - t[0])
                return Val(reduce.max(h, 3), a.timed or b.timed)
            return compare
        if isinstance(e, E.Within):
            arg = self.value(e.arg)
            lo, hi = (float(v) for v in evaluate(e.interval, self.consts))

            def within(trace):
                a = arg(trace)
                h = torch.maximum(lo - a.t, a.t - hi)
                return Val(reduce.max(h, 3), a.timed)
            return within
        if isinstance(e, (E.And, E.Or)):
            parts = [self.bool(a) for a in e.args]
            conj = isinstance(e, E.And)

            neutral = -torch.inf if conj else torch.inf

            def junction(trace):
                # each atom keeps its own steps (states 0…T, inputs 0…T−1): where one side has
                # no value (t = T for an input atom) the other side alone decides
                vals = [p(trace) for p in parts]
                steps = max(v.steps for v in vals if v.timed) if any(v.timed for v in vals) else 1
                ts = [(_pad(v.t, steps, neutral) if v.timed else v.t) for v in vals]
                stacked = torch.stack(torch.broadcast_tensors(*ts), dim=0)
                out = reduce.max(stacked, 0) if conj else reduce.min(stacked, 0)
                return Val(out[0], any(v.timed for v in vals))
            return junction
        if isinstance(e, E.Temporal):
            if e.op == "final" and isinstance(e.body, (E.And, E.Or)):
                # `at final` reads each atom at its own last step: T for states, T−1 for inputs
                parts = [E.Temporal(op="final", body=a, span=e.span) for a in e.body.args]
                return self.bool(type(e.body)(args=parts, span=e.body.span))
            body = self.bool(e.body)
            window = None
            if e.window is not None:
                window = (int(evaluate(e.window.start, self.consts)),
                          int(evaluate(e.window.end, self.consts)))
            op = e.op

            def temporal(trace):
                v = body(trace)
                if not v.timed:
                    return v
                t = v.t
                if op == "final":
                    return Val(t[:, :, -1:], False)
                if window is not None:
                    t = t[:, :, window[0]:window[1] + 1]
                out = reduce.max(t, 2) if op == "always" else reduce.min(t, 2)
                return Val(out, False)
            return temporal
        raise TypeError(f"not a formula: {type(e).__name__}")

    # ---- values: → Val ----
    def value(self, e: E.Node) -> Compiled:
        if isinstance(e, E.Num):
            c = _const(e.value)
            return lambda trace: c
        if isinstance(e, E.Name):
            return self._name(e.id)
        if isinstance(e, E.Unary):
            arg = self.value(e.arg)
            return lambda trace: _map(arg(trace), torch.neg)
        if isinstance(e, E.Binary):
            return self._binary(e)
        if isinstance(e, E.Vector):
            c = _const(evaluate(e, self.consts))
            return lambda trace: c
        if isinstance(e, E.Call):
            return self._call(e)
        raise TypeError(f"not a value: {type(e).__name__}")

    def _name(self, name: str) -> Compiled:
        if name in self.states:
            i = self.states.index(name)
            return lambda trace: Val(trace.states[..., i:i + 1], True)
        if name in self.inputs:
            j = self.inputs.index(name)
            return lambda trace: Val(trace.inputs[..., j:j + 1], True)
        if name == "state":
            return lambda trace: Val(trace.states, True)
        if name == "input":
            return lambda trace: Val(trace.inputs, True)
        if name == "spectral_radius":
            return lambda trace: Val(trace.spectral_radius.view(-1, 1, 1, 1), False)
        c = _const(evaluate(E.Name(id=name), self.consts))
        return lambda trace: c

    def _binary(self, e: E.Binary) -> Compiled:
        left, right = self.value(e.left), self.value(e.right)
        op = {"+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div,
              "^": torch.pow}[e.op]

        def binary(trace):
            a, b = left(trace), right(trace)
            x, y = _align(a, b)
            return Val(op(x, y), a.timed or b.timed)
        return binary

    def _call(self, e: E.Call) -> Compiled:
        f = e.func
        if f == "quad":
            P = torch.as_tensor(np.atleast_2d(evaluate(e.args[0], self.consts)), dtype=DTYPE)
            v = self.value(e.args[1])
            return lambda trace: _quad(v(trace), P)
        if f == "lyapunov":
            arg = e.args[0]
            if isinstance(arg, E.Name) and arg.id == "backup":
                P = self.lyapunov_backup
            else:
                P = evaluate(arg, self.consts)
            P = torch.as_tensor(P, dtype=DTYPE)

            def lyapunov(trace):
                V = _quad(Val(trace.states, True), P).t
                return Val(V / V[:, :, :1].clamp_min(LYAPUNOV_FLOOR), True)
            return lyapunov
        args = [self.value(a) for a in e.args]
        if f == "norm":
            return lambda trace: _map(args[0](trace),
                                      lambda t: torch.linalg.vector_norm(t, dim=3, keepdim=True))
        if f in ("min", "max"):
            if len(args) == 1:
                red = (lambda t: t.amax(3, keepdim=True)) if f == "max" else \
                    (lambda t: t.amin(3, keepdim=True))
                return lambda trace: _map(args[0](trace), red)
            pair = torch.maximum if f == "max" else torch.minimum

            def extreme(trace):
                vals = [a(trace) for a in args]
                out = vals[0]
                for v in vals[1:]:
                    x, y = _align(out, v)
                    out = Val(pair(x, y), out.timed or v.timed)
                return out
            return extreme
        fn = {"abs": torch.abs, "sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log,
              "sin": torch.sin, "cos": torch.cos, "tan": torch.tan}[f]
        return lambda trace: _map(args[0](trace), fn)


def _const(value) -> Val:
    a = np.atleast_1d(np.asarray(value, dtype=np.float64))
    return Val(torch.as_tensor(a, dtype=DTYPE).view(1, 1, 1, -1), False)


def _map(v: Val, fn) -> Val:
    return Val(fn(v.t), v.timed)


def _align(a: Val, b: Val) -> tuple[torch.Tensor, torch.Tensor]:
    """Both operands on their common steps (states 0…T and inputs 0…T−1 meet on 0…T−1)."""
    x, y = a.t, b.t
    if a.timed and b.timed and x.shape[2] != y.shape[2]:
        steps = min(x.shape[2], y.shape[2])
        x, y = x[:, :, :steps], y[:, :, :steps]
    return x, y


def _pad(t: torch.Tensor, steps: int, value: float) -> torch.Tensor:
    """Extend the step axis to `steps` with a neutral value (−inf for `and`, +inf for `or`)."""
    missing = steps - t.shape[2]
    if missing <= 0:
        return t
    fill = torch.full((*t.shape[:2], missing, t.shape[3]), value, dtype=t.dtype)
    return torch.cat([t, fill.expand(t.shape[0], t.shape[1], missing, t.shape[3])], dim=2)


def _quad(v: Val, P: torch.Tensor) -> Val:
    """vᵀ P v per scenario and step."""
    t = v.t
    if P.numel() == 1:
        return Val((t * t * P.view(())).sum(3, keepdim=True), v.timed)
    return Val(torch.einsum("cslk,kj,cslj->csl", t, P, t).unsqueeze(3), v.timed)
