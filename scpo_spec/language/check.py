"""Semantic checks of a built model: names, shapes, ranges, formulas, data, environments.

Each `_check_*` looks at one thing and reports every problem it finds with its location, so a
user sees all their mistakes at once, sorted by position.  `Checker` holds the model and what is
derived from it once (names, sizes, the horizon); the checks live by concern in
check_sections.py (names, numbers, scenarios, properties, objective, train), check_system.py
(the plant, the uncertain numbers, backup and policy, the operating point), check_formulas.py
(formula typing and windows), check_resources.py (counts and memory) and check_v3.py (lets,
parameters, observations, verify).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language.check_formulas import FormulaChecks
from scpo_spec.language.check_resources import ResourceChecks
from scpo_spec.language.check_sections import SectionChecks
from scpo_spec.language.check_system import SystemChecks
from scpo_spec.language.check_v3 import V3Checks
from scpo_spec.language.diagnostics import Collector
from scpo_spec.language.dynamics import nominal_values
from scpo_spec.language.lets import LetCycle, expand, find_cycle, let_table
from scpo_spec.language.source import Span


class Checker(SectionChecks, SystemChecks, FormulaChecks, ResourceChecks, V3Checks):
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

    def unknown(self, message, span, word, choices, otherwise, code):
        self.diag.unknown(message, span, word, choices, otherwise, code)

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

