"""A run whose spec names code (here a gymnasium `module:EnvId` kept next to the spec) is data to
every reader: `audit`, `report` and `load_run` never import the module unless told to trust it,
and then only the exact file the run fingerprinted."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scpo_spec.audit.rundir import RunDir, RunError
from tests.engine_specs import point_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODULE = "scpo_trust_point"

ENV = point_env("PointTrust-v0")

SPEC = f'''\
spec point "A user's own gymnasium environment, kept next to the spec"
system gymnasium "{MODULE}:PointTrust-v0" {{ observation p, v  action f }}
backup linear {{ K = [[-1, -1.5]] }}
policy mlp {{ hidden = [4]  activation = tanh  residual = backup  seed = 0 }}
scenarios {{ count 4  seed 0  horizon 20  holdout 20 }}
constraint force_limit: always f in [-3, 3]    smoothness 20
constraint position:    always abs(p) <= 5     smoothness 20
objective return {{ population 2  sigma 0.02  seed 0 }}
train {{
    steps 2
    optimizer adam {{ lr = 0.01 }}
    directions 2
    perturbation 1e-3
    radius 0.3
    margin 1e-6
    seed 0
}}
'''


def _scpo(*args, cwd: Path, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "scpo_spec.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ,
                               "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run of the spec, trained by the CLI from the spec's own directory."""
    home = tmp_path_factory.mktemp("user")
    (home / f"{MODULE}.py").write_text(ENV, encoding="utf-8")
    (home / "point.scpo").write_text(SPEC, encoding="utf-8")
    proc = _scpo("train", "point.scpo", "--out", "run", cwd=home)
    assert "CERTIFIED" in proc.stdout, proc.stdout
    return home, home / "run"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(
                              Path(__file__).resolve().parents[1])})


def test_the_header_fingerprints_the_module(trained):
    home, run = trained
    code = RunDir(run).header().code
    assert code == [{"kind": "system gymnasium", "target": f"{MODULE}:PointTrust-v0",
                     "file": str((home / f"{MODULE}.py").resolve()),
                     "sha256": __import__("hashlib").sha256(
                         (home / f"{MODULE}.py").read_bytes()).hexdigest()}]


def test_readers_never_import_the_module_unless_trusted(trained):
    home, run = trained
    probe = textwrap.dedent(f'''
        import sys, json
        from scpo_spec.engine.trained import load_run
        from scpo_spec.report.evidence import gather
        from scpo_spec.audit.verify import audit_run
        out = {{}}
        out["audit"] = audit_run({str(run)!r}).ok
        ev = gather({str(run)!r})
        out["certified"] = ev.certified
        out["note"] = ev.final_note
        try:
            load_run({str(run)!r})
            out["load"] = "loaded"
        except Exception as e:
            out["load"] = type(e).__name__ + ": " + str(e)
        out["imported"] = {MODULE!r} in sys.modules
        print(json.dumps(out))
    ''')
    proc = _python(probe, cwd=home)  # the module sits in the cwd: importable, if anyone tried
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["audit"] is True and out["certified"] is True
    assert out["imported"] is False
    assert out["load"].startswith("RunError") and "--trust-code" in out["load"]
    assert "names code" in out["note"]


