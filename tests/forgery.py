"""What a forger does to a run directory, for the tests that must catch it: copy a run, read
its records, rewrite them with a recomputed chain, and re-bind the state file to the new head."""

import json
from pathlib import Path

from scpo_spec.audit.log import sha256_hex
from scpo_spec.audit.rundir import RunDir


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in RunDir(run).log.read_bytes().splitlines()]


def rechain(lines: list[bytes]) -> list[bytes]:
    """Recompute every prev hash after editing records (lines in, lines out)."""
    out, prev = [], "0" * 64
    for i, raw in enumerate(lines):
        rec = {**json.loads(raw), "seq": i, "prev": prev}
        line = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        out.append(line)
        prev = sha256_hex(line)
    return out


def write_rechained(run: Path, recs: list[dict], rebind: bool = False) -> str:
    """Write edited records with a consistent chain; returns the new head.  With `rebind`, the
    state file is made to belong to the new last record too (as a careful forger would)."""
    lines = rechain([json.dumps(r).encode() for r in recs])
    RunDir(run).log.write_bytes(b"".join(lines))
    head = sha256_hex(lines[-1])
    if rebind:
        rd = RunDir(run)
        state = rd.read_state()
        state.head, state.seq, state.pending = head, len(lines) - 1, None
        rd.write_state(state)
    return head
