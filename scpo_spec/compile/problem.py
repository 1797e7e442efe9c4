"""Everything the engine needs from a checked spec, built once: the plant, the backup, the
policy family and θ₀, the rollout evaluator for the k metrics, the objective and the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


from scpo_spec.compile.evaluator import Metric, ScenarioEvaluator, make_evaluator
from scpo_spec.compile.objective import Objective, make_objective
from scpo_spec.language.scenario_bounds import training_states
from scpo_spec.plan.scenarios import holdout_draws, holdout_states, training_draws, uncertain_ranges
from scpo_spec.compile.signals import ExpressionCompiler, Reducer
from scpo_spec.policies.backup import Backup, make_backup
from scpo_spec.policies.policy import PolicyFamily, make_policy
from scpo_spec.language.expr import names
from scpo_spec.language.lets import expand
from scpo_spec.language.model import Spec
from scpo_spec.plan.settings import Settings
from scpo_spec.systems.dynamics import Dynamics, make_dynamics


@dataclass
class CompiledSpec:
    spec: Spec
    settings: Settings
    dynamics: Dynamics
    backup: Backup | None
    family: PolicyFamily
    evaluator: ScenarioEvaluator
    objective: Objective
    compiler: ExpressionCompiler = field(repr=False)
    warm_start: dict | None = None  # `policy from`: the header's record (engine/warm.py)

    @property
    def metrics(self) -> list[Metric]:
        return self.evaluator.metrics

    def holdout_evaluator(self, count: int | None = None, draws: bool = True
                          ) -> ScenarioEvaluator:
        """The same metrics on the spec's fresh holdout scenarios; `draws=False` leaves their
        parameters and disturbances to the caller, who passes each chunk's
        (`holdout_draws(spec, count, start, stop)`: engine/holdout.py, memory bounded by a chunk)."""
        return self.evaluator.with_scenarios(
            holdout_states(self.spec, count),
            holdout_draws(self.spec, count) if draws else None)


def compile_controller(spec: Spec, base: Path) -> tuple[Dynamics, Backup | None, PolicyFamily]:
    """The plant, the backup and the policy family of a checked spec: what `compile_spec` makes
    first, and all that rolling a loaded run's policy out needs (`load_run`: no scenarios,
    metrics or objective, whose data files a finished run no longer reads)."""
    dynamics = make_dynamics(spec, base)
    backup = make_backup(spec, dynamics, base)  # a torch file is relative to the spec
    return dynamics, backup, make_policy(spec, dynamics.n, dynamics.m, backup, base)


def compile_spec(spec: Spec, base_dir: Path | None = None) -> CompiledSpec:
    """Compile a spec that passed `check` (its data paths are relative to `base_dir`)."""
    settings = Settings.of(spec)
    base = base_dir if base_dir is not None else (
        Path(spec.path).resolve().parent if spec.path else Path.cwd())
    dynamics, backup, family = compile_controller(spec, base)
    consts = {c.name: c.value.value for c in spec.consts}
    tau = settings.tau if settings.aggregate == "smooth" else None
    compiler = ExpressionCompiler([s.name for s in spec.system.states],
                                  [s.name for s in spec.system.inputs], consts,
                                  backup.P if backup is not None else None, Reducer(tau),
                                  lyapunov_center=dynamics.x_star,
                                  parameters=uncertain_ranges(spec, "parameter")[0],
                                  disturbances=uncertain_ranges(spec, "disturbance")[0])
    metrics = [Metric(**fields, per_scenario=compiler.formula(expand(prop.formula, spec)),
                      uses_linearisation=any(n.id == "spectral_radius"
                                             for n in names(prop.formula)))
               for prop, fields in zip(spec.properties, spec.declared_metrics())]
    horizon = int(spec.scenarios.horizon)
    evaluator = make_evaluator(dynamics, family, metrics, training_states(spec), horizon,
                               compiler.reduce, device=settings.device,
                               draws=training_draws(spec))
    objective = make_objective(spec, family, evaluator, compiler, base)
    return CompiledSpec(spec, settings, dynamics, backup, family, evaluator, objective, compiler)

