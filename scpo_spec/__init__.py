"""scpo-spec: train neural policies that never leave a safe operating regime.

The data flow is one-way: text → parse → model → check → compile → engine → audit → report.
`load_spec` gives the checked model of a spec; `load_run` gives a trained run back (its spec, its
policy, its verdict, rollouts and metrics: see README.md "Python API").  `load_run` and `Run` are
scpo_spec.engine.run's own, looked up on first use (PEP 562), so that importing scpo_spec does
not import torch.
"""

from scpo_spec.language.load import load_spec, check_text, check_file
from scpo_spec.language.diagnostics import Diagnostic, SpecError
from scpo_spec.language.model import Spec

_FROM_ENGINE = ("load_run", "Run")  # torch comes in with them


def __getattr__(name: str):
    if name in _FROM_ENGINE:
        from scpo_spec.engine import run
        return getattr(run, name)
    raise AttributeError(f"module 'scpo_spec' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FROM_ENGINE])


__all__ = ["load_run", "Run", "load_spec", "check_text", "check_file", "Diagnostic", "SpecError",
           "Spec"]
__version__ = "0.1.0"
