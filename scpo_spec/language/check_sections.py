"""The checks of the sections that describe the problem rather than the loop: the required
sections and names, numbers, shapes and ranges, the scenarios, the properties' options, the
objective and the training settings (a part of `Checker`, language/check.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language.check_system import _not_a_file
from scpo_spec.language.data import TableError, read_columns
from scpo_spec.language.diagnostics import did_you_mean, one_of
from scpo_spec.language.evaluate import BUILTIN_CONSTANTS
from scpo_spec.language.functions import SIGNAL_FUNCTIONS
from scpo_spec.language.scenario_bounds import HOLDOUT_BETA, holdout_bound
from scpo_spec.language.sections import REQUIRED

RESERVED = ("state", "input", "backup", "spectral_radius", "until", "not", *BUILTIN_CONSTANTS)
HOLDOUT_USEFUL = 0.05  # a holdout bound above this (5 %) is warned about: it certifies little


class SectionChecks:
    """Names, shapes, ranges; scenarios, properties, objective, train."""

    def _check_required(self) -> None:
        where = self._file_start()
        if self.spec.name is None:
            self.error("missing `spec NAME` header", where,
                       'start the file with `spec my_spec "What it is for"`')
        for section in REQUIRED:
            if getattr(self.spec, section) is None and section not in self.unbuilt:
                self.error(f"missing section '{section}'", where,
                           f"every spec needs one `{section}` section")
        if not self.spec.constraints and not self.spec.stability and \
                "properties" not in self.unbuilt:
            self.error("no constraint or stability margin", where,
                       "a spec needs at least one `constraint NAME: FORMULA` or `stability` line")

    # ---------------------------------------------------------------- names
    def _check_signal_names(self) -> None:
        system = self.spec.system
        if system is None:
            return
        seen: dict[str, M.Signal] = {}
        for sig in [*system.states, *system.inputs]:
            if sig.name in seen:
                first = seen[sig.name].span
                self.error(f"duplicate signal name '{sig.name}'", sig.span,
                           f"first declared at line {first.line}" if first else None)
            elif sig.name in RESERVED or sig.name in SIGNAL_FUNCTIONS:
                self.error(f"'{sig.name}' is a reserved word and cannot name a signal", sig.span)
            else:
                seen[sig.name] = sig
        for const in self.spec.consts:
            if const.name in seen:
                self.error(f"constant '{const.name}' has the same name as a signal", const.span,
                           "rename the constant")
            elif const.name in RESERVED:
                self.error(f"'{const.name}' is a reserved word and cannot name a constant",
                           const.span)
        kind = "observation" if isinstance(system, M.GymnasiumSystem) else "state"
        if not system.states:
            self.error(f"system {system.kind} declares no {kind}", system.span,
                       f"add `{kind} NAME, …`")
        if not system.inputs:
            word = "action" if isinstance(system, M.GymnasiumSystem) else "input"
            self.error(f"system {system.kind} declares no {word}", system.span,
                       f"add `{word} NAME, …`")

    # ---------------------------------------------------------------- shapes and ranges
    def _shape(self, q: M.Quantity | None, rows: int, cols: int | None, what: str,
               required: bool = True, owner: M.Node | None = None,
               hint: str | None = None) -> np.ndarray | None:
        """Check a vector (cols None) or matrix against the declared dimensions."""
        if q is None:
            if required and owner is not None:
                self.error(f"missing {what}", owner.span)
            return None
        if q.value is None or self.spec.system is None:  # no dimensions to check against
            return None
        a = np.asarray(q.value, dtype=np.float64)
        if cols is None:
            want = f"a vector of {rows}"
            ok = a.ndim == 1 and a.shape[0] == rows
        else:
            want = f"{rows}×{cols}"
            ok = a.ndim == 2 and a.shape == (rows, cols)
        if not ok:
            got = "a number" if a.ndim == 0 else (f"a vector of {a.shape[0]}" if a.ndim == 1
                                                  else f"{a.shape[0]}×{a.shape[1]}")
            self.error(f"{what} must be {want}, got {got}", q.span, hint or self._dims_hint())
            return None
        return a

    def _dims_hint(self) -> str:
        return f"the system has {self.n} state(s) and {self.m} input(s)"

    def _number(self, q: M.Quantity | None, what: str, *, positive=False, nonnegative=False,
                integer=False, owner: M.Node | None = None, required=False) -> float | None:
        if q is None:
            if required:
                key = what.split()[-1]
                sep = "= " if isinstance(owner, (M.PendulumSystem, M.OdeSystem)) else ""
                self.error(f"missing {what}", owner.span if owner is not None else None,
                           f"add `{key} {sep}…`")
            return None
        if q.value is None:
            return None
        if np.ndim(q.value) != 0:
            self.error(f"{what} must be a number", q.span)
            return None
        v = float(q.value)
        if integer and v != int(v):
            self.error(f"{what} must be a whole number, got {v:g}", q.span)
            return None
        if positive and v <= 0:
            self.error(f"{what} must be positive, got {v:g}", q.span)
            return None
        if nonnegative and v < 0:
            self.error(f"{what} must not be negative, got {v:g}", q.span)
            return None
        return v

    def _interval(self, q: M.Quantity, what: str, allow_point: bool) -> tuple | None:
        if q.value is None:
            return None
        a = np.asarray(q.value, dtype=np.float64)
        if a.ndim != 1 or a.shape[0] != 2:
            self.error(f"{what} must be an interval [lo, hi] of two numbers", q.span)
            return None
        lo, hi = float(a[0]), float(a[1])
        if lo > hi:
            self.error(f"reversed interval [{lo:g}, {hi:g}] in {what}", q.span,
                       f"write [{hi:g}, {lo:g}]: the lower bound comes first")
            return None
        if lo == hi and not allow_point:
            self.error(f"empty interval [{lo:g}, {hi:g}] in {what}", q.span,
                       "no value lies strictly inside it, so it can never hold with a margin")
            return None
        return lo, hi

    # ---------------------------------------------------------------- scenarios and properties

    def _check_scenarios(self) -> None:
        sc = self.spec.scenarios
        if sc is None:
            return
        gym = isinstance(self.spec.system, M.GymnasiumSystem)
        given: dict[str, M.InitialRange] = {}
        for rng in sc.initial:
            name = rng.signal.name
            if gym:
                self.error("gymnasium scenarios start from env.reset(seed); `initial` ranges "
                           "do not apply", rng.span)
                continue
            if name in self.inputs:
                self.error(f"'{name}' is an input; initial ranges are for states",
                           rng.signal.span)
                continue
            if self.states and name not in self.states:
                self.error(f"unknown state '{name}'", rng.signal.span,
                           did_you_mean(name, self.states) or f"states are {one_of(self.states)}")
                continue
            given[name] = rng
            self._interval(rng.interval, f"the initial range of '{name}'", allow_point=True)
        if not gym and self.spec.system is not None:
            missing = [s for s in self.states if s not in given]
            if missing:
                self.error(f"no initial range for {one_of(missing)}", sc.span,
                           f"add `initial {missing[0]} in [lo, hi]`")
        if sc.count is not None and sc.grid is not None:
            self.error("give either `count` or `grid`, not both", sc.grid.span)
        elif sc.count is None and sc.grid is None:
            self.error("scenarios need `count N` (random) or `grid N` (per axis)", sc.span)
        if gym and sc.grid is not None:
            self.error("gymnasium scenarios are resets with seeds seed, seed+1, …; use `count`",
                       sc.grid.span)
        holdout = self._check_counts()
        self._number(sc.seed, "seed", nonnegative=True, integer=True)
        bound = holdout_bound(int(holdout)) if holdout is not None else None
        if bound is not None and bound > HOLDOUT_USEFUL:
            enough = math.ceil(math.log(1 / HOLDOUT_BETA) / HOLDOUT_USEFUL)
            self.diag.warning(f"holdout {int(holdout)} bounds P(violation) only by ln(1/β)/N = "
                              f"{bound:.3g} (β = {HOLDOUT_BETA:g}): above "
                              f"{HOLDOUT_USEFUL * 100:g} %, so it certifies nothing useful",
                              sc.holdout.span, f"holdout {enough} or more gives a bound of at "
                                               f"most {HOLDOUT_USEFUL * 100:g} %")
        if isinstance(self.spec.system, M.StaticSystem):
            h = self._number(sc.horizon, "horizon", positive=True, integer=True)
            if h is not None and h != 1:
                self.error("a static system has no dynamics: its horizon is 1", sc.horizon.span)
        else:
            self._number(sc.horizon, "horizon", positive=True, integer=True, required=True,
                         owner=sc)

    # ---------------------------------------------------------------- objective and train
    def _check_objective(self) -> None:
        obj = self.spec.objective
        if isinstance(obj, M.ImitationObjective):
            if obj.expert is None:
                self.error("imitation needs an expert", obj.span,
                           "add `expert linear { K = [[…]] }`")
            else:
                self._shape(obj.expert.K, self.m, self.n, "expert K", owner=obj.expert)
                self._shape(obj.expert.bias, self.m, None, "expert bias", required=False)
            if obj.states is None:
                self.error("imitation needs a state distribution", obj.span,
                           "add `states normal { mean = […]  std = […] }`")
            elif isinstance(obj.states, M.NormalStates):
                self._shape(obj.states.mean, self.n, None, "mean", owner=obj.states)
                std = self._shape(obj.states.std, self.n, None, "std", owner=obj.states)
                if std is not None and np.any(std <= 0):
                    self.error("std must be positive", obj.states.std.span)
            elif isinstance(obj.states, M.UniformStates):
                lo = self._shape(obj.states.low, self.n, None, "low", owner=obj.states)
                hi = self._shape(obj.states.high, self.n, None, "high", owner=obj.states)
                if lo is not None and hi is not None and np.any(lo >= hi):
                    self.error("every low must be below its high", obj.states.span)
            self._number(obj.count, "count", positive=True, integer=True, required=True,
                         owner=obj)
            self._number(obj.seed, "seed", nonnegative=True, integer=True)
        elif isinstance(obj, M.RegressionObjective):
            self._check_regression(obj)
        elif isinstance(obj, M.ReturnObjective):
            if self.spec.system is not None and not isinstance(self.spec.system,
                                                              M.GymnasiumSystem):
                self.error(f"objective return needs a gymnasium system (its rewards); a "
                           f"'{self.spec.system.kind}' system has none", obj.span,
                           "use `objective cost { stage … }` for a model-based system")
            self._number(obj.population, "population", positive=True, integer=True)
            self._number(obj.sigma, "sigma", positive=True)
            self._number(obj.seed, "seed", nonnegative=True, integer=True)
        elif isinstance(obj, M.CostObjective):
            if isinstance(self.spec.system, M.GymnasiumSystem):
                self.error("objective cost needs a model-based system (a differentiable "
                           "rollout); a gymnasium environment is not differentiable", obj.span,
                           "use `objective return { … }` (the environment's rewards) or "
                           "`objective imitation { … }`")
            if obj.stage is None:
                self.error("a cost objective needs a stage cost", obj.span,
                           "add `stage quad(Q, state) + quad(R, input)`")
            for what, e in (("stage", obj.stage), ("terminal", obj.terminal)):
                if e is None:
                    continue
                t = self._num(self.x(e))
                if t is None:
                    continue
                if t.size != 1:
                    self.error(f"the {what} cost must be a scalar, got a vector of {t.size}",
                               e.span, "reduce it with norm(…) or quad(P, …)")
                elif not t.policy:
                    self.error(f"the {what} cost reads no signal", e.span)
                elif what == "terminal" and t.inputs:
                    self.error("the terminal cost can only read states (there is no input at "
                               "the final step)", e.span)

    def _check_regression(self, obj: M.RegressionObjective) -> None:
        for sig in obj.inputs if self.spec.system is not None else []:
            if sig.name not in self.states:
                self.error(f"regression input '{sig.name}' is not a state of the system",
                           sig.span, did_you_mean(sig.name, self.states)
                           or f"the model reads {one_of(self.states)}")
        for sig in obj.targets if self.spec.system is not None else []:
            if sig.name not in self.inputs:
                self.error(f"regression target '{sig.name}' is not an input of the system",
                           sig.span, did_you_mean(sig.name, self.inputs)
                           or f"the model outputs {one_of(self.inputs)}")
        if not obj.inputs or not obj.targets:
            self.error("regression needs `inputs` and `targets` (CSV columns)", obj.span)
        if obj.data is None:
            self.error("regression needs a data file", obj.span, 'add `data "file.csv"`')
            return
        base = self.base_dir or Path.cwd()
        path = (base / obj.data.value)
        if path.is_dir():
            self.error(f"data file '{obj.data.value}' is a directory, not a CSV file",
                       obj.data.span, f"{path} (paths are relative to the spec)")
            return
        if not path.is_file():
            self.error(f"data file '{obj.data.value}' " + _not_a_file(path), obj.data.span,
                       f"looked for {path} (paths are relative to the spec)")
            return
        try:
            read_columns(path, [s.name for s in [*obj.inputs, *obj.targets]])
        except TableError as err:
            self.error(err.message(obj.data.value), obj.data.span, err.hint)

    def _check_train(self) -> None:
        tr = self.spec.train
        if tr is None:
            return
        self._number(tr.steps, "steps", positive=True, integer=True, required=True, owner=tr)
        if tr.optimizer is None and "optimizer" not in self.unbuilt:
            self.error("missing optimizer", tr.span, "add `optimizer sgd { lr = 0.01 }`")
        elif tr.optimizer is not None:
            self._number(tr.optimizer.lr, "lr", positive=True, required=True,
                         owner=tr.optimizer)
            if isinstance(tr.optimizer, M.SgdOptimizer) and tr.optimizer.momentum is not None:
                mom = self._number(tr.optimizer.momentum, "momentum", nonnegative=True)
                if mom is not None and mom >= 1:
                    self.error("momentum must be below 1", tr.optimizer.momentum.span)
        self._number(tr.directions, "directions", positive=True, integer=True, required=True,
                     owner=tr)
        nu = self._number(tr.perturbation, "perturbation", positive=True, required=True,
                          owner=tr)
        r = self._number(tr.radius, "radius", positive=True, required=True, owner=tr)
        if nu is not None and r is not None and nu >= r:
            self.error(f"perturbation {nu:g} must be smaller than radius {r:g}",
                       tr.perturbation.span, "probes are small (ν ≪ r) finite-difference steps")
        self._number(tr.margin, "margin", nonnegative=True, required=True, owner=tr)
        self._number(tr.seed, "seed", nonnegative=True, integer=True)
        if tr.aggregate is not None and tr.aggregate.kind == "smooth":
            self._number(tr.aggregate.tau, "smooth temperature", positive=True)
        if isinstance(tr.executor, M.RayExecutor):
            self._number(tr.executor.workers, "workers", positive=True, integer=True)
            try:
                import ray  # noqa: F401
            except ImportError:
                self.diag.warning("executor ray: ray is not installed", tr.executor.span,
                                  "pip install 'scpo-spec[ray]'")
        if tr.solver is not None and tr.solver.name == "gurobi":
            try:
                import gurobipy  # noqa: F401
            except ImportError:
                self.diag.warning("solver gurobi: gurobipy is not installed", tr.solver.span,
                                  "pip install 'scpo-spec[gurobi]'")
