"""`scpo calibrate`: the curvature it reports is the metric's, exactly where g is quadratic in θ;
the same spec gives the same numbers; the command prints a table or one JSON object and refuses a
bad spec without a traceback."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scpo_spec.cli import app
from scpo_spec.compile.problem import compile_spec
from scpo_spec.engine.calibrate import (STATEMENT, calibrate, radii_between, round_up,
                                        unit_directions)
from tests.engine_specs import small_di, spec_of, write_spec

runner = CliRunner()

# A static model y = k₁a + k₂b on one scenario x = (a, b) = (1, −2), linear policy from k = 0:
# g(k) = (kᵀx)² − 1 is quadratic in θ = k with Hessian 2xxᵀ, so the second difference along a
# unit u is exactly 2(uᵀx)² at every radius, and the largest over all u is 2‖x‖² = 10.
QUADRATIC = """\
spec quadratic "g quadratic in theta"
system static { state a, b  input y }
policy linear { init = zero }
scenarios {
    initial a in [1, 1]
    initial b in [-2, -2]
    count 1
    seed 0
    horizon 1
    holdout 300
}
constraint square: always y^2 <= 1  smoothness ELL
objective regression { data "fit.csv"  inputs a, b  targets y  loss mse }
train {
    steps 5
    optimizer sgd { lr = 0.01 }
    directions 4
    perturbation 1e-3
    radius 0.5
    margin 1e-6
    seed SEED
}
"""
X = np.array([1.0, -2.0])


def quadratic(tmp_path, ell: float = 3, seed: int = 0):
    (tmp_path / "fit.csv").write_text("a,b,y\n1,0,0.5\n0,1,-0.25\n0.5,0.5,0.3\n")
    text = QUADRATIC.replace("ELL", f"{ell:g}").replace("SEED", str(seed))
    return compile_spec(spec_of(text, tmp_path), tmp_path), text


def test_second_difference_is_the_analytic_curvature(tmp_path):
    compiled, _ = quadratic(tmp_path)
    cal = calibrate(compiled, radii=4, directions=6)
    assert cal.gradient  # the regression loss has a gradient at k = 0: −∇L is probed too
    U = unit_directions(2, 6, 0).numpy()
    _, grad = compiled.objective.loss_and_grad(compiled.family.theta0)
    u_grad = -(grad / grad.norm()).numpy()
    expected = 2 * np.concatenate([U @ X, [u_grad @ X]]) ** 2  # (7,)
    assert cal.samples.shape == (4, 7, 1)
    for j in range(4):  # the same at every radius: g is exactly quadratic
        np.testing.assert_allclose(cal.samples[j, :, 0], expected, rtol=0, atol=1e-9)
    m = cal.metrics[0]
    assert m.observed == pytest.approx(expected.max(), abs=1e-9)
    assert m.observed <= 2 * X @ X + 1e-9
    np.testing.assert_allclose(m.along_gradient, expected[-1], atol=1e-9)
    assert m.suggested == round_up(2 * m.observed) and m.suggested >= 2 * m.observed
    assert m.verdict == "refuted" and not m.kink  # ℓ = 3 < c; smooth: c does not grow as ρ → 0
    assert cal.radii == pytest.approx(radii_between(1e-3, 0.5, 4))
    assert cal.radii[0] == pytest.approx(1e-3) and cal.radii[-1] == pytest.approx(0.5)


def test_verdicts_follow_the_spec_ell(tmp_path):
    verdicts = {}
    for ell in (3, 15, 1000):
        compiled, _ = quadratic(tmp_path, ell=ell)
        verdicts[ell] = calibrate(compiled, radii=2, directions=32).metrics[0].verdict
    # c ≈ 10 (32 directions in 2-D come close to the worst one): 15 is within the factor 2
    assert verdicts == {3: "refuted", 15: "tight", 1000: "loose"}


def test_same_seed_same_numbers_other_seed_other_directions(tmp_path):
    a = calibrate(quadratic(tmp_path)[0], radii=3, directions=5)
    b = calibrate(quadratic(tmp_path)[0], radii=3, directions=5)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert a.as_dict() == b.as_dict()
    c = calibrate(quadratic(tmp_path, seed=7)[0], radii=3, directions=5)
    assert c.seed == 7 and not np.array_equal(a.samples[:, :5], c.samples[:, :5])


def test_kink_at_theta0_is_flagged(tmp_path):
    """`abs(y)` at y = 0 has a kink exactly at θ₀ = 0: the second difference is 2|uᵀx|/ρ."""
    compiled = compile_spec(spec_of(quadratic(tmp_path)[1].replace(
        "always y^2 <= 1", "always abs(y) <= 1"), tmp_path), tmp_path)
    cal = calibrate(compiled, radii=3, directions=4, gradient=False)
    U = unit_directions(2, 4, 0).numpy()
    for j, rho in enumerate(cal.radii):
        np.testing.assert_allclose(cal.samples[j, :, 0], 2 * np.abs(U @ X) / rho, rtol=1e-9)
    assert cal.metrics[0].kink and cal.metrics[0].growth == pytest.approx(1.0)


def test_non_finite_rollouts_are_counted_and_a_smaller_radius_suggested(tmp_path):
    """A policy that diverges far from θ₀: at the largest radius every rollout overflows."""
    compiled, _ = quadratic(tmp_path)
    ev = compiled.evaluator

    def diverging(thetas):
        g = ev(thetas)
        far = (thetas - compiled.family.theta0).norm(dim=1) > 0.2
        return torch.where(far[:, None], torch.inf, g)
    diverging.metrics = ev.metrics
    cal = calibrate(compiled, radii=3, directions=4, evaluator=diverging)  # ρ = 1e-3, 0.022, 0.5
    m = cal.metrics[0]
    assert m.nonfinite == [0, 0, 5] and math.isnan(m.curvature[2])
    assert math.isfinite(m.observed) and m.verdict == "refuted"
    assert cal.suggested_radius == pytest.approx(cal.radii[1])
    d = cal.as_dict()
    assert d["all_finite"] is False and d["metrics"][0]["curvature"][2] is None
    json.dumps(d, allow_nan=False)


def test_rounding_up():
    assert [round_up(x) for x in (120, 119.3, 0.0123, 9.99, 1e-6)] == [120, 120, 0.013, 10, 1e-6]
    assert all(round_up(x) >= x for x in np.geomspace(1e-5, 1e5, 97))


# ---------------------------------------------------------------------------------- the command
def test_cli_table_on_a_ready_spec(tmp_path):
    spec = write_spec(tmp_path, small_di(pos=1e-3))
    result = runner.invoke(app, ["calibrate", str(spec), "--radii", "3", "--directions", "4"])
    assert result.exit_code == 0, result.output
    text = result.output
    for name in ("position_limit", "force_limit", "margin", "suggested", "verdict"):
        assert name in text
    assert "ρ =" in text and "0.001" in text and "0.5" in text
    assert "'position_limit': the spec's ℓ = 0.001 is refuted" in text
    assert "* along −∇L(θ₀)" in text
    assert " ".join(STATEMENT.split()) in " ".join(text.split())
    assert "…" not in text  # numbers are never squashed into ellipses, even at 80 columns


def test_cli_json_on_a_ready_spec(tmp_path):
    spec = write_spec(tmp_path, small_di())
    result = runner.invoke(app, ["calibrate", str(spec), "--radii", "2", "--directions", "3",
                                 "--factor", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["spec"] == "small_di" and data["factor"] == 4 and data["directions"] == 3
    assert len(data["radii"]) == 2 and data["statement"] == STATEMENT
    assert [m["name"] for m in data["metrics"]] == ["position_limit", "force_limit", "margin"]
    for m in data["metrics"]:
        assert len(m["curvature"]) == 2 and m["suggested"] >= 4 * m["observed"]
        assert m["verdict"] in {"refuted", "tight", "ok", "loose", "no ℓ", "not finite"}


def test_cli_bad_spec_exits_1_without_traceback(tmp_path):
    spec = write_spec(tmp_path, small_di().replace("radius 0.5", "radius -1"))
    result = runner.invoke(app, ["calibrate", str(spec)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    text = " ".join(result.output.split())
    assert "Traceback" not in text and "radius" in text and "fix the errors above first" in text


def test_cli_usage_errors(tmp_path):
    missing = runner.invoke(app, ["calibrate", str(tmp_path / "nope.scpo")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    spec = write_spec(tmp_path, small_di())
    assert runner.invoke(app, ["calibrate", str(spec), "--factor", "0.5"]).exit_code == 2
    assert runner.invoke(app, ["calibrate", str(spec), "--radii", "0"]).exit_code == 2
