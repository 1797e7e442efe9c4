"""`scpo fmt`: a model (and the source's comments) → canonical `.scpo` text.

Idempotent, and lossless: every comment is kept, placed before the unit that follows it or after
the unit it trailed."""

from __future__ import annotations

from dataclasses import dataclass, field

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language import sections as S
from scpo_spec.language.layout import entries
from scpo_spec.language.scpo_reader import Comment
from scpo_spec.language.source import Span

INDENT = "    "
WIDTH = 100  # a short section with a kind stays on one line up to this width
# Sections whose entries LANGUAGE.md writes as `key = value`; the rest as `key value`.
_ASSIGN_STYLE = (M.LinearSystem, M.PendulumSystem, M.StaticSystem, M.GymnasiumSystem,
                 M.PythonSystem, M.Controller, M.LinearExpert, M.NormalStates,
                 M.UniformStates, M.SgdOptimizer, M.AdamOptimizer, M.RayExecutor)
# `system ode`: `dt = 0.02` but `integrator rk4`, `substeps 1` (as LANGUAGE-v2.md writes them)
_ASSIGN_KEYS = {M.OdeSystem: ("dt",)}
# Sections whose quoted label is an entry of the model: written after the kind, not inside.
_LABELLED = {M.GymnasiumSystem: "id", M.PythonSystem: "id", M.PythonPolicy: "id",
             M.FromPolicy: "id"}


@dataclass
class Line:
    text: str
    anchor: tuple[int, int] | None = None  # where this unit sits in the source, for comments
    indent: int = 0
    leading: list[str] = field(default_factory=list)
    trailing: list[str] = field(default_factory=list)
    blank_before: bool = False
    end: tuple[int, int] | None = None  # a one-line section: comments inside it go with it


def _start(span: Span | None) -> tuple[int, int] | None:
    return (span.line, span.column) if span else None


def _end(span: Span | None) -> tuple[int, int] | None:
    return (span.end_line, span.end_column - 1) if span else None


def value_text(value) -> str:
    if isinstance(value, M.Quantity):
        return E.unparse(value.expr)
    if isinstance(value, M.Ident):
        return value.name
    if isinstance(value, M.Text):
        return E.unparse(E.Str(value=value.value))
    if isinstance(value, M.Aggregate):
        return "hard" if value.kind == "hard" else f"smooth({value_text(value.tau)})"
    if isinstance(value, list) and value and isinstance(value[0], M.Signal):
        return ", ".join(s.name for s in value)
    if isinstance(value, list) and value and isinstance(value[0], M.Assignment):
        return "{ " + "  ".join(f"{a.signal.name} = {value_text(a.value)}" for a in value) + " }"
    if isinstance(value, list) and all(isinstance(v, E.EXPR_NODES) for v in value):  # observe
        return E.unparse(E.Vector(items=value))
    if isinstance(value, E.EXPR_NODES):
        return E.unparse(value)
    raise TypeError(f"cannot format {type(value).__name__}")


def _inline_block(node: M.Node) -> str:
    kind = getattr(node, "kind", "")
    parts = [f"{k} {_sep(node, k)}{value_text(v)}" for k, v in entries(node)]
    body = "  ".join(parts)
    if not body and isinstance(node, M.LocalExecutor):
        return kind  # `executor local`: a kind with nothing to set
    return f"{kind} {{ {body} }}" if body else f"{kind} {{ }}"


def _sep(node: M.Node, key: str = "") -> str:
    return "= " if isinstance(node, _ASSIGN_STYLE) or key in _ASSIGN_KEYS.get(type(node), ()) \
        else ""


def _is_equations(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], M.Equation)


def _entry_text(node: M.Node, key: str, value) -> str:
    if isinstance(value, M.Node) and hasattr(value, "kind") and not isinstance(value, M.Aggregate):
        return f"{key} {_inline_block(value)}"
    if key == "verify_every":  # `verify every 1`
        return f"verify every {value_text(value)}"
    if isinstance(value, list) and value and isinstance(value[0], (M.Signal, M.Assignment)):
        return f"{key} {value_text(value)}"  # `state theta, omega`, `equilibrium { u = 1 }`
    return f"{key} {_sep(node, key)}{value_text(value)}"


def _one_line(head: str, node: M.Node) -> str | None:
    """`backup lqr { Q = diag(1, 1)  R = diag(1) }`: how the shipped specs write a short section
    with a kind; None when it has nested blocks or would not fit.  Decided by the model alone,
    so the layout never depends on the source's (comments go before or after the line)."""
    if not isinstance(getattr(node, "kind", None), str):
        return None
    items = [(k, v) for k, v in entries(node) if not (k == _LABELLED.get(type(node)))]
    if not items or any(isinstance(v, M.Node) and hasattr(v, "kind") and not isinstance(
            v, M.Aggregate) or _is_equations(v) for _, v in items):
        return None  # nested blocks and equations are written one per line
    text = f"{head} {{ " + "  ".join(_entry_text(node, k, v) for k, v in items) + " }"
    return text if len(text) <= WIDTH else None


