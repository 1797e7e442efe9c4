"""`scpo fmt`, `convert` and `--version` on real files: many files at once, files and folders that
cannot be written (a clear message and a documented exit status, never a traceback), data paths
that follow a converted spec, and the shipped specs kept canonical."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scpo_spec.cli import app
from scpo_spec.language.load import check_file

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "specs").glob("*.scpo"))
runner = CliRunner()


def invoke(args: list[str]):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_shipped_specs_are_canonical():
    """CI runs `scpo fmt --check specs/*.scpo`; this is the same check."""
    assert len(SHIPPED) >= 7
    result = invoke(["fmt", "--check", *SHIPPED])
    assert result.exit_code == 0, result.output


def test_fmt_many_files(tmp_path):
    """--check names every file that is not canonical; -w rewrites each; several files without
    either is a usage error (stdout is for one file)."""
    messy = []
    for spec in SHIPPED[:3]:
        copy = tmp_path / spec.name
        copy.write_text(spec.read_text().replace("\n\n", "\n").replace("  ", " "))
        messy.append(copy)
    result = invoke(["fmt", "--check", *messy])
    assert result.exit_code == 1
    for f in messy:
        assert f"{f}: not canonically formatted" in result.output.replace("\n", " ")
    assert invoke(["fmt", *messy]).exit_code == 2
    result = invoke(["fmt", "-w", *messy])
    assert result.exit_code == 0, result.output
    for f, spec in zip(messy, SHIPPED):
        assert f.read_text() == spec.read_text()
    assert invoke(["fmt", "--check", *messy]).exit_code == 0
    one = invoke(["fmt", SHIPPED[0]])
    assert one.exit_code == 0 and one.stdout == SHIPPED[0].read_text()


@contextmanager
def read_only(path: Path):
    """Make a file unwritable, for root too: the immutable attribute (chattr +i) where we are
    root, since root ignores permission bits; chmod otherwise."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root where `chattr +i` is unavailable: no way to make a file "
                    "read-only for root")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_fmt_write_read_only_file(tmp_path):
    locked = tmp_path / "locked.scpo"
    locked.write_text(SHIPPED[0].read_text().replace("\n\n", "\n"))
    other = tmp_path / "other.scpo"
    other.write_text(SHIPPED[1].read_text().replace("\n\n", "\n"))
    with read_only(locked):
        result = invoke(["fmt", "-w", locked, other])
        before = locked.read_text()
    assert result.exit_code == 1
    text = result.output.replace("\n", " ")
    assert f"cannot write {locked}" in text
    assert before == SHIPPED[0].read_text().replace("\n\n", "\n")  # unchanged
    assert other.read_text() == SHIPPED[1].read_text()  # the other file is still formatted


def test_convert_out_is_a_directory_or_has_no_folder(tmp_path):
    result = invoke(["convert", SHIPPED[0], "--to", "yaml", "-o", tmp_path])
    assert result.exit_code == 2
    assert "is a directory" in result.output
    missing = tmp_path / "missing" / "x.yaml"
    result = invoke(["convert", SHIPPED[0], "--to", "yaml", "-o", missing])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert not missing.parent.exists()


def test_convert_out_cannot_be_written(tmp_path):
    target = tmp_path / "x.yaml"
    target.write_text("")
    with read_only(target):
        result = invoke(["convert", SHIPPED[0], "--to", "yaml", "-o", target])
    assert result.exit_code == 1
    assert f"cannot write {target}" in result.output.replace("\n", " ")


@pytest.mark.parametrize("to", ["yaml", "scpo"])
def test_convert_rewrites_relative_data_path(tmp_path, to):
    """specs/regression.scpo reads ../data/harmful.csv, relative to specs/: converted to another
    folder, the path must still name that file, so the output passes `check`."""
    target = tmp_path / "elsewhere" / f"reg.{to}"
    target.parent.mkdir()
    result = invoke(["convert", ROOT / "specs" / "regression.scpo", "--to", to, "-o", target])
    assert result.exit_code == 0, result.output
    assert "data path" in result.output
    checked = check_file(target)
    assert checked.ok, [d.headline() for d in checked.diagnostics]
    assert (target.parent / checked.spec.objective.data.value).resolve() == \
        (ROOT / "data" / "harmful.csv").resolve()
    assert invoke(["check", target]).exit_code == 0


def test_convert_next_to_the_spec_keeps_the_data_path(tmp_path):
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    shutil.copytree(ROOT / "data", tmp_path / "data")
    target = tmp_path / "specs" / "regression.yaml"
    result = invoke(["convert", tmp_path / "specs" / "regression.scpo", "--to", "yaml",
                     "-o", target])
    assert result.exit_code == 0 and "data path" not in result.output
    assert "data: ../data/harmful.csv" in target.read_text()


def test_version():
    from importlib.metadata import version
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"scpo {version('scpo-spec')}"
