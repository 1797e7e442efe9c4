"""A training run on disk: create or resume its directory (scpo_spec.audit.rundir), log the
header, θ₀, every step and the end, save the state bound to each record, and load a finished run
back (`scpo_spec.load_run`).

Every record is committed the same way: the state file is written first, carrying the record's
line and its head hash, then the line is appended; Ctrl-C (and SIGTERM, when a handler turns it
into KeyboardInterrupt, as `scpo train` does) is held off for those two writes, so an interrupted
run stops between records and its end record names the step actually reached.  During the steps
the first such signal only asks to stop: the step under way finishes and is logged, then the run
ends (a second signal stops it at once), so no exception is ever raised inside torch's, numpy's,
cvxpy's or a tracker's work, where one can leave a lock held or a worker thread waiting.  A
write that fails (a full disk) leaves the log and state file as they were before it: the run
stops with a RunError naming the last intact step and the command that continues it.

One process writes a run at a time: `RunDir.lock`, held from creation or resume to the end.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import platform
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scpo_spec.audit.log import FORMAT, AuditWriter, sha256_hex
from scpo_spec.audit.records import (End, Header, Holdout, Init, Record, Resume, Step,
                                     parse_record)
from scpo_spec.audit.rundir import RunDir, RunError, StateFile
from scpo_spec.audit.warm_start import WarmStart, is_warm_start
from scpo_spec.compile.problem import CompiledSpec, compile_spec
from scpo_spec.plan.scenarios import uncertainty_record
from scpo_spec.plan.settings import declared_seeds
from scpo_spec.dtype import DTYPE
from scpo_spec.engine.executors import RayUnavailable, close_evaluator, open_evaluator
from scpo_spec.engine.holdout import validate_holdout
from scpo_spec.engine.train import State, Trainer, theta_hash
from scpo_spec.engine.warm import compile_warm
from scpo_spec.usercode.loader import CodeError
from scpo_spec.plan.code import expecting, identities, ran_as_recorded, unchanged
from scpo_spec.language.format import format_spec
from scpo_spec.language.load import syntax_of
from scpo_spec.language.model import Spec
from scpo_spec.systems.user_code import PlantFailure

__all__ = ["Run", "RunError", "TrainResult", "load_run", "train"]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("scpo-spec", "torch", "cvxpy", "clarabel", "numpy", "scipy", "gurobipy", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def fresh_dir(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, … : the first that does not exist (the default run
    directory, runs/NAME, is never reused)."""
    candidate, i = base, 1
    while candidate.exists():
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    return candidate


def _aside_name(path: Path) -> Path:
    i = 1
    while path.with_name(f"{path.name}.old-{i}").exists():
        i += 1
    return path.with_name(f"{path.name}.old-{i}")


def _new_run(out: Path | None, default: Path, force: bool, spec_path: Path,
             note: Callable[[str], None]) -> tuple[RunDir, bool]:
    """The locked directory of a new run, and whether this call made it.

    Without `out` (and without `force`) the first free runs/NAME, runs/NAME-2, … is made (mkdir
    is the atomic claim).  An explicit `out` is used exactly: a new or empty directory is fine; a
    file, or a directory holding anything, is refused (use --resume to continue a run), except
    that `force` first moves what is there aside to OUT.old-N: nothing is ever deleted."""
    if out is None and not force:
        candidate = default
        while True:
            candidate = fresh_dir(candidate)
            try:
                candidate.mkdir(parents=True)
            except FileExistsError:  # another run claimed it just now
                continue
            except OSError as e:
                raise RunError(f"cannot create {candidate}: {e.strerror or e}") from None
            run = RunDir(candidate)
            try:
                run.lock()
            except RunError:
                candidate.rmdir()
                raise
            return run, True
    path = out if out is not None else default
    if path.exists() and not path.is_dir():
        raise RunError(f"--out {path} is a file, not a run directory; give a directory")
    if path.is_dir() and not RunDir(path).is_empty():
        if not force:
            raise RunError(_occupied(path, spec_path))
        if path.resolve() in Path(spec_path).resolve().parents:
            raise RunError(f"--force would move {path} aside with the spec {spec_path} (and the "
                           "files beside it) still inside; keep the spec outside --out "
                           "(nothing was moved)")
        old = RunDir(path)
        old.lock()  # never move a run another process is writing
        aside = _aside_name(path)
        try:
            os.rename(path, aside)
        except OSError as e:
            raise RunError(f"cannot move {path} aside to {aside}: {e.strerror or e}") from None
        finally:
            old.unlock()
        note(f"--force: the previous {path} was moved aside to {aside}")
    made = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create {path}: {e.strerror or e} (nothing was written)") from None
    run = RunDir(path)
    run.lock()
    if not run.is_empty():  # another writer filled it between our look and the lock
        run.unlock()
        raise RunError(_occupied(path, spec_path))
    return run, made


def _occupied(path: Path, spec_path: Path) -> str:
    if RunDir(path).is_run():
        return (f"--out {path} already holds a run; continue it with `scpo train {spec_path} "
                f"--out {path} --resume`, or add --force to move it aside to "
                f"{_aside_name(path).name} and start a new run there")
    return (f"--out {path} is not empty (and not a run); choose another --out, or add --force "
            f"to move what is there aside to {_aside_name(path).name}")


