"""`scpo fmt`: a model (and the source's comments) → canonical `.scpo` text.

Idempotent, and lossless: every comment is kept, placed before the unit that follows it or after
the unit it trailed."""

from __future__ import annotations

from dataclasses import dataclass, field

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language.layout import entries
from scpo_spec.language.scpo_reader import Comment
from scpo_spec.language.source import Span

INDENT = "    "
# Sections whose entries LANGUAGE.md writes as `key = value`; the rest as `key value`.
_ASSIGN_STYLE = (M.LinearSystem, M.PendulumSystem, M.StaticSystem, M.GymnasiumSystem,
                 M.LqrBackup, M.LinearBackup, M.MlpPolicy, M.LinearPolicy, M.LinearExpert,
                 M.NormalStates, M.UniformStates, M.SgdOptimizer, M.AdamOptimizer,
                 M.RayExecutor)


@dataclass
class Line:
    text: str
    anchor: tuple[int, int] | None = None  # where this unit sits in the source, for comments
    indent: int = 0
    leading: list[str] = field(default_factory=list)
    trailing: list[str] = field(default_factory=list)
    blank_before: bool = False


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
    if isinstance(value, E.EXPR_NODES):
        return E.unparse(value)
    raise TypeError(f"cannot format {type(value).__name__}")


def _inline_block(node: M.Node) -> str:
    kind = getattr(node, "kind", "")
    parts = [f"{k} {_sep(node)}{value_text(v)}" for k, v in entries(node)]
    body = "  ".join(parts)
    if not body and isinstance(node, M.LocalExecutor):
        return kind  # `executor local`: a kind with nothing to set
    return f"{kind} {{ {body} }}" if body else f"{kind} {{ }}"


def _sep(node: M.Node) -> str:
    return "= " if isinstance(node, _ASSIGN_STYLE) else ""


def _section(keyword: str, node: M.Node, label: str = "") -> list[Line]:
    kind = getattr(node, "kind", None)
    head = " ".join(p for p in (keyword, kind if isinstance(kind, str) else None, label) if p)
    lines = [Line(f"{head} {{", _start(node.span), blank_before=True)]
    for key, value in entries(node):
        if key == "id" and isinstance(node, M.GymnasiumSystem):
            continue
        if key == "initial":
            for rng in value:
                lines.append(Line(f"initial {rng.signal.name} in {value_text(rng.interval)}",
                                  _start(rng.span), indent=1))
            continue
        anchor = _start(getattr(value, "span", None) or (value[0].span if isinstance(
            value, list) and value else None))
        if isinstance(value, M.Node) and hasattr(value, "kind") and not isinstance(
                value, M.Aggregate):
            text = f"{key} {_inline_block(value)}"
        elif isinstance(value, list):  # signal names: `state theta, omega`
            text = f"{key} {value_text(value)}"
        else:
            text = f"{key} {_sep(node)}{value_text(value)}"
        lines.append(Line(text, anchor, indent=1))
    lines.append(Line("}", _end(node.span)))
    return lines


def _property(prop: M.Property) -> Line:
    text = f"{prop.section} {prop.name.name}: {E.unparse(prop.formula)}"
    for option in ("smoothness", "margin", "lipschitz"):
        q = getattr(prop, option)
        if q is not None:
            text += f"  {option} {value_text(q)}"
    return Line(text, _start(prop.span))


def layout(spec: M.Spec) -> list[Line]:
    lines: list[Line] = []
    if spec.name is not None:
        title = f" {value_text(spec.title)}" if spec.title else ""
        lines.append(Line(f"spec {spec.name.name}{title}", _start(spec.name.span)))
    for i, const in enumerate(spec.consts):
        lines.append(Line(f"const {const.name} = {value_text(const.value)}",
                          _start(const.span), blank_before=(i == 0)))
    if spec.system is not None:
        label = value_text(spec.system.env_id) if isinstance(spec.system, M.GymnasiumSystem) \
            else ""
        lines += _section("system", spec.system, label)
    if spec.backup is not None:
        lines += _section("backup", spec.backup)
    if spec.policy is not None:
        lines += _section("policy", spec.policy)
    if spec.scenarios is not None:
        lines += _section("scenarios", spec.scenarios)
    for group in (spec.constraints, spec.stability):
        for i, prop in enumerate(group):
            line = _property(prop)
            line.blank_before = i == 0
            lines.append(line)
    if spec.objective is not None:
        lines += _section("objective", spec.objective)
    if spec.train is not None:
        lines += _section("train", spec.train)
    return lines


def attach_comments(lines: list[Line], comments: list[Comment]) -> list[str]:
    """Place each comment: own-line ones before the next unit, trailing ones after theirs."""
    tail: list[str] = []
    anchored = [(ln.anchor, i) for i, ln in enumerate(lines) if ln.anchor is not None]
    for c in comments:
        pos = (c.line, c.column)
        if c.own_line:
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


def format_spec(spec: M.Spec, comments: list[Comment] | None = None) -> str:
    """Canonical `.scpo` text of a model."""
    lines = layout(spec)
    tail = attach_comments(lines, comments or [])
    out: list[str] = []
    for ln in lines:
        if ln.blank_before and out:
            out.append("")
        pad = INDENT * ln.indent
        out.extend(pad + c for c in ln.leading)
        text = pad + ln.text
        if ln.trailing:
            text += "  " + " ".join(ln.trailing)
        out.append(text)
    if tail:
        if out:
            out.append("")
        out.extend(tail)
    return "\n".join(out) + "\n"
