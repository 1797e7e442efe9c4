"""The code a spec names — a `system python` callable, a gymnasium `module:EnvId`, a `backup
torch` or `policy torch` file, a `policy python` factory — and the ONNX files it names (data:
read, never run): where each is, its identity (file and SHA-256, found WITHOUT importing
anything), which a run's header keeps, and whether the code a run would run is the code it
recorded.  A reader who chooses to trust a run's code (`--trust-code`) runs exactly the code the
run was trained with, or is refused (`expecting`); importing itself is usercode/loader.py's.
"""

from __future__ import annotations

import importlib.machinery
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scpo_spec.language import model as M
from scpo_spec.language.source import Span
from scpo_spec.usercode.loader import EXECUTED, EXPECTED, CodeError, sha256_file


FILE_KINDS = ("backup torch", "policy torch", "backup onnx", "policy onnx")


@dataclass(frozen=True)
class Reference:
    """One piece of code a spec names: `kind` as written ("system python", …), `target` the
    module (`module` or `module:attribute`) or the file path as written, and where."""

    kind: str
    target: str
    span: Span | None

    @property
    def is_file(self) -> bool:
        return self.kind in FILE_KINDS

    @property
    def runs_code(self) -> bool:
        """A TorchScript file or a module runs its author's code; an ONNX file is data (read
        by the onnx package, never run), fingerprinted all the same."""
        return not self.kind.endswith(" onnx")

    @property
    def module(self) -> str:
        return self.target.split(":", 1)[0]


def references(spec: M.Spec) -> list[Reference]:
    """Every piece of code the spec names, in section order."""
    out: list[Reference] = []
    system = spec.system
    if isinstance(system, M.PythonSystem) and system.function is not None:
        out.append(Reference("system python", system.function.value, system.function.span))
    if isinstance(system, M.GymnasiumSystem) and system.env_id is not None \
            and ":" in system.env_id.value:
        out.append(Reference("system gymnasium", system.env_id.value, system.env_id.span))
    for section, node in (("backup", spec.backup), ("policy", spec.policy)):
        kind = getattr(node, "kind", None)
        if kind in ("torch", "onnx") and node.file is not None:
            out.append(Reference(f"{section} {kind}", node.file.value, node.file.span))
    if isinstance(spec.policy, M.PythonPolicy) and spec.policy.factory is not None:
        factory = spec.policy.factory
        out.append(Reference("policy python", factory.value, factory.span))
    return out


def names_code(spec: M.Spec) -> bool:
    """Whether reading the spec's controller would run code (ONNX files do not)."""
    return any(ref.runs_code for ref in references(spec))


def _recorded(recorded: list | None, spec: M.Spec, base_dir: Path | None):
    """Each piece of code the spec names, its key in EXECUTED / EXPECTED (the module's name, or
    a file's resolved path; None for a file not found) and the (file, SHA-256) recorded for it."""
    by_key = {(r.get("kind"), r.get("target")): r for r in recorded or [] if isinstance(r, dict)}
    for ref in references(spec):
        entry = by_key.get((ref.kind, ref.target)) or {}
        if ref.is_file:
            path = locate(ref, base_dir)
            key = str(path.resolve()) if path is not None else None
        else:
            key = ref.module
        yield ref, key, (entry.get("file"), entry.get("sha256"))


@contextmanager
def expecting(recorded: list | None, spec: M.Spec, base_dir: Path | None):
    """Only the recorded bytes of each piece of code the spec names may run in this block."""
    saved = dict(EXPECTED)
    EXPECTED.update({key: want for _, key, want in _recorded(recorded, spec, base_dir)
                     if key is not None})
    try:
        yield
    finally:
        EXPECTED.clear()
        EXPECTED.update(saved)


def locate(ref: Reference, base_dir: Path | None) -> Path | None:
    """The file behind a reference, found without importing or loading anything (a package's
    `__init__` is not run: each level is looked up with the path finder alone)."""
    if ref.is_file:
        path = Path(ref.target)
        return path if path.is_absolute() else (base_dir or Path.cwd()) / path
    search = [str(base_dir)] if base_dir is not None else []
    search += [p for p in sys.path if p not in search]
    spec = None
    for i, part in enumerate(ref.module.split(".")):
        spec = importlib.machinery.PathFinder.find_spec(
            ".".join(ref.module.split(".")[:i + 1]), search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    return Path(spec.origin)


def identities(spec: M.Spec, base_dir: Path | None) -> list[dict]:
    """What the run header records of each piece of code: kind, target, resolved file, SHA-256."""
    out = []
    for ref in references(spec):
        path = locate(ref, base_dir)
        if path is None or not path.is_file():
            raise CodeError(f"{ref.kind} '{ref.target}': cannot find its file to fingerprint")
        out.append({"kind": ref.kind, "target": ref.target, "file": str(path.resolve()),
                    "sha256": sha256_file(path)})
    return out


def unchanged(recorded: list | None, spec: M.Spec, base_dir: Path | None) -> list[str]:
    """Why the code a spec names is not the code a run recorded ([] when every file is found,
    where it was, with the recorded SHA-256)."""
    recorded = recorded or []
    refs = references(spec)
    by_key = {(r.get("kind"), r.get("target")): r for r in recorded if isinstance(r, dict)}
    problems = []
    for ref in refs:
        entry = by_key.get((ref.kind, ref.target))
        if entry is None:
            problems.append(f"{ref.kind} '{ref.target}' has no fingerprint in the run's header")
            continue
        path = locate(ref, base_dir)
        if path is None or not path.is_file():
            problems.append(f"{ref.kind} '{ref.target}': its file is not found any more")
        elif str(path.resolve()) != entry.get("file"):
            problems.append(f"{ref.kind} '{ref.target}' now resolves to {path.resolve()}, not "
                            f"{entry.get('file')} as when the run was trained")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{ref.kind} '{ref.target}': {path} changed since the run was "
                            "trained (its SHA-256 differs)")
    return problems


def ran_as_recorded(recorded: list | None, spec: M.Spec, base_dir: Path | None,
                    every: bool = True) -> list[str]:
    """Why the code that ran in this process for the spec is not the code a run recorded ([]
    when each piece ran from the recorded file's recorded bytes; with `every` False, a piece
    that has not run yet is no problem: it is refused before it runs, under `expecting`).
    `unchanged` looks at the files before they run; this looks at what ran, which a planted
    __pycache__ file or a module imported earlier from elsewhere could otherwise make differ."""
    problems = []
    for ref, key, want in _recorded(recorded, spec, base_dir):
        ran = EXECUTED.get(key) if key is not None else None
        if ran is None and not every:
            continue
        if ran != want:
            what = "did not run" if ran is None else f"ran from {ran[0]} (SHA-256 {ran[1][:16]}…)"
            problems.append(f"{ref.kind} '{ref.target}' {what}, not from the file and SHA-256 "
                            "the run recorded")
    return problems


def untrusted(spec: M.Spec) -> str | None:
    """Why a run's policy cannot be rolled out without trusting its code (None if it names none)."""
    refs = [ref for ref in references(spec) if ref.runs_code]
    if not refs:
        return None
    named = ", ".join(f"{r.kind} '{r.target}'" for r in refs)
    return (f"the run's spec names code ({named}); a run directory is data, and reading it never "
            "runs the code it names. Pass --trust-code (Python: trust_code=True) to run it, once "
            "its files are checked against the SHA-256 the run recorded")
