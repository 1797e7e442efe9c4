"""ProjectionTemplate: the QCQP of ALGORITHM.md step 5 as a cvxpy DPP problem, built once per spec.

    minimise    ‖Rξ − Qᵀs‖²                               (= ‖Dξ − s‖², s is a column of D)
    subject to  g0_i + E_i ξ + ‖R_i ξ‖² + w_iᵀ|ξ| ≤ −margin_i     i = 1..k
                ‖Rξ‖ ≤ r

with D = QR, E_i = G_i − g0_i·1ᵀ, R_i = √(ℓ_i/2)·R and w_i = (ℓ_i/2)·diag(S): ℓ is folded into
the parameters so the problem stays DPP, and each step is a re-solve with new parameter values.

`bank` prepares a step's data once (S = DᵀD, R and Qᵀs from S, the scaled slopes); `project` solves
at one ℓ.  It works in scaled coordinates η_j = ‖d_j‖·ξ_j (D's columns normalised): the raw step
has norm ~r and the probes ~ν ≪ r, and without the scaling the solver sees ξ of very different
sizes and loses accuracy right where it matters, near the boundary.  It maps η back to ξ and
scales ξ until the certificate, recomputed in float64 numpy from (g0, G, S, ℓ, ξ) — the numbers
the audit log keeps — proves g ≤ −margin: the certificate is never taken from the solver.
A candidate whose rollout was not finite is dropped from the bank (its direction zeroed, its
column set to g0) rather than failing the whole step.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import torch

from scpo_spec.errors import ScpoError
from scpo_spec.compile.certificate import certificate, rounding_error

SOLVERS = {"clarabel": "CLARABEL", "gurobi": "GUROBI", "scs": "SCS"}


class SolverUnavailable(ScpoError):
    """The spec names a solver that is not installed."""


def certified_scale(g0, G, S, ell, xi, bound) -> float:
    """The largest α ∈ [0, 1] with certificate(αξ) ≤ bound by more than its own rounding error
    (the region is convex and holds 0): repairs a solver answer that is feasible only to its
    tolerance, and one whose certificate is a cancellation of huge terms."""
    def holds(x):
        return np.all(certificate(g0, G, S, ell, x) + rounding_error(g0, G, S, ell, x) <= bound)

    if holds(xi):
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if holds(mid * xi):
            lo = mid
        else:
            hi = mid
    return lo


GRAM_BLOCK = 8192  # columns of D per block of the Gram matrix on the CPU


def gram(D: torch.Tensor) -> torch.Tensor:
    """S = DDᵀ (n × n) for a wide D (n × d).  On the CPU, summed over blocks of GRAM_BLOCK
    columns (one addmm each): a single (n × d)·(d × n) GEMM leaves the inner dimension to one
    thread and took ~4× longer at d ≈ 265 000 (benchmarks/README.md)."""
    if D.device.type != "cpu" or D.shape[1] <= GRAM_BLOCK:
        return D @ D.T
    S = torch.zeros(D.shape[0], D.shape[0], dtype=D.dtype)
    for start in range(0, D.shape[1], GRAM_BLOCK):
        block = D[:, start:start + GRAM_BLOCK]
        S.addmm_(block, block.T)
    return S


def gram_factor(S: np.ndarray, norms: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """R (rows × n) and Qᵀs for the normalised directions D̂ = D/‖d‖ and s = d_0, from the Gram
    matrix alone: with D̂D̂ᵀ = VΛVᵀ, R = Λ^½Vᵀ and Qᵀs = Λ^-½Vᵀ(D̂s), so that RᵀR = D̂D̂ᵀ and
    ‖Rξ − Qᵀs‖² = ‖D̂ᵀξ − s‖² − ‖s‖² + ‖Qᵀs‖², the QCQP's objective up to a constant.

    The same problem as a Householder QR of the d × n bank (O(d·n²), 45–72 ms at d ≈ 265 000 on
    2 cores), in O(n³) after S, which the certificate needs anyway (tests/compile/test_perf_equality.py
    compares the two to 1e-12).  Eigenvalues below n·ε·λ_max (a zero or repeated direction) get
    a zero row: R then still satisfies RᵀR = D̂D̂ᵀ to rounding.  This only shapes the solver's
    problem; the certificate is recomputed from S itself."""
    n = S.shape[0]
    Sn = S / np.outer(norms, norms)
    lam, V = np.linalg.eigh((Sn + Sn.T) / 2)           # ascending
    lam, V = lam[::-1][:rows], V[:, ::-1][:, :rows]      # the `rows` largest
    keep = lam > max(lam[0], 0.0) * n * np.finfo(np.float64).eps
    root = np.sqrt(np.where(keep, lam, 0.0))
    R = root[:, None] * V.T
    Ds = S[:, 0] / norms                                 # D̂s, s = d_0
    target = np.where(keep, (V.T @ Ds) / np.where(keep, root, 1.0), 0.0)
    return R, target


@dataclass
class Bank:
    """One step's candidate bank, in the forms the QCQP and the audit need."""

    D: torch.Tensor         # (n, d) candidate directions d_j (dropped ones zeroed)
    G: np.ndarray           # (k, n) g(θ + d_j) (dropped columns set to g0)
    g0: np.ndarray          # (k,)
    S: np.ndarray           # (n, n) DᵀD
    norms: np.ndarray       # (n,) ‖d_j‖ (1 for a zero direction)
    R: np.ndarray           # (min(n, d), n) with RᵀR = D̂D̂ᵀ, D̂ = D/‖d‖ (gram_factor)
    target: np.ndarray      # Qᵀs, s the raw step (D's first row)
    E_scaled: np.ndarray    # (G − g0)/‖d‖
    dropped: list[int]      # candidates whose rollout was not finite


