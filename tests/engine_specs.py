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


# ---- code a spec names, as its author would write it ----
DI_PLANT = '''\
import torch
DT = 0.1

def dynamics(x, u):
    """The double integrator of small_di, as the author's own code."""
    p, v = x[..., 0], x[..., 1]
    f = u[..., 0]
    return torch.stack((p + DT * v + 0.5 * DT ** 2 * f, v + DT * f), dim=-1)
'''


def point_env(env_id: str) -> str:
    """A module that registers a gymnasium point mass as `env_id` (the author's environment)."""
    return '''\
import gymnasium as gym
import numpy as np

class Point(gym.Env):
    """p⁺ = p + 0.1 v, v⁺ = v + 0.1 f; reward −p²."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gym.spaces.Box(-3.0, 3.0, (1,), np.float64)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, size=2)
        return self.x.copy(), {}

    def step(self, action):
        p, v = self.x
        v = v + 0.1 * float(np.clip(action[0], -3, 3))
        p = p + 0.1 * v
        self.x = np.array([p, v])
        return self.x.copy(), -p * p, False, False, {}

''' + f'gym.register("{env_id}", entry_point=f"{{__name__}}:Point")\n'
