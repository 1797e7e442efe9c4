"""Experiment tracking beside the audit log: TensorBoard event files in RUN/tensorboard/ (on by
default) and an MLflow run when asked (`scpo runs`, the table of the runs in a folder, is
audit/runs.py: it reads run directories and their verdict, no tracker).

Trackers hear the records the engine has just committed to the log (`RunListener.recorded`), so
what they plot is what the log says.  None of it is part of the certificate: audit, report and
resume never read it.  A tracker that fails to write (a read-only folder, a full disk, a server
gone) is dropped with one warning and training goes on: tracking never costs a run."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from scpo_spec.audit.records import End, Header, Record, Resume
from scpo_spec.audit.rundir import RunDir
from scpo_spec.tracking.mlflow_run import MlflowRun, MlflowUnavailable
from scpo_spec.tracking.scalars import Point, Scalars

__all__ = ["MlflowUnavailable", "Tracking"]


class Tracking:
    """Fans each committed record out to TensorBoard and MLflow, dropping a sink that fails."""

    def __init__(self, tensorboard: bool = True, mlflow_uri: str | None = None,
                 experiment: str = "scpo", warn: Callable[[str], None] | None = None):
        """Opens MLflow's client and experiment now (MlflowUnavailable before any training);
        the event file is opened with the first record, when the run directory is known."""
        self.warn = warn or (lambda message: None)
        self.tensorboard = tensorboard
        self.mlflow = MlflowRun(mlflow_uri, experiment) if mlflow_uri else None
        self.events = None
        self.scalars: Scalars | None = None
        self.run_dir: Path | None = None
        self.off = not tensorboard and not mlflow_uri  # nothing asked for

    # ---- the engine's listener ----
    def record(self, run_dir: Path, record: Record) -> None:
        """A record the engine just committed (`RunListener.recorded`): never raises (but
        KeyboardInterrupt)."""
        if self.off:
            return
        try:
            if self.scalars is None:
                self._start(run_dir, record)
            point = self.scalars.point(record)
        except Exception as e:  # noqa: BLE001 - a record tracking cannot read stops tracking
            self.warn(f"tracking off for the rest of this run ({_reason(e)}); training and its "
                      "audit log go on")
            self.close()
            self.off = True
            return
        if point is not None:
            self._each("write", point)
        if isinstance(record, End):
            self._close_events()  # flushed and closed at the end of training

    def _start(self, run_dir: Path, record: Record) -> None:
        self.run_dir = run_dir
        header = record if isinstance(record, Header) else RunDir(run_dir).header()
        self.scalars = Scalars(header)
        if self.tensorboard:
            self._guard("TensorBoard", self._open_events, run_dir)
        if self.mlflow is not None:
            self._guard("MLflow", self.mlflow.start, run_dir, header,
                        isinstance(record, Resume))

    def _open_events(self, run_dir: Path) -> None:
        from scpo_spec.tracking.events import EventWriter
        self.events = EventWriter(RunDir(run_dir).tensorboard)

    # ---- the end ----
    def finish(self, verdict: str, artifacts: list[Path], head: str | None = None) -> None:
        """The verdict and the files (report, audit log) once training and the report are done."""
        self._close_events()
        if self.mlflow is not None:
            self._guard("MLflow", self.mlflow.finish, verdict,
                        [p for p in artifacts if p.is_file()], head)
            self.mlflow = None

    def close(self, interrupted: bool = False) -> None:
        """Whatever `finish` did not end: an interrupted or failed training."""
        self._close_events()
        if self.mlflow is not None:
            self._guard("MLflow", self.mlflow.close, "KILLED" if interrupted else "FAILED")
            self.mlflow = None

    def _close_events(self) -> None:
        if self.events is not None:
            events, self.events = self.events, None
            self._guard("TensorBoard", events.close)

    # ---- failures: one warning, then go on without that sink ----
    def _each(self, method: str, point: Point) -> None:
        if self.events is not None:
            self._guard("TensorBoard", getattr(self.events, method), point)
        if self.mlflow is not None and self.mlflow.run_id is not None:
            self._guard("MLflow", getattr(self.mlflow, method), point)

    def _guard(self, sink: str, call, *args) -> None:
        try:
            call(*args)
        except Exception as e:  # noqa: BLE001 - OSError, MlflowException, a lost connection…
            if sink == "TensorBoard":
                where = RunDir(self.run_dir).tensorboard if self.run_dir else "RUN/tensorboard"
                self.warn(f"TensorBoard off for the rest of this run: cannot write {where} "
                          f"({_reason(e)}); training and its audit log go on")
                events, self.events, self.tensorboard = self.events, None, False
                if events is not None:
                    try:
                        events.close()
                    except Exception:  # noqa: BLE001 - already failing
                        pass
            else:
                self.warn(f"MLflow off for the rest of this run: {_reason(e)}; training and "
                          "its audit log go on")
                self.mlflow = None


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:300] + " …"
