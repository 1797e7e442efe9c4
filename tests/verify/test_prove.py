"""`scpo verify`: the reach sets and metric bounds enclose what the ordinary evaluator computes
(sampled), a linear closed loop is bounded exactly, a violating patch the scenarios miss is
found (never PROVED), and the command's verdicts, exit codes and JSON."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scpo_spec.cli import app
from scpo_spec.compile.problem import compile_spec
from scpo_spec.language.load import check_text
from scpo_spec.policies.policy import tanh_via_sigmoid_
from scpo_spec.verify.bounds import IntervalCompiler
from scpo_spec.verify.prove import verify
from scpo_spec.verify.reach import ClosedLoop

runner = CliRunner()

FORMULAS = """\
constraint c_abs:     always abs(a) <= 3
constraint c_box:     always f in [-5, 5]
constraint c_settle:  eventually[10:HORIZON] norm(state) <= 0.5
constraint c_mixed:   always (a + 0.5 * f <= 4 or not (b >= 2))
constraint c_until:   (abs(a) <= 2) until[0:5] (norm(state) <= 1)
constraint c_final:   at final abs(b) * 2 - a / 4 <= 1
constraint c_window:  always[2:8] max(f, b) - min(a, b) <= 6
constraint c_not:     always not (abs(a) >= 0.8)
constraint c_implies: always (abs(b) >= 0.3 -> [a, f] in [-2, 2])
constraint c_lyap:    lyapunov([[2, 0.5], [0.5, 1]]) <= 50 at final
constraint c_until2:  (abs(b) <= 1.5) until (abs(a) <= 0.2)
constraint c_nested:  eventually[0:10] always[0:5] (abs(a) <= 0.4 or f >= 0.1)
constraint c_quad:    always quad([[1, 0.2], [0.2, 2]], state) - quad(3, f) <= 9
"""


def _spec_text(A, B, policy: str, backup: str = "", horizon: int = 30, box=((-1, 1), (-0.5, 0.5)),
               formulas: str = FORMULAS, grid: str = "count 8", system: str | None = None):
    def mat(M):
        return "[" + ", ".join("[" + ", ".join(repr(float(v)) for v in row) + "]"
                               for row in np.atleast_2d(M)) + "]"
    system = system or (f"system linear {{\n  state a, b\n  input f\n  A = {mat(A)}\n"
                        f"  B = {mat(B)}\n}}")
    head = "\n".join([
        'spec rnd "random closed loop"', system, backup, f"policy {policy}",
        "scenarios {", f"    initial a in [{box[0][0]}, {box[0][1]}]",
        f"    initial b in [{box[1][0]}, {box[1][1]}]", f"    {grid}", "    seed 0",
        f"    horizon {horizon}", "    holdout 1000", "}", ""])
    return head + formulas.replace("HORIZON", str(horizon)) + textwrap.dedent("""\
        objective imitation {
            expert linear { K = [[-1, -1]] }
            states normal { mean = [0, 0]  std = [1, 1] }  count 16  seed 1
            loss mse
        }
        train { steps 2  optimizer sgd { lr = 0.05 }  directions 2  perturbation 1e-3
                radius 0.5  margin 1e-6  seed 0  smoothness estimate }
        """)


def _compiled(text: str, tmp_path=None):
    result = check_text(text, path="rnd.scpo")
    assert result.ok, [d.message for d in result.diagnostics]
    return compile_spec(result.spec, tmp_path)


def _box_bounds(compiled, theta, lo, hi):
    """The reach hulls and each metric's (lo, hi) bound over the boxes [lo, hi] (N, n)."""
    loop = ClosedLoop(compiled, theta)
    spec = compiled.spec
    compiler = IntervalCompiler([s.name for s in spec.system.states],
                                [s.name for s in spec.system.inputs],
                                {c.name: c.value.value for c in spec.consts})
    reach = loop.reach(lo, hi)
    rho = (float(compiled.evaluator.spectral_radius(theta[None])[0])
           if any(m.uses_linearisation for m in compiled.metrics) else None)
    bounds = [compiler.formula(p.formula)(reach, rho) for p in spec.properties]
    return reach, bounds


