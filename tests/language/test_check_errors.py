"""Each semantic error: its line, column and message (and hint where one helps)."""

import json

import pytest
from typer.testing import CliRunner

from scpo_spec.cli import app
from tests.helpers import VALID, as_pendulum, check, errors, replace

runner = CliRunner()


def only_error(text, **kw):
    errs = errors(text, **kw)
    assert len(errs) == 1, errs
    return errs[0]


def test_valid_spec_has_no_diagnostics():
    assert check(VALID).diagnostics == []


def test_unknown_signal_with_did_you_mean():
    text = replace("always abs(position) <= 2.5", "always abs(positon) <= 2.5")
    assert only_error(text) == (19, 39, "unknown name 'positon'")
    d = check(text).diagnostics[0]
    assert d.hint == "did you mean 'position'?"


def test_unknown_constant_with_did_you_mean():
    text = replace("B = [[0.5 * dt^2], [dt]]", "B = [[0.5 * dtt^2], [dt]]")
    assert only_error(text) == (7, 17, "B: unknown constant 'dtt'")
    assert check(text).diagnostics[0].hint == "did you mean 'dt'?"


def test_unknown_name_in_initial_range():
    text = replace("initial velocity in", "initial velocty in")
    errs = errors(text)
    assert (13, 13, "unknown state 'velocty'") in errs
    assert (11, 1, "no initial range for 'velocity'") in errs


@pytest.mark.parametrize("old, new, expected", [
    ("A = [[1, dt], [0, 1]]", "A = [[1, dt, 0], [0, 1, 0]]",
     (6, 9, "A must be 2×2, got 2×3")),
    ("B = [[0.5 * dt^2], [dt]]", "B = [[0.5 * dt^2, 1], [dt, 1]]",
     (7, 9, "B must be 2×1, got 2×2")),
    ("Q = diag(1, 1)", "Q = diag(1, 1, 1)", (9, 18, "Q must be 2×2, got 3×3")),
    ("R = diag(1)", "R = 1", (9, 34, "R must be 1×1, got a number")),
    ("K = [[-8, -1]]", "K = [[-8, -1, 2]]", (23, 25, "expert K must be 1×2, got 1×3")),
    ("bias = [0.8]", "bias = [0.8, 1]", (23, 44, "expert bias must be a vector of 1, got "
                                                 "a vector of 2")),
    ("mean = [0, 0]", "mean = [0]", (24, 28, "mean must be a vector of 2, got a vector of 1")),
])
def test_matrix_shapes_against_declared_dimensions(old, new, expected):
    assert only_error(replace(old, new)) == expected


def test_ragged_matrix():
    assert only_error(replace("A = [[1, dt], [0, 1]]", "A = [[1, dt], [0]]")) == \
        (6, 9, "A: the rows of this matrix have different shapes")


def test_backup_gain_shape():
    text = replace("backup lqr { Q = diag(1, 1)  R = diag(1) }", "backup linear { K = [[1, 2]] }")
    text = text.replace("stability decay: lyapunov(backup) <= 0.8 at final smoothness 50",
                        "stability margin: spectral_radius <= 0.9 smoothness 5")
    assert check(text).diagnostics == []
    assert only_error(text.replace("K = [[1, 2]]", "K = [[1], [2]]")) == \
        (9, 21, "K must be 1×2, got 2×1")


@pytest.mark.parametrize("old, new, expected", [
    ("initial position in [-1, 1]", "initial position in [1, -1]",
     (12, 25, "reversed interval [1, -1] in the initial range of 'position'")),
    ("always force in [-4, 4]", "always force in [4, -4]",
     (20, 41, "reversed interval [4, -4] in this constraint")),
    ("always force in [-4, 4]", "always force in [2, 2]",
     (20, 41, "empty interval [2, 2] in this constraint")),
    ("always force in [-4, 4]", "always force in [1, 2, 3]",
     (20, 41, "this constraint must be an interval [lo, hi] of two numbers")),
])
def test_reversed_and_empty_intervals(old, new, expected):
    assert only_error(replace(old, new)) == expected


