"""What the checker bounds of the scenarios section, kept in the language layer because
`check` needs it: the initial states (`training_states`, whose grid it checks V(x₀) on), the
holdout's P(violation) bound and the memory one batched rollout holds.  Everything else a run
derives from the scenarios (holdout states, the uncertain draws) is plan/scenarios.py."""

from __future__ import annotations

import itertools
import math

import numpy as np

from scpo_spec.language.model import GymnasiumSystem, Spec

HOLDOUT_BETA = 1e-6  # confidence 1 − β of the holdout bound, for the engine, report and check


def holdout_bound(count: int, beta: float = HOLDOUT_BETA) -> float | None:
    """ln(1/β)/N: with zero violations among N holdout scenarios, P(violation) ≤ this with
    confidence 1 − β ((1 − p)^N ≤ β).  None without a holdout.  Not capped at 1: a value ≥ 1
    says the holdout is too small to certify anything, and callers must see that."""
    if count is None or count <= 0:
        return None
    return math.log(1 / beta) / count


def initial_box(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per state, in state order."""
    names = [s.name for s in spec.system.states]
    lo, hi = np.zeros(len(names)), np.zeros(len(names))
    for rng in spec.scenarios.initial:
        i = names.index(rng.signal.name)
        lo[i], hi[i] = rng.interval.array()
    return lo, hi


def training_states(spec: Spec) -> np.ndarray:
    """(S, n) float64: `grid G` → every combination of G evenly spaced points per axis
    (numpy.linspace, endpoints included); `count N` → N uniform draws with `seed`."""
    sc = spec.scenarios
    if isinstance(spec.system, GymnasiumSystem):  # reset seeds (S,)
        seed = int(sc.seed) if sc.seed is not None else 0
        return np.arange(seed, seed + int(sc.count), dtype=np.int64)
    lo, hi = initial_box(spec)
    if sc.grid is not None:
        G = int(sc.grid)
        axes = [np.linspace(a, b, G) if b > a else np.array([a]) for a, b in zip(lo, hi)]
        return np.array(list(itertools.product(*axes)), dtype=np.float64).reshape(-1, len(lo))
    seed = int(sc.seed) if sc.seed is not None else 0
    return np.random.default_rng(seed).uniform(lo, hi, size=(int(sc.count), len(lo)))


HOLDOUT_CHUNK_BYTES = 256 * 2**20  # one holdout chunk's rollout stays under this (float64)


def rollout_bytes(candidates: int, scenarios: int, horizon: int, n: int, m: int,
                  widths: list[int], weights: int) -> int:
    """Bytes one batched evaluation holds at once (float64): states C × S × (T+1) × n and inputs
    C × S × T × m, the policy's activations (Σ widths) × C × S, and C weight vectors of d.
    The metrics are never differentiated, so no autograd graph is kept; this is the floor
    `check` compares with the machine's memory, not an exact peak."""
    c, s, t = int(candidates), int(scenarios), int(horizon)
    return 8 * (c * s * (t + 1) * n + c * s * t * m + sum(int(w) for w in widths) * c * s
                + int(weights) * c)
