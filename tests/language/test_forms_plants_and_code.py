"""The v2 forms of the language (LANGUAGE-v2.md): declared dynamics (`system discrete`,
`system ode`), `system python`, `backup torch`, `policy torch`, gymnasium's "module:EnvId", and the
new functions — parsed, built, checked (located errors), formatted and converted to YAML."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import scipy.linalg

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language.dynamics import linearisation, step_map
from scpo_spec.language.evaluate import EvalError, evaluate
from scpo_spec.language.format import format_spec
from scpo_spec.language.load import check_text, parse_model
from scpo_spec.language.scpo_reader import find_comments, parse_expression
from scpo_spec.language.source import Source
from scpo_spec.language.yaml_writer import format_yaml
from tests.helpers import check, errors

DISCRETE_SYSTEM = """system discrete {
    state p, v
    input f
    next p = p + dt * v
    next v = v + dt * f
}"""
ODE_SYSTEM = """system ode {
    state p, v
    input f
    dt = 0.05
    integrator midpoint
    substeps 4
    der p = v
    der v = -sin(p) + f
}"""

DISCRETE = """\
spec d "declared"
const dt = 0.1
system discrete {
    state p, v
    input f
    next p = p + dt * v
    next v = v + dt * f
}
backup lqr { Q = diag(1, 1)  R = diag(1) }
policy mlp { hidden = [8]  residual = backup }
scenarios { initial p in [-1, 1]  initial v in [-0.5, 0.5]  count 8  horizon 20 }
constraint stay: always abs(p) <= 2 smoothness 10
stability decay: lyapunov(backup) <= 0.9 at final smoothness 10
stability margin: spectral_radius <= 0.99 smoothness 10
objective cost { stage quad(diag(1, 1), state) + f^2 }
train { steps 1 optimizer sgd { lr = 0.1 } directions 1 perturbation 1e-3 radius 0.1 margin 0 }
"""

ODE = DISCRETE.replace(DISCRETE_SYSTEM, ODE_SYSTEM)

# Barto, Sutton & Anderson (1983), θ = 0 upright; ẍ repeats θ̈'s expression
CARTPOLE = """\
spec cartpole "Cart-pole: keep the pole up and the cart on the track"

const g = 9.8
const mc = 1.0
const mp = 0.1
const l = 0.5
const total = mc + mp

system ode {
    state x, x_dot, theta, theta_dot    # theta = 0 is upright
    input force
    dt = 0.02
    integrator rk4
    substeps 2
    der x = x_dot
    der theta = theta_dot
    der theta_dot = (g * sin(theta) + cos(theta) * (-force - mp * l * theta_dot^2 * sin(theta)) / total) / (l * (4 / 3 - mp * cos(theta)^2 / total))
    der x_dot = (force + mp * l * (theta_dot^2 * sin(theta) - cos(theta) * (g * sin(theta) + cos(theta) * (-force - mp * l * theta_dot^2 * sin(theta)) / total) / (l * (4 / 3 - mp * cos(theta)^2 / total)))) / total
}

backup lqr { Q = diag(1, 1, 10, 1)  R = diag(0.1) }

policy mlp { hidden = [32, 32]  activation = tanh  residual = backup  seed = 0 }

scenarios {
    initial x in [-0.2, 0.2]
    initial x_dot in [-0.1, 0.1]
    initial theta in [-0.1, 0.1]
    initial theta_dot in [-0.1, 0.1]
    count 32
    seed 0
    horizon 100
    holdout 1000
}

constraint pole_up:    always abs(theta) <= 0.2                   smoothness 100
constraint cart_track: always abs(x) <= 2.4                       smoothness 50
constraint push:       always clip(force, -20, 20) in [-15, 15]   smoothness 50
constraint lean:       always abs(atan2(sin(theta), cos(theta))) <= 0.3  smoothness 50
stability decay:       lyapunov(backup) <= 0.5 at final           smoothness 50
stability margin:      spectral_radius <= 0.999                   smoothness 20

objective cost { stage quad(diag(1, 0.1, 10, 0.1), state) + 0.01 * force^2 }

