"""The typed model of a spec, which both syntaxes produce and everything downstream reads.

Numbers keep the expression they were written as (`Quantity.expr`, so `fmt` and `convert` never
lose `0.5 * dt^2`) and its value once constants are folded (`Quantity.value`: a float, or nested
lists for vectors and matrices).  Every node keeps its source span; spans and folded values are
left out of `model_dump()`, so two models compare equal when they mean the same spec.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import Field

from scpo_spec.language.expr import Expr, Node


class Quantity(Node):
    """A number, vector or matrix: the expression as written and its folded value."""

    expr: Expr
    value: Any = Field(default=None, exclude=True)

    def array(self) -> np.ndarray:
        return np.asarray(self.value, dtype=np.float64)

    def __float__(self) -> float:
        return float(self.value)

    def __int__(self) -> int:
        return int(round(float(self.value)))


class Ident(Node):
    """A bare word chosen from a fixed set (an activation, a solver, `backup`, …)."""

    name: str


class Text(Node):
    """A quoted string (a title, a data path, a gymnasium id)."""

    value: str


class Signal(Node):
    """A named state/observation or input/action component."""

    name: str


class Const(Node):
    name: str
    value: Quantity


# ---- system ----
class LinearSystem(Node):
    """x⁺ = A x + B u."""

    kind: Literal["linear"] = "linear"
    states: list[Signal]
    inputs: list[Signal]
    A: Quantity | None = None
    B: Quantity | None = None


class PendulumSystem(Node):
    """θ = 0 upright; gymnasium Pendulum-v1 dynamics without its clipping."""

    kind: Literal["pendulum"] = "pendulum"
    states: list[Signal]
    inputs: list[Signal]
    dt: Quantity | None = None
    g: Quantity | None = None
    m: Quantity | None = None
    l: Quantity | None = None


class StaticSystem(Node):
    """No dynamics: the policy is a model y = f(x), rolled out for one step."""

    kind: Literal["static"] = "static"
    states: list[Signal]
    inputs: list[Signal]


class GymnasiumSystem(Node):
    """A registered gymnasium environment; observation components are the 'states'."""

    kind: Literal["gymnasium"] = "gymnasium"
    env_id: Text | None = None
    states: list[Signal]  # written `observation …`
    inputs: list[Signal]  # written `action …`


class Equation(Node):
    """One state's equation in a declared system: `next p = …` or `der p = …`."""

    state: Signal
    expr: Expr


class DiscreteSystem(Node):
    """x⁺ = f(x, u), declared: one `next` equation per state (any order)."""

    kind: Literal["discrete"] = "discrete"
    states: list[Signal]
    inputs: list[Signal]
    next: list[Equation] = Field(default_factory=list)


class OdeSystem(Node):
    """ẋ = f(x, u), declared: one `der` equation per state, integrated over each control period
    dt (input held) with `substeps` steps of the `integrator`."""

    kind: Literal["ode"] = "ode"
    states: list[Signal]
    inputs: list[Signal]
    dt: Quantity | None = None
    integrator: Ident | None = None   # rk4 (default) | euler | midpoint
    substeps: Quantity | None = None  # default 1
    der: list[Equation] = Field(default_factory=list)


class PythonSystem(Node):
    """x⁺ = f(x, u) computed by the author's callable `module:function` (float64 torch tensors,
    any leading batch shape); imported only by `check` and `train` of the author's spec."""

    kind: Literal["python"] = "python"
    function: Text | None = None      # written as the section's label: "module:callable"
    states: list[Signal]
    inputs: list[Signal]


System = Annotated[Union[LinearSystem, PendulumSystem, StaticSystem, GymnasiumSystem,
                         DiscreteSystem, OdeSystem, PythonSystem],
                   Field(discriminator="kind")]


# ---- backup ----
class LqrBackup(Node):
    kind: Literal["lqr"] = "lqr"
    Q: Quantity | None = None
    R: Quantity | None = None


class LinearBackup(Node):
    kind: Literal["linear"] = "linear"
    K: Quantity | None = None


