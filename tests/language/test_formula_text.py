"""The printed formula means what is computed (`scpo compile --emit metrics`, the report, hover).

The compiled text of a metric is re-parsed (its display minus `−` read as `-`) and evaluated
with the numpy evaluator on random states; it must give the compiled metric's value.  The
canonical text of an expression (`fmt`, the YAML writer, the atoms of the compiled text) must
parse back to an expression of the same value."""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scpo_spec.cli import app
from scpo_spec.compile.describe import describe_metric
from scpo_spec.compile.signals import ExpressionCompiler, Reducer, Trace
from scpo_spec.language import expr as E
from scpo_spec.language.evaluate import EvalError, evaluate
from scpo_spec.language.load import check_text
from scpo_spec.language.scpo_reader import parse_expression
from scpo_spec.language.source import Source
from tests.helpers import VALID, replace

STATES, INPUTS = ["x", "y"], ["u"]
CONSTS = {"c": 1.5, "k": -0.75}


def tree(text: str) -> E.Node:
    t, diags = parse_expression(text, Source(path="f", text=text))
    assert not diags, (text, [d.headline() for d in diags])
    return t


# ---- random expressions and formulas ----
def _num(v: float) -> E.Num:
    return E.Num(value=v)


leaves = st.one_of(
    st.sampled_from([E.Name(id=n) for n in (*STATES, *INPUTS, *CONSTS)]),
    st.sampled_from([-2.0, -0.5, 0.0, 0.25, 1.0, 3.0]).map(_num),
)


def _extend(sub):
    return st.one_of(
        st.builds(lambda op, a, b: E.Binary(op=op, left=a, right=b),
                  st.sampled_from(["+", "-", "*", "/"]), sub, sub),
        st.builds(lambda a: E.Unary(op="-", arg=a), sub),
        st.builds(lambda a, p: E.Binary(op="^", left=a, right=p), sub,
                  st.sampled_from([_num(2.0), _num(3.0), E.Unary(op="-", arg=_num(1.0))])),
        st.builds(lambda a: E.Call(func="abs", args=[a]), sub),
    )


expressions = st.recursive(leaves, _extend, max_leaves=8)


def _within(a, lo, hi):
    return E.Within(arg=a, interval=E.Vector(items=[lo, hi]))


bounds = st.sampled_from([_num(-1.0), E.Name(id="k"), _num(0.5), E.Name(id="c")])
atoms = st.one_of(
    st.builds(lambda op, a, b: E.Compare(op=op, left=a, right=b),
              st.sampled_from(["<=", ">=", "<", ">"]), expressions, expressions),
    st.builds(_within, expressions, bounds, bounds),
)
formulas = st.recursive(atoms, lambda sub: st.one_of(
    st.builds(lambda a, b: E.And(args=[a, b]), sub, sub),
    st.builds(lambda a, b: E.Or(args=[a, b]), sub, sub),
    st.builds(lambda a: E.Not(arg=a), sub),
    st.builds(lambda a, b: E.Implies(left=a, right=b), sub, sub),
), max_leaves=4)
samples = st.floats(-2, 2, allow_nan=False).map(lambda v: round(v, 3))


def compiled_metric(f: E.Node, X: np.ndarray, U: np.ndarray) -> float:
    """g of `f` on one trace: the metric compiler's value (torch)."""
    c = ExpressionCompiler(STATES, INPUTS, CONSTS, None, Reducer(None))
    trace = Trace(torch.tensor(X)[None, None], torch.tensor(U)[None, None])
    return c.formula(f)(trace).t.item()


def printed_metric(text: str, X: np.ndarray, U: np.ndarray) -> float:
    """g as the printed text says: `max_{scenarios} max_{t∈[0:L]} body`, the body re-parsed
    (display minus read as `-`) and evaluated by the numpy evaluator at every step."""
    head = re.match(r"max_\{scenarios\} (?:max_\{t∈\[0:(\d+)\]\} )?", text)
    assert head, text
    body = tree(text[head.end():].replace("−", "-"))
    steps = range(int(head.group(1)) + 1) if head.group(1) else [0]
    values = []
    for t in steps:
        signals = {"x": X[t, 0], "y": X[t, 1], "u": U[min(t, len(U) - 1), 0]}
        values.append(float(evaluate(body, {**CONSTS, **signals})))
    return max(values)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f=formulas, data=st.data())