_BREAKS = (" + ", " - ", " * ", " / ")


def wrap(text: str, first: int, pad: str, width: int) -> str:
    """An unparsed expression broken before binary operators so that its lines fit: the first
    in `first` columns, the others in `width` after `pad`.  Each line ends at the shallowest
    bracket depth that fits, the latest such operator (newlines are free inside an expression)."""
    depth, spots = 0, []
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == " " and text[i:i + 3] in _BREAKS:
            spots.append((i, depth))
    lines, start = [], 0
    while True:
        room = first if not lines else width - len(pad)
        if len(text) - start <= room:
            break
        fits = [(d, -i) for i, d in spots if start < i <= start + room]
        later = [i for i, _ in spots if i > start]
        if not fits and not later:
            break
        cut = -min(fits)[1] if fits else later[0]
        lines.append(text[start:cut])
        start = cut + 1
    lines.append(text[start:])
    return ("\n" + pad).join(lines)


def _label(node: M.Node) -> str:
    """The quoted label written after a section's kind (`system python "mod:fn"`), or ""."""
    key = _LABELLED.get(type(node))
    value = next((v for k, v in entries(node) if k == key), None) if key else None
    return value_text(value) if value is not None else ""


def _section(keyword: str, node: M.Node) -> list[Line]:
    label = _label(node)
    kind = getattr(node, "kind", None)
    head = " ".join(p for p in (keyword, kind if isinstance(kind, str) else None, label) if p)
    if label and not any(k != _LABELLED.get(type(node)) for k, _ in entries(node)):
        return [Line(head, _start(node.span), blank_before=True, end=_end(node.span))]  # a label
    short = _one_line(head, node)
    if short is not None:
        return [Line(short, _start(node.span), blank_before=True, end=_end(node.span))]
    lines = [Line(f"{head} {{", _start(node.span), blank_before=True)]
    for key, value in entries(node):
        if key == _LABELLED.get(type(node)):
            continue
        if _is_equations(value):  # `next p = …`, one line each, in the order written
            for eq in value:
                head = f"{key} {eq.state.name} = "
                lines.append(Line(head + wrap(E.unparse(eq.expr), WIDTH - len(INDENT + head),
                                              INDENT * 2, WIDTH),
                                  _start(eq.span), indent=1))
            continue
        if key == "initial":
            for rng in value:
                lines.append(Line(f"initial {rng.signal.name} in {value_text(rng.interval)}",
                                  _start(rng.span), indent=1))
            continue
        if key == "equilibrium" and len(INDENT + _entry_text(node, key, value)) > WIDTH:
            lines.append(Line(f"{key} {{", _start(value[0].span), indent=1))
            lines += [Line(f"{a.signal.name} = {value_text(a.value)}", _start(a.span), indent=2)
                      for a in value]
            lines.append(Line("}", _end(value[-1].span), indent=1))
            continue
        anchor = _start(getattr(value, "span", None) or (value[0].span if isinstance(
            value, list) and value else None))
        lines.append(Line(_entry_text(node, key, value), anchor, indent=1))
    lines.append(Line("}", _end(node.span)))
    return lines


def _properties(group: list[M.Property]) -> list[Line]:
    """One line each, in columns (name, formula, options) as the shipped specs align them; the
    options column is only aligned while the formulas are short enough for it to stay readable."""
    heads = [f"{p.section} {p.name.name}:" for p in group]
    formulas = [E.unparse(p.formula) for p in group]
    options = ["  ".join(f"{o} {value_text(getattr(p, o))}" for o in ("smoothness", "margin",
                                                                       "lipschitz")
                         if getattr(p, o) is not None) for p in group]
    wh = max(map(len, heads), default=0)
    wf = max(map(len, formulas), default=0)
    lines = []
    for i, (prop, head, formula, opts) in enumerate(zip(group, heads, formulas, options)):
        text = f"{head.ljust(wh)} {formula}"
        if opts:
            text = (text.ljust(wh + 1 + wf) if wh + 1 + wf <= WIDTH - 30 else text) + "  " + opts
        lines.append(Line(text, _start(prop.span), blank_before=i == 0))
    return lines


