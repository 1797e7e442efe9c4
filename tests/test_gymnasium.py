"""`system gymnasium` and `objective return`: vector-environment rollouts against a per-episode
reference loop, early termination and truncation, the ES gradient, holdout seeds, training end to
end (with resume) and the check that refuses `objective cost` on an environment."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import torch

from scpo_spec.audit.verify import audit_run
from scpo_spec.compile.problem import compile_spec
from scpo_spec.plan.scenarios import GYM_HOLDOUT_OFFSET
from scpo_spec.engine.holdout import validate_holdout
from scpo_spec.engine.run import train
from scpo_spec.engine.train import Trainer
from scpo_spec.language.load import check_text
from tests.numerics import assert_close_across_paths

DTYPE = torch.float64

GYM_SPEC = """\
spec tiny_gym
system gymnasium "ENV" { observation OBS  action ACT }
BACKUP
policy POLICY
scenarios { count COUNT  seed SEED  horizon HORIZON  holdout 6 }
constraint limit: always ACT in [-LIMIT, LIMIT]  smoothness 20
objective OBJECTIVE
train { steps STEPS  optimizer adam { lr = 0.02 }  directions 2  perturbation 1e-3  radius 0.3
        margin 1e-6  seed 0 }
"""

PENDULUM = dict(ENV="Pendulum-v1", OBS="cos_theta, sin_theta, omega", ACT="torque",
                BACKUP="backup linear { K = [[0, -1, -0.1]] }",
                POLICY="mlp { hidden = [4]  residual = backup  seed = 0 }", COUNT="4",
                SEED="0", HORIZON="10", LIMIT="2.5",
                OBJECTIVE="return { population 4  sigma 0.05  seed 3 }", STEPS="3")


def spec_text(**overrides) -> str:
    text = GYM_SPEC
    for key, value in {**PENDULUM, **overrides}.items():
        text = text.replace(key, value)
    return text


def compiled(tmp_path, **overrides):
    text = spec_text(**overrides)
    result = check_text(text, path=str(tmp_path / "spec.scpo"), base_dir=tmp_path)
    assert result.ok, [d.headline() for d in result.diagnostics]
    return compile_spec(result.spec, tmp_path), text, result.spec


def reference(env_id, family, thetas, seeds, horizon):
    """One plain `gymnasium.make` environment, one episode at a time, one policy call per step."""
    C, S, n, m = len(thetas), len(seeds), family.n, family.m
    X = np.zeros((C, S, horizon + 1, n))
    U = np.zeros((C, S, horizon, m))
    R = np.zeros((C, S))
    env = gymnasium.make(env_id)
    for c in range(C):
        for s, seed in enumerate(seeds):
            obs, _ = env.reset(seed=int(seed))
            x = np.asarray(obs, dtype=np.float64)
            X[c, s, 0] = x
            done = False
            for t in range(horizon):
                with torch.no_grad():
                    u = family.forward(thetas[c:c + 1], torch.as_tensor(x)[None, None])[0, 0]
                U[c, s, t] = u.numpy()
                if not done:
                    obs, r, term, trunc, _ = env.step(u.numpy())
                    x = np.asarray(obs, dtype=np.float64)
                    R[c, s] += r
                    done = term or trunc
                X[c, s, t + 1] = x
    env.close()
    return X, U, R


# ------------------------------------------------------------------ rollouts
def test_vector_rollout_equals_a_per_episode_loop(tmp_path):
    c, _, _ = compiled(tmp_path, HORIZON="15")
    gen = torch.Generator().manual_seed(0)
    thetas = c.family.theta0 + 2.0 * torch.randn(3, c.family.d, generator=gen, dtype=DTYPE)
    seeds = c.evaluator.x0
    X, U, R = c.evaluator.rollout_returns(thetas)
    assert X.shape == (3, 4, 16, 3) and U.shape == (3, 4, 15, 1) and R.shape == (3, 4)
    assert X.dtype == U.dtype == R.dtype == DTYPE
    Xr, Ur, Rr = reference("Pendulum-v1", c.family, thetas, seeds.tolist(), 15)
    np.testing.assert_allclose(X.numpy(), Xr, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(U.numpy(), Ur, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(R.numpy(), Rr, rtol=1e-9, atol=1e-9)
    assert U.abs().max() > 2  # the recorded torque is the policy's, before Pendulum clips it
    # the metrics read the same rollout: max over steps and scenarios of |u| − 2.5
    g = c.evaluator(thetas).numpy()[:, 0]
    np.testing.assert_allclose(g, np.abs(Ur).max(axis=(1, 2, 3)) - 2.5, rtol=1e-9)


def test_a_subset_of_the_seeds_selects_those_scenarios(tmp_path):
    c, _, _ = compiled(tmp_path)
    theta = c.family.theta0[None]
    X, U = c.evaluator.rollout(theta)
    X2, U2 = c.evaluator.rollout(theta, c.evaluator.x0[2:3])
    # one scenario's policy product, not four's: BLAS may round the last bits differently
    assert_close_across_paths(X2[0, 0], X[0, 2])
    assert_close_across_paths(U2[0, 0], U[0, 2])


def test_an_episode_that_reaches_the_goal_keeps_its_last_observation(tmp_path):
    """MountainCar ends at the goal: the observation stays, later rewards are zero."""
    c, _, _ = compiled(tmp_path, ENV="MountainCarContinuous-v0", OBS="position, velocity",
                       ACT="force", BACKUP="backup linear { K = [[0, 50]] }",
                       POLICY="linear { init = backup }", HORIZON="200", LIMIT="5",
                       OBJECTIVE="return { }")
    theta = c.family.theta0[None]
    X, U, R = c.evaluator.rollout_returns(theta)
    Xr, Ur, Rr = reference("MountainCarContinuous-v0", c.family, theta,
                           c.evaluator.x0.tolist(), 200)
    np.testing.assert_allclose(X.numpy(), Xr, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(R.numpy(), Rr, rtol=1e-9, atol=1e-9)
    for s in range(4):
        pos = X[0, s, :, 0].numpy()
        t_goal = int(np.argmax(pos >= 0.45))
        assert pos[t_goal] >= 0.45 and 0 < t_goal < 200  # reached before the horizon
        assert torch.all(X[0, s, t_goal:] == X[0, s, t_goal])  # frozen from then on
        assert torch.equal(U[0, s, t_goal:], U[0, s, t_goal:t_goal + 1].expand(200 - t_goal, 1))
        # +100 once at the goal, minus 0.1 u² per step until then: nothing after it
        want = 100 - 0.1 * float((U[0, s, :t_goal] ** 2).sum())
        assert float(R[0, s]) == pytest.approx(want, rel=1e-5)


SHORT_ID = "ScpoShortPendulum-v0"


def test_a_truncated_episode_keeps_its_last_observation(tmp_path):
    """A 5-step TimeLimit with a 12-step horizon: gymnasium 1.x resets the sub-env on the next
    step (autoreset); the rollout ignores that and repeats the last observation."""
    if SHORT_ID not in gymnasium.registry:
        gymnasium.register(SHORT_ID, entry_point="gymnasium.envs.classic_control:PendulumEnv",
                           max_episode_steps=5)
    c, _, _ = compiled(tmp_path, ENV=SHORT_ID, HORIZON="12")
    theta = c.family.theta0[None]
    X, U, R = c.evaluator.rollout_returns(theta)
    assert torch.all(X[0, :, 5:] == X[0, :, 5:6])
    Xr, Ur, Rr = reference(SHORT_ID, c.family, theta, c.evaluator.x0.tolist(), 12)
    np.testing.assert_allclose(X.numpy(), Xr, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(R.numpy(), Rr, rtol=1e-9, atol=1e-9)
    long_c, _, _ = compiled(tmp_path, HORIZON="5")  # the same 5 steps without a time limit
    _, _, R5 = long_c.evaluator.rollout_returns(theta)
    np.testing.assert_allclose(R.numpy(), R5.numpy(), rtol=1e-12)


def test_holdout_seeds_are_disjoint_and_validated(tmp_path):
    c, _, spec = compiled(tmp_path)
    assert c.evaluator.x0.tolist() == [0, 1, 2, 3]
    ho = c.holdout_evaluator()
    assert ho.x0.tolist() == [GYM_HOLDOUT_OFFSET + j for j in range(6)]
    record = validate_holdout(c, c.family.theta0)
    assert record["count"] == 6 and record["violations"] == 0 and record["bound"] > 0


# ------------------------------------------------------------------ the return objective
def test_es_gradient_matches_finite_differences(tmp_path):
    """Horizon 1 and a linear policy inside the torque range: the return is a quadratic in K
    (−0.001 u² plus terms that do not depend on K), so antithetic differences are exact
    directional derivatives and the ES estimate converges to the gradient."""
    c, _, _ = compiled(tmp_path, BACKUP="backup linear { K = [[0.3, -0.4, 0.2]] }",
                       POLICY="linear { init = backup }", HORIZON="1",
                       OBJECTIVE="return { population 300  sigma 0.1  seed 0 }")
    obj = c.objective
    theta = c.family.theta0.clone()
    loss, grad = obj.loss_and_grad(theta)
    assert loss == pytest.approx(float(obj(theta)), rel=1e-12)
    h = 1e-4
    eye = torch.eye(3, dtype=DTYPE)
    fd = torch.tensor([(float(obj(theta + h * e)) - float(obj(theta - h * e))) / (2 * h)
                       for e in eye], dtype=DTYPE)
    cosine = float(grad @ fd / (grad.norm() * fd.norm()))
    assert cosine > 0.95, (grad, fd)
    assert float(grad.norm()) == pytest.approx(float(fd.norm()), rel=0.25)
    _, again = obj.loss_and_grad(theta)  # the generator moved on: fresh directions
    assert not torch.equal(again, grad)


def test_return_training_improves_the_return_and_audits_clean(tmp_path):
    _, text, spec = compiled(tmp_path, STEPS="4")
    path = tmp_path / "spec.scpo"
    path.write_text(text)
    res = train(path, spec, text, out=tmp_path / "run")
    a = audit_run(res.run_dir)
    assert a.ok and a.complete, a.problems
    assert a.accepted_violations == 0 and a.accepted >= 1
    assert a.loss_last < a.loss_first
    assert a.holdout["count"] == 6 and a.holdout["violations"] == 0


def test_resume_continues_the_es_stream(tmp_path):
    """The ES generator's state is in the checkpoint: 2 steps + resume to 4 = 4 steps, bit for
    bit (the same code on the same machine)."""
    _, text, spec = compiled(tmp_path, STEPS="4")
    path = tmp_path / "spec.scpo"
    path.write_text(text)
    straight = train(path, spec, text, out=tmp_path / "straight")
    train(path, spec, text, out=tmp_path / "split", steps=2)
    resumed = train(path, spec, text, out=tmp_path / "split", steps=4, resume=True)
    assert audit_run(resumed.run_dir).ok

    def grad_norms(run_dir):
        records = [json.loads(ln) for ln in (run_dir / "audit.jsonl").read_text().splitlines()]
        return [r["grad_norm"] for r in records if r["type"] == "step"]

    # the ES estimate of steps 2 and 3 uses the directions an uninterrupted run draws, and the
    # QCQP is solved afresh every time (no warm start): the resumed run is the straight one
    assert grad_norms(resumed.run_dir) == grad_norms(straight.run_dir)
    assert torch.equal(resumed.state.theta, straight.state.theta)


def test_counterexample_of_a_gym_run_names_the_scenario_and_its_first_observation(tmp_path):
    c, _, _ = compiled(tmp_path)
    trainer = Trainer(c)
    out = trainer.counterexample(c.family.theta0, np.array([True]))["limit"]
    X, _ = c.evaluator.rollout(c.family.theta0[None])
    assert 0 <= out["scenario"] < 4
    assert torch.equal(out["x0"], X[0, out["scenario"], 0])
    assert out["states"].shape == (11, 3) and out["inputs"].shape == (10, 1)


def test_imitation_works_on_a_gym_system(tmp_path):
    c, _, _ = compiled(tmp_path, OBJECTIVE="imitation { expert linear { K = [[0, -2, -0.5]] } "
                       "states uniform { low = [-1, -1, -8]  high = [1, 1, 8] }  count 64 }")
    trainer = Trainer(c)
    loss, grad = trainer.loss_and_grad(c.family.theta0)  # autograd: policy only
    assert loss > 0 and float(grad.norm()) > 0


# ------------------------------------------------------------------ checks
def test_objective_cost_is_refused_for_a_gym_system():
    text = spec_text(OBJECTIVE="cost { stage torque^2 }")
    result = check_text(text, path="g.scpo")
    errors = [d for d in result.diagnostics if d.severity == "error"]
    assert len(errors) == 1
    d = errors[0]
    assert d.message.startswith("objective cost needs a model-based system")
    assert (d.span.line, d.span.column) == (7, 1)
    assert "objective return" in d.hint and "objective imitation" in d.hint


@pytest.mark.parametrize("env, obs, act, message", [
    ("CartPole-v1", "a, b, c, d", "torque", "'CartPole-v1' has a Discrete action space"),
    ("Pendulum-v1", "c, s", "torque", "'Pendulum-v1' has 3 observation component(s), but 2"),
    ("Pendulum-v7", "c, s, w", "torque", "unknown gymnasium environment 'Pendulum-v7'"),
    ("Pendulum-v1", "c, s, w", "a, b", "'Pendulum-v1' has 1 action component(s), but 2"),
])
def test_environment_mismatches_are_located_errors(env, obs, act, message):
    text = spec_text(ENV=env, OBS=obs, ACT=act).replace("always a, b in", "always a in")
    errors = [d for d in check_text(text, path="g.scpo").diagnostics if d.severity == "error"]
    assert any(d.message.startswith(message) and d.span is not None and d.span.line == 2
               for d in errors), [d.headline() for d in errors]
