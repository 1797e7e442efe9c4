"""`train { executor ray { … } }`: the same metrics and the same run as `executor local`.

The same to CROSS_PATH (tests/numerics.py), not bit for bit: a Ray worker evaluates its chunk of
rows with one thread, the local evaluator all rows with the process's threads, and BLAS may
pick another kernel for each (one last bit differed on an AVX-512 Xeon).

One local Ray instance for the whole module (started by the fixture, so the evaluators under
test find Ray running and leave it alone). Skipped where ray is not installed, except the
"not installed" message itself.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scpo_spec.audit.log import read_lines
from scpo_spec.audit.rundir import RunDir
from scpo_spec.audit.verify import audit_run
from scpo_spec.cli import app
from scpo_spec.compile.problem import compile_spec
from scpo_spec.engine.executors.ray import RayEvaluator, RayUnavailable, connect
from scpo_spec.engine.run import RunError, train
from tests.engine_specs import small_di, spec_of, write_spec
from tests.numerics import assert_close_across_paths

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (pip install 'scpo-spec[ray]')")
RAY2 = "executor ray { workers = 2 }"
UNREACHABLE = 'executor ray { address = "127.0.0.1:1"  workers = 2 }'  # nothing listens on port 1


@pytest.fixture(scope="module")
def ray_instance():
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@needs_ray
def test_ray_and_local_metrics_agree(ray_instance, tmp_path):
    text = small_di(steps=4, extra=RAY2)
    spec = spec_of(text, tmp_path)
    compiled = compile_spec(spec, tmp_path)
    local = compiled.evaluator
    ev = RayEvaluator(local, spec, tmp_path, workers=2)
    try:
        assert not ev._started  # Ray was running already: not ours to shut down
        gen = torch.Generator().manual_seed(0)
        theta0 = compiled.family.theta0
        for C, scale in ((1, 0.1), (2, 0.1), (7, 0.3), (18, 0.3), (64, 1.0), (65, 30.0)):
            thetas = theta0[None] + scale * torch.randn(C, compiled.family.d, generator=gen,
                                                        dtype=torch.float64)
            if C == 65:
                thetas[[3, 40], 0] = torch.nan  # rollouts leave the finite numbers: +inf
            a, b = local(thetas), ev(thetas)
            assert b.dtype == torch.float64 and b.shape == (C, len(local.metrics))
            assert_close_across_paths(b, a, f"C = {C}")  # +inf (unsafe) entries included
            assert_close_across_paths(ev.per_scenario(thetas), local.per_scenario(thetas))
            x0 = local.x0[2:5]
            assert_close_across_paths(ev.per_scenario(thetas, x0), local.per_scenario(thetas, x0))
        assert torch.isinf(a).any() and torch.isfinite(a).any()  # the last batch has both
        assert ev.names == local.names and np.array_equal(ev.margins, local.margins)
        assert ev.horizon == local.horizon and ev.x0 is local.x0 and ev.metrics is local.metrics
    finally:
        ev.close()
    assert ray_instance.is_initialized()


@needs_ray
def test_ray_and_local_agree_on_uncertain_scenarios(ray_instance, tmp_path):
    """The workers draw the same parameters and disturbances (the fingerprint covers them), and
    a subset of scenarios travels with its own draws."""
    from tests.plan.test_uncertainty import SPEC
    spec = spec_of(SPEC, tmp_path)
    local = compile_spec(spec, tmp_path).evaluator
    ev = RayEvaluator(local, spec, tmp_path, workers=2)
    try:
        gen = torch.Generator().manual_seed(0)
        thetas = torch.tensor([-1.0, -2.0]) + 0.3 * torch.randn(6, 2, generator=gen,
                                                                 dtype=torch.float64)
        assert_close_across_paths(ev(thetas), local(thetas))
        assert_close_across_paths(ev.per_scenario(thetas), local.per_scenario(thetas))
        chosen = local.select(slice(2, 5))
        assert_close_across_paths(ev.per_scenario(thetas, *chosen),
                                  local.per_scenario(thetas, *chosen))
    finally:
        ev.close()


@needs_ray
def test_gymnasium_rollouts_on_ray_agree(ray_instance, tmp_path, root):
    """A gymnasium system's scenarios are int64 reset seeds, not float64 states."""
    text = (root / "specs" / "gym_pendulum.scpo").read_text(encoding="utf-8")
    text = text.replace("count 16", "count 4").replace("horizon 100", "horizon 20")
    spec = spec_of(text, tmp_path)
    compiled = compile_spec(spec, tmp_path)
    local = compiled.evaluator
    ev = RayEvaluator(local, spec, tmp_path, workers=2)
    try:
        gen = torch.Generator().manual_seed(1)
        thetas = compiled.family.theta0[None] + 0.05 * torch.randn(
            6, compiled.family.d, generator=gen, dtype=torch.float64)
        assert_close_across_paths(ev(thetas), local(thetas))
        x0 = local.x0[1:3]
        assert x0.dtype == torch.int64
        assert_close_across_paths(ev.per_scenario(thetas, x0), local.per_scenario(thetas, x0))
    finally:
        ev.close()


