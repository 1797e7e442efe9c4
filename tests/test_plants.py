"""One class per plant kind (systems/dynamics.py), one evaluator per kind of rollout
(compile/evaluator.py), the Evaluator protocol, the ℓ rule and the RunListener.

Each plant class is checked against a plain numpy oracle of its equations — its step, its
rollout step into the evaluator's buffers, and its linearisation — and each evaluator against
the plant it is made for."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from scpo_spec.compile.evaluator import (Evaluator, GymEvaluator, RolloutEvaluator,
                                         ScenarioEvaluator, make_evaluator)
from scpo_spec.compile.problem import compile_spec
from scpo_spec.dtype import DTYPE
from scpo_spec.engine.listener import RunListener
from scpo_spec.engine.train import doubled
from scpo_spec.language import model as M
from scpo_spec.language.dynamics import PendulumEquations, step_map
from scpo_spec.language.load import load_spec
from scpo_spec.systems.dynamics import (PLANTS, DiscretePlant, GymnasiumPlant, LinearPlant,
                                        OdePlant, PendulumPlant, PythonFunctionPlant,
                                        RolloutViews, StaticPlant, make_dynamics)
from tests.engine_specs import DI_PLANT, small_di, spec_of
from tests.numerics import assert_close_across_paths

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scpo_spec"
DT = 0.1
A_DI = np.array([[1, DT], [0, 1]])
B_DI = np.array([[0.5 * DT ** 2], [DT]])
PEND = dict(dt=0.05, g=9.81, m=2.0, l=0.7)


def _system(text: str, system: str) -> str:
    start = text.index("system linear {")
    return text[:start] + system + text[text.index("}\n", start) + 1:]


def pendulum_spec(tmp_path):
    p = PEND
    return spec_of(_system(small_di(), f"system pendulum {{ state position, velocity  input force "
                                       f"dt = {p['dt']}  g = {p['g']}  m = {p['m']}  "
                                       f"l = {p['l']} }}"), tmp_path)


DISCRETE = """system discrete {
    state position, velocity
    input force
    next position = position + dt * velocity + 0.5 * dt^2 * force - 0.01 * sin(position)
    next velocity = velocity + dt * (force - 0.2 * tanh(10 * velocity))
}"""
ODE = """system ode {
    state position, velocity
    input force
    dt = 0.1
    integrator midpoint
    substeps 3
    der position = velocity
    der velocity = force - 0.5 * sin(position) - 0.1 * velocity
}"""


def numpy_pendulum(x, u):
    """docs/language.md's pendulum, written out here."""
    dt, g, m, l = PEND["dt"], PEND["g"], PEND["m"], PEND["l"]
    omega = x[..., 1] + dt * (3 * g / (2 * l) * np.sin(x[..., 0]) + 3 / (m * l ** 2) * u[..., 0])
    return np.stack([x[..., 0] + dt * omega, omega], -1)


def numpy_declared(spec):
    F = step_map(spec.system, {c.name: c.value.value for c in spec.consts}, spec)
    return lambda x, u: np.stack([F(xi, ui) for xi, ui in zip(x.reshape(-1, x.shape[-1]),
                                                               u.reshape(-1, u.shape[-1]))]
                                 ).reshape(x.shape)


def plants(tmp_path) -> dict[str, tuple]:
    """kind → (plant, numpy oracle of its step)."""
    (tmp_path / "di_plant.py").write_text(DI_PLANT, encoding="utf-8")
    text = small_di()
    discrete = spec_of(_system(text, DISCRETE), tmp_path)
    ode = spec_of(_system(text, ODE), tmp_path)
    python = spec_of(_system(text, 'system python "di_plant:dynamics" '
                                   '{ state position, velocity  input force }'), tmp_path)
    linear = lambda x, u: x @ A_DI.T + u @ B_DI.T  # noqa: E731
    return {"linear": (make_dynamics(spec_of(text, tmp_path)), linear),
            "pendulum": (make_dynamics(pendulum_spec(tmp_path)), numpy_pendulum),
            "static": (StaticPlant(2, 1), lambda x, u: x),
            "discrete": (make_dynamics(discrete, tmp_path), numpy_declared(discrete)),
            "ode": (make_dynamics(ode, tmp_path), numpy_declared(ode)),
            "python": (make_dynamics(python, tmp_path), linear)}


