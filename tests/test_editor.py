"""editors/vscode: the extension's manifest and its TextMate grammar, without node or npm.

The grammar is checked the way an editor applies it — a small faithful TextMate tokenizer (at each
position the `patterns` rule matching earliest wins, ties to the first listed; `name` scopes the
match, `captures` its groups) — over every line of the ready specs, against the real lark lexer's
tokens (keep_all_tokens) and the reader's comments: every number, string, section word, temporal
and logical operator, function call and entry word lands in its scope, and no scope appears where
the language has no such token."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from lark import Lark, Token

from scpo_spec.language.fields import vocabulary
from scpo_spec.language.functions import SIGNAL_FUNCTIONS
from scpo_spec.language.functions import NUMERIC_FUNCTIONS
from scpo_spec.language.grammar import grammar_text
from scpo_spec.language.sections import WORDS as SECTION_WORDS
from scpo_spec.language.scpo_reader import find_comments

ROOT = Path(__file__).resolve().parents[1]
VSCODE = ROOT / "editors" / "vscode"
GRAMMAR = json.loads((VSCODE / "syntaxes" / "scpo.tmLanguage.json").read_text())
SPECS = sorted((ROOT / "specs").glob("*.scpo"))

COMMENT, STRING, NUMBER = "comment.line.number-sign.scpo", "string.quoted.double.scpo", \
    "constant.numeric.scpo"
SECTION, TEMPORAL, LOGICAL = "keyword.control.section.scpo", "keyword.operator.temporal.scpo", \
    "keyword.operator.logical.scpo"
FUNCTION, ENTRY = "support.function.scpo", "keyword.other.entry.scpo"


def tokenize(line: str) -> list[str | None]:
    """The scope of each character of one line, as a TextMate engine assigns it."""
    rules = [(re.compile(rule["match"]), rule) for rule in GRAMMAR["patterns"]]
    scopes: list[str | None] = [None] * len(line)
    pos = 0
    while pos < len(line):
        best = None
        for rx, rule in rules:
            m = rx.search(line, pos)
            if m and (best is None or m.start() < best[0].start()):
                best = (m, rule)
        if best is None:
            break
        m, rule = best
        if "name" in rule:
            scopes[m.start():m.end()] = [rule["name"]] * (m.end() - m.start())
        for group, capture in rule.get("captures", {}).items():
            if m.start(int(group)) >= 0:
                a, b = m.span(int(group))
                scopes[a:b] = [capture["name"]] * (b - a)
        pos = max(m.end(), pos + 1)
    return scopes


def _words(pattern: str) -> set[str]:
    """The words of a rule's alternation `(a|b|c)` / `(?:a|b|c)`."""
    return {w for group in re.findall(r"\((?:\?:)?([A-Za-z_|0-9]+)\)", pattern)
            for w in group.split("|")}


def expected_tokens(text: str) -> list[tuple[int, int, int, str]]:
    """(line, start, end, scope) of every token an editor must colour, from the lark lexer."""
    parser = Lark(grammar_text(), parser="lalr", keep_all_tokens=True, start="start")
    tree = parser.parse(text)
    out = []
    kinds = {"NUMBER": NUMBER, "STRING": STRING, "SECTION": SECTION, "PROPERTY": SECTION,
             "SPEC": SECTION, "CONST": SECTION, "LET": SECTION, "UNCERTAIN": SECTION,
             "TEMPORAL": TEMPORAL,
             "UNTIL": TEMPORAL, "AT": TEMPORAL, "FINAL": TEMPORAL, "NOT": LOGICAL,
             "AND": LOGICAL, "OR": LOGICAL, "IN": LOGICAL, "IMPLIES": LOGICAL}
    for tok in tree.scan_values(lambda v: isinstance(v, Token)):
        if tok.type in kinds:
            out.append((tok.line, tok.column - 1, tok.end_column - 1, kinds[tok.type]))
    # `equilibrium { T1 = … }`: the words inside a block without a kind name signals, not entries
    signals = {id(a) for sub in tree.iter_subtrees() if sub.data == "nested"
               for a in sub.children[1].children}
    for sub in tree.iter_subtrees():
        first = sub.children[0] if sub.children else None
        if sub.data in ("assign", "setting", "sub_block", "nested", "equation", "option") and \
                isinstance(first, Token) and id(sub) not in signals:  # an entry's word
            out.append((first.line, first.column - 1, first.end_column - 1, ENTRY))
        if sub.data == "call" and isinstance(first, Token):
            out.append((first.line, first.column - 1, first.end_column - 1, FUNCTION))
    for c in find_comments(text):
        out.append((c.line, c.column - 1, c.column - 1 + len(c.text), COMMENT))
    return out


def test_the_regexes_are_the_subset_python_and_oniguruma_share():
    """Python's re compiles every rule, and none uses Python-only syntax (`(?P<…>`)."""
    for rule in GRAMMAR["patterns"]:
        re.compile(rule["match"])
        assert "(?P" not in rule["match"] and "begin" not in rule and "include" not in rule


