"""The scenarios' initial states: a seeded uniform draw from the box, or a full grid
(`training_states`, in language/scenario_bounds.py because `check` needs it); and the holdout
draw, a separate stream of the same seed so it never repeats a training scenario.

The scenarios' uncertain values (`parameter NAME in [lo, hi]`, `disturbance NAME in [lo, hi]`)
are drawn here too, the one place that says what they are (`training_draws`, `holdout_draws`):
each scenario gets one value per parameter, held over its rollout, and a fresh value per
disturbance at every step, uniform over each range, from streams of the same seed apart from the
initial states' ([seed, 2] and [seed, 3]), so the initial states of a spec without uncertainty
are what they always were.  A `grid` scenario is its grid point with one such draw.  Scenario
j's disturbance sequence is the j-th block of its stream (drawn (S, T, d), stored time-major
(T, S, d)).  The holdout (up to 10⁶ scenarios) draws in fixed blocks of HOLDOUT_BLOCK scenarios,
block b from the b-th child (SeedSequence spawn) of [seed, 1, 2] and [seed, 1, 3], so any range
of its scenarios is drawn alone, with the same values whatever range or chunk asks for them.

For a gymnasium system a scenario is `env.reset(seed=…)`, so the "initial states" are the reset
seeds, an int64 vector: seed, seed + 1, …, seed + count − 1 for training and
seed + GYM_HOLDOUT_OFFSET + j for the holdout (a disjoint range)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from scpo_spec.language.model import GymnasiumSystem, Spec
from scpo_spec.language.scenario_bounds import HOLDOUT_CHUNK_BYTES, initial_box, rollout_bytes

GYM_HOLDOUT_OFFSET = 1_000_000  # holdout reset seeds start this far above the training ones


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


def holdout_chunk(horizon: int, n: int, m: int, widths: list[int],
                  budget: int = HOLDOUT_CHUNK_BYTES, draws: int = 0) -> int:
    """How many holdout scenarios one rollout may hold so that it stays under `budget` bytes
    (`draws`: the uncertain values one scenario draws, p + T·d, drawn per chunk too)."""
    per = rollout_bytes(1, 1, horizon, n, m, widths, 0) + 8 * int(draws)
    return max(1, budget // max(per, 1))


# ---- the uncertain values: parameters (one per scenario) and disturbances (one per step) ----
PARAMETER_STREAM, DISTURBANCE_STREAM = 2, 3  # [seed, ·] (training) and [seed, 1, ·] (holdout)


@dataclass(frozen=True)
class Draws:
    """The scenarios' uncertain values, float64, in declaration order: `parameters` (S, p), one
    per scenario, held over the rollout; `disturbances` (T, S, d), a fresh one at every step.
    numpy arrays here; the evaluator holds the same numbers as torch tensors."""

    parameters: object
    disturbances: object

    @property
    def count(self) -> int:
        return int(self.parameters.shape[0])

    def rows(self, index) -> "Draws":
        """The draws of the scenarios `index` selects (a slice, a list or an index array; one
        int keeps its axis), as x0[index] selects their initial states."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)
        return Draws(self.parameters[index], self.disturbances[:, index])

    def digest(self) -> str:
        """SHA-256 of the parameters' then the disturbances' float64 little-endian bytes: the
        header records it, and `scpo audit` draws them again from the spec text and compares."""
        h = hashlib.sha256()
        for a in (self.parameters, self.disturbances):
            a = np.ascontiguousarray(a, dtype="<f8")
            h.update(repr(a.shape).encode() + a.tobytes())
        return h.hexdigest()


