"""`scpo check` on LANGUAGE-v3's forms: every mistake is one located error (line:column, message,
hint), and the operating point is checked to be a fixed point of the plant (numpy oracles)."""

from __future__ import annotations

import numpy as np
import pytest

from scpo_spec.compile.describe import describe_metric
from scpo_spec.language import expr as E
from scpo_spec.language.evaluate import evaluate
from scpo_spec.language.lets import expand
from scpo_spec.language.scpo_reader import parse_expression
from scpo_spec.language.source import Source
from tests.helpers import check
from tests.language.test_forms_operating_and_uncertainty import BASE, sub

POLICY = "policy mlp { hidden = [8]  residual = backup }"
LQR = "backup lqr { Q = diag(1, 1)  R = diag(1) }"
OBSERVE_HINT = "observe states, constants, parameters and lets of them, e.g. `observe = [x, v - 1]`"


def found(text: str, path: str = "t.scpo", **kw) -> list[tuple[int, int, str, str | None]]:
    """(line, column, message, hint) of every error, in order."""
    return [(d.span.line, d.span.column, d.message, d.hint)
            for d in check(text, path=path, **kw).diagnostics if d.severity == "error"]


def at(text: str, needle: str, offset: int = 0) -> tuple[int, int]:
    """(line, column) of `needle` in `text`, 1-based, plus `offset` columns."""
    index = text.index(needle)
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1 + offset


def test_the_base_spec_with_an_operating_point_passes():
    result = check(BASE)
    assert result.ok, [d.headline() for d in result.diagnostics]


# ---------------------------------------------------------------- lets, parameters, disturbances
def test_a_cycle_among_lets_is_named_at_its_first_let():
    text = sub("const c = 1\n", "const c = 1\nlet a = b + 1\nlet b = 2 * a\nlet d = a\n")
    assert found(text) == [(*at(text, "a = b", 0), "the lets a -> b -> a form a cycle",
                            "a let may use other lets, but never itself through them; write one "
                            "of them out in states, inputs and constants")]


def test_a_let_that_shadows_a_signal_constant_or_parameter():
    text = sub("const c = 1\n", "const c = 1\nparameter w in [0, 1]\nlet p = v\nlet f = 2\n"
                                "let c = 3\nlet w = 4\nlet abs = 5\n")
    assert found(text) == [
        (*at(text, "p = v"), "let 'p' has the same name as a signal",
         "rename the let: it would hide the signal"),
        (*at(text, "f = 2"), "let 'f' has the same name as a signal",
         "rename the let: it would hide the signal"),
        (*at(text, "c = 3"), "let 'c' has the same name as a constant",
         "rename the let: it would hide the constant"),
        (*at(text, "w = 4"), "let 'w' has the same name as a parameter",
         "rename the let: it would hide the parameter"),
        (*at(text, "abs = 5"), "'abs' is a reserved word and cannot name a let",
         "rename the let")]


def test_parameters_and_disturbances_shadowing_and_duplicates():
    text = sub("const c = 1\n", "const c = 1\nparameter v in [0, 1]\nparameter dt in [0, 1]\n"
                                "disturbance norm in [0, 1]\nparameter w in [0, 1]\n"
                                "disturbance w in [0, 1]\nlet q = 1\nlet q = 2\n")
    assert found(text) == [
        (*at(text, "v in"), "parameter 'v' has the same name as a signal",
         "rename the parameter"),
        (*at(text, "dt in"), "parameter 'dt' has the same name as a constant",
         "rename the parameter"),
        (*at(text, "norm in"), "'norm' is a reserved word and cannot name a disturbance",
         "rename the disturbance"),
        (*at(text, "w in [0, 1]\nlet"), "'w' is declared twice (parameter and disturbance)",
         f"first declared at line {at(text, 'w in')[0]}"),
        (*at(text, "q = 2"), "duplicate let 'q'", f"first defined at line {at(text, 'q = 1')[0]}")]


def test_unknown_names_get_did_you_mean_over_every_visible_name():
    text = sub("const c = 1\n", "const c = 1\nlet speed = abs(v)\nparameter a_lead in [-2, -1]\n"
                                "disturbance gust in [0, 0]\nlet unused = a_led + 1\n",
               sub("always abs(p) <= 2", "always abs(p) + spead + gst <= 2"))
    assert found(text) == [
        (*at(text, "a_led"), "unknown name 'a_led'", "did you mean 'a_lead'?"),
        (*at(text, "spead"), "unknown name 'spead'", "did you mean 'speed'?"),
        (*at(text, "gst"), "unknown name 'gst'", "did you mean 'gust'?")]


