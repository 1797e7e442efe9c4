"""The safe-by-induction loop of ALGORITHM.md, one step at a time, every step logged.

Read top to bottom: `Trainer.step` is steps 1–7 of ALGORITHM.md.  Only verified candidates
become the policy, θ₀ is verified before the first step, so every accepted iterate is safe on the
scenarios.  Each step's record carries the numbers its certificate is made of (g0, G, S, ℓ, ξ), so
`scpo audit` recomputes it without torch.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scpo_spec.audit.log import AuditWriter
from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.compile.certificate import certificate, certificate_terms
from scpo_spec.compile.projection import ProjectionTemplate, certified_scale
from scpo_spec.engine.optimizers import Optimizer

DTYPE = torch.float64
MAX_TRIES = 6          # re-solves with doubled ℓ after a refutation, per step
ARMIJO_C = 1e-4        # sufficient-decrease constant
ARMIJO_HALVINGS = 10
ELL_RELAX = 0.9        # ℓ relaxes by this factor per step back toward the spec's value
ESTIMATE_START = 1.0   # ℓ of a metric with no smoothness under `smoothness estimate`
PROBE_FLOOR = 1e-4     # ν never shrinks below this fraction of the spec's ν


def theta_hash(theta: torch.Tensor) -> str:
    """SHA-256 of θ's float64 little-endian bytes."""
    return hashlib.sha256(theta.detach().cpu().numpy().astype("<f8").tobytes()).hexdigest()


class UnsafeStart(Exception):
    """θ₀ violates a metric: training refuses to start."""

    def __init__(self, violated: list[tuple[str, float, float, str]]):
        self.violated = violated  # (name, value, margin, location)
        parts = [f"'{n}' = {v:.6g} (must be ≤ {-m:g}){f' at {loc}' if loc else ''}"
                 for n, v, m, loc in violated]
        super().__init__("the initial policy θ₀ is not safe on the scenarios: " + "; ".join(parts))


@dataclass
class State:
    """Everything a step needs and a checkpoint keeps."""

    theta: torch.Tensor
    g: np.ndarray                  # g(θ), verified
    loss: float
    ell: np.ndarray                # ℓ in use
    ell_floor: np.ndarray          # the spec's ℓ (or the current estimate's floor)
    previous: torch.Tensor         # the previous accepted update (zeros before the first)
    step: int = 0                  # steps taken (accepted or not)
    accepted: int = 0
    optimizer: dict = field(default_factory=lambda: {"t": 0})
    generator: torch.Tensor | None = None


@dataclass
class StepReport:
    step: int
    accepted: bool
    reason: str
    loss: float
    g: np.ndarray
    refutations: int
    update_norm: float


