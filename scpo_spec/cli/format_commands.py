"""The commands that rewrite a spec's text: `scpo fmt` (canonical layout, comments kept) and
`scpo convert` (the other syntax, the same model)."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from scpo_spec.cli import command
from scpo_spec.cli.common import _esc, _need_spec_files, _report, _usage, err
from scpo_spec.language.format import format_spec
from scpo_spec.language.load import CheckResult, parse_model, read_source, syntax_of
from scpo_spec.language.scpo_reader import find_comments
from scpo_spec.language.source import Source
from scpo_spec.language.yaml_reader import count_comments
from scpo_spec.language.yaml_writer import format_yaml


class Syntax(str, Enum):
    yaml = "yaml"
    scpo = "scpo"


def _read_model(file: Path, action: str = "rewritten") -> tuple[CheckResult, str] | None:
    """The model and text of a file that reads completely, or None after printing why not."""
    source, problems = read_source(file)
    if source is None:
        _report([CheckResult(Source(path=str(file), text=""), None, problems)])
        return None
    result = parse_model(source.text, path=source.path)
    if not result.ok:
        _report([result])
        err.print(f"[red]✗[/] {_esc(file)}: not {action} (fix the errors above first; nothing was "
                  "changed)", soft_wrap=True)
        return None
    return result, source.text


def _model_of(file: Path) -> tuple[CheckResult, str]:
    _need_spec_files([file])
    model = _read_model(file)
    if model is None:
        raise typer.Exit(1)
    return model


def _canonical(file: Path, result: CheckResult, text: str) -> str | None:
    """The canonical text of a file that read completely; None (after saying why) for a YAML file
    with comments, which a rewrite would lose."""
    if syntax_of(str(file)) == "yaml":
        comments = count_comments(text)
        if comments:
            err.print(f"[red]✗[/] {_esc(file)}: has {comments} comment(s), which a YAML rewrite "
                      "cannot keep; not formatted (nothing was changed)", soft_wrap=True)
            return None
        return format_yaml(result.spec)
    return format_spec(result.spec, find_comments(text))


def _write(target: Path, text: str) -> bool:
    """Write a file, or say why it cannot be written (no traceback) and return False."""
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as e:
        err.print(f"[red]error:[/] cannot write {_esc(target)}: {_esc(e.strerror or e)}",
                  soft_wrap=True)
        return False
    return True


@command()
def fmt(files: List[Path] = typer.Argument(..., help="Spec files."),
        write: bool = typer.Option(False, "--write", "-w", help="Rewrite each file in place."),
        check_only: bool = typer.Option(False, "--check",
                                        help="List the files that are not canonically formatted "
                                             "(exit 1 if any); change nothing."),
        ) -> None:
    """Print the spec in canonical layout (comments kept; running it twice changes nothing).

    One FILE is printed to stdout; several need -w or --check.  Exit 0 when done (or, with
    --check, when every file is canonical); 1 when a file has errors, is not canonical (--check)
    or cannot be written; 2 for a usage error (a missing file, several files without -w/--check).
    """
    _need_spec_files(files)
    if len(files) > 1 and not (write or check_only):
        _usage("several files: add -w to rewrite them or --check to list the ones not canonical "
               "(one file is printed to stdout)")
    failed = False
    for file in files:
        model = _read_model(file, "formatted" if check_only else "rewritten")
        formatted = model and _canonical(file, *model)
        if formatted is None:
            failed = True
            continue
        text = model[1]
        if check_only:
            if formatted != text:
                err.print(f"{_esc(file)}: not canonically formatted (run `scpo fmt -w "
                          f"{_esc(file)}`)", soft_wrap=True)
                failed = True
        elif write:
            if formatted != text and not _write(file, formatted):
                failed = True
                continue
            err.print(f"formatted {_esc(file)}", soft_wrap=True)
        else:
            sys.stdout.write(formatted)
    raise typer.Exit(1 if failed else 0)


def _relocated(spec, source: Path, target: Path):
    """The spec with its relative data path rewritten to point at the same file from `target`'s
    folder (paths in a spec are relative to the spec file), and the (old, new) path or None."""
    obj = spec.objective
    data = getattr(obj, "data", None)
    if data is None or Path(data.value).is_absolute():
        return spec, None
    real = os.path.join(source.resolve().parent, data.value)
    moved = Path(os.path.relpath(real, target.resolve().parent)).as_posix()
    if moved == data.value:
        return spec, None
    obj = obj.model_copy(update={"data": data.model_copy(update={"value": moved})})
    return spec.model_copy(update={"objective": obj}), (data.value, moved)


@command()
def convert(file: Path = typer.Argument(..., help="A spec file."),
            to: Syntax = typer.Option(..., "--to", help="The syntax to write: yaml or scpo."),
            output: Optional[Path] = typer.Option(None, "--out", "-o",
                                                  help="Write here instead of stdout (a relative "
                                                       "data path is rewritten for this folder)."),
            ) -> None:
    """Write a spec in the other syntax (same model: converting back gives the same spec).

    Exit 0 when written; 1 when the spec has errors or OUT cannot be written; 2 for a usage error
    (a missing FILE, an OUT that is a directory or whose folder does not exist).
    """
    if output is not None:
        if output.is_dir():
            _usage(f"--out {output} is a directory; give a file name, e.g. {output / file.stem}"
                   f".{to.value}")
        if not output.resolve().parent.is_dir():
            _usage(f"--out {output}: the folder {output.parent} does not exist")
    result, text = _model_of(file)
    spec = result.spec
    if output is not None:
        spec, moved = _relocated(spec, file, output)
        if moved:
            err.print(f"[yellow]note:[/] data path {_esc(moved[0])} → {_esc(moved[1])} (relative "
                      f"to {_esc(output)})", soft_wrap=True)
    from_yaml = syntax_of(str(file)) == "yaml"
    comments = [] if from_yaml else find_comments(text)
    if to == Syntax.yaml:
        converted = format_yaml(spec)
        lost = count_comments(text) if from_yaml else len(comments)
    else:
        converted = format_spec(spec, comments)
        lost = count_comments(text) if from_yaml else 0
    if lost:
        err.print(f"[yellow]note:[/] {lost} comment(s) are not carried over (YAML comments "
                  "cannot be read or written)")
    if output is not None:
        if not _write(output, converted):
            raise typer.Exit(1)
        err.print(f"wrote {_esc(output)}", soft_wrap=True)
    else:
        sys.stdout.write(converted)