def test_trusted_code_loads_and_matches_the_run(trained):
    home, run = trained
    probe = textwrap.dedent(f'''
        import sys, json
        from scpo_spec.engine.trained import load_run
        r = load_run({str(run)!r}, trust_code=True)
        m = r.metrics()
        print(json.dumps({{"imported": {MODULE!r} in sys.modules, "metrics": m}}))
    ''')
    proc = _python(probe, cwd=home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["imported"] is True
    assert all(v <= -1e-6 for v in out["metrics"].values()), out


def test_changed_code_is_not_trusted(trained, tmp_path):
    home, run = trained
    module = home / f"{MODULE}.py"
    original = module.read_text(encoding="utf-8")
    try:
        module.write_text(original + "\n# edited after training\n", encoding="utf-8")
        with pytest.raises(RunError, match="changed since the run was trained"):
            RunDir(run).checked_spec(trust_code=True)
        proc = _scpo("report", run, "--trust-code", "-o", tmp_path / "r.html", cwd=home,
                     check=False)
        assert proc.returncode == 0, proc.stderr  # the run is what it was: still CERTIFIED …
        assert "CERTIFIED" in proc.stdout and "NOT CERTIFIED" not in proc.stdout
        page = (tmp_path / "r.html").read_text(encoding="utf-8")  # … but nothing was run
        assert "changed since the run was trained" in page
    finally:
        module.write_text(original, encoding="utf-8")
    assert RunDir(run).checked_spec(trust_code=True)[0] is not None


def test_report_with_trust_code_draws_the_rollouts(trained, tmp_path):
    home, run = trained
    target = tmp_path / "report.md"
    proc = _scpo("report", run, "--trust-code", "--format", "md", "-o", target, cwd=home)
    assert "CERTIFIED" in proc.stdout
    plain = tmp_path / "plain.md"
    _scpo("report", run, "--format", "md", "-o", plain, cwd=home)
    assert "--trust-code" in plain.read_text(encoding="utf-8")
    assert "--trust-code" not in target.read_text(encoding="utf-8")


def test_a_run_whose_torchscript_file_is_gone_still_reports_certified(tmp_path):
    """The verdict comes from the log: a `backup torch` file moved away after training takes the
    pictures (and load_run) with it, not the certificate."""
    import torch
    from torch import nn

    from scpo_spec.report.evidence import gather
    from tests.engine_specs import small_di, spec_of, write_spec

    class Gain(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ torch.tensor([[-1.0], [-1.5]], dtype=x.dtype)

    torch.jit.save(torch.jit.script(Gain()), str(tmp_path / "ctrl.pt"))
    text = small_di(steps=2).replace("backup lqr { Q = diag(1, 1)  R = diag(1) }",
                                     'backup torch { file = "ctrl.pt" }')
    from scpo_spec.engine.run import train
    run = train(write_spec(tmp_path, text), spec_of(text, tmp_path), text,
                out=tmp_path / "run").run_dir
    assert gather(run, compute_holdout=False).certified
    (tmp_path / "ctrl.pt").rename(tmp_path / "elsewhere.pt")
    ev = gather(run, compute_holdout=False)
    assert ev.certified, ev.failures
    assert "names code" in ev.final_note
    ev = gather(run, compute_holdout=False, trust_code=True)
    assert ev.certified and "not found" in ev.final_note


def _plant_pyc(module: Path, evil: str) -> Path:
    """A __pycache__ file for `module` compiled from `evil`, with the source's mtime and size in
    its header: Python's own loader runs it in place of the unchanged source."""
    import importlib.util
    import py_compile
    import struct
    evil_src = module.parent / "evil_source.py"
    evil_src.write_text(evil, encoding="utf-8")
    cached = Path(importlib.util.cache_from_source(str(module)))
    cached.parent.mkdir(exist_ok=True)
    py_compile.compile(str(evil_src), cfile=str(cached), doraise=True)
    evil_src.unlink()
    st = module.stat()
    data = bytearray(cached.read_bytes())
    data[8:16] = struct.pack("<II", int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)
    cached.write_bytes(bytes(data))
    return cached


def test_a_planted_pyc_never_runs_in_place_of_the_fingerprinted_source(trained, tmp_path):
    home, run = trained
    module = home / f"{MODULE}.py"
    marker = tmp_path / "PWNED"
    evil = module.read_text(encoding="utf-8") + (
        f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    cached = _plant_pyc(module, evil)
    try:
        probe = textwrap.dedent(f'''
            import sys, json
            from scpo_spec.engine.trained import load_run
            r = load_run({str(run)!r}, trust_code=True)
            print(json.dumps({{"metrics": r.metrics()}}))
        ''')
        proc = _python(probe, cwd=home)
        assert proc.returncode == 0, proc.stderr
        assert not marker.exists(), "load_run(trust_code=True) ran the planted .pyc"
        proc = _scpo("report", run, "--trust-code", "-o", tmp_path / "r.html", cwd=home)
        assert "CERTIFIED" in proc.stdout
        assert not marker.exists(), "scpo report --trust-code ran the planted .pyc"
    finally:
        cached.unlink(missing_ok=True)
