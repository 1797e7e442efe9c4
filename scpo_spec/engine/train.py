"""The safe-by-induction step of ALGORITHM.md.

Read top to bottom: `Trainer.step` is steps 1–7 of ALGORITHM.md.  Only verified candidates
become the policy, θ₀ is verified before the first step, so every accepted iterate is safe on the
scenarios.  Each step returns its record, which carries the numbers its certificate is made of
(g0, G, S, ℓ, ξ), so `scpo audit` recomputes it without torch; the trainer itself writes nothing
(scpo_spec.engine.run logs the records and saves the state).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from scpo_spec.audit.records import Proof, Step, Try, theta_sha256
from scpo_spec.compile.certificate import certificate, certificate_terms
from scpo_spec.compile.evaluator import Evaluator
from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.compile.projection import Bank, ProjectionTemplate
from scpo_spec.dtype import DTYPE
from scpo_spec.engine.memory import keep_freed_memory
from scpo_spec.engine.optimizers import Optimizer
from scpo_spec.engine.probes import fill_gaussian
from scpo_spec.errors import ScpoError
from scpo_spec.plan.settings import verify_limits
from scpo_spec.verify.prove import verify as prove_over_box
from scpo_spec.verify.verdicts import PROVED

MAX_TRIES = 6          # re-solves with doubled ℓ after a refutation, per step
ARMIJO_C = 1e-4        # sufficient-decrease constant
ARMIJO_HALVINGS = 10
ELL_RELAX = 0.9        # ℓ relaxes by this factor per step back toward the spec's value
ESTIMATE_START = 1.0   # ℓ of a metric with no smoothness under `smoothness estimate`
PROBE_FLOOR = 1e-4     # ν never shrinks below this fraction of the spec's ν


def doubled(ell: np.ndarray, refuted) -> np.ndarray:
    """ℓ after a refutation (ALGORITHM.md step 7): doubled for each metric `refuted` marks
    (a rollout refuted its certificate, or the prover left the candidate unproved for it),
    the others' as they were.  The one place the rule is written."""
    return np.where(refuted, 2 * ell, ell)


def theta_hash(theta: torch.Tensor) -> str:
    """SHA-256 of θ's float64 little-endian bytes (the log's name for a policy)."""
    return theta_sha256(theta.detach().cpu().numpy())


class Timer:
    """Seconds per phase of a step: gradient, rollouts (the bank's batched evaluation and the
    counterexamples), verification (each try's rollout of its candidate), bank (the probes,
    the Gram matrix, R and Qᵀs), qcqp, hashing (θ's SHA-256), proof (`verify every K`: the
    prover over the whole initial box); the rest is `other`."""

    def __init__(self):
        self.start = time.perf_counter()
        self.phases = {"rollouts": 0.0, "verification": 0.0, "bank": 0.0, "qcqp": 0.0,
                       "gradient": 0.0, "hashing": 0.0, "proof": 0.0}

    @contextmanager
    def __call__(self, phase: str):
        t = time.perf_counter()
        yield
        self.phases[phase] += time.perf_counter() - t

    def done(self) -> dict:
        return {**self.phases, "other": time.perf_counter() - self.start - sum(self.phases.values())}


