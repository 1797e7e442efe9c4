"""The expression/formula tree shared by numbers, signal expressions and safety formulas.

One tree type for all three keeps the grammar LALR-simple; what an expression may be in a given
place (a number, a signal expression, a formula) is enforced by the checks, with locations.
"""

from __future__ import annotations

import math
from typing import Annotated, Iterator, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from scpo_spec.language.source import Span


class Node(BaseModel):
    """Base of every model node: keeps its source span (left out of dumps and comparisons)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    span: Span | None = Field(default=None, exclude=True, repr=False)


class Num(Node):
    node: Literal["num"] = "num"
    value: float


class Name(Node):
    node: Literal["name"] = "name"
    id: str


class Str(Node):
    node: Literal["str"] = "str"
    value: str


class Call(Node):
    node: Literal["call"] = "call"
    func: str
    args: list[Expr]


class Vector(Node):
    node: Literal["vector"] = "vector"
    items: list[Expr]


class Unary(Node):
    node: Literal["unary"] = "unary"
    op: Literal["-"]
    arg: Expr


class Binary(Node):
    node: Literal["binary"] = "binary"
    op: Literal["+", "-", "*", "/", "^"]
    left: Expr
    right: Expr


class Compare(Node):
    """An atom `left op right`; its violation per scenario and step is left − right (or reverse)."""

    node: Literal["compare"] = "compare"
    op: Literal["<=", ">=", "<", ">"]
    left: Expr
    right: Expr


class Within(Node):
    """`arg in [lo, hi]`: violation max(lo − arg, arg − hi)."""

    node: Literal["within"] = "within"
    arg: Expr
    interval: Expr


class And(Node):
    node: Literal["and"] = "and"
    args: list[Expr]


class Or(Node):
    node: Literal["or"] = "or"
    args: list[Expr]


class Not(Node):
    """`not φ`: robustness −ρ(φ)."""

    node: Literal["not"] = "not"
    arg: Expr


class Implies(Node):
    """`φ -> ψ`: robustness max(−ρ(φ), ρ(ψ)), i.e. `not φ or ψ`."""

    node: Literal["implies"] = "implies"
    left: Expr
    right: Expr


class Window(Node):
    start: Expr
    end: Expr


class Temporal(Node):
    """`always`/`eventually` (optionally over a step window) or `at final`."""

    node: Literal["temporal"] = "temporal"
    op: Literal["always", "eventually", "final"]
    window: Window | None = None
    body: Expr
    postfix: bool = False  # written `φ at final` rather than `at final φ`


class Until(Node):
    """`φ until[a:b] ψ` (no window: [0:∞)): ψ at some t' in the window, φ on every step from t
    up to t' − 1 (the discrete-time definition; rtamt's too)."""

    node: Literal["until"] = "until"
    left: Expr
    right: Expr
    window: Window | None = None


Expr = Annotated[
    Union[Num, Name, Str, Call, Vector, Unary, Binary, Compare, Within, And, Or, Not, Implies,
          Temporal, Until],
    Field(discriminator="node"),
]

for _cls in (Call, Vector, Unary, Binary, Compare, Within, And, Or, Not, Implies, Window,
             Temporal, Until):
    _cls.model_rebuild()

FORMULA_NODES = (Compare, Within, And, Or, Not, Implies, Temporal, Until)
TEMPORAL_NODES = (Temporal, Until)
EXPR_NODES = (Num, Name, Str, Call, Vector, Unary, Binary, *FORMULA_NODES)


def children(e: Node) -> list[Node]:
    if isinstance(e, (Call,)):
        return list(e.args)
    if isinstance(e, Vector):
        return list(e.items)
    if isinstance(e, Unary):
        return [e.arg]
    if isinstance(e, (Binary, Compare, Implies)):
        return [e.left, e.right]
    if isinstance(e, Not):
        return [e.arg]
    if isinstance(e, Until):
        return ([e.window.start, e.window.end] if e.window else []) + [e.left, e.right]
    if isinstance(e, Within):
        return [e.arg, e.interval]
    if isinstance(e, (And, Or)):
        return list(e.args)
    if isinstance(e, Temporal):
        return ([e.window.start, e.window.end] if e.window else []) + [e.body]
    return []


def walk(e: Node) -> Iterator[Node]:
    """Every node of the tree, iteratively (specs may nest deeply; recursion is not safe)."""
    stack = [e]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def names(e: Node) -> Iterator[Name]:
    return (n for n in walk(e) if isinstance(n, Name))


def temporal_free(e: Node) -> bool:
    """No `always`/`eventually`/`at final`/`until` anywhere inside."""
    return not any(isinstance(n, TEMPORAL_NODES) for n in walk(e))


def implicit_always(e: Node) -> Node:
    """The formula a metric evaluates at t = 0: a part with no temporal operator, joined to the
    rest by `and`/`or` only, means every step (`p and eventually q` is `always p and eventually
    q`).  Each conjunct gets its own `always`, so `p and u` still checks x_T for the state atom
    p; a temporal-free `or` is wrapped whole (`always (p or u)`).  Under `not`/`->` nothing is
    added: there the formula is plain STL at t = 0."""
    if isinstance(e, And):
        return And(args=[implicit_always(a) for a in e.args], span=e.span)
    if temporal_free(e):
        return Temporal(op="always", body=e, span=e.span)
    if isinstance(e, Or):
        return Or(args=[implicit_always(a) for a in e.args], span=e.span)
    return e


def push_final(e: Temporal) -> Node:
    """`at final` over a Boolean connective reads each operand at its own last step (x_T for a
    state atom, u_{T−1} for an input atom): `at final (p and u)` is
    `at final p and at final u`."""
    body = e.body

    def final(b: Node) -> Node:
        return push_final(Temporal(op="final", body=b, span=e.span))
    if isinstance(body, (And, Or)):
        return type(body)(args=[final(a) for a in body.args], span=body.span)
    if isinstance(body, Not):
        return Not(arg=final(body.arg), span=body.span)
    if isinstance(body, Implies):
        return Implies(left=final(body.left), right=final(body.right), span=body.span)
    return e


def last_step(e: Node, states: list[str], inputs: list[str], horizon: int) -> int | None:
    """The last step of a sub-formula's signal: T if it reads states only, T − 1 once it reads an
    input (the common steps, as for `position + force`); None if it does not depend on the
    step.  Temporal operators keep their operand's steps; `at final` is a constant."""
    if isinstance(e, Temporal):
        return None if e.op == "final" else last_step(e.body, states, inputs, horizon)
    if isinstance(e, Not):
        return last_step(e.arg, states, inputs, horizon)
    if isinstance(e, (And, Or, Implies, Until)):
        operands = e.args if isinstance(e, (And, Or)) else [e.left, e.right]
        lasts = [s for s in (last_step(a, states, inputs, horizon) for a in operands)
                 if s is not None]
        return min(lasts) if lasts else None
    reads_inputs = reads_states = False
    for n in walk(e):
        if isinstance(n, Name):
            reads_inputs |= n.id in inputs or n.id == "input"
            reads_states |= n.id in states or n.id == "state"
        reads_states |= isinstance(n, Call) and n.func == "lyapunov"
    if reads_inputs:
        return horizon - 1
    return horizon if reads_states else None


