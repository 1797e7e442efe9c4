"""Source text and spans: every model node remembers where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict


class Span(BaseModel):
    """A 1-based, end-inclusive-start / end-exclusive-end region of one source file."""

    model_config = ConfigDict(frozen=True)

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def to(self, other: Span | None) -> Span:
        """The span from the start of self to the end of other."""
        if other is None:
            return self
        return Span(file=self.file, line=self.line, column=self.column,
                    end_line=other.end_line, end_column=other.end_column)


@dataclass
class Source:
    """A source file's text, kept so diagnostics can quote the offending line."""

    path: str
    text: str
    _lines: list[str] = field(default_factory=list, repr=False)

    def line(self, number: int) -> str:
        if not self._lines:
            self._lines = self.text.split("\n")  # as lark counts lines
        if 1 <= number <= len(self._lines):
            return self._lines[number - 1].rstrip("\r")
        return ""

    def span_at(self, offset: int, length: int = 1) -> Span:
        """The span of `length` characters at a 0-based character offset."""
        line = self.text.count("\n", 0, offset) + 1
        column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return Span(file=self.path, line=line, column=column, end_line=line,
                    end_column=column + max(length, 1))
