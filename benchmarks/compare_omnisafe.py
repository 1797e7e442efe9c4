"""SCPO against OmniSafe's PPO-Lag and CPO on two ready specs, at matched budgets, from safe starts,
every iterate judged by the spec and every final policy through `scpo verify`.

    python benchmarks/compare_omnisafe.py [--quick] [--json FILE] [--plots DIR] [--runs DIR]
        [--budget-mode scpo_capped_to_omnisafe|omnisafe_matched_to_scpo] [--jobs N]

What runs
---------
* **SCPO**: `scpo train`'s own code path (scpo_spec.engine.run.train) on the spec, once per seed
  (the spec with its policy's and its training's `seed` set to 0, 1, …: the hidden layers'
  initialisation and the directions; θ₀ is the backup whatever the seed). Its iterates are θ₀
  (the backup) and the accepted updates.
* **PPO-Lag and CPO** (`ppo_lag`, `cpo`): OmniSafe (pinned, `OMNISAFE_VERSION` below) from its
  own random initial actor, in its own virtual environment under `.cache/omnisafe-venv`, run as
  a subprocess. Nothing of OmniSafe is imported into this package's python, and it is no
  dependency of the package.
* **Warm-started PPO-Lag and CPO** (`ppo_lag_warm`, `cpo_warm`): the same, but before training
  the actor's mean network is behaviour-cloned from the spec's backup u = K o + k
  (benchmarks/omnisafe_venv/omni_runner.py, `behaviour_clone`): 64 episodes of the backup from
  the task's initial distribution (every second one with N(0, 0.3²) action noise, so the states
  around its trajectories are in the data), OmniSafe's observation normaliser primed with those
  states, then 1,500 full-batch Adam steps on the squared action error. The fit's error on 64
  fresh backup episodes is in the JSON (`bc`); the cloned actor is saved as epoch 0, so the
  table's `violating_initial` says whether each warm run started safe.

Budgets, counted the same way on both sides (`env_steps`)
--------------------------------------------------------
OmniSafe's are its environment interactions (`total_steps`). SCPO's are the simulated steps of
every rollout its training made: candidates × scenarios × horizon per evaluation, summed over
θ₀'s evaluation, the bank, rejected candidates, verification rollouts and counterexamples, and
for the pendulum the evolution-strategies objective's 17 candidates per evaluation (counted by
wrapping the rollout functions in this process; the holdout rollouts made after training for
the certification report are counted apart, `holdout_steps`). `--budget-mode`:

* `scpo_capped_to_omnisafe` (default): SCPO is stopped at the last step whose counted total is
  within OmniSafe's `total_steps` per run (a full run per seed first records the count after
  each step; the same seed's run is then made again with that many steps — training is
  deterministic — and its count checked against the cap). The full runs are reported too, as
  `scpo_uncapped` (`budget_matched: false`).
* `omnisafe_matched_to_scpo`: each OmniSafe run gets SCPO's count for the same seed, rounded up
  to whole epochs (1.4 M steps on the pendulum, 11 M on the double integrator: hours per run on
  2 cores).

The two tasks, as OmniSafe sees them (a gymnasium-style `CMDP` registered with OmniSafe's
`env_register`, in `.cache/omnisafe-work/scpo_omni_envs.py`, written by this script):

* `gym_pendulum` (env id `ScpoPendulum-v0`): gymnasium's Pendulum-v1 itself (gymnasium 0.28.1 in
  the venv; the dynamics and reward are those of the package's gymnasium), reset from its own
  initial distribution (angle uniform on the circle, |ω| ≤ 1, a fresh seed per episode), episodes
  of the spec's horizon (100). Reward: Pendulum-v1's. Cost per step: 1 when the torque the policy
  asks for (before the environment clips it) is outside [-2, 2] or the next |ω| exceeds 7 (the
  spec's `torque_limit` and `speed_limit` atoms), else 0.
* `double_integrator` (env id `ScpoDoubleIntegrator-v0`): the spec's plant x⁺ = A x + B u (A, B
  read from the compiled spec), x₀ uniform on the spec's initial box (the spec's 64 scenarios are a
  grid on that box), episodes of the spec's horizon (60). The spec's objective (imitation MSE on
  512 fixed states) is no RL reward; the reward used instead is −(u_expert(x) − u)² per step, with
  the spec's (malicious) expert u_expert = K x + b. Cost per step: 1 when |position| > 1.5 or
  |force| > 4 (the spec's `always` atoms), and 1 at the last step when no state x₄₀ … x₆₀ had
  ‖x‖ ≤ 0.1 (the `settle` constraint `eventually[40:60]`). The spec's fourth metric, the
  closed loop's spectral radius at the origin ≤ 0.98, has no per-step form: OmniSafe is not told
  about it, but it is evaluated here like the others (the table reports it separately).

OmniSafe's default configuration of each algorithm is used except: `total_steps` and
`steps_per_epoch` (the budget), `cost_limit = 0` (`COST_LIMIT`: the spec asks for no violation
at all; it was not tuned — no other limit was tried), `device = cpu`, `torch_threads = 1`
(2 shared cores), `save_model_freq = 1` (every epoch's actor is saved), the seed, and the
actor's `hidden_sizes` set to the spec's policy family ([8] for the pendulum; [64, 64] for the
double integrator, OmniSafe's default). The critics and everything else keep OmniSafe's
defaults (observation normalisation on, kaiming-uniform init, linear lr decay, Gaussian actor).

Every iterate is evaluated here
-------------------------------
Each epoch's checkpoint (`torch_save/epoch-N.pt`, OmniSafe's own) is read *inside the venv* and
exported as an `.npz` of plain arrays: the Gaussian actor's mean network (Linear, Tanh, …,
Linear), the observation normaliser's mean/std/clip and the action scaling. No pickle crosses
into this package. Here, that deterministic actor (the mean action, what OmniSafe's own evaluator
deploys) is mapped exactly onto θ of the spec's policy family *without* `residual = backup`: a
variant of the spec with only that word removed (written to `.cache/omnisafe-work/specs/`;
same plant, scenarios, horizon and metrics). The normaliser (o − μ)/σ is folded into the first
layer and the action scaling (OmniSafe's ActionScale maps [-1, 1] to the action space's
[low, high]) into the last. OmniSafe clamps normalised observations to ±5; the folded θ does
not, so the script counts the iterates whose rollouts on the scenarios ever reach the clamp
(`clamp_iterates` in the JSON; where it is 0 the mapping is exact). Each θ is then rolled out
by the spec's own compiled evaluator on the spec's own scenarios: an iterate is *violating*
when any of the spec's metrics g_i > 0, exactly the test applied to SCPO's iterates.

Each method's final policy (SCPO's final θ in the spec's own family; OmniSafe's last actor as
θ of the residual-free family) goes through `scpo verify`'s prover (scpo_spec.verify.prove,
`VERIFY` below for its cells and time limit): `final_verify` per seed, PROVED /
COUNTEREXAMPLE / UNDECIDED overall and per constraint (the pendulum's gymnasium plant is not
bounded by the verifier: UNDECIDED, with its reason).

Per method (JSON `tasks.TASK.METHOD`): `iterates`, `violating_iterates` and `env_steps` summed
over seeds; `violating_per_seed` and `return_final_per_seed` (mean, std, min, max over seeds:
the final iterate's mean episode return on the spec's scenarios, with the deterministic
policy: Pendulum-v1's return for the pendulum, Σ −(u_expert − u)² for the double
integrator); `worst` (the largest g_i over every iterate of every seed); `violating_initial`
and `violating_final` (seeds whose first / last iterate violates); `final_verify`; `per_seed`;
`seconds` (wall time, all seeds). The JSON is written after each task with `partial: true`
until the last one is done; it holds no machine paths.

The virtual environment (made when missing; the exact steps, in this order)
---------------------------------------------------------------------------
`pip install omnisafe==0.5.0` fails on Python 3.11: its dependency safety-gymnasium 1.0.0 pins
pygame 2.1.0, which has no wheel for 3.11 and does not build without SDL (`sdl2-config` missing),
and mujoco 2.3.3. So:

1. `python -m venv .cache/omnisafe-venv`
2. `pip install --no-deps omnisafe==0.5.0`
3. `pip install torch==2.13.0 numpy==1.26.4 gymnasium==0.28.1 pandas==2.0.3 pyyaml rich tqdm
   tensorboard wandb matplotlib seaborn gdown moviepy==1.0.3` — what `import omnisafe` and its
   training really import (found by importing it and adding what was missing); gymnasium and
   pandas at OmniSafe's/safety-gymnasium's pins; numpy < 2 for gymnasium 0.28 and pandas 2.0.3
   (their compiled code and `np.bool8`); moviepy 1.x because gymnasium 0.28's save_video
   imports its 1.x layout.
4. safety-gymnasium is *not* installed: its 1.0.0 release does not even import on Python 3.11
   (`ValueError: mutable default <class 'numpy.ndarray'> for field color is not allowed`, a
   dataclass in safety_gymnasium/assets/geoms/apples.py). `omnisafe.envs` imports it at module
   level for its own Safety-Gymnasium tasks, which are not used here, so a stub package
   `safety_gymnasium` whose `make` raises is written into the venv's site-packages. OmniSafe's own
   code is not modified.

`--quick`: 2 seeds, 12,000 environment steps per OmniSafe run in epochs of 2,000 (7 iterates
per run with the initial actor), `scpo verify` with 256 cells and 20 s. Without it: 3 seeds,
20,000 steps per run in epochs of 2,000, 4,096 cells and 60 s — the committed run,
docs/results/omnisafe.json (`--seeds`, `--steps`, `--epoch` override).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from omnisafe_tables import merge, plot, print_table  # noqa: E402  (beside this script)

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
VENV = CACHE / "omnisafe-venv"
WORK = CACHE / "omnisafe-work"
OMNISAFE_VERSION = "0.5.0"
VENV_DEPS = ["torch==2.13.0", "numpy==1.26.4", "gymnasium==0.28.1", "pandas==2.0.3", "pyyaml",
             "rich", "tqdm", "tensorboard", "wandb", "matplotlib", "seaborn", "gdown",
             "moviepy==1.0.3"]
TASKS = {"gym_pendulum": "specs/gym_pendulum.scpo",
         "double_integrator": "specs/double_integrator.scpo"}
ENV_IDS = {"gym_pendulum": "ScpoPendulum-v0", "double_integrator": "ScpoDoubleIntegrator-v0"}
METHODS = {"ppo_lag": ("PPOLag", False), "cpo": ("CPO", False),  # (algorithm, warm start)
           "ppo_lag_warm": ("PPOLag", True), "cpo_warm": ("CPO", True)}
BUDGET = {True: dict(seeds=2, total_steps=12_000, steps_per_epoch=2_000),
          False: dict(seeds=3, total_steps=20_000, steps_per_epoch=2_000)}
BUDGET_MODES = ("scpo_capped_to_omnisafe", "omnisafe_matched_to_scpo")
COST_LIMIT = 0.0  # the spec asks for no violation at all; not tuned (docs/results.md)
BC = {"noise": 0.3, "iterations": 1500}  # behaviour cloning of the backup (warm starts)
VERIFY = {True: {"cells": 256, "time_limit": 20.0},  # `scpo verify`'s limits on final policies
          False: {"cells": 4096, "time_limit": 60.0}}

VENV_SIDE = Path(__file__).resolve().parent / "omnisafe_venv"  # run in the venv, not here


class VenvError(RuntimeError):
    def __init__(self, command: list[str], output: str):
        self.command, self.output = command, output
        super().__init__(f"`{' '.join(command)}` failed:\n{output[-3000:]}")


def venv_python() -> Path:
    return VENV / "bin" / "python"


def _run(cmd: list[str], log) -> str:
    log(f"  $ {' '.join(cmd)}")
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise VenvError(cmd, p.stdout + p.stderr)
    return p.stdout


def venv_version() -> str | None:
    if not venv_python().exists():
        return None
    p = subprocess.run([str(venv_python()), "-c", "import omnisafe; print(omnisafe.__version__)"],
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def ensure_venv(log=print) -> Path:
    """The venv's python, with OmniSafe importable at the pinned version (made when missing)."""
    if venv_version() == OMNISAFE_VERSION:
        return venv_python()
    log(f"making the OmniSafe {OMNISAFE_VERSION} venv in {VENV} (steps in this script's docstring)")
    if not venv_python().exists():
        _run([sys.executable, "-m", "venv", str(VENV)], log)
    pip = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check"]
    _run(pip + ["--no-deps", f"omnisafe=={OMNISAFE_VERSION}"], log)
    _run(pip + VENV_DEPS, log)
    site = _run([str(venv_python()), "-c",
                 "import sysconfig; print(sysconfig.get_paths()['purelib'])"], log).strip()
    stub = Path(site) / "safety_gymnasium"
    stub.mkdir(exist_ok=True)
    (stub / "__init__.py").write_text((VENV_SIDE / "safety_gymnasium_stub.py").read_text())
    got = venv_version()
    if got != OMNISAFE_VERSION:
        _run([str(venv_python()), "-c", "import omnisafe"], log)  # raises with the traceback
        raise VenvError([str(venv_python()), "-c", "import omnisafe"], f"version {got!r}")
    return venv_python()