def test_point_initial_range_is_allowed():
    assert errors(replace("initial position in [-1, 1]", "initial position in [0.5, 0.5]")) == []


@pytest.mark.parametrize("old, new, expected", [
    ("horizon 60", "horizon -5", (16, 13, "horizon must be positive, got -5")),
    ("horizon 60", "horizon 0", (16, 13, "horizon must be positive, got 0")),
    ("horizon 60", "horizon 2.5", (16, 13, "horizon must be a whole number, got 2.5")),
    ("steps 300", "steps 0", (28, 11, "steps must be positive, got 0")),
    ("radius 0.5", "radius -0.5", (32, 12, "radius must be positive, got -0.5")),
    ("perturbation 1e-3", "perturbation 0", (31, 18, "perturbation must be positive, got 0")),
    ("directions 16", "directions 0", (30, 16, "directions must be positive, got 0")),
    ("count 64", "count 0", (14, 11, "count must be positive, got 0")),
    ("always force in [-4, 4] smoothness 50", "always force in [-4, 4] smoothness 0",
     (20, 60, "smoothness must be positive, got 0")),
    ("always force in [-4, 4] smoothness 50", "always force in [-4, 4] smoothness -1",
     (20, 60, "smoothness must be positive, got -1")),
    ("margin 1e-6", "margin -1e-6", (33, 12, "margin must not be negative, got -1e-06")),
    ("lr = 0.05", "lr = 0", (29, 26, "lr must be positive, got 0")),
])
def test_non_positive_numbers(old, new, expected):
    assert only_error(replace(old, new)) == expected


def test_perturbation_must_be_smaller_than_radius():
    assert only_error(replace("perturbation 1e-3", "perturbation 0.7")) == \
        (31, 18, "perturbation 0.7 must be smaller than radius 0.5")


@pytest.mark.parametrize("old, new, expected", [
    ("constraint force_limit:", "constraint position_limit:",
     (20, 12, "duplicate constraint name 'position_limit'")),
    ("stability decay:", "stability force_limit:",
     (21, 11, "duplicate stability name 'force_limit'")),
    ("const dt = 0.1", "const dt = 0.1\nconst dt = 0.2",
     (3, 7, "duplicate constant 'dt'")),
    ("input force", "input position", (5, 11, "duplicate signal name 'position'")),
    ("count 64", "count 64\n    count 32", (15, 5, "duplicate entry 'count' in scenarios")),
    ("backup lqr", "backup linear { K = [[1, 1]] }\nbackup lqr",
     (10, 1, "duplicate section 'backup'")),
])
def test_duplicate_names(old, new, expected):
    assert expected in errors(replace(old, new))


def test_constant_shadowing_a_signal():
    assert only_error(replace("const dt = 0.1", "const dt = 0.1\nconst force = 1")) == \
        (3, 7, "constant 'force' has the same name as a signal")


@pytest.mark.parametrize("section", ["system", "policy", "scenarios", "objective", "train"])
def test_missing_required_sections(section):
    start = VALID.index(f"\n{section} ") + 1
    end = VALID.index("\n}\n", start) + 3 if "{\n" in VALID[start:VALID.index("\n", start) + 1] \
        else VALID.index("\n", start) + 1
    text = VALID[:start] + VALID[end:]
    assert (1, 1, f"missing section '{section}'") in errors(text)


def test_missing_header_and_properties():
    text = VALID.replace('spec di "Double integrator"\n', "")
    assert (1, 1, "missing `spec NAME` header") in errors(text)
    lines = [ln for ln in VALID.splitlines() if not ln.startswith(("constraint", "stability"))]
    assert (1, 1, "no constraint or stability margin") in errors("\n".join(lines))


