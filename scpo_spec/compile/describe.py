"""The compiled metric tree in words (`scpo compile --emit metrics`, the report's traceability)."""

from __future__ import annotations

from scpo_spec.language import expr as E
from scpo_spec.language.evaluate import evaluate
from scpo_spec.language.expr import format_number, unparse


def describe_metric(formula: E.Node, consts: dict, states: list[str], inputs: list[str],
                    horizon: int, smooth_tau: float | None) -> str:
    """g = MAX over scenarios of the formula's robustness; steps named explicitly."""
    mx = "max" if smooth_tau is None else f"smax[τ={format_number(smooth_tau)}]"
    body = _bool(formula, consts, states, inputs, horizon, mx)
    if _timed(formula, states, inputs) and not isinstance(formula, E.Temporal):
        body = f"{mx}_{{t∈{_steps(formula, states, inputs, horizon)}}} {body}"
    return f"{mx}_{{scenarios}} {body}"


def _reads_inputs(e, inputs) -> bool:
    return any(isinstance(n, E.Name) and (n.id in inputs or n.id == "input") for n in E.walk(e))


def _timed(e, states, inputs) -> bool:
    return any(isinstance(n, E.Name) and (n.id in states or n.id in inputs
                                          or n.id in ("state", "input"))
               for n in E.walk(e)) or any(isinstance(n, E.Call) and n.func == "lyapunov"
                                          for n in E.walk(e))


def _steps(e, states, inputs, horizon) -> str:
    last = horizon - 1 if _reads_inputs(e, inputs) else horizon
    return f"[0:{last}]"


def _bool(e, consts, states, inputs, horizon, mx) -> str:
    if isinstance(e, E.Compare):
        a, b = unparse(e.left), unparse(e.right)
        return f"({a} − {b})" if e.op in ("<=", "<") else f"({b} − {a})"
    if isinstance(e, E.Within):
        lo, hi = (format_number(float(v)) for v in evaluate(e.interval, consts))
        a = unparse(e.arg)
        return f"max({lo} − {a}, {a} − {hi})"
    if isinstance(e, (E.And, E.Or)):
        op = mx if isinstance(e, E.And) else "min"
        return f"{op}(" + ", ".join(_bool(a, consts, states, inputs, horizon, mx)
                                     for a in e.args) + ")"
    if isinstance(e, E.Temporal):
        inner = _bool(e.body, consts, states, inputs, horizon, mx)
        if not _timed(e.body, states, inputs):
            return inner
        last = horizon - 1 if _reads_inputs(e.body, inputs) else horizon
        if e.op == "final":
            return f"[at t={last}] {inner}"
        a, b = (0, last)
        if e.window is not None:
            a, b = (int(evaluate(e.window.start, consts)), int(evaluate(e.window.end, consts)))
        op = mx if e.op == "always" else "min"
        return f"{op}_{{t∈[{a}:{b}]}} {inner}"
    return unparse(e)
