"""Everything the report shows, gathered from the run directory alone (through
scpo_spec.audit.rundir: nothing in it is unpickled or imported): the audit (chain and
certificates, recomputed), the spec as stored in the log and checked again, the per-step series,
the rejected updates and the holdout validation — and the verdict that follows from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scpo_spec.errors import ScpoError
from scpo_spec.audit.records import Header, Holdout, Init, Record, Step
from scpo_spec.audit.rundir import STATE_NAME, RunDir, RunError
from scpo_spec.audit.verify import AuditResult, audit_run, describe_stall

VACUOUS_BOUND = 1.0  # a holdout bound ln(1/β)/N at or above this says nothing


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Series:
    """Values over steps: x = steps taken (θ₀ at 0, the result of step k at k + 1)."""

    accepted_x: list = field(default_factory=list)
    accepted_g: list = field(default_factory=list)       # (iterates, k)
    accepted_loss: list = field(default_factory=list)
    rejected_x: list = field(default_factory=list)       # refuted candidates (verified by rollout)
    rejected_g: list = field(default_factory=list)
    rejected_loss: list = field(default_factory=list)
    failed_x: list = field(default_factory=list)         # rejected with no candidate rollout


@dataclass
class Evidence:
    run_dir: Path
    header: Header
    records: list[Record]
    audit: AuditResult
    spec: object | None
    metrics: list                 # dicts: header metric + compiled text + evidence
    series: Series
    rejected: list                # rejected steps: step, reason, tries
    refutations: list             # every refuted try: step, metrics, ℓ, certificate, verified
    holdout: dict | None
    holdout_source: str
    final_theta: str | None
    end: object | None
    spec_problem: str | None = None   # why the stored spec could not be used, if it could not
    signature: str | None = None      # "valid", "invalid: …", or None (unsigned)
    checks: list = field(default_factory=list)

    @property
    def holdout_bound(self) -> float | None:
        """ln(1/β)/N when the holdout found no violation (recomputed, not read from the log)."""
        h = self.holdout
        if not h:
            return None
        try:
            return Holdout.from_dict(h, "holdout").recomputed_bound
        except ScpoError:
            return None

    @property
    def stall_text(self) -> str:
        """What held training back, in words (empty when nothing did)."""
        return describe_stall(self.audit.stall) if self.audit.stall else ""

    @property
    def certified(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[str]:
        """Each failed check and why, e.g. 'holdout validation (3 of 200 fresh scenarios violate)'."""
        return [f"{c.name} ({c.detail})" for c in self.checks if not c.ok]


def gather(run_dir: str | Path, compute_holdout: bool = True,
           key: Path | None = None) -> Evidence:
    """Read and re-verify a run; RunError only for a directory that is not a run at all (no log,
    or no header).  `key`: an Ed25519 public key the head's signature must verify with."""
    run = RunDir(run_dir)
    header = run.header()
    audit = audit_run(run.path, key=key)
    try:
        records = run.records()
    except RunError as err:  # a damaged log still reports (the audit says what is wrong)
        records = []
        audit.certificates_ok = False
        audit.problems.append(str(err))
    spec, base, spec_problem = None, None, None
    try:
        spec, base = run.checked_spec(header)
    except RunError as err:
        spec_problem = str(err)
    series, rejected, refutations = _series(records)
    end = next((r for r in reversed(records) if r.TYPE == "end"), None)
    holdout, source = _holdout(audit, run, spec, base, compute_holdout)
    metrics = _metric_rows(header, audit, spec, holdout)
    ev = Evidence(run.path, header, records, audit, spec, metrics, series, rejected, refutations,
                  holdout, source, audit.final_theta, end, spec_problem,
                  _signature(run, audit.head, key))
    ev.checks = _checks(ev)
    return ev


def _signature(run: RunDir, head: str, key: Path | None) -> str | None:
    from scpo_spec.audit.signing import verify_signature
    if not run.signature.exists() and key is None:
        return None
    return verify_signature(run.signature, head, key)


def _series(records: list[Record]):
    s = Series()
    rejected, refutations = [], []
    for r in records:
        if isinstance(r, Init):
            s.accepted_x.append(0)
            s.accepted_g.append(r.g)
            s.accepted_loss.append(r.loss)
        elif isinstance(r, Step):
            x = r.step + 1
            if r.accepted:
                s.accepted_x.append(x)
                s.accepted_g.append(r.g_next)
                s.accepted_loss.append(r.loss_next)
            else:
                rejected.append({"step": r.step, "reason": r.reason, "tries": len(r.tries),
                                 "outcomes": [t.outcome for t in r.tries]})
            for t in r.tries:
                if t.outcome == "refuted":
                    s.rejected_x.append(x)
                    s.rejected_g.append(t.verified)
                    s.rejected_loss.append(t.loss)
                    refutations.append({"step": r.step, "metrics": t.refuted,
                                        "ell": _list(t.ell), "certificate": _list(t.certificate),
                                        "verified": _list(t.verified),
                                        "observed": _list(t.observed_curvature),
                                        "counterexample": t.counterexample})
            if not r.accepted and r.refutations == 0:
                s.failed_x.append(x)
    return s, rejected, refutations


