"""A run directory read once.  Every reader of a finished run — the audit and its verdict, the
report's evidence, `scpo export`, `scpo runs`, `load_run`, `--resume` — takes a `LoadedRun`
instead of a path, so that each of the run's files is read at most once and each fact made from
them is made once: the log's lines (through `RunDir`, within its size limits), their typed
records and header, the stored spec parsed once (and checked without its code, or with it under
trust), the state file bound to the log, the signature's check, the audit and the verdict.

A run directory is untrusted data: nothing here reads more than `RunDir` allows, unpickles or
imports anything; `RunDir` keeps owning the file names.  A reading that fails fails the same way
each time it is asked for (its RunError is kept).  numpy only."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from scpo_spec.audit.log import LogLine
from scpo_spec.audit.records import Header, Record
from scpo_spec.audit.rundir import RunDir, RunError, StateFile

T = TypeVar("T")


class LoadedRun:
    """One run directory and what has been read and made from it so far."""

    def __init__(self, run: str | Path | RunDir):
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self._made: dict = {}

    @classmethod
    def of(cls, run: str | Path | RunDir | LoadedRun) -> LoadedRun:
        return run if isinstance(run, LoadedRun) else cls(run)

    @property
    def path(self) -> Path:
        return self.run.path

    def once(self, key, make: Callable[[], T]) -> T:
        """`make()` the first time `key` is asked for, its value (or its RunError) after."""
        if key not in self._made:
            try:
                self._made[key] = (make(), None)
            except RunError as err:
                self._made[key] = (None, err)
        value, err = self._made[key]
        if err is not None:
            raise err
        return value

    # ---- the log ----
    @property
    def lines(self) -> list[LogLine]:
        """The log's lines (RunError: not a run, or a log that cannot be read)."""
        return self.once("lines", self.run.lines)[0]

    @property
    def tail(self) -> bytes:
        """What follows the last whole line (a torn write), if anything."""
        return self.once("lines", self.run.lines)[1]

    @property
    def header(self) -> Header:
        return self.once("header", lambda: self.run.header(self.lines))

    @property
    def records(self) -> list[Record]:
        """Every record, typed (RunError naming the first unreadable one)."""
        return self.once("records", lambda: self.run.records(self.lines))

    @property
    def head(self) -> str:
        return self.run.head(self.lines)

    # ---- the stored spec, parsed once ----
    @property
    def parsed(self):
        """The header's spec text read into its document (None: the header holds no text)."""
        return self.once("parsed", lambda: self.run.stored_text(self.header))

    def checked_spec(self, trust_code: bool = False):
        """(spec, its folder), as `RunDir.checked_spec` (RunError, CodeChanged)."""
        return self.once(("spec", trust_code),
                         lambda: self.run.checked_spec(self.header, trust_code, self.parsed))

    def stored_spec(self) -> tuple:
        """(spec, its folder, None), or (None, None, why it is unusable): checked without
        running any code it names, as the verdict needs it."""
        try:
            return (*self.checked_spec(), None)
        except RunError as err:
            return None, None, str(err)

    def declared(self) -> dict | None:
        """What the header's spec text says of the header's own fields (`RunDir.declared`)."""
        return self.once("declared", lambda: self.run.declared(self.header, self.parsed))

    # ---- the state file, the signature ----
    def bound_state(self) -> tuple[StateFile, bool]:
        """The state file, checked to belong to the log (`RunDir.bound_state`)."""
        return self.once("state", lambda: self.run.bound_state(self.lines))

    def final_theta(self, expected_hash: str | None) -> np.ndarray:
        """θ of the state file, which must be the log's last accepted policy."""
        return self.run.final_theta(expected_hash, self.bound_state())

    def signature(self, head: str, key: Path | None) -> str | None:
        """What RUN/signature.json says of `head` ("valid", "invalid: …"), checked with `key`
        when given; None when there is neither a signature nor a key."""
        from scpo_spec.audit.signing import verify_signature
        if key is None and not self.run.signature.exists():
            return None
        return self.once(("signature", head, key),
                         lambda: verify_signature(self.run.signature, head, key))
