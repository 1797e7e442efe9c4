"""Small helpers shared by the language tests."""

from scpo_spec.language.load import check_text

VALID = """\
spec di "Double integrator"
const dt = 0.1
system linear {
    state position, velocity
    input force
    A = [[1, dt], [0, 1]]
    B = [[0.5 * dt^2], [dt]]
}
backup lqr { Q = diag(1, 1)  R = diag(1) }
policy mlp { hidden = [64, 64]  activation = tanh  residual = backup  seed = 0 }
scenarios {
    initial position in [-1, 1]
    initial velocity in [-0.5, 0.5]
    count 64
    seed 0
    horizon 60
    holdout 1000
}
constraint position_limit: always abs(position) <= 2.5 smoothness 50
constraint force_limit: always force in [-4, 4] smoothness 50
stability decay: lyapunov(backup) <= 0.8 at final smoothness 50
objective imitation {
    expert linear { K = [[-8, -1]]  bias = [0.8] }
    states normal { mean = [0, 0]  std = [1, 1] }  count 512  seed 1
    loss mse
}
train {
    steps 300
    optimizer sgd { lr = 0.05 }
    directions 16
    perturbation 1e-3
    radius 0.5
    margin 1e-6
    solver clarabel
    seed 0
}
"""


def check(text: str, path: str = "t.scpo", base_dir=None, syntax=None):
    return check_text(text, path=path, base_dir=base_dir, syntax=syntax)


def errors(text: str, **kw) -> list[tuple[int, int, str]]:
    """(line, column, message) of every error, in order."""
    return [(d.span.line if d.span else 0, d.span.column if d.span else 0, d.message)
            for d in check(text, **kw).diagnostics if d.severity == "error"]


def as_pendulum(params: str = "dt = 0.05  g = 9.81  m = 1  l = 1") -> str:
    """VALID with a pendulum system (and a linear backup, so no lyapunov(backup))."""
    text = replace(VALID[VALID.index("system linear {"):VALID.index("}\n", VALID.index(
        "system linear {")) + 1], f"system pendulum {{ state position, velocity  input force  "
                                  f"{params} }}")
    text = text.replace("backup lqr { Q = diag(1, 1)  R = diag(1) }",
                        "backup linear { K = [[-20, -5]] }")
    return text


def replace(old: str, new: str, text: str = VALID) -> str:
    assert old in text, old
    return text.replace(old, new, 1)
