"""The closed loop x_{t+1} = f(x_t, π(x_t)) over sets: per-step interval hulls of the states and
inputs that enclose every trajectory the ordinary evaluator computes from a box of initial
states (compile/evaluator.py's float64 rollout, rounding included: zonotope.py).

What is covered: plants `linear` (exact but for rounding), `static`, `pendulum` (sin by a
mean-value remainder) and declared `discrete`/`ode` ones (declared.py: the integrator's one-step
map); policies `mlp` (tanh, sigmoid, relu, elu, softplus, identity; `residual = backup` over a
gain backup: lqr or linear, affine with `k` or around x*, or a feed-forward network: `onnx`,
a TorchScript `nn.Sequential`, a gain backup with its own `observe`)
and `linear`, and `torch`/`onnx` policies mapped onto the MLP family (per-layer activations,
LeakyReLU and ELU with a slope ≤ 1 included); around an operating point (x*, u*), with an
output scale, and with a declared observation (affine ones exactly but for rounding, others
through declared.py's affine arithmetic, or Unsupported naming what it cannot bound).
Anything else raises Unsupported with the reason (the verdict is then UNDECIDED, never PROVED).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.dtype import DTYPE
from scpo_spec.verify.zonotope import (COVERED, LIB_ERROR, TINY, U, Zono, activation,
                                       affine, reduce, relaxable, up)


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


def backup_network(backup) -> tuple[list, list[str]] | None:
    """A backup that is a module, as the feed-forward network it computes: its layers
    [(W (out, in), b (out,) or None)] and their activations, read from the module compile
    already loaded (nothing is loaded or run here); None for a gain backup kept as K x
    (+ offset).  An ONNX backup's layers as read from its file; a TorchScript `nn.Sequential`
    of `nn.Linear` and activations by `policy torch`'s reader (torch_file.mlp_structure); a
    gain backup that declares `observe` as one layer (K, k) (its GainModule).  The operating
    point, observation and output scale around it are the backup's own (`around_of`), bounded
    by the caller.  Anything else raises Unsupported."""
    if backup.module is None:
        return None
    if getattr(backup, "network", None) is not None:  # onnx
        return list(backup.network.layers), list(backup.network.activations)
    from scpo_spec.policies.backup import GainModule
    from scpo_spec.policies.operating import AroundModule
    from scpo_spec.policies.torch_file import SUPPORTED, mlp_structure
    module = backup.module.net if isinstance(backup.module, AroundModule) else backup.module
    if isinstance(module, GainModule):  # u = o Kᵀ (+ k): one dot product, as the evaluator's
        return [(module.K, module.k if module.has_offset else None)], ["identity"]
    found = mlp_structure(module)
    if isinstance(found, str):
        raise Unsupported(f"a TorchScript backup that is not a feed-forward MLP ({found}) is "
                          f"not bounded by the verifier (it covers {SUPPORTED})")
    layers, at = [], 0
    for out, inp in found.layers:
        W = found.theta0[at:at + out * inp].reshape(out, inp)
        at += out * inp
        b = None
        if found.bias:
            b, at = found.theta0[at:at + out], at + out
        layers.append((W, b))
    activations = found.activations or \
        [found.activation] * (len(layers) - 1) + ["identity"]
    return layers, activations


class ClosedLoop:
    """The spec's plant and the policy θ, as maps over zonotopes."""

    def __init__(self, compiled: CompiledSpec, theta: torch.Tensor, keep: int = 30):
        dyn, family = compiled.dynamics, compiled.family
        self.n, self.m, self.keep = dyn.n, dyn.m, keep
        self.horizon = compiled.evaluator.horizon
        if dyn.kind == "linear":
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
            # the evaluator's constants: the same numbers (language.dynamics.PendulumEquations)
            self.pend = (dyn.equations.gravity, dyn.equations.gain, dyn.equations.dt)
        else:
            raise Unsupported(f"a '{dyn.kind}' system is not bounded by the verifier (it covers "
                              "linear, pendulum, static and declared discrete/ode plants)")
        self.kind = dyn.kind
        if family.activation == "python":  # policies.python_module.ModuleFamily
            raise Unsupported("a `policy python` module is not bounded by the verifier (it "
                              "covers MLP, linear, `policy torch` and `policy onnx` policies)")
        self.activations = list(family.per_layer)
        backup = family.backup
        network = None if backup is None else backup_network(backup)
        self.K = None if backup is None or network is not None else \
            torch.as_tensor(backup.K, dtype=DTYPE)
        self.offset = (None if backup is None or backup.offset is None
                       else torch.as_tensor(backup.offset, dtype=DTYPE))
        self.backup_layers = [] if network is None else [
            (torch.as_tensor(W, dtype=DTYPE), None if b is None else torch.as_tensor(b, dtype=DTYPE))
            for W, b in network[0]]
        self.backup_activations = [] if network is None else list(network[1])
        for name in set(self.activations + self.backup_activations):
            if not relaxable(name):
                raise Unsupported(f"no sound relaxation of the activation '{name}' yet "
                                  f"(covered: {COVERED})")
        self.around = family.around
        self.observe = self._observation_map(compiled, self.around, "policy")
        self.backup_around = self.backup_observe = None
        if network is not None:  # the backup's own operating point, observation and scale
            from scpo_spec.policies.operating import around_of
            self.backup_around = around_of(compiled.spec, compiled.spec.backup, self.n, self.m)
            self.backup_observe = self._observation_map(compiled, self.backup_around, "backup")
        theta = torch.as_tensor(theta, dtype=DTYPE).reshape(1, -1)
        self.layers = [(W[0].clone(), None if b is None else b[0, 0].clone())
                       for W, b in family._unpack(theta)]

    @property
    def batch(self) -> int:
        """Cells per batched pass: the largest generator matrix (cells × generators × width)
        kept near 2·10⁷ numbers (160 MB), at most 256 cells."""
        widths = [W.shape[0] for W, _ in self.layers + self.backup_layers]
        per_cell = (self.keep + 2 * self.n + self.m + sum(widths)) * max(widths + [self.n])
        return int(max(1, min(256, 20_000_000 // per_cell)))

    # ---- one step ----
    @staticmethod
    def _observation_map(compiled: CompiledSpec, around, what: str):
        """The declared observation of a controller as a map over zonotope columns (None when
        it declares none)."""
        if around is None or around.observe is None:
            return None
        from scpo_spec.verify.declared import Unbounded, observation_map
        try:
            return observation_map(compiled.spec, around.observe_exprs)
        except Unbounded as e:
            raise Unsupported(f"the {what}'s observation uses {e}, which the verifier "
                              "does not bound yet") from None

    @staticmethod
    def _chain(h: Zono, layers, activations: list[str], gain: tuple | None = None,
               offset: tuple | None = None) -> Zono:
        """A feed-forward chain over h; `gain` (x, K) (and `offset`, a constant part): + x Kᵀ
        (+ offset) in the last layer's dot product (the evaluator's addmm_), or after the last
        layer's activation when it has one."""
        last = len(layers) - 1
        extra = [p for p in (gain, offset) if p is not None]
        for i, ((W, b), name) in enumerate(zip(layers, activations)):
            parts = [(h, W)]
            if i == last and extra and name == "identity":
                parts += extra
                extra = []
            h = activation(affine(parts, b), name)
        if extra:
            h = affine([(h, torch.eye(h.c.shape[1], dtype=DTYPE, device=h.c.device)), *extra],
                       None)
        return h

    def policy(self, x: Zono) -> Zono:
        """u = net(x) (+ K x (+ offset), or + backup_net(x)), its generators x's first, then an
        ONNX backup's neurons', then the policy's (fresh generators never share a position);
        around an operating point `_around` (the evaluator's operations in its order)."""
        backup = None
        if self.backup_layers:
            backup = self._network_backup(x)
            x = Zono(x.c, x.padded(backup.k), x.e)  # the policy's symbols after the backup's
        if self.around is not None:
            return self._around(x, backup)
        gain = None if self.K is None else (x, self.K)
        offset = None if self.offset is None else _one(x, self.offset)
        h = self._chain(x, self.layers, self.activations, gain, offset)
        if backup is None:
            return h
        eye = torch.eye(self.m, dtype=DTYPE, device=h.c.device)
        return affine([(h, eye), (backup, eye)], None)  # u = net(x) + backup(x): one addition

    def _network_backup(self, x: Zono) -> Zono:
        """An ONNX backup u_b = s ⊙ net(o) + u* (operating.AroundModule's operations), or
        net(x) when it acts around nothing."""
        around = self.backup_around
        o = x if around is None else self._observation(x, around, self.backup_observe)
        z = self._chain(o, self.backup_layers, self.backup_activations)
        if around is None:
            return z
        if around.scale is not None:
            from scpo_spec.verify.declared import _rounded
            s = z.c.new_tensor(around.scale)
            z = _rounded(z.c * s, z.G * s, z.e * s.abs())
        if not around.offset:
            return z
        eye = torch.eye(self.m, dtype=DTYPE, device=z.c.device)
        return affine([(z, eye), _one(x, z.c.new_tensor(around.u_star))], None)

    def _observation(self, x: Zono, around=None, observe=None) -> Zono:
        """o = observe(x) or x − x* (the policy's, unless another controller's is given)."""
        if around is None:
            around, observe = self.around, self.observe
        if observe is not None:
            from scpo_spec.verify.declared import Unbounded
            try:
                return _cat(observe([_column(x, i) for i in range(self.n)]))
            except Unbounded as e:
                raise Unsupported(f"an observation uses {e}, which the verifier does not "
                                  "bound yet") from None
        if not around.shifted:
            return x
        x_star = x.c.new_tensor(around.x_star)  # fl(x − x*): a two-term sum
        return affine([(x, torch.eye(self.n, dtype=DTYPE)), _one(x, -x_star)], None)

    def _around(self, x: Zono, backup: Zono | None = None) -> Zono:
        """o = observe(x) or x − x*; z = net(o); z ⊙= s; then z + x Kᵀ (+ offset) for a gain
        backup, z + backup(x) for an ONNX one, or z + u*."""
        h = self._chain(self._observation(x), self.layers, self.activations)
        if self.around.scale is not None:
            from scpo_spec.verify.declared import _rounded
            s = h.c.new_tensor(self.around.scale)
            h = _rounded(h.c * s, h.G * s, h.e * s.abs())
        parts = [(h, torch.eye(self.m, dtype=DTYPE))]
        if self.K is not None:
            parts.append((x, self.K))
            if self.offset is not None:
                parts.append(_one(x, self.offset))
        elif backup is not None:
            parts.append((backup, torch.eye(self.m, dtype=DTYPE)))
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