def _random_case(seed: int, activation: str, residual: bool):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(2, 2)))
    A = Q @ np.diag(rng.uniform(0.6, 0.95, 2)) @ Q.T + 0.05 * rng.normal(size=(2, 2))
    B = rng.normal(size=(2, 1)) * 0.2
    if residual:
        K = -0.3 * rng.uniform(size=(1, 2))
        backup = f"backup linear {{ K = [[{float(K[0, 0])!r}, {float(K[0, 1])!r}]] }}"
        policy = (f"mlp {{ hidden = [8, 8]  activation = {activation}  residual = backup  "
                  f"seed = {seed} }}")
    else:
        backup, policy = "", f"mlp {{ hidden = [6, 5]  activation = {activation}  seed = {seed} }}"
    compiled = _compiled(_spec_text(A, B, policy, backup))
    theta = compiled.family.theta0.clone()
    if residual:  # the residual's last layer starts at zero: make the net count
        gen = torch.Generator().manual_seed(seed)
        theta[-9:] = torch.randn(9, generator=gen, dtype=theta.dtype) * 0.5
    return compiled, theta


def _sample(lo, hi, count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(count, lo.shape[0], generator=gen, dtype=lo.dtype)
    corners = torch.tensor([[a, b] for a in (0, 1) for b in (0, 1)], dtype=lo.dtype)
    return torch.cat([x, lo + (hi - lo) * corners])


def _check_enclosed(compiled, theta, lo, hi, count, seed=0):
    reach, bounds = _box_bounds(compiled, theta, lo[None], hi[None])
    x0 = _sample(lo, hi, count, seed)
    X, U = compiled.evaluator.rollout(theta[None], x0)
    X, U = X[0], U[0]
    assert torch.isfinite(reach.states_hi).all() and torch.isfinite(reach.inputs_hi).all()
    assert ((X >= reach.states_lo[0]) & (X <= reach.states_hi[0])).all()
    assert ((U >= reach.inputs_lo[0]) & (U <= reach.inputs_hi[0])).all()
    g = compiled.evaluator.per_scenario(theta[None], x0)[0]  # (S, k)
    for j, (blo, bhi) in enumerate(bounds):
        assert torch.isfinite(bhi).all()
        assert (g[:, j] <= bhi[0]).all(), (compiled.metrics[j].name, g[:, j].max(), bhi)
        assert (g[:, j] >= blo[0]).all(), (compiled.metrics[j].name, g[:, j].min(), blo)
    return reach, X


def _box(compiled):
    from scpo_spec.language.scenario_bounds import initial_box
    lo, hi = initial_box(compiled.spec)
    return torch.as_tensor(lo), torch.as_tensor(hi)


# ---- (a) soundness against sampling ----
@pytest.mark.parametrize("seed,activation,residual", [
    (1, "tanh", True), (2, "relu", True), (3, "sigmoid", False), (4, "tanh", False),
    (5, "relu", False), (6, "elu", True), (7, "softplus", False), (8, "elu", False)])
def test_every_sampled_trajectory_and_metric_lies_inside_the_bounds(seed, activation, residual):
    torch.set_num_threads(1)
    compiled, theta = _random_case(seed, activation, residual)
    lo, hi = _box(compiled)
    _check_enclosed(compiled, theta, lo, hi, 10_000, seed)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "elu", "softplus"])
def test_one_neuron_over_a_wide_range_is_enclosed(activation):
    """u = 3·σ(2.5a − 0.5) − 1 on a static plant: the relaxation alone decides the hull."""
    system = "system static {\n  state a, b\n  input f\n}"
    compiled = _compiled(_spec_text(None, None, f"mlp {{ hidden = [1]  activation = "
                                    f"{activation}  seed = 0 }}", "", horizon=1,
                                    system=system, box=((-1, 1), (0, 0.5)),
                                    formulas="constraint y: always abs(f) <= 30\n"))
    theta = torch.tensor([2.5, 0.0, -0.5, 3.0, -1.0], dtype=torch.float64)
    lo, hi = _box(compiled)
    reach, _ = _check_enclosed(compiled, theta, lo, hi, 20_000)
    x0 = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.2, 0.0]], dtype=torch.float64)
    _, U = compiled.evaluator.rollout(theta[None], x0)  # the ends and the kink/inflection
    assert ((U[0, :, 0, 0] >= reach.inputs_lo[0, 0, 0])
            & (U[0, :, 0, 0] <= reach.inputs_hi[0, 0, 0])).all()