def header(compiled: CompiledSpec, spec_text: str, spec_path: Path, trainer: Trainer,
           written: Spec | None = None) -> Header:
    """`written`: the spec as its text says, when `compiled.spec` is not (a `policy from`
    compiled as the source's policy section): the header records the text's seeds and code."""
    spec, s = written or compiled.spec, compiled.settings
    data = None
    if spec.objective.kind == "regression":
        path = spec_path.resolve().parent / spec.objective.data.value
        data = {"path": spec.objective.data.value,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return Header(
        format=FORMAT,
        spec={"name": spec.name.name if spec.name else None, "path": str(spec_path),
              "resolved": str(spec_path.resolve()), "sha256": sha256_hex(spec_text.encode()),
              "text": spec_text, "syntax": syntax_of(str(spec_path))},
        data=data, settings=vars(s),
        seeds=declared_seeds(spec),
        metrics=[{"name": m.name, "section": m.section, "formula": m.formula,
                  "margin": m.margin, "smoothness": m.smoothness, "lipschitz": m.lipschitz,
                  "location": m.location, "estimated": m.smoothness is None}
                 for m in compiled.metrics],
        dimensions={"d": compiled.family.d, "n": trainer.n, "k": trainer.k,
                    "scenarios": int(compiled.evaluator.x0.shape[0]),
                    "horizon": compiled.evaluator.horizon},
        objective=compiled.objective.describe, versions=versions(), command=" ".join(sys.argv),
        code=_code_that_ran(spec, spec_path.resolve().parent),
        uncertainty=uncertainty_record(spec), warm_start=compiled.warm_start)


def _code_that_ran(spec: Spec, base_dir: Path) -> list[dict] | None:
    """The header's fingerprints of the code the spec names, which must be the bytes that ran
    in this process (a file rewritten between its loading and its hashing is refused)."""
    code = identities(spec, base_dir)
    problems = ran_as_recorded(code, spec, base_dir)
    if problems:
        raise CodeError(f"{problems[0]}: the file changed while training started; train again")
    return code or None


# ---- the state file: State ⇄ arrays (no pickle) ----
def _state_file(trainer: Trainer, state: State, head: str, seq: int,
                pending: bytes | None) -> StateFile:
    arrays = {"theta": state.theta.numpy(), "previous": state.previous.numpy(), "g": state.g,
              "ell": state.ell, "ell_floor": state.ell_floor}
    arrays.update({f"opt_{k}": v.numpy() for k, v in trainer.optimizer.state.items() if k != "t"})
    objective_generator = getattr(trainer.c.objective, "generator", None)
    if objective_generator is not None:  # `objective return`: its ES directions' stream
        arrays["objective_generator"] = objective_generator.get_state().numpy()
    return StateFile(head=head, seq=seq, theta=state.theta_sha256(), step=state.step,
                     accepted=state.accepted, loss=float(state.loss),
                     optimizer_t=int(trainer.optimizer.state["t"]), arrays=arrays,
                     pending=pending)


def _restore(trainer: Trainer, saved: StateFile) -> State:
    a = saved.arrays
    tensor = lambda x: torch.from_numpy(np.array(x, dtype=np.float64))  # noqa: E731
    trainer.optimizer.state = {"t": saved.optimizer_t,
                               **{k[4:]: tensor(v) for k, v in a.items() if k.startswith("opt_")}}
    # the probes need no generator state: step t's are drawn from (seed, t) (engine/probes.py);
    # a "generator" array in a state file written before that is ignored
    if "objective_generator" in a:
        trainer.c.objective.generator.set_state(
            torch.from_numpy(np.array(a["objective_generator"], dtype=np.uint8)))
    return State(theta=tensor(a["theta"]), g=np.array(a["g"], dtype=np.float64), loss=saved.loss,
                 ell=np.array(a["ell"], dtype=np.float64),
                 ell_floor=np.array(a["ell_floor"], dtype=np.float64),
                 previous=tensor(a["previous"]), step=saved.step, accepted=saved.accepted,
                 optimizer=trainer.optimizer.state)


def _python_handled() -> list[int]:
    """SIGINT and SIGTERM where a Python handler is installed (an ignored signal stays ignored,
    a default action is left alone)."""
    return [sig for sig in (signal.SIGINT, signal.SIGTERM) if callable(signal.getsignal(sig))]


@contextmanager
def _hold_interrupts():
    """Ctrl-C during the two writes of a commit is delivered right after them; so is SIGTERM
    when a Python handler is installed for it.  Only signals with a Python handler are held: an
    ignored one stays ignored, a default action (exiting) is left alone."""
    caught = []
    held = _python_handled()
    try:
        previous = {sig: signal.signal(sig, lambda *a: caught.append(a)) for sig in held}
    except ValueError:  # not the main thread: nothing to hold
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum, frame in caught[:1]:
            previous[signum](signum, frame)  # Python's SIGINT handler raises KeyboardInterrupt


@contextmanager
def _stop_between_steps(on_request: Callable[[], None] | None = None):
    """Yields `requested()`: whether Ctrl-C (or SIGTERM, when it has a Python handler) arrived.
    The first signal sets it, tells `on_request` (which must only note it: it runs inside the
    signal handler) and puts the previous handlers back, so a second one is delivered at once
    (KeyboardInterrupt mid-step, as before); an ignored signal stays ignored."""
    caught: list[int] = []
    previous: dict = {}

    def first(signum, frame):
        caught.append(signum)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if on_request is not None:
            try:
                on_request()
            except Exception:  # noqa: BLE001 - a display that fails must not stop the step
                pass

    held = _python_handled()
    try:
        for sig in held:
            previous[sig] = signal.signal(sig, first)
    except ValueError:  # not the main thread: signals stay as they are
        yield lambda: False
        return
    try:
        yield lambda: bool(caught)
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is first:
                signal.signal(sig, handler)


class Recorder:
    """Appends records to the log and keeps the state file bound to the last one."""

    def __init__(self, run: RunDir, log: AuditWriter, trainer: Trainer,
                 on_record: Callable[[Path, Record], None] | None = None,
                 asked_steps: int | None = None):
        self.run, self.log, self.trainer = run, log, trainer
        self.asked_steps = asked_steps  # --steps, for the command that continues the run
        self.state: State | None = None  # the state of the last record committed
        self.on_record = on_record  # hears each record once it is in the log (tracking)

    def commit(self, record: Record, state: State) -> str:
        """Write the state file, then append the line; an OSError leaves both as they were
        (the state file replaced atomically or put back, a partial line cut off)."""
        line = self.log.line(record.to_dict())
        head = sha256_hex(line)
        with _hold_interrupts():
            self.run.write_state(_state_file(self.trainer, state, head, self.log.seq, line))
            try:
                self.log.write(line)
            except OSError:
                self.run.undo_state()
                raise
            self.run.keep_state()
            self.state = state
            if self.on_record is not None:  # after the log holds it (a listener sees only what
                # the audit log says), and before a held Ctrl-C: every logged record is heard
                self.on_record(self.run.path, record)
        return head

    def close(self) -> None:
        self.log.close()


@dataclass
class TrainResult:
    run_dir: Path
    state: State
    ended: str
    head: str


def train(spec_path: Path, spec: Spec, spec_text: str, out: Path | None = None,
          steps: int | None = None, resume: bool = False,
          on_start: Callable[[Trainer, State, Path], None] | None = None,
          on_step: Callable[[Step, State], None] | None = None, force: bool = False,
          on_note: Callable[[str], None] | None = None,
          on_record: Callable[[Path, Record], None] | None = None,
          on_stop_request: Callable[[], None] | None = None) -> TrainResult:
    """Train a checked spec, logging every step under `out` (see `_new_run` for which
    directory; `resume` continues the run in `out`, default runs/NAME).  `on_note` hears what
    the user should know but is no error (a run moved aside, a spec that changed only in
    comments); `on_record(run_dir, record)` hears every record right after it is committed to
    the log (the tracking of scpo_spec/tracking: TensorBoard, MLflow); `on_stop_request()`
    hears, inside the signal handler, a first Ctrl-C or SIGTERM that will stop the run once
    the step under way is logged (a progress display's note; it must do no more)."""
    note = on_note or (lambda message: None)
    run = None
    if resume:  # a second writer is refused before any work
        run = RunDir(out if out is not None else Path("runs") / spec.name.name)
        if not run.is_run():
            raise RunError(f"{run.path} is not a run that can be resumed (no {run.log.name})")
        run.lock()
    try:
        recorded = None
        if resume and is_warm_start(spec):  # the source as the run recorded it, not read again
            recorded = WarmStart.from_record(run.header().warm_start, str(run.log))
        compiled, _ = compile_warm(spec, spec_path.resolve().parent, recorded)
        evaluator = open_evaluator(compiled, spec_path.resolve().parent)
    except RayUnavailable as e:
        if run is not None:
            run.unlock()
        raise RunError(str(e)) from None
    except BaseException:
        if run is not None:
            run.unlock()
        raise
    try:
        total = steps if steps is not None else compiled.settings.steps
        if resume:
            recorder, state = _resume(run, Trainer(compiled, evaluator), spec_path, spec,
                                      spec_text, total, note, on_record, steps)
        else:
            recorder, state = _create(Trainer(compiled, evaluator), spec_path, spec, spec_text,
                                      out, force, note, on_record, steps)
            run = recorder.run
        if on_start is not None:
            on_start(recorder.trainer, state, recorder.run.path)
        return _loop(recorder, state, total, on_step, spec_path, on_stop_request)
    except RayUnavailable as e:  # a worker lost mid-run: the steps before it are logged
        raise RunError(f"{e} (continue with --resume)") from None
    finally:
        if run is not None:
            run.unlock()
        close_evaluator(evaluator)  # Ray's actors; Ray itself only if this run started it


def _write_failed(e: OSError, recorder: Recorder, spec_path: Path) -> RunError:
    """A write that failed mid-run: what is intact (counted from the log itself), and the
    command that continues."""
    recorder.close()
    run = recorder.run.path
    try:
        lines, _ = recorder.run.lines()
        step = sum(ln.record.get("type") == "step" for ln in lines)
    except RunError:
        step = "?"
    what = f"{e.filename}" if e.filename else f"{recorder.run.log}"
    return RunError(f"cannot write {what}: {e.strerror or e}. Nothing logged is lost: the log is "
                    f"intact up to step {step} (`scpo audit {run} --allow-incomplete` checks "
                    f"it). Free some space (or make {run} writable) and continue with "
                    f"`scpo train {spec_path} --out {run} --resume"
                    + (f" --steps {recorder.asked_steps}`" if recorder.asked_steps is not None
                       else "`"))


def _create(trainer: Trainer, spec_path, spec, spec_text, out, force,
            note, on_record=None, asked_steps: int | None = None) -> tuple[Recorder, State]:
    compiled = trainer.c
    state = trainer.initial_state()  # raises UnsafeStart before anything is written
    # `verify every K`: θ₀ over the whole initial box, logged; a θ₀ not PROVED still starts
    # (no update is accepted unless proved, so the log shows why θ stays θ₀)
    proof = trainer.prove(state.theta) if compiled.settings.verify_every is not None else None
    run, made = _new_run(out, Path("runs") / spec.name.name, force, spec_path, note)
    recorder = None
    try:
        run.spec_file(spec_path.suffix).write_text(spec_text, encoding="utf-8")
        recorder = Recorder(run, AuditWriter.create(run.log), trainer, on_record, asked_steps)
        recorder.commit(header(compiled, spec_text, spec_path, trainer, spec), state)
        recorder.commit(Init(theta=theta_hash(state.theta), g=state.g, loss=state.loss,
                             ell=state.ell, margins=trainer.margins, proof=proof), state)
    except BaseException as e:  # not started: leave nothing behind
        if recorder is not None:
            recorder.close()
        run.discard(made)
        if isinstance(e, OSError):
            raise RunError(f"cannot write {e.filename or run.log}: {e.strerror or e}; the run "
                           f"did not start and nothing was kept in {run.path}") from None
        raise
    return recorder, state


def _loop(recorder: Recorder, state: State, total: int, on_step,
          spec_path: Path, on_stop_request=None) -> TrainResult:
    trainer, ended = recorder.trainer, "completed"
    try:
        try:
            with _stop_between_steps(on_stop_request) as stop_requested:
                while state.step < total:
                    new_state, record = trainer.step(state)
                    recorder.commit(record, new_state)
                    state = new_state
                    if on_step is not None:
                        on_step(record, state)
                    if stop_requested():
                        raise KeyboardInterrupt
                    if record.stopped:
                        ended = f"stopped at step {record.step}: {record.reason}"
                        break
        except KeyboardInterrupt:  # the end record names the last state committed
            state = recorder.state
            recorder.commit(_end(f"interrupted after step {state.step}", state), state)
            recorder.close()
            raise
        holdout = {**validate_holdout(trainer.c, state.theta), "theta": theta_hash(state.theta)}
        recorder.commit(Holdout.from_dict(holdout, "holdout"), state)
        head = recorder.commit(_end(ended, state), state)
    except OSError as e:
        raise _write_failed(e, recorder, spec_path) from None
    except PlantFailure as failure:  # the author's plant raised on a candidate or the holdout:
        state = recorder.state        # the run ends like an interrupted one, marked so
        recorder.commit(_end(f"interrupted after step {state.step}: the plant "
                             f"'{failure.plant.name}' {failure.what}", state), state)
        recorder.close()
        raise failure.kept(
            f"the run {recorder.run.path} is kept up to step {state.step} and marked "
            "interrupted (`scpo audit` refuses it as incomplete); fix the plant and continue "
            f"with `scpo train {spec_path} --out {recorder.run.path} --resume`") from None
    recorder.close()
    return TrainResult(recorder.run.path, state, ended, head)


def _end(reason: str, state: State) -> End:
    return End(reason=reason, steps=state.step, accepted=state.accepted,
               theta=theta_hash(state.theta), g=state.g, loss=state.loss)


def _meaning(spec: Spec | None) -> str | None:
    """What a spec says, without comments, layout or spelling of numbers: the model's dump
    (spans and folded values are left out of it) as canonical JSON."""
    if spec is None:
        return None
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True)


