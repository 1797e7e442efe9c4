"""What a spec makes a machine hold or compute: scenario counts, the memory of one evaluation
of the candidate bank and of the holdout (a part of `Checker`, language/check.py; also run alone
on a run's stored spec by `check.size_errors`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from scpo_spec.language import model as M
from scpo_spec.language.scenario_bounds import HOLDOUT_CHUNK_BYTES, holdout_bound, rollout_bytes
from scpo_spec.language.source import Span

MAX_SCENARIOS = 1_000_000
MAX_HOLDOUT = 1_000_000  # holdout scenarios: the report and each final check roll them all out
MEMORY_SHARE = 0.5      # an evaluation that needs more than this share of the machine is refused


class ResourceChecks:
    """Scenario counts and memory."""

    def _check_counts(self) -> float | None:
        """The scenario counts a spec makes every reader size: `count`, `grid`ⁿ and `holdout`
        (one of size_errors' checks, so also run on a run's stored spec); returns the holdout
        count when it is within bounds."""
        sc = self.spec.scenarios
        count = self._number(sc.count, "count", positive=True, integer=True)
        grid = self._number(sc.grid, "grid", positive=True, integer=True)
        digits = self.n * math.log10(grid) if grid is not None else 0.0  # of grid ** n
        if self.n and not isinstance(self.spec.system, M.GymnasiumSystem) \
                and digits > math.log10(MAX_SCENARIOS) \
                and (digits >= 18 or int(grid) ** self.n > MAX_SCENARIOS):
            made = f"{int(grid) ** self.n:,}" if digits < 18 else f"about 10^{digits:.0f}"
            self.error(f"grid {grid:g} over {self.n} states makes {made} scenarios (more than "
                       f"{MAX_SCENARIOS:,})", sc.grid.span, "use `count` to sample instead")
        if count is not None and count > MAX_SCENARIOS:
            self.error(f"count {count:g} is more than {MAX_SCENARIOS} scenarios", sc.count.span)
        holdout = self._number(sc.holdout, "holdout", nonnegative=True, integer=True)
        if holdout is not None and holdout > MAX_HOLDOUT:
            self.error(f"holdout {holdout:,.0f} is more than {MAX_HOLDOUT:,} scenarios (the "
                       "report rolls every one of them out)", sc.holdout.span,
                       f"{MAX_HOLDOUT:,} holdout scenarios already bound P(violation) by "
                       f"{holdout_bound(MAX_HOLDOUT):.4%}")
            return None
        return holdout

    def _check_resources(self) -> None:
        """Refuse what cannot fit this machine's memory, with the estimate, before a training
        run dies of MemoryError after its last step (the holdout) or at its first."""
        total = machine_memory()
        est = memory_estimate(self.spec)
        if total is None or est is None:
            return
        limit = MEMORY_SHARE * total
        have = f"this machine has {_bytes(total)}"
        hint = f"a spec may use at most {MEMORY_SHARE:.0%} of the machine's memory"
        if est.bank > limit:
            policy, sc = self.spec.policy, self.spec.scenarios
            where = policy.hidden.span if isinstance(policy, M.MlpPolicy) and \
                est.policy_part >= est.bank / 2 else \
                sc.horizon.span if sc.horizon is not None and est.horizon + 1 > est.scenarios \
                else (sc_span(self.spec) or policy.span)  # the larger of the two factors
            self.error(f"one evaluation of the candidate bank needs about {_bytes(est.bank)} "
                       f"({est.candidates} candidates × {est.scenarios:,} scenarios × "
                       f"{est.horizon + 1} steps, {est.weights:,} weights each); {have}",
                       where, f"{hint}: use fewer scenarios, a shorter horizon, fewer "
                              "directions or a smaller policy")
        elif est.holdout > limit:  # (θ is in both: a refused bank says it first)
            self.error(f"the holdout evaluation needs about {_bytes(est.holdout)} "
                       f"({est.holdout_count:,} scenarios); {have}", self.spec.scenarios.holdout.span,
                       f"{hint}: 10,000 holdout scenarios already bound P(violation) by "
                       f"{holdout_bound(10_000):.2%}")


def machine_memory() -> int | None:
    """Total physical memory in bytes (POSIX sysconf), or None where the platform cannot say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class MemoryEstimate:
    candidates: int      # 2 + directions: θ, θ ± probes
    scenarios: int
    horizon: int
    weights: int         # d, the policy's parameter count
    policy_part: int     # bytes of activations and weights in `bank`
    bank: int            # bytes of one evaluation of the candidate bank
    holdout_count: int
    holdout: int         # bytes of the holdout evaluation (chunked rollouts, all x₀ and results)


def memory_estimate(spec: M.Spec) -> MemoryEstimate | None:
    """The memory of one bank evaluation and of the holdout evaluation of a valid spec (None
    where the spec does not say enough, e.g. a policy kind whose size is unknown here)."""
    system, sc, tr, policy = spec.system, spec.scenarios, spec.train, spec.policy
    if system is None or sc is None or tr is None or policy is None or tr.directions is None:
        return None
    n, m = len(system.states), len(system.inputs)
    if isinstance(policy, M.MlpPolicy):
        widths = [int(w) for w in np.atleast_1d(policy.hidden.array())]
        sizes = [n, *widths, m]
        weights = sum((sizes[i] + 1) * sizes[i + 1] for i in range(len(sizes) - 1))
    elif isinstance(policy, M.LinearPolicy):
        widths, weights = [], n * m
    else:
        return None
    S = int(float(sc.grid)) ** n if sc.grid is not None else \
        int(float(sc.count)) if sc.count is not None else None
    if S is None:
        return None
    T = int(float(sc.horizon)) if sc.horizon is not None else 1
    C = 2 + int(float(tr.directions))
    bank = rollout_bytes(C, S, T, n, m, widths, weights)
    policy_part = 8 * (sum(widths) * C * S + weights * C)
    N = int(float(sc.holdout)) if sc.holdout is not None else 0
    k = len(spec.properties)
    holdout = 0 if N <= 0 else 8 * N * (n + 2 * k) + min(
        rollout_bytes(1, N, T, n, m, widths, weights), HOLDOUT_CHUNK_BYTES + 8 * weights)
    return MemoryEstimate(C, S, T, weights, policy_part, bank, N, holdout)


def sc_span(spec: M.Spec) -> Span | None:
    sc = spec.scenarios
    q = sc.grid if sc.grid is not None else sc.count
    return q.span if q is not None else sc.span


def _bytes(b: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b / 2**10:.1f} KiB"
