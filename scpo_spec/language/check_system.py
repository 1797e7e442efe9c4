"""The checks of the closed loop's parts: the system (its equations, a python plant, a
gymnasium environment), the uncertain numbers, the backup and the policy, and — once the whole
model is valid — its operating point and the Lyapunov function's start (a part of `Checker`,
language/check.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language.diagnostics import did_you_mean, one_of
from scpo_spec.language.dynamics import (EQUILIBRIUM_HINT, OPERATING_POINT_HINT, linearisation,
                                         linearisation_uses, not_an_equilibrium, off_equilibrium,
                                         pendulum_linearisation, pendulum_step, right_hand_side,
                                         riccati_problem, step_map)
from scpo_spec.language.evaluate import EvalError, evaluate
from scpo_spec.language.scenario_bounds import training_states
from scpo_spec.language.source import Span
from scpo_spec.usercode.loader import CodeMismatch, load_module, one_line

# Names a declared system's equation cannot read: it is a function of the named states, inputs
# and constants at one step.
NOT_IN_EQUATIONS = {
    "state": "name the states one by one (an equation is one number per state)",
    "input": "name the inputs one by one (an equation is one number per state)",
    "spectral_radius": "spectral_radius is a property of the closed loop, not of the plant",
    "backup": "an equation reads states, inputs and constants",
}
LYAPUNOV_FLOOR = 1e-12  # = compile.signals.LYAPUNOV_FLOOR: V(x₀) at or below it divides by ~0


class SystemChecks:
    """The plant, the uncertain numbers, the backup and the policy."""

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
