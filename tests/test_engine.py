"""The safe-by-induction engine: the certificate's bound, verification and rejection, solver
failures, NaN rollouts, an unsafe start, on_violation stop — with real rollouts and real solves."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine_specs import small_di, spec_of
from scpo_spec.audit.verify import audit_run
from scpo_spec.compile.problem import compile_spec
from scpo_spec.compile.certificate import certificate
from scpo_spec.compile.projection import ProjectionTemplate, Solution
from scpo_spec.engine.run import train
from scpo_spec.engine.train import Trainer, UnsafeStart


def trainer_for(text: str, tmp_path: Path) -> Trainer:
    return Trainer(compile_spec(spec_of(text, tmp_path), tmp_path))


# ---- ALGORITHM.md step 4: the bound, on functions whose curvature is known ----
def quadratic(H, b, c):
    return lambda th: 0.5 * th @ H @ th + b @ th + c


@pytest.mark.parametrize("seed", range(20))
def test_bound_holds_for_quadratics_with_true_curvature(seed):
    rng = np.random.default_rng(seed)
    d, n = 12, 6
    M = rng.normal(size=(d, d))
    H = (M + M.T) / 2
    ell = np.abs(np.linalg.eigvalsh(H)).max()  # |g(θ+Δ) − g − ∇gᵀΔ| ≤ ℓ/2 ‖Δ‖² exactly
    g = quadratic(H, rng.normal(size=d), rng.normal())
    theta = rng.normal(size=d)
    D = rng.normal(size=(d, n)) * rng.uniform(0.01, 1, size=n)
    g0 = np.array([g(theta)])
    G = np.array([[g(theta + D[:, j]) for j in range(n)]])
    S = D.T @ D
    for _ in range(50):
        xi = rng.normal(size=n) * rng.uniform(0, 3)
        bound = certificate(g0, G, S, np.array([ell]), xi)[0]
        assert g(theta + D @ xi) <= bound + 1e-9 * (1 + abs(bound))


def test_bound_fails_when_curvature_is_understated():
    """With ℓ below the true curvature the 'certificate' can be wrong: that is exactly what the
    engine's verification must catch."""
    d = 3
    H = 10.0 * np.eye(d)
    g = quadratic(H, np.zeros(d), -1.0)
    theta = np.zeros(d)
    D = np.eye(d)[:, :2] * 0.1
    g0 = np.array([g(theta)])
    G = np.array([[g(theta + D[:, j]) for j in range(2)]])
    xi = np.array([5.0, 5.0])
    true = g(theta + D @ xi)
    assert true <= certificate(g0, G, D.T @ D, np.array([10.0]), xi)[0] + 1e-12
    assert true > certificate(g0, G, D.T @ D, np.array([1.0]), xi)[0] + 0.1


# ---- the projection template ----
def test_template_is_dpp_and_zero_is_feasible_from_a_safe_point():
    rng = np.random.default_rng(0)
    k, n, d = 3, 5, 40
    t = ProjectionTemplate(k, n, d, 0.5, np.full(k, 1e-6), ["a", "b", "c"])
    assert t.problem.is_dpp()
    for trial in range(5):
        D = rng.normal(size=(d, n)) * 0.1
        Q, R = np.linalg.qr(D, mode="reduced")
        g0 = -rng.uniform(0.01, 1, size=k)
        G = g0[:, None] + rng.normal(size=(k, n)) * 0.05
        S = D.T @ D
        ell = rng.uniform(1, 50, size=k)
        sol = t.solve(g0, G - g0[:, None], R, Q.T @ D[:, 0], np.diag(S), ell)
        assert sol.status == "optimal"
        bound = certificate(g0, G, S, ell, sol.xi)
        assert np.all(bound <= -1e-6 + 1e-7)
        assert np.linalg.norm(D @ sol.xi) <= 0.5 + 1e-6
        # never worse than the always-feasible ξ = 0
        assert np.sum((D @ sol.xi - D[:, 0]) ** 2) <= np.sum(D[:, 0] ** 2) + 1e-8