@pytest.mark.parametrize("old, new, expected, hint", [
    ("activation = tanh", "activation = tanhh", (10, 46, "unknown activation 'tanhh'"),
     "did you mean 'tanh'?"),
    ("solver clarabel", "solver gurobbi", (34, 12, "unknown solver 'gurobbi'"),
     "did you mean 'gurobi'?"),
    ("optimizer sgd {", "optimizer sdg {", (29, 15, "unknown optimizer kind 'sdg'"),
     "did you mean 'sgd'?"),
    ("optimizer sgd {", "optimizer lbfgs {", (29, 15, "unknown optimizer kind 'lbfgs'"),
     "expected one of 'adam', 'sgd'"),
    ("system linear {", "system lienar {", (3, 8, "unknown system kind 'lienar'"),
     "did you mean 'linear'?"),
    ("loss mse", "loss mes", (25, 10, "unknown loss 'mes'"), "did you mean 'mse'?"),
    ("count 64", "cont 64", (14, 5, "unknown entry 'cont' in scenarios"),
     "did you mean 'count'?"),
])
def test_unknown_choices(old, new, expected, hint):
    text = replace(old, new)
    errs = errors(text)
    assert expected in errs, errs
    d = next(d for d in check(text).diagnostics if d.message == expected[2])
    assert d.hint == hint


def test_unknown_section_is_a_syntax_error_with_hint():
    assert only_error(replace("train {", "trian {")) == (27, 1, "unknown section 'trian'")
    assert check(replace("train {", "trian {")).diagnostics[0].hint == "did you mean 'train'?"


def test_data_file_that_does_not_exist(root, tmp_path):
    spec = (root / "specs" / "regression.scpo").read_text()
    text = spec.replace("../data/harmful.csv", "../data/missing.csv")
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if 'data "' in ln)
    col = text.splitlines()[line - 1].index('"../data/missing') + 1
    assert only_error(text, base_dir=root / "specs") == \
        (line, col, "data file '../data/missing.csv' does not exist")
    bad = tmp_path / "bad.csv"
    bad.write_text("x,z\n1,2\n")
    text = spec.replace("../data/harmful.csv", str(bad))
    assert only_error(text, base_dir=root / "specs")[2] == \
        f"data file '{bad}' has no column 'y'"


GYM = """spec g
system gymnasium "{env}" {{ observation {obs}  action torque }}
policy mlp {{ hidden = [8] }}
scenarios {{ count 2  horizon 5 }}
constraint t: always torque in [-2, 2] smoothness 10
objective return {{ }}
train {{ steps 1 optimizer sgd {{ lr = 0.1 }} directions 1 perturbation 1e-3 radius 0.1
        margin 0 }}
"""


def test_gymnasium_ids_sizes_and_action_spaces():
    ok = GYM.format(env="Pendulum-v1", obs="c, s, w")
    assert check(ok).diagnostics == []
    assert only_error(GYM.format(env="Pendulum-v9", obs="c, s, w")) == \
        (2, 18, "unknown gymnasium environment 'Pendulum-v9'")
    d = check(GYM.format(env="Pendulm-v1", obs="c, s, w")).diagnostics[0]
    assert d.hint == "did you mean 'Pendulum-v1'?"
    assert only_error(GYM.format(env="Pendulum-v1", obs="c, s")) == \
        (2, 46, "'Pendulum-v1' has 3 observation component(s), but 2 are named")
    assert only_error(GYM.format(env="CartPole-v1", obs="a, b, c, d")) == \
        (2, 18, "'CartPole-v1' has a Discrete action space; SCPO needs continuous actions "
                "(a Box)")


def test_metrics_that_can_never_be_evaluated():
    static = """spec s
system static { state x  input y }
policy mlp { hidden = [8] }
scenarios { initial x in [-1, 1]  grid 4 }
constraint band: always abs(y) <= 1 smoothness 10
stability m: spectral_radius <= 0.9 smoothness 10
objective cost { stage y^2 }
train { steps 1 optimizer sgd { lr = 0.1 } directions 1 perturbation 1e-3 radius 0.1 margin 0 }
"""
    assert only_error(static) == (6, 14, "spectral_radius cannot be evaluated for a 'static' "
                                         "system: it needs dynamics linearisable at the origin "
                                         "(linear, pendulum, discrete, ode or python)")
    text = replace("backup lqr { Q = diag(1, 1)  R = diag(1) }", "backup linear { K = [[-1, -2]] }")
    assert only_error(text) == (21, 27, "lyapunov(backup) needs an lqr backup (its Riccati P "
                                        "is V)")
    assert (20, 25, "constraint 'force_limit' does not depend on the policy: it reads no "
                    "signal, so its metric can never change") in \
        errors(replace("always force in [-4, 4]", "always 1 <= 2"))


