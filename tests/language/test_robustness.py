"""Robustness: no input, however broken, makes the reader, the checks, `fmt`, `convert` or the CLI
raise; `fmt` is idempotent and keeps every comment; `.scpo` ↔ YAML round trips keep the model;
`unparse` is the exact inverse of the expression parser.

The default profile is fast (a few hundred examples per property); `-m slow` runs the same
properties with many more examples.  Every bug these tests found has a regression test at the end
of the file.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from scpo_spec.cli import app
from scpo_spec.language import expr as E
from scpo_spec.language.diagnostics import Diagnostic, render, to_json
from scpo_spec.language.format import format_spec
from scpo_spec.language.load import CheckResult, check_text, parse_model
from scpo_spec.language.scpo_reader import find_comments, parse_expression
from scpo_spec.language.source import Source
from scpo_spec.language.yaml_writer import format_yaml
from tests.conftest import ROOT, SPECS

# st.recursive over model nodes makes hypothesis warn about the size of its own repr
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# the double integrator first: the mutation tests below edit its `abs(position) <= 1.5`
SCPO_SPECS = sorted((p for p in SPECS if p.suffix == ".scpo"),
                    key=lambda p: (p.name != "double_integrator.scpo", p.name))
YAML_SPECS = [p for p in SPECS if p.suffix in (".yaml", ".yml")]
SCPO_TEXTS = [p.read_text(encoding="utf-8") for p in SCPO_SPECS]
YAML_TEXTS = [p.read_text(encoding="utf-8") for p in YAML_SPECS]

_HEALTH = list(HealthCheck)


def _settings(examples: int, shrink: bool = True):
    phases = list(Phase) if shrink else [p for p in Phase if p not in (Phase.shrink,
                                                                       Phase.explain)]
    return settings(max_examples=examples, deadline=None, suppress_health_check=_HEALTH,
                    phases=phases)


FAST, SLOW = 200, 3000


def _both(body, fast: int = FAST, slow: int = SLOW, shrink_fast: bool = True, **strategies):
    """A fast property test and a `slow` one with many more examples, from one body.  Properties
    over whole specs take minutes to shrink a failure: their fast variant reports the failing
    example unshrunk (`shrink_fast=False`); the slow one shrinks."""
    def make(examples, shrink=True):
        @_settings(examples, shrink)
        @given(**strategies)
        def test(**kwargs):
            body(**kwargs)
        test.__doc__ = body.__doc__
        return test
    return make(fast, shrink_fast), pytest.mark.slow(make(slow))


# ---------------------------------------------------------------------------------------------
# Vocabulary and helpers

KEYWORDS = ("{ } [ ] ( ) : , = <= >= < > + - * / ^ in and or always eventually at final "
            "constraint stability system backup policy scenarios objective train spec const "
            "initial count grid seed horizon holdout smoothness state input").split()
NAMES = ("x y position velocity force theta omega torque dt state input backup abs norm quad "
         "diag eye lyapunov spectral_radius linear lqr mlp pendulum static gymnasium tanh "
         "residual hidden expert states mean std loss mse sgd adam lr steps optimizer "
         "directions perturbation radius margin solver clarabel kind name formula constraints "
         "inf nan pi _ __x Q R K A B").split()
NUMBERS = ("0 1 -1 2 -0 0.5 .5 1. 1e-3 1e309 -1e309 1e-400 1e16 1e308 4294967296 "
           "12345678901234567890 0.1e1 3e+2 2^2^2^2 10^400 1/0 -(-0)").split()
STRINGS = ['"x"', '""', '"Pendulum-v1"', '"data/harmful.csv"', '"', '"a b', '"#"', "'x'"]
VOCAB = KEYWORDS + NAMES + NUMBERS + STRINGS


def assert_diagnostics_sane(result, text: str) -> None:
    """A CheckResult whose every diagnostic has a message and a sane location, and which the
    CLI can render (terminal and JSON) without raising."""
    assert isinstance(result, CheckResult)
    for d in result.diagnostics:
        assert isinstance(d, Diagnostic)
        assert d.severity in ("error", "warning")
        assert isinstance(d.message, str) and d.message.strip(), d
        if d.span is not None:
            s = d.span
            assert s.line >= 1 and s.column >= 1, d
            assert s.end_line >= 1 and s.end_column >= 1, d
            assert (s.end_line, s.end_column) >= (s.line, s.column), d
    if result.ok:
        assert result.spec is not None
    console = Console(file=io.StringIO(), width=100, color_system=None)
    render(result.diagnostics, {result.source.path: result.source}, console)
    json.dumps(to_json(result.diagnostics))


def check_any(text: str, syntax: str | None, writers: bool = True) -> CheckResult:
    """check_text never raises and its diagnostics are sane; with `writers`, whatever
    parse_model accepts (what fmt/convert work on) can also be written in both syntaxes."""
    path = "fuzz.yaml" if syntax == "yaml" else "fuzz.scpo"
    result = check_text(text, path=path, syntax=syntax)
    assert_diagnostics_sane(result, text)
    if not writers:
        return result
    parsed = parse_model(text, path=path, syntax=syntax)
    assert_diagnostics_sane(parsed, text)
    if parsed.ok:
        format_spec(parsed.spec, find_comments(text) if syntax != "yaml" else [])
        format_yaml(parsed.spec)
    return result


_MINUS_ZERO = re.compile(r"(?<![\w.])-0(?![\w.])")
_LINE = re.compile(r"\bline \d+")


def _loose(text: str | None) -> str | None:
    return text and _LINE.sub("line N", _MINUS_ZERO.sub("0", text))


def _diag_key(result) -> list[tuple]:
    """Diagnostics without their locations (the formatted text puts things elsewhere, so a
    "first used at line 12" hint may name another line); `-0` counts as `0` (fmt writes -0 as 0:
    the same number)."""
    return sorted((d.severity, _loose(d.message), _loose(d.hint)) for d in result.diagnostics)


def fmt_text(text: str, path: str = "f.scpo") -> str:
    result = parse_model(text, path=path)
    assert result.ok, [d.headline() for d in result.diagnostics]
    return format_spec(result.spec, find_comments(text))


# A tokenizer that follows the grammar's terminals (grammars/scpo.lark): a comment runs to '\n'.
_TOKEN = re.compile(r"""
    (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\\n])*")
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|[{}\[\]():,=<>+\-*/^])
  | (?P<ws>\s+)
