"""A training run on disk: create or resume its directory, write the header, θ₀'s record and
the end record around the loop, and load a finished run back (`scpo_spec.load_run`).

    RUN/spec.scpo        the spec, verbatim (its SHA-256 is in the log's header)
    RUN/audit.jsonl      the hash-chained log (scpo_spec.audit.log)
    RUN/checkpoint.pt    θ, optimizer and generator state after the last step (for --resume)
"""

from __future__ import annotations

import hashlib
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scpo_spec.audit.log import FORMAT, LOG_NAME, AuditWriter, LogError, read_lines
from scpo_spec.compile.problem import CompiledSpec, compile_spec
from scpo_spec.compile.ray_executor import RayUnavailable, use_executor
from scpo_spec.engine.train import State, StepReport, Trainer, UnsafeStart, run_steps, theta_hash
from scpo_spec.language.load import check_text, syntax_of
from scpo_spec.language.model import Spec


class RunError(Exception):
    """A run directory that cannot be created, resumed or loaded (the message says why)."""


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("scpo-spec", "torch", "cvxpy", "clarabel", "numpy", "scipy", "gurobipy", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def fresh_dir(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, … : an existing run is never overwritten."""
    candidate, i = base, 1
    while candidate.exists():
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    return candidate


def header(compiled: CompiledSpec, spec_text: str, spec_path: Path, trainer: Trainer) -> dict:
    spec, s = compiled.spec, compiled.settings
    data = None
    obj = spec.objective
    if obj.kind == "regression":
        path = (spec_path.resolve().parent / obj.data.value)
        data = {"path": obj.data.value, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        "type": "header", "format": FORMAT,
        "spec": {"name": spec.name.name if spec.name else None, "path": str(spec_path),
                 "resolved": str(spec_path.resolve()), "sha256":
                     hashlib.sha256(spec_text.encode()).hexdigest(), "text": spec_text,
                 "syntax": syntax_of(str(spec_path))},
        "data": data,
        "settings": vars(s),
        "seeds": {"train": s.seed, "policy": _policy_seed(spec), "scenarios":
                  int(spec.scenarios.seed) if spec.scenarios.seed is not None else 0},
        "metrics": [{"name": m.name, "section": m.section, "formula": m.formula,
                     "margin": m.margin, "smoothness": m.smoothness, "lipschitz": m.lipschitz,
                     "location": m.location, "estimated": m.smoothness is None}
                    for m in compiled.metrics],
        "dimensions": {"d": compiled.family.d, "n": trainer.n, "k": trainer.k,
                       "scenarios": int(compiled.evaluator.x0.shape[0]),
                       "horizon": compiled.evaluator.horizon},
        "objective": compiled.objective.describe,
        "versions": versions(),
        "command": " ".join(sys.argv),
    }


def _policy_seed(spec: Spec):
    return int(spec.policy.seed) if getattr(spec.policy, "seed", None) is not None else None


@dataclass
class TrainResult:
    run_dir: Path
    state: State
    ended: str
    head: str


def train(spec_path: Path, spec: Spec, spec_text: str, out: Path | None = None,
          steps: int | None = None, resume: bool = False,
          on_start: Callable[[Trainer, State, Path], None] | None = None,
          on_step: Callable[[StepReport, State], None] | None = None) -> TrainResult:
    """Train a checked spec, logging every step under `out` (default runs/NAME)."""
    compiled = compile_spec(spec, spec_path.resolve().parent)
    executor = _executor(compiled, spec_text, spec_path)
    try:
        return _train(compiled, spec_path, spec, spec_text, out, steps, resume, on_start, on_step)
    except RayUnavailable as e:  # a worker lost mid-run: the steps before it are logged
        raise RunError(f"{e} (continue with --resume)") from None
    finally:
        if executor is not None:
            executor.close()  # the actors; Ray itself only if this run started it


def _executor(compiled: CompiledSpec, spec_text: str, spec_path: Path):
    """`executor ray`: each step's candidate bank is rolled out on Ray actors (one-candidate
    calls, θ₀ and the verifications, stay in this process: same numbers, less overhead)."""
    if compiled.settings.executor != "ray":
        return None
    try:
        return use_executor(compiled, spec_text, spec_path)
    except RayUnavailable as e:
        raise RunError(str(e)) from None


def _train(compiled, spec_path, spec, spec_text, out, steps, resume, on_start,
           on_step) -> TrainResult:
    total = steps if steps is not None else compiled.settings.steps
    if resume:
        run_dir = out if out is not None else Path("runs") / spec.name.name
        return _resume(run_dir, compiled, spec_text, total, on_start, on_step)
    trainer = Trainer(compiled)
    state = trainer.initial_state()  # raises UnsafeStart before anything is written
    run_dir = fresh_dir(out if out is not None else Path("runs") / spec.name.name)
    run_dir.mkdir(parents=True)
    (run_dir / f"spec{spec_path.suffix or '.scpo'}").write_text(spec_text, encoding="utf-8")
    log = AuditWriter.create(run_dir)
    trainer.log, trainer.run_dir = log, run_dir
    log.append(header(compiled, spec_text, spec_path, trainer))
    head = log.append({"type": "init", "theta": theta_hash(state.theta), "g": state.g,
                       "loss": state.loss, "ell": state.ell, "margins": trainer.margins})
    trainer.checkpoint(state, head, log.seq)
    return _loop(trainer, state, run_dir, total, on_start, on_step)


def _loop(trainer, state, run_dir, total, on_start, on_step) -> TrainResult:
    if on_start is not None:
        on_start(trainer, state, run_dir)
    try:
        state, ended = run_steps(trainer, state, total, on_step)
    except KeyboardInterrupt:
        ended = f"interrupted after step {state.step}"
        trainer.log.append({"type": "end", "reason": ended, "steps": state.step,
                            "accepted": state.accepted, "theta": theta_hash(state.theta),
                            "g": state.g, "loss": state.loss})
        trainer.log.close()
        raise
    from scpo_spec.engine.holdout import validate_holdout
    trainer.log.append({**validate_holdout(trainer.c, state.theta), "theta": theta_hash(state.theta)})
    head = trainer.log.append({"type": "end", "reason": ended, "steps": state.step,
                               "accepted": state.accepted, "theta": theta_hash(state.theta),
                               "g": state.g, "loss": state.loss})
    trainer.checkpoint(state, head, trainer.log.seq)
    trainer.log.close()
    return TrainResult(run_dir, state, ended, head)


def _resume(run_dir: Path, compiled: CompiledSpec, spec_text: str, total: int,
            on_start, on_step) -> TrainResult:
    log_path, ckpt = run_dir / LOG_NAME, run_dir / "checkpoint.pt"
    if not log_path.exists() or not ckpt.exists():
        raise RunError(f"{run_dir} is not a run that can be resumed (it needs {LOG_NAME} and "
                       "checkpoint.pt)")
    lines, _ = read_lines(log_path)
    first = lines[0].record if lines else {}
    if first.get("type") != "header":
        raise RunError(f"{log_path} does not start with a header record")
    if first["spec"]["sha256"] != hashlib.sha256(spec_text.encode()).hexdigest():
        raise RunError(f"the spec changed since {run_dir} started (SHA-256 differs); resume "
                       "with the same spec, or start a new run")
    from scpo_spec.audit.verify import verify_chain  # numpy only
    problems = verify_chain(lines)
    if problems:
        raise RunError(f"{log_path} fails its hash chain ({problems[0]}); refusing to extend it")
    log = AuditWriter.reopen(run_dir)
    trainer = Trainer(compiled, log, run_dir)
    payload = torch.load(ckpt, weights_only=False)
    state = trainer.restore(payload)
    if state.step >= total:
        log.close()
        raise RunError(f"{run_dir} has already taken {state.step} steps (asked for {total}); "
                       "pass a larger --steps to continue")
    g = trainer.metrics(state.theta[None])[0]
    logged_steps = sum(1 for ln in lines if ln.record.get("type") == "step")
    state.step = max(state.step, logged_steps)
    log.append({"type": "resume", "from_step": state.step, "theta": theta_hash(state.theta),
                "g": g, "g_checkpoint": state.g, "loss": state.loss, "ell": state.ell,
                "checkpoint_head": payload.get("head")})
    if not np.all(g <= -trainer.margins):  # cannot happen for a checkpoint the run wrote
        log.close()
        raise RunError("the checkpoint's policy does not verify safe; refusing to resume")
    state.g = g
    return _loop(trainer, state, run_dir, total, on_start, on_step)


# ---- using what was trained ----
@dataclass
class Run:
    """A finished (or interrupted) run: its spec, and its last accepted policy as a torch module."""

    path: Path
    spec: Spec
    policy: torch.nn.Module
    theta: torch.Tensor
    header: dict


def load_run(run_dir: str | Path) -> Run:
    """Load a run directory: `.spec` (the model), `.policy` (float64 (N, n) → (N, m))."""
    run_dir = Path(run_dir)
    log_path, ckpt = run_dir / LOG_NAME, run_dir / "checkpoint.pt"
    if not log_path.exists():
        raise RunError(f"{run_dir} is not a run directory (no {LOG_NAME})")
    lines, _ = read_lines(log_path)
    first = lines[0].record if lines else {}
    if first.get("type") != "header":
        raise RunError(f"{log_path} does not start with a header record")
    text = first["spec"]["text"]
    origin = Path(first["spec"].get("resolved", ""))
    result = check_text(text, path=first["spec"]["path"], base_dir=origin.parent,
                        syntax=first["spec"].get("syntax"))
    if result.spec is None or not result.ok:
        result = check_text(text, path=first["spec"]["path"], syntax=first["spec"].get("syntax"),
                            run_checks=False)
    spec = result.spec
    if spec is None:
        raise RunError(f"the spec stored in {log_path} does not build")
    from scpo_spec.policies import make_backup, make_policy
    from scpo_spec.systems import make_dynamics
    dynamics = make_dynamics(spec)
    family = make_policy(spec, dynamics.n, dynamics.m, make_backup(spec, dynamics))
    theta = torch.load(ckpt, weights_only=False)["theta"] if ckpt.exists() else family.theta0
    policy = family.module(theta).eval()
    return Run(run_dir, spec, policy, theta, first)
