"""Parameters and disturbances (LANGUAGE-v3) as bounded sets in `scpo verify`.

A cell is a box over (x0, p): the initial state and the parameters, split alike by the prover.
Its zonotope has one generator per initial-state component and one per parameter, shared by
every step (a parameter is held over the rollout, so its correlation with the states is kept);
those n + p leading generators are never reduced away, so the parameters' zonotope stays the
same set of symbols as the states' at every step.  A disturbance is independent from step to
step: each step gets one fresh generator per disturbance, which enters the declared equations
through verify/declared.py's affine arithmetic.  Formulas read a parameter as its cell's
interval and a disturbance as its range at every step (bounds.py's interval semantics).

The falsifier rolls each point (x0, p) of a cell out with a few disturbance sequences (the
disturbance box's corners held constant, a random ±corner sequence, a uniform one) through the
ordinary evaluator, with those values as the scenarios' draws; a counterexample carries them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.language import expr as E
from scpo_spec.language.scenario_bounds import initial_box
from scpo_spec.plan.scenarios import Draws, uncertain_ranges
from scpo_spec.verify.bounds import Iv, IntervalCompiler
from scpo_spec.verify.reach import ClosedLoop, Reach, Unsupported, _cat, _column
from scpo_spec.verify.zonotope import Zono, reduce

CORNER_DIMENSIONS = 3   # disturbances up to this many: every corner of their box, held constant
SHARPEN_ROUNDS = 4      # of the falsifier's search over a disturbance sequence


@dataclass
class UncertainReach(Reach):
    """Reach plus each cell's parameter box (N, p) and the disturbances' ranges (d,)."""

    parameters_lo: torch.Tensor | None = None
    parameters_hi: torch.Tensor | None = None
    disturbances_lo: torch.Tensor | None = None
    disturbances_hi: torch.Tensor | None = None


@dataclass
class Uncertainty:
    """The spec's parameters and disturbances: names and ranges, in declaration order."""

    parameters: list[str]
    p_lo: np.ndarray
    p_hi: np.ndarray
    disturbances: list[str]
    d_lo: np.ndarray
    d_hi: np.ndarray
    horizon: int

    @classmethod
    def of(cls, compiled: CompiledSpec) -> "Uncertainty":
        spec = compiled.spec
        p, plo, phi = uncertain_ranges(spec, "parameter")
        d, dlo, dhi = uncertain_ranges(spec, "disturbance")
        return cls(p, plo, phi, d, dlo, dhi, compiled.evaluator.horizon)

    @property
    def names(self) -> list[str]:
        return self.parameters + self.disturbances

    @property
    def any(self) -> bool:
        return bool(self.parameters or self.disturbances)

    def clause(self) -> str:
        """What the model's words add: over which uncertain values a verdict holds."""
        parts = []
        if self.parameters:
            parts.append("every value of " + ", ".join(
                f"{n} in [{lo:g}, {hi:g}]" for n, lo, hi in
                zip(self.parameters, self.p_lo, self.p_hi)) + " (held over the rollout)")
        if self.disturbances:
            parts.append("every value of " + ", ".join(
                f"{n} in [{lo:g}, {hi:g}]" for n, lo, hi in
                zip(self.disturbances, self.d_lo, self.d_hi)) + " at every step")
        return "".join(f" and {p}" for p in parts)

    def disturbance_sequences(self, rng: np.random.Generator) -> list[np.ndarray]:
        """(T, d) sequences the falsifier tries at each point: the corners of the disturbance
        box held constant (lo and hi of each when there are more than CORNER_DIMENSIONS), one
        random sequence of corners, one uniform."""
        T, d = self.horizon, len(self.disturbances)
        if d == 0:
            return [np.zeros((T, 0))]
        lo, hi = self.d_lo, self.d_hi
        if d <= CORNER_DIMENSIONS:
            corners = [np.where(np.array(bits, dtype=bool), hi, lo)
                       for bits in itertools.product((0, 1), repeat=d)]
        else:
            corners = [lo, hi]
        out = [np.broadcast_to(c, (T, d)).copy() for c in corners]
        out.append(np.where(rng.random((T, d)) < 0.5, lo, hi))
        out.append(rng.uniform(lo, hi, size=(T, d)))
        return out

    def rollouts(self, points: np.ndarray, owner: np.ndarray, n: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, Draws | None, np.ndarray]:
        """The falsifier's points (P, n + p) as scenarios: x0 (Q, n), their draws (None
        without uncertainty) and each scenario's cell (Q,)."""
        if not self.any:
            return points[:, :n], None, owner
        seqs = self.disturbance_sequences(rng)
        q = len(seqs)
        x0 = np.repeat(points[:, :n], q, axis=0)
        params = np.repeat(points[:, n:], q, axis=0)
        noise = np.stack([seqs[i % q] for i in range(len(x0))], axis=1)  # (T, Q, d)
        return x0, Draws(params, noise), np.repeat(owner, q)

    def counterexample(self, x0: np.ndarray, draws: Draws | None, i: int, g: float) -> dict:
        """{"x0", "parameters", "disturbances", "g"}: what the evaluator re-simulates (by
        name: `Run.simulate(x0, parameters=…, disturbances=…)` takes these dicts)."""
        params = {} if draws is None else {
            name: float(draws.parameters[i, k]) for k, name in enumerate(self.parameters)}
        dist = {} if draws is None else {
            name: [float(v) for v in draws.disturbances[:, i, k]]
            for k, name in enumerate(self.disturbances)}
        return {"x0": [float(v) for v in x0[i]], "parameters": params, "disturbances": dist,
                "g": float(g)}


    def sharpen(self, evaluate, x0: np.ndarray, draws: Draws, i: int, j: int,
                rounds: int = SHARPEN_ROUNDS) -> tuple[np.ndarray, Draws, float]:
        """A zeroth-order search from scenario i's disturbance sequence for a larger g of
        metric j (zeroth order: a step's disturbance jumps to the far end of its range, where
        ascent.py's sign steps stop short): each round rolls out
        every single-step move of one disturbance to the far end of its range, in one batch,
        then takes every move that raised g together (exact where the rollout is linear in
        w), or the best single one where that is larger.  `evaluate(x0, draws)` → g (Q, k).
        Returns (x0 (1, n), the draws, g)."""
        T, d = draws.disturbances.shape[0], draws.disturbances.shape[2]
        p = draws.parameters[i:i + 1]
        w = draws.disturbances[:, i].copy()                       # (T, d)
        best = float(evaluate(x0[i:i + 1], Draws(p, w[:, None]))[0, j])
        if d == 0:
            return x0[i:i + 1], Draws(p, w[:, None]), best
        far = np.where(np.abs(w - self.d_lo) > np.abs(w - self.d_hi), self.d_lo, self.d_hi)
        for _ in range(rounds):
            moves = np.repeat(w[None], T * d, axis=0)            # (T·d, T, d)
            t_idx, k_idx = np.divmod(np.arange(T * d), d)
            moves[np.arange(T * d), t_idx, k_idx] = far[t_idx, k_idx]
            g = evaluate(np.repeat(x0[i:i + 1], T * d, axis=0),
                         Draws(np.repeat(p, T * d, axis=0), moves.transpose(1, 0, 2)))[:, j]
            better = g > best
            if not better.any():
                break
            together = np.where(better.reshape(T, d), far, w)
            g_all = float(evaluate(x0[i:i + 1], Draws(p, together[:, None]))[0, j])
            single = int(np.argmax(g))
            if g_all >= g[single]:
                w, best = together, g_all
            else:
                w, best = moves[single], float(g[single])
            far = np.where(np.abs(w - self.d_lo) > np.abs(w - self.d_hi), self.d_lo, self.d_hi)
        return x0[i:i + 1], Draws(p, w[:, None]), best


