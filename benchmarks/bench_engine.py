#!/usr/bin/env python
"""Where the SCPO engine's time goes, in one run (see benchmarks/README.md).

    python benchmarks/bench_engine.py [--spec specs/double_integrator.scpo] [--steps 20]
                                      [--device cpu|cuda] [--all] [--repeat 5] [--threads N]
                                      [--pairs 100] [--no-headline]

0. issue 12's three ratios (interleaved), then 0b: where the evaluator's time beyond the plain
   policy loop goes (paired single calls, `--pairs`);
1. per-step time of `Trainer.step`, split into rollouts / QCQP / gradient / other;
2. the batched evaluator against a per-candidate Python loop over the same candidates;
3. the batched rollout against plain float64 matmuls of the same FLOPs (the machine's own
   limit for that shape).

`--all` runs figures 2 and 3 over every specs/*.scpo that compiles (one row per spec).

Nothing here asserts on a time: it only measures and prints.  The package is used as it is;
the engine's evaluator runs where the spec's `train { device }` says (`scpo train --device`);
this script compiles the specs as written (CPU), and `--device cuda` moves only the plain-matmul
baselines to the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scpo_spec.compile.evaluator import RolloutEvaluator
from scpo_spec.compile.problem import CompiledSpec, compile_spec
from scpo_spec.engine.train import Trainer, UnsafeStart
from scpo_spec.policies.policy import ACTIVATIONS
from scpo_spec.language.load import load_spec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "specs" / "double_integrator.scpo"
from scpo_spec.dtype import DTYPE
PHASES = ("rollouts", "verification", "bank", "qcqp", "gradient", "hashing", "other")

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def synchronizer(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


TIMING = {"min_time": 0.1}  # seconds per timing round (set by --min-time)


def best_of(fn, repeat: int, sync=lambda: None, min_time: float | None = None) -> float:
    """Best seconds per call of `fn`, timeit-style: one warm-up call, then `repeat` rounds of
    `number` calls each (`number` chosen so that one round lasts at least `min_time`)."""
    sync()
    t0 = time.perf_counter()
    fn()  # warm-up (also sizes the rounds)
    sync()
    first = time.perf_counter() - t0
    min_time = TIMING["min_time"] if min_time is None else min_time
    number = max(1, math.ceil(min_time / max(first, 1e-9)))
    best = math.inf
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def gflops(flops: float, seconds: float) -> str:
    return f"{flops / seconds / 1e9:.2f}"


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def compile_path(path: Path) -> CompiledSpec:
    """Check and compile a spec file (raises on any problem: SpecError, BackupError, …)."""
    return compile_spec(load_spec(path), path.resolve().parent)


def candidates(compiled: CompiledSpec, seed: int = 0) -> torch.Tensor:
    """n = 2 + directions candidate weight vectors around θ₀, like a step's candidate bank:
    θ₀ itself, then θ₀ plus random directions of the spec's probe length ν."""
    s, theta0 = compiled.settings, compiled.family.theta0
    n = 2 + s.directions
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, theta0.numel(), generator=gen, dtype=DTYPE)
    D = s.perturbation * z / z.norm(dim=1, keepdim=True)
    D[0] = 0.0
    return theta0[None] + D


def shape_of(compiled: CompiledSpec, C: int) -> dict:
    ev, fam = compiled.evaluator, compiled.family
    return {"C": C, "S": int(ev.x0.shape[0]), "T": int(ev.horizon), "n": fam.n, "m": fam.m,
            "layers": list(fam.layers), "d": fam.d, "k": len(ev.metrics)}


def policy_matmul_flops(shape: dict) -> int:
    """FLOPs of the policy's layer matmuls in one batched rollout: per step and per layer
    2·C·S·out·in (bias adds, activations, the residual gain and the dynamics not counted)."""
    C, S, T = shape["C"], shape["S"], shape["T"]
    return T * sum(2 * C * S * out * inp for out, inp in shape["layers"])


