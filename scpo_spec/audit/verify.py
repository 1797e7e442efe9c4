"""`scpo audit`: re-verify a run from its log alone — the hash chain, every certificate
recomputed from the logged numbers (g0, G, S, ℓ, ξ), the continuity of the accepted iterates and
their verified metrics.  numpy only: auditing needs neither torch nor the solver.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scpo_spec.audit.log import GENESIS, LOG_NAME, LogLine, read_lines, sha256_hex
from scpo_spec.compile.certificate import certificate

REL_TOL = 1e-9  # a recomputed certificate must match the logged one to this relative precision


def verify_chain(lines: list[LogLine]) -> list[str]:
    """Problems with the chain: unparsable lines, wrong seq, a prev that is not the SHA-256 of the
    previous line."""
    problems, prev = [], GENESIS
    for i, line in enumerate(lines):
        rec = line.record
        if not rec:
            problems.append(f"line {i + 1} is not a JSON record")
        elif rec.get("seq") != i:
            problems.append(f"line {i + 1} has seq {rec.get('seq')!r}, expected {i}")
        elif rec.get("prev") != prev:
            problems.append(f"line {i + 1}: prev does not match the SHA-256 of line {i} "
                            "(an earlier record was changed, dropped or reordered)")
        prev = sha256_hex(line.raw)
    return problems


@dataclass
class AuditResult:
    chain_ok: bool = True
    certificates_ok: bool = True
    complete: bool = False
    steps: int = 0
    accepted: int = 0
    rejected: int = 0
    refutations: int = 0
    accepted_violations: int = 0
    loss_first: float | None = None
    loss_last: float | None = None
    worst: dict = field(default_factory=dict)
    worst_step: dict = field(default_factory=dict)
    head: str = GENESIS
    problems: list = field(default_factory=list)
    ell_max: dict = field(default_factory=dict)
    holdout: dict | None = None  # the holdout record of the last completed segment, if any
    final_theta: str | None = None  # hash of the last accepted policy

    @property
    def ok(self) -> bool:
        return self.chain_ok and self.certificates_ok and self.accepted_violations == 0

    def as_dict(self) -> dict:
        out = {k: v for k, v in vars(self).items()}
        out["ok"] = self.ok
        return out


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def audit_run(run_dir: str | Path) -> AuditResult:
    """Audit a run directory (never raises on a bad log: problems are reported)."""
    run_dir = Path(run_dir)
    res = AuditResult()
    path = run_dir / LOG_NAME
    if not path.exists():
        res.chain_ok = res.certificates_ok = False
        res.problems.append(f"{path}: no such file")
        return res
    lines, tail = read_lines(path)
    if tail:
        res.problems.append(f"the log ends with a torn line ({len(tail)} bytes): the run was "
                            "killed mid-write")
    chain = verify_chain(lines)
    if chain:
        res.chain_ok = False
        res.problems += chain
    if lines:
        res.head = sha256_hex(lines[-1].raw)
    try:
        _check_records([ln.record for ln in lines], res, run_dir)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        res.certificates_ok = False
        res.problems.append(f"a record lacks what the audit needs: {type(err).__name__}: {err}")
    return res


def _check_records(records: list[dict], res: AuditResult, run_dir: Path) -> None:
    def fail(msg):
        res.certificates_ok = False
        res.problems.append(msg)

    if not records or records[0].get("type") != "header":
        fail("the log does not start with a header record")
        return
    head = records[0]
    spec = head["spec"]
    if hashlib.sha256(spec["text"].encode()).hexdigest() != spec["sha256"]:
        fail("the spec text in the header does not match its SHA-256")
    metrics = head["metrics"]
    names = [m["name"] for m in metrics]
    margins = _arr([m["margin"] for m in metrics])
    spec_ell = [m["smoothness"] for m in metrics]
    res.worst = {n: -math.inf for n in names}
    res.worst_step = {n: None for n in names}
    res.ell_max = {n: (s if s is not None else 0.0) for n, s in zip(names, spec_ell)}
    accepted_thetas: set[str] = set()
    theta, g = None, None

    def accept_iterate(theta_hash, values, where):
        values = _arr(values)
        accepted_thetas.add(theta_hash)
        if np.any(~(values <= 0)):
            res.accepted_violations += 1
            res.problems.append(f"{where}: an accepted policy violates "
                                + ", ".join(n for n, v in zip(names, values) if not v <= 0))
        elif np.any(~(values <= -margins)):
            fail(f"{where}: an accepted policy is not certified safe (g > −margin)")
        for n, v in zip(names, values):
            if v > res.worst[n] or res.worst_step[n] is None:
                res.worst[n], res.worst_step[n] = float(v), where

    for rec in records[1:]:
        kind = rec.get("type")
        seq = rec.get("seq")
        if kind == "init":
            theta, g = rec["theta"], _arr(rec["g"])
            res.loss_first = res.loss_last = rec["loss"]
            accept_iterate(theta, g, "θ₀")
        elif kind == "resume":
            if rec["theta"] not in accepted_thetas:
                fail(f"record {seq}: resumed from a policy the log never accepted")
            theta, g = rec["theta"], _arr(rec["g"])
            if np.any(~(g <= -margins)):
                fail(f"record {seq}: resumed from a policy that does not verify safe")
        elif kind == "step":
            _check_step(rec, theta, g, margins, spec_ell, names, res, fail)
            res.steps += 1
            if rec["accepted"]:
                res.accepted += 1
                theta, g = rec["theta_next"], _arr(rec["g_next"])
                res.loss_last = rec["loss_next"]
                accept_iterate(theta, g, f"step {rec['step']}")
            else:
                res.rejected += 1
        elif kind == "holdout":
            res.holdout = {k: v for k, v in rec.items() if k not in ("seq", "prev", "type")}
            if theta is not None and rec.get("theta") != theta:
                fail(f"record {seq}: the holdout was run on a policy that is not the last accepted")
        elif kind == "end":
            res.complete = rec is records[-1]  # a later resume reopens the run
            if theta is not None and rec["theta"] != theta:
                fail(f"record {seq}: the final policy is not the last accepted one")
        else:
            fail(f"record {seq}: unknown record type {kind!r}")
    res.final_theta = theta


def _check_step(rec, theta, g, margins, spec_ell, names, res, fail) -> None:
    where = f"step {rec['step']}"
    if theta is None:
        fail(f"{where}: a step before the initial policy was logged")
        return
    if rec["theta"] != theta:
        fail(f"{where}: starts from a policy that is not the last accepted one")
    g0 = _arr(rec["g0"])
    if not np.array_equal(g0, g):
        fail(f"{where}: g0 is not the verified g of the policy it starts from")
    G, S = _arr(rec["G"]), _arr(rec["S"])
    tries = rec["tries"]
    for t_i, entry in enumerate(tries):
        ell = _arr(entry["ell"])
        for n, e, s in zip(names, ell, spec_ell):
            if s is not None and e < s:
                fail(f"{where}: ℓ for '{n}' is {e:g}, below the spec's {s:g}")
            res.ell_max[n] = max(res.ell_max[n], float(e))
        if entry.get("outcome") == "refuted":
            res.refutations += 1
        if "certificate" not in entry:
            continue
        xi = _arr(entry["xi"])
        bound = certificate(g0, G, S, ell, xi)
        logged = _arr(entry["certificate"])
        scale = np.maximum(1.0, np.abs(bound))
        if np.any(np.abs(bound - logged) > REL_TOL * scale):
            fail(f"{where}, try {t_i + 1}: the logged certificate does not recompute")
        if np.any(bound > -margins + REL_TOL * scale):
            fail(f"{where}, try {t_i + 1}: the certificate does not prove g ≤ −margin")
    if rec["accepted"]:
        last = tries[-1] if tries else {}
        if last.get("outcome") != "accepted" or "certificate" not in last:
            fail(f"{where}: accepted without a certified, verified try")
        elif not np.array_equal(_arr(last["verified"]), _arr(rec["g_next"])):
            fail(f"{where}: the accepted g is not the verified one")
    else:
        if rec["theta_next"] != rec["theta"]:
            fail(f"{where}: a rejected step changed the policy")