def test_formula_type_errors():
    assert only_error(replace("always abs(position) <= 2.5", "always abs(position) + 2.5")) == \
        (19, 35, "expected a condition here, got a value")
    assert only_error(replace("always abs(position) <= 2.5", "abs(position) + 2.5")) == \
        (19, 28, "constraint 'position_limit' is not a condition")
    assert only_error(replace("always abs(position) <= 2.5",
                              "always (position <= 1) + 2 <= 3")) == \
        (19, 36, "expected a value here, got a condition")
    assert only_error(replace("always abs(position) <= 2.5", "always abs(position) <= 2.5 "
                              "and 3")) == (19, 60, "expected a condition here, got a value")
    assert only_error(replace("abs(position)", "foo(position)")) == \
        (19, 35, "unknown function 'foo'")


def test_windows_are_cut_at_the_end_of_the_rollout():
    """A window running past the last step is cut there (STL, complete), not an error."""
    assert errors(replace("always abs(position) <= 2.5",
                          "eventually[40:70] norm(state) <= 0.1")) == []
    assert errors(replace("always force in [-4, 4]", "always[0:60] force in [-4, 4]")) == []


def test_empty_windows_are_located_errors():
    """A window that holds no sample where it is read (was: any window past the end)."""
    assert only_error(replace("always abs(position) <= 2.5",
                              "eventually[61:70] norm(state) <= 0.1")) == \
        (19, 38, "window [61:70] holds no sample (states run to step 60 for horizon 60)")
    assert only_error(replace("always force in [-4, 4]", "always[60:60] force in [-4, 4]")) == \
        (20, 31, "window [60:60] holds no sample (inputs run to step 59 for horizon 60)")
    # nested: the unbounded `always` reads the inner window up to t = 60, where [2:3] is empty
    assert only_error(replace("always abs(position) <= 2.5",
                              "always eventually[2:3] abs(position) <= 2.5")) == \
        (19, 45, "window [2:3] holds no sample at step 60, where an enclosing window reads it "
                 "(states run to step 60 for horizon 60)")
    d = check(replace("always abs(position) <= 2.5",
                      "always eventually[2:3] abs(position) <= 2.5")).diagnostics[0]
    assert d.hint == "end the enclosing window by step 58 (or start this one earlier)"
    assert errors(replace("always abs(position) <= 2.5",
                          "always[0:58] eventually[2:3] abs(position) <= 2.5")) == []
    # `at final` reads its operand at the last step only
    assert only_error(replace("always abs(position) <= 2.5",
                              "at final eventually[1:2] abs(position) <= 2.5")) == \
        (19, 47, "window [1:2] holds no sample at step 60, where `at final` reads it "
                 "(states run to step 60 for horizon 60)")
    # a mixed atom lives on t = 0 … 59
    assert only_error(replace("always abs(position) <= 2.5",
                              "eventually[60:60] (position <= 1 and force <= 1)")) == \
        (19, 38, "window [60:60] holds no sample (inputs run to step 59 for horizon 60)")
    # until: ψ must have a sample in [t+a, t+b]
    assert only_error(replace("always abs(position) <= 2.5",
                              "position <= 1 until[61:62] velocity <= 1")) == \
        (19, 47, "window [61:62] holds no sample (states run to step 60 for horizon 60)")


def test_bad_windows():
    assert only_error(replace("always abs(position) <= 2.5",
                              "always[10:5] abs(position) <= 2.5")) == \
        (19, 34, "reversed window [10:5]")
    assert only_error(replace("always abs(position) <= 2.5",
                              "position <= 1 until[3:1] velocity <= 1")) == \
        (19, 47, "reversed window [3:1]")
    assert only_error(replace("always abs(position) <= 2.5",
                              "position <= 1 until[0.5:1] velocity <= 1")) == \
        (19, 48, "window bounds are step numbers (whole, ≥ 0), got 0.5")
    assert only_error(replace("always abs(position) <= 2.5",
                              "position <= 1 until[0:position] velocity <= 1")) == \
        (19, 50, "window bounds must be constant: unknown constant 'position'")
    assert only_error(replace("always abs(position) <= 2.5",
                              "not (position + 1) -> velocity <= 1")) == \
        (19, 33, "expected a condition here, got a value")


