"""STL, complete (LANGUAGE-v2.md): nested temporal operators, `until`, `not`, `->`.

Hand-computed traces for each operator (the three formulas that used to mean something else
are regression tests with exact values), every form through parse → check → fmt → YAML →
compile → describe, and a property test against rtamt's discrete-time offline robustness.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from scpo_spec.compile.describe import describe_metric
from scpo_spec.compile.signals import ExpressionCompiler, Reducer, Trace
from scpo_spec.language import expr as E
from scpo_spec.language.format import format_spec
from scpo_spec.language.load import check_text, parse_model
from scpo_spec.language.scpo_reader import parse_expression
from scpo_spec.language.source import Source
from scpo_spec.language.yaml_writer import format_yaml
from tests.helpers import VALID, replace

DT = torch.float64
STATES, INPUTS = ["x", "y"], ["u"]


def tree(text: str) -> E.Node:
    t, diags = parse_expression(text, Source(path="f", text=text))
    assert not diags, [d.headline() for d in diags]
    return t


def g(text: str, x, u=None, y=None, tau: float | None = None) -> float:
    """The violation g = −ρ(t = 0) of `text` on one trace (one candidate, one scenario)."""
    X = torch.tensor(np.stack([x, np.zeros(len(x)) if y is None else y], -1), dtype=DT)
    T = X.shape[0] - 1
    U = torch.tensor(np.zeros(T) if u is None else u, dtype=DT).view(T, 1)
    c = ExpressionCompiler(STATES, INPUTS, {}, None, Reducer(tau))
    v = c.formula(tree(text))(Trace(X[None, None], U[None, None]))
    assert not v.timed and v.t.shape == (1, 1, 1, 1)
    return v.t.item()


GEOM = [0.6 ** t for t in range(6)]  # 1, .6, .36, .216, .1296, .07776 (T = 5)


# ---------------------------------------------------------------------------------------------
# the three formulas of the trust issue

def test_always_eventually_keeps_the_outer_always():
    """Was −0.5 ("safe"): the outer `always` was dropped.  At t = 5 the window [5:6] is cut to
    [5:5], where x = 0.6⁵ < 0.5."""
    assert g("always eventually[0:1] x >= 0.5", GEOM) == pytest.approx(0.5 - 0.6 ** 5, abs=1e-15)


def test_at_final_always_reads_the_last_step_only():
    """Was 0.4 (every step checked): `always` at t = T has the window [T:T]."""
    assert g("at final always x <= 0.5", [0.6, 0.9, 0.4]) == pytest.approx(-0.1, abs=1e-15)
    assert g("always x <= 0.5", [0.6, 0.9, 0.4]) == pytest.approx(0.4, abs=1e-15)


def test_eventually_of_a_mixed_conjunction_needs_the_input():
    """Was −0.3 ("met" at t = T, where the input atom is absent): a conjunction of a state and
    an input atom lives on t = 0 … T−1, so u ≥ 0 throughout means violated, by 1."""
    assert g("eventually (u <= -1 and x <= 0.5)", [1, 1, 0.2], u=[0, 0]) == 1.0


# ---------------------------------------------------------------------------------------------
# each operator on x_t = 0.6^t, t = 0 … 5

CASES = {
    # windows, cut at the last sample
    "eventually[1:2] x <= 0.3": 0.36 - 0.3,
    "always[3:9] x <= 0.2": 0.216 - 0.2,
    "eventually[2:7] x <= 0.1": 0.6 ** 5 - 0.1,
    "always[5:5] x <= 0.1": 0.6 ** 5 - 0.1,
    # nesting: max over t ∈ [0:2] of min over [t+1:t+3]
    "always[0:2] eventually[1:3] x <= 0.2": 0.216 - 0.2,
    # min over t ∈ [0:2] of max(0.3 − x_t, 0.3 − x_{t+1})
    "eventually[0:2] always[0:1] x >= 0.3": 0.3 - 0.6,
    "eventually[0:3] always x <= 0.2": 0.216 - 0.2,     # the suffix from t = 3
    "always eventually x <= 0.2": 0.6 ** 5 - 0.2,       # the suffix from t = 5
    # until: ψ at t' ∈ [t+a, t+b], φ on [t, t'−1]
    "x >= 0.5 until[0:3] x <= 0.3": 0.06,               # t' = 2; φ fails at t = 2
    "x >= 0.5 until x <= 0.3": 0.06,
    "x >= 0.3 until[2:4] x <= 0.2": 0.016,              # t' = 3 with φ on [0:2]
    "x >= 0.65 until[1:1] x <= 0.7": -0.1,              # φ is not needed at t' itself
    "x >= 2 until x >= 0.9": -0.1,                      # t' = t: no φ needed at all
    "always[0:2] (x >= 0.5 until x <= 0.3)": 0.06,
    # not, ->
    "not always x <= 0.5": -0.5,
    "not eventually x <= 0.1": 0.1 - 0.6 ** 5,
    "not not x <= 0.5": 0.5,                            # temporal-free: every step
    "always (x >= 0.5 -> eventually[0:2] x <= 0.3)": 0.06,
    "x >= 0.5 -> x <= 0.3": 0.5,                        # temporal-free: always (…), t = 0
    "x >= 0.5 -> eventually x <= 0.1": 0.6 ** 5 - 0.1,  # plain STL: the antecedent at t = 0
    "x >= 2 -> always x <= 0": -1.0,                    # vacuous: the antecedent is false
    # bare parts joined by and/or mean every step
    "x <= 0.5 and eventually x <= 0.1": 0.5,
    "x <= 0.5 or eventually x <= 0.1": 0.6 ** 5 - 0.1,
    "at final x <= 0.1 and x <= 1": 0.0,
}


@pytest.mark.parametrize("formula", list(CASES))
def test_operator_by_hand(formula):
    assert g(formula, GEOM) == pytest.approx(CASES[formula], abs=1e-12)


def test_until_is_strict_where_rtamt_is():
    """Discrete-time `until` needs φ on [t, t'−1] only (rtamt and LTL); the dense-time
    textbook form with φ on [t, t'] would give +0.05 here."""
    assert g("x >= 0.65 until[1:1] x <= 0.7", GEOM) == pytest.approx(-0.1, abs=1e-15)


def test_mixed_time_base():
    """Atoms on t = 0 … T (states) and 0 … T−1 (inputs); a connective on their common steps; a
    temporal operator keeps its operand's steps; `at final` each atom at its own last step."""
    x, u = [0.0, 0.0, 5.0], [0.0, 3.0]  # T = 2
    assert g("always (x <= 1 and u <= 1)", x, u) == 2.0               # t = 0, 1: x_2 unread
    assert g("always x <= 1 and always u <= 1", x, u) == 4.0          # x_2 read
    assert g("x <= 1 and u <= 1", x, u) == 4.0                        # bare conjuncts: the same
    assert g("x <= 1 or u <= 1", x, u) == -1.0                        # always (x or u), t ≤ 1
    assert g("eventually[1:5] (x <= 1 and u <= 1)", x, u) == 2.0     # cut at t = 1
    assert g("at final (x <= 1 and u <= 1)", x, u) == 4.0             # x_2 and u_1
    assert g("at final (x <= 1 or u <= 1)", x, u) == 2.0
    assert g("at final x + u <= 1", x, u) == 2.0                      # arithmetic: t = 1
    assert g("u <= 1 until x >= 4", x, u) == 4.0                      # on t = 0, 1: ψ never
    assert g("eventually u <= 0 until[0:1] x >= 4", x, u) == 4.0      # ψ needs x at t ≤ 1


def test_untimed_operands():
    """A formula part without signals (here a constant comparison) is the same at every step."""
    c = ExpressionCompiler(STATES, INPUTS, {"k": 2.0}, None, Reducer())
    X = torch.tensor(GEOM, dtype=DT).view(1, 1, 6, 1).expand(1, 1, 6, 2)
    trace = Trace(X, torch.zeros(1, 1, 5, 1, dtype=DT))
    for text, want in [("always (x <= 0.5 or k <= 1)", 0.5), ("k <= 1 until[0:2] x <= 0.5", 0.5),
                       ("k <= 3 until[1:2] k <= 1", 1.0), ("k <= 3 until k <= 1", 1.0),
                       ("k <= 1 until[0:2] k <= 3", -1.0), ("always[2:3] k <= 1", 1.0)]:
        assert c.formula(tree(text))(trace).t.item() == pytest.approx(want), text


# ---------------------------------------------------------------------------------------------
# batching, smooth aggregation, autograd

RNG = np.random.default_rng(3)
XS = torch.tensor(RNG.normal(size=(2, 3, 9, 2)), dtype=DT)   # C = 2, S = 3, T = 8
US = torch.tensor(RNG.normal(size=(2, 3, 8, 1)), dtype=DT)

BATCH_FORMULAS = [
    "always eventually[0:2] x >= -0.5",
    "always[0:3] (x <= 1 until[1:4] y >= 0)",
    "always (x >= 0.5 -> eventually[0:3] y <= 0)",
    "x <= 1 until y >= 1",
    "always[0:4] (x <= 1 until y >= 1)",
    "eventually[0:3] not always[0:2] (x <= 0.5 or u >= 0)",
    "at final always[0:0] x <= 0.5 and eventually (u <= 0 and y <= 0)",
    "not (x >= 1 -> always[1:3] y <= 1)",
]


@pytest.mark.parametrize("formula", BATCH_FORMULAS)
def test_batched_equals_one_by_one(formula):
    """(C, S) traces at once give what each trace gives alone (no mixing across the batch)."""
    c = ExpressionCompiler(STATES, INPUTS, {}, None, Reducer())
    f = c.formula(tree(formula))
    batched = f(Trace(XS, US)).t[..., 0, 0]
    assert batched.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            alone = f(Trace(XS[i:i + 1, j:j + 1], US[i:i + 1, j:j + 1])).t.item()
            assert batched[i, j].item() == alone


@pytest.mark.parametrize("formula", BATCH_FORMULAS)
@pytest.mark.parametrize("tau", [0.01, 0.3])
def test_smooth_is_an_upper_bound_and_differentiable(formula, tau):
    """smooth(τ) ≥ hard on every trace (also through `not` and `->`), with finite gradients."""
    hard = ExpressionCompiler(STATES, INPUTS, {}, None, Reducer()).formula(tree(formula))
    smooth = ExpressionCompiler(STATES, INPUTS, {}, None, Reducer(tau)).formula(tree(formula))
    X, U = XS.clone().requires_grad_(True), US.clone().requires_grad_(True)
    s = smooth(Trace(X, U)).t
    h = hard(Trace(XS, US)).t
    assert torch.all(s >= h - 1e-12), (s - h).min()
    s.sum().backward()
    assert torch.isfinite(X.grad).all() and (U.grad is None or torch.isfinite(U.grad).all())


def test_nan_trace_is_unsafe_through_the_engine():
    """NaN anywhere in a rollout still gives +inf (the evaluator's rule), with nesting too."""
    c = ExpressionCompiler(STATES, INPUTS, {}, None, Reducer())
    X = XS.clone()
    X[0, 1, 4, 0] = float("nan")
    v = c.formula(tree("always eventually[0:2] x >= -0.5"))(Trace(X, US)).t[..., 0, 0]
    assert math.isnan(v[0, 1].item()) and torch.isfinite(v[1]).all()


# ---------------------------------------------------------------------------------------------
# every new form through the language layer

NEW_FORMS = [
    "always eventually[0:1] abs(position) <= 2",
    "at final always abs(position) <= 2",
    "eventually (force <= 1 and abs(position) <= 2)",
    "abs(position) <= 2 until[0:50] norm(state) <= 0.1",
    "abs(position) <= 2 until norm(state) <= 0.1",
    "always (abs(position) >= 1 -> eventually[0:20] abs(position) <= 0.5)",
    "not eventually[0:5] abs(position) >= 2",
    "eventually[0:40] always[0:10] norm(state) <= 0.1",
    "(position <= 1 -> velocity <= 1) -> force <= 1",
    "position <= 1 -> velocity <= 1 -> force <= 1",
    "not (position <= 1 and velocity <= 1) or force <= 1",
    "(position <= 1 until velocity <= 1) until[0:3] force <= 1",
    "always[0:50] (position <= 1 until[2:4] (velocity <= 1 until force <= 1))",
]


def spec_with(formula: str) -> str:
    return replace("constraint position_limit: always abs(position) <= 2.5 smoothness 50",
                   f"constraint probe: {formula} smoothness 50")


@pytest.mark.parametrize("formula", NEW_FORMS)
def test_new_form_checks_formats_converts_and_describes(formula):
    text = spec_with(formula)
    result = check_text(text, path="s.scpo")
    assert result.ok, [d.headline() for d in result.diagnostics]
    spec = result.spec
    # fmt: canonical, idempotent, same model
    once = format_spec(spec)
    again = check_text(once, path="s.scpo")
    assert again.ok and format_spec(again.spec) == once and again.spec.same_as(spec)
    # YAML twin and back
    yaml_text = format_yaml(spec)
    twin = parse_model(yaml_text, path="s.yaml")
    assert twin.ok, [d.headline() for d in twin.diagnostics]
    assert twin.spec.same_as(spec)
    back = parse_model(format_spec(twin.spec), path="s.scpo")
    assert back.ok and back.spec.same_as(spec)
    # describe
    prop = next(p for p in spec.properties if p.name.name == "probe")
    text = describe_metric(prop.formula, {}, ["position", "velocity"], ["force"], 60, None)
    assert text.startswith("max_{scenarios} ") and "None" not in text


def test_precedence_and_canonical_parentheses():
    cases = {
        "not a <= 1 and b <= 1": "And",                    # not > and
        "a <= 1 and b <= 1 -> c <= 1": "Implies",          # and > ->
        "a <= 1 or b <= 1 -> c <= 1 or d <= 1": "Implies",  # or > ->
        "a <= 1 and b <= 1 until c <= 1": "And",           # until > and
        "always a <= 1 until b <= 1": "Until",             # prefix > until
        "not a <= 1 until b <= 1": "Until",
    }
    for text, kind in cases.items():
        assert type(tree(text)).__name__ == kind, text
    assert E.unparse(tree("(a <= 1 -> b <= 1) -> c <= 1")) == "(a <= 1 -> b <= 1) -> c <= 1"
    assert E.unparse(tree("a <= 1 -> (b <= 1 -> c <= 1)")) == "a <= 1 -> b <= 1 -> c <= 1"
    assert E.unparse(tree("not (a <= 1 and b <= 1)")) == "not (a <= 1 and b <= 1)"
    assert E.unparse(tree("always (a <= 1 until b <= 1)")) == "always (a <= 1 until b <= 1)"
    assert E.unparse(tree("(a <= 1 until b <= 1) until[1:2] c <= 1")) == \
        "(a <= 1 until b <= 1) until[1:2] c <= 1"
    assert E.unparse(tree("(a <= 1 or b <= 1) until c <= 1")) == "(a <= 1 or b <= 1) until c <= 1"
    assert E.unparse(tree("x->y")) == "x -> y"


def test_reserved_words():
    """`not` is a keyword wherever a formula may start; `until` only after an operand (like
    `and`), so the checks refuse it as a signal or constant name."""
    _, diags = parse_expression("not <= 1", Source(path="f", text="not <= 1"))
    assert [d.message for d in diags] == ["unexpected '<='"]
    assert E.unparse(tree("nothing <= 1 and untill <= 1")) == "nothing <= 1 and untill <= 1"
    text = replace("state position, velocity", "state position, until", VALID)
    assert "'until' is a reserved word and cannot name a signal" in [
        d.message for d in check_text(text, path="r.scpo").diagnostics]


def test_describe_names_the_steps():
    def d(text, horizon=5):
        return describe_metric(tree(text), {}, STATES, INPUTS, horizon, None)
    assert d("always x <= 1") == "max_{scenarios} max_{t∈[0:5]} (x − 1)"
    assert d("always eventually[0:1] x >= 0.5") == \
        "max_{scenarios} max_{t∈[0:5]} min_{t2∈[t:min(t+1, 5)]} (0.5 − x)@t2"
    assert d("at final always x <= 0.5") == "max_{scenarios} max_{t∈[5:5]} (x − 0.5)"
    assert d("eventually (u <= -1 and x <= 0.5)") == \
        "max_{scenarios} min_{t∈[0:4]} max((u − (-1)), (x − 0.5))"
    assert d("x <= 1 until[1:3] y <= 0") == \
        "max_{scenarios} min_{t∈[1:3]} max((y − 0), max_{t2∈[0:t−1]} (x − 1)@t2)"
    assert d("x >= 1 -> eventually x <= 0") == \
        "max_{scenarios} min(−(1 − x)@0, min_{t∈[0:5]} (x − 0))"
    assert describe_metric(tree("not always x <= 1"), {}, STATES, INPUTS, 5, 0.1) == \
        "smax[τ=0.1]_{scenarios} −max_{t∈[0:5]} (x − 1)"


# ---------------------------------------------------------------------------------------------
# property test: the compiled metric is rtamt's discrete-time offline robustness, negated

rtamt = pytest.importorskip("rtamt")

ATOMS = [("x", "<="), ("x", ">="), ("y", "<="), ("x - y", "<="), ("x + y", ">="),
         ("abs(x)", "<=")]
CONSTANTS = [-1.0, -0.5, 0.0, 0.25, 1.0]


def _atom(form, c):
    (lhs, op) = form
    return tree(f"{lhs} {op} {E.format_number(c)}")


atoms = st.builds(_atom, st.sampled_from(ATOMS), st.sampled_from(CONSTANTS))
bounds = st.tuples(st.integers(0, 4), st.integers(0, 4)).map(sorted).map(
    lambda ab: E.Window(start=E.Num(value=ab[0]), end=E.Num(value=ab[1])))
windows = bounds | st.none()


def formulas(depth: int):
    """Random formulas nested at most `depth` operators deep."""
    if depth == 0:
        return atoms
    sub = formulas(depth - 1)
    return st.one_of(
        atoms,
        st.builds(lambda op, w, b: E.Temporal(op=op, window=w, body=b),
                  st.sampled_from(["always", "eventually"]), windows, sub),
        st.builds(lambda a, w, b: E.Until(left=a, right=b, window=w), sub, windows, sub),
        st.builds(lambda a: E.Not(arg=a), sub),
        st.builds(lambda a, b: E.And(args=[a, b]), sub, sub),
        st.builds(lambda a, b: E.Or(args=[a, b]), sub, sub),
        st.builds(lambda a, b: E.Implies(left=a, right=b), sub, sub),
    )


def to_rtamt(e: E.Node) -> str:
    if isinstance(e, E.Compare):
        return f"({E.unparse(e.left)} {e.op} {E.unparse(e.right)})"
    if isinstance(e, (E.And, E.Or)):
        word = " and " if isinstance(e, E.And) else " or "
        return "(" + word.join(to_rtamt(a) for a in e.args) + ")"
    if isinstance(e, E.Not):
        return f"(not {to_rtamt(e.arg)})"
    if isinstance(e, E.Implies):
        return f"({to_rtamt(e.left)} implies {to_rtamt(e.right)})"
    window = "" if e.window is None else \
        f"[{int(e.window.start.value)}:{int(e.window.end.value)}]"
    if isinstance(e, E.Until):
        return f"({to_rtamt(e.left)} until{window} {to_rtamt(e.right)})"
    assert isinstance(e, E.Temporal) and e.op != "final"
    return f"({e.op}{window}{to_rtamt(e.body)})"


def rtamt_robustness(formula: str, x, y) -> float:
    spec = rtamt.StlDiscreteTimeOfflineSpecification()
    spec.declare_var("x", "float")
    spec.declare_var("y", "float")
    spec.spec = formula
    spec.parse()
    out = spec.evaluate({"time": list(range(len(x))), "x": list(x), "y": list(y)})
    assert out[0][0] == 0
    return out[0][1]


def accepted_by_check(formula: str, horizon: int) -> bool:
    """`scpo check` of a spec whose only constraint is `formula` (x, y named position,
    velocity there): no empty window."""
    text = replace("horizon 60", f"horizon {horizon}", VALID)
    text = replace("stability decay: lyapunov(backup) <= 0.8 at final smoothness 50\n", "", text)
    renamed = re.sub(r"\by\b", "velocity", re.sub(r"\bx\b", "position", formula))
    text = replace("always abs(position) <= 2.5", renamed, text)
    result = check_text(text, path="p.scpo")
    return result.ok


samples = st.floats(-2, 2, allow_nan=False).map(lambda v: round(v, 3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f=formulas(3), data=st.data())
def test_matches_rtamt(f, data):
    """g = −ρ_rtamt(t = 0) for every formula `scpo check` accepts (hard aggregation, one
    candidate, one scenario).  rtamt, like us, cuts windows at the end of the trace; its
    empty windows (always: +∞, eventually: −∞) never occur in an accepted formula."""
    T = data.draw(st.integers(1, 7), label="T")
    x = data.draw(st.lists(samples, min_size=T + 1, max_size=T + 1), label="x")
    y = data.draw(st.lists(samples, min_size=T + 1, max_size=T + 1), label="y")
    text = E.unparse(f)
    note(text)
    assume(accepted_by_check(text, T))
    ours = g(text, x, y=y)
    # the metric evaluates the formula after implicit_always (bare parts mean every step)
    theirs = rtamt_robustness(to_rtamt(E.implicit_always(tree(text))), x, y)
    note(f"ours {ours}, rtamt {theirs}")
    assert math.isfinite(ours)
    assert ours == pytest.approx(-theirs, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# vectors of signals, windows far past the horizon (found by a review against the contract)

X6, Y6, U5 = [0.5, -1.0, 2.0, 0.25, 1.5, -0.5], [1.0, 2.0, -3.0, 0.0, 0.5, 0.25], \
    [0.3, -2.5, 1.0, 0.0, 4.0]


def test_a_vector_of_signals_is_its_entries_on_their_common_steps():
    """`[x, u]` mixes a state (steps 0…T) and an input (0…T−1): it lives on 0…T−1.  It used to
    pass `check` and then fail to compile ("unknown constant 'x'")."""
    x, y, u = np.array(X6), np.array(Y6), np.array(U5)
    assert g("always norm([x, u]) <= 3", X6, U5, Y6) == pytest.approx(
        max(np.hypot(x[:5], u)) - 3, abs=1e-15)
    assert g("always [x, u] <= [3, 1]", X6, U5, Y6) == pytest.approx(
        max(max(x[:5] - 3), max(u - 1)), abs=1e-15)
    assert g("always max([x, y]) <= 1", X6, U5, Y6) == pytest.approx(
        max(np.maximum(x, y)) - 1, abs=1e-15)  # two states: all T + 1 steps
    assert g("always quad(diag(1, 2), [x, u]) <= 5", X6, U5, Y6) == pytest.approx(
        max(x[:5] ** 2 + 2 * u ** 2) - 5, abs=1e-14)
    assert g("always norm([x, 2]) <= 3", X6, U5, Y6) == pytest.approx(
        max(np.hypot(x, 2)) - 3, abs=1e-15)


@pytest.mark.parametrize("wide, exact", [
    ("always eventually[0:1000000000000] x <= 0", "always eventually[0:5] x <= 0"),
    ("always (x <= 1 until[0:1000000000000] y <= 0)", "always (x <= 1 until[0:5] y <= 0)"),
    ("eventually[1:1000000000000] x <= 0", "eventually[1:5] x <= 0"),
])
def test_a_window_past_the_horizon_is_cut_before_anything_is_sized(wide, exact):
    """`[0:10¹²]` with T = 5 means `[0:5]`; it used to size tensors by the bound (3 GB for
    `until[0:100000]` at horizon 60 and 64 scenarios; here it could not be allocated at all)."""
    assert g(wide, X6, U5, Y6) == g(exact, X6, U5, Y6)