EVALUATOR_ACTIVATIONS = {  # as the rollout computes them (tanh: the fast 2σ(2z) − 1)
    "tanh": lambda z: tanh_via_sigmoid_(z.clone()),
    "sigmoid": torch.sigmoid, "relu": torch.relu,
    "elu": torch.nn.functional.elu, "softplus": torch.nn.functional.softplus}


@pytest.mark.parametrize("activation", list(EVALUATOR_ACTIVATIONS))
def test_each_relaxation_holds_the_activation_as_the_evaluator_computes_it(activation):
    """For z = c + r·ε: |act(z) − (c′ + λ r ε)| ≤ β, the fresh generator, on dense z over
    intervals that are wide, narrow, one-sided, off-centre and beyond softplus' threshold."""
    from scpo_spec.verify.zonotope import Zono, activation as relax
    intervals = torch.tensor([[-3.0, 2.0], [-1.0, 4.0], [0.3, 0.3000001], [-8.0, -2.0],
                              [1.0, 6.0], [-0.01, 0.02], [15.0, 30.0], [-40.0, 40.0]],
                             dtype=torch.float64)
    z = Zono.box(intervals[:, :1], intervals[:, 1:])
    out = relax(z, activation)
    lam_r = out.G[:, 0, 0]  # λ·r: the input's generator, scaled
    beta = out.G[:, 1, 0]
    eps = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    points = z.c + z.G[:, 0, :] * eps  # (intervals, points)
    points = torch.minimum(torch.maximum(points, intervals[:, :1]), intervals[:, 1:])
    eps = (points - z.c) / z.G[:, 0, :]
    actual = EVALUATOR_ACTIVATIONS[activation](points)
    residual = actual - (out.c + lam_r[:, None] * eps)
    assert (residual.abs() <= beta[:, None]).all(), (residual.abs().amax(1), beta)


def test_a_pendulum_closed_loop_is_enclosed():
    torch.set_num_threads(1)
    system = ("system pendulum {\n  state a, b\n  input f\n  dt = 0.05  g = 9.81  m = 1  l = 1\n}")
    text = _spec_text(None, None, "mlp { hidden = [8]  activation = tanh  residual = backup  "
                      "seed = 3 }", "backup lqr { Q = diag(1, 1)  R = diag(1) }",
                      box=((0.2, 1.0), (-0.3, 0.3)), system=system)
    compiled = _compiled(text)
    theta = compiled.family.theta0.clone()
    theta[-9:] = torch.linspace(-0.5, 0.5, 9, dtype=theta.dtype)
    lo, hi = _box(compiled)
    _check_enclosed(compiled, theta, lo, hi, 10_000)


DISCRETE = """system discrete {
  state a, b
  input f
  next a = a + 0.1 * b
  next b = b + 0.1 * (f - 0.5 * sin(a) + 0.2 * a * b - 0.1 * b^2) / 1.5
}"""
ODE = """system ode {
  state a, b
  input f
  dt = 0.1
  integrator INTEGRATOR
  substeps 2
  der a = b
  der b = -2 * sin(a) + f - 0.3 * b * cos(a) + 0.1 * tanh(a * b)
}"""


@pytest.mark.parametrize("system", [DISCRETE, ODE.replace("INTEGRATOR", "rk4"),
                                    ODE.replace("INTEGRATOR", "midpoint"),
                                    ODE.replace("INTEGRATOR", "euler")])
def test_a_declared_plant_is_enclosed(system):
    torch.set_num_threads(1)
    text = _spec_text(None, None, "mlp { hidden = [8]  activation = tanh  residual = backup  "
                      "seed = 5 }", "backup lqr { Q = diag(1, 1)  R = diag(1) }",
                      box=((0.1, 0.7), (-0.3, 0.3)), system=system)
    compiled = _compiled(text)
    theta = compiled.family.theta0.clone()
    theta[-9:] = torch.linspace(0.4, -0.4, 9, dtype=theta.dtype)
    lo, hi = _box(compiled)
    _check_enclosed(compiled, theta, lo, hi, 10_000)


