"""The closed loop x_{t+1} = f(x_t, π(x_t)) over sets: per-step interval hulls of the states and
inputs that enclose every trajectory the ordinary evaluator computes from a box of initial
states (compile/evaluator.py's float64 rollout, rounding included: zonotope.py).

What is covered: plants `linear` (exact but for rounding), `static`, `pendulum` (sin by a
mean-value remainder) and declared `discrete`/`ode` ones (declared.py: the integrator's one-step
map); policies `mlp` (tanh, sigmoid, relu, elu, softplus, identity; `residual = backup` over a
gain backup: lqr or linear, affine with `k` or around x*) and `linear`, and a `torch` policy
mapped onto the MLP family; around an operating point (x*, u*), with an output scale, and with
a declared observation (affine ones exactly but for rounding, others through declared.py's
affine arithmetic, or Unsupported naming what it cannot bound).
Anything else raises Unsupported with the reason (the verdict is then UNDECIDED, never PROVED).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.dtype import DTYPE
from scpo_spec.verify.zonotope import (ACTIVATIONS, LIB_ERROR, TINY, U, Zono, activation,
                                       affine, reduce, up)


class Unsupported(Exception):
    """The verifier cannot bound this spec soundly (the reason says what)."""


@dataclass
class Reach:
    """Per-step enclosures of N cells' trajectories (float64, outward)."""

    states_lo: torch.Tensor   # (N, T+1, n)
    states_hi: torch.Tensor
    inputs_lo: torch.Tensor   # (N, T, m)
    inputs_hi: torch.Tensor


def _cat(zs: list[Zono]) -> Zono:
    """Components side by side (generators shared by position, zero-padded)."""
    k = max(z.k for z in zs)
    return Zono(torch.cat([z.c for z in zs], 1), torch.cat([z.padded(k) for z in zs], 2),
                torch.cat([z.e for z in zs], 1))


def _column(z: Zono, i: int) -> Zono:
    return Zono(z.c[:, i:i + 1], z.G[:, :, i:i + 1], z.e[:, i:i + 1])


def _one(like: Zono, value: torch.Tensor) -> tuple[Zono, torch.Tensor]:
    """A constant vector as an `affine` part: the number 1 (no generators) times value (D, 1),
    so that it counts as one more term of the evaluator's sum."""
    N = like.c.shape[0]
    one = Zono(like.c.new_ones(N, 1), like.c.new_zeros(N, 0, 1), like.c.new_zeros(N, 1))
    return one, value.reshape(-1, 1)


def _sin(z: Zono) -> Zono:
    """sin over a one-component zonotope: sin(c) + cos(c)(x − c) + R, |R| ≤ r²/2·max|sin| on
    [c − r, c + r] (Taylor with Lagrange remainder), one fresh generator for R and the errors of
    sin/cos here and in the evaluator (LIB_ERROR each)."""
    r = z.radius()
    s0, lam = torch.sin(z.c), torch.cos(z.c)
    curvature = torch.clamp(s0.abs() + LIB_ERROR + r, max=1.0)
    remainder = r * r / 2 * curvature
    radius = (lam.abs() * z.e + remainder + LIB_ERROR * (2 + r)
              + 2 * U * (lam.abs() * up(z.G.abs().sum(1), z.k) + s0.abs()) + TINY)
    return Zono(s0, torch.cat([lam.unsqueeze(1) * z.G, up(radius, 6).unsqueeze(1)], 1),
                torch.zeros_like(z.e))