def test_quad_shape():
    text = replace("""objective imitation {
    expert linear { K = [[-8, -1]]  bias = [0.8] }
    states normal { mean = [0, 0]  std = [1, 1] }  count 512  seed 1
    loss mse
}""", "objective cost { stage quad(diag(1, 1, 1), state) }")
    assert only_error(text) == (22, 29, "quad needs a 2×2 matrix for a vector of 2, got 3×3")


def test_missing_smoothness():
    text = replace("always force in [-4, 4] smoothness 50", "always force in [-4, 4]")
    assert only_error(text) == (20, 12, "constraint 'force_limit' has no smoothness constant")


def test_residual_backup_without_backup():
    lines = [ln for ln in VALID.splitlines() if not ln.startswith("backup")]
    text = "\n".join(lines).replace("stability decay: lyapunov(backup) <= 0.8 at final "
                                    "smoothness 50\n", "")
    assert (9, 63, "residual = backup, but the spec has no backup section") in errors(text)


def test_errors_are_all_collected_and_sorted():
    text = replace("train {", "train {\n    bogus 1", replace(
        "activation = tanh", "activation = relux", replace(
            "always abs(position) <= 2.5", "always abs(positon) <= 2.5")))
    errs = errors(text)
    assert [e[2] for e in errs] == ["unknown activation 'relux'", "unknown name 'positon'",
                                    "unknown entry 'bogus' in train"]
    assert errs == sorted(errs)


@pytest.mark.parametrize("text, expected", [
    ("spec x\nsystem linear {\n  state a\n", (3, 9, "unexpected end of file")),
    ('spec x "unterminated\n', (1, 8, "unterminated string")),
    ("spec x\nconstraint a always x <= 1\n", (2, 14, "unexpected 'always'")),
    ("spec x\nconst a = 1 $ 2\n", (2, 13, "unexpected character '$'")),
    ("spec x\nconst a = (1 + 2\n", (2, 16, "unexpected end of file")),
])
def test_syntax_errors(text, expected):
    assert errors(text) == [expected]


