"""The v3 forms of the language (LANGUAGE-v3.md): `let`, `parameter`, `disturbance`,
`equilibrium`, `observe`/`output_scale` on every controller, `backup linear { K k }`, `backup onnx`,
`policy onnx`, `policy python "mod:fn"`, `policy from "RUN"`, `verify { … }` and `verify every` —
parsed, built into the model of V3MODEL.md, formatted (idempotent) and converted both ways."""

from __future__ import annotations

import textwrap

import numpy as np

import pytest

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language.format import format_spec
from scpo_spec.language.lets import LetCycle, expand, find_cycle
from scpo_spec.language.load import parse_model
from scpo_spec.language.scpo_reader import find_comments
from scpo_spec.language.yaml_writer import format_yaml
from tests.helpers import check

BASE = """\
spec v3 "every v3 form"
const dt = 0.1
const c = 1
system discrete {
    state p, v
    input f
    next p = p + dt * v
    next v = v + dt * (f - c)
    equilibrium { f = c }
}
backup lqr { Q = diag(1, 1)  R = diag(1) }
policy mlp { hidden = [8]  residual = backup }
scenarios { initial p in [-1, 1]  initial v in [-0.5, 0.5]  count 8  horizon 20 }
constraint stay: always abs(p) <= 2 smoothness 10
objective cost { stage quad(diag(1, 1), state) + f^2 }
train { steps 1 optimizer sgd { lr = 0.1 } directions 1 perturbation 1e-3 radius 0.1 margin 0 }
"""


