"""The backup controller, acting around the operating point (x*, u*) (policies/operating.py):
u = u* + K (x − x*) + k with an LQR gain from the discrete-time Riccati equation of the plant
linearised there (its P kept for `lyapunov(backup)`) or a gain written in the spec (`backup
linear { K  k }`); or u = u* + s ⊙ module(o), a frozen controller (`backup torch { file }`, and
the ONNX kind through `frozen_backup`), whose K is its Jacobian at x* (what `spectral_radius` of
a residual policy linearises).

A gain backup seeing x − x* is kept as u = x Kᵀ + offset (offset = u* + s ⊙ k − K x*, with s
folded into K): the rollout's one fused `addmm_` and one add, and an affine map the verifier
bounds exactly.  One that declares `observe` is a module like a frozen one."""

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
from scpo_spec.policies.operating import AroundModule, around_of
from scpo_spec.policies.torch_file import TorchFileError, load_torch_file
from scpo_spec.systems.dynamics import Dynamics, operating_point


class BackupError(ScpoError):
    """The backup cannot be built (e.g. the Riccati equation has no stabilising solution)."""


@dataclass
class Backup:
    K: np.ndarray                  # (m, n): u = x Kᵀ + offset; a module's Jacobian at x*
    P: np.ndarray | None = None    # LQR: V(x) = (x − x*)ᵀ P (x − x*)
    module: torch.nn.Module | None = None  # u = module(x) (float64, frozen, eval mode): a
    #                                torch file, or any backup that declares `observe`
    offset: np.ndarray | None = None  # (m,) a gain backup's u* + s ⊙ k − K x* (None: 0)

    def __post_init__(self):
        self._gain_t = torch.as_tensor(np.asarray(self.K, dtype=np.float64), dtype=DTYPE).T
        self._gain_on: dict = {}
        self._offset_on: dict = {}

    def offset_on(self, device: torch.device) -> torch.Tensor | None:
        """The offset (m,) on `device`, or None when there is none."""
        if self.offset is None:
            return None
        t = self._offset_on.get(device)
        if t is None:
            t = self._offset_on[device] = torch.as_tensor(self.offset, dtype=DTYPE).to(device)
        return t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """u (..., m) for states x (..., n): one call of the module on all states at once."""
        if self.module is None:
            u = x @ self.gain_on(x.device)
            return u if self.offset is None else u + self.offset_on(x.device)
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
        return self.module if self.module is not None else GainModule(self.K, self.offset)


class GainModule(torch.nn.Module):
    """u = K x (+ k) as a (TorchScript-able) module."""

    def __init__(self, K: np.ndarray, k: np.ndarray | None = None):
        super().__init__()
        self.register_buffer("K", torch.as_tensor(np.asarray(K, dtype=np.float64), dtype=DTYPE))
        self.has_offset = k is not None
        self.register_buffer("k", torch.as_tensor(
            np.zeros(self.K.shape[0]) if k is None else np.asarray(k, dtype=np.float64),
            dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_offset:
            return x @ self.K.T + self.k
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


def _jacobian(module: torch.nn.Module, x_star: np.ndarray) -> np.ndarray:
    """∂u/∂x at x*, (m, n), by autograd through the module."""
    x = torch.as_tensor(x_star, dtype=DTYPE)[None]
    J = torch.autograd.functional.jacobian(lambda v: module(v)[0], x)  # (m, 1, n)
    return J[:, 0, :].detach().numpy().astype(np.float64)


def frozen_backup(spec: Spec, model, module: torch.nn.Module, n: int, m: int,
                  what: str = "backup") -> Backup:
    """A frozen controller module (observation (N, p) → (N, m): a TorchScript file, an ONNX
    graph) as the backup u = u* + s ⊙ module(o), with its Jacobian at x*; `model` is the
    backup's model (its `observe`, `output_scale`).  A BackupError when autograd cannot
    differentiate it."""
    around = around_of(spec, model, n, m)
    full = module if around is None else AroundModule(module, around)
    x_star, _ = operating_point(spec, n, m)
    try:
        K = _jacobian(full, x_star)
    except Exception as e:  # noqa: BLE001 - the author's code
        raise BackupError(f"{what}: its Jacobian at the operating point cannot be computed by "
                          f"autograd ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return Backup(K=K, module=full)


def gain_backup(spec: Spec, model, K: np.ndarray, k: np.ndarray | None, n: int, m: int,
                P: np.ndarray | None = None) -> Backup:
    """u = u* + s ⊙ (K o + k), o = x − x* (kept as x Kᵀ + offset) or the declared observation
    (a module)."""
    around = around_of(spec, model, n, m)
    if around is not None and around.observe is not None:
        if K.shape != (m, around.p):
            raise BackupError(f"{model.span}: " * (model.span is not None)
                              + f"the backup's gain is {K.shape[0]}×{K.shape[1]} but it observes "
                              f"{around.p} values; it needs {m}×{around.p}")
        backup = frozen_backup(spec, model, GainModule(K, k), n, m)
        backup.P = P
        return backup
    x_star, u_star = operating_point(spec, n, m)
    scale = np.ones(m) if around is None or around.scale is None else around.scale
    K_eff = scale[:, None] * K
    offset = u_star + scale * (np.zeros(m) if k is None else k) - K_eff @ x_star
    return Backup(K=K_eff, P=P, offset=offset if np.any(offset) else None)


def make_backup(spec: Spec, dynamics: Dynamics, base_dir: Path | None = None) -> Backup | None:
    """The spec's backup, or None when it has none (a torch file: relative to `base_dir`, the
    spec's directory by default; TorchFileError when it cannot be used)."""
    backup = spec.backup
    n, m = dynamics.n, dynamics.m
    if isinstance(backup, LqrBackup):
        A, B = dynamics.linearisation()  # designed on the plant linearised at (x*, u*)
        designed = lqr(A, B, backup.Q.array().reshape(n, n), backup.R.array().reshape(m, m),
                       backup.span)
        return gain_backup(spec, backup, designed.K, None, n, m, designed.P)
    if isinstance(backup, LinearBackup):
        k = getattr(backup, "k", None)
        return gain_backup(spec, backup, backup.K.array().reshape(m, -1),
                           None if k is None else np.broadcast_to(
                               np.asarray(k.array(), dtype=np.float64).reshape(-1), (m,)).copy(),
                           n, m)
    if isinstance(backup, TorchBackup):
        around = around_of(spec, backup, n, m)
        module = load_torch_file(backup.file, base_dir, n if around is None else around.p, m,
                                 "backup", spec)
        try:
            return frozen_backup(spec, backup, module, n, m)
        except BackupError as e:
            raise TorchFileError(f"backup file '{backup.file.value}': "
                                 f"{str(e).removeprefix('backup: ')}", backup.file.span) from None
    return None
