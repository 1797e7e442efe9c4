"""TorchScript files named by a spec: `backup torch { file }` and `policy torch { file }`.

A file is loaded with `torch.jit.load` (never unpickled: a TorchScript archive holds code and
tensors, not pickled Python objects), relative to the spec's directory, converted to float64 and
put in eval mode with its parameters frozen.  `check_files` reports every problem as a located
diagnostic at the `file = "…"` string; `load_torch_file` raises `TorchFileError` with the same
message (the path for callers that did not check first).

`policy torch`: θ are the module's parameters, and the batched hot path evaluates C candidate θ at
once, which TorchScript cannot do (`torch.func.functional_call` refuses scripted modules).  So a
`policy torch` file must be a plain MLP — an `nn.Sequential` of `nn.Linear` layers, each followed
by at most one of the supported activations (its own: per-layer activations, the last layer's
included; every layer with a bias or none with one) — and is mapped exactly onto the built-in
MLP family (`mlp_structure`); anything else is refused with a message naming what is supported.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scpo_spec.dtype import DTYPE
from scpo_spec.errors import ScpoError
from scpo_spec.usercode.loader import EXECUTED, refuse_unexpected
from scpo_spec.language.diagnostics import Diagnostic
from scpo_spec.language.model import Spec, Text, TorchBackup, TorchPolicy
from scpo_spec.language.source import Span

# the module names (TorchScript's `original_name`) of the activations the MLP family computes,
# with the constructor arguments that must keep their defaults for the family to be exact
SUPPORTED_ACTIVATIONS = {"Tanh": ("tanh", {}), "ReLU": ("relu", {}),
                         "ELU": ("elu", {"alpha": 1.0}),
                         "GELU": ("gelu", {"approximate": "none"}),
                         "Sigmoid": ("sigmoid", {}),
                         "Softplus": ("softplus", {"beta": 1.0, "threshold": 20.0})}
SUPPORTED = ("an nn.Sequential of nn.Linear layers (all with a bias, or none), each followed by "
             "at most one activation (" + ", ".join(f"nn.{k}" for k in SUPPORTED_ACTIVATIONS)
             + " with default arguments, nn.ELU, nn.LeakyReLU), or a single nn.Linear")
PROBE_BATCH = 4


class TorchFileError(ScpoError):
    """A TorchScript file named by a spec cannot be used; `span` is the `file = "…"` string."""

    def __init__(self, message: str, span: Span | None = None):
        super().__init__(f"{span}: {message}" if span is not None else message)
        self.message, self.span = message, span


def reason(e: BaseException) -> str:
    """One line saying why torch failed: TorchScript's interpreter puts its own banner first and
    the actual error (e.g. 'mat1 and mat2 shapes cannot be multiplied') last."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    line = lines[-1] if lines[0].startswith("The following operation failed") else lines[0]
    for prefix in ("RuntimeError: ", "ValueError: "):
        line = line.removeprefix(prefix)
    return line.split(". ")[0][:200]  # the first sentence: the rest is torch's advice


def resolve(file: Text, base_dir: Path | None, spec: Spec | None = None) -> Path:
    """The file's path: as written when absolute, else relative to the spec's directory."""
    path = Path(file.value).expanduser()
    if path.is_absolute():
        return path
    if base_dir is None:
        base_dir = Path(spec.path).resolve().parent if spec is not None and spec.path else Path.cwd()
    return Path(base_dir) / path


