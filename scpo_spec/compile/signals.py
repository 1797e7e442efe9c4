"""Compile signal expressions and formulas into batched torch functions of a rollout trace.

A trace holds the states x_0 … x_T (C, S, T+1, n) and inputs u_0 … u_{T−1} (C, S, T, m) of C
candidates on S scenarios.  Every sub-expression evaluates to a `Val`: a tensor (C, S, L, K) with
L the steps it is read at (T+1 over states, T once it reads an input: arithmetic mixing the two
keeps the common steps t = 0 … T−1, as LANGUAGE.md says) or L = 1 when it does not depend on
time, and K its components.  A `parameter` is one number per scenario (1, S, 1, 1), untimed; a
`disturbance` w_0 … w_{T−1} is read on the steps of an input (1, S, T, 1) — w_t is the value
that acted on the step from x_t to x_{t+1}.

Formulas follow discrete-time STL robustness semantics, written as violations h = −ρ: an atom is
its violation per step, `and` is the max, `or` the min, `not` the negation, `always[a:b]` the max
over the window [t+a, t+b] and `eventually[a:b]` the min, both cut at the operand's last sample;
`until` is the textbook discrete-time one (rtamt's).  A Boolean combination lives on the common
steps of its operands (a formula mixing a state and an input atom on t = 0 … T−1); a temporal
operator keeps its operand's steps.  The metric is h at t = 0 of the formula after
`implicit_always` (a part with no temporal operator means every step).  Each compiled formula
computes only the leading steps its reader needs, so an empty window (which `check` rejects) is
never evaluated.

With `aggregate smooth(τ)` every max becomes τ·logsumexp(·/τ), an upper bound of the max, so a
certified smooth metric certifies the hard one (the mins stay hard: a min of upper bounds is an
upper bound of the min).  Under `not` and on the left of `->` everything stays hard: a negated
upper bound would be a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from scpo_spec.language import expr as E
from scpo_spec.language.evaluate import evaluate
from scpo_spec.systems.expressions import Constant, ElementwiseCompiler

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
    """What an expression may read: the rollout, its scenarios' uncertain values, plus
    per-candidate quantities."""

    states: torch.Tensor                      # (C, S, T+1, n)
    inputs: torch.Tensor                      # (C, S, T, m)
    spectral_radius: torch.Tensor | None = None   # (C,)
    parameters: torch.Tensor | None = None        # (S, p): one value per scenario
    disturbances: torch.Tensor | None = None      # (T, S, d): one per step and scenario


class Reducer:
    """max and min over an axis; max is smooth (an upper bound) under `aggregate smooth(τ)`."""

    def __init__(self, tau: float | None = None):
        self.tau = tau

    def max(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if x.shape[dim] == 1:  # the max of one number is that number (NaN included): no copy
            return x
        if self.tau is None:
            return x.amax(dim=dim, keepdim=True)
        return self.tau * torch.logsumexp(x / self.tau, dim=dim, keepdim=True)

    @staticmethod
    def min(x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.amin(dim=dim, keepdim=True)

    def cummax(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Running max along `dim` (smooth: τ·logcumsumexp, again an upper bound)."""
        if self.tau is None:
            return torch.cummax(x, dim=dim).values
        return self.tau * torch.logcumsumexp(x / self.tau, dim=dim)

    def suffix(self, x: torch.Tensor, dim: int, is_max: bool) -> torch.Tensor:
        """out[t] = max (or min) of x[t:] along `dim`."""
        flipped = torch.flip(x, [dim])
        out = self.cummax(flipped, dim) if is_max else -torch.cummax(-flipped, dim=dim).values
        return torch.flip(out, [dim])


HARD = Reducer()


Compiled = Callable[[Trace], Val]