def _list(x) -> list | None:
    """An array as a plain list (templates test sequences for truth)."""
    return None if x is None else np.asarray(x).tolist()


def _holdout(audit: AuditResult, run: RunDir, spec, base, compute: bool):
    h = audit.holdout
    if h is not None and h.get("theta") == audit.final_theta:
        return h, "logged at the end of training (in the hash chain)"
    if not compute or spec is None:
        return None, "not available"
    try:
        theta_np = run.final_theta(audit.final_theta)
    except RunError as err:
        return None, f"not available ({err})"
    import torch

    from scpo_spec.compile.problem import compile_spec
    from scpo_spec.engine.holdout import validate_holdout
    h = validate_holdout(compile_spec(spec, base), torch.from_numpy(theta_np))
    return h, "computed when this report was made (the run logged none for its final policy)"


def _metric_rows(header, audit, spec, holdout) -> list:
    from scpo_spec.compile.describe import describe_metric
    rows = []
    props = spec.properties if spec is not None else []
    consts = {c.name: c.value.value for c in spec.consts} if spec is not None else {}
    settings = header.settings
    tau = settings.get("tau") if settings.get("aggregate") == "smooth" else None
    horizon = header.dimensions.get("horizon")
    for i, m in enumerate(header.metrics):
        compiled = ""
        if i < len(props):
            compiled = describe_metric(props[i].formula, consts,
                                       [s.name for s in spec.system.states],
                                       [s.name for s in spec.system.inputs], horizon, tau)
        worst = audit.worst.get(m["name"])
        rows.append({**m, "compiled": compiled, "worst": worst,
                     "worst_step": audit.worst_step.get(m["name"]),
                     "ell_max": audit.ell_max.get(m["name"]),
                     "slack": None if worst is None else -worst - m["margin"],
                     "holdout_worst": (holdout or {}).get("worst", {}).get(m["name"]),
                     "holdout_violations": (holdout or {}).get("violations_per_metric", {})
                     .get(m["name"])})
    return rows


def _checks(ev: Evidence) -> list[Check]:
    """The verdict's parts: CERTIFIED only when every one holds."""
    a = ev.audit
    chain = Check("hash chain", a.chain_ok,
                  f"{len(ev.records)} records verify; head {a.head}" if a.chain_ok else
                  "; ".join(p for p in a.problems if "prev" in p or "seq" in p or "JSON" in p)
                  or "; ".join(a.problems[:3]))
    certs = Check("certificates recomputed from the log", a.certificates_ok,
                  f"every certificate of {a.steps} steps recomputes and proves g ≤ −margin"
                  if a.certificates_ok else
                  "; ".join(a.problems[:3]))
    viol = Check("accepted iterates", a.accepted_violations == 0,
                 f"none of the {a.accepted + 1} accepted iterates (θ₀ included) violates"
                 if a.accepted_violations == 0
                 else f"{a.accepted_violations} accepted iterate(s) violate")
    ended = Check("run complete", a.complete and a.end_reason is not None,
                  f"the log ends with its end record ({a.end_reason})" if a.complete else
                  "the log has no end record after its last step: the run was killed or cut "
                  "short (resume it with `scpo train … --resume`)")
    spec = Check("stored spec checks", ev.spec_problem is None,
                 "the spec in the header passes scpo check again"
                 if ev.spec_problem is None else ev.spec_problem)
    state = Check("state file bound to the log", a.state_ok,
                  "state.npz belongs to the log's last record and holds its last accepted θ"
                  if a.state_ok else next((p for p in a.problems if STATE_NAME in p),
                                          "state.npz does not belong to this log"))
    checks = [chain, certs, viol, ended, spec, state, _holdout_check(ev)]
    if ev.signature is not None and not ev.signature.startswith("unverified"):
        checks.append(Check("signature", ev.signature == "valid",
                            "the head is signed with the given Ed25519 key"
                            if ev.signature == "valid" else ev.signature))
    return checks


def _holdout_check(ev: Evidence) -> Check:
    h = ev.holdout
    if h is None or not h.get("count"):
        return Check("holdout validation", False,
                     "no holdout validation: the spec declares no `holdout` scenarios"
                     if h is not None else f"holdout {ev.holdout_source}")
    bound = ev.holdout_bound
    beta = float(h.get("beta") or 0)
    if bound is None:
        return Check("holdout validation", False,
                     f"{h.get('violations')} of {h['count']} fresh scenarios violate")
    if not bound < VACUOUS_BOUND:
        return Check("holdout validation", False,
                     f"0 of {h['count']} fresh scenarios violate, but the bound P(violation) ≤ "
                     f"{bound:.3g} says nothing (it needs more than ln(1/β) = "
                     f"{math.log(1 / beta):.3g} scenarios)")
    return Check("holdout validation", True,
                 f"0 of {h['count']} fresh scenarios violate; P(violation) ≤ {bound:.3g} with "
                 f"confidence 1 − {beta:g}")


def fmt(x, digits: int = 6) -> str:
    """A number for the page (inf/NaN spelled out)."""
    if x is None:
        return "—"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(x)
    return f"{x:.{digits}g}"
