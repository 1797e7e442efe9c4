"""`.scpo` text → document tree (and expressions), with spans; syntax errors → diagnostics."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lark import Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedToken, UnexpectedInput, VisitError

from scpo_spec.language import expr as E
from scpo_spec.language.diagnostics import Diagnostic
from scpo_spec.language.document import Entry, Map, Scalar, Seq
from scpo_spec.language.grammar import MAX_DEPTH, deepest_span, depth_of, malformed_number, \
    parser, syntax_diagnostic, token_span, tree_span
from scpo_spec.language.sections import PROPERTIES
from scpo_spec.language.source import Source, Span


@dataclass
class Comment:
    line: int
    column: int
    text: str  # including the leading '#'
    own_line: bool  # nothing but whitespace before it on its line


def find_comments(text: str) -> list[Comment]:
    """Every `# …` comment (outside strings); strings never span lines, so a line scan is exact."""
    out = []
    for number, line in enumerate(text.split("\n"), start=1):  # lark counts '\n' only
        in_string, escaped = False, False
        for col, ch in enumerate(line):
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "#":
                out.append(Comment(number, col + 1, line[col:].rstrip(),
                                   own_line=not line[:col].strip()))
                break
    return out


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def unquote(token: str) -> str:
    """The text of a STRING token: quotes removed, escapes (\\" \\\\ \\n \\t) decoded."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), token[1:-1])


class MalformedNumber(Exception):
    """A BAD_NUMBER token reached the tree: reported as one located diagnostic."""

    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


@dataclass
class _Equation:
    """`next p = …` inside a block, before the block groups its equations."""

    key: str
    key_span: Span
    span: Span | None
    entry: Entry  # target → expression


