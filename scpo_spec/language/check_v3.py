"""The checks of LANGUAGE-v3's forms: lets, parameters and disturbances, the operating point's
names, what a controller observes and how its output is scaled, the controllers from other tools
(`backup linear { K k }`, onnx, `policy python`, `policy from`) and `verify`.

A mixin of check.Checker (whose helpers — `error`, `_number`, `_shape`, `_interval`, `_num`,
`x` (lets expanded), the signal lists — it uses); each method reports every problem it finds,
located, with a hint.  The fixed point of a declared `equilibrium` is checked with the plant's
linearisation point in check.py (`_check_linearisation_point`).
"""

from __future__ import annotations

import numpy as np

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language.diagnostics import did_you_mean, one_of
from scpo_spec.language.lets import expand

# Names an observation cannot read, and why (inputs and disturbances are said by name).
NOT_OBSERVABLE = {
    "input": "the controller computes the inputs, so it cannot see them",
    "spectral_radius": "spectral_radius is a property of the closed loop, not a measurement",
    "backup": "an observation reads states, constants, parameters and lets of them",
}
OBSERVE_HINT = "observe states, constants, parameters and lets of them, e.g. `observe = [x, v - 1]`"


class V3Checks:
    # ---------------------------------------------------------------- names
    def _check_v3_names(self) -> None:
        """A let, parameter or disturbance names something new: not a signal, a constant, a
        reserved word or function, nor each other; a cycle among lets is named; each let's own
        expression is checked once (unknown names, did-you-mean over every visible name)."""
        from scpo_spec.language.check_formulas import FORMULA_KEYWORDS
        from scpo_spec.language.check_sections import RESERVED
        from scpo_spec.language.functions import SIGNAL_FUNCTIONS
        spec = self.spec
        # name → what it is, in the words `constant 'x' has the same name as a signal` uses
        taken = {name: "signal" for name in [*self.states, *self.inputs]}
        for const in spec.consts:
            taken.setdefault(const.name, "constant")
        reserved = {*RESERVED, *SIGNAL_FUNCTIONS, *FORMULA_KEYWORDS}
        for u in [*spec.parameters, *spec.disturbances]:
            name = u.name.name
            if name in reserved:
                self.error(f"'{name}' is a reserved word and cannot name a {u.section}",
                           u.name.span, f"rename the {u.section}")
            elif name in taken:
                self.error(f"{u.section} '{name}' has the same name as a {taken[name]}",
                           u.name.span, f"rename the {u.section}")
            else:
                taken[name] = u.section
            self._interval(u.interval, f"the range of {u.section} '{name}'", allow_point=True)
        for let in spec.lets:
            name = let.name.name
            if name in reserved:
                self.error(f"'{name}' is a reserved word and cannot name a let", let.name.span,
                           "rename the let")
            elif name in taken:
                self.error(f"let '{name}' has the same name as a {taken[name]}", let.name.span,
                           f"rename the let: it would hide the {taken[name]}")
            else:
                taken[name] = "let"
        self._check_equilibrium_names()
        if self.let_cycle is not None:
            cycle = self.let_cycle
            first = next(x for x in spec.lets if x.name.name == cycle[0])
            self.error(f"the lets {' -> '.join(cycle)} form a cycle", first.name.span,
                       "a let may use other lets, but never itself through them; write one of "
                       "them out in states, inputs and constants")
            return
        for let in spec.lets:
            self.infer(self.x(let.expr))

    # ---------------------------------------------------------------- the operating point
    def _check_equilibrium_names(self) -> None:
        system = self.spec.system
        for a in getattr(system, "equilibrium", []):
            name = a.signal.name
            if name not in self.states and name not in self.inputs:
                self.error(f"equilibrium names the unknown signal '{name}'", a.signal.span,
                           did_you_mean(name, [*self.states, *self.inputs])
                           or f"states are {one_of(self.states)}, inputs are "
                              f"{one_of(self.inputs)}")
            elif a.value.value is not None and np.ndim(a.value.value) != 0:
                self.error(f"the equilibrium value of '{name}' must be a number", a.value.span,
                           "one number per state or input: `equilibrium { T1 = m * g / 2 }`")

    # ---------------------------------------------------------------- controllers
    def _check_controllers(self) -> None:
        """`observe` and `output_scale` of the policy and the backup; the v3 kinds' own entries."""
        spec = self.spec
        for owner, section in ((spec.backup, "backup"), (spec.policy, "policy")):
            if not isinstance(owner, M.Controller) or spec.system is None:
                continue
            what = f"{section} {owner.kind}"
            if owner.observe is not None:
                self._check_observe(owner.observe, what)
            if owner.output_scale is not None and owner.output_scale.value is not None:
                a = np.asarray(owner.output_scale.value, dtype=np.float64)
                if not (a.ndim == 0 or (a.ndim == 1 and a.shape[0] == self.m)):
                    got = (f"a vector of {a.shape[0]}" if a.ndim == 1
                           else f"{a.shape[0]}×{a.shape[1]}")
                    self.error(f"output_scale of the {what} must be one number or a vector of "
                               f"{self.m} (one per input), got {got}", owner.output_scale.span,
                               self._dims_hint())
        backup, policy = spec.backup, spec.policy
        if isinstance(backup, M.LinearBackup) and backup.k is not None:
            self._shape(backup.k, self.m, None, "k", required=False)
        for owner in (backup, policy):  # the file itself is read by compile/usercode.py's check
            if isinstance(owner, (M.OnnxBackup, M.OnnxPolicy)) and owner.file is None:
                what = "backup" if owner is backup else "policy"
                self.error(f"{what} onnx needs a file", owner.span,
                           f'add `file = "{"controller" if owner is backup else "policy"}.onnx"` '
                           "(an ONNX file, relative to the spec)")
        if isinstance(policy, M.PythonPolicy):
            self._check_factory(policy)
        if isinstance(policy, M.FromPolicy):
            self._check_source_run(policy)

    def _check_observe(self, items: list[E.Node], what: str) -> None:
        """Each observation one number, read from what the controller can measure: not an input
        or a disturbance (said by name, also when a let hides it)."""
        inputs, disturbances = set(self.inputs), set(self.disturbances)
        reads_state = False
        for item in items:
            bad = False
            for node in E.names(item):
                through = ""
                found = [node.id]
                if node.id in self.lets:
                    found = [n.id for n in E.names(expand(node, self.spec))] \
                        if self.let_cycle is None else []
                    through = f" (through let '{node.id}')"
                for name in found:
                    if name in inputs:
                        self.error(f"observe of the {what} reads the input '{name}'{through}: "
                                   f"{NOT_OBSERVABLE['input']}", node.span, OBSERVE_HINT)
                    elif name in disturbances:
                        self.error(f"observe of the {what} reads the disturbance '{name}'"
                                   f"{through}: a disturbance is not measured, so the controller "
                                   "cannot see it", node.span, OBSERVE_HINT)
                    elif name in NOT_OBSERVABLE:
                        self.error(f"observe of the {what} cannot read '{name}'{through}: "
                                   f"{NOT_OBSERVABLE[name]}", node.span, OBSERVE_HINT)
                    else:
                        reads_state |= name in self.states or name == "state"
                        continue
                    bad = True
                    break
            if bad:
                continue
            t = self._num(self.x(item))
            if t is not None and t.size != 1:
                self.error(f"each entry of observe is one number, got a vector of {t.size}",
                           item.span, "list the components one by one: `observe = [x, v]`")
        if not reads_state and items and self.states:
            self.diag.warning(f"observe of the {what} reads no state: the controller is blind "
                              "to the plant", items[0].span.to(items[-1].span)
                              if items[0].span and items[-1].span else None, OBSERVE_HINT)

    def _check_factory(self, policy: M.PythonPolicy) -> None:
        """`policy python "module:callable"`: the label's shape only (imported with torch when the
        spec is compiled, never here)."""
        if policy.factory is None:
            self.error("policy python needs the callable that makes its network", policy.span,
                       'write `policy python "my_pkg.nets:make_policy"` (a callable returning '
                       "an nn.Module)")
            return
        module, colon, func = policy.factory.value.partition(":")
        if not colon or not func or not all(
                part.isidentifier() for part in [*module.split("."), *func.split(".")]):
            self.error(f"'{policy.factory.value}' is not `module:callable`", policy.factory.span,
                       'write the module path, a colon and the callable: '
                       '"my_pkg.nets:make_policy"')

    def _check_source_run(self, policy: M.FromPolicy) -> None:
        """`policy from "RUN"`: a run is named (the run itself, its audit and its head are read
        by compile/usercode.py's check, after these)."""
        if policy.run is None or not policy.run.value.strip():
            self.error("policy from needs the run it starts from", policy.run.span
                       if policy.run is not None else policy.span,
                       'write `policy from "runs/acc"` (a run directory, relative to the spec)')

    # ---------------------------------------------------------------- verify
    def _check_verify(self) -> None:
        train, verify = self.spec.train, self.spec.verify
        if train is not None:
            self._positive(train.verify_every, "verify every", True,
                           "`verify every 1`: every accepted update is also PROVED; "
                           "`verify every K`: every K-th")
        if verify is not None:
            self._positive(verify.cells, "verify cells", True,
                           "the most initial-set cells the splitting may make (default 4096)")
            self._positive(verify.time_limit, "verify time_limit", False,
                           "seconds scpo verify may take (default 300)")

    def _positive(self, q: M.Quantity | None, what: str, integer: bool, hint: str) -> None:
        if q is None or q.value is None:
            return
        if np.ndim(q.value) != 0:
            self.error(f"{what} must be a number", q.span, hint)
            return
        v = float(q.value)
        sort = "a positive whole number" if integer else "a positive number"
        if v <= 0 or (integer and v != int(v)) or not np.isfinite(v):
            self.error(f"{what} must be {sort}, got {v:g}", q.span, hint)