def test_an_error_inside_a_let_is_said_once_at_the_let():
    text = sub("const c = 1\n", "const c = 1\nlet bad = [p, v] + [1, 2, 3]\n",
               sub("always abs(p) <= 2", "always abs(p) + norm(bad) <= 2"))
    assert found(text) == [(*at(text, "[p, v] +"), "cannot combine a vector of 2 with a vector "
                                                   "of 3", None)]


def test_reversed_and_malformed_ranges():
    text = sub("const c = 1\n", "const c = 1\nparameter a in [2, 1]\ndisturbance w in [1]\n")
    assert found(text) == [
        (*at(text, "[2, 1]"), "reversed interval [2, 1] in the range of parameter 'a'",
         "write [1, 2]: the lower bound comes first"),
        (*at(text, "[1]"), "the range of disturbance 'w' must be an interval [lo, hi] of two "
                           "numbers", None)]


def test_a_range_that_is_not_an_in_is_a_located_error():
    text = sub("const c = 1\n", "const c = 1\nparameter a = 3\n")
    ((line, col, message, _),) = found(text)
    assert (line, col, message) == (*at(text, "= 3"), "unexpected '='")
    text = sub("const c = 1\n", "const c = 1\nparameter a < 3\n")
    assert found(text) == [(*at(text, "a < 3"), "expected `parameter NAME in [lo, hi]`",
                            "e.g. `parameter a_lead in [-2, -1]`")]


# ---------------------------------------------------------------- what a controller observes
def test_observe_may_not_read_inputs_disturbances_or_the_closed_loop():
    text = sub(POLICY, "policy mlp { hidden = [8]  observe = [p, f, w, push, state, "
                       "spectral_radius] }",
               sub("const c = 1\n", "const c = 1\ndisturbance w in [0, 0]\nlet push = f - c\n"))
    assert found(text) == [
        (*at(text, "f, w"), "observe of the policy mlp reads the input 'f': the controller "
                            "computes the inputs, so it cannot see them", OBSERVE_HINT),
        (*at(text, "w, push"), "observe of the policy mlp reads the disturbance 'w': a "
                               "disturbance is not measured, so the controller cannot see it",
         OBSERVE_HINT),
        (*at(text, "push, state"), "observe of the policy mlp reads the input 'f' (through let "
                                   "'push'): the controller computes the inputs, so it cannot "
                                   "see them", OBSERVE_HINT),
        (*at(text, "state, spec"), "each entry of observe is one number, got a vector of 2",
         "list the components one by one: `observe = [x, v]`"),
        (*at(text, "spectral_radius]"), "observe of the policy mlp cannot read "
                                        "'spectral_radius': spectral_radius is a property of the "
                                        "closed loop, not a measurement", OBSERVE_HINT)]


def test_observe_on_a_backup_and_one_that_reads_no_state_is_warned():
    text = sub(LQR, "backup lqr { Q = diag(1, 1)  R = diag(1)  observe = [v, f] }")
    assert found(text) == [(*at(text, "f] }"), "observe of the backup lqr reads the input 'f': "
                            "the controller computes the inputs, so it cannot see them",
                            OBSERVE_HINT)]
    blind = sub(POLICY, "policy mlp { hidden = [8]  observe = [c, 2] }")
    result = check(blind)
    assert result.ok
    (warning,) = result.diagnostics
    assert (warning.severity, warning.span.line, warning.span.column, warning.message) == (
        "warning", *at(blind, "c, 2"), "observe of the policy mlp reads no state: the "
                                       "controller is blind to the plant")


def test_output_scale_must_be_one_number_or_one_per_input():
    text = sub(POLICY, "policy mlp { hidden = [8]  output_scale = [1, 2] }")
    assert found(text) == [(*at(text, "[1, 2] }"), "output_scale of the policy mlp must be one "
                            "number or a vector of 1 (one per input), got a vector of 2",
                            "the system has 2 state(s) and 1 input(s)")]
    assert check(sub(POLICY, "policy mlp { hidden = [8]  output_scale = 11 }")).ok
    assert check(sub(POLICY, "policy mlp { hidden = [8]  output_scale = [11] }")).ok


