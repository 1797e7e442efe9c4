"""The verify record (RUN/verify.json), checked by `scpo audit`: that it is chained to this log
(its `prev` is the head), is about the final accepted policy (its θ hash), and says nothing its
own numbers contradict — every PROVED bound ≤ −margin with no cell open, every
COUNTEREXAMPLE with its initial state, the overall verdict the one that follows from the
constraints', the constraints the header's metrics with their margins.

What it cannot check is the proof itself: that needs torch and the verifier (`scpo verify RUN`
reproduces it).  Its result is a separate claim from CERTIFIED: a record that fails these checks
fails `scpo audit`, and never changes the run's verdict.  numpy only.
"""

from __future__ import annotations

import json
import math

from scpo_spec.audit.log import sha256_hex
from scpo_spec.audit.records import VERIFY_FORMAT, Header, RecordError, VerifyRecord
from scpo_spec.audit.rundir import VERIFY_NAME, RunDir, RunError
from scpo_spec.verify.verdicts import (COUNTEREXAMPLE, PROOF_VERDICTS, PROVED,
                                       overall_proof_verdict)

ABSENT, INCONSISTENT = "absent", "inconsistent"


def check_verify_record(run: RunDir, lines: list, header: Header | None,
                        final_theta: str | None) -> tuple[str, dict | None, list[str]]:
    """(status, the record as stored when consistent, problems): status is the record's overall
    verdict, ABSENT when the run has none, or INCONSISTENT (problems say why)."""
    try:
        data = run.read_verify()
    except RunError as e:
        return INCONSISTENT, None, [str(e)]
    if data is None:
        return ABSENT, None, []
    where = VERIFY_NAME
    try:
        raw = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        rec = VerifyRecord.from_dict(raw, where)
    except (ValueError, UnicodeDecodeError, RecordError) as e:
        return INCONSISTENT, None, [f"{where} is not a verify record: {e}"]
    problems = _problems(rec, lines, header, final_theta)
    if problems:
        return INCONSISTENT, None, [f"{where}: {p}" for p in problems]
    return rec.verdict, rec.to_dict(), []


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _problems(rec: VerifyRecord, lines: list, header: Header | None,
              final_theta: str | None) -> list[str]:
    out = []
    if rec.format != VERIFY_FORMAT:
        out.append(f"format {rec.format!r}, expected {VERIFY_FORMAT!r}")
    head = sha256_hex(lines[-1].raw) if lines else None
    if rec.prev != head:
        earlier = next((i for i, ln in enumerate(lines) if sha256_hex(ln.raw) == rec.prev), None)
        out.append(f"its prev {rec.prev[:16]}… is not the log's head {str(head)[:16]}…"
                   + (f" (it verified the run as of record {earlier}; the log went on since: "
                      "run `scpo verify RUN` again)" if earlier is not None else
                      " nor any record of this log: it belongs to another run"))
    if final_theta is None or rec.theta != final_theta:
        out.append(f"it verified the policy {rec.theta[:16]}…, not the run's final accepted "
                   f"policy {str(final_theta)[:16]}…")
    margins = {}
    if header is not None:
        margins = {str(m.get("name")): m.get("margin") or 0.0 for m in header.metrics}
        if set(rec.constraints) != set(margins):
            out.append(f"its constraints {sorted(rec.constraints)} are not the run's metrics "
                       f"{sorted(margins)}")
    for name, c in rec.constraints.items():
        say = f"constraint '{name}'"
        if c.verdict not in PROOF_VERDICTS:
            out.append(f"{say}: verdict {c.verdict!r}, expected one of {', '.join(PROOF_VERDICTS)}")
            continue
        if name in margins and not c.margin == margins[name]:
            out.append(f"{say}: margin {c.margin!r}, the spec's is {margins[name]!r}")
        if not 0.0 <= c.proved_fraction <= 1.0 or c.cells < 0 or not 0 <= c.open_cells <= c.cells:
            out.append(f"{say}: proved_fraction {c.proved_fraction!r}, cells {c.cells}, open "
                       f"cells {c.open_cells} are not a split of the box")
        if c.verdict == PROVED:
            if c.bound is None or not (math.isfinite(c.bound) and c.bound <= -c.margin):
                out.append(f"{say}: PROVED with the bound {c.bound!r}, which is not ≤ −margin "
                           f"{-c.margin!r}")
            if c.open_cells != 0:
                out.append(f"{say}: PROVED with {c.open_cells} cells open")
        if c.verdict == COUNTEREXAMPLE:
            cex = c.counterexample
            if not (isinstance(cex, dict) and isinstance(cex.get("x0"), list)
                    and (cex.get("g") is None or _positive(cex.get("g")))):
                out.append(f"{say}: COUNTEREXAMPLE without an initial state x0 whose g > 0")
    if rec.box is not None and not _is_box(rec.box):
        out.append("its box is not {states, lo, hi} with lo ≤ hi, one number per state")
    verdicts = [c.verdict for c in rec.constraints.values()]
    if rec.verdict != overall_proof_verdict(verdicts) or not verdicts:
        out.append(f"the overall verdict {rec.verdict!r} does not follow from the constraints' "
                   f"({', '.join(verdicts) or 'none'}): "
                   f"{overall_proof_verdict(verdicts) if verdicts else 'nothing was verified'}")
    return out


def _positive(g) -> bool:
    return isinstance(g, (int, float)) and not isinstance(g, bool) and g > 0


def _is_box(box: dict) -> bool:
    states, lo, hi = box.get("states"), box.get("lo"), box.get("hi")
    return (isinstance(states, list) and isinstance(lo, list) and isinstance(hi, list)
            and len(states) == len(lo) == len(hi)
            and all(isinstance(s, str) for s in states)
            and all(_finite(a) and _finite(b) and a <= b for a, b in zip(lo, hi)))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
