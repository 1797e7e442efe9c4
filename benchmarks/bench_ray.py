#!/usr/bin/env python
"""Local batched evaluator vs `executor ray` on the same candidates, in one run.

    python benchmarks/bench_ray.py [--spec specs/double_integrator.scpo] [--sizes 18,64,256]
                                   [--workers 1,2,4] [--repeat 5] [--address HOST:PORT]

For each batch size C (18 = a double-integrator step's candidate bank: raw step, previous update
and 16 probes), the metrics of C candidates θ₀ + small perturbations are evaluated

- locally: `compiled.evaluator(thetas)`, one batched torch call in this process;
- on Ray: `RayEvaluator(…, workers=W)(thetas)`, the C rows cut into W chunks, one per actor,
  each chunk a batched torch call in its actor (one CPU, so one torch thread, per actor).

Times are best-of-`--repeat` after one warm-up call; the ratio is Ray / local (below 1: Ray is
faster). Every Ray result is checked to be bit-for-bit equal to the local one. A local Ray
instance with max(workers) CPUs is started unless `--address` (or RAY_ADDRESS) names a
cluster. Nothing here asserts on a time.

The Ray hop: a training step sends its bank once (one `metrics` call, C rows cut into W
chunks), so per step the hop costs Ray time − the compute of one chunk of ⌈C/W⌉ rows on one
torch thread (what each actor does, in parallel), and moves the θ rows out (C·d float64) and
the metrics back (C·k float64). The files a spec names travel once per run (runtime_env).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from scpo_spec.compile.problem import compile_spec
from scpo_spec.engine.executors.ray import RayEvaluator, connect
from scpo_spec.language.load import load_spec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "specs" / "double_integrator.scpo"


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--sizes", type=ints, default=[18, 64, 256], help="batch sizes C")
    ap.add_argument("--workers", type=ints, default=[1, 2, 4], help="Ray worker counts")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--address", default=None, help="a Ray cluster (default: RAY_ADDRESS, "
                    "else a local instance)")
    args = ap.parse_args()

    spec = load_spec(args.spec)
    compiled = compile_spec(spec, args.spec.resolve().parent)
    local, fam = compiled.evaluator, compiled.family
    S, T, k = local.x0.shape[0], local.horizon, len(local.metrics)
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"torch threads (local) {torch.get_num_threads()}, os.cpu_count() {os.cpu_count()}")
    print(f"spec {args.spec.name}: d = {fam.d} weights, S = {S} scenarios, T = {T} steps, "
          f"k = {k} metrics")

    t = time.perf_counter()
    ray, started = connect(args.address, max(args.workers))
    cpus = ray.cluster_resources().get("CPU", 0)
    where = args.address or os.environ.get("RAY_ADDRESS")
    how = (f"connected to {where}" if where else "started a local instance") if started \
        else "already connected"
    print(f"Ray {ray.__version__}: {how} in "
          f"{time.perf_counter() - t:.1f} s; cluster CPUs {cpus:g}")

    @ray.remote(num_cpus=1)
    def worker_threads() -> int:
        import torch as t
        return t.get_num_threads()
    print(f"torch threads in a 1-CPU Ray worker: {ray.get(worker_threads.remote())}")

    gen = torch.Generator().manual_seed(0)
    batches = {C: fam.theta0[None] + 1e-3 * torch.randn(C, fam.d, generator=gen,
                                                        dtype=torch.float64)
               for C in args.sizes}
    local_s = {C: best_of(lambda th=th: local(th), args.repeat) for C, th in batches.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a 1-CPU actor
    chunk_s = {(W, C): best_of(lambda th=th[:-(-C // W)]: local(th), args.repeat)
               for W in args.workers for C, th in batches.items()}
    torch.set_num_threads(threads)
    ray_s: dict[int, dict[int, float]] = {}
    start_s, roundtrip_s, shipped = {}, {}, {}
    for W in args.workers:
        t = time.perf_counter()
        ev = RayEvaluator(local, spec, args.spec.resolve().parent, workers=W,
                          address=args.address)
        start_s[W] = time.perf_counter() - t
        shipped = ev.shipped
        try:
            actor = ev._actors[0]
            roundtrip_s[W] = best_of(lambda: ray.get(actor.fingerprint.remote()), args.repeat)
            ray_s[W] = {}
            for C, th in batches.items():
                if not torch.equal(ev(th), local(th)):
                    sys.exit(f"Ray (workers={W}) and local metrics differ at C={C}")
                ray_s[W][C] = best_of(lambda th=th: ev(th), args.repeat)
        finally:
            ev.close()
    if started:
        ray.shutdown()

    print("\nactor start-up (spawn + import + compile the spec, once per run) and one "
          "round trip to an actor:")
    for W in args.workers:
        print(f"  workers={W}: start {start_s[W]:.2f} s, round trip {roundtrip_s[W] * 1e3:.2f} ms")
    print(f"\nms per evaluation of C candidates (best of {args.repeat}); ray/local ratio in "
          "brackets (<1: Ray faster); all Ray results equal the local ones bit for bit")
    head = f"{'C':>6} {'local':>10}" + "".join(f"{f'ray w={W}':>22}" for W in args.workers)
    print(head)
    for C in args.sizes:
        row = f"{C:>6} {local_s[C] * 1e3:>10.2f}"
        for W in args.workers:
            r = ray_s[W][C]
            row += f"{f'{r * 1e3:.2f} ({r / local_s[C]:.2f}x)':>22}"
        print(row)
    print(f"\nthe Ray hop per step (one bank of C candidates): ms of Ray time − the compute of "
          "one chunk of ceil(C/W) rows on one thread (best of each), and the bytes of θ rows "
          f"out (C·{fam.d}·8) and metrics back (C·{k}·8)")
    print(f"{'C':>6} {'out B':>9} {'back B':>7}" + "".join(
        f"{f'chunk w={W}':>12}{f'hop w={W}':>10}" for W in args.workers))
    for C in args.sizes:
        row = f"{C:>6} {C * fam.d * 8:>9} {C * k * 8:>7}"
        for W in args.workers:
            row += f"{chunk_s[W, C] * 1e3:>12.2f}{(ray_s[W][C] - chunk_s[W, C]) * 1e3:>10.2f}"
        print(row)
    if shipped:
        print(f"files sent once per run through runtime_env: {len(shipped)} "
              f"({', '.join(sorted(shipped))})")
    else:
        print("files sent through runtime_env: none (the spec names no file)")
    best = min((ray_s[W][C] / local_s[C], W, C) for W in args.workers for C in args.sizes)
    print(f"best ray/local here: {best[0]:.2f}x (workers={best[1]}, C={best[2]})")
    cores = os.cpu_count() or 1
    print(f"\nThis machine has {cores} core(s). Ray adds a round trip and (de)serialisation per "
          "call and runs each actor on one torch thread, while the local evaluator already uses "
          f"{torch.get_num_threads()} torch threads on the whole batch; with more workers than "
          "cores the actors only share the same cores. Ray pays off when the cluster has more "
          "cores (or nodes) than this process can use and a batch is large or slow to roll out.")


if __name__ == "__main__":
    logging.getLogger("ray").setLevel(logging.ERROR)
    main()
