"""The checks of a spec that need to run the author's code (and so torch): the one place they
live, run by `scpo check` and `scpo train` after the language checks pass.

Each check takes the checked model and the spec's folder and returns located diagnostics; a new
one is one more function in CHECKS.  Importing this module is
cheap: torch comes in only when a check finds something to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from scpo_spec.language.diagnostics import Diagnostic
from scpo_spec.language.model import PythonSystem, Spec


def _python_system(spec: Spec, base_dir: Path) -> list[Diagnostic]:
    """`system python "module:callable"`: importable, callable, and on a probe batch a float64
    tensor of the states' shape, finite at the origin."""
    system = spec.system
    if not isinstance(system, PythonSystem) or system.function is None:
        return []
    from scpo_spec.systems.user_code import PythonPlant, UserCodeError
    plant = PythonPlant(system.function.value, len(system.states), len(system.inputs), base_dir)
    try:
        plant.load()
    except UserCodeError as err:
        return [Diagnostic(message=err.message, span=system.function.span, hint=err.hint)]
    return []


def _torch_files(spec: Spec, base_dir: Path) -> list[Diagnostic]:
    """`backup torch` / `policy torch`: a TorchScript archive whose forward maps a (4, n)
    float64 batch to (4, m) finite float64 (and, for a policy, a plain MLP)."""
    if getattr(spec.backup, "kind", None) != "torch" and getattr(spec.policy, "kind", None) \
            != "torch":
        return []
    from scpo_spec.policies.torch_file import check_files
    return check_files(spec, base_dir)


CHECKS: list[Callable[[Spec, Path], list[Diagnostic]]] = [_python_system, _torch_files]


def check_code(spec: Spec, base_dir: Path) -> list[Diagnostic]:
    """Every diagnostic of every code check, in order."""
    return [d for check in CHECKS for d in check(spec, base_dir)]
