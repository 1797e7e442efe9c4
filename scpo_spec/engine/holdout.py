"""Holdout validation: the final policy rolled out on `holdout` fresh scenarios.

With zero violations among N scenarios drawn from the same distribution, the probability that a
fresh scenario violates is at most ln(1/β)/N with confidence 1 − β (the scenario approach's
one-sided bound for zero failures: (1 − p)^N ≤ β ⇒ p ≤ ln(1/β)/N).  The scenarios are a finite
sample; the bound is about that distribution, not about every initial state in the box.
"""

from __future__ import annotations

import numpy as np
import torch

from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.language.scenario_bounds import HOLDOUT_BETA, holdout_bound
from scpo_spec.plan.scenarios import (HOLDOUT_BLOCK, has_uncertainty, holdout_chunk, holdout_draws,
                                      uncertain_ranges)

BETA = HOLDOUT_BETA


def holdout_violations(ev, theta: torch.Tensor, chunk: int, spec=None) -> np.ndarray:
    """Per-scenario violations (N, k) of θ, rolled out `chunk` scenarios at a time: every
    scenario is independent of the others, so this equals one batch over all N while a large
    holdout's rollout (N × (T+1) × n floats, and more) never sits in memory at once.  With
    `spec` (an evaluator made with `draws=False`), each chunk's parameters and disturbances are
    drawn for it alone (holdout_draws' fixed blocks: the same values whatever the chunk), the
    chunk rounded down to whole blocks when it spans one or more."""
    N = ev.x0.shape[0]
    chunk = max(int(chunk), 1)
    if spec is not None and has_uncertainty(spec) and chunk >= HOLDOUT_BLOCK:
        chunk -= chunk % HOLDOUT_BLOCK
    kept: dict = {}
    parts = []
    for i in range(0, N, chunk):
        x0, draws = ev.select(slice(i, i + chunk))
        if spec is not None and ev.draws is None:
            draws = holdout_draws(spec, N, i, i + chunk, kept=kept)
        parts.append(ev.per_scenario(theta[None], x0, draws)[0].numpy())
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, len(ev.metrics)))


def validate_holdout(compiled: CompiledSpec, theta: torch.Tensor, beta: float = BETA,
                     chunk: int | None = None) -> dict:
    """Per-metric worst value and violation count on the holdout scenarios, and the bound.
    The scenarios are evaluated `chunk` at a time (default: as many as fit HOLDOUT_CHUNK_BYTES)."""
    count = int(compiled.spec.scenarios.holdout) if compiled.spec.scenarios.holdout is not None else 0
    names = [m.name for m in compiled.metrics]
    if count <= 0:
        return {"type": "holdout", "count": 0, "violations": None, "bound": None, "beta": beta,
                "worst": {}, "violations_per_metric": {}}
    spec = compiled.spec
    ev = compiled.holdout_evaluator(count, draws=False)  # each chunk draws its own
    if chunk is None:
        drawn = (len(uncertain_ranges(spec, "parameter")[0])
                 + ev.horizon * len(uncertain_ranges(spec, "disturbance")[0]))
        chunk = holdout_chunk(ev.horizon, compiled.dynamics.n, compiled.dynamics.m,
                              [out for out, _ in compiled.family.layers[:-1]], draws=drawn)
    try:
        h = holdout_violations(ev, theta, chunk, spec)  # (N, k): hard per-scenario violations
    finally:
        ev.close()  # a gymnasium plant's environments
    bad = ~(h <= 0)
    violations = int(bad.any(axis=1).sum())
    worst_idx = np.argmax(np.where(np.isfinite(h), h, np.inf), axis=0)
    return {
        "type": "holdout", "count": count, "beta": beta,
        "violations": violations,
        "bound": holdout_bound(count, beta) if violations == 0 else None,
        "worst": {n: float(h[worst_idx[i], i]) for i, n in enumerate(names)},
        "worst_scenario": {n: {"index": int(worst_idx[i]), "x0": ev.x0[worst_idx[i]].tolist(),
                               **_draw_of(spec, count, int(worst_idx[i]))}
                           for i, n in enumerate(names)},
        "violations_per_metric": {n: int(bad[:, i].sum()) for i, n in enumerate(names)},
    }


def _draw_of(spec, count: int, j: int) -> dict:
    """Holdout scenario j's parameter values and disturbance sequence (T, d), by name order ({}
    without uncertainty): what, with x0, re-simulates it (`load_run(...).simulate`)."""
    draws = holdout_draws(spec, count, j, j + 1)
    if draws is None:
        return {}
    return {"parameters": dict(zip(uncertain_ranges(spec, "parameter")[0],
                                   draws.parameters[0].tolist())),
            "disturbances": draws.disturbances[:, 0].tolist()}
