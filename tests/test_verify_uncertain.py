"""`scpo verify` over parameters and disturbances (verify/uncertain.py): sampled trajectories with
random parameters and disturbance sequences, rolled out by the ordinary evaluator, lie inside the
reach sets; every PROVED bound is ≥ the sampled worst g; a spec safe at the nominal values but
unsafe at one end of a range gets a COUNTEREXAMPLE that the evaluator re-simulates to g > 0; a
linear plant with an additive disturbance has the closed-form hull to rounding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scpo_spec.cli import app
from scpo_spec.compile.problem import compile_spec
from scpo_spec.language.lets import expand
from scpo_spec.language.load import check_file, check_text
from scpo_spec.plan.scenarios import Draws
from scpo_spec.verify.prove import verify
from scpo_spec.verify.uncertain import cell_box, closed_loop, interval_compiler

TRAIN = """
objective cost { stage quad(diag(10, 1), state) + quad(diag(0.1), input) }
train { steps 2  optimizer sgd { lr = 0.05 }  directions 2  perturbation 1e-3
        radius 0.5  margin 1e-6  seed 0  smoothness estimate }
"""

# a double integrator with an uncertain gain and damping (parameters) and a force disturbance;
# formulas read them too
PARAMETRIC = """
spec pgain "double integrator, uncertain gain and damping, a gust"
const dt = 0.1
parameter k in [0.8, 1.2]
parameter c in [0, 0.2]
disturbance w in [-0.1, 0.1]
system discrete {
    state position, velocity
    input force
    next position = position + dt * velocity
    next velocity = velocity + dt * (k * force - c * velocity + w)
}
backup lqr { Q = diag(1, 1)  R = diag(1) }
policy mlp { hidden = [16, 16]  activation = tanh  residual = backup  seed = 0 }
scenarios {
    initial position in [-1, 1]
    initial velocity in [-0.5, 0.5]
    count 16
    seed 0
    horizon 30
    holdout 100
}
constraint pos: always abs(position) <= 1.5
constraint frc: always k * force in [-3, 3]  margin 0.01
constraint mix: always abs(velocity + w) <= 2 + c
constraint fin: at final abs(position) <= 0.9 + c
""" + TRAIN


def _compiled_text(text: str):
    result = check_text(text, path="unc.scpo")
    assert result.ok, [d.message for d in result.diagnostics]
    return compile_spec(result.spec, None)


def _bounds(compiled, theta, lo, hi):
    """Reach hulls and each metric's (lo, hi) over the cells [lo, hi] (N, n + p)."""
    loop = closed_loop(compiled, theta, 30)
    compiler = interval_compiler(compiled)
    reach = loop.reach(lo, hi)
    spec = compiled.spec
    return reach, [compiler.formula(expand(p.formula, spec))(reach, None)
                   for p in spec.properties]


def _samples(compiled, lo, hi, count, seed=0):
    """count points (x0, p) of the box [lo, hi] with disturbance sequences: uniform ones,
    constant corners, random corners; the box's corners among the points."""
    from scpo_spec.verify.uncertain import Uncertainty
    unc = Uncertainty.of(compiled)
    n, T, d = compiled.dynamics.n, compiled.evaluator.horizon, len(unc.disturbances)
    rng = np.random.default_rng(seed)
    pts = rng.uniform(lo, hi, size=(count, lo.shape[0]))
    corners = np.array(np.meshgrid(*[[a, b] for a, b in zip(lo, hi)])).reshape(lo.shape[0], -1).T
    pts[:len(corners)] = corners
    noise = rng.uniform(unc.d_lo, unc.d_hi, size=(T, count, d))
    third = count // 3
    const = np.where(rng.random((1, third, d)) < 0.5, unc.d_lo, unc.d_hi)
    noise[:, :third] = np.broadcast_to(const, (T, third, d))
    noise[:, third:2 * third] = np.where(rng.random((T, third, d)) < 0.5, unc.d_lo, unc.d_hi)
    return pts[:, :n], Draws(pts[:, n:], noise)


