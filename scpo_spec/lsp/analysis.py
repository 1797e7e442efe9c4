"""What the language server answers, computed from the language layer (no protocol here).

Positions are 0-based (line, character) in Python characters; server.py converts them to the
client's units (UTF-16 for VS Code).  Spans are 1-based with an exclusive end column, so a span
(line l, column c) is the position (l − 1, c − 1).  Every list of words offered comes from the
language layer's own tables (sections.SECTIONS, build.vocabulary(), functions.FUNCTIONS,
check_formulas.FORMULA_KEYWORDS), never a copy.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from lsprotocol import types as T

from scpo_spec.compile.describe import describe_metric
from scpo_spec.language import model as M
from scpo_spec.language.fields import vocabulary
from scpo_spec.language.check_formulas import FORMULA_KEYWORDS
from scpo_spec.language.diagnostics import Diagnostic
from scpo_spec.language.evaluate import BUILTIN_CONSTANTS
from scpo_spec.language.functions import BY_NAME as FUNCTIONS, NUMERIC_FUNCTIONS, \
    SIGNAL_FUNCTIONS
from scpo_spec.language.expr import unparse
from scpo_spec.language.format import format_spec
from scpo_spec.language.lets import LetCycle, expand
from scpo_spec.language.load import CheckResult, check_text, parse_model, syntax_of
from scpo_spec.language.scpo_reader import find_comments
from scpo_spec.language.sections import PROPERTIES, SECTIONS, WITH_KIND, WORDS
from scpo_spec.language.source import Span
from scpo_spec.language.yaml_reader import count_comments
from scpo_spec.language.yaml_writer import format_yaml

# One line per keyword: what hover says.  Every section word must have one (tests check it).
KEYWORD_DOCS = {
    **{s.word: s.doc for s in SECTIONS},
    "always": "`always φ` / `always[a:b] φ`: φ at every step (of the window); violation = max.",
    "eventually": "`eventually φ` / `eventually[a:b] φ`: φ at some step (of the window); "
                  "violation = min.",
    "until": "`φ until ψ`: ψ at some step t′, φ at every step before it.",
    "at": "`at final φ` / `φ at final`: φ at its last step.",
    "final": "`at final φ` / `φ at final`: φ at its last step.",
    "not": "`not φ`: φ does not hold (violation −h_φ).",
    "and": "`φ and ψ`: both hold (violation max).",
    "or": "`φ or ψ`: either holds (violation min).",
    "in": "`e in [lo, hi]`: lo ≤ e ≤ hi (violation max(lo − e, e − hi)).",
}
# What hover says for the entry words of LANGUAGE-v3 (docs/language.md §14 says more).
ENTRY_DOCS = {
    "equilibrium": "`equilibrium { T1 = m * g / 2 }`: the operating point (x*, u*) — where the "
                   "plant is linearised and the controllers act around; states and inputs not "
                   "named are 0. `check` requires it to be a fixed point.",
    "observe": "`observe = [x, v_lead - v_ego]`: what the network sees, o = observe(x); default "
               "x − x*. States, constants, parameters and lets — not inputs or disturbances.",
    "output_scale": "`output_scale = [11]`: u = u* + output_scale ⊙ net(o); one number or one "
                    "per input (default 1).",
    "k": "`backup linear { K = [[…]]  k = [0.5] }`: the constant term, u = u* + K (x − x*) + k.",
    "head": "`policy from \"RUN\" { head = \"…\" }`: the source run's log head (64 hex), "
            "checked by its audit before θ₀ is read.",
    "every": "`verify every K` (in train): every K-th accepted update must also be PROVED.",
    "cells": "`verify { cells 4096 }`: the most initial-set cells scpo verify's splitting may "
             "make.",
    "time_limit": "`verify { time_limit 300 }`: the seconds scpo verify may take.",
}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r'#[^\n]*|"(?:\\.|[^"\\\n])*"|[A-Za-z_][A-Za-z0-9_]*|\n|->|<=|>=|\S')
KINDS_OF = WITH_KIND  # top-level sections written with a kind
PROPERTY_WORDS = tuple(s.word for s in PROPERTIES)


# ---------------------------------------------------------------- checking
def check(text: str, path: str, base_dir: Path | None) -> CheckResult:
    """The language checks of `scpo check` (user modules a gymnasium spec names may be imported,
    as `scpo check` does; the checks that run code or load torch files are `code_checks`)."""
    return check_text(text, path=path, base_dir=base_dir)


def code_checks(result: CheckResult, base_dir: Path | None) -> list[Diagnostic]:
    """`scpo check`'s second stage (compile/usercode.py: a python plant's probe, TorchScript
    files), run once the language checks pass; it imports torch, so the server runs it on save."""
    if not result.ok or base_dir is None:
        return []
    _forget_plant(result.spec, base_dir)
    from scpo_spec.compile.usercode import check_code
    return check_code(result.spec, base_dir)


def _forget_plant(spec: M.Spec, base_dir: Path) -> None:
    """A long-lived server imported the python plant at an earlier save: forget it when it lives
    beside the spec, so the check reads the file as it is now (as a fresh `scpo check` would)."""
    system = spec.system
    if not isinstance(system, M.PythonSystem) or system.function is None:
        return
    name = system.function.value.partition(":")[0]
    module = sys.modules.get(name)
    where = getattr(module, "__file__", None)
    if where and Path(where).resolve().is_relative_to(base_dir.resolve()):
        del sys.modules[name]


def span_range(span: Span | None) -> T.Range:
    """A 1-based span (exclusive end column) as a 0-based LSP range; no span: the file's start."""
    if span is None:
        return T.Range(start=T.Position(line=0, character=0), end=T.Position(line=0, character=0))
    start = T.Position(line=span.line - 1, character=max(span.column - 1, 0))
    end = T.Position(line=span.end_line - 1, character=max(span.end_column - 1, 0))
    if (end.line, end.character) < (start.line, start.character):
        end = start
    return T.Range(start=start, end=end)