class _ToDocument(Transformer):
    """Bottom-up conversion; rule names are the grammar's (and its aliases)."""

    def __init__(self, source: Source):
        super().__init__(visit_tokens=False)
        self.source = source

    def _span(self, meta) -> Span | None:
        if getattr(meta, "empty", True):
            return None
        return Span(file=self.source.path, line=meta.line, column=meta.column,
                    end_line=meta.end_line, end_column=meta.end_column)

    def _tok(self, tok: Token) -> Span:
        return token_span(self.source, tok)

    # ---- expressions ----
    @v_args(meta=True)
    def bad_number(self, meta, children):
        raise MalformedNumber(malformed_number(self._tok(children[0]), str(children[0])))

    @v_args(meta=True)
    def number(self, meta, children):
        return E.Num(value=float(children[0]), span=self._span(meta))

    @v_args(meta=True)
    def name(self, meta, children):
        return E.Name(id=str(children[0]), span=self._span(meta))

    @v_args(meta=True)
    def string(self, meta, children):
        return E.Str(value=unquote(str(children[0])), span=self._span(meta))

    @v_args(meta=True)
    def call(self, meta, children):
        args = [c for c in children[1:] if c is not None]
        return E.Call(func=str(children[0]), args=args, span=self._span(meta))

    @v_args(meta=True)
    def vector(self, meta, children):
        return E.Vector(items=[c for c in children if c is not None], span=self._span(meta))

    @v_args(meta=True)
    def neg(self, meta, children):
        (arg,) = children
        if isinstance(arg, E.Num):  # a negative literal is a number, in both syntaxes
            return E.Num(value=-arg.value, span=self._span(meta))
        return E.Unary(op="-", arg=arg, span=self._span(meta))

    @v_args(meta=True)
    def pos(self, meta, children):
        return children[0]

    def _binary(op):
        @v_args(meta=True)
        def make(self, meta, children):
            return E.Binary(op=op, left=children[0], right=children[1], span=self._span(meta))
        return make

    add, sub, mul, div, pow = _binary("+"), _binary("-"), _binary("*"), _binary("/"), \
        _binary("^")

    def _compare(op):
        @v_args(meta=True)
        def make(self, meta, children):
            return E.Compare(op=op, left=children[0], right=children[1], span=self._span(meta))
        return make

    le, ge, lt, gt = _compare("<="), _compare(">="), _compare("<"), _compare(">")

    @v_args(meta=True)
    def within(self, meta, children):
        return E.Within(arg=children[0], interval=children[1], span=self._span(meta))

    @v_args(meta=True)
    def and_(self, meta, children):
        args = []
        for c in children:
            args.extend(c.args if isinstance(c, E.And) else [c])
        return E.And(args=args, span=self._span(meta))

    @v_args(meta=True)
    def or_(self, meta, children):
        args = []
        for c in children:
            args.extend(c.args if isinstance(c, E.Or) else [c])
        return E.Or(args=args, span=self._span(meta))

    @v_args(meta=True)
    def implies(self, meta, children):
        left, _, right = children
        return E.Implies(left=left, right=right, span=self._span(meta))

    @v_args(meta=True)
    def not_(self, meta, children):
        return E.Not(arg=children[-1], span=self._span(meta))

    @v_args(meta=True)
    def until(self, meta, children):
        left, _, window, right = children
        return E.Until(left=left, right=right, window=window, span=self._span(meta))

    @v_args(meta=True)
    def window(self, meta, children):
        return E.Window(start=children[0], end=children[1], span=self._span(meta))

    @v_args(meta=True)
    def temporal(self, meta, children):
        op, window, body = children
        return E.Temporal(op=str(op), window=window, body=body, span=self._span(meta))

    @v_args(meta=True)
    def at_final(self, meta, children):
        return E.Temporal(op="final", body=children[0], span=self._span(meta))

    @v_args(meta=True)
    def at_final_postfix(self, meta, children):
        return E.Temporal(op="final", body=children[0], postfix=True, span=self._span(meta))

    # ---- document structure ----
    @v_args(meta=True)
    def block(self, meta, children):
        """The block's entries; the equations of one word (`next p = …`, `next v = …`) become
        ONE entry `next` whose value maps each state to its expression, in the order written
        (duplicates kept, so the builder reports the second where it is written) — the shape
        of the YAML twin's `next: {p: "…", v: "…"}`."""
        entries: list[Entry] = []
        groups: dict[str, Entry] = {}
        for child in children:
            if isinstance(child, _Equation):
                group = groups.get(child.key)
                if group is None:
                    group = groups[child.key] = Entry(child.key, child.key_span,
                                                      Map(span=child.span, entries=[]))
                    entries.append(group)
                group.value.entries.append(child.entry)
                if group.value.span is not None and child.span is not None:
                    group.value.span = group.value.span.to(child.span)
            else:
                entries.append(child)
        return Map(span=self._span(meta), entries=entries)

    @v_args(meta=True)
    def equation(self, meta, children):
        key, target, value = children
        return _Equation(str(key), self._tok(key), self._span(meta),
                         Entry(str(target), self._tok(target),
                               Scalar(span=value.span, expr=value)))

    @v_args(meta=True)
    def assign(self, meta, children):
        key, value = children
        return Entry(str(key), self._tok(key), Scalar(span=value.span, expr=value))

    @v_args(meta=True)
    def sub_block(self, meta, children):
        key, kind, block = children
        block.entries.insert(0, Entry("kind", self._tok(kind),
                                      Scalar(span=self._tok(kind),
                                             expr=E.Name(id=str(kind), span=self._tok(kind)))))
        block.span = self._span(meta)
        return Entry(str(key), self._tok(key), block)

    @v_args(meta=True)
    def nested(self, meta, children):
        key, block = children
        block.span = self._span(meta)
        return Entry(str(key), self._tok(key), block)

    @v_args(meta=True)
    def every(self, meta, children):
        """`verify every 1` is the entry `verify_every` (the YAML twin's key)."""
        key, value = children
        return Entry(f"{key}_every", self._tok(key), Scalar(span=value.span, expr=value))

    @v_args(meta=True)
    def setting(self, meta, children):
        key, *values = children
        items = [Scalar(span=v.span, expr=v) for v in values]
        if len(items) == 1:
            return Entry(str(key), self._tok(key), items[0])
        span = items[0].span.to(items[-1].span) if items[0].span else None
        return Entry(str(key), self._tok(key), Seq(span=span, items=items))

    @v_args(meta=True)
    def option(self, meta, children):
        key, value = children
        return Entry(str(key), self._tok(key), Scalar(span=value.span, expr=value))

    @v_args(meta=True)
    def spec_header(self, meta, children):
        name, title = children
        entries = [Entry("spec", self._tok(name),
                         Scalar(span=self._tok(name), expr=E.Name(id=str(name),
                                                                  span=self._tok(name))))]
        if title is not None:
            t = E.Str(value=unquote(str(title)), span=self._tok(title))
            entries.append(Entry("title", self._tok(title), Scalar(span=t.span, expr=t)))
        return ("header", self._span(meta), entries)

    @v_args(meta=True)
    def const_def(self, meta, children):
        name, value = children
        return ("const", self._span(meta),
                Entry(str(name), self._tok(name), Scalar(span=value.span, expr=value)))

    @v_args(meta=True)
    def let_def(self, meta, children):
        name, value = children
        return ("let", self._span(meta),
                Entry(str(name), self._tok(name), Scalar(span=value.span, expr=value)))

    @v_args(meta=True)
    def uncertain(self, meta, children):
        """`parameter a in [-2, -1]`: the builder reads the `in` (as it reads `initial`)."""
        keyword, value = children
        return ("uncertain", self._span(meta),
                Entry(str(keyword), self._tok(keyword), Scalar(span=value.span, expr=value)))

    @v_args(meta=True)
    def labelled(self, meta, children):
        keyword, kind, label = children
        return self.section(meta, [keyword, kind, label, Map(span=self._span(meta))])

    @v_args(meta=True)
    def section(self, meta, children):
        keyword, kind, label, block = children
        if label is not None:
            text = unquote(str(label))
            block.entries.insert(0, Entry("id", self._tok(label),
                                          Scalar(span=self._tok(label),
                                                 expr=E.Str(value=text,
                                                            span=self._tok(label)))))
        if kind is not None:
            block.entries.insert(0, Entry("kind", self._tok(kind),
                                          Scalar(span=self._tok(kind),
                                                 expr=E.Name(id=str(kind),
                                                             span=self._tok(kind)))))
        block.span = self._span(meta)
        return ("section", self._tok(keyword), Entry(str(keyword), self._tok(keyword), block))

    @v_args(meta=True)
    def property(self, meta, children):
        keyword, name, formula, *options = children
        entries = [Entry("name", self._tok(name),
                         Scalar(span=self._tok(name), expr=E.Name(id=str(name),
                                                                  span=self._tok(name)))),
                   Entry("formula", formula.span, Scalar(span=formula.span, expr=formula))]
        entries.extend(options)
        return ("property", self._tok(keyword),
                Entry(str(keyword), self._tok(keyword), Map(span=self._span(meta),
                                                            entries=entries)))

    @v_args(meta=True)
    def start(self, meta, children):
        return children


