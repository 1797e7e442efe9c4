"""Everything the report shows, gathered from the run directory alone: the audit (chain and
certificates, recomputed), the spec as stored in the log, the per-step series, the rejected
updates and the holdout validation — and the verdict that follows from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scpo_spec.audit.log import LOG_NAME, read_lines
from scpo_spec.audit.verify import AuditResult, audit_run


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
    header: dict
    records: list
    audit: AuditResult
    spec: object | None
    metrics: list                 # dicts: header metric + compiled text + evidence
    series: Series
    rejected: list                # rejected steps: step, reason, tries
    refutations: list             # every refuted try: step, metrics, ℓ, certificate, verified
    holdout: dict | None
    holdout_source: str
    final_theta: str | None
    end: dict | None
    checks: list = field(default_factory=list)

    @property
    def holdout_bound(self) -> float | None:
        """ln(1/β)/N when the holdout found no violation (recomputed, not read from the log)."""
        h = self.holdout
        if not h or not h.get("count") or h.get("violations") != 0:
            return None
        return math.log(1 / float(h.get("beta") or 1e-6)) / h["count"]

    @property
    def certified(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[str]:
        """Each failed check and why, e.g. 'holdout validation (3 of 200 fresh scenarios violate)'."""
        return [f"{c.name} ({c.detail})" for c in self.checks if not c.ok]


def gather(run_dir: str | Path, compute_holdout: bool = True) -> Evidence:
    """Read and re-verify a run; raises FileNotFoundError / ValueError only for a directory that
    is not a run at all (no log, or no header)."""
    run_dir = Path(run_dir)
    path = run_dir / LOG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {LOG_NAME})")
    lines, _ = read_lines(path)
    records = [ln.record for ln in lines]
    if not records or records[0].get("type") != "header":
        raise ValueError(f"{path} does not start with a header record")
    header = records[0]
    audit = audit_run(run_dir)
    spec = _spec_of(header)
    try:
        series, rejected, refutations = _series(records, header)
    except (KeyError, TypeError, ValueError, IndexError) as err:  # a damaged log still reports
        audit.certificates_ok = False
        audit.problems.append(f"the step records cannot be read: {type(err).__name__}: {err}")
        series, rejected, refutations = Series(), [], []
    end = next((r for r in reversed(records) if r.get("type") == "end"), None)
    final_theta = audit.final_theta
    holdout, source = _holdout(audit, final_theta, run_dir, spec, header, compute_holdout)
    metrics = _metric_rows(header, audit, spec, holdout)
    ev = Evidence(run_dir, header, records, audit, spec, metrics, series, rejected, refutations,
                  holdout, source, final_theta, end)
    ev.checks = _checks(ev)
    return ev


def _spec_of(header: dict):
    from scpo_spec.language.load import check_text
    spec = header["spec"]
    origin = Path(spec.get("resolved") or spec["path"])
    result = check_text(spec["text"], path=spec["path"], base_dir=origin.parent,
                        syntax=spec.get("syntax"))
    if result.spec is None:
        return None
    return result.spec


def _series(records: list, header: dict):
    s = Series()
    rejected, refutations = [], []
    for r in records:
        kind = r.get("type")
        if kind == "init":
            s.accepted_x.append(0)
            s.accepted_g.append(r["g"])
            s.accepted_loss.append(r["loss"])
        elif kind == "step":
            x = r["step"] + 1
            if r["accepted"]:
                s.accepted_x.append(x)
                s.accepted_g.append(r["g_next"])
                s.accepted_loss.append(r["loss_next"])
            else:
                rejected.append({"step": r["step"], "reason": r["reason"], "tries": len(r["tries"]),
                                 "outcomes": [t.get("outcome") for t in r["tries"]]})
            for t in r["tries"]:
                if t.get("outcome") == "refuted":
                    s.rejected_x.append(x)
                    s.rejected_g.append(t["verified"])
                    s.rejected_loss.append(t.get("loss"))
                    refutations.append({"step": r["step"], "metrics": t.get("refuted", []),
                                        "ell": t["ell"], "certificate": t["certificate"],
                                        "verified": t["verified"],
                                        "observed": t.get("observed_curvature"),
                                        "counterexample": t.get("counterexample", {})})
            if not r["accepted"] and not any(t.get("outcome") == "refuted" for t in r["tries"]):
                s.failed_x.append(x)
    return s, rejected, refutations


def _holdout(audit, final_theta, run_dir, spec, header, compute):
    h = audit.holdout
    if h is not None and h.get("theta") == final_theta:
        return h, "logged at the end of training (in the hash chain)"
    if not compute or spec is None:
        return None, "not available"
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        return None, "not available (no checkpoint)"
    import torch

    from scpo_spec.compile.problem import compile_spec
    from scpo_spec.engine.holdout import validate_holdout
    from scpo_spec.engine.train import theta_hash
    theta = torch.load(ckpt, weights_only=False)["theta"]
    if theta_hash(theta) != final_theta:
        return None, "not available (the checkpoint is not the last accepted policy)"
    origin = Path(header["spec"].get("resolved") or header["spec"]["path"])
    h = validate_holdout(compile_spec(spec, origin.parent), theta)
    return h, "computed when this report was made (the run logged none for its final policy)"


def _metric_rows(header, audit, spec, holdout) -> list:
    from scpo_spec.compile.describe import describe_metric
    rows = []
    props = spec.properties if spec is not None else []
    consts = {c.name: c.value.value for c in spec.consts} if spec is not None else {}
    settings = header["settings"]
    tau = settings.get("tau") if settings.get("aggregate") == "smooth" else None
    horizon = header["dimensions"]["horizon"]
    for i, m in enumerate(header["metrics"]):
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
    h = ev.holdout
    if h is None or not h.get("count"):
        hold = Check("holdout validation", False,
                     "no holdout validation: the spec declares no `holdout` scenarios"
                     if h is not None else f"holdout {ev.holdout_source}")
    else:
        ok = ev.holdout_bound is not None
        hold = Check("holdout validation", ok,
                     f"0 of {h['count']} fresh scenarios violate; P(violation) ≤ "
                     f"{ev.holdout_bound:.3g} with confidence 1 − {float(h.get('beta') or 1e-6):g}"
                     if ok else
                     f"{h.get('violations')} of {h['count']} fresh scenarios violate")
    return [chain, certs, viol, hold]


def fmt(x, digits: int = 6) -> str:
    """A number for the page (inf/NaN spelled out)."""
    if x is None:
        return "—"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(x)
    return f"{x:.{digits}g}"
