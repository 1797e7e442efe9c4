"""Plant dynamics as batched torch code (float64): x⁺ = f(x, u) for any leading batch shape."""

from scpo_spec.systems.dynamics import Dynamics, make_dynamics

__all__ = ["Dynamics", "make_dynamics"]