def load_torch_file(file: Text, base_dir: Path | None, n: int, m: int, what: str,
                    spec: Spec | None = None) -> torch.jit.ScriptModule:
    """The TorchScript module of `file`, float64, eval mode, parameters frozen, after checking
    that it maps a (4, n) float64 batch to finite (4, m) values; TorchFileError otherwise."""
    path = resolve(file, base_dir, spec)
    span = file.span
    if not path.is_file():
        raise TorchFileError(f"{what} file '{file.value}' not found ({path})", span)
    try:
        data = path.read_bytes()  # read once: the bytes hashed are the bytes loaded
    except OSError as e:
        raise TorchFileError(f"{what} file '{file.value}' cannot be read: {e.strerror or e}",
                             span) from None
    ran = (str(path.resolve()), hashlib.sha256(data).hexdigest())
    refuse_unexpected(ran[0], ran)  # a trusted run's file: these bytes or none
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, ValueError, …
        raise TorchFileError(f"{what} file '{file.value}' is not a TorchScript archive "
                             f"(torch.jit.load: {reason(e)}); save it with "
                             "torch.jit.save(torch.jit.script(module), path)", span) from None
    EXECUTED[ran[0]] = ran
    module = module.to(DTYPE).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    probe = torch.linspace(-0.5, 0.5, PROBE_BATCH * n, dtype=DTYPE).reshape(PROBE_BATCH, n)
    try:
        with torch.no_grad():
            out = module(probe)
    except Exception as e:  # noqa: BLE001 - the author's code may raise anything
        raise TorchFileError(f"{what} file '{file.value}' fails on a ({PROBE_BATCH}, {n}) "
                             f"float64 batch of states: {type(e).__name__}: {reason(e)}",
                             span) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (PROBE_BATCH, m):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TorchFileError(f"{what} file '{file.value}' maps states ({PROBE_BATCH}, {n}) to "
                             f"{got}; the spec's inputs need ({PROBE_BATCH}, {m})", span)
    if out.dtype != DTYPE:
        raise TorchFileError(f"{what} file '{file.value}' returns {out.dtype} for float64 "
                             "states; it must compute in the states' dtype", span)
    if not torch.isfinite(out).all():
        raise TorchFileError(f"{what} file '{file.value}' returns non-finite values on a "
                             f"({PROBE_BATCH}, {n}) batch of states in [-0.5, 0.5]", span)
    return module


# ---- policy torch: a plain MLP, mapped onto the built-in family ----
@dataclass
class MlpStructure:
    layers: list[tuple[int, int]]   # (out, in) per nn.Linear
    bias: bool
    activation: str                 # the one between layers (policies/activations.py names)
    theta0: torch.Tensor            # the parameters in named_parameters order, float64
    activations: list[str] | None = None  # per layer, the last one's included; None: plain MLP


def _activation_name(kind: str, child) -> str | None:
    """The activations.py name of an activation module, or None when not supported."""
    if kind == "LeakyReLU":
        return f"leaky_relu:{float(getattr(child, 'negative_slope', 0.01))!r}"
    if kind == "ELU" and float(getattr(child, "alpha", 1.0)) != 1.0:
        return f"elu:{float(child.alpha)!r}"
    return SUPPORTED_ACTIVATIONS[kind][0] if kind in SUPPORTED_ACTIVATIONS else None


def mlp_structure(module: torch.nn.Module) -> MlpStructure | str:
    """The MLP a scripted module is, or why it is not one the family can evaluate exactly:
    nn.Linear layers, each followed by at most one activation (its own: they may differ, and
    the last layer may have one)."""
    name = getattr(module, "original_name", type(module).__name__)
    children = list(module.named_children())
    if name == "Linear":
        seq = [module]
    elif name == "Sequential" and children:
        seq = [child for _, child in children]
    else:
        return f"it is a '{name}'"
    layers, biases, acts = [], [], []
    for i, child in enumerate(seq):
        kind = getattr(child, "original_name", type(child).__name__)
        if kind == "Identity":
            continue
        if kind == "Linear":
            if len(acts) < len(layers):
                acts.append("identity")  # Linear after Linear: nothing between
            layers.append((int(child.out_features), int(child.in_features)))
            biases.append(getattr(child, "bias", None) is not None)
            continue
        act = _activation_name(kind, child)
        if act is None:
            return f"it holds a '{kind}' module (item {i} of the Sequential)"
        if len(acts) != len(layers) - 1 or not layers:
            return f"an activation nn.{kind} does not follow an nn.Linear layer"
        for arg, default in SUPPORTED_ACTIVATIONS.get(kind, (None, {}))[1].items():
            if kind != "ELU" and getattr(child, arg, default) != default:
                return f"its nn.{kind} has {arg}={getattr(child, arg)!r} (only {default!r})"
        acts.append(act)
    if not layers:
        return "it holds no nn.Linear layer"
    if len(acts) < len(layers):
        acts.append("identity")
    if len(set(biases)) > 1:
        return "some nn.Linear layers have a bias and some do not"
    for (out, _), (_, inp) in zip(layers, layers[1:]):
        if out != inp:
            return "its layers' sizes do not chain"
    params = [p.detach().to(DTYPE).reshape(-1) for _, p in module.named_parameters()]
    expected = sum(o * i + (o if biases[0] else 0) for o, i in layers)
    theta0 = torch.cat(params) if params else torch.zeros(0, dtype=DTYPE)
    if theta0.numel() != expected:
        return "it holds parameters besides its nn.Linear layers' weights and biases"
    between = acts[:-1]
    plain = acts[-1] == "identity" and len(set(between)) <= 1
    activation = between[0] if between else "identity"
    return MlpStructure(layers, biases[0], activation, theta0, None if plain else acts)