def _spec_changed(run: RunDir, spec_path: Path, spec: Spec, spec_text: str) -> bool:
    """Whether the text differs from the one the run started with; RunError when the meaning
    does (a comment or re-layout is no reason to refuse a resume, a changed bound is), naming
    what changed."""
    header = run.header()
    if header.spec.get("sha256") == sha256_hex(spec_text.encode()):
        return False
    try:
        before, _ = run.checked_spec(header)  # the stored text, read once, through the run
    except RunError as e:
        raise RunError(f"the spec stored in {run.path}'s header cannot be read back ({e}), so "
                       f"{spec_path} cannot be compared with it; resume with the same spec "
                       "file, or start a new run") from None
    if _meaning(before) != _meaning(spec):
        raise RunError(f"the spec changed since the run started: {spec_path} does not say what "
                       "the spec stored in the run's header says (comments and layout aside):\n"
                       + _what_changed(before, spec)
                       + "\nresume with the same spec, or start a new run")
    return True


DIFF_LINES = 16   # a refused resume shows at most this many changed lines …
DIFF_WIDTH = 160  # … each cut to this many characters


def _what_changed(before: Spec, after: Spec) -> str:
    """The lines in which two specs' canonical texts (as `scpo fmt` writes them, without
    comments; runs of spaces as one) differ, as a short unified diff: `-` the run's, `+` the
    file's, each under the section it belongs to.  When the texts agree (a difference the
    canonical text does not show), the sections whose meaning differs."""
    def lines(spec: Spec) -> list[str]:
        out = []
        for line in format_spec(spec).splitlines():
            if line.strip():
                indent = line[:len(line) - len(line.lstrip())]
                out.append(indent + " ".join(line.split()))
        return out
    shown: list[str] = []
    try:
        old, new = lines(before), lines(after)
    except (TypeError, ValueError):  # a form the formatter cannot write: the sections instead
        old = new = []
    for group in difflib.SequenceMatcher(None, old, new, autojunk=False).get_grouped_opcodes(0):
        tag, i1, i2, j1, _ = next(op for op in group if op[0] != "equal")
        first = old[i1] if i2 > i1 else new[j1]
        section = next((ln for ln in reversed(old[:i1]) if not ln.startswith(" ")), None)
        if section is not None and first.startswith(" "):  # inside a section: name it
            shown.append(f"  {section}")
        for _, a1, a2, b1, b2 in group:
            shown += [f"  - {ln}" for ln in old[a1:a2]] + [f"  + {ln}" for ln in new[b1:b2]]
    if not shown:
        a, b = before.model_dump(mode="json"), after.model_dump(mode="json")
        keys = [k for k in a.keys() | b.keys() if json.dumps(a.get(k), sort_keys=True)
                != json.dumps(b.get(k), sort_keys=True)]
        return "  changed: " + ", ".join(sorted(keys))
    cut = [ln if len(ln) <= DIFF_WIDTH else ln[:DIFF_WIDTH - 1] + "…" for ln in shown]
    if len(cut) > DIFF_LINES:
        cut = cut[:DIFF_LINES] + [f"  … and {len(cut) - DIFF_LINES} more changed lines"]
    hint = []
    if _meaning(_with_steps(before, after)) == _meaning(after):
        hint = ["  (to train longer, keep the spec's steps and pass --steps N: it is the total)"]
    return "\n".join(cut + hint)


