"""Diagnostics: located, collected, sorted; rendered for a terminal (rich) or as JSON.

Format (LANGUAGE.md): `FILE:LINE:COL: error: MESSAGE`, the source line, a caret/underline under
the spot, then a hint where one helps.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Literal

from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from scpo_spec.errors import ScpoError
from scpo_spec.language.source import Source, Span

Severity = Literal["error", "warning"]


class Diagnostic(BaseModel):
    """One problem, located.  `code` names its sort and `meant` carries the word a "did you
    mean" hint offers, so a later stage reads them as data (never parses the message back)."""

    severity: Severity = "error"
    message: str
    span: Span | None = None
    hint: str | None = None
    code: str | None = None    # e.g. "unknown-section"
    meant: str | None = None   # the word the hint suggests, e.g. "system"

    def sort_key(self) -> tuple:
        if self.span is None:
            return ("", 0, 0, self.message)
        return (self.span.file, self.span.line, self.span.column, self.message)

    def headline(self) -> str:
        where = f"{self.span}: " if self.span else ""
        return f"{where}{self.severity}: {self.message}"


class SpecError(ScpoError):
    """Raised by `load_spec` when a spec has errors; carries every diagnostic, sorted."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        errors = [d for d in self.diagnostics if d.severity == "error"]
        first = errors[0].headline() if errors else "invalid spec"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


class Collector:
    """Accumulates diagnostics so a check reports every problem, not just the first."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def error(self, message: str, span: Span | None, hint: str | None = None,
              code: str | None = None, meant: str | None = None) -> None:
        self.items.append(Diagnostic(message=message, span=span, hint=hint, code=code,
                                     meant=meant))

    def warning(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.items.append(Diagnostic(severity="warning", message=message, span=span, hint=hint))

    def unknown(self, message: str, span: Span | None, word: str, choices: Iterable[str],
                otherwise: str | None, code: str) -> None:
        """An unknown word: "did you mean" the closest choice (carried as `meant`), else
        `otherwise`."""
        meant = closest(word, choices)
        self.error(message, span, meant_hint(meant) if meant else otherwise, code=code,
                   meant=meant)

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        # de-duplicate identical reports (the same problem seen by two passes)
        unique = {(d.severity, d.message, str(d.span), d.hint): d for d in self.items}
        return sorted(unique.values(), key=Diagnostic.sort_key)


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice a misspelled name most likely meant, or None when nothing is close."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if word.lower() in lowered:
            close = [lowered[word.lower()]]
    return close[0] if close else None


def meant_hint(meant: str) -> str:
    return f"did you mean '{meant}'?"


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelled name, or None when nothing is close."""
    meant = closest(word, choices)
    return meant_hint(meant) if meant else None


def excerpt(text: str, limit: int = 80) -> str:
    """A short, printable excerpt of file content for a message: control and other
    non-printable characters escaped, cut to `limit` characters.  A data path may name any file
    (`/proc/self/environ`), and diagnostics travel (`--json`, logs): never echo more than this."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit + 1])
    return shown if len(shown) <= limit and len(text) <= limit else shown[:limit] + "…"


def one_of(choices: Iterable[str]) -> str:
    return ", ".join(f"'{c}'" for c in sorted(choices))


def render(diagnostics: list[Diagnostic], sources: dict[str, Source], console: Console) -> None:
    """Print diagnostics as a compiler does: headline, the source line, an underline, a hint."""
    for d in diagnostics:
        style = "bold red" if d.severity == "error" else "bold yellow"
        head = Text()
        if d.span:
            head.append(f"{d.span}: ", style="bold")
        head.append(f"{d.severity}:", style=style)
        head.append(f" {d.message}", style="bold")
        console.print(head, highlight=False, soft_wrap=True)
        source = sources.get(d.span.file) if d.span else None
        if d.span and source is not None:
            line = source.line(d.span.line).expandtabs(1)
            if line.strip():
                gutter = f"{d.span.line:>5} | "
                console.print(Text(gutter, style="blue") + Text(line), highlight=False,
                              soft_wrap=True)
                start = max(d.span.column - 1, 0)
                if d.span.end_line == d.span.line:
                    width = max(d.span.end_column - d.span.column, 1)
                else:
                    width = max(len(line) - start, 1)
                width = min(width, max(len(line) - start, 1))
                marker = "^" + "~" * (width - 1)
                console.print(Text(" " * (len(gutter) - 2) + "| ", style="blue")
                              + Text(" " * start + marker, style=style), highlight=False,
                              soft_wrap=True)
        if d.hint:
            console.print(Text("      = hint: ", style="cyan") + Text(d.hint), highlight=False,
                          soft_wrap=True)


def to_json(diagnostics: list[Diagnostic]) -> list[dict]:
    out = []
    for d in diagnostics:
        item = {"severity": d.severity, "message": d.message, "hint": d.hint,
                "file": None, "line": None, "column": None, "end_line": None, "end_column": None}
        if d.span:
            item.update(file=d.span.file, line=d.span.line, column=d.span.column,
                        end_line=d.span.end_line, end_column=d.span.end_column)
        out.append(item)
    return out