def to_lsp(d: Diagnostic) -> T.Diagnostic:
    """A checker diagnostic as LSP's: the same message, the hint on its own line."""
    message = d.message + (f"\nhint: {d.hint}" if d.hint else "")
    severity = T.DiagnosticSeverity.Error if d.severity == "error" else \
        T.DiagnosticSeverity.Warning
    return T.Diagnostic(range=span_range(d.span), message=message, severity=severity,
                        source="scpo")


# ---------------------------------------------------------------- words and names
def word_at(lines: list[str], line: int, character: int) -> tuple[str, int, int] | None:
    """The name under (or just before) the cursor and its columns, outside comments and strings."""
    if not 0 <= line < len(lines):
        return None
    text = lines[line]
    for m in _TOKEN.finditer(text):
        if m.start() > character:
            break
        if m.start() <= character <= m.end() and _WORD.fullmatch(m.group()):
            return m.group(), m.start(), m.end()
    return None


def signals(spec: M.Spec | None) -> list[tuple[str, str, int, M.Signal]]:
    """(name, role, index, node) for every state/observation and input/action."""
    system = getattr(spec, "system", None)
    if system is None:
        return []
    gym = isinstance(system, M.GymnasiumSystem)
    roles = ("observation", "action") if gym else ("state", "input")
    return [(s.name, role, i, s) for role, group in zip(roles, (system.states, system.inputs))
            for i, s in enumerate(group)]