class TorchBackup(Node):
    """A frozen TorchScript controller, states (N, n) → inputs (N, m)."""

    kind: Literal["torch"] = "torch"
    file: Text | None = None


Backup = Annotated[Union[LqrBackup, LinearBackup, TorchBackup], Field(discriminator="kind")]


# ---- policy ----
class MlpPolicy(Node):
    kind: Literal["mlp"] = "mlp"
    hidden: Quantity | None = None
    activation: Ident | None = None
    residual: Ident | None = None  # `backup`: u = u_backup(x) + net(x), net's last layer zero
    seed: Quantity | None = None


class LinearPolicy(Node):
    kind: Literal["linear"] = "linear"
    init: Ident | None = None  # `backup` (start at the backup's gain) or `zero`


class TorchPolicy(Node):
    """A TorchScript policy whose parameters are θ (θ₀: the parameters in the file)."""

    kind: Literal["torch"] = "torch"
    file: Text | None = None


Policy = Annotated[Union[MlpPolicy, LinearPolicy, TorchPolicy], Field(discriminator="kind")]


# ---- scenarios ----
class InitialRange(Node):
    signal: Signal
    interval: Quantity  # [lo, hi]


class Scenarios(Node):
    initial: list[InitialRange] = Field(default_factory=list)
    count: Quantity | None = None
    grid: Quantity | None = None
    seed: Quantity | None = None
    horizon: Quantity | None = None
    holdout: Quantity | None = None


# ---- constraints and stability margins ----
class Property(Node):
    """One safety metric g_i(θ) ≤ 0: a `constraint` or a `stability` margin."""

    section: Literal["constraint", "stability"]
    name: Signal
    formula: Expr
    smoothness: Quantity | None = None
    margin: Quantity | None = None     # per-metric margin, overriding train.margin
    lipschitz: Quantity | None = None  # a bound on |∇g|, used to keep probes safe


# ---- objective ----
class LinearExpert(Node):
    kind: Literal["linear"] = "linear"
    K: Quantity | None = None
    bias: Quantity | None = None


class NormalStates(Node):
    kind: Literal["normal"] = "normal"
    mean: Quantity | None = None
    std: Quantity | None = None


class UniformStates(Node):
    kind: Literal["uniform"] = "uniform"
    low: Quantity | None = None
    high: Quantity | None = None


StateDistribution = Annotated[Union[NormalStates, UniformStates], Field(discriminator="kind")]


class ImitationObjective(Node):
    kind: Literal["imitation"] = "imitation"
    expert: LinearExpert | None = None
    states: StateDistribution | None = None
    count: Quantity | None = None
    seed: Quantity | None = None
    loss: Ident | None = None


class RegressionObjective(Node):
    kind: Literal["regression"] = "regression"
    data: Text | None = None
    inputs: list[Signal] = Field(default_factory=list)
    targets: list[Signal] = Field(default_factory=list)
    loss: Ident | None = None


class CostObjective(Node):
    kind: Literal["cost"] = "cost"
    stage: Expr | None = None
    terminal: Expr | None = None


class ReturnObjective(Node):
    """Maximise the episode return (sum of the environment's rewards) over the scenarios, with an
    antithetic evolution-strategies gradient estimate: `population` pairs θ ± σε per step."""

    kind: Literal["return"] = "return"
    population: Quantity | None = None
    sigma: Quantity | None = None
    seed: Quantity | None = None


Objective = Annotated[Union[ImitationObjective, RegressionObjective, CostObjective,
                            ReturnObjective], Field(discriminator="kind")]


# ---- train ----
class SgdOptimizer(Node):
    kind: Literal["sgd"] = "sgd"
    lr: Quantity | None = None
    momentum: Quantity | None = None


class AdamOptimizer(Node):
    kind: Literal["adam"] = "adam"
    lr: Quantity | None = None


Optimizer = Annotated[Union[SgdOptimizer, AdamOptimizer], Field(discriminator="kind")]


class LocalExecutor(Node):
    """Rollouts in this process (batched torch, or one gymnasium vector environment)."""

    kind: Literal["local"] = "local"