def sub(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def built(text: str, path: str = "t.scpo") -> M.Spec:
    result = parse_model(text, path)
    assert result.ok, [d.headline() for d in result.diagnostics]
    return result.spec


def round_trips(text: str) -> M.Spec:
    """parse → fmt → parse is the same model, fmt is idempotent, and .scpo → YAML → .scpo is the
    same model (and YAML writing is idempotent too)."""
    spec = built(text)
    canonical = format_spec(spec, find_comments(text))
    again = built(canonical)
    assert again.same_as(spec), canonical
    assert format_spec(again, find_comments(canonical)) == canonical
    yaml_text = format_yaml(spec)
    from_yaml = built(yaml_text, "t.yaml")
    assert from_yaml.same_as(spec), yaml_text
    assert format_yaml(from_yaml) == yaml_text
    assert built(format_spec(from_yaml)).same_as(spec)
    return spec


V3_LETS = sub("const c = 1\n", "const c = 1\nlet drag = 0.5 * v^2  # named once\n"
              "let push = f - c - drag\n")
V3_LETS = sub("next v = v + dt * (f - c)", "next v = v + dt * push", V3_LETS)


FORMS = {
    "let": V3_LETS,
    "parameter and disturbance": sub(
        "const c = 1\n", "const c = 1\nparameter a in [-2, -1]\ndisturbance w in [-0.05, 0.05]\n"
        "parameter b in [0, 2 * c]\n"),
    "equilibrium": sub("equilibrium { f = c }", "equilibrium { f = c  p = 0.5 }"),
    "observe and output_scale on an mlp": sub(
        "policy mlp { hidden = [8]  residual = backup }",
        "policy mlp { hidden = [8]  residual = backup  observe = [p, v - p, 2 * c]  "
        "output_scale = [11] }"),
    "backup linear with k": sub("backup lqr { Q = diag(1, 1)  R = diag(1) }",
                                "backup linear { K = [[-1, -2]]  k = [0.5]  output_scale = 2 }"),
    "backup onnx": sub("backup lqr { Q = diag(1, 1)  R = diag(1) }",
                       'backup onnx { file = "controller.onnx"  observe = [p, v] }'),
    "policy onnx": sub("policy mlp { hidden = [8]  residual = backup }",
                       'policy onnx { file = "policy.onnx"  output_scale = [1] }'),
    "policy python": sub("policy mlp { hidden = [8]  residual = backup }",
                         'policy python "my_pkg.nets:make_policy"'),
    "policy python with a block": sub("policy mlp { hidden = [8]  residual = backup }",
                                      'policy python "my_pkg.nets:make" { observe = [p] }'),
    "policy from": sub("policy mlp { hidden = [8]  residual = backup }",
                       f'policy from "runs/acc" {{ head = "{"ab" * 32}" }}'),
    "policy from without a head": sub("policy mlp { hidden = [8]  residual = backup }",
                                      'policy from "runs/acc"'),
    "verify": BASE + "verify {\n    cells 1024\n    time_limit 60\n}\n",
    "verify every": sub("margin 0 }", "margin 0 verify every 2 }"),
    "controllers of every kind": sub(
        "policy mlp { hidden = [8]  residual = backup }",
        "policy linear { init = zero  observe = [p]  output_scale = [3] }",
        sub("backup lqr { Q = diag(1, 1)  R = diag(1) }",
            "backup lqr { Q = diag(1, 1)  R = diag(1)  observe = [p, v]  output_scale = 1 }")),
    "torch controllers": sub(
        "policy mlp { hidden = [8]  residual = backup }",
        'policy torch { file = "p.pt"  observe = [v] }',
        sub("backup lqr { Q = diag(1, 1)  R = diag(1) }",
            'backup torch { file = "b.pt"  output_scale = [2] }')),
}


@pytest.mark.parametrize("text", FORMS.values(), ids=FORMS.keys())
def test_each_form_round_trips_through_fmt_and_yaml(text):
    round_trips(text)


def test_lets_build_in_order_and_expand_with_their_grouping():
    spec = round_trips(V3_LETS)
    assert [(x.name.name, E.unparse(x.expr)) for x in spec.lets] == [
        ("drag", "0.5 * v^2"), ("push", "f - c - drag")]
    (eq_v,) = [eq for eq in spec.system.next if eq.state.name == "v"]
    assert E.unparse(eq_v.expr) == "v + dt * push"  # the model keeps what was written
    assert E.unparse(expand(eq_v.expr, spec)) == "v + dt * (f - c - 0.5 * v^2)"
    assert "drag" not in {n.id for n in E.names(expand(eq_v.expr, spec))}


def test_expand_leaves_a_spec_without_lets_alone_and_finds_cycles():
    spec = built(BASE)
    formula = spec.constraints[0].formula
    assert expand(formula, spec) is formula and find_cycle(spec) is None
    cyclic = built(sub("const c = 1\n", "const c = 1\nlet a = b + 1\nlet b = 2 * a\n"
                                        "let d = p\n"))
    assert find_cycle(cyclic) == ["a", "b", "a"]
    with pytest.raises(LetCycle) as err:
        expand(E.Name(id="a"), cyclic)
    assert err.value.cycle == ["a", "b", "a"]
    assert E.unparse(expand(E.Name(id="d"), cyclic)) == "p"  # outside the cycle: expanded


def test_parameters_and_disturbances_are_folded_intervals():
    spec = round_trips(FORMS["parameter and disturbance"])
    assert [(u.section, u.name.name, u.interval.value) for u in spec.parameters] == [
        ("parameter", "a", [-2.0, -1.0]), ("parameter", "b", [0.0, 2.0])]
    assert [(u.section, u.name.name, u.interval.value) for u in spec.disturbances] == [
        ("disturbance", "w", [-0.05, 0.05])]


def test_equilibrium_point_names_some_signals_the_rest_are_zero():
    spec = round_trips(FORMS["equilibrium"])
    assert [(a.signal.name, a.value.value) for a in spec.system.equilibrium] == [
        ("f", 1.0), ("p", 0.5)]
    assert spec.equilibrium_point() == ([0.5, 0.0], [1.0])
    assert built(BASE).equilibrium_point() == ([0.0, 0.0], [1.0])
    assert built(sub("    equilibrium { f = c }\n", "")).equilibrium_point() == ([0.0, 0.0], [0.0])


def test_equilibrium_on_an_ode_as_the_contract_writes_it():
    text = textwrap.dedent("""\
        spec quad "hover"
        const m = 1.5
        const g = 9.81
        system ode {
            state z, zd
            input T1, T2
            dt = 0.02
            der z = zd
            der zd = (T1 + T2) / m - g
            equilibrium { T1 = m * g / 2  T2 = m * g / 2 }
        }
        """)
    spec = round_trips(text)
    assert spec.equilibrium_point() == ([0.0, 0.0], [1.5 * 9.81 / 2, 1.5 * 9.81 / 2])
    assert "    equilibrium { T1 = m * g / 2  T2 = m * g / 2 }\n" in format_spec(spec)


def test_controller_keys_are_on_every_policy_and_backup():
    spec = round_trips(FORMS["observe and output_scale on an mlp"])
    assert [E.unparse(o) for o in spec.policy.observe] == ["p", "v - p", "2 * c"]
    assert spec.policy.output_scale.value == [11.0]
    assert spec.backup.observe is None and spec.backup.output_scale is None
    for cls in (M.MlpPolicy, M.LinearPolicy, M.TorchPolicy, M.OnnxPolicy, M.PythonPolicy,
                M.FromPolicy, M.LqrBackup, M.LinearBackup, M.TorchBackup, M.OnnxBackup):
        assert issubclass(cls, M.Controller)
        assert {"observe", "output_scale"} <= set(cls.model_fields)


def test_a_label_with_nothing_to_set_is_written_alone():
    for form, line in (("policy python", 'policy python "my_pkg.nets:make_policy"\n'),
                       ("policy from without a head", 'policy from "runs/acc"\n')):
        assert f"\n{line}\n" in format_spec(built(FORMS[form])), form


def test_new_controller_kinds_build_their_fields():
    assert built(FORMS["backup linear with k"]).backup.k.value == [0.5]
    assert built(FORMS["backup onnx"]).backup.file.value == "controller.onnx"
    assert built(FORMS["policy onnx"]).policy.file.value == "policy.onnx"
    python = built(FORMS["policy python"]).policy
    assert (python.kind, python.factory.value, python.observe) == (
        "python", "my_pkg.nets:make_policy", None)
    warm = built(FORMS["policy from"]).policy
    assert (warm.kind, warm.run.value, warm.head.value) == ("from", "runs/acc", "ab" * 32)
    assert built(FORMS["policy from without a head"]).policy.head is None


def test_verify_section_and_verify_every():
    spec = round_trips(FORMS["verify"])
    assert (spec.verify.cells.value, spec.verify.time_limit.value) == (1024.0, 60.0)
    assert built(FORMS["verify every"]).train.verify_every.value == 2.0
    assert "    verify every 2\n" in format_spec(built(FORMS["verify every"]))
    assert built(BASE).verify is None and built(BASE).train.verify_every is None


def test_hand_written_yaml_twin_means_the_same_spec():
    """The YAML twin's shape, written by hand (not by our writer): let/parameter/disturbance
    mappings, `equilibrium` a mapping, `observe` a list, the label as `id`, `verify_every`."""
    scpo = sub("const c = 1\n", "const c = 1\nparameter a in [-2, -1]\nlet push = f - c\n",
               sub("    next v = v + dt * (f - c)\n",
                   "    next v = v + dt * push\n",
                   sub("policy mlp { hidden = [8]  residual = backup }",
                       'policy python "m:make" { observe = [p, v - a]  output_scale = [2] }',
                       sub("margin 0 }", "margin 0 verify every 1 }"))))
    scpo += "verify { cells 64 }\n"
    yaml_text = textwrap.dedent("""\
        spec: v3
        title: every v3 form
        const: {dt: 0.1, c: 1}
        parameter: {a: [-2, -1]}
        let: {push: "f - c"}
        system:
          kind: discrete
          state: [p, v]
          input: [f]
          next: {p: "p + dt * v", v: "v + dt * push"}
          equilibrium: {f: c}
        backup: {kind: lqr, Q: "diag(1, 1)", R: "diag(1)"}
        policy: {kind: python, id: "m:make", observe: [p, "v - a"], output_scale: [2]}
        scenarios:
          initial: {p: [-1, 1], v: [-0.5, 0.5]}
          count: 8
          horizon: 20
        constraints:
          - {name: stay, formula: "always abs(p) <= 2", smoothness: 10}
        objective: {kind: cost, stage: "quad(diag(1, 1), state) + f^2"}
        train:
          steps: 1
          optimizer: {kind: sgd, lr: 0.1}
          directions: 1
          perturbation: 1e-3
          radius: 0.1
          margin: 0
          verify_every: 1
        verify: {cells: 64}
        """)
    assert built(yaml_text, "t.yaml").same_as(built(scpo))


def test_comments_beside_v3_forms_are_kept():
    text = sub("const c = 1\n", "const c = 1\n# braking of the lead car\nparameter a in [-2, -1]"
               "  # m/s^2\nlet push = f - c  # net force\n")
    out = format_spec(built(text), find_comments(text))
    assert "# braking of the lead car\nparameter a in [-2, -1]  # m/s^2\n" in out
    assert "let push = f - c  # net force\n" in out


def test_a_checked_spec_may_use_every_visible_name():
    """Names visible in expressions: states, inputs, consts, lets, parameters, disturbances."""
    text = sub("const c = 1\n", "const c = 1\nparameter a in [0.5, 1.5]\n"
               "disturbance w in [-0.01, 0.01]\nlet push = a * f - c + w\nlet speed = abs(v)\n",
               sub("next v = v + dt * (f - c)", "next v = v + dt * push",
                   sub("constraint stay: always abs(p) <= 2 smoothness 10",
                       "constraint stay: always abs(p) + speed <= 2 smoothness 10")))
    result = check(text)
    assert result.ok, [d.headline() for d in result.diagnostics]


# ---- expand against an independent oracle: the lets evaluated one after another ----
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from scpo_spec.language.evaluate import EvalError, evaluate  # noqa: E402
from scpo_spec.language.scpo_reader import parse_expression  # noqa: E402
from scpo_spec.language.source import Source  # noqa: E402


def _tree(names):
    leaves = st.one_of(st.sampled_from([E.Name(id=n) for n in names]),
                       st.sampled_from([-1.5, 0.5, 2.0]).map(lambda v: E.Num(value=v)))
    return st.recursive(leaves, lambda sub: st.one_of(
        st.builds(lambda op, a, b: E.Binary(op=op, left=a, right=b),
                  st.sampled_from(["+", "-", "*", "/"]), sub, sub),
        st.builds(lambda a: E.Unary(op="-", arg=a), sub),
        st.builds(lambda a: E.Binary(op="^", left=a, right=E.Num(value=2.0)), sub),
        st.builds(lambda a: E.Call(func="abs", args=[a]), sub)), max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=_tree(["x", "y"]), b=_tree(["x", "a"]), e=_tree(["a", "b", "y"]),
       x=st.floats(-2, 2), y=st.floats(-2, 2))
def test_expand_means_the_lets_evaluated_in_turn(a, b, e, x, y):
    text = f"let a = {E.unparse(a)}\nlet b = {E.unparse(b)}\n"
    spec = built("spec s\n" + text)
    try:
        va = float(evaluate(a, {"x": x, "y": y}))
        vb = float(evaluate(b, {"x": x, "a": va}))
        oracle = float(evaluate(e, {"a": va, "b": vb, "y": y}))
        expanded = expand(e, spec)
        got = float(evaluate(expanded, {"x": x, "y": y}))
    except (EvalError, OverflowError, ZeroDivisionError):
        assume(False)
    assume(np.isfinite(oracle) and abs(oracle) < 1e12)
    assert got == pytest.approx(oracle, rel=1e-9, abs=1e-9)
    # the printed expansion re-parses to the same function (its parentheses are right)
    reparsed, diags = parse_expression(E.unparse(expanded), Source(path="e", text=""))
    assert not diags
    assert float(evaluate(reparsed, {"x": x, "y": y})) == pytest.approx(got, rel=1e-12,
                                                                          abs=1e-12)