def test_printed_compiled_formula_computes_the_metric(f, data):
    T = data.draw(st.integers(1, 4), label="T")
    X = np.array(data.draw(st.lists(st.tuples(samples, samples), min_size=T + 1,
                                    max_size=T + 1), label="x, y"), dtype=np.float64)
    U = np.array(data.draw(st.lists(samples, min_size=T, max_size=T), label="u"),
                 dtype=np.float64).reshape(T, 1)
    formula = E.Temporal(op="always", body=f)  # one step variable t over the whole formula
    text = describe_metric(formula, CONSTS, STATES, INPUTS, T, None)
    note(text)
    try:
        printed = printed_metric(text, X, U)
    except EvalError:  # a division by zero, 0^-1: the numpy evaluator refuses, torch gives inf
        assume(False)
    ours = compiled_metric(formula, X, U)
    note(f"printed {printed}, compiled {ours}")
    assume(math.isfinite(ours))
    assert math.isclose(printed, ours, rel_tol=1e-12, abs_tol=1e-12)


class PrintedMetric:
    """A reader of the whole compiled text, temporal operators included: a recursive descent over
    what describe prints, each atom `(a − b)` / `max(lo − a, a − hi)` re-parsed by the
    language's own parser and evaluated by the numpy evaluator at its step (`@τ`, else t)."""

    def __init__(self, text: str, X: np.ndarray, U: np.ndarray):
        self.s, self.i, self.X, self.U = text, 0, X, U

    def value(self) -> float:
        self.expect("max_{scenarios} ")
        f = self.body()
        assert self.i == len(self.s), self.s[self.i:]
        return f({})

    # ---- reading ----
    def expect(self, word: str) -> None:
        assert self.s.startswith(word, self.i), (self.s, self.i, word)
        self.i += len(word)

    def group(self, opening: int) -> str:
        """The text from `opening` (an open parenthesis) to its match; i after the match."""
        depth, j = 0, opening
        while True:
            depth += {"(": 1, ")": -1}.get(self.s[j], 0)
            if depth == 0:
                self.i = j + 1
                return self.s[opening + 1:j]
            j += 1

    def until(self, stop: str) -> str:
        j = self.s.index(stop, self.i)
        text, self.i = self.s[self.i:j], j + len(stop)
        return text

    def body(self):
        s, i = self.s, self.i
        if s.startswith("−", i):
            self.i += 1
            f = self.body()
            return lambda env: -f(env)
        if s.startswith("[at t=", i):
            self.i += len("[at t=")
            step = int(self.until("] "))
            f = self.body()
            return lambda env: f({**env, "t": step})
        for op in ("max_{", "min_{"):
            if s.startswith(op, i):
                self.i += len(op)
                var = self.until("∈[")
                lo, hi = self.until(":"), self.until("]} ")
                f, reduce = self.body(), max if op == "max_{" else min
                empty = -math.inf if reduce is max else math.inf

                def big(env, var=var, lo=lo, hi=hi, f=f, reduce=reduce, empty=empty):
                    a, b = (int(eval(x.replace("−", "-"), {"min": min}, env)) for x in (lo, hi))
                    return reduce((f({**env, var: k}) for k in range(a, b + 1)), default=empty)
                return big
        for op in ("max(", "min("):
            if s.startswith(op, i) and (s[i + 4].isdigit() or s[i + 4] == "-"):  # within
                inner = self.group(i + 3)
                return self.atom(f"max({inner})")
            if s.startswith(op, i):
                self.i += 4
                parts = [self.body()]
                while s.startswith(", ", self.i):
                    self.i += 2
                    parts.append(self.body())
                self.expect(")")
                reduce = max if op == "max(" else min
                return lambda env: reduce(p(env) for p in parts)
        assert s[i] == "(", s[i:]
        return self.atom(self.group(i))

    def atom(self, text: str):
        """An atom's text, read at its `@τ` (t where none is written)."""
        at = "t"
        if self.s.startswith("@", self.i):
            self.i += 1
            j = self.i
            while j < len(self.s) and self.s[j].isalnum():
                j += 1
            at, self.i = self.s[self.i:j], j
        expr = tree(text.replace("−", "-"))

        def read(env):
            t = int(at) if at.isdigit() else env.get(at, 0)  # a constant atom has no step
            signals = {"x": self.X[t, 0], "y": self.X[t, 1]}
            if t < len(self.U):
                signals["u"] = self.U[t, 0]
            return float(evaluate(expr, {**CONSTS, **signals}))
        return read


