"""The ARCH-COMP 2024 benchmark specs (benchmarks/arch/): each checks and is canonically formatted,
each starts safe (θ₀ is the backup, safe on its scenarios), and the short ones train to CERTIFIED
and verify PROVED (slow).  The published ACC and TORA controllers, which cannot ship, are compared
with an independent numpy rollout only where a local copy of the benchmark repository exists."""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scpo_spec.language.load import check_file

ROOT = Path(__file__).resolve().parents[2]
ARCH = ROOT / "benchmarks" / "arch"
BENCHMARKS = ["acc", "cartpole", "single_pendulum", "tora", "unicycle"]
ARCH_SPECS = [ARCH / f"{name}.scpo" for name in BENCHMARKS]


def _published():
    """benchmarks/arch/published.py as a module (it is a script, not a package)."""
    if "arch_published" not in sys.modules:
        spec = importlib.util.spec_from_file_location("arch_published", ARCH / "published.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["arch_published"] = module
        spec.loader.exec_module(module)
    return sys.modules["arch_published"]


def _scpo(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "scpo_spec.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)


def test_every_benchmark_has_a_spec():
    assert all(p.is_file() for p in ARCH_SPECS)


@pytest.mark.parametrize("path", ARCH_SPECS, ids=lambda p: p.stem)
def test_arch_spec_checks_and_is_formatted(path):
    result = check_file(path)
    assert result.ok, [str(p) for p in result.problems]
    fmt = _scpo("fmt", "--check", str(path))
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_tora_and_unicycle_declare_the_published_input_offsets():
    """dynamics9.m subtracts 10 from the network's output, dynamics10.m 20 from each: at rest the
    inputs are those offsets, so each spec's equilibrium is a fixed point of its plant."""
    from scpo_spec.language.dynamics import right_hand_side
    for name, u_star in (("tora", [10.0]), ("unicycle", [20.0, 20.0])):
        spec = check_file(ARCH / f"{name}.scpo").spec
        x_star, u = spec.equilibrium_point()
        assert u == u_star and x_star == [0.0] * len(x_star)
        consts = {c.name: c.value.value for c in spec.consts}
        assert np.abs(right_hand_side(spec.system, consts)(np.array(x_star), np.array(u))).max() == 0
        moved = right_hand_side(spec.system, consts)(np.array(x_star), np.zeros(len(u)))
        assert np.abs(moved).max() > 1  # without the offset the origin is not at rest


def test_a_wrong_operating_point_is_refused_by_check(tmp_path):
    """scpo check evaluates the plant at the declared (x*, u*): TORA at u* = 9 is not at rest
    (ẋ4 = 9 − 10), refused at its equilibrium block; at u* = 10 it is accepted."""
    text = (ARCH / "tora.scpo").read_text()
    assert "equilibrium { u = 10 }" in text
    wrong = tmp_path / "tora.scpo"
    wrong.write_text(text.replace("equilibrium { u = 10 }", "equilibrium { u = 9 }"))
    result = check_file(wrong)
    assert not result.ok
    messages = [d.message for d in result.diagnostics if d.severity == "error"]
    assert len(messages) == 1 and "[0, 0, 0, -1]" in messages[0], messages


def test_acc_backup_keeps_the_safe_distance_in_plain_numpy():
    """An independent rollout of acc.scpo's backup (dynamicsACC.m, RK4 with the spec's
    substeps) on the initial box's corners: the safe distance holds with the margin its
    comment states, and the compiled spec's g(θ₀) says the same to rounding."""
    pub = _published()
    spec = check_file(ARCH / "acc.scpo").spec
    K = np.array([[0.05, 0.5, 0, -0.05, -0.57, 0]])
    corners = np.array([[a, b, 0, c, d, 0] for a, b, c, d in
                        itertools.product([90, 110], [32, 32.2], [10, 11], [30, 30.2])], float)
    h, x, worst = float(spec.system.dt) / int(spec.system.substeps), corners, -np.inf
    for _ in range(int(spec.scenarios.horizon)):
        worst = max(worst, np.max(10 + 1.4 * x[:, 4] - (x[:, 0] - x[:, 3])))
        u = x @ K.T - 1
        for _ in range(int(spec.system.substeps)):
            k1 = pub.acc_rhs(x, u)
            k2 = pub.acc_rhs(x + h / 2 * k1, u)
            k3 = pub.acc_rhs(x + h / 2 * k2, u)
            k4 = pub.acc_rhs(x + h * k3, u)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    worst = max(worst, np.max(10 + 1.4 * x[:, 4] - (x[:, 0] - x[:, 3])))
    assert -17.0 < worst < -16.8
    from scpo_spec.compile.problem import compile_spec
    compiled = compile_spec(spec, ARCH)
    g = compiled.evaluator(compiled.family.theta0[None])[0].tolist()
    assert g[0] == pytest.approx(worst, abs=1e-9)


def test_published_variant_swaps_only_the_controller():
    """The generated spec keeps the plant, scenarios and ARCH-COMP constraint, and drops the
    backup, the trained policy, the operating point and the stability metric."""
    pub = _published()
    for b in pub.BENCHMARKS:
        text = pub.variant_text(b, "0" * 40)
        original = (ARCH / f"{b.name}.scpo").read_text()
        code = "\n".join(l.split("#")[0] for l in text.splitlines())
        for gone in ("backup ", "policy mlp", "equilibrium", "stability "):
            assert gone not in code, (b.name, gone)
        assert "policy onnx" in text and "0" * 12 in text
        for kept in ("der ", "initial ", "constraint "):
            assert [l for l in original.splitlines() if l.lstrip().startswith(kept)] == \
                   [l for l in text.splitlines() if l.lstrip().startswith(kept)]


def _fetched() -> bool:
    try:
        _published().fetched_commit()
        return True
    except _published().NotFetched:
        return False


@pytest.mark.skipif(not _fetched(),
                    reason="no published controllers in benchmarks/arch/published/ "
                           "(benchmarks/arch/fetch_published.py SOURCE): they have no licence "
                           "to ship")
def test_published_controllers_match_a_numpy_rollout(tmp_path, monkeypatch):
    """g(θ₀) of the published ACC and TORA networks as scpo evaluates them = a plain-numpy rollout
    of the same graph and ODE on the same scenarios (1e-9); the numpy graph itself agrees with
    onnxruntime where it runs the file (float32 there: 1e-5)."""
    pub = _published()
    commit = pub.fetched_commit()
    for b in pub.BENCHMARKS:  # the fetched files, beside the variants written in tmp_path
        target = tmp_path / pub.fetched(b).relative_to(pub.OUT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pub.fetched(b), target)
    monkeypatch.setattr(pub, "OUT", tmp_path)
    specs = pub.prepare(commit)
    for b in pub.BENCHMARKS:
        g, x0, horizon, dt, substeps = pub.scpo_g(specs[b.name])
        X, U, g_np = pub.numpy_rollout(b.name, pub.fetched(b), x0, horizon, dt, substeps)
        (g_scpo,) = g.values()
        assert np.all(np.isfinite(X)) and g_np < 0  # both published controllers are safe
        assert g_scpo == pytest.approx(g_np, abs=1e-9, rel=1e-12), b.name
    tora = pub.fetched(pub.BENCHMARKS[1])
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tora))
    x = np.random.default_rng(0).normal(size=(5, 4))
    ours = pub.numpy_network(tora)(x)
    theirs = np.array([session.run(None, {session.get_inputs()[0].name:
                                          xi.reshape(1, 1, 1, 4).astype(np.float32)})[0].ravel()
                       for xi in x])
    assert np.max(np.abs(ours - theirs)) < 1e-5


