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
    "lagrange_cfgs": {"cost_limit": 0.0},
}
if args["algo"] == "CPO":  # CPO has no Lagrange multiplier; its limit is an algo_cfg
    del cfgs["lagrange_cfgs"]
    cfgs["algo_cfgs"]["cost_limit"] = 0.0
start = time.perf_counter()
agent = omnisafe.Agent(args["algo"], args["env_id"], custom_cfgs=cfgs)
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
    "ep_ret": float(ep_ret), "ep_cost": float(ep_cost), "version": omnisafe.__version__}))
