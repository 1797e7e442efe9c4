"""Using what was trained: `load_run` gives a finished run back as a `Run` — its spec, its last
accepted policy as a torch module, its verdict — and `Run` rolls that policy out on the spec's
own plant (`simulate`, `metrics`).  The public `scpo_spec.load_run` and `scpo_spec.Run`."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from scpo_spec.audit.loaded import LoadedRun
from scpo_spec.audit.records import Header
from scpo_spec.audit.rundir import RunError
from scpo_spec.audit.verdict import Verdict
from scpo_spec.compile.problem import CompiledSpec, compile_controller, compile_spec
from scpo_spec.dtype import DTYPE
from scpo_spec.plan.code import expecting, ran_as_recorded
from scpo_spec.language.model import Spec

if TYPE_CHECKING:
    from scpo_spec.policies.policy import PolicyFamily
    from scpo_spec.systems.dynamics import Dynamics

__all__ = ["Run", "RunError", "Trajectory", "load_run"]


class Trajectory(NamedTuple):
    """`Run.simulate`'s result: states (…, T+1, n) and inputs (…, T, m); unpacks as a pair."""

    states: torch.Tensor | np.ndarray
    inputs: torch.Tensor | np.ndarray


@dataclass
class Run:
    """A finished (or interrupted) run: its spec, and its last accepted policy as a torch module.

    `.policy` takes numpy or torch states, (n,) or (N, n), any float dtype, and computes in
    float64 (numpy in → numpy out; torch in → float64 torch out).  The properties read the spec
    only (no rollout); `simulate` and `metrics` roll the policy out on the spec's own plant."""

    path: Path
    spec: Spec
    policy: torch.nn.Module
    theta: torch.Tensor
    header: Header
    verdict: Verdict              # CERTIFIED or not, and why (audit.verdict: every reader's)
    base_dir: Path | None = None  # where the spec's data paths are relative to
    _family: PolicyFamily | None = field(default=None, repr=False, compare=False)
    _dynamics: Dynamics | None = field(default=None, repr=False, compare=False)
    _compiled: CompiledSpec | None = field(default=None, repr=False, compare=False)

    # ---- the spec's values, read without touching the policy ----
    @property
    def horizon(self) -> int:
        """T: the steps of every scenario's rollout (`simulate`'s default)."""
        return int(self.spec.scenarios.horizon)

    @property
    def state_names(self) -> list[str]:
        """The columns of a state, in order (a gymnasium system's observation components)."""
        return [s.name for s in self.spec.system.states]

    @property
    def input_names(self) -> list[str]:
        """The columns of an input (the policy's output), in order."""
        return [s.name for s in self.spec.system.inputs]

    @property
    def metric_names(self) -> list[str]:
        """The safety metrics, in the spec's order (the keys of `metrics()`)."""
        return [p.name.name for p in self.spec.properties]

    @property
    def margins(self) -> dict[str, float]:
        """Metric → its margin: every accepted policy had g ≤ −margin on the scenarios."""
        return {str(m["name"]): float(m["margin"]) for m in self.header.metrics}

    @property
    def initial_box(self) -> dict[str, tuple[float, float]]:
        """State → (lo, hi) of the scenarios' initial states ({} for a gymnasium system, whose
        environment's reset draws them)."""
        from scpo_spec.language.scenario_bounds import initial_box
        if self._is_gym:
            return {}
        lo, hi = initial_box(self.spec)
        return {name: (float(a), float(b)) for name, a, b in zip(self.state_names, lo, hi)}

    @property
    def scenarios(self) -> np.ndarray:
        """The training scenarios: initial states (S, n) float64, or reset seeds (S,) int64 for a
        gymnasium system — exactly those every certificate was verified on."""
        from scpo_spec.language.scenario_bounds import training_states
        return training_states(self.spec)

    @property
    def parameter_names(self) -> list[str]:
        """The spec's `parameter`s, in order (the columns of `simulate(parameters=…)`)."""
        from scpo_spec.plan.scenarios import uncertain_ranges
        return uncertain_ranges(self.spec, "parameter")[0]

    @property
    def disturbance_names(self) -> list[str]:
        """The spec's `disturbance`s, in order (the columns of `simulate(disturbances=…)`)."""
        from scpo_spec.plan.scenarios import uncertain_ranges
        return uncertain_ranges(self.spec, "disturbance")[0]

    @property
    def uncertainty(self) -> dict[str, tuple[float, float]]:
        """Parameter or disturbance → (lo, hi), the range its draws come from ({} if none)."""
        from scpo_spec.plan.scenarios import uncertain_ranges
        out = {}
        for section in ("parameter", "disturbance"):
            names, lo, hi = uncertain_ranges(self.spec, section)
            out.update({n: (float(a), float(b)) for n, a, b in zip(names, lo, hi)})
        return out

    def spec_summary(self) -> dict:
        """The spec's shape in one plain dict (JSON-ready): name, system, sizes, names, horizon,
        scenario count, initial box, parameters and disturbances with their ranges, and each
        metric's section, formula and margin."""
        return {"name": self.spec.name.name if self.spec.name else None,
                "system": self.spec.system.kind, "n": len(self.state_names),
                "m": len(self.input_names), "states": self.state_names,
                "inputs": self.input_names, "horizon": self.horizon,
                "scenarios": int(self.header.dimensions.get("scenarios", 0)),
                "initial_box": {k: list(v) for k, v in self.initial_box.items()},
                "parameters": {k: list(self.uncertainty[k]) for k in self.parameter_names},
                "disturbances": {k: list(self.uncertainty[k]) for k in self.disturbance_names},
                "metrics": [{"name": m["name"], "section": m["section"], "formula": m["formula"],
                             "margin": m["margin"]} for m in self.header.metrics]}

    # ---- rolling the policy out ----
    @property
    def _is_gym(self) -> bool:
        return self.spec.system.kind == "gymnasium"

    def simulate(self, x0=None, steps: int | None = None, *, seeds=None, parameters=None,
                 disturbances=None) -> Trajectory:
        """Roll the final policy out on the spec's own plant, exactly as training's rollouts do.

        x0: one initial state (n,) → states (T+1, n), inputs (T, m); or a batch (B, n) → (B, …);
        default: the spec's training scenarios.  steps: T, default the spec's horizon.  Numpy
        (or a list) in → numpy out; torch in → float64 torch out (differentiable in x0).

        A spec with `parameter`s and `disturbance`s needs their values with an x0 of one's own:
        `parameters` (p,) for one x0, (B, p) or (p,) for all of a batch, and `disturbances`
        (T, d), or (B, T, d); or a dict by name (a number or (B,) per parameter, (T,) or (B, T)
        per disturbance); columns in `parameter_names` / `disturbance_names` order.  Without
        x0 the training scenarios come with their own draws (those certified).

        A gymnasium system's state cannot be set: its environment's reset puts it somewhere
        from a seed.  So for those, pass `seeds` (one int → one episode, or a sequence), not x0;
        the episodes run in the environment (gymnasium must be installed) and come back as
        numpy.  An episode that ends early keeps its last observation (as in training)."""
        steps = self.horizon if steps is None else int(steps)
        if steps < 0:
            raise ValueError(f"steps must be ≥ 0 (got {steps})")
        if self._is_gym:
            if x0 is not None:
                raise ValueError(f"'{self.spec.system.env_id.value}' is a gymnasium system: its "
                                 "initial state is set by the environment's reset, not by x0; "
                                 "pass seeds=… (reset seeds) instead")
            chosen = self.scenarios if seeds is None else seeds
            single = np.ndim(chosen) == 0
            x = torch.as_tensor(np.atleast_1d(np.asarray(chosen, dtype=np.int64)))
            states, inputs = self._roll(x, steps)
            states, inputs = states.numpy(), inputs.numpy()
            return Trajectory(states[0], inputs[0]) if single else Trajectory(states, inputs)
        if seeds is not None:
            raise ValueError(f"seeds are for gymnasium systems; a '{self.spec.system.kind}' "
                             "system starts from x0")
        as_torch = isinstance(x0, torch.Tensor)
        x = self._states(self.scenarios if x0 is None else x0)
        single = x.ndim == 1
        draws = self._draws(1 if single else x.shape[0], steps, single, parameters,
                            disturbances, x0 is None)
        with nullcontext() if as_torch else torch.no_grad():
            states, inputs = self._roll(x[None] if single else x, steps, draws)
        if single:
            states, inputs = states[0], inputs[0]
        return (Trajectory(states, inputs) if as_torch
                else Trajectory(states.numpy(), inputs.numpy()))

    def metrics(self, x0=None, *, seeds=None, parameters=None, disturbances=None
                ) -> dict[str, float]:
        """Metric name → g of the final policy: the value `scpo train` certified (≤ −margin) on
        the spec's training scenarios, or the same metric over other initial states x0 (B, n)
        (reset `seeds` for a gymnasium system), with their `parameters` and `disturbances` as
        `simulate` takes them.  +inf where a rollout left the finite numbers."""
        compiled = self._compile()
        ev = compiled.evaluator
        try:
            if x0 is None and seeds is None and parameters is None and disturbances is None:
                g = ev(self.theta[None])[0]
            else:
                if self._is_gym:
                    if x0 is not None:
                        raise ValueError("a gymnasium system's scenarios are reset seeds: pass "
                                         "seeds=…, not x0")
                    xs = torch.as_tensor(np.atleast_1d(np.asarray(seeds, dtype=np.int64)))
                else:
                    if seeds is not None:
                        raise ValueError(f"seeds are for gymnasium systems; a "
                                         f"'{self.spec.system.kind}' system starts from x0")
                    xs = self._states(self.scenarios if x0 is None else x0)
                    single = xs.ndim == 1
                    xs = xs[None] if single else xs
                draws = self._draws(xs.shape[0], ev.horizon, single, parameters, disturbances,
                                    x0 is None)
                h = ev.per_scenario(self.theta[None], xs, draws)
                g = ev.reducer.max(h, 1).squeeze(1)[0]
                g = torch.where(torch.isfinite(g), g, torch.inf)
        finally:
            ev.close()  # a gymnasium plant's environments; nothing for a torch plant
        return {name: float(v) for name, v in zip(ev.names, g.tolist())}

    def _states(self, x0) -> torch.Tensor:
        n = len(self.state_names)
        x = (x0.to(DTYPE) if isinstance(x0, torch.Tensor)
             else torch.from_numpy(np.array(x0, dtype=np.float64)))
        if x.ndim not in (1, 2) or x.shape[-1] != n:
            raise ValueError(f"initial states must have shape (n,) or (B, n) with n = {n} "
                             f"({', '.join(self.state_names)}); got shape {tuple(x.shape)}")
        return x

    def _draws(self, count: int, steps: int, single: bool, parameters, disturbances,
               training: bool):
        """The scenarios' Draws (None without uncertainty) from `simulate`'s arguments; the
        training scenarios' own when none are given for them (cut to `steps`)."""
        from scpo_spec.plan.scenarios import Draws, given_draws, training_draws
        if training and parameters is None and disturbances is None:
            own = training_draws(self.spec)
            if own is None:
                return None
            if steps > own.disturbances.shape[0]:
                raise ValueError(f"the training scenarios' disturbances last {self.horizon} "
                                 f"steps; pass disturbances=… to simulate {steps}")
            return Draws(own.parameters, own.disturbances[:steps])
        if isinstance(parameters, torch.Tensor):
            parameters = parameters.detach().cpu().numpy()
        if isinstance(disturbances, torch.Tensor):
            disturbances = disturbances.detach().cpu().numpy()
        return given_draws(self.spec, parameters, disturbances, count, steps, single)

    def _roll(self, x: torch.Tensor, steps: int, draws=None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's own batched rollout (one candidate: this run's θ) for `steps` steps."""
        from scpo_spec.compile.evaluator import make_evaluator
        if steps == 0 and not self._is_gym:  # the engine's loop needs one step to stack
            return x[:, None, :], x.new_zeros(x.shape[0], 0, self._dynamics.m)
        ev = make_evaluator(self._dynamics, self._family, [], x.detach().numpy(), steps, None,
                            draws=draws)
        try:
            states, inputs = ev.rollout(self.theta[None], x, ev.draws)
        finally:
            ev.close()
        return states[0], inputs[0]

    def compiled_spec(self) -> CompiledSpec:
        """The run's spec compiled once, its code and ONNX files held to the bytes it recorded."""
        return self._compile()

    def _compile(self) -> CompiledSpec:
        if self._compiled is None:
            from scpo_spec.compile.usercode import import_plant
            with expecting(self.header.code, self.spec, self.base_dir):
                compiled = compile_spec(self.spec, self.base_dir)
                import_plant(compiled.dynamics)
            self._compiled = compiled
        return self._compiled


