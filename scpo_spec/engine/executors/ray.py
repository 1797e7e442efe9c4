"""`train { executor ray { address = "…"  workers = N } }`: the candidate bank's rollouts spread
over Ray actors.

`RayEvaluator` is an `Evaluator` (scpo_spec.compile.evaluator): `__call__`, `per_scenario`,
`rollout`, `names`, `margins`, `metrics`, `x0`, `horizon`. A batch of C candidates is cut into
`workers` contiguous chunks of rows; each chunk is evaluated by one actor with the ordinary
batched evaluator, and the results are concatenated in order. Each actor compiles the checked
spec model it is sent (`compile_spec`; nothing re-reads the text), then only θ rows travel.
The metrics are float64 computations of the same code on the same rows, so they are identical
to the local executor's (tests/test_ray.py checks bit-for-bit equality); single-candidate calls
(θ₀, the verification of a step's candidate, counterexamples, holdout) stay in this process.

Connection: the spec's `address`, else the RAY_ADDRESS environment variable, else a local Ray
instance started here (and shut down by `close()`; a Ray connection that already existed is
left alone). Every failure is a `RayUnavailable` with a one-line message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path

import numpy as np
import torch

from scpo_spec.errors import ScpoError
from scpo_spec.compile.evaluator import RolloutEvaluator
from scpo_spec.dtype import DTYPE

INSTALL_HINT = "pip install 'scpo-spec[ray]'"
PROBE_TIMEOUT_S = 5.0      # TCP check of a cluster address (ray.init would retry for minutes)
READY_TIMEOUT_S = 300.0    # actors compiling the spec (and waiting for CPUs on a busy cluster)
LOCAL_BELOW = 2            # batches with fewer rows than this are evaluated in this process


class RayUnavailable(ScpoError):
    """Ray is not installed, the cluster cannot be reached or the workers could not start."""


def fingerprint(ev: RolloutEvaluator) -> str:
    """What the workers must agree on with the driver: metric names, horizon and scenarios (x₀,
    or a gymnasium system's reset seeds)."""
    h = hashlib.sha256()
    h.update(repr((list(ev.names), int(ev.horizon))).encode())
    x0 = np.ascontiguousarray(ev.x0.detach().cpu().numpy())  # float64 states or int64 seeds
    h.update(x0.dtype.str.encode() + x0.tobytes())
    return h.hexdigest()


class EvaluatorWorker:
    """A Ray actor (wrapped with `ray.remote` at connection time): one compiled spec, many
    batched evaluations."""

    def __init__(self, spec, base_dir: str | None):
        from scpo_spec.compile.problem import compile_spec
        self.ev = compile_spec(spec, Path(base_dir) if base_dir is not None else None).evaluator

    def fingerprint(self) -> str:
        return fingerprint(self.ev)

    def metrics(self, thetas: np.ndarray) -> np.ndarray:
        return self.ev(torch.from_numpy(thetas)).numpy()

    def per_scenario(self, thetas: np.ndarray, x0: np.ndarray | None) -> np.ndarray:
        x0_t = torch.from_numpy(x0) if x0 is not None else None
        return self.ev.per_scenario(torch.from_numpy(thetas), x0_t).numpy()


def _probe(address: str) -> None:
    """Refuse quickly (instead of ray.init's minutes of retries) when nothing listens there."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # let ray.init judge a form we do not know
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise RayUnavailable(f"executor ray: cannot reach the Ray cluster at {address} "
                             f"({e.strerror or e})") from None


def connect(address: str | None, workers: int):
    """Import ray and make sure it is connected; returns (ray, started_here)."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"executor ray: ray is not installed ({INSTALL_HINT})") from None
    if ray.is_initialized():
        return ray, False
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            _probe(address)
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                     ignore_reinit_error=True)
        else:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, ignore_reinit_error=True)
    except RayUnavailable:
        raise
    except Exception as e:  # ConnectionError, RuntimeError, …: one line, no traceback
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RayUnavailable(f"executor ray: cannot start or reach {where}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return ray, True


class RayEvaluator:
    """An `Evaluator`; batches of ≥ LOCAL_BELOW rows run on `workers` actors."""

    def __init__(self, local: RolloutEvaluator, spec, base_dir: Path | str | None,
                 workers: int = 2, address: str | None = None,
                 local_below: int = LOCAL_BELOW):
        self.local, self.workers, self.local_below = local, int(workers), int(local_below)
        self._ray, self._started = connect(address, self.workers)
        self._actors: list = []
        ray = self._ray
        try:
            actor = ray.remote(EvaluatorWorker).options(num_cpus=1, scheduling_strategy="SPREAD")
            base = str(base_dir) if base_dir is not None else None
            self._actors = [actor.remote(spec, base) for _ in range(self.workers)]
            ready, pending = ray.wait([a.fingerprint.remote() for a in self._actors],
                                      num_returns=len(self._actors), timeout=READY_TIMEOUT_S)
            if pending:
                raise RayUnavailable(
                    f"executor ray: {len(pending)} of {self.workers} workers did not start within "
                    f"{READY_TIMEOUT_S:g} s (each needs 1 CPU; does the cluster have "
                    f"{self.workers}?)")
            try:
                prints = ray.get(ready)
            except Exception as e:  # the actor's constructor failed (spec, imports, files)
                cause = getattr(e, "cause", None) or e
                first = str(cause).strip().splitlines()
                raise RayUnavailable("executor ray: a worker could not compile the spec: "
                                     + (first[-1] if first else type(cause).__name__)) from None
            if any(p != fingerprint(local) for p in prints):
                raise RayUnavailable("executor ray: the workers compiled different scenarios or "
                                     "metrics than this process (is the same scpo-spec installed "
                                     "on the cluster?)")
        except BaseException:
            self.close()
            raise

    # ---- the Evaluator interface ----
    @property
    def metrics(self):
        return self.local.metrics

    @property
    def names(self) -> list[str]:
        return self.local.names

    @property
    def margins(self) -> np.ndarray:
        return self.local.margins

    @property
    def x0(self) -> torch.Tensor:
        return self.local.x0

    @property
    def horizon(self) -> int:
        return self.local.horizon

    def rollout(self, thetas: torch.Tensor, x0: torch.Tensor | None = None):
        return self.local.rollout(thetas, x0)

    @torch.no_grad()
    def __call__(self, thetas: torch.Tensor) -> torch.Tensor:
        thetas = torch.as_tensor(thetas, dtype=DTYPE)
        if thetas.shape[0] < self.local_below or not self._actors:
            return self.local(thetas)
        return self._spread("metrics", thetas)

    @torch.no_grad()
    def per_scenario(self, thetas: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        thetas = torch.as_tensor(thetas, dtype=DTYPE)
        if thetas.shape[0] < self.local_below or not self._actors:
            return self.local.per_scenario(thetas, x0)
        x0_np = np.ascontiguousarray(x0.detach().cpu().numpy()) if x0 is not None else None
        return self._spread("per_scenario", thetas, x0_np)

    def _spread(self, method: str, thetas: torch.Tensor, *extra) -> torch.Tensor:
        rows = thetas.detach().cpu().numpy().astype(np.float64, copy=False)
        chunks = [c for c in np.array_split(rows, min(len(self._actors), rows.shape[0])) if len(c)]
        refs = [getattr(actor, method).remote(np.ascontiguousarray(chunk), *extra)
                for actor, chunk in zip(self._actors, chunks)]
        try:
            parts = self._ray.get(refs)
        except Exception as e:
            raise RayUnavailable(f"executor ray: a worker failed: "
                                 f"{str(e).strip().splitlines()[-1] if str(e) else e}") from None
        return torch.from_numpy(np.concatenate(parts, axis=0))

    # ---- lifetime ----
    def close(self) -> None:
        """Kill the actors; shut Ray down only if this evaluator started it."""
        ray, actors, self._actors = self._ray, self._actors, []
        for a in actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False
