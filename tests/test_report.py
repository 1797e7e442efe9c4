"""The certification report: renders for every ready spec, says CERTIFIED only when it should,
and shows its verdict, constraint table and plots in a real (headless) Chromium."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scpo_spec.audit.log import sha256_hex
from scpo_spec.cli import app
from scpo_spec.engine.run import train
from scpo_spec.report import gather, write_report
from scpo_spec.report.render import md_code, md_fence, md_text
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


# --- spec text is data, never markup -------------------------------------------------------------
# Every string the spec author controls — the title, comments, the data path, the spec's file name,
# the run directory — carries payloads that would run script, restyle the page or draw a fake
# green banner over a NOT CERTIFIED run (no holdout) if a report pasted them in as markup.
HIDE = "</pre><style>#verdict{display:none}</style>"
BANNER = '<div class="verdict certified" style="background:#e3f4e8">CERTIFIED</div>'
TITLE = "<img src=x onerror=alert(2)></pre><script>alert(3)</script><style>body{display:none}</style> | ```"
DATA = "d/<script>alert(4)</script>.csv"
SPEC_NAME = "<img src=x onerror=alert(5)>|`p`.scpo"
RUN_NAME = "run<svg onload=alert(6)>"
PAYLOAD_SPEC = f"""\
# {HIDE}{BANNER}
# <script>document.title='PWNED'</script> ``` | <img src=x onerror=alert(1)> `x`
spec payload "{TITLE}"
system static {{ state x  input y }}
policy mlp {{ hidden = [4]  activation = tanh  seed = 0 }}
scenarios {{
    initial x in [-3, 3]
    grid 4
    seed 0
    horizon 1
}}
constraint band: always abs(y) <= 1.4   smoothness 20   # {HIDE}
objective regression {{ data "{DATA}"  inputs x  targets y  loss mse }}
train {{
    steps 2
    optimizer adam {{ lr = 1e-2 }}
    directions 4
    perturbation 1e-3
    radius 0.5
    margin 1e-6
    seed 0
}}
"""
PAYLOADS = [HIDE, BANNER, TITLE, DATA, SPEC_NAME, RUN_NAME, "<script>document.title='PWNED'</script>"]


class _Dom(HTMLParser):
    """Every element (tag, attributes, the text inside it) of an HTML document, as parsed."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.elements, self._open, self.text = [], [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": []}
        self.elements.append(el)
        if tag not in ("img", "meta", "br", "hr", "input", "link"):
            self._open.append(el)

    def handle_endtag(self, tag):
        while self._open and self._open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        self.text.append(data)
        for el in self._open:
            el["text"].append(data)

    def all(self, tag: str) -> list:
        return [el for el in self.elements if el["tag"] == tag]

    def text_of(self, el) -> str:
        return "".join(el["text"])


@pytest.fixture(scope="module")
def payload_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("payload")
    data = base / DATA
    data.parent.mkdir(parents=True)
    data.write_text("".join((ROOT / "data" / "harmful.csv").read_text().splitlines(True)[:30]))
    spec = write_spec(base, PAYLOAD_SPEC, name=SPEC_NAME)
    return spec, trained(spec, base / RUN_NAME, steps=2)


def _no_injected_markup(dom: _Dom, allowed_scripts: int = 0):
    """No element or attribute that a payload could have brought in."""
    assert len(dom.all("script")) == allowed_scripts
    assert not dom.all("svg") and not dom.all("iframe") and not dom.all("object")
    for el in dom.elements:
        events = [a for a in el["attrs"] if a.startswith("on")]
        style = el["attrs"].get("style")  # only Markdown's column alignment sets one
        assert not events and style in (None, "text-align:right"), el


GUARD = "<script>window.alert = () => { document.documentElement.dataset.alerted = 1 }</script>"
PROBE = """<script>window.addEventListener('load', () => {
  const v = document.getElementById('verdict'), s = getComputedStyle(v), r = v.getBoundingClientRect();
  document.body.dataset.verdictShown = +(s.display !== 'none' && s.visibility === 'visible'
    && +s.opacity === 1 && r.width > 300 && r.height > 10 && v.offsetParent !== null);
  document.body.dataset.verdict = v.innerText.trim();
  document.body.dataset.bodyShown = +(getComputedStyle(document.body).display !== 'none');
});</script>"""


