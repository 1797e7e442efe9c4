"""The scenarios' initial states: a seeded uniform draw from the box, or a full grid; and the
holdout draw, a separate stream of the same seed so it never repeats a training scenario.

For a gymnasium system a scenario is `env.reset(seed=…)`, so the "initial states" are the reset
seeds, an int64 vector: seed, seed + 1, …, seed + count − 1 for training and
seed + GYM_HOLDOUT_OFFSET + j for the holdout (a disjoint range)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from scpo_spec.language.model import GymnasiumSystem, Spec

GYM_HOLDOUT_OFFSET = 1_000_000  # holdout reset seeds start this far above the training ones
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


def scenario_count(spec: Spec) -> int:
    """The number of rows `training_states(spec)` has, without making them."""
    sc = spec.scenarios
    if isinstance(spec.system, GymnasiumSystem) or sc.grid is None:
        return int(sc.count)
    lo, hi = initial_box(spec)
    return int(sc.grid) ** int(np.count_nonzero(hi > lo))


def holdout_states(spec: Spec, count: int | None = None) -> np.ndarray:
    """Fresh uniform draws from the same box (stream [seed, 1], disjoint from the training one)."""
    sc = spec.scenarios
    count = int(sc.holdout) if count is None and sc.holdout is not None else int(count or 0)
    seed = int(sc.seed) if sc.seed is not None else 0
    if isinstance(spec.system, GymnasiumSystem):  # reset seeds (N,), disjoint from training's
        start = seed + GYM_HOLDOUT_OFFSET
        return np.arange(start, start + count, dtype=np.int64)
    lo, hi = initial_box(spec)
    return np.random.default_rng([seed, 1]).uniform(lo, hi, size=(count, len(lo)))


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


def holdout_chunk(horizon: int, n: int, m: int, widths: list[int],
                  budget: int = HOLDOUT_CHUNK_BYTES) -> int:
    """How many holdout scenarios one rollout may hold so that it stays under `budget` bytes."""
    per = rollout_bytes(1, 1, horizon, n, m, widths, 0)
    return max(1, budget // max(per, 1))