# ---- the engine loop ----
def test_accepted_iterates_are_verified_and_loss_decreases(tmp_path):
    res = train(tmp_path / "spec.scpo", spec_of(small_di(steps=12), tmp_path), small_di(steps=12),
                out=tmp_path / "run")
    a = audit_run(res.run_dir)
    assert a.ok and a.chain_ok and a.certificates_ok
    assert a.steps == 12 and a.accepted >= 8
    assert a.accepted_violations == 0
    assert a.loss_last < a.loss_first
    assert all(v <= -1e-6 for v in a.worst.values())


def test_understated_smoothness_is_refuted_rejected_and_logged(tmp_path):
    """ℓ far too small: certificates are wrong, verification catches it, ℓ doubles, and no
    violating candidate is ever accepted."""
    text = small_di(steps=25, pos=1e-3, force=1e-3, rho=1e-3)
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run")
    a = audit_run(res.run_dir)
    assert a.refutations > 0
    assert a.ok and a.accepted_violations == 0
    assert max(a.ell_max.values()) > 1e-3  # ℓ was raised above the spec's value
    import json
    steps = [json.loads(l) for l in (res.run_dir / "audit.jsonl").read_text().splitlines()]
    refuted = [t for r in steps if r.get("type") == "step" for t in r["tries"]
               if t["outcome"] == "refuted"]
    for t in refuted:  # a refuted try was certified yet verified worse than its certificate
        assert np.any(np.array(t["verified"]) > np.array(t["certificate"]))
        assert np.any(np.array(t["verified"]) > -1e-6)
        assert max(t["observed_curvature"]) > min(t["ell"])


def test_on_violation_stop_ends_the_run(tmp_path):
    text = small_di(steps=40, pos=1e-3, force=1e-3, rho=1e-3, extra="on_violation stop")
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run")
    assert res.ended.startswith("stopped")
    a = audit_run(res.run_dir)
    assert a.ok and a.refutations == 1 and a.steps < 40


def test_nan_rollouts_are_unsafe_and_never_accepted(tmp_path, monkeypatch):
    t = trainer_for(small_di(), tmp_path)
    state = t.initial_state()
    real = t.ev._rollout_on_device  # what `rollout` and the metrics' reused-buffer rollout run

    def poisoned(thetas, x0, reuse=False, draws=None):  # every single-candidate rollout
        X, U = real(thetas, x0, reuse, draws)  # is NaN
        if thetas.shape[0] == 1 and not thetas.requires_grad:
            X = X.clone()
            X[:, 0, 5, 0] = float("nan")
        return X, U
    monkeypatch.setattr(t.ev, "_rollout_on_device", poisoned)
    assert np.all(np.isinf(t.metrics(state.theta[None])))
    before = state.theta.clone()
    for _ in range(3):
        state, record = t.step(state)
        assert not record.accepted
        assert torch.equal(state.theta, before)
        outcomes = [tr.outcome for tr in record.tries]
        assert "accepted" not in outcomes and "refuted" in outcomes


def test_solver_failure_rejects_the_step(tmp_path, monkeypatch):
    t = trainer_for(small_di(), tmp_path)
    state = t.initial_state()
    monkeypatch.setattr(t.template, "solve",
                        lambda *a, **k: Solution("infeasible_inaccurate", None, 0.0, None))
    new, record = t.step(state)
    assert not record.accepted and record.reason == "solver: infeasible_inaccurate"
    assert torch.equal(new.theta, state.theta) and np.array_equal(new.g, state.g)
    assert record.tries[0].outcome == "solver_failed"


def test_solver_exception_rejects_the_step(tmp_path, monkeypatch):
    import cvxpy as cp
    t = trainer_for(small_di(), tmp_path)
    state = t.initial_state()

    def boom(*a, **k):
        raise cp.error.SolverError("simulated failure")
    monkeypatch.setattr(t.template.problem, "solve", boom)
    new, record = t.step(state)
    assert not record.accepted and "simulated failure" in record.reason
    assert torch.equal(new.theta, state.theta)


