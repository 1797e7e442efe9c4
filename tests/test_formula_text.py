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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
