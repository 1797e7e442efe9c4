"""`scpo export`: the exported ONNX / TorchScript file is `load_run(...).policy` (backup
included), carries the run's identity, and a run that is not CERTIFIED is refused without
--force.  Real files, real onnxruntime sessions."""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from scpo_spec.audit.records import theta_sha256
from scpo_spec.audit.rundir import RunDir, RunError
from scpo_spec.audit.verify import audit_run
from scpo_spec.cli import app
from scpo_spec.engine.run import train
from scpo_spec.engine.trained import load_run
from scpo_spec.export import (ExportError, export_run, read_onnx_metadata,
                              read_torchscript_metadata)
from tests.engine_specs import small_di, spec_of, write_spec
from tests.test_torch_policies import Saturated, lqr_gain

runner = CliRunner()


def make_run(tmp_path: Path, text: str, spec=None, name="run") -> Path:
    path = write_spec(tmp_path, text)
    spec = spec if spec is not None else spec_of(text, tmp_path)
    return train(path, spec, text, out=tmp_path / name).run_dir


@pytest.fixture(scope="module")
def certified(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("certified"), small_di(steps=4))


@pytest.fixture(scope="module")
def uncertified(tmp_path_factory) -> Path:
    """A clean, complete run whose holdout (2 scenarios) is too small to say anything: NOT
    CERTIFIED by the report's own checks, while its log audits clean."""
    text = small_di(steps=2).replace("holdout 50", "holdout 2")
    run = make_run(tmp_path_factory.mktemp("uncertified"), text)
    assert audit_run(run).ok
    return run


def states(n=2, count=200, seed=1):
    return np.random.default_rng(seed).uniform(-3, 3, size=(count, n))


