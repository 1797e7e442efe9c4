"""What a training tells whoever watches it: one `RunListener` handed to `engine.run.train`.

Each event is a method that does nothing here; a listener overrides the ones it needs (`scpo
train`'s shows a progress bar, feeds TensorBoard and MLflow, prints notes).  Its methods run in
the training's thread, between the run's own work: an exception one raises ends the run like any
other (a tracker that must never cost a run catches its own, as scpo_spec.tracking does)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scpo_spec.audit.records import Record, Step
    from scpo_spec.engine.train import State, Trainer


class RunListener:
    """Hears a training's events; every method a no-op by default."""

    def started(self, trainer: "Trainer", state: "State", run_dir: Path) -> None:
        """The run's directory is known and its first records are logged; `state` is θ₀'s
        (or the state a resume continues from)."""

    def recorded(self, run_dir: Path, record: "Record") -> None:
        """`record` was just committed to the log (the header included): a listener sees
        only what the audit log says, and hears every record it holds, before a held
        Ctrl-C stops the run."""

    def stepped(self, record: "Step", state: "State") -> None:
        """A step was logged; `state` is the one it led to."""

    def note(self, message: str) -> None:
        """What the user should know but is no error (a run moved aside, a spec that changed
        only in comments)."""

    def stop_requested(self) -> None:
        """A first Ctrl-C or SIGTERM, heard inside the signal handler: the run stops once the
        step under way is logged.  For a display's note only: it must do no more."""