def cell_box(compiled: CompiledSpec) -> tuple[np.ndarray, np.ndarray]:
    """The set the prover splits: the initial box, then each parameter's range."""
    lo, hi = initial_box(compiled.spec)
    unc = Uncertainty.of(compiled)
    return np.concatenate([lo, unc.p_lo]), np.concatenate([hi, unc.p_hi])


def closed_loop(compiled: CompiledSpec, theta: torch.Tensor, keep: int) -> ClosedLoop:
    """The closed loop over cells of `cell_box` (the plain one without uncertainty)."""
    unc = Uncertainty.of(compiled)
    if not unc.any:
        return ClosedLoop(compiled, theta, keep=keep)
    return UncertainLoop(compiled, theta, keep, unc)


def interval_compiler(compiled: CompiledSpec) -> IntervalCompiler:
    spec = compiled.spec
    args = ([s.name for s in spec.system.states], [s.name for s in spec.system.inputs],
            {c.name: c.value.value for c in spec.consts},
            compiled.backup.P if compiled.backup is not None else None,
            compiled.dynamics.x_star)
    unc = Uncertainty.of(compiled)
    if not unc.any:
        return IntervalCompiler(*args)
    return UncertainIntervals(*args, uncertainty=unc)


class UncertainLoop(ClosedLoop):
    """ClosedLoop whose cells are boxes over (x0, p) and whose plant reads w = (p, d_t)."""

    def __init__(self, compiled: CompiledSpec, theta: torch.Tensor, keep: int,
                 uncertainty: Uncertainty):
        super().__init__(compiled, theta, keep=keep)  # declared equations read w by name
        self.unc = uncertainty

    def plant_with(self, x: Zono, u: Zono, w: list[Zono]) -> Zono:
        if self.kind not in ("discrete", "ode"):  # the others never read w (check says so)
            return self.plant(x, u)
        from scpo_spec.verify.declared import Unbounded
        try:
            return _cat(self.declared([_column(x, i) for i in range(self.n)],
                                      [_column(u, j) for j in range(self.m)], w))
        except Unbounded as e:
            raise Unsupported(self._unbounded(self.kind, e)) from None

    def reach(self, lo: torch.Tensor, hi: torch.Tensor) -> UncertainReach:
        """Enclosures over T steps from the cells [lo, hi] (N, n + p) of (x0, p)."""
        N, T, n = lo.shape[0], self.horizon, self.n
        p, d = len(self.unc.parameters), len(self.unc.disturbances)
        joint = Zono.box(lo, hi)                  # generators: x0's n, then the parameters'
        x = Zono(joint.c[:, :n], joint.G[:, :, :n], joint.e[:, :n])
        params = [_column(joint, n + k) for k in range(p)]
        protect = n + p if p else 0               # the parameters' symbols stay at every step
        d_lo = lo.new_tensor(self.unc.d_lo).expand(N, d)
        d_hi = lo.new_tensor(self.unc.d_hi).expand(N, d)
        d_box = Zono.box(d_lo, d_hi)              # (c, r) of each range, enclosed
        s_lo = lo.new_empty(N, T + 1, n)
        s_hi = torch.empty_like(s_lo)
        i_lo, i_hi = lo.new_empty(N, T, self.m), lo.new_empty(N, T, self.m)
        with torch.no_grad():
            for t in range(T):
                s_lo[:, t], s_hi[:, t] = x.hull()
                u = self.policy(x)
                i_lo[:, t], i_hi[:, t] = u.hull()
                k = max(x.k, u.k)
                fresh = Zono(d_box.c, torch.cat([d_box.G.new_zeros(N, k, d), d_box.G], 1),
                             d_box.e)              # this step's own d symbols
                w = params + [_column(fresh, j) for j in range(d)]
                x = _reduce_keeping(self.plant_with(x, u, w), self.keep, protect)
            s_lo[:, T], s_hi[:, T] = x.hull()
        return UncertainReach(s_lo, s_hi, i_lo, i_hi, lo[:, n:], hi[:, n:],
                              lo.new_tensor(self.unc.d_lo), lo.new_tensor(self.unc.d_hi))