def _steps(run_dir):
    lines, _ = read_lines(RunDir(run_dir).log)
    steps = [ln.record for ln in lines if ln.record.get("type") == "step"]
    return ([s["G"] for s in steps], [[t.get("verified") for t in s["tries"]] for s in steps],
            [s["accepted"] for s in steps])


def assert_same_run(local, ray) -> None:
    """The same decisions (accepted, refuted, which tries were verified) and the same numbers to
    CROSS_PATH: the bank's metrics may differ in a last bit (see the module's note), and the
    QCQP and the steps carry that on (~1e-13 after 4 steps when every metric is nudged by one
    ulp)."""
    a, b = audit_run(local.run_dir), audit_run(ray.run_dir)
    assert a.ok and b.ok and a.accepted == b.accepted > 0 and a.refutations == b.refutations
    assert a.worst.keys() == b.worst.keys() and a.worst_step == b.worst_step
    assert_close_across_paths(list(b.worst.values()), list(a.worst.values()))
    assert_close_across_paths(b.loss_last, a.loss_last)
    (Ga, verified_a, accepted_a), (Gb, verified_b, accepted_b) = _steps(local.run_dir), \
        _steps(ray.run_dir)
    assert accepted_a == accepted_b
    for step, (ga, gb, va, vb) in enumerate(zip(Ga, Gb, verified_a, verified_b, strict=True)):
        assert_close_across_paths(gb, ga, f"step {step}")
        assert [v is None for v in va] == [v is None for v in vb], step
        for x, y in zip(va, vb):
            if x is not None:
                assert_close_across_paths(y, x, f"step {step}")
    assert_close_across_paths(ray.state.theta, local.state.theta)


def spy_on_spread(monkeypatch) -> list[str]:
    """The methods RayEvaluator sends to its actors, in order (the list fills as it runs)."""
    spread, original = [], RayEvaluator._spread

    def counted(self, method, *args):
        spread.append(method)
        return original(self, method, *args)
    monkeypatch.setattr(RayEvaluator, "_spread", counted)
    return spread


@needs_ray
def test_ray_and_local_training_give_the_same_run(ray_instance, tmp_path, monkeypatch):
    spread = spy_on_spread(monkeypatch)
    runs = {}
    for name, extra in (("local", "executor local"), ("ray", RAY2)):
        base = tmp_path / name
        base.mkdir()
        text = small_di(steps=4, extra=extra)
        res = train(write_spec(base, text), spec_of(text, base), text, out=base / "run")
        assert res.ended == "completed"
        runs[name] = res
    assert_same_run(runs["local"], runs["ray"])
    assert spread == ["metrics"] * 4  # each step's bank went to the actors (θ₀ and the
    # single-candidate verifications stayed local)
    assert ray_instance.is_initialized()  # the run did not start Ray, so it left it running


def test_missing_ray_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayUnavailable, match=r"pip install 'scpo-spec\[ray\]'"):
        connect(None, 2)
    text = small_di(steps=2, extra=RAY2)
    with pytest.raises(RunError, match="ray is not installed"):
        train(write_spec(tmp_path, text), spec_of(text, tmp_path), text, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@needs_ray
def test_unreachable_cluster_is_refused_quickly_by_the_cli(tmp_path, monkeypatch):
    import ray
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as if no Ray were running here
    spec = write_spec(tmp_path, small_di(steps=2, extra=UNREACHABLE))
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "run"), "-q",
                                      "--no-report"])
    assert result.exit_code == 1
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


# ---- `scpo verify --executor ray`: the prover's cells on the actors ----
def spy_on_cells(monkeypatch) -> list[int]:
    """How many cells each batch RayCells sends to its actors holds (the list fills as it
    runs)."""
    from scpo_spec.engine.executors.ray_cells import RayCells
    sizes, original = [], RayCells.bound_cells

    def counted(self, theta, keep, lo, *rest):
        sizes.append(len(lo))
        return original(self, theta, keep, lo, *rest)
    monkeypatch.setattr(RayCells, "bound_cells", counted)
    return sizes


