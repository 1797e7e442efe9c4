"""`executor ray` on a real two-node Ray cluster brought up on this machine with `ray start`.

The head (`ray start --head`) and a second node (`ray start --address …`) are separate raylets,
one CPU each, so the two workers can only run on two different nodes. The spec lives in a
temporary folder with a python plant package next to it and a regression CSV one folder up
(`../shared/fit.csv`); the workers must get those files through Ray's runtime_env, which the
tests prove by asking each actor where it compiled from and by deleting the driver's folder
before evaluating again.

Each `ray start --block` runs in a session of its own; teardown stops both (SIGTERM, then SIGKILL
for anything left in those two sessions) and checks that no process of theirs remains. `ray stop`
is not used: it kills every Ray process on the machine, other people's included.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scpo_spec.compile.problem import compile_spec
from scpo_spec.engine.executors.ray import RayEvaluator, RayUnavailable
from scpo_spec.engine.run import train
from tests.engine_specs import small_di, spec_of, write_spec
from tests.numerics import assert_close_across_paths
from tests.engine.test_ray import assert_same_run, spy_on_spread

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="ray is not installed (pip install 'scpo-spec[ray]')"),
    pytest.mark.skipif(sys.platform == "win32", reason="process sessions are POSIX"),
]

START_S = 180.0  # bound on waiting for a node to come up (a failure, not a timing assert)
STOP_S = 30.0

PLANT = '''\
import torch

from .constants import DT


def dynamics(x, u):
    """The double integrator of tests/engine_specs.py, as the author's package."""
    p, v = x[..., 0], x[..., 1]
    f = u[..., 0]
    return torch.stack((p + DT * v + 0.5 * DT ** 2 * f, v + DT * f), dim=-1)
