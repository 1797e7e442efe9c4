"""Append-only JSONL audit log, each record chained to the previous one by SHA-256.

Every line is one JSON object with `seq` (0, 1, …) and `prev`, the SHA-256 of the previous line's
bytes (64 zeros for the first).  The head — the SHA-256 of the last line — identifies the whole
history: changing, dropping or reordering any earlier line breaks the chain.  Lines are written
and fsync'ed one at a time, so a killed run keeps everything it logged; a torn last line (a kill
mid-write) is moved aside, never silently dropped.

A log is read as untrusted data: at most LOG_LIMIT bytes of a regular file (audit.files), each
line's nesting and integers bounded (MAX_DEPTH, MAX_INT_DIGITS) while it is parsed,
so that a hostile line costs a located problem, not the reader's stack or memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scpo_spec.audit.files import read_regular
from scpo_spec.errors import ScpoError

GENESIS = "0" * 64
FORMAT = "scpo-audit/1"
LOG_LIMIT = 2**30        # bytes of audit.jsonl a reader takes (10,000 steps of 64 directions fit)
MAX_DEPTH = 16           # JSON nesting of one record (the engine writes at most 6 levels)
MAX_INT_DIGITS = 64    # digits of one JSON integer (the engine writes counts and seeds)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _plain(x: Any) -> Any:
    """JSON-ready: numpy arrays and scalars to lists/floats (repr round-trips float64)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "detach") and hasattr(x, "tolist"):  # a torch tensor, without importing torch
        return x.detach().cpu().tolist()
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def encode(record: dict) -> bytes:
    """One record as one line (non-finite floats as JSON's Infinity/NaN extensions)."""
    return json.dumps(_plain(record), separators=(",", ":"), allow_nan=True).encode() + b"\n"


class LogError(ScpoError):
    """The log cannot be read or continued."""


@dataclass
class LogLine:
    seq: int
    raw: bytes
    record: dict
    problem: str | None = None  # why `record` is empty: the line is not a JSON record


def _integer(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text):,} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels in a parsed JSON value."""
    level = [value]
    for _ in range(limit):
        level = [v for c in level for v in (c.values() if isinstance(c, dict) else c)
                 if isinstance(v, (list, dict))]
        if not level:
            return False
    return True


def parse_line(raw: bytes) -> tuple[dict, str | None]:
    """One line's record, or ({}, why it is not one): never an exception, whatever the bytes.
    json's parser stops at Python's recursion limit (RecursionError) and integers are bounded
    as they are read (a float too long just rounds), so the parse itself is bounded."""
    try:
        record = json.loads(raw, parse_int=_integer)
    except UnicodeDecodeError:
        return {}, "is not UTF-8 text"
    except RecursionError:
        return {}, f"is nested more than {MAX_DEPTH} levels deep (a record has at most that)"
    except ValueError as e:  # JSONDecodeError is a ValueError
        return {}, f"is not JSON ({e})"
    if not isinstance(record, dict):
        return {}, "is not a JSON object"
    if _deeper_than(record, MAX_DEPTH):
        return {}, f"is nested more than {MAX_DEPTH} levels deep (a record has at most that)"
    return record, None


def read_lines(path: Path) -> tuple[list[LogLine], bytes]:
    """Every complete line and its parsed record, and the torn tail (bytes after the last
    newline, empty when the file ends cleanly).  A line that is not a JSON record stays as raw
    bytes with an empty record and its `problem`.  OSError (audit.files.UnreadableFile among
    them) when the file is not one a run may hold."""
    data = read_regular(path, LOG_LIMIT)
    body, _, tail = data.rpartition(b"\n")
    lines = []
    if body or data.startswith(b"\n"):
        for i, raw in enumerate(body.split(b"\n")):
            record, problem = parse_line(raw)
            lines.append(LogLine(i, raw + b"\n", record, problem))
    return lines, tail


class AuditWriter:
    """Appends chained lines; `head` is the hash of the last line written, `seq` the next seq."""

    def __init__(self, path: Path, head: str = GENESIS, seq: int = 0):
        self.path, self.head, self.seq = path, head, seq
        self._file = open(path, "ab", buffering=0)  # no hidden buffer to flush after a failure

    @classmethod
    def create(cls, path: Path) -> AuditWriter:
        if path.exists():
            raise LogError(f"{path} already exists; a log is never overwritten")
        return cls(path)

    @classmethod
    def reopen(cls, path: Path, torn: Path) -> AuditWriter:
        """Continue an existing chain (for --resume); a torn tail is moved to `torn`."""
        if not path.exists():
            raise LogError(f"{path} does not exist: nothing to resume")
        lines, tail = read_lines(path)
        if tail:
            with open(torn, "ab") as f:
                f.write(tail + b"\n")
            with open(path, "rb+") as f:
                f.truncate(path.stat().st_size - len(tail))
        if not lines:
            raise LogError(f"{path} is empty")
        return cls(path, sha256_hex(lines[-1].raw), len(lines))

    def line(self, record: dict) -> bytes:
        """The next line for `record` (seq and prev added), not yet written."""
        return encode({"seq": self.seq, "prev": self.head, **record})

    def write(self, line: bytes) -> str:
        """Append a line made by `line` and fsync it; returns the new head.  A write that fails
        (a full disk) is cut back off, so the log stays exactly the records before it, and the
        OSError is raised with head and seq unchanged."""
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)  # frees space, never needs it
            except OSError:
                pass  # a torn tail is set aside by `reopen`
            raise
        self.head = sha256_hex(line)
        self.seq += 1
        return self.head

    def append(self, record: dict) -> str:
        return self.write(self.line(record))

    def close(self) -> None:
        self._file.close()
