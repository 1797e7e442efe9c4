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


class Let(Node):
    """`let NAME = EXPR`: a named expression of states, inputs, constants, parameters,
    disturbances and other lets; downstream code sees it expanded (language/lets.py)."""

    name: Signal
    expr: Expr


class Uncertain(Node):
    """`parameter NAME in [lo, hi]` (one value per scenario, held over the rollout) or
    `disturbance NAME in [lo, hi]` (a fresh value at every step, per scenario)."""

    section: Literal["parameter", "disturbance"]
    name: Signal
    interval: Quantity  # [lo, hi], folded


class Assignment(Node):
    """One entry of `equilibrium { T1 = m * g / 2 }`: a state's or input's operating value."""

    signal: Signal
    value: Quantity


# ---- system ----
class LinearSystem(Node):
    """x⁺ = A x + B u."""

    kind: Literal["linear"] = "linear"
    states: list[Signal]
    inputs: list[Signal]
    A: Quantity | None = None
    B: Quantity | None = None
    equilibrium: list[Assignment] = Field(default_factory=list)  # x*, u*; 0 when unnamed


class PendulumSystem(Node):
    """θ = 0 upright; gymnasium Pendulum-v1 dynamics without its clipping."""

    kind: Literal["pendulum"] = "pendulum"
    states: list[Signal]
    inputs: list[Signal]
    dt: Quantity | None = None
    g: Quantity | None = None
    m: Quantity | None = None
    l: Quantity | None = None
    equilibrium: list[Assignment] = Field(default_factory=list)  # x*, u*; 0 when unnamed


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
    equilibrium: list[Assignment] = Field(default_factory=list)  # x*, u*; 0 when unnamed


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
    equilibrium: list[Assignment] = Field(default_factory=list)  # x*, u*; 0 when unnamed


class PythonSystem(Node):
    """x⁺ = f(x, u) computed by the author's callable `module:function` (float64 torch tensors,
    any leading batch shape); imported only by `check` and `train` of the author's spec."""

    kind: Literal["python"] = "python"
    function: Text | None = None      # written as the section's label: "module:callable"
    states: list[Signal]
    inputs: list[Signal]
    equilibrium: list[Assignment] = Field(default_factory=list)  # x*, u*; 0 when unnamed


System = Annotated[Union[LinearSystem, PendulumSystem, StaticSystem, GymnasiumSystem,
                         DiscreteSystem, OdeSystem, PythonSystem],
                   Field(discriminator="kind")]


# ---- controllers: every backup and policy ----
class Controller(Node):
    """What every policy and backup shares: u = u* + output_scale ⊙ net(o), o = observe(x) when
    declared, else x − x*.  Written last in a block (layout.entries)."""

    observe: list[Expr] | None = None      # the network's input; None = x − x*
    output_scale: Quantity | None = None   # per input (or one number), default 1


# ---- backup ----
class LqrBackup(Controller):
    kind: Literal["lqr"] = "lqr"
    Q: Quantity | None = None
    R: Quantity | None = None


class LinearBackup(Controller):
    """u = u* + K (x − x*) + k."""

    kind: Literal["linear"] = "linear"
    K: Quantity | None = None
    k: Quantity | None = None


class TorchBackup(Controller):
    """A frozen TorchScript controller, states (N, n) → inputs (N, m)."""

    kind: Literal["torch"] = "torch"
    file: Text | None = None


class OnnxBackup(Controller):
    """A frozen ONNX network, read with `onnx` and evaluated in float64."""

    kind: Literal["onnx"] = "onnx"
    file: Text | None = None


Backup = Annotated[Union[LqrBackup, LinearBackup, TorchBackup, OnnxBackup],
                   Field(discriminator="kind")]


# ---- policy ----
class MlpPolicy(Controller):
    kind: Literal["mlp"] = "mlp"
    hidden: Quantity | None = None
    activation: Ident | None = None
    residual: Ident | None = None  # `backup`: u = u_backup(x) + net(x), net's last layer zero
    seed: Quantity | None = None


class LinearPolicy(Controller):
    kind: Literal["linear"] = "linear"
    init: Ident | None = None  # `backup` (start at the backup's gain) or `zero`


class TorchPolicy(Controller):
    """A TorchScript policy whose parameters are θ (θ₀: the parameters in the file)."""

    kind: Literal["torch"] = "torch"
    file: Text | None = None


class OnnxPolicy(Controller):
    """An ONNX network whose weights are θ (θ₀: the weights in the file)."""

    kind: Literal["onnx"] = "onnx"
    file: Text | None = None


class PythonPolicy(Controller):
    """`policy python "pkg.mod:make"`: a callable returning an nn.Module whose parameters are θ."""

    kind: Literal["python"] = "python"
    factory: Text | None = None  # written as the section's label: "module:callable"


class FromPolicy(Controller):
    """`policy from "RUN" { head = "…" }`: θ₀ = that run's last accepted θ, its family reused."""

    kind: Literal["from"] = "from"
    run: Text | None = None      # written as the section's label
    head: Text | None = None     # the run's log head (64 hex) it must have, when given


Policy = Annotated[Union[MlpPolicy, LinearPolicy, TorchPolicy, OnnxPolicy, PythonPolicy,
                         FromPolicy], Field(discriminator="kind")]


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
    verify_every: Quantity | None = None  # `verify every K`: every K-th update must be PROVED


class Verify(Node):
    """`verify { cells 4096  time_limit 300 }`: the budget of `scpo verify`."""

    cells: Quantity | None = None       # most initial-set cells the splitting may make
    time_limit: Quantity | None = None  # seconds


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
    ("verify", "cells"): 4096, ("verify", "time_limit"): 300,
}


class Spec(Node):
    """A whole spec. A spec that passed `check` has every required section."""

    name: Ident | None = None
    title: Text | None = None
    consts: list[Const] = Field(default_factory=list)
    lets: list[Let] = Field(default_factory=list)
    parameters: list[Uncertain] = Field(default_factory=list)
    disturbances: list[Uncertain] = Field(default_factory=list)
    system: System | None = None
    backup: Backup | None = None
    policy: Policy | None = None
    scenarios: Scenarios | None = None
    constraints: list[Property] = Field(default_factory=list)
    stability: list[Property] = Field(default_factory=list)
    objective: Objective | None = None
    train: Train | None = None
    verify: Verify | None = None
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

    def equilibrium_point(self) -> tuple[list[float], list[float]]:
        """(x*, u*) as floats in declaration order: the `equilibrium` block's values, 0 for every
        state and input it does not name (and everywhere when there is none)."""
        system = self.system
        if system is None:
            return [], []
        given = {a.signal.name: float(a.value.value) for a in getattr(system, "equilibrium", [])
                 if a.value.value is not None and np.ndim(a.value.value) == 0}
        return ([given.get(s.name, 0.0) for s in system.states],
                [given.get(s.name, 0.0) for s in system.inputs])

    def same_as(self, other: Spec) -> bool:
        """Equal in meaning: same content, wherever and in whichever syntax it was written."""
        return self.model_dump() == other.model_dump()
