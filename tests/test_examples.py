import subprocess
import sys


def test_inspect_spec_example(root):
    out = subprocess.run([sys.executable, str(root / "examples" / "inspect_spec.py"),
                          str(root / "specs" / "double_integrator.scpo")],
                         capture_output=True, text=True, check=True).stdout
    assert "system linear: states ['position', 'velocity'], inputs ['force']" in out
    assert "stability decay: lyapunov(backup) <= 0.8 at final  (ℓ = 50.0)" in out


def test_inspect_spec_example_reports_errors(tmp_path, root):
    bad = tmp_path / "bad.scpo"
    bad.write_text("spec x\n")
    proc = subprocess.run([sys.executable, str(root / "examples" / "inspect_spec.py"), str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "missing section 'system'" in proc.stderr
    assert "Traceback" not in proc.stderr
