"""Semantic checks of a built model: names, shapes, ranges, formulas, data, environments.

Each `_check_*` looks at one thing and reports every problem it finds with its location, so a
user sees all their mistakes at once, sorted by position.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scpo_spec.language.scenario_bounds import HOLDOUT_BETA, HOLDOUT_CHUNK_BYTES, holdout_bound, \
    rollout_bytes, training_states
from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language.data import TableError, read_columns
from scpo_spec.usercode.loader import CodeMismatch, load_module, one_line
from scpo_spec.language.check_v3 import V3Checks
from scpo_spec.language.dynamics import (EQUILIBRIUM_HINT, OPERATING_POINT_HINT, linearisation,
                                         linearisation_uses, nominal_values, not_an_equilibrium,
                                         off_equilibrium, right_hand_side, riccati_problem,
                                         step_map)
from scpo_spec.language.diagnostics import Collector, did_you_mean, excerpt, one_of
from scpo_spec.language.evaluate import BUILTIN_CONSTANTS, EvalError, evaluate
from scpo_spec.language.lets import LetCycle, expand, find_cycle, let_table
from scpo_spec.language.source import Span

REQUIRED_SECTIONS = ("system", "policy", "scenarios", "objective", "train")
SIGNAL_FUNCTIONS = ("abs", "norm", "min", "max", "sqrt", "exp", "log", "sin", "cos", "tan",
                    "tanh", "atan2", "clip", "sign", "quad", "lyapunov")
# Names a declared system's equation cannot read: it is a function of the named states, inputs
# and constants at one step.
NOT_IN_EQUATIONS = {
    "state": "name the states one by one (an equation is one number per state)",
    "input": "name the inputs one by one (an equation is one number per state)",
    "spectral_radius": "spectral_radius is a property of the closed loop, not of the plant",
    "backup": "an equation reads states, inputs and constants",
}
RESERVED = ("state", "input", "backup", "spectral_radius", "until", "not", *BUILTIN_CONSTANTS)
MAX_SCENARIOS = 1_000_000
MAX_HOLDOUT = 1_000_000  # holdout scenarios: the report and each final check roll them all out
LYAPUNOV_FLOOR = 1e-12  # = compile.signals.LYAPUNOV_FLOOR: V(x₀) at or below it divides by ~0
MEMORY_SHARE = 0.5      # an evaluation that needs more than this share of the machine is refused
HOLDOUT_USEFUL = 0.05  # a holdout bound above this (5 %) is warned about: it certifies little


@dataclass
class Ty:
    """The type of a formula or signal expression, as far as the checks need it."""

    kind: str            # "bool" or "num"
    size: int = 1        # components per scenario and step
    states: bool = False  # reads state signals (t = 0 … T)
    inputs: bool = False  # reads input signals (t = 0 … T−1)
    policy: bool = False  # depends on the policy at all (signals, spectral_radius, lyapunov)


class Checker(V3Checks):
    def __init__(self, spec: M.Spec, diagnostics: Collector, base_dir: Path | None,
                 unbuilt: set[str] = frozenset(), run_code: bool = True):
        self.spec = spec
        self.run_code = run_code  # False: never import or open code the spec names (a run's spec)
        self.unbuilt = unbuilt
        self.diag = diagnostics
        self.base_dir = base_dir
        self.consts = {c.name: c.value.value for c in spec.consts if c.value.value is not None}
        system = spec.system
        self.states = [s.name for s in system.states] if system else []
        self.inputs = [s.name for s in system.inputs] if system else []
        self.n, self.m = len(self.states), len(self.inputs)
        # v3: lets are checked where they are used, expanded (a cycle is reported on its own);
        # parameters are numbers per scenario, disturbances numbers per step (like inputs)
        self.lets = let_table(spec)
        self.let_cycle = find_cycle(spec)
        self.parameters = [u.name.name for u in spec.parameters]
        self.disturbances = [u.name.name for u in spec.disturbances]
        self.nominal = nominal_values(spec)
        horizon = spec.scenarios.horizon if spec.scenarios else None
        self.horizon = _as_int(horizon)
        if self.horizon is None and isinstance(system, M.StaticSystem):
            self.horizon = 1

    def error(self, message, span, hint=None):
        self.diag.error(message, span, hint)

    def x(self, e: E.Node) -> E.Node:
        """`e` with its lets expanded (as written while the lets form a cycle)."""
        if self.let_cycle is not None:
            return e
        try:
            return expand(e, self.spec)
        except LetCycle:
            return e

    # ---------------------------------------------------------------- entry point
    def run(self) -> None:
        self._check_required()
        self._check_signal_names()
        self._check_v3_names()
        self._check_system()
        self._check_uncertain()
        self._check_backup()
        self._check_policy()
        self._check_controllers()
        self._check_scenarios()
        self._check_properties()
        self._check_objective()
        self._check_train()
        self._check_verify()
        if not self.diag.has_errors:  # these need a model whose parts are all valid
            self._check_linearisation_point()
            self._check_lyapunov_starts()
            self._check_resources()

    def _file_start(self) -> Span | None:
        if self.spec.path is None:
            return None
        return Span(file=self.spec.path, line=1, column=1, end_line=1, end_column=2)

    def _check_required(self) -> None:
        where = self._file_start()
        if self.spec.name is None:
            self.error("missing `spec NAME` header", where,
                       'start the file with `spec my_spec "What it is for"`')
        for section in REQUIRED_SECTIONS:
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

    # ---------------------------------------------------------------- sections
    def _check_system(self) -> None:
        system = self.spec.system
        if isinstance(system, M.LinearSystem):
            self._shape(system.A, self.n, self.n, "A", owner=system)
            self._shape(system.B, self.n, self.m, "B", owner=system)
        elif isinstance(system, M.PendulumSystem):
            if self.n != 2 or self.m != 1:
                self.error("a pendulum has two states (angle, angular velocity) and one input "
                           f"(torque); got {self.n} and {self.m}", system.span,
                           "write `state theta, omega  input torque`")
            for name, check in (("dt", "positive"), ("g", "nonnegative"), ("m", "positive"),
                                ("l", "positive")):
                self._number(getattr(system, name), f"pendulum {name}", required=True,
                             owner=system, **{check: True})
        elif isinstance(system, M.GymnasiumSystem):
            self._check_gymnasium(system)
        elif isinstance(system, M.DiscreteSystem):
            self._check_equations(system, system.next, "next")
        elif isinstance(system, M.OdeSystem):
            self._number(system.dt, "ode dt", positive=True, required=True, owner=system)
            self._number(system.substeps, "substeps", positive=True, integer=True)
            self._check_equations(system, system.der, "der")
        elif isinstance(system, M.PythonSystem):
            self._check_python_function(system)

    def _check_equations(self, system: M.DiscreteSystem | M.OdeSystem,
                         equations: list[M.Equation], word: str) -> None:
        """One equation per state (none missing, none unknown), each a scalar value of the
        states, inputs and constants, finite at the origin (x = 0, u = 0)."""
        given = set()
        for eq in equations:
            name = eq.state.name
            if name not in self.states:
                if name in self.inputs:
                    self.error(f"'{name}' is an input; `{word}` equations are for states",
                               eq.state.span, f"states are {one_of(self.states)}"
                               if self.states else None)
                else:
                    self.error(f"`{word}` equation for unknown state '{name}'", eq.state.span,
                               did_you_mean(name, self.states) or (
                                   f"states are {one_of(self.states)}" if self.states
                                   else "declare it: `state NAME, …`"))
                continue
            given.add(name)
            if self._check_equation_expr(eq, word):
                self._check_finite_at_origin(eq, word)
        missing = [s for s in self.states if s not in given
                   and f"{word} {s}" not in self.unbuilt and f"{word} *" not in self.unbuilt]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            self.error(f"no `{word}` equation for state{plural} {one_of(missing)}", system.span,
                       f"every state has exactly one equation: add `{word} {missing[0]} = …`")

    def _check_equation_expr(self, eq: M.Equation, word: str) -> bool:
        """The right-hand side is a scalar value; True when it is (and can be evaluated)."""
        what = f"the `{word}` equation of '{eq.state.name}'"
        expr = self.x(eq.expr)
        for node in E.walk(expr):
            if isinstance(node, E.FORMULA_NODES):
                sort = "a temporal operator" if isinstance(node, (E.Temporal, E.Until)) \
                    else "a condition"
                self.error(f"{what} is a value, not {sort}", node.span,
                           "an equation gives the state's next value (or derivative) from the "
                           "states, inputs and constants at one step; use min, max, clip or "
                           "sign for a switch")
                return False
            if isinstance(node, E.Name) and node.id in NOT_IN_EQUATIONS:
                self.error(f"{what} cannot read '{node.id}'", node.span,
                           NOT_IN_EQUATIONS[node.id])
                return False
            if isinstance(node, E.Call) and node.func == "lyapunov":
                self.error(f"{what} cannot call lyapunov (a property of the closed loop)",
                           node.span)
                return False
        t = self._num(expr)
        if t is None:
            return False
        if t.size != 1:
            self.error(f"{what} must be a number, got a vector of {t.size}", eq.expr.span,
                       "an equation gives one state's value")
            return False
        return True

    def _check_finite_at_origin(self, eq: M.Equation, word: str) -> None:
        env = dict(self.consts)
        env.update({name: 0.0 for name in [*self.states, *self.inputs]})
        env.update(self.nominal)
        try:
            evaluate(self.x(eq.expr), env)
        except EvalError as err:
            self.error(f"the `{word}` equation of '{eq.state.name}' is not finite at the origin "
                       f"(x = 0, u = 0): {err.message}", err.span or eq.expr.span,
                       "the dynamics are linearised at the origin and every rollout may pass "
                       "it; guard the expression (e.g. sqrt(x^2 + 1e-9), log(1 + x^2))")

    def _check_uncertain(self) -> None:
        """`parameter`/`disturbance`: a plant that can read them, and a backup that does not:
        declared equations can; the code of a `python` or `gymnasium` plant is not given the
        draws, so there they are refused rather than silently ignored."""
        items = [*self.spec.parameters, *self.spec.disturbances]  # (ranges, names: check_v3)
        backup_sees = getattr(self.spec.backup, "observe", None) or []
        read = [n for e in backup_sees for n in E.names(self.x(e)) if n.id in self.parameters]
        if read:  # a backup is a fixed controller of the state, called without the draws
            self.error(f"the backup's observe reads the parameter '{read[0].id}': a backup's "
                       "observation cannot read parameters", read[0].span or self.spec.backup.span,
                       "observe parameters in the policy, or use the middle of the range "
                       "as a const")
        system = self.spec.system
        if items and isinstance(system, (M.PythonSystem, M.GymnasiumSystem)):
            u = items[0]
            self.error(f"{u.section} '{u.name.name}': parameters and disturbances are not "
                       f"supported with a `system {system.kind}` plant (its code is not given "
                       "their draws)", u.span,
                       "declare the plant's equations (`system discrete` or `system ode`), "
                       "which may use them")

    def _check_python_function(self, system: M.PythonSystem) -> None:
        """`system python "module:callable"`: the label's shape only (it is imported, needing
        torch, when the spec is compiled; never here)."""
        if system.function is None:
            self.error("a python system needs its function", system.span,
                       'write `system python "my_package.plant:dynamics" { state …  input … }`')
            return
        module, colon, func = system.function.value.partition(":")
        if not colon or not func or not all(
                part.isidentifier() for part in [*module.split("."), *func.split(".")]):
            self.error(f"'{system.function.value}' is not `module:function`",
                       system.function.span,
                       'write the module path, a colon and the callable: '
                       '"my_package.plant:dynamics"')

    def _check_gymnasium(self, system: M.GymnasiumSystem) -> None:
        if system.env_id is None:
            self.error("a gymnasium system needs the environment's id", system.span,
                       'write `system gymnasium "Pendulum-v1" { … }`')
        try:
            import gymnasium
        except ImportError:  # a broken install: say so where the system is declared
            self.error("gymnasium is not installed",
                       system.env_id.span if system.env_id is not None else system.span,
                       "pip install gymnasium")
            return
        if system.env_id is None:
            return
        env_id = system.env_id.value
        if ":" in env_id and not self.run_code:  # registering it would import its module
            return
        if ":" in env_id:  # gymnasium's "module:EnvId": importing the module registers the id
            if not self._import_env_module(env_id, system.env_id.span):
                return
            registered = env_id.partition(":")[2]
        else:
            registered = env_id
        if registered not in gymnasium.registry:
            module = env_id.partition(":")[0] if ":" in env_id else None
            where = f" (after importing '{module}')" if module else ""
            self.error(f"unknown gymnasium environment '{registered}'{where}",
                       system.env_id.span,
                       did_you_mean(registered, gymnasium.registry.keys())
                       or (f"'{module}' must call gymnasium.register(id=\"{registered}\", …) "
                           "when imported" if module else
                           "it must be registered with gymnasium (`gymnasium.pprint_registry()`)"))
            return
        try:
            env = gymnasium.make(env_id)
        except Exception as err:  # noqa: BLE001 - missing optional dependencies, etc.
            self.error(f"cannot create gymnasium environment '{env_id}': "
                       f"{str(err).splitlines()[0] if str(err) else type(err).__name__}",
                       system.env_id.span)
            return
        try:
            obs, act = env.observation_space, env.action_space
        finally:
            env.close()
        if not isinstance(act, gymnasium.spaces.Box):
            self.error(f"'{env_id}' has a {type(act).__name__} action space; SCPO needs "
                       "continuous actions (a Box)", system.env_id.span,
                       "pick an environment with continuous actions")
        elif int(np.prod(act.shape)) != self.m and system.inputs:
            self.error(f"'{env_id}' has {int(np.prod(act.shape))} action component(s), "
                       f"but {self.m} are named", system.inputs[0].span.to(system.inputs[-1].span))
        if not isinstance(obs, gymnasium.spaces.Box):
            self.error(f"'{env_id}' has a {type(obs).__name__} observation space; only flat "
                       "Box observations can be named", system.env_id.span)
        elif int(np.prod(obs.shape)) != self.n and system.states:
            self.error(f"'{env_id}' has {int(np.prod(obs.shape))} observation component(s), "
                       f"but {self.n} are named",
                       system.states[0].span.to(system.states[-1].span))

    def _import_env_module(self, env_id: str, span: Span | None) -> bool:
        """Import the module of a "module:EnvId" gymnasium id (as gymnasium.make would), with
        a located error for a missing module or one that fails to import.  Only `check` and
        `train` of the author's own spec get here; a run directory never imports (audit/)."""
        module, _, name = env_id.partition(":")
        if not module or not name or not all(p.isidentifier() for p in module.split(".")):
            self.error(f"'{env_id}' is not `module:EnvId`", span,
                       'write the module that registers the environment, a colon and its id: '
                       '"my_package.envs:Cart-v0"')
            return False
        try:
            load_module(module, self.base_dir)
        except CodeMismatch:
            raise
        except ModuleNotFoundError as err:
            if err.name is not None and (module == err.name or module.startswith(err.name + ".")):
                self.error(f"module '{module}' not found (named by the gymnasium id "
                           f"'{env_id}')", span,
                           f"no module '{err.name}' next to the spec or on the Python path; "
                           "keep it beside the spec, install its package, or add its folder "
                           "to PYTHONPATH")
                return False
            self.error(f"importing module '{module}' failed: {one_line(err)}", span,
                       "the module is imported so that it registers the environment")
            return False
        except BaseException as err:  # noqa: BLE001 - the author's code can raise anything
            if isinstance(err, KeyboardInterrupt):
                raise
            self.error(f"importing module '{module}' failed: {one_line(err)}", span,
                       "the module is imported so that it registers the environment")
            return False
        return True

    def _linearisable(self) -> bool:
        """Dynamics with a linearisation at the origin: built-in, declared, or the author's
        python function (compile linearises that one by autograd; its numbers are not known
        here, so the checks that need them skip it)."""
        return isinstance(self.spec.system, LINEARISABLE)

    def _declared_linearisation(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(A, B) of a declared system at the origin, by central differences of its numpy
        one-step map (compile uses autograd on the torch map; a test keeps them close)."""
        system = self.spec.system
        try:
            return linearisation(system, self.consts, spec=self.spec)
        except (EvalError, KeyError, TypeError, ValueError, FloatingPointError):
            return None  # an equation that cannot be evaluated: reported by its own check

    def _check_backup(self) -> None:
        backup = self.spec.backup
        if backup is None or self.spec.system is None:
            return
        if isinstance(backup, M.LqrBackup):
            if not self._linearisable():
                self.error(f"an lqr backup needs a system linearisable at the origin (linear, "
                           f"pendulum, discrete, ode or python), not "
                           f"'{self.spec.system.kind}'", backup.span,
                           "use `backup linear { K = … }`")
            Q = self._shape(backup.Q, self.n, self.n, "Q", owner=backup)
            R = self._shape(backup.R, self.m, self.m, "R", owner=backup)
            if Q is not None and (not np.allclose(Q, Q.T) or np.linalg.eigvalsh(
                    (Q + Q.T) / 2).min() < -1e-12):
                self.error("Q must be symmetric positive semidefinite", backup.Q.span)
            if R is not None and (not np.allclose(R, R.T) or np.linalg.eigvalsh(
                    (R + R.T) / 2).min() <= 0):
                self.error("R must be symmetric positive definite", backup.R.span)
        elif isinstance(backup, M.LinearBackup):
            if backup.observe is None:  # K acts on x − x*
                self._shape(backup.K, self.m, self.n, "K", owner=backup)
            else:  # K acts on the observation (policies/backup.py: an m × p gain)
                p = len(backup.observe)
                self._shape(backup.K, self.m, p, "K", owner=backup,
                            hint=f"the backup observes {p} value(s) and the system has "
                                 f"{self.m} input(s): K is inputs × observations")
        elif isinstance(backup, M.TorchBackup):
            self._check_file(backup.file, "backup torch", "controller.pt", backup)

    def _check_file(self, file: M.Text | None, what: str, example: str, owner: M.Node) -> None:
        """A file a section names: given, and there (relative to the spec); never opened here."""
        if file is None:
            self.error(f"{what} needs a file", owner.span, f'add `file = "{example}"` (a '
                       "TorchScript file, relative to the spec)")
            return
        if not self.run_code:  # a run's stored spec: the file is the author's, checked at `trust`
            return
        base = self.base_dir or Path.cwd()
        path = base / file.value
        if path.is_dir():
            self.error(f"'{file.value}' is a directory, not a TorchScript file", file.span,
                       f"{path} (paths are relative to the spec)")
        elif not path.is_file():
            self.error(f"file '{file.value}' " + _not_a_file(path), file.span,
                       f"looked for {path} (paths are relative to the spec)")

    def _check_policy(self) -> None:
        policy = self.spec.policy
        if policy is None:
            return
        if isinstance(policy, M.MlpPolicy):
            if policy.hidden is None:
                self.error("missing hidden", policy.span, "add `hidden = [64, 64]` (layer widths)")
            elif policy.hidden.value is not None:
                h = np.asarray(policy.hidden.value, dtype=np.float64)
                if h.ndim == 0:
                    h = h.reshape(1)
                if h.ndim != 1 or np.any(h <= 0) or np.any(h != np.round(h)):
                    self.error("hidden must list positive whole layer widths, e.g. [64, 64]",
                               policy.hidden.span)
            self._number(policy.seed, "policy seed", nonnegative=True, integer=True)
            if policy.residual is not None and policy.residual.name == "backup" \
                    and self.spec.backup is None and "backup" not in self.unbuilt:
                self.error("residual = backup, but the spec has no backup section",
                           policy.residual.span, "add `backup lqr { Q = … R = … }`")
        elif isinstance(policy, M.LinearPolicy):
            if policy.init is not None and policy.init.name == "backup" \
                    and self.spec.backup is None and "backup" not in self.unbuilt:
                self.error("init = backup, but the spec has no backup section",
                           policy.init.span, "add `backup lqr { Q = … R = … }`")
            elif policy.init is not None and policy.init.name == "backup" \
                    and (why := _no_gain_to_start_from(self.spec.backup)):
                self.error("init = backup needs a linear or lqr backup (a gain K to start "
                           f"from); {why}", policy.init.span,
                           "use `policy mlp { residual = backup }` to fine-tune on top of "
                           "the backup, or `init = zero`")
        elif isinstance(policy, M.TorchPolicy):
            self._check_file(policy.file, "policy torch", "policy.pt", policy)

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

    def _check_counts(self) -> float | None:
        """The scenario counts a spec makes every reader size: `count`, `grid`ⁿ and `holdout`
        (one of size_errors' checks, so also run on a run's stored spec); returns the holdout
        count when it is within bounds."""
        sc = self.spec.scenarios
        count = self._number(sc.count, "count", positive=True, integer=True)
        grid = self._number(sc.grid, "grid", positive=True, integer=True)
        digits = self.n * math.log10(grid) if grid is not None else 0.0  # of grid ** n
        if self.n and not isinstance(self.spec.system, M.GymnasiumSystem) \
                and digits > math.log10(MAX_SCENARIOS) \
                and (digits >= 18 or int(grid) ** self.n > MAX_SCENARIOS):
            made = f"{int(grid) ** self.n:,}" if digits < 18 else f"about 10^{digits:.0f}"
            self.error(f"grid {grid:g} over {self.n} states makes {made} scenarios (more than "
                       f"{MAX_SCENARIOS:,})", sc.grid.span, "use `count` to sample instead")
        if count is not None and count > MAX_SCENARIOS:
            self.error(f"count {count:g} is more than {MAX_SCENARIOS} scenarios", sc.count.span)
        holdout = self._number(sc.holdout, "holdout", nonnegative=True, integer=True)
        if holdout is not None and holdout > MAX_HOLDOUT:
            self.error(f"holdout {holdout:,.0f} is more than {MAX_HOLDOUT:,} scenarios (the "
                       "report rolls every one of them out)", sc.holdout.span,
                       f"{MAX_HOLDOUT:,} holdout scenarios already bound P(violation) by "
                       f"{holdout_bound(MAX_HOLDOUT):.4%}")
            return None
        return holdout

    # ---------------------------------------------------------------- formulas
    def _check_properties(self) -> None:
        seen: dict[str, M.Property] = {}
        estimate = (self.spec.train is not None and self.spec.train.smoothness is not None
                    and self.spec.train.smoothness.name == "estimate")
        for prop in self.spec.properties:
            name = prop.name.name
            if name in seen:
                first = seen[name].name.span
                self.error(f"duplicate {prop.section} name '{name}'", prop.name.span,
                           f"first used at line {first.line}" if first else None)
            else:
                seen[name] = prop
            formula = self.x(prop.formula)
            ty = self.infer(formula)
            if ty is not None:
                if ty.kind != "bool":
                    self.error(f"{prop.section} '{name}' is not a condition", prop.formula.span,
                               "write a comparison, e.g. `always abs(x) <= 1`")
                elif not ty.policy:
                    self.error(f"{prop.section} '{name}' does not depend on the policy: it "
                               "reads no signal, so its metric can never change",
                               prop.formula.span, "refer to a state or input signal")
                elif self.horizon is not None:
                    self._check_times(E.implicit_always(formula), 0, 0)
            if prop.smoothness is None:
                if not estimate:
                    self.error(f"{prop.section} '{name}' has no smoothness constant",
                               prop.name.span,
                               "add `smoothness L` (the ℓ of ALGORITHM.md), or set "
                               "`train { smoothness estimate }`")
            else:
                self._number(prop.smoothness, "smoothness", positive=True)
            self._number(prop.margin, "margin", nonnegative=True)
            self._number(prop.lipschitz, "lipschitz", positive=True)

    def infer(self, e: E.Node) -> Ty | None:
        """Type of an expression; reports (and returns None for) anything ill-formed."""
        if isinstance(e, E.Num):
            return Ty("num")
        if isinstance(e, E.Name):
            return self._name_type(e)
        if isinstance(e, E.Str):
            self.error("a string cannot appear in a formula", e.span)
            return None
        if isinstance(e, E.Vector):
            tys = [self.infer(i) for i in e.items]
            if any(t is None for t in tys):
                return None
            if any(t.kind != "num" or t.size != 1 for t in tys):
                self.error("vector entries must be numbers or scalar signals", e.span)
                return None
            return _join(tys, "num", size=len(tys))
        if isinstance(e, E.Unary):
            t = self._num(e.arg)
            return t
        if isinstance(e, E.Binary):
            a, b = self._num(e.left), self._num(e.right)
            if a is None or b is None:
                return None
            if e.op == "^" and b.size != 1:
                self.error("the exponent must be a scalar", e.right.span)
                return None
            size = self._broadcast(a, b, e)
            return None if size is None else _join([a, b], "num", size=size)
        if isinstance(e, E.Call):
            return self._call_type(e)
        if isinstance(e, E.Compare):
            a, b = self._num(e.left), self._num(e.right)
            if a is None or b is None:
                return None
            if self._broadcast(a, b, e) is None:
                return None
            for side, ty in ((e.left, a), (e.right, b)):
                if not ty.policy:
                    self._finite_constant(side)
            return _join([a, b], "bool")
        if isinstance(e, E.Within):
            a = self._num(e.arg)
            try:
                bounds = evaluate(e.interval, self.consts)
            except EvalError as err:
                self.error(f"the interval must be constant numbers: {err.message}",
                           err.span or e.interval.span,
                           "write `x in [lo, hi]` with numbers or constants")
                return None
            self._interval(M.Quantity(expr=e.interval, value=bounds.tolist(),
                                      span=e.interval.span), "this constraint",
                           allow_point=False)
            return None if a is None else _join([a], "bool")
        if isinstance(e, (E.And, E.Or, E.Implies, E.Until)):
            tys = [self._bool(a) for a in _operands(e)]
            if isinstance(e, E.Until) and e.window is not None:
                self._check_window(e)
            if any(t is None for t in tys):
                return None
            return _join(tys, "bool")
        if isinstance(e, E.Not):
            return self._bool(e.arg)
        if isinstance(e, E.Temporal):
            body = self._bool(e.body)
            if body is None:
                return None
            if e.window is not None:
                self._check_window(e)
            return body
        return None

    def _finite_constant(self, e: E.Node) -> None:
        """A side of a comparison that reads no signal is a number: an overflow (1e308 * 10,
        exp(800)) would make the bound ±inf, and the metric meaningless."""
        try:
            value = np.asarray(evaluate(e, self.consts), dtype=float)
        except EvalError as err:
            if err.message.startswith("arithmetic error"):  # numpy's overflow, 0/0, …
                self.error(f"{E.unparse(e)} is not a finite number ({err.message})", e.span,
                           "write the bound as a finite number")
            return  # else not foldable by the numpy evaluator: compile folds it
        except (TypeError, ValueError):
            return
        if not np.all(np.isfinite(value)):
            self.error(f"{E.unparse(e)} is not a finite number ({value.tolist()})", e.span,
                       "write the bound as a finite number")

    def _num(self, e: E.Node) -> Ty | None:
        t = self.infer(e)
        if t is not None and t.kind != "num":
            self.error("expected a value here, got a condition", e.span,
                       "conditions combine with `and`/`or`, values with + - * /")
            return None
        return t

    def _bool(self, e: E.Node) -> Ty | None:
        t = self.infer(e)
        if t is not None and t.kind != "bool":
            self.error("expected a condition here, got a value", e.span,
                       "compare it: `… <= bound`")
            return None
        return t

    def _broadcast(self, a: Ty, b: Ty, e: E.Node) -> int | None:
        if a.size == b.size or a.size == 1 or b.size == 1:
            return max(a.size, b.size)
        self.error(f"cannot combine a vector of {a.size} with a vector of {b.size}", e.span)
        return None

    def _name_type(self, e: E.Name) -> Ty | None:
        if e.id in self.states:
            return Ty("num", states=True, policy=True)
        if e.id in self.inputs:
            return Ty("num", inputs=True, policy=True)
        if e.id in self.parameters:
            return Ty("num")
        if e.id in self.disturbances:
            return Ty("num", inputs=True)
        if e.id in self.lets:  # only in a cycle (elsewhere lets are expanded): said there
            return None
        if e.id == "state":
            return Ty("num", size=max(self.n, 1), states=True, policy=True)
        if e.id == "input":
            return Ty("num", size=max(self.m, 1), inputs=True, policy=True)
        if e.id == "spectral_radius":
            if self.spec.system is not None and not self._linearisable():
                self.error(f"spectral_radius cannot be evaluated for a '{self.spec.system.kind}' "
                           "system: it needs dynamics linearisable at the origin "
                           "(linear, pendulum, discrete, ode or python)", e.span)
                return None
            return Ty("num", policy=True)
        if e.id in self.consts or e.id in BUILTIN_CONSTANTS:
            value = np.asarray(self.consts.get(e.id, BUILTIN_CONSTANTS.get(e.id)))
            if value.ndim > 1:
                self.error(f"constant '{e.id}' is a matrix; use it inside quad(P, …)", e.span)
                return None
            return Ty("num", size=1 if value.ndim == 0 else value.shape[0])
        if self.spec.system is None:  # signals unknown (no system, or one that failed): no guess
            return Ty("num", policy=True)
        if f"const {e.id}" in self.unbuilt:  # a constant whose own error was reported
            return None
        if e.id == "backup":
            self.error("'backup' names a controller, not a value", e.span,
                       "use lyapunov(backup) for its Lyapunov function")
            return None
        known = [*self.states, *self.inputs, *self.consts, *self.lets, *self.parameters,
                 *self.disturbances, "state", "input", "spectral_radius",
                 *FORMULA_KEYWORDS]  # `alway abs(p) <= 1` reads as a name: did you mean always?
        self.error(f"unknown name '{e.id}'", e.span,
                   did_you_mean(e.id, known) or
                   (f"signals are {one_of([*self.states, *self.inputs])}"
                    if self.states else None))
        return None

    def _call_type(self, e: E.Call) -> Ty | None:
        f, args = e.func, e.args
        if f not in SIGNAL_FUNCTIONS:
            self.error(f"unknown function '{f}'", e.span,
                       did_you_mean(f, SIGNAL_FUNCTIONS) or f"functions are "
                                                            f"{one_of(SIGNAL_FUNCTIONS)}")
            return None
        if f == "quad":
            if len(args) != 2:
                self.error("quad takes a matrix and a vector: quad(P, state)", e.span)
                return None
            v = self._num(args[1])
            try:
                P = evaluate(args[0], self.consts)
            except EvalError as err:
                self.error(f"the matrix of quad must be constant: {err.message}",
                           err.span or args[0].span)
                return None
            if v is None:
                return None
            if P.ndim == 0 and v.size == 1:
                return _join([v], "num")
            if self.spec.system is None:  # signal sizes unknown: no size to compare with
                return _join([v], "num")
            if P.ndim != 2 or P.shape != (v.size, v.size):
                shape = "a number" if P.ndim == 0 else "×".join(map(str, P.shape))
                self.error(f"quad needs a {v.size}×{v.size} matrix for a vector of {v.size}, "
                           f"got {shape}", args[0].span)
                return None
            return _join([v], "num")
        if f == "lyapunov":
            if len(args) != 1:
                self.error("lyapunov takes one argument: lyapunov(backup)", e.span)
                return None
            (arg,) = args
            if isinstance(arg, E.Name) and arg.id == "backup":
                if self.spec.backup is None and "backup" in self.unbuilt:
                    return None  # written, but its kind was wrong: reported there
                if self.spec.backup is None:
                    self.error("lyapunov(backup) needs a backup section", arg.span,
                               "add `backup lqr { Q = … R = … }`")
                    return None
                if not isinstance(self.spec.backup, M.LqrBackup):
                    self.error("lyapunov(backup) needs an lqr backup (its Riccati P is V)",
                               arg.span, "use `backup lqr { … }`, or lyapunov(P) with a matrix")
                    return None
                return Ty("num", states=True, policy=True)
            try:
                P = evaluate(arg, self.consts)
            except EvalError as err:
                self.error(f"lyapunov takes `backup` or a constant matrix: {err.message}",
                           err.span or arg.span)
                return None
            if P.ndim != 2 or P.shape != (self.n, self.n):
                self.error(f"lyapunov's matrix must be {self.n}×{self.n}", arg.span,
                           self._dims_hint())
                return None
            lowest = float(np.min(np.linalg.eigvalsh((P + P.T) / 2))) if np.all(
                np.isfinite(P)) else math.nan
            if not lowest >= 0:
                self.error(f"lyapunov's matrix is not positive semidefinite (its symmetric "
                           f"part has the eigenvalue {lowest:.6g}): V(x) = xᵀPx is negative "
                           "for some states, where V(x_t)/V(x₀) means nothing", arg.span,
                           "a Lyapunov function is positive away from the origin: use "
                           "lyapunov(backup) or a positive definite P")
                return None
            return Ty("num", states=True, policy=True)
        tys = [self._num(a) for a in args]
        if any(t is None for t in tys):
            return None
        if f in ("min", "max"):
            if not tys:
                self.error(f"{f} needs at least one argument", e.span)
                return None
            if len(tys) == 1:
                return _join(tys, "num", size=1)
            size = tys[0].size
            for t in tys[1:]:
                s = self._broadcast(Ty("num", size=size), t, e)
                if s is None:
                    return None
                size = s
            return _join(tys, "num", size=size)
        if f in ("atan2", "clip"):
            usage = "atan2(y, x)" if f == "atan2" else "clip(e, lo, hi)"
            if len(tys) != (2 if f == "atan2" else 3):
                self.error(f"{f} takes {2 if f == 'atan2' else 3} arguments: {usage}", e.span)
                return None
            size = tys[0].size
            for t in tys[1:]:
                size = self._broadcast(Ty("num", size=size), t, e)
                if size is None:
                    return None
            return _join(tys, "num", size=size)
        if len(tys) != 1:
            self.error(f"{f} takes exactly one argument", e.span)
            return None
        return _join(tys, "num", size=1 if f == "norm" else tys[0].size)

    def _check_window(self, e: E.Temporal | E.Until) -> tuple[int, int] | None:
        """The window's bounds (whole, ≥ 0, in order); None after reporting what is wrong."""
        bounds = []
        for b in (e.window.start, e.window.end):
            try:
                v = float(evaluate(b, self.consts))
            except EvalError as err:
                self.error(f"window bounds must be constant: {err.message}", err.span or b.span)
                return None
            except TypeError:
                self.error("window bounds must be numbers", b.span)
                return None
            if v != int(v) or v < 0:
                self.error(f"window bounds are step numbers (whole, ≥ 0), got {v:g}", b.span)
                return None
            bounds.append(int(v))
        a, b = bounds
        if a > b:
            self.error(f"reversed window [{a}:{b}]", e.window.span,
                       "the first step comes first; both ends are included")
            return None
        return a, b

    # ---------------------------------------------------------------- time bases and windows
    def _last(self, e: E.Node) -> int | None:
        return E.last_step(e, self.states, [*self.inputs, *self.disturbances], self.horizon)

    def _check_times(self, e: E.Node, lo: int, hi: int,
                     reader: str = "an enclosing window") -> None:
        """Report every window that holds no sample at a step t ∈ [lo, hi] where `e` is read
        (t = 0 for the whole formula; an enclosing window widens the range)."""
        if isinstance(e, (E.And, E.Or, E.Implies)):
            for a in _operands(e):
                self._check_times(a, lo, hi, reader)
        elif isinstance(e, E.Not):
            self._check_times(e.arg, lo, hi, reader)
        elif isinstance(e, E.Temporal) and e.op == "final":
            pushed = E.push_final(e)
            if pushed is not e:
                self._check_times(pushed, lo, hi, reader)
            else:
                last = self._last(e.body)
                self._check_times(e.body, last or 0, last or 0, "`at final`")
        elif isinstance(e, (E.Temporal, E.Until)):
            a, b = (0, None)
            if e.window is not None:
                bounds = self._window_bounds(e.window)
                if bounds is None:
                    return
                a, b = bounds
            last = self._last(e)
            if last is None:  # an untimed operand (`at final …`): its windows are read where
                for part in (e.left, e.right) if isinstance(e, E.Until) else (e.body,):
                    self._check_times(part, lo, hi, reader)  # it says, so look inside it
                return
            if hi + a > last:
                self._empty_window(e, a, b, hi, last, reader)
                return
            end = last if b is None else min(hi + b, last)
            if isinstance(e, E.Until):
                self._check_times(e.right, lo + a, end)
                if end - 1 >= lo:
                    self._check_times(e.left, lo, end - 1)
            else:
                self._check_times(e.body, lo + a, end)

    def _window_bounds(self, w: E.Window) -> tuple[int, int] | None:
        try:
            a, b = (float(evaluate(x, self.consts)) for x in (w.start, w.end))
        except (EvalError, TypeError):
            return None
        return (int(a), int(b)) if a == int(a) and b == int(b) and 0 <= a <= b else None

    def _empty_window(self, e: E.Temporal | E.Until, a: int, b: int | None, at: int,
                      last: int, reader: str) -> None:
        what = "inputs run" if last < self.horizon else "states run"
        window = f"[{a}:{b}]" if b is not None else f"[{a}:]"
        where = "" if at == 0 else f" at step {at}, where {reader} reads it"
        if at == 0:
            hint = (f"a window is cut at the last step but must reach it: start it at step "
                    f"{last} at the latest")
        elif reader == "`at final`":
            hint = "at the last step only a window starting at 0 holds a sample"
        else:
            hint = f"end the enclosing window by step {last - a} (or start this one earlier)"
        self.error(f"window {window} holds no sample{where} ({what} to step {last} for horizon "
                   f"{self.horizon})", e.window.span if e.window is not None else e.span, hint)

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

    # ---------------------------------------------------------------- whole-spec checks
    def _lyapunov_matrix(self, arg: E.Node) -> np.ndarray | None:
        """P of lyapunov(arg): a constant matrix, or the LQR backup's Riccati solution computed
        as compile does (on the linearisation), so that V(x₀) can be checked before training."""
        if isinstance(arg, E.Name) and arg.id == "backup":
            system, backup = self.spec.system, self.spec.backup
            if not isinstance(backup, M.LqrBackup):
                return None
            if isinstance(system, M.LinearSystem):
                A, B = system.A.array().reshape(self.n, self.n), \
                    system.B.array().reshape(self.n, self.m)
            elif isinstance(system, M.PendulumSystem):
                A, B = pendulum_linearisation(system, self.spec.equilibrium_point()[0][0])
            elif isinstance(system, (M.DiscreteSystem, M.OdeSystem)):
                AB = self._declared_linearisation()
                if AB is None:
                    return None
                A, B = AB
            else:
                return None  # a python system: its linearisation is compile's (torch)
            import scipy.linalg
            try:
                P = scipy.linalg.solve_discrete_are(A, B, backup.Q.array().reshape(self.n, self.n),
                                                    backup.R.array().reshape(self.m, self.m))
            except (np.linalg.LinAlgError, ValueError):
                return None  # no backup at all: compile reports it
            return (P + P.T) / 2
        try:
            P = np.asarray(evaluate(arg, self.consts), dtype=np.float64)
        except (EvalError, TypeError, ValueError):
            return None
        return P if P.shape == (self.n, self.n) else None

    def _check_linearisation_point(self) -> None:
        """backup lqr, lyapunov(backup) and spectral_radius linearise the plant at the operating
        point (x*, u*): the `equilibrium` (checked to be a fixed point wherever it is declared,
        at its block), else x = 0, u = 0 (refused at each use where it is no fixed point: the LQR
        of a plant drifting away from it is garbage); and the LQR's Riccati equation must have
        a stabilising solution.  A python plant's numbers need its code: compile/usercode.py
        checks it the same way."""
        system, uses = self.spec.system, linearisation_uses(self.spec)
        if not isinstance(system, LINEARISABLE) or isinstance(system, M.PythonSystem):
            return
        declared = system.equilibrium
        if not uses and not declared:
            return
        x_star, u_star = (np.asarray(v, dtype=np.float64) for v in self.spec.equilibrium_point())
        derivative = isinstance(system, M.OdeSystem)
        try:
            if isinstance(system, M.OdeSystem):
                residual = right_hand_side(system, self.consts, self.spec)(x_star, u_star)
            elif isinstance(system, M.DiscreteSystem):
                residual = step_map(system, self.consts, self.spec)(x_star, u_star) - x_star
            elif isinstance(system, M.PendulumSystem):
                residual = pendulum_step(system, x_star, u_star) - x_star
            else:
                residual = system.A.array().reshape(self.n, self.n) @ x_star \
                    + system.B.array().reshape(self.n, self.m) @ u_star - x_star
        except (EvalError, KeyError, TypeError, ValueError, FloatingPointError):
            return  # an equation that cannot be evaluated there: reported by its own check
        if declared:
            message = off_equilibrium(residual, derivative, x_star)
            if message is not None:
                self.error(message, declared[0].span.to(declared[-1].span)
                           if declared[0].span and declared[-1].span else system.span,
                           EQUILIBRIUM_HINT)
                return
        else:
            moved = not_an_equilibrium(residual, derivative, uses)
            for message, span in moved:
                self.error(message, span, OPERATING_POINT_HINT)
            if moved:
                return
        if isinstance(system, (M.DiscreteSystem, M.OdeSystem)):
            AB = self._declared_linearisation()
        elif isinstance(system, M.PendulumSystem):
            AB = pendulum_linearisation(system, float(x_star[0]))
        else:
            AB = (system.A.array().reshape(self.n, self.n),
                  system.B.array().reshape(self.n, self.m))
        backup = self.spec.backup
        if AB is not None and isinstance(backup, M.LqrBackup):
            problem = riccati_problem(*AB, backup.Q.array().reshape(self.n, self.n),
                                      backup.R.array().reshape(self.m, self.m))
            if problem is not None:
                self.error(problem[0], backup.span, problem[1])

    def _check_lyapunov_starts(self) -> None:
        """lyapunov(…) is the ratio V(x_t)/V(x₀): a scenario with V(x₀) = 0 makes it undefined
        (huge), every update is refuted and training stalls.  A grid is checked point by point;
        uniform draws land on V = 0 with probability 0 unless V vanishes on the whole box (a
        point range at the origin, or a box inside P's null space), which is checked exactly."""
        sc, system = self.spec.scenarios, self.spec.system
        if sc is None or system is None or isinstance(system, M.GymnasiumSystem) or not self.n:
            return
        calls = [(prop, node) for prop in self.spec.properties
                 for node in E.walk(self.x(prop.formula))
                 if isinstance(node, E.Call) and node.func == "lyapunov" and len(node.args) == 1]
        if not calls:
            return
        names = [s.name for s in system.states]
        lo, hi = np.zeros(self.n), np.zeros(self.n)
        for rng in sc.initial:
            lo[names.index(rng.signal.name)], hi[names.index(rng.signal.name)] = \
                rng.interval.array()
        x_star = np.asarray(self.spec.equilibrium_point()[0], dtype=np.float64)
        lo, hi = lo - x_star, hi - x_star  # V reads the deviation from the operating point
        grid = training_states(self.spec) - x_star if sc.grid is not None else None
        for prop, call in calls:
            P = self._lyapunov_matrix(call.args[0])
            if P is None:
                continue
            what = f"{prop.section} '{prop.name.name}': {E.unparse(call)} is undefined for"
            center, half = (lo + hi) / 2, (hi - lo) / 2
            # max of √V over the box ≤ √V(c) + Σ |wᵢ| √Pᵢᵢ (the triangle inequality in P's norm)
            top = math.sqrt(max(center @ P @ center, 0.0)) + float(
                np.abs(half) @ np.sqrt(np.clip(np.diag(P), 0, None)))
            if top ** 2 <= LYAPUNOV_FLOOR:
                self.error(f"{what} every scenario: V(x₀) = 0 on the whole initial box",
                           sc.span, "V(x₀) divides the ratio V(x_t)/V(x₀); give the initial "
                                    "ranges room away from V's zeros (the operating point)")
                continue
            if grid is None:
                continue
            V = np.einsum("si,ij,sj->s", grid, P, grid)
            bad = np.flatnonzero(V <= LYAPUNOV_FLOOR)
            if bad.size:
                x0 = ", ".join(f"{v:g}" for v in grid[bad[0]] + x_star + 0.0)
                more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
                self.error(f"{what} {bad.size} of the {len(grid)} grid scenarios: V(x₀) = 0 at "
                           f"x₀ = [{x0}]{more}", sc.grid.span,
                           "V(x₀) divides the ratio V(x_t)/V(x₀); an even grid size keeps a "
                           "grid over a symmetric box off the origin")

    def _check_resources(self) -> None:
        """Refuse what cannot fit this machine's memory, with the estimate, before a training
        run dies of MemoryError after its last step (the holdout) or at its first."""
        total = machine_memory()
        est = memory_estimate(self.spec)
        if total is None or est is None:
            return
        limit = MEMORY_SHARE * total
        have = f"this machine has {_bytes(total)}"
        hint = f"a spec may use at most {MEMORY_SHARE:.0%} of the machine's memory"
        if est.bank > limit:
            policy, sc = self.spec.policy, self.spec.scenarios
            where = policy.hidden.span if isinstance(policy, M.MlpPolicy) and \
                est.policy_part >= est.bank / 2 else \
                sc.horizon.span if sc.horizon is not None and est.horizon + 1 > est.scenarios \
                else (sc_span(self.spec) or policy.span)  # the larger of the two factors
            self.error(f"one evaluation of the candidate bank needs about {_bytes(est.bank)} "
                       f"({est.candidates} candidates × {est.scenarios:,} scenarios × "
                       f"{est.horizon + 1} steps, {est.weights:,} weights each); {have}",
                       where, f"{hint}: use fewer scenarios, a shorter horizon, fewer "
                              "directions or a smaller policy")
        elif est.holdout > limit:  # (θ is in both: a refused bank says it first)
            self.error(f"the holdout evaluation needs about {_bytes(est.holdout)} "
                       f"({est.holdout_count:,} scenarios); {have}", self.spec.scenarios.holdout.span,
                       f"{hint}: 10,000 holdout scenarios already bound P(violation) by "
                       f"{holdout_bound(10_000):.2%}")


LINEARISABLE = (M.LinearSystem, M.PendulumSystem, M.DiscreteSystem, M.OdeSystem, M.PythonSystem)


def _no_gain_to_start_from(backup: M.Backup | None) -> str | None:
    """Why `policy linear { init = backup }` has no gain over x − x* to copy (None: it has one).
    A network's Jacobian, or a gain over another observation, is not the backup: starting there
    would silently train from a different controller."""
    if isinstance(backup, (M.TorchBackup, M.OnnxBackup)):
        return {"torch": "a torch backup has none", "onnx": "an onnx backup has none"}[backup.kind]
    if backup is not None and backup.observe is not None:
        return "this backup declares `observe`, so it has no gain over the states"
    return None


def _not_a_file(path: Path) -> str:
    """Why a path that is no regular file cannot be read (a pipe or device could be opened, and
    reading it may never end)."""
    return ("is not a regular file (a pipe or a device)" if path.exists() else "does not exist")


def pendulum_linearisation(system: M.PendulumSystem, theta: float = 0.0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of the pendulum at angle θ* (0: upright); at the origin the same numbers as
    systems.dynamics.Dynamics.linearisation (a test keeps them equal), without importing torch."""
    dt, g, mass, length = (float(system.dt), float(system.g), float(system.m), float(system.l))
    a = 3 * g / (2 * length) * np.cos(theta)
    b = 3 / (mass * length ** 2)
    return (np.array([[1 + dt * dt * a, dt], [dt * a, 1.0]]),
            np.array([[dt * dt * b], [dt * b]]))


def pendulum_step(system: M.PendulumSystem, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """x⁺ of the pendulum (systems/dynamics.py's step, in numpy)."""
    dt, g, mass, length = (float(system.dt), float(system.g), float(system.m), float(system.l))
    omega = x[1] + dt * (3 * g / (2 * length) * np.sin(x[0]) + 3 / (mass * length ** 2) * u[0])
    return np.array([x[0] + dt * omega, omega])


def machine_memory() -> int | None:
    """Total physical memory in bytes (POSIX sysconf), or None where the platform cannot say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class MemoryEstimate:
    candidates: int      # 2 + directions: θ, θ ± probes
    scenarios: int
    horizon: int
    weights: int         # d, the policy's parameter count
    policy_part: int     # bytes of activations and weights in `bank`
    bank: int            # bytes of one evaluation of the candidate bank
    holdout_count: int
    holdout: int         # bytes of the holdout evaluation (chunked rollouts, all x₀ and results)


def memory_estimate(spec: M.Spec) -> MemoryEstimate | None:
    """The memory of one bank evaluation and of the holdout evaluation of a valid spec (None
    where the spec does not say enough, e.g. a policy kind whose size is unknown here)."""
    system, sc, tr, policy = spec.system, spec.scenarios, spec.train, spec.policy
    if system is None or sc is None or tr is None or policy is None or tr.directions is None:
        return None
    n, m = len(system.states), len(system.inputs)
    if isinstance(policy, M.MlpPolicy):
        widths = [int(w) for w in np.atleast_1d(policy.hidden.array())]
        sizes = [n, *widths, m]
        weights = sum((sizes[i] + 1) * sizes[i + 1] for i in range(len(sizes) - 1))
    elif isinstance(policy, M.LinearPolicy):
        widths, weights = [], n * m
    else:
        return None
    S = int(float(sc.grid)) ** n if sc.grid is not None else \
        int(float(sc.count)) if sc.count is not None else None
    if S is None:
        return None
    T = int(float(sc.horizon)) if sc.horizon is not None else 1
    C = 2 + int(float(tr.directions))
    bank = rollout_bytes(C, S, T, n, m, widths, weights)
    policy_part = 8 * (sum(widths) * C * S + weights * C)
    N = int(float(sc.holdout)) if sc.holdout is not None else 0
    k = len(spec.properties)
    holdout = 0 if N <= 0 else 8 * N * (n + 2 * k) + min(
        rollout_bytes(1, N, T, n, m, widths, weights), HOLDOUT_CHUNK_BYTES + 8 * weights)
    return MemoryEstimate(C, S, T, weights, policy_part, bank, N, holdout)


def sc_span(spec: M.Spec) -> Span | None:
    sc = spec.scenarios
    q = sc.grid if sc.grid is not None else sc.count
    return q.span if q is not None else sc.span


def _bytes(b: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b / 2**10:.1f} KiB"


def _join(tys: list[Ty], kind: str, size: int = 1) -> Ty:
    return Ty(kind, size=size, states=any(t.states for t in tys),
              inputs=any(t.inputs for t in tys), policy=any(t.policy for t in tys))


def _as_int(q: M.Quantity | None) -> int | None:
    if q is None or q.value is None or np.ndim(q.value) != 0:
        return None
    v = float(q.value)
    return int(v) if v == int(v) and v > 0 else None


def check_model(spec: M.Spec, diagnostics: Collector, base_dir: Path | None,
                unbuilt: set[str] = frozenset(), run_code: bool = True) -> None:
    """Run every semantic check; `unbuilt` names sections that were written but could not be
    built (already reported, so not 'missing'); `run_code` False leaves out every check that
    would import or open code the spec names (reading a run directory)."""
    Checker(spec, diagnostics, base_dir, unbuilt, run_code).run()


def size_errors(spec: M.Spec) -> list:
    """The errors of the checks that bound what a spec makes a machine hold or compute (its
    scenario counts, the memory of one evaluation): `scpo check` runs them with all the others,
    and a reader of a run runs them on the run's stored spec before sizing anything from it,
    which reads and runs nothing (a spec too broken to be sized is an error too)."""
    diagnostics = Collector()
    checker = Checker(spec, diagnostics, None, run_code=False)
    try:
        if spec.scenarios is not None:
            checker._check_counts()
        if not diagnostics.has_errors:
            checker._check_resources()
    except (ValueError, TypeError, AttributeError, OverflowError, IndexError) as err:
        diagnostics.error(f"the spec cannot be sized ({type(err).__name__}: {err})", None)
    return [d for d in diagnostics.sorted() if d.severity == "error"]


FORMULA_KEYWORDS = ("always", "eventually", "and", "or", "in", "at", "final", "not", "until")


def _operands(e: E.Node) -> list[E.Node]:
    """The formula operands of a Boolean connective or of `until`."""
    return list(e.args) if isinstance(e, (E.And, E.Or)) else [e.left, e.right]
