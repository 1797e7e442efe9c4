"""The `system` section as torch code: one class per plant kind, found by `PLANTS[kind]`.

Every plant maps states (..., n) and inputs (..., m) to next states (..., n) (`step`), batched
over any leading shape (candidates × scenarios); writes a rollout's steps into its buffers
(`rollout_step`); and offers its linearisation at the operating point (x*, u*) (the system's
`equilibrium`; the origin without one) for `spectral_radius`, `backup lqr` and
`lyapunov(backup)`: in closed form for `linear` and `pendulum`, by autograd on the one-step map
for declared (`discrete`, `ode`) and `python` systems — only the dynamics are differentiated,
never a safety metric.  A gymnasium plant is rolled out by its environment
(systems/gym_rollout.py, through compile's GymEvaluator), not here.

A new plant kind: a subclass with `kind`, `of(spec, base_dir)`, `step` (and, where it has one,
`linearisation`), registered with `@plant`.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

from scpo_spec.dtype import DTYPE
from scpo_spec.errors import ScpoError
from scpo_spec.language.dynamics import PendulumEquations
from scpo_spec.language.model import Spec
from scpo_spec.systems.declared import compile_declared
from scpo_spec.systems.user_code import PythonPlant


class LinearisationError(ScpoError):
    """The one-step map cannot be differentiated at the origin (e.g. user code leaving torch)."""


class RolloutViews:
    """A rollout's time-major buffers X (T+1, C, S, n) and U (T, C, S, m) and their per-step
    views, each made once (~0.5 µs a view) and shared by the policy's and the plant's steps:
    xs[t], us[t] are (C, S, ·), xf[t], uf[t] the same numbers as (C·S, ·) matrices.

    `scratch` keeps the work buffers (`buffer`): an evaluator hands the same dict to every
    rollout of one shape, so its megabytes are reused instead of allocated and faulted in
    afresh (0.3-0.6 ms of a 33 ms evaluation at 2-64-64-1 here; see engine/memory.py)."""

    def __init__(self, X: torch.Tensor, U: torch.Tensor, scratch: dict | None = None):
        self.X, self.U, self.device = X, U, X.device
        self.scratch = {} if scratch is None else scratch
        self.uncertain: torch.Tensor | None = None  # W (T, 1, S, p + d), when the spec has it

    @classmethod
    def allocate(cls, T: int, C: int, S: int, n: int, m: int, like: torch.Tensor,
                 scratch: dict | None = None) -> "RolloutViews":
        """Buffers for T steps of C × S rollouts, of `like`'s dtype and device."""
        scratch = {} if scratch is None else scratch
        return cls(_kept(scratch, "X", (T + 1, C, S, n), like),
                   _kept(scratch, "U", (T, C, S, m), like), scratch)

    def buffer(self, name, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised buffer of X's dtype and device, kept in `scratch` under (name,
        shape)."""
        return _kept(self.scratch, name, shape, self.X)

    @cached_property
    def xs(self) -> tuple[torch.Tensor, ...]:
        return self.X.unbind(0)

    @cached_property
    def us(self) -> tuple[torch.Tensor, ...]:
        return self.U.unbind(0)

    @cached_property
    def xf(self) -> tuple[torch.Tensor, ...]:
        return self.X.view(self.X.shape[0], -1, self.X.shape[3]).unbind(0)

    @cached_property
    def uf(self) -> tuple[torch.Tensor, ...]:
        return self.U.view(self.U.shape[0], -1, self.U.shape[3]).unbind(0)


def _kept(scratch: dict, name, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    key = (name, tuple(shape))
    buf = scratch.get(key)
    if buf is None:
        buf = scratch[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf


class Dynamics:
    """A discrete-time plant of n states and m inputs (one subclass per `kind`).  x_star, u_star:
    the operating point (`equilibrium`), None for the origin."""

    kind: ClassVar[str]

    def __init__(self, n: int, m: int):
        self.n, self.m = n, m
        self.x_star: np.ndarray | None = None
        self.u_star: np.ndarray | None = None

    @classmethod
    def of(cls, spec: Spec, base_dir: Path | None) -> "Dynamics":
        """The plant of a checked spec whose system is of this kind."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, u: torch.Tensor, w: torch.Tensor | None = None
             ) -> torch.Tensor:
        """x⁺ from x and u; `w` (..., p + d): the scenarios' parameters and this step's
        disturbances, read by declared equations (None: the middle of each range)."""
        raise NotImplementedError

    def rollout_step(self, views: RolloutViews, uncertain: torch.Tensor | None = None
                     ) -> Callable[[int], None]:
        """t ↦ X[t+1] = step(X[t], U[t], W[t]), written into a rollout's buffers (`views`);
        `uncertain` is W (T, 1, S, p + d), read when the step is taken (a kept buffer may be
        refilled between rollouts), None when the spec declares no uncertainty.  Here: `step`
        copied into X[t+1] (a plant whose step reads no W ignores it)."""
        xs, us, step = views.xs, views.us, self.step

        def stepped(t: int) -> None:
            xs[t + 1].copy_(step(xs[t], us[t]))
        return stepped

    def linearisation(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) of the plant linearised at the operating point (x*, u*)."""
        raise ValueError(f"a '{self.kind}' system has no linearisation")


PLANTS: dict[str, type[Dynamics]] = {}  # the system's kind → its plant class


def plant(cls: type[Dynamics]) -> type[Dynamics]:
    """Register a plant class under its `kind`."""
    PLANTS[cls.kind] = cls
    return cls


@plant
class LinearPlant(Dynamics):
    """x⁺ = A x + B u."""

    kind = "linear"

    def __init__(self, A: np.ndarray, B: np.ndarray):
        super().__init__(*B.shape)
        self.A, self.B = A, B
        self._At = torch.as_tensor(A, dtype=DTYPE).T.contiguous()
        self._Bt = torch.as_tensor(B, dtype=DTYPE).T.contiguous()
        self._moved: dict = {}  # device → (Aᵀ, Bᵀ) there

    @classmethod
    def of(cls, spec: Spec, base_dir: Path | None) -> "LinearPlant":
        system = spec.system
        n, m = len(system.states), len(system.inputs)
        return cls(system.A.array().reshape(n, n), system.B.array().reshape(n, m))

    def step(self, x, u, w=None):
        At, Bt = self._on(x.device)
        return x @ At + u @ Bt

    def rollout_step(self, views, uncertain=None):
        """Two BLAS calls on (C·S, ·) views, X[t+1] = X[t] Aᵀ, then += U[t] Bᵀ by `addmm_` (a
        fused multiply-add: equal to rounding to x @ Aᵀ + u @ Bᵀ, tests/test_perf_equality.py)."""
        At, Bt = self._on(views.device)
        xf, uf, mm = views.xf, views.uf, torch.mm

        def linear(t: int) -> None:
            mm(xf[t], At, out=xf[t + 1]).addmm_(uf[t], Bt)
        return linear

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Aᵀ and Bᵀ on `device` (moved once, then kept)."""
        if self._At.device == device:
            return self._At, self._Bt
        moved = self._moved.get(device)
        if moved is None:
            moved = self._moved[device] = (self._At.to(device), self._Bt.to(device))
        return moved

    def linearisation(self):
        return self.A, self.B


