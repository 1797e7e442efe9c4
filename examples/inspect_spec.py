"""Load a spec with the Python API and print what it asks for.

    python examples/inspect_spec.py specs/double_integrator.scpo

`load_spec` returns the typed, checked model (or raises SpecError with every diagnostic);
numbers come folded (`.value`) next to the expression they were written as (`.expr`).
"""

from __future__ import annotations

import sys

from scpo_spec import SpecError, load_spec
from scpo_spec.language.expr import unparse


def describe(path: str) -> str:
    spec = load_spec(path)
    system = spec.system
    lines = [f"{spec.name.name}: {spec.title.value if spec.title else ''}".rstrip(": "),
             f"  system {system.kind}: states {[s.name for s in system.states]}, "
             f"inputs {[s.name for s in system.inputs]}"]
    if spec.scenarios and spec.scenarios.horizon is not None:
        sc = spec.scenarios
        how = f"count {int(sc.count)}" if sc.count is not None else f"grid {int(sc.grid)}"
        lines.append(f"  scenarios: {how}, horizon {int(sc.horizon)}")
    for prop in spec.properties:
        ell = prop.smoothness.value if prop.smoothness is not None else "estimated"
        lines.append(f"  {prop.section} {prop.name.name}: {unparse(prop.formula)}  (ℓ = {ell})")
    lines.append(f"  objective {spec.objective.kind}; {int(spec.train.steps)} steps of "
                 f"{spec.train.optimizer.kind}")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        for arg in sys.argv[1:] or ["specs/double_integrator.scpo"]:
            print(describe(arg))
    except SpecError as err:
        for d in err.diagnostics:
            print(d.headline(), file=sys.stderr)
        sys.exit(1)