# ---------------------------------------------------------------- controllers from other tools
def test_backup_linear_k_and_K_shapes():
    text = sub(LQR, "backup linear { K = [[1, 2, 3]]  k = [1, 2] }")
    dims = "the system has 2 state(s) and 1 input(s)"
    assert found(text) == [(*at(text, "[[1, 2, 3]]"), "K must be 1×2, got 1×3", dims),
                           (*at(text, "[1, 2] }"), "k must be a vector of 1, got a vector of 2",
                            dims)]
    assert check(sub(LQR, "backup linear { K = [[-1, -2]]  k = [0.5] }")).ok


def test_backup_linear_with_observe_has_an_inputs_by_observations_gain():
    """policies/backup.py reads K as m × p over the observation, so check agrees."""
    assert check(sub(LQR, "backup linear { K = [[-1, -2, 0]]  observe = [p, v, p * v] }")).ok
    text = sub(LQR, "backup linear { K = [[-1, -2]]  observe = [p, v, p * v] }")
    assert found(text) == [(*at(text, "[[-1, -2]]"), "K must be 1×3, got 1×2",
                            "the backup observes 3 value(s) and the system has 1 input(s): "
                            "K is inputs × observations")]


INIT_HINT = ("use `policy mlp { residual = backup }` to fine-tune on top of the backup, or "
             "`init = zero`")


@pytest.mark.parametrize("backup, why", [
    ("backup onnx { }", "an onnx backup has none"),
    ("backup linear { K = [[-1, -2]]  observe = [p, v] }",
     "this backup declares `observe`, so it has no gain over the states"),
    ("backup lqr { Q = diag(1, 1)  R = diag(1)  observe = [p, v] }",
     "this backup declares `observe`, so it has no gain over the states")])
def test_policy_linear_init_backup_needs_a_gain_over_the_states(backup, why):
    """A network's Jacobian (or a gain over an observation) is not the backup: init = backup
    would silently start from a different controller, so it is a located error."""
    text = sub(LQR, backup, sub(POLICY, "policy linear { init = backup }"))
    init = [e for e in found(text) if e[2].startswith("init = backup")]
    assert init == [(*at(text, "backup }"), "init = backup needs a linear or lqr backup (a gain K "
                     f"to start from); {why}", INIT_HINT)]
    assert check(sub(POLICY, "policy linear { init = backup }")).ok  # lqr over x − x*
    assert check(sub(LQR, "backup linear { K = [[-1, -2]] }",
                     sub(POLICY, "policy linear { init = backup }"))).ok


def test_onnx_controllers_need_a_file():
    """Only its absence is the language's to say; the file itself (there, readable, supported
    operators, sizes) is read by compile/usercode.py's check, which runs after these."""
    text = sub(LQR, "backup onnx { observe = [p, v] }", sub(POLICY, "policy onnx { }"))
    assert found(text) == [
        (*at(text, "backup onnx"), "backup onnx needs a file",
         'add `file = "controller.onnx"` (an ONNX file, relative to the spec)'),
        (*at(text, "policy onnx"), "policy onnx needs a file",
         'add `file = "policy.onnx"` (an ONNX file, relative to the spec)')]


@pytest.mark.parametrize("label", ["nocolon", "pkg.mod:", ":make", "pkg-x.mod:make",
                                   "pkg.mod:make policy"])
def test_policy_python_label_is_module_colon_callable(label):
    text = sub(POLICY, f'policy python "{label}"')
    assert found(text) == [(*at(text, f'"{label}"'), f"'{label}' is not `module:callable`",
                            'write the module path, a colon and the callable: '
                            '"my_pkg.nets:make_policy"')]


def test_policy_python_without_its_label():
    text = sub(POLICY, "policy python { }")
    assert found(text) == [(*at(text, "policy python"), "policy python needs the callable that "
                            "makes its network", 'write `policy python "my_pkg.nets:make_policy"` '
                            "(a callable returning an nn.Module)")]


def test_policy_from_needs_a_run():
    """The run itself (there, its audit, its head) is compile/usercode.py's to read."""
    hint = 'write `policy from "runs/acc"` (a run directory, relative to the spec)'
    text = sub(POLICY, 'policy from { head = "abc" }')
    assert found(text) == [(*at(text, "policy from"), "policy from needs the run it starts from",
                            hint)]
    empty = sub(POLICY, 'policy from ""')
    assert found(empty) == [(*at(empty, '""'), "policy from needs the run it starts from", hint)]
    assert found(sub(POLICY, 'policy from "runs/none"')) == []


