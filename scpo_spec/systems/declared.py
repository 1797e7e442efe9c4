"""`system discrete` and `system ode`: the declared equations compiled once into one batched
float64 torch map x⁺ = F(x, u), states (..., n) and inputs (..., m) → (..., n) for any leading
batch shape (candidates × scenarios): one closure per equation, each a few torch calls over the
whole batch — no Python per scenario.

A spec's `parameter`s and `disturbance`s are the map's third argument w (..., p + d), parameters
first, in declaration order: F(x, u, w), w broadcast against x like u (the evaluator passes
(1, S, p + d) per step: the same draws for every candidate).  Called without w, F uses the middle
of each range (the nominal plant: where it is linearised and its operating point checked).  An
ODE holds w over the control period, as it holds u.

An ODE ẋ = f(x, u) is integrated over the control period dt with the input held, in `substeps`
steps of h = dt / substeps of the integrator (rk4, the default; euler; midpoint).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from scpo_spec.dtype import DTYPE
from scpo_spec.errors import ScpoError
from scpo_spec.language import expr as E
from scpo_spec.language.evaluate import BUILTIN_CONSTANTS, evaluate
from scpo_spec.language.lets import expand
from scpo_spec.language.model import DEFAULTS, DiscreteSystem, OdeSystem, Spec
from scpo_spec.language.words import INTEGRATORS
from scpo_spec.plan.scenarios import uncertain_ranges
from scpo_spec.systems.expressions import Constant, ElementwiseCompiler

StepMap = Callable[..., torch.Tensor]  # (x, u) or (x, u, w) ↦ x⁺


def _norm(*items: torch.Tensor) -> torch.Tensor:
    """‖[a, b, …]‖₂ of scalar entries (torch.linalg.vector_norm over them)."""
    return torch.linalg.vector_norm(torch.stack(torch.broadcast_tensors(*items), -1), dim=-1)


def _quad(P: torch.Tensor, items) -> torch.Tensor:
    """vᵀPv for v = [a, b, …] of scalar entries."""
    v = torch.stack(torch.broadcast_tensors(*items), -1)
    return torch.einsum("...i,ij,...j->...", v, P.to(v.dtype), v)


class DeclaredSystemError(ScpoError):
    """A declared equation that cannot be compiled (what `check` normally catches first)."""


class EquationCompiler(ElementwiseCompiler[torch.Tensor]):
    """A scalar expression of states, inputs, uncertain values and constants → ctx = (x, u,
    memo, w) ↦ tensor (...).

    A sub-expression written more than once across the system's equations (a cart-pole's shared
    `temp` term, `sin(theta)`) is computed once per evaluation: its value is kept in `memo` for
    the rest of that evaluation (common-subexpression elimination by canonical text)."""

    plain = True

    def __init__(self, states: list[str], inputs: list[str], consts: dict,
                 uncertain: list[str] = (), nominal: np.ndarray | None = None):
        self.states, self.inputs, self.consts = states, inputs, consts
        self.uncertain = list(uncertain)  # parameters then disturbances: w's components
        self.nominal = torch.as_tensor(np.zeros(len(self.uncertain)) if nominal is None
                                       else nominal, dtype=DTYPE)
        self._shared: dict[str, int] = {}   # canonical text → memo slot, for repeated ones
        self._compiled: dict[str, Callable] = {}

    def value(self, e: E.Node):
        if not isinstance(e, (E.Binary, E.Unary, E.Call)):
            return super().value(e)
        key = E.unparse(e)
        if key in self._compiled:
            return self._compiled[key]
        inner = super().value(e)
        slot = self._shared.get(key)
        if slot is not None and not isinstance(inner, Constant):
            def shared(ctx, inner=inner, slot=slot):
                memo = ctx[2]
                v = memo[slot]
                if v is None:
                    v = memo[slot] = inner(ctx)
                return v
            inner = shared
        self._compiled[key] = inner
        return inner

    def constant(self, value: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(value, dtype=DTYPE)

    def combine(self, fn, values) -> torch.Tensor:
        return fn(*values)

    def name(self, e: E.Name):
        if e.id in self.states:
            i = self.states.index(e.id)
            return lambda ctx: ctx[0][..., i]
        if e.id in self.inputs:
            j = self.inputs.index(e.id)
            return lambda ctx: ctx[1][..., j]
        if e.id in self.uncertain:
            k = self.uncertain.index(e.id)
            return lambda ctx: ctx[3][..., k]
        value = self.consts.get(e.id, BUILTIN_CONSTANTS.get(e.id))
        if value is None:
            raise self.error(f"unknown name '{e.id}' in an equation (it may use states, inputs, "
                             "parameters, disturbances and constants)", e)
        if np.ndim(value) != 0:
            raise self.error(f"'{e.id}' is not a number; an equation is one number per state",
                             e)
        return Constant(self.constant(np.float64(value)))

    def special(self, e: E.Node):
        if isinstance(e, E.Call) and len(e.args) == 1 and isinstance(e.args[0], E.Vector):
            items = [self.value(x) for x in e.args[0].items]  # over a vector's entries
            if e.func in ("min", "max"):
                out = items[0]
                for item in items[1:]:
                    out = self.apply(torch.minimum if e.func == "min" else torch.maximum,
                                     [out, item])
                return out
            if e.func == "norm":
                return self.apply(_norm, items)
        if isinstance(e, E.Call) and e.func == "quad" and len(e.args) == 2 \
                and isinstance(e.args[1], E.Vector):
            P = torch.as_tensor(np.atleast_2d(evaluate(e.args[0], self.consts)), dtype=DTYPE)
            return self.apply(lambda *v: _quad(P, v), [self.value(x) for x in e.args[1].items])
        if isinstance(e, E.Call) and e.func in ("min", "max") and len(e.args) == 1:
            return self.value(e.args[0])  # of one number: the number
        if isinstance(e, E.Call) and e.func == "norm" and len(e.args) == 1:
            return self.apply(torch.abs, [self.value(e.args[0])])
        return super().special(e)

    def error(self, message: str, e: E.Node) -> Exception:
        where = f"{e.span}: " if e.span is not None else ""
        return DeclaredSystemError(where + message)

    def equations(self, eqs: list, what: str) -> StepMap:
        """One closure per state, in state order: (x, u) ↦ (..., n)."""
        by_state = {eq.state.name: eq for eq in eqs}
        missing = [s for s in self.states if s not in by_state]
        if missing or len(by_state) != len(eqs) or len(eqs) != len(self.states):
            raise DeclaredSystemError(
                f"a declared system needs exactly one `{what}` equation per state "
                f"({', '.join(self.states)})" + (f"; missing: {', '.join(missing)}"
                                                 if missing else ""))
        counts: dict[str, int] = {}
        for eq in eqs:
            for node in E.walk(eq.expr):
                if isinstance(node, (E.Binary, E.Unary, E.Call)):
                    key = E.unparse(node)
                    counts[key] = counts.get(key, 0) + 1
        self._shared = {k: i for i, k in enumerate(k for k, c in counts.items() if c > 1)}
        self._compiled = {}
        parts = [self.value(by_state[s].expr) for s in self.states]
        slots = len(self._shared)
        constant = any(isinstance(p, Constant) for p in parts)

        nominal = self.nominal

        def F(x: torch.Tensor, u: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
            ctx = (x, u, [None] * slots, nominal if w is None else w)
            outs = [p(ctx) for p in parts]
            if not constant:
                try:
                    return torch.stack(outs, dim=-1)
                except RuntimeError:  # x and u of different (broadcastable) batch shapes
                    pass
            # a constant equation (`next p = 0`) still gives one value per batch entry
            return torch.stack(torch.broadcast_tensors(*outs, x[..., 0])[:-1], dim=-1)
        return F


def _integrator(f: StepMap, dt: float, substeps: int, method: str) -> StepMap:
    """x⁺ after `substeps` steps of h = dt / substeps of `method`, u held."""
    h = dt / substeps

    def euler(x, u, w=None):
        return x + h * f(x, u, w)

    def midpoint(x, u, w=None):
        return x + h * f(x + (h / 2) * f(x, u, w), u, w)

    def rk4(x, u, w=None):
        k1 = f(x, u, w)
        k2 = f(x + (h / 2) * k1, u, w)
        k3 = f(x + (h / 2) * k2, u, w)
        k4 = f(x + h * k3, u, w)
        return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    one = {"euler": euler, "midpoint": midpoint, "rk4": rk4}[method]
    if substeps == 1:
        return one

    def step(x, u, w=None):
        for _ in range(substeps):
            x = one(x, u, w)
        return x
    return step


def _expanded(spec: Spec, e: E.Node) -> E.Node:
    """e with the spec's lets replaced by their definitions (language/lets.py)."""
    return expand(e, spec)


