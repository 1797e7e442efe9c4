"""The activations a policy or backup network computes, by name, in float64 torch.

A name is a plain key of ACTIVATIONS, or a parametrised one `leaky_relu:α` / `elu:α` (an ONNX
file's LeakyRelu and Elu carry their slope; `elu` alone is α = 1, torch's default).  Every
consumer — the batched family, the exported module, the backup, the verifier — resolves a name
here, so a network means the same function everywhere.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import nn

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "elu": nn.functional.elu,
               "gelu": nn.functional.gelu, "sigmoid": torch.sigmoid,
               "softplus": nn.functional.softplus, "identity": lambda z: z}
MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU,
           "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "identity": nn.Identity}
PARAMETRISED = {"leaky_relu": (nn.functional.leaky_relu, nn.LeakyReLU),
                "elu": (nn.functional.elu, nn.ELU)}


def split(name: str) -> tuple[str, float | None]:
    """`leaky_relu:0.01` → ('leaky_relu', 0.01); `tanh` → ('tanh', None)."""
    base, _, arg = name.partition(":")
    return base, (float(arg) if arg else None)


def is_known(name: str) -> bool:
    base, arg = split(name)
    return base in PARAMETRISED if arg is not None else name in ACTIVATIONS


def function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise function of `name`."""
    base, arg = split(name)
    if arg is None:
        if name == "leaky_relu":
            return nn.functional.leaky_relu
        return ACTIVATIONS[name]
    return partial(PARAMETRISED[base][0], negative_slope=arg) if base == "leaky_relu" else \
        partial(PARAMETRISED[base][0], alpha=arg)


def module(name: str) -> nn.Module:
    """`name` as a torch module (for the exported policy)."""
    base, arg = split(name)
    if arg is None:
        return MODULES[name]()
    cls = PARAMETRISED[base][1]
    return cls(negative_slope=arg) if base == "leaky_relu" else cls(alpha=arg)


def slope(name: str, z: torch.Tensor) -> torch.Tensor:
    """σ'(z), exactly (the policy's Jacobian at the origin)."""
    base, arg = split(name)
    if base == "leaky_relu":
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, 0.01 if arg is None
                                                                      else arg))
    if base == "elu":
        return torch.where(z > 0, torch.ones_like(z), (1.0 if arg is None else arg) * torch.exp(z))
    if name == "tanh":
        return 1 - torch.tanh(z) ** 2
    if name == "relu":
        return (z > 0).to(z.dtype)
    if name == "gelu":
        return (0.5 * (1 + torch.erf(z / math.sqrt(2)))
                + z * torch.exp(-z * z / 2) / math.sqrt(2 * math.pi))
    if name in ("sigmoid", "softplus"):
        s = torch.sigmoid(z)
        return s * (1 - s) if name == "sigmoid" else s
    return torch.ones_like(z)
