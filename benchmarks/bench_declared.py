#!/usr/bin/env python
"""Declared dynamics against hand-written torch (see benchmarks/README.md).

    python benchmarks/bench_declared.py [--candidates 10] [--scenarios 256] [--horizon 200]
                                        [--repeat 5] [--threads N]

A `system ode` cart-pole (Barto's equations, gymnasium's CartPole constants, rk4, dt = 0.02),
compiled by scpo_spec.systems.declared from its `der` equations, rolled out C × S × T under a
fixed linear feedback u = −K x, against the same rollout with a hand-written torch cart-pole
(intermediate terms shared, as one would write it).  Both give the same states (checked);
best of `--repeat` rounds, the two alternating; nothing is asserted on a time.  The model is built directly (the
equations parsed one by one), so this runs before the parser reads `system ode`.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from scpo_spec.dtype import DTYPE
from scpo_spec.language.load import load_spec
from scpo_spec.language.model import Const, Equation, Ident, OdeSystem, Quantity, Signal
from scpo_spec.language.scpo_reader import parse_expression
from scpo_spec.language.source import Source
from scpo_spec.systems import make_dynamics

ROOT = Path(__file__).resolve().parent.parent
CONSTS = {"g": 9.8, "mc": 1.0, "mp": 0.1, "l": 0.5}
TEMP = "(force + mp * l * theta_dot^2 * sin(theta)) / (mc + mp)"
THETA_ACC = f"(g * sin(theta) - cos(theta) * {TEMP}) / (l * (4 / 3 - mp * cos(theta)^2 / (mc + mp)))"
DER = {"x": "x_dot", "x_dot": f"{TEMP} - mp * l * {THETA_ACC} * cos(theta) / (mc + mp)",
       "theta": "theta_dot", "theta_dot": THETA_ACC}
K = torch.tensor([[1.0, 2.0, 30.0, 5.0]], dtype=DTYPE)  # u = K x keeps it up for 200 steps


def _expr(text: str):
    e, problems = parse_expression(text, Source(path="<bench>", text=""))
    assert e is not None, problems
    return e


def declared_dynamics(dt: float):
    spec = load_spec(ROOT / "specs" / "pendulum.scpo")
    q = lambda v: Quantity(expr=_expr(repr(float(v))), value=float(v))  # noqa: E731
    system = OdeSystem(states=[Signal(name=s) for s in ("x", "x_dot", "theta", "theta_dot")],
                       inputs=[Signal(name="force")], dt=q(dt), integrator=Ident(name="rk4"),
                       der=[Equation(state=Signal(name=s), expr=_expr(e)) for s, e in DER.items()])
    consts = [Const(name=k, value=q(v)) for k, v in CONSTS.items()]
    return make_dynamics(spec.model_copy(update={"system": system, "consts": consts}))


def handwritten(dt: float):
    g, mc, mp, l = CONSTS["g"], CONSTS["mc"], CONSTS["mp"], CONSTS["l"]
    total, pml = mc + mp, mp * l

    def f(s, force):
        x_dot, theta, theta_dot = s[..., 1], s[..., 2], s[..., 3]
        sin, cos = torch.sin(theta), torch.cos(theta)
        temp = (force + pml * theta_dot ** 2 * sin) / total
        theta_acc = (g * sin - cos * temp) / (l * (4.0 / 3.0 - mp * cos ** 2 / total))
        x_acc = temp - pml * theta_acc * cos / total
        return torch.stack((x_dot, x_acc, theta_dot, theta_acc), dim=-1)

    def step(s, u):
        force = u[..., 0]
        k1 = f(s, force)
        k2 = f(s + dt / 2 * k1, force)
        k3 = f(s + dt / 2 * k2, force)
        k4 = f(s + dt * k3, force)
        return s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return step


@torch.no_grad()
def rollout(step, x0: torch.Tensor, T: int) -> torch.Tensor:
    x, states = x0, [x0]
    for _ in range(T):
        x = step(x, x @ K.T)
        states.append(x)
    return torch.stack(states, dim=2)


class _Count(torch.overrides.TorchFunctionMode):
    """Counts torch function calls (a load-independent measure of the work per step)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def torch_calls(step, x, u) -> int:
    with _Count() as count:
        step(x, u)
    return count.calls


def interleaved(fns, repeat: int) -> list[list[float]]:
    """Seconds of each function per round, the functions alternating within a round (so a
    shared machine's load falls on both alike), after one warm-up round."""
    for fn in fns:
        fn()
    rounds = []
    for _ in range(repeat):
        times = []
        for fn in fns:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rounds.append(times)
    return rounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--scenarios", type=int, default=256)
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    C, S, T, dt = a.candidates, a.scenarios, a.horizon, 0.02
    x0 = (torch.rand(C, S, 4, generator=torch.Generator().manual_seed(0), dtype=DTYPE) - 0.5) * 0.1
    declared, hand = declared_dynamics(dt), handwritten(dt)
    X_d, X_h = rollout(declared.step, x0, T), rollout(hand, x0, T)
    diff = float((X_d - X_h).abs().max())
    rounds = interleaved([lambda: rollout(declared.step, x0, T), lambda: rollout(hand, x0, T)],
                         a.repeat)
    t_d, t_h = min(r[0] for r in rounds), min(r[1] for r in rounds)
    ratios = sorted(r[0] / r[1] for r in rounds)
    steps = C * S * T
    print(f"cart-pole rk4 rollout, C × S × T = {C} × {S} × {T} ({steps:,} plant steps), "
          f"max |declared − hand-written| = {diff:.2e}")
    u0 = x0 @ K.T
    print(f"  torch calls per plant step: declared {torch_calls(declared.step, x0, u0)}, "
          f"hand-written {torch_calls(hand, x0, u0)}")
    print(f"  declared (system ode)  {t_d * 1e3:8.1f} ms  {steps / t_d / 1e6:6.2f} M steps/s (best)")
    print(f"  hand-written torch     {t_h * 1e3:8.1f} ms  {steps / t_h / 1e6:6.2f} M steps/s (best)")
    print(f"  declared / hand-written = {t_d / t_h:.2f} (best over best); per round: median "
          f"{ratios[len(ratios) // 2]:.2f}, range {ratios[0]:.2f}–{ratios[-1]:.2f}")


if __name__ == "__main__":
    main()
