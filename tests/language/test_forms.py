"""Every form of LANGUAGE.md parses into the model with the right values."""

import math

import pytest

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from tests.helpers import VALID, as_pendulum, check, replace


def spec_of(text, **kw):
    result = check(text, **kw)
    assert result.ok, [d.headline() for d in result.diagnostics]
    return result.spec


def test_header_comments_and_consts():
    s = spec_of("# a comment runs to the end of the line\n" + replace(
        "const dt = 0.1", "const dt = 0.1            # named numbers\nconst g = 2 * dt^2 + 1"))
    assert s.name.name == "di" and s.title.value == "Double integrator"
    assert [c.name for c in s.consts] == ["dt", "g"]
    assert s.consts[1].value.value == pytest.approx(2 * 0.01 + 1)
    assert s.consts[0].span.line == 3 and s.consts[0].span.column == 7


@pytest.mark.parametrize("text, value", [
    ("1", 1.0), ("-0.5", -0.5), ("1e-3", 1e-3), ("2 + 3 * 4", 14.0), ("(2 + 3) * 4", 20.0),
    ("2^3^2", 512.0), ("-2^2", -4.0), ("10 / 4 - 1", 1.5), ("dt * 10", 1.0), ("pi", math.pi),
])
def test_numbers_and_arithmetic(text, value):
    s = spec_of(replace("const dt = 0.1", f"const dt = 0.1\nconst k = {text}"))
    assert s.consts[1].value.value == pytest.approx(value)


def test_vectors_matrices_diag_eye():
    s = spec_of(VALID)
    assert s.system.A.value == [[1.0, 0.1], [0.0, 1.0]]
    assert s.system.B.value == [[pytest.approx(0.005)], [pytest.approx(0.1)]]
    assert s.backup.Q.value == [[1.0, 0.0], [0.0, 1.0]]
    assert s.backup.R.value == [[1.0]]
    s = spec_of(replace("Q = diag(1, 1)", "Q = 2 * eye(2)"))
    assert s.backup.Q.value == [[2.0, 0.0], [0.0, 2.0]]
    s = spec_of(replace("Q = diag(1, 1)", "Q = diag([3, 4])"))
    assert s.backup.Q.value == [[3.0, 0.0], [0.0, 4.0]]
    # the expression as written is kept, not only its value
    assert E.unparse(spec_of(VALID).system.B.expr) == "[[0.5 * dt^2], [dt]]"


def test_system_linear():
    sys = spec_of(VALID).system
    assert isinstance(sys, M.LinearSystem)
    assert [s.name for s in sys.states] == ["position", "velocity"]
    assert [s.name for s in sys.inputs] == ["force"]


def test_system_pendulum_on_one_line():
    text = as_pendulum()
    text = text.replace("stability decay: lyapunov(backup) <= 0.8 at final smoothness 50",
                        "stability margin: spectral_radius <= 0.98 smoothness 20")
    s = spec_of(text)
    assert isinstance(s.system, M.PendulumSystem)
    assert (s.system.dt.value, s.system.g.value, s.system.m.value, s.system.l.value) == \
        (0.05, 9.81, 1.0, 1.0)
    assert isinstance(s.backup, M.LinearBackup) and s.backup.K.value == [[-20.0, -5.0]]
    f = s.stability[0].formula
    assert isinstance(f, E.Compare) and f.op == "<=" and f.left.id == "spectral_radius"


def test_system_static_and_regression(root):
    text = """spec reg
system static { state x  input y }
policy mlp { hidden = [8]  activation = tanh  seed = 0 }
scenarios { initial x in [-3, 3]  grid 64  horizon 1 }
constraint fit_band: y <= 1 + 0.5 * x smoothness 10
objective regression { data "data/harmful.csv"  inputs x  targets y  loss mse }
train { steps 10 optimizer adam { lr = 1e-3 } directions 4 perturbation 1e-3 radius 0.5
        margin 1e-6 }
"""
    s = spec_of(text, base_dir=root)
    assert isinstance(s.system, M.StaticSystem)
    assert s.scenarios.grid.value == 64 and s.scenarios.count is None
    obj = s.objective
    assert isinstance(obj, M.RegressionObjective) and obj.data.value == "data/harmful.csv"
    assert [i.name for i in obj.inputs] == ["x"] and [t.name for t in obj.targets] == ["y"]
    assert isinstance(s.train.optimizer, M.AdamOptimizer) and s.train.optimizer.lr.value == 1e-3
    f = s.constraints[0].formula
    assert isinstance(f, E.Compare) and isinstance(f.right, E.Binary) and f.right.op == "+"


