"""A CERTIFIED nobody can make lie: run directories are data (no pickle, no import), the state
file is bound to the log, the log can be anchored (head, signature), the audit checks the numbers
it recomputes from, and a run that did not end — or whose holdout proves nothing — never
certifies.  Each test tampers with a real run the way a forger would."""

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scpo_spec import load_run
from scpo_spec.audit.log import sha256_hex
from scpo_spec.audit.rundir import RunDir, RunError
from scpo_spec.audit.verify import audit_run
from scpo_spec.cli import app
from scpo_spec.engine.run import train
from scpo_spec.engine.train import Trainer
from scpo_spec.compile.problem import compile_spec
from scpo_spec.report import gather
from tests.engine_specs import small_di, spec_of, write_spec
from tests.forgery import copy_run, records, write_rechained

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """A finished 6-step run, made once; tests tamper with copies."""
    base = tmp_path_factory.mktemp("genuine")
    text = small_di(steps=6)
    res = train(base / "spec.scpo", spec_of(text, base), text, out=base / "run")
    return res.run_dir, res.head


class Payload:
    """Unpickling this writes a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- run directories are data ----
def test_a_pickled_checkpoint_is_never_loaded(genuine, tmp_path):
    run = copy_run(genuine[0], tmp_path / "run")
    marker = tmp_path / "PWNED"
    (run / "state.npz").unlink()
    torch.save({"theta": Payload(marker)}, run / "checkpoint.pt")
    with pytest.raises(RunError, match="pickle"):
        load_run(run)
    result = runner.invoke(app, ["report", str(run)])
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["audit", str(run)])
    assert "older scpo-spec" in result.output
    assert not marker.exists()


def test_a_state_file_with_a_pickled_array_is_refused(genuine, tmp_path):
    """np.load(allow_pickle=False): an object array inside the .npz is an error, not a load."""
    run = copy_run(genuine[0], tmp_path / "run")
    marker = tmp_path / "PWNED"
    with np.load(run / "state.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["a_theta"] = np.array([Payload(marker)], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (run / "state.npz").write_bytes(buf.getvalue())
    with pytest.raises(RunError, match="cannot be read"):
        load_run(run)
    assert not audit_run(run).ok
    assert not marker.exists()


def test_reading_a_run_never_imports_a_module_it_names(genuine, tmp_path):
    """A header naming `evilmod:Env` makes neither `report`, `audit` nor `load_run` import it."""
    run = copy_run(genuine[0], tmp_path / "run")
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    gym = (ROOT / "specs" / "gym_pendulum.scpo").read_text(encoding="utf-8")
    text = gym.replace('"Pendulum-v1"', '"evilmod:Pendulum-v1"')
    assert text != gym
    recs = records(run)
    recs[0]["spec"].update(text=text, sha256=sha256_hex(text.encode()))
    write_rechained(run, recs)
    code = ("import sys; from scpo_spec.cli import app; from scpo_spec import load_run\n"
            "try:\n    load_run(sys.argv[1])\nexcept Exception as e:\n    print('refused:', e)\n"
            "app(['report', sys.argv[1]], standalone_mode=False)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert "refused:" in proc.stdout and "never runs the code" in proc.stdout, proc.stdout
    assert "NOT CERTIFIED" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists()


# ---- the state file is bound to the log ----
def test_swapping_theta_in_the_state_file_is_refused(genuine, tmp_path):
    run = copy_run(genuine[0], tmp_path / "run")
    rd = RunDir(run)
    state = rd.read_state()
    diverging = state.arrays["theta"] * 50.0
    state.arrays["theta"] = diverging
    from scpo_spec.audit.records import theta_sha256
    state.theta = theta_sha256(diverging)  # the forger keeps the file self-consistent
    rd.write_state(state)
    with pytest.raises(RunError, match="not the last one the log accepted"):
        load_run(run)
    res = audit_run(run)
    assert not res.ok and not res.state_ok
    result = runner.invoke(app, ["audit", str(run)])
    assert result.exit_code == 1 and "state.npz" in result.output
    ev = gather(run)
    assert not ev.certified
    assert any("state file" in f for f in ev.failures)


def test_a_state_file_from_another_point_of_the_log_is_refused(genuine, tmp_path):
    run = copy_run(genuine[0], tmp_path / "run")
    rd = RunDir(run)
    state = rd.read_state()
    state.head = records(run)[3]["prev"]  # the head of an earlier record
    rd.write_state(state)
    with pytest.raises(RunError, match=r"belongs to record 2, not the last one"):
        rd.bound_state()
    assert not audit_run(run).state_ok


# ---- anchors ----
def test_train_prints_the_head_and_audit_checks_it(tmp_path):
    spec = write_spec(tmp_path, small_di(steps=3))
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("head ") and len(last.split()[1]) == 64
    head = last.split()[1]
    assert runner.invoke(app, ["audit", str(tmp_path / "r"), "--head", head]).exit_code == 0
    bad = runner.invoke(app, ["audit", str(tmp_path / "r"), "--head", "0" * 64])
    assert bad.exit_code == 1 and "not at the anchor" in bad.output


def test_a_rehashed_log_passes_alone_but_not_against_its_anchor(genuine, tmp_path):
    """Shift one metric by −0.5 in every record and recompute the chain (and the state file's
    head): consistent, so the audit alone cannot tell — the anchor can."""
    src, head = genuine
    run = copy_run(src, tmp_path / "run")
    recs = records(run)
    for rec in recs:
        for key in ("g", "g0", "g_next"):
            if key in rec:
                rec[key][0] -= 0.5
        if "G" in rec:
            rec["G"][0] = [v - 0.5 for v in rec["G"][0]]
        for t in rec.get("tries", []):
            for key in ("verified", "certificate"):
                if t.get(key) is not None:
                    t[key][0] -= 0.5
    write_rechained(run, recs, rebind=True)
    alone = audit_run(run)
    assert alone.chain_ok and alone.certificates_ok, alone.problems
    anchored = runner.invoke(app, ["audit", str(run), "--head", head])
    assert anchored.exit_code == 1 and "not at the anchor" in anchored.output
    genuine_audit = runner.invoke(app, ["audit", str(src), "--head", head])
    assert genuine_audit.exit_code == 0, genuine_audit.output


def test_signed_runs(tmp_path):
    key = tmp_path / "key"
    assert runner.invoke(app, ["keygen", str(key)]).exit_code == 0
    assert (tmp_path / "key.pub").exists() and (key.stat().st_mode & 0o077) == 0
    again = runner.invoke(app, ["keygen", str(key)])
    assert again.exit_code == 1 and "never overwritten" in again.output
    spec = write_spec(tmp_path, small_di(steps=3))
    run = tmp_path / "r"
    result = runner.invoke(app, ["train", str(spec), "--out", str(run), "-q", "--sign", str(key)])
    assert result.exit_code == 0, result.output
    ok = runner.invoke(app, ["audit", str(run), "--key", str(tmp_path / "key.pub")])
    assert ok.exit_code == 0 and "signature: valid" in ok.output, ok.output
    assert "signature" in (run / "report.html").read_text()
    # another key does not verify it
    runner.invoke(app, ["keygen", str(tmp_path / "other")])
    other = runner.invoke(app, ["audit", str(run), "--key", str(tmp_path / "other.pub")])
    assert other.exit_code == 1 and "does not verify" in other.output
    # a re-hashed log is no longer the signed head
    recs = records(run)
    recs[2]["loss"] = 0.0
    write_rechained(run, recs)
    forged = runner.invoke(app, ["audit", str(run), "--key", str(tmp_path / "key.pub")])
    assert forged.exit_code == 1 and "another head" in forged.output


# ---- the audit checks what it recomputes from ----
def _tamper_first_step(genuine, tmp_path, edit) -> Path:
    run = copy_run(genuine[0], tmp_path / "run")
    recs = records(run)
    step = next(r for r in recs if r["type"] == "step")
    edit(step)
    write_rechained(run, recs, rebind=True)
    return run


def test_a_scaled_negative_S_is_refused(genuine, tmp_path):
    def edit(step):
        step["S"] = [[-1e6 * v for v in row] for row in step["S"]]
    res = audit_run(_tamper_first_step(genuine, tmp_path, edit))
    assert not res.ok
    assert any("positive semidefinite" in p or "bank norms" in p for p in res.problems)


def _nan_certificates(step):
    for t in step["tries"]:
        if t.get("certificate") is not None:
            t["certificate"] = [float("nan")] * len(t["certificate"])


def test_nan_in_G_and_in_the_certificate_is_refused(genuine, tmp_path):
    def edit(step):
        step["G"][0][0] = float("nan")
        _nan_certificates(step)
    res = audit_run(_tamper_first_step(genuine, tmp_path, edit))
    assert not res.ok and any("non-finite" in p for p in res.problems)


def test_nan_certificate_alone_is_refused(genuine, tmp_path):
    res = audit_run(_tamper_first_step(genuine, tmp_path, _nan_certificates))
    assert not res.ok and any("does not recompute" in p for p in res.problems)


def test_a_log_cut_before_its_end_is_never_certified(genuine, tmp_path):
    """Cut after step 4 of 6 (the forger drops the state file too): consistent, not complete."""
    run = copy_run(genuine[0], tmp_path / "run")
    recs = [r for r in records(run) if r["type"] not in ("holdout", "end")][:-2]
    write_rechained(run, recs)
    (run / "state.npz").unlink()
    res = audit_run(run)
    assert res.ok and not res.complete and res.steps == 4
    plain = runner.invoke(app, ["audit", str(run)])
    assert plain.exit_code == 1 and "run complete" in plain.output
    assert runner.invoke(app, ["audit", str(run), "--allow-incomplete"]).exit_code == 0
    ev = gather(run, compute_holdout=False)
    assert not ev.certified and any("run complete" in f for f in ev.failures)


def test_a_killed_run_audits_only_with_allow_incomplete(genuine, tmp_path):
    run = copy_run(genuine[0], tmp_path / "run")
    recs = [r for r in records(run) if r["type"] not in ("holdout", "end")]
    write_rechained(run, recs, rebind=True)
    assert runner.invoke(app, ["audit", str(run)]).exit_code == 1
    ok = runner.invoke(app, ["audit", str(run), "--allow-incomplete"])
    assert ok.exit_code == 0, ok.output
    md = tmp_path / "r.md"
    runner.invoke(app, ["report", str(run), "--format", "md", "-o", str(md)])
    assert "NOT CERTIFIED" in md.read_text() and "run complete" in md.read_text()


def test_a_vacuous_holdout_never_certifies(tmp_path):
    text = small_di(steps=2).replace("holdout 50", "holdout 1")
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "r")
    ev = gather(res.run_dir)
    assert ev.holdout["count"] == 1 and ev.holdout["violations"] == 0
    assert not ev.certified and any("says nothing" in f for f in ev.failures)


# ---- the engine ----
def test_a_non_finite_candidate_is_dropped_not_a_failed_step(tmp_path):
    text = small_di()
    trainer = Trainer(compile_spec(spec_of(text, tmp_path), tmp_path))
    state = trainer.initial_state()
    real = trainer.metrics

    def poisoned(thetas):  # the bank's last probe overflows
        g = real(thetas)
        if thetas.shape[0] > 1:
            g[-1] = np.inf
        return g
    trainer.metrics = poisoned
    new, record = trainer.step(state)
    assert record.dropped == [trainer.n - 1]
    assert record.accepted, record.reason
    assert np.all(np.isfinite(record.G)) and record.S[-1].tolist() == [0.0] * trainer.n
    assert record.tries[-1].xi[-1] == 0.0


def test_the_stall_names_the_blocking_metric(tmp_path):
    """ℓ far below the metric's curvature: refuted again and again, ℓ grows > 10³-fold; the
    audit, the CLI summary and the report name the metric, the scenario and the growth (a
    force bound the malicious expert pulls the policy into: ℓ grows ~10⁵-fold in 8 steps)."""
    text = small_di(steps=8, pos=1e-5, force=1e-5, rho=1e-5).replace("force in [-4, 4]",
                                                                      "force in [-1.7, 1.7]")
    spec = write_spec(tmp_path, text)
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "r"), "-q"])
    audit = audit_run(tmp_path / "r")
    assert audit.stall is not None and audit.stall["metric"] == "force_limit"
    assert audit.stall["ell_growth"] > 1e3 and audit.stall["scenario"] is not None
    summary = " ".join(result.output.split())
    assert "'force_limit' was refuted again and again" in summary and "-fold" in summary
    page = (tmp_path / "r" / "report.html").read_text()
    assert 'id="stall"' in page and "force_limit" in page


def test_a_run_of_rejected_steps_is_a_stall(tmp_path, monkeypatch):
    """Steps rejected in a row (here: the solver never returns an accurate answer, as it can
    fail so close to the bound) are named with the reason, from the step where they began."""
    from scpo_spec.compile.projection import ProjectionTemplate, Solution
    monkeypatch.setattr(ProjectionTemplate, "solve",
                        lambda self, *a: Solution("optimal_inaccurate", None, 0.0, None))
    text = small_di(steps=8)
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "r")
    audit = audit_run(res.run_dir)
    assert audit.ok and audit.accepted == 0, audit.problems
    stall = audit.stall
    assert stall["kind"] == "rejected" and stall["rejected_in_a_row"] == 8
    assert stall["from_step"] == 0 and stall["reason"] == "solver: optimal_inaccurate"


def test_the_interrupt_path_logs_the_state_reached(tmp_path, monkeypatch):
    """Ctrl-C after a few steps: the end record names the last committed θ, so the audit of the
    interrupted run (allowing incomplete) passes and --resume continues it."""
    text = small_di(steps=6)
    spec = spec_of(text, tmp_path)
    calls = {"n": 0}
    real_step = Trainer.step

    def step(self, state):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(self, state)
    monkeypatch.setattr(Trainer, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "spec.scpo", spec, text, out=tmp_path / "r")
    end = records(tmp_path / "r")[-1]
    assert end["type"] == "end" and end["steps"] == 3 and "after step 3" in end["reason"]
    audit = audit_run(tmp_path / "r")
    assert audit.ok, audit.problems
    monkeypatch.setattr(Trainer, "step", real_step)
    res = train(tmp_path / "spec.scpo", spec, text, out=tmp_path / "r", resume=True)
    assert res.state.step == 6
    final = audit_run(tmp_path / "r")
    assert final.ok and final.complete, final.problems


def test_a_kill_between_state_and_log_is_completed_on_resume(tmp_path):
    """The state file carries the record it belongs to: resume appends it instead of losing or
    repeating the step."""
    text = small_di(steps=6)
    spec = spec_of(text, tmp_path)
    res = train(tmp_path / "spec.scpo", spec, text, out=tmp_path / "r", steps=3)
    run = res.run_dir
    lines = (run / "audit.jsonl").read_bytes().splitlines(keepends=True)
    assert [json.loads(ln)["type"] for ln in lines[-3:]] == ["step", "holdout", "end"]
    # simulate the kill: the state was written for the last step (θ, moments: as after it),
    # whose line never reached the log
    rd = RunDir(run)
    state = rd.read_state()
    state.pending, state.head, state.seq = lines[-3], sha256_hex(lines[-3]), len(lines) - 3
    rd.write_state(state)
    rd.keep_state()
    (run / "audit.jsonl").write_bytes(b"".join(lines[:-3]))
    state, pending = rd.bound_state()
    assert pending and state.pending == lines[-3]
    res = train(tmp_path / "spec.scpo", spec, text, out=run, resume=True)
    assert res.state.step == 6
    after = (run / "audit.jsonl").read_bytes().splitlines(keepends=True)
    assert after[:len(lines) - 2] == lines[:-2]  # the step, appended as it was written
    assert sum(json.loads(ln)["type"] == "step" for ln in after) == 6  # none lost or repeated
    final = audit_run(run)
    assert final.ok and final.complete, final.problems


def _killed_before_the_end_record(genuine, tmp_path) -> tuple[Path, list[bytes]]:
    """A copy of the genuine run as a kill between its last two writes leaves it: the state file
    written for the end record, which never reached the log."""
    run = copy_run(genuine[0], tmp_path / "run")
    lines = (run / "audit.jsonl").read_bytes().splitlines(keepends=True)
    (run / "audit.jsonl").write_bytes(b"".join(lines[:-1]))
    assert RunDir(run).bound_state()[1] and audit_run(run).ok
    return run, lines


def _resume_refused(run: Path, tmp_path: Path, match: str) -> None:
    before = (run / "audit.jsonl").read_bytes()
    text = small_di(steps=6)
    with pytest.raises(RunError, match=match):
        train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=run, resume=True,
              steps=8)
    assert (run / "audit.jsonl").read_bytes() == before  # nothing was appended


def test_a_state_one_record_ahead_must_hold_what_that_record_leaves(genuine, tmp_path):
    """A forged θ in a state file that is one record ahead of the log: the audit used to pass it
    (and the report said CERTIFIED) because the pending record was never checked."""
    from scpo_spec.audit.records import theta_sha256
    run, _ = _killed_before_the_end_record(genuine, tmp_path)
    rd = RunDir(run)
    state = rd.read_state()
    state.arrays["theta"] = np.full_like(state.arrays["theta"], 5.0)
    state.theta = theta_sha256(state.arrays["theta"])
    rd.write_state(state)
    rd.keep_state()
    audit = audit_run(run)
    assert not audit.ok and not audit.state_ok
    assert any("does not leave as the last accepted one" in p for p in audit.problems)
    assert not gather(run).certified
    _resume_refused(run, tmp_path, "refusing to append")


def test_a_pending_record_that_cannot_be_read_is_never_appended(genuine, tmp_path):
    """`--resume` used to append whatever line the state file carried, leaving a log that no
    longer audits."""
    run, lines = _killed_before_the_end_record(genuine, tmp_path)
    rd = RunDir(run)
    state = rd.read_state()
    junk = json.dumps({"type": "junk", "seq": len(lines) - 1,
                       "prev": sha256_hex(lines[-2])}).encode() + b"\n"
    state.pending, state.head, state.seq = junk, sha256_hex(junk), len(lines) - 1
    rd.write_state(state)
    rd.keep_state()
    audit = audit_run(run)
    assert not audit.ok and any("cannot be read" in p for p in audit.problems)
    _resume_refused(run, tmp_path, "cannot be read")


def test_a_run_without_its_state_file_says_so(genuine, tmp_path):
    """A log handed over alone still audits; the report no longer claims a state file is bound."""
    run = copy_run(genuine[0], tmp_path / "run")
    (run / "state.npz").unlink()
    ev = gather(run)
    assert ev.certified
    state = next(c for c in ev.checks if c.name.startswith("state file"))
    assert state.name == "state file" and state.detail.startswith("absent")


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(margin=0.0, smoothness=0.001), "margin, smoothness"),
    (lambda m: m.update(name="<b>motor</b>"), "name"),
    (lambda m: m.update(formula="always abs(position) <= 99"), "formula"),
])
def test_the_headers_metrics_are_its_own_spec_texts(genuine, tmp_path, edit, field):
    """A re-hashed header whose metrics say other margins, ℓ, names or formulas than its own spec
    text: the audit used to check the certificates against the header's numbers and the report
    showed both side by side, CERTIFIED."""
    run = copy_run(genuine[0], tmp_path / "run")
    recs = records(run)
    edit(recs[0]["metrics"][0])
    write_rechained(run, recs, rebind=True)
    audit = audit_run(run)
    assert audit.chain_ok and not audit.spec_ok and not audit.ok
    assert "is not its spec text's" in audit.spec_problems[0]
    assert f"the header says {field.split(',')[0]} " in audit.spec_problems[0]
    assert not gather(run).certified


def test_the_spec_file_beside_the_log_is_the_headers(genuine, tmp_path):
    run = copy_run(genuine[0], tmp_path / "run")
    copy = run / "spec.scpo"
    copy.write_text(copy.read_text(encoding="utf-8")
                    + "constraint extra: always abs(velocity) <= 100  smoothness 5\n",
                    encoding="utf-8")
    audit = audit_run(run)
    assert not audit.ok and any("spec.scpo is not the spec" in p for p in audit.spec_problems)
    ev = gather(run)
    assert not ev.certified
    assert "spec.scpo is not the spec" in next(c.detail for c in ev.checks
                                                if c.name == "stored spec checks")
    result = runner.invoke(app, ["audit", str(run)])
    assert result.exit_code == 1 and "audit FAILED" in result.output


@pytest.mark.parametrize("edit, said", [
    (lambda recs: [r for r in recs if r["type"] == "step"][2].update(step=0), "step 0 where step 2"),
    (lambda recs: recs[-1].update(steps=99), "the end counts 99 steps"),
])
def test_steps_are_numbered_and_counted_as_the_log_holds_them(genuine, tmp_path, edit, said):
    """A forged state counter used to make --resume number steps from 0 again, and the audit
    passed it."""
    run = copy_run(genuine[0], tmp_path / "run")
    recs = records(run)
    edit(recs)
    write_rechained(run, recs, rebind=True)
    audit = audit_run(run)
    assert not audit.ok and any(said in p for p in audit.problems), audit.problems


@pytest.mark.parametrize("edit, said", [
    (lambda h: h["dimensions"].update(horizon=10000), "the header's horizon"),
    (lambda h: h["dimensions"].update(scenarios=1000000), "the header's scenarios"),
    (lambda h: h["settings"].update(radius=1e-9), "the header's settings"),
    (lambda h: h["seeds"].update(scenarios=12345), "the header's seeds"),
    (lambda h: h["spec"].update(name="certified_elsewhere"), "the header's name"),
])
def test_the_headers_claims_beside_the_metrics_are_its_spec_texts(genuine, tmp_path, edit,
                                                                  said):
    """A re-hashed header claiming another horizon, radius, seed or name than its own spec
    text: the report used to print those claims under CERTIFIED."""
    run = copy_run(genuine[0], tmp_path / "run")
    recs = records(run)
    edit(recs[0])
    write_rechained(run, recs, rebind=True)
    audit = audit_run(run)
    assert not audit.ok and any(said in p for p in audit.spec_problems), audit.problems
    assert not gather(run).certified


# ---- crashes from structure (issue: one owner for the run directory) ----
def test_a_constant_named_like_spectral_radius_needs_no_linearisation(tmp_path):
    """The evaluator asks the compiler which metrics read spectral_radius; it used to search the
    formula text, so `spectral_radius_cap` on a static system (no linearisation) crashed
    `scpo compile` after passing `check`."""
    text = (ROOT / "specs" / "regression.scpo").read_text(encoding="utf-8")
    text = text.replace("constraint band: always abs(y) <= 1.4",
                        "const spectral_radius_cap = 1.4\n"
                        "constraint band: always abs(y) <= spectral_radius_cap")
    text = text.replace('"../data/harmful.csv"', f'"{ROOT / "data" / "harmful.csv"}"')
    spec = write_spec(tmp_path, text)
    assert runner.invoke(app, ["check", str(spec)]).exit_code == 0
    for emit in ("metrics", "qcqp"):
        result = runner.invoke(app, ["compile", str(spec), "--emit", emit])
        assert result.exit_code == 0 and result.exception is None, result.output
    compiled = compile_spec(spec_of(text, tmp_path), tmp_path)
    assert not compiled.evaluator.needs_spectral
    assert compiled.evaluator(compiled.family.theta0[None]).shape == (1, 1)


def test_check_rollout_json_reports_each_metric_at_theta0(tmp_path):
    """LANGUAGE-v2 "CLI": each file's object holds `metrics` (name → g(θ₀)) and `safe`."""
    safe = write_spec(tmp_path, small_di(), "safe.scpo")
    unsafe = write_spec(tmp_path, small_di().replace("abs(position) <= 1.5",
                                                     "abs(position) <= 0.5"), "unsafe.scpo")
    result = runner.invoke(app, ["check", str(safe), str(unsafe), "--json", "--rollout"])
    assert result.exit_code == 1
    files = json.loads(result.stdout)["files"]
    assert set(files[0]["metrics"]) == {"position_limit", "force_limit", "margin"}
    assert files[0]["safe"] is True and files[1]["safe"] is False
    assert files[1]["metrics"]["position_limit"] > 0
    compiled = compile_spec(spec_of(small_di(), tmp_path), tmp_path)
    g = compiled.evaluator(compiled.family.theta0[None])[0].tolist()
    assert list(files[0]["metrics"].values()) == g


