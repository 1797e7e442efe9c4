"""Append-only JSONL audit log, each record chained to the previous one by SHA-256.

Every line is one JSON object with `seq` (0, 1, …) and `prev`, the SHA-256 of the previous line's
bytes (64 zeros for the first).  The head — the SHA-256 of the last line — identifies the whole
history: changing, dropping or reordering any earlier line breaks the chain.  Lines are written
and fsync'ed one at a time, so a killed run keeps everything it logged; a torn last line (a kill
mid-write) is moved aside, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scpo_spec.errors import ScpoError

GENESIS = "0" * 64
FORMAT = "scpo-audit/1"


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


def read_lines(path: Path) -> tuple[list[LogLine], bytes]:
    """Every complete line and its parsed record, and the torn tail (bytes after the last
    newline, empty when the file ends cleanly).  A line that is not JSON stays as raw bytes."""
    data = path.read_bytes()
    body, _, tail = data.rpartition(b"\n")
    lines = []
    if body or data.startswith(b"\n"):
        for i, raw in enumerate(body.split(b"\n")):
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    record = {}
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = {}
            lines.append(LogLine(i, raw + b"\n", record))
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
