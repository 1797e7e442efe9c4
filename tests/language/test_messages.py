"""Messages that point at the fix: a misspelt keyword, an unquoted YAML formula, a bad CSV value,
a data path that is a folder, an unknown section next to other errors, a zero margin."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from scpo_spec.cli import app
from scpo_spec.language.load import check_file, check_text

ROOT = Path(__file__).resolve().parents[2]
PENDULUM = (ROOT / "specs" / "pendulum.scpo").read_text()
YAML = (ROOT / "specs" / "pendulum_hold.yaml").read_text()


def errors(result):
    return [(d.message, d.hint) for d in result.diagnostics if d.severity == "error"]


def test_misspelt_temporal_keyword():
    text = PENDULUM.replace("always abs(theta)", "alway abs(theta)")
    found = errors(check_text(text, path="p.scpo"))
    assert ("unknown name 'alway'", "did you mean 'always'?") in found


def test_unquoted_yaml_formula_gets_one_error_that_says_quote_it():
    text = YAML.replace('stage: "quad(diag(1, 0.1), state) + quad(diag(0.01), input)"',
                        "stage: quad(diag(1, 1), state)")
    assert text != YAML
    found = errors(check_text(text, path="p.yaml"))
    assert found == [("this formula is not quoted, so YAML split it at its commas",
                      'quote the formula: stage: "quad(diag(1, 1), state)"')]


def _regression(tmp_path: Path, csv: str | None) -> Path:
    spec = tmp_path / "specs" / "regression.scpo"
    spec.parent.mkdir()
    shutil.copy(ROOT / "specs" / "regression.scpo", spec)
    (tmp_path / "data").mkdir()
    if csv is not None:
        (tmp_path / "data" / "harmful.csv").write_text(csv)
    return spec


def test_csv_value_that_is_not_a_number_is_named_with_its_line(tmp_path):
    spec = _regression(tmp_path, "x,y\n0,1\n\n1,two\x07 and a very long tail\n")
    (message, _), = errors(check_file(spec))
    assert message == ("data file '../data/harmful.csv', line 4, column 'y': "
                       "'two\\x07 and a very long…' is not a number")


def test_csv_missing_value(tmp_path):
    spec = _regression(tmp_path, "x,y\n0,1\n1\n")
    (message, _), = errors(check_file(spec))
    assert message == "data file '../data/harmful.csv', line 3, column 'y': is missing"


def test_data_path_that_is_a_directory(tmp_path):
    spec = _regression(tmp_path, None)
    (tmp_path / "data" / "harmful.csv").mkdir()
    (message, _), = errors(check_file(spec))
    assert message == "data file '../data/harmful.csv' is a directory, not a CSV file"


def test_unknown_section_does_not_hide_other_errors():
    text = PENDULUM.replace("system pendulum", "sytem pendulum").replace("count 32", "count -1") \
        + "\nbogus { x 1 }\n"
    found = errors(check_text(text, path="p.scpo"))
    assert found == [("unknown section 'sytem'", "did you mean 'system'?"),
                     ("count must be positive, got -1", None),
                     ("unexpected name 'bogus'", "a section starts with one of spec, const, "
                      "let, parameter, disturbance, system, backup, policy, scenarios, "
                      "constraint, stability, objective, train, verify")], found


def test_unknown_section_then_a_syntax_error_reports_both():
    text = PENDULUM.replace("system pendulum", "sytem pendulum").replace("count 32", "count (")
    found = [m for m, _ in errors(check_text(text, path="p.scpo"))]
    assert found[0] == "unknown section 'sytem'" and len(found) == 2, found


def test_fmt_refuses_a_spec_with_an_unknown_section(tmp_path):
    spec = tmp_path / "p.scpo"
    spec.write_text(PENDULUM + "\nsytem { x 1 }\n")
    result = CliRunner().invoke(app, ["fmt", "-w", str(spec)])
    assert result.exit_code == 1 and spec.read_text() == PENDULUM + "\nsytem { x 1 }\n"


def test_rollout_zero_margin_prints_zero(tmp_path):
    spec = _regression(tmp_path, (ROOT / "data" / "harmful.csv").read_text())
    spec.write_text(spec.read_text().replace("margin 1e-6", "margin 0"))
    result = CliRunner().invoke(app, ["check", "--rollout", str(spec)])
    assert result.exit_code == 0, result.output
    assert "-0 " not in result.output and "│ 0 " in result.output, result.output
