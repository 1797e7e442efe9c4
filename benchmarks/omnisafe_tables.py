"""The table, the plots and the merge of benchmarks/compare_omnisafe.py's results (its JSON
rows in, text and PNGs out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {"scpo": "#1f5fa8", "ppo_lag": "#c0392b", "cpo": "#e67e22", "ppo_lag_warm": "#8e44ad",
          "cpo_warm": "#27ae60"}


def plot(name: str, curves: dict, metrics: list[str], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7.5, 1.9 * len(metrics)), sharex=False)
    for method, seeds in curves.items():
        for j, s in enumerate(seeds):
            for i, metric in enumerate(metrics):
                axes[i].plot(np.arange(len(s["g"])), s["g"][:, i], color=COLORS[method],
                             lw=1.2, alpha=0.9 if j == 0 else 0.5,
                             label=method if j == 0 else None)
    for i, metric in enumerate(metrics):
        axes[i].axhline(0, color="black", lw=0.8)
        axes[i].set_ylabel(metric, fontsize=8)
        axes[i].tick_params(labelsize=7)
        axes[i].grid(alpha=0.25)
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"{name}: the spec's metrics g of every iterate (g > 0 violates)",
                      fontsize=9, loc="left")
    axes[-1].set_xlabel("iterate (SCPO: θ₀ and accepted updates; OmniSafe: epoch)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"omnisafe_{name}.png", dpi=110)
    plt.close(fig)


def _verdicts(row: dict) -> str:
    """`P/C/U` counts of the final policies' overall `scpo verify` verdicts."""
    v = [f["verdict"] for f in row["final_verify"]]
    return "/".join(str(v.count(x)) for x in ("PROVED", "COUNTEREXAMPLE", "UNDECIDED"))


def print_table(all_rows: dict, budget: dict, mode: str) -> None:
    print(f"\nbudget mode {mode}; violating = iterates with any of the spec's metrics g > 0 on "
          f"its scenarios; OmniSafe: {budget['seeds']} seeds, epochs of "
          f"{budget['steps_per_epoch']:,}; mean ± std over seeds; verify = final policies "
          "PROVED/COUNTEREXAMPLE/UNDECIDED")
    head = ("task", "method", "seeds", "iterates", "violating", "violating per seed",
            "first/last iterate violating", "worst g", "return final", "steps per run",
            "verify P/C/U", "seconds")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for name, rows in all_rows.items():
        for method, r in rows.items():
            v, ret = r["violating_per_seed"], r["return_final_per_seed"]
            steps = sorted(set(r["env_steps_per_run"]))
            steps_s = (f"{steps[0]:,}" if len(steps) == 1
                       else f"{steps[0]:,}–{steps[-1]:,}")
            print(f"| {name} | {method} | {r['seeds']} | {r['iterates']} | "
                  f"{r['violating_iterates']} | {v['mean']:.3g} ± {v['std']:.2g} | "
                  f"{r['violating_initial']}/{r['violating_final']} | "
                  f"{r['worst']:.4g} | {ret['mean']:.4g} ± {ret['std']:.2g} | {steps_s} | "
                  f"{_verdicts(r)} | {r['seconds']:.0f} |")


def merge(parts: list[dict], methods: tuple[str, ...] = ()) -> dict:
    """One result of several runs made side by side or one after the other (a task each, or
    some methods of a task each: `--no-scpo --algos …`), all with the same settings: their rows
    together, each part's wall time kept; partial while an asked task, or one of `methods` in
    a task, is missing (`missing` names them)."""
    same = ("quick", "budget", "omnisafe_settings", "verify_limits", "versions")
    for part in parts[1:]:
        for key in same:
            assert part[key] == parts[0][key], f"the runs differ in {key}: cannot merge"
    modes = {part["budget_mode"] for part in parts} - {None}  # None: a part without SCPO
    assert len(modes) <= 1, f"the runs differ in budget_mode {sorted(modes)}: cannot merge"
    tasks: dict = {}
    for part in parts:
        for name, rows in part["tasks"].items():
            tasks.setdefault(name, {}).update(rows)
    asked = list(dict.fromkeys(t for part in parts for t in part["tasks_asked"]))
    missing = {t: [m for m in methods if m not in tasks.get(t, {})] for t in asked}
    missing = {t: ms for t, ms in missing.items() if ms or t not in tasks}
    return {**{key: parts[0][key] for key in same}, "budget_mode": next(iter(modes), None),
            "partial": bool(missing), "missing": missing, "tasks_asked": asked,
            "seconds": sum(part["seconds"] for part in parts),
            "parts": [{"tasks": {n: list(r) for n, r in part["tasks"].items()},
                       "seconds": part["seconds"]} for part in parts], "tasks": tasks}