@pytest.fixture(scope="module")
def payload_dom(payload_run, tmp_path_factory):
    """The payload run's HTML report as Chromium holds it after load (scripts run), with a guard
    that records a dialog instead of blocking on it and a probe of what a reader sees."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    tmp = tmp_path_factory.mktemp("payload_html")
    ev = gather(payload_run[1])
    html = write_report(ev, tmp / "report.html").read_text()
    head, _, tail = html.rpartition("</body>")
    probed = tmp / "probed.html"
    probed.write_text((head + PROBE + "</body>" + tail).replace("<head>", "<head>" + GUARD, 1))
    dom = subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={tmp / 'profile'}",
                          "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=60).stdout
    return ev, _Dom(dom)


def test_spec_text_is_text_in_the_html_report_in_headless_chromium(payload_dom):
    """No payload ran or became an element; each is on the page as text."""
    ev, dom = payload_dom
    assert "data-alerted" not in dom.all("html")[0]["attrs"]
    _no_injected_markup(dom, allowed_scripts=2)  # guard and probe: the report has no script
    assert [dom.text_of(s) for s in dom.all("script")] == [GUARD[8:-9], PROBE[8:-9]]
    assert len(dom.all("style")) == 1             # the report's own, in <head>
    assert dom.text_of(dom.all("title")[0]) == "Certification report — payload"
    imgs = dom.all("img")
    assert len(imgs) == 2 and all(i["attrs"]["src"].startswith("data:image/png;base64,") for i in imgs)
    assert dom.text_of(dom.all("pre")[0]) == PAYLOAD_SPEC   # the spec, verbatim, as text
    text = "".join(dom.text)
    for payload in PAYLOADS:
        assert payload in text, payload


def test_spec_text_cannot_hide_or_forge_the_verdict(payload_dom):
    """`</pre><style>#verdict{display:none}</style>` and a look-alike green banner stay text:
    the one verdict on the page is laid out, visible, and says NOT CERTIFIED."""
    ev, dom = payload_dom
    assert not ev.certified
    body = dom.all("body")[0]["attrs"]
    assert body["data-body-shown"] == "1" and body["data-verdict-shown"] == "1"
    assert body["data-verdict"].startswith("NOT CERTIFIED — fails: holdout validation")
    assert [el["attrs"].get("id") for el in dom.elements].count("verdict") == 1
    classes = [el["attrs"].get("class", "").split() for el in dom.elements]
    assert sum("verdict" in c for c in classes) == 1 and not any("certified" in c for c in classes)
    assert HIDE in "".join(dom.text) and BANNER in "".join(dom.text)


def test_spec_text_is_text_in_the_markdown_report(payload_run, tmp_path):
    """The Markdown report rendered as CommonMark + tables with raw HTML on: the spec stays one
    code block, the cells stay cells, and no payload becomes an element."""
    markdown_it = pytest.importorskip("markdown_it")
    spec, run = payload_run
    ev = gather(run)
    md = write_report(ev, tmp_path / "report.md", "md").read_text()
    dom = _Dom(markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md))
    _no_injected_markup(dom)
    assert not dom.all("style") and not dom.all("div")
    srcs = [i["attrs"]["src"] for i in dom.all("img")]
    assert len(srcs) == 2 and all(re.fullmatch(r"report_plots/[\w.]+\.png", s) for s in srcs)
    blocks = [dom.text_of(c) for c in dom.all("code") if "\n" in dom.text_of(c)]
    assert PAYLOAD_SPEC in blocks                              # the spec, verbatim, in one block
    row = next(tr for tr in dom.all("tr") if "band" in dom.text_of(tr) and "abs(y)" in dom.text_of(tr))
    cells = [el for el in dom.elements[dom.elements.index(row) + 1:] if el["tag"] == "td"]
    assert dom.text_of(cells[1]) == ev.metrics[0]["location"]  # a `|` in the file name stays in its cell
    assert ev.metrics[0]["location"].startswith(str(spec))
    text = "".join(dom.text)
    for payload in PAYLOADS:
        assert payload in text, payload


@pytest.mark.parametrize("text", ["a|b", "`x`", "``", "a ``` b ````", " lead", "<b>x</b>", "x\ny",
                                  "*em* [l](u) &amp; \\|", "~~~"])
def test_markdown_escapes_round_trip(text):
    """Text, a table cell, a code span (in a table and out) and a fence each render back to
    exactly the text (new lines in one-line places become spaces)."""
    markdown_it = pytest.importorskip("markdown_it")
    md = (f"| {md_text(text)} | {md_code(text, table=True)} |\n|---|---|\n| x | y |\n\n"
          f"{md_text(text)} {md_code(text)}\n\n{md_fence(text)}\n")
    dom = _Dom(markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md))
    line = text.replace("\n", " ")
    assert [dom.text_of(el) for el in dom.all("th")] == [line.strip(), line]  # cells are trimmed
    assert [dom.text_of(el) for el in dom.all("code")] == [line, line, text + "\n"]
    assert dom.text_of(dom.all("p")[0]) == f"{line.lstrip()} {line}"