def venv_versions(py: Path) -> dict:
    out = subprocess.run([str(py), "-c", "import omnisafe, torch, gymnasium, numpy; print("
                          "omnisafe.__version__, torch.__version__, gymnasium.__version__, "
                          "numpy.__version__)"], capture_output=True, text=True, check=True)
    o, t, g, n = out.stdout.split()
    return {"omnisafe": o, "torch": t, "gymnasium": g, "numpy": n}


# ---------------------------------------------------------------- the tasks, from the specs

def load(name: str):
    from scpo_spec import load_spec
    from scpo_spec.compile.problem import compile_spec
    path = ROOT / TASKS[name]
    spec = load_spec(path)
    return path, spec, compile_spec(spec, path.parent)


def plain_variant(name: str):
    """The spec with `residual = backup` removed from its policy line: the family OmniSafe's
    actor maps onto (same plant, scenarios, horizon, metrics)."""
    from scpo_spec import load_spec
    from scpo_spec.compile.problem import compile_spec
    path = ROOT / TASKS[name]
    text = path.read_text()
    new, count = re.subn(r"(policy mlp \{[^}\n]*?)\s+residual\s*=\s*backup", r"\1", text)
    assert count == 1, f"{path}: no `residual = backup` on its policy line"
    out = WORK / "specs" / f"{name}_no_residual.scpo"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_whole(out, new)
    compiled = compile_spec(load_spec(out), path.parent)
    assert compiled.family.backup is None
    return out, compiled


