"""The `scpo` command line (typer + rich).

Exit codes: 0 ok (for `train`: CERTIFIED); 1 a spec has errors, a run is refused (`export`:
a run NOT CERTIFIED without --force), or `train` ended NOT CERTIFIED / its audit failed; 2 usage errors (and `train` given a spec with errors);
`verify`: 0 PROVED, 1 a counterexample, 3 undecided, 2 usage or spec errors; 130 interrupted.  Every error scpo-spec raises on purpose is a `ScpoError`, printed in one
place (`main`); anything else escaping is a bug.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from scpo_spec.engine.listener import RunListener  # torch-free: what a training tells
from scpo_spec.errors import ScpoError
from scpo_spec.language.diagnostics import render, to_json
from scpo_spec.language.format import format_spec
from scpo_spec.language.lets import expand
from scpo_spec.language.load import CheckResult, check_file, parse_model, read_source, syntax_of
from scpo_spec.language.scpo_reader import find_comments
from scpo_spec.language.source import Source
from scpo_spec.language.yaml_reader import count_comments
from scpo_spec.language.yaml_writer import format_yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Safety specs for constrained policy optimisation (SCPO).")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


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


class Syntax(str, Enum):
    yaml = "yaml"
    scpo = "scpo"


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


def _esc(value) -> str:
    """Text from users (paths, messages) printed literally, never read as rich markup."""
    return escape(str(value))


def _usage(message: str) -> None:
    err.print(f"[bold red]error:[/] {_esc(message)}", soft_wrap=True)  # paths stay whole
    raise typer.Exit(2)


def _need_head_hash(head: str | None) -> None:
    """A --head that is not a SHA-256 in hex is a usage error, not an anchor that fails."""
    if head is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", head.strip()):
        _usage(f"--head {head}: expected the 64 hex digits `scpo train` printed after `head`")


def _need_spec_files(files: List[Path]) -> None:
    """A path that does not exist, or is a folder, a pipe or a device, is a usage error (exit
    2), said before any file is checked."""
    missing = [f for f in files if not f.exists()]
    if missing:
        _usage(f"no such file: {', '.join(map(str, missing))}")
    folders = [f for f in files if f.is_dir()]
    if folders:
        _usage(f"{', '.join(map(str, folders))}: a directory, not a spec file (name the "
               f"spec files, e.g. {folders[0] / '*.scpo'})")
    other = [f for f in files if not f.is_file()]
    if other:
        _usage(f"{', '.join(map(str, other))}: not a regular file (a pipe or a device), not a "
               "spec file")


def _report(results: list[CheckResult], console: Console = err) -> None:
    for r in results:
        render(r.diagnostics, {r.source.path: r.source}, console)


def _check_file(file: Path, resuming: bool = False) -> CheckResult:
    """The language checks, then — once they pass — the checks that run the author's code (a
    `system python` callable): a bad callable is one more located error, the same exit code.
    A `policy from` run is audited too, unless `resuming` (the run recorded its source)."""
    result = check_file(file)
    if result.ok:
        from scpo_spec.compile.usercode import check_code
        from scpo_spec.engine.warm import check_warm_start
        base = file.resolve().parent
        warm = [] if resuming else check_warm_start(result.spec, base)
        result.diagnostics = sorted([*result.diagnostics, *check_code(result.spec, base), *warm],
                                    key=lambda d: d.sort_key())
    return result


@command()
def check(files: List[Path] = typer.Argument(..., help="Spec files (.scpo, .yaml, .yml)."),
          as_json: bool = typer.Option(False, "--json", help="Print diagnostics as JSON."),
          rollout: bool = typer.Option(False, "--rollout",
                                       help="Also evaluate g(θ₀): can training start?"),
          ) -> None:
    """Check spec files: syntax, names, shapes, ranges, formulas, data files, environments.
    Exit 0 valid; 1 an error (with --rollout: or θ₀ violates a metric); 2 a usage error, or
    (--rollout) a `system python` plant that raised or left the finite numbers."""
    _need_spec_files(files)
    results = [_check_file(f) for f in files]
    failed = [r for r in results if not r.ok]
    if as_json:
        objects = []
        for r, f in zip(results, files):
            obj = {"file": r.source.path, "ok": r.ok, "diagnostics": to_json(r.diagnostics)}
            if rollout and r.ok:  # g(θ₀) per metric, and whether training may start
                compiled, g = _initial_metrics(r, f)
                obj["metrics"] = {m.name: v for m, v in zip(compiled.metrics, g)}
                obj["safe"] = all(v <= -m.margin for m, v in zip(compiled.metrics, g))
                if not obj["safe"]:
                    failed.append(r)
            objects.append(obj)
        payload = {"ok": not failed, "files": objects}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        _report(results, out)  # diagnostics and summary on one stream, in order (like ruff)
        for r in results:
            errors = sum(d.severity == "error" for d in r.diagnostics)
            warnings = len(r.diagnostics) - errors
            extra = f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else ""
            if r.ok:
                out.print(f"[green]✓[/] {r.source.path}{extra}")
            else:
                out.print(f"[red]✗[/] {r.source.path}: {errors} error{'s' * (errors != 1)}"
                          f"{extra}")
        if len(results) > 1:
            out.print(f"{len(results) - len(failed)} of {len(results)} specs are valid")
    if rollout and not as_json:
        for r, f in zip(results, files):
            if r.ok and not _rollout_check(r, f):
                failed.append(r)
    raise typer.Exit(1 if failed else 0)


def _initial_metrics(result: CheckResult, file: Path):
    """The compiled spec and g(θ₀), one float per metric."""
    compiled = _compile_or_exit(result, file)
    g = compiled.evaluator(compiled.family.theta0[None])[0].tolist()
    if not all(map(math.isfinite, g)):  # the author's plant leaving the numbers: say where
        failure = compiled.evaluator.plant_failure(compiled.family.theta0)
        if failure is not None:
            raise failure
    return compiled, g


def _rollout_check(result: CheckResult, file: Path) -> bool:
    """Evaluate every metric at θ₀ and say whether training may start."""
    from rich.table import Table

    compiled, g = _initial_metrics(result, file)
    table = Table(title=f"{_esc(file)}: g(θ₀) on {compiled.evaluator.x0.shape[0]} scenarios, "
                        f"horizon {compiled.evaluator.horizon}")
    for col in ("metric", "g(θ₀)", "needs ≤", "", "where"):
        table.add_column(col)
    safe = True
    for m, v in zip(compiled.metrics, g):
        ok = v <= -m.margin
        safe &= ok
        table.add_row(m.name, f"{v:.6g}", _bound(m.margin), "[green]✓[/]" if ok else "[red]✗[/]",
                      m.location)
    out.print(table)
    if safe:
        out.print(f"[green]✓[/] {_esc(file)}: θ₀ is safe; training can start")
    else:
        out.print(f"[red]✗[/] {_esc(file)}: θ₀ violates a metric; training would refuse to start")
    return safe


def _rounded_up(x: float, digits: int = 4) -> str:
    """An upper bound printed short and still an upper bound: its digits rounded toward +∞
    (printed to the nearest, −2.11496e-6 would read −2.115e-6, below what was proved)."""
    import decimal
    if not math.isfinite(x):
        return str(x)
    up = decimal.Context(prec=digits, rounding=decimal.ROUND_CEILING).create_decimal(x)
    return f"{float(up):.{digits}g}"


def _bound(margin: float) -> str:
    """The bound −margin that a metric must stay under, as printed: `0`, never `-0`."""
    return f"{-margin + 0.0:g}"  # + 0.0 turns -0.0 into 0.0


def _compile_or_exit(result: CheckResult, file: Path):
    from scpo_spec.engine.warm import compile_warm  # a `policy from` resolved
    return compile_warm(result.spec, file.resolve().parent)[0]


def _read_model(file: Path, action: str = "rewritten") -> tuple[CheckResult, str] | None:
    """The model and text of a file that reads completely, or None after printing why not."""
    source, problems = read_source(file)
    if source is None:
        _report([CheckResult(Source(path=str(file), text=""), None, problems)])
        return None
    result = parse_model(source.text, path=source.path)
    if not result.ok:
        _report([result])
        err.print(f"[red]✗[/] {_esc(file)}: not {action} (fix the errors above first; nothing was "
                  "changed)", soft_wrap=True)
        return None
    return result, source.text


def _model_of(file: Path) -> tuple[CheckResult, str]:
    _need_spec_files([file])
    model = _read_model(file)
    if model is None:
        raise typer.Exit(1)
    return model


def _canonical(file: Path, result: CheckResult, text: str) -> str | None:
    """The canonical text of a file that read completely; None (after saying why) for a YAML file
    with comments, which a rewrite would lose."""
    if syntax_of(str(file)) == "yaml":
        comments = count_comments(text)
        if comments:
            err.print(f"[red]✗[/] {_esc(file)}: has {comments} comment(s), which a YAML rewrite "
                      "cannot keep; not formatted (nothing was changed)", soft_wrap=True)
            return None
        return format_yaml(result.spec)
    return format_spec(result.spec, find_comments(text))


def _write(target: Path, text: str) -> bool:
    """Write a file, or say why it cannot be written (no traceback) and return False."""
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as e:
        err.print(f"[red]error:[/] cannot write {_esc(target)}: {_esc(e.strerror or e)}",
                  soft_wrap=True)
        return False
    return True


@command()
def fmt(files: List[Path] = typer.Argument(..., help="Spec files."),
        write: bool = typer.Option(False, "--write", "-w", help="Rewrite each file in place."),
        check_only: bool = typer.Option(False, "--check",
                                        help="List the files that are not canonically formatted "
                                             "(exit 1 if any); change nothing."),
        ) -> None:
    """Print the spec in canonical layout (comments kept; running it twice changes nothing).

    One FILE is printed to stdout; several need -w or --check.  Exit 0 when done (or, with
    --check, when every file is canonical); 1 when a file has errors, is not canonical (--check)
    or cannot be written; 2 for a usage error (a missing file, several files without -w/--check).
    """
    _need_spec_files(files)
    if len(files) > 1 and not (write or check_only):
        _usage("several files: add -w to rewrite them or --check to list the ones not canonical "
               "(one file is printed to stdout)")
    failed = False
    for file in files:
        model = _read_model(file, "formatted" if check_only else "rewritten")
        formatted = model and _canonical(file, *model)
        if formatted is None:
            failed = True
            continue
        text = model[1]
        if check_only:
            if formatted != text:
                err.print(f"{_esc(file)}: not canonically formatted (run `scpo fmt -w "
                          f"{_esc(file)}`)", soft_wrap=True)
                failed = True
        elif write:
            if formatted != text and not _write(file, formatted):
                failed = True
                continue
            err.print(f"formatted {_esc(file)}", soft_wrap=True)
        else:
            sys.stdout.write(formatted)
    raise typer.Exit(1 if failed else 0)


def _relocated(spec, source: Path, target: Path):
    """The spec with its relative data path rewritten to point at the same file from `target`'s
    folder (paths in a spec are relative to the spec file), and the (old, new) path or None."""
    obj = spec.objective
    data = getattr(obj, "data", None)
    if data is None or Path(data.value).is_absolute():
        return spec, None
    real = os.path.join(source.resolve().parent, data.value)
    moved = Path(os.path.relpath(real, target.resolve().parent)).as_posix()
    if moved == data.value:
        return spec, None
    obj = obj.model_copy(update={"data": data.model_copy(update={"value": moved})})
    return spec.model_copy(update={"objective": obj}), (data.value, moved)


@command()
def convert(file: Path = typer.Argument(..., help="A spec file."),
            to: Syntax = typer.Option(..., "--to", help="The syntax to write: yaml or scpo."),
            output: Optional[Path] = typer.Option(None, "--out", "-o",
                                                  help="Write here instead of stdout (a relative "
                                                       "data path is rewritten for this folder)."),
            ) -> None:
    """Write a spec in the other syntax (same model: converting back gives the same spec).

    Exit 0 when written; 1 when the spec has errors or OUT cannot be written; 2 for a usage error
    (a missing FILE, an OUT that is a directory or whose folder does not exist).
    """
    if output is not None:
        if output.is_dir():
            _usage(f"--out {output} is a directory; give a file name, e.g. {output / file.stem}"
                   f".{to.value}")
        if not output.resolve().parent.is_dir():
            _usage(f"--out {output}: the folder {output.parent} does not exist")
    result, text = _model_of(file)
    spec = result.spec
    if output is not None:
        spec, moved = _relocated(spec, file, output)
        if moved:
            err.print(f"[yellow]note:[/] data path {_esc(moved[0])} → {_esc(moved[1])} (relative "
                      f"to {_esc(output)})", soft_wrap=True)
    from_yaml = syntax_of(str(file)) == "yaml"
    comments = [] if from_yaml else find_comments(text)
    if to == Syntax.yaml:
        converted = format_yaml(spec)
        lost = count_comments(text) if from_yaml else len(comments)
    else:
        converted = format_spec(spec, comments)
        lost = count_comments(text) if from_yaml else 0
    if lost:
        err.print(f"[yellow]note:[/] {lost} comment(s) are not carried over (YAML comments "
                  "cannot be read or written)")
    if output is not None:
        if not _write(output, converted):
            raise typer.Exit(1)
        err.print(f"wrote {_esc(output)}", soft_wrap=True)
    else:
        sys.stdout.write(converted)


def _checked(file: Path, code: int = 1, resuming: bool = False) -> CheckResult:
    """A spec that passed `check`, or exit `code` with its diagnostics."""
    _need_spec_files([file])
    result = _check_file(file, resuming)
    if not result.ok:
        _report([result])
        err.print(f"[red]✗[/] {_esc(file)}: fix the errors above first (`scpo check {_esc(file)}`)")
        raise typer.Exit(code)
    return result


class Emit(str, Enum):
    qcqp = "qcqp"
    metrics = "metrics"


@command("compile")
def compile_(file: Path = typer.Argument(..., help="A spec file."),
             emit: Emit = typer.Option(Emit.qcqp, "--emit",
                                       help="qcqp: the projection problem; metrics: the metric tree."),
             ) -> None:
    """Print what a spec compiles to: the projection QCQP or the metric tree."""
    from scpo_spec.compile.describe import describe_metric
    from scpo_spec.compile.projection import ProjectionTemplate
    result = _checked(file)
    compiled = _compile_or_exit(result, file)
    s, ev = compiled.settings, compiled.evaluator
    if emit == Emit.metrics:
        consts = {c.name: c.value.value for c in result.spec.consts}
        states = [x.name for x in result.spec.system.states]
        inputs = [x.name for x in result.spec.system.inputs]
        tau = s.tau if s.aggregate == "smooth" else None
        out.print(f"{len(ev.metrics)} metrics over {ev.x0.shape[0]} scenarios, horizon "
                  f"{ev.horizon} (states t = 0…{ev.horizon}, inputs t = 0…{ev.horizon - 1}); "
                  "safe iff g ≤ −margin", markup=False)
        for m, prop in zip(ev.metrics, result.spec.properties):
            out.print(f"\n{m.section} {m.name}   {m.location}", markup=False)
            out.print(f"  as written : {m.formula}", markup=False)
            out.print("  compiled   : g = " + describe_metric(  # lets expanded: what is computed
                expand(prop.formula, result.spec), consts, states, inputs, ev.horizon, tau),
                markup=False)
            ell = "estimated" if m.smoothness is None else f"{m.smoothness:g}"
            out.print(f"  margin {m.margin:g}   smoothness ℓ = {ell}"
                      + (f"   lipschitz {m.lipschitz:g}" if m.lipschitz else ""), markup=False)
        return
    n = s.bank_size
    template = ProjectionTemplate(len(ev.metrics), n, compiled.family.d, s.radius,
                                  ev.margins, ev.names, s.solver)
    kinds = ["s (raw step)", "previous update", f"{s.directions} probes (ν = {s.perturbation:g})"]
    out.print(f"QCQP of {_esc(file)} (d = {compiled.family.d} weights, k = {len(ev.metrics)} metrics, "
              f"n = {n} candidates)\n", markup=False)
    out.print(template.describe(kinds, [m.smoothness for m in ev.metrics],
                                [m.location for m in ev.metrics]), markup=False)


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


@command()
def audit(run: Path = typer.Argument(..., help="A run directory."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
          head: Optional[str] = typer.Option(None, "--head", metavar="HEX",
                                             help="Fail unless the chain ends "
                                             "exactly at this hash (printed by `scpo train`)."),
          key: Optional[Path] = typer.Option(None, "--key", help="Ed25519 public key: fail "
                                             "unless RUN/signature.json signs the head with it."),
          allow_incomplete: bool = typer.Option(False, "--allow-incomplete",
                                                help="Pass a run that has no end record yet."),
          ) -> None:
    """Re-verify a run from its log alone: the hash chain and every certificate (no torch).
    The stored spec must pass `scpo check` again.  The last line is the run's verdict, as every
    command gives it (CERTIFIED also needs the holdout validation the log holds); the exit code
    is the audit's, which fails exactly the runs `load_run` refuses, and a RUN/verify.json that
    is not consistent with the log (`verify:` says what `scpo verify` proved; it never changes
    the verdict).  Exit 0 passed; 1 any failure, or a run that did not end (unless
    --allow-incomplete); 2 not a run directory, a
    --head that is not a hash or a --key that cannot be read."""
    from scpo_spec.audit.verdict import STORED_SPEC, judge
    if not run.is_dir():
        _usage(f"not a run directory: {run}")
    _need_head_hash(head)
    if key is not None:  # a key that cannot verify is a usage error, said before anything
        from scpo_spec.audit.signing import SigningError, check_public_key
        try:
            check_public_key(key)
        except SigningError as e:
            _usage(f"--key: {e}")
    from scpo_spec.audit.records import EndState
    res, verdict = judge(run, head=head, key=key)
    # exactly what load_run refuses, and a verify record its own numbers or this log contradict
    # (a separate claim: it never changes the verdict, and `scpo verify` replaces it)
    passed = not verdict.refusals(allow_incomplete) and res.verify != "inconsistent"
    stored = next(c for c in verdict.checks if c.name == STORED_SPEC)
    if as_json:
        sys.stdout.write(json.dumps({**res.as_dict(), "passed": passed, **verdict.as_dict()},
                                    indent=2) + "\n")
        raise typer.Exit(0 if passed else 1)
    mark = lambda ok: "[green]✓[/]" if ok else "[red]✗[/]"  # noqa: E731
    out.print(f"{mark(res.chain_ok)} hash chain ({res.steps} steps; head {res.head})",
              soft_wrap=True)
    if res.anchored is not None:
        out.print(f"{mark(res.anchored)} the chain ends at the given head")
    if res.signature is not None:
        out.print(f"{mark(res.signature == 'valid')} signature: {_esc(res.signature)}")
    out.print(f"{mark(res.certificates_ok)} certificates recomputed from the log")
    out.print(f"{mark(res.accepted_violations == 0)} accepted iterates violating a metric: "
              f"{res.accepted_violations}")
    out.print(f"{mark(stored.ok)} the spec file and the header's metrics are the header's "
              "spec text, which passes `scpo check`")
    out.print(f"{mark(res.state_ok)} state file bound to the log" if res.state_present else
              "  state file: absent (the log alone was audited)")
    out.print(f"{mark(res.complete)} run complete"
              + (f" ({_esc(res.end_reason)})" if res.complete else
                 f": {_esc(res.end_reason)} (continue it with `scpo train … --resume`)"
                 if res.end_reason and EndState.of(res.end_reason) is EndState.INTERRUPTED else
                 ": no end record after the last step (killed or cut short)"))
    out.print(f"  updates accepted {res.accepted}, rejected {res.rejected}; certificates "
              f"refuted {res.refutations}; loss {res.loss_first:.6g} → {res.loss_last:.6g}"
              if res.loss_first is not None else "  no initial record")
    if res.proof_every is not None:
        theta0 = {True: "PROVED", False: "not proved", None: "no proof"}[res.theta0_proved]
        out.print(f"  verify every {res.proof_every}: {res.proved_steps} accepted updates "
                  f"PROVED over the whole initial box (θ₀ {theta0}; proofs checked for "
                  "consistency, not redone)", markup=False)
    for name, v in res.worst.items():
        out.print(f"  worst {name}: {v:.6g} ({res.worst_step[name]})", markup=False)
    _say_verify_record(res, run, mark)
    for p in (res.problems + ([stored.detail] if res.spec_ok and not stored.ok else [])
              + res.verify_problems):
        out.print("problem: " + p, markup=False, style="red", soft_wrap=True)
    if head is None and res.signature is None:
        out.print("note: without --head or --key this proves the log is consistent, not that it "
                  "is the log the run wrote (a rewritten, re-hashed log is consistent too)",
                  markup=False, style="dim")
    out.print(("[green]audit passed[/]" if passed else "[red]audit FAILED[/]")
              + f": {_esc(run)}")
    _say_verdict(verdict)  # the report's verdict: the audit, the stored spec and the holdout
    raise typer.Exit(0 if passed else 1)


def _say_verify_record(res, run: Path, mark) -> None:
    """`scpo audit`'s line for RUN/verify.json: what it claims, or why it is not believed."""
    if res.verify == "absent":
        out.print(f"  verify: absent (prove the final policy over the whole initial box with "
                  f"`scpo verify {_esc(run)}`)", soft_wrap=True)
    elif res.verify == "inconsistent":
        out.print(f"{mark(False)} verify: inconsistent (the verify record is not believed; run "
                  f"`scpo verify {_esc(run)}` again)", soft_wrap=True)
    else:
        out.print(f"{mark(True)} verify: {res.verify} (the verify record is chained to the head "
                  "and of the final policy; its proof is not redone here)")


