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


def certificate(g0: np.ndarray, G: np.ndarray, S: np.ndarray, ell: np.ndarray,
                xi: np.ndarray) -> np.ndarray:
    """The upper bound on g_i(θ + Dξ), per metric (k,):
    (1 − 1ᵀξ)·g0 + Gξ + (ℓ/2)(ξᵀSξ + |ξ|ᵀdiag(S))."""
    linear, quad = certificate_terms(g0, G, S, xi)
    return linear + 0.5 * ell * quad
