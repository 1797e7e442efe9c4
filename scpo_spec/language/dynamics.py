"""Declared dynamics (`system discrete`, `system ode`) evaluated in numpy, for the checker's own
use: the one-step map x⁺ = F(x, u) and its linearisation at the operating point (x*, u*): the
system's `equilibrium`, the origin when there is none.  Lets are expanded, and parameters and
disturbances take their nominal values (the middle of their ranges) here.

compile/ builds the same map in torch and linearises it by autograd; this module uses central
finite differences (step `FD_STEP`) of the numpy map, so the checker can solve an LQR backup's
Riccati equation (and check V(x₀) of lyapunov(backup)) without torch.  A test on the compile side
keeps the two linearisations close.

The rules of the linearisation point live here too, one text for every plant: x = 0, u = 0 must
be an equilibrium wherever the plant is linearised (`not_an_equilibrium`), and an lqr backup's
Riccati equation must have a stabilising solution (`riccati_problem`); the checker applies them
to declared plants, compile/usercode.py to python ones, policies/backup.py when it builds the LQR.

Integrators of `system ode` (input u held over the control period dt, `substeps` steps of
h = dt / substeps each):
    euler     x ← x + h f(x, u)
    midpoint  x ← x + h f(x + h/2 f(x, u), u)
    rk4       the classical Runge–Kutta: k₁ = f(x), k₂ = f(x + h/2 k₁), k₃ = f(x + h/2 k₂),
              k₄ = f(x + h k₃); x ← x + h/6 (k₁ + 2k₂ + 2k₃ + k₄)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language.evaluate import evaluate
from scpo_spec.language.lets import expand

FD_STEP = 1e-6

Vector = np.ndarray


def nominal_values(spec: M.Spec | None) -> dict[str, float]:
    """Each parameter and disturbance at the middle of its range: where the checker evaluates
    the plant (its fixed point, its linearisation)."""
    if spec is None:
        return {}
    return {u.name.name: float(np.mean(u.interval.value))
            for u in [*spec.parameters, *spec.disturbances]
            if u.interval.value is not None and np.size(u.interval.value) == 2}


def right_hand_side(system: M.DiscreteSystem | M.OdeSystem, consts: dict[str, Any],
                    spec: M.Spec | None = None) -> Callable[[Vector, Vector], Vector]:
    """(x, u) ↦ the equations' values in state order (x⁺ for discrete, ẋ for ode); with `spec`,
    its lets expanded and its parameters and disturbances at their nominal values.  Raises
    EvalError where an equation cannot be evaluated (log of 0, division by zero, …)."""
    states = [s.name for s in system.states]
    inputs = [s.name for s in system.inputs]
    eqs = system.next if isinstance(system, M.DiscreteSystem) else system.der
    by_state = {}
    for eq in eqs:  # the first equation of a state (a duplicate is an error elsewhere)
        by_state.setdefault(eq.state.name, expand(eq.expr, spec) if spec else eq.expr)
    order = [by_state[s] for s in states]
    nominal = nominal_values(spec)

    def f(x: Vector, u: Vector) -> Vector:
        env = dict(consts)
        env.update(nominal)
        env.update(zip(states, map(float, x)))
        env.update(zip(inputs, map(float, u)))
        return np.array([float(evaluate(e, env)) for e in order], dtype=np.float64)
    return f


def integrator_name(system: M.OdeSystem) -> str:
    return system.integrator.name if system.integrator is not None else "rk4"


def substeps_of(system: M.OdeSystem) -> int:
    return int(system.substeps) if system.substeps is not None else 1


def step_map(system: M.DiscreteSystem | M.OdeSystem, consts: dict[str, Any],
             spec: M.Spec | None = None) -> Callable[[Vector, Vector], Vector]:
    """The one-step map x⁺ = F(x, u) of a declared system."""
    f = right_hand_side(system, consts, spec)
    if isinstance(system, M.DiscreteSystem):
        return f
    dt, k, method = float(system.dt), substeps_of(system), integrator_name(system)
    h = dt / k

    def one(x: Vector, u: Vector) -> Vector:
        if method == "euler":
            return x + h * f(x, u)
        if method == "midpoint":
            return x + h * f(x + h / 2 * f(x, u), u)
        k1 = f(x, u)
        k2 = f(x + h / 2 * k1, u)
        k3 = f(x + h / 2 * k2, u)
        k4 = f(x + h * k3, u)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    def F(x: Vector, u: Vector) -> Vector:
        x = np.asarray(x, dtype=np.float64)
        for _ in range(k):
            x = one(x, u)
        return x
    return F


def linearisation(system: M.DiscreteSystem | M.OdeSystem, consts: dict[str, Any],
                  step: float = FD_STEP, spec: M.Spec | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) = (∂F/∂x, ∂F/∂u) at the operating point (`spec`'s equilibrium; the origin without
    a spec) by central differences of the one-step map."""
    F = step_map(system, consts, spec)
    n, m = len(system.states), len(system.inputs)
    x0, u0 = (np.asarray(v, dtype=np.float64) for v in spec.equilibrium_point()) if spec \
        else (np.zeros(n), np.zeros(m))
    A, B = np.zeros((n, n)), np.zeros((n, m))
    for j in range(n):
        e = np.zeros(n)
        e[j] = step
        A[:, j] = (F(x0 + e, u0) - F(x0 - e, u0)) / (2 * step)
    for j in range(m):
        e = np.zeros(m)
        e[j] = step
        B[:, j] = (F(x0, u0 + e) - F(x0, u0 - e)) / (2 * step)
    return A, B


