"""Small edges of the command line and the checks: each a clear message and a documented exit
code, never a traceback (the items left from issue 22's last note)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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
