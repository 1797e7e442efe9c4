"""Declared dynamics (`system discrete`, `system ode`) evaluated in numpy, for the checker's own
use: the one-step map x⁺ = F(x, u) and its linearisation at the origin (x = 0, u = 0).

compile/ builds the same map in torch and linearises it by autograd; this module uses central
finite differences (step `FD_STEP`) of the numpy map, so the checker can solve an LQR backup's
Riccati equation (and check V(x₀) of lyapunov(backup)) without torch.  A test on the compile side
keeps the two linearisations close.

Integrators of `system ode` (input u held over the control period dt, `substeps` steps of
h = dt / substeps each):
    euler     x ← x + h f(x, u)
    midpoint  x ← x + h f(x + h/2 f(x, u), u)
    rk4       the classical Runge–Kutta: k₁ = f(x), k₂ = f(x + h/2 k₁), k₃ = f(x + h/2 k₂),
              k₄ = f(x + h k₃); x ← x + h/6 (k₁ + 2k₂ + 2k₃ + k₄)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from scpo_spec.language import model as M
from scpo_spec.language.evaluate import evaluate

INTEGRATORS = ("rk4", "euler", "midpoint")
FD_STEP = 1e-6

Vector = np.ndarray


def right_hand_side(system: M.DiscreteSystem | M.OdeSystem, consts: dict[str, Any]) \
        -> Callable[[Vector, Vector], Vector]:
    """(x, u) ↦ the equations' values in state order (x⁺ for discrete, ẋ for ode).  Raises
    EvalError where an equation cannot be evaluated (log of 0, division by zero, …)."""
    states = [s.name for s in system.states]
    inputs = [s.name for s in system.inputs]
    eqs = system.next if isinstance(system, M.DiscreteSystem) else system.der
    by_state = {}
    for eq in eqs:  # the first equation of a state (a duplicate is an error elsewhere)
        by_state.setdefault(eq.state.name, eq.expr)
    order = [by_state[s] for s in states]

    def f(x: Vector, u: Vector) -> Vector:
        env = dict(consts)
        env.update(zip(states, map(float, x)))
        env.update(zip(inputs, map(float, u)))
        return np.array([float(evaluate(e, env)) for e in order], dtype=np.float64)
    return f


def integrator_name(system: M.OdeSystem) -> str:
    return system.integrator.name if system.integrator is not None else "rk4"


def substeps_of(system: M.OdeSystem) -> int:
    return int(system.substeps) if system.substeps is not None else 1


def step_map(system: M.DiscreteSystem | M.OdeSystem, consts: dict[str, Any]) \
        -> Callable[[Vector, Vector], Vector]:
    """The one-step map x⁺ = F(x, u) of a declared system."""
    f = right_hand_side(system, consts)
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
                  step: float = FD_STEP) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) = (∂F/∂x, ∂F/∂u) at the origin by central differences of the one-step map."""
    F = step_map(system, consts)
    n, m = len(system.states), len(system.inputs)
    x0, u0 = np.zeros(n), np.zeros(m)
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
