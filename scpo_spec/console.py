"""The `scpo` console script.  Loading the command line takes Python ~0.7 s of imports; a
Ctrl-C in that time is "interrupted", exit 130, as during a command (cli/), not a traceback.
Nothing but `sys` is imported before the guard (scpo_spec/__init__.py imports lazily)."""

import sys


def main() -> None:
    try:
        from scpo_spec.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    run()