CLASSES = {"linear": LinearPlant, "pendulum": PendulumPlant, "static": StaticPlant,
           "discrete": DiscretePlant, "ode": OdePlant, "python": PythonFunctionPlant,
           "gymnasium": GymnasiumPlant}


def test_every_system_kind_is_one_registered_plant_class():
    union = typing.get_args(M.System)[0]  # Annotated[Union[…], discriminator]
    kinds = {cls.model_fields["kind"].default for cls in typing.get_args(union)}
    assert kinds == set(PLANTS) == set(CLASSES)
    assert all(PLANTS[k] is CLASSES[k] and CLASSES[k].kind == k for k in kinds)


def test_make_dynamics_builds_the_class_of_the_system_kind(tmp_path):
    for kind, (plant, _) in plants(tmp_path).items():
        assert type(plant) is CLASSES[kind] and plant.kind == kind and (plant.n, plant.m) == (2, 1)
    assert type(make_dynamics(load_spec(ROOT / "specs" / "gym_pendulum.scpo"))) is GymnasiumPlant


def test_each_plant_steps_as_its_numpy_equations(tmp_path):
    rng = np.random.default_rng(3)
    x, u = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 4, 1))
    for kind, (plant, oracle) in plants(tmp_path).items():
        got = plant.step(torch.tensor(x), torch.tensor(u)).numpy()
        assert_close_across_paths(got, oracle(x, u), kind)


def test_each_plant_writes_its_steps_into_the_rollout_buffers(tmp_path):
    """rollout_step (batched, in place) gives the numpy oracle's trajectory."""
    rng = np.random.default_rng(4)
    T, C, S = 5, 3, 4
    for kind, (plant, oracle) in plants(tmp_path).items():
        views = RolloutViews.allocate(T, C, S, 2, 1, torch.zeros(1, dtype=DTYPE))
        views.U.copy_(torch.tensor(rng.normal(size=(T, C, S, 1))))
        views.X[0].copy_(torch.tensor(rng.normal(size=(C, S, 2))))
        advance = plant.rollout_step(views)
        want = [views.X[0].numpy().copy()]
        for t in range(T):
            advance(t)
            want.append(oracle(want[-1], views.U[t].numpy()))
        assert_close_across_paths(views.X.numpy(), np.stack(want), kind)


def test_each_linearisation_is_the_jacobian_of_the_numpy_step(tmp_path):
    eps = 1e-6
    for kind, (plant, oracle) in plants(tmp_path).items():
        if kind == "static":
            with pytest.raises(ValueError, match="no linearisation"):
                plant.linearisation()
            continue
        A, B = plant.linearisation()
        J = np.stack([(oracle(eps * e[:2], eps * e[2:]) - oracle(-eps * e[:2], -eps * e[2:]))
                      / (2 * eps) for e in np.eye(3)], axis=1)
        np.testing.assert_allclose(A, J[:, :2], rtol=0, atol=1e-7, err_msg=kind)
        np.testing.assert_allclose(B, J[:, 2:], rtol=0, atol=1e-7, err_msg=kind)


def test_the_pendulum_formula_is_one_for_the_checker_and_the_plant(tmp_path):
    """language/ (numpy) and systems/ (torch) step and linearise by the same equations: the same
    numbers, at the origin and away from it."""
    spec = pendulum_spec(tmp_path)
    equations, plant = PendulumEquations.of(spec.system), make_dynamics(spec)
    assert plant.equations == equations
    rng = np.random.default_rng(5)
    x, u = rng.normal(size=(6, 2)) * 2, rng.normal(size=(6, 1))
    np.testing.assert_array_equal(plant.step(torch.tensor(x), torch.tensor(u)).numpy(),
                                  equations.step(x, u))
    assert_close_across_paths(equations.step(x, u), numpy_pendulum(x, u))
    a, b, dt = 3 * 9.81 / (2 * 0.7) * np.cos(0.3), 3 / (2 * 0.7 ** 2), 0.05
    A, B = equations.linearisation(0.3)
    np.testing.assert_allclose(A, [[1 + dt * dt * a, dt], [dt * a, 1]], rtol=1e-15)
    np.testing.assert_allclose(B, [[dt * dt * b], [dt * b]], rtol=1e-15)


