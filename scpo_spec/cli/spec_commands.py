"""The commands that read a spec's meaning: `scpo check`, `compile`, `calibrate`, and the
language server (`lsp`) that checks as an editor types."""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import List

import typer
from rich.console import Console

from scpo_spec.cli import command
from scpo_spec.cli.common import (_bound, _check_file, _checked, _compile_or_exit, _esc,
                                  _need_spec_files, _report, out)
from scpo_spec.language.diagnostics import to_json
from scpo_spec.language.lets import expand
from scpo_spec.language.load import CheckResult


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