def load_run(run_dir: str | Path | LoadedRun, *, trust_code: bool = False, head: str | None = None,
             key: str | Path | None = None, allow_incomplete: bool = False) -> Run:
    """A run directory that passes `scpo audit` (with `head` and `key`, as its --head and --key)
    → `Run`: `.spec` (the model), `.policy` (float64, numpy or torch states (N, n) or (n,) →
    actions), the last policy the log accepted — never a state file the log disowns — and
    `.verdict` (CERTIFIED or not, and why: the verdict every reader gives).  See `Run` for
    `simulate`, `metrics` and the spec's values.

    RunError for what `scpo audit` refuses: a broken chain or certificate, an accepted step
    whose logged g violates, a spec copy or header that is not the stored spec, a state file
    that is not the log's, a chain that does not end at `head`, a signature that does not
    verify with `key` (an Ed25519 public key file), and a run that has not ended (unless
    `allow_incomplete`).  A run whose spec names code (a python plant, a gymnasium
    `module:Env`, a TorchScript backup or policy) is refused unless `trust_code`: then its
    files must hash as the run recorded before they run.  The run directory is read once
    (audit/loaded.py); a LoadedRun a caller already holds may be given."""
    from scpo_spec.audit.rundir import CodeChanged
    from scpo_spec.audit.verdict import judge
    from scpo_spec.compile.usercode import import_plant
    from scpo_spec.plan.code import untrusted
    run = LoadedRun.of(run_dir)
    header = run.header
    if not trust_code:  # a run that names code is refused first, none of it run
        spec, base_dir = run.checked_spec()
        if untrusted(spec):
            raise RunError(untrusted(spec))
    audit, verdict = judge(run, head=head, key=Path(key) if key is not None else None)
    refused = verdict.refusals(allow_incomplete)
    if refused:
        more = (" (allow_incomplete=True loads a run that has not ended)"
                if not audit.complete and not allow_incomplete else "")
        raise RunError(f"{run.path} does not pass `scpo audit`: {'; '.join(refused)}{more}; "
                       "not loading its policy")
    if trust_code:  # only a run that passes the audit has its code run
        spec, base_dir = run.checked_spec(trust_code=True)
    theta = torch.from_numpy(run.final_theta(audit.final_theta)).to(DTYPE)
    with expecting(header.code, spec, base_dir):  # the recorded bytes, or nothing runs
        dynamics, _, family = compile_controller(spec, base_dir)
        import_plant(dynamics)  # now, under the check: not at the first step
    wrong = ran_as_recorded(header.code, spec, base_dir)  # each piece ran, from those bytes
    if wrong:
        raise CodeChanged(f"not trusting the code of {run.path}: {wrong[0]}")
    if theta.shape != family.theta0.shape:
        raise RunError(f"{run.run.state} holds {theta.numel()} weights; the spec's policy has "
                       f"{family.d}")
    return Run(run.path, spec, family.module(theta).eval(), theta, header, verdict, base_dir,
               _family=family, _dynamics=dynamics)
