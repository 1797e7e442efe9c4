"""`scpo train`: the training run, its listener (progress, trackers, notes), Ctrl-C and
SIGTERM as a resumable interruption, and the verdict and report at the end."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Optional

import typer

from scpo_spec.cli import command
from scpo_spec.cli.common import _bound, _checked, _esc, _usage, err, out
from scpo_spec.cli.run_commands import ReportFormat, _say_verdict, _write_report
from scpo_spec.engine.listener import RunListener  # torch-free: what a training tells
from scpo_spec.errors import ScpoError


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (a supervisor, `kill`, a closing terminal's job control) stops training the way
    Ctrl-C does: between two records, with an end record, exit 130 and a resumable run."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class TrainListener(RunListener):
    """`scpo train`'s listener: the progress display, the trackers (TensorBoard, MLflow) and
    the notes on stderr."""

    def __init__(self, progress, tracking, out_dir: Path | None):
        self.progress, self.tracking = progress, tracking
        self.run_dir = out_dir  # the real path once the run started, for the Ctrl-C hint

    def started(self, trainer, state, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.progress.start(trainer, state, run_dir)

    def recorded(self, run_dir: Path, record) -> None:
        self.tracking.record(run_dir, record)

    def stepped(self, record, state) -> None:
        self.progress.update(record, state)

    def note(self, message: str) -> None:
        err.print(f"[yellow]note:[/] {_esc(message)}", soft_wrap=True)

    def stop_requested(self) -> None:
        self.progress.request_stop()


@command()
def train(file: Path = typer.Argument(..., help="A spec file."),
          out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory, used "
                                                 "exactly: a new or empty folder (one holding "
                                                 "anything is refused: --resume or --force). "
                                                 "Default: the first free runs/NAME, "
                                                 "runs/NAME-2, …"),
          steps: Optional[int] = typer.Option(None, "--steps", min=0,
                                              help="Total steps (default: the spec's)."),
          resume: bool = typer.Option(False, "--resume",
                                      help="Continue the run in --out from its last step."),
          force: bool = typer.Option(False, "--force", help="Start a new run in --out (or "
                                     "runs/NAME) even if it holds one: the old run is moved "
                                     "aside to OUT.old-N (printed), never deleted."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
          no_report: bool = typer.Option(False, "--no-report",
                                         help="Do not write RUN/report.html at the end."),
          sign: Optional[Path] = typer.Option(None, "--sign", help="Sign the log's head with "
                                              "this Ed25519 private key (`scpo keygen`)."),
          no_tensorboard: bool = typer.Option(False, "--no-tensorboard",
                                              help="Do not write TensorBoard event files to "
                                                   "RUN/tensorboard/."),
          mlflow: Optional[str] = typer.Option(None, "--mlflow", metavar="URI",
                                               help="Also track the run in MLflow at this "
                                                    "tracking URI (default: "
                                                    "$MLFLOW_TRACKING_URI, if set)."),
          no_mlflow: bool = typer.Option(False, "--no-mlflow",
                                         help="Do not track the run in MLflow, even if "
                                              "$MLFLOW_TRACKING_URI is set."),
          device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda: where the "
                                               "rollouts and the bank run (default: the spec's "
                                               "`train { device }`, else cpu)."),
          ) -> None:
    """Train with SCPO: every accepted iterate certified and verified safe, every step logged.
    Exit 0 CERTIFIED; 1 not certified, the audit failed, or the run was refused or could not be
    written (another process writing it, a read-only folder, a full disk: the message says what
    is intact and how to --resume); 2 a usage or spec error, or an --mlflow (or
    MLFLOW_TRACKING_URI) that cannot be used (mlflow not installed, a URI it refuses), said
    before training starts, or a --sign key that cannot sign, or a `system python` plant that
    raised (or left the finite numbers on θ₀'s rollout: then no run is written; a run it stops
    is kept up to its last step, its end record saying why); 130 interrupted by Ctrl-C or
    SIGTERM (resumable; after the last step the run is complete, and its head is printed).  TensorBoard
    event files go to RUN/tensorboard/ (a failure to write them warns once, never stops the run).
    The last line is the log's head hash: keep it to anchor the log."""
    from scpo_spec.audit.rundir import RunDir
    from scpo_spec.audit.verdict import judge
    from scpo_spec.engine.run import train as run_training
    from scpo_spec.progress import TrainingProgress
    if resume and force:
        _usage("--resume continues the run in --out and --force starts a new one: give one")
    if mlflow is not None and no_mlflow:
        _usage("--mlflow tracks the run in MLflow and --no-mlflow does not: give one")
    result = _checked(file, code=2, resuming=resume)
    if sign is not None:  # a key that cannot sign is a usage error, said before training
        from scpo_spec.audit.signing import SigningError, check_private_key
        try:
            check_private_key(sign)
        except SigningError as e:
            _usage(f"--sign: {e}")
    tracking = _tracking(result.spec.name.name, not no_tensorboard,
                         None if no_mlflow else
                         mlflow or os.environ.get("MLFLOW_TRACKING_URI") or None)
    if device is not None:  # overrides `train { device }`; refused like it without a GPU
        from scpo_spec.compile.usercode import set_device
        set_device(result.spec, device, _usage)
    progress = TrainingProgress(err, enabled=not quiet)
    progress.total = steps if steps is not None else int(result.spec.train.steps)
    listener = TrainListener(progress, tracking, out_dir)
    try:
        with progress, _sigterm_interrupts():
            res = run_training(file, result.spec, result.source.text, out=out_dir, steps=steps,
                               resume=resume, force=force, listener=listener)
    except BaseException as e:
        tracking.close(interrupted=isinstance(e, KeyboardInterrupt))
        _train_failed(e, file, listener.run_dir, steps)
        raise
    signature = RunDir(res.run_dir).signature
    try:
        if sign is not None:
            from scpo_spec.audit.signing import sign_head
            sign_head(sign, res.head, signature)
        if no_report:
            audit, verdict = judge(res.run_dir)
            report_file = None
        else:  # the report audits the run; the summary reuses that audit
            evidence, report_file = _write_report(res.run_dir, ReportFormat.html, None,
                                                  trust_code=True)
            audit, verdict = evidence.audit, evidence.verdict
        progress.summary(out, res, audit)
        _say_verdict(verdict, report_file)
        certified = verdict.certified
    except (KeyboardInterrupt, OSError, ScpoError) as e:
        tracking.close(interrupted=isinstance(e, KeyboardInterrupt))
        _after_training_failed(e, res)
    except BaseException:
        tracking.close()
        raise
    tracking.finish("CERTIFIED" if certified else "NOT CERTIFIED",
                    [p for p in (report_file, RunDir(res.run_dir).log) if p is not None],
                    res.head)
    if sign is not None:
        out.print(f"signed: {signature}", markup=False)
    out.print(f"head {res.head}", markup=False)
    raise typer.Exit(0 if certified else 1)