def test_system_gymnasium():
    text = """spec pend
system gymnasium "Pendulum-v1" {
    observation cos_theta, sin_theta, omega
    action torque
}
policy mlp { hidden = [16] }
scenarios { count 4  seed 0  horizon 20 }
constraint torque_limit: always torque in [-2, 2] smoothness 10
objective imitation { expert linear { K = [[0, 0, -1]] }  states normal { mean = [1, 0, 0]
    std = [0.1, 0.1, 0.1] }  count 16  loss mse }
train { steps 5 optimizer sgd { lr = 0.01 } directions 2 perturbation 1e-3 radius 0.1
        margin 0 }
"""
    s = spec_of(text)
    assert isinstance(s.system, M.GymnasiumSystem) and s.system.env_id.value == "Pendulum-v1"
    assert [x.name for x in s.system.states] == ["cos_theta", "sin_theta", "omega"]
    assert [x.name for x in s.system.inputs] == ["torque"]


def test_backup_policy_forms():
    s = spec_of(VALID)
    assert isinstance(s.backup, M.LqrBackup)
    p = s.policy
    assert isinstance(p, M.MlpPolicy) and p.hidden.value == [64.0, 64.0]
    assert p.activation.name == "tanh" and p.residual.name == "backup" and p.seed.value == 0
    s = spec_of(replace("policy mlp { hidden = [64, 64]  activation = tanh  residual = backup  "
                        "seed = 0 }", "policy linear { init = backup }"))
    assert isinstance(s.policy, M.LinearPolicy) and s.policy.init.name == "backup"


def test_scenarios():
    sc = spec_of(VALID).scenarios
    assert [(r.signal.name, r.interval.value) for r in sc.initial] == \
        [("position", [-1.0, 1.0]), ("velocity", [-0.5, 0.5])]
    assert (sc.count.value, sc.seed.value, sc.horizon.value, sc.holdout.value) == \
        (64, 0, 60, 1000)
    sc = spec_of(replace("count 64", "grid 8")).scenarios
    assert sc.grid.value == 8 and sc.count is None


@pytest.mark.parametrize("formula, check_tree", [
    ("always abs(position) <= 2.5",
     lambda f: f.op == "always" and f.window is None and f.body.op == "<="
     and f.body.left.func == "abs" and f.body.right.value == 2.5),
    ("always force in [-4, 4]",
     lambda f: f.body.interval.items[0].value == -4 and f.body.arg.id == "force"),
    ("eventually[40:60] norm(state) <= 0.1",
     lambda f: f.op == "eventually" and f.window.start.value == 40
     and f.window.end.value == 60 and f.body.left.args[0].id == "state"),
    ("at final abs(velocity) <= 0.05",
     lambda f: f.op == "final" and not f.postfix and f.body.left.func == "abs"),
    ("position <= 1 + 0.5 * velocity", lambda f: f.op == "<=" and f.right.op == "+"),
    ("position >= -2 and velocity < 3 or force > -1",
     lambda f: isinstance(f, E.Or) and isinstance(f.args[0], E.And)
     and [a.op for a in f.args[0].args] == [">=", "<"]),
    ("always (abs(position) <= 2 and abs(velocity) <= 3)",
     lambda f: isinstance(f.body, E.And) and len(f.body.args) == 2),
    ("lyapunov(backup) <= 0.8 at final",
     lambda f: f.op == "final" and f.postfix and f.body.left.func == "lyapunov"),
    ("quad(diag(1, 1), state) + quad(diag(0.1), input) <= 10",
     lambda f: f.left.left.func == "quad" and f.left.right.args[1].id == "input"),
    ("max(abs(position), sqrt(velocity^2)) - min(exp(sin(force)), cos(force)) <= 5",
     lambda f: f.left.left.func == "max" and f.left.right.func == "min"),
    ("always abs(state) <= 3", lambda f: f.body.left.args[0].id == "state"),
])
def test_formulas(formula, check_tree):
    s = spec_of(replace("always abs(position) <= 2.5", formula))
    f = s.constraints[0].formula
    assert check_tree(f), E.unparse(f)
    assert s.constraints[0].smoothness.value == 50
    assert s.constraints[0].span.line == 19