""", re.X)


def tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m, f"cannot tokenize at {pos}: {text[pos:pos + 20]!r}"
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def comment_texts(text: str) -> list[str]:
    """Every comment as the grammar sees it (to the end of the line, '\n' only)."""
    return [t.rstrip() for kind, t in tokens(text) if kind == "comment"]


# ---------------------------------------------------------------------------------------------
# 1. Random and mutated inputs never raise; every diagnostic is well formed

def _random_text_body(text: str, syntax: str) -> None:
    """Any text at all, in either syntax, gives a CheckResult with well-formed diagnostics."""
    check_any(text, syntax)


test_random_text_never_raises, test_random_text_never_raises_slow = _both(
    _random_text_body,
    text=st.text(st.characters(codec=None, exclude_categories=("Cs",)), max_size=400)
    | st.text(st.sampled_from("{}[]():,=<>+-*/^#\"'\\ \t\n\r\x00\x0c\u2028é∞-.eE0123456789xa"),
              max_size=300),
    syntax=st.sampled_from(["scpo", "yaml"]))


@st.composite
def token_soup(draw) -> str:
    words = draw(st.lists(st.sampled_from(VOCAB), max_size=60))
    seps = draw(st.lists(st.sampled_from([" ", "\n", "  ", "\t", "", " # c\n"]),
                         min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps))


def _token_soup_body(text: str, syntax: str) -> None:
    """Random sequences of the language's words and punctuation."""
    check_any(text, syntax)


test_token_soup_never_raises, test_token_soup_never_raises_slow = _both(
    _token_soup_body, text=token_soup(), syntax=st.sampled_from(["scpo", "yaml"]))


@st.composite
def mutated(draw, texts: list[str]) -> str:
    """A ready spec with 1–4 random edits: delete, duplicate, insert words, swap lines, truncate,
    replace a token."""
    text = draw(st.sampled_from(texts))
    for _ in range(draw(st.integers(1, 4))):
        n = len(text)
        op = draw(st.sampled_from(["delete", "duplicate", "insert", "swap", "truncate",
                                   "replace"]))
        if op == "delete":
            i = draw(st.integers(0, n))
            j = draw(st.integers(i, min(n, i + 300)))
            text = text[:i] + text[j:]
        elif op == "duplicate":
            i = draw(st.integers(0, n))
            j = draw(st.integers(i, min(n, i + 300)))
            k = draw(st.integers(0, n))
            text = text[:k] + text[i:j] + text[k:]
        elif op == "insert":
            words = draw(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=6))
            k = draw(st.integers(0, n))
            text = text[:k] + " " + " ".join(words) + " " + text[k:]
        elif op == "swap":
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == "truncate":
            text = text[:draw(st.integers(0, n))]
        else:
            spans = [m.span() for m in _TOKEN.finditer(text) if m.lastgroup not in ("ws",)]
            if spans:
                i, j = draw(st.sampled_from(spans))
                text = text[:i] + draw(st.sampled_from(VOCAB)) + text[j:]
    return text


def _mutated_body(text: str, syntax: str) -> None:
    """Mutations of the ready specs, read in either syntax."""
    check_any(text, syntax)


test_mutated_scpo_never_raises, test_mutated_scpo_never_raises_slow = _both(
    _mutated_body, text=mutated(SCPO_TEXTS), syntax=st.just("scpo"))
test_mutated_yaml_text_never_raises, test_mutated_yaml_text_never_raises_slow = _both(
    _mutated_body, text=mutated(YAML_TEXTS + SCPO_TEXTS[:1]), syntax=st.just("yaml"))


def _mutation_that_parses_body(text: str) -> None:
    """A mutated spec that still parses: fmt is idempotent, keeps every comment, and the
    formatted text (and its YAML twin) read back to the same model with the same diagnostics."""
    parsed = parse_model(text, path="m.scpo")
    assume(parsed.ok)
    note(text)
    once = format_spec(parsed.spec, find_comments(text))
    again = parse_model(once, path="m.scpo")
    assert again.ok, (once, [d.headline() for d in again.diagnostics])
    assert again.spec.same_as(parsed.spec)
    assert format_spec(again.spec, find_comments(once)) == once
    for c in comment_texts(text):
        assert c in once, c
    assert _diag_key(check_text(once, path="m.scpo")) == _diag_key(check_text(text,
                                                                               path="m.scpo"))
    as_yaml = format_yaml(parsed.spec)
    if as_yaml.strip():  # (a model with nothing in it has an empty twin: "the file is empty")
        twin = parse_model(as_yaml, path="m.yaml")
        assert twin.ok and twin.spec.same_as(parsed.spec), as_yaml


@st.composite
def line_mutated(draw, texts: list[str]) -> str:
    """A ready spec with whole lines deleted, duplicated, swapped or borrowed from another ready
    spec (edits that often still parse)."""
    lines = draw(st.sampled_from(texts)).split("\n")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "borrow"]))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            other = draw(st.sampled_from(texts)).split("\n")
            lines.insert(i, draw(st.sampled_from(other)))
    return "\n".join(lines)


test_mutation_that_parses_formats_stably, test_mutation_that_parses_formats_stably_slow = _both(
    _mutation_that_parses_body, fast=60, slow=1500, shrink_fast=False,
    text=line_mutated(SCPO_TEXTS) | mutated(SCPO_TEXTS))


# ---- deep nesting, long chains, huge files (deterministic) ----

N = 10_000
DEEP = {
    "brackets": "[" * N,
    "closed_brackets": "[" * N + "1" + "]" * N,
    "parens": "(" * N + "1" + ")" * N,
    "open_parens": "(" * N,
    "braces": "{" * N,
    "minus": "-" * N + "1",
    "minus_name": "-" * N + "x",
    "plus": "+" * N + "1",
    "abs": "abs(" * N + "x" + ")" * N,
    "power": "x^" * N + "2",
    "always": "always " * N + "x <= 1",
    "at_final": "at final " * N + "x <= 1",
    "vector_of_vectors": "[" * 60 + "1" + "]" * 60,
    "mixed": "abs(-[(" * 2000 + "x" + ")]) " * 2000,
}
CHAINS = {  # long flat chains: slower to parse, so the full set runs with -m slow
    "sum_chain": "1" + "+1" * 100_000,
    "and_chain": "x <= 1" + " and x <= 1" * 20_000,
    "postfix_final": "x <= 1" + " at final" * N,
    "vector_100k": "[" + ", ".join(["1"] * 100_000) + "]",
}


def _deep_texts(exprs: dict[str, str], variants=("bare", "const", "formula", "yaml-string")):
    for name, expr in exprs.items():
        texts = {
            "bare": ("scpo", expr),
            "const": ("scpo", f"spec a\nconst c = {expr}\n"),
            "formula": ("scpo", SCPO_TEXTS[0] + f"\nconstraint deep: {expr}  smoothness 1\n"),
            "yaml-string": ("yaml", f"spec: a\nconst: {{c: {json.dumps(expr)}}}\n"),
        }
        for variant in variants:
            yield (f"{name}-{variant}", *texts[variant])