def _with_steps(spec: Spec, like: Spec) -> Spec:
    """`spec` with `like`'s train steps (whether only the step count changed)."""
    if spec.train is None or like.train is None:
        return spec
    return spec.model_copy(update={"train": spec.train.model_copy(
        update={"steps": like.train.steps})})


def _resume(run: RunDir, trainer: Trainer, spec_path: Path, spec: Spec, spec_text: str,
            total: int, note, on_record=None,
            asked_steps: int | None = None) -> tuple[Recorder, State]:
    from scpo_spec.audit.verify import pending_problems, verify_chain  # numpy only
    lines, _ = run.lines()
    text_changed = _spec_changed(run, spec_path, spec, spec_text)
    moved = unchanged(run.header().code, spec, spec_path.resolve().parent)
    if moved:  # the same text over other code or networks would be another run's policy
        raise RunError(f"{moved[0]}; refusing to resume {run.path} with it")
    problems = verify_chain(lines)
    if problems:
        raise RunError(f"{run.log} fails its hash chain ({problems[0]}); refusing to extend it")
    saved, pending = run.bound_state(lines)
    if pending:  # the record a kill kept from the log joins it only if it audits
        wrong = pending_problems(run.records(), saved.pending, saved.theta)
        if wrong:
            raise RunError(f"{run.state}: {wrong[0]}; refusing to append it to {run.log}")
        kind = json.loads(saved.pending).get("type")
        if kind in ("holdout", "end"):  # figures the log cannot check: made again instead
            note(f"the {kind} record {run.state} carried for the log is not appended; the run "
                 "continues from its last step and writes its own")
            pending = False
    last = lines[-1].record if lines and not pending else {}
    ended = last.get("type") == "end" and not str(last.get("reason")).startswith("interrupted")
    log = AuditWriter.reopen(run.log, run.torn)
    state = _restore(trainer, saved)
    recorder = Recorder(run, log, trainer, on_record, asked_steps)
    if pending:  # killed between the state write and the append: finish the append
        try:
            log.write(saved.pending)
        except OSError as e:
            raise _write_failed(e, recorder, spec_path) from None
        if on_record is not None:  # the listeners hear the completed record too
            on_record(run.path, parse_record(json.loads(saved.pending)))
    if state.step >= total and ended:  # else its holdout and end record are still to come
        recorder.close()
        raise RunError(f"{run.path} has already taken {state.step} steps (asked for {total}); "
                       "pass a larger --steps to continue")
    g = trainer.metrics(state.theta[None])[0]
    if not np.all(g <= -trainer.margins):  # cannot happen for a state the run wrote
        recorder.close()
        raise RunError(f"the policy in {run.state} does not verify safe; refusing to resume")
    try:
        recorder.commit(Resume(from_step=state.step, theta=theta_hash(state.theta), g=g,
                               g_checkpoint=state.g, loss=state.loss, ell=state.ell,
                               checkpoint_head=saved.head, spec_text_changed=text_changed),
                        state)
    except OSError as e:
        raise _write_failed(e, recorder, spec_path) from None
    if run.drop_verify():  # it proved the policy before this resume, at a head now passed
        note(f"{run.verify_record} was about the run before this resume: removed (run `scpo "
             f"verify {run.path}` again)")
    if text_changed:
        note(f"{spec_path} differs from the spec the run started with only in comments or "
             "layout; resuming (the resume record says so; the run keeps the original text)")
    state.g = g
    return recorder, state


