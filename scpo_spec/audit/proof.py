"""The verify record (RUN/verify.json), checked by `scpo audit`: that it is chained to this log
(its `prev` is the head), is about the final accepted policy (its θ hash), and says nothing its
own numbers contradict — every PROVED bound ≤ −margin with no cell open, every
COUNTEREXAMPLE with its initial state, the overall verdict the one that follows from the
constraints', the constraints the header's metrics with their margins.

What it cannot check is the proof itself: that needs torch and the verifier (`scpo verify RUN`
reproduces it).  Its result is a separate claim from CERTIFIED: a record that fails these checks
fails `scpo audit`, and never changes the run's verdict.  numpy only.

Also the proofs `train { verify every K }` logs (`proof_problems`): the same consistency of
each answer with its margin, per candidate.
"""

from __future__ import annotations

import json
import math

from scpo_spec.audit.log import sha256_hex
from scpo_spec.audit.records import (VERIFY_FORMAT, Header, Proof, RecordError, Step,
                                     VerifyRecord)
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
        out += _answer_problems(say, c.verdict, c.bound, c.margin, c.counterexample)
        if c.verdict == PROVED and c.open_cells != 0:
            out.append(f"{say}: PROVED with {c.open_cells} cells open")
    if rec.box is not None and not _is_box(rec.box):
        out.append("its box is not {states, lo, hi} with lo ≤ hi, one number per state")
    verdicts = [c.verdict for c in rec.constraints.values()]
    if rec.verdict != overall_proof_verdict(verdicts) or not verdicts:
        out.append(f"the overall verdict {rec.verdict!r} does not follow from the constraints' "
                   f"({', '.join(verdicts) or 'none'}): "
                   f"{overall_proof_verdict(verdicts) if verdicts else 'nothing was verified'}")
    return out


def _answer_problems(say: str, verdict: str, bound, margin: float, cex) -> list[str]:
    """What one constraint's answer says against itself: PROVED needs a finite bound ≤ −margin,
    COUNTEREXAMPLE an initial state x0 whose g > 0 (null: the rollout left the numbers)."""
    out = []
    if verdict == PROVED and (bound is None or not (math.isfinite(bound) and bound <= -margin)):
        out.append(f"{say}: PROVED with the bound {bound!r}, which is not ≤ −margin "
                   f"{-margin!r}")
    if verdict == COUNTEREXAMPLE and not (
            isinstance(cex, dict) and isinstance(cex.get("x0"), list)
            and (cex.get("g") is None or _positive(cex.get("g")))):
        out.append(f"{say}: COUNTEREXAMPLE without an initial state x0 whose g > 0")
    return out


def proof_problems(proof: Proof, names: list[str], margins) -> list[str]:
    """What a `verify every K` proof in the log (audit/records.Proof) says against itself or
    the header's metrics: one verdict and one float64 bound per metric, each answer consistent
    with its margin (`_answer_problems`), the overall verdict the one that follows."""
    k = len(names)
    if not (isinstance(proof.verdicts, list) and len(proof.verdicts) == k
            and proof.bounds.shape == (k,)):
        said = len(proof.verdicts) if isinstance(proof.verdicts, list) else "?"
        return [f"the proof holds {said} verdicts and {proof.bounds.shape} bounds for {k} "
                "metrics"]
    out = []
    for name, verdict, bound, margin in zip(names, proof.verdicts, proof.bounds, margins):
        say = f"the proof of '{name}'"
        if verdict not in PROOF_VERDICTS:
            out.append(f"{say}: verdict {verdict!r}, expected one of {', '.join(PROOF_VERDICTS)}")
            continue
        cex = proof.counterexamples.get(name) if isinstance(proof.counterexamples, dict) else None
        out += _answer_problems(say, verdict, float(bound), float(margin), cex)
    if not out and proof.verdict != overall_proof_verdict(proof.verdicts):
        out.append(f"the proof's overall verdict {proof.verdict!r} does not follow from its "
                   f"metrics' ({', '.join(proof.verdicts)})")
    if proof.cells < 0 or not (math.isfinite(proof.seconds) and proof.seconds >= 0):
        out.append(f"the proof's cells {proof.cells} or seconds {proof.seconds!r} are not counts")
    return out


def initial_proof_problems(proof: Proof | None, names: list[str], margins,
                           every: int | None) -> list[str]:
    """`verify every K`: θ₀'s proof is logged, PROVED or not (a θ₀ not proved starts, and no
    update it cannot prove is accepted); without K there is none."""
    if every is None:
        return [] if proof is None else ["a proof of θ₀ where the spec asks for none"]
    if proof is None:
        return [f"no proof of θ₀ (`verify every {every}`)"]
    return [f"θ₀: {p}" for p in proof_problems(proof, names, margins)]


def step_proof_problems(rec: Step, names: list[str], margins,
                        every: int | None) -> tuple[list[str], bool]:
    """(problems, whether the step's accepted update is PROVED).  On the K-th, 2K-th, … step
    an accepted update carries a PROVED proof and says proved; a rejected one says not; every
    candidate rejected as `unproved` carries the proof that left exactly its named metrics
    unproved; other steps neither prove nor say proved."""
    due = every is not None and (rec.step + 1) % every == 0
    out = []
    for i, t in enumerate(rec.tries):
        at = f"try {i + 1}"
        if t.proof is None:
            if t.outcome == "unproved":
                out.append(f"{at}: rejected as unproved without a proof")
            continue
        if not due:
            out.append(f"{at}: a proof where `verify every` asks for none")
        wrong = proof_problems(t.proof, names, margins)
        out += [f"{at}: {p}" for p in wrong]
        if wrong:
            continue
        unproved = [n for n, v in zip(names, t.proof.verdicts) if v != PROVED]
        if t.outcome == "unproved" and (not unproved or sorted(t.refuted) != sorted(unproved)):
            out.append(f"{at}: rejected as unproved, but its proof leaves {unproved or 'none'} "
                       f"unproved, not {t.refuted}")
    if not due:
        if rec.proved is not None:
            out.append(f"says proved = {rec.proved} where no proof is due")
        return out, False
    if not rec.accepted:
        if rec.proved is not False:
            out.append(f"a rejected update says proved = {rec.proved}")
        return out, False
    last = rec.tries[-1] if rec.tries else None
    if rec.proved is not True:
        out.append(f"an update accepted on a step that must prove it (`verify every {every}`) "
                   f"says proved = {rec.proved}")
    elif last is None or last.proof is None or len(last.proof.verdicts) != len(names) \
            or any(v != PROVED for v in last.proof.verdicts):
        out.append("says proved, but the accepted candidate's proof is not PROVED for every "
                   "metric")
    return out, not out


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
