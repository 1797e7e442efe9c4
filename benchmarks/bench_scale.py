#!/usr/bin/env python
"""How a step grows with the policy's size d, against coordinate finite differences.

    python benchmarks/bench_scale.py [--widths 16,32,64,128,256,512,1024] [--grid 4] [--device cuda]
                                     [--horizon 60] [--directions 16] [--steps 2] [--threads N]

The double integrator (specs/double_integrator.scpo) with a 2-H-H-1 tanh policy for each width
H (d = H² + 5H + 1: 337 … 1 053 697 weights), the same C = 2 + directions candidates, S = grid²
scenarios and horizon T for every size.  Each size runs in a FRESH child process, so its peak
resident memory (resource.getrusage ru_maxrss, which sees torch's allocations — tracemalloc does
not) is that size's own.  Per size it prints the median step time split into the Trainer's phases
(rollouts = the bank's batched evaluation, bank/QR, QCQP solve, verification rollouts,
hashing + writing θ like a state file, gradient, the rest), the peak memory, and the per-step cost
of coordinate finite differences at the same d: d + 1 evaluations of ONE candidate (the
unperturbed θ and θ + h·e_i for each coordinate).  FD is measured (d + 1 single-candidate
evaluations, batched C at a time as an engine would) only where d ≤ --fd-measure-max; above that
it is extrapolated from the measured cost of one batched evaluation of C candidates at that size,
and the output says which.  Last, the growth exponents: the log-log least-squares slope of the
step time and of the FD cost against d.  Nothing is asserted; timings on a shared machine are
noisy (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "specs" / "double_integrator.scpo"
PHASES = ("rollouts", "bank", "qcqp", "verification", "hashing", "gradient", "other")


def spec_text(width: int, grid: int, horizon: int, directions: int, device: str = "cpu") -> str:
    text = BASE.read_text()
    for old, new in (("hidden = [64, 64]", f"hidden = [{width}, {width}]"),
                     ("    grid 8 ", f"    grid {grid} "), ("    horizon 60", f"    horizon {horizon}"),
                     ("    directions 16", f"    directions {directions}"),
                     ("    solver clarabel\n", f"    solver clarabel\n    device {device}\n")):
        assert old in text, old
        text = text.replace(old, new)
    return text


def child(args) -> dict:
    """One size, in this (fresh) process: Trainer steps, FD cost, peak memory."""
    import torch

    from scpo_spec.compile.problem import compile_spec
    from scpo_spec.engine.train import Trainer, theta_hash
    from scpo_spec.language.load import load_spec

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.scpo"
        path.write_text(spec_text(args.child, args.grid, args.horizon, args.directions,
                                  args.device))
        compiled = compile_spec(load_spec(path), path.parent)
        trainer = Trainer(compiled)
        state = trainer.initial_state()
        state, _ = trainer.step(state)  # warm-up (cvxpy's canonicalisation, the allocator)
        rows, accepted = [], 0
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, record = trainer.step(state)
            wall = time.perf_counter() - t0
            t0 = time.perf_counter()  # what Recorder.commit adds per step: θ hashed, state written
            theta_hash(state.theta)
            np.savez(Path(tmp) / "state.npz", theta=state.theta.numpy(),
                     previous=state.previous.numpy())
            io = time.perf_counter() - t0
            timing = dict(record.timing)
            timing["hashing"] += io
            timing["wall"] = wall + io
            rows.append(timing)
            accepted += int(record.accepted)
        median = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
        # finite differences: d + 1 evaluations of one candidate each, C per batched call
        ev, d = compiled.evaluator, compiled.family.d
        C = trainer.n
        thetas = state.theta[None].repeat(C, 1)
        t0 = time.perf_counter()
        ev(thetas)
        per_eval = time.perf_counter() - t0
        for _ in range(2):
            t0 = time.perf_counter()
            ev(thetas)
            per_eval = min(per_eval, time.perf_counter() - t0)
        fd_measured = None
        if d <= args.fd_measure_max:
            h = 1e-6
            t0 = time.perf_counter()
            ev(state.theta[None])
            for start in range(0, d, C):
                idx = torch.arange(start, min(start + C, d))
                batch = state.theta[None].repeat(len(idx), 1)
                batch[torch.arange(len(idx)), idx] += h
                ev(batch)
            fd_measured = time.perf_counter() - t0
        fd_extrapolated = (d + 1) / C * per_eval
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu_mib = (torch.cuda.max_memory_allocated() / 2 ** 20 if args.device == "cuda" else None)
    return {"gpu_mib": gpu_mib, "width": args.child, "d": d, "C": C, "S": int(ev.x0.shape[0]), "T": ev.horizon,
            "median": median, "accepted": accepted, "steps": args.steps,
            "per_eval": per_eval, "fd_measured": fd_measured, "fd_extrapolated": fd_extrapolated,
            "maxrss_mib": maxrss_kib / 1024}


def slope(ds, ts) -> float:
    x, y = np.log(np.asarray(ds, float)), np.log(np.asarray(ts, float))
    return float(np.polyfit(x, y, 1)[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="16,32,64,128,256,512,1024")
    ap.add_argument("--grid", type=int, default=4, help="S = grid² scenarios (default 16)")
    ap.add_argument("--horizon", type=int, default=60)
    ap.add_argument("--directions", type=int, default=16, help="C = 2 + directions")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per size (after 1 warm-up)")
    ap.add_argument("--fd-measure-max", type=int, default=5000,
                    help="measure FD (d + 1 evaluations) up to this d; extrapolate above")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="`train { device }` of every size: where the rollouts and the bank run")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args)))
        return 0

    import torch
    started = time.perf_counter()
    load = os.getloadavg()
    print(f"torch {torch.__version__} · threads {args.threads or torch.get_num_threads()} · "
          f"{os.cpu_count()} CPUs · load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("--device cuda, but torch sees no usable CUDA GPU", file=sys.stderr)
            return 2
        print(f"device cuda: {torch.cuda.get_device_name(0)} (rollouts and the bank there; "
              "θ, hashing, the QCQP and every certificate number on the CPU in float64)")
    print(f"double integrator, 2-H-H-1 tanh policies; C = {2 + args.directions}, "
          f"S = {args.grid ** 2}, T = {args.horizon} for every size; {args.steps} timed steps "
          "per size (medians), each size in a fresh process\n")
    results = []
    for w in [int(x) for x in args.widths.split(",")]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(w),
               "--grid", str(args.grid), "--horizon", str(args.horizon), "--directions",
               str(args.directions), "--steps", str(args.steps), "--fd-measure-max",
               str(args.fd_measure_max), "--device", args.device]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        done = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])})
        if done.returncode != 0:
            print(f"H = {w}: the child failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        gpu = f"  peak GPU {r['gpu_mib']:7.0f} MiB" if r.get("gpu_mib") is not None else ""
        print(f"  H = {w:5d}  d = {r['d']:>9,}  step {r['median']['wall'] * 1e3:9.1f} ms  "
              f"peak RSS {r['maxrss_mib']:7.0f} MiB{gpu}", flush=True)
    if not results:
        return 1
    print()
    head = (f"{'H':>5} {'d':>10} " + " ".join(f"{p:>9}" for p in PHASES)
            + f" {'step ms':>9} {'beyond%':>7} {'RSS MiB':>8} {'FD s/step':>11} {'FD/step':>8}"
            + (f" {'GPU MiB':>8}" if args.device == "cuda" else ""))
    print("median ms per step, by phase ('beyond%': bank + hashing + other, as a share of the "
          "step)")
    print(head)
    print("-" * len(head))
    for r in results:
        m = r["median"]
        beyond = 100 * (m["bank"] + m["hashing"] + m["other"]) / m["wall"]
        fd = r["fd_measured"] if r["fd_measured"] is not None else r["fd_extrapolated"]
        mark = "" if r["fd_measured"] is not None else "*"
        print(f"{r['width']:>5} {r['d']:>10,} " + " ".join(f"{m[p] * 1e3:9.1f}" for p in PHASES)
              + f" {m['wall'] * 1e3:9.1f} {beyond:6.1f}% {r['maxrss_mib']:8.0f} "
              f"{fd:10.1f}{mark:1} {fd / m['wall']:7.0f}×"
              + (f" {r['gpu_mib']:8.0f}" if r.get("gpu_mib") is not None else ""))
    print("  * FD extrapolated: (d + 1)/C × the measured time of one batched evaluation of C "
          "candidates at that d (measured up to d = "
          f"{args.fd_measure_max:,}); FD rows without * are measured.")
    ds = [r["d"] for r in results]
    fd = [r["fd_measured"] if r["fd_measured"] is not None else r["fd_extrapolated"]
          for r in results]
    print()
    print(f"growth exponents (log-log least squares over d = {ds[0]:,} … {ds[-1]:,}):")
    print(f"  SCPO step time        ∝ d^{slope(ds, [r['median']['wall'] for r in results]):.2f}")
    big = [r for r in results if r["d"] >= 10_000]
    if len(big) >= 2:
        print(f"  SCPO step, d ≥ 10 000 ∝ d^"
              f"{slope([r['d'] for r in big], [r['median']['wall'] for r in big]):.2f}")
    print(f"  bank + hashing + other ∝ d^"
          f"{slope(ds, [r['median']['bank'] + r['median']['hashing'] + r['median']['other'] for r in results]):.2f}")
    print(f"  peak RSS              ∝ d^{slope(ds, [r['maxrss_mib'] for r in results]):.2f}")
    print(f"  coordinate FD / step  ∝ d^{slope(ds, fd):.2f}")
    print(f"\n(benchmark took {time.perf_counter() - started:.0f} s; load average now "
          f"{os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
