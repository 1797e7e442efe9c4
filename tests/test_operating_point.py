"""LANGUAGE-v3's operating point, observations, output scales and the affine backup, downstream of
the language: the LQR at (x*, u*) against scipy's DARE on a linearisation worked out by hand,
the batched rollout against per-candidate and plain-numpy loops, the export against load_run's
policy, and the verifier's reach sets against sampled trajectories."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from scpo_spec.compile.problem import compile_spec
from scpo_spec.dtype import DTYPE
from scpo_spec.language.load import check_text

DT, G, P_STAR = 0.1, 9.81, 0.5
U_STAR = math.sqrt(G * math.cos(P_STAR))

# x⁺ = (p + dt v, v + dt (u² − g cos p)): a fixed point at p* = 0.5, v* = 0, u* = √(g cos p*)
PLANT = f"""\
spec op "operating point"
const dt = {DT}
const g = {G}
let accel = u * u - g * cos(p)
system discrete {{
    state p, v
    input u
    next p = p + dt * v
    next v = v + dt * accel
    equilibrium {{ p = {P_STAR}  u = sqrt(g * cos({P_STAR})) }}
}}
"""
REST = """\
scenarios {
    initial p in [0.3, 0.7]
    initial v in [-0.2, 0.2]
    count 8
    seed 0
    horizon 20
    holdout 16
}
constraint speed: always abs(v) <= 5
stability margin: spectral_radius <= 0.999
objective cost { stage quad(diag(1, 0.1), [p - 0.5, v]) }
train { steps 2  optimizer sgd { lr = 0.01 }  directions 4  perturbation 1e-3  radius 0.5
        margin 1e-6  solver clarabel  seed 0  smoothness estimate }
"""


def compiled_of(text: str):
    result = check_text(text, path="op.scpo")
    assert result.ok, [d.headline() for d in result.diagnostics]
    return compile_spec(result.spec)


def by_hand() -> tuple[np.ndarray, np.ndarray]:
    """∂x⁺/∂x and ∂x⁺/∂u at (x*, u*), differentiated by hand."""
    A = np.array([[1.0, DT], [DT * G * math.sin(P_STAR), 1.0]])
    B = np.array([[0.0], [DT * 2 * U_STAR]])
    return A, B


def test_the_lqr_is_the_dare_of_the_plant_linearised_at_the_operating_point():
    compiled = compiled_of(PLANT + "backup lqr { Q = diag(1, 1)  R = diag(0.5) }\n"
                           "policy mlp { hidden = [8]  residual = backup  seed = 0 }\n" + REST)
    A, B = by_hand()
    np.testing.assert_allclose(np.hstack(compiled.dynamics.linearisation()), np.hstack([A, B]),
                               rtol=1e-12, atol=1e-14)
    Q, R = np.diag([1.0, 1.0]), np.diag([0.5])
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    np.testing.assert_allclose(compiled.backup.K, K, rtol=1e-9)
    np.testing.assert_allclose(compiled.backup.P, P, rtol=1e-9)
    # the backup acts around (x*, u*): u = u* + K (x − x*)
    x = np.array([[0.4, 0.1], [P_STAR, 0.0]])
    u = compiled.backup(torch.as_tensor(x, dtype=DTYPE)).numpy()
    np.testing.assert_allclose(u, U_STAR + (x - [P_STAR, 0.0]) @ K.T, rtol=1e-13, atol=1e-13)
    # spectral_radius of θ₀ (the residual net is 0 there) is the LQR loop's, at x*
    rho = compiled.evaluator.spectral_radius(compiled.family.theta0[None])[0].item()
    assert rho == pytest.approx(max(abs(np.linalg.eigvals(A + B @ K))), rel=1e-12)


def _numpy_mlp(theta: np.ndarray, sizes: list[int], o: np.ndarray) -> np.ndarray:
    h, off = o, 0
    for i in range(len(sizes) - 1):
        out, inp = sizes[i + 1], sizes[i]
        W = theta[off:off + out * inp].reshape(out, inp)
        off += out * inp
        b = theta[off:off + out]
        off += out
        h = h @ W.T + b
        if i < len(sizes) - 2:
            h = np.tanh(h)
    return h


def _bank(family, C: int, seed: int = 0, scale: float = 0.3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return family.theta0[None] + scale * torch.randn(C, family.d, generator=gen, dtype=DTYPE)


def test_a_residual_policy_around_the_equilibrium_is_a_numpy_rollout():
    K, k, s = np.array([[-2.0, -3.0]]), np.array([0.25]), np.array([1.5])
    compiled = compiled_of(PLANT + "backup linear { K = [[-2, -3]]  k = [0.25] }\n"
                           "policy mlp { hidden = [6]  residual = backup  seed = 1\n"
                           "             output_scale = [1.5] }\n" + REST)
    family, ev = compiled.family, compiled.evaluator
    thetas = _bank(family, 3)
    with torch.no_grad():
        X, U = ev.rollout(thetas)
    x_star = np.array([P_STAR, 0.0])
    for c in range(3):
        th = thetas[c].numpy()
        x = ev.x0.numpy().copy()
        for t in range(ev.horizon):
            u = U_STAR + (x - x_star) @ K.T + k + s * _numpy_mlp(th, [2, 6, 1], x - x_star)
            np.testing.assert_allclose(U[c, :, t].numpy(), u, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(X[c, :, t].numpy(), x, rtol=1e-12, atol=1e-12)
            p, v = x[:, 0], x[:, 1]
            x = np.stack([p + DT * v, v + DT * (u[:, 0] * u[:, 0] - G * np.cos(p))], axis=1)
        np.testing.assert_allclose(X[c, :, -1].numpy(), x, rtol=1e-12, atol=1e-12)
    # the same numbers through the differentiable rollout (the cost objective's)
    with torch.enable_grad():
        Xg, Ug = ev.rollout(thetas)
    np.testing.assert_allclose(Ug.detach().numpy(), U.numpy(), rtol=1e-12, atol=1e-13)


OBSERVED = PLANT + """\
backup lqr { Q = diag(1, 1)  R = diag(0.5) }
policy mlp { hidden = [5, 4]  activation = tanh  seed = 2
             observe = [p - 0.5, v, p * v, cos(p)]  output_scale = [0.5] }
