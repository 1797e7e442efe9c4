"""Batched zonotopes with an interval remainder, sound for float64 evaluation.

A set of N cells' vectors is `Zono(c, G, e)`: {c + εᵀG + δ : ε ∈ [−1, 1]^k, |δ| ≤ e} with
c (N, D), G (N, k, D) and e (N, D) ≥ 0.  The generators carry the correlations that keep a
linear map exact (a box through A + BK grows whenever ‖|A + BK|‖ > 1, a zonotope does not);
e collects the rounding errors, tiny independent terms not worth a generator each.

Every operation encloses what the ORDINARY evaluator computes in float64 (docs/verify.md):
a dot product of N terms computed in any order, with or without fused multiply-adds, differs
from the exact one by at most γ_N·Σ|terms| (γ_N = N·u/(1 − N·u), u = 2⁻⁵³; Higham, Thm 3.1);
our own center and generators are computed in float64 too, so each affine map adds 2·γ_N·Σ|terms|
(the evaluator's rounding and ours), rounded up.  Activations are enclosed by the min-area
(DeepZ) parallelogram (tanh, σ, relu; for the convex elu and softplus the chord's slope, the
tangent at the midpoint below), computed so that it stays sound after rounding, widened by the
library's error (ACT_ERROR).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scpo_spec.dtype import DTYPE

U = 2.0 ** -53           # unit roundoff of float64
TINY = 2.0 ** -1000      # covers underflow: every term of a dot product may lose 2⁻¹⁰⁷⁵
ACT_ERROR = 1e-15        # |tanh, σ as the evaluator computes them − exact|: the fast tanh
#                          2σ(2z) − 1 is within 3.4e-16 of torch.tanh, torch's are within ~1 ulp
LIB_ERROR = 1e-15        # |numpy/torch tanh, cosh-based slopes, σ here − exact| (≤ 1 in size)


def gamma(n: int) -> float:
    """γ_n = n·u / (1 − n·u): the relative error bound of an n-term float64 sum of products."""
    return n * U / (1 - n * U)


def up(x: torch.Tensor, terms: int) -> torch.Tensor:
    """A nonnegative quantity computed by sums of `terms` nonnegative products, rounded up so it
    bounds the exact value: fl(s) ≥ s·(1 − γ) ⇒ s ≤ fl(s)·(1 + 4γ) + TINY."""
    return x * (1 + 4 * gamma(terms + 2)) + TINY


@dataclass
class Zono:
    c: torch.Tensor   # (N, D)
    G: torch.Tensor   # (N, k, D)
    e: torch.Tensor   # (N, D) ≥ 0

    @classmethod
    def box(cls, lo: torch.Tensor, hi: torch.Tensor) -> "Zono":
        """The boxes [lo, hi] (N, D), enclosed: c ± r ⊇ [lo, hi] after rounding."""
        c = (lo + hi) / 2
        r = torch.maximum(hi - c, c - lo)
        r = torch.nextafter(r, torch.full_like(r, torch.inf))
        return cls(c, torch.diag_embed(r), torch.zeros_like(c))

    @property
    def k(self) -> int:
        return self.G.shape[1]

    def radius(self) -> torch.Tensor:
        """Σ_j |G_j| + e, rounded up: |x − c| ≤ radius for every x in the set."""
        return up(self.G.abs().sum(1) + self.e, self.k + 1)  # one rounding-up for the sum

    def hull(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The interval hull [lo, hi] (N, D), rounded outward."""
        r = self.radius()
        return (torch.nextafter(self.c - r, torch.full_like(r, -torch.inf)),
                torch.nextafter(self.c + r, torch.full_like(r, torch.inf)))

    def magnitude(self) -> torch.Tensor:
        """An upper bound of |x| per component."""
        return up(self.c.abs() + self.radius(), 2)

    def padded(self, k: int) -> torch.Tensor:
        """G with zero generators appended up to k (symbols shared with a later set)."""
        if self.k == k:
            return self.G
        return torch.cat([self.G, self.G.new_zeros(self.G.shape[0], k - self.k,
                                                   self.G.shape[2])], 1)


