"""The backup controller u = K x: an LQR gain from the discrete-time Riccati equation (its P
kept for `lyapunov(backup)`), or a gain written in the spec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from scpo_spec.errors import ScpoError
from scpo_spec.language.model import LinearBackup, LqrBackup, Spec
from scpo_spec.systems.dynamics import Dynamics


class BackupError(ScpoError):
    """The backup cannot be built (e.g. the Riccati equation has no stabilising solution)."""


@dataclass
class Backup:
    K: np.ndarray                  # (m, n): u = K x
    P: np.ndarray | None = None    # LQR: V(x) = xᵀ P x


def lqr(A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray) -> Backup:
    """Discrete-time infinite-horizon LQR: P solves the DARE, K = −(R + BᵀPB)⁻¹ BᵀPA."""
    try:
        P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    except (np.linalg.LinAlgError, ValueError) as err:
        raise BackupError(f"the LQR Riccati equation has no stabilising solution: {err}") from None
    K = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    return Backup(K=K, P=(P + P.T) / 2)


def make_backup(spec: Spec, dynamics: Dynamics) -> Backup | None:
    """The spec's backup, or None when it has none."""
    backup = spec.backup
    n, m = dynamics.n, dynamics.m
    if isinstance(backup, LqrBackup):
        A, B = dynamics.linearisation()  # a pendulum's LQR is designed on its linearisation
        return lqr(A, B, backup.Q.array().reshape(n, n), backup.R.array().reshape(m, m))
    if isinstance(backup, LinearBackup):
        return Backup(K=backup.K.array().reshape(m, n))
    return None