""" + REST


def test_an_observed_policy_batched_is_the_per_candidate_loop():
    compiled = compiled_of(OBSERVED)
    family, ev, dyn = compiled.family, compiled.evaluator, compiled.dynamics
    assert family.layers[0] == (5, 4)  # the network sees the 4 observed values
    thetas = _bank(family, 4, seed=3)
    with torch.no_grad():
        X, U = ev.rollout(thetas)
        g = ev(thetas)
    for c in range(4):
        policy = family.module(thetas[c])
        x = ev.x0.clone()
        for t in range(ev.horizon):
            with torch.no_grad():
                u = policy(x)
            p, v = x[:, 0].numpy(), x[:, 1].numpy()
            o = np.stack([p - 0.5, v, p * v, np.cos(p)], 1)
            ref = U_STAR + 0.5 * _numpy_mlp(thetas[c].numpy(), [4, 5, 4, 1], o)
            np.testing.assert_allclose(u.numpy(), ref, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(U[c, :, t].numpy(), u.numpy(), rtol=1e-12, atol=1e-13)
            x = dyn.step(x, u)
        np.testing.assert_allclose(X[c, :, -1].numpy(), x.numpy(), rtol=1e-11, atol=1e-12)
    assert torch.isfinite(g).all()


# ---- scpo verify around an operating point ----
GRAVITY = """\
spec grav "a falling mass held at p = 1"
const dt = 0.1
const g = 9.81
system discrete {
    state p, v
    input u
    next p = p + dt * v
    next v = v + dt * (u - g)
    equilibrium { p = 1  u = g }
}
backup POLICY_BACKUP
policy POLICY
scenarios {
    initial p in [0.8, 1.2]
    initial v in [-0.2, 0.2]
    count 8
    seed 0
    horizon 15
    holdout 16
}
constraint height: always abs(p - 1) <= 1.5
constraint thrust: always u in [5, 15]
stability decay: lyapunov(backup) <= 2 at final
objective cost { stage quad(diag(1, 0.1), [p - 1, v]) }
train { steps 2  optimizer sgd { lr = 0.01 }  directions 4  perturbation 1e-3  radius 0.5
        margin 1e-6  solver clarabel  seed 0  smoothness estimate }