class ExpressionCompiler(ElementwiseCompiler[Val]):
    """Turns the expression tree of a checked spec into closures over a Trace.  The elementwise
    arithmetic and functions are systems.expressions' (shared with declared dynamics); what is
    here is what only a trace has: names of signals over time, norms, quadratic forms and
    formulas."""

    def __init__(self, states: list[str], inputs: list[str], consts: dict,
                 lyapunov_backup: np.ndarray | None, reducer: Reducer,
                 lyapunov_center: np.ndarray | None = None,
                 parameters: list[str] = (), disturbances: list[str] = ()):
        self.states, self.inputs, self.consts = states, inputs, consts
        self.parameters, self.disturbances = list(parameters), list(disturbances)
        self.lyapunov_backup = lyapunov_backup
        self.lyapunov_center = lyapunov_center  # x*: V = (x − x*)ᵀ P (x − x*) (None: 0)
        self.reduce = reducer

    # ---- formulas: → a violation per candidate and scenario, (C, S, 1, 1) ----
    def formula(self, e: E.Node) -> Compiled:
        """A metric body: h at t = 0 of the formula (untimed parts mean every step)."""
        body = self.bool(E.implicit_always(e))

        def per_scenario(trace: Trace) -> Val:
            return Val(body(trace, 1).t[:, :, :1], False)
        return per_scenario

    def bool(self, e: E.Node, reduce: Reducer | None = None) -> Callable[[Trace, int | None], Val]:
        """Formula → f(trace, need): its violation signal (C, S, L, 1) on at least its first
        `need` steps (all of them for None), never past its own last step."""
        reduce = self.reduce if reduce is None else reduce
        if isinstance(e, E.Compare):
            left, right = self.value(e.left), self.value(e.right)
            upper = e.op in ("<=", "<")

            def compare(trace, need):
                a, b = left(trace), right(trace)
                t = _align(a, b)
                h = (t[0] - t[1]) if upper else (t[1] - t[0])
                return Val(reduce.max(h, 3), a.timed or b.timed)
            return compare
        if isinstance(e, E.Within):
            arg = self.value(e.arg)
            lo, hi = (float(v) for v in evaluate(e.interval, self.consts))

            def within(trace, need):
                a = arg(trace)
                h = torch.maximum(lo - a.t, a.t - hi)
                return Val(reduce.max(h, 3), a.timed)
            return within
        if isinstance(e, (E.And, E.Or)):
            parts = [self.bool(a, reduce) for a in e.args]
            conj = isinstance(e, E.And)

            def junction(trace, need):
                ts, timed = _common([p(trace, need) for p in parts])
                stacked = torch.stack(ts, dim=0)
                out = reduce.max(stacked, 0) if conj else reduce.min(stacked, 0)
                return Val(out[0], timed)
            return junction
        if isinstance(e, E.Not):
            arg = self.bool(e.arg, HARD)
            return lambda trace, need: _map(arg(trace, need), torch.neg)
        if isinstance(e, E.Implies):
            left, right = self.bool(e.left, HARD), self.bool(e.right, reduce)

            def implies(trace, need):  # h = min(−h_φ, h_ψ): `not φ or ψ`
                (a, b), timed = _common([left(trace, need), right(trace, need)])
                return Val(torch.minimum(-a, b), timed)
            return implies
        if isinstance(e, E.Until):
            return self._until(e, reduce)
        if isinstance(e, E.Temporal):
            if e.op == "final":
                pushed = E.push_final(e)
                if pushed is not e:  # each operand of a connective at its own last step
                    return self.bool(pushed, reduce)
                body = self.bool(e.body, reduce)

                def final(trace, need):
                    v = body(trace, None)
                    return Val(v.t[:, :, -1:], False) if v.timed else v
                return final
            body = self.bool(e.body, reduce)
            a, b = self._window(e.window)
            is_max = e.op == "always"

            def temporal(trace, need):
                v = body(trace, None if need is None or b is None else need + b)
                if not v.timed:
                    return v
                return Val(_sliding(v.t, a, b, need, reduce, is_max), True)
            return temporal
        raise TypeError(f"not a formula: {type(e).__name__}")

    def _window(self, w: E.Window | None) -> tuple[int, int | None]:
        if w is None:
            return 0, None
        return (int(evaluate(w.start, self.consts)), int(evaluate(w.end, self.consts)))

    def _until(self, e: E.Until, reduce: Reducer):
        left, right = self.bool(e.left, reduce), self.bool(e.right, reduce)
        a, b = self._window(e.window)

        def until(trace, need):
            reach = None if need is None or b is None else need + b
            phi, psi = left(trace, reach), right(trace, reach)
            if not phi.timed and not psi.timed:  # constants: ψ at t' = t, or φ and ψ
                h = psi.t if a == 0 else reduce.max(torch.stack(
                    torch.broadcast_tensors(phi.t, psi.t)), 0)[0]
                return Val(h, False)
            (hphi, hpsi), _ = _common([phi, psi])
            L = hphi.shape[2]
            n = L if need is None else min(need, L)
            if b is None and n > 1:
                return Val(_until_unbounded(hphi, hpsi, a, n, reduce), True)
            return Val(_until_bounded(hphi, hpsi, a, L - 1 if b is None else b, n, reduce),
                       True)
        return until

    # ---- values: → Val (the elementwise part is ElementwiseCompiler.value) ----
    def constant(self, value: np.ndarray) -> Val:
        return _const(value)

    def combine(self, fn, vals) -> Val:
        """fn over operands on their common steps (states 0…T and inputs 0…T−1 meet on
        0…T−1), as `position + force` reads them."""
        timed = [v.t.shape[2] for v in vals if v.timed]
        steps = min(timed) if timed else 1
        if timed and max(timed) != steps:
            return Val(fn(*[v.t[:, :, :steps] if v.timed else v.t for v in vals]), True)
        return Val(fn(*[v.t for v in vals]), bool(timed))

    def name(self, e: E.Name) -> Compiled:
        name = e.id
        if name in self.states:
            i = self.states.index(name)
            return lambda trace: Val(trace.states[..., i:i + 1], True)
        if name in self.inputs:
            j = self.inputs.index(name)
            return lambda trace: Val(trace.inputs[..., j:j + 1], True)
        if name in self.parameters:  # one number per scenario, the same at every step
            k = self.parameters.index(name)
            return lambda trace: Val(trace.parameters[:, k].view(1, -1, 1, 1), False)
        if name in self.disturbances:  # w_0 … w_{T−1}: read on the steps of an input
            k = self.disturbances.index(name)
            return lambda trace: Val(trace.disturbances[:, :, k].t()[None, :, :, None], True)
        if name == "state":
            return lambda trace: Val(trace.states, True)
        if name == "input":
            return lambda trace: Val(trace.inputs, True)
        if name == "spectral_radius":
            return lambda trace: Val(trace.spectral_radius.view(-1, 1, 1, 1), False)
        return Constant(_const(evaluate(E.Name(id=name), self.consts)))

    def special(self, e: E.Node) -> Compiled:
        if isinstance(e, E.Vector):  # [position, force]: the entries as components, on
            return self.apply(_components, [self.value(x) for x in e.items])  # common steps
        if not isinstance(e, E.Call):
            raise TypeError(f"not a value: {type(e).__name__}")
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
            center = (None if self.lyapunov_center is None
                      else torch.as_tensor(self.lyapunov_center, dtype=DTYPE))

            def lyapunov(trace):
                x = trace.states if center is None else trace.states - center
                V = _quad(Val(x, True), P).t
                return Val(V / V[:, :, :1].clamp_min(LYAPUNOV_FLOOR), True)
            return lyapunov
        if f == "norm":
            arg = self.value(e.args[0])
            return lambda trace: _map(arg(trace), _norm)
        if f in ("min", "max") and len(e.args) == 1:  # over the components
            arg = self.value(e.args[0])
            red = (lambda t: t.amax(3, keepdim=True)) if f == "max" else \
                (lambda t: t.amin(3, keepdim=True))
            return lambda trace: _map(arg(trace), red)
        raise TypeError(f"unknown function '{f}'")


