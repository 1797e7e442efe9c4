"""Sound bounds [lo, hi] of each safety metric's g over a cell, from per-step enclosures of the
states and inputs (reach.py): compile/signals.py's semantics, evaluated on intervals.

Why intervals are enough here: the atoms are evaluated per step (no formula reads two steps
of one trajectory together), and every combinator of the robustness semantics — max (and,
always, the windows), min (or, eventually), until — is monotone in each atom's violation, so
applying it to the atoms' lower ends and to their upper ends bounds the metric (`not` and the
left of `->` swap the ends).  The float64 operations the evaluator performs (+, −, ×, /, sqrt,
max, min, |·|) are correctly rounded, hence monotone: the same operation on the interval's
ends bounds the evaluator's own rounded value, with no widening.  Library functions (exp, log,
tanh, pow, sin, cos) are widened by LIB_REL (relative) and the reductions whose order torch
chooses (norm of more than 4 components, quad) by γ_K.  lyapunov(P) is V(x_t)/max(V(x_0),
floor) with both ends bounded by intervals (loose near the origin, where V(x_0) may be 0).
What is not bounded (atan2, a smooth aggregate) raises Unsupported naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scpo_spec.compile import signals as S
from scpo_spec.dtype import DTYPE
from scpo_spec.language import expr as E
from scpo_spec.language.evaluate import evaluate
from scpo_spec.systems.expressions import _clip
from scpo_spec.verify.reach import Reach, Unsupported
from scpo_spec.verify.zonotope import LIB_ERROR, TINY, gamma

LIB_REL = 1e-14  # relative error allowed to torch's exp, log, tanh and pow (they are ≤ 2 ulps)


@dataclass
class Iv:
    lo: torch.Tensor    # (N|1, 1, L, K)
    hi: torch.Tensor
    timed: bool


def _down(x: torch.Tensor, rel: float) -> torch.Tensor:
    return x - rel * x.abs() - TINY


def _up(x: torch.Tensor, rel: float) -> torch.Tensor:
    return x + rel * x.abs() + TINY


def _square(lo, hi):
    """[mig², mag²] of [lo, hi] (exact up to fl's monotone rounding)."""
    mig = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo),
                      torch.minimum(lo.abs(), hi.abs()))
    mag = torch.maximum(lo.abs(), hi.abs())
    return mig * mig, mag * mag


def _abs(a: Iv) -> tuple:
    lo = torch.where(a.lo >= 0, a.lo, torch.where(a.hi <= 0, -a.hi, torch.zeros_like(a.lo)))
    return lo, torch.maximum(a.lo.abs(), a.hi.abs())


def _mul(a: Iv, b: Iv) -> tuple:
    corners = torch.stack(torch.broadcast_tensors(a.lo * b.lo, a.lo * b.hi,
                                                  a.hi * b.lo, a.hi * b.hi))
    return corners.amin(0), corners.amax(0)


def _div(a: Iv, b: Iv) -> tuple:
    safe = (b.lo > 0) | (b.hi < 0)
    corners = torch.stack(torch.broadcast_tensors(a.lo / b.lo, a.lo / b.hi,
                                                  a.hi / b.lo, a.hi / b.hi))
    lo, hi = corners.amin(0), corners.amax(0)
    return (torch.where(safe, lo, -torch.inf), torch.where(safe, hi, torch.inf))


