"""The typing of formulas and signal expressions (numbers or conditions, sizes, what they
read), each function's call by its shape rule in language/functions.py, and the time windows
(a part of `Checker`, language/check.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language.diagnostics import one_of
from scpo_spec.language.evaluate import BUILTIN_CONSTANTS, EvalError, evaluate
from scpo_spec.language.functions import BY_NAME as FUNCTIONS, SIGNAL_FUNCTIONS


@dataclass
class Ty:
    """The type of a formula or signal expression, as far as the checks need it."""

    kind: str            # "bool" or "num"
    size: int = 1        # components per scenario and step
    states: bool = False  # reads state signals (t = 0 … T)
    inputs: bool = False  # reads input signals (t = 0 … T−1)
    policy: bool = False  # depends on the policy at all (signals, spectral_radius, lyapunov)


class FormulaChecks:
    """Formula typing and time windows."""

    # ---------------------------------------------------------------- formulas
    def _check_properties(self) -> None:
        seen: dict[str, M.Property] = {}
        estimate = (self.spec.train is not None and self.spec.train.smoothness is not None
                    and self.spec.train.smoothness.name == "estimate")
        for prop in self.spec.properties:
            name = prop.name.name
            if name in seen:
                first = seen[name].name.span
                self.error(f"duplicate {prop.section} name '{name}'", prop.name.span,
                           f"first used at line {first.line}" if first else None)
            else:
                seen[name] = prop
            formula = self.x(prop.formula)
            ty = self.infer(formula)
            if ty is not None:
                if ty.kind != "bool":
                    self.error(f"{prop.section} '{name}' is not a condition", prop.formula.span,
                               "write a comparison, e.g. `always abs(x) <= 1`")
                elif not ty.policy:
                    self.error(f"{prop.section} '{name}' does not depend on the policy: it "
                               "reads no signal, so its metric can never change",
                               prop.formula.span, "refer to a state or input signal")
                elif self.horizon is not None:
                    self._check_times(E.implicit_always(formula), 0, 0)
            if prop.smoothness is None:
                if not estimate:
                    self.error(f"{prop.section} '{name}' has no smoothness constant",
                               prop.name.span,
                               "add `smoothness L` (the ℓ of ALGORITHM.md), or set "
                               "`train { smoothness estimate }`")
            else:
                self._number(prop.smoothness, "smoothness", positive=True)
            self._number(prop.margin, "margin", nonnegative=True)
            self._number(prop.lipschitz, "lipschitz", positive=True)

    def infer(self, e: E.Node) -> Ty | None:
        """Type of an expression; reports (and returns None for) anything ill-formed."""
        if isinstance(e, E.Num):
            return Ty("num")
        if isinstance(e, E.Name):
            return self._name_type(e)
        if isinstance(e, E.Str):
            self.error("a string cannot appear in a formula", e.span)
            return None
        if isinstance(e, E.Vector):
            tys = [self.infer(i) for i in e.items]
            if any(t is None for t in tys):
                return None
            if any(t.kind != "num" or t.size != 1 for t in tys):
                self.error("vector entries must be numbers or scalar signals", e.span)
                return None
            return _join(tys, "num", size=len(tys))
        if isinstance(e, E.Unary):
            t = self._num(e.arg)
            return t
        if isinstance(e, E.Binary):
            a, b = self._num(e.left), self._num(e.right)
            if a is None or b is None:
                return None
            if e.op == "^" and b.size != 1:
                self.error("the exponent must be a scalar", e.right.span)
                return None
            size = self._broadcast(a, b, e)
            return None if size is None else _join([a, b], "num", size=size)
        if isinstance(e, E.Call):
            return self._call_type(e)
        if isinstance(e, E.Compare):
            a, b = self._num(e.left), self._num(e.right)
            if a is None or b is None:
                return None
            if self._broadcast(a, b, e) is None:
                return None
            for side, ty in ((e.left, a), (e.right, b)):
                if not ty.policy:
                    self._finite_constant(side)
            return _join([a, b], "bool")
        if isinstance(e, E.Within):
            a = self._num(e.arg)
            try:
                bounds = evaluate(e.interval, self.consts)
            except EvalError as err:
                self.error(f"the interval must be constant numbers: {err.message}",
                           err.span or e.interval.span,
                           "write `x in [lo, hi]` with numbers or constants")
                return None
            self._interval(M.Quantity(expr=e.interval, value=bounds.tolist(),
                                      span=e.interval.span), "this constraint",
                           allow_point=False)
            return None if a is None else _join([a], "bool")
        if isinstance(e, (E.And, E.Or, E.Implies, E.Until)):
            tys = [self._bool(a) for a in _operands(e)]
            if isinstance(e, E.Until) and e.window is not None:
                self._check_window(e)
            if any(t is None for t in tys):
                return None
            return _join(tys, "bool")
        if isinstance(e, E.Not):
            return self._bool(e.arg)
        if isinstance(e, E.Temporal):
            body = self._bool(e.body)
            if body is None:
                return None
            if e.window is not None:
                self._check_window(e)
            return body
        return None

    def _finite_constant(self, e: E.Node) -> None:
        """A side of a comparison that reads no signal is a number: an overflow (1e308 * 10,
        exp(800)) would make the bound ±inf, and the metric meaningless."""
        try:
            value = np.asarray(evaluate(e, self.consts), dtype=float)
        except EvalError as err:
            if err.arithmetic:  # numpy's overflow, 0/0, …
                self.error(f"{E.unparse(e)} is not a finite number ({err.message})", e.span,
                           "write the bound as a finite number")
            return  # else not foldable by the numpy evaluator: compile folds it
        except (TypeError, ValueError):
            return
        if not np.all(np.isfinite(value)):
            self.error(f"{E.unparse(e)} is not a finite number ({value.tolist()})", e.span,
                       "write the bound as a finite number")

    def _num(self, e: E.Node) -> Ty | None:
        t = self.infer(e)
        if t is not None and t.kind != "num":
            self.error("expected a value here, got a condition", e.span,
                       "conditions combine with `and`/`or`, values with + - * /")
            return None
        return t

    def _bool(self, e: E.Node) -> Ty | None:
        t = self.infer(e)
        if t is not None and t.kind != "bool":
            self.error("expected a condition here, got a value", e.span,
                       "compare it: `… <= bound`")
            return None
        return t

    def _broadcast(self, a: Ty, b: Ty, e: E.Node) -> int | None:
        if a.size == b.size or a.size == 1 or b.size == 1:
            return max(a.size, b.size)
        self.error(f"cannot combine a vector of {a.size} with a vector of {b.size}", e.span)
        return None

    def _name_type(self, e: E.Name) -> Ty | None:
        if e.id in self.states:
            return Ty("num", states=True, policy=True)
        if e.id in self.inputs:
            return Ty("num", inputs=True, policy=True)
        if e.id in self.parameters:
            return Ty("num")
        if e.id in self.disturbances:
            return Ty("num", inputs=True)
        if e.id in self.lets:  # only in a cycle (elsewhere lets are expanded): said there
            return None
        if e.id == "state":
            return Ty("num", size=max(self.n, 1), states=True, policy=True)
        if e.id == "input":
            return Ty("num", size=max(self.m, 1), inputs=True, policy=True)
        if e.id == "spectral_radius":
            if self.spec.system is not None and not self._linearisable():
                self.error(f"spectral_radius cannot be evaluated for a '{self.spec.system.kind}' "
                           "system: it needs dynamics linearisable at the origin "
                           "(linear, pendulum, discrete, ode or python)", e.span)
                return None
            return Ty("num", policy=True)
        if e.id in self.consts or e.id in BUILTIN_CONSTANTS:
            value = np.asarray(self.consts.get(e.id, BUILTIN_CONSTANTS.get(e.id)))
            if value.ndim > 1:
                self.error(f"constant '{e.id}' is a matrix; use it inside quad(P, …)", e.span)
                return None
            return Ty("num", size=1 if value.ndim == 0 else value.shape[0])
        if self.spec.system is None:  # signals unknown (no system, or one that failed): no guess
            return Ty("num", policy=True)
        if f"const {e.id}" in self.unbuilt:  # a constant whose own error was reported
            return None
        if e.id == "backup":
            self.error("'backup' names a controller, not a value", e.span,
                       "use lyapunov(backup) for its Lyapunov function")
            return None
        known = [*self.states, *self.inputs, *self.consts, *self.lets, *self.parameters,
                 *self.disturbances, "state", "input", "spectral_radius",
                 *FORMULA_KEYWORDS]  # `alway abs(p) <= 1` reads as a name: did you mean always?
        self.unknown(f"unknown name '{e.id}'", e.span, e.id, known,
                     f"signals are {one_of([*self.states, *self.inputs])}" if self.states
                     else None, code="unknown-name")
        return None

    def _call_type(self, e: E.Call) -> Ty | None:
        f, args = e.func, e.args
        fn = FUNCTIONS.get(f)
        if fn is None or not fn.in_formulas:
            self.unknown(f"unknown function '{f}'", e.span, f, SIGNAL_FUNCTIONS,
                         f"functions are {one_of(SIGNAL_FUNCTIONS)}", code="unknown-function")
            return None
        if fn.shape == "quad":
            if len(args) != 2:
                self.error("quad takes a matrix and a vector: quad(P, state)", e.span)
                return None
            v = self._num(args[1])
            try:
                P = evaluate(args[0], self.consts)
            except EvalError as err:
                self.error(f"the matrix of quad must be constant: {err.message}",
                           err.span or args[0].span)
                return None
            if v is None:
                return None
            if P.ndim == 0 and v.size == 1:
                return _join([v], "num")
            if self.spec.system is None:  # signal sizes unknown: no size to compare with
                return _join([v], "num")
            if P.ndim != 2 or P.shape != (v.size, v.size):
                shape = "a number" if P.ndim == 0 else "×".join(map(str, P.shape))
                self.error(f"quad needs a {v.size}×{v.size} matrix for a vector of {v.size}, "
                           f"got {shape}", args[0].span)
                return None
            return _join([v], "num")
        if fn.shape == "lyapunov":
            if len(args) != 1:
                self.error("lyapunov takes one argument: lyapunov(backup)", e.span)
                return None
            (arg,) = args
            if isinstance(arg, E.Name) and arg.id == "backup":
                if self.spec.backup is None and "backup" in self.unbuilt:
                    return None  # written, but its kind was wrong: reported there
                if self.spec.backup is None:
                    self.error("lyapunov(backup) needs a backup section", arg.span,
                               "add `backup lqr { Q = … R = … }`")
                    return None
                if not isinstance(self.spec.backup, M.LqrBackup):
                    self.error("lyapunov(backup) needs an lqr backup (its Riccati P is V)",
                               arg.span, "use `backup lqr { … }`, or lyapunov(P) with a matrix")
                    return None
                return Ty("num", states=True, policy=True)
            try:
                P = evaluate(arg, self.consts)
            except EvalError as err:
                self.error(f"lyapunov takes `backup` or a constant matrix: {err.message}",
                           err.span or arg.span)
                return None
            if P.ndim != 2 or P.shape != (self.n, self.n):
                self.error(f"lyapunov's matrix must be {self.n}×{self.n}", arg.span,
                           self._dims_hint())
                return None
            lowest = float(np.min(np.linalg.eigvalsh((P + P.T) / 2))) if np.all(
                np.isfinite(P)) else math.nan
            if not lowest >= 0:
                self.error(f"lyapunov's matrix is not positive semidefinite (its symmetric "
                           f"part has the eigenvalue {lowest:.6g}): V(x) = xᵀPx is negative "
                           "for some states, where V(x_t)/V(x₀) means nothing", arg.span,
                           "a Lyapunov function is positive away from the origin: use "
                           "lyapunov(backup) or a positive definite P")
                return None
            return Ty("num", states=True, policy=True)
        tys = [self._num(a) for a in args]
        if any(t is None for t in tys):
            return None
        if fn.shape == "reduce":
            if not tys:
                self.error(f"{f} needs at least one argument", e.span)
                return None
            if len(tys) == 1:
                return _join(tys, "num", size=1)
            size = tys[0].size
            for t in tys[1:]:
                s = self._broadcast(Ty("num", size=size), t, e)
                if s is None:
                    return None
                size = s
            return _join(tys, "num", size=size)
        if fn.shape == "elementwise" and fn.arity != 1:
            if len(tys) != fn.arity:
                self.error(f"{f} takes {fn.arity} arguments: {fn.usage}", e.span)
                return None
            size = tys[0].size
            for t in tys[1:]:
                size = self._broadcast(Ty("num", size=size), t, e)
                if size is None:
                    return None
            return _join(tys, "num", size=size)
        if len(tys) != 1:
            self.error(f"{f} takes exactly one argument", e.span)
            return None
        return _join(tys, "num", size=1 if fn.shape == "norm" else tys[0].size)

    def _check_window(self, e: E.Temporal | E.Until) -> tuple[int, int] | None:
        """The window's bounds (whole, ≥ 0, in order); None after reporting what is wrong."""
        bounds = []
        for b in (e.window.start, e.window.end):
            try:
                v = float(evaluate(b, self.consts))
            except EvalError as err:
                self.error(f"window bounds must be constant: {err.message}", err.span or b.span)
                return None
            except TypeError:
                self.error("window bounds must be numbers", b.span)
                return None
            if v != int(v) or v < 0:
                self.error(f"window bounds are step numbers (whole, ≥ 0), got {v:g}", b.span)
                return None
            bounds.append(int(v))
        a, b = bounds
        if a > b:
            self.error(f"reversed window [{a}:{b}]", e.window.span,
                       "the first step comes first; both ends are included")
            return None
        return a, b

    # ---------------------------------------------------------------- time bases and windows
    def _last(self, e: E.Node) -> int | None:
        return E.last_step(e, self.states, [*self.inputs, *self.disturbances], self.horizon)

    def _check_times(self, e: E.Node, lo: int, hi: int,
                     reader: str = "an enclosing window") -> None:
        """Report every window that holds no sample at a step t ∈ [lo, hi] where `e` is read
        (t = 0 for the whole formula; an enclosing window widens the range)."""
        if isinstance(e, (E.And, E.Or, E.Implies)):
            for a in _operands(e):
                self._check_times(a, lo, hi, reader)
        elif isinstance(e, E.Not):
            self._check_times(e.arg, lo, hi, reader)
        elif isinstance(e, E.Temporal) and e.op == "final":
            pushed = E.push_final(e)
            if pushed is not e:
                self._check_times(pushed, lo, hi, reader)
            else:
                last = self._last(e.body)
                self._check_times(e.body, last or 0, last or 0, "`at final`")
        elif isinstance(e, (E.Temporal, E.Until)):
            a, b = (0, None)
            if e.window is not None:
                bounds = self._window_bounds(e.window)
                if bounds is None:
                    return
                a, b = bounds
            last = self._last(e)
            if last is None:  # an untimed operand (`at final …`): its windows are read where
                for part in (e.left, e.right) if isinstance(e, E.Until) else (e.body,):
                    self._check_times(part, lo, hi, reader)  # it says, so look inside it
                return
            if hi + a > last:
                self._empty_window(e, a, b, hi, last, reader)
                return
            end = last if b is None else min(hi + b, last)
            if isinstance(e, E.Until):
                self._check_times(e.right, lo + a, end)
                if end - 1 >= lo:
                    self._check_times(e.left, lo, end - 1)
            else:
                self._check_times(e.body, lo + a, end)

    def _window_bounds(self, w: E.Window) -> tuple[int, int] | None:
        try:
            a, b = (float(evaluate(x, self.consts)) for x in (w.start, w.end))
        except (EvalError, TypeError):
            return None
        return (int(a), int(b)) if a == int(a) and b == int(b) and 0 <= a <= b else None

    def _empty_window(self, e: E.Temporal | E.Until, a: int, b: int | None, at: int,
                      last: int, reader: str) -> None:
        what = "inputs run" if last < self.horizon else "states run"
        window = f"[{a}:{b}]" if b is not None else f"[{a}:]"
        where = "" if at == 0 else f" at step {at}, where {reader} reads it"
        if at == 0:
            hint = (f"a window is cut at the last step but must reach it: start it at step "
                    f"{last} at the latest")
        elif reader == "`at final`":
            hint = "at the last step only a window starting at 0 holds a sample"
        else:
            hint = f"end the enclosing window by step {last - a} (or start this one earlier)"
        self.error(f"window {window} holds no sample{where} ({what} to step {last} for horizon "
                   f"{self.horizon})", e.window.span if e.window is not None else e.span, hint)


def _join(tys: list[Ty], kind: str, size: int = 1) -> Ty:
    return Ty(kind, size=size, states=any(t.states for t in tys),
              inputs=any(t.inputs for t in tys), policy=any(t.policy for t in tys))



FORMULA_KEYWORDS = ("always", "eventually", "and", "or", "in", "at", "final", "not", "until")


def _operands(e: E.Node) -> list[E.Node]:
    """The formula operands of a Boolean connective or of `until`."""
    return list(e.args) if isinstance(e, (E.And, E.Or)) else [e.left, e.right]
