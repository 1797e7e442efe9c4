"""Small, fast specs for the engine tests (a few ms per step)."""

from pathlib import Path

from scpo_spec.language.load import check_text

SMALL_DI = """\
spec small_di "Small double integrator, malicious expert"
const dt = 0.1
system linear {
    state position, velocity
    input force
    A = [[1, dt], [0, 1]]
    B = [[0.5 * dt^2], [dt]]
}
backup lqr { Q = diag(1, 1)  R = diag(1) }
policy mlp { hidden = [8]  activation = tanh  residual = backup  seed = 0 }
scenarios {
    initial position in [-1, 1]
    initial velocity in [-0.5, 0.5]
    count 8
    seed 0
    horizon 20
    holdout 50
}
constraint position_limit: always abs(position) <= 1.5   smoothness POS_ELL
constraint force_limit:    always force in [-4, 4]       smoothness FORCE_ELL
stability margin: spectral_radius <= 0.98                smoothness RHO_ELL
objective imitation {
    expert linear { K = [[-10, 1]]  bias = [0.5] }
    states normal { mean = [0, 0]  std = [1, 1] }  count 64  seed 1
    loss mse
}
train {
    steps STEPS
    optimizer sgd { lr = 0.05 }
    directions 4
    perturbation 1e-3
    radius 0.5
    margin 1e-6
    seed 0
    EXTRA
}
"""


def small_di(steps: int = 6, pos: float = 50, force: float = 50, rho: float = 20,
             extra: str = "") -> str:
    return (SMALL_DI.replace("POS_ELL", f"{pos:g}").replace("FORCE_ELL", f"{force:g}")
            .replace("RHO_ELL", f"{rho:g}").replace("STEPS", str(steps))
            .replace("EXTRA", extra))


def write_spec(tmp_path: Path, text: str, name: str = "spec.scpo") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def spec_of(text: str, base: Path):
    result = check_text(text, path=str(base / "spec.scpo"), base_dir=base)
    assert result.ok, [d.message for d in result.diagnostics]
    return result.spec
