"""The document tree: the shape both syntaxes share before the typed model is built.

`.scpo` sections and YAML mappings both become `Map`s of `Entry`s whose values are `Scalar`s
(an expression, or a raw YAML value parsed lazily), `Seq`s or nested `Map`s; every piece keeps
its span.  One builder (build.py) then makes the typed model from it, so the two syntaxes cannot
drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from scpo_spec.language.expr import Node as ExprNode
from scpo_spec.language.source import Span


@dataclass
class Scalar:
    span: Span | None
    expr: ExprNode | None = None  # from .scpo: already parsed
    raw: Any = None               # from YAML: a str/int/float/bool/None, parsed when needed
    quoted: bool = False          # YAML: the scalar was quoted (its text starts one column later)


@dataclass
class Seq:
    span: Span | None
    items: list[Value] = field(default_factory=list)


@dataclass
class Entry:
    key: str
    key_span: Span | None
    value: Value


@dataclass
class Map:
    span: Span | None
    entries: list[Entry] = field(default_factory=list)

    def keys(self) -> list[str]:
        return [e.key for e in self.entries]


Value = Union[Scalar, Seq, Map]