windows = st.one_of(st.none(), st.tuples(st.integers(0, 3), st.integers(0, 3)).map(sorted).map(
    lambda ab: E.Window(start=_num(float(ab[0])), end=_num(float(ab[1])))))
state_expressions = st.recursive(
    st.sampled_from([E.Name(id="x"), E.Name(id="y"), E.Name(id="c"), _num(-0.5), _num(2.0)]),
    _extend, max_leaves=5)
state_atoms = st.one_of(
    st.builds(lambda op, a, b: E.Compare(op=op, left=a, right=b),
              st.sampled_from(["<=", ">="]), state_expressions, state_expressions),
    st.builds(_within, state_expressions, bounds, bounds),
)
temporal_formulas = st.recursive(state_atoms, lambda sub: st.one_of(
    st.builds(lambda op, w, b: E.Temporal(op=op, window=w, body=b),
              st.sampled_from(["always", "eventually"]), windows, sub),
    st.builds(lambda b: E.Temporal(op="final", body=b), sub),
    st.builds(lambda a, w, b: E.Until(left=a, right=b, window=w), sub, windows, sub),
    st.builds(lambda a, b: E.And(args=[a, b]), sub, sub),
    st.builds(lambda a, b: E.Or(args=[a, b]), sub, sub),
    st.builds(lambda a: E.Not(arg=a), sub),
    st.builds(lambda a, b: E.Implies(left=a, right=b), sub, sub),
), max_leaves=4)


def accepted_by_check(f: E.Node, horizon: int) -> bool:
    """`scpo check` accepts the formula as a constraint (no empty window, …)."""
    text = E.unparse(f)
    renamed = re.sub(r"\by\b", "velocity", re.sub(r"\bx\b", "position", text))
    spec = replace("horizon 60", f"horizon {horizon}", replace(
        "stability decay: lyapunov(backup) <= 0.8 at final smoothness 50\n", "", replace(
            "always abs(position) <= 2.5", renamed, replace(
                "const dt = 0.1", "const dt = 0.1\nconst c = 1.5\nconst k = -0.75"))))
    return check_text(spec, path="p.scpo").ok


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f=temporal_formulas, data=st.data())
def test_printed_temporal_formula_computes_the_metric(f, data):
    """Windows, `until`, `at final`, nested step variables (`@t2`) and all: the text read back
    gives the metric."""
    T = data.draw(st.integers(1, 5), label="T")
    X = np.array(data.draw(st.lists(st.tuples(samples, samples), min_size=T + 1,
                                    max_size=T + 1), label="x, y"), dtype=np.float64)
    U = np.zeros((T, 1))
    assume(accepted_by_check(f, T))
    text = describe_metric(f, CONSTS, STATES, INPUTS, T, None)
    note(text)
    try:
        printed = PrintedMetric(text, X, U).value()
    except EvalError:
        assume(False)
    ours = compiled_metric(f, X, U)
    note(f"printed {printed}, compiled {ours}")
    assume(math.isfinite(ours))
    assert math.isclose(printed, ours, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=300, deadline=None)