# ---------------------------------------------------------------- verify
def test_verify_numbers_are_positive_and_counts_whole():
    text = sub("margin 0 }", "margin 0 verify every 0 }") + \
        "verify { cells 2.5  time_limit -1 }\n"
    assert found(text) == [
        (*at(text, "every 0", 6), "verify every must be a positive whole number, got 0",
         "`verify every 1`: every accepted update is also PROVED; `verify every K`: every K-th"),
        (*at(text, "2.5"), "verify cells must be a positive whole number, got 2.5",
         "the most initial-set cells the splitting may make (default 4096)"),
        (*at(text, "-1 }"), "verify time_limit must be a positive number, got -1",
         "seconds scpo verify may take (default 300)")]
    assert check(sub("margin 0 }", "margin 0 verify every 2 }") + "verify { cells 64 }\n").ok


def test_unknown_verify_entry_has_did_you_mean():
    text = BASE + "verify { cels 64 }\n"
    assert found(text) == [(*at(text, "cels"), "unknown entry 'cels' in verify",
                            "did you mean 'cells'?")]


# ---------------------------------------------------------------- the operating point
def test_equilibrium_names_known_signals_with_one_number_each():
    text = sub("equilibrium { f = c }", "equilibrium { ff = c  v = [1, 2] }")
    assert found(text) == [
        (*at(text, "ff = c"), "equilibrium names the unknown signal 'ff'", "did you mean 'f'?"),
        (*at(text, "[1, 2] }"), "the equilibrium value of 'v' must be a number",
         "one number per state or input: `equilibrium { T1 = m * g / 2 }`")]


def test_equilibrium_given_twice_and_on_a_static_system():
    text = sub("equilibrium { f = c }", "equilibrium { f = c  f = 2 }")
    assert found(text) == [(*at(text, "f = 2"), "'f' is given twice in equilibrium",
                            f"first given at line {at(text, 'f = c')[0]}")]
    static = "spec s\nsystem static { state x  input u  equilibrium { u = 1 } }\n"
    assert (*at(static, "equilibrium"), "a static system has no operating point to declare",
            "`equilibrium` is for the plants that are linearised there: linear, pendulum, "
            "discrete, ode and python; remove it") in found(static)


EQUILIBRIUM_HINT = ("at an operating point the plant is at rest: x⁺ = x* (ẋ = 0 for an ode); "
                    "solve the dynamics for the inputs that hold it there (a hover thrust "
                    "m * g / 2 per rotor), and name every state and input that is not 0")


def test_a_discrete_equilibrium_that_is_no_fixed_point_prints_its_residual():
    text = sub("equilibrium { f = c }", "equilibrium { f = 2 * c  p = 3 }")
    # oracle: x⁺ − x* at p = 3, v = 0, f = 2 (plain arithmetic on the written equations)
    p, v, f, dt, c = 3.0, 0.0, 2.0, 0.1, 1.0
    residual = [p + dt * v - p, v + dt * (f - c) - v]
    assert residual == [0.0, pytest.approx(0.1)]
    assert found(text) == [(*at(text, "f = 2 * c"), "the equilibrium is not a fixed point of "
                            "this plant: F(x*, u*) − x* = [0, 0.1] (largest 0.1, above 1e-09 × "
                            "the state scale 3)", EQUILIBRIUM_HINT)]


QUADROTOR = """\
spec hover "a rotor pair holding altitude"
const m = 1.5
const g = 9.81
let thrust = T1 + T2
system ode {
    state z, zd
    input T1, T2
    dt = 0.02
    der z = zd
    der zd = thrust / m - g
    equilibrium { T1 = m * g / 2  T2 = m * g / 2 }
}
backup lqr { Q = diag(1, 1)  R = diag(1, 1) }
policy mlp { hidden = [8]  residual = backup }
scenarios { initial z in [-1, 1]  initial zd in [-0.5, 0.5]  count 8  horizon 20 }
constraint rotors: always T1 in [0, 20] and T2 in [0, 20] smoothness 10
stability margin: spectral_radius <= 0.999 smoothness 10
objective cost { stage z^2 + zd^2 }
train { steps 1 optimizer sgd { lr = 0.1 } directions 1 perturbation 1e-3 radius 0.1 margin 0 }
"""