# ---------------------------------------------------------------------------------------------
# figure 0: the three headline ratios of issue 12, interleaved
# ---------------------------------------------------------------------------------------------
def interleaved(fns: dict, rounds: int, min_time: float | None = None) -> dict:
    """Best seconds per call of each function, the functions taking turns round after round
    (a shared machine's load then hits all of them alike)."""
    min_time = TIMING["min_time"] if min_time is None else min_time
    number = {}
    for name, fn in fns.items():  # warm-up, sizing the rounds
        t0 = time.perf_counter()
        fn()
        number[name] = max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-9)))
    best = {name: math.inf for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(number[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / number[name])
    return best


def plain_policy_loop(compiled: CompiledSpec, thetas: torch.Tensor, torch_tanh: bool = False):
    """The same numbers as the rollout's policy, in a plain torch loop: T × (one baddbmm per
    layer and the evaluator's activation on fixed states), nothing else (no dynamics, no
    backup, no buffers, no metrics).  `torch_tanh`: with torch.tanh instead (the numbers of
    the evaluator before its tanh became 2σ(2z) − 1: the issue's "before" comparison)."""
    from scpo_spec.policies import policy as P
    fam, ev = compiled.family, compiled.evaluator
    x = ev.x0.expand(thetas.shape[0], *ev.x0.shape).contiguous()
    layers = [(W.transpose(1, 2), b) for W, b in fam._unpack(thetas)]
    if fam.activation == "tanh" and P.FAST_TANH and not torch_tanh:
        # the evaluator's own arithmetic: its doubled first layer and biases, σ, then 4σ − 2
        # (2·tanh, for a hidden layer) or 2σ − 1 (for the last)
        forward = fam.batched(thetas)
        layers, acts = forward.layers, forward._acts_
    else:
        acts = [ACTIVATIONS[fam.activation]] * (len(layers) - 1)

    @torch.no_grad()
    def run():
        for _ in range(ev.horizon):
            h = x
            for i, (Wt, b) in enumerate(layers):
                h = torch.baddbmm(b, h, Wt)
                if i < len(layers) - 1:
                    h = acts[i](h)
        return h
    return run


def policy_matmuls(compiled: CompiledSpec, thetas: torch.Tensor):
    """The rollout's policy matmuls alone: T × one baddbmm per layer, the rollout's own calls
    (transposed weight views, bias) into reused buffers."""
    fam, ev = compiled.family, compiled.evaluator
    x = ev.x0.expand(thetas.shape[0], *ev.x0.shape).contiguous()
    layers = [(W.transpose(1, 2), b) for W, b in fam._unpack(thetas)]
    bufs = [torch.empty(thetas.shape[0], x.shape[1], Wt.shape[2], dtype=DTYPE)
            for Wt, _ in layers]

    @torch.no_grad()
    def run():
        for _ in range(ev.horizon):
            h = x
            for (Wt, b), out in zip(layers, bufs):
                h = torch.baddbmm(b, h, Wt, out=out)
        return h
    return run


def wide_variant(hidden: int) -> CompiledSpec:
    """specs/double_integrator.scpo (C = 18, S = 64, T = 60) with a 2-H-H-1 policy."""
    import tempfile
    text = DEFAULT_SPEC.read_text().replace("hidden = [64, 64]", f"hidden = [{hidden}, {hidden}]")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wide.scpo"
        path.write_text(text)
        return compile_path(path)


def paired(fns: dict, pairs: int) -> dict:
    """Seconds of each single call, the functions called in turn `pairs` times (the order
    reversed every other turn): a paired difference of two of them cancels the load a noisy
    machine puts on both alike, which a best-of cannot (it needs sub-ms differences)."""
    times = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for i in range(pairs):
        for name in (list(fns) if i % 2 == 0 else list(reversed(fns))):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def excess_split(compiled: CompiledSpec, thetas: torch.Tensor, pairs: int) -> dict | None:
    """Where an evaluation's time beyond the plain policy loop goes (figure 0's second table):
    the medians of paired differences between the evaluator, its rollout alone (set-up, plant,
    backup gain, the final copy into the metrics' layout: the evaluator's own buffers) with
    and without the closed loop's spectral radius, and the plain loop; and the spectral radius
    timed right after a rollout against the same call again at once (the calls after a
    rollout run on caches the rollout has filled with other things).  None for a gymnasium
    system (its rollout is the environment's)."""
    ev = compiled.evaluator
    if not isinstance(ev, RolloutEvaluator):
        return None

    def rollout():
        ev._rollout_on_device(thetas, ev.x0, reuse=True)

    def rollout_rho():
        rollout()
        ev.spectral_radius(thetas)
    fns = {"evaluator": lambda: ev(thetas), "rollout": rollout,
           "plain": plain_policy_loop(compiled, thetas)}
    if ev.needs_spectral:
        fns["rollout_rho"] = rollout_rho
    with torch.no_grad():
        t = paired(fns, pairs)
        rho_after, rho_again = [], []
        if ev.needs_spectral:
            for _ in range(pairs):
                rollout()
                t0 = time.perf_counter()
                ev.spectral_radius(thetas)
                t1 = time.perf_counter()
                ev.spectral_radius(thetas)
                rho_after.append(t1 - t0)
                rho_again.append(time.perf_counter() - t1)

    def diff(a: str, b: str) -> float:
        return statistics.median(x - y for x, y in zip(t[a], t[b]))
    out = {"pairs": pairs, "median": {k: statistics.median(v) for k, v in t.items()},
           "excess": diff("evaluator", "plain"), "rollout": diff("rollout", "plain")}
    if ev.needs_spectral:
        out.update(rho=diff("rollout_rho", "rollout"), metrics=diff("evaluator", "rollout_rho"),
                   rho_after=statistics.median(rho_after),
                   rho_again=statistics.median(rho_again))
    else:
        out["metrics"] = diff("evaluator", "rollout")
    return out


def figure0(compiled: CompiledSpec, rounds: int, wide: int, wide_steps: int,
            pairs: int = 100) -> dict:
    thetas = candidates(compiled)
    ev = compiled.evaluator
    t = interleaved({"evaluator": lambda: ev(thetas),
                     "plain": plain_policy_loop(compiled, thetas),
                     "plain_tanh": plain_policy_loop(compiled, thetas, torch_tanh=True)}, rounds)
    out = {"shape": shape_of(compiled, thetas.shape[0]), "evaluator": t["evaluator"],
           "plain": t["plain"], "plain_tanh": t["plain_tanh"], "threads": torch.get_num_threads()}
    if out["threads"] > 1:  # the same pair on one thread: the policy's share of the work is
        # then twice as large, the serial rest (plant, metrics, ρ) the same
        torch.set_num_threads(1)
        try:
            t1 = interleaved({"evaluator": lambda: ev(thetas),
                              "plain": plain_policy_loop(compiled, thetas)}, rounds)
        finally:
            torch.set_num_threads(out["threads"])
        out["one_thread"] = t1
    out["split"] = excess_split(compiled, thetas, pairs)
    wide_c = wide_variant(wide)
    wt = candidates(wide_c)
    wshape = shape_of(wide_c, wt.shape[0])
    flops = policy_matmul_flops(wshape)
    gemm, N, gflop = square_gemm(2 * 2048 ** 3, torch.device("cpu"))

    @torch.no_grad()
    def rollout():
        return wide_c.evaluator.rollout(wt)
    w = interleaved({"matmuls": policy_matmuls(wide_c, wt), "gemm": gemm, "rollout": rollout},
                    max(2, rounds // 2), min_time=0.5)
    out.update(wide_shape=wshape, flops=flops, matmuls=w["matmuls"], rollout=w["rollout"],
               gemm=w["gemm"], gemm_flops=gflop, N=N)
    step = figure1(wide_c, wide_steps, 1)
    out["step"] = step
    return out


def print_figure0(r: dict) -> None:
    sh, wsh = r["shape"], r["wide_shape"]
    layers = lambda s: "-".join([str(s["n"])] + [str(o) for o, _ in s["layers"]])  # noqa: E731
    table = Table(title="0. Issue 12's three ratios (interleaved rounds, best of each)",
                  box=box.SIMPLE_HEAVY, title_justify="left")
    for col, just in (("ratio", "left"), ("measured", "right"), ("target", "right"),
                      ("numbers", "left")):
        table.add_column(col, justify=just)
    ratio = r["evaluator"] / r["plain"]
    table.add_row("evaluator / plain same-numbers policy loop", f"{ratio:.3f}", "≤ 1.10",
                  f"{layers(sh)}, C={sh['C']} S={sh['S']} T={sh['T']}: "
                  f"{ms(r['evaluator'])} vs {ms(r['plain'])} ms")
    if "one_thread" in r:
        t1 = r["one_thread"]
        table.add_row(f"  the same at 1 thread (above: {r['threads']})",
                      f"{t1['evaluator'] / t1['plain']:.3f}", "≤ 1.10",
                      f"{ms(t1['evaluator'])} vs {ms(t1['plain'])} ms")
    table.add_row("  evaluator / the same loop with torch.tanh",
                  f"{r['evaluator'] / r['plain_tanh']:.3f}", "",
                  f"{ms(r['plain_tanh'])} ms (before: 1.16-1.38 with torch.tanh in both)")
    g_mm = r["flops"] / r["matmuls"] / 1e9
    g_roll = r["flops"] / r["rollout"] / 1e9
    g_gemm = r["gemm_flops"] / r["gemm"] / 1e9
    table.add_row("policy-matmul GFLOP/s / one large float64 GEMM", f"{g_mm / g_gemm:.3f}",
                  "≥ 0.70", f"{layers(wsh)}, C={wsh['C']} S={wsh['S']} T={wsh['T']}: "
                  f"{g_mm:.2f} vs {g_gemm:.2f} GFLOP/s ({r['N']}³ GEMM)")
    table.add_row("  whole rollout, same FLOPs / GEMM", f"{g_roll / g_gemm:.3f}", "",
                  f"{g_roll:.2f} GFLOP/s (activations, dynamics, buffers included)")
    step = r["step"]
    if isinstance(step, StepTiming):
        total = sum(step.median.values())
        beyond = sum(step.median[p] for p in ("bank", "hashing", "other"))
        share = beyond / total
        table.add_row("'other' (bank, hashing, rest) / Trainer.step at d = "
                      + f"{wsh['d']:,}".replace(",", " "), f"{100 * share:.1f}%", "≤ 10 %",
                      f"medians of {step.steps} steps: {ms(beyond)} of {ms(total)} ms "
                      f"(rollouts {ms(step.median['rollouts'])}, verification "
                      f"{ms(step.median['verification'])})")
    else:
        table.add_row("'other' / Trainer.step", "skipped", "≤ 10 %", str(step))
    console.print(table)
    console.print()
    if r.get("split") is not None:
        print_excess(r["split"], r["threads"])


def print_excess(sp: dict, threads: int) -> None:
    med = sp["median"]
    table = Table(title=f"0b. The evaluator beyond the plain loop, at {threads} thread(s) "
                        f"({sp['pairs']} paired single calls; medians)",
                  box=box.SIMPLE_HEAVY, title_justify="left")
    for col, just in (("part", "left"), ("ms", "right"), ("what it holds", "left")):
        table.add_column(col, justify=just)
    table.add_row("plain same-numbers policy loop", ms(med["plain"]), "the reference")
    table.add_row("evaluator", ms(med["evaluator"]),
                  "(single calls in turn: each starts on what the one before left in the caches; "
                  "the ratio is figure 0's)")
    table.add_row("  excess over the plain loop", f"+{ms(sp['excess'])}", "paired difference")
    table.add_row("  rollout beyond the policy", f"+{ms(sp['rollout'])}",
                  "set-up, the plant, the backup's gain, the copy into (C, S, T, ·)")
    if "rho" in sp:
        table.add_row("  closed-loop spectral radius", f"+{ms(sp['rho'])}",
                      f"right after a rollout {ms(sp['rho_after'])} ms, "
                      f"the same call again at once {ms(sp['rho_again'])} ms")
    table.add_row("  metrics and finiteness", f"+{ms(sp['metrics'])}",
                  "the compiled formulas, stacking, the NaN/inf checks")
    console.print(table)
    console.print()


# ---------------------------------------------------------------------------------------------
# figure 1: Trainer.step timing
# ---------------------------------------------------------------------------------------------
@dataclass
class StepTiming:
    steps: int
    accepted: int
    mean: dict            # phase -> seconds per step
    median: dict          # phase -> median seconds per step (robust to a noisy machine)
    wall: float           # seconds per step measured around Trainer.step
    verifications: float  # single-candidate verification rollouts per step
    warmup: int


def figure1(compiled: CompiledSpec, steps: int, warmup: int) -> StepTiming | str:
    trainer = Trainer(compiled)  # no log, no run directory: nothing written
    try:
        state = trainer.initial_state()
    except UnsafeStart as e:
        return str(e)
    for _ in range(warmup):  # first-call costs (cvxpy canonicalisation, allocator) excluded
        state, _ = trainer.step(state)
    per_step = {p: [] for p in PHASES}
    wall, accepted, verifications = 0.0, 0, 0
    for _ in range(steps):
        t0 = time.perf_counter()
        state, record = trainer.step(state)
        wall += time.perf_counter() - t0
        for phase in PHASES:
            per_step[phase].append(record.timing[phase])
        accepted += int(record.accepted)
        verifications += sum(e.verified is not None for e in record.tries)
    return StepTiming(steps, accepted, {p: float(np.mean(v)) for p, v in per_step.items()},
                      {p: float(np.median(v)) for p, v in per_step.items()}, wall / steps,
                      verifications / steps, warmup)


BLAS_ENV = {"OPENBLAS_NUM_THREADS": "1"}


def figure1_one_blas_thread(args) -> StepTiming | str:
    """Figure 1 again in a child process whose numpy BLAS (OpenBLAS) has a single thread.

    numpy's OpenBLAS keeps its own thread pool beside torch's OpenMP one, and its idle threads
    spin for a while after each call (QR, Gram matrix in "other"); on a small machine they then
    compete with torch's threads in the rollouts that follow.  Only an environment variable read
    at import time limits that pool without threadpoolctl, hence the child process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--spec", str(args.spec),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--figure1-json"]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    try:
        done = subprocess.run(cmd, env={**os.environ, **BLAS_ENV}, capture_output=True,
                              text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "the child process timed out"
    if done.returncode != 0 or not done.stdout.strip():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the child process failed ({tail})"
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    if isinstance(payload, str):
        return payload
    return StepTiming(**payload)


def print_figure1(result: StepTiming | str, shape: dict,
                  one_blas: StepTiming | str | None = None) -> None:
    if isinstance(result, str):
        console.print(f"[yellow]figure 1 skipped:[/] {result}")
        return
    r = result
    table = Table(title=f"1. Trainer.step time per phase (mean of {r.steps} steps after "
                        f"{r.warmup} warm-up; {r.accepted}/{r.steps} accepted)",
                  box=box.SIMPLE_HEAVY, title_justify="left")
    table.add_column("phase")
    table.add_column("mean ms / step", justify="right")
    table.add_column("share", justify="right")
    table.add_column("median ms", justify="right")
    blas = isinstance(one_blas, StepTiming)
    if blas:
        table.add_column("median ms,\nOPENBLAS_NUM_THREADS=1", justify="right")
    table.add_column("what it holds")
    total = sum(r.mean.values())
    what = {
        "rollouts": f"1 bank evaluation (C={shape['C']}) (+ counterexamples)",
        "verification": f"{r.verifications:.2f} verification rollouts (C=1) per step",
        "bank": "probes, Gram matrix DDᵀ, R and Qᵀs from it",
        "hashing": "SHA-256 of θ (once per new θ)",
        "qcqp": "projection solves (one per try)",
        "gradient": "∇L (autograd) + Armijo loss evaluations",
        "other": "certificate, Armijo set-up, θ + Dξ, bookkeeping",
    }
    for phase in PHASES:
        extra = [ms(one_blas.median[phase])] if blas else []
        table.add_row(phase, ms(r.mean[phase]), f"{100 * r.mean[phase] / total:.1f}%",
                      ms(r.median[phase]), *extra, what[phase])
    extra = [f"{ms(sum(one_blas.median.values()))} (sum)"] if blas else []
    table.add_row("total", ms(total), "100.0%", f"{ms(sum(r.median.values()))} (sum)", *extra,
                  f"(mean wall of Trainer.step: {ms(r.wall)})", style="bold")
    console.print(table)
    if isinstance(one_blas, str):
        console.print(f"   (the OPENBLAS_NUM_THREADS=1 comparison was not run: {one_blas})")
    elif blas:
        console.print("   last column: the same steps in a child process whose numpy BLAS "
                      "has one thread (torch's threads unchanged)")
    console.print()


# ---------------------------------------------------------------------------------------------
# figure 2: batched evaluator vs per-candidate loop
# ---------------------------------------------------------------------------------------------
@dataclass
class BatchVsLoop:
    batched: float
    loop: float
    max_diff: float
    same_nonfinite: bool


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, bool]:
    """Largest |a − b| over the entries finite in both, and whether the non-finite entries
    (+inf: an unsafe rollout) sit in the same places."""
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    same = bool(torch.equal(fa, fb) and torch.equal(a[~fa], b[~fb]))
    both = fa & fb
    diff = float((a[both] - b[both]).abs().max()) if both.any() else 0.0
    return diff, same


def figure2(compiled: CompiledSpec, thetas: torch.Tensor, repeat: int) -> BatchVsLoop:
    ev = compiled.evaluator
    C = thetas.shape[0]

    def batched():
        return ev(thetas)

    def loop():
        return torch.cat([ev(thetas[j:j + 1]) for j in range(C)], dim=0)

    diff, same = max_abs_diff(batched(), loop())
    return BatchVsLoop(best_of(batched, repeat), best_of(loop, repeat), diff, same)


def print_figure2(r: BatchVsLoop, shape: dict) -> None:
    table = Table(title=f"2. Batched evaluator vs a per-candidate Python loop (C={shape['C']} "
                        f"candidates, S={shape['S']} scenarios, T={shape['T']} steps, "
                        f"k={shape['k']} metrics; best of repeats)",
                  box=box.SIMPLE_HEAVY, title_justify="left")
    table.add_column("how")
    table.add_column("ms / evaluation of all C", justify="right")
    table.add_column("ms / candidate", justify="right")
    C = shape["C"]
    table.add_row("evaluator(thetas)  (one batched call)", ms(r.batched), ms(r.batched / C))
    table.add_row(escape("evaluator(thetas[j:j+1]) for j in range(C)"), ms(r.loop),
                  ms(r.loop / C))
    console.print(table)
    nonfinite = "" if r.same_nonfinite else "  [red](non-finite entries differ!)[/]"
    console.print(f"   loop / batched = [bold]{r.loop / r.batched:.2f}×[/]    "
                  f"max |batched − loop| = {r.max_diff:.3g}{nonfinite}")


# ---------------------------------------------------------------------------------------------
# figure 3: rollout vs plain matmuls of the same FLOPs
# ---------------------------------------------------------------------------------------------
@dataclass
class RolloutVsMatmul:
    flops: int
    rollout: float
    forward_only: float
    activations: float | None  # the T·(L−1) activations of the forward alone
    bmm: dict   # device name -> seconds (same shapes, same FLOPs)
    gemm: dict  # device name -> (seconds, N, flops of the N×N×N GEMM)


def bmm_chain(shape: dict, device: torch.device):
    """T × (one torch.bmm per layer) with the policy's shapes: (C, S, in) @ (C, in, out)."""
    C, S, T = shape["C"], shape["S"], shape["T"]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(C, S, shape["layers"][0][1], generator=gen, dtype=DTYPE).to(device)
    Ws = [(torch.randn(C, inp, out, generator=gen, dtype=DTYPE) / math.sqrt(inp)).to(device)
          for out, inp in shape["layers"]]

    def run():
        for _ in range(T):
            h = x
            for W in Ws:
                h = torch.bmm(h, W)
        return h

    return run


def square_gemm(flops: int, device: torch.device):
    """One N×N @ N×N float64 matmul with 2N³ as close as possible to `flops`."""
    N = max(1, round((flops / 2) ** (1 / 3)))
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(N, N, generator=gen, dtype=DTYPE).to(device)
    b = torch.randn(N, N, generator=gen, dtype=DTYPE).to(device)
    return (lambda: a @ b), N, 2 * N ** 3


def figure3(compiled: CompiledSpec, thetas: torch.Tensor, shape: dict, repeat: int,
            devices: list[torch.device]) -> RolloutVsMatmul:
    ev, fam = compiled.evaluator, compiled.family
    flops = policy_matmul_flops(shape)

    @torch.no_grad()
    def rollout():
        return ev.rollout(thetas)

    x = ev.x0.expand(shape["C"], *ev.x0.shape).contiguous()

    @torch.no_grad()
    def forward_only():  # the rollout's T policy evaluations, without dynamics or stacking
        for _ in range(shape["T"]):
            fam.forward(thetas, x)

    acts = None
    hidden = [out for out, _ in shape["layers"][:-1]]
    if hidden:
        zs = [torch.randn(shape["C"], shape["S"], w, dtype=DTYPE) for w in hidden]
        act = ACTIVATIONS[fam.activation]

        @torch.no_grad()
        def activations():
            for _ in range(shape["T"]):
                for z in zs:
                    act(z)

        acts = best_of(activations, repeat)

    bmm, gemm = {}, {}
    for device in devices:
        sync = synchronizer(device)
        bmm[str(device)] = best_of(bmm_chain(shape, device), repeat, sync)
        fn, N, f = square_gemm(flops, device)
        gemm[str(device)] = (best_of(fn, repeat, sync), N, f)
    return RolloutVsMatmul(flops, best_of(rollout, repeat), best_of(forward_only, repeat),
                           acts, bmm, gemm)


def print_figure3(r: RolloutVsMatmul, shape: dict) -> None:
    layers = " → ".join([str(shape["layers"][0][1])] + [str(o) for o, _ in shape["layers"]])
    table = Table(title=f"3. One batched rollout vs plain float64 matmuls of the same FLOPs "
                        f"(policy {layers}; C={shape['C']}, S={shape['S']}, T={shape['T']}: "
                        f"{r.flops / 1e6:.2f} MFLOP of policy matmuls per rollout)",
                  box=box.SIMPLE_HEAVY, title_justify="left")
    for col, just in (("what", "left"), ("device", "left"), ("ms", "right"),
                      ("GFLOP/s", "right"), ("rollout / this", "right")):
        table.add_column(col, justify=just)
    table.add_row("evaluator.rollout(thetas)", "cpu", ms(r.rollout), gflops(r.flops, r.rollout),
                  "1.00×", style="bold")
    table.add_row("  its T policy forwards only (no dynamics, no stack)", "cpu",
                  ms(r.forward_only), gflops(r.flops, r.forward_only),
                  f"{r.rollout / r.forward_only:.2f}×")
    if r.activations is not None:
        table.add_row(f"  its {shape['T']}×{len(shape['layers']) - 1} activations only "
                      "(no FLOPs counted)", "cpu", ms(r.activations), "",
                      f"{r.rollout / r.activations:.2f}×")
    for device, t in r.bmm.items():
        table.add_row(f"torch.bmm chain, same shapes (T×{len(shape['layers'])} calls)", device,
                      ms(t), gflops(r.flops, t), f"[bold]{r.rollout / t:.2f}×[/]")
    for device, (t, N, f) in r.gemm.items():
        table.add_row(f"one {N}×{N}×{N} GEMM ({f / 1e6:.2f} MFLOP)", device, ms(t),
                      gflops(f, t), f"{r.rollout / (t * r.flops / f):.2f}×")
    console.print(table)
    console.print("   FLOPs counted: the policy's layer matmuls only (2·C·S·out·in per layer "
                  "per step);\n   bias adds, activations, the residual gain and the dynamics are "
                  "left out.\n   'rollout / this' compares times for equal FLOPs (the GEMM row "
                  "is scaled to the rollout's FLOPs).")


# ---------------------------------------------------------------------------------------------
# --all: figures 2 and 3, one row per spec
# ---------------------------------------------------------------------------------------------
def run_all(repeat: int, devices: list[torch.device]) -> None:
    main_dev = str(devices[-1])
    table = Table(title="Figures 2 and 3 for every specs/*.scpo (best of repeats; "
                        f"matmul baseline on {main_dev})",
                  box=box.SIMPLE_HEAVY, title_justify="left")
    cols = [("spec", "left"), ("d", "right"), ("C×S×T", "right"), ("batched\nms", "right"),
            ("loop\nms", "right"), ("loop /\nbatched", "right"), ("max|Δ|", "right"),
            ("rollout\nms", "right"), ("policy\nMFLOP", "right"), ("rollout\nGFLOP/s", "right"),
            ("bmm\nGFLOP/s", "right"), ("rollout /\nbmm", "right")]
    for col, just in cols:
        table.add_column(col, justify=just, no_wrap=True)
    skipped = []
    for path in sorted((ROOT / "specs").glob("*.scpo")):
        try:
            compiled = compile_path(path)
        except Exception as e:  # noqa: BLE001 — a spec that does not compile is skipped
            skipped.append((path.name, f"{type(e).__name__}: {str(e).splitlines()[0]}"))
            continue
        if compiled.dynamics.kind == "gymnasium":  # gym rollouts: benchmarks/bench_gym.py
            skipped.append((path.name, "gymnasium system (see benchmarks/bench_gym.py)"))
            continue
        thetas = candidates(compiled)
        shape = shape_of(compiled, thetas.shape[0])
        f2 = figure2(compiled, thetas, repeat)
        f3 = figure3(compiled, thetas, shape, repeat, devices)
        bmm = f3.bmm[main_dev]
        flag = "" if f2.same_nonfinite else " (inf differ!)"
        table.add_row(path.stem, str(shape["d"]), f"{shape['C']}×{shape['S']}×{shape['T']}",
                      ms(f2.batched), ms(f2.loop), f"{f2.loop / f2.batched:.2f}×",
                      f"{f2.max_diff:.2g}{flag}", ms(f3.rollout), f"{f3.flops / 1e6:.2f}",
                      gflops(f3.flops, f3.rollout), gflops(f3.flops, bmm),
                      f"{f3.rollout / bmm:.2f}×")
    console.print(table)
    for name, why in skipped:
        console.print(f"   skipped {name}: {why}")


# ---------------------------------------------------------------------------------------------
def environment(devices: list[torch.device]) -> None:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    console.print(f"torch {torch.__version__} · torch.get_num_threads() = "
                  f"{torch.get_num_threads()} · CPU: {cpu} · python {platform.python_version()}")
    if any(d.type == "cuda" for d in devices):
        console.print(f"device: cuda ({torch.cuda.get_device_name(0)}) for the plain-matmul "
                      "baselines only; the evaluator and the Trainer run on the CPU here (a spec's "
                      "`train { device cuda }` puts them on the GPU)")
    else:
        console.print("device: cpu (evaluator, Trainer and matmul baselines)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC,
                    help="spec file (default: specs/double_integrator.scpo)")
    ap.add_argument("--steps", type=int, default=20, help="Trainer steps timed (figure 1)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="Trainer steps taken first and not timed (figure 1)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="device of the plain-matmul baselines (the evaluator is CPU-only)")
    ap.add_argument("--repeat", type=int, default=5, help="timing rounds; the best one counts")
    ap.add_argument("--min-time", type=float, default=TIMING["min_time"],
                    help="seconds per timing round (calls are repeated to fill it)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first")
    ap.add_argument("--all", action="store_true",
                    help="figures 2 and 3 for every specs/*.scpo that compiles")
    ap.add_argument("--no-blas-compare", action="store_true",
                    help="skip figure 1's rerun with OPENBLAS_NUM_THREADS=1 (a child process)")
    ap.add_argument("--no-headline", action="store_true",
                    help="skip figure 0 (issue 12's ratios; the wide policy takes ~1-2 min)")
    ap.add_argument("--wide", type=int, default=512,
                    help="hidden width H of figure 0's 2-H-H-1 policy (default 512: d = 264 705)")
    ap.add_argument("--pairs", type=int, default=100,
                    help="paired single calls of figure 0b (where the evaluator's excess sits)")
    ap.add_argument("--wide-steps", type=int, default=3,
                    help="Trainer steps of the wide policy timed in figure 0")
    ap.add_argument("--figure1-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.figure1_json:  # the child process of figure1_one_blas_thread
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        r = figure1(compile_path(args.spec), args.steps, args.warmup)
        print(json.dumps(r if isinstance(r, str) else vars(r)))
        return 0

    TIMING["min_time"] = args.min_time
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        console.print("[red]error:[/] --device cuda, but torch.cuda.is_available() is False "
                      f"(torch {torch.__version__})")
        return 2
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if args.device == "cuda" else [])
    environment(devices)
    started = time.perf_counter()

    if args.all:
        run_all(args.repeat, devices)
    else:
        try:
            compiled = compile_path(args.spec)
        except Exception as e:  # noqa: BLE001
            console.print(f"[red]error:[/] {args.spec} does not compile: "
                          f"{type(e).__name__}: {e}")
            return 1
        thetas = candidates(compiled)
        shape = shape_of(compiled, thetas.shape[0])
        layers = " → ".join([str(shape["n"])] + [str(o) for o, _ in shape["layers"]])
        console.print(f"spec: {args.spec} · policy {layers} (d={shape['d']}) · "
                      f"C = 2 + directions = {shape['C']} · S={shape['S']} · T={shape['T']} · "
                      f"k={shape['k']}")
        console.print()
        if not args.no_headline:
            print_figure0(figure0(compiled, args.repeat, args.wide, args.wide_steps,
                                  args.pairs))
        f1 = figure1(compiled, args.steps, args.warmup)
        one_blas = None
        if isinstance(f1, StepTiming) and not args.no_blas_compare:
            if "OPENBLAS_NUM_THREADS" in os.environ:
                one_blas = ("OPENBLAS_NUM_THREADS is already set to "
                            f"{os.environ['OPENBLAS_NUM_THREADS']} here")
            else:
                one_blas = figure1_one_blas_thread(args)
        print_figure1(f1, shape, one_blas)
        print_figure2(figure2(compiled, thetas, args.repeat), shape)
        console.print()
        print_figure3(figure3(compiled, thetas, shape, args.repeat, devices), shape)
    console.print(f"\n(benchmark took {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
