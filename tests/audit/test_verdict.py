"""One verdict: every reader — `train` with and without its report, `audit`, `report`, `export`,
`runs`, `load_run` — says CERTIFIED or NOT CERTIFIED, and why, as audit/verdict.py gives it; and
the public `scpo_spec.load_run` is the engine's own, refusing exactly what `scpo audit` refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scpo_spec.audit.rundir import RunDir, RunError
from scpo_spec.audit.verdict import judge
from scpo_spec.cli import app
from scpo_spec.engine.run import train
from tests.engine_specs import small_di, spec_of, write_spec
from tests.forgery import copy_run, records, write_rechained

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
NO_HOLDOUT = "holdout validation (no holdout validation: the spec declares no `holdout` scenarios)"


def invoke(args) -> object:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def said(output: str) -> str:
    """The verdict line a command printed, without where its report went."""
    line = next(ln for ln in output.splitlines() if "CERTIFIED" in ln and "policy" not in ln)
    return line.split("): report ")[0] + (")" if "): report " in line else "")


# ---- one verdict ----
@pytest.fixture(scope="module")
def no_holdout(tmp_path_factory):
    """A spec without `holdout`, trained by `scpo train` with its report and with --no-report."""
    home = tmp_path_factory.mktemp("no_holdout")
    text = small_di(steps=2).replace("    holdout 50\n", "")
    assert "holdout" not in text
    spec = write_spec(home, text)
    with_report = invoke(["train", spec, "--out", home / "a", "-q", "--no-tensorboard"])
    without = invoke(["train", spec, "--out", home / "b", "-q", "--no-tensorboard",
                      "--no-report"])
    return home, with_report, without


def test_train_with_and_without_its_report_agree(no_holdout):
    _, with_report, without = no_holdout
    assert with_report.exit_code == 1, with_report.output
    assert without.exit_code == 1, without.output  # it exited 0, "audit passed"
    assert said(with_report.output) == said(without.output) == f"NOT CERTIFIED ({NO_HOLDOUT})"


def test_every_reader_gives_the_same_verdict(no_holdout, tmp_path):
    home, _, _ = no_holdout
    run = home / "b"
    expected = f"NOT CERTIFIED ({NO_HOLDOUT})"
    audit = invoke(["audit", run])
    assert audit.exit_code == 0 and "audit passed" in audit.output  # the log itself is sound
    assert said(audit.output) == expected
    as_json = json.loads(invoke(["audit", run, "--json"]).output)
    assert as_json["passed"] and as_json["verdict"] == "NOT CERTIFIED"
    assert as_json["failures"] == [NO_HOLDOUT]
    report = invoke(["report", run, "--format", "md", "-o", tmp_path / "r.md"])
    assert report.exit_code == 0 and said(report.output) == expected
    page = (tmp_path / "r.md").read_text(encoding="utf-8").replace("\\`", "`")
    assert f"**NOT CERTIFIED** — fails: {NO_HOLDOUT}." in page
    export = invoke(["export", run, "--format", "torchscript", "-o", tmp_path / "p.pt"])
    assert export.exit_code == 1 and expected in " ".join(export.output.split())
    rows = json.loads(invoke(["runs", home, "--json"]).output)
    assert [(r["verdict"], r["failures"]) for r in rows] == [("NOT CERTIFIED", [NO_HOLDOUT])] * 2
    import scpo_spec
    loaded = scpo_spec.load_run(run)
    assert not loaded.verdict.certified and loaded.verdict.failures == [NO_HOLDOUT]
    assert judge(run)[1].failures == [NO_HOLDOUT]


# ---- the public load_run ----
def test_the_public_load_run_is_the_engines_and_importing_the_package_needs_no_torch():
    code = ("import sys, inspect, scpo_spec; before = 'torch' in sys.modules; "
            "import scpo_spec.engine.trained as r; "
            "print(before, scpo_spec.load_run is r.load_run, scpo_spec.Run is r.Run, "
            "sorted(inspect.signature(scpo_spec.load_run).parameters))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split(" ", 3)[:3] == ["False", "True", "True"], out.stdout
    assert out.stdout.split(" ", 3)[3].strip() == str(
        ["allow_incomplete", "head", "key", "run_dir", "trust_code"])


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """A finished, CERTIFIED 3-step run, made once; tests tamper with copies."""
    base = tmp_path_factory.mktemp("genuine")
    text = small_di(steps=3)
    res = train(write_spec(base, text), spec_of(text, base), text, out=base / "run")
    return res.run_dir, res.head


def _refused(run: Path, match: str, **kw) -> None:
    from scpo_spec import load_run
    with pytest.raises(RunError, match=match):
        load_run(run, **kw)
    assert invoke(["audit", run, *_cli(kw)]).exit_code == 1  # and `scpo audit` refuses it too


def _cli(kw: dict) -> list:
    return [a for k, v in kw.items() if k in ("head", "key") for a in (f"--{k}", v)]


def test_load_run_loads_what_the_audit_passes(genuine):
    from scpo_spec import load_run
    run, head = genuine
    loaded = load_run(run, head=head)
    assert loaded.verdict.certified, loaded.verdict.failures
    assert invoke(["audit", run, "--head", head]).exit_code == 0


def test_load_run_refuses_an_edited_spec_copy(genuine, tmp_path):
    run = copy_run(genuine[0], tmp_path / "run")
    copy = RunDir(run).spec_files()[0]
    copy.write_text(copy.read_text(encoding="utf-8").replace("horizon 20", "horizon 2"),
                    encoding="utf-8")
    _refused(run, "stored spec checks .*spec.scpo is not the spec the log's header holds")


def test_load_run_refuses_a_signature_of_another_head(genuine, tmp_path):
    run = copy_run(genuine[0], tmp_path / "run")
    (run / "signature.json").write_text(json.dumps(
        {"signature": "00", "head": "0" * 64, "public_key": "ab"}), encoding="utf-8")
    _refused(run, "signature .*another head")


def test_load_run_refuses_an_accepted_step_whose_logged_g_violates(genuine, tmp_path):
    run = copy_run(genuine[0], tmp_path / "run")
    recs = records(run)
    step = [r for r in recs if r["type"] == "step" and r["accepted"]][-1]
    step["g_next"][0] = 0.25
    step["tries"][-1]["verified"][0] = 0.25
    recs[-1]["g"][0] = 0.25  # the end record repeats the final policy's g
    assert recs[-1]["type"] == "end" and recs[-1]["theta"] == step["theta_next"]
    write_rechained(run, recs, rebind=True)
    assert judge(run)[0].certificates_ok  # the certificates still recompute: only g violates
    _refused(run, "accepted iterates .*1 accepted iterate.*violate")


def test_load_run_refuses_an_incomplete_run_unless_allowed(genuine, tmp_path):
    from scpo_spec import load_run
    run = copy_run(genuine[0], tmp_path / "run")
    write_rechained(run, [r for r in records(run) if r["type"] not in ("holdout", "end")],
                    rebind=True)
    _refused(run, "run complete .*allow_incomplete=True")
    loaded = load_run(run, allow_incomplete=True)
    assert not loaded.verdict.certified and loaded.theta.numel() > 0


def test_load_run_refuses_another_head(genuine, tmp_path):
    from scpo_spec import load_run
    run, head = genuine
    _refused(run, "anchored head .*not at the anchor", head="0" * 64)
    assert load_run(run, head=head.upper()).verdict.certified


def test_load_run_refuses_a_signature_the_key_does_not_verify(genuine, tmp_path):
    from scpo_spec import load_run
    from scpo_spec.audit.signing import keygen, sign_head
    run = copy_run(genuine[0], tmp_path / "run")
    public = keygen(tmp_path / "key")
    other = keygen(tmp_path / "other")
    sign_head(tmp_path / "key", genuine[1], RunDir(run).signature)
    loaded = load_run(run, key=public)
    assert loaded.verdict.certified and "signature" in [c.name for c in loaded.verdict.checks]
    _refused(run, "signature .*does not verify with the given public key", key=other)


def test_a_stored_spec_that_no_longer_checks_fails_the_audit_and_load_run_alike(tmp_path):
    """Its regression data file is gone: the log is intact, but the spec it holds does not pass
    `scpo check` here.  The report said NOT CERTIFIED while `scpo audit` passed."""
    from scpo_spec import load_run
    data = tmp_path / "d.csv"
    data.write_text("".join((ROOT / "data" / "harmful.csv").read_text().splitlines(True)[:40]))
    text = (ROOT / "specs" / "regression.scpo").read_text().replace(
        '"../data/harmful.csv"', '"d.csv"').replace("grid 64", "grid 8")
    run = train(write_spec(tmp_path, text), spec_of(text, tmp_path), text, out=tmp_path / "run",
                steps=1).run_dir
    assert invoke(["audit", run]).exit_code == 0
    data.unlink()
    audit = invoke(["audit", run])
    assert audit.exit_code == 1 and "✗ the spec file" in audit.output, audit.output
    assert "problem: the spec stored in" in " ".join(audit.output.split())
    assert said(audit.output).startswith("NOT CERTIFIED (stored spec checks (the spec stored in")
    with pytest.raises(RunError, match="fails `scpo check` .*data file 'd.csv' does not exist"):
        load_run(run)
