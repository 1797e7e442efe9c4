"""Where a step's candidate bank is rolled out: in this process (`executor local`, the compiled
evaluator itself) or on Ray actors (`executor ray`), behind the one `Evaluator` interface
(scpo_spec.compile.evaluator: `device`, `close()` included) the trainer uses.  The objective
always keeps the local evaluator: its rollouts are differentiated, never sent away."""

from __future__ import annotations

from pathlib import Path

from scpo_spec.compile.evaluator import Evaluator
from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.engine.executors.ray import RayUnavailable

__all__ = ["Evaluator", "RayUnavailable", "open_evaluator"]


def open_evaluator(compiled: CompiledSpec, base_dir: Path | None) -> Evaluator:
    """The spec's executor; `close()` it when the run ends."""
    s = compiled.settings
    if s.executor != "ray":
        return compiled.evaluator
    if s.verify_every is not None:  # the same actors also bound the cells of the loop's proofs
        from scpo_spec.engine.executors.ray_cells import RayCells
        return RayCells(compiled, base_dir, workers=s.ray_workers, address=s.ray_address)
    from scpo_spec.engine.executors.ray import RayEvaluator
    return RayEvaluator(compiled.evaluator, compiled.spec, base_dir, workers=s.ray_workers,
                        address=s.ray_address)