def _sizes(spec: Spec, controller=None) -> tuple[int, int]:
    """(what the controller's network reads, inputs): its `observe` entries when it declares
    them, else the states (it sees x − x*)."""
    observe = getattr(controller, "observe", None)
    return (len(observe) if observe is not None else len(spec.system.states),
            len(spec.system.inputs))


def load_policy_structure(spec: Spec, base_dir: Path | None) -> MlpStructure:
    """`policy torch { file }` as the MLP family's layers and θ₀; TorchFileError otherwise."""
    n, m = _sizes(spec, spec.policy)
    file = spec.policy.file
    module = load_torch_file(file, base_dir, n, m, "policy", spec)
    found = mlp_structure(module)
    if isinstance(found, str):
        raise TorchFileError(f"policy file '{file.value}' is not a structure scpo can train "
                             f"(its θ must be evaluated for many candidates at once): {found}; "
                             f"supported: {SUPPORTED}", file.span)
    if found.layers[0][1] != n or found.layers[-1][0] != m:
        raise TorchFileError(f"policy file '{file.value}' maps {found.layers[0][1]} states to "
                             f"{found.layers[-1][0]} inputs; the spec has {n} and {m}"
                             + " (its network reads the `observe` entries)"
                             * (getattr(spec.policy, "observe", None) is not None), file.span)
    return found


def check_files(spec: Spec, base_dir: Path | None) -> list[Diagnostic]:
    """Located errors for the spec's TorchScript files (none when it names none).  Loading a
    file runs its code: this is for the spec's author (`check`, `train`), never for a run
    directory read back."""
    diagnostics = []
    if spec.system is None:
        return diagnostics
    n, m = _sizes(spec, spec.backup)
    if isinstance(spec.backup, TorchBackup) and spec.backup.file is not None:
        try:
            load_torch_file(spec.backup.file, base_dir, n, m, "backup", spec)
        except TorchFileError as e:
            diagnostics.append(Diagnostic(message=e.message, span=e.span))
    if isinstance(spec.policy, TorchPolicy) and spec.policy.file is not None:
        try:
            load_policy_structure(spec, base_dir)
        except TorchFileError as e:
            diagnostics.append(Diagnostic(message=e.message, span=e.span,
                                          hint="write the policy as nn.Sequential(nn.Linear, "
                                          "nn.Tanh, nn.Linear, …), or use `policy mlp { "
                                          "residual = backup }` with it as `backup torch`"
                                          if "not a structure" in e.message else None))
    return diagnostics


def jacobian_at_origin(module: torch.nn.Module, n: int) -> np.ndarray:
    """∂u/∂x at x = 0, (m, n), by autograd through the scripted module."""
    x0 = torch.zeros(1, n, dtype=DTYPE)
    J = torch.autograd.functional.jacobian(lambda x: module(x)[0], x0)  # (m, 1, n)
    return J[:, 0, :].detach().numpy().astype(np.float64)
