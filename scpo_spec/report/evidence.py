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

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from scpo_spec.errors import ScpoError
from scpo_spec.audit.loaded import LoadedRun
from scpo_spec.audit.records import End, Header, Init, Record, Step
from scpo_spec.audit.rundir import RunError
from scpo_spec.audit.verdict import (Check, Verdict, holdout_bound, judge, logged_holdout,
                                     verdict)
from scpo_spec.audit.verify import AuditResult, describe_stall
from scpo_spec.plan.code import names_code, ran_as_recorded, untrusted

__all__ = ["Check", "Evidence", "Series", "fmt", "gather"]


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
    verdict: Verdict | None = None    # audit.verdict's, on the log: what every reader says
    trajectories: object | None = None    # final.Trajectories: the final policy's rollouts
    regression: object | None = None      # final.RegressionFit: f(x) against the data and band
    final_note: str | None = None         # why the final policy could not be shown, if so

    @cached_property
    def uncertainty(self) -> dict | None:
        """The parameters and disturbances with their ranges and the digest of the training
        draws, made from the checked spec (the audit holds the header's account to it)."""
        if self.spec is None:
            return None
        from scpo_spec.plan.scenarios import uncertainty_record
        return uncertainty_record(self.spec)

    @cached_property
    def warm_start(self) -> dict | None:
        """`policy from`: the run θ₀ came from and its head, as the header records them (the
        audit holds θ₀ to it; nothing is read from that run)."""
        recorded = self.header.warm_start
        if not isinstance(recorded, dict):
            return None
        return {"run": str(recorded.get("run")), "head": str(recorded.get("head"))}

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
        return holdout_bound(self.holdout)

    @property
    def stall_text(self) -> str:
        """What held training back, in words (empty when nothing did)."""
        return describe_stall(self.audit.stall) if self.audit.stall else ""

    @property
    def proof(self) -> dict | None:
        """RUN/verify.json, when `scpo audit` finds it consistent (None: absent, or not believed:
        `audit.verify` says which, `audit.verify_problems` why)."""
        return self.audit.verify_record

    @property
    def proof_box(self) -> str:
        """The initial box the proof is about, in words."""
        box = (self.proof or {}).get("box")
        if not box:
            return "the scenarios' initial box"
        return ", ".join(f"{s} ∈ [{fmt(lo)}, {fmt(hi)}]"
                         for s, lo, hi in zip(box["states"], box["lo"], box["hi"]))

    @property
    def checks(self) -> tuple[Check, ...]:
        return self.verdict.checks

    @property
    def certified(self) -> bool:
        return self.verdict.certified

    @property
    def failures(self) -> list[str]:
        """Each failed check and why, e.g. 'holdout validation (3 of 200 fresh scenarios violate)'."""
        return self.verdict.failures


def gather(run_dir: str | Path | LoadedRun, compute_holdout: bool = True,
           key: Path | None = None, final_policy: bool = True,
           trust_code: bool = False, head: str | None = None) -> Evidence:
    """Read and re-verify a run; RunError only for a directory that is not a run at all (no log,
    or no header).  `head`: the anchor kept outside the run (the hash `scpo train` printed):
    NOT CERTIFIED unless the chain ends there, as `scpo audit --head` says;
    `key`: an Ed25519 public key the head's signature must verify with;
    `final_policy`: roll the final policy out for the report's trajectory/regression plots;
    `trust_code`: run the code the spec names (after checking its fingerprints) for them.
    The run is read once (a LoadedRun may be given, and is read from)."""
    run = LoadedRun.of(run_dir)
    header = run.header
    audit, said = judge(run, head=head, key=key)
    try:
        records = run.records
    except RunError as err:  # a damaged log still reports (the audit says what is wrong)
        records = []
        audit = dataclasses.replace(audit, certificates_ok=False,
                                    problems=[*audit.problems, str(err)])
        said = verdict(audit, run.stored_spec()[2])
    code_problem = None
    spec, base, spec_problem = run.stored_spec()  # the verdict's: no code run
    if spec is not None:
        if trust_code and names_code(spec):
            try:
                spec, base = run.checked_spec(trust_code=True)
            except RunError as err:  # the run itself is still what it is: only the pictures go
                trust_code, code_problem = False, str(err)
    series, rejected, refutations = _series(records)
    end = next((r for r in reversed(records) if isinstance(r, End)), None)
    final = _Final(run, audit, spec, base, trust_code)
    if code_problem is not None and spec is not None:
        final.problem = code_problem
    holdout, source = _holdout(audit, final, compute_holdout)
    metrics = _metric_rows(header, audit, spec, holdout)
    ev = Evidence(run.path, header, records, audit, spec, metrics, series, rejected, refutations,
                  holdout, source, audit.final_theta, end, spec_problem,
                  run.signature(audit.head, key), said)
    if final_policy:
        ev.trajectories, ev.regression, ev.final_note = final.pictures(header)
    return ev


class _Final:
    """The final θ and the compiled spec, each made once and only when asked for (the holdout
    and the pictures share them); `problem` says why one could not be had."""

    def __init__(self, run: LoadedRun, audit: AuditResult, spec, base, trust_code: bool = False):
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
        if self._compiled is None and self.problem is None and self.theta() is not None:
            from scpo_spec.compile.problem import compile_spec
            from scpo_spec.compile.usercode import import_plant
            from scpo_spec.plan.code import expecting
            code = self.run.header.code
            try:
                with expecting(code, self.spec, self.base):  # the recorded bytes, or none
                    compiled = compile_spec(self.spec, self.base)
                    import_plant(compiled.dynamics)
            except (ScpoError, OSError) as err:  # e.g. a regression's data file is gone
                self.problem = f"the spec does not compile here ({err})"
                return None
            wrong = ran_as_recorded(code, self.spec, self.base)
            if wrong:
                self.problem = f"not trusting the code of {self.run.path}: {wrong[0]}"
                return None
            self._compiled = compiled
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
    h = logged_holdout(audit)
    if h is not None:
        return h, "logged at the end of training (in the hash chain)"
    if not compute or final.spec is None:
        return None, "not available"
    compiled = final.compiled()
    if compiled is None:
        return None, f"not available ({final.problem})"
    import torch

    from scpo_spec.engine.holdout import validate_holdout
    h = validate_holdout(compiled, torch.from_numpy(final.theta()))
    return h, ("computed when this report was made (the run logged none for its final policy; "
               "not in the hash chain, so not part of the verdict)")


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


def fmt(x, digits: int = 6) -> str:
    """A number for the page (inf/NaN spelled out)."""
    if x is None:
        return "—"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(x)
    return f"{x:.{digits}g}"