@dataclass
class Projection:
    """A solve at one ℓ: the certified ξ (None if the solver failed) and how it was obtained."""

    status: str
    xi: np.ndarray | None       # certified: certificate(ξ) ≤ −margin in float64
    xi_solver: np.ndarray | None
    scale: float | None         # the factor that made the solver's ξ certify (1 if it did)
    solve_time: float
    objective: float | None


@dataclass
class Solution:
    status: str
    xi: np.ndarray | None
    solve_time: float
    objective: float | None


class ProjectionTemplate:
    """The DPP problem for k metrics, n candidates and d weights (R has min(d, n) rows)."""

    def __init__(self, k: int, n: int, d: int, radius: float, margins: np.ndarray,
                 names: list[str], solver: str = "clarabel"):
        self.k, self.n, self.d, self.radius = k, n, d, radius
        self.names, self.margins = names, np.asarray(margins, dtype=np.float64)
        self.solver_name = solver
        self.solver = SOLVERS[solver]
        if self.solver not in cp.installed_solvers():
            extra = " (pip install 'scpo-spec[gurobi]')" if solver == "gurobi" else ""
            raise SolverUnavailable(f"solver '{solver}' is not installed{extra}; installed: "
                                    + ", ".join(s.lower() for s in cp.installed_solvers()))
        rows = min(d, n)
        self.rows = rows
        self.g0 = cp.Parameter(k, name="g0")
        self.E = cp.Parameter((k, n), name="E")
        self.R = cp.Parameter((rows, n), name="R")
        self.target = cp.Parameter(rows, name="target")
        self.R_ell = [cp.Parameter((rows, n), name=f"R_{i}") for i in range(k)]
        self.w = cp.Parameter((k, n), nonneg=True, name="w")
        self.xi = cp.Variable(n, name="xi")
        self.abs_xi = cp.Variable(n, name="abs_xi")
        self.constraints = [
            self.g0[i] + self.E[i] @ self.xi + cp.sum_squares(self.R_ell[i] @ self.xi)
            + self.w[i] @ self.abs_xi <= -self.margins[i]
            for i in range(k)
        ]
        self.constraints += [self.abs_xi >= self.xi, self.abs_xi >= -self.xi,
                             cp.norm(self.R @ self.xi, 2) <= radius]
        self.problem = cp.Problem(cp.Minimize(cp.sum_squares(self.R @ self.xi - self.target)),
                                  self.constraints)
        assert self.problem.is_dpp()

    def bank(self, D: torch.Tensor, G: np.ndarray, g0: np.ndarray) -> Bank:
        """The step's data for every ℓ tried: Gram matrix, R and Qᵀs of the normalised
        directions, and the scaled slopes.  The one d-sized computation is S = DDᵀ (torch, where
        D lives); the rest is n×n (`gram_factor`)."""
        G = np.array(G, dtype=np.float64)
        dropped = [j for j in range(G.shape[1]) if not np.all(np.isfinite(G[:, j]))]
        if dropped:
            D = D.clone()
            D[dropped] = 0.0
            G[:, dropped] = g0[:, None]
        S = gram(D).cpu().numpy()
        overflow = [j for j in range(len(S)) if j not in dropped and not np.isfinite(S[j]).all()]
        if overflow:  # a direction too long to square in float64: dropped like a NaN rollout
            dropped = sorted(dropped + overflow)
            D = D.clone()
            D[overflow] = 0.0
            G[:, overflow] = g0[:, None]
            S = gram(D).cpu().numpy()
        norms = np.sqrt(np.maximum(np.diag(S), 0.0))
        norms = np.where(norms > 0, norms, 1.0)
        R, target = gram_factor(S, norms, self.rows)
        return Bank(D, G, g0, S, norms, R, target, (G - g0[:, None]) / norms, dropped)

    def project(self, bank: Bank, ell: np.ndarray) -> Projection:
        """Solve at ℓ and return ξ scaled back until its float64 certificate holds."""
        sol = self.solve(bank.g0, bank.E_scaled, bank.R, bank.target, bank.norms, ell)
        if sol.xi is None:
            return Projection(sol.status, None, None, None, sol.solve_time, None)
        xi_solver = sol.xi / bank.norms
        xi_solver[bank.dropped] = 0.0
        scale = certified_scale(bank.g0, bank.G, bank.S, ell, xi_solver, -self.margins)
        return Projection(sol.status, scale * xi_solver, xi_solver, scale, sol.solve_time,
                          sol.objective)

    def solve(self, g0: np.ndarray, E: np.ndarray, R: np.ndarray, Qt_s: np.ndarray,
              diag_weights: np.ndarray, ell: np.ndarray) -> Solution:
        """Re-solve with new data (E = G − g0·1ᵀ, diag_weights = diag(S) in the unscaled form);
        any solver error or non-optimal status gives xi = None."""
        self.g0.value = g0
        self.E.value = E
        self.R.value = R
        self.target.value = Qt_s
        half = 0.5 * ell
        for i in range(self.k):
            self.R_ell[i].value = np.sqrt(half[i]) * R
        self.w.value = np.maximum(np.outer(half, diag_weights), 0.0)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():  # an inaccurate solve is logged and rejected instead
                warnings.simplefilter("ignore", UserWarning)
                # no warm start: cvxpy would update the previous solve's Clarabel object,
                # whose answer then depends (in the last bits) on the solves before it,
                # and a resumed run would not be the uninterrupted run
                self.problem.solve(solver=self.solver, warm_start=False)
            status = str(self.problem.status)
        except (cp.error.SolverError, ValueError, ArithmeticError) as err:
            return Solution(f"solver_error: {err}".strip()[:300], None,
                            time.perf_counter() - start, None)
        elapsed = time.perf_counter() - start
        if status != cp.OPTIMAL or self.xi.value is None or not np.all(np.isfinite(self.xi.value)):
            return Solution(status, None, elapsed, None)
        return Solution(status, np.asarray(self.xi.value, dtype=np.float64), elapsed,
                        float(self.problem.value))

    def describe(self, kinds: list[str], ells: list[float | None], locations: list[str]) -> str:
        """The template as readable math, with the constraint names (`scpo compile --emit qcqp`)."""
        n, k = self.n, self.k
        lines = [f"variables   ξ ∈ ℝ^{n}   (one weight per candidate: {', '.join(kinds)})",
                 f"data        D = [d_1 … d_{n}] ∈ ℝ^({self.d}×{n}) = Q R,  S = DᵀD,  "
                 f"G ∈ ℝ^({k}×{n}) with G_ij = g_i(θ + d_j),  g0 = g(θ)",
                 "",
                 "minimise    ‖R ξ − Qᵀ s‖²                    (= ‖D ξ − s‖², s the raw step)",
                 "subject to"]
        width = max([5, *(len(nm) for nm in self.names)])
        for i, name in enumerate(self.names):
            ell = "estimated" if ells[i] is None else f"{ells[i]:g}"
            where = f"   {locations[i]}" if locations[i] else ""
            lines.append(f"  {'[' + name + ']':<{width + 2}}  (1 − 1ᵀξ)·g0[{i}] + G[{i},:] ξ "
                         f"+ (ℓ_{i}/2)(ξᵀSξ + diag(S)ᵀ|ξ|) ≤ −{self.margins[i]:g}"
                         f"   ℓ_{i} = {ell}{where}")
        lines.append(f"  {'[trust]':<{width + 2}}  ‖R ξ‖ ≤ {self.radius:g}             (‖D ξ‖ ≤ r)")
        lines += ["",
                  f"DPP parameters: g0 ({k}), E = G − g0·1ᵀ ({k}×{n}), R ({self.rows}×{n}), "
                  f"Qᵀs ({self.rows}), R_i = √(ℓ_i/2)·R, w_i = (ℓ_i/2)·diag(S) ≥ 0",
                  f"solver: {self.solver_name}; built once, re-solved every step"]
        return "\n".join(lines)
