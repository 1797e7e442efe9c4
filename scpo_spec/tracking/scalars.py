"""The numbers a tracker plots, taken from the typed records of the audit log and nowhere else:
TensorBoard and MLflow get the same values, and both say what the log says.

The x axis is steps taken, as in the report: θ₀ (the init record) at 0, the result of step k
(record.step == k) at k + 1.  A step's plotted loss and metrics are those of the policy it ends
with (`loss_next`, `g_next`: the accepted candidate, or the unchanged θ after a rejection)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scpo_spec.audit.records import Header, Holdout, Init, Record, Resume, Step


@dataclass
class Point:
    """One x of the plots and every value at it (tag → float)."""

    step: int
    values: dict


class Scalars:
    """Record → Point, knowing the run's metric names and margins (from its header)."""

    def __init__(self, header: Header):
        self.names = header.metric_names
        self.bounds = [-float(m.get("margin") or 0.0) + 0.0 for m in header.metrics]
        self.step = 0  # x of the last point: where a holdout record is plotted

    def point(self, record: Record) -> Point | None:
        """The values a record adds to the plots (None: nothing to plot)."""
        if isinstance(record, Init):
            self.step = 0
            return Point(0, self._policy(record.loss, record.g, record.ell))
        if isinstance(record, Resume):
            self.step = record.from_step
            return None  # its θ was plotted when the step that made it was committed
        if isinstance(record, Step):
            self.step = record.step + 1
            ell = record.tries[-1].ell if record.tries else record.ell_next
            values = self._policy(record.loss_next, record.g_next, ell)
            values.update({"accepted": float(record.accepted),
                           "refutations": float(record.refutations),
                           "update_norm": float(record.update_norm)})
            if record.grad_norm is not None:
                values["grad_norm"] = float(record.grad_norm)
            times = {k: float(v) for k, v in record.timing.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
            values.update({f"time/{k}": v for k, v in times.items()})
            if times:
                values["time/step"] = sum(times.values())
            return Point(self.step, values)
        if isinstance(record, Holdout):
            values = {"holdout/count": float(record.count)}
            if record.violations is not None:
                values["holdout/violations"] = float(record.violations)
            bound = record.recomputed_bound
            if bound is not None:
                values["holdout/bound"] = bound
            return Point(self.step, values)
        return None  # header, end

    def _policy(self, loss: float, g: np.ndarray, ell: np.ndarray | None) -> dict:
        values = {"loss": float(loss)}
        for i, name in enumerate(self.names):
            values[f"metric/{name}"] = float(g[i])
            values[f"bound/{name}"] = self.bounds[i]
            if ell is not None and np.ndim(ell) == 1 and len(ell) == len(self.names):
                values[f"ell/{name}"] = float(ell[i])
        return values
