"""Rollouts of a `system gymnasium` in one gymnasium vector environment.

C candidate weight vectors × S scenarios are C·S episodes of the environment; they run side by
side in ONE synchronous vector environment (`gymnasium.make_vec(id, num_envs=C·S,
vectorization_mode="sync")`), reset with the scenarios' seeds (episode c·S + s gets seed s of the
list), and stepped T times with the batched policy: one `PolicyFamily.forward` of all C·S
observations per step, exactly like the torch path.  The result has the torch path's layout,
states (C, S, T+1, n) and inputs (C, S, T, m), so every metric reads it unchanged, plus the
episode returns (C, S).

- The recorded input is the policy's output *before* the environment clips it to its action
  space (a constraint like `always torque in [-2, 2]` sees what the policy asked for).
- Observations are converted to float64 (gymnasium's classic-control environments emit float32).
- An episode that terminates or is truncated early keeps its last observation, and earns zero
  reward, for the rest of the horizon; its inputs stay the policy's output at that observation.
  Whatever the vector environment does after that (gymnasium 1.x resets a finished sub-env on the
  next `step`) is ignored.
- A non-finite action (a diverged candidate) is recorded as it is and sent to the environment as
  0: the metrics see the non-finite input and call the candidate unsafe (+inf).

Nothing here is differentiable: rollouts happen in numpy inside the environments.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np
import torch

from scpo_spec.dtype import DTYPE
CACHED_SIZES = 6   # vector environments kept open, one per batch size (C·S) seen recently


class GymRollout:
    """Seeded, batched episodes of one registered gymnasium environment."""

    def __init__(self, env_id: str, n: int, m: int):
        self.env_id, self.n, self.m = env_id, n, m
        self._envs: OrderedDict[int, object] = OrderedDict()

    def vector_env(self, num_envs: int):
        """The vector environment with `num_envs` sub-environments (created once, then reused:
        every rollout resets it with explicit seeds, so no state carries over)."""
        import gymnasium

        env = self._envs.pop(num_envs, None)
        if env is None:
            env = gymnasium.make_vec(self.env_id, num_envs=num_envs, vectorization_mode="sync")
        self._envs[num_envs] = env
        while len(self._envs) > CACHED_SIZES:
            _, old = self._envs.popitem(last=False)
            old.close()
        return env

    def close(self) -> None:
        while self._envs:
            self._envs.popitem()[1].close()

    def __getstate__(self) -> dict:  # picklable (e.g. shipped to a worker): no open envs
        return {"env_id": self.env_id, "n": self.n, "m": self.m}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["env_id"], state["n"], state["m"])

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    @torch.no_grad()
    def rollout(self, policy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                thetas: torch.Tensor, seeds, horizon: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """States (C, S, T+1, n), pre-clip inputs (C, S, T, m) and returns (C, S), float64, of
        the C candidates `thetas` (C, d) on the episodes reset with `seeds` (S,)."""
        seeds = [int(s) for s in np.asarray(seeds).reshape(-1)]
        C, S, T, n, m = thetas.shape[0], len(seeds), int(horizon), self.n, self.m
        N = C * S
        X = torch.empty(C, S, T + 1, n, dtype=DTYPE)
        U = torch.empty(C, S, T, m, dtype=DTYPE)
        returns = np.zeros(N, dtype=np.float64)
        if N == 0:
            return X, U, torch.from_numpy(returns).reshape(C, S)
        env = self.vector_env(N)
        action_shape = (N, *env.single_action_space.shape)
        obs, _ = env.reset(seed=seeds * C)  # episode c·S + s ← seeds[s]
        x = np.asarray(obs, dtype=np.float64).reshape(N, n)
        done = np.zeros(N, dtype=bool)
        X[:, :, 0] = torch.from_numpy(x).view(C, S, n)
        for t in range(T):
            u = policy(thetas, torch.from_numpy(x).view(C, S, n)).reshape(C, S, m)
            U[:, :, t] = u
            if done.all():  # every episode has ended: the rest is the frozen observation
                X[:, :, t + 1] = X[:, :, t]
                continue
            action = u.reshape(N, m).numpy()
            action = np.where(np.isfinite(action), action, 0.0).reshape(action_shape)
            obs, reward, terminated, truncated, _ = env.step(action)
            live = ~done
            returns[live] += np.asarray(reward, dtype=np.float64)[live]
            x = np.where(live[:, None], np.asarray(obs, dtype=np.float64).reshape(N, n), x)
            done = done | np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
            X[:, :, t + 1] = torch.from_numpy(x).view(C, S, n)
        return X, U, torch.from_numpy(returns).reshape(C, S)
