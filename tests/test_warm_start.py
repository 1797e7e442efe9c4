"""`policy from "RUN" { head = "…" }`: a warm start from a trained run, read only after it passes
its audit (audit/warm_start.py, engine/warm.py), and a new run that never needs it again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scpo_spec.audit.records import theta_sha256
from scpo_spec.audit.verify import audit_run
from scpo_spec.engine.run import train
from scpo_spec.engine.trained import load_run
from scpo_spec.engine.warm import check_warm_start, compile_warm
from tests.engine_specs import small_di, spec_of
from tests.numerics import assert_close_across_paths

MLP_LINE = "policy mlp { hidden = [8]  activation = tanh  residual = backup  seed = 0 }"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A CERTIFIED run of small_di (3 steps) in runs/src, and its head."""
    home = tmp_path_factory.mktemp("warm")
    text = small_di(steps=3)
    (home / "spec.scpo").write_text(text, encoding="utf-8")
    res = train(home / "spec.scpo", spec_of(text, home), text, out=home / "runs" / "src")
    return home, res.head


def warm_text(run: str = "runs/src", head: str | None = None, steps: int = 2,
              base: str | None = None) -> str:
    label = f'policy from "{run}"' + (f' {{ head = "{head}" }}' if head else "")
    return (base or small_di(steps=steps)).replace(MLP_LINE, label)


def copy_of(home, tmp_path):
    """A copy of the source run one may tamper with, next to a spec in tmp_path."""
    shutil.copytree(home / "runs" / "src", tmp_path / "runs" / "src")
    return tmp_path


def only_error(text, home) -> str:
    diags = check_warm_start(spec_of(text, home), home)
    assert len(diags) == 1 and diags[0].severity == "error", diags
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("policy from"))
    assert diags[0].span.line == line  # located at the section
    return diags[0].message


def test_theta0_is_the_source_runs_final_policy(source):
    home, head = source
    text = warm_text(head=head)
    spec = spec_of(text, home)
    assert check_warm_start(spec, home) == []
    compiled, warm = compile_warm(spec, home)
    src = load_run(home / "runs" / "src", head=head)
    np.testing.assert_array_equal(compiled.family.theta0.numpy(), src.theta.numpy())
    g0 = compiled.evaluator(compiled.family.theta0[None])[0].numpy()
    final = src.metrics()
    assert_close_across_paths(g0, [final[name] for name in src.metric_names])
    assert warm.head == head and warm.theta0 == theta_sha256(src.theta.numpy())


def test_a_warm_started_run_never_reads_its_source_again(source, tmp_path):
    home, head = source
    base = copy_of(home, tmp_path)
    text = warm_text(head=head)
    (base / "spec.scpo").write_text(text, encoding="utf-8")
    res = train(base / "spec.scpo", spec_of(text, base), text, out=base / "runs" / "next")
    header = json.loads((base / "runs" / "next" / "audit.jsonl").read_text().splitlines()[0])
    init = json.loads((base / "runs" / "next" / "audit.jsonl").read_text().splitlines()[1])
    warm = header["warm_start"]
    assert warm["run"] == "runs/src" and warm["head"] == head
    assert init["theta"] == warm["theta0"]
    assert "policy mlp" in warm["spec_text"]
    shutil.rmtree(base / "runs" / "src")  # gone: audit, load_run and resume do without it
    a = audit_run(res.run_dir)
    assert a.ok and a.accepted_violations == 0
    run = load_run(res.run_dir)
    assert run.verdict.word == "CERTIFIED" and run.spec.policy.kind == "mlp"
    from scpo_spec.report import gather, write_report
    md = write_report(gather(res.run_dir), tmp_path / "r.md", "md").read_text()
    assert "**CERTIFIED**" in md and "**Warm start.** θ₀ is the last policy that the run " \
        f"`runs/src` accepted (its head `{head[:16]}…`)" in md
    assert all(v <= -run.margins[k] for k, v in run.metrics().items())
    # one step more (--resume --steps 3), the source still gone
    res2 = train(base / "spec.scpo", spec_of(text, base), text, out=base / "runs" / "next",
                 resume=True, steps=3)
    assert audit_run(res2.run_dir).ok and audit_run(res2.run_dir).steps == 3


