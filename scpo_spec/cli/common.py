"""What every `scpo` command shares: the two consoles, usage errors, and a spec checked (and
compiled) the way every command that takes one checks it."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.console import Console
from rich.markup import escape

from scpo_spec.language.diagnostics import render
from scpo_spec.language.load import CheckResult, check_file

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def _esc(value) -> str:
    """Text from users (paths, messages) printed literally, never read as rich markup."""
    return escape(str(value))


def _usage(message: str) -> None:
    err.print(f"[bold red]error:[/] {_esc(message)}", soft_wrap=True)  # paths stay whole
    raise typer.Exit(2)


def _need_spec_files(files: List[Path]) -> None:
    """A path that does not exist, or is a folder, a pipe or a device, is a usage error (exit
    2), said before any file is checked."""
    missing = [f for f in files if not f.exists()]
    if missing:
        _usage(f"no such file: {', '.join(map(str, missing))}")
    folders = [f for f in files if f.is_dir()]
    if folders:
        _usage(f"{', '.join(map(str, folders))}: a directory, not a spec file (name the "
               f"spec files, e.g. {folders[0] / '*.scpo'})")
    other = [f for f in files if not f.is_file()]
    if other:
        _usage(f"{', '.join(map(str, other))}: not a regular file (a pipe or a device), not a "
               "spec file")


def _report(results: list[CheckResult], console: Console = err) -> None:
    for r in results:
        render(r.diagnostics, {r.source.path: r.source}, console)


def _check_file(file: Path, resuming: bool = False) -> CheckResult:
    """The language checks, then — once they pass — the checks that run the author's code (a
    `system python` callable): a bad callable is one more located error, the same exit code.
    A `policy from` run is audited too, unless `resuming` (the run recorded its source)."""
    result = check_file(file)
    if result.ok:
        from scpo_spec.compile.usercode import check_code
        from scpo_spec.engine.warm import check_warm_start
        base = file.resolve().parent
        warm = [] if resuming else check_warm_start(result.spec, base)
        result.diagnostics = sorted([*result.diagnostics, *check_code(result.spec, base), *warm],
                                    key=lambda d: d.sort_key())
    return result


def _checked(file: Path, code: int = 1, resuming: bool = False) -> CheckResult:
    """A spec that passed `check`, or exit `code` with its diagnostics."""
    _need_spec_files([file])
    result = _check_file(file, resuming)
    if not result.ok:
        _report([result])
        err.print(f"[red]✗[/] {_esc(file)}: fix the errors above first (`scpo check {_esc(file)}`)")
        raise typer.Exit(code)
    return result


def _bound(margin: float) -> str:
    """The bound −margin that a metric must stay under, as printed: `0`, never `-0`."""
    return f"{-margin + 0.0:g}"  # + 0.0 turns -0.0 into 0.0


def _compile_or_exit(result: CheckResult, file: Path):
    from scpo_spec.engine.warm import compile_warm  # a `policy from` resolved
    return compile_warm(result.spec, file.resolve().parent)[0]
