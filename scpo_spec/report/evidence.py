"""Everything the report shows, gathered from the run directory alone (through
scpo_spec.audit.rundir: nothing in it is unpickled or imported): the audit (chain and
certificates, recomputed), the spec as stored in the log and checked again, the per-step series,
the rejected updates, the refuted certificates, the holdout validation and the final policy's
rollouts — and the verdict that follows from them.

Vocabulary (the report, the docs and the terminal use it alike): each step proposes an *update*,
which is accepted or rejected; a *candidate* is evaluated by rollout; its *certificate* (the
bound g ≤ −margin that ℓ-smoothness promises) can be refuted by that rollout.  A refuted
candidate doubles ℓ and the step is solved again, so a step with refutations may still end in an
accepted update."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scpo_spec.errors import ScpoError
from scpo_spec.audit.records import Header, Holdout, Init, Record, Step
from scpo_spec.audit.rundir import STATE_NAME, CodeChanged, RunDir, RunError
from scpo_spec.audit.verify import AuditResult, audit_run, describe_stall
from scpo_spec.language.code import untrusted

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
    refuted_x: list = field(default_factory=list)        # candidates whose certificate was refuted
    refuted_g: list = field(default_factory=list)        # their g by rollout
    refuted_loss: list = field(default_factory=list)
    failed_x: list = field(default_factory=list)         # updates rejected with no refutation


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
    trajectories: object | None = None    # final.Trajectories: the final policy's rollouts
    regression: object | None = None      # final.RegressionFit: f(x) against the data and band
    final_note: str | None = None         # why the final policy could not be shown, if so

    @property
    def refuted_then_accepted(self) -> int:
        """Steps whose certificates were refuted but whose update was finally accepted."""
        return len({r["step"] for r in self.refutations if r["accepted"]})

    @property
    def ell_grew(self) -> list:
        """The metrics whose ℓ rose above the spec's: where the spec's ℓ was too small."""
        return [m for m in self.metrics if m.get("ell_growth") and m["ell_growth"] > 1.0]

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
           key: Path | None = None, final_policy: bool = True,
           trust_code: bool = False) -> Evidence:
    """Read and re-verify a run; RunError only for a directory that is not a run at all (no log,
    or no header).  `key`: an Ed25519 public key the head's signature must verify with;
    `final_policy`: roll the final policy out for the report's trajectory/regression plots;
    `trust_code`: run the code the spec names (after checking its fingerprints) for them."""
    run = RunDir(run_dir)
    header = run.header()
    audit = audit_run(run.path, key=key)
    try:
        records = run.records()
    except RunError as err:  # a damaged log still reports (the audit says what is wrong)
        records = []
        audit.certificates_ok = False
        audit.problems.append(str(err))
    spec, base, spec_problem, code_problem = None, None, None, None
    try:
        try:
            spec, base = run.checked_spec(header, trust_code=trust_code)
        except CodeChanged as err:  # the run itself is still what it is: only the pictures go
            spec, base = run.checked_spec(header)
            trust_code, code_problem = False, str(err)
    except RunError as err:
        spec_problem = str(err)
    series, rejected, refutations = _series(records)
    end = next((r for r in reversed(records) if r.TYPE == "end"), None)
    final = _Final(run, audit, spec, base, trust_code)
    if code_problem is not None and spec is not None:
        final.problem = code_problem
    holdout, source = _holdout(audit, final, compute_holdout)
    metrics = _metric_rows(header, audit, spec, holdout)
    ev = Evidence(run.path, header, records, audit, spec, metrics, series, rejected, refutations,
                  holdout, source, audit.final_theta, end, spec_problem,
                  _signature(run, audit.head, key))
    ev.checks = _checks(ev)
    if final_policy:
        ev.trajectories, ev.regression, ev.final_note = final.pictures(header)
    return ev


class _Final:
    """The final θ and the compiled spec, each made once and only when asked for (the holdout
    and the pictures share them); `problem` says why one could not be had."""

    def __init__(self, run: RunDir, audit: AuditResult, spec, base, trust_code: bool = False):
        self.run, self.audit, self.spec, self.base = run, audit, spec, base
        self._theta = self._compiled = None
        self.problem: str | None = None if spec is not None else "the stored spec is unusable"
        if spec is not None and not trust_code:
            self.problem = untrusted(spec)  # rolling the policy out would run the run's code

    def theta(self):
        if self._theta is None and self.problem is None:
            try:
                self._theta = self.run.final_theta(self.audit.final_theta)
            except RunError as err:
                self.problem = str(err)
        return self._theta

    def compiled(self):
        if self._compiled is None and self.theta() is not None:
            from scpo_spec.compile.problem import compile_spec
            from scpo_spec.language.code import expecting
            try:
                with expecting(self.run.header().code, self.spec, self.base):
                    self._compiled = compile_spec(self.spec, self.base)
            except (ScpoError, OSError) as err:  # e.g. a regression's data file is gone
                self.problem = f"the spec does not compile here ({err})"
        return self._compiled

    def pictures(self, header):
        """(trajectories, regression fit, why neither) for the report."""
        from scpo_spec.report.final import regression_fit, trajectories
        compiled = self.compiled()
        if compiled is None:
            return None, None, self.problem
        data = header.data or {}
        return (trajectories(compiled, self._theta),
                regression_fit(compiled, self._theta, self.base, data.get("sha256")), None)


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
                    s.refuted_x.append(x)
                    s.refuted_g.append(t.verified)
                    s.refuted_loss.append(t.loss)
                    refutations.append({"step": r.step, "accepted": r.accepted,
                                        "metrics": t.refuted,
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


def _holdout(audit: AuditResult, final: _Final, compute: bool):
    h = audit.holdout
    if h is not None and h.get("theta") == audit.final_theta:
        return h, "logged at the end of training (in the hash chain)"
    if not compute or final.spec is None:
        return None, "not available"
    compiled = final.compiled()
    if compiled is None:
        return None, f"not available ({final.problem})"
    import torch

    from scpo_spec.engine.holdout import validate_holdout
    h = validate_holdout(compiled, torch.from_numpy(final.theta()))
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
        ell_max, given = audit.ell_max.get(m["name"]), m.get("smoothness")
        growth = (ell_max / given if isinstance(ell_max, (int, float)) and given
                  and not m.get("estimated") else None)
        rows.append({**m, "compiled": compiled, "worst": worst, "ell_growth": growth,
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
                  f"the run was {a.end_reason} (resume it with `scpo train … --resume`)"
                  if a.end_reason and a.end_reason.startswith("interrupted") else
                  "the log has no end record after its last step: the run was killed or cut "
                  "short (resume it with `scpo train … --resume`)")
    spec = Check("stored spec checks", ev.spec_problem is None and a.spec_ok,
                 "the spec in the header passes scpo check again, and the header's metrics and "
                 "the spec file beside the log are that spec"
                 if ev.spec_problem is None and a.spec_ok else
                 ev.spec_problem or "; ".join(a.spec_problems[:2]))
    state = Check("state file bound to the log", a.state_ok,
                  "state.npz belongs to the log's last record and holds its last accepted θ"
                  if a.state_ok else next((p for p in a.problems if STATE_NAME in p),
                                          "state.npz does not belong to this log"))
    if a.state_present is False:  # a log handed over alone: nothing to bind, nothing to deploy
        state = Check("state file", True, "absent: the log alone was audited; this directory "
                      "does not hold the final policy (only its hash, in the log)")
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
