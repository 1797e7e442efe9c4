"""`scpo verify`: each safety metric proved over the whole initial box, refuted by a concrete
initial state, or left undecided — never PROVED on a guess.

The box is split adaptively: a cell whose bound fails some constraint not yet refuted is
bisected along its widest side (relative to the box) while the cell budget and the time limit
allow.  Every cell is also handed to a falsifier: its centre, corners and a few random points,
rolled out by the ORDINARY evaluator, then, on a failing cell where none of them violates, a
few gradient steps from its worst point (ascent.py); a point whose g > 0 when the ordinary
evaluator rolls it out is a COUNTEREXAMPLE.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.dtype import DTYPE
from scpo_spec.language.lets import expand
from scpo_spec.plan.settings import VERIFY_CELLS, VERIFY_TIME_LIMIT
from scpo_spec.verify.ascent import ascend
from scpo_spec.verify.reach import Unsupported
from scpo_spec.verify.uncertain import Uncertainty, cell_box, closed_loop, interval_compiler
from scpo_spec.verify.verdicts import COUNTEREXAMPLE, PROVED, UNDECIDED, overall_proof_verdict



class VerifierError(Exception):
    """A bound contradicted by the ordinary evaluator: a bug in the verifier (not a ScpoError:
    nothing the user did causes it, and it must not pass as a verdict)."""
RANDOM_POINTS = 8     # falsifier points per failing cell besides its centre and corners
KEEP = 30             # generators kept by the reduction (docs/verify.md)
SEED = 0              # of the falsifier's random points


@dataclass
class ConstraintResult:
    verdict: str
    bound: float | None           # an upper bound of g over the cells evaluated (None: none)
    proved_fraction: float        # of the initial box's volume
    cells: int                    # leaf cells it was bounded on
    open_cells: int               # of them, where its bound stays above −margin
    margin: float
    counterexample: dict | None = None   # {"x0", "parameters", "disturbances", "g"}
    reason: str | None = None

    def as_json(self) -> dict:
        """JSON-ready: a counterexample whose rollout left the finite numbers has g null."""
        cex = self.counterexample
        if cex is not None and not np.isfinite(cex["g"]):
            cex = {**cex, "g": None}
        return {"verdict": self.verdict, "bound": self.bound,
                "proved_fraction": self.proved_fraction, "cells": self.cells,
                "open_cells": self.open_cells, "margin": self.margin,
                "counterexample": cex, "reason": self.reason}


@dataclass
class VerifyResult:
    verdict: str
    seconds: float
    cells: int
    model: str
    constraints: dict[str, ConstraintResult] = field(default_factory=dict)
    reason: str | None = None     # why nothing could be bounded (UNDECIDED throughout)

    def as_json(self) -> dict:
        return {"verdict": self.verdict, "seconds": self.seconds, "cells": self.cells,
                "model": self.model, "reason": self.reason,
                "constraints": {k: v.as_json() for k, v in self.constraints.items()}}

    @property
    def exit_code(self) -> int:
        return {PROVED: 0, COUNTEREXAMPLE: 1}.get(self.verdict, 3)


def model_of(compiled: CompiledSpec) -> str:
    """What a verdict is about, in words."""
    kind = compiled.dynamics.kind
    T = compiled.evaluator.horizon
    system = compiled.spec.system
    what = {"linear": "x⁺ = A x + B u",
            "static": "x⁺ = x",
            "pendulum": "the pendulum's semi-implicit Euler step as written",
            "discrete": "the declared one-step map"}
    if kind == "ode":
        from scpo_spec.language.model import DEFAULTS
        method = system.integrator.name if system.integrator is not None \
            else DEFAULTS[("system ode", "integrator")]
        substeps = int(system.substeps) if system.substeps is not None \
            else DEFAULTS[("system ode", "substeps")]
        what["ode"] = (f"the {method} one-step map with {substeps} substep"
                       f"{'s' * (substeps != 1)} as written, not the ODE between steps")
    return (f"the spec's discrete-time model ({kind}: {what.get(kind, kind)}) in closed loop "
            f"with the policy, evaluated in float64 as `scpo train` evaluates it, over T = {T} "
            "steps from every initial state in the scenarios' initial box"
            + Uncertainty.of(compiled).clause())


@dataclass
class CellAnswer:
    """What bounding a batch of cells gives: each cell's upper bound of each metric's g
    (B, k; inf where none), each falsifier point's g by the ordinary evaluator (P, k), the
    metrics found unbounded on the way (their reason, else None), or why nothing could be
    bounded at all (`unsupported`)."""

    his: np.ndarray
    g: np.ndarray
    unbounded: list
    unsupported: str | None = None


class Cells:
    """The part of the prover that a batch of cells needs, and nothing of the splitting: the
    closed loop over sets, each metric's bounder, the falsifier's evaluator.  Cells are
    independent, so a batch may be cut into parts bounded anywhere this can be built (Ray's
    workers: engine/executors/ray_cells.py) and the parts joined in order."""

    def __init__(self, compiled: CompiledSpec, theta: torch.Tensor, keep: int = KEEP):
        self.compiled, self.theta = compiled, theta
        self.loop = closed_loop(compiled, theta, keep)  # over (x0, parameters): uncertain.py
        spec = compiled.spec
        compiler = interval_compiler(compiled)
        self.bounders, self.unbounded = [], []
        for prop in spec.properties:
            try:
                self.bounders.append(compiler.formula(expand(prop.formula, spec)))
                self.unbounded.append(None)
            except Unsupported as e:
                self.bounders.append(None)
                self.unbounded.append(str(e))
        self.rho = None
        if any(m.uses_linearisation for m in compiled.metrics):
            self.rho = float(compiled.evaluator.spectral_radius(theta[None])[0])

    @property
    def batch(self) -> int:
        return self.loop.batch

    def bound(self, lo: np.ndarray, hi: np.ndarray, points: np.ndarray,
              owner: np.ndarray) -> CellAnswer:
        """Bound the cells [lo, hi] (B, n) and roll the falsifier's points out (`owner`: the
        cell of each point, unused here: a part of a batch carries its own points)."""
        k = len(self.bounders)
        g = np.zeros((0, k))
        if len(points):  # the driver rolls its falsifier out itself (`_falsify`): none sent
            with torch.no_grad():
                g = self.compiled.evaluator.per_scenario(
                    self.theta[None], torch.as_tensor(points, dtype=DTYPE))[0].numpy()  # (P, k)
        lo_t, hi_t = torch.as_tensor(lo, dtype=DTYPE), torch.as_tensor(hi, dtype=DTYPE)
        try:
            reach = self.loop.reach(lo_t, hi_t)
        except Unsupported as e:
            return CellAnswer(np.full((len(lo), k), np.inf), g, [None] * k, str(e))
        his = np.full((len(lo), k), np.inf)
        unbounded = list(self.unbounded)
        for j, bounder in enumerate(self.bounders):
            if unbounded[j] is None:
                try:
                    his[:, j] = bounder(reach, self.rho)[1].expand(len(lo)).numpy()
                except Unsupported as e:
                    unbounded[j] = str(e)
        return CellAnswer(np.where(np.isnan(his), np.inf, his), g, unbounded)


class CellExecutor(Protocol):
    """Where a batch of cells is bounded when not in this process (`scpo verify --executor
    ray`: engine/executors/ray_cells.py): the answer `Cells(compiled, θ, keep).bound(lo, hi,
    points, owner)` would give, for the spec it was opened with."""

    def bound_cells(self, theta: np.ndarray, keep: int, lo: np.ndarray, hi: np.ndarray,
                    points: np.ndarray, owner: np.ndarray) -> CellAnswer: ...


def verify(compiled: CompiledSpec, theta: torch.Tensor, *, cells: int = VERIFY_CELLS,
           time_limit: float = VERIFY_TIME_LIMIT, keep: int = KEEP, seed: int = SEED,
           executor: CellExecutor | None = None) -> VerifyResult:
    """Prove, refute or leave open each metric of `compiled` for the policy θ; `executor`:
    where the cells are bounded (this process by default; the splitting stays here).

    Runs on one torch thread: its matmuls are small (≤ 256 cells × ~200 generators × the
    layer width), where intra-op threads cost more than they give — on a loaded 2-core
    machine the trained double integrator took 59 s with 2 threads and 2.6 s with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _verify(compiled, theta, cells, time_limit, keep, seed, executor)
    finally:
        torch.set_num_threads(threads)


