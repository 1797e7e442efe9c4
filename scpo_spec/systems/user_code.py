"""`system python "module:callable"`: the author's own plant, a callable f(x, u) → x⁺ on float64
torch tensors with any leading batch shape.

Importing it runs the author's code, so only `check` and `train` of the author's spec do (the
module is looked for in the spec's folder first, then on the Python path); `PythonPlant` imports
lazily, on its first step or linearisation, so building a run's model never does.  Every way the
callable can be wrong is a `UserCodeError` naming the module and attribute, found by `load` on a
small probe batch rather than deep inside a rollout.  What only a rollout finds (the callable
raising on some state, or turning finite states into NaN on the initial policy's rollout) is a
`PlantFailure` at the spec's `system python` label, naming the step, the scenario and its x₀.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from scpo_spec.dtype import DTYPE
from scpo_spec.errors import ScpoError
from scpo_spec.language.diagnostics import did_you_mean
from scpo_spec.usercode import loader
from scpo_spec.usercode.loader import one_line

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
        return loader.import_module(module, base_dir)
    except loader.CodeMismatch:
        raise
    except loader.CodeError as err:
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


class PlantFailure(UserCodeError):
    """The author's plant raised during a rollout, or left the finite numbers on the initial
    policy's: located at the spec's `system python` label, naming the module, the step and the
    scenario.  Exit 2, like every error in the spec's own parts."""

    exit_code = 2

    def __init__(self, plant: PythonPlant, what: str, index: tuple[int, ...] | None,
                 lead: tuple[int, ...], x: list[float] | None, u: list[float] | None):
        """`index` into the batch's leading shape `lead` (candidates, scenarios) of the state
        x and input u it failed on (None: the batch as a whole)."""
        self.plant, self.what, self.index, self.lead, self.x, self.u = \
            plant, what, index, lead, x, u
        self.step: int | None = None
        self.x0: list[float] | None = None
        self.scenario_word = "scenario"
        super().__init__(self.describe())

    def located(self, step: int | None, x0: torch.Tensor, training: bool) -> PlantFailure:
        """The failure in a rollout (at `step`, where known) from the initial states `x0`
        (S, n): the spec's scenarios (`training`) or others (the holdout's)."""
        self.step = step
        if self.index is not None and x0.dim() == 2 and self.index[-1] < x0.shape[0]:
            self.x0 = x0[self.index[-1]].tolist()
        self.scenario_word = "scenario" if training else "holdout scenario"
        return self._said(self.describe())

    def kept(self, what_is_left: str) -> PlantFailure:
        """The failure, with what is left of the run it stopped."""
        return self._said(f"{self.describe()}. {what_is_left}")

    def _said(self, message: str) -> PlantFailure:
        self.message = message
        self.args = (message,)
        return self

    def describe(self) -> str:
        where = f"{self.plant.span}: " if self.plant.span is not None else ""
        at = f" at step {self.step}" if self.step is not None else ""
        if self.index is not None:
            at += f" of {self.scenario_word} {self.index[-1]}"
            if len(self.lead) > 1 and self.lead[0] > 1:
                at += f" (candidate policy {self.index[0]} of {self.lead[0]})"
            if self.x0 is not None:
                at += f", which starts at x₀ = {_numbers(self.x0)}"
        state = "" if self.x is None else f" (x = {_numbers(self.x)}, u = {_numbers(self.u)})"
        return f"{where}the plant '{self.plant.name}' {self.what}{at}{state}"


def _numbers(values: list[float] | None) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values or []) + "]"


MAX_ROWS_TRIED = 10_000  # a failing batch is retried row by row to name the scenario


class PythonPlant:
    """The one-step map of a `system python`: imported and probed on first use, then called
    directly (no checks per step; an exception it raises becomes a PlantFailure naming the
    first state of the batch that raises alone)."""

    def __init__(self, name: str, n: int, m: int, base_dir: Path | None = None,
                 span=None):
        self.name, self.n, self.m, self.base_dir, self.span = name, n, m, base_dir, span
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
        try:
            return fn(x, u)
        except Exception as err:  # noqa: BLE001 - the author's code raised
            raise self._raised(fn, x, u, err) from None

    def _raised(self, fn: Callable, x: torch.Tensor, u: torch.Tensor,
                err: Exception) -> PlantFailure:
        """The failure, at the first state of the batch that raises on its own (at none where
        none does: then the batch as a whole made it raise)."""
        lead = torch.broadcast_shapes(x.shape[:-1], u.shape[:-1])
        xs = x.detach().expand(*lead, self.n).reshape(-1, self.n)
        us = u.detach().expand(*lead, self.m).reshape(-1, self.m)
        for i in range(min(xs.shape[0], MAX_ROWS_TRIED)):
            try:
                with torch.no_grad():
                    fn(xs[i:i + 1], us[i:i + 1])
            except Exception as alone:  # noqa: BLE001 - the author's code raised
                index = tuple(int(k) for k in torch.unravel_index(torch.tensor(i), lead))
                return PlantFailure(self, f"raised {one_line(alone)}", index, tuple(lead),
                                    xs[i].tolist(), us[i].tolist())
        return PlantFailure(self, f"raised {one_line(err)}", None, tuple(lead), None, None)

    def non_finite(self, X: torch.Tensor, U: torch.Tensor) -> PlantFailure | None:
        """In a rollout's states X (..., T+1, n) and inputs U (..., T, m): the first step at
        which the plant turned finite x and u into a non-finite x⁺ (None where it never did)."""
        ok_x = torch.isfinite(X).all(-1)
        bad = ok_x[..., :-1] & torch.isfinite(U).all(-1) & ~ok_x[..., 1:]  # (..., T)
        if not bad.any():
            return None
        hits = bad.nonzero()
        first = hits[torch.argmin(hits[:, -1])].tolist()  # the earliest step, then scenario
        *index, t = first
        x, u, y = X[(*index, t)], U[(*index, t)], X[(*index, t + 1)]
        failure = PlantFailure(self, f"returned a non-finite x⁺ = {_numbers(y.tolist())}",
                               tuple(index), tuple(X.shape[:-2]), x.tolist(), u.tolist())
        failure.step = t
        return failure
