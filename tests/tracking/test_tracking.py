"""Tracking beside the audit log: TensorBoard event files read back with TensorBoard's own
EventAccumulator, MLflow read back with MlflowClient from a local file store, and `scpo runs`.
Every value is compared with the audit log's records, which tracking must only repeat."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scpo_spec.audit.records import Holdout, Init, Step
from scpo_spec.audit.rundir import RunDir
from scpo_spec.audit.verify import audit_run
from scpo_spec.cli import app
from tests.engine_specs import small_di, write_spec
from tests.engine.test_run_safety import ENV, finish, read_only, tmpfs, wait_for_steps

pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

runner = CliRunner()
STEPS = 5
# MLflow 3 keeps its file store only on request; the tests want a store with no server or DB,
# and no usage report sent over the network from a test
MLFLOW_ENV = {"MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(autouse=True)
def _file_store(monkeypatch):
    """The tests' own MlflowClient reads the file store too."""
    for k, v in MLFLOW_ENV.items():
        monkeypatch.setenv(k, v)


def invoke(args, env=None):
    return runner.invoke(app, [str(a) for a in args], env={**MLFLOW_ENV, **(env or {})})


def store_uri(path: Path) -> str:
    return path.resolve().as_uri()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One CLI training of small_di with TensorBoard (the default) and --mlflow."""
    base = tmp_path_factory.mktemp("tracked")
    spec = write_spec(base, small_di(steps=STEPS))
    store = store_uri(base / "mlruns")
    result = invoke(["train", spec, "--out", base / "run", "-q", "--mlflow", store])
    assert result.exit_code == 0, result.output
    return base / "run", store, result


def scalars(run: Path) -> dict:
    """tag → {step: value}, as TensorBoard reads RUN/tensorboard (every step once)."""
    acc = EventAccumulator(str(RunDir(run).tensorboard))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), (tag, steps)  # no step written twice
        out[tag] = {e.step: e.value for e in events}
    return out


def expected(run: Path) -> dict:
    """tag → {step: value} as the audit log's records say (x = steps taken)."""
    run_dir = RunDir(run)
    header = run_dir.header()
    names = header.metric_names
    margins = [m["margin"] for m in header.metrics]
    want: dict = {}
    put = lambda tag, step, v: want.setdefault(tag, {}).__setitem__(step, float(v))  # noqa: E731
    for rec in run_dir.records():
        if isinstance(rec, Init):
            x, loss, g, ell = 0, rec.loss, rec.g, rec.ell
        elif isinstance(rec, Step):
            x, loss, g, ell = rec.step + 1, rec.loss_next, rec.g_next, rec.tries[-1].ell
            put("accepted", x, rec.accepted)
            put("refutations", x, rec.refutations)
            put("update_norm", x, rec.update_norm)
            put("time/step", x, sum(rec.timing.values()))
        else:
            continue
        put("loss", x, loss)
        for i, name in enumerate(names):
            put(f"metric/{name}", x, g[i])
            put(f"bound/{name}", x, -margins[i])
            put(f"ell/{name}", x, ell[i])
    return want


def assert_matches_the_log(run: Path, steps: int) -> None:
    got, want = scalars(run), expected(run)
    assert set(want["loss"]) == set(range(steps + 1))
    for tag, series in want.items():
        assert tag in got, tag
        assert set(got[tag]) == set(series), tag
        for x, v in series.items():
            # TensorBoard stores scalars as float32: exactly the log's value, rounded once
            assert got[tag][x] == float(np.float32(v)), (tag, x, got[tag][x], v)


# ---- TensorBoard ----
def test_event_files_hold_every_step_as_the_audit_log_says(tracked):
    run, _, _ = tracked
    assert_matches_the_log(run, STEPS)
    got = scalars(run)
    header = RunDir(run).header()
    assert {f"metric/{n}" for n in header.metric_names} <= set(got)
    assert {"time/rollouts", "time/qcqp", "time/gradient", "grad_norm"} <= set(got)
    holdout = next(r for r in RunDir(run).records() if isinstance(r, Holdout))
    assert got["holdout/violations"] == {STEPS: float(holdout.violations)}
    # the loss really moves: a tracker plotting the wrong record would not see this curve
    losses = [got["loss"][x] for x in range(STEPS + 1)]
    assert losses[-1] < losses[0]