@plant
class PendulumPlant(Dynamics):
    """The pendulum of language/dynamics.py's `PendulumEquations`, stepped in torch."""

    kind = "pendulum"

    def __init__(self, equations: PendulumEquations):
        super().__init__(2, 1)
        self.equations = equations

    @classmethod
    def of(cls, spec: Spec, base_dir: Path | None) -> "PendulumPlant":
        return cls(PendulumEquations.of(spec.system))

    def step(self, x, u, w=None):
        return self.equations.step(x, u, torch)

    def linearisation(self):
        return self.equations.linearisation(0.0 if self.x_star is None else float(self.x_star[0]))


@plant
class StaticPlant(Dynamics):
    """x⁺ = x: the policy is a model y = f(x) of fixed inputs."""

    kind = "static"

    @classmethod
    def of(cls, spec: Spec, base_dir: Path | None) -> "StaticPlant":
        return cls(len(spec.system.states), len(spec.system.inputs))

    def step(self, x, u, w=None):
        return x


@plant
class GymnasiumPlant(Dynamics):
    """A registered gymnasium environment `env_id`: no torch step, rolled out by its
    environment (compile.evaluator.GymEvaluator, systems/gym_rollout.py)."""

    kind = "gymnasium"

    def __init__(self, env_id: str, n: int, m: int):
        super().__init__(n, m)
        self.env_id = env_id

    @classmethod
    def of(cls, spec: Spec, base_dir: Path | None) -> "GymnasiumPlant":
        system = spec.system
        return cls(system.env_id.value, len(system.states), len(system.inputs))

    def step(self, x, u, w=None):
        raise ValueError(f"a gymnasium system ('{self.env_id}') is stepped by its environment "
                         "(scpo_spec.systems.gym_rollout), not in torch")

    def rollout_step(self, views, uncertain=None):
        return self.step(None, None)


