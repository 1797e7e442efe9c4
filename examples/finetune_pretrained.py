"""Fine-tune a controller that PPO already trained, without ever deploying an unsafe one.

    pip install -e '.[examples]'     # stable-baselines3
    python examples/finetune_pretrained.py [--timesteps 10000] [--steps 30] [--out DIR]

1. Stable-Baselines3 PPO learns gymnasium's Pendulum-v1 for --timesteps steps (squashed
   gSDE actions, so the deterministic controller is u = 2·tanh(actor(x)), inside the motor's
   [-2, 2]).
2. That deterministic controller is written to DIR/pretrained.pt as a float64 TorchScript
   module (checked against SB3's own `predict`).
3. A spec uses it as `backup torch { file = "pretrained.pt" }` under a residual
   `policy mlp { residual = backup }`: SCPO's first policy is exactly the pretrained one, and
   every accepted update keeps the requested torque within [-2, 2] and |ω| ≤ 7 on every
   training episode, while the episode return goes up.
4. `scpo train`, then `scpo export --format torchscript` of the certified result.
5. Both controllers run again in fresh gymnasium environments (nothing from scpo-spec is used
   here): the training seeds and 100 others. The table shows each one's mean return and its
   worst constraint values (g ≤ 0 is safe).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

TORQUE, SPEED, HORIZON, SEEDS = 2.0, 7.0, 100, 16

SPEC = """\
# Written by examples/finetune_pretrained.py: SCPO fine-tunes a PPO-trained Pendulum-v1 controller.
spec finetune_ppo "Fine-tune a PPO controller for more return, within the motor and a speed limit"

system gymnasium "Pendulum-v1" {{ observation cos_theta, sin_theta, omega  action torque }}

# The pretrained controller: u = 2 tanh(actor(x)), frozen. The residual net starts at zero, so
# the first policy is exactly the pretrained one.
backup torch {{ file = "pretrained.pt" }}
policy mlp {{ hidden = [16]  activation = tanh  residual = backup  seed = 0 }}

scenarios {{ count {seeds}  seed 0  horizon {horizon}  holdout 300 }}

# The torque the policy asks for (before the environment clips it) stays within the motor's, and
# the pendulum never spins faster than 7 rad/s.
constraint torque_limit: always torque in [-{torque:g}, {torque:g}]  smoothness 20  margin 1e-3
constraint speed_limit:  always abs(omega) <= {speed:g}      smoothness 50  margin 0.05

objective return {{ population 8  sigma 0.05  seed 0 }}

train {{
    steps {steps}
    optimizer adam {{ lr = 0.02 }}
    directions 4
    perturbation 1e-3
    radius 0.3
    margin 1e-6
    seed 0
}}
"""


def train_ppo(timesteps: int):
    """A small PPO agent on Pendulum-v1 (seeded, CPU)."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    env = gym.make("Pendulum-v1")
    model = PPO("MlpPolicy", env, n_steps=1024, batch_size=64, gae_lambda=0.95, gamma=0.9,
                n_epochs=10, learning_rate=1e-3, use_sde=True, sde_sample_freq=4,
                policy_kwargs={"net_arch": [32, 32], "squash_output": True},
                seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=timesteps)
    return model


def deterministic_controller(model):
    """SB3's deterministic action as a plain float64 torch module: with squashed gSDE it is
    tanh of the actor's mean, rescaled from [-1, 1] to the action space."""
    import copy

    import torch
    from torch import nn
    policy = model.policy
    low = float(model.action_space.low[0])
    high = float(model.action_space.high[0])

    class Pretrained(nn.Module):
        def __init__(self):
            super().__init__()
            self.actor = copy.deepcopy(policy.mlp_extractor.policy_net)
            self.mean = copy.deepcopy(policy.action_net)
            self.low, self.high = low, high

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.tanh(self.mean(self.actor(x)))
            return self.low + 0.5 * (a + 1.0) * (self.high - self.low)

    return Pretrained().double().eval()


