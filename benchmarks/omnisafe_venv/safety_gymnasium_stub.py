"""Stub copied by benchmarks/compare_omnisafe.py into the venv as safety_gymnasium/__init__.py:
safety-gymnasium 1.0.0 does not import on Python 3.11 (a dataclass with an ndarray default).
OmniSafe imports it only for its own Safety-Gymnasium tasks, which are not used; making one of
them raises."""
__version__ = "stub"


def make(*args, **kwargs):
    raise RuntimeError("safety-gymnasium is not installed in this venv (stub)")


class vector:  # noqa: N801  (mirrors safety_gymnasium.vector.make)
    make = staticmethod(make)
