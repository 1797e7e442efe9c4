"""The `train` section with its defaults filled in: what the engine runs with, and what a run's
header records (so that an audit can rebuild it from the stored spec text without torch)."""

from __future__ import annotations

from dataclasses import dataclass

from scpo_spec.language.model import DEFAULTS, TRAIN_DEFAULTS, Spec


@dataclass
class Settings:
    """The `train` section with its defaults filled in."""

    steps: int
    optimizer: str
    lr: float
    momentum: float
    directions: int
    perturbation: float
    radius: float
    margin: float
    solver: str
    seed: int
    on_violation: str
    aggregate: str
    tau: float | None
    backtrack: str
    smoothness: str
    executor: str = "local"
    ray_address: str | None = None
    ray_workers: int = 2
    device: str = "cpu"     # where rollouts, the policy and the bank run (certificates: numpy)
    verify_every: int | None = None  # `verify every K`: every K-th update must also be PROVED

    @property
    def bank_size(self) -> int:
        """n: candidates per step — the raw step, the previous update and the probes."""
        return 2 + self.directions

    @classmethod
    def of(cls, spec: Spec) -> Settings:
        t = spec.train
        ident = lambda node, key: node.name if node is not None else TRAIN_DEFAULTS[key]  # noqa: E731
        opt = t.optimizer
        return cls(steps=int(t.steps), optimizer=opt.kind, lr=float(opt.lr),
                   momentum=float(getattr(opt, "momentum", None) or 0.0),
                   directions=int(t.directions), perturbation=float(t.perturbation),
                   radius=float(t.radius), margin=float(t.margin),
                   solver=ident(t.solver, "solver"), seed=int(t.seed) if t.seed is not None else 0,
                   on_violation=ident(t.on_violation, "on_violation"),
                   aggregate=t.aggregate.kind if t.aggregate is not None else "hard",
                   tau=float(t.aggregate.tau) if t.aggregate is not None and t.aggregate.tau
                   is not None else None,
                   backtrack=ident(t.backtrack, "backtrack"),
                   smoothness=ident(t.smoothness, "smoothness"),
                   executor=t.executor.kind if t.executor is not None else "local",
                   ray_address=(t.executor.address.value if getattr(t.executor, "address", None)
                                is not None else None),
                   ray_workers=(int(t.executor.workers) if getattr(t.executor, "workers", None)
                                is not None else 2),
                   device=t.device.name if getattr(t, "device", None) is not None else "cpu",
                   verify_every=int(t.verify_every) if t.verify_every is not None else None)

    def proof_due(self, step: int) -> bool:
        """Whether step `step` (0-based) must prove its update: the K-th, 2K-th, … step."""
        return self.verify_every is not None and (step + 1) % self.verify_every == 0


def declared_seeds(spec: Spec) -> dict:
    """The seeds a run's header records: training, the policy's initialisation, the scenarios."""
    policy = getattr(spec.policy, "seed", None)
    return {"train": Settings.of(spec).seed, "policy": int(policy) if policy is not None else None,
            "scenarios": int(spec.scenarios.seed) if spec.scenarios.seed is not None else 0}


# `verify { }` entries left out: most cells the initial box is split into, seconds before the
# splitting stops (the language's DEFAULTS)
VERIFY_CELLS = int(DEFAULTS[("verify", "cells")])
VERIFY_TIME_LIMIT = float(DEFAULTS[("verify", "time_limit")])


def verify_limits(spec: Spec) -> tuple[int, float]:
    """The `verify { cells  time_limit }` section with its defaults: what `scpo verify` proves
    with unless its flags say otherwise, and what `train { verify every K }` proves with."""
    v = spec.verify
    cells = v.cells if v is not None else None
    limit = v.time_limit if v is not None else None
    return (int(cells) if cells is not None else VERIFY_CELLS,
            float(limit) if limit is not None else VERIFY_TIME_LIMIT)
