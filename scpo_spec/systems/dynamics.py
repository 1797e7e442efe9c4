"""The `system` section as torch code.

Every system maps states (..., n) and inputs (..., m) to next states (..., n), batched over any
leading shape (candidates × scenarios), and offers its linearisation at the origin for
`spectral_radius`.  Gymnasium systems are rolled out by their environments, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scpo_spec.language.model import (GymnasiumSystem, LinearSystem, PendulumSystem, Spec,
                                  StaticSystem)

from scpo_spec.dtype import DTYPE


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

    def __post_init__(self):
        if self.A is not None:
            self._At = torch.as_tensor(self.A, dtype=DTYPE).T.contiguous()
            self._Bt = torch.as_tensor(self.B, dtype=DTYPE).T.contiguous()

    def step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return x @ self._At + u @ self._Bt
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

    def linearisation(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) of the plant linearised at x = 0, u = 0."""
        if self.kind == "linear":
            return self.A, self.B
        if self.kind == "pendulum":
            a = 3 * self.g / (2 * self.length)
            b = 3 / (self.mass * self.length ** 2)
            dt = self.dt
            return (np.array([[1 + dt * dt * a, dt], [dt * a, 1.0]]),
                    np.array([[dt * dt * b], [dt * b]]))
        raise ValueError(f"a '{self.kind}' system has no linearisation")


def make_dynamics(spec: Spec) -> Dynamics:
    """The torch plant of a checked spec."""
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
    raise NotImplementedError(f"'{system.kind}' systems")
