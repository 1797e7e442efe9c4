"""The `scpo` command line (typer + rich).  Exit codes: 0 ok, 1 a spec has errors, 2 usage."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from scpo_spec.spec.diagnostics import render, to_json
from scpo_spec.spec.format import format_spec
from scpo_spec.spec.load import CheckResult, check_file, parse_model, read_source, syntax_of
from scpo_spec.spec.scpo_reader import find_comments
from scpo_spec.spec.source import Source
from scpo_spec.spec.yaml_reader import count_comments
from scpo_spec.spec.yaml_writer import format_yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Safety specs for constrained policy optimisation (SCPO).")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class Syntax(str, Enum):
    yaml = "yaml"
    scpo = "scpo"


def _usage(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _report(results: list[CheckResult], console: Console = err) -> None:
    for r in results:
        render(r.diagnostics, {r.source.path: r.source}, console)


@app.command()
def check(files: List[Path] = typer.Argument(..., help="Spec files (.scpo, .yaml, .yml)."),
          as_json: bool = typer.Option(False, "--json", help="Print diagnostics as JSON."),
          ) -> None:
    """Check spec files: syntax, names, shapes, ranges, formulas, data files, environments."""
    missing = [f for f in files if not f.exists()]
    if missing:
        _usage(f"no such file: {', '.join(map(str, missing))}")
    results = [check_file(f) for f in files]
    failed = [r for r in results if not r.ok]
    if as_json:
        payload = {"ok": not failed, "files": [
            {"file": r.source.path, "ok": r.ok, "diagnostics": to_json(r.diagnostics)}
            for r in results]}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        _report(results, out)  # diagnostics and summary on one stream, in order (like ruff)
        for r in results:
            errors = sum(d.severity == "error" for d in r.diagnostics)
            warnings = len(r.diagnostics) - errors
            extra = f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else ""
            if r.ok:
                out.print(f"[green]✓[/] {r.source.path}{extra}")
            else:
                out.print(f"[red]✗[/] {r.source.path}: {errors} error{'s' * (errors != 1)}"
                          f"{extra}")
        if len(results) > 1:
            out.print(f"{len(results) - len(failed)} of {len(results)} specs are valid")
    raise typer.Exit(1 if failed else 0)


def _model_of(file: Path) -> tuple[CheckResult, str]:
    if not file.exists():
        _usage(f"no such file: {file}")
    source, problems = read_source(file)
    if source is None:
        r = CheckResult(Source(path=str(file), text=""), None, problems)
        _report([r])
        raise typer.Exit(1)
    result = parse_model(source.text, path=source.path)
    if not result.ok:
        _report([result])
        err.print(f"[red]✗[/] {file}: not rewritten (fix the errors above first; nothing was "
                  "changed)")
        raise typer.Exit(1)
    return result, source.text


@app.command()
def fmt(file: Path = typer.Argument(..., help="A spec file."),
        write: bool = typer.Option(False, "--write", "-w", help="Rewrite the file in place."),
        check_only: bool = typer.Option(False, "--check",
                                        help="Exit 1 if the file is not canonically formatted."),
        ) -> None:
    """Print the spec in canonical layout (comments kept; running it twice changes nothing)."""
    result, text = _model_of(file)
    if syntax_of(str(file)) == "yaml":
        comments = count_comments(text)
        if comments:
            err.print(f"[red]✗[/] {file}: has {comments} comment(s), which a YAML rewrite cannot "
                      "keep; not formatted (nothing was changed)")
            raise typer.Exit(1)
        formatted = format_yaml(result.spec)
    else:
        formatted = format_spec(result.spec, find_comments(text))
    if check_only:
        if formatted != text:
            err.print(f"{file}: not canonically formatted (run `scpo fmt -w {file}`)")
            raise typer.Exit(1)
        raise typer.Exit(0)
    if write:
        if formatted != text:
            file.write_text(formatted, encoding="utf-8")
        err.print(f"formatted {file}")
    else:
        sys.stdout.write(formatted)


@app.command()
def convert(file: Path = typer.Argument(..., help="A spec file."),
            to: Syntax = typer.Option(..., "--to", help="The syntax to write: yaml or scpo."),
            output: Optional[Path] = typer.Option(None, "--out", "-o",
                                                  help="Write here instead of stdout."),
            ) -> None:
    """Write a spec in the other syntax (same model: converting back gives the same spec)."""
    result, text = _model_of(file)
    from_yaml = syntax_of(str(file)) == "yaml"
    comments = [] if from_yaml else find_comments(text)
    if to == Syntax.yaml:
        converted = format_yaml(result.spec)
        lost = count_comments(text) if from_yaml else len(comments)
    else:
        converted = format_spec(result.spec, comments)
        lost = count_comments(text) if from_yaml else 0
    if lost:
        err.print(f"[yellow]note:[/] {lost} comment(s) are not carried over (YAML comments "
                  "cannot be read or written)")
    if output is not None:
        output.write_text(converted, encoding="utf-8")
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(converted)


def main() -> None:  # pragma: no cover - the console script
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