def test_a_zero_margin_is_never_printed_as_minus_zero(tmp_path):
    """`needs ≤ 0`, not `≤ -0`: the unsafe-start message and the end summary."""
    text = small_di().replace("margin 1e-6", "margin 0").replace("abs(position) <= 1.5",
                                                                 "abs(position) <= 0.5")
    spec = write_spec(tmp_path, text)
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "must be ≤ 0" in result.output and "-0" not in result.output
    ok = write_spec(tmp_path, small_di(steps=1).replace("margin 1e-6", "margin 0"), "ok.scpo")
    result = runner.invoke(app, ["train", str(ok), "--out", str(tmp_path / "r2"), "-q"])
    assert result.exit_code == 0 and "-0 " not in result.output.replace("-0.", "")


@pytest.mark.parametrize("cut", [1, 2], ids=["end pending", "holdout pending"])
def test_a_holdout_or_end_record_carried_by_the_state_is_made_again_not_appended(
        genuine, tmp_path, cut):
    """A state file one record ahead carrying a holdout (or end) record: its figures cannot be
    checked from the log, so --resume used to append a forged '0 of 100000' holdout as is.  Now
    the run finishes itself: its own holdout, its own end."""
    run = copy_run(genuine[0], tmp_path / "run")
    lines = (run / "audit.jsonl").read_bytes().splitlines(keepends=True)
    (run / "audit.jsonl").write_bytes(b"".join(lines[:-cut]))
    rd = RunDir(run)
    state = rd.read_state()
    carried = json.loads(lines[-cut])
    if carried["type"] == "holdout":
        carried["count"] = 100000  # what a forger would claim
    line = json.dumps({**carried, "seq": len(lines) - cut,
                       "prev": sha256_hex(lines[-cut - 1])}).encode() + b"\n"
    state.pending, state.head, state.seq = line, sha256_hex(line), len(lines) - cut
    rd.write_state(state)
    rd.keep_state()
    text = small_di(steps=6)
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=run, resume=True)
    assert res.state.step == 6
    recs = records(run)
    assert recs[-1]["type"] == "end" and recs[-2]["type"] == "holdout"
    assert recs[-2]["count"] != 100000
    audit = audit_run(run)
    assert audit.ok and audit.complete, audit.problems
