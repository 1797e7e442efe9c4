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

from scpo_spec.cli import app
from scpo_spec.engine.run import train
from scpo_spec.report import gather, write_report
from scpo_spec.report.render import md_code, md_fence, md_text
from scpo_spec.language.load import check_file
from tests.conftest import ROOT, SPECS
from tests.engine_specs import small_di, spec_of, write_spec
from tests.forgery import records, write_rechained

runner = CliRunner()
CHROMIUM = shutil.which("chromium")


def trained(path: Path, out: Path, steps: int = 3) -> Path:
    result = check_file(path)
    assert result.ok
    return train(path, result.spec, result.source.text, out=out, steps=steps).run_dir


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("rep")
    # ℓ understated and a force bound the malicious expert pulls into: refutations, most of them
    # followed by an accepted update on the same step, and ℓ grows
    spec = write_spec(base, small_di(steps=8, pos=1e-2, force=1e-2, rho=1e-2).replace(
        "force in [-4, 4]", "force in [-1.7, 1.7]"))
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
            assert path.name in page  # the spec file the run was trained from
        assert ev.header.spec["sha256"] in page and ev.audit.head in page
        assert "scpo audit" in page
    assert html.count('<figure class="plot">') == 1 + len(spec.properties)
    # the loss, each metric, and the final policy: trajectories, or a regression's fit
    assert len(list((tmp_path / "report_plots").glob("*.png"))) == 2 + len(spec.properties)
    assert html.count('<figure class="final-plot"') == 1 and "Not drawn" not in html
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


@pytest.mark.parametrize("field", ["loss", "g"])
def test_an_end_record_that_misstates_the_final_policy_fails_even_unanchored(small_run,
                                                                              tmp_path, field):
    """The end record repeats the last accepted policy's loss and g: a better-looking final loss
    (or g) written there, rechained and re-bound, is not that policy's, and the audit says so."""
    forged = tmp_path / "forged"
    shutil.copytree(small_run, forged)
    recs = records(forged)
    assert recs[-1]["type"] == "end"
    if field == "loss":
        recs[-1]["loss"] /= 2
    else:
        recs[-1]["g"] = [v * 2 for v in recs[-1]["g"]]
    write_rechained(forged, recs, rebind=True)
    ev = gather(forged, final_policy=False)
    assert not ev.certified
    assert any("the end's g or loss are not the last accepted policy's" in p
               for p in ev.audit.problems), ev.audit.problems


def test_the_report_is_certified_only_at_its_anchor(small_run, tmp_path):
    """Whoever can write the run directory can rewrite a record, rechain and rebind the state
    file: that log reports CERTIFIED unanchored, and NOT CERTIFIED, saying why, against the head
    `scpo train` printed."""
    genuine = gather(small_run, final_policy=False)
    assert genuine.certified, genuine.failures
    head = genuine.audit.head
    assert gather(small_run, final_policy=False, head=head.upper()).certified
    forged = tmp_path / "forged"
    shutil.copytree(small_run, forged)
    recs = records(forged)
    recs[0]["command"] = "scpo train spec.scpo  # run by the safety lead"  # who ran it, rewritten
    forged_head = write_rechained(forged, recs, rebind=True)
    assert gather(forged, final_policy=False).certified  # what no anchor can tell apart

    ev = gather(forged, final_policy=False, head=head)
    assert not ev.certified
    (failure,) = ev.failures
    assert failure.startswith(f"anchored head (the chain ends at {forged_head}, not at the "
                              f"anchor {head}")
    out = tmp_path / "r.md"
    result = runner.invoke(app, ["report", str(forged), "--format", "md", "--out", str(out),
                                 "--head", head])
    assert result.exit_code == 0, result.output  # written, whatever its verdict
    said = " ".join(result.output.split())
    assert f"NOT CERTIFIED (anchored head (the chain ends at {forged_head}, not at the anchor " \
        f"{head}" in said
    page = out.read_text()
    assert "**NOT CERTIFIED** — fails: anchored head" in page
    assert f"not at the anchor {head}" in page
    result = runner.invoke(app, ["report", str(small_run), "--format", "md", "--out", str(out),
                                 "--head", head])
    assert result.exit_code == 0 and result.output.startswith("CERTIFIED"), result.output
    assert "the chain ends at the given head" in out.read_text()
    result = runner.invoke(app, ["report", str(small_run), "--out", str(tmp_path / "x.html"),
                                 "--head", "abc123"])
    assert result.exit_code == 2 and "--head abc123: expected the 64 hex digits" in result.output
    assert not (tmp_path / "x.html").exists()


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
    assert int(attrs["images-shown"]) == 5             # loss, 3 metrics, trajectories: decoded, laid out
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
    assert len(imgs) == 3 and all(i["attrs"]["src"].startswith("data:image/png;base64,") for i in imgs)
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
    assert len(srcs) == 3 and all(re.fullmatch(r"report_plots/[\w.]+\.png", s) for s in srcs)
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