def uncertain_ranges(spec: Spec, section: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The names and (lo, hi) of the spec's `parameter`s or `disturbance`s, in order."""
    items = spec.parameters if section == "parameter" else spec.disturbances
    bounds = np.array([np.asarray(u.interval.array(), dtype=np.float64).reshape(2)
                       for u in items]).reshape(-1, 2)
    return [u.name.name for u in items], bounds[:, 0].copy(), bounds[:, 1].copy()


def has_uncertainty(spec: Spec) -> bool:
    return bool(spec.parameters or spec.disturbances)


def _draws(spec: Spec, count: int, stream: list[int], block: int | None = None
           ) -> Draws | None:
    """`count` scenarios' draws from the streams [seed, *stream, ·] (block b: their b-th
    spawned child)."""
    if not has_uncertainty(spec):
        return None
    sc = spec.scenarios
    seed = int(sc.seed) if sc.seed is not None else 0
    T = int(sc.horizon)
    _, plo, phi = uncertain_ranges(spec, "parameter")
    _, dlo, dhi = uncertain_ranges(spec, "disturbance")

    def rng(which: int) -> np.random.Generator:
        entropy = [seed, *stream, which]
        return np.random.default_rng(entropy if block is None else np.random.SeedSequence(
            entropy, spawn_key=(block,)))  # = SeedSequence(entropy).spawn(block + 1)[block]

    params = rng(PARAMETER_STREAM).uniform(plo, phi, size=(count, len(plo)))
    noise = rng(DISTURBANCE_STREAM).uniform(dlo, dhi, size=(count, T, len(dlo)))
    return Draws(params, np.ascontiguousarray(noise.transpose(1, 0, 2)))


def training_draws(spec: Spec) -> Draws | None:
    """The training scenarios' parameters (S, p) and disturbances (T, S, d); None when the spec
    declares neither (its rollouts are exactly those of a spec without this section)."""
    return _draws(spec, scenario_count(spec), [])


HOLDOUT_BLOCK = 1024  # holdout scenarios per seeded block of draws (fixed: it decides values)


def holdout_block(spec: Spec, block: int, count: int) -> Draws | None:
    """The draws of holdout scenarios block·B … min((block + 1)·B, count) − 1 (B = HOLDOUT_BLOCK)."""
    start = block * HOLDOUT_BLOCK
    return _draws(spec, max(0, min(HOLDOUT_BLOCK, count - start)), [1], block=block)


def holdout_draws(spec: Spec, count: int | None = None, start: int = 0,
                  stop: int | None = None, kept: dict | None = None) -> Draws | None:
    """Fresh draws for holdout scenarios start … stop − 1 of `count` (default: all), from
    streams disjoint from training's; only the blocks they fall in are drawn.  `kept`, a dict
    the caller holds across calls, keeps the last blocks drawn, so consecutive small ranges
    draw each block once."""
    sc = spec.scenarios
    count = int(sc.holdout) if count is None and sc.holdout is not None else int(count or 0)
    stop = count if stop is None else min(int(stop), count)
    start = min(max(int(start), 0), stop)
    if not has_uncertainty(spec):
        return None
    first, last = start // HOLDOUT_BLOCK, max(start, stop - 1) // HOLDOUT_BLOCK
    drawn = {b: (kept or {}).get(b) or holdout_block(spec, b, count)
             for b in range(first, last + 1)}
    if kept is not None:
        kept.clear()
        kept.update(drawn)
    blocks = list(drawn.values())
    lo = start - first * HOLDOUT_BLOCK
    return Draws(np.concatenate([b.parameters for b in blocks])[lo:lo + stop - start],
                 np.concatenate([b.disturbances for b in blocks], axis=1)[:, lo:lo + stop - start])


def uncertainty_record(spec: Spec) -> dict | None:
    """What a run's header says of the uncertainty (None without any): each parameter and
    disturbance with its range, and the digest of the training draws, which `scpo audit`
    recomputes from the spec text alone."""
    if not has_uncertainty(spec):
        return None
    out: dict = {}
    for section, key in (("parameter", "parameters"), ("disturbance", "disturbances")):
        names, lo, hi = uncertain_ranges(spec, section)
        out[key] = [{"name": n, "lo": float(a), "hi": float(b)} for n, a, b in zip(names, lo, hi)]
    out["draws"] = training_draws(spec).digest()
    return out


def given_draws(spec: Spec, parameters, disturbances, count: int, steps: int, single: bool
                ) -> Draws | None:
    """Draws from values a user gives (`load_run(...).simulate(parameters=…, disturbances=…)`)
    for `count` scenarios over `steps` steps: parameters (p,) or (count, p), disturbances
    (steps, d) or (count, steps, d) — without the count axis when `single` — or dicts by name.
    None for a spec without uncertainty (which takes no values); ValueError saying what is
    missing or misshapen."""
    pnames = uncertain_ranges(spec, "parameter")[0]
    dnames = uncertain_ranges(spec, "disturbance")[0]
    if not pnames and not dnames:
        if parameters is not None or disturbances is not None:
            raise ValueError("the spec declares no parameters or disturbances")
        return None
    lead = () if single else (count,)
    P = _given(parameters, pnames, "parameters", lead, ())
    D = _given(disturbances, dnames, "disturbances", lead, (steps,))
    P, D = P.reshape(count, len(pnames)), D.reshape(count, steps, len(dnames))
    return Draws(np.array(P), np.ascontiguousarray(D.transpose(1, 0, 2)))


def _given(value, names: list[str], what: str, lead: tuple, tail: tuple) -> np.ndarray:
    """Run.simulate's parameters or disturbances as float64 (*lead, *tail, len(names)): an array
    of that shape, or of (*tail, len(names)) shared by a batch, or a dict by name."""
    k = len(names)
    if k == 0:
        if value is not None and np.size(value if not isinstance(value, dict) else list(value)):
            raise ValueError(f"the spec declares no {what}")
        return np.zeros((*lead, *tail, 0))
    if value is None:
        raise ValueError(f"this spec's {what} ({', '.join(names)}) need values for these "
                         f"initial states: pass {what}=… (see Run.simulate)")
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        missing = [n for n in names if n not in value]
        if unknown or missing:
            raise ValueError(f"{what}: " + "; ".join(
                ([f"unknown {', '.join(unknown)}"] if unknown else [])
                + ([f"missing {', '.join(missing)}"] if missing else []))
                + f" (the spec's are {', '.join(names)})")
        try:
            cols = [np.broadcast_to(np.asarray(value[n], dtype=np.float64), (*lead, *tail))
                    for n in names]
        except ValueError:
            raise ValueError(f"each of the {what} must be a number per "
                             f"{'step ' if tail else ''}of shape {(*lead, *tail)} or "
                             f"{tail or 'one number'}") from None
        return np.stack(cols, axis=-1)
    arr = np.asarray(value, dtype=np.float64)
    for shape in ((*lead, *tail, k), (*tail, k)):
        if arr.shape == shape:
            return np.broadcast_to(arr, (*lead, *tail, k))
    raise ValueError(f"{what} must have shape {(*lead, *tail, k)} or {(*tail, k)} (columns "
                     f"{', '.join(names)}); got {arr.shape}")