def task_config(name: str, compiled) -> dict:
    """What the venv side needs of a task: the CMDP's parameters and, for the warm starts, the
    spec's backup u = K o + k and the behaviour cloning's settings (BC)."""
    backup = compiled.family.backup
    warm = {"backup_K": np.asarray(backup.K, dtype=float).tolist(),
            "backup_offset": (np.zeros(backup.K.shape[0]) if backup.offset is None
                              else np.asarray(backup.offset, dtype=float)).tolist(),
            "bc_noise": BC["noise"], "bc_iterations": BC["iterations"]}
    T = int(compiled.evaluator.horizon)
    if name == "gym_pendulum":
        return {"env_id": compiled.dynamics.env_id, "horizon": T, "torque_limit": 2.0,
                "speed_limit": 7.0, **warm}
    A, B = compiled.dynamics.linearisation()
    x0 = compiled.evaluator.x0.numpy()
    expert = compiled.spec.objective.expert
    return {"horizon": T, "A": np.asarray(A).tolist(), "B": np.asarray(B).tolist(),
            "K_expert": expert.K.value, "bias": expert.bias.value,
            "box_low": x0.min(0).tolist(), "box_high": x0.max(0).tolist(),
            "position_limit": 1.5, "force_limit": 4.0, "settle": [40, 60, 0.1], **warm}


