"""A training run on disk: create or resume its directory (scpo_spec.audit.rundir), log the
header, θ₀, every step and the end, and save the state bound to each record.  A finished run is
loaded back by engine/trained.py (`scpo_spec.load_run`, re-exported here for older imports).

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
from scpo_spec.audit.loaded import LoadedRun
from scpo_spec.audit.records import (End, EndState, Header, Holdout, Init, Record, Resume,
                                     parse_record)
from scpo_spec.audit.rundir import RunDir, RunError, StateFile
from scpo_spec.audit.warm_start import WarmStart, is_warm_start
from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.plan.scenarios import uncertainty_record
from scpo_spec.plan.settings import declared_seeds
from scpo_spec.engine.executors import RayUnavailable, open_evaluator
from scpo_spec.engine.holdout import validate_holdout
from scpo_spec.engine.listener import RunListener
from scpo_spec.engine.train import State, Trainer, theta_hash
from scpo_spec.engine.warm import compile_warm
from scpo_spec.usercode.loader import CodeError
from scpo_spec.plan.code import identities, ran_as_recorded, unchanged
from scpo_spec.language.format import format_spec
from scpo_spec.language.load import syntax_of
from scpo_spec.language.model import Spec
from scpo_spec.systems.user_code import PlantFailure

__all__ = ["Run", "RunError", "TrainResult", "Trajectory", "load_run", "train"]


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
                 listener: RunListener, asked_steps: int | None = None):
        self.run, self.log, self.trainer = run, log, trainer
        self.asked_steps = asked_steps  # --steps, for the command that continues the run
        self.state: State | None = None  # the state of the last record committed
        self.listener = listener  # hears each record once it is in the log (tracking)

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
            # after the log holds it (a listener sees only what the audit log says), and
            # before a held Ctrl-C: every logged record is heard
            self.listener.recorded(self.run.path, record)
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
          steps: int | None = None, resume: bool = False, force: bool = False,
          listener: RunListener | None = None) -> TrainResult:
    """Train a checked spec, logging every step under `out` (see `_new_run` for which
    directory; `resume` continues the run in `out`, default runs/NAME).  `listener` hears
    the run's events (engine/listener.py: its start, each record committed, each step, notes,
    a requested stop)."""
    listener = listener if listener is not None else RunListener()
    note = listener.note
    run = None
    if resume:  # a second writer is refused before any work
        run = RunDir(out if out is not None else Path("runs") / spec.name.name)
        if not run.is_run():
            raise RunError(f"{run.path} is not a run that can be resumed (no {run.log.name})")
        run.lock()
        loaded = LoadedRun(run)  # read once, under the lock
    try:
        recorded = None
        if resume and is_warm_start(spec):  # the source as the run recorded it, not read again
            recorded = WarmStart.from_record(loaded.header.warm_start, str(run.log))
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
            recorder, state = _resume(loaded, Trainer(compiled, evaluator), spec_path, spec,
                                      spec_text, total, listener, steps)
        else:
            recorder, state = _create(Trainer(compiled, evaluator), spec_path, spec, spec_text,
                                      out, force, listener, steps)
            run = recorder.run
        listener.started(recorder.trainer, state, recorder.run.path)
        return _loop(recorder, state, total, spec_path)
    except RayUnavailable as e:  # a worker lost mid-run: the steps before it are logged
        raise RunError(f"{e} (continue with --resume)") from None
    finally:
        if run is not None:
            run.unlock()
        evaluator.close()  # Ray's actors (Ray itself only if this run started it), a gym's envs


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


def _create(trainer: Trainer, spec_path, spec, spec_text, out, force, listener: RunListener,
            asked_steps: int | None = None) -> tuple[Recorder, State]:
    compiled = trainer.c
    state = trainer.initial_state()  # raises UnsafeStart before anything is written
    # `verify every K`: θ₀ over the whole initial box, logged; a θ₀ not PROVED still starts
    # (no update is accepted unless proved, so the log shows why θ stays θ₀)
    proof = trainer.prove(state.theta) if compiled.settings.verify_every is not None else None
    run, made = _new_run(out, Path("runs") / spec.name.name, force, spec_path, listener.note)
    recorder = None
    try:
        run.spec_file(spec_path.suffix).write_text(spec_text, encoding="utf-8")
        recorder = Recorder(run, AuditWriter.create(run.log), trainer, listener, asked_steps)
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


def _loop(recorder: Recorder, state: State, total: int, spec_path: Path) -> TrainResult:
    trainer, ended, listener = recorder.trainer, EndState.COMPLETED.value, recorder.listener
    try:
        try:
            with _stop_between_steps(listener.stop_requested) as stop_requested:
                while state.step < total:
                    new_state, record = trainer.step(state)
                    recorder.commit(record, new_state)
                    state = new_state
                    listener.stepped(record, state)
                    if stop_requested():
                        raise KeyboardInterrupt
                    if record.stopped:
                        ended = EndState.STOPPED.reason(record.step, record.reason)
                        break
        except KeyboardInterrupt:  # the end record names the last state committed
            state = recorder.state
            recorder.commit(_end(EndState.INTERRUPTED.reason(state.step), state), state)
            recorder.close()
            raise
        holdout = {**validate_holdout(trainer.c, state.theta), "theta": theta_hash(state.theta)}
        recorder.commit(Holdout.from_dict(holdout, "holdout"), state)
        head = recorder.commit(_end(ended, state), state)
    except OSError as e:
        raise _write_failed(e, recorder, spec_path) from None
    except PlantFailure as failure:  # the author's plant raised on a candidate or the holdout:
        state = recorder.state        # the run ends like an interrupted one, marked so
        recorder.commit(_end(EndState.INTERRUPTED.reason(
            state.step, f"the plant '{failure.plant.name}' {failure.what}"), state), state)
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


def _spec_changed(run: LoadedRun, spec_path: Path, spec: Spec, spec_text: str) -> bool:
    """Whether the text differs from the one the run started with; RunError when the meaning
    does (a comment or re-layout is no reason to refuse a resume, a changed bound is), naming
    what changed."""
    if run.header.spec.get("sha256") == sha256_hex(spec_text.encode()):
        return False
    try:
        before, _ = run.checked_spec()  # the stored text, read once, through the run
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


def _resume(loaded: LoadedRun, trainer: Trainer, spec_path: Path, spec: Spec, spec_text: str,
            total: int, listener: RunListener,
            asked_steps: int | None = None) -> tuple[Recorder, State]:
    note = listener.note
    from scpo_spec.audit.verify import pending_problems, verify_chain  # numpy only
    run, lines = loaded.run, loaded.lines
    text_changed = _spec_changed(loaded, spec_path, spec, spec_text)
    moved = unchanged(loaded.header.code, spec, spec_path.resolve().parent)
    if moved:  # the same text over other code or networks would be another run's policy
        raise RunError(f"{moved[0]}; refusing to resume {run.path} with it")
    problems = verify_chain(lines)
    if problems:
        raise RunError(f"{run.log} fails its hash chain ({problems[0]}); refusing to extend it")
    saved, pending = loaded.bound_state()
    if pending:  # the record a kill kept from the log joins it only if it audits
        wrong = pending_problems(loaded.records, saved.pending, saved.theta)
        if wrong:
            raise RunError(f"{run.state}: {wrong[0]}; refusing to append it to {run.log}")
        kind = json.loads(saved.pending).get("type")
        if kind in ("holdout", "end"):  # figures the log cannot check: made again instead
            note(f"the {kind} record {run.state} carried for the log is not appended; the run "
                 "continues from its last step and writes its own")
            pending = False
    last = lines[-1].record if lines and not pending else {}
    ended = (last.get("type") == "end"
             and EndState.of(str(last.get("reason"))) is not EndState.INTERRUPTED)
    log = AuditWriter.reopen(run.log, run.torn)
    state = _restore(trainer, saved)
    recorder = Recorder(run, log, trainer, listener, asked_steps)
    if pending:  # killed between the state write and the append: finish the append
        try:
            log.write(saved.pending)
        except OSError as e:
            raise _write_failed(e, recorder, spec_path) from None
        # the listener hears the completed record too
        listener.recorded(run.path, parse_record(json.loads(saved.pending)))
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