"""


def gravity(backup: str, policy: str, lyapunov: bool = True) -> str:
    text = GRAVITY.replace("POLICY_BACKUP", backup).replace("POLICY", policy)
    return text if lyapunov else text.replace("stability decay: lyapunov(backup) <= 2 at final\n",
                                              "")


def _enclosed(compiled, theta, count=400):
    """Every sampled trajectory (and input) inside the reach sets of the whole initial box, and
    every sampled metric inside its bound."""
    from scpo_spec.language.scenario_bounds import initial_box
    from scpo_spec.verify.bounds import IntervalCompiler
    from scpo_spec.verify.reach import ClosedLoop
    lo, hi = (torch.as_tensor(a) for a in initial_box(compiled.spec))
    reach = ClosedLoop(compiled, theta).reach(lo[None], hi[None])
    gen = torch.Generator().manual_seed(0)
    corners = torch.tensor([[a, b] for a in (0, 1) for b in (0, 1)], dtype=DTYPE)
    x0 = lo + (hi - lo) * torch.cat([torch.rand(count, 2, generator=gen, dtype=DTYPE), corners])
    with torch.no_grad():
        X, U = compiled.evaluator.rollout(theta[None], x0)
        g = compiled.evaluator.per_scenario(theta[None], x0)[0]
    assert torch.isfinite(reach.states_hi).all() and torch.isfinite(reach.inputs_hi).all()
    assert ((X[0] >= reach.states_lo[0]) & (X[0] <= reach.states_hi[0])).all()
    assert ((U[0] >= reach.inputs_lo[0]) & (U[0] <= reach.inputs_hi[0])).all()
    spec = compiled.spec
    compiler = IntervalCompiler([s.name for s in spec.system.states],
                                [s.name for s in spec.system.inputs],
                                {c.name: c.value.value for c in spec.consts},
                                compiled.backup.P, compiled.dynamics.x_star)
    for j, prop in enumerate(spec.properties):
        blo, bhi = compiler.formula(prop.formula)(reach, None)
        assert (g[:, j] <= bhi[0]).all() and (g[:, j] >= blo[0]).all(), prop
    # the hulls are not vacuous: as tight as a few times the sampled spread at the end
    spread = X[0, :, -1].amax(0) - X[0, :, -1].amin(0)
    assert ((reach.states_hi[0, -1] - reach.states_lo[0, -1]) < 4 * spread + 1e-9).all()
    return reach


def _perturbed(compiled, seed=0):
    theta = compiled.family.theta0.clone()
    gen = torch.Generator().manual_seed(seed)
    return theta + 0.2 * torch.randn(theta.shape, generator=gen, dtype=DTYPE)


def test_verify_encloses_an_affine_backup_around_the_equilibrium_with_observation_and_scale():
    compiled = compiled_of(gravity(
        "linear { K = [[-2, -3]]  k = [0.1] }",
        "mlp { hidden = [6]  residual = backup  seed = 0\n"
        "      observe = [p - 1, v, 2 * p + v]  output_scale = [0.7] }", lyapunov=False))
    assert compiled.backup.offset is not None and compiled.family.around is not None
    _enclosed(compiled, _perturbed(compiled))


def test_verify_encloses_a_policy_around_u_star_and_the_centred_lyapunov():
    compiled = compiled_of(gravity("lqr { Q = diag(1, 1)  R = diag(1) }",
                                   "mlp { hidden = [5]  activation = tanh  seed = 0 }"))
    theta = _perturbed(compiled, 1) * 0.1
    _enclosed(compiled, theta)
    # lyapunov(backup) is V = (x − x*)ᵀ P (x − x*): g = V(x_T) / V(x_0) − 2, by numpy
    with torch.no_grad():
        X, _ = compiled.evaluator.rollout(theta[None])
        g = compiled.evaluator.per_scenario(theta[None])[0, :, 2].numpy()
    d = X[0].numpy() - [1.0, 0.0]
    V = np.einsum("sti,ij,stj->st", d, compiled.backup.P, d)
    np.testing.assert_allclose(g, V[:, -1] / V[:, 0] - 2, rtol=1e-10, atol=1e-12)
    from scpo_spec.verify.prove import verify
    result = verify(compiled, compiled.family.theta0, cells=64, time_limit=60).as_json()
    verdicts = {name: c["verdict"] for name, c in result["constraints"].items()}
    # θ₀'s net is not zero at x*: a start at x* (V = 0 there) leaves it, a real counterexample
    assert verdicts == {"height": "PROVED", "thrust": "PROVED", "decay": "COUNTEREXAMPLE"}
    assert result["constraints"]["decay"]["counterexample"]["x0"] == [1.0, 0.0]


def test_a_nonlinear_observation_is_bounded_or_undecided_never_proved_on_a_guess():
    bounded = compiled_of(gravity("linear { K = [[-2, -3]] }",
                                  "mlp { hidden = [4]  residual = backup  seed = 0\n"
                                  "      observe = [sin(p), v * p] }", lyapunov=False))
    _enclosed(bounded, _perturbed(bounded, 2))
    from scpo_spec.verify.prove import verify
    unbounded = compiled_of(gravity("linear { K = [[-2, -3]] }",
                                    "mlp { hidden = [4]  residual = backup  seed = 0\n"
                                    "      observe = [atan2(p, 1), v] }", lyapunov=False))
    result = verify(unbounded, unbounded.family.theta0, cells=16, time_limit=30)
    assert result.verdict == "UNDECIDED" and "observation" in result.reason \
        and "atan2" in result.reason, result.reason


# ---- the export still takes the state ----
def test_the_export_of_an_observed_policy_around_the_equilibrium_is_load_runs_policy(tmp_path):
    import onnxruntime
    from scpo_spec.engine.run import train
    from scpo_spec.engine.trained import load_run
    from scpo_spec.export import export_run
    text = gravity("linear { K = [[-2, -3]]  k = [0.1] }",
                   "mlp { hidden = [6]  residual = backup  seed = 0\n"
                   "      observe = [p - 1, v, 2 * p + v]  output_scale = [0.7] }",
                   lyapunov=False)
    path = tmp_path / "grav.scpo"
    path.write_text(text)
    result = check_text(text, path=str(path))
    run_dir = train(path, result.spec, text, out=tmp_path / "run").run_dir
    run = load_run(run_dir)
    x = np.random.default_rng(0).uniform([0, -1], [2, 1], size=(50, 2))
    expected = run.policy(x)
    theta = run.theta.numpy()
    o = np.stack([x[:, 0] - 1, x[:, 1], 2 * x[:, 0] + x[:, 1]], 1)
    by_hand = (9.81 + (x - [1, 0]) @ np.array([[-2.0, -3.0]]).T + 0.1
               + 0.7 * _numpy_mlp(theta, [3, 6, 1], o))
    np.testing.assert_allclose(expected, by_hand, rtol=1e-12, atol=1e-12)
    onnx = export_run(run_dir, "onnx", tmp_path / "p.onnx", force=True)
    session = onnxruntime.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"state": x})[0], expected, rtol=1e-12,
                               atol=1e-12)
    ts = export_run(run_dir, "torchscript", tmp_path / "p.pt", force=True)
    loaded = torch.jit.load(str(ts.path))
    np.testing.assert_allclose(loaded(torch.from_numpy(x)).detach().numpy(), expected,
                               rtol=1e-12, atol=1e-12)


def test_a_linear_policy_initialised_at_the_backup_is_the_backup_around_the_equilibrium():
    compiled = compiled_of(PLANT + "backup lqr { Q = diag(1, 1)  R = diag(0.5) }\n"
                           "policy linear { init = backup  output_scale = [2] }\n" + REST)
    x = torch.tensor([[0.4, 0.1], [0.6, -0.2]], dtype=DTYPE)
    with torch.no_grad():
        u = compiled.family.module()(x)
        b = compiled.backup(x)
    np.testing.assert_allclose(u.numpy(), b.numpy(), rtol=1e-13, atol=1e-13)


# ---- every controller kind acts around the operating point, through its observation ----
class _Tanh2(torch.nn.Module):
    """u = 2 tanh(o₀ − o₁): a frozen controller of two observed values."""

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        return 2 * torch.tanh(o[:, :1] - o[:, 1:2])


def test_a_torch_backup_and_a_torch_policy_see_their_observations_around_u_star(tmp_path):
    torch.jit.script(_Tanh2()).save(str(tmp_path / "b.pt"))
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    torch.jit.script(net.double()).save(str(tmp_path / "p.pt"))
    text = gravity('torch { file = "b.pt"  observe = [p - 1, v]  output_scale = [3] }',
                   'torch { file = "p.pt"  observe = [p, v, p * v]  output_scale = [0.5] }',
                   lyapunov=False)
    path = tmp_path / "t.scpo"
    path.write_text(text)
    result = check_text(text, path=str(path), base_dir=tmp_path)
    assert result.ok, [d.headline() for d in result.diagnostics]
    compiled = compile_spec(result.spec, tmp_path)
    x = np.random.default_rng(1).uniform([0, -1], [2, 1], size=(20, 2))
    xt = torch.as_tensor(x, dtype=DTYPE)
    with torch.no_grad():
        b = compiled.backup(xt).numpy()
        u = compiled.family.module()(xt).numpy()
        ref_net = net(torch.as_tensor(np.stack([x[:, 0], x[:, 1], x[:, 0] * x[:, 1]], 1))).numpy()
    np.testing.assert_allclose(b, 9.81 + 3 * 2 * np.tanh((x[:, :1] - 1) - x[:, 1:2]),
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(u, 9.81 + 0.5 * ref_net, rtol=1e-13, atol=1e-13)
    # the backup's K is its Jacobian at x* = (1, 0): 3 · 2 · [1, −1]
    np.testing.assert_allclose(compiled.backup.K, [[6.0, -6.0]], rtol=1e-13)


def test_the_quadrotor_on_raw_thrusts_is_the_same_closed_loop_as_written_in_deviations(root):
    """specs/quadrotor.scpo (raw thrusts, `equilibrium`) against the workaround LANGUAGE-v3
    replaces: inputs written as deviations from the hover, limits shifted by hand.  The same
    LQR, the same rollouts (inputs shifted by m g / 2), the same metrics — spectral_radius
    included."""
    text = (root / "specs" / "quadrotor.scpo").read_text()
    deviations = (text.replace("let thrust = T1 + T2", "let thrust = T1 + T2 + m * g")
                  .replace("    equilibrium { T1 = m * g / 2  T2 = m * g / 2 }\n", "")
                  .replace("always T1 in [0, Tmax]", "always T1 in [-m * g / 2, Tmax - m * g / 2]")
                  .replace("always T2 in [0, Tmax]", "always T2 in [-m * g / 2, Tmax - m * g / 2]"))
    assert deviations.count("m * g / 2") == 4  # every replacement happened
    out = []
    for t in (text, deviations):
        c = compiled_of(t)
        thetas = _bank(c.family, 3, seed=4, scale=0.05)
        x0 = c.evaluator.x0[:8]
        with torch.no_grad():
            out.append((c.backup.K, *c.evaluator.rollout(thetas, x0),
                        c.evaluator.per_scenario(thetas, x0)))
    (K1, X1, U1, g1), (K2, X2, U2, g2) = out
    np.testing.assert_allclose(K1, K2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(X1.numpy(), X2.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(U1.numpy(), U2.numpy() + 9.81 / 2, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g1.numpy(), g2.numpy(), rtol=1e-12, atol=1e-13)


# ---- a python plant is linearised at its equilibrium, which `check` verifies ----
GRAVITY_PLANT = """\
import torch

