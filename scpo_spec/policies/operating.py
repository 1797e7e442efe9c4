"""Where a controller acts and what it sees (LANGUAGE-v3): the operating point (x*, u*), the
observation o = observe(x) (default x − x*) and the output scale s, shared by every policy and
backup kind:

    u = u* + s ⊙ net(o)                 (a policy, a frozen or ONNX backup)
    u = backup(x) + s ⊙ net(o)          (`residual = backup`: backup(x) already holds u*)

`Around` is that wrapper as data: `observation` maps states (…, n) to the network's input
(…, p), `output` scales the network's output and adds u* (or the backup).  A trivial one (x* = 0,
u* = 0, no observe, no scale) is never built (`around_of` returns None), so every spec without a
v3 form keeps the evaluator's previous code path, operation for operation.  A declared
observation is compiled once by systems/declared.py's elementwise compiler (lets expanded first)
into one batched torch map over any leading shape (candidates × scenarios)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from scpo_spec.dtype import DTYPE
from scpo_spec.language.model import Spec
from scpo_spec.systems.declared import compile_observation
from scpo_spec.systems.dynamics import operating_point


@dataclass
class Around:
    """The operating point, observation and output scale of one controller (float64)."""

    x_star: np.ndarray                       # (n,)
    u_star: np.ndarray                       # (m,)
    observe: Callable[[torch.Tensor], torch.Tensor] | None = None  # (…, n) → (…, p)
    p: int = 0                               # the observation's size (n when not declared)
    scale: np.ndarray | None = None          # (m,)
    observe_exprs: list | None = None        # the declared observation, as written
    _on: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.n, self.m = len(self.x_star), len(self.u_star)
        self.p = self.p or self.n
        self.shifted = self.observe is None and bool(np.any(self.x_star != 0))
        self.offset = bool(np.any(self.u_star != 0))

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                     torch.Tensor | None]:
        """x*, u* and s as float64 tensors on `device` (made once per device)."""
        kept = self._on.get(device)
        if kept is None:
            def t(a):
                return None if a is None else torch.as_tensor(a, dtype=DTYPE).to(device)
            kept = self._on[device] = (t(self.x_star), t(self.u_star), t(self.scale))
        return kept

    def observation(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """o (…, p) for states x (…, n), written into `out` when given."""
        if self.observe is not None:
            o = self.observe(x)
            return o if out is None else out.copy_(o)
        if not self.shifted:
            return x if out is None else out.copy_(x)
        x_star = self.tensors(x.device)[0]
        return torch.sub(x, x_star) if out is None else torch.sub(x, x_star, out=out)

    def output(self, z: torch.Tensor, base: torch.Tensor | None = None,
               inplace: bool = False) -> torch.Tensor:
        """u = s ⊙ z + (u* or `base`, the backup's action)."""
        _, u_star, scale = self.tensors(z.device)
        if scale is not None:
            z = z.mul_(scale) if inplace else z * scale
        if base is not None:
            return z.add_(base) if inplace else z + base
        if self.offset:
            return z.add_(u_star) if inplace else z + u_star
        return z

    def o_star(self) -> torch.Tensor:
        """The observation at x* (p,): where the network is linearised."""
        with torch.no_grad():
            return self.observation(torch.as_tensor(self.x_star, dtype=DTYPE)[None])[0]

    def observation_jacobian(self) -> torch.Tensor:
        """∂o/∂x at x* (p, n): the identity unless an observation is declared (autograd)."""
        if self.observe is None:
            return torch.eye(self.n, dtype=DTYPE)
        x = torch.as_tensor(self.x_star, dtype=DTYPE)
        with torch.enable_grad():
            J = torch.autograd.functional.jacobian(lambda v: self.observe(v[None])[0], x)
        return J.detach().reshape(self.p, self.n)

    def module(self, net: nn.Module, base: nn.Module | None = None) -> nn.Module:
        """u = s ⊙ net(o) + (u* or base(x)) as a TorchScript-able module of states (N, n)."""
        return AroundModule(net, self, base)


class _Observation(nn.Module):
    """A declared observation map, as a module (traced for TorchScript by AroundModule)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class AroundModule(nn.Module):
    """states (N, n) → u = s ⊙ net(o(x)) + (u* or backup(x)): what `scpo export` writes, so the
    exported file still takes the state."""

    def __init__(self, net: nn.Module, around: Around, backup: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.has_backup = backup is not None
        self.backup = backup if backup is not None else nn.Identity()
        self.declared = around.observe is not None
        if self.declared:
            example = torch.zeros(3, around.n, dtype=DTYPE)
            with torch.no_grad():
                self.observe = torch.jit.trace(_Observation(around.observe), example,
                                               check_trace=False)
        else:
            self.observe = nn.Identity()
        self.register_buffer("x_star", torch.as_tensor(around.x_star, dtype=DTYPE))
        self.register_buffer("u_star", torch.as_tensor(around.u_star, dtype=DTYPE))
        self.register_buffer("scale", torch.as_tensor(
            around.scale if around.scale is not None else np.ones(around.m), dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.observe(x) if self.declared else x - self.x_star
        u = self.net(o) * self.scale
        if self.has_backup:
            return u + self.backup(x)
        return u + self.u_star


def _scale_of(controller, m: int) -> np.ndarray | None:
    scale = getattr(controller, "output_scale", None)
    if scale is None:
        return None
    s = np.broadcast_to(np.asarray(scale.array(), dtype=np.float64).reshape(-1), (m,)).copy()
    return None if np.all(s == 1) else s


def around_of(spec: Spec, controller, n: int, m: int) -> Around | None:
    """The `Around` of a policy or backup model (its `observe`, `output_scale`) at the spec's
    operating point; None when it is trivial (x* = 0, u* = 0, x seen as it is, scale 1)."""
    x_star, u_star = operating_point(spec, n, m)
    exprs = getattr(controller, "observe", None)
    observe, p = None, n
    if exprs is not None:
        observe = compile_observation(spec, exprs)
        p = len(exprs)
    scale = _scale_of(controller, m)
    if observe is None and scale is None and not np.any(x_star) and not np.any(u_star):
        return None
    return Around(x_star, u_star, observe, p, scale, exprs)
