"""The CLI around a finished run: `report -o` never replaces a run's own files or a file that is
not a report, the report is written whole or not at all, `train` says what is intact when its
last part (signature, report) fails or is interrupted, and `audit`'s own messages are exact."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scpo_spec.audit.verify import audit_run
from scpo_spec.cli import app
from scpo_spec.engine.run import train
from scpo_spec.engine.train import Trainer
from tests.engine_specs import small_di, spec_of, write_spec
from tests.forgery import copy_run, records

runner = CliRunner()


def invoke(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def ctrl_c_at_step(monkeypatch, n: int) -> None:
    """Trainer.step's n-th call raises KeyboardInterrupt, as Ctrl-C there would."""
    real, calls = Trainer.step, {"n": 0}

    def step(self, state):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, state)
    monkeypatch.setattr(Trainer, "step", step)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("finished")
    text = small_di(steps=3)
    return train(base / "spec.scpo", spec_of(text, base), text, out=base / "run").run_dir


def test_report_never_replaces_a_runs_own_files(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    for name in ("audit.jsonl", "state.npz", "spec.scpo", "other.html"):
        before = (run / name).read_bytes() if (run / name).exists() else None
        result = invoke(["report", run, "-o", run / name])
        assert result.exit_code == 2 and "inside the run directory" in result.output, name
        after = (run / name).read_bytes() if (run / name).exists() else None
        assert after == before, name
    assert audit_run(run).ok
    assert invoke(["report", run, "-o", run / "report.html"]).exit_code == 0  # its own report


def test_report_never_replaces_a_file_that_is_not_a_report(finished, tmp_path):
    spec = tmp_path / "mine.scpo"
    spec.write_text("my spec\n", encoding="utf-8")
    result = invoke(["report", finished, "-o", spec])
    assert result.exit_code == 2 and "is not a .html file" in result.output
    assert spec.read_text(encoding="utf-8") == "my spec\n"
    target = tmp_path / "r.html"
    for _ in range(2):  # a report replaces the previous one
        assert invoke(["report", finished, "-o", target]).exit_code == 0
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_a_report_that_cannot_be_put_in_place_leaves_nothing_behind(finished, tmp_path,
                                                                    monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))
    monkeypatch.setattr(os, "replace", full)
    result = invoke(["report", finished, "-o", tmp_path / "r.html"])
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert list(tmp_path.iterdir()) == []  # no half page, no temporary file


@pytest.mark.parametrize("failure, code, said", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "No space left on device"),
])
def test_train_says_the_run_is_complete_when_its_report_fails(tmp_path, monkeypatch, failure,
                                                              code, said):
    import scpo_spec.report as report
    spec = write_spec(tmp_path, small_di(steps=2))

    def fail(*args, **kwargs):
        raise failure
    monkeypatch.setattr(report, "write_report", fail)
    result = invoke(["train", spec, "--out", tmp_path / "run", "-q", "--no-tensorboard"])
    assert result.exit_code == code, result.output
    assert said in result.output and "the run itself is complete and logged" in result.output
    head = [ln for ln in result.output.splitlines() if ln.startswith("head ")]
    assert head and audit_run(tmp_path / "run", head=head[-1].split()[1]).ok


def test_a_key_that_cannot_sign_is_refused_before_training(tmp_path):
    spec = write_spec(tmp_path, small_di(steps=2))
    (tmp_path / "bad.pem").write_text("not a key\n", encoding="utf-8")
    for key in (tmp_path / "missing.pem", tmp_path / "bad.pem"):
        result = invoke(["train", spec, "--out", tmp_path / "run", "--sign", key, "-q"])
        assert result.exit_code == 2 and "--sign" in result.output, result.output
        assert not (tmp_path / "run").exists()


def test_audit_refuses_a_head_that_is_not_a_hash(finished):
    result = invoke(["audit", finished, "--head", "zzz"])
    assert result.exit_code == 2 and "64 hex digits" in result.output


