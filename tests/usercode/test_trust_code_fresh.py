"""`--trust-code` from a fresh process, for every kind of code a spec can name: a run is trained
by `scpo train` in one process, then `scpo export --trust-code`, `scpo report --trust-code` and
`scpo_spec.load_run(RUN, trust_code=True)` each run in a process of their own, where nothing of
the run's code was imported or loaded before (a reader in the training process would find it
already there).  The code is checked against the SHA-256 the run recorded before it runs, then
used: the readers must succeed, and roll the policy out."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.engine_specs import DI_PLANT, point_env, small_di
from tests.policies.test_torch_files import Saturated, lqr_gain

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
LINEAR = """system linear {
    state position, velocity
    input force
    A = [[1, dt], [0, 1]]
    B = [[0.5 * dt^2], [dt]]
}"""
MLP = "policy mlp { hidden = [8]  activation = tanh  residual = backup  seed = 0 }"
LQR = "backup lqr { Q = diag(1, 1)  R = diag(1) }"

PLANT = DI_PLANT

ENV = point_env("PointFresh-v0")

GYM_SPEC = '''\
spec point "A user's own gymnasium environment, kept next to the spec"
system gymnasium "scpo_fresh_point:PointFresh-v0" { observation p, v  action f }
backup linear { K = [[-1, -1.5]] }
policy mlp { hidden = [4]  activation = tanh  residual = backup  seed = 0 }
scenarios { count 4  seed 0  horizon 20  holdout 20 }
constraint force_limit: always f in [-3, 3]    smoothness 20
constraint position:    always abs(p) <= 5     smoothness 20
objective return { population 2  sigma 0.02  seed 0 }
train {
    steps 2
    optimizer adam { lr = 0.01 }
    directions 2
    perturbation 1e-3
    radius 0.3
    margin 1e-6
    seed 0
}
'''


def _python_plant(home: Path) -> str:
    (home / "scpo_fresh_plant.py").write_text(PLANT, encoding="utf-8")
    return small_di(steps=2).replace(
        LINEAR, 'system python "scpo_fresh_plant:dynamics" { state position, velocity  '
                'input force }')


def _gymnasium_module(home: Path) -> str:
    (home / "scpo_fresh_point.py").write_text(ENV, encoding="utf-8")
    return GYM_SPEC


def _backup_torch(home: Path) -> str:
    torch.jit.save(torch.jit.script(Saturated(lqr_gain(home))), str(home / "ctrl.pt"))
    return small_di(steps=2).replace(LQR, 'backup torch { file = "ctrl.pt" }')


def _policy_torch(home: Path) -> str:
    net = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():  # θ₀ must be safe: the LQR gain
        net[0].weight.copy_(torch.as_tensor(lqr_gain(home)))
        net[0].bias.zero_()
    torch.jit.save(torch.jit.script(net), str(home / "policy.pt"))
    return small_di(steps=2).replace(MLP, 'policy torch { file "policy.pt" }')


def _policy_python(home: Path) -> str:
    from tests.policies.test_python_module import safe_nets  # a skip connection, θ₀ the LQR gain
    (home / "scpo_fresh_nets.py").write_text(safe_nets(lqr_gain(home)), encoding="utf-8")
    return small_di(steps=2).replace(MLP, 'policy python "scpo_fresh_nets:make_policy"')


KINDS = {"system python": _python_plant, "system gymnasium": _gymnasium_module,
         "backup torch": _backup_torch, "policy torch": _policy_torch,
         "policy python": _policy_python}
CODE_FILE = {"system python": "scpo_fresh_plant.py", "system gymnasium": "scpo_fresh_point.py",
             "backup torch": "ctrl.pt", "policy torch": "policy.pt",
             "policy python": "scpo_fresh_nets.py"}


def _run(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module", params=list(KINDS))
def trained(request, tmp_path_factory):
    """A CERTIFIED run of a spec naming code of one kind, trained by `scpo train` in a process
    of its own."""
    home = tmp_path_factory.mktemp(request.param.replace(" ", "_"))
    text = KINDS[request.param](home)
    assert text != small_di(steps=2)
    (home / "spec.scpo").write_text(text, encoding="utf-8")
    proc = _run(["-m", "scpo_spec.cli", "train", "spec.scpo", "--out", "run", "-q",
                 "--no-report", "--no-tensorboard"], home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code = json.loads((home / "run" / "audit.jsonl").read_text().splitlines()[0])["code"]
    assert [c["kind"] for c in code] == [request.param]
    return home, home / "run", home / CODE_FILE[request.param]


def test_export_with_trust_code_in_a_fresh_process(trained, tmp_path):
    home, run, _ = trained
    out = tmp_path / "policy.pt"
    proc = _run(["-m", "scpo_spec.cli", "export", run, "--format", "torchscript", "-o", out,
                 "--trust-code"], home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CERTIFIED" in proc.stdout and "NOT CERTIFIED" not in proc.stdout
    assert "matches the run's policy" in proc.stdout and out.is_file()


def test_report_with_trust_code_in_a_fresh_process(trained, tmp_path):
    home, run, _ = trained
    target = tmp_path / "report.md"
    proc = _run(["-m", "scpo_spec.cli", "report", run, "--trust-code", "--format", "md",
                 "-o", target], home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CERTIFIED" in proc.stdout and "NOT CERTIFIED" not in proc.stdout
    page = target.read_text(encoding="utf-8")
    assert "not trusting" not in page and "did not run" not in page
    assert "--trust-code" not in page  # the final policy's rollouts were drawn


def test_load_run_with_trust_code_in_a_fresh_process(trained):
    home, run, _ = trained
    probe = textwrap.dedent(f'''
        import json
        import numpy as np
        import scpo_spec
        r = scpo_spec.load_run({str(run)!r}, trust_code=True)
        u = r.policy(np.zeros(len(r.state_names)))
        print(json.dumps({{"verdict": r.verdict.word, "metrics": r.metrics(),
                          "margins": r.margins, "u": np.asarray(u).tolist()}}))
    ''')
    proc = _run(["-c", probe], home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["verdict"] == "CERTIFIED"
    assert all(out["metrics"][k] <= -m for k, m in out["margins"].items()), out
    assert len(out["u"]) == 1


@pytest.mark.slow  # ~5 s per kind; the refusal itself is also tested in-process (test_export, …)
def test_code_edited_since_training_is_refused_before_it_runs(trained, tmp_path):
    """The same fresh reader, after the file changed: refused, and the edit never ran."""
    home, run, code = trained
    marker = tmp_path / "RAN"
    original = code.read_bytes()
    edit = (f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n".encode()
            if code.suffix == ".py" else b"\0")
    try:
        code.write_bytes(original + edit)
        proc = _run(["-c", f"import scpo_spec; scpo_spec.load_run({str(run)!r}, "
                           "trust_code=True)"], home)
        assert proc.returncode == 1 and "CodeChanged" in proc.stderr, proc.stderr
        assert "changed since the run was trained" in proc.stderr
        assert not marker.exists()
    finally:
        code.write_bytes(original)