def _check_enclosed(compiled, theta, count, seed=0):
    lo, hi = cell_box(compiled)
    reach, bounds = _bounds(compiled, theta, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])
    x0, draws = _samples(compiled, lo, hi, count, seed)
    x0 = torch.as_tensor(x0)
    X, U = compiled.evaluator.rollout(theta[None], x0, draws)
    X, U = X[0], U[0]
    assert torch.isfinite(reach.states_hi).all() and torch.isfinite(reach.inputs_hi).all()
    assert ((X >= reach.states_lo[0]) & (X <= reach.states_hi[0])).all()
    assert ((U >= reach.inputs_lo[0]) & (U <= reach.inputs_hi[0])).all()
    g = compiled.evaluator.per_scenario(theta[None], x0, draws)[0]  # (S, k)
    for j, (blo, bhi) in enumerate(bounds):
        assert torch.isfinite(bhi).all()
        assert (g[:, j] <= bhi[0]).all(), (compiled.metrics[j].name, g[:, j].max(), bhi)
        assert (g[:, j] >= blo[0]).all(), (compiled.metrics[j].name, g[:, j].min(), blo)
    return reach, g


def _perturbed(compiled, size, seed=0, scale=0.3):
    """θ₀ with the residual's last layer (`size` numbers) random, so that the network counts."""
    theta = compiled.family.theta0.clone()
    gen = torch.Generator().manual_seed(seed)
    theta[-size:] = torch.randn(size, generator=gen, dtype=theta.dtype) * scale
    return theta


def test_sampled_trajectories_with_random_parameters_and_disturbances_lie_inside():
    torch.set_num_threads(1)
    compiled = _compiled_text(PARAMETRIC)
    theta = _perturbed(compiled, 17)
    _check_enclosed(compiled, theta, 10_000)


def test_the_gust_spec_is_enclosed_and_its_proved_bounds_are_above_the_sampled_worst(root):
    torch.set_num_threads(1)
    compiled = compile_spec(check_file(root / "specs" / "gust.scpo").spec, None)
    theta = _perturbed(compiled, 33, seed=1, scale=0.2)
    _, g = _check_enclosed(compiled, theta, 10_000)
    result = verify(compiled, theta, cells=64, time_limit=120)
    assert result.verdict == "PROVED", result.as_json()
    for j, m in enumerate(compiled.metrics):
        assert result.constraints[m.name].bound >= float(g[:, j].max())


def test_the_parametric_spec_is_proved_over_the_ranges_with_bounds_above_the_sampled_worst():
    torch.set_num_threads(1)
    compiled = _compiled_text(PARAMETRIC)
    theta = _perturbed(compiled, 17, seed=2, scale=0.1)
    result = verify(compiled, theta, cells=256, time_limit=120)
    assert result.verdict == "PROVED", result.as_json()
    assert "k in [0.8, 1.2]" in result.model and "w in [-0.1, 0.1] at every step" in result.model
    lo, hi = cell_box(compiled)
    x0, draws = _samples(compiled, lo, hi, 20_000, seed=3)
    g = compiled.evaluator.per_scenario(theta[None], torch.as_tensor(x0), draws)[0]
    for j, m in enumerate(compiled.metrics):
        assert result.constraints[m.name].bound >= float(g[:, j].max()), m.name


# ---- a spec safe at the nominal values, unsafe at one end of a range ----
def _one_state(uncertain: str, next_eq: str, box=(0.9, 1.0), horizon=20, limit=2.0) -> str:
    return f"""
spec edge "one state, safe at the nominal value"
{uncertain}
system discrete {{
    state x
    input u
    next x = {next_eq}
}}
backup linear {{ K = [[0]] }}
policy mlp {{ hidden = [4]  activation = tanh  residual = backup  seed = 0 }}
scenarios {{
    initial x in [{box[0]}, {box[1]}]
    count 8
    seed 0
    horizon {horizon}
    holdout 100
}}
constraint bounded: always abs(x) <= {limit}
objective cost {{ stage quad(1, state) }}
train {{ steps 2  optimizer sgd {{ lr = 0.05 }}  directions 2  perturbation 1e-3
        radius 0.5  margin 1e-6  seed 0  smoothness estimate }}
"""


