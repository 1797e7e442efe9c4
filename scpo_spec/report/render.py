"""Render the evidence as a standalone HTML page (plots embedded as data URIs, opens offline)
or as Markdown for code review (plots written next to it)."""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from scpo_spec.report.evidence import Evidence, fmt
from scpo_spec.report.plots import all_plots


def _env() -> Environment:
    env = Environment(loader=PackageLoader("scpo_spec.report", "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt
    env.filters["short"] = lambda h: (h or "—")[:16] + "…" if h else "—"
    return env


def write_report(ev: Evidence, out: Path, fmt_: str = "html") -> Path:
    """Write the report to `out` (Markdown also writes `<stem>_plots/*.png`)."""
    plots = all_plots(ev)
    env = _env()
    if fmt_ == "md":
        plot_dir = out.parent / f"{out.stem}_plots"
        plot_dir.mkdir(parents=True, exist_ok=True)
        images = []
        for stem, caption, png in plots:
            (plot_dir / f"{stem}.png").write_bytes(png)
            images.append({"caption": caption, "src": f"{plot_dir.name}/{stem}.png"})
        text = env.get_template("report.md.j2").render(ev=ev, images=images)
    else:
        images = [{"caption": c, "src": "data:image/png;base64," + base64.b64encode(p).decode()}
                  for _, c, p in plots]
        text = env.get_template("report.html.j2").render(ev=ev, images=images)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
