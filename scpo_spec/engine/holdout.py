"""Holdout validation: the final policy rolled out on `holdout` fresh scenarios.

With zero violations among N scenarios drawn from the same distribution, the probability that a
fresh scenario violates is at most ln(1/β)/N with confidence 1 − β (the scenario approach's
one-sided bound for zero failures: (1 − p)^N ≤ β ⇒ p ≤ ln(1/β)/N).  The scenarios are a finite
sample; the bound is about that distribution, not about every initial state in the box.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scpo_spec.compile.problem import CompiledSpec

BETA = 1e-6


def validate_holdout(compiled: CompiledSpec, theta: torch.Tensor, beta: float = BETA) -> dict:
    """Per-metric worst value and violation count on the holdout scenarios, and the bound."""
    count = int(compiled.spec.scenarios.holdout) if compiled.spec.scenarios.holdout is not None else 0
    names = [m.name for m in compiled.metrics]
    if count <= 0:
        return {"type": "holdout", "count": 0, "violations": None, "bound": None, "beta": beta,
                "worst": {}, "violations_per_metric": {}}
    ev = compiled.holdout_evaluator(count)
    h = ev.per_scenario(theta[None])[0].numpy()  # (N, k): hard per-scenario violations
    bad = ~(h <= 0)
    violations = int(bad.any(axis=1).sum())
    worst_idx = np.argmax(np.where(np.isfinite(h), h, np.inf), axis=0)
    return {
        "type": "holdout", "count": count, "beta": beta,
        "violations": violations,
        "bound": math.log(1 / beta) / count if violations == 0 else None,
        "worst": {n: float(h[worst_idx[i], i]) for i, n in enumerate(names)},
        "worst_scenario": {n: {"index": int(worst_idx[i]),
                               "x0": ev.x0[worst_idx[i]].tolist()} for i, n in enumerate(names)},
        "violations_per_metric": {n: int(bad[:, i].sum()) for i, n in enumerate(names)},
    }