def _expanded_equations(spec: Spec, eqs: list) -> list:
    """The equations with the spec's lets expanded (a copy each; the model is not changed)."""
    return [eq.model_copy(update={"expr": _expanded(spec, eq.expr)}) for eq in eqs]


def compile_observation(spec: Spec, exprs: list) -> Callable[..., torch.Tensor]:
    """A controller's `observe = [e₁, …, e_p]` as one batched map: states (…, n) → (…, p)
    (expressions of states, constants and parameters, lets expanded), compiled once.  Its
    second argument is the uncertain values w (…, p + d) as the plant's step takes them (the
    scenario's parameters); without it, their nominal values.  `reads_uncertain` says whether
    it reads any."""
    consts = {c.name: c.value.value for c in spec.consts}
    names, nominal = uncertain_nominal(spec)
    compiler = EquationCompiler([s.name for s in spec.system.states], [], consts, names, nominal)
    expanded = [_expanded(spec, e) for e in exprs]
    parts = [compiler.value(e) for e in expanded]
    centre = compiler.nominal

    def observe(x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        ctx = (x, None, [], centre if w is None else w)
        outs = [p(ctx) for p in parts]
        return torch.stack(torch.broadcast_tensors(*outs, x[..., 0])[:-1], dim=-1)
    observe.reads_uncertain = any(n.id in names for e in expanded for n in E.names(e))
    return observe


def uncertain_nominal(spec: Spec) -> tuple[list[str], np.ndarray]:
    """w's component names (parameters, then disturbances) and the middle of each range."""
    names, mids = [], []
    for section in ("parameter", "disturbance"):
        got, lo, hi = uncertain_ranges(spec, section)
        names += got
        mids += list((lo + hi) / 2)
    return names, np.array(mids, dtype=np.float64)


def compile_declared(spec: Spec) -> StepMap:
    """The one-step map of a `system discrete` or `system ode`."""
    system = spec.system
    consts = {c.name: c.value.value for c in spec.consts}
    names, nominal = uncertain_nominal(spec)
    compiler = EquationCompiler([s.name for s in system.states], [s.name for s in system.inputs],
                                consts, names, nominal)
    if isinstance(system, DiscreteSystem):
        return compiler.equations(_expanded_equations(spec, system.next), "next")
    if not isinstance(system, OdeSystem):
        raise TypeError(f"not a declared system: {system.kind}")
    method = (system.integrator.name if system.integrator is not None
              else DEFAULTS[("system ode", "integrator")])
    if method not in INTEGRATORS:
        raise DeclaredSystemError(f"unknown integrator '{method}' (one of {', '.join(INTEGRATORS)})")
    substeps = int(system.substeps) if system.substeps is not None else \
        DEFAULTS[("system ode", "substeps")]
    if system.dt is None or not float(system.dt) > 0 or substeps < 1:
        raise DeclaredSystemError("an ode system needs dt > 0 and substeps ≥ 1")
    return _integrator(compiler.equations(_expanded_equations(spec, system.der), "der"),
                       float(system.dt), substeps, method)
