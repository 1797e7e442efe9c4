"""Declared plants (`system discrete`, `system ode`) and the author's own (`system python`) as
batched float64 torch: against the built-in pendulum and a hand-written numpy cart-pole, their
autograd linearisation against finite differences and exact A, B, compiled with `backup lqr`
and `spectral_radius`, trained, batched, and every way a python callable can be wrong.

The parser does not read these forms yet in this branch, so the models are built directly: a
spec parsed from text, its `system` replaced by the pydantic model of the declared one."""

from __future__ import annotations

import hashlib
import json
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scpo_spec.compile.problem import compile_spec
from scpo_spec.compile.signals import ExpressionCompiler, Reducer, Trace
from scpo_spec.compile.usercode import check_code
from scpo_spec.plan.code import identities
from scpo_spec.dtype import DTYPE
from scpo_spec.engine.train import Trainer
from scpo_spec.language.load import CheckResult, check_text, load_spec
from scpo_spec.language.model import (Const, DiscreteSystem, Equation, Ident, OdeSystem,
                                      PythonSystem, Quantity, Signal, Text)
from scpo_spec.language.scpo_reader import parse_expression
from scpo_spec.language.source import Source, Span
from scpo_spec.systems import make_dynamics
from scpo_spec.systems.declared import DeclaredSystemError
from scpo_spec.systems.user_code import PythonPlant, UserCodeError
from tests.engine_specs import DI_PLANT, small_di, spec_of
from tests.numerics import assert_close_across_paths

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Source(path="<equations>", text="")


# ---- building declared models (what the parser will produce) ----
def expr(text: str):
    e, problems = parse_expression(text, SOURCE)
    assert e is not None, [p.message for p in problems]
    return e


def quantity(value: float) -> Quantity:
    return Quantity(expr=expr(repr(float(value))), value=float(value))


def signals(names: str) -> list[Signal]:
    return [Signal(name=n.strip()) for n in names.split(",")]


def equations(eqs: dict[str, str]) -> list[Equation]:
    return [Equation(state=Signal(name=s), expr=expr(e)) for s, e in eqs.items()]


def discrete(states: str, inputs: str, nxt: dict[str, str]) -> DiscreteSystem:
    return DiscreteSystem(states=signals(states), inputs=signals(inputs), next=equations(nxt))


def ode(states: str, inputs: str, der: dict[str, str], dt: float, integrator: str | None = None,
        substeps: int | None = None) -> OdeSystem:
    return OdeSystem(states=signals(states), inputs=signals(inputs), der=equations(der),
                     dt=quantity(dt), integrator=Ident(name=integrator) if integrator else None,
                     substeps=quantity(substeps) if substeps is not None else None)


def with_system(spec, system, consts: dict[str, float] | None = None):
    """The spec with another system (and constants added, folded as `check` folds them)."""
    extra = [Const(name=k, value=quantity(v)) for k, v in (consts or {}).items()]
    return spec.model_copy(update={"system": system, "consts": [*spec.consts, *extra]})


# ---- the declared pendulum = the built-in one ----
PENDULUM = load_spec(ROOT / "specs" / "pendulum.scpo")
PENDULUM_EQS = {  # the built-in step, written out (semi-implicit Euler)
    "omega": "omega + dt * (3 * g / (2 * l) * sin(theta) + 3 / (m * l^2) * torque)",
    "theta": "theta + dt * (omega + dt * (3 * g / (2 * l) * sin(theta) + 3 / (m * l^2) * torque))",
}
PENDULUM_CONSTS = {"dt": 0.05, "g": 9.81, "m": 1.0, "l": 1.0}


def declared_pendulum():
    return with_system(PENDULUM, discrete("theta, omega", "torque", PENDULUM_EQS),
                       PENDULUM_CONSTS)