def test_products_and_sines_of_a_wide_box_are_enclosed_in_one_step():
    """a⁺ = a·b over [0, 1]² reaches 1 at a corner, 0.75 past the linear part's reach: the
    product's cross term is what encloses it (and sin's remainder, 1.5·sin over [0, 2])."""
    system = """system discrete {
  state a, b
  input f
  next a = a * b + f
  next b = 1.5 * sin(2 * a) + 0 * b
}"""
    compiled = _compiled(_spec_text(None, None, "linear { init = zero }", "", horizon=1,
                                    box=((0, 1), (0, 1)), system=system, formulas=PATCH))
    lo, hi = _box(compiled)
    reach, _ = _check_enclosed(compiled, compiled.family.theta0, lo, hi, 10_000)
    assert reach.states_hi[0, 1, 0] >= 1 and reach.states_hi[0, 1, 1] >= 1.5 * np.sin(1.0)


def test_the_shipped_cartpole_with_its_state_dependent_denominator_is_enclosed(root):
    """rk4 over 150 steps of the cart-pole's equations: products, sin, cos and a division by
    l·(4/3 − mp cos²θ/(mc + mp)); the policy's net made non-zero."""
    torch.set_num_threads(1)
    from scpo_spec.language.load import check_file
    path = root / "specs" / "cartpole.scpo"
    compiled = compile_spec(check_file(path).spec, path.parent)
    theta = compiled.family.theta0.clone()
    theta[-17:] = torch.linspace(-0.2, 0.2, 17, dtype=theta.dtype)
    lo, hi = _box(compiled)
    gen = torch.Generator().manual_seed(0)
    x0 = lo + (hi - lo) * torch.rand(10_000, 4, generator=gen, dtype=lo.dtype)
    reach, bounds = _box_bounds(compiled, theta, lo[None], hi[None])
    X, U = compiled.evaluator.rollout(theta[None], x0)
    assert torch.isfinite(reach.states_hi).all()
    assert ((X[0] >= reach.states_lo[0]) & (X[0] <= reach.states_hi[0])).all()
    assert ((U[0] >= reach.inputs_lo[0]) & (U[0] <= reach.inputs_hi[0])).all()
    g = compiled.evaluator.per_scenario(theta[None], x0)[0]
    for j, (_, bhi) in enumerate(bounds):
        assert (g[:, j] <= bhi[0]).all()


def test_a_static_model_is_enclosed():
    torch.set_num_threads(1)
    system = "system static {\n  state a, b\n  input f\n}"
    compiled = _compiled(_spec_text(None, None, "mlp { hidden = [8, 8]  activation = relu  "
                                    "seed = 2 }", "", horizon=1, system=system,
                                    formulas="constraint y: always abs(f) <= 3\n"
                                             "constraint z: always [a, f] in [-5, 5]\n"))
    lo, hi = _box(compiled)
    _check_enclosed(compiled, compiled.family.theta0, lo, hi, 10_000)


def test_a_metric_it_cannot_bound_is_undecided_alone():
    A = np.array([[1.0, 0.1], [0.0, 1.0]])
    B = np.array([[0.005], [0.1]])
    formulas = PATCH + "constraint angle: always atan2(a, 2) <= 1\n"
    compiled = _compiled(_spec_text(A, B, "linear { init = backup }",
                                    "backup lqr { Q = diag(1, 1)  R = diag(1) }",
                                    formulas=formulas))
    result = verify(compiled, compiled.family.theta0, cells=4)
    assert {k: v.verdict for k, v in result.constraints.items()} == {
        "force_limit": "PROVED", "angle": "UNDECIDED"}
    assert "atan2" in result.constraints["angle"].reason and result.exit_code == 3
    assert result.constraints["angle"].bound is None


def test_lyapunov_near_the_origin_is_left_open_not_proved(root):
    """V(x_40)/V(x_0) ≤ 0.1 of the shipped linear_stability spec: bounded by intervals, it
    holds away from the origin; cells at the origin (V(x_0) → 0) stay open: UNDECIDED."""
    from scpo_spec.language.load import check_file
    path = root / "specs" / "linear_stability.scpo"
    compiled = compile_spec(check_file(path).spec, path.parent)
    result = verify(compiled, compiled.family.theta0, cells=256)
    decay = result.constraints["decay"]
    assert decay.verdict == "UNDECIDED" and 0.5 < decay.proved_fraction < 1
    assert decay.counterexample is None and result.constraints["margin"].verdict == "PROVED"