def hidden_of(compiled) -> list[int]:
    return [out for out, _ in compiled.family.layers[:-1]]


# ---------------------------------------------------------------- OmniSafe runs

def write_whole(path: Path, text: str) -> None:
    """Write `path` whole or not at all (runs made side by side share .cache/omnisafe-work)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_omnisafe(py: Path, name: str, method: str, seed: int, total_steps: int,
                 steps_per_epoch: int, cfg_path: Path, hidden: list[int], runs: Path,
                 log) -> dict:
    """One OmniSafe run in the venv; its logs, checkpoints and exports under RUNS/omnisafe/."""
    tag = f"{name}-{method}-s{seed}"
    run_dir = runs / "omnisafe" / tag
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    algo, warm = METHODS[method]
    args = {"algo": algo, "warm": warm, "env_id": ENV_IDS[name], "seed": seed,
            "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
            "cost_limit": COST_LIMIT, "hidden": hidden, "log_dir": str(run_dir / "omnisafe"),
            "out": str(run_dir / "npz")}
    env = dict(os.environ, SCPO_OMNI_TASK=str(cfg_path), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", WANDB_MODE="disabled")
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    p = subprocess.run([str(py), str(WORK / "omni_runner.py"), json.dumps(args)], env=env,
                       capture_output=True, text=True, cwd=str(WORK))
    wall = time.perf_counter() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "runner.log").write_text(p.stdout + p.stderr)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("SCPO_OMNI_RESULT ")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"OmniSafe {algo} on {name} (seed {seed}) failed (rc {p.returncode}); "
                           f"log: {run_dir / 'runner.log'}\n"
                           f"{(p.stdout + p.stderr)[-2500:]}")
    res = json.loads(line[-1][len("SCPO_OMNI_RESULT "):])
    res["wall"] = wall
    bc = (f", behaviour cloning's error on fresh backup states: rms {res['bc']['rms_fresh']:.3g}"
          f", max {res['bc']['max_fresh']:.3g}" if res.get("bc") else "")
    log(f"  {tag}: {len(res['exported'])} actors, {res['env_steps']:,} steps, {wall:.0f} s, "
        f"last epoch's episode return {res['ep_ret']:.1f} and cost {res['ep_cost']:.1f}{bc}")
    return res


def theta_of(npz_path: str, family) -> tuple[np.ndarray, dict]:
    """θ of the (residual-free) spec family computing the exported deterministic actor:
    u = s·net((o − μ)/σ) + c, with the normaliser folded into the first layer and the action
    scale into the last."""
    z = np.load(npz_path, allow_pickle=False)
    n_layers = sum(1 for k in z.files if re.fullmatch(r"W\d+", k))
    Ws = [z[f"W{i}"].copy() for i in range(n_layers)]
    bs = [z[f"b{i}"].copy() for i in range(n_layers)]
    assert [W.shape for W in Ws] == [tuple(s) for s in family.layers], \
        f"actor layers {[W.shape for W in Ws]} ≠ the spec family's {family.layers}"
    norm = None
    if "obs_mean" in z.files and float(z["obs_count"]) > 1:  # OmniSafe normalises from 2 samples on
        mu, sd = z["obs_mean"], z["obs_std"]
        bs[0] = bs[0] - Ws[0] @ (mu / sd)
        Ws[0] = Ws[0] / sd[None, :]
        norm = {"mean": mu, "std": sd, "clip": float(np.max(z["obs_clip"]))}
    lo, hi = z["act_low"], z["act_high"]
    s, c = (hi - lo) / 2, (hi + lo) / 2
    Ws[-1] = Ws[-1] * s[:, None]
    bs[-1] = bs[-1] * s + c
    theta = np.concatenate([p.reshape(-1) for W, b in zip(Ws, bs) for p in (W, b)])
    assert theta.size == family.d
    return theta, {"epoch": int(z["epoch"]), "norm": norm}


# ---------------------------------------------------------------- evaluation here

def evaluate(name: str, compiled, thetas: np.ndarray) -> dict:
    """Spec metrics g (N, k), per-iterate returns (N,) and the rollout states (for the clamp
    check), all on the spec's own scenarios."""
    import torch
    from scpo_spec.dtype import DTYPE
    th = torch.as_tensor(np.asarray(thetas), dtype=DTYPE)
    ev = compiled.evaluator
    g = ev(th).numpy()
    if name == "gym_pendulum":
        X, U, R = ev.rollout_returns(th)
        ret = R.mean(1).numpy()
    else:
        X, U = ev.rollout(th)
        expert = compiled.spec.objective.expert
        K = torch.as_tensor(expert.K.value, dtype=DTYPE)
        b = torch.as_tensor(expert.bias.value, dtype=DTYPE)
        ue = X[:, :, :-1, :] @ K.T + b
        ret = (-((ue - U) ** 2).sum(dim=(2, 3))).mean(1).numpy()
    return {"g": g, "ret": ret, "X": X.numpy()}


