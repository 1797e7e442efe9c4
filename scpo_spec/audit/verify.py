"""`scpo audit`: re-verify a run from its log alone — the hash chain, every certificate
recomputed from the logged numbers (g0, G, S, ℓ, ξ) after checking those numbers are what a
certificate may rest on (S a Gram matrix of the logged bank, everything finite), the continuity
of the accepted iterates, their verified metrics, and that the run ended.  numpy only: auditing
needs neither torch nor the solver.  Every comparison is written so that NaN fails it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scpo_spec.audit.files import TooLarge, UnreadableFile, read_regular
from scpo_spec.audit.loaded import LoadedRun
from scpo_spec.audit.log import GENESIS, LogLine, parse_line, sha256_hex
from scpo_spec.audit.problem import Problem
from scpo_spec.audit.problem import ProblemKind as K
from scpo_spec.audit.records import (End, EndState, Header, Holdout, Init, RecordError, Resume,
                                     Step, Try, parse_record)
from scpo_spec.audit.proof import (check_verify_record, initial_proof_problems,
                                   step_proof_problems)
from scpo_spec.audit.rundir import LEGACY_CHECKPOINT, RunDir, RunError
from scpo_spec.compile.certificate import certificate, rounding_error
from scpo_spec.verify.verdicts import PROVED

REL_TOL = 1e-9   # a recomputed certificate must match the logged one to this relative precision
GRAM_TOL = 1e-9  # S must be symmetric and PSD, diag(S) = ‖d_j‖², to this relative precision
STALL_STREAK = 5          # this many rejected steps in a row is a stall
STALL_ELL_GROWTH = 1e3    # so is ℓ grown beyond this factor of the spec's value
SLACK_USED_UP = 0.99      # a certified step that uses this much of a metric's slack met its bound


def verify_chain(lines: list[LogLine]) -> list[str]:
    """Problems with the chain: unparsable lines, wrong seq, a prev that is not the SHA-256 of the
    previous line."""
    problems, prev = [], GENESIS
    for i, line in enumerate(lines):
        rec = line.record
        if not rec:
            problems.append(Problem(K.CHAIN, f"line {i + 1} "
                                    f"{line.problem or 'is not a JSON record'}"))
        elif rec.get("seq") != i:
            problems.append(Problem(K.CHAIN, f"line {i + 1} has seq {rec.get('seq')!r}, "
                                    f"expected {i}"))
        elif rec.get("prev") != prev:
            problems.append(Problem(K.CHAIN, f"line {i + 1}: prev does not match the SHA-256 of "
                                    f"line {i} (an earlier record was changed, dropped or "
                                    "reordered)"))
        prev = sha256_hex(line.raw)
    return problems


@dataclass
class AuditResult:
    chain_ok: bool = True
    certificates_ok: bool = True
    complete: bool = False
    records: int = 0      # lines of the log read
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
    ell_spec: dict = field(default_factory=dict)
    holdout: dict | None = None  # the holdout record of the last completed segment, if any
    final_theta: str | None = None  # hash of the last accepted policy
    end_reason: str | None = None
    stall: dict | None = None    # the metric that blocked training, when it stalled
    state_ok: bool = True         # RUN/state.npz, if any, belongs to this log and its last θ
    state_present: bool | None = None  # RUN/state.npz exists (None: not looked at)
    spec_problems: list = field(default_factory=list)  # where RUN/spec.* or the header's
    # account of the spec is not the header's spec text (also in `problems`)
    anchored: bool | None = None  # --head given: the chain ends exactly there
    signature: str | None = None  # "valid", "invalid: …", or None when not checked
    # RUN/verify.json (audit/proof.py): its verdict, "absent" or "inconsistent" — a separate
    # claim from CERTIFIED: an inconsistent one fails `scpo audit`, never the verdict
    verify: str = "absent"
    verify_record: dict | None = None   # the record, when consistent
    verify_problems: list = field(default_factory=list)
    # `train { verify every K }`: K (None: no proofs asked), the steps whose accepted update was
    # PROVED over the whole initial box (the logged proofs checked for consistency, not redone),
    # and whether θ₀ was
    proof_every: int | None = None
    proved_steps: int = 0
    theta0_proved: bool | None = None

    @property
    def spec_ok(self) -> bool:
        return not self.spec_problems

    @property
    def ok(self) -> bool:
        return (self.chain_ok and self.certificates_ok and self.accepted_violations == 0
                and self.state_ok and self.spec_ok and self.anchored is not False
                and self.signature in (None, "valid"))

    def as_dict(self) -> dict:
        out = {k: v for k, v in vars(self).items()}
        out["spec_ok"], out["ok"] = self.spec_ok, self.ok
        return out


def audit_run(run_dir: str | Path | RunDir | LoadedRun, head: str | None = None,
              key: Path | None = None) -> AuditResult:
    """Audit a run directory (never raises on a bad log: problems are reported).  With `head`,
    the chain must end exactly at that hash (an anchor kept outside the run); with `key` (an
    Ed25519 public key file), RUN/signature.json must sign the chain's head with it.  A
    LoadedRun is audited from what it has read (and keeps the result: asked again, the same
    audit is given back)."""
    run = LoadedRun.of(run_dir)
    return run.once(("audit", head, key), lambda: _audit(run, head, key))


def _audit(loaded: LoadedRun, head: str | None, key: Path | None) -> AuditResult:
    run = loaded.run
    res = AuditResult()
    if not run.is_run():
        res.chain_ok = res.certificates_ok = False
        res.problems.append(Problem(K.LOG, f"{run.log}: no such file"))
        return res
    try:
        lines, tail = loaded.lines, loaded.tail
    except RunError as err:  # not a regular file of the run, too large, unreadable
        res.chain_ok = res.certificates_ok = False
        res.problems.append(Problem(K.LOG, str(err)))
        return res
    if tail:
        res.problems.append(Problem(K.LOG, f"the log ends with a torn line ({len(tail)} "
                                    "bytes): the run was killed mid-write"))
    chain = verify_chain(lines)
    if chain:
        res.chain_ok = False
        res.problems += chain
    res.records = len(lines)
    if lines:
        res.head = sha256_hex(lines[-1].raw)
    if head is not None:
        res.anchored = res.head == head.strip().lower()
        if not res.anchored:
            res.problems.append(Problem(K.ANCHOR, f"the chain ends at {res.head}, not at the "
                                        f"anchor {head.strip()} (the log was changed, cut or "
                                        "extended since)"))
    said = loaded.signature(res.head, key)
    if said is not None and (key is not None or said.startswith("invalid")):
        res.signature = said  # unreadable, or of another head: the report says NOT CERTIFIED
        if said != "valid":   # for it, and so does the audit
            res.problems.append(Problem(K.SIGNATURE, f"signature {said}"))
    try:
        records = [parse_record(ln.record, i) for i, ln in enumerate(lines)]
    except RecordError as err:
        res.certificates_ok = False
        res.problems.append(Problem(K.RECORD, f"a record cannot be read: {err}"))
        _check_verify_record(run, lines, None, res)
        return res
    try:
        _check_records(records, res)
        _check_state(loaded, records, res)
        if records and isinstance(records[0], Header):
            _check_spec(loaded, records[0], res)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        # a value of the right type but the wrong shape, in a log the typed records let through
        res.certificates_ok = False
        res.problems.append(Problem(K.RECORD, f"a record holds a value the audit cannot use "
                                    f"({type(err).__name__}: {err})"))
    _check_verify_record(run, lines, records[0] if records and isinstance(records[0], Header)
                         else None, res)
    return res


def _check_verify_record(run: RunDir, lines: list[LogLine], header: Header | None,
                         res: AuditResult) -> None:
    res.verify, res.verify_record, res.verify_problems = check_verify_record(
        run, lines, header, res.final_theta)


OVERRIDABLE = ("device",)  # settings `scpo train` may override (--device): not the text's
METRIC_FIELDS = ("name", "section", "formula", "margin", "smoothness", "lipschitz", "location")


def _check_spec(loaded: LoadedRun, header: Header, res: AuditResult) -> None:
    """What a reader sees of the spec must be the header's spec text, whose SHA-256 the chain
    covers: the copy RUN/spec.* beside the log, and the header's own account of the spec — each
    metric (its margin and ℓ are what the certificates are checked against, its name and
    formula what the report shows), the settings, seeds, horizon, scenario count and name, and
    the parameters and disturbances with the digest of their draws (drawn again here from the
    text, so a resume and the audit see the draws the certificates were made on)."""
    text = header.spec.get("text")
    if not isinstance(text, str):
        return  # _check_records has said so

    def fail(msg: str) -> None:
        res.spec_problems.append(msg)
        res.problems.append(Problem(K.SPEC, msg))

    for copy in loaded.run.spec_files():
        try:  # no larger than the header's text: a larger file is not that text anyway
            same = hashlib.sha256(read_regular(copy, len(text.encode()))).hexdigest() \
                == header.spec.get("sha256")
        except TooLarge:
            same = False
        except OSError as err:  # not a regular file of the run (a FIFO, a link out), unreadable
            fail(str(err) if isinstance(err, UnreadableFile) else
                 f"cannot read {copy}: {err.strerror or err}")
            continue
        if not same:
            fail(f"{copy} is not the spec the log's header holds (its SHA-256 differs): read "
                 "the spec in the report, or `scpo runs`")
    try:
        stated = loaded.declared()
    except RunError as err:
        fail(str(err))
        return
    if stated is None:
        fail("the spec text in the header does not build")
        return
    settings = {k: v for k, v in header.settings.items() if k not in OVERRIDABLE}
    said = {"name": header.spec.get("name"), "seeds": header.seeds, "settings": settings,
            "horizon": header.dimensions.get("horizon"),
            "scenarios": header.dimensions.get("scenarios"), "uncertainty": header.uncertainty}
    # a setting newer than the log (absent from its header) is read as its default, None
    stated_settings = {k: v for k, v in stated["settings"].items()
                       if k not in OVERRIDABLE and (k in settings or v is not None)}
    for key, want in (("name", stated["name"]), ("seeds", stated["seeds"]),
                      ("settings", stated_settings), ("horizon", stated["horizon"]),
                      ("scenarios", stated["scenarios"]),
                      ("uncertainty", stated["uncertainty"])):
        if said[key] != want and not (key == "scenarios" and want is None):
            fail(f"the header's {key} is not its spec text's: the header says {said[key]!r}; "
                 f"the text {want!r}")
    declared = stated["metrics"]
    logged = [m if isinstance(m, dict) else {} for m in header.metrics]
    if len(logged) != len(declared):
        fail(f"the header lists {len(logged)} metrics, its spec text declares {len(declared)}")
        return
    for got, want in zip(logged, declared):
        wrong = [k for k in METRIC_FIELDS if got.get(k) != want[k]]
        if wrong:
            header_says = ", ".join(f"{k} {got.get(k)!r}" for k in wrong)
            text_says = ", ".join(f"{k} {want[k]!r}" for k in wrong)
            fail(f"the header's metric '{want['name']}' is not its spec text's: the header says "
                 f"{header_says}; the text {text_says}")


def pending_problems(records: list, pending: bytes, theta: str) -> list[str]:
    """Why a state file's pending record (the line a kill kept from the log) may not join the
    log `records`: after them it must pass every check a logged record passes, and leave as the
    last accepted policy the θ the state file holds (`theta`, its hash)."""
    record, problem = parse_line(pending)
    if problem:
        return [f"its pending record {problem}"]
    try:
        record = parse_record(record, len(records))
    except RecordError as err:
        return [f"its pending record cannot be read ({err})"]
    before, after = AuditResult(), AuditResult()
    _check_records(records, before)
    _check_records(records + [record], after)
    problems = [f"its pending record: {p}" for p in after.problems[len(before.problems):]]
    if after.final_theta != theta:
        problems.append(f"it holds a policy ({theta[:16]}…) that its pending record does not "
                        f"leave as the last accepted one ({str(after.final_theta)[:16]}…)")
    return problems


def _check_state(loaded: LoadedRun, records: list, res: AuditResult) -> None:
    """The state file is what `--resume`, `load_run` and the report take θ from: it must belong
    to this log (its head) and hold the last accepted policy (its θ hash); one record ahead of
    the log (a kill between its two writes), that record must pass the audit too."""
    run = loaded.run
    res.state_present = run.state.exists()
    if not res.state_present:
        if (run.path / LEGACY_CHECKPOINT).exists():
            res.problems.append(Problem(K.STATE, f"{run.path / LEGACY_CHECKPOINT} is a pickle "
                                        "from an older scpo-spec; it is not read (the log "
                                        "alone was audited)"))
        return
    try:
        state, pending = loaded.bound_state()
    except RunError as err:
        res.state_ok = False
        res.problems.append(Problem(K.STATE, str(err)))
        return
    if pending:  # killed between the state write and the append: the log itself is intact
        wrong = pending_problems(records, state.pending, state.theta)
        if wrong:
            res.state_ok = False
            res.problems += [Problem(K.STATE, f"{run.state}: {p}") for p in wrong]
            return
        res.problems.append(Problem(K.STATE, f"{run.state} holds one record the log does not "
                                    "have yet (the run was killed between its two writes); "
                                    "`scpo train … --resume` completes the log"))
        return
    if res.final_theta is not None and state.theta != res.final_theta:
        res.state_ok = False
        res.problems.append(Problem(K.STATE, f"{run.state} holds a policy "
                                    f"({state.theta[:16]}…) that is not the last one the log "
                                    f"accepted ({res.final_theta[:16]}…)"))


class _Audit:
    """Walks the records in order, keeping the last accepted policy and its g."""

    def __init__(self, header: Header, res: AuditResult):
        self.res = res
        self.names = header.metric_names
        self.margins = np.array([float(m.get("margin", 0.0)) for m in header.metrics])
        self.spec_ell = [m.get("smoothness") for m in header.metrics]
        res.worst = {n: -math.inf for n in self.names}
        res.worst_step = {n: None for n in self.names}
        res.ell_spec = {n: s for n, s in zip(self.names, self.spec_ell)}
        res.ell_max = {n: (s if s is not None else 0.0) for n, s in zip(self.names, self.spec_ell)}
        self.accepted: set[str] = set()
        self.theta: str | None = None
        self.g: np.ndarray | None = None
        self.streak: list[Step] = []   # rejected steps since the last accepted one
        self.longest: list[Step] = []  # the longest such run
        self.all_steps: list[Step] = []
        every = header.settings.get("verify_every")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or every < 1):
            self.fail(f"the header's verify_every {every!r} is not a positive integer")
            every = None
        self.every = res.proof_every = every

    def fail(self, msg: str) -> None:
        self.res.certificates_ok = False
        self.res.problems.append(Problem(K.CERTIFICATE, msg))

    def shape(self, values: np.ndarray, where: str) -> bool:
        if values.shape != (len(self.names),):
            self.fail(f"{where}: {values.shape} values for {len(self.names)} metrics")
            return False
        return True

    def accept(self, theta: str, values: np.ndarray, where: str) -> None:
        res = self.res
        if not self.shape(values, where):
            return
        self.accepted.add(theta)
        self.theta, self.g = theta, values
        if np.any(~(values <= 0)):
            res.accepted_violations += 1
            res.problems.append(Problem(K.VIOLATION, f"{where}: an accepted policy violates "
                                + ", ".join(n for n, v in zip(self.names, values)
                                            if not v <= 0)))
        elif np.any(~(values <= -self.margins)):
            self.fail(f"{where}: an accepted policy is not certified safe (g > −margin)")
        for n, v in zip(self.names, values):
            if not v <= res.worst[n] or res.worst_step[n] is None:
                res.worst[n], res.worst_step[n] = float(v), where

    def step(self, rec: Step) -> None:
        where = f"step {rec.step}"
        if self.theta is None:
            self.fail(f"{where}: a step before the initial policy was logged")
            return
        if rec.theta != self.theta:
            self.fail(f"{where}: starts from a policy that is not the last accepted one")
        if not self.shape(rec.g0, f"{where}: g0"):
            return
        if not np.array_equal(rec.g0, self.g):
            self.fail(f"{where}: g0 is not the verified g of the policy it starts from")
        if not self._bank_ok(rec, where):
            return
        for i, t in enumerate(rec.tries):
            self._try(rec, i, where)
        self._proofs(rec, where)
        last = rec.tries[-1] if rec.tries else None
        if rec.accepted:
            if last is None or last.outcome != "accepted" or last.certificate is None \
                    or last.verified is None:
                self.fail(f"{where}: accepted without a certified, verified try")
            elif not np.array_equal(last.verified, rec.g_next):
                self.fail(f"{where}: the accepted g is not the verified one")
        elif rec.theta_next != rec.theta:
            self.fail(f"{where}: a rejected step changed the policy")

    def initial_proof(self, rec: Init, where: str) -> None:
        for p in initial_proof_problems(rec.proof, self.names, self.margins, self.every):
            self.fail(f"{where}: {p}")
        if self.every is not None and rec.proof is not None:
            self.res.theta0_proved = rec.proof.verdict == PROVED

    def _proofs(self, rec: Step, where: str) -> None:
        problems, proved = step_proof_problems(rec, self.names, self.margins, self.every)
        for p in problems:
            self.fail(f"{where}: {p}")
        self.res.proved_steps += proved

    def _bank_ok(self, rec: Step, where: str) -> bool:
        """G, S and the bank norms are finite, S is the Gram matrix of a real bank (symmetric,
        PSD, diag(S) = ‖d_j‖²): a certificate rests on these numbers."""
        k, G, S = len(self.names), rec.G, rec.S
        n = S.shape[0] if S.ndim == 2 else -1
        if G.ndim != 2 or G.shape[0] != k or S.shape != (n, n) or G.shape[1] != n:
            self.fail(f"{where}: G {G.shape} and S {S.shape} do not fit {k} metrics")
            return False
        if not (np.all(np.isfinite(G)) and np.all(np.isfinite(S))):
            self.fail(f"{where}: G or S holds a non-finite number")
            return False
        scale = max(1.0, float(np.max(np.abs(np.diag(S))))) if n else 1.0
        if not np.all(np.abs(S - S.T) <= GRAM_TOL * scale):
            self.fail(f"{where}: S is not symmetric")
            return False
        if n and not float(np.min(np.linalg.eigvalsh(S))) >= -GRAM_TOL * scale:
            self.fail(f"{where}: S is not positive semidefinite (not a Gram matrix DᵀD)")
            return False
        norms = rec.bank_norms
        if norms is None or norms.shape != (n,) or \
                not np.all(np.abs(np.diag(S) - norms ** 2) <= GRAM_TOL * scale):
            self.fail(f"{where}: diag(S) is not the logged bank norms squared")
            return False
        return True

    def _try(self, rec: Step, i: int, where: str) -> None:
        t, res = rec.tries[i], self.res
        if t.ell.shape != (len(self.names),) or not np.all(t.ell > 0):
            self.fail(f"{where}, try {i + 1}: ℓ must be one positive number per metric")
            return
        for n, e, s in zip(self.names, t.ell, self.spec_ell):
            if s is not None and not e >= s:
                self.fail(f"{where}: ℓ for '{n}' is {e:g}, below the spec's {s:g}")
            res.ell_max[n] = max(res.ell_max[n], float(e))
        if t.outcome == "refuted":
            res.refutations += 1
        if t.certificate is None:
            return
        if t.xi is None or t.xi.shape != (rec.S.shape[0],) or not np.all(np.isfinite(t.xi)):
            self.fail(f"{where}, try {i + 1}: ξ is missing, of the wrong size or not finite")
            return
        bound = certificate(rec.g0, rec.G, rec.S, t.ell, t.xi)
        rounding = rounding_error(rec.g0, rec.G, rec.S, t.ell, t.xi)  # machine to machine
        scale = np.maximum(1.0, np.abs(bound))
        if not (t.certificate.shape == bound.shape
                and np.all(np.abs(bound - t.certificate) <= REL_TOL * scale + 2 * rounding)):
            self.fail(f"{where}, try {i + 1}: the logged certificate does not recompute")
        if not np.all(bound + rounding <= -self.margins + REL_TOL * scale):
            self.fail(f"{where}, try {i + 1}: the certificate does not prove g ≤ −margin")


def _check_records(records: list, res: AuditResult) -> None:
    if not records or not isinstance(records[0], Header):
        res.certificates_ok = False
        res.problems.append(Problem(K.RECORD, "the log does not start with a header record"))
        return
    header = records[0]
    if hashlib.sha256(str(header.spec.get("text", "")).encode()).hexdigest() \
            != header.spec.get("sha256"):
        res.certificates_ok = False
        res.problems.append(Problem(K.CERTIFICATE, "the spec text in the header does not match "
                                    "its SHA-256"))
    a = _Audit(header, res)
    for seq, rec in enumerate(records[1:], start=1):
        if isinstance(rec, Init):
            if a.theta is not None:
                a.fail(f"record {seq}: a second initial policy")
            res.loss_first = res.loss_last = rec.loss
            warm = header.warm_start  # `policy from`: θ₀ is the source run's last θ
            if isinstance(warm, dict) and warm.get("theta0") != rec.theta:
                a.fail(f"record {seq}: θ₀ is not the policy the header's warm start took from "
                       f"{warm.get('run')!r}")
            a.accept(rec.theta, rec.g, "θ₀")
            a.initial_proof(rec, f"record {seq}")
        elif isinstance(rec, Resume):
            if rec.from_step != res.steps:
                a.fail(f"record {seq}: resumed from step {rec.from_step}, but the log holds "
                       f"{res.steps} steps")
            if rec.theta not in a.accepted:
                a.fail(f"record {seq}: resumed from a policy the log never accepted")
            a.theta = rec.theta
            if not a.shape(rec.g, f"record {seq}") or np.any(~(rec.g <= -a.margins)):
                a.fail(f"record {seq}: resumed from a policy that does not verify safe")
            else:
                a.g = rec.g
        elif isinstance(rec, Step):
            if rec.step != res.steps:
                a.fail(f"record {seq}: step {rec.step} where step {res.steps} comes next")
            a.step(rec)
            a.all_steps.append(rec)
            res.steps += 1
            if rec.accepted:
                res.accepted += 1
                res.loss_last = rec.loss_next
                a.accept(rec.theta_next, rec.g_next, f"step {rec.step}")
                a.streak = []
            else:
                res.rejected += 1
                a.streak.append(rec)
                if len(a.streak) > len(a.longest):
                    a.longest = list(a.streak)
        elif isinstance(rec, Holdout):
            res.holdout = {k: v for k, v in rec.to_dict().items() if k != "type"}
            if a.theta is not None and rec.theta != a.theta:
                a.fail(f"record {seq}: the holdout was run on a policy that is not the last "
                       "accepted")
        elif isinstance(rec, End):
            if rec.steps != res.steps or rec.accepted != res.accepted:
                a.fail(f"record {seq}: the end counts {rec.steps} steps ({rec.accepted} "
                       f"accepted), the log {res.steps} ({res.accepted})")
            # the run ended, and not by an interrupt; a later resume reopens it
            res.complete = rec is records[-1] and rec.state is not EndState.INTERRUPTED
            res.end_reason = rec.reason
            if a.theta is not None and rec.theta != a.theta:
                a.fail(f"record {seq}: the final policy is not the last accepted one")
            elif a.g is not None and a.shape(rec.g, f"record {seq}") and not (
                    np.array_equal(rec.g, a.g) and _same(rec.loss, res.loss_last)):
                a.fail(f"record {seq}: the end's g or loss are not the last accepted "
                       "policy's, as its step logged them")
        else:
            a.fail(f"record {seq}: a second header")
    res.final_theta = a.theta
    res.stall = _stall(a, res)


def _same(x, y) -> bool:
    """Two logged numbers are one (NaN only equals NaN: a loss may be undefined)."""
    return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x)
                      and math.isnan(y))


def _stall(a: _Audit, res: AuditResult) -> dict | None:
    """What held training back, if anything did: the longest run of rejected steps when it
    reaches STALL_STREAK ("rejected"), else ℓ grown more than STALL_ELL_GROWTH-fold over the
    spec's value ("ell").  Names the metric refuted most in that stretch, the scenario of its
    last counterexample, ℓ's growth, the most common reason, and the `cause` the advice follows
    from: why most of the stretch's steps were rejected (`_rejection_cause`), counted in
    `causes`."""
    growth = {n: res.ell_max[n] / s for n, s in res.ell_spec.items() if s}
    grown = max(growth, key=growth.get) if growth else None
    streak = a.longest
    if len(streak) < STALL_STREAK and (grown is None or not growth[grown] > STALL_ELL_GROWTH):
        return None
    stretch = streak if len(streak) >= STALL_STREAK else a.all_steps
    counts: dict[str, int] = {}
    causes: dict[str, int] = {}
    scenario, reasons, refuted_before, bound_by = None, [], None, {}
    for rec in stretch:
        reasons.append(rec.reason)
        for t in rec.tries:
            for n in t.refuted:
                counts[n] = counts.get(n, 0) + 1
                cx = t.counterexample.get(n) if isinstance(t.counterexample, dict) else None
                if isinstance(cx, dict) and "scenario" in cx:
                    scenario = {"index": cx.get("scenario"), "x0": cx.get("x0")}
        if streak and not rec.accepted:
            cause = _rejection_cause(rec, a, refuted_before)
            refuted_before = cause if cause in ("margin", "certificate") else refuted_before
            if cause is not None:
                causes[cause] = causes.get(cause, 0) + 1
            held = _slack_used_up(rec, a) if cause == "loss" else None
            if held is not None:
                bound_by[held] = bound_by.get(held, 0) + 1
    metric = max(counts, key=counts.get) if counts else (None if streak else grown)
    kind = "rejected" if len(streak) >= STALL_STREAK else "ell"
    cause = max(causes, key=causes.get) if kind == "rejected" and causes else "certificate"
    return {"kind": kind, "metric": metric, "cause": cause, "causes": causes,
            "rejected_in_a_row": len(streak), "from_step": streak[0].step if streak else None,
            "ell_growth": growth.get(metric) if metric in growth else None,
            "margin": (float(a.margins[a.names.index(metric)]) if metric in a.names else None),
            "worst_g": _worst_g(stretch), "scenario": scenario,
            "bound_by": max(bound_by, key=bound_by.get) if bound_by else None,
            "reason": max(set(reasons), key=reasons.count) if streak and not counts else None}


def _rejection_cause(rec: Step, a: _Audit, refuted_before: str | None) -> str | None:
    """Why a rejected step was rejected: "loss" (Armijo found no loss decrease along the
    certified step), "solver" (the projection gave no usable answer), "margin" (the rollout
    kept every refuted metric within its bound, g ≤ 0, but not by its margin) or "certificate"
    (the rollout broke the bound the certificate promised).  A solver failure after this step's
    refutations, or at an ℓ grown STALL_ELL_GROWTH-fold by earlier ones (`refuted_before`: the
    stretch's last refutation cause), is that refutation's doing: ℓ doubled until the
    projection had no room."""
    if not rec.tries:
        return None
    last = rec.tries[-1]
    if last.outcome == "no_descent":
        return "loss"
    if last.outcome == "unproved":
        return "proof"
    refuted = [t for t in rec.tries if t.outcome == "refuted"]
    if refuted:
        return _refutation_cause(refuted[-1], a)
    if last.outcome == "solver_failed":
        return refuted_before if refuted_before and _ell_grown(last, a) else "solver"
    return None


def _refutation_cause(t: Try, a: _Audit) -> str:
    v = t.verified
    refuted = [a.names.index(n) for n in t.refuted if n in a.names]
    within = (v is not None and v.shape == (len(a.names),) and bool(refuted)
              and all(math.isfinite(v[i]) and v[i] <= 0 for i in refuted))
    return "margin" if within else "certificate"


def _ell_grown(t: Try, a: _Audit) -> bool:
    ell = t.ell
    if ell is None or ell.shape != (len(a.names),):
        return False
    return any(s and ell[i] > STALL_ELL_GROWTH * s for i, s in enumerate(a.spec_ell))


def _slack_used_up(rec: Step, a: _Audit) -> str | None:
    """The metric whose slack −g0 − margin the step's certified ξ used up (≥ SLACK_USED_UP of
    it, by the certificate recomputed from the log), when one did: the safety constraint, not
    the step's length, shaped that step."""
    t = rec.tries[-1]
    k, n = len(a.names), rec.S.shape[0] if rec.S.ndim == 2 else -1
    if t.xi is None or t.xi.shape != (n,) or t.ell is None or t.ell.shape != (k,) or \
            rec.g0.shape != (k,) or rec.G.shape != (k, n) or rec.S.shape != (n, n):
        return None
    with np.errstate(all="ignore"):
        bound = certificate(rec.g0, rec.G, rec.S, t.ell, t.xi)
        slack = -a.margins - rec.g0
        used = np.where(slack > 0, (bound - rec.g0) / np.where(slack > 0, slack, 1.0), 0.0)
    i = int(np.nanargmax(used)) if np.any(np.isfinite(used)) else None
    return a.names[i] if i is not None and used[i] >= SLACK_USED_UP else None


