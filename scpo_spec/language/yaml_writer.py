"""A model → its YAML twin (LANGUAGE.md): literal numbers stay YAML numbers and lists; anything
written with constants or arithmetic stays a string in the expression language."""

from __future__ import annotations

from typing import Any

import yaml

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language import sections as S
from scpo_spec.language.layout import entries


def _literal(e: E.Node) -> Any:
    """Plain numbers and lists of them as YAML data; None when the text must stay a string."""
    if isinstance(e, E.Num):
        v = e.value
        return int(v) if v == int(v) and abs(v) < 1e16 else v
    if isinstance(e, E.Vector):
        items = [_literal(i) for i in e.items]
        return None if any(i is None for i in items) else items
    return None


def _value(value) -> Any:
    if isinstance(value, M.Quantity):
        lit = _literal(value.expr)
        return lit if lit is not None else E.unparse(value.expr)
    if isinstance(value, M.Ident):
        return value.name
    if isinstance(value, M.Text):
        return value.value
    if isinstance(value, M.Aggregate):
        return "hard" if value.kind == "hard" else f"smooth({E.unparse(value.tau.expr)})"
    if isinstance(value, list) and value and isinstance(value[0], M.Signal):
        return [s.name for s in value]
    if isinstance(value, list) and value and isinstance(value[0], M.Equation):
        return {eq.state.name: E.unparse(eq.expr) for eq in value}  # `next: {p: "…"}`
    if isinstance(value, list) and value and isinstance(value[0], M.InitialRange):
        return {r.signal.name: _value(r.interval) for r in value}
    if isinstance(value, list) and value and isinstance(value[0], M.Assignment):
        return {a.signal.name: _value(a.value) for a in value}  # `equilibrium: {T1: …}`
    if isinstance(value, list) and all(isinstance(v, E.EXPR_NODES) for v in value):  # observe
        return [_literal(v) if _literal(v) is not None else E.unparse(v) for v in value]
    if isinstance(value, E.EXPR_NODES):
        return E.unparse(value)
    if isinstance(value, M.Node):
        return _mapping(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _mapping(node: M.Node) -> dict:
    out: dict[str, Any] = {}
    kind = getattr(node, "kind", None)
    if isinstance(kind, str) and not isinstance(node, M.Aggregate):
        out["kind"] = kind
    for key, value in entries(node):
        out[key] = _value(value)
    return out


def _property(prop: M.Property) -> dict:
    out: dict[str, Any] = {"name": prop.name.name, "formula": E.unparse(prop.formula)}
    for option in ("smoothness", "margin", "lipschitz"):
        q = getattr(prop, option)
        if q is not None:
            out[option] = _value(q)
    return out


def to_yaml_data(spec: M.Spec) -> dict:
    """The YAML twin's mapping, its sections in sections.WRITTEN's order."""
    doc: dict[str, Any] = {}
    for section in S.WRITTEN:
        key = section.key
        if key == "spec":
            if spec.name is not None:
                doc["spec"] = spec.name.name
            if spec.title is not None:
                doc["title"] = spec.title.value
        elif key == "const":
            if spec.consts:
                doc["const"] = {c.name: _value(c.value) for c in spec.consts}
        elif key in ("parameter", "disturbance"):
            group = spec.parameters if key == "parameter" else spec.disturbances
            if group:
                doc[key] = {u.name.name: _value(u.interval) for u in group}
        elif key == "let":
            if spec.lets:
                doc["let"] = {x.name.name: E.unparse(x.expr) for x in spec.lets}
        elif section in S.PROPERTIES:
            if getattr(spec, key):
                doc[key] = [_property(p) for p in getattr(spec, key)]
        elif getattr(spec, key) is not None:
            doc[key] = _mapping(getattr(spec, key))
    return doc


class _Dumper(yaml.SafeDumper):
    pass


class _Block(dict):
    """A mapping always written in block style (the top level of the document)."""


def _represent_list(dumper, data):
    # leaf lists (numbers, names) inline: `state: [theta, omega]`; nested structure as blocks
    flow = all(not isinstance(i, dict) for i in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper, data):
    flow = all(not isinstance(v, (dict, list)) or (isinstance(v, list) and all(
        not isinstance(i, (dict, list)) for i in v)) for v in data.values()) and len(data) <= 4
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(_Block, lambda d, data: d.represent_mapping(
    "tag:yaml.org,2002:map", data, flow_style=False))


def format_yaml(spec: M.Spec) -> str:
    data = to_yaml_data(spec)
    parts = []
    for key, value in data.items():  # top-level sections as blocks, separated by blank lines
        # allow_unicode=False: non-ASCII is escaped, so no character (U+0085, U+2028, …) can be
        # read back by YAML as a line break
        text = yaml.dump(_Block({key: value}), Dumper=_Dumper, sort_keys=False, allow_unicode=False,
                         width=100, default_flow_style=False)
        parts.append(text)
    return "\n".join(parts)
