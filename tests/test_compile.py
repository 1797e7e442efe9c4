"""Compile: the plant, the backup, the policy family, the metric semantics, the rollout evaluator,
the scenarios and the objectives — each checked against an independent computation (numpy,
scipy, torch autograd, finite differences or a hand-computed trace), with real components."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from scpo_spec import check_text
from scpo_spec.compile.problem import compile_spec
from scpo_spec.language.scenario_bounds import initial_box, training_states
from scpo_spec.plan.scenarios import holdout_states
from scpo_spec.compile.signals import Trace
from scpo_spec.policies.policy import ACTIVATIONS
from tests.conftest import ROOT
from tests.helpers import VALID, as_pendulum, replace
from tests.numerics import assert_close_across_paths

DT = torch.float64


def checked(text: str, base_dir: Path | None = None):
    result = check_text(text, path="t.scpo", base_dir=base_dir)
    assert result.ok, [d.headline() for d in result.diagnostics]
    return result.spec


def compiled(text: str, base_dir: Path | None = None):
    return compile_spec(checked(text, base_dir), base_dir or Path.cwd())


def edit(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        text = replace(old, new, text)
    return text


def spectral(M: np.ndarray) -> float:
    return float(np.abs(np.linalg.eigvals(M)).max())


# The double integrator of VALID, small enough to roll out in a blink.
T = 5
SMALL = edit(VALID, ("hidden = [64, 64]", "hidden = [8, 8]"), ("count 64", "count 3"),
             ("horizon 60", "horizon 5"))
A_DI = np.array([[1.0, 0.1], [0.0, 1.0]])
B_DI = np.array([[0.005], [0.1]])

# An unstable linear plant with a linear policy (specs/linear_stability.scpo), shortened.
UNSTABLE = edit((ROOT / "specs" / "linear_stability.scpo").read_text(encoding="utf-8"),
                ("grid 16", "count 6"), ("horizon 40", "horizon 8"))
A_UN = np.array([[1.005, 0.1002], [0.1002, 1.005]])
B_UN = np.array([[0.005], [0.1002]])


def pendulum_text(params: str = "dt = 0.05  g = 9.81  m = 2  l = 0.7",
                  policy: str = "policy mlp { hidden = [8, 8]  activation = tanh  "
                                "residual = backup  seed = 0 }") -> str:
    text = as_pendulum(params)
    return edit(text, ("stability decay: lyapunov(backup) <= 0.8 at final smoothness 50",
                       "stability margin: spectral_radius <= 0.98 smoothness 20"),
                ("policy mlp { hidden = [64, 64]  activation = tanh  residual = backup  "
                 "seed = 0 }", policy), ("horizon 60", "horizon 5"), ("count 64", "count 3"))


def mlp_text(activation: str, residual: bool, hidden: str = "[5, 3]", seed: int = 0) -> str:
    res = "  residual = backup" if residual else ""
    return replace("policy mlp { hidden = [8, 8]  activation = tanh  residual = backup  "
                   "seed = 0 }",
                   f"policy mlp {{ hidden = {hidden}  activation = {activation}{res}  "
                   f"seed = {seed} }}", SMALL)


# ---------------------------------------------------------------------------------------------
# systems

def test_linear_step_is_Ax_plus_Bu():
    dyn = compiled(VALID).dynamics
    assert (dyn.kind, dyn.n, dyn.m) == ("linear", 2, 1)
    rng = np.random.default_rng(0)
    x, u = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 4, 1))
    got = dyn.step(torch.tensor(x), torch.tensor(u)).numpy()
    want = np.einsum("ij,csj->csi", A_DI, x) + np.einsum("ij,csj->csi", B_DI, u)
    assert_close_across_paths(got, want)  # torch's fused product vs numpy's: the last bits


def test_pendulum_step_follows_the_language_equations():
    dt, g, m, l = 0.05, 9.81, 2.0, 0.7
    dyn = compiled(pendulum_text()).dynamics
    assert dyn.kind == "pendulum"
    rng = np.random.default_rng(1)
    x, u = rng.normal(size=(3, 4, 2)) * 2, rng.normal(size=(3, 4, 1)) * 3
    got = dyn.step(torch.tensor(x), torch.tensor(u)).numpy()
    theta, omega = x[..., 0], x[..., 1]
    omega1 = omega + dt * (3 * g / (2 * l) * np.sin(theta) + 3 / (m * l ** 2) * u[..., 0])
    theta1 = theta + dt * omega1
    np.testing.assert_allclose(got, np.stack([theta1, omega1], -1), rtol=1e-14, atol=1e-14)


def test_pendulum_linearisation_is_the_jacobian_of_the_step_at_zero():
    dyn = compiled(pendulum_text()).dynamics
    A, B = dyn.linearisation()

    def f(z):
        return dyn.step(torch.tensor(z[:2]), torch.tensor(z[2:])).numpy()

    eps = 1e-6
    J = np.stack([(f(eps * e) - f(-eps * e)) / (2 * eps) for e in np.eye(3)], axis=1)
    np.testing.assert_allclose(A, J[:, :2], rtol=0, atol=1e-8)
    np.testing.assert_allclose(B, J[:, 2:], rtol=0, atol=1e-8)
    # and exactly the closed form of docs/language.md
    dt, a, b = 0.05, 3 * 9.81 / (2 * 0.7), 3 / (2 * 0.7 ** 2)
    np.testing.assert_allclose(A, [[1 + dt * dt * a, dt], [dt * a, 1]], rtol=1e-14)
    np.testing.assert_allclose(B, [[dt * dt * b], [dt * b]], rtol=1e-14)


STATIC = """\
spec reg "static regression"
system static { state x  input y }
policy mlp { hidden = [4]  activation = tanh  seed = 0 }
scenarios {
    initial x in [-3, 3]
    grid 5
    seed 0
    horizon 1
}
constraint band: always abs(y) <= 1.4 smoothness 20
objective regression { data "data.csv"  inputs x  targets y  loss mse }
train {
    steps 10
    optimizer sgd { lr = 0.05 }
    directions 4
    perturbation 1e-3
    radius 0.5
    margin 1e-6
    seed 0
}
"""
CSV = "y,note,x\n0.5,a,1.0\n-1.25,b,-2\n2.0,c,0.25\n\n0.0,d,3e-1\n"
CSV_X = np.array([[1.0], [-2.0], [0.25], [0.3]])
CSV_Y = np.array([[0.5], [-1.25], [2.0], [0.0]])


@pytest.fixture
def static(tmp_path):
    (tmp_path / "data.csv").write_text(CSV, encoding="utf-8")
    return tmp_path


def test_static_keeps_x(static):
    c = compiled(STATIC, static)
    dyn = c.dynamics
    assert (dyn.kind, dyn.n, dyn.m) == ("static", 1, 1)
    x = torch.randn(2, 3, 1, dtype=DT)
    assert torch.equal(dyn.step(x, torch.randn(2, 3, 1, dtype=DT)), x)
    X, U = c.evaluator.rollout(c.family.theta0.unsqueeze(0))
    assert X.shape == (1, 5, 2, 1) and U.shape == (1, 5, 1, 1)
    assert torch.equal(X[:, :, 0], X[:, :, 1])
    np.testing.assert_allclose(X[0, :, 0, 0].numpy(), np.linspace(-3, 3, 5))
    with pytest.raises(ValueError):
        dyn.linearisation()


# ---------------------------------------------------------------------------------------------
# backup

def dare_residual(A, B, Q, R, P):
    BtPA = B.T @ P @ A
    return A.T @ P @ A - P - BtPA.T @ np.linalg.solve(R + B.T @ P @ B, BtPA) + Q


@pytest.mark.parametrize("text, A, B, Q, R", [
    (VALID, A_DI, B_DI, np.eye(2), np.eye(1)),
    (UNSTABLE, A_UN, B_UN, np.eye(2), np.array([[100.0]])),
])
def test_lqr_backup_solves_the_riccati_equation(text, A, B, Q, R):
    backup = compiled(text).backup
    P_ref = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K_ref = -np.linalg.solve(R + B.T @ P_ref @ B, B.T @ P_ref @ A)
    assert backup.K.shape == (1, 2) and backup.P.shape == (2, 2)
    np.testing.assert_allclose(backup.K, K_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(backup.P, P_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(backup.P, backup.P.T)
    assert np.all(np.linalg.eigvalsh(backup.P) > 0)
    assert np.abs(dare_residual(A, B, Q, R, backup.P)).max() < 1e-9 * np.abs(backup.P).max()
    assert spectral(A + B @ backup.K) < 1
    # the backup is the LQR optimum: the Bellman equation holds with u = Kx
    Acl = A + B @ backup.K
    np.testing.assert_allclose(Q + backup.K.T @ R @ backup.K + Acl.T @ backup.P @ Acl, backup.P,
                               rtol=1e-9, atol=1e-9)


def test_unstable_plant_lqr_matches_its_comment():
    backup = compiled(UNSTABLE).backup
    assert spectral(A_UN) > 1.1
    np.testing.assert_allclose(backup.K, [[-1.91, -1.91]], atol=0.01)
    assert spectral(A_UN + B_UN @ backup.K) == pytest.approx(0.905, abs=2e-3)


def test_pendulum_lqr_is_designed_on_the_linearisation():
    text = pendulum_text().replace("backup linear { K = [[-20, -5]] }",
                                   "backup lqr { Q = diag(1, 1)  R = diag(1) }")
    c = compiled(text)
    A, B = c.dynamics.linearisation()
    P = scipy.linalg.solve_discrete_are(A, B, np.eye(2), np.eye(1))
    np.testing.assert_allclose(c.backup.P, P, rtol=1e-9)
    assert spectral(A + B @ c.backup.K) < 1


def test_linear_backup_is_the_gain_as_written():
    backup = compiled(pendulum_text()).backup
    np.testing.assert_array_equal(backup.K, [[-20.0, -5.0]])
    assert backup.P is None


# ---------------------------------------------------------------------------------------------
# policies

def reference_net(sizes: list[int], activation: str) -> nn.Sequential:
    """An MLP built here, independently of the package, in torch's own parameter order."""
    modules: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        modules.append(nn.Linear(sizes[i], sizes[i + 1], dtype=DT))
        if i < len(sizes) - 2:
            modules.append({"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU,
                            "sigmoid": nn.Sigmoid, "softplus": nn.Softplus,
                            "identity": nn.Identity}[activation]())
    return nn.Sequential(*modules)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_flat_theta_layout_is_parameters_to_vector(activation):
    c = compiled(mlp_text(activation, residual=False))
    fam = c.family
    assert fam.d == (2 * 5 + 5) + (5 * 3 + 3) + (3 * 1 + 1)
    torch.manual_seed(3)
    thetas = torch.randn(3, fam.d, dtype=DT)
    x = torch.randn(3, 7, 2, dtype=DT)
    batched = fam.forward(thetas, x)
    assert batched.shape == (3, 7, 1) and batched.dtype == DT
    for i in range(3):
        module = fam.module(thetas[i])
        assert torch.equal(nn.utils.parameters_to_vector(module.parameters()), thetas[i])
        ref = reference_net([2, 5, 3, 1], activation)
        nn.utils.vector_to_parameters(thetas[i].clone(), ref.parameters())
        with torch.no_grad():
            torch.testing.assert_close(module(x[i]), ref(x[i]), rtol=1e-13, atol=1e-13)
            torch.testing.assert_close(batched[i], ref(x[i]), rtol=1e-13, atol=1e-13)