def test_cli_check_renders_caret_and_hint(tmp_path):
    f = tmp_path / "bad.scpo"
    f.write_text(replace("always abs(position) <= 2.5", "always abs(positon) <= 2.5"))
    result = runner.invoke(app, ["check", str(f)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    head = next(i for i, ln in enumerate(lines) if "error: unknown name 'positon'" in ln)
    assert lines[head].startswith(f"{f}:19:39: error:")
    assert "constraint position_limit: always abs(positon) <= 2.5" in lines[head + 1]
    caret = lines[head + 2]
    source_col = lines[head + 1].index("positon")
    assert caret.index("^") == source_col and caret.count("~") == len("positon") - 1
    assert "did you mean 'position'?" in lines[head + 3]


def test_cli_exit_codes_and_json(tmp_path, root):
    good = tmp_path / "good.scpo"
    good.write_text(VALID)
    bad = tmp_path / "bad.scpo"
    bad.write_text(replace("horizon 60", "horizon -1"))
    assert runner.invoke(app, ["check", str(good)]).exit_code == 0
    assert runner.invoke(app, ["check", str(good), str(bad)]).exit_code == 1
    assert runner.invoke(app, ["check", str(tmp_path / "nope.scpo")]).exit_code == 2
    assert runner.invoke(app, ["check", "--bogus", str(good)]).exit_code == 2
    assert runner.invoke(app, ["check"]).exit_code == 2
    result = runner.invoke(app, ["check", "--json", str(good), str(bad)])
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    assert [f["ok"] for f in payload["files"]] == [True, False]
    (d,) = payload["files"][1]["diagnostics"]
    assert (d["line"], d["column"], d["severity"], d["message"]) == \
        (16, 13, "error", "horizon must be positive, got -1")


def test_gymnasium_system_without_an_id():
    text = GYM.format(env="Pendulum-v1", obs="c, s, w").replace(' "Pendulum-v1"', "")
    assert only_error(text) == (2, 1, "a gymnasium system needs the environment's id")


def test_grid_is_not_for_gymnasium_and_ids_only_for_gymnasium():
    text = GYM.format(env="Pendulum-v1", obs="c, s, w").replace("count 2", "grid 2")
    assert only_error(text) == (4, 18, "gymnasium scenarios are resets with seeds seed, "
                                       "seed+1, …; use `count`")
    assert only_error(replace("system linear {", 'system linear "X" {')) == \
        (3, 15, "system linear takes no quoted id")


def test_kind_given_twice():
    assert only_error(replace("input force", "input force\n    kind = static")) == \
        (6, 5, "the kind of this system is given twice")


def test_required_physical_parameters_and_layer_widths():
    text = as_pendulum("dt = 0.05  m = 1  l = 1")
    text = text.replace("stability decay: lyapunov(backup) <= 0.8 at final smoothness 50", "")
    assert only_error(text) == (3, 1, "missing pendulum g")
    assert only_error(replace("hidden = [64, 64]  ", "")) == (10, 1, "missing hidden")


def test_quoted_strings_keep_escapes_and_non_ascii():
    from scpo_spec.language.format import format_spec
    from scpo_spec.language.scpo_reader import find_comments
    text = replace('spec di "Double integrator"', 'spec di "say \\"hi\\" — dé\\\\x"')
    spec = check(text).spec
    assert spec.title.value == 'say "hi" — dé\\x'
    once = format_spec(spec, find_comments(text))
    twice = format_spec(check(once).spec, find_comments(once))
    assert once == twice and 'spec di "say \\"hi\\" — dé\\\\x"' in once


def test_yaml_name_list_written_as_one_string():
    from tests.language.test_forms import YAML
    y = check(YAML.replace("state: [theta, omega]", 'state: "theta, omega"'), path="t.yaml")
    assert y.ok and [s.name for s in y.spec.system.states] == ["theta", "omega"]


def test_an_unbuildable_section_does_not_cascade():
    text = replace("system linear {", "system lienar {", replace("optimizer sgd {", "optimizer sdg {"))
    assert [e[2] for e in errors(text)] == ["unknown system kind 'lienar'",
                                            "unknown optimizer kind 'sdg'"]


@pytest.mark.parametrize("equation, expected", [
    ("next v = v + dt * g", (7, 23, "unknown name 'g'")),
    ("next v = v + 1 / p", (7, 22, "the `next` equation of 'v' is not finite at the origin "
                                   "(x = 0, u = 0): division by zero")),
    ("next v = eventually v <= 1", (7, 14, "the `next` equation of 'v' is a value, not a "
                                           "temporal operator")),
    ("next q = v", (7, 10, "`next` equation for unknown state 'q'")),
])
def test_declared_system_equation_errors(equation, expected):
    from tests.language.test_forms_plants_and_code import DISCRETE
    text = DISCRETE.replace("next v = v + dt * f", equation)
    found = errors(text)
    assert expected in found, found


@pytest.mark.parametrize("bound", ["1e308 * 10", "exp(800)", "-exp(800)"])
def test_a_bound_that_overflows_is_an_error(bound):
    """A comparison side that reads no signal is a number; an overflow made it ±inf and the
    metric +inf (unsafe) or −inf (vacuous) without a word from `check`."""
    text = replace("always abs(position) <= 2.5", f"always abs(position) <= {bound}")
    line, col, msg = only_error(text)
    assert line == 19 and f"{bound} is not a finite number" in msg


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs here")
def test_a_pipe_is_not_read_as_a_spec(tmp_path):
    """`scpo check` on a FIFO with no writer used to wait forever."""
    import os
    from scpo_spec.language.load import check_file
    fifo = tmp_path / "spec.scpo"
    os.mkfifo(fifo)
    result = check_file(fifo)
    assert not result.ok
    assert result.diagnostics[0].message.startswith("is not a regular file")