# ---- using what was trained ----
# (imported here, not at the top: this section is the Python API, kept apart from training)
from contextlib import nullcontext  # noqa: E402
from dataclasses import field  # noqa: E402
from typing import TYPE_CHECKING, NamedTuple  # noqa: E402

from scpo_spec.audit.verdict import Verdict  # noqa: E402

if TYPE_CHECKING:
    from scpo_spec.policies.policy import PolicyFamily
    from scpo_spec.systems.dynamics import Dynamics


class Trajectory(NamedTuple):
    """`Run.simulate`'s result: states (…, T+1, n) and inputs (…, T, m); unpacks as a pair."""

    states: torch.Tensor | np.ndarray
    inputs: torch.Tensor | np.ndarray


@dataclass
class Run:
    """A finished (or interrupted) run: its spec, and its last accepted policy as a torch module.

    `.policy` takes numpy or torch states, (n,) or (N, n), any float dtype, and computes in
    float64 (numpy in → numpy out; torch in → float64 torch out).  The properties read the spec
    only (no rollout); `simulate` and `metrics` roll the policy out on the spec's own plant."""

    path: Path
    spec: Spec
    policy: torch.nn.Module
    theta: torch.Tensor
    header: Header
    verdict: Verdict              # CERTIFIED or not, and why (audit.verdict: every reader's)
    base_dir: Path | None = None  # where the spec's data paths are relative to
    _family: PolicyFamily | None = field(default=None, repr=False, compare=False)
    _dynamics: Dynamics | None = field(default=None, repr=False, compare=False)
    _compiled: CompiledSpec | None = field(default=None, repr=False, compare=False)

    # ---- the spec's values, read without touching the policy ----
    @property
    def horizon(self) -> int:
        """T: the steps of every scenario's rollout (`simulate`'s default)."""
        return int(self.spec.scenarios.horizon)

    @property
    def state_names(self) -> list[str]:
        """The columns of a state, in order (a gymnasium system's observation components)."""
        return [s.name for s in self.spec.system.states]

    @property
    def input_names(self) -> list[str]:
        """The columns of an input (the policy's output), in order."""
        return [s.name for s in self.spec.system.inputs]

    @property
    def metric_names(self) -> list[str]:
        """The safety metrics, in the spec's order (the keys of `metrics()`)."""
        return [p.name.name for p in self.spec.properties]

    @property
    def margins(self) -> dict[str, float]:
        """Metric → its margin: every accepted policy had g ≤ −margin on the scenarios."""
        return {str(m["name"]): float(m["margin"]) for m in self.header.metrics}

    @property
    def initial_box(self) -> dict[str, tuple[float, float]]:
        """State → (lo, hi) of the scenarios' initial states ({} for a gymnasium system, whose
        environment's reset draws them)."""
        from scpo_spec.language.scenario_bounds import initial_box
        if self._is_gym:
            return {}
        lo, hi = initial_box(self.spec)
        return {name: (float(a), float(b)) for name, a, b in zip(self.state_names, lo, hi)}

    @property
    def scenarios(self) -> np.ndarray:
        """The training scenarios: initial states (S, n) float64, or reset seeds (S,) int64 for a
        gymnasium system — exactly those every certificate was verified on."""
        from scpo_spec.language.scenario_bounds import training_states
        return training_states(self.spec)

    @property
    def parameter_names(self) -> list[str]:
        """The spec's `parameter`s, in order (the columns of `simulate(parameters=…)`)."""
        from scpo_spec.plan.scenarios import uncertain_ranges
        return uncertain_ranges(self.spec, "parameter")[0]

    @property
    def disturbance_names(self) -> list[str]:
        """The spec's `disturbance`s, in order (the columns of `simulate(disturbances=…)`)."""
        from scpo_spec.plan.scenarios import uncertain_ranges
        return uncertain_ranges(self.spec, "disturbance")[0]

    @property
    def uncertainty(self) -> dict[str, tuple[float, float]]:
        """Parameter or disturbance → (lo, hi), the range its draws come from ({} if none)."""
        from scpo_spec.plan.scenarios import uncertain_ranges
        out = {}
        for section in ("parameter", "disturbance"):
            names, lo, hi = uncertain_ranges(self.spec, section)
            out.update({n: (float(a), float(b)) for n, a, b in zip(names, lo, hi)})
        return out

    def spec_summary(self) -> dict:
        """The spec's shape in one plain dict (JSON-ready): name, system, sizes, names, horizon,
        scenario count, initial box, parameters and disturbances with their ranges, and each
        metric's section, formula and margin."""
        return {"name": self.spec.name.name if self.spec.name else None,
                "system": self.spec.system.kind, "n": len(self.state_names),
                "m": len(self.input_names), "states": self.state_names,
                "inputs": self.input_names, "horizon": self.horizon,
                "scenarios": int(self.header.dimensions.get("scenarios", 0)),
                "initial_box": {k: list(v) for k, v in self.initial_box.items()},
                "parameters": {k: list(self.uncertainty[k]) for k in self.parameter_names},
                "disturbances": {k: list(self.uncertainty[k]) for k in self.disturbance_names},
                "metrics": [{"name": m["name"], "section": m["section"], "formula": m["formula"],
                             "margin": m["margin"]} for m in self.header.metrics]}

    # ---- rolling the policy out ----
    @property
    def _is_gym(self) -> bool:
        return self.spec.system.kind == "gymnasium"

    def simulate(self, x0=None, steps: int | None = None, *, seeds=None, parameters=None,
                 disturbances=None) -> Trajectory:
        """Roll the final policy out on the spec's own plant, exactly as training's rollouts do.

        x0: one initial state (n,) → states (T+1, n), inputs (T, m); or a batch (B, n) → (B, …);
        default: the spec's training scenarios.  steps: T, default the spec's horizon.  Numpy
        (or a list) in → numpy out; torch in → float64 torch out (differentiable in x0).

        A spec with `parameter`s and `disturbance`s needs their values with an x0 of one's own:
        `parameters` (p,) for one x0, (B, p) or (p,) for all of a batch, and `disturbances`
        (T, d), or (B, T, d); or a dict by name (a number or (B,) per parameter, (T,) or (B, T)
        per disturbance); columns in `parameter_names` / `disturbance_names` order.  Without
        x0 the training scenarios come with their own draws (those certified).

        A gymnasium system's state cannot be set: its environment's reset puts it somewhere
        from a seed.  So for those, pass `seeds` (one int → one episode, or a sequence), not x0;
        the episodes run in the environment (gymnasium must be installed) and come back as
        numpy.  An episode that ends early keeps its last observation (as in training)."""
        steps = self.horizon if steps is None else int(steps)
        if steps < 0:
            raise ValueError(f"steps must be ≥ 0 (got {steps})")
        if self._is_gym:
            if x0 is not None:
                raise ValueError(f"'{self.spec.system.env_id.value}' is a gymnasium system: its "
                                 "initial state is set by the environment's reset, not by x0; "
                                 "pass seeds=… (reset seeds) instead")
            chosen = self.scenarios if seeds is None else seeds
            single = np.ndim(chosen) == 0
            x = torch.as_tensor(np.atleast_1d(np.asarray(chosen, dtype=np.int64)))
            states, inputs = self._roll(x, steps)
            states, inputs = states.numpy(), inputs.numpy()
            return Trajectory(states[0], inputs[0]) if single else Trajectory(states, inputs)
        if seeds is not None:
            raise ValueError(f"seeds are for gymnasium systems; a '{self.spec.system.kind}' "
                             "system starts from x0")
        as_torch = isinstance(x0, torch.Tensor)
        x = self._states(self.scenarios if x0 is None else x0)
        single = x.ndim == 1
        draws = self._draws(1 if single else x.shape[0], steps, single, parameters,
                            disturbances, x0 is None)
        with nullcontext() if as_torch else torch.no_grad():
            states, inputs = self._roll(x[None] if single else x, steps, draws)
        if single:
            states, inputs = states[0], inputs[0]
        return (Trajectory(states, inputs) if as_torch
                else Trajectory(states.numpy(), inputs.numpy()))

    def metrics(self, x0=None, *, seeds=None, parameters=None, disturbances=None
                ) -> dict[str, float]:
        """Metric name → g of the final policy: the value `scpo train` certified (≤ −margin) on
        the spec's training scenarios, or the same metric over other initial states x0 (B, n)
        (reset `seeds` for a gymnasium system), with their `parameters` and `disturbances` as
        `simulate` takes them.  +inf where a rollout left the finite numbers."""
        compiled = self._compile()
        ev = compiled.evaluator
        try:
            if x0 is None and seeds is None and parameters is None and disturbances is None:
                g = ev(self.theta[None])[0]
            else:
                if self._is_gym:
                    if x0 is not None:
                        raise ValueError("a gymnasium system's scenarios are reset seeds: pass "
                                         "seeds=…, not x0")
                    xs = torch.as_tensor(np.atleast_1d(np.asarray(seeds, dtype=np.int64)))
                else:
                    if seeds is not None:
                        raise ValueError(f"seeds are for gymnasium systems; a "
                                         f"'{self.spec.system.kind}' system starts from x0")
                    xs = self._states(self.scenarios if x0 is None else x0)
                    single = xs.ndim == 1
                    xs = xs[None] if single else xs
                draws = self._draws(xs.shape[0], ev.horizon, single, parameters, disturbances,
                                    x0 is None)
                h = ev.per_scenario(self.theta[None], xs, draws)
                g = ev.reducer.max(h, 1).squeeze(1)[0]
                g = torch.where(torch.isfinite(g), g, torch.inf)
        finally:
            if ev.gym is not None:
                ev.gym.close()
        return {name: float(v) for name, v in zip(ev.names, g.tolist())}

    def _states(self, x0) -> torch.Tensor:
        n = len(self.state_names)
        x = (x0.to(DTYPE) if isinstance(x0, torch.Tensor)
             else torch.from_numpy(np.array(x0, dtype=np.float64)))
        if x.ndim not in (1, 2) or x.shape[-1] != n:
            raise ValueError(f"initial states must have shape (n,) or (B, n) with n = {n} "
                             f"({', '.join(self.state_names)}); got shape {tuple(x.shape)}")
        return x

    def _draws(self, count: int, steps: int, single: bool, parameters, disturbances,
               training: bool):
        """The scenarios' Draws (None without uncertainty) from `simulate`'s arguments; the
        training scenarios' own when none are given for them (cut to `steps`)."""
        from scpo_spec.plan.scenarios import Draws, given_draws, training_draws
        if training and parameters is None and disturbances is None:
            own = training_draws(self.spec)
            if own is None:
                return None
            if steps > own.disturbances.shape[0]:
                raise ValueError(f"the training scenarios' disturbances last {self.horizon} "
                                 f"steps; pass disturbances=… to simulate {steps}")
            return Draws(own.parameters, own.disturbances[:steps])
        if isinstance(parameters, torch.Tensor):
            parameters = parameters.detach().cpu().numpy()
        if isinstance(disturbances, torch.Tensor):
            disturbances = disturbances.detach().cpu().numpy()
        return given_draws(self.spec, parameters, disturbances, count, steps, single)

    def _roll(self, x: torch.Tensor, steps: int, draws=None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's own batched rollout (one candidate: this run's θ) for `steps` steps."""
        from scpo_spec.compile.evaluator import RolloutEvaluator
        if steps == 0 and not self._is_gym:  # the engine's loop needs one step to stack
            return x[:, None, :], x.new_zeros(x.shape[0], 0, self._dynamics.m)
        ev = RolloutEvaluator(self._dynamics, self._family, [], x.detach().numpy(), steps, None,
                              draws=draws)
        try:
            states, inputs = ev.rollout(self.theta[None], x, ev.draws)
        finally:
            if ev.gym is not None:
                ev.gym.close()
        return states[0], inputs[0]

    def compiled_spec(self) -> CompiledSpec:
        """The run's spec compiled once, its code and ONNX files held to the bytes it recorded."""
        return self._compile()

    def _compile(self) -> CompiledSpec:
        if self._compiled is None:
            from scpo_spec.compile.usercode import import_plant
            with expecting(self.header.code, self.spec, self.base_dir):
                compiled = compile_spec(self.spec, self.base_dir)
                import_plant(compiled.dynamics)
            self._compiled = compiled
        return self._compiled


