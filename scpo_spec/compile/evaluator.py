"""Evaluators: a batch of C weight vectors → their k safety metrics on the scenarios (float64, no
autograd: the metrics are only ever evaluated, never differentiated).  One class per kind of
rollout, picked by the plant (`make_evaluator`): `RolloutEvaluator`, one batched torch
computation over candidates × scenarios × steps; `GymEvaluator`, the episodes of a gymnasium
system in one vector environment (scpo_spec.systems.gym_rollout), with the same (states,
inputs) layout.  What they share (the scenarios, their draws, the metrics' reduction) is
`ScenarioEvaluator`; what the engine may ask of any evaluator, an executor's too, `Evaluator`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from scpo_spec.compile.signals import Compiled, Trace
from scpo_spec.plan.scenarios import Draws
from scpo_spec.policies.policy import PolicyFamily
from scpo_spec.systems.dynamics import (Dynamics, GymnasiumPlant, PythonFunctionPlant,
                                       RolloutViews)
from scpo_spec.systems.gym_rollout import GymRollout
from scpo_spec.systems.user_code import PlantFailure

from scpo_spec.dtype import DTYPE


@dataclass
class Metric:
    """One compiled safety metric g_i(θ) ≤ 0."""

    name: str
    section: str          # constraint | stability
    formula: str          # as written (unparsed)
    margin: float
    smoothness: float | None
    lipschitz: float | None
    per_scenario: Compiled  # Trace → violation (C, S, 1, 1)
    location: str = ""    # FILE:LINE
    uses_linearisation: bool = False  # reads spectral_radius (the closed loop at the origin)


class Evaluator(Protocol):
    """What the engine needs of an evaluator: metrics of a batch of weight vectors, per scenario
    or reduced, and rollouts (for counterexamples); where a candidate bank should live
    (`device`), and `close()` when the run ends.  `RolloutEvaluator` and `GymEvaluator`
    evaluate in this process; an executor (scpo_spec.engine.executors) may spread the same
    calls elsewhere."""

    metrics: list[Metric]
    x0: torch.Tensor
    horizon: int

    @property
    def device(self) -> torch.device: ...

    @property
    def names(self) -> list[str]: ...

    @property
    def margins(self) -> np.ndarray: ...

    def __call__(self, thetas: torch.Tensor) -> torch.Tensor: ...

    def per_scenario(self, thetas: torch.Tensor, x0: torch.Tensor | None = None,
                     draws: Draws | None = None) -> torch.Tensor: ...

    def rollout(self, thetas: torch.Tensor, x0: torch.Tensor | None = None,
                draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def select(self, index) -> tuple[torch.Tensor, Draws | None]: ...

    def close(self) -> None: ...


class ScenarioEvaluator:
    """C candidates on S scenarios for T steps, their k metrics reduced: what every kind of
    rollout shares.  A subclass says how a batch is rolled out (`rollout`, `_evaluated`).

    `draws`: the scenarios' parameters (S, p) and disturbances (T, S, d)
    (plan.scenarios.training_draws), or None when the spec declares none.  Every candidate
    sees the same draws; scenarios chosen by an `x0` of their own (a subset, the holdout's
    chunks, a counterexample) come with their own `draws` (`select` gives both)."""

    device = torch.device("cpu")  # where a candidate bank should live

    def __init__(self, dynamics: Dynamics, family: PolicyFamily, metrics: list[Metric],
                 x0: torch.Tensor, horizon: int, reducer, draws: Draws | None = None):
        self.dynamics, self.family, self.metrics = dynamics, family, metrics
        self.draws = _as_torch(draws)
        self.x0 = x0
        self.horizon = horizon
        self.reducer = reducer

    def with_scenarios(self, initial_states: np.ndarray, draws: Draws | None = None
                       ) -> "ScenarioEvaluator":
        """The same plant, policy and metrics on other scenarios (the holdout's)."""
        return make_evaluator(self.dynamics, self.family, self.metrics, initial_states,
                              self.horizon, self.reducer, device=str(self.device), draws=draws)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.metrics]

    @property
    def margins(self) -> np.ndarray:
        return np.array([m.margin for m in self.metrics], dtype=np.float64)

    def select(self, index) -> tuple[torch.Tensor, Draws | None]:
        """The initial states and draws of the scenarios `index` selects (a slice, list, index
        tensor or one int), for `rollout` and `per_scenario`."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self.x0[index], None if self.draws is None else self.draws.rows(index)

    def draws_for(self, x0: torch.Tensor | None, draws: Draws | None) -> Draws | None:
        """The draws that go with the scenarios `x0` (this evaluator's own when x0 is None);
        ValueError when the spec has uncertainty and x0 came without them, or the shapes
        disagree."""
        if x0 is None or x0 is self.x0:
            return self.draws if draws is None else _as_torch(draws)
        if draws is None:
            if self.draws is not None:
                raise ValueError("these scenarios need their parameters and disturbances: pass "
                                 "draws= with x0 (RolloutEvaluator.select gives both)")
            return None
        draws = _as_torch(draws)
        S, T = x0.shape[0], self.horizon
        if draws.parameters.ndim != 2 or draws.parameters.shape[0] != S or \
                draws.disturbances.ndim != 3 or draws.disturbances.shape[:2] != (T, S):
            raise ValueError(f"draws for {S} scenarios over {T} steps need parameters (S, p) "
                             f"and disturbances (T, S, d); got {tuple(draws.parameters.shape)} "
                             f"and {tuple(draws.disturbances.shape)}")
        return draws

    def rollout(self, thetas: torch.Tensor, x0: torch.Tensor | None = None,
                draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """States (C, S, T+1, n) and inputs (C, S, T, m), on the CPU."""
        raise NotImplementedError

    def _evaluated(self, thetas: torch.Tensor, x0: torch.Tensor | None, draws: Draws | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What the metrics read of `thetas` on the scenarios: states and inputs on the CPU,
        and the spectral radius per candidate (None when no metric reads it)."""
        X, U = self.rollout(thetas, x0, draws)
        return X, U, None

    @torch.no_grad()
    def plant_failure(self, theta: torch.Tensor) -> PlantFailure | None:
        """Where the author's plant left the finite numbers on θ's rollout (None: no python
        plant, or it never did)."""
        return None

    @torch.no_grad()
    def per_scenario(self, thetas: torch.Tensor, x0: torch.Tensor | None = None,
                     draws: Draws | None = None) -> torch.Tensor:
        """Violations (C, S, k) before the max over scenarios; +inf for a scenario whose rollout
        left the finite numbers (NaN/inf is unsafe, never accepted)."""
        return self._violations(thetas, x0, draws)

    def differentiable_metrics(self, thetas: torch.Tensor) -> torch.Tensor:
        """Metrics (C, k) with autograd, for the soft-penalty *baseline* only: the SCPO engine
        never differentiates a safety metric (it only evaluates them, under no_grad)."""
        g = self.reducer.max(self._violations(thetas, None), 1).squeeze(1)
        return torch.where(torch.isfinite(g), g, torch.inf)

    def _violations(self, thetas: torch.Tensor, x0: torch.Tensor | None,
                    draws: Draws | None = None) -> torch.Tensor:
        thetas = torch.as_tensor(thetas, dtype=DTYPE)
        draws = self.draws_for(x0, draws)
        X, U, rho = self._evaluated(thetas, x0, draws)
        trace = self.trace(X, U, draws, rho)
        S = X.shape[1]
        cols = []
        for metric in self.metrics:
            v = metric.per_scenario(trace).t  # (C|1, S|1, 1, 1)
            cols.append(v.reshape(v.shape[0], v.shape[1]).expand(thetas.shape[0], S))
        h = torch.stack(cols, dim=2)
        # a scenario's rollout is finite iff the sum of its numbers is: NaN and ±inf propagate
        # through a sum, and a sum that overflows to inf flags only a rollout already beyond
        # ~1e306 — unsafe, which is conservative.  One reduction instead of isfinite's two
        # bool passes and `.all` (~0.9 ms of a 35 ms evaluation at 2-64-64-1)
        finite = torch.isfinite(X.sum((2, 3)) + U.sum((2, 3)))
        h = torch.where(finite.unsqueeze(2) & torch.isfinite(h), h, torch.inf)
        if trace.spectral_radius is not None:  # a non-finite linearisation is unsafe too
            bad = ~torch.isfinite(trace.spectral_radius)
            h = torch.where(bad.view(-1, 1, 1), torch.inf, h)
        return h

    def trace(self, X: torch.Tensor, U: torch.Tensor, draws: Draws | None = None,
              spectral_radius: torch.Tensor | None = None) -> Trace:
        """What the metrics and the cost read of a rollout of the scenarios `draws` go with."""
        if draws is None:
            return Trace(X, U, spectral_radius)
        return Trace(X, U, spectral_radius, draws.parameters, draws.disturbances)

    @torch.no_grad()
    def __call__(self, thetas: torch.Tensor) -> torch.Tensor:
        """Metrics (C, k): the max over scenarios of each per-scenario violation (smooth
        upper bound under `aggregate smooth(τ)`); +inf where any number was not finite."""
        h = self.per_scenario(thetas)
        g = self.reducer.max(h, 1).squeeze(1)
        return torch.where(torch.isfinite(g), g, torch.inf)

    def close(self) -> None:
        """Release what the rollouts hold open (nothing here)."""


class RolloutEvaluator(ScenarioEvaluator):
    """A torch plant's rollouts: C candidates × S scenarios × T steps in one batched torch
    computation.  `initial_states` are the scenarios' x₀ (S, n).

    `device` (`train { device cuda }`): where the rollout runs — the policy's matmuls and the
    plant, in float64.  Everything handed out is on the CPU (x0, the metrics, rollouts), and
    the metrics are reduced on the CPU from the trajectory copied back (one pass over
    C·S·(T+1)·(n+m) numbers): the numbers a certificate is made of are computed by the same
    code wherever the rollout ran."""

    def __init__(self, dynamics: Dynamics, family: PolicyFamily, metrics: list[Metric],
                 initial_states: np.ndarray, horizon: int, reducer, device: str = "cpu",
                 draws: Draws | None = None):
        super().__init__(dynamics, family, metrics, torch.as_tensor(initial_states, dtype=DTYPE),
                         horizon, reducer, draws)
        self.device = torch.device(device)
        self.needs_spectral = any(m.uses_linearisation for m in metrics)
        self._scratch: dict = {}  # rollout shape → its buffers (`_rollout_on_device(reuse=)`)
        if self.needs_spectral:
            A, B = dynamics.linearisation()
            self._A = torch.as_tensor(A, dtype=DTYPE)
            self._B = torch.as_tensor(B, dtype=DTYPE)

    def rollout(self, thetas: torch.Tensor, x0: torch.Tensor | None = None,
                draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """States (C, S, T+1, n) and inputs (C, S, T, m); differentiable if called with grad."""
        draws = self.draws_for(x0, draws)
        x0 = self.x0 if x0 is None else x0
        X, U = self._rollout_on_device(thetas, x0, draws=draws)
        return X.cpu(), U.cpu()

    def _evaluated(self, thetas, x0, draws):
        thetas = thetas.to(self.device)  # on the rollout's device once, for the rollout and ρ
        if not torch.is_grad_enabled():  # reused buffers: nothing escapes
            X, U = self._rollout_on_device(thetas, self.x0 if x0 is None else x0, reuse=True,
                                           draws=draws)
            X, U = X.cpu(), U.cpu()
        else:
            X, U = self.rollout(thetas, x0, draws)
        return X, U, self.spectral_radius(thetas) if self.needs_spectral else None

    def _rollout_on_device(self, thetas: torch.Tensor, x0: torch.Tensor, reuse: bool = False,
                           draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`reuse`: write into this evaluator's buffers for the shape, kept from call to call
        (for `_violations`, which hands nothing of the rollout out); else fresh tensors.
        `draws`: the scenarios' uncertain values (checked by `draws_for`)."""
        training = x0 is self.x0  # the spec's scenarios (a PlantFailure names them)
        thetas, x0 = thetas.to(self.device), x0.to(self.device)
        W = _uncertain(draws, self.horizon, self.device)  # (T, 1, S, p + d) or None
        if torch.is_grad_enabled():  # the cost objective's differentiable rollout
            return self._rollout_autograd(thetas, x0, training, W)
        C, (S, n), T, m = thetas.shape[0], x0.shape, self.horizon, self.dynamics.m
        # time-major buffers: X[t] and U[t] are contiguous (C, S, ·) blocks, written in place.
        # Reused, they keep their per-step views and the plant's step from call to call
        # the draws are copied into a kept buffer that the plant's step reads
        if reuse:
            scratch = self._scratch_for((C, S, T, thetas.device, None if W is None else W.shape))
            if "views" not in scratch:
                views = RolloutViews.allocate(T, C, S, n, m, thetas, scratch)
                held = None if W is None else views.buffer("uncertain", tuple(W.shape))
                scratch["views"] = views, self.dynamics.rollout_step(views, held)
            views, advance = scratch["views"]
        else:
            views = RolloutViews.allocate(T, C, S, n, m, thetas)
            held = None if W is None else views.buffer("uncertain", tuple(W.shape))
            advance = self.dynamics.rollout_step(views, held)
        # read by the plant's step and by a policy observing parameters (policies/operating.py)
        views.uncertain = None if W is None else \
            views.buffer("uncertain", tuple(W.shape)).copy_(W)
        X, U = views.X, views.U
        X[0].copy_(x0.expand(C, S, n))
        act = self.family.batched(thetas).rollout_step(views)
        t = 0
        try:
            for t in range(T):
                act(t)
                advance(t)
        except PlantFailure as failure:  # the author's plant raised: say where
            raise failure.located(t, x0.cpu(), training) from None
        # one copy into the (C, S, T, ·) layout the metrics read (the old torch.stack's layout;
        # the metrics on permuted views of these buffers instead cost twice the copy)
        return (views.buffer("states", (C, S, T + 1, n)).copy_(X.permute(1, 2, 0, 3)),
                views.buffer("inputs", (C, S, T, m)).copy_(U.permute(1, 2, 0, 3)))

    def _scratch_for(self, key: tuple) -> dict:
        """The kept buffers of one rollout shape (a few shapes at most: a training step
        evaluates its bank and single candidates; the oldest other shape is dropped)."""
        scratch = self._scratch.pop(key, None)
        if scratch is None and len(self._scratch) >= 3:
            self._scratch.pop(next(iter(self._scratch)))
        self._scratch[key] = scratch = {} if scratch is None else scratch
        return scratch

    def _rollout_autograd(self, thetas: torch.Tensor, x0: torch.Tensor, training: bool,
                          W: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The rollout on autograd's graph (nothing written in place): the same arithmetic as
        the evaluated rollout, bit for bit (tests/test_perf_equality.py)."""
        C, (S, n), T, m = thetas.shape[0], x0.shape, self.horizon, self.dynamics.m
        x = x0.expand(C, S, n)
        states, inputs = [x], []
        policy = self.family.batched(thetas)
        for t in range(T):
            w = None if W is None else W[t]
            u = policy(x, w=w)
            try:
                x = self.dynamics.step(x, u, w)
            except PlantFailure as failure:  # the author's plant raised: say where
                raise failure.located(t, x0.detach().cpu(), training) from None
            states.append(x)
            inputs.append(u)
        return torch.stack(states, dim=2), torch.stack(inputs, dim=2).reshape(C, S, T, m)

    def spectral_radius(self, thetas: torch.Tensor) -> torch.Tensor:
        """ρ(A + B ∂π/∂x(x*)) per candidate (C,); NaN where the closed loop is not finite (LAPACK
        need not read every entry: torch's eigvals gives [1, 1] for [[1, nan], [0, 1]])."""
        # on θ's device (a GPU's bank: θ never crosses the bus, only J's C·m·n numbers do)
        J = self.family.jacobian_at_operating_point(thetas).cpu()
        C, n = J.shape[0], self._A.shape[0]
        closed = torch.baddbmm(self._A.expand(C, n, n), self._B.expand(C, *self._B.shape), J)
        rho = torch.linalg.eigvals(closed).abs().amax(dim=1)
        return torch.where(closed.sum((1, 2)).isfinite(), rho, torch.nan)  # NaN, ±inf propagate

    @torch.no_grad()
    def plant_failure(self, theta: torch.Tensor) -> PlantFailure | None:
        """Where the author's plant (`system python`) turned the finite states and inputs of
        θ's rollout on the scenarios into non-finite ones, or None (no python plant, or it
        never did): said before training, where a non-finite g(θ₀) alone would not say why."""
        if not isinstance(self.dynamics, PythonFunctionPlant):
            return None
        plant = self.dynamics.map
        X, U = self.rollout(torch.as_tensor(theta, dtype=DTYPE).reshape(1, -1))
        failure = plant.non_finite(X, U)
        return None if failure is None else failure.located(failure.step, self.x0, True)


class GymEvaluator(ScenarioEvaluator):
    """A gymnasium system's rollouts: C·S episodes side by side in one vector environment
    (systems/gym_rollout.py), on the CPU.  The scenarios are reset seeds, kept as an int64
    `x0` (S,) (a subset of it selects scenarios the same way).  Never differentiable."""

    def __init__(self, dynamics: GymnasiumPlant, family: PolicyFamily, metrics: list[Metric],
                 initial_states: np.ndarray, horizon: int, reducer, device: str = "cpu",
                 draws: Draws | None = None):
        """`device` is accepted and ignored: the environments run on the CPU."""
        super().__init__(dynamics, family, metrics,
                         torch.as_tensor(initial_states, dtype=torch.int64), horizon, reducer,
                         draws)
        self.gym = GymRollout(dynamics.env_id, dynamics.n, dynamics.m)

    def rollout(self, thetas: torch.Tensor, x0: torch.Tensor | None = None,
                draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self.draws_for(x0, draws)
        X, U, _ = self.rollout_returns(thetas, x0)
        return X, U

    def rollout_returns(self, thetas: torch.Tensor, x0: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """States, inputs and the episode returns (C, S), the sum of the environment's rewards
        until the episode ended (or the horizon)."""
        return self.gym.rollout(self.family.forward, thetas, self.x0 if x0 is None else x0,
                                self.horizon)

    def close(self) -> None:
        """Close the vector environments (a later rollout opens them again)."""
        self.gym.close()


def make_evaluator(dynamics: Dynamics, family: PolicyFamily, metrics: list[Metric],
                   initial_states: np.ndarray, horizon: int, reducer, device: str = "cpu",
                   draws: Draws | None = None) -> ScenarioEvaluator:
    """The evaluator for the plant's kind of rollout: its environment's episodes for a
    gymnasium plant, the batched torch rollout for every other."""
    kind = GymEvaluator if isinstance(dynamics, GymnasiumPlant) else RolloutEvaluator
    return kind(dynamics, family, metrics, initial_states, horizon, reducer, device, draws)


def _as_torch(draws: Draws | None) -> Draws | None:
    """The draws as float64 CPU tensors (numpy arrays in, as the language layer makes them)."""
    if draws is None:
        return None
    return Draws(torch.as_tensor(draws.parameters, dtype=DTYPE),
                 torch.as_tensor(draws.disturbances, dtype=DTYPE))


def _uncertain(draws: Draws | None, horizon: int, device) -> torch.Tensor | None:
    """W (T, 1, S, p + d): step t's values, the parameters (held) then that step's
    disturbances, broadcast over the candidates axis; None without uncertainty."""
    if draws is None:
        return None
    P, D = draws.parameters, draws.disturbances
    T, S = horizon, P.shape[0]
    W = torch.cat([P.to(device).expand(T, S, P.shape[1]), D.to(device)], dim=2)
    return W.unsqueeze(1)