def _pow(a: Iv, b: Iv) -> tuple:
    if b.timed or not torch.equal(b.lo, b.hi) or b.lo.numel() != 1:
        raise Unsupported("a power whose exponent is not one number is not bounded yet")
    p = float(b.lo.reshape(()))
    if p == int(p) and p >= 0:
        if int(p) % 2 == 0:
            lo, hi = _square(a.lo, a.hi) if p == 2 else (
                torch.where((a.lo <= 0) & (a.hi >= 0), torch.zeros_like(a.lo),
                            torch.minimum(a.lo.abs(), a.hi.abs())) ** p,
                torch.maximum(a.lo.abs(), a.hi.abs()) ** p)
        else:
            lo, hi = a.lo ** p, a.hi ** p
    else:  # x^p for x ≥ 0 (NaN below, as in the evaluator: unproved)
        neg = a.lo < 0
        ends = (a.lo ** p, a.hi ** p)
        lo, hi = (torch.minimum(*ends), torch.maximum(*ends))
        lo, hi = torch.where(neg, torch.nan, lo), torch.where(neg, torch.nan, hi)
    return _down(lo, LIB_REL), _up(hi, LIB_REL)


def _monotone_lib(fn):
    return lambda a: (_down(fn(a.lo), LIB_REL), _up(fn(a.hi), LIB_REL))


def _sin_cos(fn):
    """|f(x) − f(m)| ≤ |x − m| for sin and cos (mean value theorem), cut to [−1, 1]."""
    def bound(a: Iv):
        m = (a.lo + a.hi) / 2
        r = torch.maximum(a.hi - m, m - a.lo) * (1 + 1e-15) + TINY
        f = fn(m)
        width = r + 2 * LIB_ERROR
        return (torch.clamp(f - width, min=-1.0), torch.clamp(f + width, max=1.0))
    return bound


def _tan(a: Iv) -> tuple:
    """Increasing on (−π/2, π/2); an interval reaching past it is unbounded."""
    inside = (a.lo > -torch.pi / 2 + 1e-9) & (a.hi < torch.pi / 2 - 1e-9)
    lo, hi = _monotone_lib(torch.tan)(a)
    return torch.where(inside, lo, -torch.inf), torch.where(inside, hi, torch.inf)


_UNARY = {
    torch.neg: lambda a: (-a.hi, -a.lo),
    torch.abs: _abs,
    torch.sqrt: lambda a: (torch.sqrt(a.lo), torch.sqrt(a.hi)),
    torch.sign: lambda a: (torch.sign(a.lo), torch.sign(a.hi)),
    torch.exp: _monotone_lib(torch.exp),
    torch.log: _monotone_lib(torch.log),
    torch.tanh: _monotone_lib(torch.tanh),
    torch.sin: _sin_cos(torch.sin),
    torch.cos: _sin_cos(torch.cos),
    torch.tan: _tan,
}
_BINARY = {
    torch.add: lambda a, b: (a.lo + b.lo, a.hi + b.hi),
    torch.sub: lambda a, b: (a.lo - b.hi, a.hi - b.lo),
    torch.mul: _mul,
    torch.div: _div,
    torch.pow: _pow,
    torch.minimum: lambda a, b: (torch.minimum(a.lo, b.lo), torch.minimum(a.hi, b.hi)),
    torch.maximum: lambda a, b: (torch.maximum(a.lo, b.lo), torch.maximum(a.hi, b.hi)),
}


def _steps(vals: list[Iv]) -> tuple[list[Iv], bool]:
    """Operands on their common steps (signals.py's rule: states and inputs meet on 0…T−1)."""
    timed = [v.lo.shape[2] for v in vals if v.timed]
    if not timed:
        return vals, False
    L = min(timed)
    return [Iv(v.lo[:, :, :L], v.hi[:, :, :L], True) if v.timed else v for v in vals], True


