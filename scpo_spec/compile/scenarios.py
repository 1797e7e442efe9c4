"""The scenarios' initial states: a seeded uniform draw from the box, or a full grid; and the
holdout draw, a separate stream of the same seed so it never repeats a training scenario.

For a gymnasium system a scenario is `env.reset(seed=…)`, so the "initial states" are the reset
seeds, an int64 vector: seed, seed + 1, …, seed + count − 1 for training and
seed + GYM_HOLDOUT_OFFSET + j for the holdout (a disjoint range)."""

from __future__ import annotations

import itertools

import numpy as np

from scpo_spec.language.model import GymnasiumSystem, Spec

GYM_HOLDOUT_OFFSET = 1_000_000  # holdout reset seeds start this far above the training ones


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