def onnx_actions(path: Path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "state" and inp.type == "tensor(double)" and outp.type == "tensor(double)"
    assert not isinstance(inp.shape[0], int)  # a dynamic batch axis
    return session.run(None, {"state": x})[0]


def identity_of(run: Path) -> dict:
    rd = RunDir(run)
    loaded = load_run(run)
    return {"spec_sha256": rd.header().spec["sha256"], "head": rd.head(),
            "theta_sha256": theta_sha256(loaded.theta.numpy())}


def test_onnx_export_is_the_run_policy_and_carries_its_identity(certified, tmp_path):
    out = tmp_path / "p.onnx"
    before = sorted((f.name, f.read_bytes()) for f in certified.iterdir())
    done = export_run(certified, "onnx", out)
    assert done.path == out and done.max_error is not None and done.max_error <= 1e-9
    policy = load_run(certified).policy
    for count in (1, 7, 200):  # any batch size
        x = states(count=count)
        np.testing.assert_allclose(onnx_actions(out, x), policy(x), rtol=0, atol=1e-9)
    meta = read_onnx_metadata(out)
    ident = identity_of(certified)
    assert {k: meta[k] for k in ident} == ident
    assert ident["theta_sha256"] == audit_run(certified).final_theta
    assert meta["verdict"] == "CERTIFIED" and meta["forced"] is False and meta["failures"] == []
    assert meta["states"] == ["position", "velocity"] and meta["inputs"] == ["force"]
    # the run directory is left exactly as it was
    assert sorted((f.name, f.read_bytes()) for f in certified.iterdir()) == before


def test_torchscript_export_is_exact(certified, tmp_path):
    out = tmp_path / "p.pt"
    export_run(certified, "torchscript", out)
    extra = {"scpo.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    x = states()
    got = loaded(torch.from_numpy(x))
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.detach().numpy(), load_run(certified).policy(x))
    meta = json.loads(extra["scpo.json"])
    assert meta == read_torchscript_metadata(out)
    assert {k: meta[k] for k in ("spec_sha256", "head", "theta_sha256")} == identity_of(certified)
    assert meta["verdict"] == "CERTIFIED" and meta["forced"] is False


def test_export_with_a_torch_residual_backup(tmp_path):
    """`backup torch` + `policy mlp { residual = backup }`, written in the spec: the backup's
    TorchScript is inside the exported file, and reading the run back runs that file only with
    trust_code (after its SHA-256 matches the header's)."""
    torch.jit.save(torch.jit.script(Saturated(lqr_gain(tmp_path))), str(tmp_path / "ctrl.pt"))
    text = small_di(steps=3).replace("backup lqr { Q = diag(1, 1)  R = diag(1) }",
                                     'backup torch { file = "ctrl.pt" }')
    assert 'backup torch' in text
    run = make_run(tmp_path, text)
    with pytest.raises(RunError, match="--trust-code"):
        load_run(run)
    with pytest.raises(RunError, match="--trust-code"):
        export_run(run, "onnx", tmp_path / "refused.onnx")
    loaded = load_run(run, trust_code=True)
    assert loaded.policy.core.has_backup
    assert isinstance(loaded.policy.core.backup, torch.jit.ScriptModule)  # not a gain
    x = states()
    # the loaded policy is the backup plus the trained residual net (not a linear gain)
    backup_only = torch.jit.load(str(tmp_path / "ctrl.pt")).double()(torch.from_numpy(x))
    residual = loaded.policy(x) - backup_only.detach().numpy()
    assert np.abs(residual).max() > 1e-6
    for fmt, name in (("onnx", "b.onnx"), ("torchscript", "b.pt")):
        done = export_run(run, fmt, tmp_path / name, trust_code=True)
        assert done.metadata["verdict"] == "CERTIFIED"
        assert [c["kind"] for c in done.metadata["code"]] == ["backup torch"]
    np.testing.assert_allclose(onnx_actions(tmp_path / "b.onnx", x), loaded.policy(x), rtol=0,
                               atol=1e-9)
    ts = torch.jit.load(str(tmp_path / "b.pt"))(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_array_equal(ts, loaded.policy(x))
    (tmp_path / "ctrl.pt").write_bytes((tmp_path / "ctrl.pt").read_bytes() + b"\0")
    with pytest.raises(RunError, match="changed since the run was trained"):
        load_run(run, trust_code=True)


def test_a_run_that_is_not_certified_is_refused_unless_forced(uncertified, tmp_path):
    with pytest.raises(ExportError, match="NOT CERTIFIED .*holdout validation.*--force"):
        export_run(uncertified, "onnx", tmp_path / "u.onnx")
    assert not (tmp_path / "u.onnx").exists()
    done = export_run(uncertified, "onnx", tmp_path / "u.onnx", force=True)
    meta = read_onnx_metadata(done.path)
    assert meta["forced"] is True and meta["verdict"] == "NOT CERTIFIED"
    assert any("holdout validation" in f for f in meta["failures"])
    assert meta["theta_sha256"] == identity_of(uncertified)["theta_sha256"]
    ts = export_run(uncertified, "torchscript", tmp_path / "u.pt", force=True)
    assert read_torchscript_metadata(ts.path)["forced"] is True


def test_cli_export(certified, uncertified, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["export", str(certified), "--format", "onnx"])
    assert res.exit_code == 0, res.output
    default = tmp_path / f"{certified.name}.onnx"  # ./RUN-NAME.onnx
    assert default.exists() and "CERTIFIED policy written" in res.output
    assert f"head {RunDir(certified).head()}" in res.output
    res = runner.invoke(app, ["export", str(uncertified), "--format", "torchscript"])
    assert res.exit_code == 1 and "NOT CERTIFIED" in res.output and "Traceback" not in res.output
    assert not (tmp_path / f"{uncertified.name}.pt").exists()
    res = runner.invoke(app, ["export", str(uncertified), "--format", "torchscript", "--force",
                              "-o", "forced.pt"])
    assert res.exit_code == 0 and read_torchscript_metadata(tmp_path / "forced.pt")["forced"]
    res = runner.invoke(app, ["export", str(tmp_path), "--format", "onnx"])
    assert res.exit_code == 2 and "not a run directory" in res.output
    res = runner.invoke(app, ["export", str(certified), "--format", "tflite"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["export", str(certified), "--format", "onnx", "-o",
                              str(certified / "p.onnx")])
    assert res.exit_code == 1 and "inside the run directory" in res.output
    assert not (certified / "p.onnx").exists()


def test_a_policy_without_backup_exports_too(tmp_path):
    """The no-backup branch of PolicyCore (a `policy torch` / `policy mlp` without residual)
    through the same scripting, ONNX writing and checking as `export_run`."""
    from scpo_spec.export import _check_onnx, _script, _write_onnx
    from scpo_spec.policies.policy import PolicyCore
    torch.manual_seed(0)
    core = PolicyCore(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                                          torch.nn.Linear(4, 2)).double(), None)
    _write_onnx(_script(core), 3, {"format": "scpo-export/1", "forced": False},
                tmp_path / "nb.onnx")
    x = states(n=3)
    expected = core(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(onnx_actions(tmp_path / "nb.onnx", x), expected, rtol=0, atol=1e-9)
    assert _check_onnx(tmp_path / "nb.onnx", lambda s: core(torch.from_numpy(s)).detach().numpy(),
                       3) <= 1e-9
    assert read_onnx_metadata(tmp_path / "nb.onnx") == {"format": "scpo-export/1",
                                                        "forced": False}