def _reduce_keeping(z: Zono, keep: int, protect: int) -> Zono:
    """Girard's reduction of all but the leading `protect` generators (kept as they are:
    symbols the parameters share with the states)."""
    if protect == 0:
        return reduce(z, keep)
    rest = reduce(Zono(z.c, z.G[:, protect:], z.e), keep)
    return Zono(rest.c, torch.cat([z.G[:, :protect], rest.G], 1), rest.e)


class UncertainIntervals(IntervalCompiler):
    """bounds.py's metric compiler, also reading parameters (each cell's interval, the same
    at every step) and disturbances (their range, on the steps of an input)."""

    def __init__(self, *args, uncertainty: Uncertainty):
        super().__init__(*args)
        self.unc = uncertainty

    def name(self, e: E.Name):
        r = lambda: self.reach  # noqa: E731 - read at evaluation time
        if e.id in self.unc.parameters:
            k = self.unc.parameters.index(e.id)
            return lambda ctx: Iv(r().parameters_lo[:, k].reshape(-1, 1, 1, 1),
                                  r().parameters_hi[:, k].reshape(-1, 1, 1, 1), False)
        if e.id in self.unc.disturbances:
            k = self.unc.disturbances.index(e.id)

            def disturbance(ctx):
                T = r().inputs_lo.shape[1]
                return Iv(r().disturbances_lo[k].reshape(1, 1, 1, 1).expand(1, 1, T, 1),
                          r().disturbances_hi[k].reshape(1, 1, 1, 1).expand(1, 1, T, 1), True)
            return disturbance
        return super().name(e)