# The keyword of a repeated property maps to the list key of the YAML twin.
PROPERTY_LISTS = {s.word: s.key for s in PROPERTIES}


def read_scpo(source: Source) -> tuple[Map | None, list[Diagnostic]]:
    """Parse `.scpo` text into the document tree; never raises on bad input."""
    text, skipped = source.text, []
    while True:
        try:
            tree = parser().parse(text, start="start")
            break
        except UnexpectedInput as err:
            diagnostic = syntax_diagnostic(source, err)
            cut = _unknown_item(text, err) if len(skipped) < 50 else None
            if cut is None:
                return None, [*skipped, diagnostic]
            # an unknown top-level word: report it, blank its item out (keeping every line and
            # column), and read on so the other errors are still found
            skipped.append(diagnostic)
            start, end = cut
            text = text[:start] + "".join(c if c == "\n" else " " for c in text[start:end]) \
                + text[end:]
    if depth_of(tree) > MAX_DEPTH:
        return None, [Diagnostic(message=f"nesting is too deep (more than {MAX_DEPTH} levels)",
                                 span=deepest_span(source, tree),
                                 hint="split the expression with `const` definitions")]
    try:
        items = _ToDocument(source).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, MalformedNumber):
            return None, [err.orig_exc.diagnostic]
        return None, [Diagnostic(  # pragma: no cover - a bug in the transformer, reported cleanly
            message=f"internal error while reading: {err.orig_exc}", span=None)]
    return assemble(items, source), skipped


