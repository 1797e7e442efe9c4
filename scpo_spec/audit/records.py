"""The audit log's records, typed: what the engine writes and what `audit`, the report, `load_run`
and `--resume` read.  numpy only (auditing needs neither torch nor a solver).

One class per record type.  `to_dict` gives the JSON object the log stores (the log adds `seq`
and `prev`); `parse_record` turns a stored object back into its class, or raises `RecordError`
naming the record and the field, so no reader needs a catch-all around dictionary lookups.
Numbers that certificates are made of come back as float64 arrays.
"""

from __future__ import annotations

import enum
import hashlib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from scpo_spec.errors import ScpoError
from scpo_spec.language.scenario_bounds import holdout_bound

Vec = np.ndarray  # float64, one entry per metric (or per candidate)


class RecordError(ScpoError):
    """A log record lacks a field the readers need, or holds the wrong kind of value."""


def theta_sha256(theta: np.ndarray) -> str:
    """SHA-256 of a weight vector's float64 little-endian bytes: a policy's identity in the log."""
    return hashlib.sha256(np.ascontiguousarray(theta, dtype="<f8").tobytes()).hexdigest()


def _floats(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RecordError(f"{where}: not an array of numbers") from None
    return arr


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """A stored JSON value as the field's type (arrays to float64, nested records parsed)."""
    if annotation is Vec:
        return _floats(value, where)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where) if len(inner) == 1 else value
    if isinstance(annotation, type) and issubclass(annotation, Entry):
        return annotation.from_dict(value, where)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], Entry):
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list")
        return [args[0].from_dict(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"{where}: expected a number, found {type(value).__name__}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(f"{where}: expected an integer, found {type(value).__name__}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise RecordError(f"{where}: expected a string, found {type(value).__name__}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise RecordError(f"{where}: expected true or false")
        return value
    if annotation is dict and not isinstance(value, dict):
        raise RecordError(f"{where}: expected an object")
    if annotation is list and not isinstance(value, list):
        raise RecordError(f"{where}: expected a list")
    return value


def _not_an_object(where: str):
    raise RecordError(f"{where}: expected an object")


class Entry:
    """A typed JSON object: fields from the dataclass, checked on the way in."""

    @classmethod
    def from_dict(cls, data: Any, where: str):
        if not isinstance(data, dict):
            raise RecordError(f"{where}: expected an object")
        hints = typing.get_type_hints(cls, globalns={**globals(), "Vec": Vec})
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                values[f.name] = _convert(data[f.name], hints[f.name], f"{where}: '{f.name}'")
            elif f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
                raise RecordError(f"{where}: no '{f.name}'")
        return cls(**values)

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, list) and v and isinstance(v[0], Entry):
                v = [e.to_dict() for e in v]
            elif isinstance(v, Entry):
                v = v.to_dict()
            out[f.name] = v
        return out


@dataclass
class Proof(Entry):
    """What `scpo verify`'s prover said of one policy over the whole initial box, for
    `train { verify every K }`: a candidate is accepted on such a step only if every metric is
    PROVED (docs/verify.md).  The audit checks these numbers against the margins; it cannot
    redo the proof (no torch)."""

    verdict: str                      # overall: PROVED | COUNTEREXAMPLE | UNDECIDED
    verdicts: list                    # per metric, in the header's order
    bounds: Vec                       # per metric: an upper bound of g over the box (inf: none)
    cells: int                        # leaf cells of the split
    seconds: float
    reason: str | None = None         # why nothing could be bounded, when nothing could
    counterexamples: dict = field(default_factory=dict)  # metric → {"x0": [...], "g": float}


@dataclass
class Try(Entry):
    """One solve of the projection at one ℓ (a step re-solves with ℓ doubled after a refutation)."""

    ell: Vec
    outcome: str = ""                 # accepted | refuted | unproved | no_descent | solver_failed
    status: str = ""
    solve_time: float = 0.0
    objective: float | None = None
    xi_solver: Vec | None = None      # the solver's ξ, before the certified scale
    xi: Vec | None = None             # the ξ the certificate is computed for
    alpha: float | None = None        # Armijo's factor (already in ξ)
    repair: float | None = None       # the certified scale applied to the solver's ξ
    certificate: Vec | None = None    # the bound on g(θ + Dξ), per metric
    verified: Vec | None = None       # g(θ + Dξ) by rollout
    observed_curvature: Vec | None = None
    loss: float | None = None
    refuted: list = field(default_factory=list)          # names of the refuted metrics (for
    # `unproved`: the metrics the prover did not prove)
    counterexample: dict = field(default_factory=dict)   # metric → worst scenario's rollout
    proof: Proof | None = None        # `verify every K`: the prover's answer for the candidate


@dataclass
class Record(Entry):
    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"type": self.TYPE, **super().to_dict()}


@dataclass
class Header(Record):
    """The run's identity: the spec verbatim and its hash, settings, seeds, metrics, versions."""

    TYPE: ClassVar[str] = "header"
    format: str
    spec: dict            # name, path, resolved, sha256, text, syntax
    settings: dict
    seeds: dict
    metrics: list         # name, section, formula, margin, smoothness, lipschitz, location, …
    dimensions: dict      # d, n, k, scenarios, horizon
    data: dict | None = None
    objective: Any = None
    versions: dict = field(default_factory=dict)
    command: str = ""
    code: list | None = None   # the code the spec names: kind, target, file, sha256 each
    warm_start: dict | None = None  # `policy from`: the source run (audit/warm_start.py)
    uncertainty: dict | None = None  # parameters, disturbances (name, lo, hi) and the SHA-256
    #                                  of the training draws (plan.scenarios.uncertainty_record)

    METRIC: ClassVar[dict] = {"name": str, "section": str, "formula": str, "margin": float,
                              "smoothness": float | None, "lipschitz": float | None,
                              "location": str | None}

    @classmethod
    def from_dict(cls, data: Any, where: str):
        """Also each metric: the audit checks certificates against its margin and ℓ."""
        header = super().from_dict(data, where)
        header.metrics = [{**m, **{k: _convert(m.get(k), t, f"{where}: metric {i}: '{k}'")
                                   for k, t in cls.METRIC.items()}}
                          if isinstance(m, dict) else _not_an_object(f"{where}: metric {i}")
                          for i, m in enumerate(header.metrics)]
        return header

    @property
    def metric_names(self) -> list[str]:
        return [str(m.get("name")) for m in self.metrics]


@dataclass
class Init(Record):
    """θ₀, verified before the first step."""

    TYPE: ClassVar[str] = "init"
    theta: str
    g: Vec
    loss: float
    ell: Vec | None = None
    margins: Vec | None = None
    proof: Proof | None = None    # `verify every K`: θ₀ over the whole initial box


@dataclass
class Step(Record):
    """One step: the candidate bank's numbers (g0, G, S), every try, and the outcome."""

    TYPE: ClassVar[str] = "step"
    step: int
    theta: str            # the policy the step starts from
    g0: Vec
    loss: float
    G: Vec                # (k, n) metrics of θ + d_j
    S: Vec                # (n, n) DᵀD
    tries: list[Try]
    accepted: bool
    reason: str
    theta_next: str
    g_next: Vec
    loss_next: float
    bank_norms: Vec | None = None     # ‖d_j‖, whose squares are diag(S)
    target: Vec | None = None
    grad_norm: float | None = None
    raw_norm: float | None = None
    nu: float | None = None
    probe_cap: float | None = None
    bank: list = field(default_factory=list)
    dropped: list = field(default_factory=list)   # candidates left out: non-finite rollouts
    update_norm: float = 0.0
    ell_next: Vec | None = None
    timing: dict = field(default_factory=dict)
    stopped: bool = False     # `on_violation stop` ended the run here
    # `verify every K`: True the accepted update is PROVED over the whole initial box, False a
    # proof was due and no candidate was proved (rejected), None no proof was due at this step
    proved: bool | None = None

    @property
    def refutations(self) -> int:
        return sum(t.outcome == "refuted" for t in self.tries)


@dataclass
class Holdout(Record):
    """The final policy on fresh scenarios, and the zero-failure bound ln(1/β)/N."""

    TYPE: ClassVar[str] = "holdout"
    count: int
    beta: float
    violations: int | None = None
    bound: float | None = None
    theta: str | None = None
    worst: dict = field(default_factory=dict)
    worst_scenario: dict = field(default_factory=dict)
    violations_per_metric: dict = field(default_factory=dict)

    @property
    def recomputed_bound(self) -> float | None:
        """ln(1/β)/N when no scenario violated (recomputed, never read from the log)."""
        if self.violations != 0 or not 0 < self.beta < 1:
            return None
        return holdout_bound(self.count, self.beta)


@dataclass
class Resume(Record):
    """Training continued from the state file after a stop."""

    TYPE: ClassVar[str] = "resume"
    from_step: int
    theta: str
    g: Vec
    loss: float
    ell: Vec | None = None
    g_checkpoint: Vec | None = None
    checkpoint_head: str | None = None
    spec_text_changed: bool = False


class EndState(enum.Enum):
    """How a run ended, as its end record's `reason` starts: the log stores the sentence
    ("interrupted after step 12", "stopped at step 40: …"), and `of` is the one place it is
    read back.  An interrupted run is not complete: a resume reopens it."""

    COMPLETED = "completed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"

    @classmethod
    def of(cls, reason: str) -> EndState:
        """The state a reason says (one no state starts: completed, as any end but an
        interrupt)."""
        return next((s for s in (cls.INTERRUPTED, cls.STOPPED) if reason.startswith(s.value)),
                    cls.COMPLETED)

    def reason(self, step: int, why: str = "") -> str:
        """The end record's reason: "completed", or "<state> after|at step N[: why]"."""
        if self is EndState.COMPLETED:
            return self.value
        where = "after" if self is EndState.INTERRUPTED else "at"
        return f"{self.value} {where} step {step}" + (f": {why}" if why else "")


@dataclass
class End(Record):
    """Why training ended, and the final (last accepted) policy."""

    TYPE: ClassVar[str] = "end"
    reason: str
    steps: int
    accepted: int
    theta: str
    g: Vec
    loss: float
    stall: dict | None = None

    @property
    def state(self) -> EndState:
        return EndState.of(self.reason)


RECORD_TYPES: dict[str, type[Record]] = {c.TYPE: c for c in (Header, Init, Step, Holdout, Resume, End)}


def parse_record(data: Any, seq: int | None = None) -> Record:
    """A stored JSON object as its record class; RecordError (naming the record) otherwise."""
    where = f"record {seq}" if seq is not None else "record"
    if not isinstance(data, dict):
        raise RecordError(f"{where}: not a JSON object")
    kind = data.get("type")
    cls = RECORD_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RecordError(f"{where}: unknown record type {kind!r}")
    return cls.from_dict(data, f"{where} ({kind})")


# ---- the verify record: RUN/verify.json, beside the log, never in it ----

VERIFY_FORMAT = "scpo-verify/1"
@dataclass
class ProofConstraint(Entry):
    """One constraint's answer from `scpo verify` (docs/verify.md)."""

    verdict: str                     # PROVED | COUNTEREXAMPLE | UNDECIDED
    bound: float | None              # an upper bound of g over the cells bounded (None: none)
    margin: float
    proved_fraction: float           # of the initial box's volume
    cells: int
    open_cells: int
    counterexample: dict | None = None   # {"x0": [...], "g": float | null}
    reason: str | None = None


@dataclass
class VerifyRecord(Entry):
    """What `scpo verify RUN` proved about the run's final policy, written to RUN/verify.json.

    Not a log record: appending after the end record would move the head, which a signature
    or an anchor the user already holds is of.  It is chained to the log instead — `prev` is
    the head it was computed at — and names the policy it is about (`theta`); `scpo audit`
    checks both and the verdicts' consistency, but cannot redo the proof (no torch)."""

    format: str
    prev: str                 # the log's head hash when it was verified
    theta: str                # SHA-256 of the final θ it verified
    verdict: str              # the overall verdict, from the constraints' ones
    model: str                # what the proof is about, in words
    seconds: float
    cells: int
    verifier: dict            # version, cells (budget), time_limit, keep, seed
    constraints: dict         # metric name → ProofConstraint
    reason: str | None = None
    box: dict | None = None   # the initial box it is about: states, lo, hi

    @classmethod
    def from_dict(cls, data: Any, where: str):
        """Also each constraint's answer."""
        rec = super().from_dict(data, where)
        rec.constraints = {str(k): ProofConstraint.from_dict(v, f"{where}: constraint {k!r}")
                           for k, v in rec.constraints.items()}
        return rec

    def to_dict(self) -> dict:
        return {**super().to_dict(),
                "constraints": {k: v.to_dict() for k, v in self.constraints.items()}}