def _verify(compiled: CompiledSpec, theta: torch.Tensor, cells: int, time_limit: float,
            keep: int, seed: int, executor) -> VerifyResult:
    start = time.perf_counter()
    theta = torch.as_tensor(theta, dtype=DTYPE).reshape(-1)
    metrics = compiled.metrics
    margins = np.array([m.margin if m.margin is not None else 0.0 for m in metrics])
    model = model_of(compiled)

    def undecided(reason: str) -> VerifyResult:
        return VerifyResult(UNDECIDED, time.perf_counter() - start, 0, model,
                            {m.name: ConstraintResult(UNDECIDED, None, 0.0, 0, 0, float(mg),
                                                      reason=reason)
                             for m, mg in zip(metrics, margins)}, reason)
    try:
        if compiled.settings.aggregate != "hard":
            raise Unsupported("`aggregate smooth`: the rounding of its logsumexp is not "
                              "bounded yet")
        here = Cells(compiled, theta, keep)
    except Unsupported as e:
        return undecided(str(e))
    if executor is None:
        bound_cells = here.bound
    else:  # the same answer, bounded elsewhere (CellExecutor)
        theta_np = theta.detach().cpu().numpy()
        bound_cells = lambda *batch: executor.bound_cells(theta_np, keep, *batch)  # noqa: E731
    unbounded = list(here.unbounded)  # a metric it cannot bound: its reason
    uncertainty = Uncertainty.of(compiled)

    box_lo, box_hi = (torch.as_tensor(a, dtype=DTYPE) for a in cell_box(compiled))
    width = (box_hi - box_lo).clamp_min(0)
    scale = torch.where(width > 0, width, torch.ones_like(width))
    k = len(metrics)
    rng = np.random.default_rng(seed)
    # pending cells: lo, hi, depth, the bound inherited from the parent (k,)
    pending = [(box_lo, box_hi, 0, np.full(k, np.inf))]
    leaves = 0
    bound = np.full(k, -np.inf)
    proved_volume = np.zeros(k)
    open_cells = np.zeros(k, dtype=int)
    cex: list[dict | None] = [None] * k
    timed_out = False
    while pending:
        if time.perf_counter() - start > time_limit:
            timed_out = True
            break
        batch, pending = pending[:here.batch], pending[here.batch:]
        lo = torch.stack([c[0] for c in batch])
        hi = torch.stack([c[1] for c in batch])
        answer = bound_cells(lo.numpy(), hi.numpy(), np.zeros((0, lo.shape[1])),
                             np.zeros(0, dtype=int))
        if answer.unsupported is not None:
            return undecided(answer.unsupported)
        his = answer.his
        unbounded = [u if u is not None else a for u, a in zip(unbounded, answer.unbounded)]
        his[:, [u is not None for u in unbounded]] = np.inf
        proved = his <= -margins  # (B, k)
        # the falsifier on every cell: a counterexample where g > 0, and a check of the
        # bounds themselves — a point's g above its cell's bound is a bug in the verifier,
        # which must never print PROVED over it
        g, owner, x0, draws = _falsify(compiled, theta, batch, cex, rng, uncertainty)
        _check(g, owner, his, metrics)
        # splitting helps a metric it bounds and has not refuted; the falsifier serves all
        splittable = [cex[j] is None and unbounded[j] is None for j in range(k)]
        room = cells - leaves - len(pending) - len(batch)  # splits the budget still allows
        split = np.zeros(len(batch), dtype=bool)
        for i in range(len(batch)):
            needs_split = any(not proved[i, j] and splittable[j] for j in range(k))
            if needs_split and room > 0 and time.perf_counter() - start <= time_limit:
                room -= 1
                split[i] = True
        # gradient steps on the whole box, and on every cell left open (a cell split further
        # is searched through its parts), while the time limit allows
        whole = np.array([depth == 0 for _, _, depth, _ in batch])
        if time.perf_counter() - start <= time_limit:
            found = _gradient_steps(compiled, theta, batch, cex, uncertainty,
                                    ~proved & (whole | ~split)[:, None], x0, draws, g, owner)
            if found is not None:
                _check(*found, his, metrics)
        for i, (clo, chi, depth, _) in enumerate(batch):
            if split[i]:
                d = int(torch.argmax((chi - clo) / scale))
                mid = (clo[d] + chi[d]) / 2
                left_hi, right_lo = chi.clone(), clo.clone()
                left_hi[d], right_lo[d] = mid, mid
                pending += [(clo, left_hi, depth + 1, his[i]), (right_lo, chi, depth + 1, his[i])]
                continue
            leaves += 1
            bound = np.maximum(bound, his[i])
            proved_volume += np.where(proved[i], 0.5 ** depth, 0.0)
            open_cells += ~proved[i]
    for _, _, depth, inherited in pending:  # left by the time limit: the parent's bound holds
        leaves += 1
        bound = np.maximum(bound, inherited)
        held = inherited <= -margins
        proved_volume += np.where(held, 0.5 ** depth, 0.0)
        open_cells += ~held
    results = {}
    for j, m in enumerate(metrics):
        if cex[j] is not None:
            verdict = COUNTEREXAMPLE
        elif open_cells[j] == 0:  # (a cell the time limit left keeps its parent's bound)
            verdict = PROVED
        else:
            verdict = UNDECIDED
        b = float(bound[j]) if np.isfinite(bound[j]) else None  # None: unbounded (or none)
        reason = None
        if verdict == UNDECIDED:
            reason = (unbounded[j] if unbounded[j] is not None else
                      "time limit reached" if timed_out else
                      f"the cell budget ({cells}) is spent with {int(open_cells[j])} cells open")
        results[m.name] = ConstraintResult(verdict, b, float(min(proved_volume[j], 1.0)), leaves,
                                           int(open_cells[j]), float(margins[j]), cex[j], reason)
    return VerifyResult(overall_proof_verdict(r.verdict for r in results.values()), time.perf_counter() - start, leaves, model, results)