train {
    steps 200
    optimizer adam { lr = 3e-3 }
    directions 16
    perturbation 1e-3
    radius 0.5
    margin 1e-6
    solver clarabel
    seed 0
}
"""


def ok_spec(text: str, **kw) -> M.Spec:
    result = check(text, **kw)
    assert result.ok, [d.headline() for d in result.diagnostics]
    assert [d for d in result.diagnostics if d.severity == "error"] == []
    return result.spec


def only(text: str, **kw) -> tuple[int, int, str]:
    errs = errors(text, **kw)
    assert len(errs) == 1, errs
    return errs[0]


def hint_of(text: str, **kw) -> str | None:
    (d,) = [d for d in check(text, **kw).diagnostics if d.severity == "error"]
    return d.hint


def sub(old: str, new: str, text: str = DISCRETE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# ------------------------------------------------------------------------------ parse and build
def test_system_discrete_parses_into_equations_in_order():
    s = ok_spec(DISCRETE)
    sys = s.system
    assert isinstance(sys, M.DiscreteSystem)
    assert [x.name for x in sys.states] == ["p", "v"] and [u.name for u in sys.inputs] == ["f"]
    assert [eq.state.name for eq in sys.next] == ["p", "v"]
    assert E.unparse(sys.next[0].expr) == "p + dt * v"
    assert E.unparse(sys.next[1].expr) == "v + dt * f"
    # spans: the state's name, and the expression after `=`
    assert (sys.next[0].state.span.line, sys.next[0].state.span.column) == (6, 10)
    assert (sys.next[1].expr.span.line, sys.next[1].expr.span.column) == (7, 14)


def test_equations_in_any_order_on_one_line():
    text = sub(DISCRETE_SYSTEM, "system discrete { state p, v  input f  next v = v + dt * f  "
               "next p = p + dt * v }")
    s = ok_spec(text)
    assert [eq.state.name for eq in s.system.next] == ["v", "p"]


def test_system_ode_parses_with_integrator_and_substeps():
    s = ok_spec(ODE)
    sys = s.system
    assert isinstance(sys, M.OdeSystem)
    assert sys.dt.value == 0.05 and sys.integrator.name == "midpoint"
    assert int(sys.substeps) == 4
    assert [eq.state.name for eq in sys.der] == ["p", "v"]
    assert E.unparse(sys.der[1].expr) == "-sin(p) + f"


def test_ode_defaults_are_left_out_of_the_model():
    s = ok_spec(ODE.replace("    integrator midpoint\n", "").replace("    substeps 4\n", ""))
    assert s.system.integrator is None and s.system.substeps is None
    assert M.DEFAULTS[("system ode", "integrator")] == "rk4"
    assert M.DEFAULTS[("system ode", "substeps")] == 1


def test_system_python_backup_and_policy_torch(tmp_path):
    (tmp_path / "controller.pt").write_bytes(b"not loaded by check")
    (tmp_path / "policy.pt").write_bytes(b"not loaded by check")
    text = sub(DISCRETE_SYSTEM, 'system python "my_pkg.plant:dynamics" { state p, v  input f }')
    text = sub("backup lqr { Q = diag(1, 1)  R = diag(1) }", 'backup torch { file = "controller.pt" }',
               text)
    text = sub("policy mlp { hidden = [8]  residual = backup }", 'policy torch { file = "policy.pt" }',
               text)
    text = sub("stability decay: lyapunov(backup) <= 0.9 at final smoothness 10\n", "", text)
    s = ok_spec(text, base_dir=tmp_path)
    assert isinstance(s.system, M.PythonSystem)
    assert s.system.function.value == "my_pkg.plant:dynamics"
    assert (s.system.function.span.line, s.system.function.span.column) == (3, 15)
    assert [x.name for x in s.system.states] == ["p", "v"]
    assert isinstance(s.backup, M.TorchBackup) and s.backup.file.value == "controller.pt"
    assert isinstance(s.policy, M.TorchPolicy) and s.policy.file.value == "policy.pt"


def test_mlp_residual_on_a_torch_backup(tmp_path):
    (tmp_path / "controller.pt").write_bytes(b"")
    text = sub("backup lqr { Q = diag(1, 1)  R = diag(1) }", 'backup torch { file = "controller.pt" }')
    text = sub("stability decay: lyapunov(backup) <= 0.9 at final smoothness 10\n", "", text)
    s = ok_spec(text, base_dir=tmp_path)
    assert s.policy.residual.name == "backup" and isinstance(s.backup, M.TorchBackup)


# ------------------------------------------------------------------------------ build errors
def test_unknown_kinds_and_entries_have_did_you_mean():
    assert only(sub("system discrete {", "system discrte {")) == \
        (3, 8, "unknown system kind 'discrte'")
    assert hint_of(sub("system discrete {", "system discrte {")) == "did you mean 'discrete'?"
    assert only(sub("next v = v + dt * f", "nxt v = v + dt * f")) == \
        (7, 5, "unknown entry 'nxt' in system discrete")
    assert hint_of(sub("next v = v + dt * f", "nxt v = v + dt * f")) == "did you mean 'next'?"
    assert only(sub("integrator midpoint", "integrator rk5", ODE)) == \
        (7, 16, "unknown integrator 'rk5'")
    assert hint_of(sub("integrator midpoint", "integrator rk5", ODE)) == "did you mean 'rk4'?"
    assert only(sub("backup lqr { Q = diag(1, 1)  R = diag(1) }", 'backup torh { file = "c.pt" }')
                ) == (9, 8, "unknown backup kind 'torh'")


def test_der_in_discrete_and_next_in_ode_say_which_word():
    line, col, msg = only(sub("next v = v + dt * f", "der v = v + dt * f"))
    assert (line, col) == (7, 5)
    assert msg == "a discrete system's equations are written `next STATE = …`, not `der`"
    line, col, msg = only(sub("der v = -sin(p) + f", "next v = -sin(p) + f", ODE))
    assert (line, col) == (10, 5)
    assert msg == "an ode system's equations are written `der STATE = …`, not `next`"
    assert "system discrete" in hint_of(sub("der v = -sin(p) + f", "next v = -sin(p) + f", ODE))


def test_two_equations_for_one_state_at_the_second():
    text = sub("    next v = v + dt * f\n", "    next v = v + dt * f\n    next p = p\n")
    assert only(text) == (8, 10, "two equations for state 'p'")
    assert hint_of(text).startswith("the first is at line 6")
    # fmt/convert refuse it too (the YAML twin could not hold both)
    assert not parse_model(text, path="t.scpo").ok


def test_duplicate_equation_in_yaml_is_reported_too():
    y = yaml_of(DISCRETE).replace("next: {p: p + dt * v, v: v + dt * f}",
                                  "next: {p: p + dt * v, v: v + dt * f, p: p}")
    assert "p: p}" in y
    (err,) = errors(y, path="t.yaml")
    assert err[2] == "two equations for state 'p'"


def test_missing_and_unknown_equations():
    text = sub("    next v = v + dt * f\n", "")
    assert only(text) == (3, 1, "no `next` equation for state 'v'")
    assert hint_of(text) == "every state has exactly one equation: add `next v = …`"
    text = sub("    next v = v + dt * f\n", "    next vv = v + dt * f\n")
    assert sorted(errors(text)) == [(3, 1, "no `next` equation for state 'v'"),
                                    (7, 10, "`next` equation for unknown state 'vv'")]
    text = sub("    next v = v + dt * f\n", "    next vel = v + dt * f\n")
    d = [d for d in check(text).diagnostics if d.message.startswith("`next` equation")][0]
    assert d.hint == "states are 'p', 'v'"
    text = CARTPOLE.replace("der theta_dot =", "der theta_dt =")
    d = [d for d in check(text).diagnostics if d.message.startswith("`der` equation")][0]
    assert d.hint == "did you mean 'theta_dot'?"
    text = sub("    next v = v + dt * f\n", "    next v = v + dt * f\n    next f = 0\n")
    assert only(text) == (8, 10, "'f' is an input; `next` equations are for states")
    text = ODE.replace("    der p = v\n", "").replace("    der v = -sin(p) + f\n", "")
    assert only(text) == (3, 1, "no `der` equation for states 'p', 'v'")


def test_equation_right_hand_sides_are_scalar_values():
    def err(rhs):
        return only(sub("next v = v + dt * f", f"next v = {rhs}"))
    assert err("v + unknown") == (7, 18, "unknown name 'unknown'")
    assert err("v <= 1") == (7, 14, "the `next` equation of 'v' is a value, not a condition")
    assert err("always v") == (7, 14, "the `next` equation of 'v' is a value, not a temporal "
                                      "operator")
    assert err("norm(state)") == (7, 19, "the `next` equation of 'v' cannot read 'state'")
    assert err("spectral_radius * v") == (7, 14, "the `next` equation of 'v' cannot read "
                                                 "'spectral_radius'")
    assert err("[v, f]") == (7, 14, "the `next` equation of 'v' must be a number, got a vector "
                                    "of 2")
    assert err('"text"') == (7, 14, "a string cannot appear in a formula")
    assert err("atan2(v)") == (7, 14, "atan2 takes 2 arguments: atan2(y, x)")
    # a did-you-mean for a misspelt signal
    text = sub("next v = v + dt * f", "next v = v + dt * ff")
    assert hint_of(text) == "did you mean 'f'?"


def test_equations_must_be_finite_at_the_origin():
    assert only(sub("next v = v + dt * f", "next v = v + log(p)")) == \
        (7, 18, "the `next` equation of 'v' is not finite at the origin (x = 0, u = 0): "
                "arithmetic error: divide by zero encountered in log")
    assert only(sub("next p = p + dt * v", "next p = p + v / p")) == \
        (6, 22, "the `next` equation of 'p' is not finite at the origin (x = 0, u = 0): "
                "division by zero")
    assert only(sub("der v = -sin(p) + f", "der v = sqrt(p - 1)", ODE)) == \
        (10, 13, "the `der` equation of 'v' is not finite at the origin (x = 0, u = 0): "
                 "arithmetic error: invalid value encountered in sqrt")
    # constants are folded in: finite where they make it so
    ok_spec(sub("next v = v + dt * f", "next v = v + log(p + dt) - log(dt)"))


def test_ode_numbers():
    assert only(sub("dt = 0.05", "dt = 0", ODE)) == (6, 10, "ode dt must be positive, got 0")
    assert only(sub("    dt = 0.05\n", "", ODE)) == (3, 1, "missing ode dt")
    assert hint_of(sub("    dt = 0.05\n", "", ODE)) == "add `dt = …`"
    assert only(sub("substeps 4", "substeps 1.5", ODE)) == \
        (8, 14, "substeps must be a whole number, got 1.5")
    assert only(sub("substeps 4", "substeps 0", ODE)) == (8, 14, "substeps must be positive, got 0")


def test_python_system_label():
    base = sub(DISCRETE_SYSTEM, 'system python "my_pkg.plant:dynamics" { state p, v  input f }')
    ok_spec(base)  # lqr, lyapunov(backup) and spectral_radius: accepted, numbers left to compile
    assert only(base.replace('"my_pkg.plant:dynamics" ', "")) == \
        (3, 1, "a python system needs its function")
    assert only(base.replace("my_pkg.plant:dynamics", "my_pkg.plant")) == \
        (3, 15, "'my_pkg.plant' is not `module:function`")
    assert (3, 15, "system static takes no quoted id") in errors(
        base.replace("system python", "system static"))


# ------------------------------------------------------------------------------ torch files
def _torch_text(tmp_path, backup='backup torch { file = "controller.pt" }',
                policy="policy mlp { hidden = [8]  residual = backup }", keep_lyapunov=False):
    text = sub("backup lqr { Q = diag(1, 1)  R = diag(1) }", backup)
    text = sub("policy mlp { hidden = [8]  residual = backup }", policy, text)
    if not keep_lyapunov:
        text = sub("stability decay: lyapunov(backup) <= 0.9 at final smoothness 10\n", "", text)
    return text


def test_torch_backup_errors(tmp_path):
    assert only(_torch_text(tmp_path), base_dir=tmp_path) == \
        (9, 23, "file 'controller.pt' does not exist")
    assert hint_of(_torch_text(tmp_path), base_dir=tmp_path).startswith(
        f"looked for {tmp_path / 'controller.pt'}")
    assert only(_torch_text(tmp_path, backup="backup torch { }"), base_dir=tmp_path) == \
        (9, 1, "backup torch needs a file")
    (tmp_path / "controller.pt").write_bytes(b"")
    assert only(_torch_text(tmp_path, keep_lyapunov=True), base_dir=tmp_path) == \
        (13, 27, "lyapunov(backup) needs an lqr backup (its Riccati P is V)")
    assert only(_torch_text(tmp_path, policy="policy linear { init = backup }"),
                base_dir=tmp_path) == \
        (10, 24, "init = backup needs a linear or lqr backup (a gain K to start from); a torch "
                 "backup has none")
    ok_spec(_torch_text(tmp_path, policy="policy linear { init = zero }"), base_dir=tmp_path)
    (tmp_path / "dir.pt").mkdir()
    assert only(_torch_text(tmp_path, backup='backup torch { file = "dir.pt" }'),
                base_dir=tmp_path) == (9, 23, "'dir.pt' is a directory, not a TorchScript file")


def test_torch_policy_errors(tmp_path):
    text = sub("policy mlp { hidden = [8]  residual = backup }", 'policy torch { file = "p.pt" }')
    assert only(text, base_dir=tmp_path) == (10, 23, "file 'p.pt' does not exist")
    text = sub("policy mlp { hidden = [8]  residual = backup }", "policy torch { }")
    assert only(text, base_dir=tmp_path) == (10, 1, "policy torch needs a file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.pt").write_bytes(b"")
    text = sub("policy mlp { hidden = [8]  residual = backup }",
               'policy torch { file = "sub/p.pt" }')
    ok_spec(text, base_dir=tmp_path)


# ------------------------------------------------------------------------------ linearisation
def test_declared_systems_accept_lqr_lyapunov_and_spectral_radius():
    for text in (DISCRETE, ODE):
        ok_spec(text)
    # lyapunov(backup)'s V(x₀) check runs on the numpy linearisation: a point box at the origin
    text = sub("initial p in [-1, 1]  initial v in [-0.5, 0.5]",
               "initial p in [0, 0]  initial v in [0, 0]", ODE)
    (err,) = errors(text)
    assert err[:2] == (14, 1) and "V(x₀) = 0 on the whole initial box" in err[2]


def test_discrete_linearisation_is_the_jacobian():
    s = ok_spec(sub("next v = v + dt * f", "next v = v + dt * (sin(p) + 2 * f - tanh(v))"))
    A, B = linearisation(s.system, {"dt": 0.1})
    assert np.allclose(A, [[1, 0.1], [0.1, 1 - 0.1]], atol=1e-9)
    assert np.allclose(B, [[0], [0.2]], atol=1e-9)


@pytest.mark.parametrize("integrator, order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_ode_integrators_on_a_linear_ode(integrator, order):
    """ẋ = a x + b u: F is the integrator's polynomial in h·a; its linearisation is close to the
    exact exp(a dt) to the integrator's order."""
    text = sub(DISCRETE_SYSTEM, f"""system ode {{
    state p, v
    input f
    dt = 0.1
    integrator {integrator}
    substeps 2
    der p = v
    der v = -p - 0.5 * v + f
}}""")
    s = ok_spec(text)
    A, B = linearisation(s.system, {})
    Ac, Bc = np.array([[0, 1], [-1, -0.5]]), np.array([[0], [1]])
    h = 0.05
    one = {"euler": np.eye(2) + h * Ac,
           "midpoint": np.eye(2) + h * Ac + (h * Ac) @ (h * Ac) / 2,
           "rk4": sum(np.linalg.matrix_power(h * Ac, k) / math.factorial(k) for k in range(5))}
    assert np.allclose(A, np.linalg.matrix_power(one[integrator], 2), atol=1e-8)
    exact = scipy.linalg.expm(np.block([[Ac, Bc], [np.zeros((1, 3))]]) * 0.1)
    assert np.abs(A - exact[:2, :2]).max() < 0.5 * h ** order
    F = step_map(s.system, {})
    x1 = F(np.array([0.3, -0.2]), np.array([0.1]))
    assert np.allclose(x1, A @ [0.3, -0.2] + B @ [0.1], atol=1e-8)  # linear: F is A x + B u


