"""YAML text → the same document tree the `.scpo` reader makes (the YAML twin of LANGUAGE.md)."""

from __future__ import annotations

import yaml

from scpo_spec.language.diagnostics import Diagnostic
from scpo_spec.language.document import Entry, Map, Scalar, Seq, Value
from scpo_spec.language.grammar import MAX_DEPTH
from scpo_spec.language.source import Source, Span

MAX_NODES = 100_000  # YAML aliases can expand exponentially ("billion laughs")


def _span(source: Source, node: yaml.Node) -> Span:
    start, end = node.start_mark, node.end_mark
    return Span(file=source.path, line=start.line + 1, column=start.column + 1,
                end_line=end.line + 1, end_column=end.column + 1)


class _Convert:
    def __init__(self, source: Source):
        self.source = source
        self.constructor = yaml.SafeLoader("")
        self.errors: list[Diagnostic] = []
        self.budget = MAX_NODES

    def value(self, node: yaml.Node, depth: int = 0) -> Value | None:
        self.budget -= 1
        if self.budget < 0:
            if self.budget == -1:
                self.errors.append(Diagnostic(
                    message=f"the document expands to more than {MAX_NODES} values "
                            "(aliases repeated inside aliases?)", span=_span(self.source, node)))
            return None
        if depth > MAX_DEPTH:
            self.errors.append(Diagnostic(message=f"nesting is too deep (more than {MAX_DEPTH} "
                                                  "levels)", span=_span(self.source, node)))
            return None
        span = _span(self.source, node)
        if isinstance(node, yaml.ScalarNode):
            try:
                raw = self.constructor.construct_object(node, deep=True)
            except Exception:  # noqa: BLE001 - an odd YAML scalar (timestamp, binary, …)
                raw = node.value
            if not isinstance(raw, (str, int, float, bool)) and raw is not None:
                raw = node.value
            return Scalar(span=span, raw=raw, quoted=node.style in ("'", '"'))
        if isinstance(node, yaml.SequenceNode):
            items = [self.value(n, depth + 1) for n in node.value]
            return Seq(span=span, items=[i for i in items if i is not None])
        if isinstance(node, yaml.MappingNode):
            out = Map(span=span)
            pairs = list(node.value)
            while pairs:
                key, val = pairs.pop(0)
                if node.flow_style and _opens(val) > 0:
                    val = _rejoin(self, key, val, pairs)
                if not isinstance(key, yaml.ScalarNode):
                    self.errors.append(Diagnostic(message="a key must be a plain name",
                                                  span=_span(self.source, key)))
                    continue
                converted = self.value(val, depth + 1)
                if converted is not None:
                    out.entries.append(Entry(str(key.value), _span(self.source, key), converted))
            return out
        self.errors.append(Diagnostic(message="unsupported YAML node", span=span))
        return None


def _opens(node: yaml.Node) -> int:
    """Brackets a plain (unquoted) scalar leaves open: a formula YAML cut at a comma."""
    if not isinstance(node, yaml.ScalarNode) or node.style:
        return 0
    text = node.value
    return text.count("(") + text.count("[") - text.count(")") - text.count("]")


def _rejoin(self: _Convert, key: yaml.Node, val: yaml.ScalarNode, pairs: list) -> yaml.Node:
    """`{kind: cost, stage: quad(diag(1, 1), state)}`: YAML splits an unquoted formula at its
    commas into a value and bogus keys (`1)`, `state)`).  Glue the pieces back into one value, so
    the rest is checked as written, and say once that the formula must be quoted."""
    depth, used = _opens(val), 0
    end = val.end_mark
    for k, v in pairs:
        if depth <= 0:
            break
        used += 1
        for part in (k, v):
            if isinstance(part, yaml.ScalarNode) and not part.style:
                depth += _opens(part)
                if part.value:
                    end = part.end_mark
            else:
                return val  # not a formula cut at commas: leave it to the usual errors
    if depth != 0:
        return val
    text = self.source.text[val.start_mark.index:end.index]
    del pairs[:used]
    joined = yaml.ScalarNode("tag:yaml.org,2002:str", text, val.start_mark, end, style=None)
    self.errors.append(Diagnostic(
        message="this formula is not quoted, so YAML split it at its commas",
        span=_span(self.source, joined),
        hint=f'quote the formula: {key.value}: "{text}"'))
    return joined



def read_yaml(source: Source) -> tuple[Map | None, list[Diagnostic]]:
    """Parse a YAML spec into the document tree; YAML errors become located diagnostics."""
    try:
        root = yaml.compose(source.text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        span = None
        if mark is not None:
            span = Span(file=source.path, line=mark.line + 1, column=mark.column + 1,
                        end_line=mark.line + 1, end_column=mark.column + 2)
        message = (err.problem or err.context or "invalid YAML").strip()
        return None, [Diagnostic(message=f"YAML: {message}", span=span,
                                 hint=(err.context or None) if err.problem else None)]
    except RecursionError:
        return None, [Diagnostic(message=f"YAML: nesting is too deep (more than {MAX_DEPTH} "
                                         "levels)", span=source.span_at(0))]
    except yaml.YAMLError as err:
        return None, [Diagnostic(message=f"YAML: {str(err).splitlines()[0]}",
                                 span=source.span_at(0))]
    if root is None:
        return Map(span=source.span_at(0)), []
    if not isinstance(root, yaml.MappingNode):
        return None, [Diagnostic(message="a YAML spec must be a mapping of sections",
                                 span=_span(source, root),
                                 hint="start with `spec: NAME` and a `system:` mapping")]
    convert = _Convert(source)
    doc = convert.value(root)
    return doc, convert.errors


def count_comments(text: str) -> int:
    """How many `# …` comments a YAML text holds (outside quoted scalars).

    PyYAML drops comments, so `fmt` and `convert` use this to refuse or warn instead of
    silently losing them."""
    count = 0
    for line in text.split("\n"):
        quote = None
        for i, ch in enumerate(line):
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "'\"" and (i == 0 or line[i - 1] in " \t[{,:-"):
                quote = ch
            elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
                count += 1
                break
    return count