class StepCounter:
    """Counts the plant/environment steps of every rollout made in this process (SCPO's bank,
    verifications, counterexamples, ES objective and holdout rollouts alike)."""

    def __enter__(self):
        from scpo_spec.compile.evaluator import RolloutEvaluator
        from scpo_spec.systems.gym_rollout import GymRollout
        self.steps = 0
        # every torch rollout (handed out, or into the metrics' kept buffers) runs here
        self._orig = (RolloutEvaluator._rollout_on_device, GymRollout.rollout)
        orig_ev, orig_gym = self._orig
        counter = self

        def ev_rollout(ev, thetas, x0, *args, **kwargs):  # (reuse, the scenarios' draws)
            counter.steps += int(thetas.shape[0]) * int(x0.shape[0]) * int(ev.horizon)
            return orig_ev(ev, thetas, x0, *args, **kwargs)

        def gym_rollout(g, policy, thetas, seeds, horizon):
            counter.steps += int(thetas.shape[0]) * int(np.asarray(seeds).size) * int(horizon)
            return orig_gym(g, policy, thetas, seeds, horizon)

        RolloutEvaluator._rollout_on_device, GymRollout.rollout = ev_rollout, gym_rollout
        return self

    def __exit__(self, *exc):
        from scpo_spec.compile.evaluator import RolloutEvaluator
        from scpo_spec.systems.gym_rollout import GymRollout
        RolloutEvaluator._rollout_on_device, GymRollout.rollout = self._orig


def final_verify(compiled, theta: np.ndarray, limits: dict) -> dict:
    """`scpo verify`'s verdict on a final policy (scpo_spec.verify.prove.verify, what the CLI
    calls): overall and per constraint, with the bound and the reason where there is one."""
    import torch
    from scpo_spec.dtype import DTYPE
    from scpo_spec.verify.prove import verify
    res = verify(compiled, torch.as_tensor(np.asarray(theta), dtype=DTYPE), **limits).as_json()
    return {"verdict": res["verdict"], "seconds": res["seconds"], "cells": res["cells"],
            "reason": res["reason"],
            "constraints": {n: {"verdict": c["verdict"], "bound": c["bound"],
                                "proved_fraction": c["proved_fraction"]}
                            for n, c in res["constraints"].items()}}


def seed_variant(name: str, seed: int) -> Path:
    """The spec with its policy's and its training's seed set to `seed` (the hidden layers'
    initialisation and the directions; θ₀ is the backup whatever the seed)."""
    text = (ROOT / TASKS[name]).read_text()
    text, n_policy = re.subn(r"(policy mlp \{[^}\n]*?\bseed\s*=\s*)\d+", rf"\g<1>{seed}", text)
    text, n_train = re.subn(r"(\ntrain \{.*?\n\s*seed\s+)\d+", rf"\g<1>{seed}", text,
                             flags=re.S)
    assert n_policy == n_train == 1, (name, n_policy, n_train)
    out = WORK / "specs" / f"{name}_seed{seed}.scpo"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_whole(out, text)
    return out


