"""`scpo verify` measured: time, cells, each metric's proved bound against the worst g of sampled
initial states, and the reach set's width against the sampled spread at a few steps.

    python benchmarks/bench_verify.py                       # specs/double_integrator.scpo, θ₀
    python benchmarks/bench_verify.py --run /tmp/di_run     # a trained run's final policy
    python benchmarks/bench_verify.py --threads 1 --samples 100000 --cells 4096

Prints only; nothing is asserted (timings depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from scpo_spec.compile.problem import compile_spec
from scpo_spec.language.load import check_file
from scpo_spec.language.scenario_bounds import initial_box
from scpo_spec.verify.prove import verify
from scpo_spec.verify.reach import ClosedLoop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=Path("specs/double_integrator.scpo"))
    ap.add_argument("--run", type=Path, default=None, help="a run directory (its final policy)")
    ap.add_argument("--cells", type=int, default=4096)
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", default="10,30,60", help="steps where widths are compared")
    ap.add_argument("--splits", type=int, default=4, help="cells per axis for the widths")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run is not None:
        from scpo_spec.engine.trained import load_run
        run = load_run(args.run)
        compiled, theta, what = compile_spec(run.spec, run.base_dir), run.theta, str(args.run)
    else:
        result = check_file(args.spec)
        assert result.ok, [d.message for d in result.diagnostics]
        compiled = compile_spec(result.spec, args.spec.resolve().parent)
        theta, what = compiled.family.theta0, f"{args.spec} (θ₀)"
    print(f"{what}: threads {torch.get_num_threads()}")
    res = verify(compiled, theta, cells=args.cells, time_limit=args.time_limit)
    print(f"verdict {res.verdict} in {res.seconds:.2f} s over {res.cells} cells")

    lo, hi = (torch.as_tensor(a) for a in initial_box(compiled.spec))
    gen = torch.Generator().manual_seed(0)
    x0 = lo + (hi - lo) * torch.rand(args.samples, lo.shape[0], generator=gen, dtype=lo.dtype)
    with torch.no_grad():
        g = compiled.evaluator.per_scenario(theta[None], x0)[0]
        X, _ = compiled.evaluator.rollout(theta[None], x0)
    print(f"{'metric':<16} {'verdict':<15} {'bound':>12} {'sampled worst g':>16} {'gap':>10}")
    for j, (name, r) in enumerate(res.constraints.items()):
        worst = float(g[:, j].max())
        bound = float("nan") if r.bound is None else r.bound
        print(f"{name:<16} {r.verdict:<15} {bound:>12.5g} {worst:>16.5g} {bound - worst:>10.3g}")

    # widths: the union of a grid of cells' hulls against the sampled spread
    k = args.splits
    n = lo.shape[0]
    idx = torch.cartesian_prod(*[torch.arange(k)] * n).reshape(-1, n).to(lo.dtype)
    clo = lo + (hi - lo) * idx / k
    chi = lo + (hi - lo) * (idx + 1) / k
    loop = ClosedLoop(compiled, theta)
    start = time.perf_counter()
    reach = loop.reach(clo, chi)
    took = time.perf_counter() - start
    print(f"reach over {clo.shape[0]} cells: {took:.2f} s")
    for t in (int(s) for s in args.steps.split(",")):
        if t > X.shape[2] - 1:
            continue
        width = (reach.states_hi[:, t].amax(0) - reach.states_lo[:, t].amin(0)).numpy()
        spread = (X[0, :, t].amax(0) - X[0, :, t].amin(0)).numpy()
        print(f"step {t:>3}: reach width {np.array2string(width, precision=4)}  sampled spread "
              f"{np.array2string(spread, precision=4)}  ratio "
              f"{np.array2string(width / spread, precision=3)}")


if __name__ == "__main__":
    main()
