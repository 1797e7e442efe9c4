"""The one base of every error scpo-spec raises on purpose.

Each error that a user can cause (a bad spec, a run directory that cannot be read, a solver that
is not installed, …) derives from `ScpoError`, so the CLI catches the family in one place and
prints it the same way, with the exit code the class declares: 1 for "the input was understood
and refused", 2 for usage errors.  Anything else that escapes is a bug.
"""

from __future__ import annotations


class ScpoError(Exception):
    """An expected failure with a message meant for the user."""

    exit_code = 1