def test_a_tampered_source_is_refused(source, tmp_path):
    home, _ = source
    base = copy_of(home, tmp_path)
    log = base / "runs" / "src" / "audit.jsonl"
    lines = log.read_text().splitlines()
    step = json.loads(lines[2])
    step["g0"] = [v - 0.5 for v in step["g0"]]  # a certificate's input changed, chain broken
    lines[2] = json.dumps(step)
    log.write_text("\n".join(lines) + "\n")
    message = only_error(warm_text(), base)
    assert "does not pass `scpo audit`" in message and "hash chain" in message, message


def test_a_wrong_head_is_refused(source):
    home, head = source
    wrong = ("0" if head[0] != "0" else "1") + head[1:]
    message = only_error(warm_text(head=wrong), home)
    assert "does not pass `scpo audit`" in message and wrong in message, message
    assert "not a head hash" in only_error(warm_text(head="abc"), home)


def test_a_missing_run_is_refused(source):
    home, _ = source
    assert "no run at 'runs/none'" in only_error(warm_text(run="runs/none"), home)


def test_a_source_of_other_dimensions_is_refused(source):
    home, _ = source
    three = small_di().replace("state position, velocity", "state position, velocity, jerk") \
        .replace("A = [[1, dt], [0, 1]]", "A = [[1, dt, 0], [0, 1, 0], [0, 0, 0.5]]") \
        .replace("B = [[0.5 * dt^2], [dt]]", "B = [[0.5 * dt^2], [dt], [0]]") \
        .replace("Q = diag(1, 1)", "Q = diag(1, 1, 1)") \
        .replace("initial velocity in [-0.5, 0.5]",
                 "initial velocity in [-0.5, 0.5]\n    initial jerk in [0, 0]") \
        .replace("expert linear { K = [[-10, 1]]", "expert linear { K = [[-10, 1, 0]]") \
        .replace("mean = [0, 0]  std = [1, 1]", "mean = [0, 0, 0]  std = [1, 1, 1]")
    message = only_error(warm_text(base=three), home)
    assert "does not fit this spec" in message
    assert "2 states (position, velocity) where this spec has 3" in message, message
    no_backup = warm_text().replace("backup lqr { Q = diag(1, 1)  R = diag(1) }",
                                    "backup linear { K = [[-1, -1.5]] }")
    assert "backup lqr where this spec has backup linear" in only_error(no_backup, home)


def test_observe_on_a_warm_start_is_refused(source):
    home, _ = source
    text = warm_text().replace('policy from "runs/src"',
                               'policy from "runs/src" { output_scale = 2 }')
    assert "also gives output_scale" in only_error(text, home)


@pytest.mark.slow  # three `scpo` processes, ~15 s
def test_cli_check_train_and_resume_without_the_source(source, tmp_path):
    import os
    import subprocess
    import sys
    home, head = source
    base = copy_of(home, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def scpo(*args):
        return subprocess.run([sys.executable, "-m", "scpo_spec.cli", *args], cwd=base,
                              capture_output=True, text=True, timeout=300, env=env)
    wrong = ("0" if head[0] != "0" else "1") + head[1:]
    (base / "spec.scpo").write_text(warm_text(head=wrong), encoding="utf-8")
    proc = scpo("check", "spec.scpo")
    assert proc.returncode == 1 and "spec.scpo:10:13: error: the run 'runs/src' does not pass " \
        "`scpo audit`" in proc.stdout, proc.stdout
    (base / "spec.scpo").write_text(warm_text(head=head), encoding="utf-8")
    proc = scpo("train", "spec.scpo", "--out", "runs/next", "-q", "--no-report",
                "--no-tensorboard")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.rmtree(base / "runs" / "src")
    proc = scpo("train", "spec.scpo", "--out", "runs/next", "--resume", "--steps", "3", "-q",
                "--no-report", "--no-tensorboard")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert audit_run(base / "runs" / "next").steps == 3
