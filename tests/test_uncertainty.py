"""`parameter NAME in [lo, hi]` and `disturbance NAME in [lo, hi]`: drawn reproducibly from the
scenarios' seed, read by the declared plant, the metrics and the cost inside the one batched
rollout, checked by the audit, listed by the report and taken by `load_run(...).simulate`.

The oracle is a plain numpy loop over candidates, scenarios and steps with the same draws,
written from docs/language.md's rule (not from the code under test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scpo_spec import load_run
from scpo_spec.audit.verify import audit_run
from scpo_spec.compile.problem import compile_spec
from scpo_spec.engine.holdout import validate_holdout
from scpo_spec.engine.run import train
from scpo_spec.engine.train import Trainer
from scpo_spec.language.scenario_bounds import training_states
from scpo_spec.plan.scenarios import holdout_draws, holdout_states, training_draws
from scpo_spec.report import gather
from scpo_spec.report.render import write_report
from scpo_spec.verify.prove import verify
from tests.forgery import copy_run, records, write_rechained
from tests.helpers import check, errors
from tests.numerics import assert_close_across_paths

DT = 0.1
SPEC = """spec unc "a cart with an uncertain gain, drag and a gust"
const dt = 0.1
system discrete {
    state p, v
    input f
    next p = p + dt * v
    next v = v + dt * (k * f - c * v + w)
}
parameter k in [0.5, 1.5]
parameter c in [0, 0.2]
disturbance w in [-0.3, 0.3]
backup linear { K = [[-1, -2]] }
policy linear { init = backup }
scenarios {
    initial p in [-1, 1]
    initial v in [-0.5, 0.5]
    count 7
    seed 3
    horizon 12
    holdout 20000
}
constraint pos:  always abs(p) <= 2 + k   smoothness 10
constraint gust: always abs(v + w) <= 3   smoothness 10
objective cost { stage p^2 + c * v^2 + w * f }
train {
    steps 2  optimizer sgd { lr = 0.01 }  directions 4  perturbation 1e-3  radius 0.05
    margin 1e-6  solver clarabel  seed 0
}
"""


def compiled(text: str = SPEC):
    result = check(text)
    assert result.ok, [d.headline() for d in result.diagnostics]
    return compile_spec(result.spec)


def numpy_rollout(K: np.ndarray, x0: np.ndarray, params: np.ndarray, noise: np.ndarray):
    """One candidate u = K x, scenario by scenario, step by step: states (S, T+1, 2), inputs
    (S, T), with k, c = params[s] and w = noise[t, s]."""
    S, T = x0.shape[0], noise.shape[0]
    X, U = np.zeros((S, T + 1, 2)), np.zeros((S, T))
    for s in range(S):
        k, c = params[s]
        x = x0[s].copy()
        X[s, 0] = x
        for t in range(T):
            u = float((K @ x)[0])
            w = noise[t, s, 0]
            x = np.array([x[0] + DT * x[1], x[1] + DT * (k * u - c * x[1] + w)])
            X[s, t + 1], U[s, t] = x, u
    return X, U


def numpy_metrics(X, U, params, noise):
    """(S, 2): pos over t = 0 … T, gust over t = 0 … T−1 (a disturbance is read on the steps
    of an input), as violations max_t(|·| − bound)."""
    k = params[:, 0]
    pos = np.max(np.abs(X[:, :, 0]) - (2 + k)[:, None], axis=1)
    T = U.shape[1]
    gust = np.max(np.abs(X[:, :T, 1] + noise[:, :, 0].T) - 3, axis=1)
    return np.stack([pos, gust], axis=1)


def test_draws_follow_the_documented_rule_and_are_reproducible():
    spec = check(SPEC).spec
    d = training_draws(spec)
    assert d.parameters.shape == (7, 2) and d.disturbances.shape == (12, 7, 1)
    # docs/language.md: parameters from default_rng([seed, 2]) (S, p); disturbances from
    # default_rng([seed, 3]) drawn (S, T, d), scenario j's sequence its j-th block
    want_p = np.random.default_rng([3, 2]).uniform([0.5, 0.0], [1.5, 0.2], size=(7, 2))
    want_d = np.random.default_rng([3, 3]).uniform(-0.3, 0.3, size=(7, 12, 1)).transpose(1, 0, 2)
    np.testing.assert_array_equal(d.parameters, want_p)
    np.testing.assert_array_equal(d.disturbances, want_d)
    again = training_draws(check(SPEC).spec)  # a fresh parse: the same numbers
    np.testing.assert_array_equal(again.parameters, d.parameters)
    np.testing.assert_array_equal(again.disturbances, d.disturbances)
    assert again.digest() == d.digest()
    assert np.all((d.parameters >= [0.5, 0]) & (d.parameters <= [1.5, 0.2]))
    assert np.all(np.abs(d.disturbances) <= 0.3)
    # the holdout draws fresh values (other streams), as many as its scenarios
    h = holdout_draws(spec)
    assert h.parameters.shape == (20000, 2) and h.disturbances.shape == (12, 20000, 1)
    assert not np.isin(h.parameters, d.parameters).any()
    assert not np.isin(h.disturbances, d.disturbances).any()
    # another seed: other draws
    other = training_draws(check(SPEC.replace("seed 3", "seed 4")).spec)
    assert not np.isin(other.parameters, d.parameters).any()
    # the initial states are those of the same spec without uncertainty (their own stream)
    plain = SPEC.replace("parameter k in [0.5, 1.5]\nparameter c in [0, 0.2]\n"
                         "disturbance w in [-0.3, 0.3]\n", "const k = 1\nconst c = 0.1\n"
                         "const w = 0\n")
    np.testing.assert_array_equal(training_states(check(plain).spec), training_states(spec))
    assert training_draws(check(plain).spec) is None


def test_grid_scenarios_get_one_draw_each():
    spec = check(SPEC.replace("count 7", "grid 3")).spec
    d = training_draws(spec)
    assert training_states(spec).shape == (9, 2) and d.parameters.shape == (9, 2)
    assert d.disturbances.shape == (12, 9, 1)


def test_uncertain_rollout_equals_a_numpy_loop():
    c = compiled()
    ev = c.evaluator
    d = training_draws(c.spec)
    x0 = training_states(c.spec)
    rng = np.random.default_rng(0)
    thetas = np.array([[-1.0, -2.0], *(rng.normal([-1, -2], 0.5, size=(2, 2)))])
    h = ev.per_scenario(torch.as_tensor(thetas))
    X, U = ev.rollout(torch.as_tensor(thetas))
    for i, th in enumerate(thetas):
        Xn, Un = numpy_rollout(th.reshape(1, 2), x0, d.parameters, d.disturbances)
        assert_close_across_paths(X[i], Xn, f"states of candidate {i}")
        assert_close_across_paths(U[i, :, :, 0], Un, f"inputs of candidate {i}")
        assert_close_across_paths(h[i], numpy_metrics(Xn, Un, d.parameters, d.disturbances),
                                  f"metrics of candidate {i}")
        # the cost reads the same draws: mean over scenarios of Σ_t p² + c v² + w f
        stage = (Xn[:, :-1, 0] ** 2 + d.parameters[:, 1:2] * Xn[:, :-1, 1] ** 2
                 + d.disturbances[:, :, 0].T * Un)
        assert_close_across_paths(c.objective(torch.as_tensor(th)).item(),
                                  stage.sum(axis=1).mean(), "cost")
    # the draws matter: the nominal plant (no gust, k = 1, c = 0.1) gives other states
    nominal = numpy_rollout(thetas[0].reshape(1, 2), x0, np.tile([1.0, 0.1], (7, 1)),
                            np.zeros((12, 7, 1)))[0]
    assert np.abs(X[0].numpy() - nominal).max() > 1e-3


def test_holdout_is_the_same_rollout_on_fresh_draws_in_chunks():
    c = compiled()
    theta = c.family.theta0
    ho = c.holdout_evaluator()
    d, x0 = holdout_draws(c.spec), holdout_states(c.spec)
    np.testing.assert_array_equal(ho.draws.parameters.numpy(), d.parameters)
    Xn, Un = numpy_rollout(theta.numpy().reshape(1, 2), x0, d.parameters, d.disturbances)
    want = numpy_metrics(Xn, Un, d.parameters, d.disturbances)
    result = validate_holdout(c, theta, chunk=3000)  # 7 chunks, the last one short
    for i, name in enumerate(["pos", "gust"]):
        assert result["worst"][name] == pytest.approx(want[:, i].max(), abs=1e-12)
        j = result["worst_scenario"][name]["index"]
        assert result["worst_scenario"][name]["parameters"] == dict(
            zip(["k", "c"], d.parameters[j].tolist()))
        assert np.array(result["worst_scenario"][name]["disturbances"]).shape == (12, 1)


def test_batched_equals_one_scenario_at_a_time_for_an_ode_plant():
    text = SPEC.replace("""system discrete {
    state p, v
    input f
    next p = p + dt * v
    next v = v + dt * (k * f - c * v + w)
}""", """system ode {
    state p, v
    input f
    dt = 0.1
    integrator rk4
    substeps 3
    der p = v
    der v = k * f - c * v^2 * sign(v) + w
}""")
    c = compiled(text)
    ev = c.evaluator
    thetas = torch.tensor([[-1.0, -2.0], [-0.5, -1.5], [-2.0, -1.0]], dtype=torch.float64)
    h = ev.per_scenario(thetas)
    X, _ = ev.rollout(thetas)
    for j in range(ev.x0.shape[0]):
        alone = ev.per_scenario(thetas, *ev.select(j))
        assert_close_across_paths(alone[:, 0], h[:, j], f"scenario {j}")
        Xj, _ = ev.rollout(thetas, *ev.select(j))
        assert_close_across_paths(Xj[:, 0], X[:, j], f"scenario {j}'s states")
    with pytest.raises(ValueError, match="draws"):  # an x0 of its own needs its draws
        ev.per_scenario(thetas, ev.x0[:2])


UNSAFE = """spec drift "a drift whose size is uncertain"
const dt = 0.1
system discrete {
    state p
    input f
    next p = p + dt * (f + a)
}
parameter a in [0, 1]
backup linear { K = [[0]] }
policy linear { init = backup }
scenarios { initial p in [0, 0]  count 5  seed 0  horizon 10  holdout 4000 }
constraint reach: always p <= 0.95  smoothness 1
objective cost { stage p^2 }
train {
    steps 1  optimizer sgd { lr = 0.01 }  directions 2  perturbation 1e-3  radius 0.05
    margin 1e-6  solver clarabel  seed 0
}
"""


def test_the_holdout_draws_in_seeded_blocks_whatever_the_chunk():
    """docs/language.md: holdout block b (HOLDOUT_BLOCK scenarios) draws from the b-th spawned
    child of [seed, 1, 2] and [seed, 1, 3]; a chunk of 1, 7 or all N gives the same holdout."""
    from scpo_spec.plan.scenarios import HOLDOUT_BLOCK
    c = compiled(SPEC.replace("holdout 20000", "holdout 1500"))  # two blocks, the last short
    d = holdout_draws(c.spec)
    assert HOLDOUT_BLOCK == 1024 and d.parameters.shape == (1500, 2)
    for b, rows in ((0, slice(0, 1024)), (1, slice(1024, 1500))):
        n = rows.stop - rows.start
        seq = [np.random.SeedSequence([3, 1, s]).spawn(b + 1)[b] for s in (2, 3)]
        want_p = np.random.default_rng(seq[0]).uniform([0.5, 0.0], [1.5, 0.2], size=(n, 2))
        want_d = np.random.default_rng(seq[1]).uniform(-0.3, 0.3, size=(n, 12, 1))
        np.testing.assert_array_equal(d.parameters[rows], want_p)
        np.testing.assert_array_equal(d.disturbances[:, rows], want_d.transpose(1, 0, 2))
    part = holdout_draws(c.spec, None, 1000, 1100)  # straddles the block boundary
    np.testing.assert_array_equal(part.parameters, d.parameters[1000:1100])
    np.testing.assert_array_equal(part.disturbances, d.disturbances[:, 1000:1100])
    theta = torch.tensor([2.0, 1.0], dtype=torch.float64)  # unstable: some scenarios violate
    whole = validate_holdout(c, theta, chunk=1500)
    assert 0 < whole["violations"] < 1500
    Xn, Un = numpy_rollout(theta.numpy().reshape(1, 2), holdout_states(c.spec), d.parameters,
                           d.disturbances)
    want = numpy_metrics(Xn, Un, d.parameters, d.disturbances)
    assert whole["violations"] == int((want > 0).any(axis=1).sum())
    for chunk in (1, 7):
        got = validate_holdout(c, theta, chunk=chunk)
        assert got["violations"] == whole["violations"]
        assert got["violations_per_metric"] == whole["violations_per_metric"]
        for name in ("pos", "gust"):
            assert got["worst"][name] == pytest.approx(whole["worst"][name], rel=1e-12)
            assert got["worst_scenario"][name] == whole["worst_scenario"][name]


@pytest.mark.slow
def test_a_large_holdout_draws_per_chunk_not_all_at_once():
    """100 000 scenarios × T = 100 × 1 disturbance is 80 MB of draws at once; chunked, the numpy
    memory at its peak is a few blocks' worth (the states and violations are N × 2 each)."""
    import tracemalloc
    text = SPEC.replace("holdout 20000", "holdout 100000").replace("horizon 12", "horizon 100")
    c = compiled(text)
    theta = c.family.theta0
    all_at_once = 100_000 * 100 * 1 * 8
    tracemalloc.start()
    try:
        result = validate_holdout(c, theta, chunk=4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["count"] == 100_000 and result["violations"] is not None
    assert peak < all_at_once / 5, f"peak {peak / 2**20:.1f} MiB"


def test_a_parameter_that_makes_some_scenarios_unsafe_is_caught():
    """With u = 0, p_T = T·dt·a = a: the metric is a − 0.95, > 0 exactly where a > 0.95 —
    per scenario in training, and counted among the holdout's fresh draws."""
    c = compiled(UNSAFE)
    theta = c.family.theta0
    a = training_draws(c.spec).parameters[:, 0]
    h = c.evaluator.per_scenario(theta[None])[0, :, 0].numpy()
    np.testing.assert_allclose(h, a - 0.95, atol=1e-12)
    a_ho = holdout_draws(c.spec).parameters[:, 0]
    unsafe = int(np.sum(a_ho - 0.95 > 1e-12))
    assert 100 < unsafe < 300  # ~5 % of 4000
    result = validate_holdout(c, theta)
    assert result["violations"] == unsafe and result["bound"] is None
    assert result["worst"]["reach"] == pytest.approx(a_ho.max() - 0.95, abs=1e-12)
    # narrowed to values that are all safe: no violation anywhere
    safe = compiled(UNSAFE.replace("[0, 1]", "[0, 0.9]"))
    assert validate_holdout(safe, theta)["violations"] == 0
    assert float(safe.evaluator(theta[None])[0, 0]) < 0


def test_code_plants_with_uncertainty_are_a_located_error():
    python = SPEC.replace("""system discrete {
    state p, v
    input f
    next p = p + dt * v
    next v = v + dt * (k * f - c * v + w)
}""", 'system python "plant:step" { state p, v  input f }')
    found = [e for e in errors(python) if "parameter" in e[2] or "disturbance" in e[2]]
    assert found and found[0][0] > 0, errors(python)
    assert "not supported" in found[0][2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unc")
    path = tmp / "unc.scpo"
    path.write_text(SPEC)
    result = check(SPEC, path=str(path))
    return train(path, result.spec, SPEC, out=tmp / "run"), path


def test_the_run_records_the_draws_and_the_audit_draws_them_again(trained, tmp_path):
    res, _ = trained
    a = audit_run(res.run_dir)
    assert a.ok, a.problems
    header = records(res.run_dir)[0]
    spec = check(SPEC).spec
    assert header["uncertainty"]["parameters"] == [{"name": "k", "lo": 0.5, "hi": 1.5},
                                                   {"name": "c", "lo": 0.0, "hi": 0.2}]
    assert header["uncertainty"]["disturbances"] == [{"name": "w", "lo": -0.3, "hi": 0.3}]
    assert header["uncertainty"]["draws"] == training_draws(spec).digest()
    # a forged account of the draws (chain recomputed) is caught by drawing them again
    forged = copy_run(res.run_dir, tmp_path / "forged")
    recs = records(forged)
    recs[0]["uncertainty"]["draws"] = "0" * 64
    write_rechained(forged, recs, rebind=True)
    bad = audit_run(forged)
    assert not bad.ok and any("uncertainty" in p for p in bad.problems), bad.problems


def test_resume_sees_the_same_draws(trained, tmp_path):
    res, path = trained
    run = copy_run(res.run_dir, tmp_path / "again")
    result = check(SPEC, path=str(path))
    more = train(path, result.spec, SPEC, out=run, steps=3, resume=True)
    resumed = [r for r in records(more.run_dir) if r["type"] == "resume"]
    assert resumed and resumed[0]["g"] == resumed[0]["g_checkpoint"]
    assert audit_run(more.run_dir).ok


def test_simulate_takes_parameters_and_disturbance_sequences(trained):
    res, _ = trained
    run = load_run(res.run_dir)
    assert run.parameter_names == ["k", "c"] and run.disturbance_names == ["w"]
    assert run.uncertainty == {"k": (0.5, 1.5), "c": (0.0, 0.2), "w": (-0.3, 0.3)}
    K = run.theta.numpy().reshape(1, 2)
    x0 = np.array([[0.5, -0.2], [-0.3, 0.1]])
    params = np.array([[1.2, 0.05], [0.7, 0.15]])
    noise = np.random.default_rng(1).uniform(-0.3, 0.3, size=(2, 12, 1))
    X, U = run.simulate(x0, parameters=params, disturbances=noise)
    Xn, Un = numpy_rollout(K, x0, params, noise.transpose(1, 0, 2))
    assert_close_across_paths(X, Xn, "simulate")
    # one x0, values by name; fewer steps
    one = run.simulate(x0[0], steps=5, parameters={"k": 1.2, "c": 0.05},
                       disturbances={"w": noise[0, :5, 0]})
    assert_close_across_paths(one.states, Xn[0, :6], "one scenario by name")
    # without x0: the training scenarios with their own draws (those certified)
    d = training_draws(run.spec)
    Xt, _ = run.simulate()
    want = numpy_rollout(K, run.scenarios, d.parameters, d.disturbances)[0]
    assert_close_across_paths(Xt, want, "the training scenarios")
    g = run.metrics(x0, parameters=params, disturbances=noise)
    wm = numpy_metrics(Xn, Un, params, noise.transpose(1, 0, 2)).max(axis=0)
    assert g == pytest.approx({"pos": wm[0], "gust": wm[1]}, abs=1e-12)
    with pytest.raises(ValueError, match="disturbances"):
        run.simulate(x0, parameters=params)
    with pytest.raises(ValueError, match="missing c"):
        run.simulate(x0[0], parameters={"k": 1.0}, disturbances=noise[0])


def test_the_report_lists_the_uncertain_values(trained, tmp_path):
    res, _ = trained
    evidence = gather(res.run_dir)
    md = write_report(evidence, tmp_path / "r.md", "md").read_text()
    html = write_report(evidence, tmp_path / "r.html", "html").read_text()
    assert 'id="uncertain"' in html and "disturbance: a fresh value at every step" in html
    assert "| k | parameter: one value per scenario, held | [0.5, 1.5] |" in md
    assert "| w | disturbance: a fresh value at every step | [-0.3, 0.3] |" in md
    assert "The certificate holds over those draws" in md
    json.dumps(records(res.run_dir))  # every record (counterexamples too) is plain JSON


def test_the_verifier_bounds_uncertain_specs_over_their_ranges():
    """`scpo verify` treats parameters and disturbances as bounded sets (verify/uncertain.py):
    every bound it gives is ≥ g of plain-numpy rollouts with random gains, drags and gusts."""
    c = compiled()
    theta = c.family.theta0
    result = verify(c, theta, cells=64, time_limit=60)
    assert "k in [0.5, 1.5], c in [0, 0.2] (held over the rollout)" in result.model
    assert result.verdict == "PROVED", result.as_json()
    assert "w in [-0.3, 0.3] at every step" in result.model
    rng = np.random.default_rng(5)
    S, T = 4000, 12
    x0 = rng.uniform([-1, -0.5], [1, 0.5], size=(S, 2))
    params = rng.uniform([0.5, 0], [1.5, 0.2], size=(S, 2))
    noise = np.where(rng.random((T, S, 1)) < 0.5, -0.3, 0.3)
    X, U = numpy_rollout(np.array([[-1.0, -2.0]]), x0, params, noise)  # θ₀ = the backup's K
    worst = numpy_metrics(X, U, params, noise).max(axis=0)
    for j, name in enumerate(["pos", "gust"]):
        r = result.constraints[name]
        assert r.reason is None or "parameters and disturbances" not in r.reason
        assert r.bound is not None and r.bound >= worst[j] - 1e-9, (name, r.bound, worst[j])


def test_a_counterexample_carries_its_scenarios_draws():
    """The worst scenario of a refuted candidate comes with its parameters and disturbance
    sequence, and re-simulating it with them gives the logged rollout."""
    c = compiled(UNSAFE)
    trainer = Trainer(c)
    theta = c.family.theta0
    cx = trainer.counterexample(theta, np.array([True]))["reach"]
    d = training_draws(c.spec)
    j = cx["scenario"]
    assert j == int(np.argmax(d.parameters[:, 0]))
    np.testing.assert_array_equal(cx["parameters"].numpy(), d.parameters[j])
    np.testing.assert_array_equal(cx["disturbances"].numpy(), d.disturbances[:, j])
    assert cx["value"] == pytest.approx(d.parameters[j, 0] - 0.95, abs=1e-12)
    assert float(cx["states"][-1, 0]) == pytest.approx(d.parameters[j, 0], abs=1e-12)


def test_a_policy_observing_a_parameter_sees_each_scenarios_draw():
    """observe = [p, v, k]: u = θ · (p, v, k) with scenario s's own k, in the evaluated and the
    differentiable (cost) rollout alike."""
    c = compiled(SPEC.replace("policy linear { init = backup }",
                              "policy linear { observe = [p, v, k] }"))
    d, x0 = training_draws(c.spec), training_states(c.spec)
    theta = np.array([-1.0, -2.0, 0.7])
    X, U = c.evaluator.rollout(torch.as_tensor(theta)[None])
    S, T = x0.shape[0], 12
    Xn = np.zeros((S, T + 1, 2))
    for s in range(S):
        k, drag = d.parameters[s]
        x = x0[s].copy()
        Xn[s, 0] = x
        for t in range(T):
            u = theta[0] * x[0] + theta[1] * x[1] + theta[2] * k
            x = np.array([x[0] + DT * x[1], x[1] + DT * (k * u - drag * x[1]
                                                          + d.disturbances[t, s, 0])])
            Xn[s, t + 1] = x
    assert_close_across_paths(X[0], Xn, "a policy observing k")
    with torch.enable_grad():
        Xg, _ = c.evaluator.rollout(torch.as_tensor(theta)[None].requires_grad_())
    assert_close_across_paths(Xg[0].detach(), Xn, "the differentiable rollout")


def test_a_backup_observing_a_parameter_is_a_located_error():
    text = SPEC.replace("backup linear { K = [[-1, -2]] }",
                        "backup linear { K = [[-1, -2, 0]]  observe = [p, v, k] }")
    found = [e for e in errors(text) if "backup's observe reads the parameter 'k'" in e[2]]
    assert found and found[0][:2] == (12, 53), errors(text)  # at the `k` it reads