def test_cartpole_ode_spec_passes_check_and_linearises_like_the_exact_discretisation():
    s = ok_spec(CARTPOLE)
    assert isinstance(s.system, M.OdeSystem) and s.system.integrator.name == "rk4"
    consts = {c.name: c.value.value for c in s.consts}
    A, B = linearisation(s.system, consts)
    g, mc, mp, l = 9.8, 1.0, 0.1, 0.5
    total = mc + mp
    den = l * (4 / 3 - mp / total)
    Ac = np.zeros((4, 4))
    Ac[0, 1] = Ac[2, 3] = 1
    Ac[3, 2] = g / den
    Ac[1, 2] = -mp * l * (g / den) / total
    Bc = np.zeros((4, 1))
    Bc[3, 0] = -1 / (total * den)
    Bc[1, 0] = (1 - mp * l * Bc[3, 0]) / total
    exact = scipy.linalg.expm(np.block([[Ac, Bc], [np.zeros((1, 5))]]) * 0.02)
    assert np.abs(A - exact[:4, :4]).max() < 1e-7
    assert np.abs(B - exact[:4, 4:]).max() < 1e-7
    assert np.abs(np.linalg.eigvals(A)).max() > 1  # upright is unstable: the backup matters
    # fmt and YAML keep it
    round_trip(CARTPOLE)


