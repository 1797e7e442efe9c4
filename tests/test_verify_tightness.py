"""The S-shaped relaxations (tanh, σ): λ the chord's slope, and the band f(z) − λz ∈ μ ± β
tight — β the exact largest deviation, up to rounding terms — and sound on dense points of
random intervals (crossing 0, one-sided, tiny, far out), for f as the evaluator computes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scpo_spec.policies.policy import tanh_via_sigmoid_
from scpo_spec.verify.zonotope import Zono, activation

EVALUATED = {"tanh": lambda z: tanh_via_sigmoid_(z.clone()), "sigmoid": torch.sigmoid}
EXACT = {"tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z))}


def _intervals(seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centre = rng.normal(0, 3, 300)
    radius = 10.0 ** rng.uniform(-7, 1.3, 300)
    fixed = [[-1, 1], [0, 2], [-2, 0], [-3, 0.5], [0.5, 0.50000001], [-30, 40], [0, 0], [5, 9]]
    lo = np.concatenate([centre - radius, [a for a, _ in fixed]])
    hi = np.concatenate([centre + radius, [b for _, b in fixed]])
    return torch.tensor(np.stack([lo, hi], 1), dtype=torch.float64)


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_the_band_encloses_the_evaluators_activation_and_is_the_exact_deviation(name):
    intervals = _intervals(0 if name == "tanh" else 1)
    z = Zono.box(intervals[:, :1], intervals[:, 1:])
    out = activation(z, name)
    r = z.G[:, 0, 0]
    lam_r, beta = out.G[:, 0, 0], out.G[:, 1, 0]
    eps = torch.linspace(-1, 1, 40001, dtype=torch.float64)
    points = torch.minimum(torch.maximum(z.c + r[:, None] * eps, intervals[:, :1]),
                           intervals[:, 1:])
    eps = torch.where(r[:, None] > 0, (points - z.c) / r[:, None], 0.0)
    residual = EVALUATED[name](points) - (out.c + lam_r[:, None] * eps)
    assert (residual.abs() <= beta[:, None]).all()  # sound
    # tight: the oracle's exact range of f − λz (dense points and the exact critical points,
    # numpy), against the band's half-width; DeepZ's min(f′(l), f′(u)) is 2–4× wider
    lam = (lam_r / r).numpy()
    lo, hi = intervals[:, 0].numpy(), intervals[:, 1].numpy()
    zz = points.numpy()
    if name == "tanh":
        crit = np.arccosh(1 / np.sqrt(np.clip(lam, 1e-300, 1)))
    else:
        with np.errstate(divide="ignore"):  # λ = 0 far out: the critical point is at ∞
            crit = 2 * np.arctanh(np.sqrt(1 - 4 * np.clip(lam, 1e-300, 0.25)))
    zz = np.concatenate([zz, np.clip(crit, lo, hi)[:, None], np.clip(-crit, lo, hi)[:, None]], 1)
    g = EXACT[name](zz) - lam[:, None] * zz
    exact = (g.max(1) - g.min(1)) / 2
    wide = (hi - lo) > 1e-3
    assert np.all(beta.numpy() <= exact + 1e-12 + 1e-9 * (np.abs(lo) + np.abs(hi)))
    chord = (EXACT[name](hi) - EXACT[name](lo)) / np.where(wide, hi - lo, 1)
    np.testing.assert_allclose(lam[wide], chord[wide], rtol=1e-9, atol=1e-15)
    if name == "tanh":  # on [−1, 1]: tanh(t) − t·tanh(1), t = acosh(1/√tanh(1)) (DeepZ's λ = 0.42 leaves 0.34)
        i = len(intervals) - 8
        assert beta[i] == pytest.approx(0.081741508, abs=1e-8)