def test_theta0_is_seeded_and_residual_zeroes_the_last_layer():
    a = compiled(mlp_text("tanh", residual=True)).family.theta0
    b = compiled(mlp_text("tanh", residual=True)).family.theta0
    other = compiled(mlp_text("tanh", residual=True, seed=1)).family.theta0
    assert torch.equal(a, b) and not torch.equal(a, other)
    last = 3 * 1 + 1
    assert torch.count_nonzero(a[-last:]) == 0 and torch.count_nonzero(a[:-last]) == a.numel() - last
    plain = compiled(mlp_text("tanh", residual=False)).family.theta0
    assert torch.count_nonzero(plain[-last:]) == last
    # PyTorch's default initialisation under the spec's seed
    torch.manual_seed(0)
    ref = reference_net([2, 5, 3, 1], "tanh")
    assert torch.equal(plain, nn.utils.parameters_to_vector(ref.parameters()).detach())


def test_residual_backup_makes_theta0_exactly_the_backup():
    c = compiled(mlp_text("tanh", residual=True))
    K = c.backup.K
    x = torch.randn(4, 9, 2, dtype=DT) * 3
    u = c.family.forward(c.family.theta0.expand(4, -1), x)
    assert_close_across_paths(u, x.numpy() @ K.T)  # torch's BLAS vs numpy's: the last bits
    with torch.no_grad():
        assert_close_across_paths(c.family.module()(x[0]), x[0].numpy() @ K.T)
    J = c.family.jacobian_at_origin(c.family.theta0.unsqueeze(0))
    np.testing.assert_allclose(J[0].numpy(), K, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_jacobian_at_origin_equals_autograd(activation, residual):
    c = compiled(mlp_text(activation, residual))
    fam = c.family
    torch.manual_seed(5)
    thetas = torch.randn(3, fam.d, dtype=DT)
    J = fam.jacobian_at_origin(thetas)
    assert J.shape == (3, 1, 2)
    for i in range(3):
        module = fam.module(thetas[i])
        ref = torch.autograd.functional.jacobian(lambda z: module(z.unsqueeze(0))[0],
                                                 torch.zeros(2, dtype=DT))
        torch.testing.assert_close(J[i], ref, rtol=1e-12, atol=1e-12)


def test_linear_policy_init_backup_is_K():
    c = compiled(UNSTABLE)
    fam, K = c.family, c.backup.K
    assert fam.d == 2
    np.testing.assert_array_equal(fam.theta0.numpy(), K.reshape(-1))
    x = torch.randn(2, 5, 2, dtype=DT)
    assert_close_across_paths(fam.forward(fam.theta0.expand(2, -1), x), x.numpy() @ K.T)
    np.testing.assert_array_equal(fam.jacobian_at_origin(fam.theta0.unsqueeze(0))[0].numpy(), K)
    with torch.no_grad():
        assert_close_across_paths(fam.module()(x[0]), x[0].numpy() @ K.T)


# ---------------------------------------------------------------------------------------------
# metric semantics on a hand-made trace: C = 2 candidates, S = 3 scenarios, T = 5 steps

RNG = np.random.default_rng(11)
XS = RNG.normal(size=(2, 3, T + 1, 2))   # states x_0 … x_T
US = RNG.normal(size=(2, 3, T, 1))       # inputs u_0 … u_{T−1}
POS, VEL, FORCE = XS[..., 0], XS[..., 1], US[..., 0]


def probe(formula: str, text: str = SMALL):
    """The per-scenario violation (C, S) of `formula` on the hand-made trace, and the spec."""
    text = replace("constraint position_limit: always abs(position) <= 2.5 smoothness 50\n",
                   f"constraint probe: {formula} smoothness 1\n", text)
    c = compiled(text)
    metric = next(m for m in c.metrics if m.name == "probe")
    v = metric.per_scenario(Trace(torch.tensor(XS), torch.tensor(US)))
    assert not v.timed and v.t.shape == (2, 3, 1, 1) and v.t.dtype == DT
    return v.t[..., 0, 0].numpy(), c


def lqr_P():
    return scipy.linalg.solve_discrete_are(A_DI, B_DI, np.eye(2), np.eye(1))


def V(P, x):
    return np.einsum("...i,ij,...j->...", x, P, x)


CASES = {
    "always position <= 0.3": lambda: (POS - 0.3).max(-1),
    "position <= 0.3": lambda: (POS - 0.3).max(-1),
    "eventually position <= 0.3": lambda: (POS - 0.3).min(-1),
    "always[1:3] position <= 0.3": lambda: (POS[..., 1:4] - 0.3).max(-1),
    "eventually[2:5] velocity <= 0.1": lambda: (VEL[..., 2:6] - 0.1).min(-1),
    "always[4:4] velocity <= 0.1": lambda: VEL[..., 4] - 0.1,
    "always[0:4] force <= 1": lambda: (FORCE - 1).max(-1),
    "eventually[3:4] force <= 1": lambda: (FORCE[..., 3:5] - 1).min(-1),
    "always force <= 1": lambda: (FORCE - 1).max(-1),
    "at final abs(velocity) <= 0.05": lambda: np.abs(VEL[..., T]) - 0.05,
    "abs(velocity) <= 0.05 at final": lambda: np.abs(VEL[..., T]) - 0.05,
    "at final force <= 1": lambda: FORCE[..., T - 1] - 1,
    "force <= 1 at final": lambda: FORCE[..., T - 1] - 1,
    "at final position + force <= 1": lambda: POS[..., T - 1] + FORCE[..., T - 1] - 1,
    "at final (position <= 0.3 and force <= 1)":          # each atom at its own last step
        lambda: np.maximum(POS[..., T] - 0.3, FORCE[..., T - 1] - 1),
    "at final (position <= 0.3 or force <= 1)":
        lambda: np.minimum(POS[..., T] - 0.3, FORCE[..., T - 1] - 1),
    # a connective of a state and an input atom lives on their common steps t = 0 … T−1
    "always (position <= 0.3 and force <= 1)":
        lambda: np.maximum(POS[..., :T] - 0.3, FORCE - 1).max(-1),
    "always position <= 0.3 and always force <= 1":         # x_T is checked here
        lambda: np.maximum((POS - 0.3).max(-1), (FORCE - 1).max(-1)),
    "position <= 0.3 and force <= 1":                       # each bare conjunct every step
        lambda: np.maximum((POS - 0.3).max(-1), (FORCE - 1).max(-1)),
    "always (position <= 0.3 or force <= 1)":
        lambda: np.minimum(POS[..., :T] - 0.3, FORCE - 1).max(-1),
    "position <= 0.3 or force <= 1":                        # a bare `or`: always (… or …)
        lambda: np.minimum(POS[..., :T] - 0.3, FORCE - 1).max(-1),
    "eventually (position <= 0.3 and force <= 1)":          # was "met" by x_T alone
        lambda: np.maximum(POS[..., :T] - 0.3, FORCE - 1).min(-1),
    "always position <= 0.3 and eventually velocity <= 0.1":
        lambda: np.maximum((POS - 0.3).max(-1), (VEL - 0.1).min(-1)),
    "always position <= 0.3 or eventually velocity <= 0.1":
        lambda: np.minimum((POS - 0.3).max(-1), (VEL - 0.1).min(-1)),
    "always (position <= 0.3 or velocity <= 0.1)":
        lambda: np.minimum(POS - 0.3, VEL - 0.1).max(-1),
    "eventually (position <= 0.3 and velocity <= 0.1)":
        lambda: np.maximum(POS - 0.3, VEL - 0.1).min(-1),
    "eventually[1:3] position <= 0.3 and velocity <= 0.1":   # prefix binds tighter than `and`
        lambda: np.maximum((POS[..., 1:4] - 0.3).min(-1), (VEL - 0.1).max(-1)),
    "position <= 0.3 and velocity <= 0.1 at final":        # postfix covers one comparison
        lambda: np.maximum((POS - 0.3).max(-1), VEL[..., T] - 0.1),
    "always force in [-0.5, 0.7]": lambda: np.maximum(-0.5 - FORCE, FORCE - 0.7).max(-1),
    "at final velocity in [-0.2, 0.1]": lambda: np.maximum(-0.2 - VEL[..., T], VEL[..., T] - 0.1),
    "always position >= -0.3": lambda: (-0.3 - POS).max(-1),
    "always velocity >= position": lambda: (POS - VEL).max(-1),
    "always state <= [0.5, 0.2]": lambda: np.maximum(POS - 0.5, VEL - 0.2).max(-1),
    "always abs(state) <= 0.4": lambda: (np.abs(XS) - 0.4).max(-1).max(-1),
    "eventually state >= [-0.5, 0.2]": lambda: np.maximum(-0.5 - POS, 0.2 - VEL).min(-1),
    "always norm(state) <= 0.1": lambda: (np.linalg.norm(XS, axis=-1) - 0.1).max(-1),
    "always norm(input) <= 0.1": lambda: (np.abs(FORCE) - 0.1).max(-1),
    "always quad(diag(2, 3), state) <= 1": lambda: (2 * POS ** 2 + 3 * VEL ** 2 - 1).max(-1),
    "always quad(2, force) <= 1": lambda: (2 * FORCE ** 2 - 1).max(-1),
    "always max(position, velocity) <= 0": lambda: np.maximum(POS, VEL).max(-1),
    "always min(state) <= 0": lambda: np.minimum(POS, VEL).max(-1),
    "always 2 * position - velocity^2 / 4 <= 1": lambda: (2 * POS - VEL ** 2 / 4 - 1).max(-1),
    "always exp(position) + sin(velocity) - cos(force) <= 1":
        lambda: (np.exp(POS[..., :T]) + np.sin(VEL[..., :T]) - np.cos(FORCE) - 1).max(-1),
    "lyapunov(backup) <= 0.8 at final":
        lambda: V(lqr_P(), XS[..., T, :]) / V(lqr_P(), XS[..., 0, :]) - 0.8,
    "always lyapunov(backup) <= 1.5":
        lambda: (V(lqr_P(), XS) / V(lqr_P(), XS[..., :1, :]) - 1.5).max(-1),
    "lyapunov(diag(1, 2)) <= 0.5 at final":
        lambda: V(np.diag([1.0, 2.0]), XS[..., T, :]) / V(np.diag([1.0, 2.0]), XS[..., 0, :]) - 0.5,
}


@pytest.mark.parametrize("formula", list(CASES))
def test_metric_semantics(formula):
    got, _ = probe(formula)
    np.testing.assert_allclose(got, CASES[formula](), rtol=1e-12, atol=1e-12)


def test_lyapunov_is_one_at_the_start():
    got, _ = probe("at final lyapunov(backup) <= 1")  # sanity: the ratio, not V itself
    assert np.all(np.isfinite(got))
    got0, _ = probe("always[0:0] lyapunov(backup) <= 0.25")
    np.testing.assert_allclose(got0, 0.75, rtol=0, atol=1e-14)


SMOOTH = replace("    seed 0\n}\n", "    seed 0\n    aggregate smooth(0.01)\n}\n", SMALL)
TAU = 0.01


@pytest.mark.parametrize("formula, count", [
    ("always position <= 0.3", T + 1),
    ("always[1:3] velocity <= 0.1", 3),
    ("always force <= 1", T),
    ("always state <= [0.5, 0.2]", 2 * (T + 1)),   # a max over components, then over steps
])
def test_smooth_aggregate_is_an_upper_bound_within_tau_log_count(formula, count):
    hard, _ = probe(formula)
    smooth, c = probe(formula, SMOOTH)
    assert c.settings.aggregate == "smooth" and c.settings.tau == TAU
    assert np.all(smooth >= hard - 1e-15)
    assert np.all(smooth <= hard + TAU * math.log(count) + 1e-15)
    assert np.any(smooth > hard + 1e-9)   # really smoothed, not the hard max


def test_smooth_aggregate_leaves_min_and_final_hard():
    for formula in ("eventually position <= 0.3", "at final abs(velocity) <= 0.05"):
        np.testing.assert_allclose(probe(formula, SMOOTH)[0], probe(formula)[0], rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# metrics through the evaluator, on a linear plant whose rollouts numpy can compute

def numpy_metrics(K: np.ndarray, x0: np.ndarray, horizon: int, P: np.ndarray) -> np.ndarray:
    """[position_limit, force_limit, decay, margin] of specs/linear_stability.scpo for u = Kx."""
    xs = [x0]
    for _ in range(horizon):
        xs.append(xs[-1] @ (A_UN + B_UN @ K).T)
    X = np.stack(xs, axis=1)                      # (S, T+1, 2)
    U = X[:, :-1] @ K.T                           # (S, T, 1)
    return np.array([
        (np.abs(X[..., 0]) - 2).max(),
        (np.abs(U[..., 0]) - 5).max(),
        (V(P, X[:, -1]) / V(P, X[:, 0]) - 0.1).max(),
        spectral(A_UN + B_UN @ K) - 0.98,
    ])


def candidates(K: np.ndarray, count: int, scale: float, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor(K.reshape(1, -1) + scale * rng.normal(size=(count, K.size)))


def test_evaluator_metrics_equal_numpy_rollouts():
    c = compiled(UNSTABLE)
    ev = c.evaluator
    assert ev.names == ["position_limit", "force_limit", "decay", "margin"]
    x0 = training_states(c.spec)
    thetas = candidates(c.backup.K, 4, 0.5)
    g = ev(thetas)
    assert g.shape == (4, 4) and g.dtype == DT
    for i in range(4):
        want = numpy_metrics(thetas[i].numpy().reshape(1, 2), x0, 8, c.backup.P)
        np.testing.assert_allclose(g[i].numpy(), want, rtol=1e-11, atol=1e-12)
    # the metric is the max over scenarios of the per-scenario violations
    h = ev.per_scenario(thetas)
    assert h.shape == (4, 6, 4)
    np.testing.assert_array_equal(g.numpy(), h.amax(dim=1).numpy())
    assert torch.all(h[:, :, 3] == h[:, :1, 3])   # spectral radius: the same for every scenario


def test_spectral_radius_metric_equals_numpy_eigvals():
    c = compiled(UNSTABLE)
    thetas = candidates(c.backup.K, 6, 3.0, seed=2)
    rho = c.evaluator.spectral_radius(thetas).numpy()
    for i in range(6):
        assert rho[i] == pytest.approx(spectral(A_UN + B_UN @ thetas[i].numpy().reshape(1, 2)),
                                       rel=1e-12)
    assert rho[0] == pytest.approx(spectral(A_UN + B_UN @ (thetas[0].numpy().reshape(1, 2))))
    np.testing.assert_allclose(c.evaluator(thetas)[:, 3].numpy(), rho - 0.98, rtol=0, atol=1e-15)


def test_spectral_radius_of_an_mlp_on_the_pendulum():
    c = compiled(pendulum_text())
    A, B = c.dynamics.linearisation()
    torch.manual_seed(1)
    thetas = c.family.theta0 + 0.3 * torch.randn(3, c.family.d, dtype=DT)
    rho = c.evaluator.spectral_radius(thetas).numpy()
    for i in range(3):
        module = c.family.module(thetas[i])
        J = torch.autograd.functional.jacobian(lambda z: module(z.unsqueeze(0))[0],
                                               torch.zeros(2, dtype=DT)).numpy()
        assert rho[i] == pytest.approx(spectral(A + B @ J), rel=1e-10)
    # at θ₀ the policy is the backup u = [-20, -5] x
    rho0 = c.evaluator.spectral_radius(c.family.theta0.unsqueeze(0)).item()
    assert rho0 == pytest.approx(spectral(A + B @ np.array([[-20.0, -5.0]])), rel=1e-12)


def test_smooth_metric_over_scenarios_is_within_tau_log_count():
    hard = compiled(UNSTABLE)
    smooth = compiled(UNSTABLE.replace("    seed 0\n}", "    seed 0\n    aggregate smooth(0.01)\n}"))
    assert smooth.settings.tau == TAU
    thetas = candidates(hard.backup.K, 3, 0.5)
    gh, gs = hard.evaluator(thetas).numpy(), smooth.evaluator(thetas).numpy()
    S = 6
    assert np.all(gs >= gh - 1e-12)
    # decay (at final, one number) and margin (one per candidate) are smoothed over scenarios only
    assert np.all(gs[:, 2:] <= gh[:, 2:] + TAU * math.log(S) + 1e-12)
    # always abs(·): over 9 steps, then 6 scenarios
    assert np.all(gs[:, :2] <= gh[:, :2] + TAU * (math.log(9) + math.log(S)) + 1e-12)


# ---------------------------------------------------------------------------------------------
# evaluator

def test_batched_evaluation_equals_each_candidate_alone():
    text = edit(SMALL, ("count 3", "count 8"), ("horizon 5", "horizon 20"),
                ("stability decay:", "stability margin: spectral_radius <= 0.98 smoothness 20\n"
                                     "stability decay:"))
    c = compiled(text)
    torch.manual_seed(0)
    thetas = c.family.theta0 + 0.1 * torch.randn(5, c.family.d, dtype=DT)
    g = c.evaluator(thetas)
    h = c.evaluator.per_scenario(thetas)
    assert g.shape == (5, 4) and torch.all(torch.isfinite(g))
    for i in range(5):
        torch.testing.assert_close(c.evaluator(thetas[i:i + 1])[0], g[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(c.evaluator.per_scenario(thetas[i:i + 1])[0], h[i],
                                   rtol=0, atol=1e-12)


def test_non_finite_rollouts_give_inf_for_every_metric_of_that_candidate_only():
    c = compiled(UNSTABLE)
    K = c.backup.K.reshape(-1)
    thetas = torch.tensor(np.stack([
        K, [1e200, 1e200], [np.nan, K[1]], [np.inf, K[1]], [-np.inf, np.inf], 1.1 * K]))
    g = c.evaluator(thetas)
    h = c.evaluator.per_scenario(thetas)
    assert g.dtype == DT and g.shape == (6, 4)
    assert torch.all(torch.isposinf(g[1:5])) and torch.all(torch.isposinf(h[1:5]))
    for i in (0, 5):
        assert torch.all(torch.isfinite(g[i]))
        torch.testing.assert_close(g[i], c.evaluator(thetas[i:i + 1])[0], rtol=0, atol=1e-12)
    x0 = training_states(c.spec)
    np.testing.assert_allclose(g[5].numpy(), numpy_metrics(1.1 * K.reshape(1, 2), x0, 8,
                                                           c.backup.P), rtol=1e-11, atol=1e-12)


def test_nan_weights_in_an_mlp_give_inf():
    c = compiled(SMALL)
    thetas = c.family.theta0.repeat(3, 1)
    thetas[1, 7] = float("nan")
    thetas[2, -1] = float("inf")
    g = c.evaluator(thetas)
    assert torch.all(torch.isposinf(g[1:])) and not torch.any(torch.isnan(g))
    assert torch.all(torch.isfinite(g[0]))
    assert_close_across_paths(c.evaluator(thetas[:1])[0], g[0])  # a batch of 1, not of 3


def test_evaluator_works_without_grad_and_returns_float64():
    c = compiled(UNSTABLE)
    theta = torch.tensor(c.backup.K.reshape(1, -1), requires_grad=True)
    g = c.evaluator(theta)
    assert g.dtype == DT and not g.requires_grad and g.grad_fn is None
    with torch.no_grad():
        g2 = c.evaluator(theta)
    torch.testing.assert_close(g, g2, rtol=0, atol=0)
    g32 = c.evaluator(theta.detach().float())
    assert g32.dtype == DT
    torch.testing.assert_close(g32, c.evaluator(theta.detach().float().double()), rtol=0, atol=0)
    assert torch.is_grad_enabled()   # the decorator restores the caller's grad mode


# ---------------------------------------------------------------------------------------------
# scenarios

@pytest.mark.parametrize("G", [2, 4, 5])
def test_grid_gives_every_combination_of_linspace_points(G):
    # an odd grid holds the origin, where lyapunov(backup) is undefined (a check error)
    c = compiled(replace("stability decay: lyapunov(backup) <= 0.8 at final",
                         "stability decay: spectral_radius <= 0.99",
                         replace("count 64", f"grid {G}")))
    x0 = training_states(c.spec)
    assert x0.shape == (G ** 2, 2) and x0.dtype == np.float64
    want = {(p, v) for p in np.linspace(-1, 1, G) for v in np.linspace(-0.5, 0.5, G)}
    assert {tuple(r) for r in x0} == want
    assert len({tuple(r) for r in x0}) == G ** 2
    for corner in itertools.product([-1.0, 1.0], [-0.5, 0.5]):
        assert corner in want
    np.testing.assert_array_equal(c.evaluator.x0.numpy(), x0)


def test_count_draws_are_in_the_box_and_reproducible():
    spec = checked(VALID)
    x0 = training_states(spec)
    assert x0.shape == (64, 2)
    lo, hi = initial_box(spec)
    np.testing.assert_array_equal(lo, [-1, -0.5])
    np.testing.assert_array_equal(hi, [1, 0.5])
    assert np.all(x0 >= lo) and np.all(x0 <= hi)
    assert np.ptp(x0[:, 0]) > 1.5 and np.ptp(x0[:, 1]) > 0.75   # spread over the box
    np.testing.assert_array_equal(training_states(checked(VALID)), x0)
    np.testing.assert_array_equal(compiled(VALID).evaluator.x0.numpy(), x0)
    other = training_states(checked(replace("    seed 0\n    horizon", "    seed 5\n    horizon")))
    assert not np.allclose(other, x0)


def test_holdout_states_differ_from_training_states():
    c = compiled(VALID)
    train, hold = training_states(c.spec), holdout_states(c.spec)
    assert hold.shape == (1000, 2)
    lo, hi = initial_box(c.spec)
    assert np.all(hold >= lo) and np.all(hold <= hi)
    assert not ({tuple(r) for r in hold} & {tuple(r) for r in train})
    assert not np.allclose(hold[:64], train)
    np.testing.assert_array_equal(holdout_states(c.spec), hold)
    assert holdout_states(c.spec, 10).shape == (10, 2)
    ev = c.holdout_evaluator(16)
    assert ev.x0.shape == (16, 2) and ev.names == c.evaluator.names
    g = ev(c.family.theta0.unsqueeze(0))
    assert g.shape == (1, 3) and torch.all(torch.isfinite(g))


# ---------------------------------------------------------------------------------------------
# objectives

def test_imitation_loss_at_theta0_equals_numpy():
    c = compiled(VALID)
    X = np.random.default_rng(1).normal([0, 0], [1, 1], size=(512, 2))
    Y = X @ np.array([[-8.0, -1.0]]).T + 0.8
    pred = X @ c.backup.K.T   # θ₀ is exactly the backup
    want = np.mean((pred - Y) ** 2)
    assert c.objective(c.family.theta0).item() == pytest.approx(want, rel=1e-12)
    # and at another θ, with the policy's torch module
    theta = c.family.theta0 + 0.05 * torch.randn(c.family.d, dtype=DT)
    with torch.no_grad():
        pred = c.family.module(theta)(torch.tensor(X)).numpy()
    assert c.objective(theta).item() == pytest.approx(np.mean((pred - Y) ** 2), rel=1e-12)


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_regression_reads_the_csv(static, loss):
    c = compiled(STATIC.replace("loss mse", f"loss {loss}"), static)
    theta = c.family.theta0 + 0.5 * torch.randn(c.family.d, dtype=DT)
    with torch.no_grad():
        pred = c.family.module(theta)(torch.tensor(CSV_X)).numpy()
    r = pred - CSV_Y
    want = {"mse": np.mean(r ** 2), "mae": np.mean(np.abs(r)),
            "huber": np.mean(np.where(np.abs(r) <= 1, 0.5 * r ** 2, np.abs(r) - 0.5))}[loss]
    assert c.objective(theta).item() == pytest.approx(want, rel=1e-12)


def numpy_cost(K, x0, horizon, stage, terminal=None):
    x, total = x0, np.zeros(len(x0))
    for _ in range(horizon):
        u = x @ K.T
        total += stage(x, u)
        x = x @ (A_UN + B_UN @ K).T
    if terminal is not None:
        total += terminal(x)
    return total.mean()


def fd_gradient(f, theta, eps=1e-6):
    return np.array([(f(theta + eps * e) - f(theta - eps * e)) / (2 * eps)
                     for e in torch.eye(theta.numel(), dtype=DT)])


def test_cost_objective_value_and_gradient():
    c = compiled(UNSTABLE)
    x0 = training_states(c.spec)
    theta = torch.tensor(c.backup.K.reshape(-1) + [0.3, -0.2], requires_grad=True)
    L = c.objective(theta)
    want = numpy_cost(theta.detach().numpy().reshape(1, 2), x0, 8,
                      lambda x, u: 10 * x[:, 0] ** 2 + x[:, 1] ** 2 + 0.1 * u[:, 0] ** 2)
    assert L.item() == pytest.approx(want, rel=1e-12)
    (grad,) = torch.autograd.grad(L, theta)
    assert torch.all(torch.isfinite(grad)) and grad.abs().max() > 0
    fd = fd_gradient(lambda t: c.objective(t).item(), theta.detach())
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-6, atol=1e-8)


def test_cost_objective_reads_stage_at_0_to_T_minus_1_and_terminal_at_T():
    """docs/language.md: `stage` is evaluated at t = 0 … T−1 (also when it reads states only),
    `terminal` at t = T."""
    text = replace("objective cost { stage quad(diag(10, 1), state) + quad(diag(0.1), input) }",
                   "objective cost { stage position^2  terminal 10 * velocity^2 }", UNSTABLE)
    c = compiled(text)
    x0 = training_states(c.spec)
    theta = torch.tensor(c.backup.K.reshape(-1))
    want = numpy_cost(c.backup.K, x0, 8, lambda x, u: x[:, 0] ** 2, lambda x: 10 * x[:, 1] ** 2)
    assert c.objective(theta).item() == pytest.approx(want, rel=1e-12)