# ------------------------------------------------------------------------------ new functions
@pytest.mark.parametrize("text, value", [
    ("atan2(1, 1)", math.pi / 4), ("atan2(1, -1)", 3 * math.pi / 4),
    ("atan2(-1, -1)", -3 * math.pi / 4), ("atan2(-1, 1)", -math.pi / 4),
    ("atan2(0, -1)", math.pi), ("atan2(0, 0)", 0.0), ("atan2(1, 0)", math.pi / 2),
    ("clip(5, -1, 1)", 1.0), ("clip(-5, -1, 1)", -1.0), ("clip(0.25, -1, 1)", 0.25),
    ("clip(0, 2, 1)", 1.0), ("sign(0)", 0.0), ("sign(-3)", -1.0), ("sign(2)", 1.0),
    ("tanh(0)", 0.0), ("tanh(1)", math.tanh(1)), ("tanh(-30)", -1.0), ("log(1)", 0.0),
    ("log(exp(2))", 2.0), ("tan(pi / 4)", 1.0), ("norm([3, 4])", 5.0),
    ("quad(diag(1, 2), [1, 1])", 3.0),
])
def test_new_functions_numpy_values(text, value):
    tree, diags = parse_expression(text, Source("x", text))
    assert diags == []
    assert float(evaluate(tree, {})) == pytest.approx(value, abs=1e-15)


