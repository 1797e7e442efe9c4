"""Render the evidence as a standalone HTML page (plots embedded as data URIs, opens offline)
or as Markdown for code review (plots written next to it).

Everything a spec or a run carries — the title, comments, file names, data paths, the run
directory, log text — is data written by whoever wrote the spec: the HTML page escapes every value
(autoescape on; nothing is marked safe, so no value can become markup — not even the data URIs,
which escaping leaves intact), so no spec text can run script, restyle the page or hide the
verdict."""

from __future__ import annotations

import base64
import shlex
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from scpo_spec.report.evidence import Evidence, fmt
from scpo_spec.report.plots import all_plots


def _env(html: bool) -> Environment:
    """The HTML environment escapes every value: `autoescape=True` rather than
    `select_autoescape(["html"])`, which matches `*.html` only and so left `report.html.j2`
    unescaped."""
    env = Environment(loader=PackageLoader("scpo_spec.report", "templates"),
                      autoescape=html, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt
    env.filters["sh"] = lambda v: shlex.quote(str(v))  # a path pasted into a shell stays one word
    env.filters["short"] = lambda h: (h or "—")[:16] + "…" if h else "—"
    return env


def write_report(ev: Evidence, out: Path, fmt_: str = "html") -> Path:
    """Write the report to `out` (Markdown also writes `<stem>_plots/*.png`)."""
    plots = all_plots(ev)
    if fmt_ == "md":
        env = _env(html=False)
        plot_dir = out.parent / f"{out.stem}_plots"
        plot_dir.mkdir(parents=True, exist_ok=True)
        images = []
        for stem, caption, png in plots:
            (plot_dir / f"{stem}.png").write_bytes(png)
            images.append({"caption": caption, "src": f"{plot_dir.name}/{stem}.png"})
        text = env.get_template("report.md.j2").render(ev=ev, images=images)
    else:
        env = _env(html=True)
        images = [{"caption": c, "src": "data:image/png;base64," + base64.b64encode(p).decode()}
                  for _, c, p in plots]
        text = env.get_template("report.html.j2").render(ev=ev, images=images)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