def _worst_g(steps: list[Step]) -> float | None:
    """The largest g of a policy the stretch started a step from (how close training was to a
    bound); None where the log holds none."""
    values = [float(np.max(rec.g0)) for rec in steps
              if rec.g0.size and np.all(np.isfinite(rec.g0))]
    return max(values) if values else None


CAUSE_WORDS = {"loss": "no loss decrease along the certified step",
               "certificate": "refuted by rollout beyond the bound",
               "margin": "refuted by rollout within the margin",
               "solver": "no usable projection",
               "proof": "not proved over the whole initial box"}


def describe_stall(s: dict) -> str:
    """What held training back, and what to try, in words (the CLI summary and the report):
    the advice follows the cause the log shows (`_stall`'s `cause`)."""
    metric = s.get("metric")
    cause = s.get("cause") or ("certificate" if metric else "solver")
    growth = f"; its ℓ grew {s['ell_growth']:.3g}-fold" if s.get("ell_growth") else ""
    where = (f", worst on scenario {s['scenario']['index']} (x₀ = {s['scenario']['x0']})"
             if s.get("scenario") else "")
    causes = s.get("causes") or {}
    mixed = (" (" + ", ".join(f"{CAUSE_WORDS.get(c, c)}: {k}" for c, k in
                              sorted(causes.items(), key=lambda item: -item[1])) + ")"
             if len(causes) > 1 else "")
    rejected = (f"stalled: {s['rejected_in_a_row']} updates rejected in a row from step "
                f"{s['from_step']}")
    if s["kind"] != "rejected":
        return (f"hard going: the certificate of '{metric}' was refuted again and again"
                f"{growth}{where}. " + _ELL_HINT)
    if cause == "loss":
        worst = (f"; the metrics stayed at g ≤ {s['worst_g']:.3g}"
                 if s.get("worst_g") is not None else "")
        held = s.get("bound_by")
        return (f"{rejected}: the loss did not decrease along the certified step (Armijo "
                f"backtracking){worst}{mixed}. hint: "
                + ("the safety constraints did not shape these steps (none used up its "
                   "slack); the step is too long for the loss there: lower the optimizer's "
                   "`lr` (e.g. 10×)" if held is None else
                   f"lower the optimizer's `lr` (e.g. 10×); '{held}' used up its slack on these "
                   "steps, so if that does not help: more `directions`, or a lower ℓ where "
                   "`scpo calibrate` shows it loose (docs/tuning.md)"))
    if cause == "margin":
        margin = f" {s['margin']:.3g}" if s.get("margin") is not None else ""
        return (f"{rejected}: '{metric}' stayed within its bound by rollout (g ≤ 0) but not by "
                f"its margin{margin}{where}{mixed}. hint: the margin leaves no room where "
                "training is: lower that metric's `margin` (or train's `margin`) if the slack "
                "is not needed, or raise its `smoothness` ℓ so the certified steps keep further "
                "from the bound")
    if cause == "proof":
        return (f"{rejected}: the candidates passed their rollouts but the prover did not prove "
                f"them over the whole initial box (`verify every`){mixed}. hint: `scpo verify` "
                "on the spec says why (a part it cannot bound, the cell budget, the time limit); "
                "raise `verify { cells  time_limit }`, or prove less often (`verify every K`)")
    if cause == "certificate":
        return (f"stalled: '{metric}' blocked training ({s['rejected_in_a_row']} updates "
                f"rejected in a row from step {s['from_step']}{growth}{where}){mixed}. "
                + _ELL_HINT)
    return (f"{rejected} ({s.get('reason') or 'the solver'}){mixed}. hint: the projection had "
            "no usable answer there: the constraints leave almost no room (g close to −margin) "
            "or the solver is inaccurate; try another `solver` (scs, gurobi) or smaller margins")


_ELL_HINT = ("hint: the metric is not ℓ-smooth there (a Lyapunov ratio with V(x₀) ≈ 0, a bound "
             "touched at t = 0); every accepted update was still verified by rollout. Raise its "
             "`smoothness` ℓ or lower r (docs/tuning.md)")