def scpo_train(path: Path, out: Path, steps: int | None = None) -> dict:
    """`scpo train`'s code path on `path`, counting the simulated steps: `counts[i]` is the
    total after step i (`counts[0]`: after θ₀'s own evaluation), `total` adds the holdout."""
    from scpo_spec.engine.listener import RunListener
    from scpo_spec.engine.run import fresh_dir, train
    from scpo_spec.language.load import check_file
    result = check_file(path)
    counts: list[int] = []

    class Counts(RunListener):  # the counter's total after θ₀'s evaluation and each step
        def started(self, *_):
            counts.append(counter.steps)

        def stepped(self, *_):
            counts.append(counter.steps)

    start = time.perf_counter()
    with StepCounter() as counter:
        run = train(path, result.spec, result.source.text, out=fresh_dir(out), steps=steps,
                    listener=Counts())
        total = counter.steps
    return {"run": run, "counts": counts, "total": total, "seconds": time.perf_counter() - start}


def scpo_seed(name: str, seed: int, trained: dict, verify_limits: dict) -> dict:
    """One SCPO run judged like OmniSafe's: its iterates (θ₀ and the accepted updates) from the
    audit log, the final return on the scenarios, the audit and `scpo verify`."""
    from scpo_spec import load_spec
    from scpo_spec.audit.log import read_lines
    from scpo_spec.audit.verify import audit_run
    from scpo_spec.compile.problem import compile_spec
    run = trained["run"]
    g_all = []
    for line in read_lines(run.run_dir / "audit.jsonl")[0]:
        rec = line.record
        if rec.get("type") == "init":
            g_all.append(rec["g"])
        elif rec.get("type") == "step" and rec["accepted"]:
            g_all.append(rec["g_next"])
    audit = audit_run(run.run_dir)
    g = np.array(g_all, dtype=float)
    path = WORK / "specs" / f"{name}_seed{seed}.scpo"
    compiled = compile_spec(load_spec(path), path.parent)
    theta = run.state.theta.detach().numpy()
    final = evaluate(name, compiled, theta[None])
    violating = int((g > 0).any(axis=1).sum())
    assert violating == audit.accepted_violations, (violating, audit.accepted_violations)
    return {"seed": seed, "iterates": int(len(g)), "violating": violating,
            "worst": float(g.max()), "return_final": float(final["ret"][0]),
            "final_violating": bool((final["g"][0] > 0).any()),
            "initial_violating": bool((g[0] > 0).any()),
            "env_steps": int(trained["counts"][-1]), "holdout_steps":
            int(trained["total"] - trained["counts"][-1]), "steps": int(run.state.step),
            "accepted": int(run.state.accepted), "seconds": trained["seconds"],
            "audit_ok": bool(audit.ok), "final_verify": final_verify(compiled, theta,
                                                                     verify_limits),
            "g": g}


def steps_within(counts: list[int], cap: int) -> int:
    """The most training steps whose counted total (`counts[i]` after step i) is within `cap`
    (0 when even θ₀'s evaluation is not: SCPO then stays at θ₀, the backup)."""
    return max([i for i, c in enumerate(counts) if c <= cap], default=0)


def run_scpo(name: str, seeds: int, cap: int | None, runs: Path, verify_limits: dict,
             log) -> dict:
    """Per seed: SCPO's full run; with a `cap`, also the run stopped at the last step whose
    counted total is within it (training is deterministic for a seed, so the same
    iterates, cut short: its count is checked against the cap)."""
    out = {"full": [], "capped": []}
    for seed in range(seeds):
        path = seed_variant(name, seed)
        full = scpo_train(path, runs / f"{name}-s{seed}")
        out["full"].append(scpo_seed(name, seed, full, verify_limits))
        r = out["full"][-1]
        log(f"  scpo s{seed}: {r['steps']} steps ({r['accepted']} accepted), "
            f"{r['env_steps']:,} simulated steps, {r['seconds']:.0f} s, audit "
            f"{'passed' if r['audit_ok'] else 'FAILED'}, verify {r['final_verify']['verdict']}")
        if cap is None:
            continue
        k = steps_within(full["counts"], cap)
        capped = scpo_train(path, runs / f"{name}-s{seed}-capped", steps=k)
        out["capped"].append({**scpo_seed(name, seed, capped, verify_limits), "cap": cap})
        r = out["capped"][-1]
        assert r["env_steps"] <= cap or k == 0, (r["env_steps"], cap)
        log(f"  scpo s{seed} capped at {cap:,}: {k} steps ({r['accepted']} accepted), "
            f"{r['env_steps']:,} simulated steps")
    return out