def test_the_contracts_hover_is_an_equilibrium_and_a_third_of_the_weight_is_not():
    assert check(QUADROTOR).ok
    text = QUADROTOR.replace("T2 = m * g / 2 }", "T2 = m * g / 3 }")
    zdd = (1.5 * 9.81 / 2 + 1.5 * 9.81 / 3) / 1.5 - 9.81  # ẋ of zd, by hand
    assert found(text) == [(*at(text, "T1 = m"), "the equilibrium is not a fixed point of this "
                            f"plant: ẋ = f(x*, u*) = [0, {zdd:.6g}] (largest {abs(zdd):.3g}, "
                            "above 1e-09 × the state scale 1)", EQUILIBRIUM_HINT)]


def test_without_equilibrium_an_lqr_off_the_origins_fixed_point_says_declare_one():
    text = QUADROTOR.replace("    equilibrium { T1 = m * g / 2  T2 = m * g / 2 }\n", "")
    errors = found(text)
    assert [(line, col) for line, col, _, _ in errors] == [at(text, "backup lqr"),
                                                           at(text, "spectral_radius <=")]
    assert errors[0][2] == ("the lqr backup linearises the plant at x = 0, u = 0, which is not "
                            "an equilibrium of this plant: ẋ = f(0, 0) = [0, -9.81]")
    assert "`equilibrium {" in errors[0][3] and "states and inputs not named are 0" in errors[0][3]


def test_a_linear_plant_with_an_operating_point():
    linear = """system linear {
    state p, v
    input f
    A = [[1, dt], [0, 0.5]]
    B = [[0], [dt]]
    equilibrium { v = 2  f = 10 }
}"""
    declared = BASE[BASE.index("system discrete"):BASE.index("}\nbackup") + 1]
    text = sub(declared, linear)
    # oracle: A x* + B u* − x* with x* = (0, 2), u* = 10: [0.2, 1 + 1 − 2] = [0.2, 0]
    A, B = np.array([[1, 0.1], [0, 0.5]]), np.array([[0], [0.1]])
    residual = A @ [0, 2] + B @ [10] - [0, 2]
    assert residual.tolist() == pytest.approx([0.2, 0.0])
    assert found(text) == [(*at(text, "v = 2"), "the equilibrium is not a fixed point of this "
                            "plant: F(x*, u*) − x* = [0.2, 0] (largest 0.2, above 1e-09 × the "
                            "state scale 2)", EQUILIBRIUM_HINT)]
    assert check(text.replace("v = 2  f = 10", "v = 0  f = 0  p = 5")).ok


def test_a_pendulum_hangs_at_pi_but_not_at_a_tilt():
    pendulum = ("system pendulum { state theta, omega  input torque  dt = 0.05  g = 9.81  m = 1  "
                "l = 1  equilibrium { theta = pi } }")
    declared = BASE[BASE.index("system discrete"):BASE.index("}\nbackup") + 1]
    text = sub(declared, pendulum).replace("abs(p)", "abs(theta)").replace(
        "initial p in", "initial theta in").replace("initial v in", "initial omega in").replace(
        "f^2", "torque^2")
    result = check(text)
    assert result.ok, [d.headline() for d in result.diagnostics]
    tilted = text.replace("theta = pi", "theta = 0.3")
    omega = 0.05 * 3 * 9.81 / 2 * np.sin(0.3)  # ω⁺ at θ = 0.3, ω = 0, u = 0 (the oracle)
    assert found(tilted) == [(*at(tilted, "theta = 0.3"), "the equilibrium is not a fixed point "
                              f"of this plant: F(x*, u*) − x* = [{0.05 * omega:.6g}, "
                              f"{omega:.6g}] (largest {omega:.3g}, above 1e-09 × the state "
                              "scale 1)", EQUILIBRIUM_HINT)]


def test_lyapunov_starts_are_measured_from_the_operating_point():
    """V(x₀) = 0 when the whole initial box is the operating point (not the origin)."""
    text = sub("equilibrium { f = c }", "equilibrium { f = c  p = 0.5 }",
               sub("initial p in [-1, 1]", "initial p in [0.5, 0.5]",
                   sub("initial v in [-0.5, 0.5]", "initial v in [0, 0]",
                       sub("constraint stay:", "stability decay: lyapunov(backup) <= 0.9 at final "
                           "smoothness 10\nconstraint stay:"))))
    errors = found(text)
    assert [m for _, _, m, _ in errors] == [
        "stability 'decay': lyapunov(backup) is undefined for every scenario: V(x₀) = 0 on the "
        "whole initial box"]


