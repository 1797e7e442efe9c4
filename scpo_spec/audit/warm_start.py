"""`policy from "runs/acc" { head = "<64 hex>" }`: a warm start from a trained run, read as data.

The source run is read only after it passes `scpo audit` (with `head` as its --head when given),
exactly as `load_run` would read it — but nothing it names is imported or run: what a warm start
takes is numbers and text, its last accepted θ (bound to the log) and the spec text whose policy
section is the family θ belongs to.

What the new run records (its header's `warm_start`, covered by its own hash chain): the source
as written and resolved, the source's head, θ₀'s SHA-256 (the new log's `init` θ), and the text of
the source spec that holds the concrete policy section (a source that was itself a warm start
hands on the spec its own header recorded).  So the new run's audit, report, export, `verify` and
`--resume` never read the source run again: `RunDir.checked_spec` gives a warm-started run's
spec with that policy section in place of `policy from` (`resolved`), and θ is in the run's own
state.  numpy only, like the rest of the audit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scpo_spec.audit.records import theta_sha256
from scpo_spec.audit.rundir import RunDir, RunError, built_spec
from scpo_spec.errors import ScpoError
from scpo_spec.language import model as M
from scpo_spec.language.source import Span

HEX64 = re.compile(r"[0-9a-f]{64}")
RECORD_KEYS = ("run", "resolved", "head", "theta0", "spec_text", "syntax", "path")
CODE_POLICIES = ("torch", "python", "onnx")  # a family whose code or file lives with the source


class WarmStartError(ScpoError):
    """The run a `policy from` names cannot be warm-started from (exit 2: the spec's own part);
    `span` is the run's path as written."""

    exit_code = 2

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(f"{span}: {message}" if span is not None else message)
        self.message, self.span, self.hint = message, span, hint


def is_warm_start(spec: M.Spec | None) -> bool:
    return spec is not None and isinstance(spec.policy, M.FromPolicy)


@dataclass
class WarmStart:
    """A source run, resolved: where it is, its head, the spec text of its policy family and,
    when read from the run itself, θ₀ (its last accepted θ; None when rebuilt from a header)."""

    run: str
    resolved: str
    head: str
    theta0: str                      # SHA-256 of θ₀ (records.theta_sha256)
    spec_text: str
    syntax: str | None
    path: str
    theta: np.ndarray | None = None

    def record(self) -> dict:
        return {key: getattr(self, key) for key in RECORD_KEYS}

    @classmethod
    def from_record(cls, record, where: str) -> "WarmStart":
        """The header's `warm_start` (RunError when it is not one)."""
        if not isinstance(record, dict) or not all(
                isinstance(record.get(k), str) for k in RECORD_KEYS if k != "syntax"):
            raise RunError(f"{where}: the header's warm_start is not a record of a source run")
        return cls(**{key: record.get(key) for key in RECORD_KEYS})

    def source_spec(self) -> M.Spec:
        """The source's spec, built from the recorded text (nothing read, nothing run)."""
        built = built_spec(self.spec_text, self.path, self.syntax)
        if built is None or built.policy is None or is_warm_start(built):
            raise RunError(f"the warm start's recorded spec ({self.path}) does not build a "
                           "policy section")
        return built


def resolved(spec: M.Spec, warm: WarmStart) -> M.Spec:
    """`spec` with the source's policy section in place of `policy from`."""
    return spec.model_copy(update={"policy": warm.source_spec().policy})


def source_path(policy, base_dir: Path | None) -> Path:
    path = Path(policy.run.value).expanduser()
    return path if path.is_absolute() else (base_dir or Path.cwd()) / path


def read_source(spec: M.Spec, base_dir: Path | None) -> WarmStart:
    """The run `spec`'s `policy from` names, audited (with its `head`) and matched against the
    spec: WarmStartError, located at the run's path as written, for a run that is missing,
    fails its audit (why, from the verdict) or does not end at `head`, or whose policy family
    or dimensions do not fit this spec."""
    policy = spec.policy
    span, written = policy.run.span, policy.run.value
    head = policy.head.value.strip().lower() if policy.head is not None else None
    if head is not None and not HEX64.fullmatch(head):
        raise WarmStartError(f"head = \"{policy.head.value}\" is not a head hash (64 hex "
                             "digits)", policy.head.span, "copy the `head …` line `scpo train` "
                             "printed last, or `scpo audit RUN`'s head")
    path = source_path(policy, base_dir)
    run = RunDir(path)
    if not path.is_dir() or not run.is_run():
        raise WarmStartError(f"no run at '{written}' ({path}: "
                             f"{'no ' + run.log.name + ' in it' if path.is_dir() else 'not found'})",
                             span, "the path is relative to the spec's folder; train the source "
                             "run first, or correct the path")
    from scpo_spec.audit.loaded import LoadedRun
    from scpo_spec.audit.verdict import judge
    loaded = LoadedRun(run)  # read once: the audit, the header, the spec and θ
    try:
        audit, verdict = judge(loaded, head=head)
    except RunError as err:
        raise WarmStartError(f"the run '{written}' cannot be audited: {err}", span) from None
    refused = verdict.refusals()
    if refused:
        raise WarmStartError(f"the run '{written}' does not pass `scpo audit`: "
                             f"{'; '.join(refused)}; not starting from its policy", span,
                             "`scpo audit " + str(path) + (f" --head {head}" if head else "")
                             + "` says the same")
    header = loaded.header
    source, _ = loaded.checked_spec()  # its policy section resolved, nothing of it run
    if header.warm_start is not None:  # a warm start of a warm start: the concrete section
        earlier = WarmStart.from_record(header.warm_start, str(run.log))
        text, syntax, where = earlier.spec_text, earlier.syntax, earlier.path
    else:
        text, syntax, where = header.spec["text"], header.spec.get("syntax"), header.spec["path"]
    _match(spec, source, written, span)
    try:
        theta = loaded.final_theta(audit.final_theta)
    except RunError as err:
        raise WarmStartError(f"the run '{written}' holds no usable policy: {err}", span) from None
    return WarmStart(run=written, resolved=str(path.resolve()), head=audit.head,
                     theta0=theta_sha256(theta), spec_text=text, syntax=syntax, path=where,
                     theta=theta)


def _match(spec: M.Spec, source: M.Spec, written: str, span: Span | None) -> None:
    """The source's family must fit this spec: the same numbers of states and inputs, the same
    kind of backup, and a policy section that names no code or file of the source's."""
    kind = getattr(source.policy, "kind", None)
    written = [name for name in ("observe", "output_scale")
               if getattr(spec.policy, name, None) is not None]
    if written:
        raise WarmStartError(f"`policy from` takes the run's policy as it was trained, what it "
                             f"observes and its output scale included; this one also gives "
                             f"{' and '.join(written)}", span,
                             f"leave {' and '.join(written)} out of `policy from`")
    if kind in CODE_POLICIES:
        raise WarmStartError(f"the run '{written}' has a `policy {kind}`, whose code or file "
                             "lives with that run; a warm start takes an mlp or linear policy",
                             span, f"write the same `policy {kind}` here instead")
    differ = []
    for what in ("states", "inputs"):
        mine = [s.name for s in getattr(spec.system, what)]
        theirs = [s.name for s in getattr(source.system, what)]
        if len(mine) != len(theirs):
            differ.append(f"{len(theirs)} {what} ({', '.join(theirs)}) where this spec has "
                          f"{len(mine)} ({', '.join(mine)})")
    mine, theirs = getattr(spec.backup, "kind", None), getattr(source.backup, "kind", None)
    if mine != theirs:
        differ.append(f"{'backup ' + theirs if theirs else 'no backup'} where this spec has "
                      f"{'backup ' + mine if mine else 'none'}")
    if differ:
        raise WarmStartError(f"the run '{written}' does not fit this spec: it has "
                             + "; ".join(differ), span,
                             "a warm start reuses the source's policy family as it is")