@dataclass(frozen=True)
class PendulumEquations:
    """`system pendulum` (docs/language.md), written once: θ̈ = 3g/(2l)·sin θ + 3/(m l²)·u,
    one semi-implicit Euler step ω⁺ = ω + dt·θ̈, θ⁺ = θ + dt·ω⁺ (θ = 0 upright).  The checker
    reads it in numpy, systems/ in torch (`step(x, u, torch)`: the same operations in the same
    order, so the same numbers), the verifier its constants."""

    dt: float
    g: float
    mass: float
    length: float

    @classmethod
    def of(cls, system: M.PendulumSystem) -> "PendulumEquations":
        return cls(float(system.dt), float(system.g), float(system.m), float(system.l))

    @property
    def gravity(self) -> float:
        """3g/(2l): θ̈ per unit of sin θ."""
        return 3 * self.g / (2 * self.length)

    @property
    def gain(self) -> float:
        """3/(m l²): θ̈ per unit of torque."""
        return 3 / (self.mass * self.length ** 2)

    def step(self, x, u, xp: Any = np):
        """x⁺ of states (..., 2) and inputs (..., 1), in numpy or (`xp=torch`) torch."""
        theta, omega = x[..., 0], x[..., 1]
        omega = omega + self.dt * (self.gravity * xp.sin(theta) + self.gain * u[..., 0])
        return xp.stack((theta + self.dt * omega, omega), -1)

    def linearisation(self, theta: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) = (∂x⁺/∂x, ∂x⁺/∂u) at the angle θ* (any ω, u: the step is affine in both)."""
        a, b, dt = self.gravity * np.cos(theta), self.gain, self.dt
        return (np.array([[1 + dt * dt * a, dt], [dt * a, 1.0]]),
                np.array([[dt * dt * b], [dt * b]]))


def pendulum_linearisation(system: M.PendulumSystem, theta: float = 0.0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of the pendulum at angle θ* (0: upright)."""
    return PendulumEquations.of(system).linearisation(theta)


