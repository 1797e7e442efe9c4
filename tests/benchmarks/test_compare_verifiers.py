"""benchmarks/compare_verifiers.py: `scpo verify` beside auto_LiRPA and immrax on the double
integrator's position bound. The fast test runs only the scpo column (no venv); the slow one the
whole comparison, skipped when a peer's venv or source cannot be had here."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.linalg import solve_discrete_are


def _run(root, tmp_path, *args, timeout=600):
    out = tmp_path / "verifiers.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "compare_verifiers.py"),
                           *args, "--json", str(out)], capture_output=True, text=True,
                          timeout=timeout, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _grid_worst_theta0() -> float:
    """max_t |position_t| over a 41×41 grid of the box for the spec's θ₀, in plain numpy: the
    residual MLP starts at zero output, so θ₀ is the LQR loop x⁺ = (A + BK) x (Q = I,
    R = 1)."""
    dt = 0.1
    A = np.array([[1, dt], [0, 1]])
    B = np.array([[0.5 * dt ** 2], [dt]])
    P = solve_discrete_are(A, B, np.eye(2), np.eye(1))
    K = -np.linalg.solve(np.eye(1) + B.T @ P @ B, B.T @ P @ A)
    p, v = np.meshgrid(np.linspace(-1, 1, 41), np.linspace(-0.5, 0.5, 41))
    x = np.stack([p.ravel(), v.ravel()])
    worst = np.abs(x[0]).max()
    for _ in range(60):
        x = (A + B @ K) @ x
        worst = max(worst, np.abs(x[0]).max())
    return float(worst)


def test_scpo_column(root, tmp_path):
    res, stdout = _run(root, tmp_path, "--only", "scpo")
    assert res["peers"] == {} and len(res["rows"]) == 1
    row = res["rows"][0]
    assert row["verdict"] == "PROVED" and row["bound"] <= 1.5 and row["cells"] >= 1
    grid = _grid_worst_theta0()
    sampled = res["sampled"]["max_abs_position"]
    assert res["sampled"]["samples"] == 10_000
    assert sampled == pytest.approx(res["sampled"]["position_limit_g_plus_limit"], abs=1e-12)
    # sound (no sample or grid point above it) and tight (within 1 % of the grid's worst)
    assert row["bound"] >= max(sampled, grid)
    assert row["bound"] <= 1.01 * grid
    assert "scpo verify" in stdout and f"{row['bound']:.6f}" in stdout


@pytest.mark.slow
def test_full_comparison(root, tmp_path):
    spec = importlib.util.spec_from_file_location("compare_verifiers",
                                                  root / "benchmarks" / "compare_verifiers.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    if not (script.LIRPA_VENV / "bin" / "python").exists() and not script.LIRPA_MIRROR.exists():
        pytest.skip("no auto_LiRPA venv and no mirror of its source to build one from")
    res, _ = _run(root, tmp_path, "--splits", "1", "--methods", "CROWN", timeout=1500)
    for name in ("auto_LiRPA", "immrax"):
        if not res["peers"][name]["available"]:
            pytest.skip(f"{name} could not be run here: {res['peers'][name]['reason'][-300:]}")
    assert res["peers"]["auto_LiRPA"]["network_vs_evaluator"] < 1e-9
    rows = {r["method"]: r for r in res["rows"]}
    sampled = res["sampled"]["max_abs_position"]
    for r in rows.values():  # every bound is sound
        assert r["bound"] is None or r["bound"] >= sampled
    scpo, crown = rows["scpo verify (zonotopes)"], rows["auto_LiRPA CROWN"]
    assert scpo["bound"] <= crown["bound"] + 1e-9  # equal or tighter
