"""Entry points: text or file → (model, diagnostics).  Never raises on bad input."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scpo_spec.language.build import Builder
from scpo_spec.language.check import check_model
from scpo_spec.language.diagnostics import Collector, Diagnostic, SpecError
from scpo_spec.language.document import Map
from scpo_spec.language.grammar import MAX_BYTES
from scpo_spec.language.model import Spec
from scpo_spec.language.scpo_reader import read_scpo
from scpo_spec.language.sections import written_as
from scpo_spec.language.source import Source, Span
from scpo_spec.language.yaml_reader import read_yaml

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class CheckResult:
    source: Source
    spec: Spec | None
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.spec is not None and not any(d.severity == "error" for d in self.diagnostics)


def syntax_of(path: str) -> str:
    return "yaml" if path.lower().endswith(YAML_SUFFIXES) else "scpo"


def read_document(source: Source, syntax: str) -> tuple[Map | None, list[Diagnostic]]:
    return read_yaml(source) if syntax == "yaml" else read_scpo(source)


def parse_model(text: str, path: str = "<spec>", syntax: str | None = None) -> CheckResult:
    """Read and build the model without the semantic checks (what `fmt` and `convert` need:
    the result holds everything the text says, or there are errors)."""
    return check_text(text, path, syntax, run_checks=False)


def check_text(text: str, path: str = "<spec>", syntax: str | None = None,
               base_dir: Path | None = None, run_checks: bool = True,
               run_code: bool = True) -> CheckResult:
    """Parse, build and check a spec given as text (`run_code` False: without importing or
    opening any code it names — how a run directory's stored spec is checked)."""
    return parse_text(text, path, syntax).check(base_dir, run_checks, run_code)


@dataclass
class ParsedText:
    """A spec text read once (the parse, the costly part), to be built and checked as often as
    a reader needs — a run's stored spec is sized, checked without its code, then with it —
    each `check` building a fresh model from the one document."""

    source: Source
    doc: Map | None
    diagnostics: list[Diagnostic]

    def check(self, base_dir: Path | None = None, run_checks: bool = True,
              run_code: bool = True) -> CheckResult:
        """As `check_text` (`run_checks` False: built only, as `parse_model`)."""
        if self.doc is None:
            return CheckResult(self.source, None, list(self.diagnostics))
        collector = Collector()
        collector.items.extend(self.diagnostics)
        try:
            builder = Builder(self.source, collector)
            builder.failed |= _misspelt_sections(self.diagnostics)
            spec = builder.build(self.doc, self.source.path)
            if run_checks:
                check_model(spec, collector, base_dir, builder.failed, run_code)
        except RecursionError:
            collector.error("nesting is too deep", self.source.span_at(0))
            spec = None
        return CheckResult(self.source, spec, collector.sorted())


def parse_text(text: str, path: str = "<spec>", syntax: str | None = None) -> ParsedText:
    """Read a spec text into its document, once (never raises on bad input)."""
    source = Source(path=path, text=text)
    syntax = syntax or syntax_of(path)
    if "\x00" in text:
        offset = text.index("\x00")
        return ParsedText(source, None, [Diagnostic(
            message="this is not a text file (it contains a NUL byte)",
            span=source.span_at(offset), hint="a spec is plain UTF-8 text")])
    if not text.strip():
        return ParsedText(source, None, [Diagnostic(
            message="the file is empty", span=source.span_at(0),
            hint='a spec starts with `spec NAME "what it is for"`, then its sections '
                 "(see docs/language.md)")])
    try:
        doc, diagnostics = read_document(source, syntax)
    except RecursionError:
        return ParsedText(source, None, [Diagnostic(message="nesting is too deep",
                                                    span=source.span_at(0))])
    return ParsedText(source, doc, diagnostics)


def _misspelt_sections(diagnostics: list[Diagnostic]) -> set[str]:
    """Sections the reader skipped as misspelt (`sytem`, did you mean 'system'?): written, so
    the checks must not also call them missing."""
    return {written_as(d.meant) for d in diagnostics
            if d.code == "unknown-section" and d.meant is not None}


def read_source(path: Path) -> tuple[Source | None, list[Diagnostic]]:
    """A file's text, or a diagnostic saying why it cannot be read as a spec."""
    shown = str(path)
    where = Span(file=shown, line=1, column=1, end_line=1, end_column=2)
    try:
        if path.is_dir():
            return None, [Diagnostic(message="is a directory, not a spec file", span=where)]
        if path.exists() and not path.is_file():  # a FIFO or device: reading it may never end
            return None, [Diagnostic(message="is not a regular file (a pipe or a device), "
                                     "not a spec file", span=where)]
        size = path.stat().st_size
        if size > MAX_BYTES:
            return None, [Diagnostic(message=f"file is too large for a spec ({size} bytes; "
                                             f"the limit is {MAX_BYTES})", span=where)]
        data = path.read_bytes()
    except FileNotFoundError:
        return None, [Diagnostic(message="no such file", span=None,
                                 hint=f"'{shown}' does not exist")]
    except OSError as err:
        return None, [Diagnostic(message=f"cannot read '{shown}': {err.strerror or err}",
                                 span=None)]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        prefix = data[: err.start].decode("utf-8", errors="replace")
        source = Source(path=shown, text=prefix)
        return None, [Diagnostic(message="this is not a UTF-8 text file "
                                         f"(byte 0x{data[err.start]:02x} at offset {err.start})",
                                 span=source.span_at(len(prefix)),
                                 hint="a spec is plain UTF-8 text")]
    return Source(path=shown, text=text), []


def check_file(path: str | Path) -> CheckResult:
    """Parse, build and check a spec file (`.scpo`, or `.yaml`/`.yml`)."""
    path = Path(path)
    source, problems = read_source(path)
    if source is None:
        return CheckResult(Source(path=str(path), text=""), None, problems)
    return check_text(source.text, path=source.path, base_dir=path.resolve().parent)


def load_spec(path: str | Path) -> Spec:
    """The checked model of a spec file; raises SpecError (with every diagnostic) if invalid."""
    result = check_file(path)
    if not result.ok:
        raise SpecError(result.diagnostics or [Diagnostic(message="invalid spec")])
    return result.spec