def summarise(per_seed: list[dict], version: str) -> dict:
    """A method's row: totals over seeds (iterates, violating, steps, seconds), mean and spread
    over seeds (return of the final iterate, violating iterates), and every seed's own."""
    def spread(key):
        v = np.array([s[key] for s in per_seed], dtype=float)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max())}
    g = np.concatenate([s["g"] for s in per_seed])
    row = {"seeds": len(per_seed), "iterates": int(len(g)),
           "violating_iterates": int(sum(s["violating"] for s in per_seed)),
           "violating_per_seed": spread("violating"),
           "worst": float(np.max(g)),
           "return_final": spread("return_final")["mean"],
           "return_final_per_seed": spread("return_final"),
           "violating_final": int(sum(s["final_violating"] for s in per_seed)),
           "violating_initial": int(sum(s["initial_violating"] for s in per_seed)),
           "env_steps": int(sum(s["env_steps"] for s in per_seed)),
           "env_steps_per_run": [int(s["env_steps"]) for s in per_seed],
           "seconds": float(sum(s["seconds"] for s in per_seed)), "version": version,
           "worst_per_metric": np.max(g, axis=0).tolist(),
           "violating_per_metric": (g > 0).sum(axis=0).tolist(),
           "final_verify": [{"seed": s["seed"], **s["final_verify"]} for s in per_seed],
           "per_seed": [{k: v for k, v in s.items() if k not in ("g", "ret", "final_verify")}
                        for s in per_seed]}
    return row


def omnisafe_seed(name: str, plain, seed: int, res: dict, verify_limits: dict) -> dict:
    """One OmniSafe run judged by the spec: every epoch's actor as θ of the residual-free
    family, evaluated on the spec's scenarios; the final one through `scpo verify`."""
    thetas, infos = zip(*(theta_of(p, plain.family) for p in res["exported"]))
    ev = evaluate(name, plain, np.stack(thetas))
    clamp = 0
    for i, info in enumerate(infos):
        if info["norm"] is not None:
            zx = (ev["X"][i] - info["norm"]["mean"]) / info["norm"]["std"]
            clamp += int(np.any(np.abs(zx) > info["norm"]["clip"]))
    viol = (ev["g"] > 0).any(axis=1)
    return {"seed": seed, "iterates": int(len(thetas)), "violating": int(viol.sum()),
            "worst": float(ev["g"].max()), "return_final": float(ev["ret"][-1]),
            "return_initial": float(ev["ret"][0]), "final_violating": bool(viol[-1]),
            "initial_violating": bool(viol[0]), "env_steps": int(res["env_steps"]),
            "seconds": res["wall"], "clamp_iterates": clamp, "bc": res.get("bc"),
            "epochs": [i["epoch"] for i in infos],
            "final_verify": final_verify(plain, thetas[-1], verify_limits),
            "g": ev["g"], "ret": ev["ret"]}


