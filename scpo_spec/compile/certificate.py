"""The certificate of ALGORITHM.md step 4, in numpy only: the engine computes it and the audit
(which must not need torch or a solver) recomputes it with this same code."""

from __future__ import annotations

import numpy as np


def certificate_terms(g0: np.ndarray, G: np.ndarray, S: np.ndarray,
                      xi: np.ndarray) -> tuple[np.ndarray, float]:
    """The linear part (1 − 1ᵀξ)·g0 + Gξ (per metric) and the curvature factor
    ξᵀSξ + |ξ|ᵀdiag(S) that ℓ_i/2 multiplies."""
    quad = float(xi @ S @ xi) + float(np.abs(xi) @ np.diag(S))
    return (1.0 - xi.sum()) * g0 + G @ xi, quad


def rounding_error(g0: np.ndarray, G: np.ndarray, S: np.ndarray, ell: np.ndarray,
                   xi: np.ndarray) -> np.ndarray:
    """A bound on the floating-point error of `certificate` (per metric): (n + 4)·ε times the
    same sum taken over absolute values.  When ξ is large (a bank direction of tiny norm) the
    certificate is a small difference of huge terms, and its last bits depend on the BLAS and
    the memory layout; a certificate proves g ≤ −margin only by more than this."""
    a = np.abs(xi)
    size = abs(1.0 - xi.sum()) * np.abs(g0) + np.abs(G) @ a \
        + 0.5 * ell * (float(a @ np.abs(S) @ a) + float(a @ np.abs(np.diag(S))))
    return (xi.shape[0] + 4) * np.finfo(np.float64).eps * size


def certificate(g0: np.ndarray, G: np.ndarray, S: np.ndarray, ell: np.ndarray,
                xi: np.ndarray) -> np.ndarray:
    """The upper bound on g_i(θ + Dξ), per metric (k,):
    (1 − 1ᵀξ)·g0 + Gξ + (ℓ/2)(ξᵀSξ + |ξ|ᵀdiag(S))."""
    linear, quad = certificate_terms(g0, G, S, xi)
    return linear + 0.5 * ell * quad
