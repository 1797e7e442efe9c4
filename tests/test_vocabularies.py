"""The language's vocabularies are registries read by every stage: the section words
(language/sections.py) and the functions (language/functions.py, their torch side in
compile/functions.py).  These tests hold the copies that cannot read them (the .lark grammar) to
the registry, and check that diagnostics carry their payload as data."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from scpo_spec.language import sections as S
from scpo_spec.language.grammar import parser
from scpo_spec.language.load import check_text, parse_model
from scpo_spec.language.yaml_writer import to_yaml_data

ROOT = Path(__file__).resolve().parents[1]
SPEC = (ROOT / "specs" / "double_integrator_safe_teacher.scpo").read_text()


def _grammar_section_words() -> set[str]:
    words: set[str] = set()
    for term in parser().terminals:
        if term.name in ("SECTION", "PROPERTY", "UNCERTAIN"):
            inner = re.fullmatch(r"\((.*)\)\\b", term.pattern.value).group(1)
            words |= set(inner.split("|"))
        elif term.name in ("SPEC", "CONST", "LET"):
            words.add(term.pattern.value)
    return words


def test_the_grammars_section_keywords_are_the_registrys():
    assert _grammar_section_words() == set(S.WORDS)


def test_the_registry_is_consistent():
    assert len(set(S.WORDS)) == len(S.WORDS) and len(set(S.KEYS)) == len(S.KEYS)
    assert {s.word for s in S.WRITTEN} == set(S.WORDS)
    assert set(S.REQUIRED) == {"system", "policy", "scenarios", "objective", "train"}
    assert [s.key for s in S.PROPERTIES] == ["constraints", "stability"]


def _errors(text: str, path: str) -> list[tuple[str, str | None, str | None, str | None]]:
    result = check_text(text, path=path)
    return [(d.message, d.hint, d.code, d.meant) for d in result.diagnostics
            if d.severity == "error"]


def _without_properties(text: str) -> str:
    return re.sub(r"^(constraint|stability) .*$", "", text, flags=re.M)


def test_a_misspelt_section_carries_what_it_meant_in_both_syntaxes():
    """.scpo writes `constraint`, its YAML twin `constraints`: the hint names each syntax's own
    word, and the payload (not the hint's text) tells the checks a property was written."""
    only_constraint = _without_properties(SPEC) + "\nconstrant c: always abs(position) <= 1.5 " \
                                                  "smoothness 50\n"
    assert _errors(only_constraint, "a.scpo") == [
        ("unknown section 'constrant'", "did you mean 'constraint'?", "unknown-section",
         "constraint")]  # and not also "no constraint or stability margin"
    data = to_yaml_data(parse_model(SPEC, "a.scpo").spec)
    for written, meant in (("constraint", "constraints"), ("constrain", "constraints"),
                           ("stabilit", "stability")):
        doc = {(written if k == meant else k): v for k, v in data.items()
               if k not in ("constraints", "stability") or k == meant}
        assert _errors(yaml.safe_dump(doc, sort_keys=False), "a.yaml") == [
            (f"unknown section '{written}'", f"did you mean '{meant}'?", "unknown-section",
             meant)], written


def test_a_misspelt_required_section_is_not_also_missing():
    for text, path in ((SPEC.replace("system linear", "sytem linear"), "a.scpo"),):
        assert _errors(text, path) == [("unknown section 'sytem'", "did you mean 'system'?",
                                        "unknown-section", "system")]
    data = to_yaml_data(parse_model(SPEC, "a.scpo").spec)
    data = {("trian" if k == "train" else k): v for k, v in data.items()}
    assert _errors(yaml.safe_dump(data, sort_keys=False), "a.yaml") == [
        ("unknown section 'trian'", "did you mean 'train'?", "unknown-section", "train")]


def test_no_message_is_parsed_back():
    """Hints are data on the diagnostic: no module splits a message or hint on its quotes."""
    pkg = ROOT / "scpo_spec"
    offenders = [str(p.relative_to(ROOT)) for p in pkg.rglob("*.py")
                 if re.search(r"""\.split\((["'])\\?'\1\)|split\("'"\)""", p.read_text())]
    assert offenders == []
