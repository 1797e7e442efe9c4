#!/usr/bin/env python
"""Gymnasium rollouts per second: the engine's one vector environment against a per-episode
Python loop over the same work (see benchmarks/README.md).

    python benchmarks/bench_gym.py [--spec specs/gym_pendulum.scpo] [--candidates 17]
                                   [--repeat 3] [--threads N]

The work is what one evaluation in training does: C candidate weight vectors (θ₀ plus small
perturbations; the default 17 is an ES step of `population 8`: θ and 8 pairs θ ± σε) on the
spec's S training scenarios for its horizon T, i.e. C·S episodes of T steps.

- vector: `RolloutEvaluator.rollout_returns` — ONE `gymnasium.make_vec(…, "sync")` of C·S
  sub-environments, one batched policy call per step (what `scpo train` runs);
- loop: one `gymnasium.make` environment, episode after episode, one policy call per step.

Both give the same states, inputs and returns (checked here, and in tests/test_gymnasium.py).
Best of `--repeat` rounds, after one warm-up round (the vector environment is created once and
reused, as in training). Nothing is asserted on a time: it only measures and prints.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import gymnasium
import numpy as np
import torch

from scpo_spec.compile.evaluator import GymEvaluator
from scpo_spec.compile.problem import compile_spec
from scpo_spec.language.load import load_spec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "specs" / "gym_pendulum.scpo"
from scpo_spec.dtype import DTYPE


def loop_rollout(env, family, thetas, seeds, horizon):
    """Per-episode reference: the same (states, inputs, returns) as the vector path."""
    C, S, n, m = thetas.shape[0], len(seeds), family.n, family.m
    X = np.zeros((C, S, horizon + 1, n))
    U = np.zeros((C, S, horizon, m))
    R = np.zeros((C, S))
    for c in range(C):
        theta = thetas[c:c + 1]
        for s, seed in enumerate(seeds):
            obs, _ = env.reset(seed=int(seed))
            x = np.asarray(obs, dtype=np.float64)
            X[c, s, 0] = x
            done = False
            for t in range(horizon):
                with torch.no_grad():
                    u = family.forward(theta, torch.from_numpy(x).view(1, 1, n))[0, 0].numpy()
                U[c, s, t] = u
                if not done:
                    obs, r, term, trunc, _ = env.step(np.where(np.isfinite(u), u, 0.0))
                    x = np.asarray(obs, dtype=np.float64)
                    R[c, s] += r
                    done = term or trunc
                X[c, s, t + 1] = x
    return X, U, R


def best_of(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up (creates the vector environment)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--candidates", type=int, default=17)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = load_spec(args.spec)
    c = compile_spec(spec, args.spec.resolve().parent)
    ev, family = c.evaluator, c.family
    if not isinstance(ev, GymEvaluator):
        raise SystemExit(f"{args.spec} is not a gymnasium spec")
    env_id = c.dynamics.env_id
    gen = torch.Generator().manual_seed(0)
    C = args.candidates
    thetas = family.theta0 + 0.05 * torch.randn(C, family.d, generator=gen, dtype=DTYPE)
    thetas[0] = family.theta0
    seeds = ev.x0.tolist()
    S, T = len(seeds), ev.horizon

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, gymnasium "
          f"{gymnasium.__version__}, {platform.processor() or platform.machine()}")
    print(f"{args.spec.name}: {env_id}, d = {family.d} weights, C = {C} candidates × "
          f"S = {S} scenarios = {C * S} episodes × T = {T} steps = {C * S * T:,} env steps")

    t_vec, (Xv, Uv, Rv) = best_of(lambda: ev.rollout_returns(thetas), args.repeat)
    env = gymnasium.make(env_id)
    t_loop, (Xl, Ul, Rl) = best_of(lambda: loop_rollout(env, family, thetas, seeds, T),
                                   args.repeat)
    env.close()
    same = (np.allclose(Xv.numpy(), Xl, rtol=1e-9, atol=1e-9)
            and np.allclose(Uv.numpy(), Ul, rtol=1e-9, atol=1e-9)
            and np.allclose(Rv.numpy(), Rl, rtol=1e-9, atol=1e-9))

    episodes, steps = C * S, C * S * T
    print(f"{'':28}{'seconds':>10}{'episodes/s':>14}{'env steps/s':>14}")
    for name, t in (("vector env (one make_vec)", t_vec), ("per-episode Python loop", t_loop)):
        print(f"{name:28}{t:10.4f}{episodes / t:14,.0f}{steps / t:14,.0f}")
    print(f"vector / loop speed-up: {t_loop / t_vec:.1f}×   (same states, inputs and returns: "
          f"{'yes' if same else 'NO'})")


if __name__ == "__main__":
    main()