def _resimulated(compiled, theta, cex) -> float:
    """g of the counterexample, rolled out here by the ordinary evaluator with its values."""
    unc_p = [u.name.name for u in compiled.spec.parameters]
    unc_d = [u.name.name for u in compiled.spec.disturbances]
    T = compiled.evaluator.horizon
    params = np.array([[cex["parameters"][n] for n in unc_p]]).reshape(1, len(unc_p))
    dist = np.array([cex["disturbances"][n] for n in unc_d]).reshape(len(unc_d), T)
    draws = Draws(params, dist.T[:, None, :])
    x0 = torch.tensor([cex["x0"]], dtype=torch.float64)
    return float(compiled.evaluator.per_scenario(theta[None], x0, draws)[0, 0, 0])


def test_a_parameter_unsafe_at_the_end_of_its_range_is_a_counterexample():
    torch.set_num_threads(1)
    # x⁺ = a·x, |x| ≤ 2 for 20 steps from x0 ≤ 1: safe for a ≤ 2^(1/20) ≈ 1.035, not at 1.1
    compiled = _compiled_text(_one_state("parameter a in [0.8, 1.1]", "a * x + 0.1 * u"))
    theta = compiled.family.theta0  # u = 0
    nominal = Draws(np.array([[0.95]]), np.zeros((20, 1, 0)))
    x0 = torch.tensor([[1.0]], dtype=torch.float64)
    assert compiled.evaluator.per_scenario(theta[None], x0, nominal)[0, 0, 0] <= 0
    result = verify(compiled, theta, cells=64, time_limit=60)
    r = result.constraints["bounded"]
    assert result.verdict == r.verdict == "COUNTEREXAMPLE" and result.exit_code == 1
    cex = r.counterexample
    assert cex["parameters"]["a"] > 2 ** (1 / 20) and cex["disturbances"] == {}
    g = _resimulated(compiled, theta, cex)
    assert g > 0 and g == pytest.approx(cex["g"], abs=1e-12)


def test_a_disturbance_that_pushes_one_way_is_a_counterexample_with_its_sequence():
    torch.set_num_threads(1)
    # x⁺ = 0.9 x + w: with w = 0.3 held, x → 3 > 2.5; at w = 0 it decays
    compiled = _compiled_text(_one_state("disturbance w in [-0.3, 0.3]", "0.9 * x + w + 0.1 * u",
                                         box=(-1, 1), horizon=30, limit=2.5))
    theta = compiled.family.theta0
    nominal = Draws(np.zeros((1, 0)), np.zeros((30, 1, 1)))
    x0 = torch.tensor([[1.0]], dtype=torch.float64)
    assert compiled.evaluator.per_scenario(theta[None], x0, nominal)[0, 0, 0] <= 0
    result = verify(compiled, theta, cells=64, time_limit=60)
    r = result.constraints["bounded"]
    assert r.verdict == "COUNTEREXAMPLE"
    cex = r.counterexample
    assert len(cex["disturbances"]["w"]) == 30 and cex["parameters"] == {}
    assert all(-0.3 <= v <= 0.3 for v in cex["disturbances"]["w"])
    g = _resimulated(compiled, theta, cex)
    assert g > 0 and g == pytest.approx(cex["g"], abs=1e-12)


def test_the_same_disturbance_within_a_safe_limit_is_proved_at_the_closed_form_bound():
    torch.set_num_threads(1)
    # sup |x_t| over t ≤ 30 = 0.9^t·1 + 0.3·(1 − 0.9^t)/0.1 at t = 30: the bound, to rounding
    compiled = _compiled_text(_one_state("disturbance w in [-0.3, 0.3]", "0.9 * x + w + 0.1 * u",
                                         box=(-1, 1), horizon=30, limit=3.0))
    theta = compiled.family.theta0
    result = verify(compiled, theta, cells=4, time_limit=60)
    r = result.constraints["bounded"]
    assert r.verdict == "PROVED"
    worst = 0.9 ** 30 + 3 * (1 - 0.9 ** 30)
    assert worst - 3.0 <= r.bound <= worst - 3.0 + 1e-12