@given(e=expressions)
def test_canonical_text_parses_back_to_the_same_value(e):
    text = E.unparse(e)
    note(text)
    values = dict(CONSTS, x=0.7, y=-1.3, u=0.4)
    try:
        expected = float(evaluate(e, values))
    except EvalError:
        assume(False)
    back = tree(text)
    assert math.isclose(float(evaluate(back, values)), expected, rel_tol=1e-12, abs_tol=1e-12)
    assert E.unparse(tree(E.unparse(back))) == E.unparse(back)  # canonical: a fixed point


def test_operands_are_parenthesised_by_precedence_and_associativity():
    cases = ["a - (b - c)", "a - (b + c)", "a - b - c", "a / (b * c)", "a / b * c",
             "(a + b) * c", "-(a + b)", "(-a)^2", "-a^2", "a^b^c", "(a^b)^c", "a^-b",
             "a - -b", "(a <= 1 or b <= 1) and c <= 1", "not a <= 1 or b <= 1"]
    for text in cases:
        assert E.unparse(tree(text)) == text


# ---- the adaptive cruise control constraint of the report ----
ACC_FORMULA = "always x_lead - x_ego >= D_default + T_gap * v_ego"


def test_acc_gap_is_printed_with_its_parentheses():
    text = describe_metric(tree(ACC_FORMULA), {"D_default": 5.0, "T_gap": 1.5},
                           ["x_ego", "v_ego", "x_lead"], ["a"], 10, None)
    assert text == ("max_{scenarios} max_{t∈[0:10]} "
                    "(D_default + T_gap * v_ego − (x_lead - x_ego))")
    within = describe_metric(tree("always x_lead - x_ego in [-3, -1]"), {},
                             ["x_ego", "v_ego", "x_lead"], ["a"], 10, None)
    assert within == ("max_{scenarios} max_{t∈[0:10]} "
                      "max(-3 − (x_lead - x_ego), x_lead - x_ego − (-1))")


ACC_SPEC = replace("state position, velocity", "state x_ego, v_ego, x_lead", replace(
    "A = [[1, dt], [0, 1]]", "A = [[1, dt, 0], [0, 1, 0], [0, 0, 1]]", replace(
        "B = [[0.5 * dt^2], [dt]]", "B = [[0.5 * dt^2], [dt], [0]]", replace(
            "backup lqr { Q = diag(1, 1)  R = diag(1) }",
            "backup linear { K = [[0, -1, 0]] }", replace(
                "initial velocity in [-0.5, 0.5]",
                "initial v_ego in [0, 1]\n    initial x_lead in [20, 30]", replace(
                    "initial position in [-1, 1]", "initial x_ego in [0, 1]", replace(
                        "stability decay: lyapunov(backup) <= 0.8 at final smoothness 50\n",
                        "", replace(
                            "always abs(position) <= 2.5",
                            ACC_FORMULA, replace(
                                "const dt = 0.1", "const dt = 0.1\nconst D_default = 5\n"
                                "const T_gap = 1.5", replace(
                                    "expert linear { K = [[-8, -1]]  bias = [0.8] }",
                                    "expert linear { K = [[-8, -1, 0]]  bias = [0.8] }",
                                    replace("mean = [0, 0]  std = [1, 1]",
                                            "mean = [0, 0, 25]  std = [1, 1, 1]",
                                            VALID)))))))))))


def test_compile_emit_metrics_prints_the_acc_gap_as_it_means(tmp_path):
    spec = tmp_path / "acc.scpo"
    spec.write_text(ACC_SPEC)
    out = CliRunner().invoke(app, ["compile", str(spec), "--emit", "metrics"])
    assert out.exit_code == 0, out.output
    printed = " ".join(out.output.split())  # the console may wrap long lines
    assert "g = max_{scenarios} max_{t∈[0:60]} (D_default + T_gap * v_ego − (x_lead - x_ego))" \
        in printed, out.output