class IntervalCompiler(S.ElementwiseCompiler):
    """The metric compiler of compile/signals.py over intervals: a formula → its violation's
    bounds at t = 0 per cell, (lo, hi) each (N,)."""

    def __init__(self, states: list[str], inputs: list[str], consts: dict,
                 lyapunov_backup: np.ndarray | None = None,
                 lyapunov_center: np.ndarray | None = None):
        self.states, self.inputs, self.consts = states, inputs, consts
        self.lyapunov_backup = lyapunov_backup
        self.lyapunov_center = lyapunov_center  # x*: V = (x − x*)ᵀ P (x − x*)
        self.reach: Reach | None = None
        self.spectral_radius: float | None = None

    # ---- values ----
    def constant(self, value) -> Iv:
        t = torch.as_tensor(np.atleast_1d(np.asarray(value, dtype=np.float64)),
                            dtype=DTYPE).view(1, 1, 1, -1)
        return Iv(t, t, False)

    def combine(self, fn, vals) -> Iv:
        vals, timed = _steps(list(vals))
        if not timed and all(torch.equal(v.lo, v.hi) for v in vals):
            point = fn(*[v.lo for v in vals])  # numbers only: the evaluator's own value
            return Iv(point, point, False)
        if len(vals) == 1 and fn in _UNARY:
            lo, hi = _UNARY[fn](vals[0])
        elif len(vals) == 2 and fn in _BINARY:
            lo, hi = _BINARY[fn](*vals)
        elif fn is _clip:  # min(max(e, lo), hi)
            e, a, b = vals
            lo = torch.minimum(torch.maximum(e.lo, a.lo), b.lo)
            hi = torch.minimum(torch.maximum(e.hi, a.hi), b.hi)
        else:
            raise Unsupported(f"the function {getattr(fn, '__name__', fn)} is not bounded yet")
        return Iv(lo, hi, timed)

    def name(self, e: E.Name):
        r = lambda: self.reach  # noqa: E731 - read at evaluation time
        if e.id in self.states:
            i = self.states.index(e.id)
            return lambda ctx: Iv(r().states_lo[:, None, :, i:i + 1],
                                  r().states_hi[:, None, :, i:i + 1], True)
        if e.id in self.inputs:
            j = self.inputs.index(e.id)
            return lambda ctx: Iv(r().inputs_lo[:, None, :, j:j + 1],
                                  r().inputs_hi[:, None, :, j:j + 1], True)
        if e.id == "state":
            return lambda ctx: Iv(r().states_lo[:, None], r().states_hi[:, None], True)
        if e.id == "input":
            return lambda ctx: Iv(r().inputs_lo[:, None], r().inputs_hi[:, None], True)
        if e.id == "spectral_radius":  # exact: the evaluator's own value (no initial state)
            return lambda ctx: self.constant(self.spectral_radius)
        return S.Constant(self.constant(evaluate(E.Name(id=e.id), self.consts)))

    def special(self, e: E.Node):
        if isinstance(e, E.Vector):
            parts = [self.value(x) for x in e.items]

            def vector(ctx):
                vals, timed = _steps([p(ctx) for p in parts])
                lead = torch.broadcast_shapes(*[v.lo.shape[:3] for v in vals])
                return Iv(torch.cat([v.lo.expand(*lead, v.lo.shape[3]) for v in vals], 3),
                          torch.cat([v.hi.expand(*lead, v.hi.shape[3]) for v in vals], 3), timed)
            return vector
        if not isinstance(e, E.Call):
            raise Unsupported(f"'{E.unparse(e)}' is not bounded yet")
        f = e.func
        if f == "norm":
            arg = self.value(e.args[0])
            return lambda ctx: _norm(arg(ctx))
        if f == "quad":
            P = np.atleast_2d(evaluate(e.args[0], self.consts))
            arg = self.value(e.args[1])
            return lambda ctx: _quad(arg(ctx), P)
        if f == "lyapunov":  # V(x_t) / max(V(x_0), floor), V = xᵀPx: both ends monotone
            arg = e.args[0]
            P = (self.lyapunov_backup if isinstance(arg, E.Name) and arg.id == "backup"
                 else evaluate(arg, self.consts))
            if P is None:
                raise Unsupported("lyapunov(backup) without a backup's P")
            P = np.atleast_2d(np.asarray(P, dtype=np.float64))

            center = (None if self.lyapunov_center is None
                      else torch.as_tensor(self.lyapunov_center, dtype=DTYPE))

            def lyapunov(ctx):
                r = self.reach
                lo, hi = r.states_lo[:, None], r.states_hi[:, None]
                if center is not None:  # fl(x − x*) is monotone in x: the ends' own roundings
                    lo, hi = lo - center, hi - center
                V = _quad(Iv(lo, hi, True), P)
                lo0 = V.lo[:, :, :1].clamp_min(S.LYAPUNOV_FLOOR)
                hi0 = V.hi[:, :, :1].clamp_min(S.LYAPUNOV_FLOOR)
                lo, hi = V.lo.clamp_min(0), V.hi  # V ≥ 0 (P is positive semidefinite)
                return Iv(lo / hi0, hi / lo0, True)
            return lyapunov
        if f in ("min", "max") and len(e.args) == 1:
            arg = self.value(e.args[0])

            def over(ctx):
                v = arg(ctx)
                red = (lambda t: t.amax(3, keepdim=True)) if f == "max" else \
                    (lambda t: t.amin(3, keepdim=True))
                return Iv(red(v.lo), red(v.hi), v.timed)
            return over
        raise Unsupported(f"{f}(…) is not bounded by the verifier yet")

    # ---- formulas: (lo, hi) of the violation, (N|1, 1, L, 1) ----
    def formula(self, e: E.Node):
        body = self.bool(E.implicit_always(e))

        def at_start(reach: Reach, spectral_radius: float | None):
            self.reach, self.spectral_radius = reach, spectral_radius
            lo, hi, _ = body(1)
            return lo[:, 0, 0, 0], hi[:, 0, 0, 0]
        return at_start

    def bool(self, e: E.Node):
        """Formula → need ↦ (lo, hi, timed): signals.ExpressionCompiler.bool on both ends."""
        if isinstance(e, E.Compare):
            left, right = self.value(e.left), self.value(e.right)
            upper = e.op in ("<=", "<")

            def compare(need):
                (a, b), timed = _steps([left(None), right(None)])
                x, y = (a, b) if upper else (b, a)
                return ((x.lo - y.hi).amax(3, keepdim=True), (x.hi - y.lo).amax(3, keepdim=True),
                        timed)
            return compare
        if isinstance(e, E.Within):
            arg = self.value(e.arg)
            lo_c, hi_c = (float(v) for v in evaluate(e.interval, self.consts))

            def within(need):
                a = arg(None)
                return (torch.maximum(lo_c - a.hi, a.lo - hi_c).amax(3, keepdim=True),
                        torch.maximum(lo_c - a.lo, a.hi - hi_c).amax(3, keepdim=True), a.timed)
            return within
        if isinstance(e, (E.And, E.Or)):
            parts = [self.bool(a) for a in e.args]
            red = (lambda t: t.amax(0)) if isinstance(e, E.And) else (lambda t: t.amin(0))

            def junction(need):
                los, his, timed = _common([p(need) for p in parts])
                return red(torch.stack(los)), red(torch.stack(his)), timed
            return junction
        if isinstance(e, E.Not):
            arg = self.bool(e.arg)

            def negation(need):
                lo, hi, timed = arg(need)
                return -hi, -lo, timed
            return negation
        if isinstance(e, E.Implies):
            left, right = self.bool(e.left), self.bool(e.right)

            def implies(need):  # min(−h_φ, h_ψ)
                (alo, blo), (ahi, bhi), timed = _common([left(need), right(need)])
                return torch.minimum(-ahi, blo), torch.minimum(-alo, bhi), timed
            return implies
        if isinstance(e, E.Until):
            return self._until(e)
        if isinstance(e, E.Temporal):
            if e.op == "final":
                pushed = E.push_final(e)
                if pushed is not e:
                    return self.bool(pushed)
                body = self.bool(e.body)

                def final(need):
                    lo, hi, timed = body(None)
                    return (lo[:, :, -1:], hi[:, :, -1:], False) if timed else (lo, hi, False)
                return final
            body = self.bool(e.body)
            a, b = self._window(e.window)
            is_max = e.op == "always"

            def temporal(need):
                lo, hi, timed = body(None if need is None or b is None else need + b)
                if not timed:
                    return lo, hi, False
                return (S._sliding(lo, a, b, need, S.HARD, is_max),
                        S._sliding(hi, a, b, need, S.HARD, is_max), True)
            return temporal
        raise Unsupported(f"'{type(e).__name__}' formulas are not bounded yet")

    def _window(self, w):
        if w is None:
            return 0, None
        return int(evaluate(w.start, self.consts)), int(evaluate(w.end, self.consts))

    def _until(self, e: E.Until):
        left, right = self.bool(e.left), self.bool(e.right)
        a, b = self._window(e.window)

        def one_end(phi, psi, phi_timed, psi_timed, need):
            if not phi_timed and not psi_timed:
                return psi if a == 0 else torch.maximum(*torch.broadcast_tensors(phi, psi))
            phi, psi = torch.broadcast_tensors(phi, psi)
            L = phi.shape[2]
            n = L if need is None else min(need, L)
            if b is None and n > 1:
                return S._until_unbounded(phi, psi, a, n, S.HARD)
            return S._until_bounded(phi, psi, a, L - 1 if b is None else b, n, S.HARD)

        def until(need):
            reach = None if need is None or b is None else need + b
            p, q = left(reach), right(reach)
            timed = p[2] or q[2]
            if timed:
                (plo, qlo), (phi_, qhi), _ = _common([p, q])
            else:
                plo, phi_, qlo, qhi = p[0], p[1], q[0], q[1]
            return (one_end(plo, qlo, p[2], q[2], need), one_end(phi_, qhi, p[2], q[2], need),
                    timed)
        return until


