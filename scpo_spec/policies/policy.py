"""Policy families: the map from a flat weight vector θ to a controller.

The flat layout is exactly `torch.nn.utils.parameters_to_vector` of the matching torch module
(per layer: weight row-major, then bias), so a trained θ loads straight into `module()`.  The
batched forward evaluates C candidate weight vectors on C×B states with one `baddbmm` per layer:
this is the hot path of every rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from scpo_spec.policies import activations as act_fns
from scpo_spec.policies.activations import ACTIVATIONS, MODULES  # noqa: F401 - re-exported
from scpo_spec.policies.backup import Backup
from scpo_spec.policies.operating import Around, around_of
from scpo_spec.language.model import (FromPolicy, LinearPolicy, MlpPolicy, PythonPolicy, Spec,
                                      TorchPolicy)
from scpo_spec.policies.torch_file import load_policy_structure
from scpo_spec.systems.dynamics import RolloutViews

from scpo_spec.dtype import DTYPE

_activation_slope = act_fns.slope  # σ'(z) by name (kept under its old name for callers)


class PolicyCore(nn.Module):
    """u = net(x) (+ backup(x)): tensors (N, n) → (N, m), float64, TorchScript-able — what
    `scpo export` writes.  Around an operating point, or with an observation or output scale
    (policies/operating.py), `net` is the whole u = s ⊙ net(o) + (u* or backup(x))."""

    def __init__(self, net: nn.Module, backup: nn.Module | None, around: Around | None = None):
        super().__init__()
        if around is not None:
            net, backup = around.module(net, backup), None
        self.net = net
        self.has_backup = backup is not None
        self.backup = backup if backup is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.net(x)
        if self.has_backup:
            u = u + self.backup(x)
        return u


class PolicyModule(nn.Module):
    """A trained policy as a plain torch module: states (..., n) → actions (..., m), float64.

    Callers hand it whatever they hold — a numpy array, a list, a float32 tensor, one state (n,)
    — so the input is converted here rather than making every caller cast: the math is always
    float64 (the precision the policy was trained and certified in), and the result is the same
    kind as the input: a torch tensor in gives a float64 torch tensor out (on autograd's graph
    if the input was); anything else gives a float64 numpy array.  Not the training hot path
    (that is the batched `PolicyFamily.forward`).  `.core` is the same policy on tensors only
    (TorchScript-able; the backup, a gain or a TorchScript module, included)."""

    def __init__(self, net: nn.Module, backup: Backup | None, around: Around | None = None,
                 n: int | None = None):
        super().__init__()
        self.core = PolicyCore(net, backup.as_module() if backup is not None else None, around)
        if n is None:  # (an MLP's: its first layer's inputs)
            n = next(mod for mod in net.modules() if isinstance(mod, nn.Linear)).in_features
        self.n = n

    def forward(self, x) -> torch.Tensor | np.ndarray:
        if isinstance(x, torch.Tensor):
            return self._act(x.to(DTYPE))
        x = np.asarray(x, dtype=np.float64)
        with torch.no_grad():
            return self._act(torch.from_numpy(x)).numpy()

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 0 or x.shape[-1] != self.n:
            raise ValueError(f"the policy takes states of shape (n,) or (N, n) with n = {self.n}; "
                             f"got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        u = self.core(x.reshape(-1, self.n))
        return u.reshape(*lead, u.shape[-1])


@dataclass
class PolicyFamily:
    """Layers (out, in) of an MLP (one layer, no bias, for a linear policy), an activation
    between layers — or, for a network read from a file (`policy torch`/`policy onnx`), one
    activation per layer, the last one's included (`activations`) — and an optional fixed
    backup added to the output (`residual = backup`): a gain K x (+ offset), or a frozen
    controller (a TorchScript module or an ONNX network) called once on all C·B states.
    `around`: the operating point, observation and output scale (None: u = net(x) (+ backup(x)),
    as before LANGUAGE-v3 — the path every spec without those forms keeps)."""

    n: int
    m: int
    layers: list[tuple[int, int]]
    bias: bool
    activation: str
    backup: Backup | None
    theta0: torch.Tensor = field(repr=False)
    activations: list[str] | None = None  # per layer (len(layers)); None: `activation` between
    around: Around | None = None

    def __post_init__(self):
        self.d = int(self.theta0.numel())
        self._gain_t = (None if self.backup is None
                        else torch.as_tensor(self.backup.K, dtype=DTYPE).T.contiguous())
        self._act = act_fns.function(self.activation)
        between = [self.activation] * (len(self.layers) - 1) + ["identity"]
        if self.activations is not None and list(self.activations) == between:
            self.activations = None  # the plain MLP: one activation between layers
        self.per_layer = list(self.activations) if self.activations is not None else between
        self._acts = [None if a == "identity" else act_fns.function(a) for a in self.per_layer]
        if self.around is not None:
            self._o_star = self.around.o_star()
            self._observation_jacobian = self.around.observation_jacobian()

    # ---- torch module view ----
    def module(self, theta: torch.Tensor | None = None) -> PolicyModule:
        """A torch module holding θ (θ₀ when omitted)."""
        net = _build_net(self.layers, self.bias, self.activation, self.activations)
        theta = self.theta0 if theta is None else torch.as_tensor(theta, dtype=DTYPE)
        nn.utils.vector_to_parameters(theta.detach().clone(), net.parameters())
        return PolicyModule(net, self.backup, self.around, self.n).to(DTYPE)

    # ---- batched functional forward ----
    def _unpack(self, theta: torch.Tensor):
        """Views of every layer's weight (C, out, in) and bias (C, 1, out)."""
        C = theta.shape[0]
        offset = 0
        for out, inp in self.layers:
            W = theta[:, offset:offset + out * inp].view(C, out, inp)
            offset += out * inp
            b = None
            if self.bias:
                b = theta[:, offset:offset + out].view(C, 1, out)
                offset += out
            yield W, b

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Actions (C, B, m) of C candidates θ (C, d) on their states x (C, B, n)."""
        h = x if self.around is None else self.around.observation(x)
        for (W, b), act in zip(self._unpack(theta), self._acts):
            h = torch.bmm(h, W.transpose(1, 2)) if b is None else torch.baddbmm(b, h, W.transpose(1, 2))
            if act is not None:
                h = act(h)
        if self.around is not None:
            return self.around.output(h, None if self.backup is None else self.backup(x))
        if self.backup is not None:
            h = h + self.backup(x)  # a torch backup: one call on all C·B states
        return h

    def batched(self, theta: torch.Tensor) -> "BatchedForward":
        """The rollout's forward for fixed candidates θ (C, d): the layers unpacked once and
        work buffers reused from step to step (no autograd; the numbers are `forward`'s)."""
        return BatchedForward(self, theta)

    def jacobian_at_origin(self, theta: torch.Tensor) -> torch.Tensor:
        """∂π/∂x at x = 0 for each candidate: (C, m, n), exact (chain rule through the layers).
        At x = 0 the first layer's Jacobian is its W and its pre-activation its bias, taken as
        they are (W·I and b + W·0 differ from them at most in the sign of a zero, which no slope
        and no |eigenvalue| sees): an evaluation runs this after each rollout, where each small
        torch call costs 2-3× what it costs in a tight loop (benchmarks/README.md)."""
        J = h = None
        last = len(self.layers) - 1
        for i, ((W, b), name) in enumerate(zip(self._unpack(theta), self.per_layer)):
            J = W if J is None else torch.bmm(W, J)
            if name != "identity":  # (an identity layer's pre-activation is never read)
                if h is None:
                    pre = b if b is not None else W.new_zeros(W.shape[0], 1, W.shape[1])
                else:
                    Wt = W.transpose(1, 2)
                    pre = torch.bmm(h, Wt) if b is None else torch.baddbmm(b, h, Wt)
                h = act_fns.function(name)(pre)
                # tanh' = 1 − tanh²: the tanh just computed, not a second one (the same numbers)
                slope = 1 - h ** 2 if name == "tanh" else act_fns.slope(name, pre)
                J = slope.transpose(1, 2) * J
            elif i < last and (h is not None or b is not None):  # the next layer reads it
                Wt = W.transpose(1, 2)
                if h is None:
                    h = b if b is not None else W.new_zeros(W.shape[0], 1, W.shape[1])
                else:
                    h = torch.bmm(h, Wt) if b is None else torch.baddbmm(b, h, Wt)
        if self._gain_t is not None:  # a torch backup's K is its Jacobian at the origin
            J = J + self._gain_t.T.to(theta.device)
        return J

    def jacobian_at_operating_point(self, theta: torch.Tensor) -> torch.Tensor:
        """∂u/∂x at x* for each candidate: (C, m, n) — s ⊙ ∂net/∂o at o* = o(x*), times ∂o/∂x
        at x*, plus the backup's K (exact chain rule); `jacobian_at_origin` without `around`."""
        if self.around is None:
            return self.jacobian_at_origin(theta)
        layers = list(self._unpack(theta))
        C = theta.shape[0]
        h = self._o_star.to(theta.device).expand(C, 1, -1)
        J = None
        last = len(layers) - 1
        for i, ((W, b), name) in enumerate(zip(layers, self.per_layer)):
            J = W if J is None else torch.bmm(W, J)
            if i < last or name != "identity":
                Wt = W.transpose(1, 2)
                pre = torch.bmm(h, Wt) if b is None else torch.baddbmm(b, h, Wt)
                if name == "identity":
                    h = pre
                else:
                    h = act_fns.function(name)(pre)
                    J = act_fns.slope(name, pre).transpose(1, 2) * J
        scale = self.around.tensors(theta.device)[2]
        if scale is not None:
            J = J * scale[:, None]
        J = J @ self._observation_jacobian.to(theta.device)
        if self._gain_t is not None:
            J = J + self._gain_t.T.to(theta.device)
        return J


FAST_TANH = True  # the rollout's tanh as 2σ(2z) − 1 (see BatchedForward); False: torch.tanh


def tanh_via_sigmoid_(z: torch.Tensor, doubled: bool = False, scale: int = 1) -> torch.Tensor:
    """tanh(z) = 2σ(2z) − 1, in place.  float64 throughout; within 3.4e-16 of torch.tanh
    everywhere (an absolute error: both are ≤ 1 in size; ±inf → ±1, NaN stays NaN), and about
    3× cheaper on a CPU, where torch's float64 tanh costs ~5-7 ns per element and its sigmoid
    ~1.2 (benchmarks/README.md).  `doubled`: z is already 2z (BatchedForward doubles the first
    layer's W and every hidden b, and feeds a hidden layer 2h: 2(Wh + b) = W(2h) + 2b exactly, a
    power of two commutes with rounding), leaving two passes: σ, then 2σ − 1 (2σ is exact, so one
    rounding, as in z·2 − 1).
    `scale` 2: 2·tanh(z) = 4σ − 2, exactly twice 2σ − 1 (for the next layer's doubled input)."""
    if not doubled:
        z.mul_(2)
    torch.sigmoid_(z)
    minus = _MINUS_ONE if scale == 1 else _MINUS_TWO
    return torch.add(minus.get(z.device), z, alpha=2 * scale, out=z)


class _PerDevice:
    def __init__(self, value: float):
        self.value, self.cache = value, {}

    def get(self, device: torch.device) -> torch.Tensor:
        t = self.cache.get(device)
        if t is None:
            t = self.cache[device] = torch.tensor(self.value, dtype=DTYPE, device=device)
        return t


_MINUS_ONE = _PerDevice(-1.0)
_MINUS_TWO = _PerDevice(-2.0)


class BatchedForward:
    """`PolicyFamily.forward` for one set of C candidates, called T times by a rollout.

    The layer views (Wᵀ as a transposed view: the BLAS reads it with its transpose flag, the
    same call `forward` makes) are unpacked once, and each layer writes into a buffer kept
    between calls (`baddbmm(out=)`, the activation in place), so a step allocates nothing but
    what the backup returns.  Every operation is `forward`'s, in the same order, on the same
    operands — bit for bit the same numbers — except tanh under FAST_TANH: 2σ(2z) − 1, within
    3.4e-16 of torch.tanh per activation (tests/compile/test_perf_equality.py checks both: bit for bit
    with FAST_TANH off, the metrics to 1e-12 with it on).

    Under FAST_TANH σ must read 2z.  The first layer's W and b are doubled once (small: its
    input is the state), every later hidden layer's b, and each hidden activation but the last
    hands on 2·tanh = 4σ − 2 instead of 2σ − 1; so 2(Wh + b) = W(2h) + 2b reaches the next σ.
    Both are exact (a power of two commutes with rounding), and the hidden layers' large W are
    used as they are, never copied (a 2-512-512-1 bank: 38 MB per evaluation)."""

    def __init__(self, family: PolicyFamily, theta: torch.Tensor):
        self.family = family
        layers = [(W.transpose(1, 2), b) for W, b in family._unpack(theta)]
        act, last = family.activation, len(layers) - 1
        if act == "tanh" and FAST_TANH and family.activations is None:
            layers = [((Wt * 2 if i == 0 else Wt), None if b is None else b * 2)
                      if i < last else (Wt, b) for i, (Wt, b) in enumerate(layers)]
            # hidden activation i hands on 2·tanh when layer i + 1 is hidden, tanh to the last
            self.scales = [2 if i < last - 1 else 1 for i in range(last)]
            self._acts_ = [lambda z, k=k: tanh_via_sigmoid_(z, doubled=True, scale=k)
                           for k in self.scales]
            self.doubled = True
        else:
            self.doubled = False  # in place where torch has the activation in place exactly
            self.scales = [1] * last
            self._acts_ = [_in_place(name) for name in family.per_layer[:last]]
        # after the last layer (a network read from a file may end with one): written in place
        self.last_act_ = None if family.per_layer[-1] == "identity" else \
            _in_place(family.per_layer[-1], into=True)
        self.layers = layers
        self.C = theta.shape[0]
        self._buffers: dict[tuple, list[torch.Tensor]] = {}
        self.around = family.around

    def _work(self, x: torch.Tensor) -> list[torch.Tensor]:
        key = (x.shape[1], x.device)
        bufs = self._buffers.get(key)
        if bufs is None:
            bufs = self._buffers[key] = [
                torch.empty(self.C, x.shape[1], Wt.shape[2], dtype=x.dtype, device=x.device)
                for Wt, _ in self.layers[:-1]]
        return bufs

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None,
                 w: torch.Tensor | None = None) -> torch.Tensor:
        """Actions (C, B, m) for states x (C, B, n), written into `out` when given.  With
        autograd on, the same operations out of place (no buffers, `out` ignored): a
        differentiable rollout computes the very numbers of an evaluated one.  `w`: the
        scenarios' parameters (and disturbances), for an observation that reads them."""
        if torch.is_grad_enabled():
            return self._differentiable(x, w)
        if self.around is not None:
            return self._around(x, out, w)
        h = self._net(x, out)
        if self.family.backup is not None:
            backup = self.family.backup(x)
            h = h.add_(backup) if out is not None else h + backup
        return h

    def _net(self, h: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """The layers on the network's input h (C, B, p), in the work buffers, the last into
        `out` when given."""
        last, work = len(self.layers) - 1, self._work(h)
        for i, (Wt, b) in enumerate(self.layers):
            dest = out if i == last else work[i]
            if dest is None:
                h = torch.bmm(h, Wt) if b is None else torch.baddbmm(b, h, Wt)
            elif b is None:
                h = torch.bmm(h, Wt, out=dest)
            else:
                h = torch.baddbmm(b, h, Wt, out=dest)
            if i < last:
                h = self._acts_[i](h)
            elif self.last_act_ is not None:
                h = self.last_act_(h)
        return h

    def _around(self, x: torch.Tensor, out: torch.Tensor | None, w: torch.Tensor | None = None
                ) -> torch.Tensor:
        """`__call__` with an operating point, observation or output scale: the network on
        o = observe(x) (of the scenarios' parameters `w` too), then u = s ⊙ net(o) + (u* or
        backup(x)), in place."""
        h = self._net(self.around.observation(x, w=w), out)
        backup = self.family.backup
        return self.around.output(h, None if backup is None else backup(x), inplace=True)

    def rollout_step(self, views: RolloutViews) -> Callable[[int], None]:
        """t ↦ U[t] = π(X[t]) for a rollout's time-major buffers X (T+1, C, B, n) and U
        (T, C, B, m) (`views`), under no_grad.  Every branch, lookup and view of `__call__` is
        made once here, so a step is a flat run of torch calls (with the plant's
        `rollout_step`, ~0.7 ms of a 32 ms rollout at 2-64-64-1, C = 18, S = 64, T = 60).  The
        same operations as `__call__(X[t], out=U[t])`, except a gain backup: U[t] += X[t] Kᵀ
        in one `addmm_` (a fused multiply-add) instead of X[t] @ Kᵀ, then add_ — equal to
        rounding (tests/compile/test_perf_equality.py)."""
        xs, us, device = views.xs, views.us, views.device
        C, B = xs[0].shape[0], xs[0].shape[1]
        if self.doubled:  # k·tanh = 2kσ(2z) − k on doubled pre-activations (tanh_via_sigmoid_)
            sigmoid_, add = torch.sigmoid_, torch.add
            minus = {1: _MINUS_ONE.get(device), 2: _MINUS_TWO.get(device)}
            acts = [lambda z, c=minus[k], a=2 * k: add(c, sigmoid_(z), alpha=a, out=z)
                    for k in self.scales]
        else:
            acts = self._acts_
        hidden = [(b, Wt, views.buffer(("hidden", i), (C, B, Wt.shape[2])), act)
                  for i, ((Wt, b), act) in enumerate(zip(self.layers[:-1], acts))]
        Wt_last, b_last = self.layers[-1]
        last_act_ = self.last_act_
        baddbmm, bmm = torch.baddbmm, torch.bmm
        backup = self.family.backup
        if self.around is not None:
            return self._around_step(views, hidden, backup)
        gain = None if backup is None or backup.module is not None or backup.offset is not None \
            else backup.gain_on(device)
        xf, uf = (views.xf, views.uf) if gain is not None else (None, None)

        def step(t: int) -> None:
            h, out = xs[t], us[t]
            for b, Wt, dest, act in hidden:
                h = act(bmm(h, Wt, out=dest) if b is None else baddbmm(b, h, Wt, out=dest))
            if b_last is None:
                bmm(h, Wt_last, out=out)
            else:
                baddbmm(b_last, h, Wt_last, out=out)
            if last_act_ is not None:
                last_act_(out)
            if gain is not None:
                uf[t].addmm_(xf[t], gain)
            elif backup is not None:
                out.add_(backup(xs[t]))
        return step

    def _around_step(self, views: RolloutViews, hidden: list, backup: Backup | None
                     ) -> Callable[[int], None]:
        """`rollout_step` with `around`: o = observe(X[t]) (or X[t] − x*) into a kept buffer,
        the layers, then U[t] ⊙= s, and U[t] += X[t] Kᵀ (one `addmm_`) + offset for a gain
        backup, += backup(X[t]) for a frozen one, or += u*."""
        around, device = self.around, views.device
        xs, us, xf, uf = views.xs, views.us, views.xf, views.uf
        C, B = xs[0].shape[0], xs[0].shape[1]
        x_star, u_star, scale = around.tensors(device)
        observe = around.observe
        held = getattr(views, "uncertain", None)  # W (T, 1, S, p + d), refilled per rollout
        ws = held.unbind(0) if around.uncertain and held is not None else None
        obs = (views.buffer("observation", (C, B, around.p))
               if observe is not None or around.shifted else None)
        Wt_last, b_last = self.layers[-1]
        last_act_ = self.last_act_
        baddbmm, bmm, sub = torch.baddbmm, torch.bmm, torch.sub
        gain = None if backup is None or backup.module is not None else backup.gain_on(device)
        offset = None if gain is None else backup.offset_on(device)
        u_star = u_star if backup is None and around.offset else None

        def step(t: int) -> None:
            x, out = xs[t], us[t]
            if ws is not None:
                h = obs.copy_(observe(x, ws[t]))
            elif observe is not None:
                h = obs.copy_(observe(x))
            elif obs is not None:
                h = sub(x, x_star, out=obs)
            else:
                h = x
            for b, Wt, dest, act in hidden:
                h = act(bmm(h, Wt, out=dest) if b is None else baddbmm(b, h, Wt, out=dest))
            if b_last is None:
                bmm(h, Wt_last, out=out)
            else:
                baddbmm(b_last, h, Wt_last, out=out)
            if last_act_ is not None:
                last_act_(out)
            if scale is not None:
                out.mul_(scale)
            if gain is not None:
                uf[t].addmm_(xf[t], gain)
                if offset is not None:
                    out.add_(offset)
            elif backup is not None:
                out.add_(backup(x))
            elif u_star is not None:
                out.add_(u_star)
        return step

    def _differentiable(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        if self.around is not None:
            h = self.around.observation(x, w=w)
            z = self._differentiable_net(h)
            backup = self.family.backup
            return self.around.output(z, None if backup is None else backup(x))
        return self._differentiable_net(x, self.family.backup)

    def _differentiable_net(self, x: torch.Tensor, backup: Backup | None = None) -> torch.Tensor:
        h = x
        for i, ((Wt, b), act) in enumerate(zip(self.layers, self.family._acts)):
            h = torch.bmm(h, Wt) if b is None else torch.baddbmm(b, h, Wt)
            if act is not None:
                if self.doubled:
                    k = self.scales[i]
                    h = torch.add((_MINUS_ONE if k == 1 else _MINUS_TWO).get(h.device),
                                  torch.sigmoid(h), alpha=2 * k)
                else:
                    h = act(h)
        if backup is not None:
            h = h + backup(x)
        return h


def _in_place(name: str, into: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation `name` applied in place where torch has it in place exactly; otherwise
    out of place — or, with `into`, copied back into its input (a rollout's output buffer)."""
    fast = {"tanh": torch.tanh_, "relu": torch.relu_, "sigmoid": torch.sigmoid_,
            "identity": lambda z: z}.get(name)
    if fast is not None:
        return fast
    f = act_fns.function(name)
    return (lambda z: z.copy_(f(z))) if into else f


def _build_net(layers, bias: bool, activation: str,
               activations: list[str] | None = None) -> nn.Sequential:
    per_layer = activations or [activation] * (len(layers) - 1) + ["identity"]
    modules: list[nn.Module] = []
    for i, ((out, inp), name) in enumerate(zip(layers, per_layer)):
        modules.append(nn.Linear(inp, out, bias=bias, dtype=DTYPE))
        if i < len(layers) - 1 or name != "identity":
            modules.append(act_fns.module(name))
    return nn.Sequential(*modules)


def _backup_gain(backup: Backup, around: Around | None) -> np.ndarray:
    """`policy linear { init = backup }`: W₀ with s ⊙ W₀ ∂o/∂x = the backup's K at x* (least
    squares through a declared observation's Jacobian; exact for o = x − x*)."""
    K = np.asarray(backup.K, dtype=np.float64)
    if around is None:
        return K
    if around.observe is not None:
        K = K @ np.linalg.pinv(around.observation_jacobian().numpy())
    return K if around.scale is None else K / around.scale[:, None]


def make_policy(spec: Spec, n: int, m: int, backup: Backup | None,
                base_dir: Path | None = None) -> PolicyFamily:
    """The policy family of a checked spec and its initial weights θ₀ (float64); a `policy torch`
    or `policy onnx` file (relative to `base_dir`, the spec's directory by default) is mapped
    exactly onto the MLP family with per-layer activations (TorchFileError when it is not a
    plain MLP; OnnxFileError when the graph is not a supported chain)."""
    policy = spec.policy
    around = around_of(spec, policy, n, m)
    p = n if around is None else around.p  # the network's input: the observation
    if isinstance(policy, MlpPolicy):
        widths = [int(h) for h in np.atleast_1d(policy.hidden.array())]
        sizes = [p, *widths, m]
        layers = [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]
        activation = policy.activation.name if policy.activation else "tanh"
        residual = policy.residual is not None and policy.residual.name == "backup"
        seed = int(policy.seed) if policy.seed is not None else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # PyTorch's default init, reproducible from the spec's seed
            net = _build_net(layers, True, activation)
        if residual:  # the net's last layer at zero: the first policy is exactly the backup
            last = net[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        theta0 = nn.utils.parameters_to_vector(net.parameters()).detach().to(DTYPE)
        return PolicyFamily(n, m, layers, True, activation,
                            backup if residual and backup is not None else None, theta0,
                            around=around)
    if isinstance(policy, LinearPolicy):
        init = policy.init.name if policy.init else "zero"
        K = _backup_gain(backup, around) if init == "backup" and backup is not None \
            else np.zeros((m, p))
        theta0 = torch.as_tensor(np.asarray(K, dtype=np.float64).reshape(-1), dtype=DTYPE)
        return PolicyFamily(n, m, [(m, p)], False, "identity", None, theta0, around=around)
    if isinstance(policy, PythonPolicy):  # any nn.Module, batched with torch.func
        from scpo_spec.policies.python_module import ModuleFamily, load_python_module
        return ModuleFamily(n, m, load_python_module(policy.factory.value, p, m, base_dir),
                            around=around)
    if isinstance(policy, FromPolicy):  # never reached through engine/warm.py
        raise NotImplementedError("`policy from` is resolved to the source run's policy section "
                                  "before compiling (scpo_spec.engine.warm.compile_warm)")
    if isinstance(policy, TorchPolicy):
        found = load_policy_structure(spec, base_dir)
        return PolicyFamily(n, m, found.layers, found.bias, found.activation, None,
                            found.theta0.clone(), found.activations, around=around)
    if getattr(policy, "kind", None) == "onnx":  # θ: the network's weights, θ₀ the file's
        from scpo_spec.policies.onnx_graph import load_sized
        net = load_sized(spec, policy, base_dir, "policy")
        theta0 = torch.as_tensor(net.theta(), dtype=DTYPE)
        between = net.activations[0] if len(net.layers) > 1 else "identity"
        return PolicyFamily(n, m, net.shapes, True, between, None, theta0, net.activations,
                            around=around)
    raise NotImplementedError(f"policy kind '{policy.kind}'")
