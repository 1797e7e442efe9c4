"""`scpo verify` against auto_LiRPA (and immrax) on one property of the double integrator.

    python benchmarks/compare_verifiers.py [--run RUN] [--only scpo|lirpa|immrax ...] [--json FILE]

The property: the bound on max_t |position_t| over the whole initial box (t = 0 … T, the spec's
`position_limit`: always abs(position) <= 1.5) for the policy θ₀ of specs/double_integrator.scpo
(or a run's final policy with --run). The closed loop, T = 60 steps of x⁺ = A x + B u with
u = K x + MLP(x) (the spec's `residual = backup` over its LQR gain), is read from the compiled spec
(scpo_spec.verify.reach.ClosedLoop's A, B, K and layers), written to an .npz, and each peer
bounds it:

* **scpo**: scpo_spec.verify.prove.verify (zonotopes, bisection until every metric is PROVED or
  `--cells`); the bound is position_limit's g bound + 1.5.
* **auto_LiRPA** (GitHub source, `fetch` of Verified-Intelligence/auto_LiRPA, commit in the JSON;
  PyPI's 0.3 does not import with numpy 2: `numpy.lib.arraysetops`): the loop unrolled as one
  torch network (float64) whose output is the position at each step, bounded by IBP and by
  CROWN over a k×k grid of the box (k = 1, 4, …; all cells as one batch). It runs in its own
  venv, `.cache/lirpa-venv` (`python -m venv --system-site-packages`, so torch is the installed one,
  plus `pip install appdirs tqdm graphviz`; the source is put on PYTHONPATH, not installed: its
  setup.py refuses torch ≥ 2.9 only by a printed warning, but the venv has no `wheel`).
* **immrax** (PyPI 0.3.8 with jax 0.10, float64, `.cache/immrax-venv`, a plain venv with
  `pip install immrax==0.3.8`): its interval inclusion functions of the one-step closed-loop map
  x ↦ A x + B (K x + MLP(x)) — `natif` (natural) and `mjacif` (mixed Jacobian) — applied T
  times per cell (an interval reachability loop; a box per step). Its inclusion functions of the
  whole unrolled map were tried too: natif gives the same bound at 15× the time, mjacif a
  worse one in 60 s (not in this script).

Nothing of either peer is imported into this package's python; they are no dependency of it.
Reference: the largest |position| over 10⁴ initial states drawn uniformly from the box, rolled out
by the spec's own evaluator (no bound may be below it). Wall seconds are each tool's own time
to bound (not the venv's start-up), on whatever threads it uses (scpo: 1; the peers: torch's/XLA's
default, on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
WORK = CACHE / "verifiers-work"
LIRPA_VENV = CACHE / "lirpa-venv"
LIRPA_SRC = CACHE / "auto_LiRPA-src"
LIRPA_MIRROR = Path("/work/.mirror/Verified-Intelligence+auto_LiRPA/repo")
IMMRAX_VENV = CACHE / "immrax-venv"
IMMRAX_VERSION = "0.3.8"
LIMIT = 1.5  # the spec's position_limit

LIRPA_RUNNER = r'''
import json, sys, time
import numpy as np, torch
from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
import auto_LiRPA
args = json.loads(sys.argv[1])
d = np.load(args["npz"])
torch.set_default_dtype(torch.float64)
A, B, K = (torch.tensor(d[k]) for k in ("A", "B", "K"))
n_layers = int(d["n_layers"]); acts = [str(a) for a in d["activations"]]
T = int(d["horizon"])

class Loop(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.ModuleList()
        for i in range(n_layers):
            W, b = torch.tensor(d[f"W{i}"]), torch.tensor(d[f"b{i}"])
            l = torch.nn.Linear(W.shape[1], W.shape[0]); l.weight.data = W; l.bias.data = b
            self.lin.append(l)
        self.A = torch.nn.Linear(2, 2, bias=False); self.A.weight.data = A
        self.B = torch.nn.Linear(1, 2, bias=False); self.B.weight.data = B
        self.K = torch.nn.Linear(2, 1, bias=False); self.K.weight.data = K
    def forward(self, x):
        ps = [x[:, :1]]
        for _ in range(T):
            h = x
            for l, a in zip(self.lin, acts):
                h = l(h)
                h = torch.tanh(h) if a == "tanh" else h
            u = self.K(x) + h
            x = self.A(x) + self.B(u)
            ps.append(x[:, :1])
        return torch.cat(ps, 1)

net = Loop()
lo, hi = np.asarray(d["lo"]), np.asarray(d["hi"])
out = {"version": auto_LiRPA.__version__, "torch": torch.__version__,
       "threads": torch.get_num_threads(),
       "rows": []}
x_check = torch.tensor(d["x_check"])
with torch.no_grad():
    out["check_max_abs_p"] = float(net(x_check).abs().max())
for k in args["splits"]:
    idx = np.stack(np.meshgrid(np.arange(k), np.arange(k), indexing="ij"), -1).reshape(-1, 2)
    clo = torch.tensor(lo + (hi - lo) * idx / k); chi = torch.tensor(lo + (hi - lo) * (idx + 1) / k)
    start = time.perf_counter()
    model = BoundedModule(net, (clo + chi) / 2, device="cpu")
    build = time.perf_counter() - start
    for method in args["methods"]:
        start = time.perf_counter()
        try:
            xb = BoundedTensor((clo + chi) / 2, PerturbationLpNorm(x_L=clo, x_U=chi))
            lb, ub = model.compute_bounds(x=(xb,), method=method)
            bound = float(torch.maximum(ub, -lb).max()); err = None
        except Exception as e:  # recorded, never a made-up number
            bound, err = None, f"{type(e).__name__}: {e}"[:300]
        out["rows"].append({"method": method, "cells": int(k * k), "bound": bound,
                            "seconds": time.perf_counter() - start, "build_seconds": build,
                            "error": err})
        print(json.dumps(out["rows"][-1]), file=sys.stderr, flush=True)
print(json.dumps(out))
'''


IMMRAX_RUNNER = r'''
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import immrax as irx
args = json.loads(sys.argv[1])
d = np.load(args["npz"])
A, B, K = (jnp.asarray(d[k]) for k in ("A", "B", "K"))
L = int(d["n_layers"]); acts = [str(a) for a in d["activations"]]; T = int(d["horizon"])
Ws = [jnp.asarray(d[f"W{i}"]) for i in range(L)]; bs = [jnp.asarray(d[f"b{i}"]) for i in range(L)]
def step(x):
    h = x
    for W, b, a in zip(Ws, bs, acts):
        h = W @ h + b
        h = jnp.tanh(h) if a == "tanh" else h
    u = K @ x + h
    return A @ x + B @ u
def unrolled(x):
    ps = [x[:1]]
    for _ in range(T):
        x = step(x); ps.append(x[:1])
    return jnp.concatenate(ps)
from importlib.metadata import version
out = {"version": version("immrax"),
       "jax": jax.__version__, "rows": []}
x_check = jnp.asarray(d["x_check"])
out["check_max_abs_p"] = float(jnp.abs(jax.vmap(unrolled)(x_check)).max())
lo, hi = np.asarray(d["lo"]), np.asarray(d["hi"])
for k in args["splits"]:
    idx = np.stack(np.meshgrid(np.arange(k), np.arange(k), indexing="ij"), -1).reshape(-1, 2)
    clo = lo + (hi - lo) * idx / k; chi = lo + (hi - lo) * (idx + 1) / k
    for name in args["methods"]:
        start = time.perf_counter()
        try:
            if name.endswith("per step"):
                inc = jax.jit((irx.natif if name.startswith("natif") else irx.mjacif)(step))
                worst = 0.0
                for a, b in zip(clo, chi):
                    ix = irx.interval(jnp.asarray(a), jnp.asarray(b))
                    worst = max(worst, float(max(abs(ix.lower[0]), abs(ix.upper[0]))))
                    for _ in range(T):
                        ix = inc(ix)
                        worst = max(worst, float(max(abs(ix.lower[0]), abs(ix.upper[0]))))
            else:
                inc = jax.jit((irx.natif if name.startswith("natif") else irx.mjacif)(unrolled))
                worst = 0.0
                for a, b in zip(clo, chi):
                    iy = inc(irx.interval(jnp.asarray(a), jnp.asarray(b)))
                    worst = max(worst, float(
                        jnp.maximum(jnp.abs(iy.lower), jnp.abs(iy.upper)).max()))
            finite = bool(np.isfinite(worst))
            bound, err = (worst, None) if finite else (None, "not finite")
        except Exception as e:
            bound, err = None, f"{type(e).__name__}: {e}"[:300]
        out["rows"].append({"method": name, "cells": int(k * k), "bound": bound,
                            "seconds": time.perf_counter() - start, "error": err})
        print(json.dumps(out["rows"][-1]), file=sys.stderr, flush=True)
print(json.dumps(out))
'''


def closed_loop(args):
    """(compiled, θ, label) of the spec's θ₀ or the run's final policy."""
    from scpo_spec.compile.problem import compile_spec
    if args.run is not None:
        from scpo_spec.engine.trained import load_run
        run = load_run(args.run)
        return compile_spec(run.spec, run.base_dir), run.theta, f"{args.run} (final policy)"
    from scpo_spec.language.load import check_file
    result = check_file(args.spec)
    if not result.ok:
        sys.exit(f"{args.spec}: {[d.message for d in result.diagnostics]}")
    compiled = compile_spec(result.spec, args.spec.resolve().parent)
    return compiled, compiled.family.theta0, f"{args.spec} (θ₀)"


def export(compiled, theta, x_check) -> Path:
    """The closed loop as plain arrays for the peers (only what this spec uses is supported)."""
    from scpo_spec.language.scenario_bounds import initial_box
    from scpo_spec.verify.reach import ClosedLoop
    loop = ClosedLoop(compiled, theta)
    if loop.kind != "linear" or loop.K is None or loop.offset is not None \
            or loop.around is not None \
            or loop.observe is not None or set(loop.activations) - {"tanh", "identity"}:
        raise SystemExit("compare_verifiers: only a linear plant with a tanh MLP residual over a "
                         "linear gain is exported to the peers")
    lo, hi = initial_box(compiled.spec)
    WORK.mkdir(parents=True, exist_ok=True)
    arrays = {"A": loop.A.numpy(), "B": loop.B.numpy(), "K": loop.K.numpy(),
              "n_layers": len(loop.layers), "activations": np.array(loop.activations),
              "horizon": loop.horizon, "lo": np.asarray(lo, float), "hi": np.asarray(hi, float),
              "x_check": x_check}
    for i, (W, b) in enumerate(loop.layers):
        arrays[f"W{i}"] = W.numpy()
        arrays[f"b{i}"] = np.zeros(W.shape[0]) if b is None else b.numpy()
    path = WORK / "loop.npz"
    np.savez(path, **arrays)
    return path


def sampled_worst(compiled, theta, samples: int):
    from scpo_spec.language.scenario_bounds import initial_box
    lo, hi = (torch.as_tensor(a, dtype=torch.float64) for a in initial_box(compiled.spec))
    gen = torch.Generator().manual_seed(0)
    x0 = lo + (hi - lo) * torch.rand(samples, lo.shape[0], generator=gen, dtype=lo.dtype)
    with torch.no_grad():
        X, _ = compiled.evaluator.rollout(theta[None], x0)
        g = compiled.evaluator.per_scenario(theta[None], x0)[0]
    names = [m.name for m in compiled.metrics]
    worst_g = float(g[:, names.index("position_limit")].max()) + LIMIT
    return float(X[0, :, :, 0].abs().max()), worst_g, x0


def run_scpo(compiled, theta, cells: int) -> dict:
    from scpo_spec.verify.prove import verify
    res = verify(compiled, theta, cells=cells, time_limit=300.0)
    r = res.constraints["position_limit"]
    return {"method": "scpo verify (zonotopes)", "verdict": r.verdict, "cells": r.cells,
            "bound": None if r.bound is None else r.bound + LIMIT,
            "seconds": res.seconds, "all_metrics_verdict": res.verdict, "error": None}


def ensure_lirpa(log) -> Path:
    py = LIRPA_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(LIRPA_VENV)],
                       check=True, capture_output=True)
        subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "appdirs",
                        "tqdm", "graphviz"], check=True, capture_output=True)
    if not (LIRPA_SRC / "auto_LiRPA").exists():
        LIRPA_SRC.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(["git", "-C", str(LIRPA_MIRROR), "archive", "HEAD"], check=True,
                             capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(LIRPA_SRC)], input=tar, check=True)
    return py


def run_lirpa(npz: Path, splits, methods, log) -> dict:
    try:
        py = ensure_lirpa(log)
    except (subprocess.CalledProcessError, OSError) as e:
        return {"available": False, "reason": f"venv/source not made: {e}"}
    commit = subprocess.run(["git", "-C", str(LIRPA_MIRROR), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or None
    (WORK / "lirpa_runner.py").write_text(LIRPA_RUNNER)
    env = {**os.environ, "PYTHONPATH": str(LIRPA_SRC)}
    p = subprocess.run([str(py), str(WORK / "lirpa_runner.py"),
                        json.dumps({"npz": str(npz), "splits": splits, "methods": methods})],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"available": False, "reason": f"runner failed: {p.stderr[-800:]}"}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return {"available": True, "commit": commit, **out}


def run_immrax(npz: Path, splits, log) -> dict:
    py = IMMRAX_VENV / "bin" / "python"
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(IMMRAX_VENV)], check=True,
                           capture_output=True)
            subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check",
                            f"immrax=={IMMRAX_VERSION}"], check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as e:
        return {"available": False, "reason": f"venv not made: {e}"}
    (WORK / "immrax_runner.py").write_text(IMMRAX_RUNNER)
    p = subprocess.run([str(py), str(WORK / "immrax_runner.py"), json.dumps(
        {"npz": str(npz), "splits": splits, "methods": ["natif per step", "mjacif per step"]})],
        capture_output=True, text=True)
    if p.returncode != 0:
        return {"available": False, "reason": f"runner failed: {p.stderr[-800:]}"}
    return {"available": True, **json.loads(p.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "specs/double_integrator.scpo")
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--only", action="append", choices=["scpo", "lirpa", "immrax"])
    ap.add_argument("--cells", type=int, default=4096, help="scpo verify's cell budget")
    ap.add_argument("--splits", default="1,4,16", help="auto_LiRPA: k for a k×k grid of cells")
    ap.add_argument("--methods", default="IBP,CROWN")
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    only = set(args.only or ["scpo", "lirpa", "immrax"])
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    compiled, theta, label = closed_loop(args)
    worst, worst_g, x0 = sampled_worst(compiled, theta, args.samples)
    out = {"what": label, "property": "max over t = 0..T of |position_t| over the initial box",
           "horizon": compiled.evaluator.horizon, "sampled": {"samples": args.samples,
           "max_abs_position": worst, "position_limit_g_plus_limit": worst_g}, "rows": [],
           "peers": {}}
    if "scpo" in only:
        out["rows"].append(run_scpo(compiled, theta, args.cells))
    npz = export(compiled, theta, x0[:256].numpy()) if only - {"scpo"} else None
    if "lirpa" in only:
        res = run_lirpa(npz, [int(s) for s in args.splits.split(",")], args.methods.split(","), log)
        out["peers"]["auto_LiRPA"] = {k: v for k, v in res.items() if k != "rows"}
        for r in res.get("rows", []):
            out["rows"].append({**r, "method": f"auto_LiRPA {r['method']}"})
        if res.get("available"):  # the unrolled network is the evaluator's closed loop
            with torch.no_grad():
                X, _ = compiled.evaluator.rollout(theta[None], x0[:256])
            res_gap = abs(res["check_max_abs_p"] - float(X[0, :, :, 0].abs().max()))
            out["peers"]["auto_LiRPA"]["network_vs_evaluator"] = res_gap
            if res_gap > 1e-9:
                log(f"auto_LiRPA's network differs from the evaluator by {res_gap:.3g}")
    if "immrax" in only:
        res = run_immrax(npz, [int(s) for s in args.splits.split(",")], log)
        out["peers"]["immrax"] = {k: v for k, v in res.items() if k != "rows"}
        for r in res.get("rows", []):
            out["rows"].append({**r, "method": f"immrax {r['method']}"})
    print(f"{label}: max |position| over t = 0..{out['horizon']}; sampled worst of "
          f"{args.samples}: {worst:.6f}")
    print(f"{'method':<28} {'bound':>12} {'cells':>6} {'seconds':>9}  (auto_LiRPA: + building "
          "the BoundedModule)")
    for r in out["rows"]:
        b = "-" if r["bound"] is None else \
            f"{r['bound']:.6f}" if r["bound"] < 1e5 else f"{r['bound']:.3e}"
        build = f"  + {r['build_seconds']:.2f}" if "build_seconds" in r else ""
        print(f"{r['method']:<28} {b:>12} {r['cells']:>6} {r['seconds']:>9.2f}{build}"
              + (f"  ({r['error']})" if r.get("error") else ""))
    for name, p in out["peers"].items():
        if not p.get("available"):
            print(f"{name}: not run — {p['reason']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
