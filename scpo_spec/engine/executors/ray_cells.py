"""`scpo verify --executor ray`: the prover's cells bounded on Ray actors.

The splitting stays in this process (verify/prove.py); each batch of cells it decides to bound
is cut into `workers` contiguous parts, each with the falsifier's points of its cells (drawn by
the driver, so where a cell is bounded changes nothing), and every part is bounded by one actor
with the same code (`Cells.bound`) on the spec it compiled itself. The actors are the training
executor's (ray.py: the spec's files sent through Ray's runtime_env, their SHA-256 checked, the
same connection rules: the spec's `executor ray { address  workers }`, else RAY_ADDRESS, else a
local Ray instance), with one more method. The answers are the local ones up to the BLAS kernel
a smaller batch may take: sound bounds either way, equal to tests/numerics.py's tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scpo_spec.audit.records import theta_sha256
from scpo_spec.compile.problem import CompiledSpec
from scpo_spec.engine.executors.ray import EvaluatorWorker, RayEvaluator, RayUnavailable
from scpo_spec.verify.prove import CellAnswer, Cells


class CellWorker(EvaluatorWorker):
    """An evaluator actor that also bounds cells for the policy it is sent (kept for the
    next batch of the same θ)."""

    def __init__(self, spec, folder: str, sums: dict[str, str]):
        super().__init__(spec, folder, sums)
        self._cells: tuple[tuple[str, int], Cells] | None = None

    def bound_cells(self, theta: np.ndarray, keep: int, lo: np.ndarray, hi: np.ndarray,
                    points: np.ndarray, owner: np.ndarray) -> CellAnswer:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as verify() runs here: small matmuls (prove.py)
        try:
            key = (theta_sha256(theta), int(keep))
            if self._cells is None or self._cells[0] != key:
                self._cells = key, Cells(self.compiled, torch.from_numpy(theta), keep)
            return self._cells[1].bound(lo, hi, points, owner)
        finally:
            torch.set_num_threads(threads)


class RayCells(RayEvaluator):
    """A `CellExecutor` (verify/prove.py) on `workers` Ray actors; close it when done."""

    WORKER = CellWorker

    def __init__(self, compiled: CompiledSpec, base_dir: Path | str | None,
                 workers: int = 2, address: str | None = None):
        super().__init__(compiled.evaluator, compiled.spec, base_dir, workers=workers,
                         address=address)

    def bound_cells(self, theta: np.ndarray, keep: int, lo: np.ndarray, hi: np.ndarray,
                    points: np.ndarray, owner: np.ndarray) -> CellAnswer:
        """Each actor bounds a contiguous part of the cells, with its cells' points (`owner`
        is sorted: the points come cell by cell); the parts joined in order."""
        parts = [p for p in np.array_split(np.arange(len(lo)), min(len(self._actors), len(lo)))
                 if len(p)]
        theta_ref = self._ray.put(np.ascontiguousarray(theta, dtype=np.float64))
        refs = []
        for actor, cells in zip(self._actors, parts):
            first, last = int(cells[0]), int(cells[-1]) + 1
            a, b = np.searchsorted(owner, [first, last])
            refs.append(actor.bound_cells.remote(theta_ref, keep, lo[first:last], hi[first:last],
                                                 points[a:b], owner[a:b] - first))
        try:
            answers = self._ray.get(refs)
        except Exception as e:
            raise RayUnavailable(f"executor ray: a worker failed: "
                                 f"{str(e).strip().splitlines()[-1] if str(e) else e}") from None
        k = answers[0].his.shape[1]
        unbounded = [next((a.unbounded[j] for a in answers if a.unbounded[j] is not None), None)
                     for j in range(k)]
        return CellAnswer(np.concatenate([a.his for a in answers]),
                          np.concatenate([a.g for a in answers]), unbounded,
                          next((a.unsupported for a in answers if a.unsupported), None))