def test_a_quotient_by_a_state_is_enclosed_in_one_step():
    """1/(b + 2) over b ∈ [0, 1] is 0.5 at b = 0, above its tangent at the centre (0.48): the
    reciprocal's remainder is what encloses it."""
    system = """system discrete {
  state a, b
  input f
  next a = (1 + f) / (b + 2)
  next b = b
}"""
    compiled = _compiled(_spec_text(None, None, "linear { init = zero }", "", horizon=1,
                                    box=((0, 1), (0, 1)), system=system, formulas=PATCH))
    lo, hi = _box(compiled)
    reach, _ = _check_enclosed(compiled, compiled.family.theta0, lo, hi, 10_000)
    assert reach.states_hi[0, 1, 0] >= 0.5


def test_a_declared_function_the_verifier_cannot_bound_is_named():
    system = DISCRETE.replace("next a = a + 0.1 * b", "next a = a + 0.1 * atan2(b, 2)")
    compiled = _compiled(_spec_text(None, None, "linear { init = backup }",
                                    "backup linear { K = [[-1, -1.5]] }", system=system,
                                    formulas=PATCH))
    result = verify(compiled, compiled.family.theta0)
    assert result.verdict == "UNDECIDED" and result.exit_code == 3
    assert "atan2" in result.reason and "discrete" in result.reason


@pytest.mark.slow
@pytest.mark.parametrize("seed,activation,residual", [(11, "tanh", True), (12, "relu", False),
                                                      (13, "sigmoid", True)])
def test_every_one_of_1e5_sampled_trajectories_lies_inside_the_bounds_of_split_cells(
        seed, activation, residual):
    compiled, theta = _random_case(seed, activation, residual)
    lo, hi = _box(compiled)
    mid = (lo + hi) / 2
    for cell in range(4):  # four quarter cells, each checked on its own samples
        a = torch.where(torch.tensor([cell & 1, cell >> 1], dtype=torch.bool), mid, lo)
        b = torch.where(torch.tensor([cell & 1, cell >> 1], dtype=torch.bool), hi, mid)
        _check_enclosed(compiled, theta, a, b, 25_000, seed + cell)


# ---- (b) a linear closed loop is bounded exactly, to rounding ----
def test_a_linear_closed_loop_has_the_analytic_hull():
    torch.set_num_threads(1)
    A = np.array([[1.0, 0.1], [0.0, 1.0]])
    B = np.array([[0.005], [0.1]])
    compiled = _compiled(_spec_text(A, B, "mlp { hidden = [16, 16]  activation = tanh  "
                                    "residual = backup  seed = 0 }",
                                    "backup lqr { Q = diag(1, 1)  R = diag(1) }", horizon=60))
    theta = compiled.family.theta0  # zero last layer: u = K x exactly
    lo, hi = _box(compiled)
    reach, _ = _box_bounds(compiled, theta, lo[None], hi[None])
    K = compiled.backup.K
    M = A + B @ K
    c, r = ((lo + hi) / 2).numpy(), ((hi - lo) / 2).numpy()
    P = np.eye(2)
    for t in range(61):
        centre, radius = P @ c, np.abs(P) @ r
        np.testing.assert_allclose(reach.states_lo[0, t].numpy(), centre - radius, atol=1e-12)
        np.testing.assert_allclose(reach.states_hi[0, t].numpy(), centre + radius, atol=1e-12)
        if t < 60:
            KP = K @ P
            np.testing.assert_allclose(reach.inputs_hi[0, t].numpy(),
                                       KP @ c + np.abs(KP) @ r, atol=1e-12)
        P = M @ P
    # the box's corners reach the hull's faces: their float rollouts stay inside only
    # because the rounding terms are there
    corners = _sample(lo, hi, 0)
    X, U = compiled.evaluator.rollout(theta[None], corners)
    assert ((X[0] >= reach.states_lo[0]) & (X[0] <= reach.states_hi[0])).all()
    assert ((U[0] >= reach.inputs_lo[0]) & (U[0] <= reach.inputs_hi[0])).all()


# ---- (c) a violating patch the scenarios miss: COUNTEREXAMPLE, never PROVED ----
PATCH = """\
constraint force_limit: always f in [-4, 4]
"""


