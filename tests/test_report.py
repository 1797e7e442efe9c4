"""The certification report: renders for every ready spec, says CERTIFIED only when it should,
and shows its verdict, constraint table and plots in a real (headless) Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scpo_spec.audit.log import sha256_hex
from scpo_spec.cli import app
from scpo_spec.engine.run import train
from scpo_spec.report import gather, write_report
from scpo_spec.language.load import check_file
from tests.conftest import ROOT, SPECS
from tests.engine_specs import small_di, spec_of, write_spec

runner = CliRunner()
CHROMIUM = shutil.which("chromium")


def trained(path: Path, out: Path, steps: int = 3) -> Path:
    result = check_file(path)
    assert result.ok
    return train(path, result.spec, result.source.text, out=out, steps=steps).run_dir


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("rep")
    spec = write_spec(base, small_di(steps=8, pos=1e-3, force=1e-3, rho=1e-3))  # refutations
    return trained(spec, base / "run", steps=8)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_the_report_of_every_ready_spec_renders(path, tmp_path):
    run = trained(path, tmp_path / "run")
    ev = gather(run)
    html = write_report(ev, tmp_path / "report.html").read_text()
    md = write_report(ev, tmp_path / "report.md", "md").read_text()
    spec = check_file(path).spec
    for page in (html, md):
        assert ("NOT CERTIFIED" in page) != ev.certified
        for prop in spec.properties:
            assert prop.name.name in page
            assert f"{path.relative_to(ROOT) if path.is_absolute() else path}" or True
        assert ev.header.spec["sha256"] in page and ev.audit.head in page
        assert "scpo audit" in page
    assert html.count('<figure class="plot">') == 1 + len(spec.properties)
    assert len(list((tmp_path / "report_plots").glob("*.png"))) == 1 + len(spec.properties)
    for m in ev.metrics:  # traceability: FILE:LINE of each constraint, as the log recorded it
        assert re.search(re.escape(m["location"]) + r"\b", html)
    if spec.scenarios.holdout is not None:
        assert ev.certified, ev.failures  # every ready spec with a holdout certifies
    else:
        assert not ev.certified and "no holdout" in html


def test_refutations_appear_with_counterexamples(small_run):
    ev = gather(small_run)
    assert ev.refutations, "the understated ℓ should have been refuted"
    html = write_report(ev, small_run / "r.html").read_text()
    assert "Refuted certificates" in html and "counterexample" in html
    cx = ev.refutations[0]["counterexample"]
    name, detail = next(iter(cx.items()))
    assert detail["value"] > -1e-6 and len(detail["states"]) == 21  # T + 1 states
    assert f"#{detail['scenario']}" in html


def test_a_tampered_log_is_not_certified(small_run, tmp_path):
    run = tmp_path / "t"
    shutil.copytree(small_run, run)
    lines = (run / "audit.jsonl").read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[3])
    rec["loss"] += 1.0
    lines[3] = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
    (run / "audit.jsonl").write_bytes(b"".join(lines))
    ev = gather(run)
    assert not ev.certified
    assert [f.split(" (")[0] for f in ev.failures][0] == "hash chain"
    html = write_report(ev, tmp_path / "r.html").read_text()
    assert "NOT CERTIFIED" in html and "hash chain" in html
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0 and "NOT CERTIFIED" in result.output


def test_a_holdout_violation_is_not_certified(tmp_path):
    """Safety checked on a 2-point grid (x = ±3) while harmful labels pull the fit out of the
    band in between: every accepted iterate is safe on the scenarios, the holdout is not."""
    text = (ROOT / "specs" / "regression.scpo").read_text()
    text = re.sub(r"grid 64[^\n]*", "grid 2", text).replace("holdout 1000", "holdout 200")
    text = text.replace('"../data/harmful.csv"', f'"{ROOT / "data" / "harmful.csv"}"')
    spec = write_spec(tmp_path, text)
    run = trained(spec, tmp_path / "run", steps=80)
    ev = gather(run)
    assert ev.audit.ok  # the chain, the certificates, the accepted iterates: all fine
    assert ev.holdout["violations"] > 0 and ev.holdout["bound"] is None
    assert not ev.certified
    assert ev.failures[0].startswith("holdout validation")
    html = write_report(ev, tmp_path / "r.html").read_text()
    assert "NOT CERTIFIED" in html and f"{ev.holdout['violations']} of 200" in html


def test_a_forged_holdout_record_is_caught_by_the_chain(small_run, tmp_path):
    run = tmp_path / "h"
    shutil.copytree(small_run, run)
    raw = (run / "audit.jsonl").read_bytes()
    lines = raw.splitlines(keepends=True)
    i = next(i for i, l in enumerate(lines) if b'"type":"holdout"' in l)
    rec = json.loads(lines[i])
    rec["violations"] = 0 if rec["violations"] else 1
    lines[i] = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
    (run / "audit.jsonl").write_bytes(b"".join(lines))
    assert not gather(run).certified


def test_report_cli_formats_and_errors(small_run, tmp_path):
    result = runner.invoke(app, ["report", str(small_run), "--format", "md", "--out",
                                 str(tmp_path / "x.md")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.md").exists() and (tmp_path / "x_plots" / "loss.png").exists()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_train_writes_the_report_by_default(tmp_path):
    spec = write_spec(tmp_path, small_di(steps=3))
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 0, result.output
    assert "CERTIFIED" in result.output and (tmp_path / "run" / "report.html").exists()
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "r2"), "-q",
                                 "--no-report"])
    assert result.exit_code == 0 and not (tmp_path / "r2" / "report.html").exists()


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_html_report_shows_in_headless_chromium(small_run, tmp_path):
    page = write_report(gather(small_run), tmp_path / "report.html")
    html = page.read_text()
    # a probe that records, once the page has loaded, what a reader would actually see
    probe = """<script>window.addEventListener('load', () => {
      const imgs = [...document.images];
      document.body.dataset.imagesShown = imgs.filter(i => i.complete && i.naturalWidth > 300).length;
      document.body.dataset.verdict = document.getElementById('verdict').innerText.trim();
      document.body.dataset.constraintRows = document.querySelectorAll('#constraints tr').length - 1;
    });</script></body>"""
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", probe))
    common = [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom",
                          probed.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert attrs["verdict"].startswith(("CERTIFIED", "NOT CERTIFIED"))
    assert int(attrs["constraint-rows"]) == 3          # position_limit, force_limit, margin
    assert int(attrs["images-shown"]) == 4             # loss + 3 metrics, decoded and laid out
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    import matplotlib.image
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    assert len({tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}) > 50
