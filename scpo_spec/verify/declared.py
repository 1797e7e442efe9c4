"""Declared plants (`system discrete`, `system ode`) over zonotopes: the equations' expressions in
affine arithmetic, mirroring systems/declared.py operation by operation (so each operation
encloses the evaluator's rounded intermediate), and the integrator's one-step map as written.

Every value is a one-component zonotope sharing the joint (x, u) generators; what is not linear
(products, quotients, sin, cos, tanh, powers) goes to the interval remainder e, never to a new
generator, so values computed on separate branches can be combined soundly.  Covered: + − ×
(of two values: the cross term rad·rad in e), / (by a value: its reciprocal's Taylor
remainder), unary −, ^ by a positive integer ≤ 4, sin, cos, tanh, tan, exp, sqrt, log, abs;
anything else raises
Unbounded naming it (reach.py turns it into Unsupported: UNDECIDED).
"""

from __future__ import annotations

import torch

from scpo_spec.language import expr as E
from scpo_spec.language.evaluate import BUILTIN_CONSTANTS
from scpo_spec.language.model import DEFAULTS, DiscreteSystem, Spec
from scpo_spec.systems.declared import _expanded
from scpo_spec.systems.expressions import Constant, ElementwiseCompiler
from scpo_spec.verify.zonotope import LIB_ERROR, TINY, U, Zono, activation, up

POW_REL = 1e-14  # torch.pow's relative error allowed (a few ulps)


class Unbounded(Exception):
    """Raised for a function the affine arithmetic does not bound (reach.Unsupported wraps)."""


def _pad(a: Zono, b: Zono) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(a.k, b.k)
    return a.padded(k), b.padded(k)


def _rad(z: Zono) -> torch.Tensor:
    return up(z.G.abs().sum(1), z.k)


def _rounded(c: torch.Tensor, G: torch.Tensor, e: torch.Tensor, rel: float = 2 * U) -> Zono:
    """(c, G) with remainder e plus `rel`·|result| for the evaluator's rounding and ours."""
    z = Zono(c, G, e)
    return Zono(c, G, up(e + rel * up(c.abs() + _rad(z) + e, 2), 2) + TINY)


def _is_number(v) -> bool:
    return isinstance(v, torch.Tensor)


def add(a, b, sign: float = 1.0):
    if _is_number(a) and _is_number(b):
        return a + b if sign > 0 else a - b
    if _is_number(a):  # c ± z
        z = scale(b, sign)
        return _rounded(z.c + float(a), z.G, z.e)
    if _is_number(b):
        return _rounded(a.c + sign * float(b), a.G, a.e)
    Ga, Gb = _pad(a, b)
    return _rounded(a.c + sign * b.c, Ga + sign * Gb, a.e + b.e)


def scale(z: Zono, k: float, rel: float = 2 * U) -> Zono:
    k = float(k)
    if k in (1.0, -1.0, 2.0, -2.0):  # exact (×2 never rounds short of overflow)
        return Zono(z.c * k, z.G * k, z.e * abs(k))
    return _rounded(z.c * k, z.G * k, z.e * abs(k), rel)


def mul(a, b):
    if _is_number(a) and _is_number(b):
        return a * b
    if _is_number(a):
        return scale(b, float(a))
    if _is_number(b):
        return scale(a, float(b))
    Ga, Gb = _pad(a, b)
    ra, rb = _rad(a) + a.e, _rad(b) + b.e
    cross = up(ra * rb, 2)  # (Ga ε + δa)(Gb ε + δb)
    e = a.c.abs() * b.e + b.c.abs() * a.e + cross
    return _rounded(a.c * b.c, a.c.unsqueeze(1) * Gb + b.c.unsqueeze(1) * Ga, up(e, 4))


def reciprocal(z: Zono) -> Zono:
    """1/y = 1/c − (y − c)/c² + R, |R| ≤ r²/m³ with m = min |y| over c ± r (Taylor, Lagrange
    form: f″ = 2/y³).  A cell whose interval holds 0 gets NaN (unbounded: never proved)."""
    r = _rad(z) + z.e
    m = (z.c.abs() - r) * (1 - 4 * U)
    inv = 1 / z.c
    lam = -(inv * inv)
    e = (lam.abs() * z.e * (1 + 4 * U) + r * r / (m * m * m) * (1 + 16 * U)
         + 4 * U * (inv.abs() + r * inv * inv) + TINY)
    out = _rounded(inv, lam.unsqueeze(1) * z.G, up(e, 4))
    out.c = torch.where(m > 0, out.c, torch.nan)
    return out


def div(a, b):
    if _is_number(a) and _is_number(b):
        return a / b
    if not _is_number(b):  # a·(1/b): the evaluator's one rounding of a / b is within
        return mul(a, reciprocal(b))  # the product's own rounding term
    k = float(b)
    # torch may divide by a number as a multiplication by its reciprocal: 2 roundings
    return _rounded(a.c / k, a.G / k, a.e / abs(k), 4 * U)