@command()
def runs(folder: Path = typer.Argument(Path("runs"), help="A folder of runs (searched two "
                                       "levels down), or one run directory."),
         as_json: bool = typer.Option(False, "--json", help="Print a JSON list of objects."),
         ) -> None:
    """List the runs under FOLDER (default runs/), oldest first: spec, steps, accepted/rejected,
    loss first → last, the metric closest to its bound, the verdict (as `scpo report` gives it,
    from the log: the holdout as logged, nothing re-run), `scpo verify`'s verdict (from
    RUN/verify.json as `scpo audit` checks it; — none), the head hash, and when it started and
    last wrote (file times).  A directory that cannot be read is a BROKEN row saying why.
    Exit 0 listed (whatever the verdicts); 2 FOLDER does not exist."""
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table

    from scpo_spec.audit.runs import list_runs
    if not folder.is_dir():
        _usage(f"{'not a folder' if folder.exists() else 'no such folder'}: {folder}")
    rows = list_runs(folder)
    if as_json:
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        return
    if not rows:
        out.print(f"no runs under {_esc(folder)}")
        return
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    for col, justify in (("run", "left"), ("spec", "left"), ("steps", "right"),
                         ("acc/rej", "right"), ("loss first → last", "right"),
                         ("closest to its bound", "left"), ("verdict", "left"),
                         ("verify", "left"), ("head", "left"), ("started (UTC)", "left"),
                         ("ended (UTC)", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "verdict")
    when = lambda iso: iso.replace("T", " ")[:19] if iso else "—"  # noqa: E731
    for r in rows:
        if r.problem is not None:
            table.add_row(_esc(r.path), "", "", "", "", "", f"[red]BROKEN[/]: {_esc(r.problem)}",
                          "", "", when(r.started), when(r.ended))
            continue
        loss = ("—" if r.loss_first is None else
                f"{r.loss_first:.4g} → {r.loss_last:.4g}")
        worst = ("—" if r.worst_metric is None else
                 f"{r.worst_metric} {r.worst_value:.3g} (≤ {r.worst_bound:g})")
        failed = "; ".join(f.split(" (")[0] for f in r.failures or [])  # --json: in full
        verdict = ("[green]CERTIFIED[/]" if r.verdict == "CERTIFIED" else
                   f"[red]NOT CERTIFIED[/]: {_esc(failed)}")
        proof = {"PROVED": "[green]PROVED[/]", "COUNTEREXAMPLE": "[red]COUNTEREXAMPLE[/]",
                 "UNDECIDED": "[yellow]UNDECIDED[/]",
                 "inconsistent": "[red]inconsistent[/]"}.get(r.verify or "", "—")
        table.add_row(_esc(r.path), _esc(r.spec or "?"), str(r.steps),
                      f"{r.accepted}/{r.rejected}", loss, _esc(worst), verdict, proof,
                      (r.head or "")[:12], when(r.started), when(r.ended))
    natural = Measurement.get(out, out.options.update_width(240), table).maximum
    wide = Console(highlight=False, width=max(out.width, natural), file=out.file,
                   force_terminal=out.is_terminal, no_color=out.no_color)
    wide.print(table)


@command()
def keygen(key: Path = typer.Argument(..., help="Where to write the private key (the public "
                                      "key goes to KEY.pub).")) -> None:
    """Make an Ed25519 key pair for `scpo train --sign KEY` and `scpo audit --key KEY.pub`."""
    from scpo_spec.audit.signing import keygen as make_key
    public = make_key(key)
    out.print(f"private key {_esc(key)} (keep it secret); public key {_esc(public)}")


def _g3(x: float) -> str:
    """3 significant digits, short: 1.08e3 rather than 1.08e+03 (the table has many columns)."""
    return f"{x:.3g}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


_VERDICT_STYLE = {"refuted": "red", "not finite": "red", "tight": "yellow", "ok": "green",
                  "loose": "yellow", "no ℓ": "yellow"}


@command()
def calibrate(file: Path = typer.Argument(..., help="A spec file."),
              radii: int = typer.Option(5, "--radii", min=1, help="How many radii, geometric "
                                        "from the spec's perturbation ν to its radius r."),
              directions: int = typer.Option(32, "--directions", min=1,
                                             help="Random unit directions (seeded by the "
                                                  "spec's seed), plus −∇L(θ₀)."),
              factor: float = typer.Option(2.0, "--factor", min=1.0,
                                           help="Safety factor: suggested ℓ = factor × the "
                                                "largest curvature observed."),
              as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
              ) -> None:
    """Probe every metric around θ₀ at several radii and print the curvature the rollouts show
    (an ℓ below it is refuted) and a suggested ℓ.  Exit 0 when it ran; 1 when the spec has
    errors; 2 for a usage error."""
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table

    from scpo_spec.engine.calibrate import STATEMENT
    from scpo_spec.engine.calibrate import calibrate as run_calibration
    result = _checked(file)
    cal = run_calibration(_compile_or_exit(result, file), radii=radii, directions=directions,
                          factor=factor)
    if as_json:
        sys.stdout.write(json.dumps(cal.as_dict(), indent=2) + "\n")
        raise typer.Exit(0)
    out.print(f"{_esc(file)}: d = {cal.d} weights; per radius ρ, the curvature c = |g(θ₀+ρu) + "
              f"g(θ₀−ρu) − 2g(θ₀)| / ρ², the largest over {cal.directions} random unit directions "
              "u" + (" and −∇L(θ₀) (*)" if cal.gradient else ""))
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, show_edge=False)
    table.add_column("metric", no_wrap=True)
    table.add_column("spec\nℓ", justify="right", no_wrap=True)
    for rho in cal.radii:
        table.add_column(f"ρ =\n{_g3(rho)}", justify="right", no_wrap=True)
    table.add_column("suggested\nℓ", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    starred = False
    for m in cal.metrics:
        cells = []
        for j, c in enumerate(m.curvature):
            if c != c:  # nothing finite at this radius
                cells.append("[red]not finite[/]")
                continue
            star = cal.gradient and m.along_gradient[j] == c and c > 0
            starred |= star
            bad = f" [red]({m.nonfinite[j]}✗)[/]" if m.nonfinite[j] else ""
            cells.append(f"{_g3(c)}{'*' if star else ''}{bad}")
        table.add_row(_esc(m.name), "est." if m.spec_ell is None else f"{m.spec_ell:g}",
                      *cells, "—" if m.suggested != m.suggested else f"{m.suggested:g}",
                      f"[{_VERDICT_STYLE[m.verdict]}]{m.verdict}[/]")
    # never squash the numbers into ellipses (a pipe is 80 columns): print at the natural width
    natural = Measurement.get(out, out.options.update_width(1000), table).maximum
    wide = Console(highlight=False, width=max(out.width, natural), file=out.file,
                   force_terminal=out.is_terminal, no_color=out.no_color)
    wide.print(table)
    if starred:
        out.print("* along −∇L(θ₀), the direction of the first raw step", markup=False)
    for m in cal.metrics:
        where = f" ({m.location})" if m.location else ""
        if m.g0 > -m.margin:
            out.print(f"'{m.name}': g(θ₀) = {m.g0:.6g} > {_bound(m.margin)}: training would "
                      f"refuse to start{where}", markup=False, style="red")
        if m.verdict == "refuted":
            j = max(range(len(cal.radii)), key=lambda i: m.curvature[i]
                    if m.curvature[i] == m.curvature[i] else -1.0)
            out.print(f"'{m.name}': the spec's ℓ = {m.spec_ell:g} is refuted: c = "
                      f"{_g3(m.observed)} at ρ = {_g3(cal.radii[j])} ≤ r, and the smoothness "
                      f"assumption needs ℓ ≥ c{where}", markup=False)
    kinked = [m for m in cal.metrics if m.kink]
    if kinked:
        out.print(", ".join(f"'{m.name}' (∝ ρ^-{m.growth:.2g})" for m in kinked)
                  + ": the curvature grows as ρ shrinks, so g is not smooth at θ₀ (a max switching "
                  "between scenarios or steps, or a double eigenvalue) and no ℓ covers the "
                  "smallest steps; see docs/tuning.md", markup=False)
    if cal.suggested_radius != cal.radius:
        bad = [(rho, max(m.nonfinite[j] for m in cal.metrics))
               for j, rho in enumerate(cal.radii) if any(m.nonfinite[j] for m in cal.metrics)]
        hint = (f"radius {cal.suggested_radius:.3g} or less" if cal.suggested_radius
                else "a radius below the smallest probed")
        out.print("non-finite rollouts (the policy diverges or a metric is undefined there): "
                  + ", ".join(f"{n} of {cal.samples.shape[1]} directions at ρ = {rho:.3g}"
                              for rho, n in bad) + f"; try {hint}", markup=False, style="red")
    out.print(f"suggested ℓ = {cal.factor:g} × the largest curvature observed at ρ ≤ r = "
              f"{cal.radius:g}, rounded up.", markup=False)
    out.print(f"note: {STATEMENT}.", markup=False)


@command()
def lsp() -> None:
    """Run the language server for editors (the Language Server Protocol on stdin/stdout):
    diagnostics as you type, hover, completion, go to definition, outline, formatting; see
    docs/editor.md."""
    from scpo_spec.lsp.server import serve
    serve()


class ReportFormat(str, Enum):
    html = "html"
    md = "md"
    pdf = "pdf"


def _write_report(run: Path, fmt: ReportFormat, output: Optional[Path], key: Path | None = None,
                  trust_code: bool = False, head: str | None = None):
    from scpo_spec.audit.rundir import RunDir, RunError
    from scpo_spec.report import gather, write_report
    target = output or RunDir(run).report(fmt.value)
    problem = _report_target_problem(target, fmt.value)
    if problem:
        _usage(problem)
    import jinja2
    try:
        evidence = gather(run, key=key, trust_code=trust_code, head=head)
        write_report(evidence, target, fmt.value)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError,
            jinja2.TemplateError) as e:  # a hand-edited log the audit may still pass on
        raise RunError(f"{run}: the log holds values the report cannot show ({type(e).__name__}: "
                       f"{e}); `scpo audit {run}` says what it finds") from None
    return evidence, target