class RayExecutor(Node):
    """Candidate rollouts spread over a Ray cluster (`address`, else RAY_ADDRESS, else a local
    Ray instance), in `workers` tasks per evaluation."""

    kind: Literal["ray"] = "ray"
    address: Text | None = None
    workers: Quantity | None = None


Executor = Annotated[Union[LocalExecutor, RayExecutor], Field(discriminator="kind")]


class Aggregate(Node):
    """`hard` max, or `smooth(τ)`: τ·logsumexp(h/τ), an upper bound of the max."""

    kind: Literal["hard", "smooth"]
    tau: Quantity | None = None


class Train(Node):
    steps: Quantity | None = None
    optimizer: Optimizer | None = None
    directions: Quantity | None = None
    perturbation: Quantity | None = None
    radius: Quantity | None = None
    margin: Quantity | None = None
    solver: Ident | None = None
    seed: Quantity | None = None
    on_violation: Ident | None = None
    aggregate: Aggregate | None = None
    backtrack: Ident | None = None
    precision: Ident | None = None
    smoothness: Ident | None = None
    executor: Executor | None = None
    device: Ident | None = None    # cpu | cuda: where the rollouts, the policy and the bank run


# Defaults LANGUAGE.md gives for optional train entries.
TRAIN_DEFAULTS = {"solver": "clarabel", "on_violation": "raise", "aggregate": "hard",
                  "backtrack": "armijo", "precision": "float64", "smoothness": "given",
                  "device": "cpu"}

# Every other optional entry and the value it takes when left out (section, entry) → value.
# Anything not listed here (and not in TRAIN_DEFAULTS) is required, and `check` says so.
DEFAULTS = {
    ("policy mlp", "activation"): "tanh", ("policy mlp", "residual"): "none",
    ("policy mlp", "seed"): 0, ("policy linear", "init"): "zero",
    ("scenarios", "seed"): 0, ("scenarios", "holdout"): 0,
    ("objective imitation", "seed"): 0, ("objective imitation", "loss"): "mse",
    ("objective regression", "loss"): "mse", ("train", "seed"): 0,
    ("optimizer sgd", "momentum"): 0,
    ("objective return", "population"): 8, ("objective return", "sigma"): 0.02,
    ("objective return", "seed"): 0, ("train", "executor"): "local",
    ("executor ray", "workers"): 2,
    ("system ode", "integrator"): "rk4", ("system ode", "substeps"): 1,
}


class Spec(Node):
    """A whole spec. A spec that passed `check` has every required section."""

    name: Ident | None = None
    title: Text | None = None
    consts: list[Const] = Field(default_factory=list)
    system: System | None = None
    backup: Backup | None = None
    policy: Policy | None = None
    scenarios: Scenarios | None = None
    constraints: list[Property] = Field(default_factory=list)
    stability: list[Property] = Field(default_factory=list)
    objective: Objective | None = None
    train: Train | None = None
    path: str | None = Field(default=None, exclude=True)

    @property
    def properties(self) -> list[Property]:
        """Every safety metric, constraints first, in the order written."""
        return [*self.constraints, *self.stability]

    def declared_metrics(self) -> list[dict]:
        """Each property as a run's header records it (name, section, the formula as written,
        margin, smoothness, Lipschitz constant, FILE:LINE): compile_spec's metrics take these,
        and an audit compares a header's with its own stored spec text."""
        from scpo_spec.language.expr import unparse
        default = self.train.margin if self.train is not None else None
        out = []
        for prop in self.properties:
            span, margin = prop.name.span, prop.margin if prop.margin is not None else default
            out.append({
                "name": prop.name.name, "section": prop.section,
                "formula": unparse(prop.formula),
                "margin": float(margin) if margin is not None else None,
                "smoothness": float(prop.smoothness) if prop.smoothness is not None else None,
                "lipschitz": float(prop.lipschitz) if prop.lipschitz is not None else None,
                "location": f"{span.file}:{span.line}" if span is not None else ""})
        return out

    def same_as(self, other: Spec) -> bool:
        """Equal in meaning: same content, wherever and in whichever syntax it was written."""
        return self.model_dump() == other.model_dump()