def test_audit_names_an_interrupted_run_as_interrupted(tmp_path, monkeypatch):
    text = small_di(steps=6)
    ctrl_c_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run")
    result = invoke(["audit", tmp_path / "run"])
    assert result.exit_code == 1
    assert "run complete: interrupted after step 2" in result.output
    assert "no end record" not in result.output


def test_a_damaged_state_file_is_never_said_to_need_pickle(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / "state.npz").write_bytes(b"garbage\n")
    res = audit_run(run)
    assert not res.ok
    problem = next(p for p in res.problems if "state.npz" in p)
    assert "allow_pickle" not in problem and "damaged or not a state file" in problem


def test_the_interrupt_hint_keeps_the_asked_steps(tmp_path, monkeypatch):
    spec = write_spec(tmp_path, small_di(steps=6))
    ctrl_c_at_step(monkeypatch, 2)
    result = invoke(["train", spec, "--out", tmp_path / "run", "--steps", "9", "-q"])
    assert result.exit_code == 130
    assert "--resume --steps 9`" in result.output.replace("\n", "")


def _edit_header(field, value):
    def edit(recs):
        recs[0][field] = value
    return edit


def _edit_metric(i, key, value):
    def edit(recs):
        if key is None:
            recs[0]["metrics"][i] = value
        else:
            recs[0]["metrics"][i][key] = value
    return edit


def _edit_first_step(key, value):
    def edit(recs):
        next(r for r in recs if r["type"] == "step")[key] = value
    return edit


HAND_EDITS = {
    "metric is null": _edit_metric(0, None, None),
    "metric is a list": _edit_metric(0, None, [1, 2]),
    "margin is null": _edit_metric(0, "margin", None),
    "margin is text": _edit_metric(0, "margin", "x"),
    "smoothness is a list": _edit_metric(1, "smoothness", []),
    "metric has no name": _edit_metric(0, "name", None),
    "g0 is empty": _edit_first_step("g0", []),
    "G is ragged": _edit_first_step("G", [[1.0], [1.0, 2.0]]),
    "spec is empty": _edit_header("spec", {}),
    "settings are empty": _edit_header("settings", {}),
    "dimensions are empty": _edit_header("dimensions", {}),
}


@pytest.mark.parametrize("rehash", [False, True], ids=["as edited", "re-hashed"])
@pytest.mark.parametrize("name", list(HAND_EDITS))
def test_a_hand_edited_log_gets_a_message_never_a_traceback(finished, tmp_path, name, rehash):
    """`audit`, `report` and `export` on logs edited by hand (and re-hashed, as a forger
    would): each says what it finds, with exit status 1, and never certifies."""
    from tests.forgery import records, write_rechained
    run = copy_run(finished, tmp_path / "run")
    recs = records(run)
    HAND_EDITS[name](recs)
    if rehash:
        write_rechained(run, recs, rebind=True)
    else:
        import json
        (run / "audit.jsonl").write_text(
            "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs), encoding="utf-8")
    audit = invoke(["audit", run])
    report = invoke(["report", run, "-o", tmp_path / "r.html"])
    assert report.exit_code in (0, 1)
    if rehash and name in ("settings are empty", "dimensions are empty"):
        return  # consistent, and nothing a certificate rests on: the audit need not object
    assert audit.exit_code == 1 and "audit FAILED" in audit.output
    assert "CERTIFIED:" not in report.output.replace("NOT CERTIFIED", "")
    assert invoke(["export", run, "--format", "torchscript", "-o", tmp_path / "p.pt"]).exit_code \
        in (1, 2)


def test_ctrl_c_before_training_starts_says_interrupted(tmp_path, monkeypatch):
    from scpo_spec.cli import train_command
    spec = write_spec(tmp_path, small_di(steps=2))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_command, "_checked", interrupted)
    result = invoke(["train", spec, "--out", tmp_path / "run"])
    assert result.exit_code == 130 and "interrupted" in result.output
    assert not (tmp_path / "run").exists()