class ClosedLoop:
    """The spec's plant and the policy θ, as maps over zonotopes."""

    def __init__(self, compiled: CompiledSpec, theta: torch.Tensor, keep: int = 30):
        dyn, family = compiled.dynamics, compiled.family
        self.n, self.m, self.keep = dyn.n, dyn.m, keep
        self.horizon = compiled.evaluator.horizon
        if dyn.kind == "linear" and dyn.map is None:
            self.A = torch.as_tensor(dyn.A, dtype=DTYPE)
            self.B = torch.as_tensor(dyn.B, dtype=DTYPE)
        elif dyn.kind in ("discrete", "ode"):
            from scpo_spec.verify.declared import Unbounded, declared_step
            try:
                self.declared = declared_step(compiled.spec)
            except Unbounded as e:
                raise Unsupported(self._unbounded(dyn.kind, e)) from None
        elif dyn.kind == "static":
            pass  # x⁺ = x: the policy is a model y = f(x) of fixed inputs
        elif dyn.kind == "pendulum":
            # the evaluator's constants, computed by the same Python expressions
            self.pend = (3 * dyn.g / (2 * dyn.length), 3 / (dyn.mass * dyn.length ** 2), dyn.dt)
        else:
            raise Unsupported(f"a '{dyn.kind}' system is not bounded by the verifier (it covers "
                              "linear, pendulum, static and declared discrete/ode plants)")
        self.kind = dyn.kind
        if family.activation == "python":  # policies.python_module.ModuleFamily
            raise Unsupported("a `policy python` module is not bounded by the verifier (it "
                              "covers MLP, linear and `policy torch` policies)")
        if len(family.layers) > 1 and family.activation not in ACTIVATIONS:
            raise Unsupported(f"no sound relaxation of the activation '{family.activation}' "
                              f"yet (covered: {', '.join(ACTIVATIONS)})")
        self.activation = family.activation
        backup = family.backup
        if backup is not None and backup.module is not None:
            raise Unsupported("a frozen backup (a TorchScript backup, an ONNX file, or one that declares "
                              "`observe`) is not bounded by the verifier yet")
        self.K = None if backup is None else torch.as_tensor(backup.K, dtype=DTYPE)
        self.offset = (None if backup is None or backup.offset is None
                       else torch.as_tensor(backup.offset, dtype=DTYPE))
        self.around = family.around
        self.observe = None
        if self.around is not None and self.around.observe is not None:
            from scpo_spec.verify.declared import Unbounded, observation_map
            try:
                self.observe = observation_map(compiled.spec, self.around.observe_exprs)
            except Unbounded as e:
                raise Unsupported(f"the policy's observation uses {e}, which the verifier "
                                  "does not bound yet") from None
        theta = torch.as_tensor(theta, dtype=DTYPE).reshape(1, -1)
        self.layers = [(W[0].clone(), None if b is None else b[0, 0].clone())
                       for W, b in family._unpack(theta)]

    @property
    def batch(self) -> int:
        """Cells per batched pass: the largest generator matrix (cells × generators × width)
        kept near 2·10⁷ numbers (160 MB), at most 256 cells."""
        widths = [W.shape[0] for W, _ in self.layers]
        per_cell = (self.keep + 2 * self.n + self.m + sum(widths)) * max(widths + [self.n])
        return int(max(1, min(256, 20_000_000 // per_cell)))

    # ---- one step ----
    def policy(self, x: Zono) -> Zono:
        """u = net(x) (+ K x (+ offset)), its generators x's first, then the neurons'; around
        an operating point `_around` (the evaluator's operations in its order)."""
        if self.around is not None:
            return self._around(x)
        h, last = x, len(self.layers) - 1
        for i, (W, b) in enumerate(self.layers):
            parts = [(h, W)]
            if i == last and self.K is not None:  # u = W h + b, then += x Kᵀ (addmm_)
                parts.append((x, self.K))
                if self.offset is not None:  # + (x Kᵀ + offset): one more term of the sum
                    parts.append(_one(x, self.offset))
            h = affine(parts, b)
            if i < last:
                h = activation(h, self.activation)
        return h

    def _observation(self, x: Zono) -> Zono:
        if self.observe is not None:
            from scpo_spec.verify.declared import Unbounded
            try:
                return _cat(self.observe([_column(x, i) for i in range(self.n)]))
            except Unbounded as e:
                raise Unsupported(f"the policy's observation uses {e}, which the verifier "
                                  "does not bound yet") from None
        if not self.around.shifted:
            return x
        x_star = x.c.new_tensor(self.around.x_star)  # fl(x − x*): a two-term sum
        return affine([(x, torch.eye(self.n, dtype=DTYPE)), _one(x, -x_star)], None)

    def _around(self, x: Zono) -> Zono:
        """o = observe(x) or x − x*; z = net(o); z ⊙= s; then z + x Kᵀ (+ offset) for a gain
        backup, or z + u*."""
        h, last = self._observation(x), len(self.layers) - 1
        for i, (W, b) in enumerate(self.layers):
            h = affine([(h, W)], b)
            if i < last:
                h = activation(h, self.activation)
        if self.around.scale is not None:
            from scpo_spec.verify.declared import _rounded
            s = h.c.new_tensor(self.around.scale)
            h = _rounded(h.c * s, h.G * s, h.e * s.abs())
        parts = [(h, torch.eye(self.m, dtype=DTYPE))]
        if self.K is not None:
            parts.append((x, self.K))
            if self.offset is not None:
                parts.append(_one(x, self.offset))
        elif self.around.offset:
            parts.append(_one(x, h.c.new_tensor(self.around.u_star)))
        return h if len(parts) == 1 else affine(parts, None)

    @staticmethod
    def _unbounded(kind: str, e: Exception) -> str:
        return (f"the {kind} system's equations use {e}, which the verifier does not bound "
                "yet")

    def plant(self, x: Zono, u: Zono) -> Zono:
        if self.kind in ("discrete", "ode"):
            from scpo_spec.verify.declared import Unbounded
            try:
                return _cat(self.declared([_column(x, i) for i in range(self.n)],
                                          [_column(u, j) for j in range(self.m)]))
            except Unbounded as e:
                raise Unsupported(self._unbounded(self.kind, e)) from None
        if self.kind == "static":  # the evaluator copies x: exact
            return Zono(x.c, x.G, x.e)
        if self.kind == "linear":  # x Aᵀ, then += u Bᵀ (addmm_): one dot of n + m terms
            return affine([(x, self.A), (u, self.B)], None)
        a, b, dt = self.pend
        joint = _cat([x, u])
        s = _sin(_column(joint, 0))
        accel = affine([(joint, joint.c.new_tensor([[0.0, 0.0, b]])),
                        (s, joint.c.new_tensor([[a]]))], None)
        omega = affine([(joint, joint.c.new_tensor([[0.0, 1.0, 0.0]])),
                        (accel, joint.c.new_tensor([[dt]]))], None)
        theta = affine([(joint, joint.c.new_tensor([[1.0, 0.0, 0.0]])),
                        (omega, joint.c.new_tensor([[dt]]))], None)
        return _cat([theta, omega])

    def reach(self, lo: torch.Tensor, hi: torch.Tensor) -> Reach:
        """Enclosures over T steps from the initial boxes [lo, hi] (N, n)."""
        N, T = lo.shape[0], self.horizon
        s_lo = lo.new_empty(N, T + 1, self.n)
        s_hi = torch.empty_like(s_lo)
        i_lo, i_hi = lo.new_empty(N, T, self.m), lo.new_empty(N, T, self.m)
        x = Zono.box(lo, hi)
        with torch.no_grad():
            for t in range(T):
                s_lo[:, t], s_hi[:, t] = x.hull()
                u = self.policy(x)
                i_lo[:, t], i_hi[:, t] = u.hull()
                x = reduce(self.plant(x, u), self.keep)
            s_lo[:, T], s_hi[:, T] = x.hull()
        return Reach(s_lo, s_hi, i_lo, i_hi)