def test_a_linear_plant_with_an_additive_disturbance_has_the_closed_form_hull():
    torch.set_num_threads(1)
    A = np.array([[1.0, 0.1], [0.0, 1.0]])
    B = np.array([[0.005], [0.1]])
    E = np.array([[0.0], [0.1]])
    text = PARAMETRIC.replace("parameter k in [0.8, 1.2]\nparameter c in [0, 0.2]\n", "") \
        .replace("k * force - c * velocity + w", "force + w") \
        .replace("next position = position + dt * velocity",
                 "next position = position + dt * velocity + 0.5 * dt^2 * force") \
        .replace("horizon 30", "horizon 25")
    text = text[:text.index("constraint pos")] + "constraint pos: always abs(position) <= 9\n" \
        + TRAIN
    compiled = _compiled_text(text)
    theta = compiled.family.theta0  # the residual's last layer is zero: u = K x
    lo, hi = cell_box(compiled)
    reach, _ = _bounds(compiled, theta, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])
    K = compiled.backup.K
    M = A + B @ K
    c, r = (lo + hi) / 2, (hi - lo) / 2
    wr = 0.1
    P = np.eye(2)
    noise = np.zeros(2)  # Σ_{j<t} |M^j E| · wr
    for t in range(26):
        centre, radius = P @ c, np.abs(P) @ r + noise
        np.testing.assert_allclose(reach.states_lo[0, t].numpy(), centre - radius, atol=1e-12)
        np.testing.assert_allclose(reach.states_hi[0, t].numpy(), centre + radius, atol=1e-12)
        noise = noise + np.abs(P @ E).ravel() * wr
        P = M @ P
    # the worst case of position at t = 25: x0's corner and w_s = sign((M^(24−s) E)_0) reach
    # the hull's face; their float rollout stays inside only because the rounding is there
    T = 25
    P25 = np.linalg.matrix_power(M, T)
    x0 = torch.as_tensor((c + np.sign(P25[0]) * r)[None])
    w = np.array([np.sign((np.linalg.matrix_power(M, T - 1 - s) @ E)[0, 0]) * wr
                  for s in range(T)])
    X, _ = compiled.evaluator.rollout(theta[None], x0, Draws(np.zeros((1, 0)),
                                                               w.reshape(T, 1, 1)))
    assert reach.states_hi[0, T, 0] - 1e-9 <= X[0, 0, T, 0] <= reach.states_hi[0, T, 0]


def test_the_json_counterexample_carries_parameters_and_disturbances(tmp_path):
    path = tmp_path / "edge.scpo"
    path.write_text(_one_state("parameter a in [0.8, 1.1]\ndisturbance w in [0, 0.01]",
                               "a * x + w + 0.1 * u"))
    out = CliRunner().invoke(app, ["verify", str(path), "--json", "--cells", "16"])
    assert out.exit_code == 1, out.output
    data = json.loads(out.output)
    cex = data["constraints"]["bounded"]["counterexample"]
    assert set(cex) == {"x0", "parameters", "disturbances", "g"}
    assert set(cex["parameters"]) == {"a"} and len(cex["disturbances"]["w"]) == 20
    assert cex["g"] > 0
    assert "every value of a in [0.8, 1.1] (held over the rollout)" in data["model"]