def _unknown_item(text: str, err: UnexpectedInput) -> tuple[int, int] | None:
    """Where an unknown section or property starts and ends (its `{ … }` block, or else its
    line), when `err` is a name where a top-level item should start; None otherwise."""
    if not isinstance(err, UnexpectedToken) or err.token.type != "NAME" or not (
            {"SECTION", "PROPERTY", "SPEC"} & set(err.expected or ())):
        return None
    start = err.token.start_pos
    if start is None:
        return None
    depth, in_string, escaped, i = 0, False, False, start
    while i < len(text):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"' or c == "\n":
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth <= 0:
                return start, i + 1
        elif c == "\n" and depth == 0:
            return start, i
        i += 1
    return (start, len(text)) if depth == 0 else None


def assemble(items, source: Source) -> Map:
    """Top-level items → one document map shaped like the YAML twin."""
    doc = Map(span=Span(file=source.path, line=1, column=1, end_line=1, end_column=1))
    maps: dict[str, Map] = {}  # `const`s and `let`s: one mapping each, as in YAML
    lists: dict[str, Seq] = {}
    for kind, span, payload in items:
        if kind == "header":
            doc.entries.extend(payload)
        elif kind in ("const", "let"):
            if kind not in maps:
                maps[kind] = Map(span=span)
                doc.entries.append(Entry(kind, span, maps[kind]))
            maps[kind].entries.append(payload)
        elif kind == "uncertain":  # `parameter a in [lo, hi]`: a list of `in`s per keyword
            if payload.key not in lists:
                lists[payload.key] = Seq(span=span)
                doc.entries.append(Entry(payload.key, span, lists[payload.key]))
            lists[payload.key].items.append(payload.value)
        elif kind == "section":
            doc.entries.append(payload)
        elif kind == "property":
            key = PROPERTY_LISTS[payload.key]
            if key not in lists:
                lists[key] = Seq(span=payload.value.span)
                doc.entries.append(Entry(key, span, lists[key]))
            lists[key].items.append(payload.value)
    return doc


def parse_expression(text: str, source: Source, line: int = 1, column: int = 1) \
        -> tuple[E.Node | None, list[Diagnostic]]:
    """Parse one expression (a YAML value written in the expression language).

    Spans are shifted to where the text sits in its file (`line`, `column`)."""
    inner = Source(path=source.path, text=text)
    try:
        tree = parser().parse(text, start="expr")
    except UnexpectedInput as err:
        d = syntax_diagnostic(inner, err)
        return None, [_shift(d, line, column)]
    if depth_of(tree) > MAX_DEPTH:
        return None, [Diagnostic(message=f"nesting is too deep (more than {MAX_DEPTH} levels)",
                                 span=Span(file=source.path, line=line, column=column,
                                           end_line=line, end_column=column + 1))]
    try:
        result = _ToDocument(inner).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, MalformedNumber):
            return None, [_shift(err.orig_exc.diagnostic, line, column)]
        raise
    if line != 1 or column != 1:
        for node in E.walk(result):
            if node.span is not None:
                node.span = _shift_span(node.span, line, column)
    return result, []


def _shift_span(span: Span, line: int, column: int) -> Span:
    col = span.column + column - 1 if span.line == 1 else span.column
    end_col = span.end_column + column - 1 if span.end_line == 1 else span.end_column
    return Span(file=span.file, line=span.line + line - 1, column=col,
                end_line=span.end_line + line - 1, end_column=end_col)


def _shift(d: Diagnostic, line: int, column: int) -> Diagnostic:
    if d.span is not None:
        d.span = _shift_span(d.span, line, column)
    return d
