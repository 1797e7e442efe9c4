"""Small edges of the command line and the checks: each a clear message and a documented exit
code, never a traceback (the items left from issue 22's last note)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

INTERRUPT_WHILE_LOADING = """
import importlib, importlib.abc, os, signal, sys

class Interrupt(importlib.abc.MetaPathFinder):
    '''Ctrl-C as the command line's imports reach numpy (~0.1 s into loading it).'''
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

module, func = sys.argv[1].split(":")
sys.argv = ["scpo", "--version"]
sys.meta_path.insert(0, Interrupt())
getattr(importlib.import_module(module), func)()
"""


def test_ctrl_c_while_the_command_line_loads_is_interrupted_130():
    """The console script pyproject.toml installs, interrupted during its imports."""
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["scpo"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", INTERRUPT_WHILE_LOADING, script], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert done.stderr.strip() == "interrupted" and done.stdout == ""


def test_import_scpo_spec_loads_nothing_until_a_name_is_used():
    code = ("import sys, scpo_spec; print('scpo_spec.language.load' in sys.modules); "
            "scpo_spec.load_spec; print('scpo_spec.language.load' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.split() == ["False", "True"]


# ---- `scpo check DIR`: a usage error, like a missing file ----
def test_a_directory_or_a_device_given_as_a_spec_is_a_usage_error(tmp_path):
    from typer.testing import CliRunner

    from scpo_spec.cli import app
    runner = CliRunner()
    for command in (["check"], ["check", "--json"], ["train"], ["fmt", "--check"],
                    ["convert", "--to", "yaml"]):
        result = runner.invoke(app, [*command, str(tmp_path)])
        assert result.exit_code == 2, (command, result.output)
        assert f"{tmp_path}: a directory, not a spec file" in " ".join(result.output.split())
        assert "Traceback" not in result.output
    if Path("/dev/null").exists():
        result = runner.invoke(app, ["check", "/dev/null"])
        assert result.exit_code == 2 and "not a regular file" in result.output
    result = runner.invoke(app, ["check", str(tmp_path / "missing.scpo")])
    assert result.exit_code == 2 and "no such file" in result.output


# ---- a file a spec names that is a device: not "does not exist" ----
def test_a_device_named_as_a_data_or_torch_file_is_not_a_regular_file(tmp_path):
    import pytest

    from scpo_spec.language.load import check_text
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    text = (ROOT / "specs" / "regression.scpo").read_text()
    text = text.replace('"../data/harmful.csv"', '"/dev/zero"')
    messages = [d.message for d in check_text(text, path=str(tmp_path / "s.scpo"),
                                               base_dir=tmp_path).diagnostics]
    assert "data file '/dev/zero' is not a regular file (a pipe or a device)" in messages
    from tests.engine_specs import small_di
    text = small_di().replace("backup lqr { Q = diag(1, 1)  R = diag(1) }",
                              'backup torch { file = "/dev/zero" }')
    messages = [d.message for d in check_text(text, path=str(tmp_path / "s.scpo"),
                                               base_dir=tmp_path).diagnostics]
    assert "file '/dev/zero' is not a regular file (a pipe or a device)" in messages
    missing = text.replace('"/dev/zero"', '"gone.pt"')
    messages = [d.message for d in check_text(missing, path=str(tmp_path / "s.scpo"),
                                               base_dir=tmp_path).diagnostics]
    assert "file 'gone.pt' does not exist" in messages


# ---- an invalid constant is reported once, not again at each use ----
def test_a_constant_beyond_float_range_is_one_error_not_a_cascade():
    from tests.helpers import VALID, errors
    text = VALID.replace("const dt = 0.1", "const dt = 1e999999\nconst lim = dt * 25").replace(
        "always abs(position) <= 2.5", "always abs(position) <= lim")
    assert errors(text) == [(2, 12, "number too large")]
    # a constant that fails otherwise: its own error only, too
    assert errors(VALID.replace("const dt = 0.1", "const dt = 0.1 / 0")) == [
        (2, 18, "constant 'dt': division by zero")]
    # an unknown constant that was never declared is still an error where it is used
    assert (6, 14, "A: unknown constant 'dtt'") in errors(VALID.replace("[[1, dt]", "[[1, dtt]"))


# ---- a bank too large for memory because of the horizon: located at the horizon ----
def test_a_horizon_too_long_for_memory_is_located_at_the_horizon():
    from tests.helpers import VALID, check
    result = check(VALID.replace("horizon 60", "horizon 1e22"))
    (d,) = [d for d in result.diagnostics if d.severity == "error"]
    assert "one evaluation of the candidate bank needs about" in d.message
    line = VALID.splitlines().index("    horizon 60") + 1
    assert (d.span.line, d.span.column) == (line, 13)  # the value after `horizon`
    grid = VALID.replace("count 64", "grid 8").replace("horizon 60", "horizon 1e22")
    (d,) = [d for d in check(grid).diagnostics if d.severity == "error"]
    assert d.span.line == line + 0 and d.span.column == 13
    # scenarios that outweigh the horizon are still pointed at
    (d,) = [d for d in check(VALID.replace("count 64", "count 1e13")).diagnostics
            if d.severity == "error"]
    assert "scenarios" in d.message and d.span.line == line - 2
