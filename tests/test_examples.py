import subprocess
import sys


def test_inspect_spec_example(root):
    out = subprocess.run([sys.executable, str(root / "examples" / "inspect_spec.py"),
                          str(root / "specs" / "double_integrator.scpo")],
                         capture_output=True, text=True, check=True).stdout
    assert "system linear: states ['position', 'velocity'], inputs ['force']" in out
    assert "constraint settle: eventually[40:60] norm(state) <= 0.1  (ℓ = 80.0)" in out
    assert "stability margin: spectral_radius <= 0.98  (ℓ = 20.0)" in out


def test_inspect_spec_example_reports_errors(tmp_path, root):
    bad = tmp_path / "bad.scpo"
    bad.write_text("spec x\n")
    proc = subprocess.run([sys.executable, str(root / "examples" / "inspect_spec.py"), str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "missing section 'system'" in proc.stderr
    assert "Traceback" not in proc.stderr