def _report_target_problem(target: Path, fmt: str) -> str | None:
    """Why a report may not be written at `target`: into a run directory only as its own
    report.<fmt> (its log, state and spec copy are never replaced), and never over an existing
    file that is not a .<fmt> file (a spec, say)."""
    from scpo_spec.audit.rundir import RunDir
    where = target.expanduser().resolve()
    home = RunDir(where.parent)
    if home.is_run() and where != home.report(fmt).resolve():
        return (f"--out {target} is inside the run directory {where.parent}, which keeps only "
                f"its own report.{fmt} besides what its log wrote; write the report elsewhere")
    if where.exists() and (not where.is_file() or where.suffix.lower() != f".{fmt}"):
        return f"--out {target} exists and is not a .{fmt} file; refusing to replace it"
    return None


def _say_verdict(verdict, target: Path | None = None) -> None:
    """The verdict (audit.verdict's) in one line, and where its report is, if written."""
    where = f": report {_esc(target)}" if target is not None else ""
    if verdict.certified:
        out.print(f"[green bold]CERTIFIED[/]{where}", soft_wrap=True)
    else:
        out.print(f"[red bold]NOT CERTIFIED[/] ({_esc('; '.join(verdict.failures))}){where}",
                  soft_wrap=True)


@command()
def report(run: Path = typer.Argument(..., help="A run directory."),
           fmt: ReportFormat = typer.Option(ReportFormat.html, "--format",
                                            help="html (standalone page), md (for review) or "
                                            "pdf (the page printed by headless Chromium)."),
           output: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write "
                                                 "(default RUN/report.html|md|pdf)."),
           head: Optional[str] = typer.Option(None, "--head", metavar="HEX",
                                              help="The head hash `scpo "
                                              "train` printed, kept outside the run: NOT "
                                              "CERTIFIED unless the chain ends exactly there."),
           key: Optional[Path] = typer.Option(None, "--key", help="Ed25519 public key the "
                                              "run's signature must verify with."),
           trust_code: bool = typer.Option(False, "--trust-code", help="Run the code the "
                                           "run's spec names (a python plant, a TorchScript "
                                           "backup…) to draw the final policy's rollouts, once "
                                           "its files match the SHA-256 the run recorded."),
           ) -> None:
    """Write the certification report of a run (from its log and state file; never re-trains,
    never imports or unpickles anything from the run, and runs code the spec names only with
    --trust-code).  Exit 0 when the report was written, whatever its verdict (the verdict is
    printed; `scpo audit` is the pass/fail check); 1 it could not be written (written whole or
    not at all); 2 an --out inside a run directory other than its own report.<format>, an
    existing file that is not a .<format> file (never replaced), or a --head that is not a
    hash.  Without --head (or --key) the report proves the log consistent, not that it is the
    log the run wrote: a reviewer passes the head they were given."""
    from scpo_spec.audit.rundir import RunDir
    if not RunDir(run).is_run():
        _usage(f"not a run directory (no audit.jsonl): {run}")
    _need_head_hash(head)
    evidence, target = _write_report(run, fmt, output, key, trust_code, head)
    _say_verdict(evidence.verdict, target)


