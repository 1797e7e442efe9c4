"""The falsifier's gradient steps (verify/ascent.py): a violating patch that the cell's centre,
corners and random points all miss is found by projected ascent on g, and the point is a
COUNTEREXAMPLE only because the ordinary evaluator, rolling it out again, gives g > 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scpo_spec.verify.prove import RANDOM_POINTS, SEED, verify
from tests.test_verify import _compiled, _spec_text

STEEP, HALF_WIDTH = 8.0, 0.1   # each ridge: tanh(k(a − a0 + w)) − tanh(k(a − a0 − w))


def _falsifier_points() -> np.ndarray:
    """What the falsifier rolls out on the one cell [0, 1]² (prove._falsify's order: the
    centre, the corners, then RANDOM_POINTS from the seeded generator)."""
    rng = np.random.default_rng(SEED)
    corners = [[0, 0], [0, 1], [1, 0], [1, 1]]
    return np.vstack([[0.5, 0.5], corners, rng.uniform([0, 0], [1, 1], (RANDOM_POINTS, 2))])


def _ridges(peak_g: float, system: str = "system static {\n  state a, b\n  input f\n}",
            horizon: int = 1, formula: str = "always abs(f) <= 1"):
    """x⁺ = x (one step), u = c·(ridge(a) + ridge(b)) from a 2-4-1 tanh MLP, peaking at the
    interior point farthest from every falsifier point, where |u| − 1 = peak_g."""
    points = _falsifier_points()
    grid = np.stack(np.meshgrid(*[np.linspace(0.25, 0.75, 51)] * 2), -1).reshape(-1, 2)
    a0, b0 = grid[np.argmax(np.linalg.norm(grid[:, None] - points[None], axis=2).min(1))]
    compiled = _compiled(_spec_text(None, None, "mlp { hidden = [4]  activation = tanh  seed = 0 }",
                                    "", horizon=horizon, system=system, box=((0, 1), (0, 1)),
                                    formulas=f"constraint limit: {formula}\n"))
    k, w = STEEP, HALF_WIDTH
    c = (1 + peak_g) / (4 * np.tanh(k * w))
    theta = torch.tensor([k, 0, k, 0, 0, k, 0, k,
                          -k * (a0 - w), -k * (a0 + w), -k * (b0 - w), -k * (b0 + w),
                          c, -c, c, -c, 0], dtype=torch.float64)
    return compiled, theta, np.array([a0, b0])


def test_gradient_steps_find_a_patch_the_centre_corners_and_random_points_miss():
    torch.set_num_threads(1)
    compiled, theta, peak = _ridges(0.05)
    ev = compiled.evaluator
    g = ev.per_scenario(theta[None], torch.as_tensor(_falsifier_points()))[0, :, 0]
    assert (g < -0.3).all()  # every point the falsifier rolls out is safe, by far
    samples = torch.rand(100_000, 2, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    violating = (ev.per_scenario(theta[None], samples)[0, :, 0] > 0).double().mean()
    assert 0 < violating < 0.01  # a small patch, around the peak
    result = verify(compiled, theta, cells=1)  # no splitting: only the one cell's falsifier
    r = result.constraints["limit"]
    assert result.verdict == r.verdict == "COUNTEREXAMPLE" and result.exit_code == 1
    x0 = torch.tensor([r.counterexample["x0"]], dtype=torch.float64)
    assert np.abs(x0.numpy()[0] - peak).max() < 0.05
    g0 = ev.per_scenario(theta[None], x0)[0, 0, 0]  # re-simulated here
    assert g0 > 0 and g0 == pytest.approx(r.counterexample["g"], abs=1e-12)
    assert r.bound >= g0  # the cell's bound still holds over what the search found


def test_gradient_steps_never_make_a_safe_peak_a_counterexample():
    torch.set_num_threads(1)
    compiled, theta, peak = _ridges(-0.01)  # the same ridges, the peak just safe
    g = compiled.evaluator.per_scenario(theta[None], torch.as_tensor(peak[None]))[0, 0, 0]
    assert -0.011 < g < 0
    result = verify(compiled, theta, cells=1)
    assert result.constraints["limit"].verdict == "UNDECIDED"
    assert result.constraints["limit"].counterexample is None


def test_gradient_steps_move_a_disturbance_into_the_patch():
    """The ridges read a and, one step later, b⁺ = w (a disturbance in [0, 1]); the metric
    reads step 1 only, so only (a₀, w₀) near the peak violates: the search moves w₀ there."""
    torch.set_num_threads(1)
    compiled, theta, peak = _ridges(0.05, system="disturbance w in [0, 1]\nsystem discrete {\n"
                                    "  state a, b\n  input f\n  next a = a\n  next b = w\n}",
                                    horizon=2, formula="always[1:2] abs(f) <= 1")
    result = verify(compiled, theta, cells=1)
    r = result.constraints["limit"]
    assert r.verdict == "COUNTEREXAMPLE", r
    cex = r.counterexample
    assert abs(cex["x0"][0] - peak[0]) < 0.05 and abs(cex["disturbances"]["w"][0] - peak[1]) < 0.05
    from scpo_spec.plan.scenarios import Draws
    draws = Draws(np.zeros((1, 0)), np.array(cex["disturbances"]["w"]).reshape(2, 1, 1))
    g = compiled.evaluator.per_scenario(theta[None], torch.tensor([cex["x0"]], dtype=torch.float64),
                                        draws)[0, 0, 0]
    assert g > 0 and float(g) == pytest.approx(cex["g"], abs=1e-12)