YAML_DEEP = [
    ("yaml-flow-seq", "yaml", "a: " + "[" * N + "]" * N),
    ("yaml-flow-map", "yaml", "a: " + "{b: " * N + "1" + "}" * N),
    ("yaml-block-seq", "yaml", "".join("  " * i + "-\n" for i in range(2000))),
    ("yaml-block-map", "yaml", "".join("  " * i + f"k{i}:\n" for i in range(2000))),
    ("yaml-deep-in-spec", "yaml", YAML_TEXTS[0].replace("[[-20, -5]]", "[" * N + "]" * N)),
]


def _ids(v):
    return v if isinstance(v, str) and len(v) < 40 else ""


_FAST_FORMULAS = ("minus_name", "abs", "always", "at_final", "mixed")


@pytest.mark.parametrize("name,syntax,text", [
    *_deep_texts(DEEP, variants=("bare", "const", "yaml-string")),
    # inside a whole spec: slower, so the fast run takes a few (all with -m slow)
    *_deep_texts({k: DEEP[k] for k in _FAST_FORMULAS}, variants=("formula",)),
    *YAML_DEEP,
    ("sum_chain-const", "scpo", f"spec a\nconst c = {CHAINS['sum_chain']}\n"),
], ids=_ids)
def test_deep_nesting_is_a_diagnostic(name, syntax, text):
    """10 000 nested brackets, parentheses, minus signs, calls, temporal operators…; a sum of
    100 000 terms: each is a diagnostic (never a RecursionError or a hang)."""
    check_any(text, syntax, writers=False)


@pytest.mark.slow
@pytest.mark.parametrize("name,syntax,text", [*_deep_texts(CHAINS)], ids=_ids)
def test_long_chains_slow(name, syntax, text):
    check_any(text, syntax)


@pytest.mark.slow
@pytest.mark.parametrize("name,syntax,text", [*_deep_texts(DEEP), *YAML_DEEP], ids=_ids)
def test_deep_nesting_then_writers_slow(name, syntax, text):
    check_any(text, syntax)


def test_multi_megabyte_texts():
    """Several MiB of text (check_text has no size limit; read_source has, see the CLI tests)."""
    ready = SCPO_TEXTS[0]
    for text in ("# " + "x" * (3 * 2**20) + "\n" + ready,              # one huge comment
                 ready + "\n" + ("\n" * (3 * 2**20)),                     # millions of lines
                 ready + "\nconst big = [" + ", ".join(["1"] * 10_000) + "]\n",
                 "x" * (3 * 2**20),                                       # one huge name
                 '"' + "y" * (3 * 2**20)):                                # unterminated string
        check_any(text, "scpo", writers=False)
    check_any("a: " + "b" * (3 * 2**20), "yaml", writers=False)
    check_any("# " + "x" * (3 * 2**20) + "\n" + YAML_TEXTS[0], "yaml", writers=False)


@pytest.mark.slow
def test_multi_megabyte_texts_slow():
    check_any(SCPO_TEXTS[0] * 2000, "scpo")                               # ~3 MiB of duplicates
    check_any(SCPO_TEXTS[0] + "\nconst big = [" + ", ".join(["1"] * 300_000) + "]\n", "scpo")
    check_any(YAML_TEXTS[0] + "".join(f"k{i}: [1, 2, {{a: b}}]\n" for i in range(100_000)),
              "yaml")


# ---- YAML specific ----

yaml_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63)
                | st.floats(allow_nan=True, allow_infinity=True)
                | st.text(max_size=20) | st.sampled_from(VOCAB) | st.binary(max_size=10))
yaml_keys = st.sampled_from(["spec", "title", "const", "system", "backup", "policy", "scenarios",
                             "constraints", "stability", "objective", "train", "kind", "state",
                             "input", "name", "formula", "smoothness", "initial", "optimizer",
                             "expert", "states", "A", "B", "K", "dt", "count"]) | st.text(max_size=8)
yaml_data = st.recursive(yaml_scalars,
                         lambda c: st.lists(c, max_size=4) | st.dictionaries(yaml_keys, c,
                                                                             max_size=4),
                         max_leaves=30)


def _yaml_data_body(data, flow: bool) -> None:
    """Any YAML document (dumped from random data), as a spec."""
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
    check_any(text, "yaml")


test_random_yaml_documents_never_raise, test_random_yaml_documents_never_raise_slow = _both(
    _yaml_data_body, data=yaml_data, flow=st.booleans())


def _replace_in(data, path: list, new):
    if not path or not isinstance(data, (dict, list)) or not data:
        return new
    key = path[0] % len(data)
    if isinstance(data, dict):
        k = list(data)[key]
        return {**data, k: _replace_in(data[k], path[1:], new)}
    return [(_replace_in(v, path[1:], new) if i == key else v) for i, v in enumerate(data)]


def _yaml_value_body(path: list, new, which: int) -> None:
    """The ready YAML spec with one value (at a random depth) replaced by random YAML data."""
    base = yaml.safe_load(YAML_TEXTS[which % len(YAML_TEXTS)])
    text = yaml.safe_dump(_replace_in(base, path, new), allow_unicode=True, sort_keys=False)
    check_any(text, "yaml")


test_yaml_value_replaced_never_raises, test_yaml_value_replaced_never_raises_slow = _both(
    _yaml_value_body, fast=100, path=st.lists(st.integers(0, 20), max_size=4), new=yaml_data,
    which=st.integers(0, 10))