def test_new_functions_elementwise_and_errors():
    def ev(text):
        tree, _ = parse_expression(text, Source("x", text))
        return evaluate(tree, {})
    assert ev("clip([-2, 0.5, 3], -1, 1)").tolist() == [-1.0, 0.5, 1.0]
    assert ev("clip([-2, 0.5, 3], [0, 0, 0], 1)").tolist() == [0.0, 0.5, 1.0]
    assert ev("sign([-2, 0, 3])").tolist() == [-1.0, 0.0, 1.0]
    assert np.allclose(ev("atan2([1, -1], -1)"), [3 * math.pi / 4, -3 * math.pi / 4])
    for text, message in (("log(0)", "divide by zero"), ("log(-1)", "invalid value"),
                          ("atan2(1)", "atan2 takes 2 arguments: atan2(y, x)"),
                          ("clip(1, 2)", "clip takes 3 arguments: clip(e, lo, hi)"),
                          ("clip([1, 2], [1, 2, 3], 4)", "clip arguments have different shapes")):
        with pytest.raises(EvalError) as info:
            ev(text)
        assert message in info.value.message


def test_new_functions_in_constraint_formulas():
    text = sub("constraint stay: always abs(p) <= 2 smoothness 10",
               "constraint stay: always clip(p, -3, 3) + sign(v) * tanh(f) + atan2(v, 1) <= 2 "
               "smoothness 10")
    ok_spec(text)
    bad = sub("constraint stay: always abs(p) <= 2 smoothness 10",
              "constraint stay: always clip(p, 1) <= 2 smoothness 10")
    assert only(bad) == (12, 25, "clip takes 3 arguments: clip(e, lo, hi)")
    bad = sub("constraint stay: always abs(p) <= 2 smoothness 10",
              "constraint stay: always atan2(state, [1, 2, 3]) <= 2 smoothness 10")
    assert only(bad) == (12, 25, "cannot combine a vector of 2 with a vector of 3")
    bad = sub("constraint stay: always abs(p) <= 2 smoothness 10",
              "constraint stay: always tanhh(p) <= 2 smoothness 10")
    assert only(bad) == (12, 25, "unknown function 'tanhh'")
    assert hint_of(bad) == "did you mean 'tanh'?"
    # the new function names are reserved for signals
    assert (4, 17, "'sign' is a reserved word and cannot name a signal") in errors(
        DISCRETE.replace("state p, v", "state p, v, sign"))


