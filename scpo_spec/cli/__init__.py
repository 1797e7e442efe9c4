"""The `scpo` command line (typer + rich): the app, and `command`, which every command module
(spec_commands, format_commands, train_command, run_commands, verify_command) registers with.

Exit codes: 0 ok (for `train`: CERTIFIED); 1 a spec has errors, a run is refused (`export`:
a run NOT CERTIFIED without --force), or `train` ended NOT CERTIFIED / its audit failed; 2 usage
errors (and `train` given a spec with errors); `verify`: 0 PROVED, 1 a counterexample, 3
undecided, 2 usage or spec errors; 130 interrupted.  Every error scpo-spec raises on purpose is a
`ScpoError`, printed in one place (`command`); anything else escaping is a bug.
"""

from __future__ import annotations

import functools

import typer

from scpo_spec.cli.common import _esc, err, out
from scpo_spec.errors import ScpoError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Safety specs for constrained policy optimisation (SCPO).")


def _version(value: bool) -> None:
    """`scpo --version`: the installed distribution's version (what a bug report needs)."""
    if value:
        from importlib.metadata import PackageNotFoundError, version
        try:
            number = version("scpo-spec")
        except PackageNotFoundError:  # run from a source tree that is not installed
            from scpo_spec import __version__ as number
        out.print(f"scpo {number}", markup=False)
        raise typer.Exit(0)


@app.callback()
def _main(show_version: bool = typer.Option(False, "--version", callback=_version,
                                            is_eager=True, help="Print the version and exit."),
          ) -> None:
    """Safety specs for constrained policy optimisation (SCPO)."""


def command(*args, **kwargs):
    """`app.command`, with every ScpoError (and OSError: a read-only folder, a full disk)
    printed the same way and turned into its exit code: the one place errors are shown."""
    def register(f):
        @functools.wraps(f)
        def handled(*a, **k):
            try:
                return f(*a, **k)
            except ScpoError as e:  # unwrapped: a path or command in it stays whole
                err.print(f"[red]error:[/] {_esc(e)}", soft_wrap=True)
                raise typer.Exit(e.exit_code)
            except OSError as e:
                err.print(f"[red]error:[/] {_esc(e.strerror or e)}"
                          + (f": {_esc(e.filename)}" if e.filename else ""), soft_wrap=True)
                raise typer.Exit(1)
            except KeyboardInterrupt:  # a command's own handling says more where it has more
                err.print("[yellow]interrupted[/]")
                raise typer.Exit(130)
        return app.command(*args, **kwargs)(handled)
    return register


# the command modules register their commands on `app` (through `command`) as they are imported
from scpo_spec.cli import (format_commands, run_commands, spec_commands,  # noqa: E402,F401
                           train_command, verify_command)

# `scpo --help` lists the commands in this order, whichever module registers them
HELP_ORDER = ("check", "fmt", "convert", "compile", "train", "audit", "runs", "keygen", "calibrate",
              "lsp", "report", "verify", "export")
app.registered_commands.sort(key=lambda c: HELP_ORDER.index(c.name or c.callback.__name__))


def main() -> None:  # pragma: no cover - the console script
    app()