YAML_ODDITIES = {
    "anchors": "a: &x {kind: linear}\nsystem: *x\nbackup: *x\n",
    "merge": "base: &b {kind: lqr, Q: 'diag(1, 1)'}\nbackup: {<<: *b, R: 'diag(1)'}\n",
    "self_alias": "a: &a [1, *a]\n",
    "self_alias_map": "a: &a {b: *a}\nsystem: *a\n",
    "undefined_alias": "a: *nope\n",
    "multi_docs": "spec: a\n---\nspec: b\n",
    "multi_docs_end": "spec: a\n...\n---\n- 1\n",
    "python_object": "spec: !!python/object:os.system {}\n",
    "python_name": "spec: !!python/name:os.system\n",
    "python_apply": "system: !!python/object/apply:os.system ['echo hi']\n",
    "binary": "spec: !!binary aGVsbG8=\nconst: {a: !!binary AAAA}\n",
    "bad_binary": "const: {a: !!binary '!!!'}\n",
    "set": "const: !!set {a, b}\n",
    "omap": "const: !!omap [a: 1, b: 2]\n",
    "pairs": "constraints: !!pairs [a: 1]\n",
    "timestamp": "const: {a: 2001-12-14t21:59:43.10-05:00}\n",
    "custom_tag": "system: !foo {kind: linear}\n",
    "tag_on_scalar": "spec: !!int abc\n",
    "float_tag": "const: {a: !!float .nan, b: !!float -.inf}\n",
    "directive": "%YAML 1.1\n%TAG ! tag:example.com,2000:\n---\nspec: a\n",
    "bad_directive": "%YAML 9.9\n---\nspec: a\n",
    "complex_key": "? [a, b]\n: c\n? {x: 1}\n: d\n",
    "null_key": "~: 1\nnull: 2\n",
    "int_key": "1: a\n2.5: b\ntrue: c\n",
    "dup_keys": "spec: a\nspec: b\nsystem: {kind: linear}\nsystem: {kind: static}\n",
    "tabs": "spec:\ta\nsystem:\n\tkind: linear\n",
    "bom": "\ufeffspec: a\n",
    "nul": "spec: a\x00\n",
    "unicode_escape": 'spec: "\\u0000\\x00\\U0001F600"\n',
    "long_key": "? " + "k" * 2000 + "\n: 1\n",
    "scalar_doc": "42\n",
    "list_doc": "- spec: a\n",
    "empty": "",
    "only_comment": "# nothing\n",
    "only_docs": "---\n---\n...\n",
    "bool_values": "spec: yes\nsystem: {kind: no, state: [on, off]}\n",
    "null_values": "spec:\nsystem:\nconstraints:\n  -\n  - ~\n",
    "seq_of_seq": "constraints: [[1, 2], [3]]\nstability: [[]]\n",
    "formula_numbers": "constraints: [{name: a, formula: 1, smoothness: x}]\n",
    "block_scalars": "spec: |\n  a\n  b\ntitle: >\n  c\n",
    "windows_newlines": "spec: a\r\nsystem: {kind: static, state: [x], input: [y]}\r\n",
    "old_mac_newlines": "spec: a\rsystem: {kind: static}\r",
    "unicode_linesep": "spec: a\u2028system: b\u2029\x85",
    "weird_indent": "spec: a\n  system: b\n",
    "unclosed": "system: {kind: linear, A: [[1, 2]\n",
    "big_float": "const: {a: 1e309, b: -1e309, c: 1e-400}\n",
    "hex_octal": "const: {a: 0x1F, b: 0o17, c: 017, d: 0b101, e: 1_000, f: 190:20:30}\n",
}


@pytest.mark.parametrize("name", sorted(YAML_ODDITIES))
def test_yaml_oddities(name):
    check_any(YAML_ODDITIES[name], "yaml")


@pytest.mark.parametrize("name", sorted(YAML_ODDITIES))
def test_yaml_oddities_inside_ready_spec(name):
    """Each oddity appended to (or spliced into a value of) the ready YAML spec."""
    ready = YAML_TEXTS[0]
    check_any(ready + "\n" + YAML_ODDITIES[name], "yaml")
    body = YAML_ODDITIES[name].replace("\n", " ").strip() or "~"
    check_any(ready.replace("{dt: 0.05}", "{dt: 0.05, extra: " + json.dumps(body) + "}"), "yaml")


def test_random_binary_as_text():
    """Random bytes decoded leniently, in both syntaxes (the CLI tests cover undecodable ones)."""
    import random
    rng = random.Random(0)
    for _ in range(50):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        for syntax in ("scpo", "yaml"):
            check_any(data.decode("latin-1"), syntax)
            check_any(data.decode("utf-8", errors="replace"), syntax)


# ---------------------------------------------------------------------------------------------
# 2. fmt is idempotent and keeps every comment

@pytest.mark.parametrize("path", SCPO_SPECS, ids=lambda p: p.name)
def test_fmt_is_idempotent_on_ready_specs(path):
    text = path.read_text(encoding="utf-8")
    once = fmt_text(text, path=str(path))
    assert fmt_text(once, path=str(path)) == once
    for c in comment_texts(text):
        assert c in once, f"comment lost: {c!r}"
    assert _diag_key(check_text(once, path=str(path))) == _diag_key(check_text(text,
                                                                               path=str(path)))


@pytest.mark.parametrize("path", YAML_SPECS, ids=lambda p: p.name)
def test_yaml_fmt_is_idempotent_on_ready_specs(path):
    text = path.read_text(encoding="utf-8")
    once = format_yaml(parse_model(text, path=str(path)).spec)
    again = parse_model(once, path=str(path))
    assert again.ok
    assert format_yaml(again.spec) == once


_SEPARATORS = [" ", "  ", "\t", "\n", "\n\n", " \n\t ", "\n    ", "\r\n"]


@st.composite
def respaced(draw, texts: list[str]) -> str:
    """A ready spec with random whitespace, newlines and comments between its tokens."""
    text = draw(st.sampled_from(texts))
    toks = tokens(text)
    out = []
    comment_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",),
                                         exclude_characters="\n\x00"), max_size=15)
    for i, (kind, tok) in enumerate(toks):
        out.append(tok)
        if i + 1 == len(toks):
            break
        nxt_kind, nxt = toks[i + 1]
        word = kind in ("name", "number", "string") and nxt_kind in ("name", "number", "string")
        choice = draw(st.integers(0, 9))
        if kind == "comment":
            sep = draw(st.sampled_from(["\n", "\n\n", "\n  ", "\r\n"]))
        elif choice == 0:
            sep = f" # {draw(comment_text)}\n"
        elif choice == 1 and not word and (tok in "{}[](),:" or nxt in "{}[](),:"):
            sep = ""
        else:
            sep = draw(st.sampled_from(_SEPARATORS))
        out.append(sep)
    if draw(st.booleans()):
        out.append(f"\n# the end {draw(comment_text)}")
    return "".join(out)


def _respaced_body(text: str) -> None:
    """Layout changes never change the model, and fmt of them is canonical and keeps comments."""
    parsed = parse_model(text, path="v.scpo")
    assert parsed.ok, [d.headline() for d in parsed.diagnostics]
    original = next(t for t in SCPO_TEXTS if parse_model(t, path="v.scpo").spec.same_as(
        parsed.spec))
    once = format_spec(parsed.spec, find_comments(text))
    assert fmt_text(once, path="v.scpo") == once
    for c in comment_texts(text):
        assert c in once, f"comment lost: {c!r}"
    # same layout-free result as the canonical form of the untouched spec
    strip = lambda s: [ln for ln in s.split("\n") if ln.strip() and not ln.lstrip().startswith("#")]
    assert [ln.split("  #")[0].rstrip() for ln in strip(once)] == \
        [ln.split("  #")[0].rstrip() for ln in strip(fmt_text(original))]
    assert _diag_key(check_text(once, path="v.scpo")) == _diag_key(check_text(text,
                                                                               path="v.scpo"))


