"""`scpo runs`: one row per run directory under a folder, read through RunDir and its verdict
(audit.verdict: the one `scpo report` gives, from the log alone, nothing re-run).  A directory
that cannot be read is a row with its problem.

The log's records carry no clock, so `started` is the modification time of the spec copy the
run wrote when it was created and `ended` that of its audit log (the last append)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from scpo_spec.audit.loaded import LoadedRun
from scpo_spec.audit.rundir import RunDir

DEPTH = 2  # DIR/RUN and DIR/GROUP/RUN


@dataclass
class RunRow:
    path: str
    spec: str | None = None
    steps: int | None = None
    accepted: int | None = None
    rejected: int | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    worst_metric: str | None = None   # the metric that came closest to its bound
    worst_value: float | None = None  # its largest value over the accepted iterates
    worst_bound: float | None = None  # −margin: the value it had to stay at or under
    verdict: str = "BROKEN"           # CERTIFIED | NOT CERTIFIED | BROKEN
    failures: list | None = None      # why NOT CERTIFIED
    verify: str | None = None         # RUN/verify.json as the audit found it: PROVED |
    # COUNTEREXAMPLE | UNDECIDED | absent | inconsistent (nothing re-run)
    head: str | None = None
    started: str | None = None        # ISO 8601, UTC (file times: see the module's docstring)
    ended: str | None = None
    problem: str | None = None        # why a BROKEN directory could not be read

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def find_runs(folder: Path, depth: int = DEPTH) -> list[Path]:
    """`folder` itself if it is a run, else the runs among its sub-folders, `depth` levels down
    (a run's own folders, e.g. its tensorboard/, are not searched)."""
    if RunDir(folder).is_run():
        return [folder]
    found = []
    if depth > 0:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return found
        for child in children:
            found += find_runs(child, depth - 1)
    return found


def _when(path: Path) -> str | None:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


def read_row(path: Path) -> RunRow:
    """Everything `scpo runs` shows about one run; never raises for a bad directory."""
    from scpo_spec.audit.verdict import judge
    run = LoadedRun(path)  # the log read once, for the header and the verdict alike
    row = RunRow(path=str(path))
    specs = run.run.spec_files()
    row.started = _when(specs[0]) if specs else None
    row.ended = _when(run.run.log)
    try:
        header = run.header
        a, verdict = judge(run)
    except Exception as e:  # noqa: BLE001 - a listing shows a broken run, never a traceback
        row.problem = " ".join(str(e).split()) or type(e).__name__
        return row
    row.spec = header.spec.get("name")
    row.steps, row.accepted, row.rejected = a.steps, a.accepted, a.rejected
    row.loss_first, row.loss_last = a.loss_first, a.loss_last
    margins = {str(m.get("name")): float(m.get("margin") or 0.0) for m in header.metrics}
    closest = [(v + margins.get(name, 0.0), name, v) for name, v in a.worst.items()
               if isinstance(v, float) and math.isfinite(v)]
    if closest:
        _, row.worst_metric, row.worst_value = max(closest)
        row.worst_bound = -margins.get(row.worst_metric, 0.0) + 0.0
    row.head = a.head
    row.verdict = verdict.word
    row.failures = verdict.failures or None
    row.verify = a.verify
    return row


def list_runs(folder: Path) -> list[RunRow]:
    """The rows of every run under `folder`, oldest first (unknown start times last)."""
    rows = [read_row(p) for p in find_runs(folder)]
    return sorted(rows, key=lambda r: (r.started is None, r.started or "", r.path))
