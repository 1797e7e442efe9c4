"""The backup controller: u = K x with an LQR gain from the discrete-time Riccati equation (its P
kept for `lyapunov(backup)`) or a gain written in the spec; or u = module(x), a frozen
controller — a TorchScript module (`backup torch { file }`) or an ONNX network (`backup onnx
{ file }`, also kept as its layers for `scpo verify`) — whose K is its Jacobian at the origin
(what `spectral_radius` of a residual policy linearises)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from scpo_spec.errors import ScpoError
from scpo_spec.dtype import DTYPE
from scpo_spec.language.dynamics import riccati_problem
from scpo_spec.language.model import LinearBackup, LqrBackup, Spec, TorchBackup
from scpo_spec.language.source import Span
from scpo_spec.policies.onnx_graph import OnnxNetwork
from scpo_spec.policies.torch_file import TorchFileError, jacobian_at_origin, load_torch_file
from scpo_spec.systems.dynamics import Dynamics


class BackupError(ScpoError):
    """The backup cannot be built (e.g. the Riccati equation has no stabilising solution)."""


@dataclass
class Backup:
    K: np.ndarray                  # (m, n): u = K x; a torch backup's Jacobian at the origin
    P: np.ndarray | None = None    # LQR: V(x) = xᵀ P x
    module: torch.nn.Module | None = None  # torch: u = module(x) (float64, frozen, eval mode)
    network: OnnxNetwork | None = None     # onnx: the module's layers (what the verifier bounds)

    def __post_init__(self):
        self._gain_t = torch.as_tensor(np.asarray(self.K, dtype=np.float64), dtype=DTYPE).T
        self._gain_on: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """u (..., m) for states x (..., n): one call of the module on all states at once."""
        if self.module is None:
            return x @ self.gain_on(x.device)
        lead = x.shape[:-1]
        # a frozen TorchScript backup stays on the CPU (the module export writes): the states
        # of a rollout on another device visit it there
        u = self.module(x.reshape(-1, x.shape[-1]).cpu()).to(x.device)
        return u.reshape(*lead, u.shape[-1])

    def gain_on(self, device: torch.device) -> torch.Tensor:
        """Kᵀ (n, m) on `device` (`device cuda`: a copy per device, kept)."""
        if device == self._gain_t.device:
            return self._gain_t
        gain = self._gain_on.get(device)
        if gain is None:
            gain = self._gain_on[device] = self._gain_t.to(device)
        return gain

    def as_module(self) -> torch.nn.Module:
        """The backup as a scriptable torch module states (N, n) → inputs (N, m)."""
        return self.module if self.module is not None else GainModule(self.K)


class GainModule(torch.nn.Module):
    """u = K x as a (TorchScript-able) module."""

    def __init__(self, K: np.ndarray):
        super().__init__()
        self.register_buffer("K", torch.as_tensor(np.asarray(K, dtype=np.float64), dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.K.T


def lqr(A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray,
        span: Span | None = None) -> Backup:
    """Discrete-time infinite-horizon LQR: P solves the DARE, K = −(R + BᵀPB)⁻¹ BᵀPA (a
    BackupError located at `span`, the backup section, when there is no stabilising P)."""
    try:
        P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    except (np.linalg.LinAlgError, ValueError):
        P = None
    if P is None or not np.all(np.isfinite(P)):
        message, hint = riccati_problem(A, B, Q, R) or (
            "the lqr backup's Riccati equation has no stabilising solution", None)
        raise BackupError(f"{span}: " * (span is not None) + message
                          + (f" (hint: {hint})" if hint else ""))
    K = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    return Backup(K=K, P=(P + P.T) / 2)


def network_backup(network: OnnxNetwork) -> Backup:
    """u = network(x), a frozen feed-forward network (float64), K its Jacobian at the origin."""
    module = network.module()
    return Backup(K=jacobian_at_origin(module, network.n_in), module=module, network=network)


def make_backup(spec: Spec, dynamics: Dynamics, base_dir: Path | None = None) -> Backup | None:
    """The spec's backup, or None when it has none (a torch or onnx file: relative to
    `base_dir`, the spec's directory by default; TorchFileError / OnnxFileError when it cannot
    be used)."""
    backup = spec.backup
    n, m = dynamics.n, dynamics.m
    if isinstance(backup, LqrBackup):
        A, B = dynamics.linearisation()  # a pendulum's LQR is designed on its linearisation
        return lqr(A, B, backup.Q.array().reshape(n, n), backup.R.array().reshape(m, m),
                   backup.span)
    if isinstance(backup, LinearBackup):
        return Backup(K=backup.K.array().reshape(m, n))
    if getattr(backup, "kind", None) == "onnx":
        from scpo_spec.policies.onnx_graph import load_sized
        return network_backup(load_sized(spec, backup, base_dir, "backup"))
    if isinstance(backup, TorchBackup):
        module = load_torch_file(backup.file, base_dir, n, m, "backup", spec)
        try:
            K = jacobian_at_origin(module, n)
        except Exception as e:  # noqa: BLE001 - the author's code
            raise TorchFileError(f"backup file '{backup.file.value}': its Jacobian at the origin "
                                 f"cannot be computed by autograd ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''})",
                                 backup.file.span) from None
        return Backup(K=K, module=module)
    return None