class MappedPlant(Dynamics):
    """A plant whose step is a one-step map (x, u[, w]) ↦ x⁺, linearised by autograd."""

    def __init__(self, n: int, m: int, map: Callable[..., torch.Tensor]):
        super().__init__(n, m)
        self.map = map
        self._linearised: tuple[np.ndarray, np.ndarray] | None = None

    def step(self, x, u, w=None):
        return self.map(x, u) if w is None else self.map(x, u, w)

    def rollout_step(self, views, uncertain=None):
        if uncertain is None:
            return super().rollout_step(views)
        xs, us, ws, step = views.xs, views.us, uncertain.unbind(0), self.step

        def uncertain_step(t: int) -> None:
            xs[t + 1].copy_(step(xs[t], us[t], ws[t]))
        return uncertain_step

    def linearisation(self):
        if self._linearised is None:
            self._linearised = self._autograd_linearisation()
        return self._linearised

    def _autograd_linearisation(self) -> tuple[np.ndarray, np.ndarray]:
        """∂F/∂x and ∂F/∂u of the one-step map at (x*, u*) (a batch of one), by autograd."""
        x_star = torch.zeros(self.n, dtype=DTYPE) if self.x_star is None else \
            torch.as_tensor(self.x_star, dtype=DTYPE)
        u_star = torch.zeros(self.m, dtype=DTYPE) if self.u_star is None else \
            torch.as_tensor(self.u_star, dtype=DTYPE)
        x0, u0 = x_star[None].clone(), u_star[None].clone()
        at = "the origin" if not (x_star.any() or u_star.any()) else "the operating point"
        with torch.enable_grad():
            probe = self.map(x0.requires_grad_(), u0.requires_grad_())
            if not probe.requires_grad:
                raise LinearisationError(
                    f"the {self.kind} system's step is not differentiable at {at} (its "
                    "result is not connected to x and u by torch operations), so it has no "
                    "linearisation for spectral_radius, backup lqr or lyapunov(backup)")
            try:
                A, B = torch.autograd.functional.jacobian(
                    lambda x, u: self.map(x[None], u[None])[0], (x_star, u_star))
            except RuntimeError as err:
                raise LinearisationError(f"differentiating the {self.kind} system's step at "
                                         f"{at} failed: {str(err).splitlines()[0]}") from None
        return A.detach().numpy().copy(), B.detach().numpy().copy().reshape(self.n, self.m)


class DeclaredPlant(MappedPlant):
    """Equations the spec declares, compiled once to torch by systems/declared.py."""

    @classmethod
    def of(cls, spec: Spec, base_dir: Path | None) -> "DeclaredPlant":
        system = spec.system
        return cls(len(system.states), len(system.inputs), compile_declared(spec))


@plant
class DiscretePlant(DeclaredPlant):
    """`system discrete`: x⁺ = F(x, u) as written."""

    kind = "discrete"


@plant
class OdePlant(DeclaredPlant):
    """`system ode`: ẋ = f(x, u) integrated over dt by the declared integrator."""

    kind = "ode"


@plant
class PythonFunctionPlant(MappedPlant):
    """`system python "module:function"`: the author's callable (a PythonPlant), imported and
    probed when first stepped or linearised (or by `load`)."""

    kind = "python"
    map: PythonPlant

    def __init__(self, function: PythonPlant):
        super().__init__(function.n, function.m, function)

    @classmethod
    def of(cls, spec: Spec, base_dir: Path | None) -> "PythonFunctionPlant":
        system = spec.system
        return cls(PythonPlant(system.function.value, len(system.states), len(system.inputs),
                               base_dir, system.function.span))

    def load(self) -> None:
        """Import and probe the author's function now."""
        self.map.load()

    def _autograd_linearisation(self):
        self.load()  # import and probe errors first, with their own messages
        return super()._autograd_linearisation()


def operating_point(spec: Spec, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(x*, u*) float64, (n,) and (m,): the system's `equilibrium` (zeros where not named)."""
    point = getattr(spec, "equilibrium_point", None)
    if point is None or getattr(spec.system, "equilibrium", None) is None:
        return np.zeros(n), np.zeros(m)
    x_star, u_star = point()
    return (np.asarray(x_star, dtype=np.float64).reshape(n),
            np.asarray(u_star, dtype=np.float64).reshape(m))


def make_dynamics(spec: Spec, base_dir: Path | None = None) -> Dynamics:
    """The torch plant of a checked spec (a python system's module is looked for in `base_dir`
    first, and imported only when first stepped or linearised)."""
    dynamics = PLANTS[spec.system.kind].of(spec, base_dir)
    x_star, u_star = operating_point(spec, dynamics.n, dynamics.m)
    if np.any(x_star) or np.any(u_star):
        dynamics.x_star, dynamics.u_star = x_star, u_star
    return dynamics