def power(a, b):
    if _is_number(a) and _is_number(b):
        return torch.pow(a, b)
    if not _is_number(b) or float(b) != int(float(b)) or not 1 <= float(b) <= 4:
        raise Unbounded("a power other than ^1 … ^4 of a state or input")
    out = a
    for _ in range(int(float(b)) - 1):
        out = mul(out, a)
    mag = up(out.c.abs() + _rad(out) + out.e, 2)
    return Zono(out.c, out.G, out.e + POW_REL * mag + TINY)


def _trig(z: Zono, f, df) -> Zono:
    """f(c) + f′(c)(x − c) + R for f = sin or cos: |R| ≤ r²/2·min(1, |f(c)| + r), plus the
    library's error (here twice, in the evaluator once)."""
    r = _rad(z) + z.e
    f0, lam = f(z.c), df(z.c)
    curvature = torch.clamp(f0.abs() + LIB_ERROR + r, max=1.0)
    e = lam.abs() * z.e + r * r / 2 * curvature + LIB_ERROR * (3 + r)
    return _rounded(f0, lam.unsqueeze(1) * z.G, up(e, 4))


SMOOTH_REL = 1e-14  # relative error allowed to torch's tan, exp, log, sqrt and to ours


def _smooth(z: Zono, name: str) -> Zono:
    """f(c) + f′(c)(x − c) + R, |R| ≤ r²/2·max|f″| over [c − r, c + r] (Taylor, Lagrange form),
    for tan (|x| < π/2), exp, sqrt and log (x > 0); plus SMOOTH_REL of |f| for the library's
    error here and in the evaluator.  Where the interval leaves f's domain the cell gets NaN
    (never proved)."""
    r = _rad(z) + z.e
    c = z.c
    lo, hi = c - r, c + r
    slack = 1 + 1e-12
    if name == "tan":
        m = torch.maximum(lo.abs(), hi.abs()) * slack
        ok = m < torch.pi / 2 - 1e-9
        f0, lam = torch.tan(c), 1 / torch.cos(c) ** 2
        curv = 2 * torch.tan(m).abs() / torch.cos(m) ** 2 * slack
    elif name == "exp":
        ok = torch.ones_like(c, dtype=torch.bool)
        f0 = lam = torch.exp(c)
        curv = torch.exp(hi) * slack
    elif name == "sqrt":
        low = lo * (1 - 1e-12)
        ok = low > 0
        f0 = torch.sqrt(c)
        lam = 0.5 / f0
        curv = 0.25 / (low * torch.sqrt(low)) * slack
    else:  # log
        low = lo * (1 - 1e-12)
        ok = low > 0
        f0, lam = torch.log(c), 1 / c
        curv = 1 / (low * low) * slack
    remainder = r * r / 2 * curv
    lib = 2 * SMOOTH_REL * (f0.abs() + lam.abs() * r + remainder + 1)
    e = lam.abs() * z.e + remainder + lib
    out = _rounded(f0, lam.unsqueeze(1) * z.G, up(e, 4))
    out.c = torch.where(ok, out.c, torch.nan)
    return out


def _abs(z: Zono) -> Zono:
    """|x| = λx + g(x) with g's extremes over [l, u] at l, 0 (if inside) and u (|·| is exact)."""
    r = _rad(z) + z.e
    lo, hi = z.c - r, z.c + r
    lam = torch.where(lo >= 0, 1.0, torch.where(hi <= 0, -1.0, (hi + lo) / (hi - lo)))
    lam = torch.nan_to_num(lam, nan=0.0).clamp(-1, 1)
    ends = torch.stack([lo.abs() - lam * lo, hi.abs() - lam * hi,
                        torch.where((lo < 0) & (hi > 0), 0.0, lo.abs() - lam * lo)])
    slack = 4 * U * (lo.abs() + hi.abs()) + TINY
    g_lo, g_hi = ends.amin(0) - slack, ends.amax(0) + slack
    mu = (g_lo + g_hi) / 2
    beta = (g_hi - g_lo) / 2 + 2 * U * (g_lo.abs() + g_hi.abs()) + TINY
    return _rounded(lam * z.c + mu, lam.unsqueeze(1) * z.G, up(beta + lam.abs() * z.e, 4))


def _tanh(z: Zono) -> Zono:
    out = activation(z, "tanh")  # its last D = 1 generator is fresh: fold it into e
    return Zono(out.c, out.G[:, :z.k], out.e + out.G[:, z.k:].abs().sum(1))