def test_stability_forms():
    s = spec_of(replace("stability decay: lyapunov(backup) <= 0.8 at final smoothness 50",
                        "stability decay:  lyapunov(backup) <= 0.8 at final     smoothness 50\n"
                        "stability margin: spectral_radius <= 0.98              smoothness 20"))
    assert [p.name.name for p in s.stability] == ["decay", "margin"]
    assert [p.section for p in s.properties] == ["constraint", "constraint", "stability",
                                                 "stability"]
    assert s.stability[1].smoothness.value == 20


def test_property_options_margin_and_lipschitz():
    s = spec_of(replace("force in [-4, 4] smoothness 50",
                        "force in [-4, 4] smoothness 50 margin 0.01 lipschitz 3"))
    c = s.constraints[1]
    assert (c.smoothness.value, c.margin.value, c.lipschitz.value) == (50, 0.01, 3)


def test_objectives():
    obj = spec_of(VALID).objective
    assert isinstance(obj, M.ImitationObjective)
    assert obj.expert.K.value == [[-8.0, -1.0]] and obj.expert.bias.value == [0.8]
    assert isinstance(obj.states, M.NormalStates)
    assert obj.states.mean.value == [0.0, 0.0] and obj.states.std.value == [1.0, 1.0]
    assert (obj.count.value, obj.seed.value, obj.loss.name) == (512, 1, "mse")
    s = spec_of(replace("""objective imitation {
    expert linear { K = [[-8, -1]]  bias = [0.8] }
    states normal { mean = [0, 0]  std = [1, 1] }  count 512  seed 1
    loss mse
}""", "objective cost { stage quad(diag(1, 1), state) + quad(diag(0.1), input) }"))
    assert isinstance(s.objective, M.CostObjective)
    assert E.unparse(s.objective.stage) == "quad(diag(1, 1), state) + quad(diag(0.1), input)"


def test_train_all_entries():
    s = spec_of(replace("    solver clarabel\n    seed 0\n}\n", """    solver clarabel
    seed 0
    on_violation stop
    aggregate smooth(0.01)
    backtrack none
    precision float64
    smoothness given
}
"""))
    t = s.train
    assert (t.steps.value, t.directions.value, t.perturbation.value, t.radius.value,
            t.margin.value, t.seed.value) == (300, 16, 1e-3, 0.5, 1e-6, 0)
    assert isinstance(t.optimizer, M.SgdOptimizer) and t.optimizer.lr.value == 0.05
    assert t.solver.name == "clarabel" and t.on_violation.name == "stop"
    assert t.aggregate.kind == "smooth" and t.aggregate.tau.value == 0.01
    assert t.backtrack.name == "none" and t.precision.name == "float64"
    assert t.smoothness.name == "given"
    s = spec_of(replace("solver clarabel", "solver scs\n    aggregate hard\n    "
                        "smoothness estimate"))
    assert s.train.solver.name == "scs" and s.train.aggregate.kind == "hard"
    assert s.train.smoothness.name == "estimate"


def test_smoothness_estimate_allows_missing_constants():
    text = replace("smoothness given", "smoothness estimate",
                   replace("solver clarabel", "solver clarabel\n    smoothness given"))
    text = text.replace("always abs(position) <= 2.5 smoothness 50", "always abs(position) <= 2.5")
    s = spec_of(text)
    assert s.constraints[0].smoothness is None


def test_sections_in_any_order():
    # the train block moved before the header: the same model
    cut = VALID.index("train {")
    assert spec_of(VALID).same_as(spec_of(VALID[cut:] + "\n" + VALID[:cut]))


