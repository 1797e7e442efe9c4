"""The `system` section as torch code.

Every system maps states (..., n) and inputs (..., m) to next states (..., n), batched over any
leading shape (candidates × scenarios), and offers its linearisation at the origin for
`spectral_radius`, `backup lqr` and `lyapunov(backup)`: in closed form for `linear` and
`pendulum`, by autograd on the one-step map for declared (`discrete`, `ode`) and `python`
systems — only the dynamics are differentiated, never a safety metric.  Gymnasium systems are
rolled out by their environments, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scpo_spec.dtype import DTYPE
from scpo_spec.errors import ScpoError
from scpo_spec.language.model import (DiscreteSystem, GymnasiumSystem, LinearSystem, OdeSystem,
                                      PendulumSystem, PythonSystem, Spec, StaticSystem)
from scpo_spec.systems.declared import compile_declared
from scpo_spec.systems.user_code import PythonPlant

MAPPED = ("discrete", "ode", "python")  # kinds whose step is a compiled or user map


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


@dataclass
class Dynamics:
    """A discrete-time plant. `static` plants keep x constant (the policy is a model y = f(x));
    `gymnasium` plants have no torch step: their environment `env_id` is rolled out by
    `scpo_spec.systems.gym_rollout.GymRollout`."""

    kind: str
    n: int
    m: int
    A: np.ndarray | None = None       # linear: x⁺ = A x + B u
    B: np.ndarray | None = None
    dt: float = 0.0                   # pendulum parameters
    g: float = 0.0
    mass: float = 1.0
    length: float = 1.0
    env_id: str | None = None         # gymnasium: the registered environment id
    map: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # discrete, ode,
    #                                   python: the one-step map (a PythonPlant for python)
    x_star: np.ndarray | None = None  # the operating point (`equilibrium`; None: the origin)
    u_star: np.ndarray | None = None

    def __post_init__(self):
        if self.A is not None:
            self._At = torch.as_tensor(self.A, dtype=DTYPE).T.contiguous()
            self._Bt = torch.as_tensor(self.B, dtype=DTYPE).T.contiguous()
        self._linearised: tuple[np.ndarray, np.ndarray] | None = None
        self._moved: dict = {}  # device → (Aᵀ, Bᵀ) there

    def step(self, x: torch.Tensor, u: torch.Tensor, w: torch.Tensor | None = None
             ) -> torch.Tensor:
        """x⁺ from x and u; `w` (..., p + d): the scenarios' parameters and this step's
        disturbances, read by declared equations (None: the middle of each range)."""
        if self.map is not None:
            return self.map(x, u) if w is None else self.map(x, u, w)
        if self.kind == "linear":
            At, Bt = self._on(x.device)
            return x @ At + u @ Bt
        if self.kind == "pendulum":
            theta, omega = x[..., 0], x[..., 1]
            accel = (3 * self.g / (2 * self.length)) * torch.sin(theta) \
                + (3 / (self.mass * self.length ** 2)) * u[..., 0]
            omega = omega + self.dt * accel
            return torch.stack((theta + self.dt * omega, omega), dim=-1)
        if self.kind == "gymnasium":
            raise ValueError(f"a gymnasium system ('{self.env_id}') is stepped by its environment "
                             "(scpo_spec.systems.gym_rollout), not in torch")
        return x  # static

    def rollout_step(self, views: RolloutViews, uncertain: torch.Tensor | None = None
                     ) -> Callable[[int], None]:
        """t ↦ X[t+1] = step(X[t], U[t], W[t]), written into a rollout's buffers (`views`);
        `uncertain` is W (T, 1, S, p + d), read when the step is taken (a kept buffer may be
        refilled between rollouts), None when the spec declares no uncertainty.  A linear
        plant is two BLAS calls on (C·S, ·) views, X[t+1] = X[t] Aᵀ, then += U[t] Bᵀ by
        `addmm_` (a fused multiply-add: equal to rounding to x @ Aᵀ + u @ Bᵀ,
        tests/test_perf_equality.py); any other plant is `step` copied into X[t+1] (the same
        numbers)."""
        if self.kind == "linear" and self.map is None:
            At, Bt = self._on(views.device)
            xf, uf, mm = views.xf, views.uf, torch.mm

            def linear(t: int) -> None:
                mm(xf[t], At, out=xf[t + 1]).addmm_(uf[t], Bt)
            return linear
        xs, us, step = views.xs, views.us, self.step
        if uncertain is not None and self.map is not None:
            ws = uncertain.unbind(0)

            def uncertain_step(t: int) -> None:
                xs[t + 1].copy_(step(xs[t], us[t], ws[t]))
            return uncertain_step

        def mapped(t: int) -> None:
            xs[t + 1].copy_(step(xs[t], us[t]))
        return mapped

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Aᵀ and Bᵀ on `device` (moved once, then kept)."""
        if self._At.device == device:
            return self._At, self._Bt
        moved = self._moved.get(device)
        if moved is None:
            moved = self._moved[device] = (self._At.to(device), self._Bt.to(device))
        return moved

    def linearisation(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) of the plant linearised at the operating point (x*, u*)."""
        if self.kind == "linear":
            return self.A, self.B
        if self.kind == "pendulum":
            theta_star = 0.0 if self.x_star is None else float(self.x_star[0])
            a = 3 * self.g / (2 * self.length) * np.cos(theta_star)
            b = 3 / (self.mass * self.length ** 2)
            dt = self.dt
            return (np.array([[1 + dt * dt * a, dt], [dt * a, 1.0]]),
                    np.array([[dt * dt * b], [dt * b]]))
        if self.map is not None:
            if self._linearised is None:
                self._linearised = self._autograd_linearisation()
            return self._linearised
        raise ValueError(f"a '{self.kind}' system has no linearisation")

    def _autograd_linearisation(self) -> tuple[np.ndarray, np.ndarray]:
        """∂F/∂x and ∂F/∂u of the one-step map at (x*, u*) (a batch of one), by autograd."""
        if isinstance(self.map, PythonPlant):
            self.map.load()  # import and probe errors first, with their own messages
        x_star = torch.zeros(self.n, dtype=DTYPE) if self.x_star is None else \
            torch.as_tensor(self.x_star, dtype=DTYPE)
        u_star = torch.zeros(self.m, dtype=DTYPE) if self.u_star is None else \
            torch.as_tensor(self.u_star, dtype=DTYPE)
        x0, u0 = x_star[None].clone(), u_star[None].clone()
        with torch.enable_grad():
            probe = self.map(x0.requires_grad_(), u0.requires_grad_())
            if not probe.requires_grad:
                raise LinearisationError(
                    f"the {self.kind} system's step is not differentiable at the origin (its "
                    "result is not connected to x and u by torch operations), so it has no "
                    "linearisation for spectral_radius, backup lqr or lyapunov(backup)")
            try:
                A, B = torch.autograd.functional.jacobian(
                    lambda x, u: self.map(x[None], u[None])[0], (x_star, u_star))
            except RuntimeError as err:
                raise LinearisationError(f"differentiating the {self.kind} system's step at the "
                                         f"origin failed: {str(err).splitlines()[0]}") from None
        return A.detach().numpy().copy(), B.detach().numpy().copy().reshape(self.n, self.m)



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
    dynamics = _plant(spec, base_dir)
    x_star, u_star = operating_point(spec, dynamics.n, dynamics.m)
    if np.any(x_star) or np.any(u_star):
        dynamics.x_star, dynamics.u_star = x_star, u_star
    return dynamics


def _plant(spec: Spec, base_dir: Path | None) -> Dynamics:
    system = spec.system
    n, m = len(system.states), len(system.inputs)
    if isinstance(system, LinearSystem):
        return Dynamics("linear", n, m, A=system.A.array().reshape(n, n),
                        B=system.B.array().reshape(n, m))
    if isinstance(system, PendulumSystem):
        return Dynamics("pendulum", n, m, dt=float(system.dt), g=float(system.g),
                        mass=float(system.m), length=float(system.l))
    if isinstance(system, StaticSystem):
        return Dynamics("static", n, m)
    if isinstance(system, GymnasiumSystem):
        return Dynamics("gymnasium", n, m, env_id=system.env_id.value)
    if isinstance(system, (DiscreteSystem, OdeSystem)):
        return Dynamics(system.kind, n, m, map=compile_declared(spec))
    if isinstance(system, PythonSystem):
        return Dynamics("python", n, m, map=PythonPlant(system.function.value, n, m, base_dir,
                                                         system.function.span))
    raise NotImplementedError(f"'{system.kind}' systems")