class VerifyExecutor(str, Enum):
    local = "local"
    ray = "ray"


@command("verify")
def verify_(target: Path = typer.Argument(..., help="A run directory (its final policy) or a "
                                          "spec file (its θ₀)."),
            as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
            cells: Optional[int] = typer.Option(None, "--cells", min=1, help="Most cells the "
                                                "initial box may be split into (default: the "
                                                "spec's `verify { cells }`, else 4096)."),
            time_limit: Optional[float] = typer.Option(None, "--time-limit", min=0.0,
                                                       help="Seconds before the splitting "
                                                       "stops (default: the spec's `verify { "
                                                       "time_limit }`, else 300)."),
            no_record: bool = typer.Option(False, "--no-record", help="For a run: do not "
                                           "write the result to RUN/verify.json."),
            executor: VerifyExecutor = typer.Option(VerifyExecutor.local, "--executor",
                                                    help="Where the cells are bounded: this "
                                                    "process, or the Ray cluster of the spec's "
                                                    "`executor ray { address  workers }` (else "
                                                    "RAY_ADDRESS, else a local Ray instance)."),
            ) -> None:
    """Prove each safety metric over the whole initial box (not only the scenarios), refute it
    with an initial state the ordinary evaluator re-simulates to a violation, or leave it
    undecided (docs/verify.md: what is proved, about which model).  Exit 0 every metric
    PROVED; 1 a COUNTEREXAMPLE; 3 UNDECIDED; 2 usage errors, a spec with errors, a run that
    does not pass its audit or a Ray cluster that cannot be used.  For a run, the result is
    also written to RUN/verify.json (chained to the log's head; `scpo audit` checks it), unless
    --no-record; a record that cannot be written is said on stderr and leaves the exit code the
    verdict's.  --cells and --time-limit default to the spec's `verify { }` section."""
    from scpo_spec.audit.rundir import RunDir
    from scpo_spec.plan.settings import verify_limits
    if RunDir(target).is_run():
        from scpo_spec.audit.loaded import LoadedRun
        from scpo_spec.engine.trained import load_run
        loaded = LoadedRun(target)
        try:
            run = load_run(loaded)
            compiled = run.compiled_spec()  # its files as the run recorded them
        except ScpoError as e:
            err.print(f"[red]error:[/] {_esc(e)}", soft_wrap=True)
            raise typer.Exit(2)
        theta, what = run.theta, f"run {target}: its final policy"
        base_dir = run.base_dir
        log_head = loaded.head  # the log load_run audited
    else:
        if target.is_dir():
            _usage(f"not a run directory (no audit.jsonl) nor a spec file: {target}")
        result = _checked(target, code=2)
        try:
            compiled = _compile_or_exit(result, target)
        except ScpoError as e:
            err.print(f"[red]error:[/] {_esc(e)}", soft_wrap=True)
            raise typer.Exit(2)
        theta, what = compiled.family.theta0, f"spec {target}: its initial policy θ₀"
        base_dir = target.resolve().parent
    spec_cells, spec_time_limit = verify_limits(compiled.spec)  # the flags override the spec's
    cells = cells if cells is not None else spec_cells
    time_limit = time_limit if time_limit is not None else spec_time_limit
    res = _verify_with(executor, compiled, theta, base_dir, cells, time_limit)
    recorded = None
    if what.startswith("run ") and not no_record:
        recorded = _record_verify(RunDir(target), log_head, compiled, theta, res,
                                  {"cells": cells, "time_limit": time_limit})
    if as_json:
        sys.stdout.write(json.dumps({**res.as_json(), "record": recorded}, indent=2) + "\n")
        raise typer.Exit(res.exit_code)
    out.print(f"{_esc(what)}\nmodel: {_esc(res.model)}", soft_wrap=True)
    colour = {"PROVED": "green", "COUNTEREXAMPLE": "red"}
    for name, r in res.constraints.items():
        head = f"  [{colour.get(r.verdict, 'yellow')} bold]{r.verdict}[/] {_esc(name)}: "
        bound = "unbounded" if r.bound is None else f"g ≤ {_rounded_up(r.bound)}"
        if r.verdict == "PROVED":
            body = f"{bound}, within −margin = {_bound(r.margin)}"
        elif r.verdict == "COUNTEREXAMPLE":
            cex = r.counterexample
            x0 = ", ".join(f"{v:.6g}" for v in cex["x0"])
            with_values = "".join(f", {_esc(k)} = {v:.6g}"
                                  for k, v in (cex.get("parameters") or {}).items())
            with_values += "".join(f", {_esc(k)} = [{min(v):.3g} … {max(v):.3g}] over the steps"
                                   for k, v in (cex.get("disturbances") or {}).items() if v)
            body = (f"x0 = [{x0}]{with_values} gives g = {cex['g']:.4g} > 0 (the ordinary "
                    "evaluator's rollout; --json has the values)")
        else:
            body = (f"{bound}; proved on {100 * r.proved_fraction:.3g}% of the box"
                    + (f" ({_esc(r.reason)})" if r.reason else ""))
        out.print(head + body, soft_wrap=True)
    colour_all = colour.get(res.verdict, "yellow")
    out.print(f"[{colour_all} bold]{res.verdict}[/] in {res.seconds:.2f} s over {res.cells} "
              f"cell{'s' * (res.cells != 1)}")
    if recorded is not None:
        out.print(f"recorded in {_esc(recorded)} (chained to the head {log_head[:16]}…; "
                  "`scpo audit` checks it)", soft_wrap=True)
    raise typer.Exit(res.exit_code)


