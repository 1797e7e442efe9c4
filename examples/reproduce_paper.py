"""Reproduce the paper's experiments with SCPO and the baselines it is compared with.

    python examples/reproduce_paper.py [--quick] [--json FILE] [--plots DIR] [--runs DIR]

Every experiment is a spec in specs/, compiled once and run by every method on the same plant,
policy, scenarios, metrics, objective and optimizer. SCPO runs exactly as `scpo train` does (its
runs, audit logs and reports land under --runs). The baselines are in scpo_spec.engine.baselines.
`violating_iterates` counts the policies a method would deploy (SCPO: θ₀ and the accepted updates;
sgd and penalty: every iterate) that have any metric above 0 on the training scenarios.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = {  # name → spec (the paper's three settings; the double integrator with two teachers)
    "regression": "specs/regression.scpo",
    "double_integrator": "specs/double_integrator.scpo",
    "double_integrator_safe_teacher": "specs/double_integrator_safe_teacher.scpo",
    "linear_stability": "specs/linear_stability.scpo",
}
METHODS = ("scpo", "sgd", "penalty", "full_fd")
QUICK_FRACTION = 0.4  # --quick: this share of each spec's steps


def run_scpo(path: Path, steps: int, runs: Path):
    """SCPO through `scpo train`'s own path; the history is read back from the audit log."""
    from scpo_spec.audit.log import read_lines
    from scpo_spec.audit.verify import audit_run
    from scpo_spec.engine.baselines import MethodResult
    from scpo_spec.engine.run import fresh_dir, train
    from scpo_spec.report import gather, write_report
    from scpo_spec.language.load import check_file

    result = check_file(path)
    start = time.perf_counter()
    out = fresh_dir(runs / path.stem)  # a rerun lands next to the last one, never on it
    run = train(path, result.spec, result.source.text, out=out, steps=steps)
    seconds = time.perf_counter() - start
    write_report(gather(run.run_dir), run.run_dir / "report.html")
    res = MethodResult("scpo", seconds=seconds, rollouts=1)
    for line in read_lines(run.run_dir / "audit.jsonl")[0]:
        rec = line.record
        if rec.get("type") == "init":
            res.deploy(0, rec["g"], rec["loss"])
        elif rec.get("type") == "step":
            res.rollouts += len(rec["bank"]) + sum("verified" in t for t in rec["tries"]) \
                + sum(len(t.get("counterexample", {})) for t in rec["tries"])
            if rec["accepted"]:
                res.deploy(rec["step"] + 1, rec["g_next"], rec["loss_next"])
    audit = audit_run(run.run_dir)
    assert audit.accepted_violations == res.violating_iterates
    return res, run.run_dir, audit.ok


def run_experiment(name: str, quick: bool, runs: Path) -> tuple[dict, list]:
    from scpo_spec.compile.problem import compile_spec
    from scpo_spec.engine.baselines import run_full_fd, run_unconstrained
    from scpo_spec.language.load import load_spec

    path = ROOT / EXPERIMENTS[name]
    spec = load_spec(path)
    steps = int(spec.train.steps)
    if quick:
        steps = max(1, math.ceil(QUICK_FRACTION * steps))
    results = {}
    scpo, run_dir, audit_ok = run_scpo(path, steps, runs)
    results["scpo"] = scpo
    for method in METHODS[1:]:
        compiled = compile_spec(spec, path.parent)  # fresh: same θ₀, scenarios and objective
        if method == "full_fd":
            results[method] = run_full_fd(compiled, steps)
        else:
            results[method] = run_unconstrained(compiled, steps, penalty=method == "penalty")
    metrics = [(m.name, m.margin) for m in compile_spec(spec, path.parent).metrics]
    print(f"  {name}: {steps} steps; SCPO run {run_dir} (audit {'passed' if audit_ok else 'FAILED'})",
          file=sys.stderr)
    return results, metrics


def plot(name: str, results: dict, metrics: list, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"scpo": "#1f5fa8", "sgd": "#c0392b", "penalty": "#e67e22", "full_fd": "#27774b"}
    fig, axes = plt.subplots(len(metrics) + 1, 1, figsize=(7.5, 2.2 * (len(metrics) + 1)),
                             sharex=True)
    for method, res in results.items():
        if res.skipped or not res.history:
            continue
        steps = [h["step"] for h in res.history]
        axes[0].plot(steps, [h["loss"] for h in res.history], color=colors[method], label=method,
                     lw=1.4)
        for i, (metric, _) in enumerate(metrics):
            g = np.array([h["g"][i] for h in res.history], dtype=float)
            axes[i + 1].plot(steps, np.where(np.isfinite(g), g, np.nan), color=colors[method],
                             lw=1.4, label=method)
    axes[0].set_ylabel("loss", fontsize=8)
    axes[0].set_yscale("log")
    axes[0].set_title(f"{name}: loss and metrics of the deployed iterates", fontsize=9, loc="left")
    for i, (metric, margin) in enumerate(metrics):
        ax = axes[i + 1]
        ax.axhline(-margin, color="black", ls="--", lw=0.9, label="−margin")
        ax.axhspan(0, max(ax.get_ylim()[1], 0.05), color="#c0392b", alpha=0.06)
        ax.set_ylabel(metric, fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    axes[-1].set_xlabel("step", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)


def table(all_results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="SCPO and baselines (violating = deployed iterates with a metric > 0)")
    for col in ("experiment", "method", "iterates", "violating", "loss initial", "loss final",
                "rollouts", "seconds"):
        t.add_column(col, justify="left" if col in ("experiment", "method") else "right")
    for name, results in all_results.items():
        for method, r in results.items():
            if r.skipped:
                t.add_row(name, method, "—", "—", "—", "—", "—", r.skipped)
                continue
            t.add_row(name, method, str(r.iterates), str(r.violating_iterates),
                      f"{r.loss_initial:.4g}", f"{r.loss_final:.4g}", str(r.rollouts),
                      f"{r.seconds:.1f}")
    Console(width=120).print(t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_FRACTION:.0%} of each spec's steps (a few minutes on 2 cores)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plots", type=Path, help="write one PNG per experiment here")
    ap.add_argument("--runs", type=Path, default=Path("runs/paper"),
                    help="where SCPO's runs (logs, reports) go (never overwritten)")
    ap.add_argument("--only", choices=list(EXPERIMENTS), action="append",
                    help="run only this experiment (repeatable)")
    args = ap.parse_args(argv)
    names = args.only or list(EXPERIMENTS)
    all_results = {}
    for name in names:
        results, metrics = run_experiment(name, args.quick, args.runs)
        all_results[name] = results
        if args.plots:
            args.plots.mkdir(parents=True, exist_ok=True)
            plot(name, results, metrics, args.plots)
    table(all_results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({n: {m: r.summary() for m, r in res.items()}
                                         for n, res in all_results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
