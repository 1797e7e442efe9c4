"""The spec tasks as OmniSafe CMDPs (copied into .cache/omnisafe-work by
benchmarks/compare_omnisafe.py).

The task's parameters come from the JSON file named by $SCPO_OMNI_TASK."""
from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from omnisafe.envs.core import CMDP, env_register

TASK = json.loads(open(os.environ["SCPO_OMNI_TASK"]).read())


@env_register
class ScpoSpecEnv(CMDP):
    _support_envs: ClassVar[list[str]] = ["ScpoPendulum-v0", "ScpoDoubleIntegrator-v0"]
    metadata: ClassVar[dict[str, int]] = {}
    need_auto_reset_wrapper = True
    need_time_limit_wrapper = True
    _num_envs = 1

    def __init__(self, env_id: str, **kwargs: Any) -> None:
        self._env_id = env_id
        self._horizon = int(TASK["horizon"])
        self._rng = np.random.default_rng(0)
        self._t = 0
        self.env_spec_log = {}
        if env_id == "ScpoPendulum-v0":
            self._pend = gymnasium.make(TASK["env_id"]).unwrapped
            self._observation_space = self._pend.observation_space
            self._action_space = self._pend.action_space
        else:
            self._A = np.array(TASK["A"], dtype=np.float64)
            self._B = np.array(TASK["B"], dtype=np.float64)
            self._K = np.array(TASK["K_expert"], dtype=np.float64)
            self._b = np.array(TASK["bias"], dtype=np.float64)
            self._lo = np.array(TASK["box_low"], dtype=np.float64)
            self._hi = np.array(TASK["box_high"], dtype=np.float64)
            f = float(TASK["force_limit"])
            self._observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float64)
            self._action_space = spaces.Box(-f, f, (1,), np.float64)
            self._x = np.zeros(2)

    def step(self, action):
        u = np.asarray(action.detach().cpu().numpy(), dtype=np.float64).reshape(-1)
        self._t += 1
        if self._env_id == "ScpoPendulum-v0":
            obs, reward, terminated, _, _ = self._pend.step(u)  # Pendulum-v1 clips u itself
            bad = (abs(u[0]) > TASK["torque_limit"]) or (abs(obs[2]) > TASK["speed_limit"])
            cost = 1.0 if bad else 0.0
        else:
            x = self._x
            reward = -float(((self._K @ x + self._b) - u) @ ((self._K @ x + self._b) - u))
            self._x = self._A @ x + self._B @ u
            obs, terminated = self._x.copy(), False
            bad = abs(self._x[0]) > TASK["position_limit"] or abs(u[0]) > TASK["force_limit"]
            lo, hi, radius = TASK["settle"]
            if lo <= self._t <= hi:
                self._settled = self._settled or float(np.linalg.norm(self._x)) <= radius
            if self._t == hi and not self._settled:
                bad = True
            cost = 1.0 if bad else 0.0
        truncated = self._t >= self._horizon
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        return (obs_t, torch.as_tensor(float(reward), dtype=torch.float32),
                torch.as_tensor(cost, dtype=torch.float32), torch.as_tensor(bool(terminated)),
                torch.as_tensor(bool(truncated)), {"final_observation": obs_t})

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.set_seed(seed)
        self._t = 0
        if self._env_id == "ScpoPendulum-v0":
            obs, _ = self._pend.reset(seed=int(self._rng.integers(2**31 - 1)))
        else:
            self._x = self._rng.uniform(self._lo, self._hi)
            self._settled = False
            obs = self._x.copy()
        return torch.as_tensor(np.asarray(obs, dtype=np.float32)), {}

    @property
    def max_episode_steps(self) -> int:
        return self._horizon

    def spec_log(self, logger) -> None:
        pass

    def set_seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(int(seed))

    def render(self):
        return np.zeros((8, 8, 3), dtype=np.uint8)

    def close(self) -> None:
        pass