def _verify_with(executor: VerifyExecutor, compiled, theta, base_dir: Path, cells: int,
                 time_limit: float):
    """The prover's result, its cells bounded here or on Ray (an unusable cluster: exit 2,
    never a verdict's code)."""
    from scpo_spec.verify.prove import verify
    if executor is VerifyExecutor.local:
        return verify(compiled, theta, cells=cells, time_limit=time_limit)
    from scpo_spec.engine.executors.ray import RayUnavailable
    from scpo_spec.engine.executors.ray_cells import RayCells
    s = compiled.settings
    try:
        cells_on = RayCells(compiled, base_dir, workers=s.ray_workers, address=s.ray_address)
    except RayUnavailable as e:
        err.print(f"[red]error:[/] {_esc(e)}", soft_wrap=True)
        raise typer.Exit(2)
    try:
        return verify(compiled, theta, cells=cells, time_limit=time_limit, executor=cells_on)
    except RayUnavailable as e:
        err.print(f"[red]error:[/] {_esc(e)}", soft_wrap=True)
        raise typer.Exit(2)
    finally:
        cells_on.close()


def _record_verify(run, head: str, compiled, theta, res, settings: dict) -> str | None:
    """Write `res` to RUN/verify.json, chained to `head`; its path, or None (said on stderr)
    when the log moved on meanwhile or the folder cannot be written."""
    import scpo_spec
    from scpo_spec.audit.records import VERIFY_FORMAT, VerifyRecord, theta_sha256
    from scpo_spec.language.scenario_bounds import initial_box
    from scpo_spec.verify.prove import KEEP, SEED
    if run.head() != head:
        err.print(f"[yellow]not recorded[/]: {_esc(run.log)} changed while verifying (another "
                  "process writes the run); the verdict above is of the policy loaded before",
                  soft_wrap=True)
        return None
    lo, hi = initial_box(compiled.spec)
    body = res.as_json()
    record = VerifyRecord.from_dict({
        **body, "format": VERIFY_FORMAT, "prev": head,
        "theta": theta_sha256(theta.detach().numpy()),
        "verifier": {"version": scpo_spec.__version__, **settings, "keep": KEEP, "seed": SEED},
        "box": {"states": [s.name for s in compiled.spec.system.states],
                "lo": [float(v) for v in lo], "hi": [float(v) for v in hi]}},
        "verify result").to_dict()
    try:
        run.write_verify(record)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        err.print(f"[yellow]not recorded[/]: cannot write {_esc(run.verify_record)} ({_esc(why)});"
                  " the verdict above stands (--no-record skips writing)", soft_wrap=True)
        return None
    return str(run.verify_record)


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


