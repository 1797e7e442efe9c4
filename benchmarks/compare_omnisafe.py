"""SCPO against OmniSafe's PPO-Lag and CPO on two ready specs, every iterate judged by the spec.

    python benchmarks/compare_omnisafe.py [--quick] [--json FILE] [--plots DIR] [--runs DIR]

What runs
---------
* **SCPO**: `scpo train`'s own code path (scpo_spec.engine.run.train) on the spec as it is,
  every step the spec asks for. Its iterates are θ₀ (the backup) and the accepted updates.
* **PPO-Lag and CPO**: OmniSafe (pinned, `OMNISAFE_VERSION` below) in its own virtual environment
  under `.cache/omnisafe-venv`, run as a subprocess. Nothing of OmniSafe is imported into this
  package's python, and it is no dependency of the package.

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
`steps_per_epoch` (the stated budget, below; the default epoch of 20,000 steps would leave a
--quick run with one iterate), `cost_limit = 0`, `device = cpu`, `torch_threads = 1` (2 shared
cores), `save_model_freq = 1` (every epoch's actor is saved), the seed, and the actor's
`hidden_sizes` set to the spec's policy family ([8] for the pendulum; [64, 64] for the double
integrator, OmniSafe's default). The critics and everything else keep OmniSafe's defaults
(observation normalisation on, kaiming-uniform init, linear lr decay, Gaussian actor).

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

Columns: `iterates` (all seeds together; OmniSafe: its initial actor, epoch 0, and each epoch's
actor), `violating`, `worst` (the largest g_i over every iterate of every seed), `return_final`
(mean over seeds of the final iterate's mean episode return on the spec's scenarios, with the
deterministic policy: Pendulum-v1's return for the pendulum, Σ −(u_expert − u)² for the double
integrator), `env_steps` (all seeds: OmniSafe's environment interactions; SCPO's plant/env steps
of every rollout it made, counted by wrapping the rollout functions in this process only),
`seconds` (wall time, all seeds).

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

`--quick`: 2 seeds, 12,000 environment steps per run in epochs of 2,000 (7 iterates per run
with the initial actor). Without it: 5 seeds, 100,000 steps per run in epochs of 5,000.
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
ALGOS = {"ppo_lag": "PPOLag", "cpo": "CPO"}
BUDGET = {True: dict(seeds=2, total_steps=12_000, steps_per_epoch=2_000),
          False: dict(seeds=5, total_steps=100_000, steps_per_epoch=5_000)}

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
    site = _run([str(venv_python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                log).strip()
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
    out.write_text(new)
    compiled = compile_spec(load_spec(out), path.parent)
    assert compiled.family.backup is None
    return out, compiled


def task_config(name: str, compiled) -> dict:
    T = int(compiled.evaluator.horizon)
    if name == "gym_pendulum":
        return {"env_id": compiled.dynamics.env_id, "horizon": T, "torque_limit": 2.0,
                "speed_limit": 7.0}
    A, B = compiled.dynamics.linearisation()
    x0 = compiled.evaluator.x0.numpy()
    expert = compiled.spec.objective.expert
    return {"horizon": T, "A": np.asarray(A).tolist(), "B": np.asarray(B).tolist(),
            "K_expert": expert.K.value, "bias": expert.bias.value,
            "box_low": x0.min(0).tolist(), "box_high": x0.max(0).tolist(),
            "position_limit": 1.5, "force_limit": 4.0, "settle": [40, 60, 0.1]}


def hidden_of(compiled) -> list[int]:
    return [out for out, _ in compiled.family.layers[:-1]]


# ---------------------------------------------------------------- OmniSafe runs

def run_omnisafe(py: Path, name: str, algo: str, seed: int, budget: dict, cfg_path: Path,
                 hidden: list[int], log) -> dict:
    tag = f"{name}-{algo}-s{seed}"
    run_dir = WORK / "runs" / tag
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    args = {"algo": ALGOS[algo], "env_id": ENV_IDS[name], "seed": seed,
            "total_steps": budget["total_steps"], "steps_per_epoch": budget["steps_per_epoch"],
            "hidden": hidden, "log_dir": str(run_dir / "omnisafe"), "out": str(run_dir / "npz")}
    env = dict(os.environ, SCPO_OMNI_TASK=str(cfg_path), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", WANDB_MODE="disabled")
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    p = subprocess.run([str(py), str(WORK / "omni_runner.py"), json.dumps(args)], env=env,
                       capture_output=True, text=True, cwd=str(WORK))
    wall = time.perf_counter() - start
    (WORK / "runs" / f"{tag}.log").write_text(p.stdout + p.stderr)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("SCPO_OMNI_RESULT ")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"OmniSafe {algo} on {name} (seed {seed}) failed (rc {p.returncode}); "
                           f"log: {WORK / 'runs' / (tag + '.log')}\n{(p.stdout + p.stderr)[-2500:]}")
    res = json.loads(line[-1][len("SCPO_OMNI_RESULT "):])
    res["wall"] = wall
    log(f"  {tag}: {len(res['exported'])} actors, {wall:.0f} s, last epoch's episode return "
        f"{res['ep_ret']:.1f} and cost {res['ep_cost']:.1f}")
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


def run_scpo(name: str, runs: Path, log) -> tuple[dict, dict]:
    from scpo_spec.audit.log import read_lines
    from scpo_spec.audit.verify import audit_run
    from scpo_spec.engine.run import fresh_dir, train
    from scpo_spec.language.load import check_file

    path = ROOT / TASKS[name]
    result = check_file(path)
    out = fresh_dir(runs / path.stem)
    start = time.perf_counter()
    with StepCounter() as counter:
        run = train(path, result.spec, result.source.text, out=out)
    seconds = time.perf_counter() - start
    g_all, accepted = [], 0
    for line in read_lines(run.run_dir / "audit.jsonl")[0]:
        rec = line.record
        if rec.get("type") == "init":
            g_all.append(rec["g"])
        elif rec.get("type") == "step" and rec["accepted"]:
            g_all.append(rec["g_next"])
            accepted += 1
    audit = audit_run(run.run_dir)
    g = np.array(g_all, dtype=float)
    _, _, compiled = load(name)
    final = evaluate(name, compiled, run.state.theta.detach().numpy()[None])
    violating = int((g > 0).any(axis=1).sum())
    assert violating == audit.accepted_violations, (violating, audit.accepted_violations)
    log(f"  scpo: {len(g)} iterates ({accepted} accepted of {run.state.step} steps), "
        f"{seconds:.0f} s, audit {'passed' if audit.ok else 'FAILED'}; run {run.run_dir}")
    from importlib.metadata import version
    row = {"seeds": 1, "iterates": int(len(g)), "violating_iterates": violating,
           "worst": float(g.max()), "return_final": float(final["ret"][0]),
           "env_steps": int(counter.steps), "seconds": seconds,
           "version": f"scpo-spec {version('scpo-spec')}", "audit_ok": bool(audit.ok),
           "run_dir": str(run.run_dir)}
    curves = {"scpo": [{"g": g, "ret": None}]}
    return row, curves


def run_task(name: str, py: Path, budget: dict, runs: Path, log, algos=tuple(ALGOS),
             scpo: bool = True) -> tuple[dict, dict, list]:
    _, _, compiled = load(name)
    plain_path, plain = plain_variant(name)
    cfg = task_config(name, compiled)
    cfg_path = WORK / f"task_{name}.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    rows, curves = {}, {}
    if scpo:
        rows["scpo"], curves_scpo = run_scpo(name, runs, log)
        curves.update(curves_scpo)
    for algo in algos:
        per_seed, total_seconds, total_steps, version = [], 0.0, 0, None
        for seed in range(budget["seeds"]):
            res = run_omnisafe(py, name, algo, seed, budget, cfg_path, hidden_of(plain), log)
            total_seconds += res["wall"]
            total_steps += res["env_steps"]
            version = res["version"]
            thetas, infos = zip(*(theta_of(p, plain.family) for p in res["exported"]))
            ev = evaluate(name, plain, np.stack(thetas))
            clamp = 0
            for i, info in enumerate(infos):
                if info["norm"] is not None:
                    zx = (ev["X"][i] - info["norm"]["mean"]) / info["norm"]["std"]
                    clamp += int(np.any(np.abs(zx) > info["norm"]["clip"]))
            per_seed.append({"g": ev["g"], "ret": ev["ret"], "clamp": clamp,
                             "epochs": [i["epoch"] for i in infos]})
        g = np.concatenate([s["g"] for s in per_seed])
        viol = (g > 0).any(axis=1)
        rows[algo] = {"seeds": budget["seeds"], "iterates": int(len(g)),
                      "violating_iterates": int(viol.sum()),
                      "worst": float(np.max(g)),
                      "return_final": float(np.mean([s["ret"][-1] for s in per_seed])),
                      "env_steps": int(total_steps), "seconds": total_seconds,
                      "version": f"omnisafe {version}",
                      "violating_final": int(sum(bool((s["g"][-1] > 0).any()) for s in per_seed)),
                      "clamp_iterates": int(sum(s["clamp"] for s in per_seed)),
                      "worst_per_metric": np.max(g, axis=0).tolist(),
                      "violating_per_metric": (g > 0).sum(axis=0).tolist()}
        curves[algo] = per_seed
    if scpo:
        rows["scpo"]["worst_per_metric"] = np.max(curves["scpo"][0]["g"], axis=0).tolist()
        rows["scpo"]["violating_per_metric"] = (curves["scpo"][0]["g"] > 0).sum(axis=0).tolist()
    metrics = [m.name for m in compiled.metrics]
    log(f"  {name}: evaluated on the spec's {len(compiled.evaluator.x0)} scenarios with "
        f"{plain_path.relative_to(ROOT)} for OmniSafe's actors")
    return rows, curves, metrics


def plot(name: str, curves: dict, metrics: list[str], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"scpo": "#1f5fa8", "ppo_lag": "#c0392b", "cpo": "#e67e22"}
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7.5, 1.9 * len(metrics)), sharex=False)
    for method, seeds in curves.items():
        for j, s in enumerate(seeds):
            for i, metric in enumerate(metrics):
                axes[i].plot(np.arange(len(s["g"])), s["g"][:, i], color=colors[method], lw=1.2,
                             alpha=0.9 if j == 0 else 0.5, label=method if j == 0 else None)
    for i, metric in enumerate(metrics):
        axes[i].axhline(0, color="black", lw=0.8)
        axes[i].set_ylabel(metric, fontsize=8)
        axes[i].tick_params(labelsize=7)
        axes[i].grid(alpha=0.25)
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"{name}: the spec's metrics g of every iterate (g > 0 violates)",
                      fontsize=9, loc="left")
    axes[-1].set_xlabel("iterate (SCPO: accepted update; OmniSafe: epoch)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"omnisafe_{name}.png", dpi=110)
    plt.close(fig)


def print_table(all_rows: dict, budget: dict) -> None:
    print(f"\nviolating = iterates with any of the spec's metrics g > 0 on its scenarios; "
          f"OmniSafe: {budget['seeds']} seeds × {budget['total_steps']:,} steps "
          f"(epochs of {budget['steps_per_epoch']:,})")
    head = ("task", "method", "seeds", "iterates", "violating", "worst g", "return final",
            "env steps", "seconds")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for name, rows in all_rows.items():
        for method, r in rows.items():
            print(f"| {name} | {method} | {r['seeds']} | {r['iterates']} | "
                  f"{r['violating_iterates']} | {r['worst']:.4g} | {r['return_final']:.4g} | "
                  f"{r['env_steps']:,} | {r['seconds']:.0f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds × 12,000 steps per OmniSafe run")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plots", type=Path, help="write one PNG per task here")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "omnisafe",
                    help="SCPO's run directories (default runs/omnisafe)")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--algos", nargs="*", default=list(ALGOS), choices=list(ALGOS),
                    help="OmniSafe algorithms to run (default both)")
    ap.add_argument("--no-scpo", action="store_true", help="run only OmniSafe")
    ap.add_argument("--seeds", type=int, help="override the budget's number of seeds")
    ap.add_argument("--steps", type=int, help="override the environment steps per OmniSafe run")
    ap.add_argument("--epoch", type=int, help="override OmniSafe's steps_per_epoch")
    args = ap.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
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
        (WORK / name).write_text((VENV_SIDE / name).read_text())
    versions = venv_versions(py)
    import torch
    from importlib.metadata import version
    versions.update({"scpo_spec": version("scpo-spec"), "host_torch": torch.__version__,
                     "host_gymnasium": version("gymnasium"), "python": sys.version.split()[0]})
    log(f"versions: {versions}")
    torch.set_num_threads(1)  # the OmniSafe subprocesses and this one share 2 cores
    all_rows, start = {}, time.perf_counter()
    for name in args.tasks:
        log(f"{name}:")
        rows, curves, metrics = run_task(name, py, budget, args.runs, log, args.algos,
                                         not args.no_scpo)
        all_rows[name] = rows
        if args.plots:
            args.plots.mkdir(parents=True, exist_ok=True)
            plot(name, curves, metrics, args.plots)
        for method, r in rows.items():
            r["metrics"] = metrics
    print_table(all_rows, budget)
    total = time.perf_counter() - start
    log(f"total {total:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"quick": args.quick, "budget": budget,
                                         "versions": versions, "seconds": total,
                                         "tasks": all_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