def step(x, u):
    p, v = x[..., 0], x[..., 1]
    return torch.stack((p + 0.1 * v, v + 0.1 * (u[..., 0] - 9.81)), -1)
"""


def _python_gravity(tmp_path, equilibrium: str):
    (tmp_path / "gravity_plant.py").write_text(GRAVITY_PLANT)
    text = gravity("lqr { Q = diag(1, 1)  R = diag(1) }",
                   "mlp { hidden = [4]  residual = backup  seed = 0 }", lyapunov=False)
    start, end = text.index("system discrete {"), text.index("}\n", text.index("equilibrium"))
    end = text.index("}\n", end + 2) + 2
    text = (text[:start] + 'system python "gravity_plant:step" {\n    state p, v\n    input u\n'
            f"    equilibrium {{ {equilibrium} }}\n}}\n" + text[end:])
    result = check_text(text, path=str(tmp_path / "g.scpo"), base_dir=tmp_path)
    return result


def test_a_python_plant_is_linearised_at_its_equilibrium_and_a_wrong_one_is_refused(tmp_path):
    from scpo_spec.compile.usercode import check_code
    result = _python_gravity(tmp_path, "p = 1  u = 9.81")
    assert result.ok, [d.headline() for d in result.diagnostics]
    assert check_code(result.spec, tmp_path) == []
    compiled = compile_spec(result.spec, tmp_path)
    A, B = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[0.0], [0.1]])
    P = scipy.linalg.solve_discrete_are(A, B, np.eye(2), np.eye(1))
    K = -np.linalg.solve(np.eye(1) + B.T @ P @ B, B.T @ P @ A)
    np.testing.assert_allclose(compiled.backup.K, K, rtol=1e-9)
    x = torch.tensor([[1.2, 0.1]], dtype=DTYPE)
    np.testing.assert_allclose(compiled.backup(x).numpy(),
                               9.81 + np.array([[0.2, 0.1]]) @ K.T, rtol=1e-13)
    wrong = _python_gravity(tmp_path, "p = 1  u = 5")
    (d,) = check_code(wrong.spec, tmp_path)
    assert "not a fixed point" in d.message and "-0.481" in d.message, d.message
    assert d.span.line == 7 and d.hint  # the equilibrium block


# ---- an observation of a parameter reads each scenario's draw ----
OBSERVES_K = """spec obs "a controller that knows its plant's gain"
const dt = 0.1
system discrete {
    state p, v
    input f
    next p = p + dt * v
    next v = v + dt * (k * f + w)
}
parameter k in [0.5, 1.5]
disturbance w in [-0.1, 0.1]
policy mlp { hidden = [4]  seed = 0  observe = [p, v, k * p]  output_scale = [2] }
scenarios {
    initial p in [-1, 1]
    initial v in [-0.5, 0.5]
    count 5
    seed 3
    horizon 8
    holdout 16
}
constraint pos: always abs(p) <= 3
objective cost { stage p^2 }
train { steps 2  optimizer sgd { lr = 0.01 }  directions 4  perturbation 1e-3  radius 0.05
        margin 1e-6  solver clarabel  seed 0  smoothness estimate }
