"""`system python "module:callable"`: the author's own plant, a callable f(x, u) → x⁺ on float64
torch tensors with any leading batch shape.

Importing it runs the author's code, so only `check` and `train` of the author's spec do (the
module is looked for in the spec's folder first, then on the Python path); `PythonPlant` imports
lazily, on its first step or linearisation, so building a run's model never does.  Every way the
callable can be wrong is a `UserCodeError` naming the module and attribute, found by `load` on a
small probe batch rather than deep inside a rollout.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from scpo_spec.dtype import DTYPE
from scpo_spec.errors import ScpoError
from scpo_spec.language import code
from scpo_spec.language.code import one_line
from scpo_spec.language.diagnostics import did_you_mean

PROBE_BATCH = (2, 3)  # the leading shape of the check-time call


class UserCodeError(ScpoError):
    """The callable a spec names cannot be imported, called, or gives the wrong thing."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message + (f" ({hint})" if hint else ""))
        self.message, self.hint = message, hint


def split_name(name: str) -> tuple[str, str]:
    """'package.module:callable' → ('package.module', 'callable')."""
    module, sep, attr = name.partition(":")
    if not sep or not module.strip() or not attr.strip() or ":" in attr:
        raise UserCodeError(f"'{name}' is not of the form \"module:callable\"",
                            'e.g. "my_package.plant:dynamics"')
    return module.strip(), attr.strip()


def import_module(module: str, base_dir: Path | None) -> ModuleType:
    """Import `module`, looking in `base_dir` (the spec's folder) first."""
    try:
        return code.import_module(module, base_dir)
    except code.CodeMismatch:
        raise
    except code.CodeError as err:
        raise UserCodeError(str(err)) from None


def load_callable(name: str, base_dir: Path | None = None) -> tuple[Callable, ModuleType]:
    """The callable `module:attr` names, and its module."""
    module_name, attr = split_name(name)
    module = import_module(module_name, base_dir)
    if not hasattr(module, attr):
        public = [k for k, v in vars(module).items()
                  if not k.startswith("_") and callable(v) and not isinstance(v, ModuleType)]
        raise UserCodeError(f"module '{module_name}' has no attribute '{attr}'",
                            did_you_mean(attr, public))
    fn = getattr(module, attr)
    if not callable(fn):
        raise UserCodeError(f"'{name}' is a {type(fn).__name__}, not a callable f(x, u)")
    return fn, module


def _check_output(name: str, y, shape: tuple[int, ...], n: int, called: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise UserCodeError(f"'{name}' returned a {type(y).__name__}, not a torch tensor, "
                            f"when {called}", "return x⁺ as a float64 torch tensor")
    if y.dtype != DTYPE:
        raise UserCodeError(f"'{name}' returned a tensor of {y.dtype}, not torch.float64, "
                            f"when {called}", "compute in the dtype of x and u")
    if tuple(y.shape) != shape:
        raise UserCodeError(f"'{name}' returned shape {tuple(y.shape)} when {called}; "
                            f"expected {shape} (the states' leading shape, then n = {n})")
    return y


def probe(fn: Callable, name: str, n: int, m: int) -> None:
    """Call `fn` on a random batch (2, 3, ·) and at the origin (1, ·): a tensor of float64 with
    the states' shape, finite at the origin — or a UserCodeError saying what is wrong."""
    gen = torch.Generator().manual_seed(0)
    calls = [(torch.randn(*PROBE_BATCH, n, generator=gen, dtype=DTYPE),
              torch.randn(*PROBE_BATCH, m, generator=gen, dtype=DTYPE),
              f"called on states {(*PROBE_BATCH, n)} and inputs {(*PROBE_BATCH, m)}"),
             (torch.zeros(1, n, dtype=DTYPE), torch.zeros(1, m, dtype=DTYPE),
              "called at the origin (x = 0, u = 0)")]
    for x, u, called in calls:
        try:
            with torch.no_grad():
                y = fn(x, u)
        except Exception as err:  # noqa: BLE001 - the author's code raised
            raise UserCodeError(f"'{name}' raised {one_line(err)} when {called}") from None
        y = _check_output(name, y, tuple(x.shape), n, called)
    if not torch.isfinite(y).all():
        raise UserCodeError(f"'{name}' is not finite at the origin (x = 0, u = 0): x⁺ = "
                            f"{y[0].tolist()}")


class PythonPlant:
    """The one-step map of a `system python`: imported and probed on first use, then called
    directly (no checks per step)."""

    def __init__(self, name: str, n: int, m: int, base_dir: Path | None = None):
        self.name, self.n, self.m, self.base_dir = name, n, m, base_dir
        self._fn: Callable | None = None
        self._module: ModuleType | None = None

    def load(self) -> Callable:
        if self._fn is None:
            fn, module = load_callable(self.name, self.base_dir)
            probe(fn, self.name, self.n, self.m)
            self._fn, self._module = fn, module
        return self._fn

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        fn = self._fn if self._fn is not None else self.load()
        return fn(x, u)