def episodes(act, seeds) -> tuple[np.ndarray, float, float]:
    """Returns, max |torque asked| and max |ω| of a controller over the seeds' episodes."""
    import gymnasium as gym
    env = gym.make("Pendulum-v1")
    returns, worst_u, worst_w = [], 0.0, 0.0
    for seed in seeds:
        obs, _ = env.reset(seed=int(seed))
        total = 0.0
        for _ in range(HORIZON):
            u = np.asarray(act(obs), dtype=np.float64).reshape(1)
            worst_u = max(worst_u, float(abs(u[0])))
            obs, reward, terminated, truncated, _ = env.step(np.clip(u, -TORQUE, TORQUE))
            worst_w = max(worst_w, float(abs(obs[2])))
            total += float(reward)
            if terminated or truncated:
                break
        returns.append(total)
    env.close()
    return np.asarray(returns), worst_u, worst_w


def scpo(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "scpo_spec.cli", *map(str, args)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"scpo {' '.join(map(str, args))} failed (exit {proc.returncode}):\n"
                 f"{proc.stdout}{proc.stderr}")
    return proc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timesteps", type=int, default=10_000, help="PPO's environment steps")
    ap.add_argument("--steps", type=int, default=30, help="SCPO's steps")
    ap.add_argument("--out", type=Path, default=Path("runs/finetune_pretrained"),
                    help="where the controller, the spec, the run and the export go")
    args = ap.parse_args(argv)
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        sys.exit("this example needs stable-baselines3: pip install -e '.[examples]'")
    import torch

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"1. PPO on Pendulum-v1 for {args.timesteps} steps …", flush=True)
    model = train_ppo(args.timesteps)
    pretrained = deterministic_controller(model)
    torch.jit.save(torch.jit.script(pretrained), str(out / "pretrained.pt"))
    probe = np.random.default_rng(0).uniform(-1, 1, (256, 3)) * [1, 1, 8]
    sb3, _ = model.predict(probe.astype(np.float32), deterministic=True)
    with torch.no_grad():
        ours = pretrained(torch.from_numpy(probe)).numpy()
    print(f"2. pretrained.pt written; max |difference| from SB3's predict on 256 states: "
          f"{np.abs(ours - sb3).max():.1e} (SB3 computes in float32)")

    spec = out / "finetune.scpo"
    spec.write_text(SPEC.format(seeds=SEEDS, horizon=HORIZON, torque=TORQUE, speed=SPEED,
                                steps=args.steps), encoding="utf-8")
    run = out / "run"
    print(f"3. scpo train {spec} ({args.steps} steps) …", flush=True)
    trained = scpo("train", spec, "--out", run, "--force")
    verdict = "CERTIFIED" if "NOT CERTIFIED" not in trained.stdout and "CERTIFIED" in \
        trained.stdout else "NOT CERTIFIED"
    head = next((ln.split()[1] for ln in trained.stdout.splitlines() if ln.startswith("head ")),
                "?")
    exported = out / "finetuned.pt"
    scpo("export", run, "--format", "torchscript", "-o", exported, "--trust-code")
    print(f"4. {verdict}; audit head {head[:16]}…; exported {exported}")

    finetuned = torch.jit.load(str(exported))

    def act_with(module):
        def act(obs):
            with torch.no_grad():
                return module(torch.as_tensor(obs, dtype=torch.float64)[None]).numpy()[0]
        return act

    print("5. Both controllers in fresh Pendulum-v1 environments "
          f"({HORIZON} steps; g ≤ 0 is safe):")
    print(f"   {'controller':<12} {'episodes':<22} {'mean return':>12} "
          f"{'g torque':>10} {'g speed':>10}")
    for label, seeds in ((f"training seeds 0-{SEEDS - 1}", range(SEEDS)),
                         ("fresh seeds 5000-5099", range(5000, 5100))):
        for name, module in (("pretrained", pretrained), ("fine-tuned", finetuned)):
            ret, u, w = episodes(act_with(module), seeds)
            print(f"   {name:<12} {label:<22} {ret.mean():>12.2f} {u - TORQUE:>10.4f} "
                  f"{w - SPEED:>10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