# ------------------------------------------------------------------------------ fmt and YAML
def yaml_of(text: str) -> str:
    parsed = parse_model(text, path="t.scpo")
    assert parsed.ok, [d.headline() for d in parsed.diagnostics]
    return format_yaml(parsed.spec)


def round_trip(text: str, base_dir=None) -> str:
    """.scpo → fmt is stable; .scpo → YAML → model is the same model; YAML → .scpo too."""
    first = parse_model(text, path="t.scpo")
    assert first.ok, [d.headline() for d in first.diagnostics]
    once = format_spec(first.spec, find_comments(text))
    again = parse_model(once, path="t.scpo")
    assert again.ok and again.spec.same_as(first.spec), once
    assert format_spec(again.spec, find_comments(once)) == once
    as_yaml = format_yaml(first.spec)
    from_yaml = parse_model(as_yaml, path="t.yaml")
    assert from_yaml.ok, (as_yaml, [d.headline() for d in from_yaml.diagnostics])
    assert from_yaml.spec.same_as(first.spec), as_yaml
    assert format_yaml(from_yaml.spec) == as_yaml
    back = format_spec(from_yaml.spec)
    assert parse_model(back, path="t.scpo").spec.same_as(first.spec)
    # both syntaxes say the same things about it (at their own places)
    messages = lambda t, path: sorted(d.message for d in check_text(  # noqa: E731
        t, path=path, base_dir=base_dir).diagnostics)
    assert messages(as_yaml, "t.yaml") == messages(text, "t.scpo")
    return once