def _value_text(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return f"{float(value):.12g}"  # 0.005, not 0.005000000000000001


def _const_text(c: M.Const) -> str:
    written = unparse(c.value.expr)
    if c.value.value is None:
        return f"const {c.name} = {written}"
    folded = _value_text(c.value.value)
    return f"const {c.name} = {written}" + ("" if folded == written else f"  (= {folded})")


# ---------------------------------------------------------------- hover
def hover(lines: list[str], line: int, character: int, spec: M.Spec | None,
          checked: CheckResult | None) -> str | None:
    """Markdown for the word at the cursor: a signal's role and index, a constant's value, a
    metric's compiled formula (from `checked`, the last spec that passed), a keyword's meaning."""
    found = word_at(lines, line, character)
    if found is None:
        return None
    word = found[0]
    for name, role, index, _ in signals(spec):
        if name == word:
            group = [s for _, r, _, s in signals(spec) if r == role]
            vector = "x" if role in ("state", "observation") else "u"
            return (f"**{name}**: {role} {index} of {len(group)} — `{vector}[{index}]` in "
                    f"{vector} = [{', '.join(s.name for s in group)}]")
    for c in getattr(spec, "consts", []):
        if c.name == word:
            return f"```scpo\n{_const_text(c)}\n```"
    for let in getattr(spec, "lets", []):
        if let.name.name == word:
            return _let_text(let, spec)
    for u in [*getattr(spec, "parameters", []), *getattr(spec, "disturbances", [])]:
        if u.name.name == word:
            return (f"```scpo\n{u.section} {word} in {unparse(u.interval.expr)}\n```\n"
                    + KEYWORD_DOCS[u.section].split(": ", 1)[1])
    for prop in getattr(spec, "properties", []):
        if prop.name.name == word:
            return _metric(prop, checked)
    if word in ("state", "input") and spec is not None and spec.system is not None:
        group = spec.system.states if word == "state" else spec.system.inputs
        return f"**{word}**: the vector [{', '.join(s.name for s in group)}] at each step"
    if word in KEYWORD_DOCS:
        return KEYWORD_DOCS[word]
    if word in FUNCTIONS and lines[line][found[2]:].lstrip().startswith("("):
        f = FUNCTIONS[word]
        return f"`{f.usage}`: {f.doc}"
    return ENTRY_DOCS.get(word)


def _function_detail(name: str) -> str:
    return FUNCTIONS[name].usage


def _let_text(let: M.Let, spec: M.Spec) -> str:
    """`let NAME = EXPR`, and what it means with the lets it uses expanded."""
    written = unparse(let.expr)
    text = f"```scpo\nlet {let.name.name} = {written}\n```"
    try:
        expanded = unparse(expand(let.expr, spec))
    except (LetCycle, RecursionError):
        return text + "\n(part of a cycle of lets)"
    return text + (f"\n= `{expanded}`" if expanded != written else "")


def _metric(prop: M.Property, checked: CheckResult | None) -> str:
    text = [f"**{prop.section} {prop.name.name}**", "", f"as written: `{unparse(prop.formula)}`"]
    spec = checked.spec if checked is not None and checked.ok else None
    mine = spec is not None and any(p.name.name == prop.name.name for p in spec.properties)
    if mine:
        prop = next(p for p in spec.properties if p.name.name == prop.name.name)
        train = spec.train
        tau = None
        if train and train.aggregate and train.aggregate.kind == "smooth":
            tau = float(train.aggregate.tau)
        try:
            compiled = describe_metric(expand(prop.formula, spec),
                                       {c.name: c.value.value for c in spec.consts},
                                       [s.name for s in spec.system.states],
                                       [s.name for s in spec.system.inputs],
                                       int(spec.scenarios.horizon), tau)
            text += ["", f"compiled: `g = {compiled}`"]
        except Exception:  # noqa: BLE001 — a hover never fails; the checks report the formula
            pass
    if prop.smoothness is not None:
        text += ["", f"smoothness ℓ = {unparse(prop.smoothness.expr)}"]
    return "\n".join(text)


# ---------------------------------------------------------------- definition and symbols
def definition(lines: list[str], line: int, character: int, spec: M.Spec | None) -> Span | None:
    """Where the name at the cursor is defined: a constant's `const` line, a let's, parameter's
    or disturbance's name, a signal in the system's list, a metric's name."""
    found = word_at(lines, line, character)
    if found is None or spec is None:
        return None
    word = found[0]
    for c in spec.consts:
        if c.name == word:
            return c.span
    for named in [*spec.lets, *spec.parameters, *spec.disturbances]:
        if named.name.name == word:
            return named.name.span
    for name, _, _, node in signals(spec):
        if name == word:
            return node.span
    for prop in spec.properties:
        if prop.name.name == word:
            return prop.name.span
    return None


def _head(span: Span, word: str) -> T.Range:
    """The range of the keyword a section starts with (a symbol's selection range)."""
    return T.Range(start=T.Position(line=span.line - 1, character=span.column - 1),
                   end=T.Position(line=span.line - 1, character=span.column - 1 + len(word)))


def symbols(spec: M.Spec | None) -> list[T.DocumentSymbol]:
    """The outline: the spec, constants, sections (the system with its signals), constraints and
    stability margins, in the order written."""
    if spec is None:
        return []
    out: list[tuple[tuple[int, int], T.DocumentSymbol]] = []

    def add(span, symbol):
        out.append(((span.line, span.column), symbol))

    if spec.name is not None and spec.name.span is not None:
        r = span_range(spec.name.span)
        add(spec.name.span, T.DocumentSymbol(name=spec.name.name, kind=T.SymbolKind.Module,
                                             range=r, selection_range=r, detail="spec"))
    for c in spec.consts:
        if c.span is None:
            continue
        end = c.value.span or c.span
        whole = T.Range(start=T.Position(line=c.span.line - 1, character=0),
                        end=span_range(end).end)
        add(c.span, T.DocumentSymbol(name=c.name, kind=T.SymbolKind.Constant, range=whole,
                                     selection_range=span_range(c.span),
                                     detail=_const_text(c).split(" = ", 1)[1]))
    for named in [*spec.parameters, *spec.disturbances, *spec.lets]:
        if named.span is None or named.name.span is None:
            continue
        detail = (f"{named.section} in {unparse(named.interval.expr)}"
                  if isinstance(named, M.Uncertain) else f"let = {unparse(named.expr)}")
        add(named.name.span, T.DocumentSymbol(
            name=named.name.name, kind=T.SymbolKind.Variable, detail=detail,
            range=span_range(named.span), selection_range=span_range(named.name.span)))
    for section in ("system", "backup", "policy", "scenarios", "objective", "train", "verify"):
        node = getattr(spec, section)
        if node is None or node.span is None:
            continue
        kind = getattr(node, "kind", None)
        children = []
        if section == "system":
            children = [T.DocumentSymbol(name=name, kind=T.SymbolKind.Field, detail=f"{role} "
                                         f"{index}", range=span_range(s.span),
                                         selection_range=span_range(s.span))
                        for name, role, index, s in signals(spec) if s.span is not None]
        add(node.span, T.DocumentSymbol(
            name=section + (f" {kind}" if kind else ""), kind=T.SymbolKind.Namespace,
            range=span_range(node.span), selection_range=_head(node.span, section),
            children=children or None))
    for prop in spec.properties:
        if prop.span is None or prop.name.span is None:
            continue
        add(prop.span, T.DocumentSymbol(name=prop.name.name, kind=T.SymbolKind.Property,
                                        detail=f"{prop.section}: {unparse(prop.formula)}",
                                        range=span_range(prop.span),
                                        selection_range=span_range(prop.name.span)))
    return [s for _, s in sorted(out, key=lambda item: item[0])]


# ---------------------------------------------------------------- completion
def _context(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The open blocks at the end of `text` ((block, kind) from the words before each `{`) and
    the tokens of the entry being written (since the last line break or brace)."""
    stack: list[tuple[str, str]] = []
    current: list[str] = []
    depth = 0  # open ( and [ of the entry being written
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok.startswith("#"):
            continue
        if tok == "\n":
            if depth > 0 or current and current[-1] in ("=", ":", ",", "+", "-", "*", "/", "^",
                                                        "->", "and", "or", "until", "not"):
                continue  # an entry or formula continued on the next line
            current = []
        elif tok == "{":
            depth = 0
            words = [w for w in current if _WORD.fullmatch(w)]
            stack.append((words[0] if words else "", words[1] if len(words) > 1 else ""))
            current = []
        elif tok == "}":
            if stack:
                stack.pop()
            current, depth = [], 0
        else:
            depth += (tok in "([") - (tok in ")]")
            current.append(tok)
    return stack, current


_OPERATORS = ("=", ",", "(", "[", "+", "-", "*", "/", "^", "<=", ">=", "<", ">", "->", ":")


def _last_entry(tokens: list[str], entries) -> list[str]:
    """The tokens of the last entry of a one-line block, `{ hidden = [64]  activation = `: it
    starts at an entry word, outside brackets, right after a finished value."""
    start, depth = 0, 0
    for i, tok in enumerate(tokens):
        if depth == 0 and i > 0 and tok in entries and tokens[i - 1] not in _OPERATORS:
            start = i
        depth += (tok in "([") - (tok in ")]")
    return tokens[start:]


def _items(words, kind, detail=None) -> list[T.CompletionItem]:
    return [T.CompletionItem(label=w, kind=kind, detail=detail(w) if detail else None)
            for w in words]


def _names(spec: M.Spec | None, formula: bool, observed: bool = False
           ) -> list[T.CompletionItem]:
    """The names an expression may use: signals, lets, parameters and disturbances (in
    formulas; `observed`: what a controller can see, no inputs or disturbances), constants,
    functions."""
    items = []
    if formula:
        items += [T.CompletionItem(label=name, kind=T.CompletionItemKind.Variable,
                                   detail=f"{role} {index}")
                  for name, role, index, _ in signals(spec)
                  if not (observed and role in ("input", "action"))]
        uncertain = [*getattr(spec, "parameters", []),
                     *([] if observed else getattr(spec, "disturbances", []))]
        items += [T.CompletionItem(label=u.name.name, kind=T.CompletionItemKind.Variable,
                                   detail=f"{u.section} in {unparse(u.interval.expr)}")
                  for u in uncertain]
        items += [T.CompletionItem(label=x.name.name, kind=T.CompletionItemKind.Variable,
                                   detail=f"let = {unparse(x.expr)}")
                  for x in getattr(spec, "lets", [])]
        items += _items(("state", "input"), T.CompletionItemKind.Variable,
                        lambda w: f"the {w} vector")
        items += _items(SIGNAL_FUNCTIONS, T.CompletionItemKind.Function, _function_detail)
        items += _items(("spectral_radius",), T.CompletionItemKind.Variable,
                        lambda w: "closed loop at the origin")
        items += _items(FORMULA_KEYWORDS, T.CompletionItemKind.Keyword)
    else:
        items += _items(NUMERIC_FUNCTIONS, T.CompletionItemKind.Function, _function_detail)
    items += [T.CompletionItem(label=c.name, kind=T.CompletionItemKind.Constant,
                               detail=_const_text(c).split(" = ", 1)[1])
              for c in getattr(spec, "consts", [])]
    items += _items(BUILTIN_CONSTANTS, T.CompletionItemKind.Constant, lambda w: "constant")
    return items


_FORMULA_ENTRIES = {("objective", "cost"): ("stage", "terminal"), ("system", "discrete"):
                    ("next",), ("system", "ode"): ("der",)}


def completion(lines: list[str], line: int, character: int,
               spec: M.Spec | None) -> list[T.CompletionItem]:
    """What fits at the cursor: section words at the top level, a section's kinds after its word,
    a block's entry words at an entry's start, an entry's choices (solvers, activations, …)
    after it, and signal, constant and function names in formulas and values."""
    before = "\n".join(lines[:line] + [lines[line][:character] if line < len(lines) else ""])
    m = re.search(r"[A-Za-z_][A-Za-z0-9_]*$", before)
    if m:
        before = before[:m.start()]  # the word being typed is the prefix the client filters by
    here = before[before.rfind("\n") + 1:]
    if _TOKEN.sub(lambda m: "" if m.group().startswith('"') else m.group(), here).count('"') \
            or re.search(r'#[^\n]*\Z', _TOKEN.sub(lambda m: "" if m.group().startswith('"')
                                                   else m.group(), here)):
        return []  # inside a comment or a string
    stack, current = _context(before)
    vocab = vocabulary()
    if not stack:
        if not current:
            return _items(WORDS, T.CompletionItemKind.Keyword,
                          lambda w: KEYWORD_DOCS[w].split(":")[0].strip("`"))
        head = current[0]
        if head in KINDS_OF and len(current) == 1:
            return _items(vocab[head], T.CompletionItemKind.Class, lambda w: f"{head} kind")
        if head in PROPERTY_WORDS and ":" in current:
            after = current[current.index(":") + 1:]
            options = [w for w in vocab[head][""] if w not in ("name", "formula")]
            extra = _items(options, T.CompletionItemKind.Property, lambda w: "option") \
                if after else []
            return _names(spec, formula=True) + extra
        if head == "const" and "=" in current:
            return _names(spec, formula=False)
        if head == "let" and "=" in current:  # a let is a signal expression
            return _names(spec, formula=True)
        if head in ("parameter", "disturbance") and "in" in current:
            return _names(spec, formula=False)
        return []
    block, kind = stack[-1]
    if block == "equilibrium":  # `equilibrium { T1 = … }`: a state or input, then a number
        if "=" in current:
            return _names(spec, formula=False)
        return [T.CompletionItem(label=name, kind=T.CompletionItemKind.Variable,
                                 detail=f"{role} {index}")
                for name, role, index, _ in signals(spec)] if len(current) <= 1 else []
    if len(stack) == 1 and block not in KINDS_OF:
        kind = ""  # `train {`, `scenarios {`: a block without kinds
    entries = vocab.get(block, {}).get(kind)
    if entries is None:  # an unknown kind: every entry of the block
        entries = {w: c for table in vocab.get(block, {}).values() for w, c in table.items()}
    current = _last_entry(current, entries)
    if not current:  # the YAML key verify_every is written `verify every` in .scpo
        return _items([w.replace("_every", " every") for w in entries],
                      T.CompletionItemKind.Field, lambda w: f"{block} {kind}".strip())
    entry = current[0]
    values = [w for w in current[1:] if w != "="]
    if entry in entries and entries[entry] and not values:
        return _items(entries[entry], T.CompletionItemKind.EnumMember, lambda w: entry)
    if entry in ("state", "input", "observation", "action", "inputs", "targets"):
        return []  # naming signals, not using them
    if entry == "initial" and block == "scenarios":
        if len(values) == 0:
            return [T.CompletionItem(label=name, kind=T.CompletionItemKind.Variable,
                                     detail=f"{role} {index}")
                    for name, role, index, _ in signals(spec) if role in ("state", "observation")]
        return _names(spec, formula=False) if "in" in values else []
    if entry == "observe" and block in ("policy", "backup"):
        return _names(spec, formula=True, observed=True)
    formula = entry in _FORMULA_ENTRIES.get((block, kind), ())
    return _names(spec, formula=formula)


# ---------------------------------------------------------------- formatting
def formatted(text: str, path: str) -> str | None:
    """`scpo fmt`'s canonical text, or None when the document has errors (or is YAML with
    comments, which a rewrite would lose): the editor then changes nothing."""
    result = parse_model(text, path=path)
    if not result.ok:
        return None
    if syntax_of(path) == "yaml":
        return None if count_comments(text) else format_yaml(result.spec)
    return format_spec(result.spec, find_comments(text))