def affine(parts: list[tuple[Zono, torch.Tensor]], bias: torch.Tensor | None) -> Zono:
    """Σ_i x_i W_iᵀ + b for zonotopes x_i (sharing their leading generators) and W_i (out, in_i),
    as the evaluator computes it: one dot product of Σ in_i (+1) terms per output, in any order.
    """
    k = max(z.k for z, _ in parts)
    terms = sum(W.shape[1] for _, W in parts) + (bias is not None) + 1
    c = sum(z.c @ W.T for z, W in parts)
    G = sum(_rows(z.padded(k), W.T) for z, W in parts)
    magnitude = sum(z.magnitude() @ W.abs().T for z, W in parts)
    carried = sum(z.e @ W.abs().T for z, W in parts)  # the remainders, through |W|
    if bias is not None:
        c = c + bias
        magnitude = magnitude + bias.abs()
    e = up(carried, terms) + 2 * gamma(terms) * up(magnitude, terms)
    return Zono(c, G, up(e, 2))


def _rows(G: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """G (N, k, D) @ M (D, out) as one 2-D matmul (torch's batched-broadcast path is ~100×
    slower for these shapes)."""
    N, k, D = G.shape
    return (G.reshape(N * k, D) @ M).view(N, k, M.shape[1])


def with_new_generators(z: Zono, radius: torch.Tensor) -> Zono:
    """z's set plus the box |δ| ≤ radius (N, D) as D fresh generators (kept correlated through
    later linear maps); z's own remainder e is folded in too."""
    return Zono(z.c, torch.cat([z.G, torch.diag_embed(up(radius + z.e, 2))], 1),
                torch.zeros_like(z.e))


def reduce(z: Zono, keep: int) -> Zono:
    """Girard's reduction: the `keep` generators of largest ‖g‖₁ − ‖g‖∞ stay, the rest (and e)
    become one box (D generators).  Bounds the cost over the horizon; sound (a box encloses
    the sum of the boxed segments)."""
    N, k, D = z.G.shape
    if k <= keep + D:
        return with_new_generators(z, torch.zeros_like(z.e)) if z.e.any() else z
    a = z.G.abs()
    score = a.sum(2) - a.amax(2)
    idx = torch.topk(score, keep, dim=1).indices
    mask = torch.zeros(N, k, dtype=torch.bool, device=z.G.device)
    mask.scatter_(1, idx, True)
    kept = torch.gather(z.G, 1, idx.unsqueeze(2).expand(N, keep, D))
    boxed = up((a * (~mask).unsqueeze(2)).sum(1), k)
    return with_new_generators(Zono(z.c, kept, z.e), boxed)


# ---- activations: out ∈ λ·z + μ ± β for every z in [l, u], then ± the library's error ----
def _slope_tanh(z: torch.Tensor) -> torch.Tensor:
    return 1 / torch.cosh(z) ** 2  # relative error a few ulps, no cancellation (unlike 1 − t²)


def _slope_sigmoid(z: torch.Tensor) -> torch.Tensor:
    q = torch.exp(-z.abs())
    return q / (1 + q) ** 2


def _critical_tanh(lam: torch.Tensor) -> torch.Tensor:
    """z ≥ 0 where tanh′(z) = λ (λ clamped into (0, 1]: any value serves, see _s_shaped)."""
    return torch.acosh(1 / torch.sqrt(lam.clamp(1e-300, 1.0)))


def _critical_sigmoid(lam: torch.Tensor) -> torch.Tensor:
    """z ≥ 0 where σ′(z) = λ: σ′(z) = (1 − tanh²(z/2))/4."""
    return 2 * torch.atanh(torch.sqrt(1 - 4 * lam.clamp(1e-300, 0.25)))


# f, f′, the largest slope and f there (at 0, exact), the point where f′ = λ on z ≥ 0
_S_SHAPED = {"tanh": (torch.tanh, _slope_tanh, 1.0, 0.0, _critical_tanh),
             "sigmoid": (torch.sigmoid, _slope_sigmoid, 0.25, 0.5, _critical_sigmoid)}


def _s_shaped(name: str, l: torch.Tensor, u: torch.Tensor):
    """(λ, lo, hi): f(z) − λz ∈ [lo, hi] for every z in [l, u], f = tanh or σ computed exactly
    (the caller adds the evaluator's error), rounding of this computation included.

    λ is the chord's slope: over the trained double
    integrator it keeps the reach set at step 60 within 1.05 × the sampled spread with 16
    cells, where DeepZ's min(f′(l), f′(u)) gave 1.31 (its error term, one fresh generator per
    neuron, is 2–4× larger).  Any λ is sound: g = f − λz is convex on z ≤ 0 and concave on
    z ≥ 0 (f's inflection is at 0), so on each part one end bounds g on one side and the
    tangent at a point t of the part bounds it on the other — for any t, the point where
    g′(t) = 0 only making it tight."""
    f, slope, steepest, f0, critical = _S_SHAPED[name]
    fl, fu = f(torch.stack([l, u]))
    # on a tiny interval the chord's cancellation only moves λ a little: any λ is sound, and
    # an error δ in λ adds δ·(u − l) to β; l = u gives 0/0, λ = 0, β = 0
    lam = torch.nan_to_num((fu - fl) / (u - l), nan=0.0).clamp(0, steepest)
    # the parts: [a, b] = [l, u] ∩ [0, ∞) (g concave), [c, d] = [l, u] ∩ (−∞, 0] (g convex),
    # stacked (2, N, D) with the side the tangent bounds (+1: g from above, −1: from below)
    sign = l.new_tensor([1.0, -1.0]).reshape(2, *([1] * l.dim()))
    left = torch.stack([torch.clamp(l, min=0.0), torch.clamp(l, max=0.0)])
    right = torch.stack([torch.clamp(u, min=0.0), torch.clamp(u, max=0.0)])
    f_left = torch.stack([torch.where(l >= 0, fl, f0), fl])
    f_right = torch.stack([fu, torch.where(u <= 0, fu, f0)])
    t = torch.minimum(torch.maximum(sign * critical(lam), left), right)  # near g′ = 0
    # sign·g ≤ sign·(g(t) + g′(t)(z − t)) on the part, for any t in it; the ends bound
    # sign·g from below (a concave function's min on an interval is at an end)
    slope_t = sign * (slope(t) - lam)
    tangent = sign * (f(t) - lam * t) + torch.maximum(slope_t * (left - t),
                                                      slope_t * (right - t))
    ends = torch.minimum(sign * (f_left - lam * left), sign * (f_right - lam * right))
    # every value computed above is within this of the exact one: f's library error and
    # the roundings of f(z) − λz (|z| ≤ M) and of the tangent's slope term (|g′| ≤ steepest)
    M = torch.maximum(l.abs(), u.abs())
    err = (2 * LIB_ERROR + 8 * U * (1 + lam * M)
           + (LIB_ERROR + 8 * U * steepest) * (u - l) * (1 + 4 * U) + TINY)
    inf = torch.full_like(l, torch.inf)
    pos, neg = u >= 0, l < 0
    g_hi = torch.maximum(torch.where(pos, tangent[0], -inf), torch.where(neg, -ends[1], -inf))
    g_lo = torch.minimum(torch.where(pos, ends[0], inf), torch.where(neg, -tangent[1], inf))
    return lam, g_lo - err, g_hi + err


def _elu(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z > 0, z, torch.expm1(torch.clamp(z, max=0)))


def _softplus(z: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(torch.zeros_like(z), z)  # log(1 + eᶻ), no threshold


# convex activations: f, f′, and |the evaluator's f − f| beyond the library's error: torch's
# softplus returns z itself above z = 20, short of log(1 + eᶻ) by log(1 + e⁻²⁰) < 2.1e-9
_CONVEX = {"elu": (_elu, lambda z: torch.where(z > 0, 1.0, torch.exp(torch.clamp(z, max=0))),
                   0.0),
           "softplus": (_softplus, torch.sigmoid, 2.1e-9)}
ACTIVATIONS = ("tanh", "sigmoid", "relu", "elu", "softplus", "identity")
COVERED = ", ".join(ACTIVATIONS) + ", leaky_relu:α and elu:α with 0 ≤ α ≤ 1"  # for messages


def _slope_of(name: str) -> float | None:
    """α of a parametrised `leaky_relu:α` / `elu:α` (policies/activations.py), else None."""
    base, _, arg = name.partition(":")
    if not arg or base not in ("leaky_relu", "elu"):
        return None
    try:
        return float(arg)
    except ValueError:
        return float("nan")  # not a number: relaxable() says no


def relaxable(name: str) -> bool:
    """Whether `activation` bounds `name` soundly: the plain names above, and LeakyRelu / Elu
    with 0 ≤ α ≤ 1 (then the one is piecewise linear with a kink at 0 and the other convex)."""
    alpha = _slope_of(name)
    if alpha is None:
        return name in ACTIVATIONS
    return 0.0 <= alpha <= 1.0


def _convex(name: str):
    if name in _CONVEX:
        return _CONVEX[name]
    alpha = _slope_of(name)  # elu:α, 0 ≤ α ≤ 1: α(eᶻ − 1) below 0, slopes in [0, 1]
    return (lambda z: torch.where(z > 0, z, alpha * torch.expm1(torch.clamp(z, max=0))),
            lambda z: torch.where(z > 0, 1.0, alpha * torch.exp(torch.clamp(z, max=0))), 0.0)


def activation(z: Zono, name: str) -> Zono:
    """The evaluator's activation over z, enclosed: λ·z + μ plus one fresh generator per
    neuron of radius β (+ the rounding and the library's error)."""
    if name == "identity":
        return z
    l, u = z.hull()
    if not relaxable(name):
        raise ValueError(f"no sound relaxation for the activation '{name}'")
    if name == "relu" or name.startswith("leaky_relu:"):
        a = _slope_of(name) or 0.0  # leaky: f(z) = z above 0, a·z below (0 ≤ a ≤ 1)

        def f(v):
            return torch.where(v > 0, v, a * v)
        lam = torch.where(l >= 0, torch.ones_like(l),
                          torch.where(u <= 0, torch.full_like(l, a), (f(u) - f(l)) / (u - l)))
        lam = torch.nan_to_num(lam, nan=a).clamp(a, 1)
        # f(z) − λz is piecewise linear: its extremes over [l, u] are at l, 0 (if inside), u
        ends = torch.stack([f(l) - lam * l, f(u) - lam * u,
                            torch.where((l < 0) & (u > 0), 0.0, f(l) - lam * l)])
        slack = 6 * U * (l.abs() + u.abs()) + TINY
        g_lo, g_hi = ends.amin(0) - slack, ends.amax(0) + slack
        # max(0, z) is exact; the evaluator's a·z is one rounding off a·z
        lib = 0.0 if a == 0.0 else U * (l.abs() + u.abs()) + TINY
    elif name in _S_SHAPED:
        lam, g_lo, g_hi = _s_shaped(name, l, u)
        lib = ACT_ERROR
    elif name in _CONVEX or name.startswith("elu:"):
        # g(z) = f(z) − λz is convex for any λ: its max over [l, u] is at an end, and it lies
        # above its tangent at the midpoint m; λ the chord's slope (f′(m) on a tiny interval)
        f, slope, beyond = _convex(name)
        fl, fu = f(l), f(u)
        m = (l + u) / 2
        wide = (u - l) > 1e-9 * (1 + l.abs() + u.abs())
        lam = torch.where(wide, (fu - fl) / torch.where(wide, u - l, 1.0), slope(m))
        lam = torch.nan_to_num(lam, nan=0.0).clamp(0, 1)
        err = LIB_ERROR * (1 + torch.maximum(fl.abs(), fu.abs()))  # of f here, per value
        g_hi = torch.maximum(fl - lam * l, fu - lam * u) + err
        fm, dm = f(m), slope(m) - lam
        r = torch.maximum(u - m, m - l)
        tangent = fm - lam * m - dm.abs() * r  # g(m) + g′(m)(z − m) ≥ this on [l, u]
        g_lo = tangent - err - LIB_ERROR * (1 + r)  # f(m) and f′(m)'s own errors
        g_hi = g_hi + 8 * U * (1 + (lam * l).abs() + (lam * u).abs() + fl.abs() + fu.abs())
        g_lo = g_lo - 8 * U * (1 + (lam * m).abs() + fm.abs() + dm.abs() * r)
        lib = ACT_ERROR * (1 + torch.maximum(fl.abs(), fu.abs())) + beyond
    else:
        raise ValueError(f"no sound relaxation for the activation '{name}'")
    mu = (g_lo + g_hi) / 2
    beta = (g_hi - g_lo) / 2 + 2 * U * (g_lo.abs() + g_hi.abs()) + TINY
    c = lam * z.c + mu
    G = lam.unsqueeze(1) * z.G
    rounding = 2 * U * (lam * z.magnitude() + mu.abs()) + TINY
    radius = beta + lib + lam * z.e + rounding
    out = Zono(c, torch.cat([G, torch.diag_embed(up(radius, 4))], 1),
               torch.zeros_like(z.e))
    bad = ~(torch.isfinite(l) & torch.isfinite(u))
    if bad.any():  # an unbounded neuron: the set is unbounded (the caller sees inf)
        out.c = torch.where(bad, torch.nan, out.c)
    return out


def as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=DTYPE)