@command()
def export(run: Path = typer.Argument(..., help="A run directory."),
           fmt: ExportFormat = typer.Option(..., "--format", help="onnx or torchscript."),
           output: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write "
                                                 "(default ./RUN-NAME.onnx or ./RUN-NAME.pt; "
                                                 "never inside the run directory)."),
           force: bool = typer.Option(False, "--force", help="Export a run that is NOT "
                                      "CERTIFIED; the file says so (forced: true)."),
           trust_code: bool = typer.Option(False, "--trust-code", help="Load the TorchScript "
                                           "files the run's spec names (their SHA-256 is "
                                           "checked against the run's header)."),
           ) -> None:
    """Write a run's certified policy (backup included, float64, states (N, n) → inputs (N, m))
    as ONNX or TorchScript, its identity in the file's metadata: the spec's SHA-256, the audit
    log's head hash, θ's hash and the verdict.  Exit 0 written; 1 the run is NOT CERTIFIED
    (without --force), fails its audit, or the policy cannot be written; 2 usage errors."""
    from scpo_spec.audit.rundir import RunDir
    from scpo_spec.export import export_run
    if not RunDir(run).is_run():
        _usage(f"not a run directory (no audit.jsonl): {run}")
    done = export_run(run, fmt.value, output, force=force, trust_code=trust_code)
    meta = done.metadata
    checked = ("" if done.max_error is None else
               f"; matches the run's policy to {done.max_error:.1e} on 64 random states")
    verdict = ("[green bold]CERTIFIED[/]" if meta["verdict"] == "CERTIFIED"
               else "[red bold]NOT CERTIFIED[/] (forced)")
    out.print(f"{verdict} policy written to {_esc(done.path)}{checked}", soft_wrap=True)
    out.print(f"spec {meta['spec_sha256']}\nhead {meta['head']}\ntheta {meta['theta_sha256']}",
              markup=False)


def main() -> None:  # pragma: no cover - the console script
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
