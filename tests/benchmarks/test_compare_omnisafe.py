"""benchmarks/compare_omnisafe.py --quick: SCPO against OmniSafe's PPO-Lag and CPO (slow: about
10 minutes on 2 cores, plus the OmniSafe venv's first install). Skipped, with the failing command,
when the venv under .cache/omnisafe-venv cannot be made (e.g. no package index reachable)."""

import importlib.util
import json
import subprocess
import sys

import pytest

KEYS = {"seeds", "iterates", "violating_iterates", "worst", "return_final", "env_steps",
        "seconds", "version"}


def _script(root):
    spec = importlib.util.spec_from_file_location("compare_omnisafe",
                                                  root / "benchmarks" / "compare_omnisafe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_compare_omnisafe_quick(tmp_path, root):
    script = _script(root)
    try:
        script.ensure_venv(log=lambda msg: None)
    except script.VenvError as e:
        pytest.skip(f"the OmniSafe venv cannot be made here: `{' '.join(e.command)}` failed: "
                    f"{e.output.strip().splitlines()[-1] if e.output.strip() else '(no output)'}")
    out = tmp_path / "omnisafe.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "compare_omnisafe.py"),
                           "--quick", "--json", str(out), "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["quick"] is True
    assert set(results["tasks"]) == {"gym_pendulum", "double_integrator"}
    for task, methods in results["tasks"].items():
        assert {"scpo", "ppo_lag", "cpo"} <= set(methods), task
        for method, row in methods.items():
            assert KEYS <= set(row), (task, method)
            assert row["iterates"] > 1 and row["env_steps"] > 0 and row["seconds"] > 0
            assert 0 <= row["violating_iterates"] <= row["iterates"]
        scpo = methods["scpo"]
        assert scpo["violating_iterates"] == 0, task
        assert scpo["worst"] <= 0 and scpo["audit_ok"], task
        assert methods["ppo_lag"]["seeds"] == methods["cpo"]["seeds"] >= 2
        assert methods["ppo_lag"]["version"] == "omnisafe 0.5.0"
    assert "| gym_pendulum | scpo |" in proc.stdout