def test_the_evaluator_is_picked_by_the_plant(tmp_path):
    pytest.importorskip("gymnasium")
    torch_side = compile_spec(spec_of(small_di(), tmp_path), tmp_path)
    gym_side = compile_spec(load_spec(ROOT / "specs" / "gym_pendulum.scpo"))
    assert type(torch_side.evaluator) is RolloutEvaluator
    assert type(gym_side.evaluator) is GymEvaluator and gym_side.evaluator.x0.dtype == torch.int64
    for c in (torch_side, gym_side):
        holdout = c.holdout_evaluator(3)
        assert type(holdout) is type(c.evaluator) and holdout.x0.shape[0] == 3
        assert holdout.device == c.evaluator.device == torch.device("cpu")
    ev, theta = gym_side.evaluator, gym_side.family.theta0[None]
    g = ev(theta)
    ev.close()  # the environments closed; the next rollout opens them again, same episodes
    ev.close()
    np.testing.assert_array_equal(ev(theta).numpy(), g.numpy())
    X, U, R = ev.rollout_returns(theta, ev.x0[:2])
    assert X.shape == (1, 2, ev.horizon + 1, 3) and R.shape == (1, 2)
    assert make_evaluator(ev.dynamics, ev.family, ev.metrics, np.arange(2), 3,
                          ev.reducer).x0.tolist() == [0, 1]
    ev.close()


def test_every_evaluator_offers_the_whole_protocol(tmp_path):
    from scpo_spec.engine.executors.ray import RayEvaluator
    members = {name for name in vars(Evaluator) if not name.startswith("_")} | \
        set(Evaluator.__annotations__) | {"__call__"}
    assert {"device", "close", "select", "rollout", "per_scenario"} <= members
    local = compile_spec(spec_of(small_di(), tmp_path), tmp_path).evaluator
    for cls in (RolloutEvaluator, GymEvaluator, RayEvaluator):
        missing = [m for m in members if not hasattr(cls, m)
                   and not (issubclass(cls, ScenarioEvaluator) and hasattr(local, m))]
        assert not missing, (cls.__name__, missing)


def test_no_caller_asks_an_evaluator_with_getattr():
    offenders = [str(p.relative_to(PACKAGE)) for p in (PACKAGE / "engine").rglob("*.py")
                 if 'getattr(self.ev, "device"' in p.read_text(encoding="utf-8")
                 or 'getattr(evaluator, "close"' in p.read_text(encoding="utf-8")]
    assert not offenders


def test_the_ell_rule_is_written_once():
    """ℓ doubles for the refuted metrics only; `doubled` is the one place that says so."""
    ell = np.array([1.0, 2.0, 4.0])
    np.testing.assert_array_equal(doubled(ell, [True, False, True]), [2.0, 2.0, 8.0])
    np.testing.assert_array_equal(doubled(ell, np.zeros(3, bool)), ell)
    written = {str(p.relative_to(PACKAGE)): p.read_text(encoding="utf-8").count("2 * ell")
               for p in (PACKAGE / "engine").rglob("*.py")}
    assert {k: v for k, v in written.items() if v} == {"engine/train.py": 1}


class Heard(RunListener):
    """Remembers every event, in order (stop_requested and note left at their no-op)."""

    def __init__(self):
        self.events = []

    def started(self, trainer, state, run_dir):
        self.events.append(("started", state.step, Path(run_dir)))

    def recorded(self, run_dir, record):
        self.events.append(("recorded", type(record).__name__.lower()))

    def stepped(self, record, state):
        self.events.append(("stepped", record.step, state.step))


def test_the_listener_hears_every_logged_record_then_each_step(tmp_path):
    from scpo_spec.engine.run import train
    text = small_di(steps=2)
    heard = Heard()
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "r",
                listener=heard)
    logged = [json.loads(line)["type"] for line in
              (tmp_path / "r" / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e[1] for e in heard.events if e[0] == "recorded"] == logged
    assert heard.events[2] == ("started", 0, res.run_dir)  # after the header and init records
    assert [e for e in heard.events if e[0] == "stepped"] == [("stepped", 0, 1),
                                                               ("stepped", 1, 2)]
    # a step is heard after its record: recorded(step), then stepped
    first = heard.events.index(("stepped", 0, 1))
    assert heard.events[first - 1] == ("recorded", "step")
    quiet = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "q",
                  listener=RunListener())  # every method a no-op
    assert quiet.state.step == 2 and torch.equal(quiet.state.theta, res.state.theta)
