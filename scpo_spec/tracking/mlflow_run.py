"""An MLflow run mirroring a scpo run: experiment = the spec's name, params = the header's
settings, dimensions and seeds, metrics = the same points as TensorBoard, and at the end the
audit log and report as artifacts and the verdict as the tag `verdict`.

The client and the experiment are opened before training starts, so a missing package or an
unusable tracking URI is an error before any step, not a surprise after the last.  A resumed
scpo run continues the MLflow run that carries its directory (tag `scpo.run_dir`)."""

from __future__ import annotations

import time
from pathlib import Path

from scpo_spec.audit.records import Header
from scpo_spec.errors import ScpoError
from scpo_spec.tracking.scalars import Point

INSTALL_HINT = "pip install 'scpo-spec[mlflow]' (or mlflow-skinny)"
RUN_DIR_TAG = "scpo.run_dir"
PARAM_LIMIT = 500  # characters: MLflow's oldest servers refuse longer parameter values


class MlflowUnavailable(ScpoError):
    """--mlflow (or MLFLOW_TRACKING_URI) given, but mlflow is missing or the URI unusable."""

    exit_code = 2


class MlflowRun:
    """The client, the experiment and (once the scpo run is known) the MLflow run."""

    def __init__(self, uri: str, experiment: str):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MlflowUnavailable(f"--mlflow {uri}: mlflow is not installed ({INSTALL_HINT})"
                                    ) from None
        self._Metric, self._Param = Metric, Param
        self.uri, self.run_id = uri, None
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (found.experiment_id if found is not None
                                  else self.client.create_experiment(experiment))
        except Exception as e:  # MlflowException, a refused connection, a bad URI, …
            raise MlflowUnavailable(f"cannot use MLflow tracking at {uri}: "
                                    f"{_first_line(e)}") from None

    def start(self, run_dir: Path, header: Header, resumed: bool) -> None:
        """Open (or, for a resumed scpo run, reopen) the MLflow run of `run_dir`."""
        where = str(run_dir.resolve())
        if resumed and "'" not in where:
            found = self.client.search_runs([self.experiment_id],
                                            f"tags.`{RUN_DIR_TAG}` = '{where}'", max_results=1)
            if found:
                self.run_id = found[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                return
        run = self.client.create_run(self.experiment_id, run_name=run_dir.name,
                                     tags={RUN_DIR_TAG: where,
                                           "scpo.spec_sha256": str(header.spec.get("sha256"))})
        self.run_id = run.info.run_id
        params = [self._Param(k, v) for k, v in sorted(params_of(header).items())]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def write(self, point: Point) -> None:
        now = int(time.time() * 1000)
        metrics = [self._Metric(k, v, now, point.step) for k, v in point.values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def finish(self, verdict: str, artifacts: list[Path], head: str | None) -> None:
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_tag(self.run_id, "verdict", verdict)
        if head:
            self.client.set_tag(self.run_id, "scpo.head", head)
        self.client.set_terminated(self.run_id, status="FINISHED")

    def close(self, status: str) -> None:
        """End a run that was not finished (interrupted: KILLED; failed: FAILED)."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


def params_of(header: Header) -> dict:
    """The run's settings, dimensions and seeds as MLflow params (values as text)."""
    out = {"spec.name": header.spec.get("name"), "spec.sha256": header.spec.get("sha256"),
           **{f"settings.{k}": v for k, v in header.settings.items()},
           **{f"dimensions.{k}": v for k, v in header.dimensions.items()},
           **{f"seeds.{k}": v for k, v in header.seeds.items()},
           **{f"margin.{m.get('name')}": m.get("margin") for m in header.metrics}}
    return {k: str(v)[:PARAM_LIMIT] for k, v in out.items()}


def _first_line(e: Exception) -> str:
    """The exception's message on one line, cut short (mlflow's can hold a whole page)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 600 else text[:600] + " …"
