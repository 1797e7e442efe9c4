"""Reading a regression objective's CSV data: one reader for `check` (which reports a problem
at the spec's `data` line) and for the objective (which loads the numbers), so both agree on what
a valid file is.  Messages name the line, the column and the value, never more of the file than
a short printable excerpt (a data path may name any file)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from scpo_spec.errors import ScpoError
from scpo_spec.language.diagnostics import excerpt, one_of


class TableError(ScpoError):
    """A data file that cannot be used; `message(name)` says why, naming the file as `name`."""

    def __init__(self, template: str, hint: str | None = None):
        super().__init__(template.format(name="the data file"))
        self.template, self.hint = template, hint

    def message(self, name: str) -> str:
        return self.template.format(name=f"data file '{name}'")


def _shown(cell: str, limit: int = 20) -> str:
    """A CSV cell quoted for a message: control characters escaped, long values cut short."""
    text = cell if len(cell) <= limit else cell[:limit] + "…"
    return repr(text) if not text.isprintable() else f"'{text}'"


def read_columns(path: Path, names: list[str]) -> np.ndarray:
    """The named columns of a CSV file with a header row, as finite float64 (rows, len(names));
    TableError otherwise."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            rows, lines = [], []  # a quoted field may span lines: keep each row's line
            for row in reader:
                rows.append(row)
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise TableError("cannot read {name}: " + excerpt(str(err), 120).replace("{", "{{")
                         .replace("}", "}}")) from None
    if not rows:
        raise TableError("{name} is empty")
    header = [h.strip() for h in rows[0]]
    absent = [w for w in names if w not in header]
    if absent:
        raise TableError("{name} has no column " + one_of(absent).replace("{", "{{")
                         .replace("}", "}}"), f"its header is {excerpt(', '.join(header))}")
    if len(rows) < 2:
        raise TableError("{name} has no data rows")
    index = [header.index(w) for w in names]
    data = []
    for number, row in zip(lines[1:], rows[1:]):
        if not any(c.strip() for c in row):
            continue
        values = []
        for name, i in zip(names, index):
            cell = row[i] if i < len(row) else None
            try:
                values.append(float(cell))
            except (TypeError, ValueError):
                what = "is missing" if cell is None else f"{_shown(cell)} is not a number"
                raise TableError(f"{{name}}, line {number}, column '{name}': "
                                 + what.replace("{", "{{").replace("}", "}}")) from None
            if not math.isfinite(values[-1]):
                raise TableError(f"{{name}}, line {number}, column '{name}': the value is not "
                                 "finite")
        data.append(values)
    return np.array(data, dtype=np.float64).reshape(len(data), len(names))
