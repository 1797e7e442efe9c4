"""The Python API of a trained run: `load_run(...).policy` on numpy / any float dtype / one
state, `Run.simulate`, `Run.metrics`, the spec's values, the README's Python example run
verbatim, and `scpo train`'s plain progress lines when its output is not a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scpo_spec import load_run
from scpo_spec.compile.problem import compile_spec
from scpo_spec.engine.run import RunError, train
from tests.engine_specs import small_di, spec_of, write_spec
from tests.numerics import assert_close_across_paths

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    text = small_di(steps=3)
    res = train(base / "spec.scpo", spec_of(text, base), text, out=base / "run")
    return load_run(res.run_dir)


def last_record(run) -> dict:
    return json.loads((run.path / "audit.jsonl").read_bytes().splitlines()[-1])


# ---- the policy ----
def test_policy_takes_numpy_and_gives_numpy(run):
    x = np.array([[0.5, -0.2], [0.0, 0.0], [-1.0, 0.3]])
    expected = run.policy(torch.from_numpy(x)).detach().numpy()
    for given in (x, x.astype(np.float32), x.tolist()):
        u = run.policy(given)
        assert isinstance(u, np.ndarray) and u.dtype == np.float64 and u.shape == (3, 1)
        np.testing.assert_allclose(u, expected, atol=1e-6)  # float32 input: its own rounding
    np.testing.assert_array_equal(run.policy(x), expected)  # float64 numpy: exactly the same


def test_policy_on_one_state_gives_one_action(run):
    x = np.array([0.5, -0.2])
    u = run.policy(x)
    assert u.shape == (1,)
    np.testing.assert_array_equal(u, run.policy(x[None])[0])
    ut = run.policy(torch.tensor([0.5, -0.2]))
    assert ut.shape == (1,) and ut.dtype == torch.float64


def test_policy_on_torch_float32_computes_in_float64(run):
    x32 = torch.tensor([[0.5, -0.2], [-1.0, 0.3]], dtype=torch.float32)
    u = run.policy(x32)
    assert isinstance(u, torch.Tensor) and u.dtype == torch.float64
    family = compile_spec(run.spec, run.base_dir).family
    expected = family.forward(run.theta[None], x32.to(torch.float64)[None])[0]
    assert torch.allclose(u, expected, atol=1e-12)


def test_policy_keeps_autograd_for_torch_input(run):
    x = torch.tensor([[0.5, -0.2]], dtype=torch.float64, requires_grad=True)
    run.policy(x).sum().backward()
    assert x.grad is not None and x.grad.shape == (1, 2)


def test_policy_names_the_expected_shape(run):
    with pytest.raises(ValueError, match=r"n = 2; got shape \(3,\)"):
        run.policy(np.zeros(3))


def test_family_module_users_are_unchanged():
    base = Path.cwd()
    c = compile_spec(spec_of(small_di(), base), base)
    x = torch.randn(5, 2, dtype=torch.float64)
    u = c.family.module(c.family.theta0)(x)
    assert u.dtype == torch.float64
    # nn.Linear's addmm vs the batched baddbmm: equal to the last bits
    assert_close_across_paths(u, c.family.forward(c.family.theta0[None], x[None])[0])


# ---- simulate ----
def test_simulate_one_state_matches_the_engines_rollout(run):
    x0 = np.array([0.5, -0.2])
    states, inputs = run.simulate(x0)
    assert isinstance(states, np.ndarray) and states.shape == (21, 2) and inputs.shape == (20, 1)
    np.testing.assert_array_equal(states[0], x0)
    ev = compile_spec(run.spec, run.base_dir).evaluator
    with torch.no_grad():  # numpy in: the evaluated rollout, bit for bit (the autograd one
        X, U = ev.rollout(run.theta[None], torch.from_numpy(x0[None]))  # is equal to 1e-12)
    np.testing.assert_array_equal(states, X[0, 0].numpy())
    np.testing.assert_array_equal(inputs, U[0, 0].numpy())
    np.testing.assert_allclose(inputs, run.policy(states[:-1]), atol=1e-12)


def test_simulate_batched_with_steps_and_torch(run):
    x0 = np.array([[0.5, -0.2], [-1.0, 0.3], [0.0, 0.0]])
    traj = run.simulate(x0, steps=7)
    assert traj.states.shape == (3, 8, 2) and traj.inputs.shape == (3, 7, 1)
    t = run.simulate(torch.from_numpy(x0).float(), steps=7)
    assert isinstance(t.states, torch.Tensor) and t.states.dtype == torch.float64
    np.testing.assert_allclose(t.states.numpy(), traj.states, atol=1e-6)
    zero = run.simulate(x0[0], steps=0)
    assert zero.states.shape == (1, 2) and zero.inputs.shape == (0, 1)


def test_simulate_defaults_to_the_spec_scenarios(run):
    states, inputs = run.simulate()
    assert states.shape == (8, run.horizon + 1, 2)
    np.testing.assert_array_equal(states[:, 0], run.scenarios)


def test_simulate_is_differentiable_in_a_torch_x0(run):
    x0 = torch.tensor([0.5, -0.2], dtype=torch.float64, requires_grad=True)
    states, _ = run.simulate(x0, steps=5)
    states[-1].sum().backward()
    assert x0.grad is not None and torch.isfinite(x0.grad).all()


def test_simulate_errors_are_clear(run):
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(B, n\) with n = 2"):
        run.simulate(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="seeds are for gymnasium systems"):
        run.simulate(seeds=[0])
    with pytest.raises(ValueError, match="steps must be"):
        run.simulate(np.zeros(2), steps=-1)


# ---- metrics and the spec's values ----
def test_metrics_are_the_logged_certified_values(run):
    g = run.metrics()
    assert list(g) == run.metric_names == ["position_limit", "force_limit", "margin"]
    assert list(g.values()) == pytest.approx(last_record(run)["g"], abs=1e-12)
    assert all(v <= -run.margins[k] for k, v in g.items())


def test_metrics_on_other_initial_states(run):
    x0 = np.array([[0.5, -0.2], [0.0, 0.0]])
    g = run.metrics(x0)
    states, inputs = run.simulate(x0)
    assert g["position_limit"] == pytest.approx(np.abs(states[..., 0]).max() - 1.5, abs=1e-12)
    assert g["force_limit"] == pytest.approx(np.abs(inputs).max() - 4, abs=1e-12)
    assert g["margin"] == run.metrics()["margin"]  # spectral radius: no scenario in it
    one = run.metrics(x0[0])
    assert one["position_limit"] == pytest.approx(np.abs(states[0, :, 0]).max() - 1.5, abs=1e-12)


def test_the_spec_values(run):
    assert run.horizon == 20
    assert run.state_names == ["position", "velocity"] and run.input_names == ["force"]
    assert run.margins == {"position_limit": 1e-6, "force_limit": 1e-6, "margin": 1e-6}
    assert run.initial_box == {"position": (-1.0, 1.0), "velocity": (-0.5, 0.5)}
    assert run.scenarios.shape == (8, 2)
    summary = run.spec_summary()
    json.dumps(summary)  # plain data
    assert summary["name"] == "small_di" and summary["system"] == "linear"
    assert (summary["n"], summary["m"], summary["scenarios"]) == (2, 1, 8)
    assert [m["formula"] for m in summary["metrics"]][1] == "always force in [-4, 4]"


# ---- a gymnasium run ----
def test_a_gymnasium_run_simulates_from_reset_seeds(tmp_path):
    pytest.importorskip("gymnasium")
    from tests.systems.test_gymnasium import spec_text
    text = spec_text(STEPS="1")
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run")
    r = load_run(res.run_dir)
    assert r.initial_box == {} and r.scenarios.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="set by the environment's reset.*seeds="):
        r.simulate(np.zeros(3))
    states, inputs = r.simulate(seeds=2, steps=5)
    assert states.shape == (6, 3) and inputs.shape == (5, 1)
    ev = compile_spec(r.spec, r.base_dir).evaluator
    X, U = ev.rollout(r.theta[None], torch.tensor([2]))
    np.testing.assert_array_equal(states, X[0, 0, :6].numpy())
    batch = r.simulate(seeds=[0, 1])
    assert batch.states.shape == (2, r.horizon + 1, 3)
    assert list(r.metrics().values()) == pytest.approx(last_record(r)["g"], abs=1e-12)
    with pytest.raises(ValueError, match="pass seeds"):
        r.metrics(np.zeros((1, 3)))


# ---- the README's Python example, verbatim ----
def readme_python() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) == 1
    return blocks[0]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    from scpo_spec import load_spec
    code = readme_python()
    assert 'RUN = "runs/double_integrator"' in code
    (tmp_path / "specs").mkdir()
    spec_path = tmp_path / "specs" / "double_integrator.scpo"
    spec_path.write_text((ROOT / "specs" / "double_integrator.scpo").read_text("utf-8"), "utf-8")
    monkeypatch.chdir(tmp_path)
    spec = load_spec("specs/double_integrator.scpo")
    train(Path("specs/double_integrator.scpo"), spec, spec_path.read_text("utf-8"),
          out=Path("runs/double_integrator"), steps=2)
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "['position', 'velocity'] ['force'] 60" in out
    assert "settle:" in out and "needs <= -1e-06" in out


# ---- progress when the output is not a terminal ----
def test_train_prints_plain_progress_lines_into_a_pipe(tmp_path):
    spec = write_spec(tmp_path, small_di(steps=20))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80", "TERM": "xterm"}
    env.pop("FORCE_COLOR", None)
    p = subprocess.run([sys.executable, "-m", "scpo_spec.cli", "train", str(spec), "--out",
                        str(tmp_path / "run"), "--no-report"], cwd=tmp_path, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("train step ")]
    assert [ln.split()[2] for ln in lines] == [f"{s}/20" for s in range(2, 21, 2)]
    assert all(re.search(r"loss \S+  worst g\+margin \S+  accept \d+%  refuted \d+  \d+:\d\d$",
                         ln) for ln in lines)
    assert "━" not in p.stderr and "…" not in p.stderr  # no bar, nothing truncated
    assert "8 scenarios × 20 steps" in p.stderr  # the run's line is not wrapped either