# --- what the report's pictures and words say -----------------------------------------------------
from scpo_spec.report import plots  # noqa: E402
from scpo_spec.report.final import box_bounds  # noqa: E402
from scpo_spec.report.render import shown_command, shown_path  # noqa: E402


def _legend(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def _legend_below_axes(fig) -> bool:
    """The legend lies wholly under the axes it belongs to (it cannot cover a curve)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = next(a for a in fig.axes if a.get_legend())
    return ax.get_legend().get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0


def test_metric_plot_legend_and_caption_name_exactly_what_is_drawn(small_run):
    ev = gather(small_run)
    assert ev.series.refuted_x and not ev.series.failed_x
    fig, caption = plots.metric_figure(ev, 0)
    legend = _legend(fig)
    assert legend[0] == "g of the accepted policies" and plots.REFUTED in legend
    assert plots.NO_CANDIDATE not in legend and "Orange" not in caption  # nothing orange drawn
    assert _legend_below_axes(fig)
    assert fig.axes[0].lines[0].get_color() == plots.BLUE and caption.count("Blue:") == 1
    assert f"Red ×: the {len(ev.series.refuted_x)} refuted candidate" in caption
    assert "rejected candidate" not in caption
    plt_close(fig)
    ev.series.failed_x = [2, 5]    # an update rejected without a refuted candidate: orange lines
    fig, caption = plots.metric_figure(ev, 0)
    assert plots.NO_CANDIDATE in _legend(fig) and "Orange lines: the 2 updates rejected" in caption
    assert sum(line.get_color() == plots.ORANGE for line in fig.axes[0].lines) == 2
    plt_close(fig)
    fig, caption = plots.loss_figure(ev)
    assert fig.axes[0].lines[0].get_color() == plots.GREEN
    assert caption.startswith("Loss over the steps. Green:") and "Blue" not in caption
    assert _legend(fig) == ["loss of the accepted policies", plots.REFUTED]
    assert _legend_below_axes(fig)
    plt_close(fig)


def plt_close(fig):
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_one_vocabulary_refuted_certificates_accepted_updates(small_run, tmp_path):
    ev = gather(small_run)
    html = write_report(ev, tmp_path / "r.html").read_text()
    md = write_report(ev, tmp_path / "r.md", "md").read_text()
    for page in (html, md):
        assert "rejected candidate" not in page and "It was rejected" not in page
        assert "refutations were caught and rejected" not in page
        assert "certificate" in page and "discarded" in page
    assert "<th>the step's update</th>" in html
    if not ev.rejected:  # every step accepted in the end, some after refutations
        assert ev.refuted_then_accepted > 0
        assert "No update was rejected: all 8 were accepted (" in html
    ended = {r["step"]: r["accepted"] for r in ev.refutations}
    assert any(ended.values())  # a step whose certificate was refuted, then accepted
    result = runner.invoke(app, ["audit", str(small_run)])
    assert f"updates accepted {ev.audit.accepted}, rejected {ev.audit.rejected}; certificates " \
           f"refuted {ev.audit.refutations}" in result.output


def test_ell_growth_is_explained_where_it_happens(small_run, tmp_path):
    ev = gather(small_run)
    grew = ev.ell_grew
    assert grew, "the understated ℓ should have grown"
    html = write_report(ev, tmp_path / "r.html").read_text()
    md = write_report(ev, tmp_path / "r.md", "md").read_text()
    for m in grew:
        assert f"ℓ for {m['name']} grew from {m['smoothness']:g} to" in html
        assert f"ℓ for {m['name']} grew from {m['smoothness']:g} to" in md
    for page in (html, md):
        assert "more conservative" in page and "docs/tuning.md" in page
        assert "not on ℓ" in page


def test_trajectory_plot_of_the_final_policy_with_its_box_bounds(small_run, tmp_path):
    ev = gather(small_run)
    tr = ev.trajectories
    assert tr is not None and 1 <= len(tr.scenarios) <= 4
    assert len(set(tr.scenarios)) == len(tr.scenarios)
    assert tr.states.shape[1:] == (21, 2) and tr.inputs.shape[1:] == (20, 1)
    assert any("worst for position_limit" in label for label in tr.labels)
    assert (tr.bounds["position"].lo, tr.bounds["position"].hi) == (-1.5, 1.5)
    assert (tr.bounds["force"].lo, tr.bounds["force"].hi) == (-1.7, 1.7)
    assert "velocity" not in tr.bounds
    fig, caption = plots.trajectory_figure(tr)
    pos, vel, force = fig.axes
    dashed = lambda ax: sorted(l.get_ydata()[0] for l in ax.lines if l.get_linestyle() == "--")  # noqa: E731
    assert dashed(pos) == [-1.5, 1.5] and dashed(force) == [-1.7, 1.7] and dashed(vel) == []
    assert "box bound of a constraint (outside shaded)" in _legend(fig)
    assert "position (position_limit), force (force_limit)" in caption
    plt_close(fig)
    html = write_report(ev, tmp_path / "r.html").read_text()
    assert '<figure class="final-plot" id="trajectories">' in html
    assert "Dashed red: the box bounds of position (position_limit)" in html


def test_box_bounds_are_read_only_from_plain_boxes(tmp_path):
    text = small_di().replace(
        "constraint force_limit:    always force in [-4, 4]       smoothness FORCE_ELL".replace(
            "FORCE_ELL", "50"),
        "constraint force_limit:    always force in [-4, 4]       smoothness 50\n"
        "constraint v_up: always (velocity <= 2 * dt * 10 and 3 >= force)  smoothness 50\n"
        "constraint v_lo: always velocity >= -3  smoothness 50\n"
        "constraint w: always[0:5] position <= 0.1  smoothness 50\n"
        "constraint o: always (position <= 0.2 or velocity <= 0.1)  smoothness 50\n"
        "constraint e: eventually position <= 0.3  smoothness 50\n"
        # an `and` of separate `always` formulas is no box (docs/report.md), nor is
        # `always a and b`, which reads `(always a) and b`
        "constraint a: (always position <= 0.05) and (always velocity <= 0.01)  smoothness 50\n"
        "constraint p: always position <= 0.04 and velocity <= 0.02  smoothness 50\n")
    spec = check_file(write_spec(tmp_path, text)).spec
    b = box_bounds(spec)
    assert set(b) == {"position", "force", "velocity"}
    assert (b["position"].lo, b["position"].hi) == (-1.5, 1.5)   # w, o, e, a, p: no boxes
    assert (b["force"].lo, b["force"].hi, b["force"].sources) == (-4, 3, ["force_limit", "v_up"])
    assert (b["velocity"].lo, b["velocity"].hi) == (-3, 2)


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("regression")
    text = (ROOT / "specs" / "regression.scpo").read_text()
    text = text.replace('"../data/harmful.csv"', f'"{ROOT / "data" / "harmful.csv"}"')
    return trained(write_spec(base, text.replace("holdout 1000", "holdout 300")), base / "run",
                   steps=3)


def test_regression_report_plots_the_fit_against_data_and_band(regression_run, tmp_path):
    ev = gather(regression_run)
    fit = ev.regression
    assert fit is not None and ev.trajectories is None  # horizon 1: no trajectory to draw
    rows = len((ROOT / "data" / "harmful.csv").read_text().strip().splitlines()) - 1
    assert len(fit.data_x) == rows and len(fit.scenario_x) == 64
    assert (fit.band.lo, fit.band.hi, fit.band.sources) == (-1.4, 1.4, ["band"])
    fig, caption = plots.regression_figure(fit)
    ax = fig.axes[0]
    assert sorted(l.get_ydata()[0] for l in ax.lines if l.get_linestyle() == "--") == [-1.4, 1.4]
    assert ax.collections[0].get_offsets().shape == (rows, 2)       # the data points
    legend = _legend(fig)
    assert legend[0] == f"data ({rows} rows)" and "final model y = f(x)" in legend
    assert "safety band (band), outside shaded" in legend and _legend_below_axes(fig)
    assert "Grey dots" in caption and "Dashed red: the safety band of band" in caption
    plt_close(fig)
    html = write_report(ev, tmp_path / "r.html").read_text()
    assert '<figure class="final-plot" id="regression_fit">' in html


def test_regression_plot_leaves_out_data_that_changed(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("".join((ROOT / "data" / "harmful.csv").read_text().splitlines(True)[:40]))
    text = (ROOT / "specs" / "regression.scpo").read_text().replace('"../data/harmful.csv"',
                                                                    '"d.csv"')
    run = trained(write_spec(tmp_path, text.replace("grid 64", "grid 8")), tmp_path / "run", 1)
    data.write_text(data.read_text() + "0.5,0.5\n")
    ev = gather(run, compute_holdout=False)
    assert ev.regression.data_x is None and "changed since the run" in ev.regression.data_note
    fig, caption = plots.regression_figure(ev.regression)
    assert "No data points: the data file d.csv changed since the run" in caption
    plt_close(fig)


def test_paths_are_shown_relative_never_absolute_home(tmp_path, monkeypatch):
    home, work = tmp_path / "home" / "me", tmp_path / "home" / "me" / "proj"
    work.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    cmd = f"{home}/venv/lib/scpo_spec/cli.py train {work}/specs/a.scpo --out {home}/runs/r -q"
    assert shown_command(cmd) == "scpo train specs/a.scpo --out ~/runs/r -q"
    assert shown_command(f"{home}/.venv/bin/scpo train x.scpo") == "scpo train x.scpo"
    assert shown_command(f"{home}/venv/lib/scpo_spec/cli/__main__.py check x.scpo") \
        == "scpo check x.scpo"  # python -m scpo_spec.cli, since cli/ is a package
    assert shown_command("/opt/other/cli.py check x.scpo") == "cli.py check x.scpo"
    assert shown_path(work) == "." and shown_path("/opt/x") == "/opt/x"
    assert shown_path("rel/x") == "rel/x"


def test_the_command_row_has_no_absolute_local_path(small_run, tmp_path):
    ev = gather(small_run)
    ev.header.command = f"{ROOT}/scpo_spec/cli.py train {ROOT}/specs/x.scpo --out {Path.home()}/r"
    html = write_report(ev, tmp_path / "r.html").read_text()
    md = write_report(ev, tmp_path / "r.md", "md").read_text()
    row = re.search(r"<th>command</th><td><code>([^<]*)</code>", html).group(1)
    assert row == "scpo train specs/x.scpo --out ~/r"
    assert "`scpo train specs/x.scpo --out ~/r`" in md
    assert str(ROOT) + "/scpo_spec" not in html + md


PDFTOTEXT = shutil.which("pdftotext")


@pytest.mark.skipif(CHROMIUM is None or PDFTOTEXT is None,
                    reason="needs chromium and pdftotext (.ci/run installs both)")
def test_pdf_report_holds_the_verdict_and_the_head(small_run, tmp_path):
    out = tmp_path / "report.pdf"
    result = runner.invoke(app, ["report", str(small_run), "--format", "pdf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"%PDF")
    text = subprocess.run([PDFTOTEXT, str(out), "-"], capture_output=True, text=True,
                          check=True).stdout
    ev = gather(small_run)
    verdict = "CERTIFIED —" if ev.certified else "NOT CERTIFIED — fails:"
    assert verdict in text and ("NOT CERTIFIED" in text) != ev.certified
    assert ev.audit.head in re.sub(r"\s", "", text)
    assert "The final policy" in text and "Refuted certificates" in text


def test_pdf_without_chromium_says_what_is_missing(small_run, tmp_path, monkeypatch):
    import scpo_spec.report.render as render
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    out = tmp_path / "r.pdf"
    result = runner.invoke(app, ["report", str(small_run), "--format", "pdf", "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "headless Chromium" in result.output and "apt-get install chromium" in result.output
    assert not out.exists()


def test_markdown_report_of_a_killed_run_says_it_stopped(tmp_path):
    import signal
    import sys
    import time
    spec = write_spec(tmp_path, small_di(steps=100_000))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "scpo_spec.cli", "train", str(spec), "--out",
                             str(run), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run / "audit.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists()
                                          and log.read_bytes().count(b'"type":"step"') >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert b'"type":"end"' not in log.read_bytes()
    ev = gather(run)
    md = write_report(ev, tmp_path / "r.md", "md").read_text()
    assert not ev.certified and "**NOT CERTIFIED** — fails: run complete (" in md
    assert re.search(r"^\| run complete \| ✗ \| the log has no end record after its last step: "
                     r"the run was killed or cut short", md, re.M)
    assert f"**The run stopped before its end:** the log has no end record after step " \
           f"{ev.audit.steps}" in md
    assert "- ended: no end record (the run stopped before its end)" in md
