"""`policy python "my_pkg.nets:make_policy"`: any `nn.Module` the author's factory returns, as a
policy family.

θ is the module's parameters flattened in `named_parameters()` order (each row-major: exactly
`parameters_to_vector`, so a trained θ loads straight back with `vector_to_parameters`); θ₀ is the
module as the factory constructed it, in float64.  C candidates are evaluated at once with
torch.func: `functional_call` of the module with one candidate's parameters, `vmap`ped over the
candidates — a skip connection or any custom forward works, as long as it can be vmapped (no
in-place update of a parameter or buffer, no Python `if` on a tensor's value).

The factory is found and imported exactly as a `system python` callable is (systems/user_code.py,
usercode/loader.py: the spec's folder first, the module run from the bytes it is fingerprinted by,
and from a run only under --trust-code).  Every way the module can be wrong is a
`PythonPolicyError` found by `load_python_module` on a small probe batch — including a vmap
over two candidates, with torch's own words when that fails — not deep inside a rollout.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from scpo_spec.dtype import DTYPE
from scpo_spec.errors import ScpoError
from scpo_spec.usercode.loader import CodeMismatch, one_line
from scpo_spec.systems.dynamics import RolloutViews

PROBE_CANDIDATES, PROBE_BATCH = 2, 3


class PythonPolicyError(ScpoError):
    """The factory a `policy python` names cannot be imported or called, or what it returns
    cannot be a policy family (exit 2: an error in the spec's own parts)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message + (f" ({hint})" if hint else ""))
        self.message, self.hint = message, hint


def load_python_module(factory: str, n: int, m: int, base_dir: Path | None) -> nn.Module:
    """The module `factory()` returns, float64, in eval mode, after checking that it maps
    states (B, n) to inputs (B, m) and can be evaluated for several candidate θ at once."""
    from scpo_spec.systems.user_code import UserCodeError, load_callable
    try:
        make, _ = load_callable(factory, base_dir)
    except CodeMismatch:
        raise
    except UserCodeError as err:
        raise PythonPolicyError(err.message.replace("f(x, u)", "factory() → nn.Module"),
                                err.hint) from None
    try:
        module = make()
    except Exception as err:  # noqa: BLE001 - the author's factory raised
        raise PythonPolicyError(f"'{factory}' raised {one_line(err)} when called with no "
                                "arguments") from None
    if not isinstance(module, nn.Module):
        raise PythonPolicyError(f"'{factory}' returned a {type(module).__name__}, not a "
                                "torch.nn.Module", "return the policy network, e.g. "
                                "nn.Sequential(nn.Linear(n, 16), nn.Tanh(), nn.Linear(16, m))")
    module = copy.deepcopy(module).to(DTYPE).eval()
    if not any(True for _ in module.parameters()):
        raise PythonPolicyError(f"'{factory}' returned a module without parameters: there is "
                                "no θ to train")
    probe(module, factory, n, m)
    return module


def probe(module: nn.Module, factory: str, n: int, m: int) -> None:
    """One call on a (B, n) batch — float64 (B, m), finite — then the same through vmap over
    two candidates (what every rollout does), which must agree with the plain call."""
    x = torch.linspace(-0.5, 0.5, PROBE_BATCH * n, dtype=DTYPE).reshape(PROBE_BATCH, n)
    called = f"called on float64 states of shape ({PROBE_BATCH}, {n})"
    try:
        with torch.no_grad():
            u = module(x)
    except Exception as err:  # noqa: BLE001 - the author's forward raised
        raise PythonPolicyError(f"the module of '{factory}' raised {one_line(err)} when "
                                f"{called}") from None
    if not isinstance(u, torch.Tensor):
        raise PythonPolicyError(f"the module of '{factory}' returned a {type(u).__name__}, not a "
                                f"torch tensor, when {called}")
    if tuple(u.shape) != (PROBE_BATCH, m):
        raise PythonPolicyError(
            f"the module of '{factory}' maps states ({PROBE_BATCH}, {n}) to {tuple(u.shape)}; "
            f"the spec's {n} states and {m} inputs need ({PROBE_BATCH}, {m})",
            "its first layer takes n inputs and its last gives m")
    if u.dtype != DTYPE:
        raise PythonPolicyError(f"the module of '{factory}' returns {u.dtype} for float64 "
                                "states", "compute in the states' dtype")
    if not torch.isfinite(u).all():
        raise PythonPolicyError(f"the module of '{factory}' returns non-finite values when "
                                f"{called} in [-0.5, 0.5]")
    family = ModuleFamily(n, m, module)
    thetas = family.theta0.expand(PROBE_CANDIDATES, -1).clone()
    try:
        with torch.no_grad():
            batched = family.forward(thetas, x.expand(PROBE_CANDIDATES, -1, -1))
    except Exception as err:  # noqa: BLE001 - torch.func's refusal, in its own words
        raise PythonPolicyError(
            f"the module of '{factory}' cannot be evaluated for {PROBE_CANDIDATES} candidate "
            f"weight vectors at once (torch.func.vmap over functional_call): {one_line(err)}",
            "scpo batches candidates with torch.func: write the forward without in-place "
            "updates of parameters or buffers and without Python control flow on tensor values "
            "(torch.where instead of if)") from None
    if not torch.allclose(batched, u.expand_as(batched), rtol=1e-9, atol=1e-12):
        raise PythonPolicyError(f"the module of '{factory}' gives other actions through "
                                "torch.func.vmap than called directly; its forward must depend "
                                "only on its input and its parameters")


@dataclass
class ModuleFamily:
    """A policy family around any `nn.Module`: θ (C, d) ↦ the module with each candidate's
    parameters, evaluated with `functional_call` under `vmap` (the family protocol of
    policies.policy.PolicyFamily: `forward`, `batched`, `jacobian_at_origin`, `module`)."""

    n: int
    m: int
    template: nn.Module = field(repr=False)
    backup: None = None  # (a python policy adds no backup)
    activation: str = "python"
    around: object | None = None  # policies/operating.py's Around: x*, u*, observe, scale

    def __post_init__(self):
        named = list(self.template.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.theta0 = nn.utils.parameters_to_vector(
            [p for _, p in named]).detach().to(DTYPE).clone()
        self.d = int(self.theta0.numel())
        self._buffers = {torch.device("cpu"): dict(self.template.named_buffers())}
        self._vmapped = vmap(self._call_params, in_dims=(0, None, 0))

    @property
    def layers(self) -> list[tuple[int, int]]:
        """(out, in) of the module's nn.Linear layers in order (only to size memory, e.g. the
        holdout's chunks): [(m, n)] when it holds none."""
        found = [(mod.out_features, mod.in_features) for mod in self.template.modules()
                 if isinstance(mod, nn.Linear)]
        return found or [(self.m, self.n)]

    def unpack(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """θ (…, d) as the module's parameters by name, each (…, *shape): views, no copy."""
        out, offset, lead = {}, 0, theta.shape[:-1]
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = theta[..., offset:offset + size].view(*lead, *shape)
            offset += size
        return out

    def buffers_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The module's buffers on `device` (θ's: `train { device cuda }`), copied once."""
        kept = self._buffers.get(device)
        if kept is None:
            cpu = self._buffers[torch.device("cpu")]
            kept = self._buffers[device] = {k: b.to(device) for k, b in cpu.items()}
        return kept

    def _call_params(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                     x: torch.Tensor) -> torch.Tensor:
        """The module on states x (B, n) with one candidate's parameters."""
        return functional_call(self.template, {**buffers, **params}, (x,))

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Actions (C, B, m) of C candidates θ (C, d) on their states x (C, B, n):
        u = u* + s ⊙ net(o) with an `around`, o its observation of x."""
        return self.act(self.unpack(theta), x)

    def act(self, params: dict[str, torch.Tensor], x: torch.Tensor,
            w: torch.Tensor | None = None) -> torch.Tensor:
        """Actions (C, B, m); `w` the scenarios' parameters and disturbances at this step, for an
        observation that reads parameters (their nominal values without it)."""
        buffers = self.buffers_on(x.device)
        if self.around is None:
            return self._vmapped(params, buffers, x)
        o = self.around.observation(x, w=w)
        return self.around.output(self._vmapped(params, buffers, o))

    def batched(self, theta: torch.Tensor) -> "BatchedModule":
        return BatchedModule(self, theta)

    def jacobian_at_origin(self, theta: torch.Tensor) -> torch.Tensor:
        """∂π/∂x at x = 0 for each candidate: (C, m, n), by torch.func.jacrev (exact)."""
        zero = torch.zeros(self.n, dtype=theta.dtype, device=theta.device)
        return self._net_jacobian(theta, zero)

    def _net_jacobian(self, theta: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """∂net/∂o at the network input o (p,) for each candidate: (C, m, p)."""
        buffers = self.buffers_on(theta.device)
        one = lambda params, v: self._call_params(params, buffers, v[None])[0]  # noqa: E731
        return vmap(jacrev(one, argnums=1), in_dims=(0, None))(self.unpack(theta), o)

    def jacobian_at_operating_point(self, theta: torch.Tensor) -> torch.Tensor:
        """∂u/∂x at x* for each candidate: (C, m, n) — s ⊙ ∂net/∂o at o* = o(x*), times ∂o/∂x
        at x* (exact chain rule); `jacobian_at_origin` without an `around`."""
        around = self.around
        if around is None:
            return self.jacobian_at_origin(theta)
        J = self._net_jacobian(theta, around.o_star().to(theta.device))
        scale = around.tensors(theta.device)[2]
        if scale is not None:
            J = J * scale[:, None]
        return J @ around.observation_jacobian().to(theta.device)

    def module(self, theta: torch.Tensor | None = None):
        """A torch module holding θ (θ₀ when omitted): the author's module, a copy."""
        from scpo_spec.policies.policy import PolicyModule
        net = copy.deepcopy(self.template)
        theta = self.theta0 if theta is None else torch.as_tensor(theta, dtype=DTYPE)
        nn.utils.vector_to_parameters(theta.detach().clone(), net.parameters())
        if self.around is None:
            return PolicyModule(net, None, n=self.n).to(DTYPE)
        return PolicyModule(net, None, self.around, n=self.n).to(DTYPE)


class BatchedModule:
    """`ModuleFamily.forward` for one set of C candidates, called T times by a rollout."""

    def __init__(self, family: ModuleFamily, theta: torch.Tensor):
        self.family, self.params = family, family.unpack(theta)  # unpacked once, used T times

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None,
                 w: torch.Tensor | None = None) -> torch.Tensor:
        u = self.family.act(self.params, x, w)
        if out is not None and not torch.is_grad_enabled():
            return out.copy_(u)
        return u

    def rollout_step(self, views: RolloutViews) -> Callable[[int], None]:
        """t ↦ U[t] = π(X[t]) on a rollout's time-major buffers (under no_grad)."""
        xs, us, call, params = views.xs, views.us, self.family.act, self.params
        around, held = self.family.around, getattr(views, "uncertain", None)
        ws = held.unbind(0) if held is not None and around is not None and around.uncertain \
            else None  # an observation of parameters reads each step's draws

        def step(t: int) -> None:
            us[t].copy_(call(params, xs[t], None if ws is None else ws[t]))
        return step