def _after_training_failed(e: BaseException, res) -> None:
    """Ctrl-C, a full disk or a bad key after the last record: the run is complete and logged,
    only its signature or report is missing.  Say so, and print the head to anchor."""
    what = ("interrupted" if isinstance(e, KeyboardInterrupt) else
            f"could not finish ({e.strerror or e})" if isinstance(e, OSError) else
            f"could not finish ({e})")
    err.print(f"[yellow]{what}[/] after the last step: the run itself is complete and logged "
              f"(`scpo audit {_esc(res.run_dir)}` checks it); `scpo report {_esc(res.run_dir)}` "
              "writes its report", soft_wrap=True)
    out.print(f"head {res.head}", markup=False)
    raise typer.Exit(130 if isinstance(e, KeyboardInterrupt) else 1)


def _tracking(experiment: str, tensorboard: bool, mlflow_uri: str | None):
    """TensorBoard and MLflow for one `scpo train` (MLflow opened now: an unusable --mlflow is
    an error before training starts)."""
    from scpo_spec.tracking import Tracking

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/] {_esc(message)}", soft_wrap=True)
    return Tracking(tensorboard=tensorboard, mlflow_uri=mlflow_uri, experiment=experiment,
                    warn=warn)


def _train_failed(e: BaseException, file: Path, run_dir, steps: int | None = None) -> None:
    """A training that refused to start or was interrupted: say so, exit with its code (any
    other error goes on to the `command` decorator)."""
    from scpo_spec.engine.train import UnsafeStart
    if isinstance(e, UnsafeStart):
        err.print("[red]error:[/] training refuses to start: the initial policy θ₀ violates "
                  "a safety metric on the scenarios")
        for name, value, margin, loc in e.violated:
            err.print(f"  {_esc(loc or file)}: '{name}' = {value:.6g}, must be ≤ {_bound(margin)}")
        err.print("  hint: start from a safe policy (e.g. `residual = backup` or `init = backup`) "
                  "or revisit the bounds")
        raise typer.Exit(1)
    if isinstance(e, KeyboardInterrupt):
        more = f" --steps {steps}" if steps is not None else ""
        err.print("[yellow]interrupted[/]: everything up to the last step is logged; continue "
                  f"with `scpo train {_esc(file)} --out {_esc(run_dir or 'RUN')} --resume"
                  f"{more}`")
        raise typer.Exit(130)
