"""The rich progress bar of `scpo train` (loss, worst margin, accept rate) and its end summary
(from the run's audit, which the CLI makes once for the report and the summary).

When the console is not a terminal (a CI log, a pipe, a file) a live bar cannot redraw: rich
would print it once, cut to 80 columns.  There the bar is replaced by plain, unwrapped lines,
one every tenth of the run or every PLAIN_SECONDS, whichever comes first, and one at the end."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn)
from rich.text import Text
from rich.table import Table

from scpo_spec.audit.verify import STALL_STREAK, describe_stall

PLAIN_SECONDS = 10.0  # the longest gap between two plain progress lines
PLAIN_LINES = 10      # plain lines per run (at most, plus the time-driven ones)


STOPPING = "stopping after this step (Ctrl-C again: now)"


class _Info(ProgressColumn):
    """The step's figures, or after a first Ctrl-C the notice in their place (the live display
    redraws it on its own: the signal handler only sets the flag read here, never prints)."""

    def __init__(self, owner: "TrainingProgress"):
        super().__init__()
        self.owner = owner

    def render(self, task) -> Text:
        if self.owner.stop_requested:
            return Text(STOPPING, style="yellow")
        return Text(task.fields.get("info", ""))


class TrainingProgress:
    def __init__(self, console: Console, enabled: bool = True):
        self.console, self.enabled = console, enabled
        self.plain = enabled and not console.is_terminal
        self.stop_requested = False
        self.progress = Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
                                 _Info(self), TimeElapsedColumn(), console=console,
                                 disable=not enabled or self.plain, transient=False)
        self._began = self._last_time = time.monotonic()
        self._last_step = 0
        self.task = None
        self.refutations = 0
        self.names: list[str] = []
        self.margins = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    total: int | None = None

    def start(self, trainer, state, run_dir) -> None:
        self.names, self.margins = trainer.ev.names, trainer.margins
        self.console.print(f"run [bold]{escape(str(run_dir))}[/]: d = {trainer.d} weights, k = {trainer.k} "
                           f"metrics, n = {trainer.n} candidates/step, "
                           f"{trainer.ev.x0.shape[0]} scenarios × {trainer.ev.horizon} steps",
                           soft_wrap=self.plain)
        self._began = self._last_time = time.monotonic()
        self._last_step = state.step
        self.task = self.progress.add_task("train", total=self.total, completed=state.step,
                                           info=self._info(state))

    def _info(self, state) -> str:
        worst = max(state.g + self.margins) if len(state.g) else 0.0
        rate = state.accepted / state.step if state.step else 1.0
        stalled = (f"  STALLED: {self.rejected_in_a_row} updates rejected in a row"
                   if self.rejected_in_a_row >= STALL_STREAK else "")
        return (f"loss {state.loss:.4g}  worst g+margin {worst:.3g}  accept {rate:.0%}  "
                f"refuted {self.refutations}{stalled}")

    def request_stop(self) -> None:
        """A first Ctrl-C or SIGTERM (called inside the signal handler: sets a flag, no more)."""
        self.stop_requested = True

    def update(self, record, state) -> None:
        self.refutations += record.refutations
        self.rejected_in_a_row = 0 if record.accepted else self.rejected_in_a_row + 1
        self.progress.update(self.task, completed=state.step, info=self._info(state))
        if self.plain:
            self._plain_line(record, state)

    def _plain_line(self, record, state) -> None:
        """One unwrapped line when a tenth of the run or PLAIN_SECONDS passed, and at the end."""
        now = time.monotonic()
        every = max(1, (self.total or 0) // PLAIN_LINES)
        last = self.total is not None and state.step >= self.total
        if not (last or record.stopped or state.step - self._last_step >= every
                or now - self._last_time >= PLAIN_SECONDS):
            return
        self._last_step, self._last_time = state.step, now
        elapsed = int(now - self._began)
        of = f"/{self.total}" if self.total is not None else ""
        self.console.print(f"train step {state.step}{of}  {self._info(state)}  "
                           f"{elapsed // 60}:{elapsed % 60:02d}", markup=False,
                           highlight=False, soft_wrap=True)

    rejected_in_a_row = 0

    def summary(self, console: Console, res, a) -> None:
        """The run's table and counts, from its audit `a`."""
        table = Table(title=escape(f"{res.run_dir}: {res.ended}"))
        for col in ("metric", "worst over accepted iterates", "needs ≤", "largest ℓ used"):
            table.add_column(col)
        for name, m in zip(self.names, self.margins):
            table.add_row(name, f"{a.worst[name]:.6g}", f"{-m + 0.0:g}", f"{a.ell_max[name]:g}")
        console.print(table)
        console.print(f"steps {a.steps}: updates accepted {a.accepted}, rejected {a.rejected}; "
                      f"certificates refuted {a.refutations} (each candidate discarded, ℓ "
                      f"doubled, step re-solved); accepted policies violating "
                      f"{a.accepted_violations}; loss {a.loss_first:.6g} → {a.loss_last:.6g}")
        if a.proof_every is not None:
            console.print(f"verify every {a.proof_every}: {a.proved_steps} accepted updates "
                          "PROVED over the whole initial box; θ₀ "
                          + ("PROVED" if a.theta0_proved else "not proved"), markup=False)
        if a.stall:
            console.print(escape(describe_stall(a.stall)), style="yellow")
        console.print(("[green]audit passed[/]" if a.ok else "[red]audit FAILED[/]")
                      + escape(f" (re-check with `scpo audit {res.run_dir}`)"))
