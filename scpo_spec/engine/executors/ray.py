"""`train { executor ray { address = "…"  workers = N } }`: the candidate bank's rollouts spread
over Ray actors.

`RayEvaluator` is an `Evaluator` (scpo_spec.compile.evaluator): `__call__`, `per_scenario`,
`rollout`, `names`, `margins`, `metrics`, `x0`, `horizon`. A batch of C candidates is cut into
`workers` contiguous chunks of rows; each chunk is evaluated by one actor with the ordinary
batched evaluator, and the results are concatenated in order. Each actor compiles the checked
spec model it is sent (`compile_spec`; nothing re-reads the text), then only θ rows travel.
The metrics are float64 computations of the same code on the same rows: the local executor's
up to the last bits (an actor's chunk of rows, on one thread, may take another BLAS kernel;
tests/test_ray.py checks 1e-12); single-candidate calls
(θ₀, the verification of a step's candidate, counterexamples, holdout) stay in this process.

Files: whatever the spec names — a regression's `data` CSV, a `system python` or gymnasium
"module:EnvId" module kept next to the spec (a package next to it: all its .py files), a `backup
torch` / `policy torch` file — is copied into a temporary folder under its path relative to the
spec and sent with the actors as Ray's `runtime_env` `working_dir`, so a node needs no shared
path: each actor compiles from its own unpacked copy, after checking every file's SHA-256 against
the driver's. A path that climbs out of the spec's folder (`../data/x.csv`) keeps its relative
place in that copy; an absolute path is refused (it would be read from each node's own disk). A
module found on sys.path outside the spec's folder is an installed package, not sent: every node
must have it, as it has scpo-spec and torch. A spec naming no file sends no runtime_env.

Connection: the spec's `address`, else the RAY_ADDRESS environment variable, else a local Ray
instance started here (and shut down by `close()`; a Ray connection that already existed is
left alone). Every failure is a `RayUnavailable` with a one-line message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from scpo_spec.errors import ScpoError
from scpo_spec.compile.evaluator import ScenarioEvaluator
from scpo_spec.dtype import DTYPE
from scpo_spec.language import model as M
from scpo_spec.plan import code
from scpo_spec.plan.scenarios import Draws
from scpo_spec.usercode.loader import sha256_file

INSTALL_HINT = "pip install 'scpo-spec[ray]'"
PROBE_TIMEOUT_S = 5.0      # TCP check of a cluster address (ray.init would retry for minutes)
READY_TIMEOUT_S = 300.0    # actors compiling the spec (and waiting for CPUs on a busy cluster)
LOCAL_BELOW = 2            # batches with fewer rows than this are evaluated in this process


class RayUnavailable(ScpoError):
    """Ray is not installed, the cluster cannot be reached or the workers could not start."""


def fingerprint(ev: ScenarioEvaluator) -> str:
    """What the workers must agree on with the driver: metric names, horizon and scenarios (x₀,
    or a gymnasium system's reset seeds, and the parameters' and disturbances' draws)."""
    h = hashlib.sha256()
    h.update(repr((list(ev.names), int(ev.horizon))).encode())
    x0 = np.ascontiguousarray(ev.x0.detach().cpu().numpy())  # float64 states or int64 seeds
    h.update(x0.dtype.str.encode() + x0.tobytes())
    if ev.draws is not None:
        h.update(Draws(ev.draws.parameters.numpy(), ev.draws.disturbances.numpy())
                 .digest().encode())
    return h.hexdigest()


class Shipment:
    """The files a spec names, laid out for Ray's `working_dir`: `files` maps each one's name in
    the copy (relative to `root`, the common folder of the spec and its files) to the driver's
    file, `folder` is the spec's folder relative to `root` ("." unless a path climbs out)."""

    def __init__(self, spec, base_dir: Path):
        base = Path(os.path.abspath(base_dir))
        wanted: list[Path] = []
        objective = spec.objective
        if isinstance(objective, M.RegressionObjective) and objective.data is not None:
            wanted.append(self._relative(base, objective.data.value, "data file"))
        for ref in code.references(spec):
            if ref.is_file:
                wanted.append(self._relative(base, ref.target, f"{ref.kind} file"))
            else:
                wanted.extend(self._module_files(ref, base))
        wanted = list(dict.fromkeys(wanted))
        self.root = Path(os.path.commonpath([base, *wanted])) if wanted else base
        self.folder = os.path.relpath(base, self.root)
        self.files = {Path(os.path.relpath(p, self.root)).as_posix(): p for p in wanted}

    @staticmethod
    def _relative(base: Path, value: str, what: str) -> Path:
        if Path(value).is_absolute():
            raise RayUnavailable(
                f"executor ray: {what} '{value}' is an absolute path; the workers get the spec's "
                "files through Ray's runtime_env by their path relative to the spec, so give it "
                "relative to the spec's folder")
        return Path(os.path.normpath(base / value))

    @staticmethod
    def _module_files(ref, base: Path) -> list[Path]:
        """A module next to the spec (a package next to it: its .py files); [] for an installed
        one, or one not found (the worker's import then says so)."""
        found = code.locate(ref, base)
        if found is None:
            return []
        try:
            rel = found.resolve().relative_to(base.resolve())
        except ValueError:
            return []
        if len(rel.parts) == 1:
            return [base / rel]
        package = base / rel.parts[0]
        return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)

    def pack(self, folder: Path) -> dict[str, str]:
        """Copy each file into `folder` under its name; their SHA-256s (of the copies: the bytes
        that travel)."""
        sums = {}
        try:
            for name, source in self.files.items():
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                sums[name] = sha256_file(target)
        except OSError as e:
            raise RayUnavailable(f"executor ray: cannot copy the spec's files for the workers: "
                                 f"{e.strerror or e}: {e.filename}") from None
        return sums