class Trainer:
    def __init__(self, compiled: CompiledSpec, log: AuditWriter | None = None,
                 run_dir: Path | None = None):
        self.c = compiled
        self.s = compiled.settings
        self.ev = compiled.evaluator
        self.family = compiled.family
        self.log, self.run_dir = log, run_dir
        self.k, self.d = len(self.ev.metrics), self.family.d
        self.n = 2 + self.s.directions  # raw step, previous update, probes
        self.margins = self.ev.margins
        self.template = ProjectionTemplate(self.k, self.n, self.d, self.s.radius, self.margins,
                                           self.ev.names, self.s.solver)
        self.optimizer = Optimizer(self.s.optimizer, self.s.lr, self.s.momentum)
        self.generator = torch.Generator().manual_seed(self.s.seed)
        self.estimated = np.array([m.smoothness is None for m in self.ev.metrics])
        self.spec_ell = np.array([m.smoothness if m.smoothness is not None else ESTIMATE_START
                                  for m in self.ev.metrics], dtype=np.float64)

    # ---- θ₀ ----
    def initial_state(self) -> State:
        """Evaluate θ₀; raise UnsafeStart naming every violated metric."""
        theta = self.family.theta0.clone()
        g = self.metrics(theta[None])[0]
        bad = [(m.name, float(v), float(mg), m.location)
               for m, v, mg in zip(self.ev.metrics, g, self.margins) if not v <= -mg]
        if bad:
            raise UnsafeStart(bad)
        loss = float(self.loss(theta))
        return State(theta=theta, g=g, loss=loss, ell=self.spec_ell.copy(),
                     ell_floor=self.spec_ell.copy(), previous=torch.zeros(self.d, dtype=DTYPE))

    # ---- pieces ----
    def metrics(self, thetas: torch.Tensor) -> np.ndarray:
        return self.ev(thetas).cpu().numpy()

    @torch.no_grad()
    def loss(self, theta: torch.Tensor) -> float:
        return float(self.c.objective(theta))

    def loss_and_grad(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """L(θ) and ∇L(θ): autograd, or the objective's own estimate (`objective return`)."""
        return self.c.objective.loss_and_grad(theta)

    def probe_scale(self, state: State) -> float:
        """ν, shrunk near the boundary so the probes' curvature terms fit in the slack left."""
        slack = np.maximum(-state.g - self.margins, 0.0)
        fit = 0.1 * np.min(slack / (state.ell * self.s.radius))
        return float(min(self.s.perturbation, max(PROBE_FLOOR * self.s.perturbation, fit)))

    def probe_cap(self, state: State) -> float | None:
        """`lipschitz` bounds: ‖d_j‖ ≤ −g0_i/Lip_i keeps every evaluated candidate safe."""
        caps = [(-g) / m.lipschitz for g, m in zip(state.g, self.ev.metrics) if m.lipschitz]
        return float(max(min(caps), 0.0)) if caps else None

    # ---- one step: ALGORITHM.md 1–7 ----
    def step(self, state: State) -> tuple[State, StepReport, dict]:
        t_start = time.perf_counter()
        timing = {"rollouts": 0.0, "qcqp": 0.0, "gradient": 0.0}
        record: dict = {"type": "step", "step": state.step, "theta": theta_hash(state.theta),
                        "g0": state.g, "loss": state.loss}

        # 1. raw step, clipped to the trust radius
        t = time.perf_counter()
        loss, grad = self.loss_and_grad(state.theta)
        raw, opt_state = self.optimizer.propose(grad)
        timing["gradient"] += time.perf_counter() - t
        raw_norm = float(raw.norm())
        if raw_norm > self.s.radius:
            raw = raw * (self.s.radius / raw_norm)

        # 2. candidate bank: raw step, previous accepted update, random probes
        nu = self.probe_scale(state)
        z = torch.randn(self.s.directions, self.d, generator=self.generator, dtype=DTYPE)
        probes = nu * z / z.norm(dim=1, keepdim=True)
        previous = state.previous
        if state.accepted == 0 or not float(previous.norm()) > 0:  # no update yet: one more probe
            extra = torch.randn(self.d, generator=self.generator, dtype=DTYPE)
            previous = nu * extra / extra.norm()
        D = torch.cat([raw[None], previous[None], probes], dim=0)  # (n, d): rows d_j
        cap = self.probe_cap(state)
        if cap is not None:
            norms = D.norm(dim=1, keepdim=True)
            D = torch.where(norms > cap, D * (cap / norms.clamp_min(1e-300)), D)

        # 3. rollouts of every candidate: one batched evaluation
        t = time.perf_counter()
        G = self.metrics(state.theta[None] + D).T  # (k, n)
        timing["rollouts"] += time.perf_counter() - t
        # the d-sized algebra stays in torch (one thread pool: numpy's BLAS threads spinning
        # next to torch's made the rollouts twice as slow on 2 cores); only n-sized data leave
        S = (D @ D.T).numpy()
        # the QCQP in scaled coordinates η_j = ‖d_j‖ ξ_j (unit columns): better conditioned
        norms_t = D.norm(dim=1)
        norms_t = torch.where(norms_t > 0, norms_t, torch.ones_like(norms_t))
        Q, R = torch.linalg.qr((D / norms_t[:, None]).T, mode="reduced")
        target = (Q.T @ D[0]).numpy()
        R, norms = R.numpy(), norms_t.numpy()
        E_scaled = (G - state.g[:, None]) / norms
        record.update({"grad_norm": float(grad.norm()), "raw_norm": raw_norm, "nu": nu,
                       "probe_cap": cap, "bank": ["raw", "previous" if previous is state.previous else "probe"]
                       + ["probe"] * self.s.directions,
                       "bank_norms": np.sqrt(np.maximum(np.diag(S), 0)), "G": G, "S": S,
                       "target": target})

        # 4–7. project, backtrack, verify; on refutation double ℓ and re-solve
        ell = state.ell.copy()
        tries, accepted, reason = [], False, ""
        new_theta, new_g, new_loss, update = state.theta, state.g, state.loss, None
        refuted_any = np.zeros(self.k, dtype=bool)
        gD = (D @ grad).numpy()  # ∇Lᵀd_j
        for attempt in range(MAX_TRIES):
            entry: dict = {"ell": ell.copy()}
            tries.append(entry)
            t = time.perf_counter()
            sol = self.template.solve(state.g, E_scaled, R, target, norms, ell)
            timing["qcqp"] += time.perf_counter() - t
            entry.update({"status": sol.status, "solve_time": sol.solve_time,
                          "objective": sol.objective})
            if sol.xi is None:
                reason = f"solver: {sol.status}"
                entry["outcome"] = "solver_failed"
                break
            xi = sol.xi / norms
            scale = certified_scale(state.g, G, S, ell, xi, -self.margins)
            entry["xi_solver"] = xi
            xi = scale * xi
            # 6. Armijo backtracking on the loss (a shortened step stays certified)
            t = time.perf_counter()
            alpha, cand_loss = self.backtrack(state.theta, D, xi, loss, float(gD @ xi))
            timing["gradient"] += time.perf_counter() - t
            if alpha is None:
                entry.update({"outcome": "no_descent", "xi": xi, "repair": scale})
                reason = "no loss decrease along the certified step"
                break
            xi = alpha * xi
            bound = certificate(state.g, G, S, ell, xi)
            entry.update({"xi": xi, "alpha": alpha, "repair": scale, "certificate": bound})
            candidate = state.theta + torch.as_tensor(xi, dtype=DTYPE) @ D
            # 7. verification by rollout
            t = time.perf_counter()
            g_new = self.metrics(candidate[None])[0]
            timing["rollouts"] += time.perf_counter() - t
            lin, quad = certificate_terms(state.g, G, S, xi)
            observed = 2 * (g_new - lin) / quad if quad > 0 else np.zeros(self.k)
            entry.update({"verified": g_new, "observed_curvature": observed, "loss": cand_loss})
            refuted = ~(g_new <= -self.margins)
            if not refuted.any():
                entry["outcome"] = "accepted"
                accepted, reason = True, "verified"
                new_theta, new_g, new_loss = candidate, g_new, cand_loss
                update = candidate - state.theta
                break
            entry["outcome"] = "refuted"
            entry["refuted"] = [self.ev.names[i] for i in np.flatnonzero(refuted)]
            t = time.perf_counter()
            entry["counterexample"] = self.counterexample(candidate, refuted)
            timing["rollouts"] += time.perf_counter() - t
            refuted_any |= refuted
            if self.s.on_violation == "stop":
                reason = "refuted: " + ", ".join(entry["refuted"]) + " (on_violation stop)"
                break
            ell = np.where(refuted, 2 * ell, ell)
            reason = f"refuted {attempt + 1} time(s); ℓ doubled for " + ", ".join(entry["refuted"])
        else:
            reason = f"refuted {MAX_TRIES} times: update rejected"

        # bookkeeping: ℓ relaxes back toward the floor where not refuted this step
        if self.estimated.any():  # `smoothness estimate`: the floor follows what was observed
            observed = [e["observed_curvature"] for e in tries if "observed_curvature" in e]
            seen = np.max(np.vstack([np.zeros(self.k), *observed]), axis=0)
            seen = np.where(np.isfinite(seen), seen, 0.0)  # a NaN rollout says nothing about ℓ
            floor = np.where(self.estimated, np.maximum(state.ell_floor, 2 * seen), state.ell_floor)
        else:
            floor = state.ell_floor
        ell_next = np.where(refuted_any, np.maximum(ell, floor),
                            np.maximum(floor, ell * ELL_RELAX))
        new_state = State(theta=new_theta, g=new_g, loss=new_loss if accepted else loss,
                          ell=ell_next, ell_floor=floor,
                          previous=update if update is not None else state.previous,
                          step=state.step + 1, accepted=state.accepted + int(accepted),
                          optimizer=opt_state)
        # the optimizer's moments take in every gradient seen (a rejected step must not leave
        # it proposing the same raw step forever)
        self.optimizer.commit(opt_state)
        timing["other"] = time.perf_counter() - t_start - sum(timing.values())
        record.update({"tries": tries, "accepted": accepted, "reason": reason,
                       "theta_next": theta_hash(new_theta), "g_next": new_g,
                       "loss_next": new_state.loss,
                       "update_norm": float(update.norm()) if update is not None else 0.0,
                       "ell_next": ell_next, "timing": timing})
        report = StepReport(state.step, accepted, reason, new_state.loss, new_g,
                            int(sum(e.get("outcome") == "refuted" for e in tries)),
                            record["update_norm"])
        return new_state, report, record

    @torch.no_grad()
    def counterexample(self, candidate: torch.Tensor, refuted: np.ndarray) -> dict:
        """For each refuted metric, the scenario where the rejected candidate did worst, and
        that scenario's rollout (states and inputs): the evidence that the certificate failed."""
        h = self.ev.per_scenario(candidate[None])[0]  # (S, k)
        out = {}
        for i in np.flatnonzero(refuted):
            j = int(torch.argmax(torch.nan_to_num(h[:, i], nan=torch.inf)))
            X, U = self.ev.rollout(candidate[None], self.ev.x0[j:j + 1])
            out[self.ev.names[i]] = {"scenario": j, "x0": X[0, 0, 0], "value": float(h[j, i]),
                                     "states": X[0, 0], "inputs": U[0, 0]}
        return out

    @torch.no_grad()
    def backtrack(self, theta, D, xi, loss0, slope) -> tuple[float | None, float]:
        """Armijo: halve until L(θ + αDξ) ≤ L(θ) + c·α·∇Lᵀ(Dξ); without backtracking, α = 1.
        None when no tried α lowers the loss at all."""
        direction = torch.as_tensor(xi, dtype=DTYPE) @ D
        if self.s.backtrack == "none":
            return 1.0, self.loss(theta + direction)
        best, alpha = (None, loss0), 1.0
        for _ in range(ARMIJO_HALVINGS + 1):
            La = self.loss(theta + alpha * direction)
            if La <= loss0 + ARMIJO_C * alpha * slope and La < loss0:
                return alpha, La
            if La < best[1]:
                best = (alpha, La)
            alpha /= 2
        return best

    # ---- checkpoints ----
    def checkpoint(self, state: State, head: str, seq: int) -> None:
        if self.run_dir is None:
            return
        payload = {"theta": state.theta, "g": state.g, "loss": state.loss, "ell": state.ell,
                   "ell_floor": state.ell_floor, "previous": state.previous, "step": state.step,
                   "accepted": state.accepted, "optimizer": self.optimizer.state,
                   "generator": self.generator.get_state(), "head": head, "seq": seq}
        objective_generator = getattr(self.c.objective, "generator", None)
        if objective_generator is not None:  # `objective return`: its ES directions' stream
            payload["objective_generator"] = objective_generator.get_state()
        tmp = self.run_dir / "checkpoint.pt.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, self.run_dir / "checkpoint.pt")

    def restore(self, payload: dict) -> State:
        self.optimizer.state = payload["optimizer"]
        self.generator.set_state(payload["generator"])
        if "objective_generator" in payload:
            self.c.objective.generator.set_state(payload["objective_generator"])
        return State(theta=payload["theta"], g=np.asarray(payload["g"]), loss=payload["loss"],
                     ell=np.asarray(payload["ell"]), ell_floor=np.asarray(payload["ell_floor"]),
                     previous=payload["previous"], step=payload["step"],
                     accepted=payload["accepted"], optimizer=payload["optimizer"])


def run_steps(trainer: Trainer, state: State, steps: int,
              on_step: Callable[[StepReport, State], None] | None = None) -> tuple[State, str]:
    """Take steps until `steps` have been taken in all; log and checkpoint after each one.
    Returns the final state and why it ended."""
    while state.step < steps:
        state, report, record = trainer.step(state)
        if trainer.log is not None:
            head = trainer.log.append(record)
            trainer.checkpoint(state, head, trainer.log.seq)
        if on_step is not None:
            on_step(report, state)
        if not report.accepted and trainer.s.on_violation == "stop" and "on_violation" in report.reason:
            return state, f"stopped at step {report.step}: {report.reason}"
    return state, "completed"