def _norm(t: torch.Tensor) -> torch.Tensor:
    """‖·‖₂ over the components (axis 3).  A few components are squared and added one at a
    time (0.21 instead of 0.32 ms for 2 × 70 000: torch's reduction over a short innermost axis
    is slow), within an ulp of vector_norm (neither rescales: both overflow alike; one
    component is |x|, as in vector_norm).  With autograd on, vector_norm itself (its gradient
    at 0 is 0, sqrt's is not)."""
    if t.shape[3] > 4 or torch.is_grad_enabled():
        return torch.linalg.vector_norm(t, dim=3, keepdim=True)
    if t.shape[3] == 1:  # vector_norm's own: |x| (no square to overflow)
        return t.abs()
    s = t[..., 0:1].square()
    for k in range(1, t.shape[3]):
        s += t[..., k:k + 1].square()
    return s.sqrt_()


def _components(*parts: torch.Tensor) -> torch.Tensor:
    """Vector entries (each (C|1, S|1, L|1, K)) side by side along the component axis."""
    lead = torch.broadcast_shapes(*[p.shape[:3] for p in parts])
    return torch.cat([p.expand(*lead, p.shape[3]) for p in parts], dim=3)


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


def _common(vals: list[Val]) -> tuple[list[torch.Tensor], bool]:
    """Operands of a connective on their common steps (a state atom's x_T has no partner in an
    input atom: the combination lives on t = 0 … T−1), broadcast to one shape."""
    timed = [v.t.shape[2] for v in vals if v.timed]
    steps = min(timed) if timed else 1
    ts = [v.t[:, :, :steps] if v.timed else v.t for v in vals]
    return list(torch.broadcast_tensors(*ts)), bool(timed)