def _patch_policy():
    """u = K x + 200·tri(a): a triangle of height 0.05 on a ∈ [0.45, 0.55] (ReLUs), zero at the
    grid's a ∈ {−1, 0, 1}: safe on the scenarios, |u| ≈ 10 in the patch."""
    A = np.array([[1.0, 0.1], [0.0, 1.0]])
    B = np.array([[0.005], [0.1]])
    compiled = _compiled(_spec_text(A, B, "mlp { hidden = [3]  activation = relu  "
                                    "residual = backup  seed = 0 }",
                                    "backup lqr { Q = diag(1, 1)  R = diag(1) }", horizon=1,
                                    formulas=PATCH, grid="grid 3"))
    theta = torch.tensor([1, 0, 1, 0, 1, 0, -0.45, -0.5, -0.55, 200, -400, 200, 0],
                         dtype=torch.float64)
    return compiled, theta


def test_a_violating_patch_the_scenarios_miss_is_a_counterexample_the_evaluator_confirms():
    torch.set_num_threads(1)
    compiled, theta = _patch_policy()
    assert compiled.evaluator(theta[None])[0, 0] <= 0  # safe on every scenario
    result = verify(compiled, theta, cells=256, time_limit=60)
    r = result.constraints["force_limit"]
    assert result.verdict == r.verdict == "COUNTEREXAMPLE" and result.exit_code == 1
    x0 = torch.tensor([r.counterexample["x0"]], dtype=torch.float64)
    assert 0.45 < x0[0, 0] < 0.55
    g = compiled.evaluator.per_scenario(theta[None], x0)[0, 0, 0]
    assert g > 0 and g == pytest.approx(r.counterexample["g"], abs=1e-12)


def test_the_same_loop_without_the_patch_is_proved_with_a_bound_above_the_sampled_worst():
    torch.set_num_threads(1)
    compiled, theta = _patch_policy()
    theta[9:12] = 0  # the triangle's output weights off: u = K x
    result = verify(compiled, theta, cells=16, time_limit=60)
    r = result.constraints["force_limit"]
    assert result.verdict == "PROVED" and result.exit_code == 0
    x0 = _sample(*_box(compiled), 5000)
    worst = compiled.evaluator.per_scenario(theta[None], x0)[0, :, 0].max()
    assert worst <= r.bound <= worst + 1e-9  # linear: exact to rounding