def _common(parts: list[tuple]) -> tuple[list, list, bool]:
    """Operands (lo, hi, timed) of a connective on their common steps, broadcast."""
    timed = [p[0].shape[2] for p in parts if p[2]]
    L = min(timed) if timed else 1
    los = [p[0][:, :, :L] if p[2] else p[0] for p in parts]
    his = [p[1][:, :, :L] if p[2] else p[1] for p in parts]
    return (list(torch.broadcast_tensors(*los)), list(torch.broadcast_tensors(*his)),
            bool(timed))


def _norm(v: Iv) -> Iv:
    K = v.lo.shape[3]
    if K == 1:
        lo, hi = _abs(v)
        return Iv(lo, hi, v.timed)
    sq_lo, sq_hi = _square(v.lo, v.hi)
    s_lo, s_hi = sq_lo.sum(3, keepdim=True), sq_hi.sum(3, keepdim=True)
    g = 2 * gamma(K + 2)  # torch's summation order is its own
    return Iv(torch.sqrt(_down(s_lo, g).clamp_min(0)), torch.sqrt(_up(s_hi, g)), v.timed)


def _quad(v: Iv, P: np.ndarray) -> Iv:
    """vᵀPv by interval products (diagonal terms as squares), widened by γ_{K²}."""
    K = v.lo.shape[3]
    if P.size == 1:  # (t * t * P).sum over the components
        P = np.eye(K) * float(P.reshape(-1)[0])
    lo = hi = 0
    mag = 0
    for i in range(K):
        for j in range(K):
            p = float(P[i, j])
            if p == 0:
                continue
            a = Iv(v.lo[..., i:i + 1], v.hi[..., i:i + 1], v.timed)
            if i == j:
                tlo, thi = _square(a.lo, a.hi)
            else:
                tlo, thi = _mul(a, Iv(v.lo[..., j:j + 1], v.hi[..., j:j + 1], v.timed))
            tlo, thi = (tlo * p, thi * p) if p > 0 else (thi * p, tlo * p)
            lo, hi = lo + tlo, hi + thi
            mag = mag + torch.maximum(tlo.abs(), thi.abs())
    slack = 2 * gamma(K * K + 2) * mag + TINY
    return Iv(lo - slack, hi + slack, v.timed)