def pendulum_step(system: M.PendulumSystem, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """x⁺ of the pendulum, in numpy."""
    return PendulumEquations.of(system).step(np.asarray(x, dtype=np.float64),
                                             np.asarray(u, dtype=np.float64))


# ---- the linearisation point: what backup lqr, lyapunov(backup) and spectral_radius assume --
EQUILIBRIUM_TOLERANCE = 1e-9  # |F(0, 0)| (discrete) or |f(0, 0)| (ode) counted as zero
OPERATING_POINT_HINT = ("declare the operating point the plant rests at inside the system, e.g. "
                        "`equilibrium { force = 9.81 }` (states and inputs not named are 0), "
                        "or write the states and inputs as deviations from an operating point "
                        "(x = x* + δx, u = u* + δu), so that the origin is one")
EQUILIBRIUM_HINT = ("at an operating point the plant is at rest: x⁺ = x* (ẋ = 0 for an ode); "
                    "solve the dynamics for the inputs that hold it there (a hover thrust "
                    "m * g / 2 per rotor), and name every state and input that is not 0")


def off_equilibrium(residual: np.ndarray, derivative: bool, x_star: np.ndarray) -> str | None:
    """The message when the declared operating point (x*, u*) is no fixed point: `residual` =
    F(x*, u*) − x* (a one-step map) or ẋ = f(x*, u*) (`derivative`, an ode), above
    EQUILIBRIUM_TOLERANCE relative to the state scale max(1, |x*|); None when it is one."""
    residual = np.asarray(residual, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(x_star), initial=0.0)))
    size = float(np.max(np.abs(residual), initial=0.0))
    if size <= EQUILIBRIUM_TOLERANCE * scale:
        return None
    value = "[" + ", ".join(f"{v:.6g}" for v in residual + 0.0) + "]"
    moved = f"ẋ = f(x*, u*) = {value}" if derivative else f"F(x*, u*) − x* = {value}"
    return (f"the equilibrium is not a fixed point of this plant: {moved} (largest "
            f"{size:.3g}, above {EQUILIBRIUM_TOLERANCE:g} × the state scale {scale:g})")


def linearisation_uses(spec: M.Spec) -> list[tuple[str, Any]]:
    """What reads the plant's linearisation at x = 0, u = 0, and where: an lqr backup (and with
    it lyapunov(backup), its Riccati P), each `spectral_radius` of a metric."""
    uses: list[tuple[str, Any]] = []
    if isinstance(spec.backup, M.LqrBackup):
        uses.append(("the lqr backup", spec.backup.span))
    for prop in spec.properties:
        uses.extend(("spectral_radius", node.span) for node in E.walk(prop.formula)
                    if isinstance(node, E.Name) and node.id == "spectral_radius")
    return uses


def not_an_equilibrium(residual: np.ndarray, derivative: bool, uses: list[tuple[str, Any]]
                       ) -> list[tuple[str, Any]]:
    """(message, span) for each use of the linearisation (`linearisation_uses`) when x = 0,
    u = 0 is not an equilibrium (none when it is): the plant moves away from it, by `residual`
    = x⁺ (a one-step map) or ẋ (`derivative`: an ode's right-hand side)."""
    residual = np.asarray(residual, dtype=np.float64)
    if np.all(np.abs(residual) <= EQUILIBRIUM_TOLERANCE):
        return []
    value = "[" + ", ".join(f"{v:.6g}" for v in residual + 0.0) + "]"
    moved = f"ẋ = f(0, 0) = {value}" if derivative else f"x⁺ = F(0, 0) = {value}"
    return [(f"{what} linearises the plant at x = 0, u = 0, which is not an equilibrium of "
             f"this plant: {moved}", span) for what, span in uses]


def riccati_problem(A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray
                    ) -> tuple[str, str] | None:
    """(message, hint) when the discrete-time Riccati equation of (A, B, Q, R) has no
    stabilising solution (None when it has one): the LQR backup cannot be built."""
    import scipy.linalg
    try:
        P = scipy.linalg.solve_discrete_are(A, B, Q, R)
        if np.all(np.isfinite(P)):
            return None
        why = "the solution is not finite"
    except (np.linalg.LinAlgError, ValueError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
    message = ("the lqr backup's Riccati equation has no stabilising solution for the plant "
               f"linearised at x = 0, u = 0 ({why})")
    n = A.shape[0]
    stuck = [lam for lam in np.linalg.eigvals(A) if abs(lam) >= 1 - 1e-9 and np.linalg.matrix_rank(
        np.hstack([A - lam * np.eye(n), B]), tol=1e-9) < n]
    if stuck:
        modes = ", ".join(f"{lam.real:.6g}" if abs(lam.imag) < 1e-12 else f"{lam:.6g}"
                          for lam in stuck)
        hint = (f"(A, B) is not stabilisable: the mode{'s' * (len(stuck) > 1)} λ = {modes} of A "
                "(|λ| ≥ 1) cannot be moved by the inputs; check B (and which inputs reach which "
                "states), or write a gain by hand: `backup linear { K = … }`")
    else:
        hint = ("the unstable modes of A must be reachable through B and seen by Q (Q > 0 on "
                "them); or write a gain by hand: `backup linear { K = … }`")
    return message, hint
