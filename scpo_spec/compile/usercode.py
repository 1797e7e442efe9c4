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
from scpo_spec.language.dynamics import (EQUILIBRIUM_HINT, OPERATING_POINT_HINT,
                                         linearisation_uses, not_an_equilibrium, off_equilibrium,
                                         riccati_problem)
from scpo_spec.language.model import LqrBackup, PythonPolicy, PythonSystem, Spec


def _python_system(spec: Spec, base_dir: Path) -> list[Diagnostic]:
    """`system python "module:callable"`: importable, callable, and on a probe batch a float64
    tensor of the states' shape, finite at the origin; at rest there where the spec
    linearises it."""
    system = spec.system
    if not isinstance(system, PythonSystem) or system.function is None:
        return []
    from scpo_spec.systems.user_code import PythonPlant, UserCodeError
    plant = PythonPlant(system.function.value, len(system.states), len(system.inputs), base_dir)
    try:
        plant.load()
    except UserCodeError as err:
        return [Diagnostic(message=err.message, span=system.function.span, hint=err.hint)]
    return _linearisation_point(spec, plant)


def _linearisation_point(spec: Spec, plant) -> list[Diagnostic]:
    """What `check` does for declared plants (language/check.py), for the author's: a declared
    `equilibrium` must be a fixed point, x⁺ = x* (said at the block, with the residual); without
    one, backup lqr, lyapunov(backup) and spectral_radius need x = 0, u = 0 to be one; the plant
    must be differentiable there, and the LQR's Riccati equation have a stabilising solution."""
    uses, declared = linearisation_uses(spec), spec.system.equilibrium
    if not uses and not declared:
        return []
    import numpy as np
    import torch
    from scpo_spec.dtype import DTYPE
    from scpo_spec.language.dynamics import EQUILIBRIUM_HINT, off_equilibrium
    from scpo_spec.systems.dynamics import LinearisationError, PythonFunctionPlant
    from scpo_spec.systems.user_code import PlantFailure
    n, m = plant.n, plant.m
    x_star, u_star = (np.asarray(v, dtype=np.float64) for v in spec.equilibrium_point())
    with torch.no_grad():
        moved_to = plant(torch.as_tensor(x_star, dtype=DTYPE)[None],
                         torch.as_tensor(u_star, dtype=DTYPE)[None])[0].numpy()
    if declared:
        message = off_equilibrium(moved_to - x_star, False, x_star)
        if message is not None:
            first, last = declared[0].span, declared[-1].span
            return [Diagnostic(message=message, span=first.to(last) if first and last else
                               spec.system.span, hint=EQUILIBRIUM_HINT)]
        if not uses:
            return []
    else:
        moved = not_an_equilibrium(moved_to, False, uses)
        if moved:
            return [Diagnostic(message=message, span=span, hint=OPERATING_POINT_HINT)
                    for message, span in moved]
    dynamics = PythonFunctionPlant(plant)
    dynamics.x_star, dynamics.u_star = x_star, u_star  # linearised at (x*, u*)
    try:
        A, B = dynamics.linearisation()
    except LinearisationError as err:
        return [Diagnostic(message=str(err), span=spec.system.function.span)]
    except PlantFailure as err:  # raised under autograd only
        return [Diagnostic(message=f"the plant '{plant.name}' {err.what} when differentiated at "
                                   "the origin (x = 0, u = 0)", span=spec.system.function.span)]
    backup = spec.backup
    if isinstance(backup, LqrBackup):
        problem = riccati_problem(A, B, backup.Q.array().reshape(n, n),
                                  backup.R.array().reshape(m, m))
        if problem is not None:
            return [Diagnostic(message=problem[0], span=backup.span, hint=problem[1])]
    return []


def _torch_files(spec: Spec, base_dir: Path) -> list[Diagnostic]:
    """`backup torch` / `policy torch`: a TorchScript archive whose forward maps a (4, n)
    float64 batch to (4, m) finite float64 (and, for a policy, a plain MLP)."""
    if getattr(spec.backup, "kind", None) != "torch" and getattr(spec.policy, "kind", None) \
            != "torch":
        return []
    from scpo_spec.policies.torch_file import check_files
    return check_files(spec, base_dir)


def _onnx_files(spec: Spec, base_dir: Path) -> list[Diagnostic]:
    """`backup onnx` / `policy onnx`: a readable graph of supported operators whose input and
    output sizes are the spec's (its `observe` list, or its states; its inputs)."""
    if getattr(spec.backup, "kind", None) != "onnx" and getattr(spec.policy, "kind", None) \
            != "onnx":
        return []
    from scpo_spec.policies.onnx_graph import check_files
    return check_files(spec, base_dir)


def _python_policy(spec: Spec, base_dir: Path) -> list[Diagnostic]:
    """`policy python "module:factory"`: importable, returns an nn.Module mapping (B, n) states
    to (B, m) float64 inputs, and evaluable for several candidates at once (torch.func.vmap)."""
    factory = spec.policy.factory if isinstance(spec.policy, PythonPolicy) else None
    if factory is None or spec.system is None:
        return []
    from scpo_spec.policies.python_module import PythonPolicyError, load_python_module
    observe = spec.policy.observe  # the network sees the observation (default x − x*)
    inputs = len(observe) if observe is not None else len(spec.system.states)
    try:
        load_python_module(factory.value, inputs, len(spec.system.inputs), base_dir)
    except PythonPolicyError as err:
        return [Diagnostic(message=err.message, span=factory.span, hint=err.hint)]
    return []


def import_plant(dynamics) -> None:
    """A `system python` plant imported and probed now rather than at its first step (where
    `make_dynamics` leaves it): a trusted run's plant must run while only the bytes the run
    recorded may (`plan.code.expecting`), not later, outside that check."""
    from scpo_spec.systems.dynamics import PythonFunctionPlant
    if isinstance(dynamics, PythonFunctionPlant):
        dynamics.load()


def cuda_missing() -> str | None:
    """Why `device cuda` cannot run here (None when it can)."""
    import torch
    if not torch.cuda.is_available():
        return (f"this machine has no usable CUDA GPU (torch {torch.__version__}: "
                "torch.cuda.is_available() is False)")
    return None


def set_device(spec: Spec, device: str, refuse: Callable[[str], None]) -> None:
    """`scpo train --device cpu|cuda`: the spec's `train { device }` replaced for this run
    (`refuse(message)` for an unknown device or cuda without a GPU)."""
    from scpo_spec.language.model import Ident
    if device not in ("cpu", "cuda"):
        refuse(f"--device {device}: expected cpu or cuda")
        return
    why = cuda_missing() if device == "cuda" else None
    if why is not None:
        refuse(f"--device cuda, but {why}")
        return
    spec.train.device = Ident(name=device)


def _device(spec: Spec, base_dir: Path) -> list[Diagnostic]:
    """`train { device cuda }`: a CUDA GPU that torch can use."""
    device = getattr(spec.train, "device", None)
    if device is None or device.name != "cuda":
        return []
    why = cuda_missing()
    if why is None:
        return []
    return [Diagnostic(message=f"`device cuda`, but {why}", span=device.span,
                       hint="write `device cpu` (the default), or train on a machine with a "
                            "CUDA GPU and a CUDA build of torch")]


CHECKS: list[Callable[[Spec, Path], list[Diagnostic]]] = [_python_system, _python_policy,
                                                          _torch_files, _onnx_files, _device]


def check_code(spec: Spec, base_dir: Path) -> list[Diagnostic]:
    """Every diagnostic of every code check, in order."""
    return [d for check in CHECKS for d in check(spec, base_dir)]
