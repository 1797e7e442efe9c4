"""`scpo calibrate`: what the rollouts say about each metric's smoothness constant ℓ near θ₀.

ALGORITHM.md assumes |g(θ+Δ) − g(θ) − ∇g(θ)ᵀΔ| ≤ (ℓ/2)‖Δ‖² for ‖Δ‖ ≤ r.  Adding the bound at +d
and at −d cancels the unknown gradient:

    c(d) = |g(θ+d) + g(θ−d) − 2g(θ)| / ‖d‖²  ≤  ℓ        for every ‖d‖ ≤ r,

so each sampled c(d) is a lower bound on any ℓ the assumption can hold with: an ℓ below it is
*refuted* by two rollouts, no gradient needed.  The converse does not hold: a finite sample of
directions sees the curvature along those directions only (random directions in d dimensions see
roughly the average curvature, not the worst), so the suggested ℓ = factor × the largest c seen is
an estimate, and the certificate then rests on it.  The direction of the objective's gradient at θ₀
(where the first raw steps go) is sampled too, because curvature there is what training meets first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.dtype import DTYPE

FLOOR = 1e-6        # the smallest ℓ suggested (a spec's ℓ must be > 0)
KINK = 0.5          # c ∝ ρ^−p with p ≥ this between the smallest radii: not smooth at θ₀
LOOSE = 10.0        # spec ℓ ≥ LOOSE × suggested: safe but the certified steps will be short
STATEMENT = ("a suggestion from samples is an estimate: the certificate then rests on it; the "
             "rollout verification still checks every step, and a refuted certificate doubles ℓ")


def radii_between(nu: float, r: float, count: int) -> list[float]:
    """`count` radii spaced geometrically from the probe size ν to the trust radius r: the scales
    the engine's steps actually take (probes at ν, raw steps up to r)."""
    lo, hi = min(nu, r), r
    if count <= 1 or lo >= hi:
        return [hi]
    return [float(lo * (hi / lo) ** (i / (count - 1))) for i in range(count)]


def round_up(x: float, digits: int = 2) -> float:
    """x rounded up to `digits` significant digits (a number to write in a spec, never below x)."""
    if not x > 0 or not math.isfinite(x):
        return x
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    k = math.ceil(x / step * (1 - 1e-12))  # 120 stays 120, not 130
    fmt = lambda n: float(f"{n * step:.{digits}g}")  # noqa: E731 - no 1.2000000000000002e2
    return fmt(k) if fmt(k) >= x else fmt(k + 1)


@dataclass
class MetricCalibration:
    """One metric: the largest |second difference|/ρ² per radius and what it implies for ℓ."""

    name: str
    location: str
    margin: float
    spec_ell: float | None       # None: `smoothness estimate`
    g0: float
    curvature: list[float]       # per radius, max over directions (nan: no finite sample)
    along_gradient: list[float]  # per radius, along the objective's gradient (nan: not sampled)
    nonfinite: list[int]         # per radius, directions whose rollout at ±ρu was not finite
    observed: float              # max over radii (nan: nothing finite)
    suggested: float             # factor × observed, floored, rounded up
    verdict: str                 # refuted | tight | ok | loose | no ℓ | not finite
    growth: float = math.nan     # c ∝ ρ^−growth between the two smallest radii (≥ KINK: a kink)

    @property
    def kink(self) -> bool:
        """Curvature that grows as ρ shrinks: g is not smooth at θ₀ (a max over scenarios or
        steps switching, a double eigenvalue), so no ℓ covers the smallest steps."""
        return self.growth >= KINK

    def as_dict(self) -> dict:
        nan = lambda v: None if not math.isfinite(v) else v  # noqa: E731 - JSON has no NaN
        return {"name": self.name, "location": self.location, "margin": self.margin,
                "spec_ell": self.spec_ell, "g0": nan(self.g0),
                "curvature": [nan(c) for c in self.curvature],
                "along_gradient": [nan(c) for c in self.along_gradient],
                "nonfinite": self.nonfinite, "observed": nan(self.observed),
                "suggested": nan(self.suggested), "verdict": self.verdict,
                "refuted": self.verdict == "refuted", "growth": nan(self.growth),
                "kink": self.kink}


@dataclass
class Calibration:
    spec: str
    d: int
    radii: list[float]
    directions: int
    factor: float
    seed: int
    radius: float                # the spec's r
    perturbation: float          # the spec's ν
    gradient: bool               # whether the objective's gradient direction was sampled
    metrics: list[MetricCalibration]
    # per radius × direction × metric: c(d) (nan where not finite); the last direction is the
    # gradient's when `gradient`
    samples: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0, 0)))

    @property
    def finite_radius(self) -> float | None:
        """The largest sampled radius at which every rollout was finite (None: not even ν)."""
        ok = [rho for i, rho in enumerate(self.radii)
              if all(m.nonfinite[i] == 0 for m in self.metrics)]
        return max(ok) if ok else None

    @property
    def suggested_radius(self) -> float | None:
        """A trust radius the samples did not contradict: r itself when every rollout was finite,
        else the largest radius with only finite rollouts (None if there is none)."""
        return self.radius if self.finite_radius == max(self.radii) else self.finite_radius

    def as_dict(self) -> dict:
        return {"spec": self.spec, "d": self.d, "radii": self.radii,
                "directions": self.directions, "gradient_direction": self.gradient,
                "factor": self.factor, "seed": self.seed, "radius": self.radius,
                "perturbation": self.perturbation,
                "metrics": [m.as_dict() for m in self.metrics],
                "all_finite": self.finite_radius == max(self.radii),
                "suggested_radius": self.suggested_radius, "statement": STATEMENT}