def layout(spec: M.Spec) -> list[Line]:
    """The spec's lines, its sections in sections.WRITTEN's order."""
    lines: list[Line] = []
    for section in S.WRITTEN:
        lines += _WRITERS.get(section.word, _block)(spec, section)
    return lines


def _header(spec: M.Spec, section: S.Section) -> list[Line]:
    if spec.name is None:
        return []
    title = f" {value_text(spec.title)}" if spec.title else ""
    return [Line(f"spec {spec.name.name}{title}", _start(spec.name.span))]


def _consts(spec: M.Spec, section: S.Section) -> list[Line]:
    return [Line(f"const {const.name} = {value_text(const.value)}", _start(const.span),
                 blank_before=(i == 0)) for i, const in enumerate(spec.consts)]


def _uncertain(spec: M.Spec, section: S.Section) -> list[Line]:
    group = spec.parameters if section.word == "parameter" else spec.disturbances
    return [Line(f"{u.section} {u.name.name} in {value_text(u.interval)}", _start(u.span),
                 blank_before=(i == 0)) for i, u in enumerate(group)]


def _lets(spec: M.Spec, section: S.Section) -> list[Line]:
    lines = []
    for i, let in enumerate(spec.lets):
        head = f"let {let.name.name} = "
        lines.append(Line(head + wrap(E.unparse(let.expr), WIDTH - len(head), INDENT, WIDTH),
                          _start(let.span), blank_before=(i == 0)))
    return lines


def _property_lines(spec: M.Spec, section: S.Section) -> list[Line]:
    return _properties(getattr(spec, section.key))


def _block(spec: M.Spec, section: S.Section) -> list[Line]:
    node = getattr(spec, section.key)
    return [] if node is None else _section(section.word, node)


# the sections not written as one block (`_block`)
_WRITERS = {"spec": _header, "const": _consts, "parameter": _uncertain,
            "disturbance": _uncertain, "let": _lets, "constraint": _property_lines,
            "stability": _property_lines}


def attach_comments(lines: list[Line], comments: list[Comment]) -> list[str]:
    """Place each comment: own-line ones before the next unit, trailing ones after theirs."""
    tail: list[str] = []
    anchored = [(ln.anchor, i) for i, ln in enumerate(lines) if ln.anchor is not None]
    for c in comments:
        pos = (c.line, c.column)
        inside = [ln for ln in lines if ln.end is not None and ln.anchor < pos < ln.end]
        if inside:  # within a section now written on one line: before it, or after it
            (inside[0].leading if c.own_line else inside[0].trailing).append(c.text)
        elif c.own_line:
            after = [i for a, i in anchored if a > pos]
            if after:
                lines[min(after, key=lambda i: lines[i].anchor)].leading.append(c.text)
            else:
                tail.append(c.text)
        else:
            before = [i for a, i in anchored if a < pos]
            if before:
                lines[max(before, key=lambda i: (lines[i].anchor, i))].trailing.append(c.text)
            elif lines:
                lines[0].leading.append(c.text)
            else:
                tail.append(c.text)
    return tail


def _align_trailing(rows: list[tuple[str, str | None]]) -> list[str]:
    """Trailing comments of a run of code lines (same indent, no blank or comment line between)
    start in one column, as the shipped specs write them."""
    out = [code if note is None else f"{code}  {note}" for code, note in rows]
    run: list[int] = []

    def flush() -> None:
        noted = [i for i in run if rows[i][1] is not None]
        if len(noted) > 1:
            col = max(len(rows[i][0]) for i in noted) + 2
            for i in noted:
                out[i] = rows[i][0].ljust(col) + rows[i][1]
        run.clear()

    def indent(text: str) -> int:
        return len(text) - len(text.lstrip(" "))

    for i, (code, _) in enumerate(rows):
        if not code.strip() or code.lstrip().startswith("#") or "\n" in code or (
                run and indent(code) != indent(rows[run[-1]][0])):
            flush()
        if code.strip() and not code.lstrip().startswith("#") and "\n" not in code:
            run.append(i)
    flush()
    return out


def format_spec(spec: M.Spec, comments: list[Comment] | None = None) -> str:
    """Canonical `.scpo` text of a model."""
    lines = layout(spec)
    tail = attach_comments(lines, comments or [])
    rows: list[tuple[str, str | None]] = []  # (code or own-line comment or "", trailing comment)
    for ln in lines:
        if ln.blank_before and rows:
            rows.append(("", None))
        pad = INDENT * ln.indent
        rows.extend((pad + c, None) for c in ln.leading)
        rows.append((pad + ln.text, " ".join(ln.trailing) if ln.trailing else None))
    out = _align_trailing(rows)
    if tail:
        if out:
            out.append("")
        out.extend(tail)
    return "\n".join(out) + "\n"
