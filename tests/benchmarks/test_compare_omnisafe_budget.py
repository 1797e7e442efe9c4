"""benchmarks/compare_omnisafe.py's own arithmetic, without OmniSafe: the budget cap on SCPO,
the seed variants of a spec, the step counter, the mapping of an OmniSafe actor onto the spec's
family (against plain numpy) and the per-seed summary (mean and spread)."""

import importlib.util

import numpy as np
import pytest
import torch

from scpo_spec.dtype import DTYPE


@pytest.fixture
def script(root):
    spec = importlib.util.spec_from_file_location("compare_omnisafe_budget",
                                                  root / "benchmarks" / "compare_omnisafe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def work(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "WORK", tmp_path)
    return tmp_path


def test_the_cap_keeps_the_steps_whose_count_is_within_it(script):
    counts = [3_840, 77_000, 150_000, 151_000]  # after θ₀'s evaluation, then after each step
    assert script.steps_within(counts, 10**9) == 3
    assert script.steps_within(counts, 150_000) == 2
    assert script.steps_within(counts, 149_999) == 1
    assert script.steps_within(counts, 40_000) == 0
    assert script.steps_within(counts, 1_000) == 0  # not even θ₀'s evaluation: θ₀ is kept


def test_seed_variants_change_only_the_seeds(script, work, root):
    from scpo_spec.language.load import check_file
    for name in script.TASKS:
        original = (root / script.TASKS[name]).read_text()
        path = script.seed_variant(name, 7)
        text = path.read_text()
        changed = [(a, b) for a, b in zip(original.splitlines(), text.splitlines()) if a != b]
        assert len(changed) == 2, changed
        assert "seed = 7" in changed[0][1] and changed[0][1].startswith("policy mlp")
        assert changed[1][1].split() == ["seed", "7"]
        result = check_file(path)
        assert not [d for d in result.diagnostics if d.severity == "error"]


def test_the_counter_counts_candidates_times_scenarios_times_horizon(script):
    _, _, compiled = script.load("double_integrator")
    ev = compiled.evaluator
    theta = compiled.family.theta0.reshape(1, -1).repeat(3, 1)
    with script.StepCounter() as counter:
        ev(theta)
    assert counter.steps == 3 * len(ev.x0) * ev.horizon == 3 * 64 * 60


def test_an_omnisafe_actor_maps_exactly_onto_the_residual_free_family(script, work, tmp_path):
    _, plain = script.plain_variant("double_integrator")
    rng = np.random.default_rng(3)
    shapes = [tuple(s) for s in plain.family.layers]
    arrays = {}
    for i, (out, inp) in enumerate(shapes):
        arrays[f"W{i}"] = rng.normal(0, 0.5, (out, inp))
        arrays[f"b{i}"] = rng.normal(0, 0.1, out)
    mu, sd = np.array([0.2, -0.1]), np.array([0.6, 0.3])
    lo, hi = np.array([-4.0]), np.array([4.0])
    npz = tmp_path / "epoch-0003.npz"
    np.savez(npz, **arrays, obs_mean=mu, obs_std=sd, obs_clip=np.array([5.0, 5.0]),
             obs_count=np.asarray(500.0), act_low=lo, act_high=hi, epoch=np.asarray(3))
    theta, info = script.theta_of(str(npz), plain.family)
    assert info["epoch"] == 3 and info["norm"]["clip"] == 5.0

    x = rng.uniform([-1, -0.5], [1, 0.5], (50, 2))
    z = (x - mu) / sd  # OmniSafe's actor, in numpy: normalise, Linear-Tanh-…-Linear, scale
    h = z
    for i in range(len(shapes)):
        h = h @ arrays[f"W{i}"].T + arrays[f"b{i}"]
        if i < len(shapes) - 1:
            h = np.tanh(h)
    u_omnisafe = lo + (hi - lo) * (h + 1) / 2
    u_family = plain.family.forward(torch.as_tensor(theta, dtype=DTYPE)[None],
                                    torch.as_tensor(x, dtype=DTYPE)[None])[0].numpy()
    np.testing.assert_allclose(u_family, u_omnisafe, rtol=1e-10, atol=1e-10)


def test_the_summary_gives_totals_and_the_spread_over_seeds(script):
    def seed(i, violating, ret, steps):
        g = np.full((5, 2), -1.0)
        g[:violating, 0] = 0.5 + i
        return {"seed": i, "iterates": 5, "violating": violating, "worst": float(g.max()),
                "return_final": ret, "final_violating": False, "initial_violating": violating > 0,
                "env_steps": steps, "seconds": 2.0, "g": g,
                "final_verify": {"verdict": "PROVED", "constraints": {}}}
    rows = [seed(0, 0, -100.0, 40_000), seed(1, 2, -130.0, 40_000), seed(2, 4, -112.0, 40_000)]
    row = script.summarise(rows, "x 1")
    assert row["seeds"] == 3 and row["iterates"] == 15 and row["violating_iterates"] == 6
    assert row["env_steps"] == 120_000 and row["env_steps_per_run"] == [40_000] * 3
    assert row["violating_initial"] == 2 and row["worst"] == 2.5
    assert row["violating_per_metric"] == [6, 0]
    assert row["return_final_per_seed"]["mean"] == pytest.approx(np.mean([-100, -130, -112]))
    assert row["return_final_per_seed"]["std"] == pytest.approx(np.std([-100, -130, -112],
                                                                       ddof=1))
    assert row["violating_per_seed"] == {"mean": 2.0, "std": 2.0, "min": 0.0, "max": 4.0}
    assert [f["seed"] for f in row["final_verify"]] == [0, 1, 2]
    assert "g" not in row["per_seed"][0]


def test_runs_made_side_by_side_merge_and_stay_partial_while_a_task_is_missing(root):
    import sys
    sys.path.insert(0, str(root / "benchmarks"))
    from omnisafe_tables import merge
    common = {"quick": False, "budget_mode": "scpo_capped_to_omnisafe",
              "budget": {"seeds": 3, "total_steps": 20_000, "steps_per_epoch": 2_000},
              "omnisafe_settings": {"cost_limit": 0.0}, "verify_limits": {"cells": 4096},
              "versions": {"omnisafe": "0.5.0"}}
    di = {**common, "partial": True, "tasks_asked": ["double_integrator", "gym_pendulum"],
          "seconds": 3000.0, "tasks": {"double_integrator": {"scpo": {"seeds": 3}}}}
    pendulum = {**common, "partial": False, "tasks_asked": ["gym_pendulum"], "seconds": 3500.0,
                "tasks": {"gym_pendulum": {"scpo": {"seeds": 3}}}}
    both = merge([di, pendulum])
    assert both["partial"] is False and set(both["tasks"]) == {"double_integrator", "gym_pendulum"}
    assert both["seconds"] == 6500.0 and [p["seconds"] for p in both["parts"]] == [3000.0, 3500.0]
    cold = {**common, "budget_mode": None, "partial": False, "tasks_asked": ["gym_pendulum"],
            "seconds": 100.0, "tasks": {"gym_pendulum": {"cpo": {"seeds": 3}}}}
    three = merge([di, pendulum, cold])  # a part without SCPO adds its rows to the task's
    assert set(three["tasks"]["gym_pendulum"]) == {"scpo", "cpo"}
    assert three["budget_mode"] == "scpo_capped_to_omnisafe"
    short = merge([di, pendulum, cold], ("scpo", "cpo", "cpo_warm"))  # methods not run: partial
    assert short["partial"] is True
    assert short["missing"] == {"double_integrator": ["cpo", "cpo_warm"],
                                "gym_pendulum": ["cpo_warm"]}
    assert merge([di, pendulum, cold], ("scpo",))["missing"] == {}
    assert merge([di])["partial"] is True  # the pendulum was asked and is not there
    with pytest.raises(AssertionError, match="budget"):
        merge([di, {**pendulum, "budget": {**common["budget"], "total_steps": 40_000}}])
