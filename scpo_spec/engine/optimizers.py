"""The raw step s of ALGORITHM.md step 1: what SGD (with momentum) or Adam would do.

Written out (a few lines each) rather than taken from torch.optim because SCPO needs the
*proposal* without applying it: the projection decides the actual update.  The state (moments)
takes in every gradient, whether or not the projected step was accepted.
"""

from __future__ import annotations

import torch


class Optimizer:
    def __init__(self, kind: str, lr: float, momentum: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.kind, self.lr, self.momentum, self.betas, self.eps = kind, lr, momentum, betas, eps
        self.state: dict = {"t": 0}

    def propose(self, grad: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(step, the state to commit if the step is accepted)."""
        t = self.state["t"] + 1
        if self.kind == "sgd":
            if not self.momentum:
                return -self.lr * grad, {"t": t}
            buf = grad if "buf" not in self.state else self.momentum * self.state["buf"] + grad
            return -self.lr * buf, {"t": t, "buf": buf}
        b1, b2 = self.betas
        m = (1 - b1) * grad + (b1 * self.state["m"] if "m" in self.state else 0)
        v = (1 - b2) * grad * grad + (b2 * self.state["v"] if "v" in self.state else 0)
        step = -self.lr * (m / (1 - b1 ** t)) / (torch.sqrt(v / (1 - b2 ** t)) + self.eps)
        return step, {"t": t, "m": m, "v": v}

    def commit(self, state: dict) -> None:
        self.state = state
