"""Audit log, `scpo audit`, resume after a kill, `load_run`, and the train/compile/check CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scpo_spec import load_run
from scpo_spec.audit.log import sha256_hex
from scpo_spec.audit.verify import audit_run
from scpo_spec.cli import app
from scpo_spec.engine.run import train
from tests.engine_specs import small_di, spec_of, write_spec
from tests.forgery import copy_run, rechain

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    text = small_di(steps=10)
    res = train(base / "spec.scpo", spec_of(text, base), text, out=base / "run")
    return res.run_dir


def lines_of(run: Path) -> list[bytes]:
    return (run / "audit.jsonl").read_bytes().splitlines(keepends=True)


def rewrite(run: Path, lines: list[bytes]) -> None:
    (run / "audit.jsonl").write_bytes(b"".join(lines))


# ---- the chain ----
def test_a_clean_run_audits_clean(finished_run):
    a = audit_run(finished_run)
    assert a.ok and a.complete and not a.problems
    assert a.steps == 10 and a.accepted + a.rejected == 10
    assert a.head == sha256_hex(lines_of(finished_run)[-1])
    records = [json.loads(l) for l in lines_of(finished_run)]
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert records[0]["type"] == "header" and records[1]["type"] == "init"
    assert records[-1]["type"] == "end"
    step = records[2]
    for key in ("g0", "G", "S", "bank_norms", "target", "tries", "accepted", "reason", "loss",
                "theta", "theta_next", "timing"):
        assert key in step
    assert {"ell", "status", "solve_time", "xi", "certificate", "verified",
            "observed_curvature"} <= set(step["tries"][0])


@pytest.mark.parametrize("tamper", ["flip_digit", "drop_line", "swap_lines", "edit_reason"])
def test_a_tampered_log_fails_the_chain(finished_run, tmp_path, tamper):
    run = copy_run(finished_run, tmp_path / "t")
    lines = lines_of(run)
    if tamper == "flip_digit":
        i = 4
        rec = json.loads(lines[i])
        rec["loss"] = rec["loss"] * 0.5
        lines[i] = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
    elif tamper == "drop_line":
        del lines[5]
    elif tamper == "swap_lines":
        lines[4], lines[5] = lines[5], lines[4]
    else:
        lines[3] = lines[3].replace(b'"verified"', b'"verified" ', 1)
    rewrite(run, lines)
    a = audit_run(run)
    assert not a.chain_ok and not a.ok
    result = runner.invoke(app, ["audit", str(run)])
    assert result.exit_code == 1 and "FAILED" in result.output


def test_a_rechained_forgery_fails_the_certificates(finished_run, tmp_path):
    """Editing a rollout value and recomputing every hash keeps the chain, but the certificate
    no longer recomputes from the logged numbers."""
    run = copy_run(finished_run, tmp_path / "f")
    lines = lines_of(run)
    i = next(i for i, l in enumerate(lines) if json.loads(l).get("accepted"))
    rec = json.loads(lines[i])
    rec["G"][0][0] -= 0.3
    lines[i] = json.dumps(rec).encode() + b"\n"
    rewrite(run, rechain(lines))
    a = audit_run(run)
    assert a.chain_ok and not a.certificates_ok and not a.ok
    assert any("does not recompute" in p for p in a.problems)


def test_a_forged_violation_is_counted(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "v")
    lines = lines_of(run)
    i = next(i for i, l in enumerate(lines) if json.loads(l).get("accepted"))
    rec = json.loads(lines[i])
    rec["g_next"][0] = 0.25
    rec["tries"][-1]["verified"][0] = 0.25
    lines[i] = json.dumps(rec).encode() + b"\n"
    rewrite(run, rechain(lines))
    a = audit_run(run)
    assert a.accepted_violations >= 1 and not a.ok


def test_audit_json_has_the_promised_fields(finished_run):
    result = runner.invoke(app, ["audit", str(finished_run), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in ("chain_ok", "certificates_ok", "steps", "accepted", "rejected", "refutations",
                "accepted_violations", "loss_first", "loss_last", "worst", "head"):
        assert key in data
    assert data["chain_ok"] and data["certificates_ok"] and data["accepted_violations"] == 0
    assert set(data["worst"]) == {"position_limit", "force_limit", "margin"}
    assert data["head"] == sha256_hex(lines_of(finished_run)[-1])


def test_audit_needs_no_torch(finished_run):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from scpo_spec.cli import app\n"
            f"app(['audit', {str(finished_run)!r}, '--json'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["certificates_ok"] is True


def test_audit_of_a_missing_or_empty_dir(tmp_path):
    result = runner.invoke(app, ["audit", str(tmp_path / "nope")])
    assert result.exit_code == 2
    result = runner.invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output


# ---- resume after a kill ----
@pytest.mark.parametrize("when", ["mid_run"])
def test_resume_after_a_kill_continues_the_chain(tmp_path, when):
    text = small_di(steps=100_000)
    spec = write_spec(tmp_path, text)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "scpo_spec.cli", "train", str(spec), "--out",
                             str(run), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = run / "audit.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if log.exists() and log.read_bytes().count(b'"type":"step"') >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = lines_of(run)
    assert not any(b'"type":"end"' in l for l in before), "the run finished before the kill"
    killed_at = sum(b'"type":"step"' in l for l in before)
    result = runner.invoke(app, ["train", str(spec), "--out", str(run), "--resume",
                                 "--steps", str(killed_at + 4), "-q"])
    assert result.exit_code == 0, result.output
    after = lines_of(run)
    complete = [l for l in before if l.endswith(b"\n")]
    assert after[:len(complete)] == complete  # nothing logged was lost or rewritten
    resume = json.loads(after[len(complete)])
    assert resume["type"] == "resume"
    assert resume["prev"] == sha256_hex(complete[-1])
    a = audit_run(run)
    assert a.ok and a.complete, a.problems
    assert a.steps == killed_at + 4


def test_resume_refuses_a_changed_spec(tmp_path):
    text = small_di(steps=3)
    spec = write_spec(tmp_path, text)
    assert runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "r"), "-q"]).exit_code == 0
    spec.write_text(text.replace("lr = 0.05", "lr = 0.04"))
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "r"), "--resume",
                                 "--steps", "6", "-q"])
    assert result.exit_code == 1 and "spec changed" in result.output


def test_resume_refuses_a_tampered_log(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "x")
    lines = lines_of(run)
    del lines[3]
    rewrite(run, lines)
    header = json.loads(lines[0])
    spec = write_spec(tmp_path, header["spec"]["text"])
    result = runner.invoke(app, ["train", str(spec), "--out", str(run), "--resume", "--steps",
                                 "20", "-q"])
    assert result.exit_code == 1 and "hash chain" in result.output


# ---- using what was trained ----
def test_load_run_gives_the_spec_and_a_usable_policy(finished_run):
    r = load_run(finished_run)
    assert r.spec.name.name == "small_di"
    x = torch.tensor([[0.5, -0.2], [0.0, 0.0], [-1.0, 0.3]], dtype=torch.float64)
    u = r.policy(x)
    assert u.shape == (3, 1) and u.dtype == torch.float64
    from scpo_spec.compile.problem import compile_spec
    family = compile_spec(r.spec, finished_run).family
    expected = family.forward(r.theta[None], x[None])[0]
    assert torch.allclose(u, expected, atol=1e-12)
    last = [json.loads(l) for l in lines_of(finished_run)][-1]
    from scpo_spec.engine.train import theta_hash
    assert theta_hash(r.theta) == last["theta"]


def test_load_run_of_a_non_run_is_a_clear_error(tmp_path):
    from scpo_spec.engine.run import RunError
    with pytest.raises(RunError, match="not a run directory"):
        load_run(tmp_path)


# ---- the CLI ----
def test_train_cli_end_to_end(tmp_path):
    spec = write_spec(tmp_path, small_di(steps=4))
    run = tmp_path / "cli_run"
    result = runner.invoke(app, ["train", str(spec), "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "audit passed" in result.output
    assert (run / "audit.jsonl").exists() and (run / "state.npz").exists()
    assert not list(run.glob("*.pt"))  # nothing pickled in a run
    assert (run / "spec.scpo").read_text() == spec.read_text()


def test_train_cli_refuses_an_unsafe_start_with_the_location(tmp_path):
    text = small_di().replace("always abs(position) <= 1.5", "always abs(position) <= 0.5")
    spec = write_spec(tmp_path, text)
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "refuses to start" in result.output and "position_limit" in result.output
    assert f"{spec}:19" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_train_cli_rejects_an_invalid_spec(tmp_path):
    spec = write_spec(tmp_path, small_di().replace("tanh", "tanhh"))
    result = runner.invoke(app, ["train", str(spec)])
    assert result.exit_code == 2 and "unknown activation" in result.output  # a spec error: 2


def test_train_cli_missing_solver_is_a_clear_error(tmp_path, monkeypatch):
    import cvxpy as cp
    installed = [s for s in cp.installed_solvers() if s != "GUROBI"]
    monkeypatch.setattr(cp, "installed_solvers", lambda: installed)  # as without the extra
    spec = write_spec(tmp_path, small_di(extra="solver gurobi"))
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "not installed" in result.output
    assert "scpo-spec[gurobi]" in result.output and "Traceback" not in result.output


def test_check_rollout(tmp_path):
    spec = write_spec(tmp_path, small_di())
    result = runner.invoke(app, ["check", str(spec), "--rollout"])
    assert result.exit_code == 0 and "training can start" in result.output
    bad = write_spec(tmp_path, small_di().replace("<= 1.5", "<= 0.5"), "bad.scpo")
    result = runner.invoke(app, ["check", str(bad), "--rollout"])
    assert result.exit_code == 1 and "would refuse" in result.output


def test_compile_emits_the_qcqp_and_the_metrics(tmp_path):
    spec = write_spec(tmp_path, small_di())
    result = runner.invoke(app, ["compile", str(spec), "--emit", "qcqp"])
    assert result.exit_code == 0, result.output
    for name in ("position_limit", "force_limit", "margin", "trust", "minimise", "ξ"):
        assert name in result.output
    result = runner.invoke(app, ["compile", str(spec), "--emit", "metrics"])
    assert result.exit_code == 0
    assert "max_{t∈[0:19]}" in result.output and "spec.scpo:19" in result.output