test_fmt_idempotent_on_respaced_specs, test_fmt_idempotent_on_respaced_specs_slow = _both(
    _respaced_body, fast=50, slow=1500, shrink_fast=False, text=respaced(SCPO_TEXTS))


# ---------------------------------------------------------------------------------------------
# 3. Round trips: .scpo → YAML → .scpo, YAML → .scpo → YAML

def _scpo_round_trip(text: str, path: str = "r.scpo") -> None:
    first = parse_model(text, path=path)
    assert first.ok, [d.headline() for d in first.diagnostics]
    as_yaml = format_yaml(first.spec)
    second = parse_model(as_yaml, path="r.yaml")
    assert second.ok, (as_yaml, [d.headline() for d in second.diagnostics])
    assert second.spec.same_as(first.spec), as_yaml
    back = format_spec(second.spec)
    third = parse_model(back, path=path)
    assert third.ok, (back, [d.headline() for d in third.diagnostics])
    assert third.spec.same_as(first.spec)
    assert format_yaml(third.spec) == as_yaml
    assert _diag_key(check_text(back, path=path)) == _diag_key(check_text(text, path=path))
    assert _diag_key(check_text(as_yaml, path="r.yaml")) == _diag_key(check_text(text,
                                                                                 path=path))


@pytest.mark.parametrize("path", SCPO_SPECS, ids=lambda p: p.name)
def test_scpo_yaml_scpo_round_trip(path):
    # same directory, so relative data paths resolve the same way for both
    _scpo_round_trip(path.read_text(encoding="utf-8"), path=str(path))


@pytest.mark.parametrize("path", YAML_SPECS, ids=lambda p: p.name)
def test_yaml_scpo_yaml_round_trip(path):
    text = path.read_text(encoding="utf-8")
    first = parse_model(text, path=str(path))
    assert first.ok
    as_scpo = format_spec(first.spec)
    second = parse_model(as_scpo, path="r.scpo")
    assert second.ok, (as_scpo, [d.headline() for d in second.diagnostics])
    assert second.spec.same_as(first.spec)
    as_yaml = format_yaml(second.spec)
    third = parse_model(as_yaml, path="r.yaml")
    assert third.ok and third.spec.same_as(first.spec)
    assert format_yaml(third.spec) == format_yaml(first.spec)
    assert _diag_key(check_text(as_scpo, path=str(path.with_suffix(".scpo")))) == \
        _diag_key(check_text(text, path=str(path)))


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
number_text = (st.integers(-10_000, 10_000).map(str) | finite.map(repr)
               | st.sampled_from(["1e-3", "-0", "1e-400", ".5", "1.", "2e+3", "-0.0"]))
title_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",),
                                   exclude_characters="\n\x00") | st.sampled_from('"\\\n\t#'),
                     max_size=30).map(lambda t: E.unparse(E.Str(value=t))[1:-1])


_TITLE = re.compile(r'^(spec\s+\w+\s+)"(?:\\.|[^"\\\n])*"', re.M)


@st.composite
def renumbered(draw, texts: list[str]) -> str:
    """A ready spec with some of its numbers replaced by other numbers, and maybe a new title: it
    still parses (it may no longer check)."""
    text = draw(st.sampled_from(texts))
    out, pos = [], 0
    for m in _TOKEN.finditer(text):
        if m.lastgroup == "number" and draw(st.integers(0, 3)) == 0:
            out.append(text[pos:m.start()])
            out.append(" " + draw(number_text) + " ")
            pos = m.end()
    out.append(text[pos:])
    text = "".join(out)
    if draw(st.booleans()):
        title = draw(title_text)
        text = _TITLE.sub(lambda m: m.group(1) + '"' + title + '"', text, count=1)
    return text


def _renumbered_body(text: str) -> None:
    """Generated variations round-trip through YAML and re-check with the same diagnostics."""
    parsed = parse_model(text, path=str(ROOT / "specs" / "v.scpo"))
    assume(parsed.ok)
    _scpo_round_trip(text, path=str(ROOT / "specs" / "v.scpo"))
    once = format_spec(parsed.spec, find_comments(text))
    assert fmt_text(once) == once


test_round_trip_of_renumbered_specs, test_round_trip_of_renumbered_specs_slow = _both(
    _renumbered_body, fast=50, slow=1500, shrink_fast=False, text=renumbered(SCPO_TEXTS))


# ---------------------------------------------------------------------------------------------
# 4. The CLI never prints a traceback

runner = CliRunner()
_rng_bytes = bytes((i * 7919 + 13) % 256 for i in range(3000))
READY_SCPO = SCPO_TEXTS[0]

