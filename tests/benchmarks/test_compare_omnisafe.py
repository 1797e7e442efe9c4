"""benchmarks/compare_omnisafe.py --quick: SCPO against OmniSafe's PPO-Lag and CPO, cold and warm-
started, every final policy through `scpo verify` (slow: about 15 minutes on 2 cores, plus the
OmniSafe venv's first install). Skipped, with the failing command,
when the venv under .cache/omnisafe-venv cannot be made (e.g. no package index reachable)."""

import importlib.util
import json
import subprocess
import sys

import pytest

KEYS = {"seeds", "iterates", "violating_iterates", "worst", "return_final", "env_steps",
        "seconds", "version", "violating_per_seed", "return_final_per_seed", "final_verify",
        "violating_initial", "per_seed", "budget_matched"}
VERDICTS = {"PROVED", "COUNTEREXAMPLE", "UNDECIDED"}


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
                           "--quick", "--jobs", "2", "--json", str(out), "--runs",
                           str(tmp_path / "runs")], capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["quick"] is True and results["partial"] is False
    assert results["budget_mode"] == "scpo_capped_to_omnisafe"
    assert results["omnisafe_settings"]["cost_limit"] == 0.0
    text = out.read_text()
    assert str(root) not in text and str(tmp_path) not in text  # no machine paths
    cap = results["budget"]["total_steps"]
    assert set(results["tasks"]) == {"gym_pendulum", "double_integrator"}
    for task, methods in results["tasks"].items():
        assert {"scpo", "scpo_uncapped", "ppo_lag", "cpo", "ppo_lag_warm", "cpo_warm"} \
            <= set(methods), task
        for method, row in methods.items():
            assert KEYS <= set(row), (task, method)
            assert row["iterates"] >= row["seeds"] and row["env_steps"] > 0 and row["seconds"] > 0
            assert 0 <= row["violating_iterates"] <= row["iterates"]
            assert len(row["final_verify"]) == row["seeds"] == len(row["per_seed"])
            for verdict in row["final_verify"]:
                assert verdict["verdict"] in VERDICTS, (task, method)
                assert set(verdict["constraints"]) == set(row["metrics"]), (task, method)
        scpo = methods["scpo"]
        assert scpo["budget_matched"] and max(scpo["env_steps_per_run"]) <= cap, task
        assert scpo["violating_iterates"] == 0 and scpo["worst"] <= 0, task
        assert all(s["audit_ok"] for s in scpo["per_seed"]), task
        assert methods["scpo_uncapped"]["budget_matched"] is False
        assert min(methods["scpo_uncapped"]["env_steps_per_run"]) > cap
        for method in ("ppo_lag", "cpo", "ppo_lag_warm", "cpo_warm"):
            row = methods[method]
            assert row["seeds"] == 2 and row["env_steps_per_run"] == [cap] * 2, (task, method)
        for method in ("ppo_lag_warm", "cpo_warm"):  # cloned from the backup: they start safe
            assert methods[method]["violating_initial"] == 0, (task, method)
            assert all(bc["rms_fresh"] < 0.1 for bc in methods[method]["bc"]), (task, method)
        assert methods["ppo_lag"]["version"] == "omnisafe 0.5.0"
    di = results["tasks"]["double_integrator"]  # the linear plant: the prover decides
    assert all(v["verdict"] == "PROVED" for v in di["scpo"]["final_verify"])
    pendulum = results["tasks"]["gym_pendulum"]  # a gymnasium plant: never bounded
    assert all(v["verdict"] == "UNDECIDED" for v in pendulum["scpo"]["final_verify"])
    assert "| gym_pendulum | scpo |" in proc.stdout
