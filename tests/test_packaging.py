"""The wheel carries the grammar, and an installed package parses without the source tree."""

import subprocess
import sys
import zipfile

import pytest


@pytest.mark.slow
def test_wheel_ships_the_grammar_and_works_from_it(root, tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), "-q"], check=True)
    (wheel,) = tmp_path.glob("scpo_spec-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "scpo_spec/grammars/scpo.lark" in names
        for template in ("report.html.j2", "report.md.j2"):  # the report renders from the wheel
            assert f"scpo_spec/report/templates/{template}" in names
        assert zf.read("scpo_spec/grammars/scpo.lark") == \
            (root / "grammars" / "scpo.lark").read_bytes()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        # the console script guards its imports against Ctrl-C (scpo_spec/console.py)
        assert "scpo = scpo_spec.console:main" in zf.read(entry_points).decode()
        zf.extractall(tmp_path / "site")
    # import the unpacked wheel (not the checkout) and parse a spec with its packaged grammar
    code = ("import scpo_spec, scpo_spec.language.grammar as g; "
            "assert 'site' in scpo_spec.__file__; "
            "assert g.grammar_text() == open(r'%s').read(); "
            "r = scpo_spec.check_file(r'%s'); assert r.ok, r.diagnostics" %
            (root / "grammars" / "scpo.lark", root / "specs" / "pendulum.scpo"))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path / "site")


def test_parser_is_built_once():
    from scpo_spec.language.grammar import parser
    assert parser() is parser()