def test_unsafe_start_is_refused_before_anything_is_written(tmp_path):
    text = small_di().replace("always abs(position) <= 1.5", "always abs(position) <= 0.5")
    with pytest.raises(UnsafeStart) as info:
        train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run")
    (name, value, margin, location), = info.value.violated
    assert name == "position_limit" and value > 0 and location.endswith(":19")
    assert "position_limit" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_a_second_run_never_overwrites_the_first(tmp_path, monkeypatch):
    """Without --out: runs/NAME, then runs/NAME-2.  An explicit --out is used exactly: refused
    when it holds a run, and --force moves the old run aside, never deleting it."""
    from scpo_spec.engine.run import RunError
    text = small_di(steps=2)
    monkeypatch.chdir(tmp_path)
    first = train(tmp_path / "s.scpo", spec_of(text, tmp_path), text)
    second = train(tmp_path / "s.scpo", spec_of(text, tmp_path), text)
    assert first.run_dir == Path("runs/small_di") and second.run_dir == Path("runs/small_di-2")
    # same spec and seeds: the same log, step for step
    assert first.head == second.head or audit_run(first.run_dir).worst == \
        audit_run(second.run_dir).worst
    with pytest.raises(RunError, match="already holds a run.*--resume.*--force"):
        train(tmp_path / "s.scpo", spec_of(text, tmp_path), text, out=first.run_dir)
    from scpo_spec.engine.listener import RunListener
    notes = []

    class Notes(RunListener):
        def note(self, message):
            notes.append(message)
    third = train(tmp_path / "s.scpo", spec_of(text, tmp_path), text, out=first.run_dir,
                  force=True, listener=Notes())
    assert third.run_dir == first.run_dir
    assert (tmp_path / "runs/small_di.old-1/audit.jsonl").read_bytes() != b""
    assert notes and "small_di.old-1" in notes[0]


@pytest.mark.parametrize("solver", ["clarabel", "scs", "gurobi"])
def test_every_solver_trains_safely(solver, tmp_path):
    import cvxpy as cp
    if solver.upper() not in cp.installed_solvers():
        pytest.skip(f"{solver} is not installed (extra)")
    text = small_di(steps=6, extra=f"solver {solver}")
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run")
    a = audit_run(res.run_dir)
    assert a.ok and a.accepted_violations == 0
    assert a.accepted >= 3 and a.loss_last < a.loss_first


def test_smooth_aggregate_and_estimated_smoothness_train_safely(tmp_path):
    text = small_di(steps=8, extra="aggregate smooth(0.01)\n    smoothness estimate")
    text = text.replace("smoothness 50\n", "\n", 1)  # position_limit: no constant, estimated
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run")
    a = audit_run(res.run_dir)
    assert a.ok and a.accepted_violations == 0 and a.loss_last < a.loss_first
    import json
    header = json.loads((res.run_dir / "audit.jsonl").read_text().splitlines()[0])
    estimated = {m["name"]: m["estimated"] for m in header["metrics"]}
    assert estimated == {"position_limit": True, "force_limit": False, "margin": False}


def test_lipschitz_keeps_every_candidate_short(tmp_path):
    text = small_di(steps=5).replace("smoothness POS_ELL", "")
    text = small_di(steps=5).replace("always abs(position) <= 1.5   smoothness 50",
                                     "always abs(position) <= 1.5   smoothness 50  lipschitz 5")
    assert "lipschitz 5" in text
    import json
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run")
    steps = [json.loads(l) for l in (res.run_dir / "audit.jsonl").read_text().splitlines()
             if '"type":"step"' in l]
    for r in steps:
        cap = -r["g0"][0] / 5
        assert r["probe_cap"] == pytest.approx(cap)
        assert max(r["bank_norms"]) <= cap * (1 + 1e-9)
        assert max(np.array(r["G"])[0]) <= 0  # every evaluated candidate stayed safe
