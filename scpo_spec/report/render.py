"""Render the evidence as a standalone HTML page (plots embedded as data URIs, opens offline)
or as Markdown for code review (plots written next to it).

Everything a spec or a run carries — the title, comments, file names, data paths, the run
directory, log text — is data written by whoever wrote the spec: the HTML page escapes every value
(autoescape on; nothing is marked safe, so no value can become markup — not even the data URIs,
which escaping leaves intact), so no spec text can run script, restyle the page or hide the
verdict.  The Markdown page does the same by hand: every printed value is backslash-escaped
unless it is a code span or fence built here, sized so the content cannot close it."""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined

from scpo_spec.audit.rundir import RunDir, RunError
from scpo_spec.errors import ScpoError
from scpo_spec.report.evidence import Evidence, fmt
from scpo_spec.report.plots import all_plots

FINAL = ("regression_fit", "trajectories")   # the final policy's pictures, in their own section


class Md(str):
    """Markdown this module built itself (a code span, a fence, a link target): printed as is."""


_MD_SPECIAL = re.compile(r"([\\`*<>\[\]|&~#])")
_NEWLINES = re.compile(r"\r\n|\r|\n")


def md_text(value) -> str:
    """Plain text for a Markdown line or table cell: no HTML (`<`), no code span, link,
    emphasis or fence (`~~~`), no cell break (`|`), no new line or row."""
    return _MD_SPECIAL.sub(r"\\\1", _NEWLINES.sub(" ", str(value)))


def _md_finalize(value):
    return value if isinstance(value, Md) else md_text(value)


def _ticks(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def md_code(value, table: bool = False) -> Md:
    """An inline code span that the content cannot close: delimited by one backtick more than its
    longest backtick run; in a table, `|` escaped (GFM splits cells before reading spans)."""
    text = _NEWLINES.sub(" ", str(value))
    if not text:
        return Md("")
    if table:
        text = text.replace("|", "\\|")
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    fence = "`" * (_ticks(text) + 1)
    return Md(f"{fence}{pad}{text}{pad}{fence}")


def md_fence(value) -> Md:
    """A fenced code block that the content cannot close: a fence longer than any backtick run in
    it (a line of three backticks in a spec comment would end a three-backtick fence)."""
    text = str(value)
    if not text.endswith("\n"):
        text += "\n"
    fence = "`" * max(3, _ticks(text) + 1)
    return Md(f"{fence}\n{text}{fence}")


def shown_path(value) -> str:
    """A path as the page shows it: relative to the current directory when inside it, else with
    the home directory written ~ — a report travels, and an absolute home path says who made it
    and where, not anything a reviewer needs."""
    text = str(value)
    path = Path(text)
    if not path.is_absolute():
        return text
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        if base == Path(base.anchor):  # a home (or cwd) of / would make every path relative
            continue
        try:
            rel = path.relative_to(base)
        except ValueError:
            continue
        if str(rel) == ".":
            return "~" if prefix else "."
        return prefix + str(rel)
    return text


def sh_path(value) -> str:
    """shown_path, quoted for a shell: one word, with a leading ~/ left outside the quotes so
    the shell still expands it."""
    text = shown_path(value)
    if text.startswith("~/"):
        return "~/" + shlex.quote(text[2:]) if text[2:] else "~"
    return shlex.quote(text)


def shown_command(command: str) -> str:
    """The logged command line (sys.argv) with its program as a bare name (`scpo`, also for
    `python -m scpo_spec.cli`: `…/scpo_spec/cli/__main__.py`, or `…/scpo_spec/cli.py` in runs
    written before cli/ was a package) and each absolute path shown by shown_path."""
    words = str(command).split(" ")
    if words and words[0]:
        prog = Path(words[0])
        module = prog.parent if prog.name == "__main__.py" else prog.with_suffix("")
        words[0] = "scpo" if module.name == "cli" and module.parent.name == "scpo_spec" \
            else prog.name
    return " ".join([words[0], *(shown_path(w) if w.startswith("/") else w for w in words[1:])])


def _env(html: bool) -> Environment:
    """The HTML environment escapes every value: `autoescape=True` rather than
    `select_autoescape(["html"])`, which matches `*.html` only and so left `report.html.j2`
    unescaped."""
    env = Environment(loader=PackageLoader("scpo_spec.report", "templates"),
                      autoescape=html, finalize=None if html else _md_finalize,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt
    env.filters["sh"] = lambda v: shlex.quote(str(v))  # a path pasted into a shell stays one word
    env.filters["sh_path"] = sh_path
    env.filters["shown"] = shown_path
    env.filters["shown_command"] = shown_command
    env.filters["code"] = md_code
    env.filters["fence"] = md_fence
    env.filters["short"] = lambda h: (h or "—")[:16] + "…" if h else "—"
    return env


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class PdfError(ScpoError):
    """The PDF could not be printed (no Chromium, or Chromium failed)."""


def _print_pdf(html: Path, out: Path) -> None:
    """Print `html` to `out` with headless Chromium (no header or footer: they would carry the
    temporary file's absolute path and the date)."""
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        raise PdfError("`--format pdf` prints the HTML report with headless Chromium, and no "
                       "`chromium` is on PATH (Debian: apt-get install chromium); or write "
                       "`--format html` and print it from any browser")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", "--no-pdf-header-footer",
               "--print-to-pdf-no-header", f"--print-to-pdf={out}", html.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            raise PdfError(f"{browser} did not print the PDF within 180 s") from None
    if not out.is_file() or out.stat().st_size == 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise PdfError(f"{browser} did not write {out} (exit {proc.returncode})"
                       + (": " + " | ".join(tail) if tail else ""))


def write_report(ev: Evidence, out: Path, fmt_: str = "html") -> Path:
    """Write the report to `out` (Markdown also writes `<stem>_plots/*.png`; PDF is the HTML
    page printed by headless Chromium)."""
    if fmt_ == "pdf":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)  # a stale PDF must not pass for this one
        with tempfile.TemporaryDirectory() as tmp:
            _print_pdf(write_report(ev, Path(tmp) / "report.html"), out.resolve())
        return out
    plots = all_plots(ev)
    if fmt_ == "md":
        env = _env(html=False)
        plot_dir = out.parent / f"{out.stem}_plots"
        if RunDir(plot_dir).is_run():
            raise RunError(f"{plot_dir} is a run directory; the report's pictures go to "
                           f"<report>_plots/: name the report otherwise")
        plot_dir.mkdir(parents=True, exist_ok=True)
        images = []
        for stem, caption, png in plots:
            target = plot_dir / f"{stem}.png"
            target.unlink(missing_ok=True)  # a link planted there is replaced, never followed
            target.write_bytes(png)
            images.append({"caption": caption, "stem": stem, "final": stem in FINAL,
                           "src": Md(quote(f"{plot_dir.name}/{stem}.png"))})
        text = env.get_template("report.md.j2").render(ev=ev, images=images)
    else:
        env = _env(html=True)
        images = [{"caption": c, "stem": s, "final": s in FINAL,
                   "src": "data:image/png;base64," + base64.b64encode(p).decode()}
                  for s, c, p in plots]
        text = env.get_template("report.html.j2").render(ev=ev, images=images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")  # whole or not at all: a full disk leaves no half page
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
