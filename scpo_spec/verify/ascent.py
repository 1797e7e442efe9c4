"""The falsifier's gradient steps: a search for a counterexample, never a bound.

Where a cell's bound fails a metric and none of the falsifier's points (centre, corners,
random points, each with its disturbance sequences) violates it, a violation may still hide
in a patch between them.  From the cell's worst point, projected ascent on that metric's g —
over the initial state and the parameters within the cell, and the disturbance sequence
within its ranges — looks for it: sign steps (scale-free: each coordinate moves by a fraction
of its cell's width, the fraction halved every two steps, so the steps bisect towards a local
maximum), the gradient by autograd through the evaluator's differentiable rollout (the one the
cost objective uses: the same arithmetic as the evaluated rollout).

The gradient only chooses where to look.  The best point found is rolled out again by the
ordinary evaluator, under no_grad, by the caller (prove.py); only that g counts, and a
COUNTEREXAMPLE needs g > 0 there.  Nothing here trains or certifies: the project's rule that
safety metrics are never differentiated is about the training step and every certificate
number, which this never touches.
"""

from __future__ import annotations

import numpy as np
import torch

from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.dtype import DTYPE
from scpo_spec.plan.scenarios import Draws

GRADIENT_STEPS = 10   # rollouts (with their backward pass) per search
FIRST_STEP = 0.25     # of the cell's width (the disturbance's range); halved every two steps


def ascend(compiled: CompiledSpec, theta: torch.Tensor, x0: np.ndarray, draws: Draws | None,
           lo: np.ndarray, hi: np.ndarray, metric: np.ndarray, d_lo: np.ndarray,
           d_hi: np.ndarray, steps: int = GRADIENT_STEPS) -> tuple[np.ndarray, Draws | None]:
    """S searches at once, search s from the scenario (x0[s], draws' row s) over its cell
    [lo[s], hi[s]] (n + p: initial state then parameters) and the disturbances' ranges
    [d_lo, d_hi], raising g of `metric[s]`.  Returns the best point of each (x0 (S, n), its
    draws), by the differentiable rollout's g — for the caller to roll out again."""
    n = x0.shape[1]
    start = np.concatenate([x0, np.zeros((len(x0), 0)) if draws is None
                            else np.asarray(draws.parameters)], 1)
    z = torch.as_tensor(start, dtype=DTYPE)
    z_lo, z_hi = torch.as_tensor(lo, dtype=DTYPE), torch.as_tensor(hi, dtype=DTYPE)
    w = None if draws is None else torch.as_tensor(np.asarray(draws.disturbances), dtype=DTYPE)
    w_lo = torch.as_tensor(d_lo, dtype=DTYPE)
    w_hi = torch.as_tensor(d_hi, dtype=DTYPE)
    pick = torch.as_tensor(metric, dtype=torch.long)[:, None]
    best_g = torch.full((len(z),), -torch.inf, dtype=DTYPE)
    best_z, best_w = z.clone(), None if w is None else w.clone()
    theta = torch.as_tensor(theta, dtype=DTYPE).reshape(1, -1)
    for k in range(steps):
        zv = z.clone().requires_grad_(True)
        wv = None if w is None else w.clone().requires_grad_(w.shape[2] > 0)
        with torch.enable_grad():
            g = _metrics(compiled, theta, zv, n, wv).gather(1, pick)[:, 0]
        value = torch.where(torch.isnan(g), torch.inf, g.detach())  # NaN: unsafe, kept
        better = value > best_g
        best_g = torch.where(better, value, best_g)
        best_z[better] = z[better]
        if w is not None:
            best_w[:, better] = w[:, better]
        if k == steps - 1 or not g.requires_grad:
            break
        wanted = [zv] + ([wv] if wv is not None and wv.requires_grad else [])
        grads = torch.autograd.grad(torch.where(torch.isfinite(g), g, 0.0).sum(), wanted,
                                    allow_unused=True)
        step = FIRST_STEP * 0.5 ** (k / 2)
        z = _moved(z, grads[0], step, z_lo, z_hi)
        if len(grads) > 1:
            w = _moved(w, grads[1], step, w_lo, w_hi)
    x = best_z[:, :n].numpy()
    if draws is None:
        return x, None
    return x, Draws(best_z[:, n:].numpy(), best_w.numpy())


def _moved(v: torch.Tensor, grad: torch.Tensor | None, step: float, lo: torch.Tensor,
           hi: torch.Tensor) -> torch.Tensor:
    """One sign step up the gradient, a fraction `step` of the box's width, kept in the box."""
    if grad is None:
        return v
    direction = torch.sign(torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0))
    return torch.minimum(torch.maximum(v + step * (hi - lo) * direction, lo), hi)


def _metrics(compiled: CompiledSpec, theta: torch.Tensor, z: torch.Tensor, n: int,
             w: torch.Tensor | None) -> torch.Tensor:
    """Every metric's g (S, k) of the scenarios (z = x0 then parameters, w the disturbances)
    through the evaluator's differentiable rollout (grad enabled)."""
    evaluator = compiled.evaluator
    draws = None if w is None else Draws(z[:, n:], w)
    X, U = evaluator.rollout(theta, z[:, :n], draws)
    rho = None
    if evaluator.needs_spectral:
        with torch.no_grad():
            rho = evaluator.spectral_radius(theta)
    trace = evaluator.trace(X, U, draws, rho)
    S = z.shape[0]
    cols = []
    for m in evaluator.metrics:
        v = m.per_scenario(trace).t
        cols.append(v.reshape(v.shape[0], v.shape[1]).expand(1, S)[0])
    return torch.stack(cols, 1)