def _check(g: np.ndarray, owner: np.ndarray, his: np.ndarray, metrics) -> None:
    """Every falsifier scenario's g (Q, k) within its cell's bound (`owner`: its cell)."""
    above = g > his[owner]
    if above.any():
        p, j = np.argwhere(above)[0]
        raise VerifierError(f"the bound {float(his[owner[p], j])!r} of '{metrics[j].name}' "
                            f"over a cell is below the evaluator's g = {float(g[p, j])!r} "
                            "at a point of it; please report this")


def _evaluate(compiled: CompiledSpec, theta: torch.Tensor, x0: np.ndarray, draws
              ) -> np.ndarray:
    """g (Q, k) of the scenarios by the ordinary evaluator (no grad)."""
    with torch.no_grad():
        return compiled.evaluator.per_scenario(
            theta[None], torch.as_tensor(x0, dtype=DTYPE), draws)[0].numpy()


def _falsify(compiled: CompiledSpec, theta: torch.Tensor, batch: list, cex: list,
             rng: np.random.Generator, uncertainty: Uncertainty) -> tuple:
    """Roll the centre, corners and a few random points of each cell (x0, parameters) out with
    the ordinary evaluator, each with the falsifier's disturbance sequences (uncertain.py);
    record the worst violating scenario per metric (g > 0) in `cex`.  Returns every
    scenario's g (Q, k), the index of its cell in `batch` (Q,), and the scenarios (x0, draws)."""
    points, owner = [], []
    for i, (lo, hi, _, _) in enumerate(batch):
        lo_np, hi_np = lo.numpy(), hi.numpy()
        mine = [(lo_np + hi_np) / 2]
        n = lo_np.shape[0]
        if n <= 6:
            mine += [np.where(np.array(bits, dtype=bool), hi_np, lo_np)
                     for bits in itertools.product((0, 1), repeat=n)]
        mine += list(rng.uniform(lo_np, hi_np, size=(RANDOM_POINTS, n)))
        points += mine
        owner += [i] * len(mine)
    x0, draws, owner = uncertainty.rollouts(np.array(points), np.array(owner),
                                            compiled.dynamics.n, rng)
    evaluate = lambda x0, draws: _evaluate(compiled, theta, x0, draws)  # noqa: E731
    g = evaluate(x0, draws)
    for j in range(g.shape[1]):
        worst = int(np.argmax(g[:, j]))
        if cex[j] is None and g[worst, j] <= 0 and uncertainty.disturbances \
                and np.isfinite(g[worst, j]):  # search the worst one's disturbance sequence
            x1, d1, g1 = uncertainty.sharpen(evaluate, x0, draws, worst, j)
            if g1 > 0:
                cex[j] = uncertainty.counterexample(x1, d1, 0, g1)
        if g[worst, j] > 0 and (cex[j] is None or g[worst, j] > cex[j]["g"]):
            cex[j] = uncertainty.counterexample(x0, draws, worst, g[worst, j])
    return g, owner, x0, draws


