"""What the audit found wrong with a run, as data: each problem is its sentence (what `scpo
audit` prints, what the JSON and the report show) and its `kind`, which the verdict reads
instead of searching the sentences for words."""

from __future__ import annotations

import enum


class ProblemKind(enum.Enum):
    LOG = "log"                  # the log cannot be read, or ends with a torn line
    CHAIN = "chain"              # a line that is not a record, a wrong seq or prev
    RECORD = "record"            # a record the audit cannot read or use
    CERTIFICATE = "certificate"  # a certificate, step or end that does not recompute or agree
    VIOLATION = "violation"      # an accepted policy whose logged g violates
    STATE = "state"              # the state file, against the log
    SPEC = "spec"                # RUN/spec.* or the header's account of the spec
    ANCHOR = "anchor"            # the chain does not end at the given head
    SIGNATURE = "signature"      # the signature does not verify


class Problem(str):
    """One problem: a `str` (its sentence, so every reader that prints or joins problems keeps
    doing so) that also carries its `kind`."""

    kind: ProblemKind

    def __new__(cls, kind: ProblemKind, text: str) -> Problem:
        self = super().__new__(cls, text)
        self.kind = kind
        return self

    def __reduce__(self):
        return Problem, (self.kind, str(self))

    def __repr__(self) -> str:
        return f"Problem({self.kind.name}, {str(self)!r})"


def of_kind(problems: list, kind: ProblemKind) -> list[str]:
    """The problems of one kind, in order."""
    return [p for p in problems if getattr(p, "kind", None) is kind]
