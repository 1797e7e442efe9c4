"""The lark LALR parser for `.scpo`, built once per process; syntax errors become diagnostics."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from scpo_spec.language.diagnostics import Diagnostic, closest, meant_hint
from scpo_spec.language.sections import WORDS
from scpo_spec.language.source import Source, Span

MAX_DEPTH = 200         # nesting beyond this is refused with a diagnostic (no recursion blow-ups)
MAX_BYTES = 4 * 2**20   # a spec is a page of text, not megabytes

_TOKEN_WORDS = {
    "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "LPAR": "'('",
    "RPAR": "')'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "NAME": "a name",
    "NUMBER": "a number", "BAD_NUMBER": "a number", "STRING": "a string", "SECTION": "a section", "PROPERTY":
    "'constraint' or 'stability'", "SPEC": "'spec'", "CONST": "'const'", "LET": "'let'",
    "UNCERTAIN": "'parameter' or 'disturbance'", "EVERY": "'every'", "TEMPORAL":
    "'always' or 'eventually'", "UNTIL": "'until'", "NOT": "'not'", "IMPLIES": "'->'",
    "AT": "'at'", "FINAL": "'final'", "AND": "'and'", "OR": "'or'",
    "IN": "'in'", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'",
    "CIRCUMFLEX": "'^'", "LESSTHAN": "'<'", "MORETHAN": "'>'", "$END": "end of file",
    "__ANON_0": "'<='", "__ANON_1": "'>='",
}


def grammar_text() -> str:
    """The grammar: inside the installed wheel, or at the repository root in a source checkout."""
    packaged = resources.files("scpo_spec").joinpath("grammars/scpo.lark")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "grammars" / "scpo.lark").read_text("utf-8")


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    return Lark(grammar_text(), parser="lalr", propagate_positions=True,
                maybe_placeholders=True, start=["start", "expr"])


def token_span(source: Source, tok: Token) -> Span:
    end_line = tok.end_line or tok.line
    end_col = tok.end_column or (tok.column + len(tok))
    return Span(file=source.path, line=tok.line, column=tok.column, end_line=end_line,
                end_column=end_col)


def tree_span(source: Source, tree: Tree) -> Span | None:
    meta = tree.meta
    if getattr(meta, "empty", True):
        return None
    return Span(file=source.path, line=meta.line, column=meta.column, end_line=meta.end_line,
                end_column=meta.end_column)


def _describe(expected: set[str]) -> str:
    words = sorted({_TOKEN_WORDS.get(e, f"'{e.lower()}'") for e in expected})
    if len(words) > 8:
        words = words[:8] + ["…"]
    return ", ".join(words)


def malformed_number(span: Span, text: str) -> Diagnostic:
    """A number run into other characters (`1e-3e`), reported where it is written."""
    return Diagnostic(message=f"malformed number '{text}'", span=span,
                      hint="numbers are written like 12, 0.5, .5, 1e-3 or 2.5E+4; separate a "
                           "number from what follows with a space")


def syntax_diagnostic(source: Source, err: UnexpectedInput) -> Diagnostic:
    """One clear, located message for a lark syntax error."""
    if isinstance(err, UnexpectedCharacters):
        ch = source.text[err.pos_in_stream] if err.pos_in_stream < len(source.text) else ""
        span = source.span_at(err.pos_in_stream)
        if ch == '"':
            return Diagnostic(message="unterminated string", span=span,
                              hint='strings are written on one line: "like this"')
        return Diagnostic(message=f"unexpected character {ch!r}", span=span,
                          hint=f"expected {_describe(set(err.allowed or ()))}" if err.allowed
                          else None)
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken)
                                          and err.token.type == "$END"):
        offset = len(source.text.rstrip())
        span = source.span_at(max(offset - 1, 0))
        expected = set(getattr(err, "expected", ()) or ())
        hint = f"expected {_describe(expected)}" if expected else None
        if "RBRACE" in expected:
            hint = "a '{' is never closed; add the matching '}'"
        elif "RPAR" in expected or "RSQB" in expected:
            hint = "a bracket is never closed"
        return Diagnostic(message="unexpected end of file", span=span, hint=hint)
    if isinstance(err, UnexpectedToken):
        tok = err.token
        span = token_span(source, tok)
        if tok.type == "BAD_NUMBER":
            return malformed_number(span, str(tok))
        expected = set(err.expected or ())
        text = str(tok)
        hint = f"expected {_describe(expected)}" if expected else None
        if tok.type == "NAME" and ({"SECTION", "PROPERTY", "SPEC"} & expected):
            meant = closest(text, WORDS)
            if meant:
                return Diagnostic(message=f"unknown section '{text}'", span=span,
                                  hint=meant_hint(meant), code="unknown-section", meant=meant)
            hint = f"a section starts with one of {', '.join(WORDS)}"
        if expected == {"COLON"}:
            hint = "write `constraint NAME: FORMULA` (a name, then a colon)"
        sort = {"NAME": "name ", "NUMBER": "number ", "STRING": "string "}.get(tok.type, "")
        return Diagnostic(message=f"unexpected {sort}'{text}'" if text else "unexpected token",
                          span=span, hint=hint)
    return Diagnostic(message=str(err).splitlines()[0], span=None)


def depth_of(tree: Tree) -> int:
    """Nesting depth of a lark tree, computed without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))
    return deepest


def deepest_span(source: Source, tree: Tree) -> Span | None:
    best, best_depth, stack = tree, 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > best_depth and not getattr(node.meta, "empty", True):
            best, best_depth = node, depth
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))
    return tree_span(source, best)