"""


def test_an_observation_of_a_parameter_reads_the_scenarios_draws():
    from scpo_spec.language.scenario_bounds import training_states
    from scpo_spec.plan.scenarios import training_draws
    c = compiled_of(OBSERVES_K)
    assert c.family.around.uncertain
    d, x0 = training_draws(c.spec), training_states(c.spec)
    thetas = _bank(c.family, 3, seed=5, scale=0.5)
    with torch.no_grad():
        X, U = c.evaluator.rollout(thetas)
    with torch.enable_grad():
        Xg, Ug = c.evaluator.rollout(thetas)
    np.testing.assert_allclose(Ug.detach().numpy(), U.numpy(), rtol=1e-12, atol=1e-13)
    k, noise = d.parameters[:, 0], d.disturbances[:, :, 0]
    for i in range(3):
        x = x0.copy()
        for t in range(8):
            o = np.stack([x[:, 0], x[:, 1], k * x[:, 0]], 1)
            u = 2 * _numpy_mlp(thetas[i].numpy(), [3, 4, 1], o)[:, 0]
            np.testing.assert_allclose(U[i, :, t, 0].numpy(), u, rtol=1e-12, atol=1e-13)
            x = np.stack([x[:, 0] + 0.1 * x[:, 1], x[:, 1] + 0.1 * (k * u + noise[t])], 1)
        np.testing.assert_allclose(X[i, :, -1].numpy(), x, rtol=1e-12, atol=1e-13)


def test_a_policy_observing_a_parameter_is_not_exported(tmp_path):
    from scpo_spec.engine.run import train
    from scpo_spec.export import ExportError, export_run
    path = tmp_path / "obs.scpo"
    path.write_text(OBSERVES_K)
    run_dir = train(path, check_text(OBSERVES_K, path=str(path)).spec, OBSERVES_K,
                    out=tmp_path / "run").run_dir
    with pytest.raises(ExportError, match="reads parameters"):
        export_run(run_dir, "torchscript", tmp_path / "p.pt", force=True)
