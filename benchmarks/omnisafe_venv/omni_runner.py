"""Train one OmniSafe algorithm on one spec task and export every epoch's actor as .npz
(copied into .cache/omnisafe-work by benchmarks/compare_omnisafe.py; runs in the OmniSafe venv)."""
import glob
import json
import os
import re
import sys
import time

import numpy as np
import torch

args = json.loads(sys.argv[1])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import omnisafe  # noqa: E402
import scpo_omni_envs  # noqa: E402,F401  (registers the CMDP)

cfgs = {
    "seed": args["seed"],
    "train_cfgs": {"total_steps": args["total_steps"], "device": "cpu", "torch_threads": 1},
    "algo_cfgs": {"steps_per_epoch": args["steps_per_epoch"]},
    "logger_cfgs": {"log_dir": args["log_dir"], "save_model_freq": 1, "use_tensorboard": False,
                    "use_wandb": False},
    "model_cfgs": {"actor": {"hidden_sizes": args["hidden"]}},
    "lagrange_cfgs": {"cost_limit": args["cost_limit"]},
}
if args["algo"] == "CPO":  # CPO has no Lagrange multiplier; its limit is an algo_cfg
    del cfgs["lagrange_cfgs"]
    cfgs["algo_cfgs"]["cost_limit"] = args["cost_limit"]


def behaviour_clone(algo, env_id: str, seed: int) -> dict:
    """Fit the actor's mean network to the spec's backup u = K o + k (task config) on the states
    the backup visits from the task's initial distribution (half the episodes with Gaussian
    action noise, so the states around its trajectories are covered too); prime OmniSafe's
    observation normaliser with those states first, so the fitted actor is what the first
    epoch sees. Returns the fit's error in the action's own units, on the fitting states and on
    as many fresh episodes."""
    from omnisafe.envs.wrapper import ObsNormalize
    task = scpo_omni_envs.TASK
    K = np.asarray(task["backup_K"], dtype=np.float64)
    k = np.asarray(task["backup_offset"], dtype=np.float64)
    noise = float(task["bc_noise"])

    def states(first_seed: int, episodes: int) -> np.ndarray:
        env = scpo_omni_envs.ScpoSpecEnv(env_id)
        rng = np.random.default_rng(first_seed)
        out = []
        for ep in range(episodes):
            obs, _ = env.reset(seed=first_seed + ep)
            for _ in range(env.max_episode_steps):
                o = obs.double().numpy()
                out.append(o)
                u = K @ o + k + (noise * rng.standard_normal(k.shape) if ep % 2 else 0.0)
                obs = env.step(torch.as_tensor(u))[0]
        return np.asarray(out)

    fit_x, test_x = states(10_000 * (seed + 1), 64), states(10_000 * (seed + 1) + 5_000, 64)
    wrapper = algo._env._env
    while not isinstance(wrapper, ObsNormalize):
        wrapper = wrapper._env
    norm = wrapper._obs_normalizer
    norm.normalize(torch.as_tensor(fit_x, dtype=torch.float32))  # pushes the states (count)
    space = scpo_omni_envs.ScpoSpecEnv(env_id).action_space
    scale = (space.high - space.low) / 2
    centre = (space.high + space.low) / 2

    def actor_u(x: np.ndarray) -> torch.Tensor:  # what the exported, folded θ computes
        z = (torch.as_tensor(x, dtype=torch.float32) - norm._mean) / norm._std
        z = torch.clamp(z, -norm._clip, norm._clip)
        return actor.mean(z) * torch.as_tensor(scale, dtype=torch.float32) \
            + torch.as_tensor(centre, dtype=torch.float32)

    actor = algo._actor_critic.actor
    target = torch.as_tensor(fit_x @ K.T + k, dtype=torch.float32)
    opt = torch.optim.Adam(actor.mean.parameters(), lr=3e-3)
    torch.manual_seed(seed)
    for it in range(int(task["bc_iterations"])):
        for group in opt.param_groups:  # the last third at a tenth of the rate
            group["lr"] = 3e-3 if it < 2 * int(task["bc_iterations"]) // 3 else 3e-4
        loss = ((actor_u(fit_x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err_fit = (actor_u(fit_x).double().numpy() - (fit_x @ K.T + k))
        err_test = (actor_u(test_x).double().numpy() - (test_x @ K.T + k))
    algo._logger.torch_save()  # epoch-0.pt again: the cloned actor is the initial iterate
    return {"states": int(len(fit_x)), "rms_fit": float(np.sqrt(np.mean(err_fit ** 2))),
            "rms_fresh": float(np.sqrt(np.mean(err_test ** 2))),
            "max_fresh": float(np.max(np.abs(err_test))), "iterations": int(task["bc_iterations"]),
            "noise": noise}


start = time.perf_counter()
agent = omnisafe.Agent(args["algo"], args["env_id"], custom_cfgs=cfgs)
bc = behaviour_clone(agent.agent, args["env_id"], args["seed"]) if args.get("warm") else None
ep_ret, ep_cost, ep_len = agent.learn()
seconds = time.perf_counter() - start
saves = glob.glob(os.path.join(args["log_dir"], "**", "torch_save", "epoch-*.pt"), recursive=True)
os.makedirs(args["out"], exist_ok=True)
space = scpo_omni_envs.ScpoSpecEnv(args["env_id"]).action_space  # before ActionScale
exported = []
for path in sorted(saves, key=lambda p: int(re.search(r"epoch-(\d+)", p).group(1))):
    epoch = int(re.search(r"epoch-(\d+)", path).group(1))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    pi = ckpt["pi"]
    arrays = {}
    i = 0
    while f"mean.{i}.weight" in pi or f"mean.{i + 1}.weight" in pi:
        if f"mean.{i}.weight" in pi:
            arrays[f"W{len(arrays) // 2}"] = pi[f"mean.{i}.weight"].double().numpy()
            arrays[f"b{len(arrays) // 2}"] = pi[f"mean.{i}.bias"].double().numpy()
        i += 1
    norm = ckpt.get("obs_normalizer")
    if norm is not None:
        arrays["obs_mean"] = norm["_mean"].double().numpy()
        arrays["obs_std"] = norm["_std"].double().numpy()
        arrays["obs_clip"] = np.asarray(norm["_clip"].double().numpy())
        arrays["obs_count"] = np.asarray(float(norm["_count"]))
    arrays["act_low"] = np.asarray(space.low, dtype=np.float64)
    arrays["act_high"] = np.asarray(space.high, dtype=np.float64)
    arrays["epoch"] = np.asarray(epoch)
    out = os.path.join(args["out"], f"epoch-{epoch:04d}.npz")
    np.savez(out, **arrays)
    exported.append(out)
print("SCPO_OMNI_RESULT " + json.dumps({
    "seconds": seconds, "exported": exported, "env_steps": int(args["total_steps"]),
    "ep_ret": float(ep_ret), "ep_cost": float(ep_cost), "version": omnisafe.__version__,
    "bc": bc}))