# ---------------------------------------------------------------- YAML and the CLI
def test_yaml_errors_are_located_in_the_yaml_text():
    text = """\
spec: v
const: {dt: 0.1}
parameter: {a: [2, 1]}
let: {gap: "p - q"}
system:
  kind: discrete
  state: [p, v]
  input: [f]
  next: {p: "p + dt * v", v: "v + dt * f"}
  equilibrium: {ff: 0}
policy: {kind: python, id: "nocolon"}
scenarios: {initial: {p: [-1, 1], v: [0, 1]}, count: 4, horizon: 5}
constraints:
  - {name: stay, formula: "always abs(gap) <= 2", smoothness: 1}
objective: {kind: cost, stage: "p^2"}
train: {steps: 1, optimizer: {kind: sgd, lr: 0.1}, directions: 1, perturbation: 0.001, radius: 0.1,
        margin: 0, verify_every: 0}
"""
    assert [(line, col, message) for line, col, message, _ in found(text, path="t.yaml")] == [
        (3, 16, "reversed interval [2, 1] in the range of parameter 'a'"),
        (4, 17, "unknown name 'q'"),
        (10, 17, "equilibrium names the unknown signal 'ff'"),
        (11, 28, "'nocolon' is not `module:callable`"),
        (17, 34, "verify every must be a positive whole number, got 0")]


def test_metrics_print_lets_expanded_and_parenthesised_as_they_compute():
    """The compiled text (`scpo compile --emit metrics` prints it) of a formula with lets: the
    lets expanded, and the text re-parsed means the same function (a numpy oracle of the lets)."""
    text = sub("const c = 1\n", "const c = 1\nlet gap = p - v\nlet twice = 2 * gap\n",
               sub("always abs(p) <= 2", "always twice - gap * gap >= -8"))
    spec = check(text).spec
    formula = expand(spec.constraints[0].formula, spec)
    assert E.unparse(formula) == "always 2 * (p - v) - (p - v) * (p - v) >= -8"
    printed = describe_metric(formula, {}, ["p", "v"], ["f"], 20, None)
    head = "max_{scenarios} max_{t∈[0:20]} "
    assert printed == head + "(-8 − (2 * (p - v) - (p - v) * (p - v)))"
    body, _ = parse_expression(printed[len(head):].replace("−", "-"),
                               Source(path="m", text=""))
    rng = np.random.default_rng(0)
    for p, v in rng.uniform(-3, 3, size=(20, 2)):
        gap = p - v
        oracle = -8 - (2 * gap - gap * gap)  # the violation of `twice - gap*gap >= -8`
        assert float(evaluate(body, {"p": p, "v": v})) == pytest.approx(oracle, rel=1e-12)


def test_a_python_plants_equilibrium_is_checked_by_calling_it(tmp_path):
    """compile/usercode.py, `scpo check`'s second stage: F(x*, u*) − x* of the author's plant."""
    from scpo_spec.compile.usercode import check_code
    from tests.systems.test_plant_failures import GRAVITY, python_spec
    spec = python_spec(tmp_path, "plant_hover", GRAVITY)
    text = spec.read_text().replace("input force }", "input force  equilibrium { force = 9.81 } }")
    spec.write_text(text)
    model = check(text, path=str(spec), base_dir=tmp_path).spec
    assert check_code(model, tmp_path) == []
    text = text.replace("force = 9.81", "force = 9  position = 2")
    spec.write_text(text)
    (d,) = check_code(check(text, path=str(spec), base_dir=tmp_path).spec, tmp_path)
    dv = 0.1 * (9 - 9.81)  # v⁺ − v at v = 0, force 9 (the oracle)
    assert (d.span.line, d.span.column) == at(text, "force = 9")
    assert d.message == ("the equilibrium is not a fixed point of this plant: F(x*, u*) − x* = "
                         f"[0, {dv:.6g}] (largest {abs(dv):.3g}, above 1e-09 × the state scale 2)")
    assert d.hint == EQUILIBRIUM_HINT