def test_a_parameter_keeps_its_correlation_with_the_states_through_the_reduction():
    """s₁ = p, then q = s − p is exactly 0 — only if the parameter's generator stays the same
    symbol in the states' zonotope after every reduction (the 32 neurons a step force one)."""
    torch.set_num_threads(1)
    text = f"""
spec corr "a state that copies a parameter"
parameter p in [-1, 1]
system discrete {{
    state x, s, q
    input u
    next x = 0.5 * x + 0.1 * u
    next s = p
    next q = s - p
}}
policy mlp {{ hidden = [16, 16]  activation = tanh  seed = 0 }}
scenarios {{
    initial x in [-1, 1]
    initial s in [0, 0]
    initial q in [0, 0]
    count 8
    seed 0
    horizon 12
    holdout 100
}}
constraint cancels: always[2:12] abs(q) <= 1e-9
constraint copies:  at final abs(s - p) <= 1e-9
objective cost {{ stage quad(diag(1, 1, 1), state) }}
train {{ steps 2  optimizer sgd {{ lr = 0.05 }}  directions 2  perturbation 1e-3
        radius 0.5  margin 1e-12  seed 0  smoothness estimate }}
"""
    compiled = _compiled_text(text)
    theta = compiled.family.theta0
    lo, hi = cell_box(compiled)
    reach, _ = _bounds(compiled, theta, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])
    q_width = reach.states_hi[0, 2:, 2] - reach.states_lo[0, 2:, 2]
    assert (q_width < 1e-13).all(), q_width
    result = verify(compiled, theta, cells=4, time_limit=60)
    assert result.constraints["cancels"].verdict == "PROVED", result.as_json()


def test_splitting_a_parameter_range_turns_undecided_into_proved():
    """The initial state is one point, so every split is of the parameters' ranges: one cell
    over k ∈ [0.2, 3] leaves the limits open, a few cells along k and c prove them."""
    torch.set_num_threads(1)
    text = PARAMETRIC.replace("[0.8, 1.2]", "[0.2, 3.0]") \
        .replace("initial position in [-1, 1]", "initial position in [1, 1]") \
        .replace("initial velocity in [-0.5, 0.5]", "initial velocity in [0, 0]")
    compiled = _compiled_text(text)
    theta = _perturbed(compiled, 17, seed=2, scale=0.1)
    assert verify(compiled, theta, cells=1, time_limit=60).verdict == "UNDECIDED"
    result = verify(compiled, theta, cells=256, time_limit=120)
    assert result.verdict == "PROVED" and result.cells > 1, result.as_json()
    lo, hi = cell_box(compiled)
    x0, draws = _samples(compiled, lo, hi, 10_000, seed=4)
    g = compiled.evaluator.per_scenario(theta[None], torch.as_tensor(x0), draws)[0]
    for j, m in enumerate(compiled.metrics):
        assert result.constraints[m.name].bound >= float(g[:, j].max()), m.name


@pytest.mark.slow
def test_1e5_sampled_trajectories_with_parameters_and_disturbances_lie_inside():
    torch.set_num_threads(1)
    compiled = _compiled_text(PARAMETRIC)
    _check_enclosed(compiled, _perturbed(compiled, 17, seed=7), 100_000, seed=7)


def test_a_worst_gust_that_alternates_is_found_by_the_falsifiers_search():
    """x⁺ = −0.9 x + w: constant gusts reach 0.16, random ±0.3 ones rarely pass 2.2, the
    alternating one reaches 0.1·0.9³⁰ + 3(1 − 0.9³⁰) ≈ 2.87.  The falsifier's sign search
    (uncertain.Uncertainty.sharpen) finds a violating sequence; the evaluator confirms it."""
    torch.set_num_threads(1)
    compiled = _compiled_text(_one_state("disturbance w in [-0.3, 0.3]",
                                         "-0.9 * x + w + 0.1 * u", box=(-0.1, 0.1),
                                         horizon=30, limit=2.2))
    theta = compiled.family.theta0
    result = verify(compiled, theta, cells=64, time_limit=60)
    r = result.constraints["bounded"]
    assert r.verdict == "COUNTEREXAMPLE", result.as_json()
    g = _resimulated(compiled, theta, r.counterexample)
    assert 0 < g == pytest.approx(r.counterexample["g"], abs=1e-12)
    assert g <= 0.1 * 0.9 ** 30 + 3 * (1 - 0.9 ** 30) - 2.2 + 1e-12