# ---- (d) the shipped double integrator, and (e) the command ----
def test_verify_proves_the_double_integrators_initial_policy(root):
    result = runner.invoke(app, ["verify", str(root / "specs" / "double_integrator.scpo"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["verdict"] == "PROVED" and out["cells"] >= 1
    assert {"verdict", "seconds", "cells", "model", "constraints"} <= set(out)
    assert set(out["constraints"]) == {"position_limit", "force_limit", "settle", "margin"}
    assert all({"verdict", "bound", "proved_fraction", "cells", "counterexample"} <= set(c)
               for c in out["constraints"].values())
    for c in out["constraints"].values():
        assert c["verdict"] == "PROVED" and c["proved_fraction"] == 1.0
        assert c["bound"] <= -c["margin"] and c["counterexample"] is None
    assert out["constraints"]["margin"]["bound"] == pytest.approx(0.917 - 0.98, abs=1e-3)
    assert "linear" in out["model"] and isinstance(out["seconds"], float)


def test_verify_text_says_the_model_and_each_verdict(root):
    result = runner.invoke(app, ["verify", str(root / "specs" / "double_integrator.scpo")])
    assert result.exit_code == 0, result.output
    assert "model: the spec's discrete-time model" in result.stdout
    assert "PROVED settle" in result.stdout and "PROVED in" in result.stdout


def test_verify_refuses_a_python_plant_as_undecided_with_the_reason(tmp_path):
    (tmp_path / "plant.py").write_text(textwrap.dedent('''\
        import torch
        def dynamics(x, u):
            return torch.stack((x[..., 0] + 0.1 * x[..., 1], x[..., 1] + 0.1 * u[..., 0]), -1)
        '''), encoding="utf-8")
    system = 'system python "plant:dynamics" { state a, b  input f }'
    spec = tmp_path / "spec.scpo"
    spec.write_text(_spec_text(None, None, "linear { init = backup }",
                               "backup linear { K = [[-1, -1.5]] }", system=system,
                               formulas=PATCH), encoding="utf-8")
    result = runner.invoke(app, ["verify", str(spec), "--json"])
    assert result.exit_code == 3, result.output
    out = json.loads(result.stdout)
    assert out["verdict"] == "UNDECIDED" and "'python' system" in out["reason"]
    assert out["constraints"]["force_limit"]["verdict"] == "UNDECIDED"
    assert out["constraints"]["force_limit"]["reason"] == out["reason"]


def test_verify_exit_codes_for_a_counterexample_and_usage_errors(tmp_path):
    A = np.array([[1.0, 0.1], [0.0, 1.0]])
    B = np.array([[0.005], [0.1]])
    spec = tmp_path / "spec.scpo"  # a linear policy at a gain that demands |u| up to 6
    spec.write_text(_spec_text(A, B, "linear { init = backup }",
                               "backup linear { K = [[-5, -2]] }", formulas=PATCH),
                    encoding="utf-8")
    result = runner.invoke(app, ["verify", str(spec), "--json", "--cells", "8"])
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout)
    cex = out["constraints"]["force_limit"]["counterexample"]
    assert out["verdict"] == "COUNTEREXAMPLE" and cex["g"] > 0 and len(cex["x0"]) == 2
    # the issue's shape: what re-simulates it (no parameters or disturbances in this spec)
    assert set(cex) == {"x0", "parameters", "disturbances", "g"}
    assert cex["parameters"] == {} and cex["disturbances"] == {}
    assert runner.invoke(app, ["verify", str(tmp_path / "missing.scpo")]).exit_code == 2
    assert runner.invoke(app, ["verify", str(tmp_path)]).exit_code == 2
    bad = tmp_path / "bad.scpo"
    bad.write_text("spec x\nsystem linear {", encoding="utf-8")
    assert runner.invoke(app, ["verify", str(bad)]).exit_code == 2


def test_splitting_turns_an_undecided_metric_into_a_proved_one():
    """u = K x + 66·tri(a): |u| ≤ 3.62 over the box (4 − 0.38 sampled), too close to 4 for one
    cell's ReLU relaxation; 8 cells prove most of the box, 64 all of it."""
    torch.set_num_threads(1)
    compiled, theta = _patch_policy()
    theta[9:12] = torch.tensor([66.0, -132.0, 66.0], dtype=torch.float64)
    one = verify(compiled, theta, cells=1, time_limit=60)
    r = one.constraints["force_limit"]
    assert r.verdict == "UNDECIDED" and one.exit_code == 3 and r.counterexample is None
    assert r.proved_fraction == 0 and r.open_cells == 1 and "cell budget (1)" in r.reason
    some = verify(compiled, theta, cells=8, time_limit=60).constraints["force_limit"]
    assert some.verdict == "UNDECIDED" and 0.5 < some.proved_fraction < 1
    enough = verify(compiled, theta, cells=64, time_limit=60)
    r = enough.constraints["force_limit"]
    assert enough.verdict == "PROVED" and r.proved_fraction == 1 and 1 < r.cells <= 64
    worst = compiled.evaluator.per_scenario(theta[None], _sample(*_box(compiled), 10_000))
    assert float(worst[0, :, 0].max()) <= r.bound <= -1e-6


def test_verify_a_trained_run_checks_its_final_policy(tmp_path):
    from scpo_spec.engine.run import train
    from tests.engine_specs import small_di, spec_of
    text = small_di(steps=4)
    (tmp_path / "spec.scpo").write_text(text, encoding="utf-8")
    run = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text,
                out=tmp_path / "run").run_dir
    result = runner.invoke(app, ["verify", str(run), "--json"])
    assert result.exit_code in (0, 3), result.output  # never a counterexample: it is safe
    out = json.loads(result.stdout)
    assert set(out["constraints"]) == {"position_limit", "force_limit", "margin"}
    assert out["constraints"]["margin"]["verdict"] == "PROVED"
    text_out = runner.invoke(app, ["verify", str(run)]).stdout
    assert f"run {run}: its final policy" in text_out.replace("\n", "")
    (run / "audit.jsonl").write_text("{}\n", encoding="utf-8")  # a run that fails its audit
    assert runner.invoke(app, ["verify", str(run)]).exit_code == 2


@pytest.mark.slow
def test_the_double_integrator_trained_20_steps_is_proved(root, tmp_path):
    from scpo_spec.engine.run import train
    text = (root / "specs" / "double_integrator.scpo").read_text(encoding="utf-8")
    (tmp_path / "spec.scpo").write_text(text, encoding="utf-8")
    from tests.engine_specs import spec_of
    run = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run",
                steps=20).run_dir
    result = runner.invoke(app, ["verify", str(run), "--json"])
    out = json.loads(result.stdout)
    assert result.exit_code == 0 and out["verdict"] == "PROVED", out
    print(f"trained 20 steps: PROVED in {out['seconds']:.2f} s over {out['cells']} cells")