def unit_directions(d: int, count: int, seed: int) -> torch.Tensor:
    """`count` random unit directions (count, d) from a generator seeded with `seed`: the same
    spec and options always probe the same directions."""
    z = torch.randn(count, d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    return z / z.norm(dim=1, keepdim=True)


def gradient_direction(compiled: CompiledSpec, theta: torch.Tensor) -> torch.Tensor | None:
    """The unit direction of −∇L(θ₀) (the first raw step's), or None when it is zero or not
    finite."""
    _, grad = compiled.objective.loss_and_grad(theta)
    norm = float(grad.norm())
    if not (norm > 0 and math.isfinite(norm)):
        return None
    return (-grad / norm).to(DTYPE)


def second_differences(evaluator, theta: torch.Tensor, U: torch.Tensor, rho: float,
                       g0: np.ndarray) -> np.ndarray:
    """|g(θ+ρu) + g(θ−ρu) − 2g(θ)| / ρ² per direction and metric (M, k), nan where a rollout was
    not finite; one batched evaluation of the 2M candidates."""
    thetas = theta[None] + rho * torch.cat([U, -U], dim=0)
    g = evaluator(thetas).cpu().numpy().astype(np.float64)
    M = U.shape[0]
    plus, minus = g[:M], g[M:]
    with np.errstate(invalid="ignore", over="ignore"):
        c = np.abs(plus + minus - 2.0 * g0[None]) / rho ** 2
    finite = np.isfinite(plus) & np.isfinite(minus) & np.isfinite(g0)[None]
    return np.where(finite, c, np.nan)


def _max(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else math.nan


def _growth(curvature: list[float], rhos: list[float], g0: float) -> float:
    """p in c ∝ ρ^−p between the two smallest radii: 0 for a smooth g (c levels off as ρ → 0),
    1 for a kink (a jump in slope seen across ±ρu), 1.5 at a double eigenvalue.  A second
    difference at rounding level (≤ 1e-10·|g|) grows like ρ⁻² too and is not counted."""
    if len(rhos) < 2:
        return math.nan
    (c0, c1), (r0, r1) = curvature[:2], rhos[:2]
    if not (c0 > 0 and c1 > 0 and r1 > r0 and c0 * r0 ** 2 > 1e-10 * max(1.0, abs(g0))):
        return math.nan
    return math.log(c0 / c1) / math.log(r1 / r0)


def _verdict(spec_ell: float | None, observed: float, suggested: float, nonfinite: int) -> str:
    if not math.isfinite(observed):
        return "not finite"
    if spec_ell is not None and spec_ell < observed:
        return "refuted"
    if nonfinite:
        return "not finite"
    if spec_ell is None:
        return "no ℓ"
    if spec_ell < suggested:
        return "tight"
    return "loose" if spec_ell >= LOOSE * suggested else "ok"


def calibrate(compiled: CompiledSpec, radii: int = 5, directions: int = 32, factor: float = 2.0,
              gradient: bool = True, evaluator=None) -> Calibration:
    """Probe g around θ₀ along `directions` seeded random unit directions (and −∇L(θ₀)) at
    `radii` radii from ν to r, one batched evaluation per radius, and turn the largest observed
    curvature of each metric into a suggested ℓ = factor × observed (rounded up)."""
    if radii < 1 or directions < 1:
        raise ValueError("radii and directions must be at least 1")
    if not factor >= 1.0:
        raise ValueError("the safety factor must be at least 1")
    s = compiled.settings
    ev = evaluator if evaluator is not None else compiled.evaluator
    theta = compiled.family.theta0.detach().to(DTYPE)
    rhos = radii_between(s.perturbation, s.radius, radii)
    U = unit_directions(compiled.family.d, directions, s.seed)
    grad_dir = gradient_direction(compiled, theta) if gradient else None
    if grad_dir is not None:
        U = torch.cat([U, grad_dir[None]], dim=0)
    g0 = ev(theta[None]).cpu().numpy().astype(np.float64)[0]
    samples = np.stack([second_differences(ev, theta, U, rho, g0) for rho in rhos])  # (R, M, k)
    out = []
    for i, m in enumerate(ev.metrics):
        per_radius = [_max(samples[j, :, i]) for j in range(len(rhos))]
        along = ([float(samples[j, -1, i]) for j in range(len(rhos))] if grad_dir is not None
                 else [math.nan] * len(rhos))
        nonfinite = [int(np.isnan(samples[j, :, i]).sum()) for j in range(len(rhos))]
        observed = _max(np.array(per_radius))
        suggested = (round_up(max(factor * observed, FLOOR)) if math.isfinite(observed)
                     else math.nan)
        out.append(MetricCalibration(
            name=m.name, location=m.location, margin=m.margin, spec_ell=m.smoothness,
            g0=float(g0[i]), curvature=per_radius, along_gradient=along, nonfinite=nonfinite,
            observed=observed, suggested=suggested,
            verdict=_verdict(m.smoothness, observed, suggested, sum(nonfinite)),
            growth=_growth(per_radius, rhos, float(g0[i]))))
    name = compiled.spec.name.name if compiled.spec.name else ""
    return Calibration(spec=name, d=compiled.family.d, radii=rhos, directions=directions, factor=factor, seed=s.seed, radius=s.radius,
                       perturbation=s.perturbation, gradient=grad_dir is not None, metrics=out,
                       samples=samples)