'''
PACKAGE = "ray_cluster_plants"  # a name of its own: the driver keeps its import cached
SYSTEM = f'''system python "{PACKAGE}.double_integrator:dynamics" {{
    state position, velocity
    input force
}}'''
OBJECTIVE = ('objective regression { data "../shared/fit.csv"  inputs position, velocity  '
             'targets force  loss mse }')


# the `ray` command of this interpreter's environment (a venv that is not activated has it next
# to its python, not on PATH)
RAY_CLI = next((str(p) for p in [Path(sys.executable).parent / "ray"] if p.exists()), "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodes:
    """Two `ray start --block` processes, each the leader of its own session."""

    def __init__(self, temp_dir: str):
        self.temp_dir, self.port = temp_dir, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        # 200 worker ports per node, below the ephemeral range `_free_port` draws from
        self.worker_ports = random.randrange(20000, 32000, 400)
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")

    def _node(self, name: str, args: list[str]) -> None:
        """One node with 1 CPU and ports of its own (two raylets share this machine)."""
        low = self.worker_ports + 200 * len(self.procs)
        cmd = [RAY_CLI, "start", *args, "--num-cpus=1", "--object-store-memory=100000000",
               f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
               f"--dashboard-agent-listen-port={_free_port()}",
               f"--dashboard-agent-grpc-port={_free_port()}",
               f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
               f"--min-worker-port={low}", f"--max-worker-port={low + 199}",
               "--disable-usage-stats", "--block"]
        log = open(Path(self.temp_dir, f"{name}.log"), "w")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                           env=self.env, start_new_session=True))

    def _log(self, name: str) -> str:
        text = Path(self.temp_dir, f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-15:])

    def start(self, ray) -> None:
        self._node("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                            f"--temp-dir={self.temp_dir}",
                            f"--ray-client-server-port={_free_port()}"])
        self._wait(lambda: self._started("head"), "head", "the head node")
        self._node("worker", [f"--address={self.address}"])
        self._wait(lambda: self._started("worker"), "worker", "the second node")
        ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
        self._wait(lambda: len(self.alive(ray)) == 2, "worker", "2 alive nodes")

    def _started(self, name: str) -> bool:
        """`ray start` says so once every process of its node is up (a head that fails later,
        e.g. its dashboard, exits instead, and `_wait` reports it: no ray.init into the void)."""
        return "Ray runtime started" in Path(self.temp_dir, f"{name}.log").read_text(
            errors="replace")

    def _wait(self, ready, name: str, what: str) -> None:
        deadline = time.monotonic() + START_S
        while not ready():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"waiting for {what}: " + (
                    f"`ray start` exited with {dead[0].returncode}" if dead else "gave up")
                    + f"\n{self._log(name)}")
            time.sleep(0.5)

    @staticmethod
    def alive(ray) -> list[dict]:
        return [n for n in ray.nodes() if n["Alive"]]

    def _left(self) -> list[str]:
        """Live (not zombie) processes of our two sessions."""
        import psutil
        sessions = {p.pid for p in self.procs}
        left = []
        for proc in psutil.process_iter(["pid", "status", "name"]):
            try:
                if os.getsid(proc.pid) in sessions and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    left.append(f"{proc.pid} {proc.info['name']}")
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        return left

    def stop(self) -> list[str]:
        """Stop both nodes; what is still running afterwards ([] when all went)."""
        for p in reversed(self.procs):  # the worker node first, then the head
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(STOP_S)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(20):
            left = self._left()
            if not left:
                return []
            for entry in left:
                try:
                    os.kill(int(entry.split()[0]), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for p in self.procs:
                if p.poll() is None:
                    p.wait(5)
            time.sleep(0.5)
        return self._left()


def _refresh_ray_config() -> None:
    """Make this process's Ray core read RAY_AUTH_MODE and its token again (as Ray's own
    tests do, ray._private.authentication_test_utils; older Rays have no token mode)."""
    from ray import _raylet
    config = getattr(_raylet, "Config", None)
    if config is not None and hasattr(config, "initialize"):
        config.initialize("")
    loader = getattr(_raylet, "AuthenticationTokenLoader", None)
    if loader is not None:
        loader.instance().reset_cache()


@pytest.fixture(scope="module")
def cluster():
    import ray
    assert not ray.is_initialized(), "another test left Ray connected"
    temp_dir = tempfile.mkdtemp(prefix="scpo-ray-")  # short: Ray's socket paths live below
    nodes = TwoNodes(temp_dir)
    with pytest.MonkeyPatch.context() as mp:
        # The test cluster runs without token authentication, so this process must too: a
        # local `ray.init` earlier in it (tests/engine/test_ray.py) switched it to tokens, and the
        # cluster's calls back into this driver would then be refused.
        mp.setenv("RAY_AUTH_MODE", "disabled")
        _refresh_ray_config()
        try:
            nodes.start(ray)
            yield nodes
        finally:
            if ray.is_initialized():
                ray.shutdown()
            left = nodes.stop()
            shutil.rmtree(temp_dir, ignore_errors=True)
    _refresh_ray_config()
    assert not left, f"processes of the test cluster still running: {left}"


def _project(where: Path, extra: str = "") -> tuple[Path, str]:
    """spec/spec.scpo with its plant package beside it and its data in ../shared."""
    spec_dir = where / "spec"
    package = spec_dir / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "constants.py").write_text("DT = 0.1\n")
    (package / "double_integrator.py").write_text(PLANT)
    (where / "shared").mkdir()
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(40, 2))
    y = -0.8 * x[:, 0] - 0.4 * x[:, 1]
    lines = ["position,velocity,force"] + [f"{a:.6f},{b:.6f},{c:.6f}" for (a, b), c in zip(x, y)]
    (where / "shared" / "fit.csv").write_text("\n".join(lines) + "\n")
    text = small_di(steps=3, extra=extra)
    start, end = text.index("system linear"), text.index("backup lqr")
    text = text[:start] + SYSTEM + "\n" + text[end:]
    start, end = text.index("objective imitation"), text.index("train {")
    text = text[:start] + OBJECTIVE + "\n" + text[end:]
    write_spec(spec_dir, text)
    return spec_dir, text


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_nodes_evaluate_as_local_from_files_sent_by_runtime_env(cluster, tmp_path):
    import ray
    from ray._private.state import actors as actor_table
    spec_dir, text = _project(tmp_path / "project")
    spec = spec_of(text, spec_dir)
    compiled = compile_spec(spec, spec_dir)
    local = compiled.evaluator
    ev = RayEvaluator(local, spec, spec_dir, workers=2, address=cluster.address)
    try:
        # (a) one actor on each node, alive, in the GCS's actor table (what Ray's state API
        # reports; `ray.util.state` itself needs the dashboard, which plain `ray` lacks)
        records = [actor_table(a._actor_id.hex()) for a in ev._actors]
        assert all(r["State"] == "ALIVE" and r["ActorClassName"] == "EvaluatorWorker"
                   for r in records)
        nodes = {r["Address"]["NodeID"] for r in records}
        assert nodes == {n["NodeID"] for n in cluster.alive(ray)}  # both nodes, one each

        # (c) what each actor compiled from: its own copy, laid out as on the driver
        expected = {"shared/fit.csv": _sha(tmp_path / "project" / "shared" / "fit.csv")}
        for name in ("__init__.py", "constants.py", "double_integrator.py"):
            expected[f"spec/{PACKAGE}/{name}"] = _sha(spec_dir / PACKAGE / name)
        assert ev.shipped == expected
        origins = ray.get([a.origin.remote() for a in ev._actors])
        assert {o["node"] for o in origins} == nodes
        for o in origins:
            assert o["files"] == expected
            base = Path(o["base"])
            assert base.name == "spec" and not base.is_relative_to(tmp_path)
            assert base.is_relative_to(cluster.temp_dir)  # in the session's runtime_resources
            plant = o["modules"][f"{PACKAGE}.double_integrator"]
            assert plant == str(base / PACKAGE / "double_integrator.py")  # imported from there

        # (b) the same metrics (to the last bits: tests/engine/test_ray.py), before and after the
        # driver's folder is gone
        gen = torch.Generator().manual_seed(0)
        theta0 = compiled.family.theta0
        shutil.rmtree(tmp_path / "project")
        for C, scale in ((2, 0.1), (7, 0.3), (18, 0.3), (33, 3.0)):
            thetas = theta0[None] + scale * torch.randn(C, compiled.family.d, generator=gen,
                                                        dtype=torch.float64)
            assert_close_across_paths(ev(thetas), local(thetas), f"C = {C}")
            x0 = local.x0[1:4]
            assert_close_across_paths(ev.per_scenario(thetas, x0), local.per_scenario(thetas, x0))
    finally:
        ev.close()


GYM_SPEC = """\
spec tiny_drift "an environment registered by a module next to the spec"
system gymnasium "ray_cluster_drift_env:RayClusterDrift-v0" { observation x  action u }
backup linear { K = [[-1]] }
policy mlp { hidden = [4]  activation = tanh  residual = backup  seed = 0 }
scenarios { count 4  seed 0  horizon 12  holdout 8 }
constraint u_limit: always u in [-1, 1]  smoothness 20  margin 0.05
objective return { population 2  sigma 0.05  seed 0 }
train { steps 2  optimizer sgd { lr = 0.01 }  directions 2  perturbation 1e-3  radius 0.3
        margin 1e-6  seed 0 }
"""


def test_a_gymnasium_environment_module_travels_too(cluster, tmp_path):
    """"module:EnvId": gymnasium imports the module itself in each actor, from the copy."""
    import ray
    from tests.systems.test_declared import TINY_ENV
    env = TINY_ENV.replace('"TinyDrift-v0"', '"RayClusterDrift-v0"')
    (tmp_path / "ray_cluster_drift_env.py").write_text(env)
    spec = spec_of(GYM_SPEC, tmp_path)
    compiled = compile_spec(spec, tmp_path)
    local = compiled.evaluator
    ev = RayEvaluator(local, spec, tmp_path, workers=2, address=cluster.address)
    try:
        module = "ray_cluster_drift_env.py"
        assert ev.shipped == {module: _sha(tmp_path / module)}
        gen = torch.Generator().manual_seed(2)
        thetas = compiled.family.theta0[None] + 0.1 * torch.randn(
            5, compiled.family.d, generator=gen, dtype=torch.float64)
        assert_close_across_paths(ev(thetas), local(thetas))
        for o in ray.get([a.origin.remote() for a in ev._actors]):
            assert o["modules"]["ray_cluster_drift_env"] == str(Path(o["base"]) / module)
    finally:
        ev.close()


def test_absolute_data_paths_are_refused_before_connecting(tmp_path):
    spec_dir, text = _project(tmp_path)
    absolute = (tmp_path / "shared" / "fit.csv").resolve()
    text = text.replace('"../shared/fit.csv"', f'"{absolute}"')
    spec = spec_of(text, spec_dir)
    compiled = compile_spec(spec, spec_dir)
    with pytest.raises(RayUnavailable, match=r"data file '.*fit\.csv' is an absolute path"):
        RayEvaluator(compiled.evaluator, spec, spec_dir, workers=2, address="127.0.0.1:1")


def test_a_worker_refuses_files_whose_bytes_differ_from_the_drivers(tmp_path, monkeypatch):
    """The check each actor makes in its unpacked working_dir, before importing anything (run
    here in-process, in a folder standing for that working_dir)."""
    from scpo_spec.engine.executors.ray import EvaluatorWorker, Shipment
    spec_dir, text = _project(tmp_path / "driver")
    spec = spec_of(text, spec_dir)
    shipment = Shipment(spec, spec_dir)
    assert shipment.folder == "spec" and sorted(shipment.files) == [
        "shared/fit.csv", *(f"spec/{PACKAGE}/{n}" for n in
                            ("__init__.py", "constants.py", "double_integrator.py"))]
    sums = shipment.pack(tmp_path / "copy")
    csv = tmp_path / "copy" / "shared" / "fit.csv"
    csv.write_text(csv.read_text().replace("position", "pos"))  # not what the driver sent
    monkeypatch.chdir(tmp_path / "copy")
    with pytest.raises(ValueError, match=r"'shared/fit\.csv' reached the worker with other "
                                         r"bytes than the driver's"):
        EvaluatorWorker(spec, shipment.folder, sums)
    csv.unlink()
    with pytest.raises(FileNotFoundError, match=r"'shared/fit\.csv' did not reach the worker"):
        EvaluatorWorker(spec, shipment.folder, sums)


def test_a_run_by_address_on_two_nodes_is_the_local_run(cluster, tmp_path, monkeypatch):
    """`train` connects to the cluster itself from the spec's address (and disconnects)."""
    import ray
    ray.shutdown()
    spread = spy_on_spread(monkeypatch)
    runs = {}
    for name, extra in (("local", "executor local"),
                        ("ray", f'executor ray {{ address = "{cluster.address}"  workers = 2 }}')):
        spec_dir, text = _project(tmp_path / name, extra)
        res = train(spec_dir / "spec.scpo", spec_of(text, spec_dir), text,
                    out=tmp_path / name / "run")
        assert res.ended == "completed"
        runs[name] = res
    assert not ray.is_initialized()  # the run connected, so the run disconnected
    assert spread == ["metrics"] * 3  # each step's bank went to the two nodes
    assert_same_run(runs["local"], runs["ray"])


@pytest.mark.slow
def test_verify_cells_bounded_on_two_nodes_give_the_local_answer(cluster, monkeypatch, root):
    """`scpo verify --executor ray` on the cluster this process is connected to: the prover's
    batches of cells go to one actor on each node, and the verdicts, splits and bounds are the
    local ones (tests/engine/test_ray.py: the same check on one machine's Ray)."""
    import json

    from typer.testing import CliRunner

    from scpo_spec.cli import app
    from tests.engine.test_ray import assert_same_proof, spy_on_cells
    sizes = spy_on_cells(monkeypatch)
    spec = str(root / "specs" / "linear_stability.scpo")
    answers = {}
    for executor in ("local", "ray"):
        out = CliRunner().invoke(app, ["verify", spec, "--json", "--cells", "64",
                                       "--executor", executor])
        assert out.exit_code == 3, out.output  # UNDECIDED: the Lyapunov ratio at the origin
        answers[executor] = json.loads(out.output)
    assert_same_proof(answers["local"], answers["ray"])
    assert sum(sizes) == 64 + 63 and max(sizes) > 2
