"""The training objective L(θ), differentiable with autograd (unlike the safety metrics).

- imitation: the expert's actions on states drawn once from the spec's distribution;
- regression: the CSV data (path relative to the spec);
- cost: Σ_t stage(x_t, u_t) + terminal(x_T) along the rollouts of the training scenarios,
  averaged over scenarios (a differentiable rollout);
- return (gymnasium systems): minus the mean episode return over the training scenarios; not
  differentiable, so it brings its own `loss_and_grad`, an antithetic evolution-strategies
  estimate (the Trainer uses an objective's `loss_and_grad` when it has one, autograd otherwise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from scpo_spec.errors import ScpoError
from scpo_spec.compile.signals import ExpressionCompiler
from scpo_spec.language.model import (DEFAULTS, CostObjective, ImitationObjective, NormalStates,
                                  RegressionObjective, ReturnObjective, Spec)

from scpo_spec.dtype import DTYPE
from scpo_spec.language.data import TableError, read_columns
from scpo_spec.language.lets import expand

LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}


class Objective:
    """L(θ) for one weight vector θ (d,); `describe` says what it is in one line."""

    describe = ""

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss_and_grad(self, theta: torch.Tensor, extra=None) -> tuple[float, torch.Tensor]:
        """(L(θ), ∇(L + extra)(θ)) by autograd; `extra` is a baseline's penalty term (SCPO
        passes none).  Objectives whose rollouts are not differentiable override this."""
        theta = theta.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            L = self(theta)
            total = L if extra is None else L + extra(theta)
            (grad,) = torch.autograd.grad(total, theta)
        return float(L.detach()), grad


class SupervisedObjective(Objective):
    """loss(π_θ(X), Y) on a fixed data set: imitation and regression."""

    def __init__(self, family, X: np.ndarray, Y: np.ndarray, loss: str, describe: str):
        self.family = family
        self.X = torch.as_tensor(X, dtype=DTYPE).unsqueeze(0)
        self.Y = torch.as_tensor(Y, dtype=DTYPE).unsqueeze(0)
        self.loss = LOSSES[loss]
        self.describe = describe

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return self.loss(self.family.forward(theta.unsqueeze(0), self.X), self.Y)


class CostRollout(Objective):
    """Mean over the training scenarios of Σ_t stage + terminal, through a differentiable rollout."""

    def __init__(self, evaluator, stage, terminal, describe: str):
        self.evaluator, self.stage, self.terminal = evaluator, stage, terminal
        self.describe = describe

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        X, U = self.evaluator.rollout(theta.unsqueeze(0))
        trace = self.evaluator.trace(X, U, self.evaluator.draws)  # the same draws as the metrics
        total = torch.zeros((), dtype=DTYPE)
        if self.stage is not None:  # t = 0 … T−1, also when the stage reads states only
            total = total + self.stage(trace).t[:, :, :U.shape[2]].sum(dim=(2, 3)).mean()
        if self.terminal is not None:
            total = total + self.terminal(trace).t[:, :, -1].sum(dim=-1).mean()
        return total


class EpisodeReturn(Objective):
    """L(θ) = −(mean over the training scenarios of the episode return), and its gradient by
    antithetic evolution strategies: with ε_1 … ε_P ~ N(0, I) drawn from the objective's own
    seeded generator (advanced on every call, so each step gets fresh directions; its state is
    part of the Trainer's checkpoint), and R̄ the mean return over the scenarios,

        ∇L(θ) ≈ −Σ_i (R̄(θ + σε_i) − R̄(θ − σε_i)) ε_i / (2σP),

    from ONE batched rollout of the 2P + 1 candidates θ, θ ± σε_i on the same seeds (common
    random numbers: the difference of a pair sees only the effect of ±σε_i)."""

    def __init__(self, evaluator, population: int, sigma: float, seed: int, describe: str):
        self.evaluator = evaluator
        self.population, self.sigma, self.seed = int(population), float(sigma), int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.describe = describe

    @torch.no_grad()
    def mean_returns(self, thetas: torch.Tensor) -> torch.Tensor:
        """Mean episode return over the training scenarios, per candidate (C,)."""
        _, _, R = self.evaluator.rollout_returns(torch.as_tensor(thetas, dtype=DTYPE))
        return R.mean(dim=1)

    @torch.no_grad()
    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return -self.mean_returns(theta.detach()[None])[0]

    @torch.no_grad()
    def loss_and_grad(self, theta: torch.Tensor, extra=None) -> tuple[float, torch.Tensor]:
        """(L(θ), the ES estimate of ∇L(θ)); L(θ) comes from the same batched rollout.
        A differentiable `extra` term cannot be added to an estimate: it is refused."""
        if extra is not None:
            raise ValueError("objective return has no autograd gradient to add a penalty to")
        theta = theta.detach().to(DTYPE)
        P, sigma = self.population, self.sigma
        eps = torch.randn(P, theta.numel(), generator=self.generator, dtype=DTYPE)
        R = self.mean_returns(torch.cat([theta[None], theta + sigma * eps,
                                         theta - sigma * eps]))
        diff = R[1:P + 1] - R[P + 1:]
        diff = torch.where(torch.isfinite(diff), diff, torch.zeros_like(diff))
        grad_return = (diff @ eps) / (2 * sigma * P)
        return float(-R[0]), -grad_return


class DataError(ScpoError):
    """The objective's data file cannot be read (check reports this with a location first)."""


def read_data(path: Path, names: list[str]) -> np.ndarray:
    """The named CSV columns, read as `check` reads them (scpo_spec.language.data)."""
    try:
        return read_columns(path, names)
    except TableError as err:
        raise DataError(err.message(str(path))) from None


def make_objective(spec: Spec, family, evaluator, compiler: ExpressionCompiler,
                   base_dir: Path) -> Objective:
    obj = spec.objective
    if isinstance(obj, ImitationObjective):
        n = family.n
        seed = int(obj.seed) if obj.seed is not None else 0
        rng = np.random.default_rng(seed)
        count = int(obj.count)
        dist = obj.states
        if isinstance(dist, NormalStates):
            X = rng.normal(dist.mean.array(), dist.std.array(), size=(count, n))
        else:
            X = rng.uniform(dist.low.array(), dist.high.array(), size=(count, n))
        K = obj.expert.K.array().reshape(family.m, n)
        bias = obj.expert.bias.array().reshape(-1) if obj.expert.bias is not None else 0.0
        Y = X @ K.T + bias
        loss = obj.loss.name if obj.loss else "mse"
        return SupervisedObjective(family, X, Y, loss,
                                   f"imitation of a linear expert, {loss} on {count} states")
    if isinstance(obj, RegressionObjective):
        path = (base_dir / obj.data.value).resolve()
        X = read_data(path, [s.name for s in obj.inputs])
        Y = read_data(path, [s.name for s in obj.targets])
        loss = obj.loss.name if obj.loss else "mse"
        return SupervisedObjective(family, X, Y, loss,
                                   f"regression, {loss} on {len(X)} rows of {obj.data.value}")
    if isinstance(obj, CostObjective):
        stage = compiler.value(expand(obj.stage, spec)) if obj.stage is not None else None
        terminal = (compiler.value(expand(obj.terminal, spec)) if obj.terminal is not None
                    else None)
        return CostRollout(evaluator, stage, terminal,
                           "rollout cost (Σ stage + terminal, mean over scenarios)")
    if isinstance(obj, ReturnObjective):
        default = {key: DEFAULTS[("objective return", key)]
                   for key in ("population", "sigma", "seed")}
        population = int(obj.population if obj.population is not None else default["population"])
        sigma = float(obj.sigma if obj.sigma is not None else default["sigma"])
        seed = int(obj.seed if obj.seed is not None else default["seed"])
        return EpisodeReturn(evaluator, population, sigma, seed,
                             f"minus the mean episode return; antithetic ES gradient "
                             f"({population} pairs, sigma {sigma:g})")
    raise NotImplementedError(f"objective kind '{obj.kind}'")