def test_force_never_moves_the_spec_it_is_training_aside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    spec = write_spec(out, small_di(steps=2))
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    result = invoke(["train", spec, "--out", out, "--force", "-q"])
    assert result.exit_code == 1 and "keep the spec outside --out" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "spec.scpo"]
    assert not list(tmp_path.glob("out.old-*"))


def test_a_markdown_reports_pictures_never_write_through_links(finished, tmp_path):
    """The PNGs go to <stem>_plots/: a link planted there used to be followed (onto a run's
    log, say); a run directory named like that folder is refused."""
    victim = copy_run(finished, tmp_path / "victim")
    log = (victim / "audit.jsonl").read_bytes()
    out = tmp_path / "out"
    (out / "x_plots").mkdir(parents=True)
    for stem in ("loss", "trajectories"):
        (out / "x_plots" / f"{stem}.png").symlink_to(victim / "audit.jsonl")
    assert invoke(["report", finished, "--format", "md", "-o", out / "x.md"]).exit_code == 0
    assert (victim / "audit.jsonl").read_bytes() == log
    assert not (out / "x_plots" / "loss.png").is_symlink()
    copy_run(finished, tmp_path / "rep_plots")
    result = invoke(["report", finished, "--format", "md", "-o", tmp_path / "rep.md"])
    assert result.exit_code == 1 and "is a run directory" in result.output
    (tmp_path / "sym_plots").symlink_to(victim)
    result = invoke(["report", finished, "--format", "md", "-o", tmp_path / "sym.md"])
    assert result.exit_code == 1 and "is a run directory" in result.output
    assert (victim / "audit.jsonl").read_bytes() == log


def test_a_run_interrupted_after_its_last_step_is_finished_by_resume(tmp_path, monkeypatch):
    """Ctrl-C during the last step: the step finishes and is logged, then an 'interrupted' end
    record.  --resume used to refuse ('already taken 3 steps'); it now runs the holdout and
    writes the end record."""
    import signal
    text = small_di(steps=3)
    real, calls = Trainer.step, {"n": 0}

    def step(self, state):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C while the last step runs: a stop between steps
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, state)
    monkeypatch.setattr(Trainer, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run")
    monkeypatch.undo()
    end = records(tmp_path / "run")[-1]
    assert end["type"] == "end" and end["reason"] == "interrupted after step 3"
    res = train(tmp_path / "spec.scpo", spec_of(text, tmp_path), text, out=tmp_path / "run",
                resume=True)
    assert res.ended == "completed" and res.state.step == 3
    assert [r["type"] for r in records(tmp_path / "run")[-3:]] == ["resume", "holdout", "end"]
    audit = audit_run(tmp_path / "run")
    assert audit.ok and audit.complete and audit.steps == 3, audit.problems


@pytest.mark.parametrize("content", ["garbage\n", '{"signature": "00", "head": "' + "0" * 64
                                     + '", "public_key": "ab"}\n'],
                         ids=["unreadable", "of another head"])
def test_a_signature_file_that_does_not_sign_this_head_fails_audit_and_report(
        finished, tmp_path, content):
    """Without --key the report already said NOT CERTIFIED for it while `scpo audit` passed."""
    from scpo_spec.report import gather
    run = copy_run(finished, tmp_path / "run")
    (run / "signature.json").write_text(content, encoding="utf-8")
    result = invoke(["audit", run])
    assert result.exit_code == 1 and "signature: invalid" in result.output
    assert not gather(run).certified


def test_audit_names_a_key_it_cannot_read(finished, tmp_path):
    result = invoke(["audit", finished, "--key", tmp_path / "missing.pub"])
    assert result.exit_code == 2 and "--key: cannot read key" in result.output


def test_runs_says_a_file_is_not_a_folder(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x\n", encoding="utf-8")
    result = invoke(["runs", path])
    assert result.exit_code == 2 and "not a folder" in result.output
    assert "no such folder" in invoke(["runs", tmp_path / "nothing"]).output