_FUNCS = {
    torch.add: lambda a, b: add(a, b),
    torch.sub: lambda a, b: add(a, b, -1.0),
    torch.mul: mul, torch.div: div, torch.pow: power,
    torch.neg: lambda a: -a if _is_number(a) else Zono(-a.c, -a.G, a.e),
    torch.sin: lambda a: torch.sin(a) if _is_number(a) else _trig(a, torch.sin, torch.cos),
    torch.cos: lambda a: torch.cos(a) if _is_number(a) else _trig(
        a, torch.cos, lambda c: -torch.sin(c)),
    torch.tanh: lambda a: torch.tanh(a) if _is_number(a) else _tanh(a),
    torch.abs: lambda a: torch.abs(a) if _is_number(a) else _abs(a),
    **{fn: (lambda a, fn=fn: fn(a) if _is_number(a) else _smooth(a, fn.__name__))
       for fn in (torch.tan, torch.exp, torch.sqrt, torch.log)},
}


class AffineEquations(ElementwiseCompiler):
    """A declared equation → ctx = (x components, u components) ↦ a one-component Zono (or a
    number)."""

    def __init__(self, states: list[str], inputs: list[str], consts: dict):
        self.states, self.inputs, self.consts = states, inputs, consts

    def constant(self, value):
        from scpo_spec.dtype import DTYPE
        return torch.as_tensor(value, dtype=DTYPE)

    def combine(self, fn, values):
        if all(_is_number(v) for v in values):
            return fn(*values)  # folded as the evaluator folds it
        op = _FUNCS.get(fn)
        if op is None:
            raise Unbounded(f"the function {getattr(fn, '__name__', fn)}")
        return op(*values)

    def name(self, e: E.Name):
        if e.id in self.states:
            i = self.states.index(e.id)
            return lambda ctx: ctx[0][i]
        if e.id in self.inputs:
            j = self.inputs.index(e.id)
            return lambda ctx: ctx[1][j]
        value = self.consts.get(e.id, BUILTIN_CONSTANTS.get(e.id))
        return Constant(self.constant(float(value)))

    def special(self, e: E.Node):
        raise Unbounded(f"'{E.unparse(e)}'")


def observation_map(spec: Spec, exprs: list):
    """A controller's declared observation: x components ↦ o components (one-component
    zonotopes), as systems/declared.py's `compile_observation` computes them (lets expanded);
    affine expressions keep every generator, the rest go through this affine arithmetic."""
    consts = {c.name: c.value.value for c in spec.consts}
    compiler = AffineEquations([s.name for s in spec.system.states], [], consts)
    parts = [compiler.value(_expanded(spec, e)) for e in exprs]

    def observe(x: list) -> list:
        out = []
        for p in parts:
            v = p((x, []))
            if _is_number(v):  # a constant entry: the same number in every cell
                v = Zono(torch.full_like(x[0].c, float(v)), torch.zeros_like(x[0].G),
                         torch.zeros_like(x[0].e))
            out.append(v)
        return out
    return observe


def declared_step(spec: Spec):
    """(x components, u components) ↦ x⁺ components, as systems/declared.py computes them."""
    system = spec.system
    consts = {c.name: c.value.value for c in spec.consts}
    compiler = AffineEquations([s.name for s in system.states],
                               [s.name for s in system.inputs], consts)
    if isinstance(system, DiscreteSystem):
        eqs = {eq.state.name: compiler.value(_expanded(spec, eq.expr)) for eq in system.next}
    else:
        eqs = {eq.state.name: compiler.value(_expanded(spec, eq.expr)) for eq in system.der}
    parts = [eqs[s.name] for s in system.states]

    def f(x: list, u: list) -> list:
        out = []
        for p in parts:
            v = p((x, u))
            if _is_number(v):  # a constant equation: the same number in every cell
                like = x[0]
                v = Zono(torch.full_like(like.c, float(v)), torch.zeros_like(like.G),
                         torch.zeros_like(like.e))
            out.append(v)
        return out
    if isinstance(system, DiscreteSystem):
        return f
    method = system.integrator.name if system.integrator is not None \
        else DEFAULTS[("system ode", "integrator")]
    substeps = int(system.substeps) if system.substeps is not None \
        else DEFAULTS[("system ode", "substeps")]
    h = float(system.dt) / substeps

    def axpy(x, k, y):  # x + k * y, componentwise, as the evaluator's tensors do
        return [add(a, scale(b, k)) for a, b in zip(x, y)]

    def one(x, u):
        if method == "euler":
            return axpy(x, h, f(x, u))
        if method == "midpoint":
            return axpy(x, h, f(axpy(x, h / 2, f(x, u)), u))
        k1 = f(x, u)
        k2 = f(axpy(x, h / 2, k1), u)
        k3 = f(axpy(x, h / 2, k2), u)
        k4 = f(axpy(x, h, k3), u)
        s = [add(add(add(a, scale(b, 2)), scale(c, 2)), d) for a, b, c, d in zip(k1, k2, k3, k4)]
        return axpy(x, h / 6, s)

    def step(x, u):
        for _ in range(substeps):
            x = one(x, u)
        return x
    return step