YAML = """\
spec: pendulum_hold
const: {dt: 0.05}
system: {kind: pendulum, state: [theta, omega], input: [torque], dt: dt, g: 9.81, m: 1, l: 1}
backup: {kind: linear, K: [[-20, -5]]}
policy: {kind: mlp, hidden: [16], activation: tanh, residual: backup, seed: 0}
scenarios:
  initial: {theta: [-0.3, 0.3], omega: [-0.2, 0.2]}
  count: 16
  seed: 0
  horizon: 50
constraints:
  - {name: angle, formula: "always abs(theta) <= 0.6", smoothness: 100}
stability:
  - {name: decay, formula: "spectral_radius <= 0.98", smoothness: 20}
objective: {kind: cost, stage: "quad(diag(1, 0.1), state) + quad(diag(0.01), input)"}
train: {steps: 30, optimizer: {kind: sgd, lr: 0.01}, directions: 6, perturbation: 1.0e-4, radius: 0.3, margin: 1.0e-5, seed: 1}
"""

SCPO_TWIN = """\
spec pendulum_hold
const dt = 0.05
system pendulum { state theta, omega  input torque  dt = dt  g = 9.81  m = 1  l = 1 }
backup linear { K = [[-20, -5]] }
policy mlp { hidden = [16]  activation = tanh  residual = backup  seed = 0 }
scenarios { initial theta in [-0.3, 0.3]  initial omega in [-0.2, 0.2]  count 16  seed 0
            horizon 50 }
constraint angle: always abs(theta) <= 0.6 smoothness 100
stability decay: spectral_radius <= 0.98 smoothness 20
objective cost { stage quad(diag(1, 0.1), state) + quad(diag(0.01), input) }
train { steps 30 optimizer sgd { lr = 0.01 } directions 6 perturbation 1.0e-4 radius 0.3
        margin 1.0e-5 seed 1 }
"""


def test_yaml_twin_is_the_same_model():
    y = spec_of(YAML, path="t.yaml")
    s = spec_of(SCPO_TWIN)
    assert y.same_as(s)
    assert y.system.dt.value == 0.05 and y.train.perturbation.value == 1e-4
    # YAML spans point into the YAML file: the angle formula sits on line 12
    assert y.constraints[0].formula.span.line == 12


def test_yaml_numbers_may_be_expression_strings():
    y = spec_of(YAML.replace("K: [[-20, -5]]", 'K: "[[-4 * 5, -5]]"')
                .replace("g: 9.81", 'g: "981 / 100"'), path="t.yaml")
    assert y.backup.K.value == [[-20.0, -5.0]] and y.system.g.value == pytest.approx(9.81)


def test_every_node_keeps_its_span():
    s = spec_of(VALID)
    assert s.system.span.line == 3
    assert s.system.A.span.line == 6 and s.system.A.span.column == 9
    c = s.constraints[1]
    assert c.name.span.line == 20 and c.name.span.column == 12
    body = c.formula.body
    assert (body.span.line, body.span.column) == (20, 32)
    assert s.train.optimizer.lr.span.line == 29


def test_declared_ode_system_and_its_yaml_twin():
    """`system ode` (LANGUAGE-v2.md): equations grouped per word, the YAML twin's `der` mapping
    gives the same model."""
    from tests.language.test_forms_plants_and_code import ODE, ODE_SYSTEM
    s = spec_of(ODE)
    assert isinstance(s.system, M.OdeSystem)
    assert [(eq.state.name, E.unparse(eq.expr)) for eq in s.system.der] == \
        [("p", "v"), ("v", "-sin(p) + f")]
    assert ODE_SYSTEM in ODE
    twin = ODE.replace(ODE_SYSTEM, "system ode { state p, v  input f  der v = -sin(p) + f  "
                       "der p = v  dt = 0.05  substeps 4  integrator midpoint }")
    # the order of the equations is kept (it is how fmt writes them), so it is part of the model
    assert [eq.state.name for eq in spec_of(twin).system.der] == ["v", "p"]
    assert not spec_of(twin).same_as(s)
    assert spec_of(twin.replace("der v = -sin(p) + f  der p = v", "der p = v  der v = -sin(p) + f")
                   ).same_as(s)
