"""The verdict on a run — CERTIFIED or NOT CERTIFIED, and why — made in this one place, from the
audit of the log, the holdout the log holds for the final policy and whether the stored spec
checks.  Every reader takes it from here: `scpo train` (with or without its report), `audit`,
`report`, `export`, `runs` and `load_run`, so none of them can say CERTIFIED while another says
NOT CERTIFIED.  numpy only, and nothing is run: a holdout computed outside the log (the report
may compute one for a log that holds none) is not in the hash chain and is not part of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from scpo_spec.audit.loaded import LoadedRun
from scpo_spec.audit.problem import ProblemKind, of_kind
from scpo_spec.audit.records import EndState, Holdout
from scpo_spec.audit.rundir import RunDir
from scpo_spec.audit.verify import AuditResult, audit_run
from scpo_spec.errors import ScpoError

VACUOUS_BOUND = 1.0  # a holdout bound ln(1/β)/N at or above this says nothing
HOLDOUT = "holdout validation"
COMPLETE = "run complete"
STORED_SPEC = "stored spec checks"


@dataclass(frozen=True)
class Check:
    """One part of the verdict; `audited`: a failure of the log or the run directory, for which
    `scpo audit` fails the run and `load_run` refuses it (every check but the holdout's, which
    judges the final policy)."""

    name: str
    ok: bool
    detail: str
    audited: bool = True


@dataclass(frozen=True)
class Verdict:
    """CERTIFIED only when every check holds."""

    checks: tuple[Check, ...]

    @property
    def certified(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[str]:
        """Each failed check and why, e.g. 'holdout validation (3 of 200 fresh scenarios violate)'."""
        return [f"{c.name} ({c.detail})" for c in self.checks if not c.ok]

    def refusals(self, allow_incomplete: bool = False) -> list[str]:
        """Why `scpo audit` fails the run and `load_run` refuses it ([]: it passes): every
        failure but the holdout's (a run not ended yet too, unless `allow_incomplete`)."""
        return [f"{c.name} ({c.detail})" for c in self.checks
                if not c.ok and c.audited and not (allow_incomplete and c.name == COMPLETE)]

    @property
    def word(self) -> str:
        return "CERTIFIED" if self.certified else "NOT CERTIFIED"

    def as_dict(self) -> dict:
        return {"verdict": self.word, "certified": self.certified, "failures": self.failures,
                "checks": [vars(c) for c in self.checks]}


def logged_holdout(audit: AuditResult) -> dict | None:
    """The holdout record the log holds for its final policy (None: none, or of another θ)."""
    h = audit.holdout
    return h if h is not None and h.get("theta") == audit.final_theta else None


def holdout_bound(h: dict | None) -> float | None:
    """ln(1/β)/N of a holdout that found no violation (recomputed, not read from the log)."""
    if not h:
        return None
    try:
        return Holdout.from_dict(h, "holdout").recomputed_bound
    except ScpoError:
        return None


def judge(run_dir: str | Path | RunDir | LoadedRun, head: str | None = None,
          key: Path | None = None) -> tuple[AuditResult, Verdict]:
    """Audit a run (`head`, `key` as for `scpo audit`) and give the verdict on it; its stored
    spec is checked without running any code it names (the verdict never depends on running
    it).  A LoadedRun is judged from what it has read, once."""
    run = LoadedRun.of(run_dir)
    audit = audit_run(run, head=head, key=key)
    return audit, run.once(("verdict", head, key),
                           lambda: verdict(audit, run.stored_spec()[2]))


def verdict(audit: AuditResult, spec_problem: str | None = None) -> Verdict:
    """The verdict on a run from its audit and whether its stored spec is usable
    (`spec_problem`: why not)."""
    a = audit
    chain = Check("hash chain", a.chain_ok,
                  f"{a.records} records verify; head {a.head}" if a.chain_ok else
                  "; ".join(of_kind(a.problems, ProblemKind.CHAIN)) or "; ".join(a.problems[:3]))
    certs = Check("certificates recomputed from the log", a.certificates_ok,
                  f"every certificate of {a.steps} steps recomputes and proves g ≤ −margin"
                  if a.certificates_ok else
                  "; ".join(a.problems[:3]))
    viol = Check("accepted iterates", a.accepted_violations == 0,
                 f"none of the {a.accepted + 1} accepted iterates (θ₀ included) violates"
                 if a.accepted_violations == 0
                 else f"{a.accepted_violations} accepted iterate(s) violate")
    ended = Check(COMPLETE, a.complete and a.end_reason is not None,
                  f"the log ends with its end record ({a.end_reason})" if a.complete else
                  f"the run was {a.end_reason} (resume it with `scpo train … --resume`)"
                  if a.end_reason and EndState.of(a.end_reason) is EndState.INTERRUPTED else
                  "the log has no end record after its last step: the run was killed or cut "
                  "short (resume it with `scpo train … --resume`)")
    spec = Check(STORED_SPEC, spec_problem is None and a.spec_ok,
                 "the spec in the header passes scpo check again, and the header's metrics and "
                 "the spec file beside the log are that spec"
                 if spec_problem is None and a.spec_ok else
                 spec_problem or "; ".join(a.spec_problems[:2]))
    state = Check("state file bound to the log", a.state_ok,
                  "state.npz belongs to the log's last record and holds its last accepted θ"
                  if a.state_ok else next(iter(of_kind(a.problems, ProblemKind.STATE)),
                                          "state.npz does not belong to this log"))
    if a.state_present is False:  # a log handed over alone: nothing to bind, nothing to deploy
        state = Check("state file", True, "absent: the log alone was audited; this directory "
                      "does not hold the final policy (only its hash, in the log)")
    checks = [chain, certs, viol, ended, spec, state, _holdout_check(logged_holdout(a))]
    if a.anchored is not None:
        checks.append(Check("anchored head", a.anchored,
                            "the chain ends at the given head" if a.anchored else
                            next(iter(of_kind(a.problems, ProblemKind.ANCHOR)), "another head")))
    if a.signature is not None:  # a key was given, or the signature file is of another head
        checks.append(Check("signature", a.signature == "valid",
                            "the head is signed with the given Ed25519 key"
                            if a.signature == "valid" else a.signature))
    return Verdict(tuple(checks))


def _holdout_check(h: dict | None) -> Check:
    if h is None or not h.get("count"):
        return Check(HOLDOUT, False,
                     "no holdout validation: the spec declares no `holdout` scenarios"
                     if h is not None else
                     "the log holds no holdout validation of the final policy", audited=False)
    bound = holdout_bound(h)
    beta = float(h.get("beta") or 0)
    if bound is None:
        return Check(HOLDOUT, False,
                     f"{h.get('violations')} of {h['count']} fresh scenarios violate",
                     audited=False)
    if not bound < VACUOUS_BOUND:
        return Check(HOLDOUT, False,
                     f"0 of {h['count']} fresh scenarios violate, but the bound P(violation) ≤ "
                     f"{bound:.3g} says nothing (it needs more than ln(1/β) = "
                     f"{math.log(1 / beta):.3g} scenarios)", audited=False)
    return Check(HOLDOUT, True,
                 f"0 of {h['count']} fresh scenarios violate; P(violation) ≤ {bound:.3g} with "
                 f"confidence 1 − {beta:g}", audited=False)