def assert_same_proof(local: dict, ray: dict) -> None:
    """`scpo verify --json` answers: the same verdicts, splits and counterexamples; the bounds
    to CROSS_PATH (an actor bounds fewer cells at once: BLAS may take another kernel)."""
    assert ray["verdict"] == local["verdict"] and ray["cells"] == local["cells"]
    assert ray["constraints"].keys() == local["constraints"].keys()
    for name, a in local["constraints"].items():
        b = ray["constraints"][name]
        for key in ("verdict", "proved_fraction", "cells", "open_cells", "reason"):
            assert b[key] == a[key], (name, key)
        assert (a["bound"] is None) == (b["bound"] is None)
        if a["bound"] is not None:
            assert_close_across_paths(b["bound"], a["bound"], name)
        assert (a["counterexample"] is None) == (b["counterexample"] is None)


@needs_ray
@pytest.mark.slow
def test_verify_on_ray_gives_the_local_answer(ray_instance, monkeypatch, root):
    """linear_stability at 64 cells: three metrics PROVED, the Lyapunov ratio UNDECIDED on part
    of the box (cells at the origin stay open) — the split, fractions and bounds as local."""
    sizes = spy_on_cells(monkeypatch)
    spec = str(root / "specs" / "linear_stability.scpo")
    answers = {}
    for executor in ("local", "ray"):
        out = CliRunner().invoke(app, ["verify", spec, "--json", "--cells", "64",
                                       "--executor", executor])
        assert out.exit_code == 3, out.output  # UNDECIDED
        answers[executor] = json.loads(out.output)
    assert_same_proof(answers["local"], answers["ray"])
    assert answers["ray"]["constraints"]["decay"]["verdict"] == "UNDECIDED"
    assert 0 < answers["ray"]["constraints"]["decay"]["proved_fraction"] < 1
    assert sum(sizes) == 64 + 63 and max(sizes) > 2  # every cell bounded there (leaves and
    # the parents they were split from), batches of many cells among them
    assert ray_instance.is_initialized()  # Ray was running: left running


@needs_ray
def test_verify_on_an_unreachable_cluster_is_a_usage_error(tmp_path, monkeypatch):
    import ray
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as if no Ray were running here
    spec = write_spec(tmp_path, small_di(steps=2, extra=UNREACHABLE))
    out = CliRunner().invoke(app, ["verify", str(spec), "--executor", "ray"])
    assert out.exit_code == 2  # never a verdict's code (1 is a counterexample)
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in out.output
    assert "Traceback" not in out.output


@needs_ray
@pytest.mark.slow
def test_verify_every_on_ray_proves_on_the_actors_as_local(ray_instance, tmp_path, monkeypatch):
    """`executor ray` with `verify every 1`: the step's bank and its proofs' cells go to the
    actors, and the run — decisions, proofs, numbers — is the local one."""
    sizes = spy_on_cells(monkeypatch)
    runs = {}
    for name, extra in (("local", "executor local\n    verify every 1"),
                        ("ray", RAY2 + "\n    verify every 1")):
        base = tmp_path / name
        base.mkdir()
        text = small_di(steps=3, extra=extra)
        runs[name] = train(write_spec(base, text), spec_of(text, base), text, out=base / "run")
    assert_same_run(runs["local"], runs["ray"])
    a, b = (audit_run(runs[n].run_dir) for n in ("local", "ray"))
    assert a.proved_steps == b.proved_steps == a.accepted > 0
    proofs = {n: [t["proof"] for s in _records(runs[n].run_dir) if s["type"] == "step"
                  for t in s["tries"] if t.get("proof")] for n in runs}
    assert [p["verdicts"] for p in proofs["ray"]] == [p["verdicts"] for p in proofs["local"]]
    for p, q in zip(proofs["ray"], proofs["local"], strict=True):
        assert p["cells"] == q["cells"]
        assert_close_across_paths(p["bounds"], q["bounds"])
    assert len(sizes) == len(proofs["ray"]) + 1  # θ₀'s proof and each candidate's: on Ray


def _records(run_dir) -> list[dict]:
    lines, _ = read_lines(RunDir(run_dir).log)
    return [ln.record for ln in lines]