CLI_FILES = {
    # name: (file name, content (bytes/str/None for a directory), expected `check` exit code;
    # 2, a usage error, is the exit code of every command)
    "ready_scpo": (SCPO_SPECS[0].name, READY_SCPO, 0),
    "ready_yaml": (YAML_SPECS[0].name, YAML_TEXTS[0], 0),
    "bom_scpo": ("bom.scpo", b"\xef\xbb\xbf" + READY_SCPO.encode(), 0),
    "empty_scpo": ("empty.scpo", "", 1),
    "empty_yaml": ("empty.yaml", "", 1),
    "whitespace": ("ws.scpo", " \n\t\n", 1),
    "random_bytes": ("random.scpo", _rng_bytes, 1),
    "random_bytes_yaml": ("random.yaml", _rng_bytes, 1),
    "nul_bytes": ("nul.scpo", b"\x00" * 100, 1),
    "nul_in_spec": ("nul2.scpo", READY_SCPO.encode()[:200] + b"\x00" + READY_SCPO.encode()[200:],
                    1),
    "nul_yaml": ("nul.yaml", b"spec: a\x00\n", 1),
    "invalid_utf8": ("bad.scpo", READY_SCPO.encode()[:300] + b"\xff\xfe\xc3" +
                     READY_SCPO.encode()[300:], 1),
    "invalid_utf8_yaml": ("bad.yaml", b"spec: \xc3\x28\n", 1),
    "utf16": ("utf16.scpo", READY_SCPO.encode("utf-16"), 1),
    "truncated": ("trunc.scpo", READY_SCPO[: len(READY_SCPO) // 2], 1),
    "truncated_yaml": ("trunc.yaml", YAML_TEXTS[0][: len(YAML_TEXTS[0]) // 2], 1),
    "directory": ("dir.scpo", None, 2),  # a usage error, like a missing file
    "huge": ("huge.scpo", "# " + "x" * (4 * 2**20 + 10) + "\n" + READY_SCPO, 1),
    # (in-process tests above go 10x deeper; here it is about rendering the diagnostics)
    "deep_brackets": ("deep.scpo", "spec a\nconst c = " + "[" * 1000 + "\n", 1),
    "deep_parens": ("deep2.scpo", READY_SCPO + "\nconst c = " + "(" * 1000 + "1" + ")" * 1000
                    + " +" + "-" * 1000 + "x\n", 1),
    "deep_minus": ("deep3.scpo", READY_SCPO + "\nconstraint d: " + "-" * 1000 + "x <= 1\n", 1),
    "deep_yaml": ("deep.yaml", "a: " + "[" * 1000 + "]" * 1000 + "\n", 1),
    "long_chain": ("chain.scpo", READY_SCPO + "\nconst c = 1" + "+1" * 3000 + "\n", 1),
    "unknown_suffix": ("spec.txt", READY_SCPO, 0),
}
COMMANDS = {
    "check": ["check"],
    "check_json": ["check", "--json"],
    "fmt": ["fmt"],
    "fmt_check": ["fmt", "--check"],
    "convert_yaml": ["convert", "--to", "yaml"],
    "convert_scpo": ["convert", "--to", "scpo"],
}


def _write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _invoke(args: list[str]):
    result = runner.invoke(app, args, catch_exceptions=True)
    assert "Traceback" not in result.output, result.output[-3000:]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback
        raise AssertionError("".join(traceback.format_exception(*result.exc_info))[-3000:])
    return result


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(CLI_FILES))
def test_cli_never_prints_a_traceback(tmp_path, case, command):
    name, content, check_code = CLI_FILES[case]
    if case == "ready_scpo" or case == "unknown_suffix":  # relative data paths resolve as in specs/
        path = SCPO_SPECS[0] if case == "ready_scpo" else _write(tmp_path, name, content)
    elif case == "ready_yaml":
        path = YAML_SPECS[0]
    else:
        path = _write(tmp_path, name, content)
    result = _invoke([*COMMANDS[command], str(path)])
    if check_code == 2:  # said before any file is read, by every command; no JSON
        assert result.exit_code == 2 and "error" in result.output, result.output[-2000:]
        return
    if command.startswith("check"):
        assert result.exit_code == check_code, result.output[-2000:]
    else:
        # fmt/convert: 0 when the spec parses, 1 otherwise (never 2: the file exists); fmt
        # --check says 1 for a file not in canonical layout, fmt of a YAML file with comments
        # refuses (a YAML rewrite cannot keep them)
        strict = check_code == 0 and command != "fmt_check" and not (
            command == "fmt" and case == "ready_yaml")
        assert result.exit_code in ((0,) if strict else (0, 1)), result.output[-2000:]
    if command == "check_json":
        payload = json.loads(result.stdout)
        assert payload["ok"] is (check_code == 0)
        assert [f["ok"] for f in payload["files"]] == [check_code == 0]
        for d in payload["files"][0]["diagnostics"]:
            assert d["message"] and (d["line"] is None or d["line"] >= 1)
    if check_code == 1 and command.startswith("check"):
        assert "error" in result.output


def test_cli_several_files_at_once(tmp_path):
    bad = _write(tmp_path, "bad.scpo", "spec")
    result = _invoke(["check", str(SCPO_SPECS[0]), str(bad), str(YAML_SPECS[0])])
    assert result.exit_code == 1
    result = _invoke(["check", "--json", str(SCPO_SPECS[0]), str(bad)])
    payload = json.loads(result.stdout)
    assert result.exit_code == 1 and payload["ok"] is False
    assert [f["ok"] for f in payload["files"]] == [True, False]


@pytest.mark.parametrize("args", [
    ["check", "{missing}"],
    ["check", "--json", "{missing}"],
    ["check", "{ready}", "{missing}"],
    ["fmt", "{missing}"],
    ["convert", "--to", "yaml", "{missing}"],
    ["check", "--bogus", "{ready}"],
    ["check"],
    ["fmt", "--bogus", "{ready}"],
    ["convert", "{ready}"],
    ["convert", "--to", "xml", "{ready}"],
    ["convert", "--to", "yaml", "{ready}", "--out"],
    ["nosuchcommand"],
], ids=lambda a: " ".join(a))
def test_cli_usage_errors_exit_2(tmp_path, args):
    fill = {"missing": str(tmp_path / "missing.scpo"), "ready": str(SCPO_SPECS[0])}
    result = _invoke([a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output


def test_cli_convert_writes_a_file_that_round_trips(tmp_path):
    out = tmp_path / "twin.yaml"
    assert _invoke(["convert", "--to", "yaml", str(YAML_SPECS[0]), "-o", str(out)]).exit_code == 0
    assert _invoke(["check", str(out)]).exit_code == 0
    back = tmp_path / "twin.scpo"
    assert _invoke(["convert", "--to", "scpo", str(out), "-o", str(back)]).exit_code == 0
    assert _invoke(["check", str(back)]).exit_code == 0
    assert _invoke(["fmt", "--check", str(back)]).exit_code == 0


def test_cli_subprocess_has_no_traceback(tmp_path):
    """The real entry point (python -m scpo_spec.cli) on bytes that are not UTF-8, and on a
    missing file: stdout/stderr as a user sees them."""
    path = _write(tmp_path, "x.scpo", _rng_bytes)
    for args in (["check", str(path)], ["check", "--json", str(path)], ["fmt", str(path)],
                 ["convert", "--to", "yaml", str(path)]):
        proc = subprocess.run([sys.executable, "-m", "scpo_spec.cli", *args], capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
        assert proc.returncode == 1, proc.stderr[-3000:]
        if "--json" in args:
            json.loads(proc.stdout)
    proc = subprocess.run([sys.executable, "-m", "scpo_spec.cli", "check",
                           str(tmp_path / "missing.scpo")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# 5. unparse is the exact inverse of parse_expression

_EXPR_KEYWORDS = {"always", "eventually", "at", "final", "and", "or", "in", "not", "until",
                  "spec", "const",
                  "constraint", "stability", "system", "backup", "policy", "scenarios",
                  "objective", "train"}
names = (st.sampled_from(["x", "position", "theta", "state", "input", "dt", "pi", "inf", "nan",
                          "_", "x1", "A", "spectral_radius"])
         | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
         .filter(lambda s: s not in _EXPR_KEYWORDS))
funcs = st.sampled_from(["abs", "norm", "min", "max", "sqrt", "exp", "sin", "cos", "quad", "diag",
                         "eye", "lyapunov", "f"]) | names
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**6, 10**6).map(float)
str_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8) | st.text(
    st.characters(exclude_categories=("Cs",)), max_size=8)

leaves = st.one_of(numbers.map(lambda v: E.Num(value=v)), names.map(lambda n: E.Name(id=n)),
                   str_values.map(lambda s: E.Str(value=s)))


def _not(*types):
    return lambda e: not isinstance(e, types)


def _extend(child):
    arith = child.filter(_not(*E.FORMULA_NODES))
    return st.one_of(
        st.builds(lambda f, a: E.Call(func=f, args=a), funcs, st.lists(child, max_size=3)),
        st.builds(lambda a: E.Vector(items=a), st.lists(child, max_size=3)),
        st.builds(lambda a: E.Unary(op="-", arg=a), child.filter(_not(E.Num))),
        st.builds(lambda op, a, b: E.Binary(op=op, left=a, right=b),
                  st.sampled_from(["+", "-", "*", "/", "^"]), child, child),
        st.builds(lambda op, a, b: E.Compare(op=op, left=a, right=b),
                  st.sampled_from(["<=", ">=", "<", ">"]), child, child),
        st.builds(lambda a, b: E.Within(arg=a, interval=b), child, child),
        st.builds(lambda a: E.And(args=a), st.lists(child.filter(_not(E.And)), min_size=2,
                                                     max_size=3)),
        st.builds(lambda a: E.Or(args=a), st.lists(child.filter(_not(E.Or)), min_size=2,
                                                   max_size=3)),
        st.builds(lambda op, w, b: E.Temporal(op=op, window=w, body=b),
                  st.sampled_from(["always", "eventually"]),
                  st.none() | st.builds(lambda a, b: E.Window(start=a, end=b), arith, arith),
                  child),
        st.builds(lambda b, p: E.Temporal(op="final", body=b, postfix=p), child, st.booleans()),
        st.builds(lambda a: E.Not(arg=a), child),
        st.builds(lambda a, b: E.Implies(left=a, right=b), child, child),
        st.builds(lambda a, w, b: E.Until(left=a, right=b, window=w), child,
                  st.none() | st.builds(lambda a, b: E.Window(start=a, end=b), arith, arith),
                  child),
    )


expressions = st.recursive(leaves, _extend, max_leaves=25)


def _unparse_body(tree) -> None:
    """unparse, then parse: the same tree (parse_expression(unparse(t)) == t)."""
    note(E.unparse(tree))
    assert_unparse_inverts(tree)


def assert_unparse_inverts(tree) -> None:
    text = E.unparse(tree)
    parsed, diags = parse_expression(text, Source(path="x", text=text))
    assert diags == [], [d.headline() for d in diags]
    assert parsed.model_dump() == tree.model_dump()
    assert E.unparse(parsed) == text


test_unparse_parse_is_an_exact_inverse, test_unparse_parse_is_an_exact_inverse_slow = _both(
    _unparse_body, fast=300, slow=5000, tree=expressions)


@pytest.mark.parametrize("text", [
    "-1", "- 1", "-(1)", "--1", "-x", "-(-x)", "2^-3", "(-2)^x", "-2^x", "x - -1", "1e-400",
    "-0", "1e16", "12345678901234567890", "a <= b at final", "always[1:2] always x <= 1",
    "at final always x <= 1", "always [1, 2]", "always [x]", "x in [1, 2] and y in [3, 4]",
    "(a and b) and c", "a or (b or c)", "abs(x,)", "f()", "[]", "[[1, 2], [3, 4]]",
    "quad(diag(1, 0.1), state) + quad(diag(0.01), input)", '"a\\"b"',
    "not -x", "not not a", "a -> b -> c", "(a -> b) -> c", "a until (b until c)",
    "(a until b) until[1:2] c", "always a until b", "not a until b", "x - -1 -> y", "x->y",
    "a until[1:2] always [1, 2]", "at final (a -> b)", "a at final until b",
])
def test_canonical_text_parses_back(text):
    """parse → unparse → parse is stable for hand-picked tricky inputs."""
    tree, diags = parse_expression(text, Source(path="x", text=text))
    assert diags == [], [d.headline() for d in diags]
    canonical = E.unparse(tree)
    again, diags = parse_expression(canonical, Source(path="x", text=canonical))
    assert diags == [] and again.model_dump() == tree.model_dump(), canonical
    assert E.unparse(again) == canonical


# ---------------------------------------------------------------------------------------------
# Bugs this file found, each kept as a regression test.

def _in_subprocess(code: str, timeout: float = 60, memory_gib: float = 2.0,
                   stdin: str | None = None):
    """Run code in a fresh interpreter with an address-space limit (a runaway allocation then
    fails there instead of taking this machine's memory) and a time limit."""
    prelude = textwrap.dedent(f"""
        import resource
        limit = int({memory_gib} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    """)
    try:
        return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                              input=stdin, capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not finish in {timeout} s")


def _check_in_subprocess(text: str, syntax: str = "scpo", timeout: float = 60):
    proc = _in_subprocess(f"""
        import sys
        from scpo_spec.language.load import check_text
        r = check_text(sys.stdin.read(), path="f.{syntax}", syntax={syntax!r})
        print("OK", [d.message for d in r.diagnostics])
    """, timeout=timeout, stdin=text)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-1500:]
    return proc.stdout


def test_fixed_yaml_string_with_bad_escape():
    """A bad escape in a YAML expression string (was: lark VisitError)."""
    check_any("spec: a\nconst: {c: '\"\\x\"'}\n", "yaml")


def test_fixed_scpo_string_with_bad_escape():
    """A bad escape in a .scpo string (was: 'internal error while reading', no location)."""
    result = check_any('spec a\nconst c = "\\x"\n', "scpo")
    assert result.diagnostics and all(d.span is not None and "internal" not in d.message
                                      for d in result.diagnostics)


def test_fixed_title_with_escaped_quote():
    """A title with an escaped quote (was: more backslashes on every fmt)."""
    text = READY_SCPO.replace(next(m.group() for m in _TOKEN.finditer(READY_SCPO)
                                   if m.lastgroup == "string"), r'"say \"hi\""', 1)
    once = fmt_text(text)
    assert fmt_text(once) == once
    assert parse_model(text).spec.title.value == 'say "hi"'


def test_fixed_string_non_ascii_with_escape():
    """Non-ASCII text with an escape (was: mis-decoded, 'é\\' read as 'Ã©\\')."""
    text = E.unparse(E.Str(value="é\\"))
    tree, diags = parse_expression(text, Source(path="x", text=text))
    assert tree.model_dump() == E.Str(value="é\\").model_dump()


def test_fixed_yaml_string_with_newline_converts():
    """A YAML string with a newline converts to a .scpo string that parses (was: raw newline)."""
    spec = parse_model((ROOT / "specs" / "regression.scpo").read_text(), path="r.scpo").spec
    as_yaml = format_yaml(spec).replace("data: ../data/harmful.csv", 'data: "a\\nb.csv"')
    twin = parse_model(as_yaml, path="r.yaml")
    assert twin.ok
    back = parse_model(format_spec(twin.spec), path="r.scpo")
    assert back.ok, [d.headline() for d in back.diagnostics]
    assert back.spec.same_as(twin.spec)


def test_fixed_yaml_huge_integer():
    """A YAML integer beyond float range (was: OverflowError in Builder.expr)."""
    result = check_any("spec: a\nconst: {c: 1" + "0" * 400 + "}\n", "yaml")
    assert not result.ok


def test_fixed_eye_at_its_limit():
    """eye(10000), the documented maximum (was: a 100M-entry nested list, > 3 GiB)."""
    _check_in_subprocess("spec a\nconst c = eye(10000)\n")


def test_fixed_yaml_alias_bomb():
    """Aliases inside aliases ('billion laughs'; was: a 400-byte file ran for minutes and
    filled the memory)."""
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    out = _check_in_subprocess("\n".join(lines) + "\n", syntax="yaml", timeout=30)
    assert "expands" in out or "too" in out


@pytest.mark.parametrize("sep", ["\r", "\x0c", "\x85", "\u2028"], ids=repr)
def test_fixed_comment_with_odd_line_break(sep):
    """A comment holding \r, \x0c, \x85 or \u2028 (the grammar's comment runs to '\n'; was: the
    rest of the comment was lost by fmt)."""
    text = READY_SCPO.replace("\nspec ", f"\n# keep{sep}KEEPME\nspec ", 1)
    once = fmt_text(text)
    assert "KEEPME" in once
    assert fmt_text(once) == once


@pytest.mark.parametrize("formula", [
    "always " + " + ".join(["abs(position)"] * 70) + " <= 100",
    " and ".join(["always abs(position) <= 1.5"] * 70),
], ids=["sum", "and"])
def test_fixed_flat_chain_is_not_nesting(formula):
    """A flat `a + b + …` or `p and q and …` of 70 terms (was: 'nesting is too deep')."""
    text = READY_SCPO.replace("always abs(position) <= 1.5", formula)
    result = check_text(text, path=str(SCPO_SPECS[0]))
    assert result.ok, [d.headline() for d in result.diagnostics]
    once = fmt_text(text, path=str(SCPO_SPECS[0]))
    assert check_text(once, path=str(SCPO_SPECS[0])).ok


def test_fixed_diag_of_many_numbers():
    """diag() of 20 000 numbers (was: an n×n allocation, numpy ArrayMemoryError)."""
    _check_in_subprocess(f"spec a\nconst c = diag({', '.join(['1'] * 20_000)})\n")


def test_fixed_infinite_literal_in_formula():
    """A literal beyond float range is an error when the model is built, so `fmt` refuses it
    (was: accepted, and `fmt` wrote `inf`, which reads back as a name)."""
    text = READY_SCPO.replace("always abs(position) <= 1.5", "always abs(position) <= 1e309")
    assert text != READY_SCPO
    built = parse_model(text, path=str(SCPO_SPECS[0]))
    assert not built.ok and [d.message for d in built.diagnostics] == ["number too large"]
    assert [d.message for d in check_text(text, path=str(SCPO_SPECS[0])).diagnostics] == \
        ["number too large"]


def test_fixed_window_bound_not_parenthesised():
    """A formula as a window bound unparses with parentheses (was: always[x <= 1:2] …)."""
    assert_unparse_inverts(E.Temporal(op="always", window=E.Window(
        start=E.Compare(op="<=", left=E.Name(id="x"), right=E.Num(value=1)),
        end=E.Num(value=2)), body=E.Name(id="y")))


def test_fixed_yaml_fmt_keeps_comments(tmp_path):
    """`fmt` of a YAML spec never loses its comments: it prints them or refuses (and `fmt -w`
    leaves the file alone); was: dropped silently."""
    text = YAML_TEXTS[0]
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert comments
    result = _invoke(["fmt", str(YAML_SPECS[0])])
    assert result.exit_code == 1 or all(c in result.stdout for c in comments), result.output
    copy = _write(tmp_path, "copy.yaml", text)
    _invoke(["fmt", "-w", str(copy)])
    written = copy.read_text(encoding="utf-8")
    assert all(c in written for c in comments)


@pytest.mark.parametrize("sep", ["\r", "\x0c"], ids=repr)
def test_fixed_string_with_odd_line_break(sep):
    """A string holding a raw \\r or \\x0c before '#' (was: fmt added a bogus comment every run)."""
    text = READY_SCPO.replace(next(m.group() for m in _TOKEN.finditer(READY_SCPO)
                                   if m.lastgroup == "string"), f'"a{sep}#ZZ"', 1)
    once = fmt_text(text)
    assert fmt_text(once) == once
    assert "#ZZ" not in once.replace(f'"a{sep}#ZZ"', "")


def test_fixed_yaml_writer_nel_in_string():
    """U+0085 in a string survives YAML (was: written raw, read back as a line break)."""
    text = READY_SCPO.replace(next(m.group() for m in _TOKEN.finditer(READY_SCPO)
                                   if m.lastgroup == "string"), '"a\x85b"', 1)
    spec = parse_model(text, path="n.scpo").spec
    twin = parse_model(format_yaml(spec), path="n.yaml")
    assert twin.ok and twin.spec.title.value == "a\x85b"


def test_fixed_duplicate_initial_range_is_a_build_error():
    """A duplicated `initial` range is refused when the model is built, so `convert` cannot
    turn it into a different, valid YAML twin (was: a check error only; the YAML mapping kept
    one of the two)."""
    text = READY_SCPO.replace("    initial velocity",
                              "    initial position in [-1, 1]\n    initial velocity", 1)
    assert text != READY_SCPO
    parsed = parse_model(text, path=str(SCPO_SPECS[0]))
    assert not parsed.ok
    assert [d.message for d in parsed.diagnostics] == ["duplicate initial range for 'position'"]