@pytest.mark.parametrize("expr,box", [
    ("exp(a) - 2 * abs(b)", ((-1, 1.5), (-1, 1))),
    ("sqrt(a + 0.1) + log(b + 0.2)", ((0, 2), (0, 1))),
    ("tan(a) * 0.5 + abs(a - b)", ((-1.2, 1.2), (-0.5, 1))),
    ("abs(a) - abs(b)", ((-1, 1), (-0.5, 1))),
])
def test_smooth_functions_of_a_wide_box_are_enclosed_in_one_step(expr, box):
    system = f"""system discrete {{
  state a, b
  input f
  next a = {expr} + f
  next b = b
}}"""
    compiled = _compiled(_spec_text(None, None, "linear { init = zero }", "", horizon=1,
                                    box=box, system=system, formulas=PATCH))
    lo, hi = _box(compiled)
    reach, _ = _check_enclosed(compiled, compiled.family.theta0, lo, hi, 20_000)
    mid = ((lo + hi) / 2)[None]  # and one more point, the centre, that has no slack at all
    X, _ = compiled.evaluator.rollout(compiled.family.theta0[None], mid)
    assert reach.states_lo[0, 1, 0] <= X[0, 0, 1, 0] <= reach.states_hi[0, 1, 0]


def test_the_shipped_bicycle_with_tan_is_proved(root):
    from scpo_spec.language.load import check_file
    path = root / "specs" / "bicycle_lane.scpo"
    compiled = compile_spec(check_file(path).spec, path.parent)
    result = verify(compiled, compiled.family.theta0, cells=64)
    assert result.verdict == "PROVED", result.as_json()


def test_a_bound_the_evaluator_contradicts_stops_the_verifier(monkeypatch):
    """The falsifier's points check every cell's bound: an activation relaxation that drops
    its error generators (unsound) is caught, never printed as PROVED."""
    import scpo_spec.verify.reach as reach_module
    from scpo_spec.verify.prove import VerifierError
    from scpo_spec.verify.zonotope import Zono, activation

    def unsound(z, name):
        out = activation(z, name)
        return Zono(out.c, out.G[:, :z.k], out.e)  # the relaxation's error left out
    compiled, theta = _random_case(4, "tanh", False)
    assert verify(compiled, theta, cells=16).verdict != "PROVED"  # (sound: no error)
    monkeypatch.setattr(reach_module, "activation", unsound)
    with pytest.raises(VerifierError, match="below the evaluator's g"):
        verify(compiled, theta, cells=16)


def test_a_torch_policy_is_verified_and_a_torch_backup_is_undecided(tmp_path):
    from torch import nn
    from tests.policies.test_torch_files import Custom, save, with_backup, with_policy
    torch.manual_seed(3)
    save(nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 1)), tmp_path / "policy.pt")
    compiled = compile_spec(with_policy(tmp_path), tmp_path)
    lo, hi = _box(compiled)
    _check_enclosed(compiled, compiled.family.theta0, lo, hi, 10_000)
    save(Custom(), tmp_path / "ctrl.pt")
    compiled = compile_spec(with_backup(tmp_path), tmp_path)
    result = verify(compiled, compiled.family.theta0)
    assert result.verdict == "UNDECIDED" and "TorchScript backup" in result.reason


def test_a_printed_bound_is_still_an_upper_bound():
    """`scpo verify` prints bounds short; rounding to the nearest would print −2.115e-06 for a
    proved −2.11496e-06, a bound that was never proved."""
    from scpo_spec.cli.verify_command import _rounded_up
    assert _rounded_up(-2.11496e-06) == "-2.114e-06"
    assert _rounded_up(0.44681) == "0.4469" and _rounded_up(3.0) == "3"
    rng = np.random.default_rng(0)
    for x in rng.uniform(-1, 1, 20000) * 10.0 ** rng.uniform(-9, 4, 20000):
        assert float(_rounded_up(float(x))) >= x