class UnsafeStart(ScpoError):
    """θ₀ violates a metric: training refuses to start."""

    def __init__(self, violated: list[tuple[str, float, float, str]]):
        self.violated = violated  # (name, value, margin, location)
        parts = [f"'{n}' = {v:.6g} (must be ≤ {-m + 0.0:g}){f' at {loc}' if loc else ''}"
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
    theta_sha: str | None = field(default=None, repr=False)  # cached theta_hash(theta)

    def theta_sha256(self) -> str:
        """theta_hash(θ), computed once per state (the step record, the next step's record
        and the state file all name the same θ: one SHA-256 of d floats per step, not three)."""
        if self.theta_sha is None:
            self.theta_sha = theta_hash(self.theta)
        return self.theta_sha


class Trainer:
    def __init__(self, compiled: CompiledSpec, evaluator: Evaluator | None = None):
        """`evaluator`: where candidates are rolled out (an executor's; the compiled one's by
        default)."""
        keep_freed_memory()  # a step's large blocks are reused, not faulted in again
        self.c = compiled
        self.s = compiled.settings
        self.ev = evaluator if evaluator is not None else compiled.evaluator
        self.family = compiled.family
        self.k, self.d = len(self.ev.metrics), self.family.d
        self.n = self.s.bank_size
        self.margins = self.ev.margins
        self.template = ProjectionTemplate(self.k, self.n, self.d, self.s.radius, self.margins,
                                           self.ev.names, self.s.solver)
        self.optimizer = Optimizer(self.s.optimizer, self.s.lr, self.s.momentum)
        # `device cuda`: the bank (D and its Gram matrix) and the rollouts live there; θ,
        # the state, the objective and every certificate number stay on the CPU (float64)
        self.device = self.ev.device
        self._staging: torch.Tensor | None = None  # `device cuda`: the bank's page-locked rows
        self.estimated = np.array([m.smoothness is None for m in self.ev.metrics])
        self.spec_ell = np.array([m.smoothness if m.smoothness is not None else ESTIMATE_START
                                  for m in self.ev.metrics], dtype=np.float64)
        self.proof_cells, self.proof_time_limit = verify_limits(compiled.spec)

    # ---- θ₀ ----
    def initial_state(self) -> State:
        """Evaluate θ₀; raise UnsafeStart naming every violated metric (a PlantFailure where
        the author's plant made the rollout non-finite)."""
        theta = self.family.theta0.clone()
        g = self.metrics(theta[None])[0]
        if not np.all(np.isfinite(g)):  # the author's plant leaving the numbers: say where
            failure = self.c.evaluator.plant_failure(theta)
            if failure is not None:
                raise failure
        bad = [(m.name, float(v), float(mg), m.location)
               for m, v, mg in zip(self.ev.metrics, g, self.margins) if not v <= -mg]
        if bad:
            raise UnsafeStart(bad)
        loss = float(self.loss(theta))
        return State(theta=theta, g=g, loss=loss, ell=self.spec_ell.copy(),
                     ell_floor=self.spec_ell.copy(), previous=torch.zeros(self.d, dtype=DTYPE))

    # ---- pieces ----
    def prove(self, theta: torch.Tensor) -> Proof:
        """`verify every K`: the prover's answer for the policy θ over the whole initial box,
        with the spec's `verify { cells  time_limit }`, as the record the log keeps (its cells
        bounded on the executor's Ray actors under `executor ray`)."""
        res = prove_over_box(self.c, theta, cells=self.proof_cells,
                             time_limit=self.proof_time_limit,
                             executor=self.ev if hasattr(self.ev, "bound_cells") else None)
        found = [res.constraints[n] for n in self.ev.names]
        return Proof(verdict=res.verdict, verdicts=[c.verdict for c in found],
                     bounds=np.array([c.bound if c.bound is not None else np.inf
                                      for c in found], dtype=np.float64),
                     cells=res.cells, seconds=res.seconds, reason=res.reason,
                     counterexamples={n: c.counterexample for n, c in zip(self.ev.names, found)
                                      if c.counterexample is not None})

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
    def step(self, state: State) -> tuple[State, Step]:
        """One step from a verified θ: returns the next state and the step's record (it writes
        nothing: the run logs the record and saves the state)."""
        timer = Timer()
        with timer("gradient"):  # 1. the raw step s, clipped to the trust radius
            loss, grad = self.loss_and_grad(state.theta)
            raw, opt_state = self.optimizer.propose(grad)
        raw_norm = float(raw.norm())
        raw = raw * (self.s.radius / raw_norm) if raw_norm > self.s.radius else raw
        with timer("bank"):  # 2. raw, previous update, probes
            D, kinds, nu, cap = self.candidate_bank(state, raw)
        with timer("rollouts"):  # 3. every candidate, one batched evaluation
            G = self.metrics(state.theta.to(D.device)[None] + D).T  # (k, n)
        with timer("bank"):
            bank = self.template.bank(D, G, state.g)
        # 4–7. project, backtrack, verify; on refutation double ℓ and re-solve
        tries, accepted, reason, verified = self.solve_and_verify(state, bank, grad, loss, timer)
        win = tries[-1] if accepted else None  # the verified try, whose θ + Dξ becomes θ
        # the metrics whose smoothness a rollout refuted; a candidate the prover did not prove
        # (`unproved`) doubled ℓ within this step only: it says nothing about ℓ
        refuted = np.array([[n in t.refuted and t.outcome == "refuted" for n in self.ev.names]
                            for t in tries]).any(axis=0)
        ell_next, floor = self.next_ell(state, tries, refuted)
        theta_next = verified if win else state.theta  # θ + Dξ, the very θ verified
        update = theta_next - state.theta if win else state.previous
        # a rejected step keeps θ and the loss logged for it (the autograd pass above may
        # differ in a last bit, and the end record must repeat the last accepted policy's)
        new_state = State(theta=theta_next, g=win.verified if win else state.g,
                          loss=win.loss if win else state.loss, ell=ell_next, ell_floor=floor,
                          previous=update, step=state.step + 1,
                          accepted=state.accepted + int(accepted), optimizer=opt_state,
                          theta_sha=None if win else state.theta_sha)
        # the optimizer's moments take in every gradient seen (a rejected step must not leave
        # it proposing the same raw step forever)
        self.optimizer.commit(opt_state)
        with timer("hashing"):
            hashes = state.theta_sha256(), new_state.theta_sha256()
        record = Step(
            step=state.step, theta=hashes[0], g0=state.g, loss=state.loss,
            G=bank.G, S=bank.S, tries=tries, accepted=accepted, reason=reason,
            theta_next=hashes[1], g_next=new_state.g, loss_next=new_state.loss,
            bank_norms=np.sqrt(np.maximum(np.diag(bank.S), 0)), target=bank.target,
            grad_norm=float(grad.norm()), raw_norm=raw_norm, nu=nu, probe_cap=cap, bank=kinds,
            dropped=bank.dropped, update_norm=float(update.norm()) if win else 0.0,
            ell_next=ell_next, timing=timer.done(),
            stopped=tries[-1].outcome == "refuted" and self.s.on_violation == "stop",
            proved=accepted if self.s.proof_due(state.step) else None)
        return new_state, record

    def candidate_bank(self, state: State, raw: torch.Tensor):
        """D (n, d): the raw step, the previous accepted update (a probe before the first) and
        random probes of norm ν, each cut to the `lipschitz` cap when there is one."""
        nu = self.probe_scale(state)
        # the probes are drawn straight into D's rows (scpo_spec.engine.probes: step t's rows
        # depend on (seed, t, row) alone) and scaled there: no torch.cat copy of n·d numbers
        directions = self.s.directions
        D = self._bank_rows(2 + directions)
        kinds = ["raw", "previous"] + ["probe"] * directions
        first = 2
        if state.accepted == 0 or not float(state.previous.norm()) > 0:  # one more probe
            fill_gaussian(D[1:2], self.s.seed, state.step, first_row=directions)
            first, kinds[1] = 1, "probe"
        else:
            D[1] = state.previous
        fill_gaussian(D[2:], self.s.seed, state.step)
        z = D[first:]
        z.mul_(nu / z.norm(dim=1, keepdim=True))  # one pass: z·(ν/‖z‖)
        D[0] = raw
        D = D.to(self.device)
        cap = self.probe_cap(state)
        if cap is not None:
            norms = D.norm(dim=1, keepdim=True)
            D = torch.where(norms > cap, D * (cap / norms.clamp_min(1e-300)), D)
        return D, kinds, nu, cap

    def _bank_rows(self, n: int) -> torch.Tensor:
        """An (n, d) CPU tensor for the bank's rows.  For a GPU, one page-locked buffer kept
        from step to step: the copy to the device then runs at the bus's speed instead of
        through a pageable bounce buffer (2 GB a step at d ≈ 1.7·10⁷), and pinning is paid
        once (it can be refused: then pageable memory, as on the CPU)."""
        if self.device.type != "cuda":
            return torch.empty(n, self.d, dtype=DTYPE)
        if self._staging is None or self._staging.shape[0] != n:
            try:
                self._staging = torch.empty(n, self.d, dtype=DTYPE, pin_memory=True)
            except RuntimeError:
                self._staging = torch.empty(n, self.d, dtype=DTYPE)
        return self._staging

    def solve_and_verify(self, state: State, bank: Bank, grad: torch.Tensor, loss: float,
                         timer: Timer) -> tuple[list[Try], bool, str, torch.Tensor | None]:
        """Steps 4–7 at ℓ, then at ℓ doubled for each refuted metric (and, on a step `verify
        every K` names, each metric the prover left unproved for a verified candidate), up to
        MAX_TRIES; the tries, whether the last was accepted, why not, and the accepted θ + Dξ."""
        ell, tries, reason = state.ell.copy(), [], f"refuted {MAX_TRIES} times: update rejected"
        gD = (bank.D @ grad.to(bank.D.device)).cpu().numpy()  # ∇Lᵀd_j
        due = self.s.proof_due(state.step)
        for attempt in range(MAX_TRIES):
            with timer("qcqp"):
                p = self.template.project(bank, ell)
            entry = Try(ell=ell.copy(), status=p.status, solve_time=p.solve_time,
                        objective=p.objective)
            tries.append(entry)
            if p.xi is None:
                entry.outcome = "solver_failed"
                return tries, False, f"solver: {p.status}", None
            entry.xi_solver, entry.repair = p.xi_solver, p.scale
            with timer("gradient"):  # 6. Armijo backtracking (a shortened step stays certified)
                direction = self.combine(p.xi, bank.D)
                alpha, cand_loss = self.backtrack(state.theta, direction, loss, float(gD @ p.xi))
            if alpha is None:
                entry.outcome, entry.xi = "no_descent", p.xi
                return tries, False, "no loss decrease along the certified step", None
            xi = alpha * p.xi
            entry.xi, entry.alpha, entry.loss = xi, alpha, cand_loss
            entry.certificate = certificate(bank.g0, bank.G, bank.S, ell, xi)
            # = θ + Dᵀ(αξ) bit for bit: α is 1 or a power of two (Armijo halvings), and scaling
            # by a power of two commutes with every rounding (tests/test_perf_equality.py)
            candidate = state.theta + alpha * direction
            with timer("verification"):  # 7. verification by rollout
                entry.verified = self.metrics(candidate[None])[0]
            lin, quad = certificate_terms(bank.g0, bank.G, bank.S, xi)
            entry.observed_curvature = (2 * (entry.verified - lin) / quad if quad > 0
                                        else np.zeros(self.k))
            refuted = ~(entry.verified <= -self.margins)
            if not refuted.any() and due:  # `verify every K`: the whole initial box too
                with timer("proof"):
                    entry.proof = self.prove(candidate)
                unproved = np.array([v != PROVED for v in entry.proof.verdicts])
                if unproved.any():  # rejected like a refuted certificate: ℓ doubled below
                    entry.outcome = "unproved"
                    entry.refuted = [self.ev.names[i] for i in np.flatnonzero(unproved)]
                    ell = doubled(ell, unproved)
                    continue
            if not refuted.any():
                entry.outcome = "accepted"
                return tries, True, "verified and proved" if due else "verified", candidate
            entry.outcome = "refuted"
            entry.refuted = [self.ev.names[i] for i in np.flatnonzero(refuted)]
            with timer("rollouts"):
                entry.counterexample = self.counterexample(candidate, refuted)
            if self.s.on_violation == "stop":
                return (tries, False,
                        "refuted: " + ", ".join(entry.refuted) + " (on_violation stop)", None)
            ell = doubled(ell, refuted)
        return tries, False, self.exhausted(tries, reason), None

    @staticmethod
    def exhausted(tries: list[Try], refuted_reason: str) -> str:
        """Why MAX_TRIES tries left the update rejected: refuted certificates, or (`verify
        every K`) candidates the prover did not prove, with the last proof's verdicts."""
        unproved = [t for t in tries if t.outcome == "unproved"]
        if not unproved:
            return refuted_reason
        p = unproved[-1]
        said = ", ".join(p.refuted)
        refuted = len(tries) - len(unproved)
        return (f"not proved over the whole initial box ({len(unproved)} of {len(tries)} "
                f"candidates{f'; {refuted} refuted' if refuted else ''}): update rejected "
                f"(last proof: {p.proof.verdict}, {said} not proved"
                + (f": {p.proof.reason}" if p.proof.reason else "") + ")")

    def next_ell(self, state: State, tries: list[Try], refuted: np.ndarray):
        """ℓ relaxes by ELL_RELAX back toward its floor where not refuted this step; under
        `smoothness estimate` the floor follows the curvature observed."""
        floor = state.ell_floor
        if self.estimated.any():
            observed = [t.observed_curvature for t in tries if t.observed_curvature is not None]
            seen = np.max(np.vstack([np.zeros(self.k), *observed]), axis=0)
            seen = np.where(np.isfinite(seen), seen, 0.0)  # a NaN rollout says nothing about ℓ
            floor = np.where(self.estimated, np.maximum(floor, 2 * seen), floor)
        ell = state.ell  # as the step began, doubled for each refutation in it (not for a
        # candidate the prover left unproved: that doubling shortened this step's tries only)
        for t in tries:
            if t.outcome == "refuted" and self.s.on_violation != "stop":
                ell = doubled(ell, [n in t.refuted for n in self.ev.names])
        return np.where(refuted, np.maximum(ell, floor), np.maximum(floor, ell * ELL_RELAX)), floor

    @staticmethod
    def combine(xi: np.ndarray, D: torch.Tensor) -> torch.Tensor:
        """Dᵀξ = Σ_j ξ_j d_j (d,), on the CPU whatever D's device."""
        return (torch.as_tensor(xi, dtype=DTYPE, device=D.device) @ D).cpu()

    @torch.no_grad()
    def counterexample(self, candidate: torch.Tensor, refuted: np.ndarray) -> dict:
        """For each refuted metric, the scenario where the rejected candidate did worst, and
        that scenario's rollout (states and inputs): the evidence that the certificate failed."""
        h = self.ev.per_scenario(candidate[None])[0]  # (S, k)
        out = {}
        for i in np.flatnonzero(refuted):
            j = int(torch.argmax(torch.nan_to_num(h[:, i], nan=torch.inf)))
            x0, draws = self.ev.select(j)
            X, U = self.ev.rollout(candidate[None], x0, draws)
            out[self.ev.names[i]] = {"scenario": j, "x0": X[0, 0, 0], "value": float(h[j, i]),
                                     "states": X[0, 0], "inputs": U[0, 0]}
            if draws is not None:  # the scenario's uncertain values, which re-simulate it
                out[self.ev.names[i]].update(parameters=draws.parameters[0],
                                             disturbances=draws.disturbances[:, 0])
        return out

    @torch.no_grad()
    def backtrack(self, theta, direction, loss0, slope) -> tuple[float | None, float]:
        """Armijo along direction = Dξ: halve α until L(θ + αDξ) ≤ L(θ) + c·α·∇Lᵀ(Dξ); without
        backtracking, α = 1.  None when no tried α lowers the loss at all."""
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
