"""The methods SCPO is compared with, on the same compiled spec (plant, policy, scenarios,
metrics, objective, optimizer and raw step as `scpo train`):

- `sgd`: the raw step of ALGORITHM.md step 1 applied as it is (no projection, no verification);
- `penalty`: the paper's soft-penalty baseline, L(θ) + λ·Σ_i max(g_i(θ), 0) with λ = 1, which
  differentiates the metrics through the rollouts (SCPO never does);
- `full_fd`: coordinate finite differences, the SZO-QQ family (Guo et al. 2023): d + 1 rollouts
  per step estimate every ∇g_i, and the step is projected onto the quadratic bound
  g0 + ĝᵀΔ + e‖Δ‖ + (ℓ/2)‖Δ‖² ≤ −margin, where e = ℓ·h·√d/2 bounds the finite-difference error;
  verified and rejected like SCPO.  Feasible only for small d.

Each returns the iterates it would deploy and their metrics (evaluated for the comparison only;
`sgd` and `penalty` do not use them to decide anything).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import torch

from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.compile.projection import SOLVERS
from scpo_spec.engine.optimizers import Optimizer
from scpo_spec.engine.train import ELL_RELAX, ESTIMATE_START, MAX_TRIES, doubled

from scpo_spec.dtype import DTYPE
PENALTY_WEIGHT = 1.0
FD_MAX_ROLLOUTS = 2000   # full_fd runs only where d + 1 candidates per step stay below this
FD_CHUNK = 512


@dataclass
class MethodResult:
    method: str
    iterates: int = 0               # policies the method would deploy (θ₀ included)
    violating_iterates: int = 0     # …of which with any metric > 0
    loss_initial: float | None = None
    loss_final: float | None = None
    rollouts: int = 0               # candidate policies the method evaluated on the scenarios
    seconds: float = 0.0
    skipped: str | None = None
    history: list = field(default_factory=list)  # {"step", "g", "loss"} per deployed iterate

    def deploy(self, step: int, g: np.ndarray, loss: float) -> None:
        self.iterates += 1
        self.violating_iterates += int(np.any(~(np.asarray(g) <= 0)))
        self.history.append({"step": step, "g": [float(v) for v in g], "loss": float(loss)})
        if self.loss_initial is None:
            self.loss_initial = float(loss)
        self.loss_final = float(loss)

    def summary(self) -> dict:
        keys = ("iterates", "violating_iterates", "loss_initial", "loss_final", "rollouts",
                "seconds")
        out = {k: getattr(self, k) for k in keys}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def _raw_step(compiled: CompiledSpec, opt: Optimizer, grad: torch.Tensor) -> torch.Tensor:
    step, state = opt.propose(grad)
    opt.commit(state)
    norm = float(step.norm())
    r = compiled.settings.radius
    return step * (r / norm) if norm > r else step


def _optimizer(compiled: CompiledSpec) -> Optimizer:
    s = compiled.settings
    return Optimizer(s.optimizer, s.lr, s.momentum)


def _metrics(compiled: CompiledSpec, theta: torch.Tensor) -> np.ndarray:
    return compiled.evaluator(theta[None])[0].numpy()


def run_unconstrained(compiled: CompiledSpec, steps: int, penalty: bool = False) -> MethodResult:
    """`sgd` (penalty=False) or `penalty`: every iterate is deployed."""
    res = MethodResult("penalty" if penalty else "sgd")
    start = time.perf_counter()
    ev = compiled.evaluator
    theta = compiled.family.theta0.clone()
    opt = _optimizer(compiled)

    def soft(th):  # λ·Σ max(g_i, 0), through the rollouts (baseline only)
        g = ev.differentiable_metrics(th[None])[0]
        g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
        return PENALTY_WEIGHT * torch.clamp(g, min=0).sum()

    with torch.no_grad():
        res.deploy(0, _metrics(compiled, theta), float(compiled.objective(theta)))
    for step in range(steps):
        _, grad = compiled.objective.loss_and_grad(theta, soft if penalty else None)
        res.rollouts += int(penalty)
        if not torch.all(torch.isfinite(grad)):
            break  # diverged: nothing more to deploy
        theta = theta + _raw_step(compiled, opt, grad)
        with torch.no_grad():
            res.deploy(step + 1, _metrics(compiled, theta), float(compiled.objective(theta)))
    res.seconds = time.perf_counter() - start
    return res


class FdProjection:
    """min ‖Δ − s‖² s.t. g0_i + ĝ_iᵀΔ + e_i‖Δ‖ + (ℓ_i/2)‖Δ‖² ≤ −margin_i, ‖Δ‖ ≤ r (DPP)."""

    def __init__(self, k: int, d: int, radius: float, margins: np.ndarray, solver: str):
        self.g0, self.G = cp.Parameter(k), cp.Parameter((k, d))
        self.err, self.half_ell = cp.Parameter(k, nonneg=True), cp.Parameter(k, nonneg=True)
        self.s = cp.Parameter(d)
        self.delta, self.t = cp.Variable(d), cp.Variable()
        cons = [self.g0[i] + self.G[i] @ self.delta + self.err[i] * self.t
                + self.half_ell[i] * cp.sum_squares(self.delta) <= -margins[i] for i in range(k)]
        cons += [cp.norm(self.delta, 2) <= self.t, self.t <= radius]
        self.problem = cp.Problem(cp.Minimize(cp.sum_squares(self.delta - self.s)), cons)
        self.solver = SOLVERS[solver]

    def solve(self, g0, G, err, ell, s) -> np.ndarray | None:
        self.g0.value, self.G.value, self.err.value = g0, G, err
        self.half_ell.value, self.s.value = 0.5 * ell, s
        try:
            self.problem.solve(solver=self.solver)
        except cp.error.SolverError:
            return None
        if self.problem.status != cp.OPTIMAL or self.delta.value is None:
            return None
        return np.asarray(self.delta.value, dtype=np.float64)


def run_full_fd(compiled: CompiledSpec, steps: int, max_tries: int = MAX_TRIES) -> MethodResult:
    """Coordinate finite differences with a verified quadratic-bound projection."""
    res = MethodResult("full_fd")
    d, ev = compiled.family.d, compiled.evaluator
    if d + 1 > FD_MAX_ROLLOUTS:
        res.skipped = (f"not feasible: d + 1 = {d + 1} rollouts per step "
                       f"(limit {FD_MAX_ROLLOUTS})")
        return res
    start = time.perf_counter()
    s = compiled.settings
    margins = ev.margins
    spec_ell = np.array([m.smoothness or ESTIMATE_START for m in ev.metrics])
    ell = spec_ell.copy()
    h = s.perturbation
    projection = FdProjection(len(margins), d, s.radius, margins, s.solver)
    theta = compiled.family.theta0.clone()
    opt = _optimizer(compiled)
    g0 = _metrics(compiled, theta)
    res.rollouts += 1
    with torch.no_grad():
        res.deploy(0, g0, float(compiled.objective(theta)))
    eye = torch.eye(d, dtype=DTYPE) * h
    for step in range(steps):
        _, grad = compiled.objective.loss_and_grad(theta)
        raw = _raw_step(compiled, opt, grad)
        G = np.concatenate([ev(theta[None] + eye[i:i + FD_CHUNK]).numpy()
                            for i in range(0, d, FD_CHUNK)]).T  # (k, d)
        res.rollouts += d
        ghat = (G - g0[:, None]) / h
        ghat = np.where(np.isfinite(ghat), ghat, 0.0)
        for _ in range(max_tries):
            err = ell * h * np.sqrt(d) / 2
            delta = projection.solve(g0, ghat, err, ell, raw.numpy())
            if delta is None:
                break
            candidate = theta + torch.as_tensor(delta, dtype=DTYPE)
            g_new = _metrics(compiled, candidate)
            res.rollouts += 1
            if np.all(g_new <= -margins):
                theta, g0 = candidate, g_new
                with torch.no_grad():
                    res.deploy(step + 1, g0, float(compiled.objective(theta)))
                break
            ell = doubled(ell, ~(g_new <= -margins))
        ell = np.maximum(spec_ell, ell * ELL_RELAX)
    res.seconds = time.perf_counter() - start
    return res
