"""A certificate that is a small difference of huge terms (ξ large along a bank direction of tiny
norm) is only known to its rounding error: the engine certifies by more than it, and the audit
recomputes to within it (found: a genuine 400-step run whose audit said 'the logged certificate
does not recompute' at three steps with |ξ| ~ 5e7)."""

import numpy as np
import pytest

from scpo_spec.audit.verify import audit_run
from scpo_spec.compile.certificate import certificate, rounding_error
from scpo_spec.compile.projection import certified_scale
from tests.engine_specs import small_di, spec_of, write_spec


def _ill_conditioned(seed=0):
    rng = np.random.default_rng(seed)
    n, k = 18, 3
    D = rng.normal(size=(n, 50))
    D[1] *= 1e-7                                   # one direction of tiny norm
    S = D @ D.T
    xi = rng.normal(size=n)
    xi[1] = -4.7e7                                 # …and a huge coefficient on it
    G = rng.normal(size=(k, n))
    g0 = -np.abs(rng.normal(size=k))
    return g0, G, S, np.array([50.0, 4e5, 20.0]), xi


def test_layouts_differ_by_less_than_the_rounding_bound():
    g0, G, S, ell, xi = _ill_conditioned()
    a = certificate(g0, G, S, ell, xi)
    b = certificate(g0, np.asfortranarray(G), np.asfortranarray(S), ell, xi[::-1].copy()[::-1])
    r = rounding_error(g0, G, S, ell, xi)
    assert np.all(np.abs(a - b) <= 2 * r)
    assert np.all(r > 1e-10)                       # the bound is not vacuous here …
    small = rounding_error(g0, G, S, np.ones(3), np.full(18, 1e-3))
    assert np.all(small < 1e-13)                   # … and negligible for an ordinary step


def test_the_engine_certifies_by_more_than_the_rounding_error():
    g0, G, S, ell, xi = _ill_conditioned()
    g0 = np.full(3, -2.0)                          # θ itself is safe: ξ = 0 is certified
    cert = certificate(g0, G, S, ell, xi)
    G[:, 0] += (-1.0 - cert) / xi[0]               # now certificate(ξ) ≈ −1 for every metric
    cert, r = certificate(g0, G, S, ell, xi), rounding_error(g0, G, S, ell, xi)
    bound = cert + r / 2                           # holds, but only within its rounding error
    assert np.all(cert <= bound)
    alpha = certified_scale(g0, G, S, ell, xi, bound)
    assert alpha < 1.0
    x = alpha * xi
    assert np.all(certificate(g0, G, S, ell, x) + rounding_error(g0, G, S, ell, x) <= bound)


@pytest.mark.slow
def test_a_long_run_that_stalls_on_a_kink_audits_clean(tmp_path):
    from scpo_spec.engine.run import train
    text = small_di(steps=400)
    path = write_spec(tmp_path, text)
    res = train(path, spec_of(text, tmp_path), text, out=tmp_path / "run")
    audit = audit_run(res.run_dir)
    assert audit.certificates_ok, audit.problems
    assert audit.accepted_violations == 0