def test_fmt_writes_equations_in_order_and_round_trips():
    text = sub("""    next p = p + dt * v
    next v = v + dt * f""", """    next v = v + dt * f      # velocity first
    # the position
    next p = p+dt*v""")
    once = round_trip(text)
    assert """system discrete {
    state p, v
    input f
    next v = v + dt * f  # velocity first
    # the position
    next p = p + dt * v
}""" in once


def test_fmt_of_ode_python_and_torch_forms(tmp_path):
    once = round_trip(ODE)
    assert ODE_SYSTEM in once
    text = sub(DISCRETE_SYSTEM,
               'system python "my_pkg.plant:dynamics" {\n  state p, v\n  input f }')
    text = sub("backup lqr { Q = diag(1, 1)  R = diag(1) }", 'backup torch {file="c.pt"}', text)
    text = sub("policy mlp { hidden = [8]  residual = backup }", 'policy torch { file = "p.pt" }',
               text)
    once = round_trip(text)
    assert 'system python "my_pkg.plant:dynamics" { state p, v  input f }' in once
    assert 'backup torch { file = "c.pt" }' in once
    assert 'policy torch { file = "p.pt" }' in once


def test_yaml_twin_of_declared_systems():
    y = yaml_of(DISCRETE)
    assert "  kind: discrete\n" in y and "next: {p: p + dt * v, v: v + dt * f}" in y
    y = yaml_of(ODE)
    assert "der: {p: v, v: -sin(p) + f}" in y and "integrator: midpoint" in y
    written = textwrap.dedent("""\
        spec: d
        title: declared
        const: {dt: 0.1}
        system:
          kind: discrete
          state: [p, v]
          input: [f]
          next:
            p: p + dt * v
            v: "v + dt * f"
        backup: {kind: lqr, Q: "diag(1, 1)", R: "diag(1)"}
        policy: {kind: mlp, hidden: [8], residual: backup}
        scenarios: {initial: {p: [-1, 1], v: [-0.5, 0.5]}, count: 8, horizon: 20}
        constraints:
          - {name: stay, formula: "always abs(p) <= 2", smoothness: 10}
        stability:
          - {name: decay, formula: "lyapunov(backup) <= 0.9 at final", smoothness: 10}
          - {name: margin, formula: "spectral_radius <= 0.99", smoothness: 10}
        objective: {kind: cost, stage: "quad(diag(1, 1), state) + f^2"}
        train: {steps: 1, optimizer: {kind: sgd, lr: 0.1}, directions: 1, perturbation: 1e-3,
                radius: 0.1, margin: 0}
        """)
    assert ok_spec(written, path="t.yaml").same_as(ok_spec(DISCRETE))
    # a YAML equation is located in the YAML file
    bad = written.replace('v: "v + dt * f"', 'v: "v + dt * g"')
    assert only(bad, path="t.yaml") == (10, 18, "unknown name 'g'")
    bad = written.replace("next:\n    p: p + dt * v\n    v: \"v + dt * f\"", "next: p + v")
    assert only(bad, path="t.yaml")[2].startswith("`next` holds equations")
    py = yaml_of(DISCRETE.replace(DISCRETE_SYSTEM,
                                  'system python "m.plant:step" { state p, v  input f }'))
    assert "system: {kind: python, id: 'm.plant:step', state: [p, v], input: [f]}" in py