def test_the_grammar_lists_are_the_languages_own():
    """Section words, functions, entry words and choice words are exactly the language's."""
    by_scope: dict[str, set[str]] = {}
    for rule in GRAMMAR["patterns"]:
        names = [rule.get("name")] + [c["name"] for c in rule.get("captures", {}).values()]
        for name in filter(None, names):
            by_scope.setdefault(name, set()).update(_words(rule["match"]))
    assert {w for w in by_scope[SECTION] if w in SECTION_WORDS} == set(SECTION_WORDS)
    assert {w for w in by_scope[FUNCTION]} == set(SIGNAL_FUNCTIONS) | set(NUMERIC_FUNCTIONS)
    vocab = vocabulary()
    entries = {w for block, kinds in vocab.items() for table in kinds.values() for w in table
               if not (block in ("constraint", "stability") and w in ("name", "formula"))}
    choices = {c for kinds in vocab.values() for table in kinds.values()
               for words in table.values() for c in words}
    assert entries <= by_scope[ENTRY]
    assert _words(next(r["match"] for r in GRAMMAR["patterns"]
                       if r.get("name") == "constant.language.scpo")) == choices


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_every_token_of_the_ready_specs_gets_its_scope(spec):
    text = spec.read_text()
    lines = text.split("\n")
    scoped = [tokenize(line) for line in lines]
    expected = expected_tokens(text)
    assert {scope for *_, scope in expected} >= {COMMENT, NUMBER, SECTION, ENTRY}
    wrong = []
    for line, a, b, scope in expected:
        got = set(scoped[line - 1][a:b])
        if got != {scope}:
            wrong.append(f"{spec.name}:{line}:{a + 1} {lines[line - 1][a:b]!r}: {got} ≠ {scope}")
    assert not wrong, wrong[:10]
    # and the other way: no keyword, number, string or comment scope where the language has none
    claimed = {(line, col) for line, a, b, scope in expected for col in range(a, b)
               if scope in (SECTION, TEMPORAL, LOGICAL, NUMBER, STRING, COMMENT)}
    spare = [f"{spec.name}:{i + 1}:{col + 1} {scopes[col]}" for i, scopes in enumerate(scoped)
             for col, scope in enumerate(scopes)
             if scope in (SECTION, TEMPORAL, LOGICAL, NUMBER, STRING, COMMENT)
             and (i + 1, col) not in claimed and not lines[i][col].isspace()]
    assert not spare, spare[:10]


def test_the_temporal_operators_and_keywords_are_met_in_the_specs():
    """The specs exercise every class (so the test above is not vacuous): always, eventually,
    a string, a comment, `->`-free logic at least via `in`."""
    scopes = {s for spec in SPECS for line in spec.read_text().split("\n")
              for s in tokenize(line)}
    assert {COMMENT, STRING, NUMBER, SECTION, TEMPORAL, LOGICAL, FUNCTION, ENTRY,
            "entity.name.type.kind.scpo", "constant.language.scpo"} <= scopes
    line = "constraint c: always (a -> eventually[0:5] b <= 1) until x > 2 at final  # done"
    got = tokenize(line)
    assert got[line.index("always")] == TEMPORAL and got[line.index("until")] == TEMPORAL
    assert got[line.index("final")] == TEMPORAL and got[line.index("->")] == LOGICAL
    assert got[line.index("constraint")] == SECTION and got[line.index("#")] == COMMENT
    assert got[line.index("c:")] == "entity.name.function.metric.scpo"
    line = "    der x2 = abs(x2) * 1.5e-3  solver gurobi"
    got = tokenize(line)
    assert got[line.index("2")] is None and got[line.index("1.5e-3") + 5] == NUMBER
    assert got[line.index("der")] == ENTRY and got[line.index("solver")] == ENTRY
    assert got[line.index("abs")] == FUNCTION and got[line.index("gurobi")] == \
        "constant.language.scpo"


def test_the_extension_manifest():
    """package.json: the `scpo` language on `.scpo` files, its grammar, the executable setting,
    activation on the language, vscode-languageclient; and the files it names exist."""
    pkg = json.loads((VSCODE / "package.json").read_text())
    [language] = pkg["contributes"]["languages"]
    assert language["id"] == "scpo" and language["extensions"] == [".scpo"]
    assert (VSCODE / language["configuration"]).is_file()
    [grammar] = pkg["contributes"]["grammars"]
    assert grammar["language"] == "scpo" and grammar["scopeName"] == GRAMMAR["scopeName"]
    assert (VSCODE / grammar["path"]).resolve() == (VSCODE / "syntaxes" /
                                                     "scpo.tmLanguage.json").resolve()
    assert "onLanguage:scpo" in pkg["activationEvents"]
    setting = pkg["contributes"]["configuration"]["properties"]["scpo.path"]
    assert setting["default"] == "scpo"
    assert "vscode-languageclient" in pkg["dependencies"]
    assert (VSCODE / pkg["main"]).is_file()
    script = (VSCODE / pkg["main"]).read_text()
    assert "scpo.path" in script and '"lsp"' in script
    config = json.loads((VSCODE / language["configuration"]).read_text())
    assert config["comments"]["lineComment"] == "#"
    assert ["{", "}"] in config["brackets"] and {"open": '"', "close": '"', "notIn": ["string",
                                                 "comment"]} in config["autoClosingPairs"]