def test_declared_pendulum_matches_the_builtin_step_over_a_batch():
    builtin, declared = make_dynamics(PENDULUM), make_dynamics(declared_pendulum())
    assert declared.kind == "discrete" and (declared.n, declared.m) == (2, 1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 64, 2, generator=gen, dtype=DTYPE)
    u = torch.randn(10, 64, 1, generator=gen, dtype=DTYPE) * 3
    for _ in range(20):  # a rollout, so differences would compound
        y, y_ref = declared.step(x, u), builtin.step(x, u)
        assert y.dtype == DTYPE and y.shape == x.shape
        assert torch.allclose(y, y_ref, rtol=0, atol=1e-12)
        x = y_ref
    A, B = declared.linearisation()
    A_ref, B_ref = builtin.linearisation()
    np.testing.assert_allclose(A, A_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(B, B_ref, rtol=0, atol=1e-12)


def test_declared_pendulum_compiles_and_its_metrics_equal_the_builtin():
    builtin, declared = compile_spec(PENDULUM, ROOT), compile_spec(declared_pendulum(), ROOT)
    thetas = builtin.family.theta0[None] + 0.01 * torch.randn(
        3, builtin.family.d, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    g, g_ref = declared.evaluator(thetas), builtin.evaluator(thetas)  # spectral_radius included
    assert torch.allclose(g, g_ref, rtol=0, atol=1e-10)


# ---- the declared cart-pole (Barto et al.; gymnasium's CartPole equations) ----
CARTPOLE_CONSTS = {"g": 9.8, "mc": 1.0, "mp": 0.1, "l": 0.5}
_TEMP = "(force + mp * l * theta_dot^2 * sin(theta)) / (mc + mp)"
_THETA_ACC = (f"(g * sin(theta) - cos(theta) * {_TEMP}) / "
              "(l * (4 / 3 - mp * cos(theta)^2 / (mc + mp)))")
CARTPOLE_DER = {"x": "x_dot", "theta": "theta_dot",
                "x_dot": f"{_TEMP} - mp * l * {_THETA_ACC} * cos(theta) / (mc + mp)",
                "theta_dot": _THETA_ACC}
CARTPOLE_TEXT = """\
spec cartpole "Declared cart-pole"
system linear {
    state x, x_dot, theta, theta_dot
    input force
    A = 0.5 * eye(4)
    B = [[0], [1], [0], [1]]
}
backup lqr { Q = diag(1, 1, 10, 1)  R = diag(0.1) }
policy mlp { hidden = [8]  activation = tanh  residual = backup  seed = 0 }
scenarios {
    initial x in [-0.05, 0.05]
    initial x_dot in [-0.05, 0.05]
    initial theta in [-0.05, 0.05]
    initial theta_dot in [-0.05, 0.05]
    count 16
    seed 0
    horizon 100
    holdout 10
}
constraint angle: always abs(theta) <= 0.2   smoothness 50
stability margin: spectral_radius <= 0.999   smoothness 20
objective cost { stage quad(diag(1, 0.1, 1, 0.1), state) + quad(diag(0.01), input) }
train {
    steps 3
    optimizer sgd { lr = 0.01 }
    directions 4
    perturbation 1e-3
    radius 0.1
    margin 1e-6
    seed 0
}
"""


def cartpole_base(tmp_path: Path):
    return spec_of(CARTPOLE_TEXT, tmp_path)


def cartpole_numpy(s: np.ndarray, force: float) -> np.ndarray:
    """ẋ of gymnasium's CartPole-v1 (its `step`, before its Euler update), in numpy."""
    g, mc, mp, l = 9.8, 1.0, 0.1, 0.5
    x, x_dot, theta, theta_dot = s
    total, pml = mc + mp, mp * l
    cos, sin = math.cos(theta), math.sin(theta)
    temp = (force + pml * theta_dot ** 2 * sin) / total
    theta_acc = (g * sin - cos * temp) / (l * (4.0 / 3.0 - mp * cos ** 2 / total))
    x_acc = temp - pml * theta_acc * cos / total
    return np.array([x_dot, x_acc, theta_dot, theta_acc])


def integrate_numpy(s, force, dt, method, substeps):
    h = dt / substeps
    for _ in range(substeps):
        if method == "euler":
            s = s + h * cartpole_numpy(s, force)
        elif method == "midpoint":
            s = s + h * cartpole_numpy(s + h / 2 * cartpole_numpy(s, force), force)
        else:
            k1 = cartpole_numpy(s, force)
            k2 = cartpole_numpy(s + h / 2 * k1, force)
            k3 = cartpole_numpy(s + h / 2 * k2, force)
            k4 = cartpole_numpy(s + h * k3, force)
            s = s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return s


@pytest.mark.parametrize("method,substeps", [(None, None), ("euler", 1), ("midpoint", 1),
                                             ("rk4", 3), ("euler", 3)])
def test_declared_cartpole_matches_a_numpy_rollout(tmp_path, method, substeps):
    spec = with_system(cartpole_base(tmp_path),
                       ode("x, x_dot, theta, theta_dot", "force", CARTPOLE_DER, 0.02, method,
                           substeps), CARTPOLE_CONSTS)
    dyn = make_dynamics(spec)
    rng = np.random.default_rng(0)
    B, T = 6, 50
    x0 = rng.uniform(-0.2, 0.2, size=(B, 4))
    forces = rng.uniform(-10, 10, size=(T, B))
    x = torch.as_tensor(x0, dtype=DTYPE)
    ref = x0.copy()
    for t in range(T):
        x = dyn.step(x, torch.as_tensor(forces[t][:, None], dtype=DTYPE))
        ref = np.stack([integrate_numpy(ref[b], forces[t, b], 0.02, method or "rk4",
                                        substeps or 1) for b in range(B)])
    assert np.abs(ref).max() > 1.0  # it went somewhere: the pole falls
    np.testing.assert_allclose(x.numpy(), ref, rtol=0, atol=1e-12)


def test_the_integrators_differ_as_their_orders_say(tmp_path):
    """One step of dt from the same state: euler, midpoint and rk4 approach rk4 with 64
    substeps with errors O(dt²), O(dt³) and O(dt⁵) — so they are not silently the same."""
    base = cartpole_base(tmp_path)
    x = torch.tensor([[0.1, -0.2, 0.3, 0.5]], dtype=DTYPE)
    u = torch.tensor([[5.0]], dtype=DTYPE)

    def step(method, substeps=1):
        return make_dynamics(with_system(base, ode("x, x_dot, theta, theta_dot", "force",
                                                   CARTPOLE_DER, 0.05, method, substeps),
                                         CARTPOLE_CONSTS)).step(x, u)
    exact = step("rk4", 64)
    err = {m: float((step(m) - exact).abs().max()) for m in ("euler", "midpoint", "rk4")}
    assert err["euler"] > 10 * err["midpoint"] > 100 * err["rk4"] > 0


# ---- linearisation by autograd ----
def finite_differences(dyn, eps=1e-6):
    n, m = dyn.n, dyn.m

    def F(z):
        z = torch.as_tensor(z, dtype=DTYPE)
        return dyn.step(z[None, :n], z[None, n:])[0].numpy()
    J = np.zeros((n, n + m))
    for j in range(n + m):
        e = np.zeros(n + m)
        e[j] = eps
        J[:, j] = (F(e) - F(-e)) / (2 * eps)
    return J[:, :n], J[:, n:]


def test_autograd_linearisation_matches_central_differences(tmp_path):
    for method in ("rk4", "midpoint"):
        dyn = make_dynamics(with_system(cartpole_base(tmp_path), ode(
            "x, x_dot, theta, theta_dot", "force", CARTPOLE_DER, 0.02, method, 2),
            CARTPOLE_CONSTS))
        A, B = dyn.linearisation()
        assert A.dtype == np.float64 and A.shape == (4, 4) and B.shape == (4, 1)
        A_fd, B_fd = finite_differences(dyn)
        np.testing.assert_allclose(A, A_fd, rtol=0, atol=1e-7)
        np.testing.assert_allclose(B, B_fd, rtol=0, atol=1e-7)
        assert A[2, 3] > 0.02 * 0.99 and A[3, 2] > 0  # gravity tips the pole: unstable


def test_a_declared_linear_system_linearises_to_exactly_its_A_and_B(tmp_path):
    linear = spec_of(small_di(), tmp_path)  # A = [[1, dt], [0, 1]], B = [[0.5 dt²], [dt]]
    nxt = {"position": "position + dt * velocity + 0.5 * dt^2 * force",
           "velocity": "velocity + dt * force"}
    dyn = make_dynamics(with_system(linear, discrete("position, velocity", "force", nxt)))
    A_ref, B_ref = make_dynamics(linear).linearisation()
    A, B = dyn.linearisation()
    assert np.array_equal(A, A_ref) and np.array_equal(B, B_ref)


def test_lqr_backup_and_spectral_radius_compile_for_a_declared_system(tmp_path):
    spec = with_system(cartpole_base(tmp_path), ode("x, x_dot, theta, theta_dot", "force",
                                                    CARTPOLE_DER, 0.02), CARTPOLE_CONSTS)
    compiled = compile_spec(spec, tmp_path)
    A, B = compiled.dynamics.linearisation()
    K = compiled.backup.K
    rho_open = max(abs(np.linalg.eigvals(A)))
    rho_closed = max(abs(np.linalg.eigvals(A + B @ K)))
    assert rho_open > 1 > rho_closed  # the LQR of the linearisation stabilises it
    # the residual policy starts at the backup: its spectral radius is the LQR loop's
    theta0 = compiled.family.theta0[None]
    assert float(compiled.evaluator.spectral_radius(theta0)[0]) == pytest.approx(rho_closed,
                                                                                  abs=1e-12)
    g = compiled.evaluator(theta0)[0]
    assert torch.all(g < 0)  # the LQR backup holds the pole inside 0.2 rad, ρ < 0.999
    assert float(g[1]) == pytest.approx(rho_closed - 0.999, abs=1e-12)


# ---- batching ----
def test_one_batched_call_equals_separate_calls(tmp_path):
    dyn = make_dynamics(with_system(cartpole_base(tmp_path), ode(
        "x, x_dot, theta, theta_dot", "force", CARTPOLE_DER, 0.02, "rk4", 2), CARTPOLE_CONSTS))
    gen = torch.Generator().manual_seed(3)
    C, S = 5, 7
    x = torch.randn(C, S, 4, generator=gen, dtype=DTYPE) * 0.3
    u = torch.randn(C, S, 1, generator=gen, dtype=DTYPE) * 5
    batched = dyn.step(x, u)
    for c in range(C):  # one row's elementwise math may take the scalar kernel, a batch's the
        for s in range(S):  # vectorised one: equal to the last bits
            assert_close_across_paths(dyn.step(x[c, s], u[c, s]), batched[c, s])


def test_a_constant_equation_still_gives_one_state_per_batch_entry(tmp_path):
    linear = spec_of(small_di(), tmp_path)
    dyn = make_dynamics(with_system(linear, discrete("position, velocity", "force",
                                                     {"position": "0", "velocity": "2 * dt"})))
    y = dyn.step(torch.ones(3, 4, 2, dtype=DTYPE), torch.ones(3, 4, 1, dtype=DTYPE))
    assert y.shape == (3, 4, 2) and torch.all(y[..., 0] == 0) and torch.all(y[..., 1] == 0.2)


# ---- the v2 functions, in equations and in formulas ----
V2 = {"tan(position)": np.tan, "tanh(position)": np.tanh, "log(abs(position) + 1)":
      lambda p: np.log(np.abs(p) + 1), "sign(position)": np.sign,
      "atan2(position, velocity)": None, "clip(position, -0.5, velocity)": None}


@pytest.mark.parametrize("text", list(V2))
def test_v2_functions_in_equations_and_formulas(tmp_path, text):
    p = np.array([-1.0, -0.3, 0.0, 0.2, 2.0])
    v = np.array([0.5, -1.0, 0.0, -0.1, 1.0])
    want = {"atan2(position, velocity)": np.arctan2(p, v),
            "clip(position, -0.5, velocity)": np.minimum(np.maximum(p, -0.5), v)}.get(text)
    want = V2[text](p) if want is None else want
    assert np.sign(0.0) == 0 and want.shape == p.shape
    linear = spec_of(small_di(), tmp_path)
    dyn = make_dynamics(with_system(linear, discrete("position, velocity", "force",
                                                     {"position": text, "velocity": "velocity"})))
    x = torch.as_tensor(np.stack([p, v], -1), dtype=DTYPE)
    got = dyn.step(x, torch.zeros(5, 1, dtype=DTYPE))[:, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15)  # torch's libm vs numpy's
    # the same function in a metric formula, over a trace (C=1, S=5, T+1=1)
    c = ExpressionCompiler(["position", "velocity"], ["force"], {}, None, Reducer())
    trace = Trace(x.view(1, 5, 1, 2), torch.zeros(1, 5, 0, 1, dtype=DTYPE))
    h = c.formula(expr(f"always {text} <= 0"))(trace).t
    np.testing.assert_allclose(h.reshape(5).numpy(), want, rtol=1e-15, atol=1e-15)


def test_an_equation_reading_an_unknown_name_or_a_vector_is_a_clear_error(tmp_path):
    linear = spec_of(small_di(), tmp_path)
    for eq, words in (("position + speed", "unknown name 'speed'"),
                      ("state", "unknown name 'state'"),
                      ("quad(diag(1, 1), state)", "not an elementwise expression")):
        with pytest.raises(DeclaredSystemError, match=words):
            make_dynamics(with_system(linear, discrete("position, velocity", "force",
                                                       {"position": eq,
                                                        "velocity": "velocity"})))
    with pytest.raises(DeclaredSystemError, match="exactly one `next` equation per state"):
        make_dynamics(with_system(linear, discrete("position, velocity", "force",
                                                   {"position": "velocity"})))


# ---- system python ----
PLANT = DI_PLANT


def python_spec(tmp_path: Path, name: str, code: str | None = PLANT, module: str = "plant",
                steps: int = 6):
    if code is not None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(code), encoding="utf-8")
    span = Span(file=str(tmp_path / "spec.scpo"), line=3, column=15, end_line=3, end_column=30)
    system = PythonSystem(function=Text(value=name, span=span),
                          states=signals("position, velocity"), inputs=signals("force"))
    return with_system(spec_of(small_di(steps=steps), tmp_path), system)


def test_a_python_plant_compiles_equals_the_linear_spec_and_trains(tmp_path):
    spec = python_spec(tmp_path, "plant:dynamics")
    assert check_code(spec, tmp_path) == []
    linear = compile_spec(spec_of(small_di(), tmp_path), tmp_path)
    compiled = compile_spec(spec, tmp_path)  # LQR on the autograd linearisation
    np.testing.assert_allclose(compiled.backup.K, linear.backup.K, rtol=0, atol=1e-12)
    theta0 = compiled.family.theta0[None]
    assert torch.allclose(compiled.evaluator(theta0), linear.evaluator(theta0), rtol=0,
                          atol=1e-12)
    assert identities(spec, tmp_path) == [  # what the run header records of the plant
        {"kind": "system python", "target": "plant:dynamics",
         "file": str((tmp_path / "plant.py").resolve()),
         "sha256": hashlib.sha256((tmp_path / "plant.py").read_bytes()).hexdigest()}]
    trainer = Trainer(compiled)
    state = trainer.initial_state()
    accepted = 0
    for _ in range(4):
        state, record = trainer.step(state)
        accepted += record.accepted
        assert np.all(state.g <= -1e-6)  # every iterate it keeps is verified safe
    assert accepted >= 2 and state.loss < trainer.initial_state().loss


BAD_PLANTS = {  # MOD: a module name of its own per case (imports are cached per process)
    "missing module": ("nowhere_xyz:dynamics", None, "no module named 'nowhere_xyz'"),
    "import raises": ("MOD:dynamics", "import torch\n1 / 0\n",
                      "importing module 'MOD' failed: ZeroDivisionError: division by zero"),
    "missing dependency": ("MOD:dynamics", "import not_installed_xyz\n",
                           "importing module 'MOD' failed: ModuleNotFoundError"),
    "missing attribute": ("MOD:dynamcs", PLANT,
                          "module 'MOD' has no attribute 'dynamcs'.*did you mean 'dynamics'"),
    "not callable": ("MOD:DT", PLANT, "'MOD:DT' is a float, not a callable"),
    "no colon": ("MOD.dynamics", PLANT, "not of the form \"module:callable\""),
    "raises when called": ("MOD:f", "def f(x, u):\n    raise ValueError('bad plant')\n",
                           "'MOD:f' raised ValueError: bad plant when called on states "
                           r"\(2, 3, 2\)"),
    "not a tensor": ("MOD:f", "def f(x, u):\n    return x.tolist()\n",
                     "returned a list, not a torch tensor"),
    "wrong shape": ("MOD:f", "def f(x, u):\n    return u\n",
                    r"returned shape \(2, 3, 1\) when called on states \(2, 3, 2\).*"
                    r"expected \(2, 3, 2\)"),
    "wrong dtype": ("MOD:f", "def f(x, u):\n    return x.float()\n",
                    "a tensor of torch.float32, not torch.float64"),
    "not finite at the origin": ("MOD:f", "def f(x, u):\n    return x / x.sum()\n",
                                 r"not finite at the origin \(x = 0, u = 0\): x⁺ = \[nan, nan\]"),
}


@pytest.mark.parametrize("case", list(BAD_PLANTS))
def test_a_bad_python_plant_is_a_located_check_error(tmp_path, case):
    module = "plant_" + case.replace(" ", "_")
    name, code, message = (t.replace("MOD", module) if t else t for t in BAD_PLANTS[case])
    spec = python_spec(tmp_path, name, code, module=module)
    (d,) = check_code(spec, tmp_path)
    assert d.severity == "error" and d.span == spec.system.function.span
    assert re.search(message, d.message + " " + (d.hint or "")), (d.message, d.hint)
    # the same error, raised, when a rollout or the LQR backup would import it
    with pytest.raises(UserCodeError):
        compile_spec(spec, tmp_path)


def test_a_python_plant_is_imported_only_when_used(tmp_path):
    spec = python_spec(tmp_path, "plant_lazy:dynamics", code=None)
    spec = spec.model_copy(update={"backup": None, "stability": []})
    dyn = make_dynamics(spec, tmp_path)  # a run's model builds without importing anything
    assert isinstance(dyn.map, PythonPlant) and dyn.map._fn is None
    with pytest.raises(UserCodeError, match="no module named 'plant_lazy'"):
        dyn.step(torch.zeros(1, 2, dtype=DTYPE), torch.zeros(1, 1, dtype=DTYPE))


def test_a_python_plant_outside_torch_has_no_linearisation(tmp_path):
    code = ("import numpy as np, torch\n"
            "def f(x, u):\n"
            "    return torch.from_numpy(np.asarray(x.detach().numpy() + u.detach().numpy()))\n")
    spec = python_spec(tmp_path, "plant_np:f", code, module="plant_np")
    (d,) = check_code(spec, tmp_path)  # a valid plant for rollouts, but backup lqr needs more
    assert d.span == spec.system.function.span and "not differentiable at the origin" in d.message
    from scpo_spec.systems.dynamics import LinearisationError
    with pytest.raises(LinearisationError, match="not differentiable at the origin"):
        compile_spec(spec, tmp_path)  # backup lqr needs its linearisation


# ---- the CLI: a bad callable is a check error, and train refuses before any run exists ----
def test_cli_check_and_train_report_a_bad_callable(tmp_path, monkeypatch):
    from scpo_spec import cli
    from scpo_spec.cli import common
    spec_file = tmp_path / "spec.scpo"
    spec_file.write_text(small_di(), encoding="utf-8")
    spec = python_spec(tmp_path, "plant_cli:dynamcs", PLANT, module="plant_cli")
    real = common.check_file

    def check_file(path):  # the parsed text, with the python system the parser will produce
        result = real(path)
        return CheckResult(result.source, spec, list(result.diagnostics))
    monkeypatch.setattr(common, "check_file", check_file)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli.app, ["check", "--json", str(spec_file)])
    assert res.exit_code == 1, res.output
    payload = json.loads(res.stdout)
    (diag,) = [d for d in payload["files"][0]["diagnostics"] if d["severity"] == "error"]
    assert not payload["ok"] and "no attribute 'dynamcs'" in diag["message"]
    assert "did you mean 'dynamics'" in diag["hint"]
    res = runner.invoke(cli.app, ["check", str(spec_file)])
    assert res.exit_code == 1 and "no attribute 'dynamcs'" in res.output
    res = runner.invoke(cli.app, ["train", str(spec_file), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "no attribute 'dynamcs'" in res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    spec.system.function.value = "plant_cli:dynamics"  # fixed: check passes
    res = runner.invoke(cli.app, ["check", "--json", str(spec_file)])
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"]


# ---- gymnasium's own "module:EnvId" convention ----
TINY_ENV = '''\
import gymnasium
import numpy as np
from gymnasium import spaces


class Drift(gymnasium.Env):
    """x⁺ = x + 0.1 clip(a, -1, 1), observed exactly; reward −x²."""

    def __init__(self):
        self.observation_space = spaces.Box(-10.0, 10.0, (1,), np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float64)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, size=1)
        return self.x.copy(), {}

    def step(self, a):
        self.x = self.x + 0.1 * np.clip(a, -1.0, 1.0)
        return self.x.copy(), float(-self.x[0] ** 2), False, False, {}


gymnasium.register(id="TinyDrift-v0", entry_point=Drift, max_episode_steps=50)
'''


def test_a_gymnasium_module_env_id_imports_the_module_that_registers_it(tmp_path, monkeypatch):
    """`system gymnasium "module:EnvId"`: gymnasium.make_vec (1.x) imports `module` itself, so
    the id travels unchanged to the vector environment."""
    import gymnasium

    from scpo_spec.systems.gym_rollout import GymRollout
    (tmp_path / "tiny_drift_env.py").write_text(TINY_ENV, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "TinyDrift-v0" not in gymnasium.registry
    gym = GymRollout("tiny_drift_env:TinyDrift-v0", 1, 1)
    thetas = torch.tensor([[-2.0], [0.5]], dtype=DTYPE)  # u = θ x

    def policy(th, x):
        return th.view(-1, 1, 1) * x
    try:
        X, U, returns = gym.rollout(policy, thetas, [0, 1, 2], 8)
    finally:
        gym.close()
    assert "TinyDrift-v0" in gymnasium.registry  # the module registered it on import
    assert X.shape == (2, 3, 9, 1) and U.shape == (2, 3, 8, 1)
    for c in range(2):
        for s in range(3):
            x = X[c, s, 0, 0].item()
            assert -1 <= x <= 1 and X[0, s, 0, 0] == X[1, s, 0, 0]  # same seed, same start
            total = 0.0
            for t in range(8):
                x = x + 0.1 * float(np.clip(thetas[c, 0].item() * x, -1, 1))
                total -= x ** 2
                assert X[c, s, t + 1, 0].item() == pytest.approx(x, abs=1e-15)
            assert returns[c, s].item() == pytest.approx(total, abs=1e-12)


@pytest.mark.parametrize("spec_file", ["cartpole.scpo", "bicycle_lane.scpo"])
def test_the_checkers_numpy_plant_agrees_with_the_compiled_one(spec_file):
    """`scpo check` judges `lyapunov(backup)` on its own numpy copy of a declared plant
    (language/ never imports torch); compile uses the batched torch one and autograd.  The two
    must be one plant: the same steps, and the same linearisation up to finite differences."""
    from scpo_spec.language.dynamics import linearisation as numpy_linearisation
    from scpo_spec.language.dynamics import step_map
    from scpo_spec.language.load import check_file
    from scpo_spec.systems.dynamics import make_dynamics
    path = Path(__file__).resolve().parents[1] / "specs" / spec_file
    spec = check_file(path).spec
    consts = {c.name: c.value.value for c in spec.consts}
    dyn = make_dynamics(spec, path.parent)
    F = step_map(spec.system, consts)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, u = rng.uniform(-0.3, 0.3, dyn.n), rng.uniform(-1, 1, dyn.m)
        want = dyn.step(torch.from_numpy(x)[None], torch.from_numpy(u)[None])[0].numpy()
        np.testing.assert_allclose(np.asarray(F(x, u), dtype=float), want, rtol=0, atol=1e-12)
    A, B = dyn.linearisation()
    nA, nB = numpy_linearisation(spec.system, consts)
    np.testing.assert_allclose(nA, A, rtol=0, atol=1e-7)
    np.testing.assert_allclose(nB, B, rtol=0, atol=1e-7)


def test_an_equation_may_use_functions_of_a_vector(tmp_path):
    """`norm([x, y])`, `max([x, y])`, `quad(P, [x, u])` in an equation: accepted by `check`, and
    they used to fail to compile ("not an elementwise expression")."""
    base = spec_of(small_di(), tmp_path)
    nxt = {"position": "position + 0.1 * norm([velocity, force]) - 0.05 * max([position, 0.5])",
           "velocity": "velocity + 0.01 * quad(diag(1, 2), [position, force]) - 0.1 * position"}
    dyn = make_dynamics(with_system(base, discrete("position, velocity", "force", nxt)))
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(3, 5, 2)), dtype=torch.float64)
    u = torch.tensor(rng.normal(size=(3, 5, 1)), dtype=torch.float64)
    p, v, f = x[..., 0].numpy(), x[..., 1].numpy(), u[..., 0].numpy()
    want = np.stack([p + 0.1 * np.hypot(v, f) - 0.05 * np.maximum(p, 0.5),
                     v + 0.01 * (p ** 2 + 2 * f ** 2) - 0.1 * p], -1)
    np.testing.assert_allclose(dyn.step(x, u).numpy(), want, rtol=0, atol=1e-15)