# ------------------------------------------------------------------------------ gymnasium module:EnvId
GYM = """\
spec g
system gymnasium "{env}" {{ observation x, v  action f }}
policy linear {{ init = zero }}
scenarios {{ count 2  seed 0  horizon 5 }}
constraint t: always abs(f) <= 2 smoothness 10
objective return {{ }}
train {{ steps 1 optimizer sgd {{ lr = 0.1 }} directions 1 perturbation 1e-3 radius 0.1
        margin 0 }}
"""

ENV_MODULE = '''
import gymnasium
import numpy as np


class Cart(gymnasium.Env):
    observation_space = gymnasium.spaces.Box(-10, 10, (2,), np.float64)
    action_space = gymnasium.spaces.Box(-2, 2, (1,), np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.zeros(2)
        return self.x.copy(), {{}}

    def step(self, action):
        self.x = self.x + 0.1 * np.array([self.x[1], float(action[0])])
        return self.x.copy(), -float(self.x @ self.x), False, False, {{}}


gymnasium.register(id="{env_id}", entry_point=Cart)
'''


def test_gymnasium_module_env_id_is_imported_and_checked(tmp_path, monkeypatch):
    (tmp_path / "scpo_v2_envs_ok.py").write_text(ENV_MODULE.format(env_id="ScpoCart-v0"))
    monkeypatch.syspath_prepend(str(tmp_path))
    result = check(GYM.format(env="scpo_v2_envs_ok:ScpoCart-v0"))
    assert result.ok and result.diagnostics == [], [d.headline() for d in result.diagnostics]
    # the registered id, now known, is checked like any other (its sizes, …)
    assert only(GYM.format(env="scpo_v2_envs_ok:ScpoCart-v0").replace("observation x, v",
                                                                       "observation x")) == \
        (2, 62, "'scpo_v2_envs_ok:ScpoCart-v0' has 2 observation component(s), but 1 are named")


def test_gymnasium_module_errors(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    assert only(GYM.format(env="scpo_v2_no_such_module:Cart-v0")) == \
        (2, 18, "module 'scpo_v2_no_such_module' not found (named by the gymnasium id "
                "'scpo_v2_no_such_module:Cart-v0')")
    (tmp_path / "scpo_v2_envs_raise.py").write_text(
        "raise ValueError('the plant is not calibrated\\nsecond line')\n")
    assert only(GYM.format(env="scpo_v2_envs_raise:Cart-v0")) == \
        (2, 18, "importing module 'scpo_v2_envs_raise' failed: ValueError: the plant is not "
                "calibrated")
    (tmp_path / "scpo_v2_envs_dep.py").write_text("import scpo_v2_missing_dependency\n")
    assert only(GYM.format(env="scpo_v2_envs_dep:Cart-v0")) == \
        (2, 18, "importing module 'scpo_v2_envs_dep' failed: ModuleNotFoundError: No module "
                "named 'scpo_v2_missing_dependency'")
    (tmp_path / "scpo_v2_envs_other.py").write_text(
        ENV_MODULE.format(env_id="ScpoOtherCart-v0"))
    text = GYM.format(env="scpo_v2_envs_other:ScpoOtherCrt-v0")
    assert only(text) == (2, 18, "unknown gymnasium environment 'ScpoOtherCrt-v0' (after "
                                 "importing 'scpo_v2_envs_other')")
    assert hint_of(text) == "did you mean 'ScpoOtherCart-v0'?"
    assert only(GYM.format(env=":Cart-v0")) == (2, 18, "':Cart-v0' is not `module:EnvId`")
    # plain ids are checked as before
    assert only(GYM.format(env="Pendulum-v9").replace("observation x, v",
                                                      "observation c, s, w")) == \
        (2, 18, "unknown gymnasium environment 'Pendulum-v9'")


def test_fmt_breaks_a_long_equation_before_operators_and_reads_it_back():
    """An equation longer than a line is written over several, broken at the shallowest bracket
    depth that fits; the result reads back to the same model and formats to itself."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    text = (root / "specs" / "cartpole.scpo").read_text(encoding="utf-8")
    spec = ok_spec(text)
    out = format_spec(spec, find_comments(text))
    assert max(len(ln) for ln in out.splitlines()) <= 100
    assert "    der theta_dot = (g * sin(theta)" in out
    assert "\n        / (mc + mp)) / (l * (4 / 3" in out  # a continuation line, at depth 0
    again = ok_spec(out)
    assert again.same_as(spec)
    assert format_spec(again, find_comments(out)) == out
    one_line = text.replace("\n        / (mc + mp)) / (l", " / (mc + mp)) / (l")
    assert ok_spec(one_line).same_as(spec)
