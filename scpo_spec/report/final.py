"""What the final policy does, for the report's pictures: its rollouts on a few training
scenarios with the spec's box bounds, and, for a regression, the fitted f(x) against the data
and the band.  The policy is the state file's θ bound to the log's last accepted hash
(`RunDir.final_theta`); the spec is the checked copy in the header — nothing from the run is
imported or unpickled.  A reviewer reads a certificate more easily next to what it certifies."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scpo_spec.language import expr as E
from scpo_spec.language.evaluate import EvalError, evaluate

MAX_SCENARIOS = 4   # trajectories drawn: the worst per metric, then a couple of others


@dataclass
class Bound:
    """A box bound on one signal, read from an `always` constraint (lo/hi None: one-sided)."""

    lo: float | None
    hi: float | None
    sources: list = field(default_factory=list)   # the constraints it comes from

    def merge(self, lo, hi, source) -> None:
        """Intersect with another bound on the same signal (the tighter one is what holds)."""
        if lo is not None:
            self.lo = lo if self.lo is None else max(self.lo, lo)
        if hi is not None:
            self.hi = hi if self.hi is None else min(self.hi, hi)
        if source not in self.sources:
            self.sources.append(source)


@dataclass
class Trajectories:
    """The final policy rolled out on a few training scenarios."""

    scenarios: list            # training scenario indices
    labels: list               # why each was picked, e.g. '#3: worst for angle (g = -0.2)'
    states: np.ndarray         # (K, T+1, n)
    inputs: np.ndarray         # (K, T, m)
    state_names: list
    input_names: list
    bounds: dict               # signal name → Bound


@dataclass
class RegressionFit:
    """f(x) of the final model on a fine grid, the data it was fitted to, and the band."""

    input_name: str
    output_name: str
    x: np.ndarray              # the fine grid
    fx: np.ndarray
    scenario_x: np.ndarray     # where safety was checked (the training scenarios)
    scenario_fx: np.ndarray
    data_x: np.ndarray | None  # None when the data file is gone or changed since the run
    data_y: np.ndarray | None
    data_note: str
    band: Bound | None


# ---- box bounds from the spec -------------------------------------------------------------------
def box_bounds(spec) -> dict[str, Bound]:
    """Signal → Bound for every constraint that is plainly a box: `always` (no window) over
    atoms `s in [lo, hi]`, `abs(s) <= c`, `s <= c`, `s >= c` (or a conjunction of them), s a
    state or input.  Anything else (a norm, a window, an `or`) is no box, and is not drawn."""
    signals = {s.name for s in [*spec.system.states, *spec.system.inputs]}
    consts = {c.name: c.value.value for c in spec.consts}
    out: dict[str, Bound] = {}
    for prop in spec.constraints:
        f = prop.formula
        if not (isinstance(f, E.Temporal) and f.op == "always" and f.window is None):
            continue
        atoms = f.body.args if isinstance(f.body, E.And) else [f.body]
        found = [_atom_bound(a, signals, consts) for a in atoms]
        if any(b is None for b in found):
            continue
        for name, lo, hi in found:
            out.setdefault(name, Bound(None, None)).merge(lo, hi, prop.name.name)
    return out


def _number(e, consts) -> float | None:
    try:
        v = np.asarray(evaluate(e, consts), dtype=float)
    except (EvalError, TypeError, ValueError):
        return None
    return float(v) if v.ndim == 0 and np.isfinite(v) else None


def _signal(e, signals) -> str | None:
    return e.id if isinstance(e, E.Name) and e.id in signals else None


def _atom_bound(a, signals, consts):
    """(signal, lo, hi) of one atom, or None when it is not a box bound on one signal."""
    if isinstance(a, E.Within):
        s = _signal(a.arg, signals)
        try:
            lo, hi = (float(v) for v in np.asarray(evaluate(a.interval, consts), dtype=float))
        except (EvalError, TypeError, ValueError):
            return None
        return (s, lo, hi) if s else None
    if not isinstance(a, E.Compare):
        return None
    left, right, op = a.left, a.right, a.op
    if _number(left, consts) is not None:  # `c >= s` reads as `s <= c`
        left, right = right, left
        op = {"<=": ">=", "<": ">", ">=": "<=", ">": "<"}[op]
    c = _number(right, consts)
    if c is None:
        return None
    if isinstance(left, E.Call) and left.func == "abs" and len(left.args) == 1:
        s = _signal(left.args[0], signals)
        return (s, -c, c) if s and op in ("<=", "<") else None
    s = _signal(left, signals)
    if s is None:
        return None
    return (s, None, c) if op in ("<=", "<") else (s, c, None)


# ---- the final policy's rollouts ----------------------------------------------------------------
def trajectories(compiled, theta: np.ndarray) -> Trajectories | None:
    """Roll the final policy out on every training scenario, keep up to MAX_SCENARIOS: the worst
    one per metric that differs between scenarios, then the one with the most slack, a median
    one and #0 (by the largest of its metric values)."""
    import torch
    ev = compiled.evaluator
    if ev.horizon < 2:  # a static model: nothing moves (a regression gets its own plot)
        return None
    th = torch.from_numpy(np.asarray(theta, dtype=np.float64))[None]
    h = ev.per_scenario(th)[0].numpy()             # (S, k)
    picks: list[tuple[int, str]] = []
    for i, name in enumerate(ev.names):
        col = h[:, i]
        if not np.all(np.isfinite(col)) or np.ptp(col) > 1e-12 * max(1.0, np.abs(col).max()):
            j = int(np.nanargmax(np.where(np.isfinite(col), col, np.inf)))
            if all(j != p for p, _ in picks):
                picks.append((j, f"#{j}: worst for {name} (g = {col[j]:.3g})"))
    worst = np.max(h, axis=1)
    median = int(np.argsort(worst, kind="stable")[len(worst) // 2])
    for j, why in ((int(np.argmin(worst)), "most slack"), (median, "a median one"),
                   (0, "the first scenario")):
        if all(j != p for p, _ in picks):
            picks.append((j, f"#{j}: {why}"))
    picks = picks[:MAX_SCENARIOS]
    idx = torch.as_tensor([p for p, _ in picks])
    X, U = ev.rollout(th, *ev.select(idx))
    spec = compiled.spec
    return Trajectories([p for p, _ in picks], [w for _, w in picks], X[0].numpy(), U[0].numpy(),
                        [s.name for s in spec.system.states], [s.name for s in spec.system.inputs],
                        box_bounds(spec))


def regression_fit(compiled, theta: np.ndarray, base: Path, data_sha256: str | None
                   ) -> RegressionFit | None:
    """f(x) on a fine grid over the data and the scenarios, for a one-input one-output
    regression; the data points only if the file still has the SHA-256 the run logged."""
    import torch
    spec = compiled.spec
    obj = spec.objective
    if obj is None or obj.kind != "regression" or len(spec.system.states) != 1 \
            or len(spec.system.inputs) != 1:
        return None
    th = torch.from_numpy(np.asarray(theta, dtype=np.float64))[None]
    sx = compiled.evaluator.x0.numpy().reshape(-1)
    dx, dy, note = None, None, "the data the run was trained on"
    path = (base / obj.data.value)
    try:
        same = hashlib.sha256(path.read_bytes()).hexdigest() == data_sha256
    except OSError:
        same, note = False, f"the data file {obj.data.value} is not there any more"
    else:
        if not same:
            note = f"the data file {obj.data.value} changed since the run (SHA-256 differs)"
    if same:
        dx = compiled.objective.X[0, :, 0].numpy()
        dy = compiled.objective.Y[0, :, 0].numpy()
    lo = min(sx.min(), dx.min() if dx is not None else sx.min())
    hi = max(sx.max(), dx.max() if dx is not None else sx.max())
    pad = 0.02 * (hi - lo or 1.0)
    grid = np.linspace(lo - pad, hi + pad, 400)
    f = lambda x: compiled.family.forward(th, torch.from_numpy(x).reshape(1, -1, 1))  # noqa: E731
    with torch.no_grad():
        fx, fs = f(grid)[0, :, 0].numpy(), f(sx)[0, :, 0].numpy()
    out_name = spec.system.inputs[0].name
    return RegressionFit(spec.system.states[0].name, out_name, grid, fx, sx, fs, dx, dy, note,
                         box_bounds(spec).get(out_name))
