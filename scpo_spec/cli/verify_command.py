"""`scpo verify`: prove a run's final policy (or a spec's θ₀) safe over the whole initial box,
here or on Ray, and record the result beside the run's log."""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from scpo_spec.cli import command
from scpo_spec.cli.common import _bound, _checked, _compile_or_exit, _esc, _usage, err, out
from scpo_spec.errors import ScpoError


def _rounded_up(x: float, digits: int = 4) -> str:
    """An upper bound printed short and still an upper bound: its digits rounded toward +∞
    (printed to the nearest, −2.11496e-6 would read −2.115e-6, below what was proved)."""
    import decimal
    if not math.isfinite(x):
        return str(x)
    up = decimal.Context(prec=digits, rounding=decimal.ROUND_CEILING).create_decimal(x)
    return f"{float(up):.{digits}g}"


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