def test_audit_and_report_ignore_the_event_files(tracked, tmp_path):
    run, _, _ = tracked
    assert any(RunDir(run).tensorboard.iterdir())
    result = invoke(["audit", run])
    assert result.exit_code == 0, result.output
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for f in RunDir(copy).tensorboard.iterdir():
        f.write_bytes(b"not an event file")  # damaged: still no part of the certificate
    assert invoke(["audit", copy]).exit_code == 0
    assert "CERTIFIED" in invoke(["report", copy, "--format", "md"]).output
    shutil.rmtree(RunDir(copy).tensorboard)
    RunDir(copy).tensorboard.write_text("a file where the folder was")
    assert invoke(["audit", copy]).exit_code == 0


def test_a_resume_appends_an_event_file_and_continues_the_mlflow_run(tmp_path):
    spec = write_spec(tmp_path, small_di(steps=2))
    run, env = tmp_path / "run", {"MLFLOW_TRACKING_URI": store_uri(tmp_path / "mlruns")}
    assert invoke(["train", spec, "--out", run, "-q"], env).exit_code == 0
    result = invoke(["train", spec, "--out", run, "--resume", "--steps", 4, "-q"], env)
    assert result.exit_code == 0, result.output
    assert len(list(RunDir(run).tensorboard.iterdir())) == 2
    assert_matches_the_log(run, 4)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (mlrun,) = client.search_runs([client.get_experiment_by_name("small_di").experiment_id])
    history = client.get_metric_history(mlrun.info.run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
    assert mlrun.info.status == "FINISHED"


def test_no_mlflow_overrides_a_global_tracking_uri(tmp_path):
    """A user with MLFLOW_TRACKING_URI in their shell profile can still train untracked."""
    spec = write_spec(tmp_path, small_di(steps=2))
    store = tmp_path / "mlruns"
    env = {"MLFLOW_TRACKING_URI": store_uri(store)}
    result = invoke(["train", spec, "--out", tmp_path / "run", "-q", "--no-mlflow"], env)
    assert result.exit_code == 0, result.output
    assert not store.exists()
    assert RunDir(tmp_path / "run").log.exists()
    both = invoke(["train", spec, "--out", tmp_path / "run2", "--mlflow", store_uri(store),
                   "--no-mlflow"])
    assert both.exit_code == 2 and "--no-mlflow" in both.output
    assert not store.exists()


def test_no_tensorboard_writes_none(tmp_path):
    spec = write_spec(tmp_path, small_di(steps=2))
    result = invoke(["train", spec, "--out", tmp_path / "run", "-q", "--no-tensorboard"])
    assert result.exit_code == 0, result.output
    assert not RunDir(tmp_path / "run").tensorboard.exists()


@pytest.mark.parametrize("damage", ["a file in its place", "read-only"])
def test_a_tensorboard_folder_that_cannot_be_written_does_not_stop_training(tmp_path, damage):
    spec = write_spec(tmp_path, small_di(steps=2))
    run = tmp_path / "run"
    assert invoke(["train", spec, "--out", run, "-q", "--no-tensorboard"]).exit_code == 0
    folder = RunDir(run).tensorboard
    if damage == "read-only":
        folder.mkdir()
        blocked = read_only(folder, "immutable")  # refuses even root (chmod would not)
    else:
        folder.write_text("in the way")
        blocked = contextlib.nullcontext()
    with blocked:
        result = invoke(["train", spec, "--out", run, "--resume", "--steps", 4, "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.count("TensorBoard off") == 1, result.output
    a = audit_run(run)
    assert a.ok and a.complete and a.steps == 4


def test_a_full_disk_mid_run_drops_tensorboard_and_training_goes_on(tmp_path):
    spec = write_spec(tmp_path, small_di(steps=1))
    run = tmp_path / "run"
    assert invoke(["train", spec, "--out", run, "-q", "--no-tensorboard"]).exit_code == 0
    with tmpfs(RunDir(run).tensorboard, "4k"):  # one page: a few steps' events, then ENOSPC
        result = invoke(["train", spec, "--out", run, "--resume", "--steps", 12, "-q"])
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        assert text.count("TensorBoard off") == 1 and "No space left on device" in text, text
        assert "Traceback" not in text
        got = scalars(run)["loss"]
    a = audit_run(run)
    assert a.ok and a.complete and a.steps == 12
    want = expected(run)["loss"]
    assert 0 < len(got) < 11 and set(got) == set(range(2, 2 + len(got)))  # a prefix, intact
    assert all(got[x] == float(np.float32(want[x])) for x in got)


# ---- MLflow ----
def test_mlflow_holds_params_metrics_artifacts_and_the_verdict(tracked):
    run, store, result = tracked
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("small_di")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    run_id = mlrun.info.run_id
    header = RunDir(run).header()
    params = mlrun.data.params
    assert params["settings.lr"] == "0.05" and params["settings.steps"] == str(STEPS)
    assert params["dimensions.d"] == str(header.dimensions["d"])
    assert params["spec.sha256"] == header.spec["sha256"]
    want = expected(run)
    for tag in ("loss", *(f"metric/{n}" for n in header.metric_names), "accepted"):
        history = {m.step: m.value for m in client.get_metric_history(run_id, tag)}
        assert history == want[tag], tag  # float64: the log's values exactly
    assert {a.path for a in client.list_artifacts(run_id)} == {"audit.jsonl", "report.html"}
    assert mlrun.data.tags["verdict"] == "CERTIFIED"  # what `scpo train` said (exit 0)
    assert "CERTIFIED" in result.output
    assert mlrun.data.tags["scpo.head"] == audit_run(run).head
    assert mlrun.info.status == "FINISHED"


def test_an_interrupted_training_ends_its_mlflow_run_killed_with_every_logged_step(tmp_path):
    spec = write_spec(tmp_path, small_di(steps=100_000))
    run, store = tmp_path / "run", store_uri(tmp_path / "mlruns")
    proc = subprocess.Popen([sys.executable, "-m", "scpo_spec.cli", "train", str(spec), "--out",
                             str(run), "-q", "--mlflow", store], env={**ENV, **MLFLOW_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_steps(run, 3, proc)
        proc.send_signal(signal.SIGTERM)  # `scpo train` stops as on Ctrl-C
        _, err = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    steps = audit_run(run).steps
    client = MlflowClient(store)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("small_di").experiment_id])
    assert mlrun.info.status == "KILLED" and "verdict" not in mlrun.data.tags
    logged = sorted(m.step for m in client.get_metric_history(mlrun.info.run_id, "loss"))
    assert logged == list(range(steps + 1))
    assert set(scalars(run)["loss"]) == set(range(steps + 1))  # the event file was flushed


def test_mlflow_asked_for_but_missing_stops_before_training(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # how Python sees a package not installed
    spec = write_spec(tmp_path, small_di(steps=2))
    result = invoke(["train", spec, "--out", tmp_path / "run", "--mlflow",
                     store_uri(tmp_path / "mlruns")])
    assert result.exit_code == 2, result.output
    assert "mlflow is not installed" in result.output and "scpo-spec[mlflow]" in result.output
    assert not (tmp_path / "run").exists()


# ---- scpo runs ----
def test_scpo_runs_lists_runs_and_a_broken_one(tracked, tmp_path):
    run, _, _ = tracked
    folder = tmp_path / "runs"
    first, second = folder / "alpha", folder / "group" / "beta"
    shutil.copytree(run, first)
    shutil.copytree(run, second)
    broken = folder / "broken"
    broken.mkdir()
    RunDir(broken).log.write_text('{"type": "header", "oops"\n')
    (folder / "not-a-run").mkdir()  # no log: not listed
    for path, when in ((second, 1_000_000), (first, 2_000_000)):  # beta started first
        for f in RunDir(path).spec_files():
            os.utime(f, (when, when))
    result = invoke(["runs", folder])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "BROKEN" in result.output and "CERTIFIED" in result.output
    assert str(first) in result.output and str(second) in result.output
    listed = json.loads(invoke(["runs", folder, "--json"]).output)
    assert [r["path"] for r in listed] == [str(second), str(first), str(broken)]
    a = audit_run(run)
    for row in listed[:2]:
        assert row["spec"] == "small_di" and row["verdict"] == "CERTIFIED"
        assert (row["steps"], row["accepted"], row["rejected"]) == (a.steps, a.accepted,
                                                                    a.rejected)
        assert (row["loss_first"], row["loss_last"]) == (a.loss_first, a.loss_last)
        assert row["head"] == a.head and row["problem"] is None
        assert row["worst_value"] == a.worst[row["worst_metric"]]
    assert listed[0]["started"].startswith("1970-01-12")  # 1e6 s after the epoch, UTC
    assert listed[2]["verdict"] == "BROKEN" and listed[2]["problem"]
    # the metric named is the one with the least headroom to its bound
    margins = {m["name"]: m["margin"] for m in RunDir(run).header().metrics}
    assert listed[0]["worst_metric"] == max(a.worst, key=lambda n: a.worst[n] + margins[n])
