"""`scpo verify RUN` leaves RUN/verify.json, chained to the log's head and naming the final θ;
`scpo audit` believes it only when it is consistent (and says why not, exit 1, the run's verdict
unchanged); the report and `scpo runs` show it from the audit, nothing re-run."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scpo_spec.audit.log import sha256_hex
from scpo_spec.audit.rundir import VERIFY_MAX_BYTES, RunDir
from scpo_spec.audit.verify import audit_run
from scpo_spec.cli import app
from scpo_spec.engine.run import train
from scpo_spec.verify.verdicts import overall_proof_verdict
from tests.engine_specs import small_di, spec_of
from tests.forgery import copy_run

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("trained")
    text = small_di(steps=2)
    return train(base / "spec.scpo", spec_of(text, base), text, out=base / "run").run_dir


@pytest.fixture(scope="module")
def verified(trained, tmp_path_factory) -> Path:
    run = copy_run(trained, tmp_path_factory.mktemp("verified") / "run")
    result = invoke("verify", run)
    assert result.exit_code == 0, result.output
    return run


def _verdict_word(run: Path) -> str:
    return json.loads(invoke("audit", run, "--json").stdout)["verdict"]


def _edit(run: Path, change) -> None:
    path = run / "verify.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


# ---- written, and audited ----
def test_verify_writes_a_record_chained_to_the_head_of_the_final_policy(verified):
    audit = audit_run(verified)
    rec = json.loads((verified / "verify.json").read_text(encoding="utf-8"))
    assert rec["format"] == "scpo-verify/1" and rec["verdict"] == "PROVED"
    assert rec["prev"] == audit.head == sha256_hex(
        (verified / "audit.jsonl").read_bytes().splitlines(keepends=True)[-1])
    assert rec["theta"] == audit.final_theta
    assert set(rec["constraints"]) == {"position_limit", "force_limit", "margin"}
    for c in rec["constraints"].values():
        assert c["verdict"] == "PROVED" and c["bound"] <= -c["margin"] and c["open_cells"] == 0
    assert rec["verifier"]["cells"] == 4096 and rec["verifier"]["time_limit"] == 300.0
    assert rec["box"] == {"states": ["position", "velocity"], "lo": [-1.0, -0.5],
                          "hi": [1.0, 0.5]}
    assert "linear" in rec["model"] and rec["seconds"] > 0
    assert not list(verified.glob(".verify.json*"))  # no temporary left behind


def test_audit_checks_the_record_and_says_its_verdict(verified):
    result = invoke("audit", verified)
    assert result.exit_code == 0, result.output
    assert "✓ verify: PROVED" in result.output
    out = json.loads(invoke("audit", verified, "--json").stdout)
    assert out["passed"] and out["verify"] == "PROVED" and out["verify_problems"] == []
    assert out["verify_record"]["constraints"]["margin"]["verdict"] == "PROVED"


def test_a_run_never_verified_audits_clean_with_verify_absent(trained):
    result = invoke("audit", trained)
    assert result.exit_code == 0 and "verify: absent" in result.output
    assert json.loads(invoke("audit", trained, "--json").stdout)["verify"] == "absent"


def test_no_record_writes_nothing(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    result = invoke("verify", run, "--no-record")
    assert result.exit_code == 0 and "PROVED in" in result.output
    assert "recorded" not in result.output and not (run / "verify.json").exists()
    out = json.loads(invoke("verify", run, "--no-record", "--json").stdout)
    assert out["record"] is None and not (run / "verify.json").exists()
    out = json.loads(invoke("verify", run, "--json").stdout)
    assert out["record"] == str(run / "verify.json") and (run / "verify.json").is_file()


def test_a_run_directory_that_cannot_be_written_still_gets_its_verdict(trained, tmp_path,
                                                                       monkeypatch):
    run = copy_run(trained, tmp_path / "run")

    def read_only(self, record):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(RunDir, "write_verify", read_only)
    result = invoke("verify", run)
    assert result.exit_code == 0, result.output  # the verdict's exit code
    assert "PROVED in" in result.output
    assert "not recorded" in result.output and "Read-only file system" in result.output
    assert "--no-record" in result.output and not (run / "verify.json").exists()


def test_a_failed_write_leaves_the_previous_record_whole(verified, tmp_path):
    run = copy_run(verified, tmp_path / "run")
    before = (run / "verify.json").read_bytes()
    (run / ".verify.json.tmp").mkdir()  # the temporary cannot be opened
    result = invoke("verify", run, "--json")
    assert result.exit_code == 0 and "not recorded" in result.output
    assert (run / "verify.json").read_bytes() == before
    assert invoke("audit", run).exit_code == 0


# ---- each inconsistency: audit fails (exit 1) and says why; the run's verdict stays ----
def _prev_of_record_0(run: Path):
    first = (run / "audit.jsonl").read_bytes().splitlines(keepends=True)[0]
    return lambda d: d.update(prev=sha256_hex(first))


def _undecided_but_overall_proved(d):
    d["constraints"]["margin"].update(verdict="UNDECIDED", open_cells=1, proved_fraction=0.5)


CORRUPTIONS = {
    "prev of another run": (lambda run: lambda d: d.update(prev="ab" * 32),
                            "nor any record of this log"),
    "prev of an earlier record": (_prev_of_record_0, "as of record 0"),
    "theta of another policy": (lambda run: lambda d: d.update(theta="cd" * 32),
                                "not the run's final accepted policy"),
    "a PROVED bound above -margin": (
        lambda run: lambda d: d["constraints"]["force_limit"].update(bound=-1e-7),
        "constraint 'force_limit': PROVED with the bound -1e-07, which is not ≤ −margin"),
    "an overall verdict that does not follow": (lambda run: _undecided_but_overall_proved,
                                                "does not follow from the constraints'"),
    "an overall UNDECIDED over proved constraints": (
        lambda run: lambda d: d.update(verdict="UNDECIDED"), "does not follow"),
    "a margin that is not the spec's": (
        lambda run: lambda d: d["constraints"]["margin"].update(margin=10.0),
        "margin 10.0, the spec's is 1e-06"),
    "a constraint left out": (lambda run: lambda d: d["constraints"].pop("margin"),
                              "are not the run's metrics"),
    "a bound as a string": (
        lambda run: lambda d: d["constraints"]["margin"].update(bound="-1"),
        "'bound': expected a number"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_audit_catches_an_inconsistent_record(verified, tmp_path, name):
    make, message = CORRUPTIONS[name]
    run = copy_run(verified, tmp_path / "run")
    _edit(run, make(run))
    _fails_audit_saying(run, message, _verdict_word(verified))


def _fails_audit_saying(run: Path, message: str, verdict: str) -> None:
    result = invoke("audit", run)
    assert result.exit_code == 1, result.output
    assert "✗ verify: inconsistent" in result.output and "audit FAILED" in result.output
    text = " ".join(result.output.split())
    assert "problem: " in text and message in text, text
    out = json.loads(invoke("audit", run, "--json").stdout)
    assert out["verify"] == "inconsistent" and not out["passed"]
    assert out["verify_record"] is None and any(message in p for p in out["verify_problems"])
    assert out["verdict"] == verdict  # a separate claim: the run's verdict does not change


@pytest.mark.parametrize("what", ["malformed JSON", "NaN", "too big", "a list"])
def test_audit_catches_a_file_that_is_not_a_record(verified, tmp_path, what):
    run = copy_run(verified, tmp_path / "run")
    path = run / "verify.json"
    message = {"malformed JSON": "is not a verify record", "NaN": "NaN is not a JSON number",
               "too big": "more than the 4.0 MiB a run's verify.json may hold",
               "a list": "expected an object"}[what]
    if what == "malformed JSON":
        path.write_text('{"format": "scpo-verify/1", ', encoding="utf-8")
    elif what == "NaN":
        _edit(run, lambda d: d["constraints"]["margin"].update(bound=float("nan")))
    elif what == "too big":
        path.write_bytes(b" " * (VERIFY_MAX_BYTES + 1))
    else:
        path.write_text("[]", encoding="utf-8")
    _fails_audit_saying(run, message, _verdict_word(verified))


def test_audit_refuses_a_fifo_in_place_of_the_record_without_blocking(verified, tmp_path):
    run = copy_run(verified, tmp_path / "run")
    (run / "verify.json").unlink()
    os.mkfifo(run / "verify.json")  # opening it for reading would block without a writer
    _fails_audit_saying(run, "is a FIFO, not a regular file",
                        _verdict_word(verified))


def test_audit_refuses_a_link_even_to_the_genuine_record(verified, tmp_path):
    run = copy_run(verified, tmp_path / "run")
    genuine = tmp_path / "elsewhere.json"
    (run / "verify.json").rename(genuine)
    (run / "verify.json").symlink_to(genuine)
    _fails_audit_saying(run, "is not a regular file (a symbolic link)", _verdict_word(verified))


def test_verify_again_replaces_an_inconsistent_record(verified, tmp_path):
    run = copy_run(verified, tmp_path / "run")
    _edit(run, lambda d: d.update(theta="cd" * 32))
    assert invoke("audit", run).exit_code == 1
    assert invoke("verify", run).exit_code == 0
    assert invoke("audit", run).exit_code == 0


def test_the_overall_rule():
    """One rule for the prover and the audit (verify/verdicts.py): a counterexample refutes,
    PROVED needs every constraint proved, anything else is UNDECIDED."""
    verdicts = ("PROVED", "COUNTEREXAMPLE", "UNDECIDED")
    for n in (1, 2, 3):
        for combo in itertools.product(verdicts, repeat=n):
            expected = ("COUNTEREXAMPLE" if "COUNTEREXAMPLE" in combo else
                        "PROVED" if set(combo) == {"PROVED"} else "UNDECIDED")
            assert overall_proof_verdict(combo) == expected, combo


# ---- the report and `scpo runs` ----
def test_the_report_shows_the_proof_from_the_record(verified, tmp_path):
    run = copy_run(verified, tmp_path / "run")
    rec = json.loads((run / "verify.json").read_text(encoding="utf-8"))
    bound = rec["constraints"]["force_limit"]["bound"]
    assert invoke("report", run, "--format", "md").exit_code == 0
    md = (run / "report.md").read_text(encoding="utf-8")
    section = md.split("## Proved over the whole initial set")[1].split("## Traceability")[0]
    assert "**PROVED** by `scpo verify`" in section
    assert "position ∈ \\[-1, 1\\], velocity ∈ \\[-0.5, 0.5\\]" in section
    assert f"| force_limit | PROVED | {bound:.6g} | -1e-06 | " in section
    assert "Model: the spec's discrete-time model (linear: x⁺ = A x + B u)" in section
    assert invoke("report", run).exit_code == 0
    html = (run / "report.html").read_text(encoding="utf-8")
    section = html.split('id="proved"')[1].split('id="traceability"')[0]
    assert "<strong>PROVED</strong> by <code>scpo verify</code>" in section
    assert f"<td>force_limit</td><td class=\"ok\">PROVED</td><td class=\"num\">{bound:.6g}</td>" \
        in section


def test_the_report_escapes_what_the_record_says(verified, tmp_path):
    run = copy_run(verified, tmp_path / "run")
    _edit(run, lambda d: d.update(model="<script>alert(1)</script> | `x` *y*"))
    assert invoke("audit", run).exit_code == 0  # the model line is a claim, not checked
    assert invoke("report", run).exit_code == 0
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert invoke("report", run, "--format", "md").exit_code == 0
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "Model: \\<script\\>alert(1)\\</script\\> \\| \\`x\\` \\*y\\*." in md


def test_the_report_says_not_verified_without_a_believed_record(trained, verified, tmp_path):
    assert invoke("report", trained, "--format", "md", "-o", tmp_path / "a.md").exit_code == 0
    text = (tmp_path / "a.md").read_text(encoding="utf-8")
    section = text.split("## Proved over the whole initial set")[1].split("## Traceability")[0]
    assert "Not verified (run `scpo verify " in section and "PROVED" not in section
    run = copy_run(verified, tmp_path / "run")
    _edit(run, lambda d: d.update(theta="cd" * 32))
    assert invoke("report", run, "-o", tmp_path / "b.html").exit_code == 0
    html = (tmp_path / "b.html").read_text(encoding="utf-8")
    section = html.split('id="proved"')[1].split('id="traceability"')[0]
    assert "Not verified: the run's verify record is not believed" in section
    assert "not the run&#39;s final accepted policy" in section and "<table" not in section


def test_runs_has_a_verify_column_from_the_audit(trained, verified, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    copy_run(trained, folder / "a_plain")
    copy_run(verified, folder / "b_proved")
    _edit(copy_run(verified, folder / "c_bad"), lambda d: d.update(prev="ab" * 32))
    rows = {Path(r["path"]).name: r for r in json.loads(invoke("runs", folder, "--json").stdout)}
    assert {k: r["verify"] for k, r in rows.items()} == {
        "a_plain": "absent", "b_proved": "PROVED", "c_bad": "inconsistent"}
    result = invoke("runs", folder)
    assert result.exit_code == 0 and " verify " in result.output
    lines = {ln.split()[0].rsplit("/", 1)[-1]: ln for ln in result.output.splitlines()
             if "/runs/" in ln}
    assert " PROVED " in lines["b_proved"] and " inconsistent " in lines["c_bad"]
    assert " — " in lines["a_plain"] and "PROVED" not in lines["a_plain"]


def test_a_resume_removes_the_record_of_the_head_it_passes(verified, tmp_path):
    run = copy_run(verified, tmp_path / "run")
    (tmp_path / "spec.scpo").write_text(small_di(steps=2), encoding="utf-8")
    result = invoke("train", tmp_path / "spec.scpo", "--out", run, "--resume", "--steps", "3",
                    "--no-report")
    assert result.exit_code == 0, result.output
    assert "verify.json was about the run before this resume: removed" in \
        " ".join(result.output.split())
    assert not (run / "verify.json").exists()
    audited = invoke("audit", run)
    assert audited.exit_code == 0 and "verify: absent" in audited.output