def _fill(t: torch.Tensor, steps: int, value: float) -> torch.Tensor:
    """Extend the step axis to `steps` with a constant."""
    missing = steps - t.shape[2]
    if missing <= 0:
        return t
    fill = torch.full((*t.shape[:2], missing, t.shape[3]), value, dtype=t.dtype)
    return torch.cat([t, fill], dim=2)


def _sliding(x: torch.Tensor, a: int, b: int | None, need: int | None, reduce: Reducer,
             is_max: bool) -> torch.Tensor:
    """out[t] = max (min) of x over [t+a, t+b] cut at x's last step, for the first `need` steps.

    An empty window (t + a past the end; `check` makes sure none is read) is the neutral −∞
    for max and +∞ for min, as in rtamt."""
    L = x.shape[2]
    n = L if need is None else min(need, L)
    if b is not None:  # cut at the last sample before sizing anything: [t+a, t+b] ∩ [0, L−1]
        b = max(a, min(b, L - 1))  # is the same window for every t ≥ 0 once b ≥ L − 1
    neutral = -torch.inf if is_max else torch.inf
    red = (lambda t, d: reduce.max(t, d)) if is_max else Reducer.min
    if n == 1:  # the metric's own t = 0: one reduction, as cheap as before
        seg = x[:, :, a:L if b is None else b + 1]
        return red(seg, 2) if seg.shape[2] else _fill(x[:, :, :0], 1, neutral)
    if b is None:
        out = reduce.suffix(x[:, :, a:], 2, is_max) if is_max else \
            HARD.suffix(x[:, :, a:], 2, False)
        return _fill(out, n, neutral)[:, :, :n]
    w = b - a + 1
    seg = _fill(x[:, :, a:a + n - 1 + w], n - 1 + w, neutral)
    return red(seg.unfold(2, w, 1), 4)[..., 0]


def _until_bounded(phi: torch.Tensor, psi: torch.Tensor, a: int, b: int, n: int,
                   reduce: Reducer) -> torch.Tensor:
    """h(t) = min over t' ∈ [t+a, t+b] (cut) of max(h_ψ(t'), max over [t, t'−1] of h_φ)."""
    L = phi.shape[2]
    b = min(b, L - 1)  # t' ≤ L − 1 anyway: a bound past it sizes nothing (`until[0:100000]`)
    w = b + 1
    span = n - 1 + w

    def windows(x):  # (C, S, n, 1, w): x[t + k]; past the end filled with 0, masked below
        return _fill(x[:, :, :span], span, 0.0).unfold(2, w, 1)
    P, Q = windows(phi), windows(psi)
    before = reduce.cummax(P, 4)  # max over [t, t+k]; shifted: over [t, t+k−1]
    before = torch.cat([torch.full_like(before[..., :1], -torch.inf), before[..., :-1]], 4)
    val = reduce.max(torch.stack([Q, before], 0), 0)[0]
    t = torch.arange(n).view(n, 1, 1)
    k = torch.arange(w).view(1, 1, w)
    valid = (t + k <= L - 1) & (k >= a)
    return torch.where(valid, val, torch.inf).amin(4)


def _until_unbounded(phi: torch.Tensor, psi: torch.Tensor, a: int, n: int,
                     reduce: Reducer) -> torch.Tensor:
    """`until[a:]` for many t, backwards in time: U(t) = min(h_ψ(t), max(h_φ(t), U(t+1))) is
    `until[0:]`; a > 0 adds φ on [t, t+a−1]: h(t) = max(max h_φ[t, t+a−1], U(t+a))."""
    L = phi.shape[2]
    out = [psi[:, :, L - 1:L]]
    for t in range(L - 2, -1, -1):
        later = reduce.max(torch.stack(torch.broadcast_tensors(phi[:, :, t:t + 1], out[-1])),
                           0)[0]
        out.append(torch.minimum(psi[:, :, t:t + 1], later))
    U = torch.cat(out[::-1], dim=2)
    if a == 0:
        return U[:, :, :n]
    shifted = _fill(U[:, :, a:a + n], n, torch.inf)
    first = _sliding(phi, 0, a - 1, n, reduce, True)
    return reduce.max(torch.stack(torch.broadcast_tensors(first, shifted)), 0)[0]


def _quad(v: Val, P: torch.Tensor) -> Val:
    """vᵀ P v per scenario and step."""
    t = v.t
    if P.numel() == 1:
        return Val((t * t * P.view(())).sum(3, keepdim=True), v.timed)
    return Val(torch.einsum("cslk,kj,cslj->csl", t, P, t).unsqueeze(3), v.timed)
