"""The compiled metric tree in words (`scpo compile --emit metrics`, the report's traceability).

It follows compile/signals.py step for step: the formula after `implicit_always`, read at t = 0,
each temporal operator binding a step variable (t, t2, t3, …) over its window cut at the
operand's last step, atoms read at the innermost variable (written `@τ` unless it is `t`)."""

from __future__ import annotations

from scpo_spec.language import expr as E
from scpo_spec.language.evaluate import evaluate
from scpo_spec.language.expr import format_number, unparse


def describe_metric(formula: E.Node, consts: dict, states: list[str], inputs: list[str],
                    horizon: int, smooth_tau: float | None) -> str:
    """g = MAX over scenarios of the formula's violation (−robustness) at t = 0."""
    mx = "max" if smooth_tau is None else f"smax[τ={format_number(smooth_tau)}]"
    ctx = _Context(consts, states, inputs, horizon)
    return f"{mx}_{{scenarios}} {ctx.render(E.implicit_always(formula), '0', mx, 0)}"


class _Context:
    def __init__(self, consts, states, inputs, horizon):
        self.consts, self.states, self.inputs, self.horizon = consts, states, inputs, horizon

    def last(self, e) -> int | None:
        return E.last_step(e, self.states, self.inputs, self.horizon)

    def window(self, w: E.Window | None) -> tuple[int, int | None]:
        if w is None:
            return 0, None
        return int(evaluate(w.start, self.consts)), int(evaluate(w.end, self.consts))

    def render(self, e: E.Node, at: str, mx: str, depth: int) -> str:
        """The violation of `e` read at step `at` (a number or a variable); `mx` names the max
        (smooth at positive polarity, hard under `not` and left of `->`); `depth` counts the
        step variables bound so far."""
        def sub(x, at=at, mx=mx, depth=depth):
            return self.render(x, at, mx, depth)

        if isinstance(e, E.Compare):
            upper = e.op in ("<=", "<")
            a, b = (e.left, e.right) if upper else (e.right, e.left)
            return _at(f"({_minus(a, b)})", at, e, self)
        if isinstance(e, E.Within):
            lo, hi = (E.Num(value=float(v)) for v in evaluate(e.interval, self.consts))
            return _at(f"max({_minus(lo, e.arg)}, {_minus(e.arg, hi)})", at, e, self)
        if isinstance(e, (E.And, E.Or)):
            op = mx if isinstance(e, E.And) else "min"
            return f"{op}(" + ", ".join(sub(a) for a in e.args) + ")"
        if isinstance(e, E.Not):
            return f"−{sub(e.arg, mx='max')}"
        if isinstance(e, E.Implies):
            return f"min(−{sub(e.left, mx='max')}, {sub(e.right)})"
        if isinstance(e, E.Until):
            return self.until(e, at, mx, depth)
        if isinstance(e, E.Temporal):
            if e.op == "final":
                pushed = E.push_final(e)
                if pushed is not e:
                    return sub(pushed)
                last = self.last(e.body)
                if last is None:
                    return sub(e.body)
                if isinstance(e.body, (E.Compare, E.Within)):
                    return f"[at t={last}] {sub(e.body, at='t')}"
                return sub(e.body, at=str(last))
            last = self.last(e.body)
            if last is None:
                return sub(e.body)
            a, b = self.window(e.window)
            var = _var(depth + 1)
            op = mx if e.op == "always" else "min"
            inner = sub(e.body, at=var, depth=depth + 1)
            return f"{op}_{{{var}∈{_range(at, a, b, last)}}} {inner}"
        return unparse(e)

    def until(self, e: E.Until, at: str, mx: str, depth: int) -> str:
        last = self.last(e)
        a, b = self.window(e.window)
        if last is None:  # constants: ψ at t' = t, or both φ and ψ
            psi = self.render(e.right, at, mx, depth)
            return psi if a == 0 else f"{mx}({psi}, {self.render(e.left, at, mx, depth)})"
        var, inner = _var(depth + 1), _var(depth + 2)
        psi = self.render(e.right, var, mx, depth + 1)
        phi = self.render(e.left, inner, mx, depth + 2)
        return (f"min_{{{var}∈{_range(at, a, b, last)}}} {mx}({psi}, "
                f"{mx}_{{{inner}∈[{at}:{var}−1]}} {phi})")


def _minus(a: E.Node, b: E.Node) -> str:
    """`a − b` with the display minus of the violation, each side parenthesised as the
    expression language would need (`c − (x - y)`), a negative right side too (`x − (-3)`)."""
    right = E.operand(b, "-", right=True)
    if right.startswith("-"):
        right = f"({right})"
    return f"{E.operand(a, '-', right=False)} − {right}"


def _var(depth: int) -> str:
    return "t" if depth == 1 else f"t{depth}"


def _range(at: str, a: int, b: int | None, last: int) -> str:
    """The window [at+a : at+b] cut at `last`, numeric where `at` is."""
    if at.isdigit():
        lo = int(at) + a
        return f"[{lo}:{last if b is None else min(int(at) + b, last)}]"
    lo = at if a == 0 else f"{at}+{a}"
    return f"[{lo}:{last if b is None else f'min({at}+{b}, {last})'}]"


def _at(text: str, at: str, e: E.Node, ctx: _Context) -> str:
    """An atom read at step `at` (shown unless `t`, or the atom does not depend on the step)."""
    return text if at == "t" or ctx.last(e) is None else f"{text}@{at}"