def test_published_without_fetched_files_says_what_to_run(tmp_path, monkeypatch, capsys):
    """Without fetch_published.py's copy, the script names the command to run and exits 2."""
    pub = _published()
    monkeypatch.setattr(pub, "OUT", tmp_path)
    assert pub.main(["--no-verify"]) == 2
    assert "fetch_published.py SOURCE" in capsys.readouterr().err


def _train_and_verify(name: str, tmp_path: Path) -> tuple:
    from scpo_spec.audit.verify import audit_run
    from scpo_spec.compile.problem import compile_spec
    from scpo_spec.engine.run import train
    from scpo_spec.engine.trained import load_run
    from scpo_spec.verify.prove import verify
    path = ARCH / f"{name}.scpo"
    result = check_file(path)
    res = train(path, result.spec, result.source.text, out=tmp_path / name)
    audit = audit_run(res.run_dir)
    run = load_run(res.run_dir)
    proof = verify(compile_spec(run.spec, run.base_dir), run.theta, time_limit=120)
    return audit, proof


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tora", "single_pendulum"])
def test_arch_benchmark_trains_to_certified_and_verifies(name, tmp_path):
    from scpo_spec.report import gather
    audit, proof = _train_and_verify(name, tmp_path)
    assert audit.ok and audit.complete, audit.problems
    assert audit.accepted_violations == 0 and audit.loss_last < audit.loss_first
    assert audit.holdout["violations"] == 0
    assert gather(tmp_path / name).certified
    assert proof.verdict == "PROVED", {k: (v.verdict, v.bound) for k, v in proof.constraints.items()}
    worst_holdout = audit.holdout["worst"]
    for metric, r in proof.constraints.items():
        assert r.bound >= worst_holdout[metric] - 1e-12  # a bound over the box covers its samples