def upload(packed: Path) -> str:
    """The URI of `packed`/files once uploaded into the cluster as a `working_dir` package.

    Ray takes a local folder as `working_dir` only in `ray.init` (for the whole job); an actor
    needs a package URI. So the folder is packed and uploaded the way `ray.init` does it
    (content-addressed `gcs://_ray_pkg_<hash>.zip`, stored by the cluster's GCS, fetched and
    unpacked by each node that runs an actor); the zip is built in `packed`/scratch.
    """
    import inspect
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed
    scratch = packed / "scratch"
    scratch.mkdir()
    kwargs = {"scratch_dir": str(scratch)}
    if "include_gitignore" in inspect.signature(upload_working_dir_if_needed).parameters:
        kwargs["include_gitignore"] = False  # every file here was named by the spec
    try:
        env = upload_working_dir_if_needed({"working_dir": str(packed / "files")}, **kwargs)
    except Exception as e:  # too large for the GCS, cluster gone, …
        raise RayUnavailable(f"executor ray: cannot send the spec's files to the cluster: "
                             f"{_one_line(e)}") from None
    return env["working_dir"]


class EvaluatorWorker:
    """A Ray actor (wrapped with `ray.remote` at connection time): one compiled spec, many
    batched evaluations.  With `sums`, Ray has unpacked the spec's files in the actor's working
    directory: they are checked against the driver's SHA-256s before anything is imported or
    read, and the spec is compiled from that copy, never from a path on the driver."""

    def __init__(self, spec, folder: str, sums: dict[str, str]):
        from scpo_spec.compile.problem import compile_spec
        root = Path.cwd()
        for name, expected in sums.items():
            path = root / name
            if not path.is_file():
                raise FileNotFoundError(f"'{name}' did not reach the worker (runtime_env "
                                        f"working_dir {root})")
            got = sha256_file(path)
            if got != expected:
                raise ValueError(f"'{name}' reached the worker with other bytes than the "
                                 f"driver's (SHA-256 {got[:12]}…, not {expected[:12]}…)")
        self.base = (root / folder).resolve()
        self.base.mkdir(parents=True, exist_ok=True)  # holds nothing if every file is above it
        if sums and str(self.base) not in sys.path:  # gymnasium imports "module:EnvId" itself
            sys.path.insert(0, str(self.base))
        self.sums = dict(sums)  # as checked above
        self.spec, self.compiled = spec, compile_spec(spec, self.base)
        self.ev = self.compiled.evaluator

    def fingerprint(self) -> str:
        return fingerprint(self.ev)

    def origin(self) -> dict:
        """Where this actor compiled from and on which node (for tests and diagnostics)."""
        import ray
        modules = {ref.module: getattr(sys.modules.get(ref.module), "__file__", None)
                   for ref in code.references(self.spec) if not ref.is_file}
        return {"base": str(self.base), "files": dict(self.sums), "modules": modules,
                "node": ray.get_runtime_context().get_node_id()}

    def metrics(self, thetas: np.ndarray) -> np.ndarray:
        return self.ev(torch.from_numpy(thetas)).numpy()

    def per_scenario(self, thetas: np.ndarray, x0: np.ndarray | None,
                     draws: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        x0_t = torch.from_numpy(x0) if x0 is not None else None
        return self.ev.per_scenario(torch.from_numpy(thetas), x0_t,
                                    Draws(*draws) if draws is not None else None).numpy()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


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
    """An `Evaluator`; batches of ≥ LOCAL_BELOW rows run on `workers` actors (of class
    WORKER: ray_cells.py's subclass also bounds `scpo verify`'s cells)."""

    WORKER = EvaluatorWorker

    def __init__(self, local: ScenarioEvaluator, spec, base_dir: Path | str | None,
                 workers: int = 2, address: str | None = None,
                 local_below: int = LOCAL_BELOW):
        self.local, self.workers, self.local_below = local, int(workers), int(local_below)
        if base_dir is None:
            base_dir = Path(spec.path).resolve().parent if spec.path else Path.cwd()
        shipment = Shipment(spec, Path(base_dir))  # refused before connecting if it cannot go
        self._ray, self._started = connect(address, self.workers)
        self._actors: list = []
        self.shipped: dict[str, str] = {}  # name in the workers' copy → SHA-256
        ray, packed = self._ray, None
        try:
            options = {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
            if shipment.files:
                packed = tempfile.mkdtemp(prefix="scpo-ray-files-")
                self.shipped = shipment.pack(Path(packed, "files"))
                options["runtime_env"] = {"working_dir": upload(Path(packed))}
            actor = ray.remote(self.WORKER).options(**options)
            self._actors = [actor.remote(spec, shipment.folder, self.shipped)
                            for _ in range(self.workers)]
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
        finally:
            if packed is not None:  # the cluster's GCS holds the package now
                shutil.rmtree(packed, ignore_errors=True)

    # ---- the Evaluator interface ----
    @property
    def device(self) -> torch.device:
        """The bank stays on the CPU: its rows travel to the actors as numpy."""
        return torch.device("cpu")

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

    @property
    def draws(self):
        return self.local.draws

    def select(self, index):
        return self.local.select(index)

    def trace(self, *args, **kwargs):
        return self.local.trace(*args, **kwargs)

    def rollout(self, thetas: torch.Tensor, x0: torch.Tensor | None = None, draws=None):
        return self.local.rollout(thetas, x0, draws)

    @torch.no_grad()
    def __call__(self, thetas: torch.Tensor) -> torch.Tensor:
        thetas = torch.as_tensor(thetas, dtype=DTYPE)
        if thetas.shape[0] < self.local_below or not self._actors:
            return self.local(thetas)
        return self._spread("metrics", thetas)

    @torch.no_grad()
    def per_scenario(self, thetas: torch.Tensor, x0: torch.Tensor | None = None,
                     draws=None) -> torch.Tensor:
        thetas = torch.as_tensor(thetas, dtype=DTYPE)
        if thetas.shape[0] < self.local_below or not self._actors:
            return self.local.per_scenario(thetas, x0, draws)
        x0_np = np.ascontiguousarray(x0.detach().cpu().numpy()) if x0 is not None else None
        draws = self.local.draws_for(x0, draws) if x0 is not None else None  # checked here
        draws_np = None if draws is None else (draws.parameters.numpy(),
                                               draws.disturbances.numpy())
        return self._spread("per_scenario", thetas, x0_np, draws_np)

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
        """Kill the actors and close the local evaluator (a gymnasium plant's environments);
        shut Ray down only if this evaluator started it."""
        self.local.close()
        ray, actors, self._actors = self._ray, self._actors, []
        for a in actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False