def _gradient_steps(compiled, theta, batch, cex, uncertainty, failing, x0, draws, g, owner
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """ascent.py's search from the worst scenario (of `_falsify`'s) of each cell and metric
    `failing` (B, k) names and none has refuted yet; the points it ends on are rolled out by
    the ordinary evaluator (no grad), a violation recorded in `cex`.  Returns their g (S, k)
    and cells (S,), or None."""
    starts, metric = [], []
    bounds = np.searchsorted(owner, np.arange(len(batch) + 1))  # owner is sorted: cell blocks
    for j in range(g.shape[1]):
        if cex[j] is not None:
            continue
        for i in np.flatnonzero(failing[:, j]):
            block = g[bounds[i]:bounds[i + 1], j]
            if len(block) and np.isfinite(block).all():
                starts.append(bounds[i] + int(np.argmax(block)))
                metric.append(j)
    if not starts:
        return None
    starts = np.array(starts)
    cells = owner[starts]
    lo = np.stack([batch[i][0].numpy() for i in cells])
    hi = np.stack([batch[i][1].numpy() for i in cells])
    start_draws = None if draws is None else draws.rows(starts)
    try:
        x1, d1 = ascend(compiled, theta, x0[starts], start_draws, lo, hi, np.array(metric),
                        uncertainty.d_lo, uncertainty.d_hi)
    except RuntimeError:  # autograd cannot go through this model: the search is optional
        return None
    g1 = _evaluate(compiled, theta, x1, d1)  # the ordinary evaluator decides, not the search
    for s, j in enumerate(metric):
        if g1[s, j] > 0 and (cex[j] is None or g1[s, j] > cex[j]["g"]):
            cex[j] = uncertainty.counterexample(x1, d1, s, g1[s, j])
    return g1, cells