def load_run(run_dir: str | Path, *, trust_code: bool = False, head: str | None = None,
             key: str | Path | None = None, allow_incomplete: bool = False) -> Run:
    """A run directory that passes `scpo audit` (with `head` and `key`, as its --head and --key)
    → `Run`: `.spec` (the model), `.policy` (float64, numpy or torch states (N, n) or (n,) →
    actions), the last policy the log accepted — never a state file the log disowns — and
    `.verdict` (CERTIFIED or not, and why: the verdict every reader gives).  See `Run` for
    `simulate`, `metrics` and the spec's values.

    RunError for what `scpo audit` refuses: a broken chain or certificate, an accepted step
    whose logged g violates, a spec copy or header that is not the stored spec, a state file
    that is not the log's, a chain that does not end at `head`, a signature that does not
    verify with `key` (an Ed25519 public key file), and a run that has not ended (unless
    `allow_incomplete`).  A run whose spec names code (a python plant, a gymnasium
    `module:Env`, a TorchScript backup or policy) is refused unless `trust_code`: then its
    files must hash as the run recorded before they run."""
    from scpo_spec.audit.rundir import CodeChanged
    from scpo_spec.audit.verdict import judge
    from scpo_spec.compile.usercode import import_plant
    from scpo_spec.plan.code import untrusted
    from scpo_spec.policies import make_backup, make_policy
    from scpo_spec.systems import make_dynamics
    run = RunDir(run_dir)
    header = run.header()
    if not trust_code:  # a run that names code is refused first, none of it run
        spec, base_dir = run.checked_spec(header)
        if untrusted(spec):
            raise RunError(untrusted(spec))
    audit, verdict = judge(run, head=head, key=Path(key) if key is not None else None)
    refused = verdict.refusals(allow_incomplete)
    if refused:
        more = (" (allow_incomplete=True loads a run that has not ended)"
                if not audit.complete and not allow_incomplete else "")
        raise RunError(f"{run.path} does not pass `scpo audit`: {'; '.join(refused)}{more}; "
                       "not loading its policy")
    if trust_code:  # only a run that passes the audit has its code run
        spec, base_dir = run.checked_spec(header, trust_code=True)
    theta = torch.from_numpy(run.final_theta(audit.final_theta)).to(DTYPE)
    with expecting(header.code, spec, base_dir):  # the recorded bytes, or nothing runs
        dynamics = make_dynamics(spec, base_dir)
        import_plant(dynamics)  # now, under the check: not at the first step
        family = make_policy(spec, dynamics.n, dynamics.m,
                             make_backup(spec, dynamics, base_dir), base_dir)
    wrong = ran_as_recorded(header.code, spec, base_dir)  # each piece ran, from those bytes
    if wrong:
        raise CodeChanged(f"not trusting the code of {run.path}: {wrong[0]}")
    if theta.shape != family.theta0.shape:
        raise RunError(f"{run.state} holds {theta.numel()} weights; the spec's policy has "
                       f"{family.d}")
    return Run(run.path, spec, family.module(theta).eval(), theta, header, verdict, base_dir,
               _family=family, _dynamics=dynamics)