def run_task(name: str, py: Path, budget: dict, mode: str, runs: Path, log,
             methods=tuple(METHODS), scpo: bool = True, jobs: int = 1,
             verify_limits: dict | None = None) -> tuple[dict, dict, list]:
    from concurrent.futures import ThreadPoolExecutor
    verify_limits = verify_limits or VERIFY[False]
    _, _, compiled = load(name)
    plain_path, plain = plain_variant(name)
    cfg_path = WORK / f"task_{name}.json"
    write_whole(cfg_path, json.dumps(task_config(name, compiled), indent=1))
    rows, curves, seeds = {}, {}, budget["seeds"]
    epoch = budget["steps_per_epoch"]
    omni_steps = [budget["total_steps"]] * seeds
    if scpo:
        cap = budget["total_steps"] if mode == "scpo_capped_to_omnisafe" else None
        sc = run_scpo(name, seeds, cap, runs, verify_limits, log)
        version = f"scpo-spec {_version('scpo-spec')}"
        if cap is None:  # OmniSafe gets at least SCPO's count, in whole epochs
            omni_steps = [-(-s["env_steps"] // epoch) * epoch for s in sc["full"]]
            rows["scpo"] = summarise(sc["full"], version)
            curves["scpo"] = sc["full"]
        else:
            rows["scpo"] = summarise(sc["capped"], version)
            curves["scpo"] = sc["capped"]
            rows["scpo_uncapped"] = {**summarise(sc["full"], version), "budget_matched": False}
        rows["scpo"]["budget_matched"] = True
    jobs_list = [(m, s) for m in methods for s in range(seeds)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda ms: run_omnisafe(
            py, name, ms[0], ms[1], omni_steps[ms[1]], epoch, cfg_path, hidden_of(plain), runs,
            log),
            jobs_list))
    for method in methods:
        per_seed = [omnisafe_seed(name, plain, s, res, verify_limits)
                    for (m, s), res in zip(jobs_list, results) if m == method]
        rows[method] = summarise(per_seed, f"omnisafe {results[0]['version']}")
        rows[method]["budget_matched"] = scpo or mode == "scpo_capped_to_omnisafe"
        rows[method]["clamp_iterates"] = int(sum(s["clamp_iterates"] for s in per_seed))
        if METHODS[method][1]:
            rows[method]["bc"] = [s["bc"] for s in per_seed]
        curves[method] = per_seed
    metrics = [m.name for m in compiled.metrics]
    for row in rows.values():
        row["metrics"] = metrics
    log(f"  {name}: evaluated on the spec's {len(compiled.evaluator.x0)} scenarios with "
        f"{plain_path.relative_to(ROOT)} for OmniSafe's actors")
    return rows, curves, metrics


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds × 12,000 steps per OmniSafe run")
    ap.add_argument("--json", type=Path, help="write the results here (after each task, marked "
                    "partial until the last)")
    ap.add_argument("--plots", type=Path, help="write one PNG per task here")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "omnisafe",
                    help="SCPO's run directories, and OmniSafe's under DIR/omnisafe (default "
                    "runs/omnisafe)")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--algos", nargs="*", default=list(METHODS), choices=list(METHODS),
                    help="OmniSafe methods to run (default all four)")
    ap.add_argument("--budget-mode", choices=BUDGET_MODES, default=BUDGET_MODES[0],
                    help="cap SCPO at OmniSafe's steps per run (default), or give OmniSafe "
                    "SCPO's simulated steps per seed")
    ap.add_argument("--no-scpo", action="store_true", help="run only OmniSafe")
    ap.add_argument("--seeds", type=int, help="override the budget's number of seeds")
    ap.add_argument("--steps", type=int, help="override the environment steps per OmniSafe run")
    ap.add_argument("--epoch", type=int, help="override OmniSafe's steps_per_epoch")
    ap.add_argument("--jobs", type=int, default=1, help="OmniSafe runs at once (default 1)")
    ap.add_argument("--merge", type=Path, nargs="+", help="only merge these JSON files (runs of "
                    "the same budget, one task each, made at once) into --json")
    args = ap.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.merge:
        if not args.json:
            ap.error("--merge needs --json")
        merged = merge([json.loads(p.read_text()) for p in args.merge], tuple(METHODS))
        args.json.write_text(json.dumps(merged, indent=1) + "\n")
        print_table(merged["tasks"], merged["budget"], merged["budget_mode"])
        return 0
    budget = dict(BUDGET[args.quick])
    for key, value in (("seeds", args.seeds), ("total_steps", args.steps),
                       ("steps_per_epoch", args.epoch)):
        if value is not None:
            budget[key] = value
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        py = ensure_venv(log)
    except VenvError as e:
        log(f"OmniSafe venv could not be made: {e}")
        return 3
    for name in ("scpo_omni_envs.py", "omni_runner.py"):
        write_whole(WORK / name, (VENV_SIDE / name).read_text())
    versions = venv_versions(py)
    import torch
    versions.update({"scpo_spec": _version("scpo-spec"), "host_torch": torch.__version__,
                     "host_gymnasium": _version("gymnasium"),
                     "python": sys.version.split()[0]})
    log(f"versions: {versions}")
    torch.set_num_threads(1)  # the OmniSafe subprocesses and this one share 2 cores
    verify_limits = VERIFY[args.quick]
    all_rows, start = {}, time.perf_counter()
    for done, name in enumerate(args.tasks, 1):
        log(f"{name}:")
        rows, curves, metrics = run_task(name, py, budget, args.budget_mode, args.runs, log,
                                         args.algos, not args.no_scpo, args.jobs, verify_limits)
        all_rows[name] = rows
        if args.plots:
            args.plots.mkdir(parents=True, exist_ok=True)
            plot(name, curves, metrics, args.plots)
        if args.json:
            write_json(args, budget, versions, verify_limits, all_rows,
                       time.perf_counter() - start, done < len(args.tasks))
    print_table(all_rows, budget, args.budget_mode)
    log(f"total {time.perf_counter() - start:.0f} s")
    return 0


def write_json(args, budget: dict, versions: dict, verify_limits: dict, rows: dict,
               seconds: float, partial: bool) -> None:
    """The results so far (no machine paths: run directories and checkpoints stay out)."""
    args.json.parent.mkdir(parents=True, exist_ok=True)
    body = {"quick": args.quick, "partial": partial, "tasks_asked": args.tasks,
            "budget_mode": None if args.no_scpo else args.budget_mode, "budget": budget,
            "omnisafe_settings": {"cost_limit": COST_LIMIT, "cost_limit_tuned": False,
                                  "behaviour_cloning": BC, "jobs": args.jobs},
            "verify_limits": verify_limits, "versions": versions, "seconds": seconds,
            "tasks": rows}
    args.json.write_text(json.dumps(body, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