# ---------------------------------------------------------------------------------------------
# Unparsing: the canonical text of an expression (used by `fmt` and the YAML writer).

_PREC = {"implies": 1, "or": 2, "and": 3, "until": 4, "temporal": 5, "compare": 6, "+": 7,
         "-": 7, "*": 8, "/": 8, "unary": 9, "^": 10, "atom": 11}


def format_number(value: float) -> str:
    """Shortest text that reads back to the same float; integers without a decimal point."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e16:
        return str(int(value))
    text = _short_exponent(repr(float(value)))
    if "e" not in text and 0 < abs(value) < 1:  # 1e-3 rather than 0.001: what specs write
        scientific = _short_exponent(f"{value:.16e}")
        mantissa, exponent = scientific.split("e")
        for digits in range(1, 18):  # the shortest mantissa that reads back exactly
            candidate = f"{float(mantissa):.{digits - 1}f}".rstrip("0").rstrip(".") + "e" + exponent
            if float(candidate) == value:
                if len(candidate) < len(text):
                    text = candidate
                break
    return text


def _short_exponent(text: str) -> str:
    """`1e-06` → `1e-6`: the exponent without padding zeros or a plus sign."""
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    sign = "-" if exponent.startswith("-") else ""
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def _prec(e: Node) -> int:
    if isinstance(e, Implies):
        return _PREC["implies"]
    if isinstance(e, Until):
        return _PREC["until"]
    if isinstance(e, Not):
        return _PREC["temporal"]
    if isinstance(e, Or):
        return _PREC["or"]
    if isinstance(e, And):
        return _PREC["and"]
    if isinstance(e, Temporal):
        return _PREC["temporal"]
    if isinstance(e, (Compare, Within)):
        return _PREC["compare"]
    if isinstance(e, Binary):
        return _PREC[e.op]
    if isinstance(e, Unary):
        return _PREC["unary"]
    if isinstance(e, Num) and e.value < 0:
        return _PREC["unary"]
    return _PREC["atom"]


def operand(e: Node, op: str, right: bool) -> str:
    """The text of `e` as the left or right operand of the arithmetic operator `op`,
    parenthesised where the grammar would otherwise read it differently (`a - (b - c)`,
    `a / (b * c)`, `(-a)^b`, `(a + b) * c`)."""
    if op == "^":  # right-associative; the base must be an atom
        minimum = _PREC["unary"] if right else _PREC["atom"]
    else:
        minimum = _PREC[op] + 1 if right else _PREC[op]
    text = unparse(e)
    return f"({text})" if _prec(e) < minimum else text


def unparse(e: Node) -> str:
    """Canonical text of an expression; parsing it gives back the same tree."""

    def wrap(child: Node, minimum: int) -> str:
        text = unparse(child)
        return f"({text})" if _prec(child) < minimum else text

    if isinstance(e, Num):
        return format_number(e.value)
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Str):
        escaped = (e.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                   .replace("\t", "\\t"))
        return f'"{escaped}"'
    if isinstance(e, Call):
        return f"{e.func}({', '.join(unparse(a) for a in e.args)})"
    if isinstance(e, Vector):
        return f"[{', '.join(unparse(a) for a in e.items)}]"
    if isinstance(e, Unary):
        return f"-{wrap(e.arg, _PREC['unary'])}"
    if isinstance(e, Binary):
        left, right = operand(e.left, e.op, False), operand(e.right, e.op, True)
        return f"{left}^{right}" if e.op == "^" else f"{left} {e.op} {right}"
    if isinstance(e, Compare):
        return f"{wrap(e.left, _PREC['+'])} {e.op} {wrap(e.right, _PREC['+'])}"
    if isinstance(e, Within):
        return f"{wrap(e.arg, _PREC['+'])} in {wrap(e.interval, _PREC['+'])}"
    if isinstance(e, And):
        return " and ".join(wrap(a, _PREC["until"]) for a in e.args)
    if isinstance(e, Or):
        return " or ".join(wrap(a, _PREC["and"]) for a in e.args)
    if isinstance(e, Implies):  # right-associative: a -> b -> c is a -> (b -> c)
        return f"{wrap(e.left, _PREC['or'])} -> {wrap(e.right, _PREC['implies'])}"
    if isinstance(e, Not):
        return f"not {wrap(e.arg, _PREC['temporal'])}"
    if isinstance(e, Until):  # not associative: both operands are prefix-level
        return (f"{wrap(e.left, _PREC['temporal'])} until{_window(e.window)} "
                f"{wrap(e.right, _PREC['temporal'])}")
    if isinstance(e, Temporal):
        if e.op == "final":
            if e.postfix:
                return f"{wrap(e.body, _PREC['compare'])} at final"
            return f"at final {wrap(e.body, _PREC['temporal'])}"
        return f"{e.op}{_window(e.window)} {wrap(e.body, _PREC['temporal'])}"
    raise TypeError(f"cannot unparse {type(e).__name__}")


def _window(w: Window | None) -> str:
    if w is None:
        return ""
    bound = (lambda b: f"({unparse(b)})" if _prec(b) < _PREC["+"] else unparse(b))
    return f"[{bound(w.start)}:{bound(w.end)}]"
